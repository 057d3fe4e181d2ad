"""
Domain exceptions.

Each exception names what went wrong; the protocol maps them to the wire's
error replies (see L{chat.commands}).
"""

from __future__ import annotations

from twisted.cred.error import UnauthorizedLogin


class ChatError(Exception):
    """
    Base class of every expected, user-facing failure.
    """


class UnknownUser(UnauthorizedLogin):
    """
    A login named a user that does not exist.
    """


class WrongPassword(UnauthorizedLogin):
    """
    A login gave the wrong password for an existing user.
    """


class SessionNotFound(UnauthorizedLogin):
    """
    A token is unknown, expired or belongs to a deleted user.
    """


class NoSuchUser(ChatError):
    """
    A command named a user (for example a recipient) that does not exist.
    """

    def __init__(self, username: str) -> None:
        super().__init__(username)
        self.username = username


class UserExists(ChatError):
    """
    An account with this username already exists.
    """

    def __init__(self, username: str) -> None:
        super().__init__(username)
        self.username = username


class InvalidUsername(ChatError):
    """
    A username is outside the allowed character set or length.
    """


class RateLimited(ChatError):
    """
    Too many attempts; the client may try again after C{retry_after} seconds.
    """

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"retry after {retry_after:.3f}s")
        self.retry_after = retry_after


class MailboxFull(ChatError):
    """
    The recipient already has as many undelivered messages as a mailbox
    may hold; nothing was stored.
    """

    def __init__(self, username: str) -> None:
        super().__init__(username)
        self.username = username


class StorageUnavailable(ChatError):
    """
    The store could not complete an operation (disk full, I/O error, ...).

    Nothing was acknowledged; retrying later may succeed.
    """


class SchemaTooNew(ChatError):
    """
    The database was written by a newer version of chat than this one.
    """
