"""
The pure command parser: examples and properties.
"""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chat import commands, replies
from chat.commands import (
    Auth,
    BadCommand,
    BadEncoding,
    CreateGroup,
    Groups,
    History,
    Inbox,
    InvalidArgument,
    InvalidBase64,
    JoinGroup,
    KickGroup,
    LeaveGroup,
    Logout,
    MissingArgument,
    NulByte,
    Ping,
    Quit,
    Register,
    Send,
    SendFile,
    SendGroup,
    SendGroupFile,
    Targets,
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
    data = replies.encode(reply)
    assert data.endswith(b"\r\n\r\n")
    body = data[:-4]
    assert b"\r" not in body and b"\n" not in body
    assert json.loads(body.decode("ascii")) == reply


@pytest.mark.parametrize(
    ("line", "command"),
    [
        (
            b"register budi rahasia123  Budi  Santoso ",
            Register("budi", "rahasia123", "Budi  Santoso"),
        ),
        (b"register budi rahasia123 ", Register("budi", "rahasia123", "budi")),
        (b"LOGOUT tok", Logout("tok")),
        (
            b"sendgroup tok a,b,,a, hi  there",
            SendGroup("tok", Targets(users=("a", "b")), "hi  there"),
        ),
        (b"sendgroup tok #team hi", SendGroup("tok", Targets(group="team"), "hi")),
        (b"sendfile tok bob a.png aGk=", SendFile("tok", "bob", "a.png", b"hi")),
        (b"sendfile tok bob a.png b'aGk='", SendFile("tok", "bob", "a.png", b"hi")),
        (b'sendfile tok bob a.png b"aGk="', SendFile("tok", "bob", "a.png", b"hi")),
        (b"sendfile tok bob e b''", SendFile("tok", "bob", "e", b"")),
        (
            b"sendfile tok bob my notes.txt aGk=",
            SendFile("tok", "bob", "my notes.txt", b"hi"),
        ),
        (
            b"sendfile tok bob   two  spaces .txt   b'aGk='",
            SendFile("tok", "bob", "two  spaces .txt", b"hi"),
        ),
        (
            b"sendgroupfile tok #team a.png aGk=",
            SendGroupFile("tok", Targets(group="team"), "a.png", b"hi"),
        ),
        (
            b"sendgroupfile tok a,b a.png aGk=",
            SendGroupFile("tok", Targets(users=("a", "b")), "a.png", b"hi"),
        ),
        (
            b"sendgroupfile tok #team holiday photo.png aGk=",
            SendGroupFile("tok", Targets(group="team"), "holiday photo.png", b"hi"),
        ),
        (b"creategroup tok team", CreateGroup("tok", "team")),
        (b"creategroup tok #team", CreateGroup("tok", "team")),
        (
            b"creategroup tok team bob ann,cid  bob",
            CreateGroup("tok", "team", ("bob", "ann", "cid")),
        ),
        (b"creategroup team ", CreateGroup(None, "team")),
        (
            b"sendfile tok bob b'aGk=' /home/me/my notes.txt ",
            SendFile("tok", "bob", "/home/me/my notes.txt", b"hi"),
        ),
        (b"sendfile tok bob b'aGk=' aGk=", SendFile("tok", "bob", "b'aGk='", b"hi")),
        (b"joingroup tok #team x", JoinGroup("tok", "team")),
        (b"leavegroup tok team", LeaveGroup("tok", "team")),
        (b"kickgroup tok #team bob", KickGroup("tok", "team", "bob")),
        (b"groups tok", Groups("tok")),
        (b"history tok bob", History("tok", "bob", None, 50, None)),
        (b"history tok #team 10", History("tok", None, "team", 10, None)),
        (b"history tok bob 500 7", History("tok", "bob", None, 500, 7)),
    ],
)
def test_parse_extensions(line: bytes, command: commands.Command) -> None:
    """Each extension's request line parses to its command."""
    assert parse(line) == command


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"register budi", MissingArgument),
        (b"logout", MissingArgument),
        (b"sendgroup tok , hi", MissingArgument),
        (b"sendgroup tok a,b", MissingArgument),
        (b"sendfile tok bob a.png", MissingArgument),
        (b"sendfile tok bob aGk=", MissingArgument),
        (b"sendgroupfile tok #g  aGk=  ", MissingArgument),
        (b"sendfile tok bob a.png aGk", InvalidBase64),
        (b"sendfile tok bob a.png aG k=", InvalidBase64),
        (b"sendfile tok bob a.png b'aGk=' x", InvalidBase64),
        (b"sendfile tok bob a.png aGk=\xc3\xa9", InvalidBase64),
        (b"sendgroupfile tok #g a.png %%%%", InvalidBase64),
        (b"kickgroup tok team", MissingArgument),
        (b"history tok", MissingArgument),
        (b"history tok bob 0", InvalidArgument),
        (b"history tok bob 501", InvalidArgument),
        (b"history tok bob +5", InvalidArgument),
        (b"history tok bob 5 0", InvalidArgument),
        (b"history tok bob 5 9223372036854775808", InvalidArgument),
    ],
)
def test_parse_extension_errors(line: bytes, error: type[BadCommand]) -> None:
    """Malformed extension requests raise the parser's specific error."""
    with pytest.raises(error):
        parse(line)


def test_extension_secrets_hidden_from_repr() -> None:
    """repr() of extension commands never shows passwords, tokens or files."""
    assert "secret" not in repr(Register("budi", "secret", "Budi"))
    assert "tok123" not in repr(Logout("tok123"))
    sent = SendFile("tok123", "bob", "a.png", b"FILEBYTES")
    assert "tok123" not in repr(sent) and "FILEBYTES" not in repr(sent)


@given(st.binary(max_size=3000))
def test_file_content_round_trip(data: bytes) -> None:
    """Any bytes, base64-encoded either way, decode to themselves."""
    encoded = base64.b64encode(data)
    assert commands.decode_file_content(encoded.decode()) == data
    assert commands.decode_file_content(str(encoded)) == data


def test_max_line_for_file() -> None:
    """The line budget carries the b'...' base64 of the file plus 16 KiB."""
    for size in (1, 2, 3, 1024 * 1024):
        encoded = "b'" + base64.b64encode(b"x" * size).decode() + "'"
        assert commands.max_line_for_file(size) == len(encoded) + 16 * 1024
