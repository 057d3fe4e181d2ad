"""
Realms end to end: two and three real C{twistd chat} processes on loopback
ports, each with its own SQLite file, linked with chat-admin (and addrealm)
before they start; messages across in both directions, a group over two
realms, a TLS link, an outage with restarts of both sides, and the
security checks (wrong secret, forged sender, addrealm by a non-admin).
"""

from __future__ import annotations

import base64
import hashlib
import json
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from chat import links
from tests.test_admin import run_admin
from tests.test_end_to_end import CourseClient, TwistdChat
from tests.twistd_helpers import free_port, make_certificate
from tests.waiting import wait_until

#: These tests start processes (see tests/conftest.py).
pytestmark = pytest.mark.slow

SECRET = "secret-shared-by-a-and-b-0123"

#: Fast reconnection, so the tests do not wait for the production backoff.
FAST = ["--realm-retry-min", "0.1s", "--realm-retry-max", "0.5s"]


async def admin_all(*commands: tuple[Path, list[str], str]) -> None:
    """
    Run chat-admin commands (in this process: see L{tests.test_admin}) on
    the realms' stores, in order.
    """
    for workdir, argv, stdin in commands:
        store = f"sqlite:{workdir / 'chat.sqlite'}"
        result = await run_admin("--store", store, *argv, stdin=stdin)
        assert result.returncode == 0, result


class Realm:
    """
    One realm: a twistd chat process with its own directory, store and port.
    """

    def __init__(self, root: Path, name: str, *arguments: str) -> None:
        self.name = name
        self.port = free_port()
        self.workdir = root / name
        self.workdir.mkdir()
        self.server = TwistdChat(
            self.workdir, "--demo", "--realm-id", name, *FAST, *arguments
        )
        self.server.log.touch()

    @property
    def endpoint(self) -> str:
        return f"tcp:host=127.0.0.1:port={self.port}"

    def start(self) -> None:
        self.server.start(port=self.port)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.server.stop(sig)

    def client(self, user: str, password: str = "surabaya") -> tuple[CourseClient, str]:
        client = CourseClient(self.port)
        return client, client.login(user, password)

    def outbox_size(self) -> int:
        connection = sqlite3.connect(self.workdir / "chat.sqlite")
        try:
            return int(
                connection.execute("SELECT count(*) FROM realm_outbox").fetchone()[0]
            )
        finally:
            connection.close()

    def log_text(self) -> str:
        return self.server.log.read_text()

    def kill(self) -> None:
        process = self.server.process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture
def realms(tmp_path: Path) -> Iterator[Callable[..., Realm]]:
    made: list[Realm] = []

    def make(name: str, *arguments: str) -> Realm:
        realm = Realm(tmp_path, name, *arguments)
        made.append(realm)
        return realm

    yield make
    for realm in made:
        realm.kill()


def linked(
    a: Realm, b: Realm, secret: str = SECRET
) -> list[tuple[Path, list[str], str]]:
    """
    The chat-admin commands that link a and b both ways.
    """
    return [
        (a.workdir, ["realm", "add", b.name, b.endpoint], secret + "\n"),
        (b.workdir, ["realm", "add", a.name, a.endpoint], secret + "\n"),
    ]


def collect(
    client: CourseClient,
    token: str,
    count: int,
    first_at: list[float] | None = None,
) -> list[dict[str, Any]]:
    """
    Read the inbox until C{count} messages came, in arrival (id) order;
    note in C{first_at} when the first one was seen.
    """
    got: list[dict[str, Any]] = []

    def enough() -> bool:
        reply = client.sendstring(f"inbox {token} \r\n")
        assert reply["status"] == "OK", reply
        got.extend(m for ms in reply["messages"].values() for m in ms)
        if got and first_at is not None and not first_at:
            first_at.append(time.monotonic())
        return len(got) >= count

    wait_until(enough, what=lambda: f"{count} messages in {got}")
    return sorted(got, key=lambda m: m["id"])


