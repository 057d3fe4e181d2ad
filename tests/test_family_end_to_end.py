"""
The course family's clients against a real C{twistd chat} on loopback: each
of their spellings with the exact bytes they send (a trailing space, CR LF,
files as C{b'...'} after the path the user typed), read the way they read
(C{recv(64)} per chunk until the buffer ends in CR LF CR LF; see
L{CourseClient}).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.twistd_helpers import CourseClient, TwistdChat

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path: Path) -> Iterator[TwistdChat]:
    twistd = TwistdChat(tmp_path, "--demo", "--registration", "open")
    twistd.start()
    yield twistd
    twistd.kill()


def _ok(client: CourseClient, line: str) -> dict[str, Any]:
    reply = client.sendstring(line)
    assert reply["status"] == "OK", (line, reply)
    return reply


def _file(data: bytes) -> str:
    """
    A file's content as the family formats it: the repr of base64 bytes.
    """
    return str(base64.b64encode(data))


def test_family_spellings_against_twistd(server: TwistdChat) -> None:
    """Every alias, with the family's exact bytes, works against twistd chat."""
    budi = CourseClient(server.port)
    messi = CourseClient(server.port)
    henderson = CourseClient(server.port)

    # register without a full name logs in (tokenid); auth also answers
    # token_id and realm_id.
    registered = _ok(budi, "register budi rahasia123 \r\n")
    token = registered["tokenid"]
    login = _ok(messi, "auth messi surabaya \r\n")
    assert login["token_id"] == login["tokenid"]
    assert isinstance(login["realm_id"], str)
    m = login["token_id"]
    h = _ok(henderson, "auth henderson surabaya \r\n")["tokenid"]

    # Private messages and files.
    _ok(budi, f"sendprivate {token} messi  halo messi \r\n")
    _ok(budi, f"send {token} messi lagi \r\n")
    sent = _ok(budi, f"sendfile {token} messi /home/budi/hi.txt {_file(b'halo')}\r\n")
    assert sent["file_name"] == sent["address"] == "hi.txt"
    _ok(budi, f"sendprivatefile {token} messi C:\\x\\a.png {_file(b'png')} \r\n")
    _ok(budi, f"sendfile {token} messi {_file(b'isi')} /tmp/notes.txt \r\n")
    taken = _ok(messi, f"inboxbysender {m} budi \r\n")["messages"]["budi"]
    assert [x["msg"] for x in taken] == [
        "halo messi",
        "lagi",
        "hi.txt",
        "a.png",
        "notes.txt",
    ]
    assert base64.b64decode(taken[4]["file_content"]) == b"isi"
    assert _ok(messi, f"privateinbox {m} budi \r\n")["messages"] == {}

    # Groups: creategroup with members, bare group names, the aliases.
    group = _ok(messi, f"creategroup {m} bteam henderson \r\n")["group"]
    assert group["members"] == ["messi", "henderson"]
    _ok(budi, f"addgroup {token} kopi \r\n")
    _ok(budi, f"create_group {token} teh \r\n")
    _ok(budi, "creategroup susu \r\n")
    _ok(messi, f"join_group {m} kopi \r\n")
    _ok(messi, f"joingroup {m} teh \r\n")
    _ok(messi, f"exitgroup {m} teh \r\n")
    _ok(messi, f"leave_group {m} kopi \r\n")
    _ok(messi, f"sendgroup {m} bteam halo tim \r\n")
    _ok(henderson, f"send_group {h} bteam siap \r\n")
    _ok(messi, f"sendgroupfile {m} bteam /home/messi/plan.txt {_file(b'plan')}\r\n")
    _ok(messi, f"send_file_group {m} henderson,budi b.txt {_file(b'b')} \r\n")
    unknown = messi.sendstring(f"sendgroupfile {m} ghost a.txt {_file(b'a')}\r\n")
    assert unknown["message"] == "User Tidak Ditemukan: ghost"

    # A group's messages, in each spelling's shape.
    timeline = _ok(henderson, f"groupinbox {h} bteam \r\n")["messages"]
    assert [(x["from"], x["msg"]) for x in timeline] == [
        ("messi", "halo tim"),
        ("henderson", "siap"),
        ("messi", "plan.txt"),
    ]
    assert all("timestamp" in x for x in timeline)
    by_sender = _ok(henderson, f"inbox_group {h} bteam \r\n")["messages"]
    assert sorted(by_sender) == ["henderson", "messi"]
    newest_first = _ok(henderson, f"inboxgroup {h} bteam\r\n")["messages"]
    assert [x["msg"] for x in newest_first] == ["plan.txt", "siap", "halo tim"]
    inbox = _ok(henderson, f"inbox {h} \r\n")["messages"]
    assert [x["msg"] for x in inbox["messi"]] == ["halo tim", "plan.txt", "b.txt"]

    # The lists: logged-in connections only.
    stranger = CourseClient(server.port)
    refused = stranger.sendstring("getusers \r\n")
    assert refused["message"] == "Session Tidak Ditemukan"
    users = ["budi", "henderson", "lineker", "messi"]
    assert _ok(budi, "listusers \r\n")["users"] == users
    for line in ["getusers \r\n", "getallusers \r\n", f"get_all_users {m} \r\n"]:
        got = _ok(messi, line)["users"]
        assert [u["username"] for u in got] == users
        assert set(got[0]) == {"username", "full_name", "online"}
    groups = ["bteam", "kopi", "susu", "teh"]
    assert _ok(budi, "listgroups \r\n")["groups"] == groups
    assert _ok(budi, f"getgroup {token}\r\n")["groups"] == groups
    assert [g["group"] for g in _ok(budi, "getgroups \r\n")["groups"]] == groups
    for line in [f"getallgroups {token} \r\n", f"get_all_groups {token} \r\n"]:
        assert [g["name"] for g in _ok(budi, line)["groups"]] == groups

    # Another realm's inbox, by its other name (no link here: the error).
    missing = messi.sendstring(f"inboxrealm {m} realm-x \r\n")
    assert missing["message"] == "Realm Tidak Ditemukan"
    # Files to another realm: known words (no link to realm-x here: the
    # error; tests/test_realms_end_to_end.py delivers them).
    for verb in ("sendfilerealm", "sendprivatefilerealm", "sendgroupfilerealm"):
        line = f"{verb} {m} realm-x henderson /tmp/hi.txt {_file(b'hi')} \r\n"
        assert messi.sendstring(line)["message"] == "Realm Tidak Ditemukan"

    _ok(budi, f"logout {token}\r\n")
    for client in (budi, messi, henderson, stranger):
        client.close()
    log = server.log_text()
    assert "Traceback" not in log
    assert "rahasia123" not in log and token not in log
