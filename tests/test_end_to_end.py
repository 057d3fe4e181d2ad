"""
End to end over real loopback TCP: the twistd plugin in this process with
Twisted clients, and a real C{twistd chat} process driven by the course
client's exact bytes, killed with SIGKILL and restarted.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import signal
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.application.service import IServiceMaker
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.plugin import getPlugins

from tests.clients import AsyncClient
from tests.test_admin import admin_process
from tests.twistd_helpers import REPO, TWISTD, CourseClient, TwistdChat

__all__ = ["REPO", "TWISTD", "CourseClient", "TwistdChat"]


def chat_maker() -> Any:
    (maker,) = [p for p in getPlugins(IServiceMaker) if p.tapname == "chat"]
    return maker


@pytest_twisted.ensureDeferred
async def test_plugin_serves_two_clients(tmp_path: Path) -> None:
    """Through the twistd plugin: auth, send, inbox, and the row is in SQLite."""
    maker = chat_maker()
    options = maker.options()
    database = tmp_path / "chat.sqlite"
    options.parseOptions(
        [
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--store",
            f"sqlite:{database}",
            "--demo",
        ]
    )
    service = maker.makeService(options)
    service.startService()
    try:
        await service.ready
        port = service.ports[0].getHost().port
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        messi = await connectProtocol(endpoint, AsyncClient())
        henderson = await connectProtocol(endpoint, AsyncClient())
        token = (await messi.request("auth messi surabaya "))["tokenid"]
        other = (await henderson.request("auth henderson surabaya "))["tokenid"]
        sent = await messi.request(f"send {token} henderson  halo bro ")
        assert sent == {"status": "OK", "message": "Message Sent"}
        inbox = await henderson.request(f"inbox {other} ")
        assert inbox["messages"]["messi"][0]["msg"] == "halo bro"
        for client in (messi, henderson):
            client.transport.loseConnection()
            await client.closed
    finally:
        await service.stopService()
    connection = sqlite3.connect(database)
    rows = connection.execute(
        "SELECT sender, recipient, body, id IN (SELECT message_id FROM mailbox)"
        " FROM messages"
    ).fetchall()
    connection.close()
    assert rows == [("messi", "henderson", "halo bro", 0)]  # delivered


async def _start_plugin(database: Path, *arguments: str) -> tuple[Any, int]:
    """
    The chat service made by the twistd plugin on an ephemeral port.
    """
    maker = chat_maker()
    options = maker.options()
    options.parseOptions(
        [
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--store",
            f"sqlite:{database}",
            "--demo",
            *arguments,
        ]
    )
    service = maker.makeService(options)
    service.startService()
    await service.ready
    return service, service.ports[0].getHost().port


async def _connect(port: int, count: int) -> list[AsyncClient]:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    return [await connectProtocol(endpoint, AsyncClient()) for _ in range(count)]


async def _close(*clients: AsyncClient) -> None:
    for client in clients:
        client.transport.loseConnection()  # type: ignore[union-attr]
        await client.closed


@pytest_twisted.ensureDeferred
async def test_plugin_register_and_file_round_trip(tmp_path: Path) -> None:
    """Over TCP with SQLite: a registered user sends a 1 MiB file (the
    default maximum) in the course clients' b'...' form; it arrives
    byte-identical, is stored once, and stays in history."""
    database = tmp_path / "chat.sqlite"
    service, port = await _start_plugin(database, "--registration", "open")
    try:
        budi, messi = await _connect(port, 2)
        registered = await budi.request("register budi rahasia123 Budi Santoso")
        assert registered["message"] == "User Registered"
        token = (await budi.request("auth budi rahasia123"))["tokenid"]
        other = (await messi.request("auth messi surabaya"))["tokenid"]
        data = random.Random(4).randbytes(1024 * 1024)
        digest = hashlib.sha256(data).hexdigest()
        # Formatting the bytes gives b'...', as the course clients send it.
        line = f"sendfile {token} messi photo.jpg {base64.b64encode(data)}"
        assert " b'" in line
        sent = await budi.request(line)
        assert sent == {
            "status": "OK",
            "message": "File Sent",
            "file_name": "photo.jpg",
            "file_size": len(data),
            "file_sha256": digest,
            "address": "photo.jpg",
        }
        inbox = await messi.request(f"inbox {other}")
        (message,) = inbox["messages"]["budi"]
        received = base64.b64decode(message["file_content"], validate=True)
        assert hashlib.sha256(received).hexdigest() == digest
        assert received == data
        assert (message["msg"], message["msg_from"]) == ("photo.jpg", "Budi Santoso")
        history = await messi.request(f"history {other} budi")
        assert history["messages"][0]["file_sha256"] == digest
        too_big = base64.b64encode(data + b"!").decode()
        refused = await budi.request(f"sendfile {token} messi big.bin {too_big}")
        assert refused["code"] == "file_too_large"
        await _close(budi, messi)
    finally:
        await service.stopService()
    connection = sqlite3.connect(database)
    rows = connection.execute("SELECT sha256, size, content FROM files").fetchall()
    connection.close()
    assert [(sha, size) for sha, size, _ in rows] == [(digest, len(data))]
    assert hashlib.sha256(rows[0][2]).hexdigest() == digest


@pytest_twisted.ensureDeferred
async def test_plugin_groups_and_history(tmp_path: Path) -> None:
    """Over TCP with SQLite: a group conversation, history pages, logout
    (with a retention that keeps everything recent)."""
    service, port = await _start_plugin(tmp_path / "chat.sqlite", "--retention", "30d")
    assert service.chat.purger is not None and service.chat.purger._loop.running
    try:
        clients = await _connect(port, 3)
        names = ["messi", "henderson", "lineker"]
        tokens = {}
        for name, client in zip(names, clients, strict=True):
            reply = await client.request(f"auth {name} surabaya")
            tokens[name] = reply["tokenid"]
        messi, henderson, lineker = clients

        async def ask(client: AsyncClient, line: str) -> dict[str, Any]:
            reply = await client.request(line)
            assert reply["status"] == "OK", (line, reply)
            return reply

        await ask(messi, f"creategroup {tokens['messi']} team")
        await ask(henderson, f"joingroup {tokens['henderson']} team")
        await ask(messi, f"sendgroup {tokens['messi']} #team kick-off at eight")
        await ask(lineker, f"joingroup {tokens['lineker']} #team")
        await ask(henderson, f"sendgroup {tokens['henderson']} #team on my way")
        groups = await ask(lineker, f"groups {tokens['lineker']}")
        assert groups["groups"][0]["members"] == names
        inbox = await ask(henderson, f"inbox {tokens['henderson']}")
        assert [(m["msg"], m["group"]) for m in inbox["messages"]["messi"]] == [
            ("kick-off at eight", "team")
        ]
        inbox = await ask(lineker, f"inbox {tokens['lineker']}")
        assert list(inbox["messages"]) == ["henderson"]
        team = await ask(messi, f"history {tokens['messi']} #team")
        assert [m["msg"] for m in team["messages"]] == [
            "on my way",
            "kick-off at eight",
        ]

        for i in range(7):
            await ask(messi, f"send {tokens['messi']} henderson m{i}")
        pages = []
        before = ""
        while True:
            page = await ask(
                henderson, f"history {tokens['henderson']} messi 3 {before}"
            )
            pages.append([m["msg"] for m in page["messages"]])
            if page["next_before_id"] is None:
                break
            before = str(page["next_before_id"])
        assert pages == [["m6", "m5", "m4"], ["m3", "m2", "m1"], ["m0"]]

        await ask(lineker, f"leavegroup {tokens['lineker']} team")
        await ask(messi, f"kickgroup {tokens['messi']} team henderson")
        assert (await ask(messi, f"groups {tokens['messi']}"))["groups"][0][
            "members"
        ] == ["messi"]
        await ask(messi, f"logout {tokens['messi']}")
        gone = await messi.request(f"groups {tokens['messi']}")
        assert gone["message"] == "Session Tidak Ditemukan"
        await _close(*clients)
    finally:
        await service.stopService()
    assert not service.chat.purger._loop.running


# A real twistd process (helpers shared with the fault suite).


@pytest.fixture
def twistd(tmp_path: Path) -> Iterator[TwistdChat]:
    # --demo makes the users itself here, as it does for a person.
    server = TwistdChat(tmp_path, "--demo", seed=False)
    server.log.touch()
    yield server
    server.kill()


@pytest.mark.slow
def test_course_client_against_twistd(twistd: TwistdChat) -> None:
    """The course client's byte-for-byte behaviour works against twistd chat."""
    port = twistd.start()
    messi = CourseClient(port)
    henderson = CourseClient(port)
    token = messi.login("messi", "surabaya")
    assert messi.sendmessage(token, "henderson", "hello gimana kabarnya son é") == {
        "status": "OK",
        "message": "Message Sent",
    }
    assert messi.sendstring("auth messi salah \r\n")["message"] == "Password Salah"
    other = henderson.login("henderson", "surabaya")
    messages = henderson.inbox(other)["messages"]
    assert messages["messi"][0]["msg"] == "hello gimana kabarnya son é"
    assert messages["messi"][0]["msg_from"] == "Lionel Messi"
    assert henderson.inbox(other) == {"status": "OK", "messages": {}}
    messi.close()
    henderson.close()
    # twistd re-raises the signal it stopped on, as the exit status.
    assert twistd.stop(signal.SIGTERM) == -signal.SIGTERM
    log = twistd.log.read_text()
    assert "Traceback" not in log
    assert "surabaya" not in log and token not in log


