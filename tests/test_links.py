"""
The pure side of realm links: realm ids, secrets, proofs, message payloads,
bounces; and the parsing of the realm commands.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import pytest

from chat import commands, links
from chat.errors import (
    BadRealmMessage,
    FileTooLarge,
    ForgedSender,
    InvalidRealmId,
    InvalidSecret,
)
from chat.federation import tcp_endpoint
from chat.model import Attachment
from chat.replies import iso_utc


@pytest.mark.parametrize(
    ("hostname", "realm_id"),
    [
        ("chat-1.example.org", "chat-1.example.org"),
        ("My_Laptop.LOCAL", "my-laptop.local"),
        ("-weird--name-", "weird--name"),
        ("___", "localhost"),
        ("", "localhost"),
        ("a" * 80, "a" * 63),
    ],
)
def test_realm_id_from_hostname(hostname: str, realm_id: str) -> None:
    """Host names become valid realm ids: lowercased, [a-z0-9.-], 1-63 long."""
    assert links.realm_id_from_hostname(hostname) == realm_id
    assert links.validate_realm_id(realm_id) == realm_id


@pytest.mark.parametrize("bad", ["", "Realm", "a_b", "-a", "a b", "a@b", "x" * 64])
def test_invalid_realm_ids(bad: str) -> None:
    """Realm ids outside [a-z0-9.-] (or starting with '-' or '.') are refused."""
    with pytest.raises(InvalidRealmId):
        links.validate_realm_id(bad)


def test_secrets() -> None:
    """Secrets are at least 16 characters without whitespace; new ones are strong."""
    assert links.validate_secret("x" * 16) == "x" * 16
    for bad in ("x" * 15, "sixteen chars ok?", "tab\there-xxxxxxxxxx"):
        with pytest.raises(InvalidSecret):
            links.validate_secret(bad)
    made = {links.new_secret() for _ in range(10)}
    assert len(made) == 10
    assert all(len(s) >= 43 and links.validate_secret(s) for s in made)


def test_proof_is_hmac_sha256_over_everything() -> None:
    """A proof is HMAC-SHA256(secret) over protocol, role, realms and nonces."""
    expected = hmac.new(
        b"k" * 16,
        b"chat-realm-v1\nclient\nrealm-a\nrealm-b\n" + b"1" * 32 + b"\n" + b"2" * 32,
        hashlib.sha256,
    ).hexdigest()
    args = ("realm-a", "realm-b", "1" * 32, "2" * 32)
    assert links.proof("k" * 16, "client", *args) == expected
    # Every input matters: no proof can stand in for another.
    variants = {
        links.proof("k" * 16, "client", *args),
        links.proof("k" * 17, "client", *args),
        links.proof("k" * 16, "server", *args),
        links.proof("k" * 16, "client", "realm-c", *args[1:]),
        links.proof("k" * 16, "client", *args[:3], "3" * 32),
        links.proof("k" * 16, "client", *args[:2], "4" * 32, args[3]),
    }
    assert len(variants) == 6


def test_proof_matches() -> None:
    """Proofs compare in constant time; anything but the right string fails."""
    right = links.proof("k" * 16, "client", "a", "b", "1" * 32, "2" * 32)
    assert links.proof_matches(right, right)
    assert not links.proof_matches(right, right.upper())
    assert not links.proof_matches(right, right[:-1])
    assert not links.proof_matches(right, None)
    assert not links.proof_matches(right, "é" * 64)


#: "Now" for the payload tests: 2025-11-25 02:20 UTC.
NOW = 1764037200.0

GOOD: dict[str, Any] = {
    "id": "realm-a:1",
    "from": "messi",
    "from_name": "Lionel Messi",
    "to": ["henderson", "lineker", "henderson"],
    "msg": "hola amigos",
    "sent_at": 1764037200.5,
}


def test_payload_round_trip() -> None:
    """A queued message's payload reads back as the same message."""
    outbound = links.OutboundMessage(
        7, "u-1", "realm-b", "messi", "Lionel Messi", ("henderson",), "hi", NOW - 5
    )
    message = links.InboundMessage.from_payload(outbound.to_payload(), 100, NOW)
    assert message == links.InboundMessage(
        "u-1", "messi", "Lionel Messi", ("henderson",), "hi", NOW - 5
    )
    parsed = links.InboundMessage.from_payload(GOOD, 100, NOW)
    assert parsed.recipients == ("henderson", "lineker")


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"from": "messi@realm-c"}, ForgedSender),
        ({"from": "Messi"}, BadRealmMessage),
        ({"id": ""}, BadRealmMessage),
        ({"id": "a b"}, BadRealmMessage),
        ({"id": "x" * 129}, BadRealmMessage),
        ({"from_name": ""}, BadRealmMessage),
        ({"from_name": "Evil\nName"}, BadRealmMessage),
        ({"from_name": "Lionel \u202eisseM"}, BadRealmMessage),
        ({"from_name": "Lionel\u2028Messi"}, BadRealmMessage),
        ({"from_name": "Lionel\x85Messi"}, BadRealmMessage),
        ({"from": "postmaster"}, ForgedSender),
        ({"from": "admin"}, ForgedSender),
        ({"to": []}, BadRealmMessage),
        ({"to": "henderson"}, BadRealmMessage),
        ({"to": [1]}, BadRealmMessage),
        ({"to": [f"u{i}" for i in range(101)]}, BadRealmMessage),
        ({"msg": "  "}, BadRealmMessage),
        ({"msg": "x" * 101}, BadRealmMessage),
        ({"msg": "two\nlines"}, BadRealmMessage),
        ({"msg": "NUL\0inside"}, BadRealmMessage),
        ({"msg": "lone \ud800 surrogate"}, BadRealmMessage),
        ({"msg": 42}, BadRealmMessage),
        ({"from_name": "Lone \udfff"}, BadRealmMessage),
        ({"from_name": "Tab\tName"}, BadRealmMessage),
        ({"from_name": "x" * 129}, BadRealmMessage),
        ({"to": ["Henderson"]}, BadRealmMessage),
        ({"to": ["henderson", "x" * 33]}, BadRealmMessage),
        ({"to": ["\x1b[2Kroot"]}, BadRealmMessage),
        ({"sent_at": "yesterday"}, BadRealmMessage),
        ({"sent_at": True}, BadRealmMessage),
        ({"sent_at": None}, BadRealmMessage),
        ({"sent_at": float("nan")}, BadRealmMessage),
        ({"sent_at": float("inf")}, BadRealmMessage),
        ({"sent_at": 4e12}, BadRealmMessage),
        ({"sent_at": 10**400}, BadRealmMessage),
        ({"sent_at": -1}, BadRealmMessage),
        ({"sent_at": 946684799.9}, BadRealmMessage),
        ({"sent_at": NOW + 86400.5}, BadRealmMessage),
    ],
)
def test_bad_payloads(change: dict[str, Any], error: type[Exception]) -> None:
    """Malformed payloads are refused; a sender in another realm, or one
    with a name reserved for the system (postmaster's bounces), is a forgery."""
    with pytest.raises(error):
        links.InboundMessage.from_payload({**GOOD, **change}, 100, NOW)


