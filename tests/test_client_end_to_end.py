"""
Two real chat-client processes against a real twistd chat over loopback:
one in a pseudo-terminal as a person would use it, one fed by a pipe as a
script would; then the server is killed and restarted under them.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_end_to_end import REPO, CourseClient, TwistdChat
from tests.waiting import wait_until

#: These tests start processes (see tests/conftest.py).
pytestmark = pytest.mark.slow


class Terminal:
    """
    A chat-client process on a pseudo-terminal.
    """

    def __init__(self, port: int) -> None:
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "chat.client",
                "--connect",
                f"tcp:host=127.0.0.1:port={port}",
            ],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=dict(os.environ, PYTHONPATH=str(REPO), TZ="UTC"),
        )
        os.close(slave)
        self.screen = ""

    def type(self, text: str) -> None:
        os.write(self.master, text.encode() + b"\n")

    def read(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    self.screen += os.read(self.master, 65536).decode(
                        "utf-8", "replace"
                    )
                except OSError:
                    return

    def wait_for(self, text: str) -> None:
        def shown() -> bool:
            self.read(0.05)
            return text in self.screen

        wait_until(shown, what=lambda: f"{text!r} on screen:\n{self.screen}")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        os.close(self.master)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[TwistdChat]:
    server = TwistdChat(tmp_path, "--demo")
    server.log.touch()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.process.kill()
        server.process.wait()


def script(
    port: int, commands: str, connect: str = "tcp:host=127.0.0.1:port={}"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chat.client", "--connect", connect.format(port)],
        input=commands,
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, PYTHONPATH=str(REPO), TZ="UTC"),
    )


def test_live_chat_survives_server_restart(server: TwistdChat) -> None:
    """A message arrives on screen untyped, and after a restart, exactly once."""
    port = server.start()
    henderson = Terminal(port)
    try:
        henderson.wait_for(
            f"chat client for tcp:host=127.0.0.1:port={port}; type help for commands"
        )
        henderson.wait_for("chat> ")
        henderson.type("auth henderson surabaya")
        henderson.wait_for("logged in as henderson")
        henderson.wait_for("henderson> ")

        piped = script(port, "auth messi surabaya\nsend henderson hello live\n")
        assert piped.returncode == 0, piped.stderr
        assert piped.stdout == "logged in as messi\nmessage sent to henderson\n"
        henderson.wait_for("Lionel Messi (messi): hello live")

        server.stop(signal.SIGKILL)
        henderson.wait_for("connection to the server lost; reconnecting")
        server.start(port=port)
        away = CourseClient(port)
        token = away.login("messi", "surabaya")
        assert (
            away.sendmessage(token, "henderson", "while you were away")["status"]
            == "OK"
        )
        away.close()

        henderson.wait_for("reconnected")
        henderson.wait_for("Lionel Messi (messi): while you were away")
        # A message shown twice would be shown before one sent after it.
        piped = script(port, "auth messi surabaya\nsend henderson one more\n")
        assert piped.returncode == 0, piped.stderr
        henderson.wait_for("Lionel Messi (messi): one more")
        assert henderson.screen.count("while you were away") == 1
        assert henderson.screen.count("hello live") == 1
        henderson.type("quit")
        assert henderson.process.wait(timeout=10) == 0
    finally:
        henderson.close()


def test_piped_commands_and_exit_codes(server: TwistdChat) -> None:
    """Piped commands run in order; the exit code tells whether it connected."""
    port = server.start()
    result = script(
        port,
        "auth lineker surabaya\nsend nobody hi\nsend messi hi\nwho\nauth messi wrong\n",
    )
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        "logged in as lineker",
        "error: User Tidak Ditemukan",
        "message sent to messi",
        "online: lineker (Gary Lineker)",
        "error: Password Salah",
    ]
    read = script(port, "auth messi surabaya\ninbox\ninbox\n")
    lines = read.stdout.splitlines()
    assert lines[0] == "logged in as messi"
    assert lines[1].endswith("Gary Lineker (lineker): hi")
    assert lines[2] == "no new messages"

    server.stop()
    unreachable = script(port, "auth messi surabaya\n")
    assert unreachable.returncode == 1
    assert f"cannot reach the server at tcp:host=127.0.0.1:port={port}" in (
        unreachable.stdout
    )
    # A host name is resolved first: its failure comes from within Twisted's
    # client service, which the client then stops without a traceback.
    named = script(port, "auth messi surabaya\n", connect="localhost:{}")
    assert named.returncode == 1
    assert "Traceback" not in named.stderr, named.stderr
    assert f"cannot reach the server at localhost:{port}" in named.stdout


def test_file_round_trip_between_clients(server: TwistdChat, tmp_path: Path) -> None:
    """A file sent by one client is saved byte-identical by the other,
    under its name (spaces and all)."""
    import hashlib

    port = server.start()
    source = tmp_path / "holiday photo.bin"
    source.write_bytes(bytes(range(256)) * 1000)
    sent = script(port, f"auth messi surabaya\nsendfile henderson {source}\n")
    assert sent.stdout.splitlines()[-1] == (
        "file holiday photo.bin (256000 bytes) sent to henderson"
    )
    downloads = tmp_path / "downloads"
    received = subprocess.run(
        [
            sys.executable,
            "-m",
            "chat.client",
            "--connect",
            f"tcp:host=127.0.0.1:port={port}",
            "--downloads",
            str(downloads),
        ],
        input="auth henderson surabaya\ninbox\n",
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, PYTHONPATH=str(REPO), TZ="UTC"),
    )
    assert "sent a file: holiday photo.bin (256000 bytes)" in received.stdout
    saved = downloads / "holiday photo.bin"
    assert (
        hashlib.sha256(saved.read_bytes()).hexdigest()
        == hashlib.sha256(source.read_bytes()).hexdigest()
    )