@pytest.mark.slow
def test_sigkill_loses_no_acknowledged_message(twistd: TwistdChat) -> None:
    """After SIGKILL and a restart, every acked message arrives exactly once."""
    port = twistd.start()
    sender = CourseClient(port)
    token = sender.login("messi", "surabaya")
    acked = []
    for i in range(200):
        reply = sender.sendmessage(token, "lineker", f"durable {i}")
        if reply == {"status": "OK", "message": "Message Sent"}:
            acked.append(f"durable {i}")
    assert len(acked) == 200
    twistd.stop(signal.SIGKILL)
    sender.close()

    twistd.start(port=0)
    client = CourseClient(twistd.port)
    # The old token survives the restart.
    reply = client.sendmessage(token, "lineker", "after restart")
    assert reply["status"] == "OK"
    reader = client.login("lineker", "surabaya")
    got = [m["msg"] for m in client.inbox(reader)["messages"]["messi"]]
    assert got == [*acked, "after restart"]
    assert client.inbox(reader)["messages"] == {}
    client.close()
    assert twistd.stop() == -signal.SIGTERM
    assert "Server Shut Down." in twistd.log.read_text()


@pytest.mark.slow
def test_port_in_use_exits_with_message(tmp_path: Path) -> None:
    """A port already in use stops twistd with a clear error, and leaves no
    stale twistd.pid behind."""
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        result = subprocess.run(
            [
                *TWISTD,
                "--nodaemon",
                "chat",
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
            ],
            cwd=tmp_path,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            capture_output=True,
            timeout=30,
        )
    finally:
        blocker.close()
    assert result.returncode != 0
    assert f"cannot listen on tcp:{port}" in (result.stdout + result.stderr).decode()
    assert not (tmp_path / "twistd.pid").exists()


