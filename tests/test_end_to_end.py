"""
End to end over real loopback TCP: the twistd plugin in this process with
Twisted clients, and a real C{twistd chat} process driven by the course
client's exact bytes, killed with SIGKILL and restarted.
"""

from __future__ import annotations

import json
import os
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
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.plugin import getPlugins

from tests.twistd_helpers import REPO, TWISTD, CourseClient, TwistdChat

__all__ = ["REPO", "TWISTD", "CourseClient", "TwistdChat"]


class ReplyCollector(Protocol):
    """
    A client that hands out one reply per request.
    """

    def __init__(self) -> None:
        self.buffer = b""
        self.waiting: list[Deferred[dict[str, Any]]] = []
        self.closed: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            frame, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.waiting.pop(0).callback(json.loads(frame))

    def connectionLost(self, reason: object = None) -> None:
        self.closed.callback(None)

    def request(self, line: bytes) -> Deferred[dict[str, Any]]:
        d: Deferred[dict[str, Any]] = Deferred()
        self.waiting.append(d)
        self.transport.write(line)  # type: ignore[union-attr]
        return d.addTimeout(5, reactor)


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
        messi = await connectProtocol(endpoint, ReplyCollector())
        henderson = await connectProtocol(endpoint, ReplyCollector())
        token = (await messi.request(b"auth messi surabaya \r\n"))["tokenid"]
        other = (await henderson.request(b"auth henderson surabaya \r\n"))["tokenid"]
        sent = await messi.request(f"send {token} henderson  halo bro \r\n".encode())
        assert sent == {"status": "OK", "message": "Message Sent"}
        inbox = await henderson.request(f"inbox {other} \r\n".encode())
        assert inbox["messages"]["messi"][0]["msg"] == "halo bro"
        for client in (messi, henderson):
            client.transport.loseConnection()
            await client.closed
    finally:
        await service.stopService()
    connection = sqlite3.connect(database)
    rows = connection.execute(
        "SELECT sender, recipient, body, delivered_at IS NOT NULL FROM messages"
    ).fetchall()
    connection.close()
    assert rows == [("messi", "henderson", "halo bro", 1)]


# A real twistd process (helpers shared with the fault suite).


@pytest.fixture
def twistd(tmp_path: Path) -> Iterator[TwistdChat]:
    server = TwistdChat(tmp_path, "--demo")
    server.log.touch()
    yield server
    server.kill()


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


def test_port_in_use_exits_with_message(tmp_path: Path) -> None:
    """A port already in use stops twistd with a clear error."""
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        result = subprocess.run(
            [
                *TWISTD,
                "--nodaemon",
                "--pidfile=",
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
