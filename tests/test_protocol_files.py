"""
sendfile and sendgroupfile on the line protocol: base64 in both forms,
file name rules, the size cap, and delivery through inbox.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest

from chat import realm
from chat.limits import Quotas
from chat.store.memory import MemoryStore
from tests.helpers import Connection, Server, demo_users, result_of

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def _logged_in(server: Server) -> tuple[Connection, dict[str, str]]:
    client = server.connect()
    return client, {n: client.login(n) for n in ("messi", "henderson", "lineker")}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _inbox(client: Connection, token: str) -> dict[str, list[dict[str, Any]]]:
    messages: dict[str, list[dict[str, Any]]] = client.request(f"inbox {token}")[
        "messages"
    ]
    return messages


def test_sendfile_round_trip() -> None:
    """A file arrives byte-identical, with its name, size and sha256."""
    server = Server()
    client, tokens = _logged_in(server)
    digest = hashlib.sha256(PNG).hexdigest()
    reply = client.request(f"sendfile {tokens['messi']} henderson logo.png {_b64(PNG)}")
    assert reply == {
        "status": "OK",
        "message": "File Sent",
        "file_name": "logo.png",
        "file_size": len(PNG),
        "file_sha256": digest,
        "address": "logo.png",
    }
    (message,) = _inbox(client, tokens["henderson"])["messi"]
    assert message["msg"] == "logo.png"
    assert message["file_name"] == "logo.png"
    assert message["file_size"] == len(PNG)
    assert message["file_sha256"] == digest
    assert base64.b64decode(message["file_content"], validate=True) == PNG
    assert message["msg_from"] == "Lionel Messi"
    assert "group" not in message


def test_file_name_with_spaces() -> None:
    """A file name may hold spaces (everything between the recipient and
    the content, the last word); it arrives as it was sent."""
    server = Server()
    client, tokens = _logged_in(server)
    line = f"sendfile {tokens['messi']} henderson my  holiday photo.png {_b64(PNG)}"
    reply = client.request(line)
    assert (reply["status"], reply["file_name"]) == ("OK", "my  holiday photo.png")
    (message,) = _inbox(client, tokens["henderson"])["messi"]
    assert message["file_name"] == message["msg"] == "my  holiday photo.png"
    reply = client.request(
        f"sendgroupfile {tokens['messi']} henderson,lineker two words.txt {_b64(b'x')}"
    )
    assert reply["file_name"] == "two words.txt"


def test_sendfile_accepts_python_bytes_repr() -> None:
    """The course clients' b'...' form is accepted; bare base64 comes back."""
    server = Server()
    client, tokens = _logged_in(server)
    line = "sendfile {} henderson logo.png {}".format(
        tokens["messi"], base64.b64encode(PNG)
    )
    assert "b'" in line
    assert client.request(line)["status"] == "OK"
    (message,) = _inbox(client, tokens["henderson"])["messi"]
    assert message["file_content"] == _b64(PNG)


def test_sendfile_empty_file() -> None:
    """An empty file (b'') is a file of size 0."""
    server = Server()
    client, tokens = _logged_in(server)
    reply = client.request(f"sendfile {tokens['messi']} henderson empty.txt b''")
    assert reply["file_size"] == 0
    (message,) = _inbox(client, tokens["henderson"])["messi"]
    assert message["file_content"] == ""


@pytest.mark.parametrize(
    "content", ["not-base64!", "aGk", "b'aGk'", "b'aGk=", "aGk=\u00e9", "aG k="]
)
def test_sendfile_invalid_base64(content: str) -> None:
    """Content that is not strict base64 is refused; nothing is stored."""
    server = Server()
    client, tokens = _logged_in(server)
    reply = client.request(f"sendfile {tokens['messi']} henderson a.txt {content}")
    assert reply == {
        "status": "ERROR",
        "message": "invalid base64 content",
        "code": "invalid_base64",
    }
    assert server.store.messages == []


@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "/home/../x",
        "a/",
        "..",
        "a..b",
        ".hidden",
        "x" * 256,
        "\u00e9" * 128,
        "bell\x07",
    ],
)
def test_sendfile_refuses_path_like_names(name: str) -> None:
    """Names with directories, dots, controls or over 255 bytes are refused."""
    server = Server()
    client, tokens = _logged_in(server)
    reply = client.request(f"sendfile {tokens['messi']} henderson {name} aGk=")
    assert reply["code"] == "invalid_file_name"
    assert reply["message"].startswith("invalid file name: ")
    assert server.store.messages == []