@pytest.mark.parametrize("sent_at", [946684800, 946684800.0, NOW, NOW + 86400])
def test_sent_at_from_2000_to_a_day_ahead(sent_at: float) -> None:
    """A message may say it was sent any time from 2000 to a day ahead of us."""
    message = links.InboundMessage.from_payload({**GOOD, "sent_at": sent_at}, 100, NOW)
    assert message.sent_at == sent_at
    assert isinstance(message.sent_at, float)
    iso_utc(message.sent_at)  # always representable


def test_text_and_name_follow_the_local_rules() -> None:
    """Text and full names are stripped as a local send and registration do."""
    message = links.InboundMessage.from_payload(
        {**GOOD, "msg": "  hola\tamigos\r ", "from_name": " Lionel Messi "}, 100, NOW
    )
    assert (message.text, message.sender_name) == ("hola\tamigos", "Lionel Messi")


#: A file in a realm-msg: 300 bytes, every byte value.
FILE = bytes(range(256)) + b"\x00\xff" * 22
FILE_FIELDS: dict[str, Any] = {
    "msg": "notes.bin",
    "file_name": "notes.bin",
    "file_size": len(FILE),
    "file_sha256": hashlib.sha256(FILE).hexdigest(),
    "file_content": base64.b64encode(FILE).decode("ascii"),
}


