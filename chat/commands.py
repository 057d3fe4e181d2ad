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
    subscribe <token>             {"status":"OK","message":"Subscribed"}, then events
    ack <token> <id>              {"status":"OK","message":"Acknowledged","count":<n>}
    who <token>                   {"status":"OK","users":[{"username":..,
                                                           "full_name":..}, ...]}
    quit                          {"status":"OK","message":"bye"}, then closes

Other realms (linked chat servers; see chat.federation)::

    send <token> <user>@<realm> <text...>
                                  {"status":"OK","message":"Message Sent"}
    sendprivaterealm <token> <realm> <user> <text...>
                                  {"status":"OK","message":"Message Sent to Realm"}
    sendgrouprealm <token> <realm> <user>,<user>,... <text...>
                                  {"status":"OK",
                                   "message":"Message Sent to Group in Realm"}
    getrealminbox <token> <realm> {"status":"OK",
                                   "messages":{"<user>@<realm>":[<msg>, ...]}}
    addrealm [<token>] <realm> <host> <port>
                                  {"status":"OK","message":"Realm Added","realm":..,
                                   "secret":..,"this_realm":..} (administrators)

Between realms, on a connection that is a link (never a user's)::

    realm-hello <from realm> <to realm> <nonce>
                                  {"status":"OK","message":"realm-challenge",
                                   "realm":..,"nonce":..}
    realm-auth <proof>            {"status":"OK","message":"Realm Authenticated",
                                   "realm":..,"proof":..,"max_line":..}
    realm-msg <json>              {"status":"OK","message":"Delivered","id":..,
                                   "delivered":<n>,"unknown":[..],"duplicate":..}

    <msg> = {"msg_from":"<full name>","msg_to":"<full name>","msg":"<text>",
             "id":<int>,"sent_at":"<ISO-8601 UTC>","from":"<user>","to":"<user>"
             [,"realm":"<realm>"]}    (from is <user>@<realm> for another realm's)

<text...> is the rest of the line after <to>, surrounding whitespace
stripped and inner whitespace kept; it must not be empty.

Events (only on a connection that sent subscribe; never a "status" key)::

    {"event":"message", <msg keys>}        a message for the subscribed user
    {"event":"presence","user":..,"full_name":..,"online":true|false}
    {"event":"unsubscribed","reason":..}   the session ended (logout)

Pushed messages stay undelivered until acknowledged with ack (every id up
to the given one); at most a window of them is pushed unacknowledged.

Error replies are {"status":"ERROR","message":<text>,"code":<code>}:

    **Protocol Tidak Benar    unknown_command    unknown command word or an empty line
    --Protocol Tidak Benar    missing_argument   too few arguments, or empty text
    User Tidak Ada            unknown_user       auth: no such user
    Password Salah            wrong_password     auth: wrong password
    Session Tidak Ditemukan   no_session         unknown, expired or revoked token
    User Tidak Ditemukan      no_such_user       send: no such recipient
    invalid UTF-8 in request  bad_encoding       the line is not UTF-8
    NUL byte in request       bad_request        the line contains a NUL byte
    <what is wrong>           bad_argument       a malformed argument (e.g. an id)
    line too long             line_too_long      then the server closes the connection
    storage unavailable       storage_unavailable  nothing was stored; retry later
    Realm Tidak Ditemukan     no_such_realm      no link to that realm
    Realm sudah ada           realm_exists       addrealm: the realm is linked already
    realm queue full          realm_queue_full   too many messages wait for that realm
    not an administrator      not_admin          addrealm by a user who is not one
    realm authentication failed  realm_auth_failed  then the server closes the link
    internal error            internal           a bug: logged on the server
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import ClassVar, TypeVar

import attrs

from chat.links import NONCE_PATTERN, REALM_ID_PATTERN

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


class BadArgument(BadCommand):
    """
    An argument is malformed; the message says which and why.
    """

    code = "bad_argument"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadEncoding(BadCommand):
    message = "invalid UTF-8 in request"
    code = "bad_encoding"


class NulByte(BadCommand):
    message = "NUL byte in request"
    code = "bad_request"


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


def words_and_text(rest: str, count: int) -> tuple[list[str], str]:
    """
    C{count} words, then the rest of the line as non-empty, stripped text.

    @raise MissingArgument: if a word or the text is missing.
    """
    parts = rest.split(None, count)
    if len(parts) <= count or not parts[count].strip():
        raise MissingArgument()
    return parts[:count], parts[count].strip()


@verb("auth")
@attrs.frozen
class Auth(Command):
    username: str
    password: str = attrs.field(repr=False)

    @classmethod
    def from_arguments(cls, rest: str) -> Auth:
        return cls(*words(rest, 2))


@verb("send")
@attrs.frozen
class Send(Command):
    token: str = attrs.field(repr=False)
    recipient: str
    text: str

    @classmethod
    def from_arguments(cls, rest: str) -> Send:
        (token, recipient), text = words_and_text(rest, 2)
        return cls(token, recipient, text)


@verb("inbox")
@attrs.frozen
class Inbox(Command):
    token: str = attrs.field(repr=False)

    @classmethod
    def from_arguments(cls, rest: str) -> Inbox:
        return cls(*words(rest, 1))


@verb("ping")
@attrs.frozen
class Ping(Command):
    echo: str | None = None

    @classmethod
    def from_arguments(cls, rest: str) -> Ping:
        found = rest.split(None, 1)
        return cls(found[0] if found else None)


@verb("quit")
@attrs.frozen
class Quit(Command):
    @classmethod
    def from_arguments(cls, rest: str) -> Quit:
        return cls()


@verb("subscribe")
@attrs.frozen
class Subscribe(Command):
    token: str = attrs.field(repr=False)

    @classmethod
    def from_arguments(cls, rest: str) -> Subscribe:
        return cls(*words(rest, 1))


@verb("ack")
@attrs.frozen
class Ack(Command):
    token: str = attrs.field(repr=False)
    up_to_id: int

    @classmethod
    def from_arguments(cls, rest: str) -> Ack:
        token, up_to_id = words(rest, 2)
        if not up_to_id.isascii() or not up_to_id.isdigit():
            raise BadArgument("the message id must be a number")
        return cls(token, int(up_to_id))


@verb("who")
@attrs.frozen
class Who(Command):
    token: str = attrs.field(repr=False)

    @classmethod
    def from_arguments(cls, rest: str) -> Who:
        return cls(*words(rest, 1))


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
    found = text.split(None, 1)
    if not found:
        raise UnknownCommand()
    command = VERBS.get(found[0].lower())
    if command is None:
        raise UnknownCommand()
    return command.from_arguments(found[1] if len(found) > 1 else "")


def ok(**fields: object) -> dict[str, object]:
    return {"status": "OK", **fields}


def error(message: str, code: str, **fields: object) -> dict[str, object]:
    return {"status": "ERROR", "message": message, "code": code, **fields}


def encode(reply: dict[str, object]) -> bytes:
    """
    Serialize one reply or event for the line transport.
    """
    return json.dumps(reply, separators=(",", ":")).encode("ascii") + DELIMITER


# Other realms (issue 6; chat.federation does the work).


@verb("sendprivaterealm")
@attrs.frozen
class SendPrivateRealm(Command):
    token: str = attrs.field(repr=False)
    realm_id: str
    recipient: str
    text: str

    @classmethod
    def from_arguments(cls, rest: str) -> SendPrivateRealm:
        (token, realm_id, recipient), text = words_and_text(rest, 3)
        return cls(token, realm_id, recipient, text)


@verb("sendgrouprealm")
@attrs.frozen
class SendGroupRealm(Command):
    token: str = attrs.field(repr=False)
    realm_id: str
    recipients: tuple[str, ...]
    text: str

    @classmethod
    def from_arguments(cls, rest: str) -> SendGroupRealm:
        (token, realm_id, recipients), text = words_and_text(rest, 3)
        names = tuple(name for name in recipients.split(",") if name)
        if not names:
            raise MissingArgument()
        return cls(token, realm_id, names, text)


@verb("getrealminbox")
@attrs.frozen
class GetRealmInbox(Command):
    token: str = attrs.field(repr=False)
    realm_id: str

    @classmethod
    def from_arguments(cls, rest: str) -> GetRealmInbox:
        return cls(*words(rest, 2))


def _port(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < 65536:
        raise BadArgument("the port must be a number from 1 to 65535")
    return int(text)


@verb("addrealm")
@attrs.frozen
class AddRealm(Command):
    """
    The course's C{addrealm <realm> <host> <port>} acts as the user who
    logged in on this connection with C{auth}; C{addrealm <token> <realm>
    <host> <port>} names the session instead. Four words where the last is
    a port are the second form.
    """

    token: str | None = attrs.field(repr=False)
    realm_id: str
    host: str
    port: int

    @classmethod
    def from_arguments(cls, rest: str) -> AddRealm:
        found = rest.split()
        if len(found) >= 4 and found[3].isdigit() and not found[2].isdigit():
            token, realm_id, host, port = found[:4]
            return cls(token, realm_id, host, _port(port))
        realm_id, host, port = words(rest, 3)
        return cls(None, realm_id, host, _port(port))


@verb("realm-hello")
@attrs.frozen
class RealmHello(Command):
    realm_id: str
    to_realm: str
    nonce: str

    @classmethod
    def from_arguments(cls, rest: str) -> RealmHello:
        realm_id, to_realm, nonce = words(rest, 3)
        for realm in (realm_id, to_realm):
            if REALM_ID_PATTERN.fullmatch(realm) is None:
                raise BadArgument(f"not a realm id: {realm[:64]!r}")
        if NONCE_PATTERN.fullmatch(nonce) is None:
            raise BadArgument("the nonce must be 32 to 128 lowercase hex digits")
        return cls(realm_id, to_realm, nonce)


@verb("realm-auth")
@attrs.frozen
class RealmAuth(Command):
    proof: str = attrs.field(repr=False)

    @classmethod
    def from_arguments(cls, rest: str) -> RealmAuth:
        (proof,) = words(rest, 1)
        return cls(proof)


@verb("realm-msg")
@attrs.frozen
class RealmMsg(Command):
    """
    One message of a linked realm: a JSON object (see
    L{chat.links.InboundMessage}) on the rest of the line.
    """

    payload: object

    @classmethod
    def from_arguments(cls, rest: str) -> RealmMsg:
        if not rest.strip():
            raise MissingArgument()
        try:
            payload = json.loads(rest)
        except ValueError:
            raise BadArgument("the message is not JSON") from None
        return cls(payload)