@pytest_twisted.ensureDeferred
async def test_two_realms_both_ways_and_an_outage(realms: Callable[..., Realm]) -> None:
    """Messages cross both ways; 100 sent during an outage arrive once, in order."""
    a, b = realms("realm-a"), realms("realm-b")
    await admin_all(*linked(a, b))
    a.start()
    b.start()
    messi, token = a.client("messi")
    henderson, other = b.client("henderson")

    assert messi.sendstring(f"send {token} henderson@realm-b halo dari a \r\n") == {
        "status": "OK",
        "message": "Message Sent",
    }
    (got,) = collect(henderson, other, 1)
    assert (got["msg"], got["from"], got["msg_from"], got["realm"]) == (
        "halo dari a",
        "messi@realm-a",
        "Lionel Messi",
        "realm-a",
    )
    reply = henderson.sendstring(
        f"sendprivaterealm {other} realm-a messi balik dari b \r\n"
    )
    assert reply == {"status": "OK", "message": "Message Sent to Realm"}
    henderson.sendstring(f"send {other} {got['from']} reply by address \r\n")
    back = collect(messi, token, 2)
    assert [(m["msg"], m["from"], m["realm"]) for m in back] == [
        ("balik dari b", "henderson@realm-b", "realm-b"),
        ("reply by address", "henderson@realm-b", "realm-b"),
    ]
    henderson.close()

    # realm-b goes down hard; realm-a queues, and goes down hard too.
    b.stop(signal.SIGKILL)
    sent = []
    for i in range(100):
        reply = messi.sendstring(
            f"sendprivaterealm {token} realm-b henderson n{i} \r\n"
        )
        assert reply["status"] == "OK", reply
        sent.append(f"n{i}")
    messi.close()
    assert a.outbox_size() == 100
    a.stop(signal.SIGKILL)
    a.start()
    started = time.monotonic()
    b.start()
    listening = time.monotonic()
    henderson, other = b.client("henderson")
    first_at: list[float] = []
    arrived = collect(henderson, other, 100, first_at=first_at)
    drained = time.monotonic()
    assert [m["msg"] for m in arrived] == sent
    wait_until(lambda: a.outbox_size() == 0, what="realm-a's outbox empty")
    # Anything delivered twice would come before one more message.
    messi, token = a.client("messi")
    messi.sendstring(f"send {token} henderson@realm-b one more \r\n")
    messi.close()
    assert [m["msg"] for m in collect(henderson, other, 1)] == ["one more"]
    print(
        f"\noutage: 100 queued messages delivered once and in order "
        f"{drained - listening:.2f}s after realm-b listened again "
        f"(first after {first_at[0] - listening:.2f}s, the rest in "
        f"{drained - first_at[0]:.2f}s; {drained - started:.2f}s after the "
        "restarts began)"
    )
    henderson.close()
    for realm in (a, b):
        assert "Traceback" not in realm.log_text()
        assert SECRET not in realm.log_text()