def test_file_payload_round_trip() -> None:
    """A queued file's payload carries its name, size, sha256 and base64
    content, and reads back as the same file; its name is the text."""
    attachment = Attachment("notes.bin", FILE)
    outbound = links.OutboundMessage(
        7,
        "u-1",
        "realm-b",
        "messi",
        "Lionel Messi",
        ("henderson",),
        "notes.bin",
        NOW - 5,
        attachment,
    )
    payload = outbound.to_payload()
    assert {key: payload[key] for key in FILE_FIELDS} == FILE_FIELDS
    message = links.InboundMessage.from_payload(payload, 100, NOW, len(FILE))
    assert message == links.InboundMessage(
        "u-1",
        "messi",
        "Lionel Messi",
        ("henderson",),
        "notes.bin",
        NOW - 5,
        attachment,
    )
    # A text message has no file keys, and reads back without a file.
    assert (
        "file_name"
        not in links.OutboundMessage(
            1, "u", "realm-b", "messi", "M", ("x",), "hi", NOW
        ).to_payload()
    )
    assert links.InboundMessage.from_payload(GOOD, 100, NOW, 10).attachment is None


def test_file_name_is_the_text() -> None:
    """The stored text of a file message is its file name, whatever msg says."""
    payload = {**GOOD, **FILE_FIELDS, "msg": "something else"}
    message = links.InboundMessage.from_payload(payload, 100, NOW, 1000)
    assert message.text == "notes.bin"


@pytest.mark.parametrize(
    ("change", "error"),
    [
        # Names: the rules of a local file; a path is refused, not cut.
        ({"file_name": "../etc/passwd"}, BadRealmMessage),
        ({"file_name": "dir/notes.bin"}, BadRealmMessage),
        ({"file_name": "C:\\notes.bin"}, BadRealmMessage),
        ({"file_name": ".hidden"}, BadRealmMessage),
        ({"file_name": ""}, BadRealmMessage),
        ({"file_name": "nul.txt"}, BadRealmMessage),
        ({"file_name": "a\nb"}, BadRealmMessage),
        ({"file_name": "x" * 256}, BadRealmMessage),
        ({"file_name": "lone \ud800"}, BadRealmMessage),
        ({"file_name": None}, BadRealmMessage),
        # Content: base64 of what size and sha256 say.
        ({"file_content": "not base64!"}, BadRealmMessage),
        ({"file_content": "aGk"}, BadRealmMessage),
        ({"file_content": "aGk=\n"}, BadRealmMessage),
        ({"file_content": "\u00e9A=="}, BadRealmMessage),
        ({"file_content": 42}, BadRealmMessage),
        ({"file_content": base64.b64encode(FILE[:-1]).decode()}, BadRealmMessage),
        ({"file_size": len(FILE) + 1}, BadRealmMessage),
        ({"file_size": "300"}, BadRealmMessage),
        ({"file_size": True}, BadRealmMessage),
        ({"file_size": -1}, BadRealmMessage),
        ({"file_sha256": hashlib.sha256(b"other").hexdigest()}, BadRealmMessage),
        ({"file_sha256": "ABC"}, BadRealmMessage),
        ({"file_sha256": FILE_FIELDS["file_sha256"].upper()}, BadRealmMessage),
        # Only some of the keys: not a file, not a text either.
        ({"file_name": None, "file_size": None}, BadRealmMessage),
    ],
)
def test_bad_file_payloads(change: dict[str, Any], error: type[Exception]) -> None:
    """A file that a local sendfile could not have sent is refused."""
    payload = {**GOOD, **FILE_FIELDS, **change}
    payload = {key: value for key, value in payload.items() if value is not None}
    with pytest.raises(error):
        links.InboundMessage.from_payload(payload, 100, NOW, 1000)


@pytest.mark.parametrize("key", list(FILE_FIELDS)[1:])
def test_a_file_needs_every_key(key: str) -> None:
    """A payload with some of the file keys but not all is refused."""
    payload = {**GOOD, **FILE_FIELDS}
    del payload[key]
    with pytest.raises(BadRealmMessage):
        links.InboundMessage.from_payload(payload, 100, NOW, 1000)


