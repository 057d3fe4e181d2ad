"""
The grammar every request line shares: the parse errors (each the wire's
error reply), the L{Command} base with its table of command words
(L{VERBS}, filled by L{verb}), and the splitting of a line into words and
text. The commands themselves, and the wire spec, are in L{chat.commands}.

No Twisted here, as in L{chat.commands}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, TypeVar

from chat.replies import dumps, error


class BadCommand(Exception):
    """
    A request line could not be parsed. C{message} and C{code} are the wire
    error reply.
    """

    message = "**Protocol Tidak Benar"
    code = "unknown_command"

    def reply(self) -> dict[str, object]:
        return error(self.message, self.code)

    def reply_bytes(self) -> bytes:
        return dumps(self.reply())


class UnknownCommand(BadCommand):
    message = "**Protocol Tidak Benar"
    code = "unknown_command"


class MissingArgument(BadCommand):
    message = "--Protocol Tidak Benar"
    code = "missing_argument"


class BadEncoding(BadCommand):
    message = "invalid UTF-8 in request"
    code = "bad_encoding"


class NulByte(BadCommand):
    message = "NUL byte in request"
    code = "bad_request"


class InvalidArgument(BadCommand):
    """
    An argument is present but malformed; the reply says which.
    """

    code = "invalid_argument"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidBase64(BadCommand):
    message = "invalid base64 content"
    code = "invalid_base64"


#: Command classes by their (lowercase) command word.
VERBS: dict[str, type[Command]] = {}


class Command:
    """
    Base of all commands. A subclass names its command word in C{verb} and
    builds itself from the rest of the line in C{from_arguments}.
    """

    verb: ClassVar[str]

    @classmethod
    def from_arguments(cls, rest: str) -> Command:
        raise NotImplementedError


C = TypeVar("C", bound=type[Command])


def verb(word: str) -> Callable[[C], C]:
    """
    Register a command class under its command word.
    """

    def register(cls: C) -> C:
        cls.verb = word
        VERBS[word] = cls
        return cls

    return register


def words(rest: str, count: int) -> list[str]:
    """
    The first C{count} words of C{rest}; later words are ignored.

    @raise MissingArgument: if there are fewer.
    """
    found = rest.split()
    if len(found) < count:
        raise MissingArgument()
    return found[:count]


def words_name_and_content(rest: str, count: int) -> tuple[list[str], str, str]:
    """
    C{count} words, a file name (which may hold spaces), then the content:
    the last word.

    @raise MissingArgument: if a word, the name or the content is missing.
    """
    parts = rest.split(None, count)
    if len(parts) <= count:
        raise MissingArgument()
    name_and_content = parts[count].rsplit(None, 1)
    if len(name_and_content) < 2:
        raise MissingArgument()
    return parts[:count], name_and_content[0].strip(), name_and_content[1]


def words_and_text(rest: str, count: int) -> tuple[list[str], str]:
    """
    C{count} words, then the rest of the line as non-empty, stripped text.

    @raise MissingArgument: if a word or the text is missing.
    """
    parts = rest.split(None, count)
    if len(parts) <= count or not parts[count].strip():
        raise MissingArgument()
    return parts[:count], parts[count].strip()