def test_sendfile_longest_name() -> None:
    """A 255-byte name (UTF-8) is fine."""
    server = Server()
    client, tokens = _logged_in(server)
    name = "\u00e9" * 125 + "x.png"
    assert len(name.encode()) == 255
    reply = client.request(f"sendfile {tokens['messi']} henderson {name} aGk=")
    assert reply["file_name"] == name


def test_sendfile_size_cap() -> None:
    """A file over --max-file-size is refused; one of exactly that size is not."""
    server = Server(max_file_size=10)
    client, tokens = _logged_in(server)
    reply = client.request(
        f"sendfile {tokens['messi']} henderson a.bin {_b64(b'x' * 11)}"
    )
    assert reply == {
        "status": "ERROR",
        "message": "file too large",
        "code": "file_too_large",
        "max_file_size": 10,
    }
    assert server.store.messages == []
    reply = client.request(
        f"sendfile {tokens['messi']} henderson a.bin {_b64(b'x' * 10)}"
    )
    assert reply["file_size"] == 10


def test_sendfile_errors() -> None:
    """Unknown recipient and bad token get the course's errors."""
    server = Server()
    client, tokens = _logged_in(server)
    assert client.request(f"sendfile {tokens['messi']} ronaldo a.txt aGk=") == {
        "status": "ERROR",
        "message": "User Tidak Ditemukan",
        "code": "no_such_user",
    }
    assert client.request("sendfile nope henderson a.txt aGk=")["code"] == "no_session"
    for line in ["sendfile", "sendfile t henderson", "sendfile t henderson a.txt"]:
        assert client.request(line)["code"] == "missing_argument"


def test_sendgroupfile_to_a_list() -> None:
    """A file to a list: all or none, each recipient gets the same bytes."""
    server = Server()
    client, tokens = _logged_in(server)
    reply = client.request(
        f"sendgroupfile {tokens['messi']} ronaldo,henderson,pele a.png {_b64(PNG)}"
    )
    assert reply["users"] == ["ronaldo", "pele"]
    assert reply["message"] == "User Tidak Ditemukan: ronaldo, pele"
    assert server.store.messages == []
    reply = client.request(
        f"sendgroupfile {tokens['messi']} henderson,lineker,henderson a.png {_b64(PNG)}"
    )
    assert reply["message"] == "File Sent"
    for name in ("henderson", "lineker"):
        (message,) = _inbox(client, tokens[name])["messi"]
        assert base64.b64decode(message["file_content"]) == PNG


def test_sendgroupfile_to_a_group() -> None:
    """A file to a group reaches the other members, marked with the group."""
    server = Server()
    client, tokens = _logged_in(server)
    client.request(f"creategroup {tokens['messi']} team")
    client.request(f"joingroup {tokens['henderson']} team")
    line = f"sendgroupfile {tokens['messi']} #team a.png {_b64(PNG)}"
    assert client.request(line)["file_sha256"] == hashlib.sha256(PNG).hexdigest()
    (message,) = _inbox(client, tokens["henderson"])["messi"]
    assert (message["group"], message["file_name"]) == ("team", "a.png")
    assert base64.b64decode(message["file_content"]) == PNG
    assert _inbox(client, tokens["lineker"]) == {}
    line = f"sendgroupfile {tokens['lineker']} #team a.png {_b64(PNG)}"
    assert client.request(line)["code"] == "not_a_member"
    line = f"sendgroupfile {tokens['messi']} #team ../a.png {_b64(PNG)}"
    assert client.request(line)["code"] == "invalid_file_name"
    small = Server(max_file_size=3)
    other, small_tokens = _logged_in(small)
    other.request(f"creategroup {small_tokens['messi']} team")
    line = f"sendgroupfile {small_tokens['messi']} #team a.png {_b64(PNG)}"
    assert other.request(line)["code"] == "file_too_large"


def test_sendgroupfile_too_many_recipients() -> None:
    """The recipient cap applies to files too."""
    server = Server(max_recipients=1)
    client, tokens = _logged_in(server)
    line = f"sendgroupfile {tokens['messi']} henderson,lineker a.png aGk="
    assert client.request(line)["code"] == "too_many_recipients"


