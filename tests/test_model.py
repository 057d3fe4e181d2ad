"""
The frozen values, their wire shapes (chat.commands formats them), and the
name rules.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from chat.commands import message_json
from chat.errors import InvalidFileName, InvalidGroupName
from chat.model import Attachment, Message, validate_file_name, validate_group_name

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