@pytest_twisted.ensureDeferred
async def test_three_realms_group_tls_and_addrealm(
    realms: Callable[..., Realm], tmp_path: Path
) -> None:
    """A group message reaches two realms; a TLS link; addrealm by an admin."""
    trust = tmp_path / "trust"
    trust.mkdir()
    key, cert = make_certificate(trust, tmp_path)
    tls_port = free_port()
    a, b = (
        realms("realm-a"),
        realms(
            "realm-b",
            "--listen",
            f"ssl:{tls_port}:interface=127.0.0.1:privateKey={key}:certKey={cert}",
        ),
    )
    c = realms("realm-c")
    c_to_b = f"tls:localhost:{tls_port}:trustRoots={trust}"
    await admin_all(
        *linked(a, b),
        (a.workdir, ["useradd", "boss", "--name", "The Boss", "--admin"], "bosspass\n"),
        (b.workdir, ["realm", "add", "realm-c", c.endpoint], SECRET + "\n"),
        (c.workdir, ["realm", "add", "realm-b", c_to_b], SECRET + "\n"),
    )
    a.start()
    b.start()

    # realm-a's administrator links realm-c at run time; realm-c's
    # administrator configures the mirror entry with the secret it got.
    boss, _ = a.client("boss", "bosspass")
    added = boss.sendstring(f"addrealm realm-c 127.0.0.1 {c.port} \r\n")
    assert added["status"] == "OK", added
    assert (added["realm"], added["this_realm"]) == ("realm-c", "realm-a")
    await admin_all(
        (c.workdir, ["realm", "add", "realm-a", a.endpoint], added["secret"])
    )
    c.start()

    messi, token = a.client("messi")
    reply = messi.sendstring(
        f"sendgrouprealm {token} realm-b henderson,lineker,messi@realm-c hello all \r\n"
    )
    assert reply == {"status": "OK", "message": "Message Sent to Group in Realm"}
    for realm, user in ((b, "henderson"), (b, "lineker"), (c, "messi")):
        client, other = realm.client(user)
        (got,) = collect(client, other, 1)
        assert (got["msg"], got["from"], got["realm"]) == (
            "hello all",
            "messi@realm-a",
            "realm-a",
        )
        client.close()

    # realm-c to realm-b goes over TLS.
    lineker, other = c.client("lineker")
    lineker.sendstring(f"send {other} henderson@realm-b lewat tls \r\n")
    henderson, hend_token = b.client("henderson")
    (got,) = collect(henderson, hend_token, 1)
    assert (got["msg"], got["from"]) == ("lewat tls", "lineker@realm-c")
    assert "Link to realm realm-b is up" in c.log_text()

    # An unknown user over there comes back as a bounce.
    messi.sendstring(f"send {token} ronaldo@realm-c are you there \r\n")
    (bounce,) = collect(messi, token, 1)
    assert bounce["from"] == "postmaster@realm-c"
    assert "ronaldo@realm-c: no such user" in bounce["msg"]
    for client in (boss, messi, lineker, henderson):
        client.close()


def _handshake(
    port: int, me: str, them: str, secret: str
) -> tuple[CourseClient, dict[str, Any]]:
    link = CourseClient(port)
    nonce = "ab" * 16
    hello = link.sendstring(f"realm-hello {me} {them} {nonce}\r\n")
    assert hello["status"] == "OK", hello
    proof = links.proof(secret, "client", me, them, nonce, hello["nonce"])
    return link, link.sendstring(f"realm-auth {proof}\r\n")


@pytest_twisted.ensureDeferred
async def test_link_security(realms: Callable[..., Realm]) -> None:
    """Wrong secrets and forged senders are refused; addrealm needs an admin."""
    a, b = realms("realm-a"), realms("realm-b")
    await admin_all(
        (a.workdir, ["realm", "add", "realm-b", b.endpoint], "a-side-secret-xxxxx\n"),
        (b.workdir, ["realm", "add", "realm-a", a.endpoint], SECRET + "\n"),
    )
    a.start()
    b.start()

    # The secrets differ: nothing crosses, and both sides say why.
    messi, token = a.client("messi")
    assert messi.sendstring(f"send {token} henderson@realm-b hi \r\n")["status"] == "OK"
    wait_until(lambda: "Realm authentication failed for realm-a" in b.log_text())
    wait_until(
        lambda: "realm-auth refused: realm authentication failed" in a.log_text()
    )
    assert a.outbox_size() == 1

    # A wrong proof on a raw connection: refused, and the connection closed.
    intruder, refused = _handshake(b.port, "realm-a", "realm-b", "guessed-secret-xxxx")
    assert refused == {
        "status": "ERROR",
        "message": "realm authentication failed",
        "code": "realm_auth_failed",
    }
    assert intruder.sock.recv(64) == b""
    intruder.close()

    # With realm-b's secret for realm-a, a link may only speak for realm-a.
    rogue, accepted = _handshake(b.port, "realm-a", "realm-b", SECRET)
    assert accepted["status"] == "OK" and accepted["realm"] == "realm-b"
    forged = {
        "id": "forged-1",
        "from": "lineker@realm-c",
        "from_name": "Gary Lineker",
        "to": ["henderson"],
        "msg": "trust me",
        "sent_at": time.time(),
    }
    reply = rogue.sendstring(f"realm-msg {json.dumps(forged)}\r\n")
    assert reply["code"] == "forged_sender"
    claimed = {**forged, "id": "forged-2", "from": "lineker", "realm": "realm-c"}
    assert rogue.sendstring(f"realm-msg {json.dumps(claimed)}\r\n")["status"] == "OK"
    assert rogue.sendstring("inbox x\r\n")["code"] == "realm_link"
    rogue.close()
    henderson, other = b.client("henderson")
    (got,) = collect(henderson, other, 1)
    assert (got["from"], got["realm"]) == ("lineker@realm-a", "realm-a")

    # addrealm: not for ordinary users, in either form.
    refused_add = henderson.sendstring("addrealm realm-x 127.0.0.1 9 \r\n")
    assert refused_add["code"] == "not_admin"
    refused_add = henderson.sendstring(f"addrealm {other} realm-x 127.0.0.1 9 \r\n")
    assert refused_add["code"] == "not_admin"
    henderson.close()
    messi.close()
    connection = sqlite3.connect(b.workdir / "chat.sqlite")
    realms_b = [r for (r,) in connection.execute("SELECT realm_id FROM realm_links")]
    connection.close()
    assert realms_b == ["realm-a"]


