"""
What the command lines of C{twistd chat}, C{chat-admin} and C{chat-client}
have in common, on top of Twisted's C{usage.Options}: usage lines that name
the program, help text that reads well, C{--version} printing chat's
version, positional arguments whose absence is named, and bad values
reported with the option's name.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from twisted.python import usage

import chat


class ChatOptions(usage.Options):
    """
    C{usage.Options}, as chat's programs use it.

    @cvar program: the program's name, for the usage line.
    @cvar common: the options that come before a subcommand, as the usage
        line of a subcommand shows them.
    @cvar arguments: the names of the positional arguments (each stored
        lowercased, C{REALM_ID} as C{realm_id}).
    @cvar converters: option name to the function that turns its text into
        its value (raising C{ValueError} with a message for a bad value);
        applied to defaults too, by L{postOptions}.
    """

    program = "chat"
    common = ""
    synopsis = ""
    arguments: tuple[str, ...] = ()
    converters: dict[str, Callable[[str], Any]] = {}

    def __init__(self) -> None:
        super().__init__()
        # Docstrings of opt_ methods span lines: one paragraph each.
        self.docs = {
            name: " ".join(doc.split()) if doc else doc
            for name, doc in self.docs.items()
        }

    def opt_help(self) -> None:
        """
        Display this help and exit.
        """
        _print_and_exit(str(self))

    def opt_version(self) -> None:
        """
        Print chat's version and exit.
        """
        _print_and_exit(f"chat {chat.__version__}")

    def getSynopsis(self) -> str:
        commands: list[str] = []
        root: usage.Options = self
        while root.parent is not None:
            commands.insert(0, root.parent.subCommand or "")
            root = root.parent
        if not isinstance(root, ChatOptions):
            return super().getSynopsis()  # twistd's own usage line
        common = root.common if commands else ""
        words = [f"Usage: {root.program}", common, *commands, self.synopsis]
        return " ".join(word for word in words if word)

    def parseArgs(self, *values: str) -> None:
        names = self.arguments
        if len(values) < len(names):
            raise usage.UsageError(f"missing {' and '.join(names[len(values) :])}")
        if len(values) > len(names):
            extra = " ".join(values[len(names) :])
            raise usage.UsageError(f"unexpected argument: {extra}")
        for name, value in zip(names, values, strict=True):
            self[name.lower()] = value

    def postOptions(self) -> None:
        self.convert()

    def convert(self) -> None:
        """
        Turn each option that has a converter into its value.

        @raise usage.UsageError: naming the option, for a bad value.
        """
        for name, converter in self.converters.items():
            value = self.get(name)
            if isinstance(value, str):
                try:
                    self[name] = converter(value)
                except ValueError as e:
                    raise usage.UsageError(f"--{name}: {e}") from None

    def deepest(self) -> usage.Options:
        """
        The options of the (sub)command that was being parsed.
        """
        options: usage.Options = self
        while getattr(options, "subOptions", None) is not None:
            options = options.subOptions
        return options


def _print_and_exit(text: str) -> NoReturn:
    """
    Print C{text} and exit: quietly if the reader went away first
    (C{chat-client --help | head -3}).
    """
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would complain again when it flushes at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)


def usage_error(options: ChatOptions, error: usage.UsageError) -> str:
    """
    What a program prints for a usage error: the usage line of the
    (sub)command, and the error naming the program.
    """
    return f"{options.deepest().getSynopsis()}\n{options.program}: {error}"
