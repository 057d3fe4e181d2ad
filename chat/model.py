"""
Frozen values passed between the realm, the store and the protocol.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from typing import NamedTuple

import attrs

from chat.errors import (
    InvalidFileName,
    InvalidFullName,
    InvalidGroupName,
    InvalidPassword,
    InvalidText,
    InvalidUsername,
)

# The web page checks names with these very rules: chat.web.rules serves
# the patterns, sets and limits below to it. Keep the patterns in what
# JavaScript reads the same way (tests/test_web_js.py checks that it does).

#: The longest username or group name.
MAX_NAME_LENGTH = 32

#: Names of accounts and groups as they may exist (remote realms' users
#: too): lowercase letters, digits, ``_``, ``-`` and ``.``; 1 to 32 long.
USERNAME_PATTERN = re.compile(rf"[a-z0-9_.-]{{1,{MAX_NAME_LENGTH}}}")

#: Group names follow the username rule; on the wire a C{#} marks them.
GROUP_NAME_PATTERN = USERNAME_PATTERN

#: New accounts and groups also start with a letter or a digit (no C{.},
#: C{..} or C{-rf}), and take none of L{RESERVED_NAMES}.
NEW_NAME_PATTERN = re.compile(rf"[a-z0-9][a-z0-9_.-]{{0,{MAX_NAME_LENGTH - 1}}}")

#: Names that would pass for the system or its operators (issue 15): no new
#: account or group takes them, and no linked realm may send from them
#: (bounces come from C{postmaster}).
RESERVED_NAMES = frozenset(
    {
        "abuse",
        "admin",
        "administrator",
        "daemon",
        "everyone",
        "hostmaster",
        "mailer-daemon",
        "moderator",
        "nobody",
        "noreply",
        "no-reply",
        "postmaster",
        "root",
        "security",
        "server",
        "staff",
        "support",
        "sysadmin",
        "system",
        "webmaster",
    }
)

#: The longest file name, in UTF-8 bytes (what most file systems allow).
MAX_FILE_NAME_BYTES = 255

#: Default of the C{--max-file-size} option: the largest file a message
#: carries, in bytes.
DEFAULT_MAX_FILE_SIZE = 1024 * 1024

#: Passwords of new accounts: at least 8 characters (and at most 1024).
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024

#: Full names of new accounts.
MAX_FULL_NAME_LENGTH = 128

#: Unicode categories never allowed in a name: controls (C0, DEL and C1,
#: U+0085 among them), formatting characters (bidi overrides such as
#: U+202E, zero-width spaces), surrogates, and line and paragraph
#: separators (U+2028, U+2029). They reorder, hide or break the text
#: around them on a terminal or a page.
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})

#: The zero-width (non-)joiners are formatting characters that scripts
#: such as Persian, Malayalam or emoji sequences need; they reorder nothing.
JOINERS = frozenset({"\u200c", "\u200d"})

#: Characters Windows refuses in file names (besides controls and the
#: path separators), and look-alikes of the separators and of C{:}.
FILE_NAME_FORBIDDEN = frozenset('<>:"|?*') | frozenset(
    "\u2044\u2215\u2216\u2236\u2571\u2572\u29f5\u29f8\u29f9"
    "\ufe55\ufe68\uff0f\uff1a\uff3c"
)

#: Device names Windows reserves, with or without an extension.
WINDOWS_DEVICES = re.compile(
    r"(con|prn|aux|nul|com[0-9\u00b9\u00b2\u00b3]|lpt[0-9\u00b9\u00b2\u00b3]"
    r"|conin\$|conout\$|clock\$)",
    re.IGNORECASE,
)


def has_unsafe_characters(text: str) -> bool:
    """
    Whether C{text} has a character that no name may contain: a control,
    formatting (bidi, zero-width) or line-separating character.
    """
    return any(
        unicodedata.category(c) in UNSAFE_CATEGORIES and c not in JOINERS for c in text
    )


def _validate_new_name(name: str, what: str, error: type[Exception]) -> str:
    if NEW_NAME_PATTERN.fullmatch(name) is None:
        raise error(
            f"{what} are 1-32 characters: lowercase letters, digits, '_', '-', "
            "'.', starting with a letter or digit"
        )
    if name in RESERVED_NAMES:
        raise error(f"{name!r} is reserved")
    return name


#: The earliest time a message may say it was sent: 2000-01-01 UTC.
EARLIEST_SENT_AT = 946_684_800.0

#: How far ahead of this server's clock a message from another server may
#: say it was sent (their clocks may differ a little, never by a day).
MAX_CLOCK_AHEAD = 86_400.0


def validate_username(username: str) -> str:
    """
    Return C{username} if it is a valid new username.

    @raise InvalidUsername: if it is not (see L{NEW_NAME_PATTERN} and
        L{RESERVED_NAMES}).
    """
    return _validate_new_name(username, "usernames", InvalidUsername)


def validate_password(password: str) -> str:
    """
    Return C{password} if it is acceptable for a new account.

    @raise InvalidPassword: if it is too short or too long.
    """
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise InvalidPassword(
            f"passwords are {MIN_PASSWORD_LENGTH}-{MAX_PASSWORD_LENGTH} characters"
        )
    return password


def validate_full_name(full_name: str) -> str:
    """
    Return C{full_name}, stripped, if it is acceptable for a new account.

    @raise InvalidFullName: if it is empty, too long or has control,
        formatting or line-separating characters.
    """
    full_name = full_name.strip()
    if (
        not full_name
        or len(full_name) > MAX_FULL_NAME_LENGTH
        or has_unsafe_characters(full_name)
    ):
        raise InvalidFullName(
            f"full names are 1-{MAX_FULL_NAME_LENGTH} characters without "
            "control or formatting characters"
        )
    return full_name


def validate_group_name(name: str) -> str:
    """
    Return C{name} if it is a valid new group name (the username rule).

    @raise InvalidGroupName: if it is not.
    """
    return _validate_new_name(name, "group names", InvalidGroupName)


def validate_file_name(name: str) -> str:
    """
    Return C{name} if it is a plain file name a receiver can save as is,
    on any operating system: no directories, nothing hidden or relative,
    nothing invisible, nothing Windows refuses.

    @raise InvalidFileName: saying why, for an empty name or one longer
        than 255 UTF-8 bytes; one with C{/}, C{\\}, C{..}, a leading
        C{.}; a control, formatting or line-separating character; one of
        C{<>:"|?*} or a look-alike of C{/}, C{\\} or C{:}; leading or
        trailing blanks or a trailing C{.}; or a device name Windows
        reserves (C{con}, C{nul.txt}, C{COM1}, ...).
    """
    if not name or len(name.encode("utf-8", "surrogatepass")) > MAX_FILE_NAME_BYTES:
        raise InvalidFileName(f"file names are 1-{MAX_FILE_NAME_BYTES} bytes")
    if "/" in name or "\\" in name or ".." in name or name.startswith("."):
        raise InvalidFileName(
            "file names cannot contain '/', '\\' or '..', nor start with '.'"
        )
    if has_unsafe_characters(name):
        raise InvalidFileName(
            "file names cannot contain control or formatting characters"
        )
    if any(c in FILE_NAME_FORBIDDEN for c in name):
        raise InvalidFileName(
            "file names cannot contain <>:\"|?* nor look-alikes of '/', '\\', ':'"
        )
    if name != name.strip() or name.endswith("."):
        raise InvalidFileName(
            "file names cannot start or end with blanks, nor end with '.'"
        )
    device = name.split(".", 1)[0].rstrip()
    if WINDOWS_DEVICES.fullmatch(device):
        raise InvalidFileName(f"{device!r} is a device name on Windows")
    return name


def plain_file_name(path: str) -> str:
    """
    The file name to keep for what a client sent as one: the last component
    of a path (C{/home/me/hi.txt}, C{C:\\Users\\me\\hi.txt}: clients send
    the path the user typed), validated by L{validate_file_name}.

    @raise InvalidFileName: also for a path with a C{..} component.
    """
    components = path.replace("\\", "/").split("/")
    if ".." in components:
        raise InvalidFileName("file names cannot contain '..'")
    return validate_file_name(components[-1])


def validate_text(text: str, max_bytes: int) -> str:
    """
    Return C{text}, stripped, if it could be a message's text sent as a
    line of the protocol: not empty once stripped, no line feed (the line
    would have ended there) or NUL (refused in any request), valid Unicode
    (no lone surrogates: a request line is UTF-8), at most C{max_bytes} of
    UTF-8.

    @raise InvalidText: if it could not.
    """
    stripped = text.strip()
    if not stripped or "\n" in stripped or "\0" in stripped:
        raise InvalidText("the text is empty or has a line feed or NUL")
    try:
        size = len(stripped.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidText("the text is not valid Unicode") from None
    if size > max_bytes:
        raise InvalidText(f"the text is longer than {max_bytes} bytes")
    return stripped


def validate_sent_at(sent_at: object, now: float) -> float:
    """
    Return C{sent_at} as a float if it is a time a message from another
    server may say it was sent: a number from L{EARLIEST_SENT_AT} to
    L{MAX_CLOCK_AHEAD} after C{now}, so that L{chat.replies.iso_utc} can
    always format it.

    @raise ValueError: if it is not.
    """
    if not isinstance(sent_at, int | float) or isinstance(sent_at, bool):
        raise ValueError("sent_at is not a number")
    try:
        when = float(sent_at)
    except OverflowError:
        raise ValueError("sent_at is out of range") from None
    if not EARLIEST_SENT_AT <= when <= now + MAX_CLOCK_AHEAD:
        raise ValueError("sent_at is before 2000 or more than a day ahead")
    return when


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
class PasswordCheck:
    """
    What checking a password against its stored hash found: whether it
    matches and, if it does but the hash was made with other parameters
    than the server's, a new hash of it made with the server's.
    """

    matches: bool
    new_hash: str | None = attrs.field(default=None, repr=False)


@attrs.frozen
class Rehash:
    """
    A user's password hash to replace with one made with the server's
    parameters: replaced only while it is still C{old_hash}, so that a
    password changed meanwhile (C{chat-admin passwd}) wins.
    """

    old_hash: str = attrs.field(repr=False)
    new_hash: str = attrs.field(repr=False)


@attrs.frozen
class VerifiedPassword:
    """
    The avatar id of a login with the right password (what
    L{chat.checkers.StoreChecker} yields): the user, and the new hash to
    store with the session it opens, if any.
    """

    username: str
    rehash: Rehash | None = None


@attrs.frozen
class Session:
    """
    A login session. Only the sha256 of the token is ever stored.
    """

    token_hash: str
    username: str
    created_at: float
    last_seen_at: float


def base64_length(size: int) -> int:
    """
    The length of the base64 of C{size} bytes.
    """
    return 4 * math.ceil(size / 3)


@attrs.frozen
class Attachment:
    """
    A file sent with a message: its name and its bytes.
    """

    name: str
    content: bytes = attrs.field(repr=False)

    @property
    def size(self) -> int:
        return len(self.content)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @staticmethod
    def fields(
        attachment: Attachment | None,
    ) -> tuple[str | None, int | None, str | None, bytes | None]:
        """
        A L{Message}'s file fields (name, size, sha256, content) for
        C{attachment}, all None for no file.
        """
        if attachment is None:
            return (None, None, None, None)
        return (attachment.name, attachment.size, attachment.sha256, attachment.content)


class Message(NamedTuple):
    """
    A stored message in one mailbox, with the full names captured at send
    time.

    A message to several users (a list, or a group's members) is one
    L{Message} per mailbox, each with its own C{id}. C{group} names the
    group it was sent to, if any. A file message carries the file's
    C{file_name}, C{file_size} and C{file_sha256}, and its bytes in
    C{file_content} (its C{text} is the file name).

    A named tuple, not an attrs class: the store makes one per message
    stored or read, straight from a row of its columns, in this order.
    """

    id: int
    sender: str
    recipient: str
    sender_name: str
    recipient_name: str
    text: str
    sent_at: float
    group: str | None = None
    file_name: str | None = None
    file_size: int | None = None
    file_sha256: str | None = None
    file_content: bytes | None = None

    def __repr__(self) -> str:
        # Not the file's bytes: megabytes in a log line.
        return (
            f"Message(id={self.id!r}, sender={self.sender!r}, "
            f"recipient={self.recipient!r}, text={self.text[:80]!r}, "
            f"sent_at={self.sent_at!r}, group={self.group!r}, "
            f"file_name={self.file_name!r})"
        )

    @property
    def senders_copy(self) -> bool:
        """
        Whether this is the sender's own copy of a group message, stored as
        delivered already (for the sender's history): nothing to push.
        """
        return self.group is not None and self.recipient == self.sender

    @property
    def realm(self) -> str | None:
        """
        The realm a message from another realm came from (its sender is
        C{user@realm}; usernames cannot contain C{@}); None for a local one.
        """
        _, at, realm = self.sender.partition("@")
        return realm if at else None


@attrs.frozen
class Group:
    """
    A named group: its owner and its members, longest-standing first (the
    owner is always a member).
    """

    name: str
    owner: str
    members: tuple[str, ...]
    created_at: float


@attrs.frozen
class Profile:
    """
    What any logged-in user may see of an account: its name, its full name
    and whether it is online.
    """

    username: str
    full_name: str
    online: bool


@attrs.frozen
class Page:
    """
    One page of a history, newest first; C{more} says whether older
    messages remain (ask again with C{before_id} set to the last C{id}).
    """

    messages: tuple[Message, ...]
    more: bool
