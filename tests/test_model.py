"""
The frozen values, their wire shapes (chat.commands formats them), and the
name rules.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from chat.errors import (
    InvalidFileName,
    InvalidFullName,
    InvalidGroupName,
    InvalidUsername,
)
from chat.model import (
    Attachment,
    Message,
    plain_file_name,
    validate_file_name,
    validate_full_name,
    validate_group_name,
    validate_username,
)
from chat.replies import message_json

PLAIN = Message(1, "messi", "henderson", "Lionel Messi", "Jordan Henderson", "hi", 0.5)


def to_wire(message: Message) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(message_json(message))
    return parsed


def test_plain_message_keeps_the_course_shape() -> None:
    """A message without group or file has exactly the v1 keys."""
    assert to_wire(PLAIN) == {
        "msg_from": "Lionel Messi",
        "msg_to": "Jordan Henderson",
        "msg": "hi",
        "id": 1,
        "sent_at": "1970-01-01T00:00:00.500Z",
        "from": "messi",
        "to": "henderson",
    }


def test_group_and_file_keys_only_when_set() -> None:
    """group and file_* keys appear only on group and file messages."""
    attachment = Attachment("a.png", b"\x00\xffhi")
    message = Message(
        2,
        "messi",
        "henderson",
        "Lionel Messi",
        "Jordan Henderson",
        "a.png",
        0.0,
        group="team",
        file_name="a.png",
        file_size=attachment.size,
        file_sha256=attachment.sha256,
        file_content=attachment.content,
    )
    wire = to_wire(message)
    assert set(wire) - set(to_wire(PLAIN)) == {
        "group",
        "file_name",
        "file_size",
        "file_sha256",
        "file_content",
    }
    assert wire["file_content"] == "AP9oaQ=="
    assert wire["file_size"] == 4
    assert wire["group"] == "team"
    assert "AP9oaQ" not in repr(message)


@pytest.mark.parametrize(
    "name", ["", "a\x00b", "a\nb", "../a", "a/..", "C:\\x", ".", "x" * 256]
)
def test_file_name_rule(name: str) -> None:
    """Empty, path-like, control-character and over-long names are refused."""
    with pytest.raises(InvalidFileName):
        validate_file_name(name)


@pytest.mark.parametrize("name", ["a.png", "laporan akhir.pdf", "x" * 255, "a.b.c"])
def test_file_names_accepted(name: str) -> None:
    """Plain names, dots inside, up to 255 bytes, are accepted."""
    assert validate_file_name(name) == name


def test_group_name_rule() -> None:
    """Group names follow the username rule."""
    assert validate_group_name("tim-a_1.x") == "tim-a_1.x"
    for name in ["", "Tim", "t" * 33, "#tim", "t m"]:
        with pytest.raises(InvalidGroupName):
            validate_group_name(name)


def test_senders_copy() -> None:
    """Only the sender's own copy of a group message is one."""
    own = Message(1, "messi", "messi", "M", "M", "hi", 1.0, group="liverpool")
    member = Message(2, "messi", "henderson", "M", "H", "hi", 1.0, group="liverpool")
    to_self = Message(3, "messi", "messi", "M", "M", "note", 1.0)
    assert own.senders_copy
    assert not member.senders_copy
    assert not to_self.senders_copy


@pytest.mark.parametrize(
    "name",
    [
        ".",
        "..",
        "-rf",
        "_x",
        ".messi",
        "postmaster",
        "admin",
        "root",
        "mailer-daemon",
        "Messi",
        "m" * 33,
    ],
)
def test_new_names_that_impersonate_are_refused(name: str) -> None:
    """New usernames and group names start with a letter or digit and take no
    name reserved for the system."""
    with pytest.raises(InvalidUsername):
        validate_username(name)
    with pytest.raises(InvalidGroupName):
        validate_group_name(name)


def test_reserved_names_say_so() -> None:
    """A reserved name is refused as reserved, not as malformed."""
    with pytest.raises(InvalidUsername, match="'postmaster' is reserved"):
        validate_username("postmaster")


@pytest.mark.parametrize("name", ["a", "7eleven", "budi.s", "x-_.9", "m" * 32])
def test_new_names_accepted(name: str) -> None:
    """Letters, digits and '_-.' after a leading letter or digit are fine."""
    assert validate_username(name) == name
    assert validate_group_name(name) == name


@pytest.mark.parametrize(
    "full_name",
    [
        "Lionel\x85Messi",
        "Lionel \u202eisseM",
        "Lionel\u200bMessi",
        "Lionel\u2028Messi",
        "Lionel\u2029Messi",
        "Lionel\u2066Messi",
        "Lionel\ufeffMessi",
        "Lionel\x1b[2KMessi",
        "",
        "   ",
        "x" * 129,
    ],
)
def test_full_names_without_controls_or_formatting(full_name: str) -> None:
    """Full names refuse C0/C1 controls, bidi and zero-width formatting and
    line separators."""
    with pytest.raises(InvalidFullName):
        validate_full_name(full_name)


@pytest.mark.parametrize(
    "full_name",
    ["Lionel Messi", "Gary Lineker", "Mohammad\u200cReza", "\u0411\u0443\u0434\u0438"],
)
def test_full_names_accepted(full_name: str) -> None:
    """Names in any script, with zero-width (non-)joiners, are fine."""
    assert validate_full_name(f"  {full_name} ") == full_name


@pytest.mark.parametrize(
    "name",
    [
        "evil\u202etxt.exe",
        "a\u200bb.txt",
        "a\x85b",
        "a\u2028b",
        "a\u2215b.txt",
        "a\uff0fb.txt",
        "a\u2044b",
        "a\uff3cb",
        "a\uff1ab",
        "con",
        "CON",
        "NUL.txt",
        "nul.tar.gz",
        "com1",
        "LPT9.log",
        "com\u00b9",
        "aux ",
        "a:b",
        "a<b",
        "a>b",
        'a"b',
        "a|b",
        "a?b",
        "a*b",
        "name.",
        " lead",
        "trail ",
    ],
)
def test_file_names_safe_on_any_system(name: str) -> None:
    """File names that Windows refuses, or that hide or fake characters, are
    refused."""
    with pytest.raises(InvalidFileName):
        validate_file_name(name)


@pytest.mark.parametrize(
    "name", ["console.txt", "nullable", "com10.txt", "conference.pdf", "\u00e9t\u00e9"]
)
def test_file_names_like_device_names_are_fine(name: str) -> None:
    """Only the exact device names are refused, not names starting like them."""
    assert validate_file_name(name) == name


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("hi.txt", "hi.txt"),
        ("/home/me/hi.txt", "hi.txt"),
        ("C:\\Users\\me\\hi.txt", "hi.txt"),
        ("./hi.txt", "hi.txt"),
        ("a\\b/c.txt", "c.txt"),
    ],
)
def test_plain_file_name_of_a_path(path: str, name: str) -> None:
    """The last component of a path, with either separator, is the file name."""
    assert plain_file_name(path) == name


@pytest.mark.parametrize(
    "path", ["..", "../x", "a/../x", "a\\..\\x", "/home/me/", "/home/.x", "C:x"]
)
def test_plain_file_name_refuses(path: str) -> None:
    """A '..' component, or a last component that is no valid name, is refused."""
    with pytest.raises(InvalidFileName):
        plain_file_name(path)