@pytest_twisted.ensureDeferred
async def test_files_to_another_realm_across_a_restart(
    realms: Callable[..., Realm],
) -> None:
    """sendprivatefilerealm and sendgroupfilerealm deliver files to another
    realm: the recipients' inbox shows each as a file from messi@realm-a with
    its bytes. A file queued while the receiving realm is down is kept (in
    the outbox, with its file) and arrives once after it restarts."""
    a, b = realms("realm-a"), realms("realm-b")
    await admin_all(*linked(a, b))
    a.start()
    b.start()
    messi, token = a.client("messi")
    henderson, other = b.client("henderson")
    # Near --max-file-size (1 MiB): the link's lines carry it.
    big = bytes(range(256)) * 3000 + b"end"
    line = (
        f"sendprivatefilerealm {token} realm-b henderson /home/messi/big.bin"
        f" b'{base64.b64encode(big).decode()}'\r\n"
    )
    reply = messi.sendstring(line)
    assert reply == {
        "status": "OK",
        "message": "File Sent to Realm",
        "file_name": "big.bin",
        "file_size": len(big),
        "file_sha256": hashlib.sha256(big).hexdigest(),
        "address": "big.bin",
    }
    (got,) = collect(henderson, other, 1)
    assert (got["from"], got["realm"], got["msg"], got["file_name"]) == (
        "messi@realm-a",
        "realm-a",
        "big.bin",
        "big.bin",
    )
    assert base64.b64decode(got["file_content"]) == big
    wait_until(lambda: a.outbox_size() == 0, what="realm-a's outbox empty")

    # realm-b goes down hard; the group's file waits in realm-a's outbox.
    b.stop(signal.SIGKILL)
    henderson.close()
    plan = b"rencana: kumpul jam 5\n"
    reply = messi.sendstring(
        f"sendgroupfilerealm {token} realm-b henderson,lineker plan.txt"
        f" {base64.b64encode(plan).decode()} \r\n"
    )
    assert reply["message"] == "File Sent to Group in Realm", reply
    assert a.outbox_size() == 1
    b.start()
    for user in ("henderson", "lineker"):
        client, user_token = b.client(user)
        (got,) = collect(client, user_token, 1)
        assert (got["from"], got["file_name"], got["file_size"]) == (
            "messi@realm-a",
            "plan.txt",
            len(plan),
        )
        assert base64.b64decode(got["file_content"]) == plan
        client.close()
    wait_until(lambda: a.outbox_size() == 0, what="realm-a's outbox empty")
    # Delivered once: nothing more comes before the next message.
    messi.sendstring(f"send {token} henderson@realm-b one more \r\n")
    henderson, other = b.client("henderson")
    assert [m["msg"] for m in collect(henderson, other, 1)] == ["one more"]
    henderson.close()
    messi.close()
    for realm in (a, b):
        assert "Traceback" not in realm.log_text()
