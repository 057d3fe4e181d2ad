"""
The pure command parser: examples and properties.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chat import commands
from chat.commands import (
    Auth,
    BadCommand,
    BadEncoding,
    Inbox,
    MissingArgument,
    NulByte,
    Ping,
    Quit,
    Send,
    UnknownCommand,
    parse,
)


@pytest.mark.parametrize(
    ("line", "command"),
    [
        (b"auth messi surabaya", Auth("messi", "surabaya")),
        (b"auth messi surabaya ", Auth("messi", "surabaya")),
        (b"AuTh  messi   surabaya extra", Auth("messi", "surabaya")),
        (b"send tok henderson  hi  there ", Send("tok", "henderson", "hi  there")),
        (b"send tok henderson x", Send("tok", "henderson", "x")),
        (b"inbox tok", Inbox("tok")),
        (b"inbox tok ", Inbox("tok")),
        (b"ping", Ping()),
        (b"PING hello world", Ping("hello")),
        (b"quit", Quit()),
        ("send t u caf\u00e9".encode(), Send("t", "u", "caf\u00e9")),
    ],
)
def test_parse_examples(line: bytes, command: commands.Command) -> None:
    """Each request line parses to its command."""
    assert parse(line) == command


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"", UnknownCommand),
        (b"   ", UnknownCommand),
        (b"hello", UnknownCommand),
        (b"authx messi surabaya", UnknownCommand),
        (b"auth", MissingArgument),
        (b"auth messi", MissingArgument),
        (b"send tok henderson", MissingArgument),
        (b"send tok henderson    ", MissingArgument),
        (b"inbox", MissingArgument),
        (b"\xff\xfe", BadEncoding),
        (b"auth me\x00 x", NulByte),
    ],
)
def test_parse_errors(line: bytes, error: type[BadCommand]) -> None:
    """Bad lines raise the parser's specific error."""
    with pytest.raises(error):
        parse(line)


def test_error_messages_are_the_course_strings() -> None:
    """Unknown and incomplete commands use the course's exact messages."""
    assert UnknownCommand().reply()["message"] == "**Protocol Tidak Benar"
    assert MissingArgument().reply()["message"] == "--Protocol Tidak Benar"


def test_passwords_and_tokens_hidden_from_repr() -> None:
    """repr() of a command never shows the password or the token."""
    assert "secret" not in repr(Auth("messi", "secret"))
    assert "tok123" not in repr(Send("tok123", "x", "y"))
    assert "tok123" not in repr(Inbox("tok123"))


@given(st.binary(max_size=200))
def test_parse_never_raises_anything_else(line: bytes) -> None:
    """Any bytes either parse or raise BadCommand, nothing else."""
    try:
        parse(line)
    except BadCommand:
        pass


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=100))
def test_send_text_round_trip(text: str) -> None:
    """Any non-blank text without line breaks is sent as itself, stripped."""
    text = text.replace("\n", " ").replace("\0", " ").replace("\r", " ")
    line = f"send tok bob {text}".encode()
    if not text.strip():
        with pytest.raises(MissingArgument):
            parse(line)
        return
    assert parse(line) == Send("tok", "bob", text.strip())


@given(
    st.dictionaries(
        st.text(max_size=10),
        st.one_of(st.text(max_size=20), st.integers(), st.none()),
        max_size=5,
    )
)
def test_encode_is_one_ascii_frame(reply: dict[str, object]) -> None:
    """An encoded reply is ASCII JSON with no CR/LF inside, ending the frame."""
    data = commands.encode(reply)
    assert data.endswith(b"\r\n\r\n")
    body = data[:-4]
    assert b"\r" not in body and b"\n" not in body
    assert json.loads(body.decode("ascii")) == reply
