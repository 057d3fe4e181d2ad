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


class NoSuchUsers(ChatError):
    """
    A message to several users named some that do not exist (all of them
    are in C{usernames}); nothing was stored.
    """

    def __init__(self, usernames: list[str]) -> None:
        super().__init__(", ".join(usernames))
        self.usernames = usernames


class InvalidUsername(ChatError):
    """
    A new username is outside the allowed character set or length, or
    reserved.
    """


class InvalidPassword(ChatError):
    """
    A new password is too short or too long.
    """


class InvalidFullName(ChatError):
    """
    A new user's full name is empty, too long or has control or
    formatting characters.
    """


class RegistrationClosed(ChatError):
    """
    The server does not allow self-registration.
    """


class InvalidGroupName(ChatError):
    """
    A new group name is outside the allowed character set or length, or
    reserved.
    """


class NoSuchGroup(ChatError):
    """
    A command named a group that does not exist.
    """

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class GroupExists(ChatError):
    """
    A group with this name already exists.
    """

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class NotAMember(ChatError):
    """
    C{username} is not a member of the group C{name}.
    """

    def __init__(self, name: str, username: str) -> None:
        super().__init__(f"{username} is not a member of {name}")
        self.name = name
        self.username = username


class AlreadyAMember(ChatError):
    """
    C{username} already is a member of the group C{name}.
    """

    def __init__(self, name: str, username: str) -> None:
        super().__init__(f"{username} already is a member of {name}")
        self.name = name
        self.username = username


class NotGroupOwner(ChatError):
    """
    Only the group's owner may do this.
    """


class CannotKickSelf(ChatError):
    """
    A group's owner asked to kick themselves (leaving is C{leavegroup}).
    """


class TooManyRecipients(ChatError):
    """
    A message names more distinct recipients than allowed.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(f"at most {limit} recipients")
        self.limit = limit


class InvalidFileName(ChatError):
    """
    A file name is empty, too long, hidden, has a C{..} component or an
    invisible character, or could not be saved on some operating system.
    """


class FileTooLarge(ChatError):
    """
    A file is larger than the server accepts (C{limit} bytes).
    """

    def __init__(self, limit: int) -> None:
        super().__init__(f"files are at most {limit} bytes")
        self.limit = limit


class InvalidText(ChatError):
    """
    A message's text could not have been sent as a line of the protocol:
    empty, too long, with a line feed or NUL, or not valid Unicode.
    """


class QuotaExceeded(ChatError):
    """
    A file would take its sender past their quota of stored files: more
    than C{limit} files (C{quota} is C{"files"}) or bytes (C{"bytes"}).
    Nothing was stored.
    """

    def __init__(self, quota: str, limit: int) -> None:
        super().__init__(f"at most {limit} {quota} of files per user")
        self.quota = quota
        self.limit = limit


class TooManyGroups(ChatError):
    """
    A user already belongs to C{limit} groups (as owner or member), the
    most allowed; nothing changed.
    """

    def __init__(self, username: str, limit: int) -> None:
        super().__init__(f"{username}: at most {limit} groups per user")
        self.username = username
        self.limit = limit


class RateLimited(ChatError):
    """
    Too many attempts; the client may try again after C{retry_after} seconds.
    """

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"retry after {retry_after:.3f}s")
        self.retry_after = retry_after


class ServerBusy(ChatError):
    """
    The server has more work of this kind queued than it takes (password
    hashes: C{--hash-queue-max}); the client may try again after about
    C{retry_after} seconds.
    """

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"server busy; retry after {retry_after:.3f}s")
        self.retry_after = retry_after


class ClientGone(ChatError):
    """
    The connection that asked closed before the work for it started, so
    the work was not done (a queued login is not hashed).
    """


class MailboxFull(ChatError):
    """
    The recipient already has as many undelivered messages as a mailbox
    may hold; nothing was stored.
    """

    def __init__(self, username: str) -> None:
        super().__init__(username)
        self.username = username


class TooManyUnread(ChatError):
    """
    The sender already has as many undelivered messages in the recipient's
    mailbox as one sender may have there (a share of the mailbox, so that
    one sender cannot fill it for everyone); nothing was stored.
    """

    def __init__(self, username: str, limit: int) -> None:
        super().__init__(username)
        self.username = username
        self.limit = limit


class StorageUnavailable(ChatError):
    """
    The store could not complete an operation (disk full, I/O error, ...).

    Nothing was acknowledged; retrying later may succeed.
    """


class DatabaseDamaged(StorageUnavailable):
    """
    The database file is corrupt (SQLite found a malformed page): nothing
    more is written to it. Retrying does not help; restoring a backup does.
    """


class StoreReadOnly(StorageUnavailable):
    """
    The database may be read but not written (the file, or its folder, is
    read-only for this process).
    """


class StoreInUse(StorageUnavailable):
    """
    Another chat server holds the database (the lock of a running server).
    """

    def __init__(self, message: str, pid: int | None) -> None:
        super().__init__(message)
        self.pid = pid


class SchemaTooNew(ChatError):
    """
    The database was written by a newer version of chat than this one.
    """


# Realms (federation between servers, issue 6).


class NoSuchRealm(ChatError):
    """
    No link to this realm is configured.
    """

    def __init__(self, realm_id: str) -> None:
        super().__init__(realm_id)
        self.realm_id = realm_id


class RealmExists(ChatError):
    """
    A link to this realm is already configured.
    """

    def __init__(self, realm_id: str) -> None:
        super().__init__(realm_id)
        self.realm_id = realm_id


class InvalidRealmId(ChatError):
    """
    A realm id is outside the allowed character set or length.
    """


class InvalidSecret(ChatError):
    """
    A link secret is too short or contains whitespace.
    """


class RealmQueueFull(ChatError):
    """
    The outbox of a realm holds as many messages as it may: nothing was
    queued.
    """

    def __init__(self, realm_id: str, limit: int) -> None:
        super().__init__(f"{realm_id}: {limit}")
        self.realm_id = realm_id
        self.limit = limit


class TooManyRealmRecipients(ChatError):
    """
    A message to other realms names more recipients than allowed.
    """


class NotAdmin(ChatError):
    """
    The command is for administrators only.
    """


class RealmsDisabled(ChatError):
    """
    This server runs without federation (no realm links at all).
    """


class RealmAuthFailed(ChatError):
    """
    A realm link's handshake failed: unknown realm, or a wrong proof.
    """


class RealmMismatch(ChatError):
    """
    A realm link's hello was meant for another realm.
    """


class RealmNotAuthenticated(ChatError):
    """
    A link command arrived before the realm handshake completed.
    """


class RealmLinkOnly(ChatError):
    """
    A user command arrived on a realm link, or a link command on a user's
    connection.
    """


class BadRealmMessage(ChatError):
    """
    A message from another realm is malformed.
    """


class ForgedSender(ChatError):
    """
    A realm sent a message claiming to be from a user of another realm, or
    from a name reserved for the system (L{chat.model.RESERVED_NAMES}).
    """
