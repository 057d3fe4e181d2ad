"""
Frozen values passed between the realm, the store and the protocol.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

import attrs

from chat.errors import InvalidUsername

#: Usernames: lowercase letters, digits, ``_``, ``-`` and ``.``; 1 to 32 long.
USERNAME_PATTERN = re.compile(r"[a-z0-9_.-]{1,32}")


def validate_username(username: str) -> str:
    """
    Return C{username} if it is a valid new username.

    @raise InvalidUsername: if it is not.
    """
    if USERNAME_PATTERN.fullmatch(username) is None:
        raise InvalidUsername(
            "usernames are 1-32 characters: lowercase letters, digits, '_', '-', '.'"
        )
    return username


def iso_utc(when: float) -> str:
    """
    Format a POSIX timestamp as ISO-8601 UTC with millisecond precision.
    """
    moment = datetime.fromtimestamp(when, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@attrs.frozen
class User:
    """
    An account. C{password_hash} is an argon2id PHC string.
    """

    username: str
    full_name: str
    country: str
    password_hash: str


@attrs.frozen
class Session:
    """
    A login session. Only the sha256 of the token is ever stored.
    """

    token_hash: str
    username: str
    created_at: float
    last_seen_at: float


@attrs.frozen
class Message:
    """
    A stored private message, with the full names captured at send time.
    """

    id: int
    sender: str
    recipient: str
    sender_name: str
    recipient_name: str
    text: str
    sent_at: float

    @property
    def realm(self) -> str | None:
        """
        The realm a message from another realm came from (its sender is
        C{user@realm}; usernames cannot contain C{@}); None for a local one.
        """
        _, at, realm = self.sender.partition("@")
        return realm if at else None

    def to_wire(self) -> dict[str, object]:
        """
        The course's message shape plus our extra keys; C{realm} only for a
        message from another realm.
        """
        wire: dict[str, object] = {
            "msg_from": self.sender_name,
            "msg_to": self.recipient_name,
            "msg": self.text,
            "id": self.id,
            "sent_at": iso_utc(self.sent_at),
            "from": self.sender,
            "to": self.recipient,
        }
        realm = self.realm
        if realm is not None:
            wire["realm"] = realm
        return wire