def test_oversize_files_are_too_large() -> None:
    """A file larger than this realm's --max-file-size is refused as too
    large, whether it says so or its content shows it (before decoding)."""
    payload = {**GOOD, **FILE_FIELDS}
    links.InboundMessage.from_payload(payload, 100, NOW, len(FILE))
    with pytest.raises(FileTooLarge) as raised:
        links.InboundMessage.from_payload(payload, 100, NOW, len(FILE) - 1)
    assert raised.value.limit == len(FILE) - 1
    lying = {**payload, "file_size": 10}
    with pytest.raises(FileTooLarge):
        links.InboundMessage.from_payload(lying, 100, NOW, 100)
    huge = {**payload, "file_content": "A" * 10_000, "file_size": 1}
    with pytest.raises(FileTooLarge):
        links.InboundMessage.from_payload(huge, 100, NOW, 100)
    # Without a file size, files are not accepted at all.
    with pytest.raises(BadRealmMessage):
        links.InboundMessage.from_payload(payload, 100, NOW)


def test_payload_must_be_an_object() -> None:
    """A JSON array or string is not a message."""
    for payload in ([GOOD], "hi", None):
        with pytest.raises(BadRealmMessage):
            links.InboundMessage.from_payload(payload, 100, NOW)


def test_tcp_endpoint() -> None:
    """addrealm's host and port become a tcp client endpoint; IPv6 is escaped."""
    assert tcp_endpoint("10.0.0.7", 8889) == "tcp:host=10.0.0.7:port=8889"
    assert tcp_endpoint("::1", 8889) == "tcp:host=\\:\\:1:port=8889"
    for host, port in [("a b", 1), ("x:port=1:y=", 1), ("-x", 1), ("h", 0)]:
        with pytest.raises(ValueError):
            tcp_endpoint(host, port)


# Parsing the realm commands.


def test_parse_sendprivaterealm_and_sendgrouprealm() -> None:
    """The course's realm sends: token, realm, recipients, then the text."""
    assert commands.parse(b"sendprivaterealm T realm-b henderson  hi  there ") == (
        commands.SendPrivateRealm("T", "realm-b", "henderson", "hi  there")
    )
    assert commands.parse(b"sendgrouprealm T realm-b a,,b, hi") == (
        commands.SendGroupRealm("T", "realm-b", ("a", "b"), "hi")
    )
    for line in (b"sendprivaterealm T realm-b henderson", b"sendgrouprealm T r , hi"):
        with pytest.raises(commands.MissingArgument):
            commands.parse(line)


def test_parse_addrealm_both_forms() -> None:
    """addrealm takes the course's three words, or a token first."""
    assert commands.parse(b"addrealm realm-b 10.0.0.2 8889") == commands.AddRealm(
        None, "realm-b", "10.0.0.2", 8889
    )
    assert commands.parse(b"addrealm TOKEN realm-b host 8889") == commands.AddRealm(
        "TOKEN", "realm-b", "host", 8889
    )
    assert commands.parse(b"addrealm realm-b host 8889 extra") == commands.AddRealm(
        None, "realm-b", "host", 8889
    )
    with pytest.raises(commands.InvalidArgument):
        commands.parse(b"addrealm realm-b host http")
    with pytest.raises(commands.InvalidArgument):
        commands.parse(b"addrealm realm-b host 70000")
    with pytest.raises(commands.MissingArgument):
        commands.parse(b"addrealm realm-b host")


def test_parse_link_commands() -> None:
    """realm-hello checks its realm ids and nonce; realm-msg carries JSON."""
    nonce = "0f" * 16
    assert commands.parse(f"REALM-HELLO a b {nonce}".encode()) == commands.RealmHello(
        "a", "b", nonce
    )
    for bad in (f"realm-hello A b {nonce}", "realm-hello a b 123", "realm-hello a b"):
        with pytest.raises(commands.BadCommand):
            commands.parse(bad.encode())
    assert commands.parse(b'realm-msg {"a": [1, "x y"]}') == commands.RealmMsg(
        {"a": [1, "x y"]}
    )
    with pytest.raises(commands.InvalidArgument):
        commands.parse(b"realm-msg {nope")
    with pytest.raises(commands.MissingArgument):
        commands.parse(b"realm-msg")