def test_one_mebibyte_file_in_small_reads() -> None:
    """The default max-line carries a 1 MiB file, read in 4 KiB pieces
    without rescanning the line on every read."""
    server = Server()
    client, tokens = _logged_in(server)
    data = bytes(range(256)) * 4096
    assert len(data) == server.realm.max_file_size
    line = "sendfile {} henderson big.bin {}\r\n".format(
        tokens["messi"], base64.b64encode(data)
    ).encode()
    chunks = [line[start : start + 4096] for start in range(0, len(line), 4096)]
    for chunk in chunks[:-1]:
        client.send(chunk)
    # Kept as the reads came, to be joined once.
    assert len(client.protocol._partial) == len(chunks) - 1
    client.send(chunks[-1])
    assert client.protocol._partial == []
    assert client.replies()[0]["file_size"] == len(data)
    (message,) = _inbox(client, tokens["henderson"])["messi"]
    assert base64.b64decode(message["file_content"]) == data


def test_too_long_line_still_detected_in_pieces() -> None:
    """A line over max-line that arrives in pieces is still cut off."""
    client = Server(max_line=1000).connect()
    for _ in range(10):
        client.send(b"z" * 100)
    assert client.replies() == []
    client.send(b"z" * 2)
    assert client.replies()[0]["code"] == "line_too_long"
    assert client.transport.disconnecting
    client.send(b"more" * 1000)
    assert client.replies() == []


def test_pieces_after_a_complete_line() -> None:
    """A read with the end of one line and the start of the next, then pieces."""
    client = Server().connect()
    client.send(b"ping one\r\nping t")
    client.send(b"w")
    client.send(b"o\r\n")
    assert [r["echo"] for r in client.replies()] == ["one", "two"]


def test_inbox_reply_byte_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """An inbox reply carries at most the reply budget (at least one message);
    the rest comes with the next inbox, in order."""
    monkeypatch.setattr(realm, "REPLY_BUDGET", 2500)
    server = Server()
    client, tokens = _logged_in(server)
    for i in range(3):
        content = _b64(bytes([i]) * 1000)
        client.request(f"sendfile {tokens['messi']} henderson f{i}.bin {content}")
    client.request(f"send {tokens['messi']} henderson after")
    batches = [_inbox(client, tokens["henderson"]) for _ in range(3)]
    assert [[m["msg"] for m in b.get("messi", [])] for b in batches] == [
        ["f0.bin", "f1.bin"],
        ["f2.bin", "after"],
        [],
    ]


@pytest.mark.parametrize(
    "name",
    ["invoice\u202efdp.exe", "a\u2215b.txt", "a\uff0fb.txt", "con", "NUL.txt", "a:b"],
)
def test_sendfile_refuses_names_unsafe_on_some_system(name: str) -> None:
    """Bidi overrides, slash look-alikes and Windows-reserved names are refused."""
    server = Server()
    client, tokens = _logged_in(server)
    reply = client.request(f"sendfile {tokens['messi']} henderson {name} aGk=")
    assert reply["code"] == "invalid_file_name"
    assert server.store.messages == []


def test_sendfile_quota_exceeded() -> None:
    """A file past the sender's quota of stored files is refused with
    quota_exceeded and the limit; a file they stored before still goes."""
    store = MemoryStore(quotas=Quotas(max_files=1, max_file_bytes=10_000))
    for user in demo_users():
        result_of(store.add_user(user))
    server = Server(store=store)
    client, tokens = _logged_in(server)
    first = client.request(f"sendfile {tokens['messi']} henderson a.png {_b64(PNG)}")
    assert first["status"] == "OK"
    other = b"another file"
    assert client.request(
        f"sendgroupfile {tokens['messi']} henderson,lineker b.txt {_b64(other)}"
    ) == {
        "status": "ERROR",
        "message": "file quota exceeded",
        "code": "quota_exceeded",
        "quota": "files",
        "limit": 1,
    }
    again = client.request(f"sendfile {tokens['messi']} lineker a.png {_b64(PNG)}")
    assert again["status"] == "OK"
    assert [m["file_name"] for m in _inbox(client, tokens["lineker"])["messi"]] == [
        "a.png"
    ]
