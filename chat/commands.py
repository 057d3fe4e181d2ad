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

    auth <user> <password>        {"status":"OK","tokenid":"<uuid4>",
                                   "token_id":"<uuid4>","realm_id":<realm>|null}
    send <token> <to> <text...>   {"status":"OK","message":"Message Sent"}
    inbox <token>                 {"status":"OK","messages":{"<from>":[<msg>, ...]}}
    ping [<word>]                 {"status":"OK","message":"PONG"[,"echo":"<word>"]}
    subscribe <token>             {"status":"OK","message":"Subscribed"}, then events
    ack <token> <id>              {"status":"OK","message":"Acknowledged","count":<n>}
    who <token>                   {"status":"OK","users":[{"username":..,
                                                           "full_name":..}, ...]}
    quit                          {"status":"OK","message":"bye"}, then closes

    register <user> <password> [<full name...>]
        {"status":"OK",<auth's keys>,"message":"User Registered","username":"<user>"}
    logout <token>
        {"status":"OK","message":"Logged Out"}
    sendgroup <token> <targets> <text...>
        {"status":"OK","message":"Message Sent"}
    sendfile <token> <to> <file name...> <content>
        {"status":"OK","message":"File Sent",<file>}
    sendgroupfile <token> <targets> <file name...> <content>
        {"status":"OK","message":"File Sent",<file>}
    creategroup [<token>] <group> [<member> ...]
        {"status":"OK","message":"Group Created","group":<group>}
    joingroup <token> <group>
        {"status":"OK","message":"Group Joined","group":<group>}
    leavegroup <token> <group>
        {"status":"OK","message":"Group Left","group":<group>|null}
    kickgroup <token> <group> <user>
        {"status":"OK","message":"Member Removed","group":<group>}
    groups <token>
        {"status":"OK","groups":[<group>, ...]}
    allgroups [<token>]
        {"status":"OK","groups":[<group>, ...],"more":<bool>}
    users [<token>]
        {"status":"OK","users":[{"username":..,"full_name":..,"online":..}, ...],
         "more":<bool>}
    privateinbox <token> <user>
        {"status":"OK","messages":{"<user>":[<msg>, ...]}}
    history <token> <user>|#<group> [<limit> [<before id>]]
        {"status":"OK","messages":[<msg>, ...],"next_before_id":<id>|null}

    <msg> = {"msg_from":"<full name>","msg_to":"<full name>","msg":"<text>",
             "id":<int>,"sent_at":"<ISO-8601 UTC>","from":"<user>","to":"<user>"
             [,"group":"<group>"]
             [,"file_name":"<name>","file_size":<bytes>,"file_sha256":"<hex>",
               "file_content":"<base64>"]}
    <file> = "file_name":"<name>","file_size":<bytes>,"file_sha256":"<hex>",
             "address":"<name>"
    <group> = {"name":"<group>","owner":"<user>","members":["<user>", ...],
               "created_at":"<ISO-8601 UTC>"}
    <targets> = <user>[,<user>...] | #<group> | <group> (no such user)
    <content> = base64 | b'base64' (the Python repr of base64 bytes)
    <file name> = a name, or a path (its last component is kept); the
                  content may come first, as b'base64'

Without a token, creategroup, allgroups and users act for the user who
logged in with auth (or register) on this connection. The course family's
spellings of these commands are in L{chat.aliases.ALIASES}.

Other realms (linked chat servers; see chat.federation)::

    send <token> <user>@<realm> <text...>
                                  {"status":"OK","message":"Message Sent"}
    sendprivaterealm <token> <realm> <user> <text...>
                                  {"status":"OK","message":"Message Sent to Realm"}
    sendgrouprealm <token> <realm> <user>,<user>,... <text...>
                                  {"status":"OK",
                                   "message":"Message Sent to Group in Realm"}
    sendfilerealm <token> <realm> <user>[,<user>...] <file name...> <content>
                                  {"status":"OK","message":"File Sent to Realm",
                                   <file>}
      (also sendprivatefilerealm; sendgroupfilerealm answers
       "File Sent to Group in Realm")
    sendfile <token> <user>@<realm> <file name...> <content>
                                  {"status":"OK","message":"File Sent to Realm",
                                   <file>}
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
                                   "realm":..,"proof":..,"max_line":..,
                                   "files":true}
    realm-msg <json>              {"status":"OK","message":"Delivered","id":..,
                                   "delivered":<n>,"unknown":[..],"duplicate":..}

    <json> = {"id":<uid>,"from":"<user>","from_name":..,"to":["<user>", ...],
              "msg":"<text>","sent_at":<seconds>
              [,"file_name":"<name>","file_size":<bytes>,"file_sha256":"<hex>",
                "file_content":"<base64>"]}    (a file: msg is its name)

    <msg> = {"msg_from":"<full name>","msg_to":"<full name>","msg":"<text>",
             "id":<int>,"sent_at":"<ISO-8601 UTC>","from":"<user>","to":"<user>"
             [,"realm":"<realm>"]}    (from is <user>@<realm> for another realm's)

<text...> is the rest of the line after <to>, surrounding whitespace
stripped and inner whitespace kept; it must not be empty. <full name...> is
the rest of the line the same way. <file name...> is everything between
<to> (or <targets>) and <content>, the last word (base64 has no spaces), so
a name may hold spaces; a one-word name reads as it always did. A <group>
argument may carry a leading C{#}. <limit> is 1-500 (default 50);
<before id> (exclusive) pages back.

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
    User Tidak Ditemukan      no_such_user       no such recipient (for several:
                                                 "User Tidak Ditemukan: a, b" and
                                                 "users":["a","b"])
    invalid UTF-8 in request  bad_encoding       the line is not UTF-8
    NUL byte in request       bad_request        the line contains a NUL byte
    line too long             line_too_long      then the server closes the connection
    storage unavailable       storage_unavailable  nothing was stored; retry later
    too many attempts         rate_limited       with "retry_after_ms"
    Realm Tidak Ditemukan     no_such_realm      no link to that realm
    Realm sudah ada           realm_exists       addrealm: the realm is linked already
    realm queue full          realm_queue_full   too many messages wait for that realm
    not an administrator      not_admin          addrealm by a user who is not one
    realm authentication failed  realm_auth_failed  then the server closes the link
    mailbox full              mailbox_full       send: the recipient's mailbox is full
    too many unread messages from you  unread_limit  send: too many of yours
                                                 wait in that mailbox
    login timeout             login_timeout      not logged in in time (only with
                                                 --login-timeout); then closes
    idle timeout              idle_timeout       silent too long (only with
                                                 --idle-timeout); then closes
    line timeout              line_timeout       a line stopped arriving; then closes
    server busy               server_busy        too many bytes held for connections
                                                 not logged in; then closes
    too many connections      too_many_connections  instead of any reply; then closes
    internal error            internal           a bug: logged on the server

    registration is disabled      registration_closed  no --registration open
    invalid username: ...         invalid_username     register: bad characters/length,
                                                       or a reserved name
    invalid password: ...         invalid_password     register: not 8-1024 characters
    invalid full name: ...        invalid_full_name    register: empty, long, control
                                                       or formatting characters
    user already exists           user_exists          register: the username is taken
    invalid group name: ...       invalid_group_name   creategroup: bad name
    no such group                 no_such_group        the group does not exist
    group already exists          group_exists         creategroup: the name is taken
    not a member of the group     not_a_member         the caller, or the user to kick
    already a member of the group already_member       joingroup twice
    only the group owner can do this  not_owner        kickgroup by another member
    the owner cannot kick themselves  cannot_kick_self use leavegroup instead
    too many recipients           too_many_recipients  with "max_recipients"
    invalid file name: ...        invalid_file_name    empty, over 255 bytes, hidden,
                                                       '..', invisible, unsafe somewhere
    file too large                file_too_large       with "max_file_size" (bytes)
    file quota exceeded           quota_exceeded       a new file past the sender's
                                                       stored files: with "quota"
                                                       (files|bytes) and "limit"
    too many groups               too_many_groups      with "max_groups"
    invalid base64 content        invalid_base64       the file content is not base64
    invalid limit: ...            invalid_argument     history: limit or before id
"""

from __future__ import annotations

import base64
import binascii
import json
import re

import attrs

from chat.aliases import ALIASES
from chat.grammar import (
    VERBS,
    BadEncoding,
    Command,
    InvalidArgument,
    InvalidBase64,
    MissingArgument,
    NulByte,
    UnknownCommand,
    verb,
    words,
    words_and_text,
    words_name_and_content,
)
from chat.grammar import BadCommand as BadCommand
from chat.links import NONCE_PATTERN, REALM_ID_PATTERN
from chat.model import base64_length

#: history: the default and the largest number of messages per page.
HISTORY_LIMIT = 50
HISTORY_MAX_LIMIT = 500

#: Room on a request line for everything but a file's base64: the command
#: word, the token, the recipients and the file name.
COMMAND_ALLOWANCE = 16 * 1024


def max_line_for_file(max_file_size: int) -> int:
    """
    The shortest request line that carries a file of C{max_file_size}
    bytes: its base64 (in the C{b'...'} form), plus L{COMMAND_ALLOWANCE}.
    """
    return base64_length(max_file_size) + len("b''") + COMMAND_ALLOWANCE


@attrs.frozen
class TokenCommand(Command):
    """
    A command whose one argument is the session token.
    """

    token: str = attrs.field(repr=False)

    @classmethod
    def from_arguments(cls, rest: str) -> Command:
        return cls(*words(rest, 1))


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
class Inbox(TokenCommand):
    pass


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
class Subscribe(TokenCommand):
    pass


#: The largest message id (a 64-bit signed integer in the store).
MAX_ID = 2**63 - 1


def message_id(word: str) -> int:
    """
    A message id argument: 0 to L{MAX_ID}.

    @raise InvalidArgument: for anything else.
    """
    if not word.isascii() or not word.isdigit() or len(word) > 19:
        raise InvalidArgument("the message id must be a number")
    value = int(word)
    if value > MAX_ID:
        raise InvalidArgument("the message id must be a number")
    return value


@verb("ack")
@attrs.frozen
class Ack(Command):
    token: str = attrs.field(repr=False)
    up_to_id: int

    @classmethod
    def from_arguments(cls, rest: str) -> Ack:
        token, up_to_id = words(rest, 2)
        return cls(token, message_id(up_to_id))


@verb("who")
@attrs.frozen
class Who(TokenCommand):
    pass


@verb("register")
@attrs.frozen
class Register(Command):
    """
    Without a full name (as several of the course family's clients send
    it), the username is the full name.
    """

    username: str
    password: str = attrs.field(repr=False)
    full_name: str

    @classmethod
    def from_arguments(cls, rest: str) -> Register:
        found = rest.split(None, 2)
        if len(found) < 2:
            raise MissingArgument()
        username, password = found[:2]
        full_name = found[2].strip() if len(found) > 2 else ""
        return cls(username, password, full_name or username)


@verb("logout")
@attrs.frozen
class Logout(TokenCommand):
    pass


def group_name(word: str) -> str:
    """
    A group argument: the name, without the optional leading C{#}.
    """
    return word[1:] if word.startswith("#") else word


@attrs.frozen
class Targets:
    """
    Where a message to several goes: C{#<group>}, or a comma-separated list
    of users (duplicates and empty items dropped, order kept). A single
    name without C{#} or comma is also in C{name}: it means that user, or
    else the group of that name (the course family's C{sendgroup <token>
    team hi}).
    """

    users: tuple[str, ...] = ()
    group: str | None = None
    name: str | None = None

    @classmethod
    def parse(cls, word: str) -> Targets:
        if word.startswith("#"):
            return cls(group=word[1:])
        if "," not in word:
            return cls(users=(word,), name=word)
        users = tuple(dict.fromkeys(u for u in word.split(",") if u))
        if not users:
            raise MissingArgument()
        return cls(users=users)


@verb("sendgroup")
@attrs.frozen
class SendGroup(Command):
    token: str = attrs.field(repr=False)
    targets: Targets
    text: str

    @classmethod
    def from_arguments(cls, rest: str) -> SendGroup:
        (token, targets), text = words_and_text(rest, 2)
        return cls(token, Targets.parse(targets), text)


_BYTES_REPR = re.compile(r"b(['\"])(.*)\1", re.DOTALL)


def decode_file_content(text: str) -> bytes:
    """
    File bytes from bare base64, or from the Python repr of base64 bytes
    (C{b'aGk='}), which the course family's clients send.

    @raise InvalidBase64: for anything else.
    """
    found = _BYTES_REPR.fullmatch(text)
    if found is not None:
        text = found.group(2)
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise InvalidBase64() from None


def file_name_and_content(file_name: str, content: str) -> tuple[str, bytes]:
    """
    The file name and the decoded content of a file command, given the name
    (which may hold spaces) and the last word. One of the course family's
    clients sends the content before the name (C{b'aGk=' my notes.txt}): a
    first word in the C{b'...'} form, when the last word is not base64, is
    taken for that order.

    @raise InvalidBase64: if the content is not base64 in either order.
    """
    try:
        return file_name, decode_file_content(content)
    except InvalidBase64:
        first, *rest = file_name.split(None, 1)
        if _BYTES_REPR.fullmatch(first) is None:
            raise
        return " ".join([*rest, content]), decode_file_content(first)


@verb("sendfile")
@attrs.frozen
class SendFile(Command):
    token: str = attrs.field(repr=False)
    recipient: str
    file_name: str
    content: bytes = attrs.field(repr=False)

    @classmethod
    def from_arguments(cls, rest: str) -> SendFile:
        (token, recipient), file_name, content = words_name_and_content(rest, 2)
        return cls(token, recipient, *file_name_and_content(file_name, content))


@verb("sendgroupfile")
@attrs.frozen
class SendGroupFile(Command):
    token: str = attrs.field(repr=False)
    targets: Targets
    file_name: str
    content: bytes = attrs.field(repr=False)

    @classmethod
    def from_arguments(cls, rest: str) -> SendGroupFile:
        (token, targets), file_name, content = words_name_and_content(rest, 2)
        return cls(
            token, Targets.parse(targets), *file_name_and_content(file_name, content)
        )


@attrs.frozen
class GroupCommand(Command):
    """
    A command taking the token and a group (with or without its C{#}).
    """

    token: str = attrs.field(repr=False)
    group: str

    @classmethod
    def from_arguments(cls, rest: str) -> Command:
        token, name = words(rest, 2)
        return cls(token, group_name(name))


def usernames(words: list[str]) -> tuple[str, ...]:
    """
    Usernames given as words, each possibly a comma-separated list:
    duplicates and empty items dropped, order kept.
    """
    return tuple(dict.fromkeys(n for word in words for n in word.split(",") if n))


@verb("creategroup")
@attrs.frozen
class CreateGroup(Command):
    """
    C{creategroup <token> <group> [<member> ...]}; a single word is the
    group, created by the session this connection logged in with (C{auth}).
    """

    token: str | None = attrs.field(repr=False)
    group: str
    members: tuple[str, ...] = ()

    @classmethod
    def from_arguments(cls, rest: str) -> CreateGroup:
        found = rest.split()
        if not found:
            raise MissingArgument()
        if len(found) == 1:
            return cls(None, group_name(found[0]))
        token, name, *members = found
        return cls(token, group_name(name), usernames(members))


@verb("joingroup")
@attrs.frozen
class JoinGroup(GroupCommand):
    pass


@verb("leavegroup")
@attrs.frozen
class LeaveGroup(GroupCommand):
    pass


@verb("kickgroup")
@attrs.frozen
class KickGroup(Command):
    token: str = attrs.field(repr=False)
    group: str
    username: str

    @classmethod
    def from_arguments(cls, rest: str) -> KickGroup:
        token, name, username = words(rest, 3)
        return cls(token, group_name(name), username)


@verb("groups")
@attrs.frozen
class Groups(TokenCommand):
    pass


@verb("privateinbox")
@attrs.frozen
class PrivateInbox(Command):
    token: str = attrs.field(repr=False)
    peer: str

    @classmethod
    def from_arguments(cls, rest: str) -> PrivateInbox:
        return cls(*words(rest, 2))


@attrs.frozen
class ListCommand(Command):
    """
    A list of the server's users or groups: C{<verb> [<token>]}, without a
    token for the session this connection logged in with (C{auth}).
    C{shape} names the reply's shape (L{chat.compat.SHAPES}) when an alias
    asks for one.
    """

    token: str | None = attrs.field(repr=False)
    shape: str | None = None

    @classmethod
    def from_arguments(cls, rest: str) -> Command:
        found = rest.split(None, 1)
        return cls(found[0] if found else None)


@verb("users")
@attrs.frozen
class Users(ListCommand):
    pass


@verb("allgroups")
@attrs.frozen
class AllGroups(ListCommand):
    pass


_NUMBER = re.compile(r"[0-9]{1,18}")


def _number(text: str, what: str, low: int, high: int) -> int:
    if _NUMBER.fullmatch(text) is None or not low <= int(text) <= high:
        raise InvalidArgument(f"invalid {what}: expected {low}-{high}")
    return int(text)


@verb("history")
@attrs.frozen
class History(Command):
    token: str = attrs.field(repr=False)
    peer: str | None
    group: str | None
    limit: int = HISTORY_LIMIT
    before_id: int | None = None
    shape: str | None = None

    @classmethod
    def from_arguments(cls, rest: str) -> History:
        found = rest.split()
        if len(found) < 2:
            raise MissingArgument()
        token, target = found[:2]
        limit = HISTORY_LIMIT
        before_id = None
        if len(found) > 2:
            limit = _number(found[2], "limit", 1, HISTORY_MAX_LIMIT)
        if len(found) > 3:
            before_id = _number(found[3], "before id", 1, MAX_ID)
        if target.startswith("#"):
            return cls(token, None, target[1:], limit, before_id)
        return cls(token, target, None, limit, before_id)


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
    word = found[0].lower()
    rest = found[1] if len(found) > 1 else ""
    command = VERBS.get(word)
    if command is None:
        alias = ALIASES.get(word)
        if alias is None:
            raise UnknownCommand()
        return alias.parse(rest)
    return command.from_arguments(rest)


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


@verb("sendfilerealm")
@attrs.frozen
class SendFileRealm(Command):
    """
    The course family's file for users of another realm (also spelled
    C{sendprivatefilerealm} and C{sendgroupfilerealm}, L{chat.aliases}):
    its arguments are read as C{sendfile}'s after the realm and the
    recipients (usernames there, comma-separated). The file goes in the
    outbox for that realm, as C{sendgrouprealm}'s text does
    (L{chat.federation}). C{shape} is the reply's (L{chat.compat.SHAPES}):
    C{sendgroupfilerealm}'s says "File Sent to Group in Realm".
    """

    token: str = attrs.field(repr=False)
    realm_id: str
    recipients: tuple[str, ...]
    file_name: str
    content: bytes = attrs.field(repr=False)
    shape: str | None = None

    @classmethod
    def from_arguments(cls, rest: str) -> SendFileRealm:
        (token, realm_id, recipients), file_name, content = words_name_and_content(
            rest, 3
        )
        names = tuple(name for name in recipients.split(",") if name)
        if not names:
            raise MissingArgument()
        return cls(token, realm_id, names, *file_name_and_content(file_name, content))


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
        raise InvalidArgument("the port must be a number from 1 to 65535")
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
                raise InvalidArgument(f"not a realm id: {realm[:64]!r}")
        if NONCE_PATTERN.fullmatch(nonce) is None:
            raise InvalidArgument("the nonce must be 32 to 128 lowercase hex digits")
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
            raise InvalidArgument("the message is not JSON") from None
        return cls(payload)
