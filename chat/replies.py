"""
Replies and events, formatted for the wire: JSON objects, compact and
ASCII-only (so the course client may decode each chunk it reads alone),
without the line protocol's delimiter (the door adds what its transport
needs), and the table of domain errors and their replies.

Every reply and event the server writes is made here, at the edge; nothing
below the dispatcher builds wire dicts. Messages are formatted as text
directly, not as dicts for json.dumps: an inbox carries many messages, and
this is the hot path (the tests check the result is json.dumps's).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from json.encoder import encode_basestring_ascii
from typing import Any

from twisted.python.failure import Failure

from chat.errors import (
    AlreadyAMember,
    BadRealmMessage,
    CannotKickSelf,
    ClientGone,
    FileTooLarge,
    ForgedSender,
    GroupExists,
    InvalidFileName,
    InvalidFullName,
    InvalidGroupName,
    InvalidPassword,
    InvalidRealmId,
    InvalidUsername,
    MailboxFull,
    NoSuchGroup,
    NoSuchRealm,
    NoSuchUser,
    NoSuchUsers,
    NotAdmin,
    NotAMember,
    NotGroupOwner,
    QuotaExceeded,
    RateLimited,
    RealmExists,
    RealmLinkOnly,
    RealmMismatch,
    RealmNotAuthenticated,
    RealmQueueFull,
    RealmsDisabled,
    RegistrationClosed,
    ServerBusy,
    SessionNotFound,
    StorageUnavailable,
    TooManyGroups,
    TooManyRealmRecipients,
    TooManyRecipients,
    TooManyUnread,
    UnknownUser,
    UserExists,
    WrongPassword,
)
from chat.logs import make_logger
from chat.model import Group, Message, Page, Profile

#: What ends each reply and event on the line transport.
DELIMITER = b"\r\n\r\n"

_log = make_logger("chat.replies")


def ok(**fields: object) -> dict[str, object]:
    return {"status": "OK", **fields}


def error(message: str, code: str, **fields: object) -> dict[str, object]:
    return {"status": "ERROR", "message": message, "code": code, **fields}


def dumps(reply: dict[str, object]) -> bytes:
    """
    One reply or event as compact, ASCII-only JSON (without the delimiter).
    """
    return json.dumps(reply, separators=(",", ":")).encode("ascii")


def encode(reply: dict[str, object]) -> bytes:
    """
    Serialize one reply or event for the line transport.
    """
    return dumps(reply) + DELIMITER


# Replies and events that carry messages. They are built as text directly
# (with the json module's own string escaping), not as dicts for
# json.dumps: an inbox carries many messages, and this is the hot path.
# The result is what json.dumps would give for the same keys (checked by
# the tests).

_ISO_SECONDS: dict[int, str] = {}

#: The first and the last millisecond a datetime holds, as POSIX times.
_EARLIEST = datetime(1, 1, 1, tzinfo=timezone.utc).timestamp()
_LATEST = datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=timezone.utc).timestamp()


def iso_utc(when: float) -> str:
    """
    Format a POSIX timestamp as ISO-8601 UTC with millisecond precision
    (C{2026-12-02T04:17:55.123Z}), as C{datetime.isoformat} does: the
    microseconds rounded, then cut to milliseconds.

    Any float is formatted, so that a reply carrying messages can always
    be built once the store has handed them out (and marked them
    delivered): a time past what a datetime holds (a row written before
    links were validated, a clock gone wrong) is shown as the nearest
    time it holds, and NaN as the epoch.
    """
    if not _EARLIEST <= when <= _LATEST:
        when = 0.0 if when != when else min(max(when, _EARLIEST), _LATEST)
    fraction, whole = math.modf(when)
    micros = round(fraction * 1_000_000)
    if micros < 0 or whole < 0:
        return _iso_slow(when)
    seconds = int(whole)
    if micros >= 1_000_000:
        seconds += 1
        micros -= 1_000_000
    prefix = _ISO_SECONDS.get(seconds)
    if prefix is None:
        if len(_ISO_SECONDS) > 4096:
            _ISO_SECONDS.clear()
        prefix = _ISO_SECONDS[seconds] = datetime.fromtimestamp(
            seconds, timezone.utc
        ).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{prefix}.{micros // 1000:03d}Z"


def _iso_slow(when: float) -> str:
    moment = datetime.fromtimestamp(when, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


_quote = encode_basestring_ascii


def message_json(message: Message) -> str:
    """
    A message as the course's shape plus our keys, as JSON text: C{msg_from},
    C{msg_to}, C{msg} (the course's), C{id}, C{sent_at}, C{from}, C{to};
    C{group} and the C{file_*} keys only when set, C{realm} only for a
    message from another realm.
    """
    text = (
        f'{{"msg_from":{_quote(message.sender_name)},'
        f'"msg_to":{_quote(message.recipient_name)},'
        f'"msg":{_quote(message.text)},'
        f'"id":{message.id},'
        f'"sent_at":"{iso_utc(message.sent_at)}",'
        f'"from":{_quote(message.sender)},'
        f'"to":{_quote(message.recipient)}'
    )
    group = message.group
    if group is not None:
        text += f',"group":{_quote(group)}'
    file_name = message.file_name
    if file_name is not None:
        text += (
            f',"file_name":{_quote(file_name)},'
            f'"file_size":{json.dumps(message.file_size)},'
            f'"file_sha256":{json.dumps(message.file_sha256)}'
        )
        content = message.file_content
        if content is not None:
            text += f',"file_content":"{base64.b64encode(content).decode("ascii")}"'
    if "@" in message.sender:
        text += f',"realm":{_quote(message.realm)}'  # type: ignore[arg-type]
    return text + "}"


def inbox_json(messages: Sequence[Message]) -> bytes:
    """
    The course's inbox reply: the messages grouped by sender, in send
    order.
    """
    grouped: dict[str, list[str]] = {}
    for message in messages:
        found = grouped.get(message.sender)
        if found is None:
            grouped[message.sender] = [message_json(message)]
        else:
            found.append(message_json(message))
    body = ",".join(
        f"{_quote(sender)}:[{','.join(items)}]" for sender, items in grouped.items()
    )
    return f'{{"status":"OK","messages":{{{body}}}}}'.encode("ascii")


def history_json(page: Page) -> bytes:
    """
    One page of a history, newest first, and where the next page starts.
    """
    messages = page.messages
    next_before_id = messages[-1].id if page.more and messages else None
    items = ",".join(message_json(message) for message in messages)
    return (
        f'{{"status":"OK","messages":[{items}],'
        f'"next_before_id":{json.dumps(next_before_id)}}}'
    ).encode("ascii")


def message_event(message: Message) -> bytes:
    """
    The event pushed to a subscriber for one message.
    """
    return f'{{"event":"message",{message_json(message)[1:]}'.encode("ascii")


def presence_event(username: str, full_name: str, online: bool) -> bytes:
    return dumps(
        {
            "event": "presence",
            "user": username,
            "full_name": full_name,
            "online": online,
        }
    )


def unsubscribed_event(reason: str) -> bytes:
    return dumps({"event": "unsubscribed", "reason": reason})


def group_fields(group: Group) -> dict[str, object]:
    """
    A group as the replies carry it.
    """
    return {
        "name": group.name,
        "owner": group.owner,
        "members": list(group.members),
        "created_at": iso_utc(group.created_at),
    }


def profile_fields(profile: Profile) -> dict[str, object]:
    """
    A user's public profile as the user list carries it.
    """
    return {
        "username": profile.username,
        "full_name": profile.full_name,
        "online": profile.online,
    }


#: Domain failures and their wire replies: the message is formatted with
#: the exception ("{}" is its text).
ERRORS: dict[type[Exception], tuple[str, str]] = {
    UnknownUser: ("User Tidak Ada", "unknown_user"),
    WrongPassword: ("Password Salah", "wrong_password"),
    SessionNotFound: ("Session Tidak Ditemukan", "no_session"),
    NoSuchUser: ("User Tidak Ditemukan", "no_such_user"),
    NoSuchUsers: ("User Tidak Ditemukan: {}", "no_such_user"),
    StorageUnavailable: ("storage unavailable", "storage_unavailable"),
    RegistrationClosed: ("registration is disabled", "registration_closed"),
    InvalidUsername: ("invalid username: {}", "invalid_username"),
    InvalidPassword: ("invalid password: {}", "invalid_password"),
    InvalidFullName: ("invalid full name: {}", "invalid_full_name"),
    UserExists: ("user already exists", "user_exists"),
    InvalidGroupName: ("invalid group name: {}", "invalid_group_name"),
    NoSuchGroup: ("no such group", "no_such_group"),
    GroupExists: ("group already exists", "group_exists"),
    NotAMember: ("not a member of the group", "not_a_member"),
    AlreadyAMember: ("already a member of the group", "already_member"),
    NotGroupOwner: ("only the group owner can do this", "not_owner"),
    CannotKickSelf: ("the owner cannot kick themselves", "cannot_kick_self"),
    TooManyRecipients: ("too many recipients", "too_many_recipients"),
    InvalidFileName: ("invalid file name: {}", "invalid_file_name"),
    FileTooLarge: ("file too large", "file_too_large"),
    QuotaExceeded: ("file quota exceeded", "quota_exceeded"),
    TooManyGroups: ("too many groups", "too_many_groups"),
    MailboxFull: ("mailbox full", "mailbox_full"),
    TooManyUnread: ("too many unread messages from you", "unread_limit"),
    ServerBusy: ("server busy", "server_busy"),
    # Answered to no one: the connection is closed.
    ClientGone: ("connection closed", "closed"),
    # Other realms (chat.federation).
    NoSuchRealm: ("Realm Tidak Ditemukan", "no_such_realm"),
    RealmExists: ("Realm sudah ada", "realm_exists"),
    InvalidRealmId: ("invalid realm id", "invalid_realm_id"),
    RealmQueueFull: ("realm queue full", "realm_queue_full"),
    TooManyRealmRecipients: ("too many recipients", "too_many_recipients"),
    NotAdmin: ("not an administrator", "not_admin"),
    RealmsDisabled: ("realms are not enabled", "realms_disabled"),
    RealmMismatch: ("wrong realm", "wrong_realm"),
    RealmNotAuthenticated: ("realm not authenticated", "realm_not_authenticated"),
    RealmLinkOnly: ("not allowed on a realm link", "realm_link"),
    ForgedSender: ("forged sender", "forged_sender"),
    BadRealmMessage: ("malformed realm message", "bad_realm_message"),
}

#: Extra keys of some error replies.
ERROR_FIELDS: dict[type[Exception], Callable[[Any], dict[str, object]]] = {
    NoSuchUsers: lambda e: {"users": list(e.usernames)},
    NotAMember: lambda e: {"group": e.name, "username": e.username},
    TooManyRecipients: lambda e: {"max_recipients": e.limit},
    FileTooLarge: lambda e: {"max_file_size": e.limit},
    MailboxFull: lambda e: {"username": e.username},
    TooManyUnread: lambda e: {"username": e.username, "limit": e.limit},
    BadRealmMessage: lambda e: {"reason": str(e)},
    QuotaExceeded: lambda e: {"quota": e.quota, "limit": e.limit},
    TooManyGroups: lambda e: {"max_groups": e.limit},
    ServerBusy: lambda e: {"retry_after_ms": max(1, round(e.retry_after * 1000))},
}


def error_reply(
    failure: BaseException, verb: str | None = None, peer: str = ""
) -> bytes:
    """
    The wire reply for a failed command: the course's message where it has
    one; C{internal error} (and the failure logged) for anything
    unexpected.
    """
    reply_bytes = getattr(failure, "reply_bytes", None)
    if reply_bytes is not None:
        return bytes(reply_bytes())
    if isinstance(failure, RateLimited):
        return dumps(
            error(
                "too many attempts",
                "rate_limited",
                retry_after_ms=max(1, round(failure.retry_after * 1000)),
            )
        )
    for kind in type(failure).__mro__:
        found = ERRORS.get(kind)
        if found is not None:
            message, code = found
            fields = ERROR_FIELDS.get(kind)
            extra = {} if fields is None else fields(failure)
            return dumps(error(message.format(failure), code, **extra))
    _log.failure(
        "Unexpected error for {command} from {peer}",
        Failure(failure),
        command=verb,
        peer=peer,
    )
    return INTERNAL_ERROR


def _constant(reply: dict[str, object]) -> bytes:
    return dumps(reply)


MESSAGE_SENT = _constant(ok(message="Message Sent"))
PONG = _constant(ok(message="PONG"))
SUBSCRIBED = _constant(ok(message="Subscribed"))
LOGGED_OUT = _constant(ok(message="Logged Out"))
BYE = _constant(ok(message="bye"))
NO_SESSION = error_reply(SessionNotFound())
INTERNAL_ERROR = _constant(error("internal error", "internal"))
ACKNOWLEDGED = b'{"status":"OK","message":"Acknowledged","count":'
