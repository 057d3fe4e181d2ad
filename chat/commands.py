"""
The wire protocol, v1: bytes to commands, replies to bytes.

No Twisted here: this is pure parsing and formatting, shared by every
transport.

Framing: one request per line. A line ends in LF; a trailing CR is stripped.
Words are separated by runs of whitespace; the command word is
case-insensitive; extra words after the last argument are ignored, as the
course server ignored them. Every reply is one JSON object (ASCII-only,
so the course client may decode it in any chunking) followed by CR LF CR LF.

Grammar (requests, then the OK reply)::

    auth <user> <password>        {"status":"OK","tokenid":"<uuid4>"}
    send <token> <to> <text...>   {"status":"OK","message":"Message Sent"}
    inbox <token>                 {"status":"OK","messages":{"<from>":[<msg>, ...]}}
    ping [<word>]                 {"status":"OK","message":"PONG"[,"echo":"<word>"]}
    quit                          {"status":"OK","message":"bye"}, then closes

    <msg> = {"msg_from":"<full name>","msg_to":"<full name>","msg":"<text>",
             "id":<int>,"sent_at":"<ISO-8601 UTC>","from":"<user>","to":"<user>"}

<text...> is the rest of the line after <to>, surrounding whitespace
stripped and inner whitespace kept; it must not be empty.

Error replies are {"status":"ERROR","message":<text>,"code":<code>}:

    **Protocol Tidak Benar    unknown_command    unknown command word or an empty line
    --Protocol Tidak Benar    missing_argument   too few arguments, or empty text
    User Tidak Ada            unknown_user       auth: no such user
    Password Salah            wrong_password     auth: wrong password
    Session Tidak Ditemukan   no_session         unknown, expired or revoked token
    User Tidak Ditemukan      no_such_user       send: no such recipient
    invalid UTF-8 in request  bad_encoding       the line is not UTF-8
    NUL byte in request       bad_request        the line contains a NUL byte
    line too long             line_too_long      then the server closes the connection
    storage unavailable       storage_unavailable  nothing was stored; retry later
    internal error            internal           a bug: logged on the server
"""

from __future__ import annotations

import json

import attrs

DELIMITER = b"\r\n\r\n"


class BadCommand(Exception):
    """
    A request line could not be parsed. C{message} and C{code} are the wire
    error reply.
    """

    message = "**Protocol Tidak Benar"
    code = "unknown_command"

    def reply(self) -> dict[str, object]:
        return error(self.message, self.code)


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


@attrs.frozen
class Auth:
    username: str
    password: str = attrs.field(repr=False)


@attrs.frozen
class Send:
    token: str = attrs.field(repr=False)
    recipient: str
    text: str


@attrs.frozen
class Inbox:
    token: str = attrs.field(repr=False)


@attrs.frozen
class Ping:
    echo: str | None = None


@attrs.frozen
class Quit:
    pass


Command = Auth | Send | Inbox | Ping | Quit


def parse(line: bytes) -> Command:
    """
    Parse one request line (without its line ending).

    @raise BadCommand: for anything that is not a valid request.
    """
    if b"\0" in line:
        raise NulByte()
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise BadEncoding() from None
    words = text.split(None, 1)
    if not words:
        raise UnknownCommand()
    verb = words[0].lower()
    rest = words[1] if len(words) > 1 else ""
    if verb == "auth":
        username, password = _arguments(rest, 2)
        return Auth(username, password)
    if verb == "send":
        parts = rest.split(None, 2)
        if len(parts) < 3 or not parts[2].strip():
            raise MissingArgument()
        return Send(parts[0], parts[1], parts[2].strip())
    if verb == "inbox":
        (token,) = _arguments(rest, 1)
        return Inbox(token)
    if verb == "ping":
        echo = rest.split()
        return Ping(echo[0] if echo else None)
    if verb == "quit":
        return Quit()
    raise UnknownCommand()


def _arguments(rest: str, count: int) -> list[str]:
    """
    The first C{count} words of C{rest}; later words are ignored.
    """
    words = rest.split()
    if len(words) < count:
        raise MissingArgument()
    return words[:count]


def ok(**fields: object) -> dict[str, object]:
    return {"status": "OK", **fields}


def error(message: str, code: str, **fields: object) -> dict[str, object]:
    return {"status": "ERROR", "message": message, "code": code, **fields}


def encode(reply: dict[str, object]) -> bytes:
    """
    Serialize one reply or event for the line transport.
    """
    return json.dumps(reply, separators=(",", ":")).encode("ascii") + DELIMITER
