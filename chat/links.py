"""
Realm links, the pure part: realm ids, link records, the handshake's
proofs, the messages a link carries, and bounces. No Twisted here; the
connections are in L{chat.federation}.

Addresses: a user of another realm is C{<user>@<realm id>}. Usernames
cannot contain C{@}, so a message whose sender contains one came from
another realm, and the part after the C{@} is that realm.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Sequence

import attrs

from chat.errors import (
    BadRealmMessage,
    ChatError,
    FileTooLarge,
    ForgedSender,
    InvalidRealmId,
    InvalidSecret,
)
from chat.model import (
    RESERVED_NAMES,
    USERNAME_PATTERN,
    Attachment,
    Message,
    base64_length,
    validate_file_name,
    validate_full_name,
    validate_sent_at,
    validate_text,
)

#: Realm ids: lowercase letters, digits, '.' and '-'; 1 to 63 long,
#: starting with a letter or digit (a host name label's alphabet).
REALM_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9.-]{0,62}")

#: Handshake nonces: 16 to 64 random bytes, in lowercase hex.
NONCE_PATTERN = re.compile(r"[0-9a-f]{32,128}")

#: Proofs: an HMAC-SHA256, in lowercase hex.
PROOF_PATTERN = re.compile(r"[0-9a-f]{64}")

#: Names the link protocol version inside every proof.
PROTOCOL = "chat-realm-v1"

#: Shortest link secret accepted (characters).
MIN_SECRET_LENGTH = 16

#: Most recipients of one message to other realms.
MAX_RECIPIENTS = 100

#: Longest message id a realm may send.
MAX_UID_LENGTH = 128

#: Longest full name a realm may send.
MAX_NAME_LENGTH = 128

#: The user bounces come from, at the realm that could not deliver.
POSTMASTER = "postmaster"
POSTMASTER_NAME = "Mail Delivery System"

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

#: A sha256 in lowercase hex.
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")


def validate_realm_id(realm_id: str) -> str:
    """
    Return C{realm_id} if it is a valid realm id.

    @raise InvalidRealmId: if it is not.
    """
    if REALM_ID_PATTERN.fullmatch(realm_id) is None:
        raise InvalidRealmId(
            "realm ids are 1-63 characters: lowercase letters, digits, '.', '-'"
        )
    return realm_id


def realm_id_from_hostname(hostname: str) -> str:
    """
    A realm id made from a host name: lowercased, every other character
    replaced by C{-}, at most 63 long; C{localhost} if nothing is left.
    """
    text = re.sub(r"[^a-z0-9.-]+", "-", hostname.strip().lower())
    text = text.strip(".-")[:63].rstrip(".-")
    return text if REALM_ID_PATTERN.fullmatch(text) else "localhost"


def validate_secret(secret: str) -> str:
    """
    Return C{secret} if it can be a link secret.

    @raise InvalidSecret: if it is shorter than L{MIN_SECRET_LENGTH}
        characters or contains whitespace.
    """
    if len(secret) < MIN_SECRET_LENGTH:
        raise InvalidSecret(
            f"the secret must be at least {MIN_SECRET_LENGTH} characters"
        )
    if any(c.isspace() for c in secret) or _CONTROL.search(secret):
        raise InvalidSecret("the secret must not contain whitespace")
    return secret


def new_secret() -> str:
    """
    A strong random link secret (256 bits, URL-safe base64).
    """
    return secrets.token_urlsafe(32)


def new_nonce() -> str:
    """
    A fresh handshake nonce (128 bits, hex).
    """
    return secrets.token_hex(16)


def proof(
    secret: str,
    role: str,
    client_realm: str,
    server_realm: str,
    client_nonce: str,
    server_nonce: str,
) -> str:
    """
    What a side of the handshake sends to prove it knows the secret:
    HMAC-SHA256 keyed with the secret over the protocol name, the role
    (C{client} or C{server}: a proof cannot be reflected back), both realm
    ids and both nonces (a proof is good for one connection only).
    """
    message = "\n".join(
        [PROTOCOL, role, client_realm, server_realm, client_nonce, server_nonce]
    )
    return hmac.new(
        secret.encode("utf-8"), message.encode("utf-8"), hashlib.sha256
    ).hexdigest()


def proof_matches(expected: str, given: object) -> bool:
    """
    Whether C{given} is the C{expected} proof, compared in constant time.
    """
    if not isinstance(given, str):
        return False
    return hmac.compare_digest(
        expected.encode("utf-8"), given.encode("utf-8", "surrogateescape")
    )


def address(username: str, realm_id: str) -> str:
    """
    The address of a user of another realm: C{user@realm}.
    """
    return f"{username}@{realm_id}"


@attrs.frozen
class RealmLink:
    """
    A link to another realm: where to connect to deliver our messages
    (a Twisted client endpoint string), and the secret both realms share.
    """

    realm_id: str
    endpoint: str
    secret: str = attrs.field(repr=False)
    created_at: float


@attrs.frozen
class OutboundMessage:
    """
    A message waiting in the outbox for another realm.

    @ivar id: the outbox row; sets the order of delivery per realm.
    @ivar uid: the message's globally unique id; the receiving realm
        ignores a message whose id it has already accepted.
    """

    id: int
    uid: str
    realm_id: str
    sender: str
    sender_name: str
    recipients: tuple[str, ...]
    text: str
    sent_at: float
    #: The file it carries (then C{text} is the file's name), if any.
    attachment: Attachment | None = None

    def to_payload(self) -> dict[str, object]:
        """
        The JSON object of a C{realm-msg} line; a file's bytes go in
        C{file_content}, in base64.
        """
        payload: dict[str, object] = {
            "id": self.uid,
            "from": self.sender,
            "from_name": self.sender_name,
            "to": list(self.recipients),
            "msg": self.text,
            "sent_at": self.sent_at,
        }
        attachment = self.attachment
        if attachment is not None:
            payload["file_name"] = attachment.name
            payload["file_size"] = attachment.size
            payload["file_sha256"] = attachment.sha256
            payload["file_content"] = base64.b64encode(attachment.content).decode(
                "ascii"
            )
        return payload


@attrs.frozen
class InboundMessage:
    """
    A message from another realm, as validated from a C{realm-msg} line.
    The realm it came from is not part of it: that is the realm the link
    authenticated as.
    """

    uid: str
    sender: str
    sender_name: str
    recipients: tuple[str, ...]
    text: str
    sent_at: float
    #: The file it carries (then C{text} is the file's name), if any.
    attachment: Attachment | None = None

    @classmethod
    def from_payload(
        cls,
        payload: object,
        max_text: int,
        now: float,
        max_file_size: int | None = None,
    ) -> InboundMessage:
        """
        Validate a C{realm-msg} payload by the rules a local message
        follows: the sender and recipients are valid usernames, the full
        name a valid full name (L{validate_full_name}), the text what a
        C{send} line could carry (L{validate_text}, at most C{max_text}
        bytes), and C{sent_at} a time from 2000 to a day after C{now}
        (L{validate_sent_at}): whatever is stored can be shown by
        C{inbox}. A file (L{file_from_payload}) is checked as a local
        C{sendfile}'s, at most C{max_file_size} bytes (None: no files);
        its name is then the message's text. Other keys are ignored.

        @raise ForgedSender: if C{from} names a user of another realm.
        @raise FileTooLarge: if the file is larger than C{max_file_size}.
        @raise BadRealmMessage: for anything else that is wrong.
        """
        if not isinstance(payload, dict):
            raise BadRealmMessage("the message is not a JSON object")
        uid = payload.get("id")
        if (
            not isinstance(uid, str)
            or not 0 < len(uid) <= MAX_UID_LENGTH
            or not uid.isprintable()
            or " " in uid
        ):
            raise BadRealmMessage("bad id")
        sender = payload.get("from")
        if not isinstance(sender, str):
            raise BadRealmMessage("bad from")
        if "@" in sender:
            raise ForgedSender(sender)
        if USERNAME_PATTERN.fullmatch(sender) is None:
            raise BadRealmMessage("bad from")
        if sender in RESERVED_NAMES:
            # A message from postmaster@realm would pass for a bounce.
            raise ForgedSender(sender)
        name = payload.get("from_name")
        if not isinstance(name, str) or len(name) > MAX_NAME_LENGTH:
            raise BadRealmMessage("bad from_name")
        name = _by_local_rule(validate_full_name, name, "from_name")
        recipients = payload.get("to")
        if (
            not isinstance(recipients, list)
            or not 0 < len(recipients) <= MAX_RECIPIENTS
            or not all(
                isinstance(r, str) and USERNAME_PATTERN.fullmatch(r) for r in recipients
            )
        ):
            raise BadRealmMessage("bad to")
        text = payload.get("msg")
        if not isinstance(text, str):
            raise BadRealmMessage("bad msg")
        try:
            text = validate_text(text, max_text)
        except ChatError:
            raise BadRealmMessage("bad msg") from None
        try:
            sent_at = validate_sent_at(payload.get("sent_at"), now)
        except ValueError:
            raise BadRealmMessage("bad sent_at") from None
        attachment = file_from_payload(payload, max_file_size)
        if attachment is not None:
            text = attachment.name
        return cls(
            uid,
            sender,
            name,
            tuple(dict.fromkeys(recipients)),
            text,
            sent_at,
            attachment,
        )


def _by_local_rule(validate: Callable[[str], str], value: object, key: str) -> str:
    """
    A payload's C{key}, C{value}, as the local rule C{validate} makes it
    (with no lone surrogates).

    @raise BadRealmMessage: if it is not a string the rule takes.
    """
    if not isinstance(value, str):
        raise BadRealmMessage(f"bad {key}")
    try:
        value.encode("utf-8")  # no lone surrogates
        return validate(value)
    except (ChatError, UnicodeEncodeError):
        raise BadRealmMessage(f"bad {key}") from None


#: The keys of a file in a C{realm-msg}.
FILE_KEYS = ("file_name", "file_size", "file_sha256", "file_content")


def file_from_payload(
    payload: dict[str, object], max_file_size: int | None
) -> Attachment | None:
    """
    The file a C{realm-msg} payload carries, if any (none of L{FILE_KEYS}),
    checked by a local file's rules: C{file_name} a plain file name
    (L{validate_file_name}: a path is refused, not shortened: the sending
    realm kept its last component already), C{file_content} valid base64
    of at most C{max_file_size} bytes, and C{file_size} and
    C{file_sha256} what that content has.

    @raise FileTooLarge: if the file is larger than C{max_file_size}.
    @raise BadRealmMessage: for anything else that is wrong, or for a file
        when C{max_file_size} is None.
    """
    if not any(key in payload for key in FILE_KEYS):
        return None
    if max_file_size is None:
        raise BadRealmMessage("files are not accepted")
    name = _by_local_rule(validate_file_name, payload.get("file_name"), "file_name")
    size = payload.get("file_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadRealmMessage("bad file_size")
    if size > max_file_size:
        raise FileTooLarge(max_file_size)
    sha256 = payload.get("file_sha256")
    if not isinstance(sha256, str) or SHA256_PATTERN.fullmatch(sha256) is None:
        raise BadRealmMessage("bad file_sha256")
    encoded = payload.get("file_content")
    if not isinstance(encoded, str):
        raise BadRealmMessage("bad file_content")
    if len(encoded) > base64_length(max_file_size):
        raise FileTooLarge(max_file_size)
    try:
        content = base64.b64decode(encoded.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise BadRealmMessage("bad file_content: not base64") from None
    if len(content) > max_file_size:
        raise FileTooLarge(max_file_size)
    if len(content) != size:
        raise BadRealmMessage("bad file_size: not the content's")
    attachment = Attachment(name, content)
    if attachment.sha256 != sha256:
        raise BadRealmMessage("bad file_sha256: not the content's")
    return attachment


@attrs.frozen
class Delivery:
    """
    What became of a message from another realm.

    @ivar messages: the stored messages, one per known recipient (empty
        for a duplicate).
    @ivar unknown: the recipients that do not exist here.
    @ivar duplicate: whether the message had been accepted before (then
        C{unknown} is what it was the first time).
    """

    messages: tuple[Message, ...]
    unknown: tuple[str, ...]
    duplicate: bool


def bounce_text(
    realm_id: str, recipients: Sequence[str], reason: str, text: str
) -> str:
    """
    The text of a delivery-failure message (a bounce).
    """
    to = ", ".join(address(r, realm_id) for r in recipients)
    return f"Undeliverable to {to}: {reason}. Your message: {text}"