@pytest.mark.slow
def test_newer_schema_exits_with_message(tmp_path: Path) -> None:
    """A database from a newer chat stops twistd with a clear error."""
    from chat.store import schema

    database = tmp_path / "chat.sqlite"
    schema.prepare(str(database))
    connection = sqlite3.connect(database)
    connection.execute("UPDATE schema_version SET version = 42")
    connection.commit()
    connection.close()
    result = subprocess.run(
        [
            *TWISTD,
            "--nodaemon",
            "--pidfile=",
            "chat",
            "--listen",
            "tcp:0:interface=127.0.0.1",
        ],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "schema version 42" in (result.stdout + result.stderr).decode()


@pytest.mark.slow
def test_second_server_on_one_file_is_refused(twistd: TwistdChat) -> None:
    """A second twistd chat on the file a running one serves is refused,
    naming the first one's pid; chat-admin still adds a user meanwhile,
    and the running server knows it at once."""
    twistd.start()
    second = subprocess.run(
        [
            *TWISTD,
            "--nodaemon",
            "--pidfile=",
            "chat",
            "--listen",
            "tcp:0:interface=127.0.0.1",
        ],
        cwd=twistd.workdir,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        timeout=60,
    )
    output = (second.stdout + second.stderr).decode()
    assert second.returncode == 1, output
    assert output.strip().splitlines()[-1] == (
        f"chat: chat.sqlite is in use by a chat server (pid {twistd.pid}): stop "
        "it first, or use another --store"
    )
    added = admin_process(
        twistd.workdir, "useradd", "budi", "--name", "Budi", stdin="rahasia1\n"
    )
    assert added.returncode == 0, added.stderr
    client = CourseClient(twistd.port)
    assert client.login("budi", "rahasia1")
    client.close()
