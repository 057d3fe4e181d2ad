"""
C{chat-admin}: manage accounts in a chat store.

    chat-admin --store sqlite:chat.sqlite useradd USERNAME --name "Full Name" \
        [--country C]
    chat-admin --store sqlite:chat.sqlite passwd USERNAME
    chat-admin --store sqlite:chat.sqlite userdel USERNAME
    chat-admin --store sqlite:chat.sqlite users

Passwords are read from standard input (one line; asked twice, hidden, on a
terminal), never from the command line, where other users of the machine
could see them. It is safe to run while the server runs.
"""

from __future__ import annotations

import getopt
import getpass
import sys
from typing import Any, TextIO

import argon2
from twisted.internet import task
from twisted.internet.defer import ensureDeferred
from twisted.python import usage

from chat.errors import ChatError, InvalidUsername, NoSuchUser, UserExists
from chat.model import User, validate_username
from chat.store import STORE_HELP, open_store


class InterspersedOptions(usage.Options):
    """
    Options that may come after positional arguments too, as in
    C{useradd USERNAME --name "Full Name"} (Twisted stops at the first
    positional argument, like POSIX getopt).
    """

    def parseOptions(self, options: list[str] | None = None) -> None:
        if options is None:
            options = sys.argv[1:]
        try:
            found, arguments = getopt.gnu_getopt(options, self.shortOpt, self.longOpt)
        except getopt.error as e:
            raise usage.UsageError(str(e)) from None
        ordered: list[str] = []
        for option, value in found:
            if option.startswith("--"):
                takes_value = option[2:] + "=" in self.longOpt
                ordered.append(f"{option}={value}" if takes_value else option)
            else:
                takes_value = option[1:] + ":" in self.shortOpt
                ordered.extend([option, value] if takes_value else [option])
        super().parseOptions([*ordered, "--", *arguments])


class UserAddOptions(InterspersedOptions):
    synopsis = "USERNAME --name 'Full Name' [--country COUNTRY]"
    optParameters = [
        ["name", None, None, "The user's full name (required)."],
        ["country", None, "", "The user's country."],
    ]

    def parseArgs(self, username: str) -> None:  # type: ignore[override]
        self["username"] = username

    def postOptions(self) -> None:
        if not self["name"] or not self["name"].strip():
            raise usage.UsageError("--name is required")


class UserOptions(InterspersedOptions):
    synopsis = "USERNAME"

    def parseArgs(self, username: str) -> None:  # type: ignore[override]
        self["username"] = username


class NoOptions(usage.Options):
    synopsis = ""


class AdminOptions(usage.Options):
    synopsis = "--store STORE COMMAND [ARGS]"
    optParameters = [
        ["store", None, "sqlite:chat.sqlite", f"The chat store: {STORE_HELP}."],
    ]
    subCommands = [
        ["useradd", None, UserAddOptions, "Create a user (password on stdin)."],
        [
            "passwd",
            None,
            UserOptions,
            "Set a user's password (on stdin); ends its sessions.",
        ],
        ["userdel", None, UserOptions, "Delete a user, its sessions and its mailbox."],
        ["users", None, NoOptions, "List the users."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("a command is required")


def read_password(stdin: TextIO) -> str:
    """
    One password from standard input: prompted twice on a terminal, else
    the first line.
    """
    if stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise ChatError("the passwords differ")
    else:
        password = stdin.readline().rstrip("\r\n")
    if not password:
        raise ChatError("the password is empty")
    if any(c.isspace() for c in password):
        raise ChatError(
            "the password contains whitespace, which the protocol cannot carry"
        )
    return password


async def run(
    reactor: Any, options: AdminOptions, stdin: TextIO, stdout: TextIO
) -> None:
    command = options.subCommand
    sub = options.subOptions
    password_hash = None
    if command in ("useradd", "passwd"):
        if command == "useradd":
            validate_username(sub["username"])
        password_hash = argon2.PasswordHasher().hash(read_password(stdin))
    store = open_store(reactor, options["store"])
    store.start()
    try:
        if command == "useradd":
            assert password_hash is not None
            user = User(
                sub["username"], sub["name"].strip(), sub["country"], password_hash
            )
            await store.add_user(user)
            print(f"created user {user.username}", file=stdout)
        elif command == "passwd":
            assert password_hash is not None
            await store.set_password_hash(sub["username"], password_hash)
            print(f"changed the password of {sub['username']}", file=stdout)
        elif command == "userdel":
            await store.delete_user(sub["username"])
            print(f"deleted user {sub['username']}", file=stdout)
        elif command == "users":
            for user in await store.list_users():
                print(f"{user.username}\t{user.full_name}\t{user.country}", file=stdout)
    finally:
        await store.close()


def describe(error: Exception) -> str:
    if isinstance(error, NoSuchUser):
        return f"no such user: {error.username}"
    if isinstance(error, UserExists):
        return f"user already exists: {error.username}"
    if isinstance(error, InvalidUsername):
        return f"invalid username: {error}"
    return str(error)


def main(reactor: Any, *argv: str) -> Any:
    options = AdminOptions()
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        print(f"{options}\nchat-admin: {e}", file=sys.stderr)
        raise SystemExit(2) from None

    def failed(f: Any) -> None:
        if f.check(ChatError, ValueError):
            print(f"chat-admin: {describe(f.value)}", file=sys.stderr)
            raise SystemExit(1)
        return f

    d = ensureDeferred(run(reactor, options, sys.stdin, sys.stdout))
    return d.addErrback(failed)


def script() -> None:
    """
    The C{chat-admin} console script.
    """
    task.react(main, sys.argv[1:])


if __name__ == "__main__":
    script()
