"""
Helpers for black-box tests against a real C{twistd chat} subprocess on
loopback: starting and signalling the server, the course client's exact
transport, and a small pipelining line client.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import argon2

from chat.service import DEMO_PASSWORD, DEMO_USERS
from chat.store import schema
from tests.clients import Client, encoded
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
DELIMITER = b"\r\n\r\n"

_LISTENING = re.compile(
    r"listening on IPv4Address\(type='TCP', host='127.0.0.1', port=(\d+)\)"
)


def free_port() -> int:
    """
    A loopback port nothing listens on now (the kernel's choice: even
    ports for bind, odd ones for outgoing connections, so the clients of
    this or another test run do not take it meanwhile).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: Cheap argon2id parameters for the demo users the tests make.
CHEAP_ARGON2 = argon2.PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)


def demo_rows() -> list[tuple[str, str, str, str, float]]:
    """
    The course's demo users as rows of the users table, their password
    hashed cheaply.
    """
    password_hash = CHEAP_ARGON2.hash(DEMO_PASSWORD)
    now = time.time()
    return [
        (username, full_name, country, password_hash, now)
        for username, full_name, country in DEMO_USERS
    ]


def seed_demo_users(database: Path) -> None:
    """
    Make a SQLite chat database with the demo users, hashed cheaply: with
    C{--demo} on it, a server then hashes nothing at start, and a login
    verifies a cheap hash (the default cost is about a quarter of a
    second of CPU, each time).
    """
    schema.prepare(str(database))
    connection = sqlite3.connect(database)
    with connection:
        connection.executemany(
            "INSERT INTO users (username, full_name, country, password_hash,"
            " created_at) VALUES (?, ?, ?, ?, ?)",
            demo_rows(),
        )
    connection.close()


class TwistdChat:
    """
    C{twistd -n chat} in a subprocess, in its own working directory.

    @ivar listen: the C{--listen} endpoint, with C{{port}} for the port.
    @ivar log_through_pipe: copy the server's output to the log file
        through a pipe (so a file-size limit on the server does not hit
        its log).

    With C{--demo} and no C{--store}, its database (C{chat.sqlite} in the
    working directory) is made with the demo users already in, hashed
    cheaply (L{seed_demo_users}), unless C{seed} is false.
    """

    def __init__(
        self,
        workdir: Path,
        *arguments: str,
        listen: str = "tcp:{port}:interface=127.0.0.1:backlog=1024",
        log_through_pipe: bool = False,
        seed: bool = True,
    ) -> None:
        database = workdir / "chat.sqlite"
        if seed and "--demo" in arguments and "--store" not in arguments:
            if not database.exists():
                seed_demo_users(database)
        self.workdir = workdir
        self.arguments = arguments
        self.listen = listen
        self.log_through_pipe = log_through_pipe
        self.log = workdir / "twistd.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._copier: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, port: int = 0, timeout: float = 60) -> int:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.log.touch()
        offset = self.log.stat().st_size
        log = self.log.open("ab")
        self.process = subprocess.Popen(
            [
                *TWISTD,
                "--nodaemon",
                "--pidfile=",
                "--logfile=-",
                "chat",
                "--listen",
                self.listen.format(port=port),
                *self.arguments,
            ],
            cwd=self.workdir,
            env=env,
            stdout=subprocess.PIPE if self.log_through_pipe else log,
            stderr=subprocess.STDOUT,
        )
        if self.log_through_pipe:
            self._copier = threading.Thread(
                target=_copy, args=(self.process.stdout, log), daemon=True
            )
            self._copier.start()
        else:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_bytes()[offset:].decode("utf-8", "replace")
            match = _LISTENING.search(text)
            if match:
                self.port = int(match.group(1))
                return self.port
            if self.process.poll() is not None:
                raise AssertionError(f"twistd exited:\n{text}")
            time.sleep(0.05)
        # Stop it, and say what it had logged and how busy the machine
        # was: a start takes a second or two, so this is worth reading.
        text = self.log.read_bytes()[offset:].decode("utf-8", "replace")
        self.kill()
        load = ", ".join(f"{n:.1f}" for n in os.getloadavg())
        raise AssertionError(
            f"twistd did not start listening within {timeout:g} s "
            f"(load average {load}); its log:\n{text}"
        )

    def wait_ready(self) -> None:
        """
        Wait until the server answers commands (demo users exist).
        """
        wait_until(lambda: answers_ping(self.port), what="the server answers ping")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        code = self.process.wait(timeout=timeout)
        if self._copier is not None:
            self._copier.join(timeout=5)
            self._copier = None
        return code

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self._copier is not None:
            self._copier.join(timeout=5)
            self._copier = None

    def rss_kib(self) -> int:
        """
        The server's resident memory, in KiB.
        """
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        assert match, status
        return int(match.group(1))

    def log_text(self) -> str:
        return self.log.read_text("utf-8", "replace")


def answers_ping(port: int) -> bool:
    """
    Whether a new connection's C{ping} is answered (not, say, closed by a
    short C{--login-timeout} on a slow machine).
    """
    try:
        client = LineClient(port)
    except OSError:
        return False
    try:
        return client.request("ping ready").get("echo") == "ready"
    except (OSError, ValueError):
        return False
    finally:
        client.close()


def _copy(source: Any, target: Any) -> None:
    with target:
        for line in iter(source.readline, b""):
            target.write(line)
            target.flush()


class CourseClient(Client):
    """
    The course's chat-cli.py transport: sendall, then recv(64) chunks,
    each decoded on its own, until the buffer ends in CR LF CR LF. Its
    lines end as the course's client ends them: a space, then CR LF.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)

    def write(self, line: str | bytes) -> None:
        self.sock.sendall(encoded(line) + b" \r\n")

    def read(self) -> dict[str, Any]:
        received = ""
        while True:
            data = self.sock.recv(64)
            assert data, "server closed the connection"
            received = f"{received}{data.decode()}"
            if received[-4:] == "\r\n\r\n":
                return json.loads(received)  # type: ignore[no-any-return]

    def sendstring(self, string: str) -> dict[str, Any]:
        """
        Send C{string} as it is (the course client's own line ending
        included) and read the reply.
        """
        self.sock.sendall(string.encode())
        return self.read()

    def sendmessage(self, token: str, to: str, message: str) -> dict[str, Any]:
        text = ""
        for word in message.split(" "):
            text = f"{text} {word}"
        return self.request(f"send {token} {to} {text}")

    def inbox(self, token: str) -> dict[str, Any]:
        return self.request(f"inbox {token}")

    def close(self) -> None:
        self.sock.close()


class LineClient(Client):
    """
    A blocking client that can pipeline: write lines, read replies in order.
    """

    def __init__(
        self,
        port: int,
        source: str | None = None,
        timeout: float = 20,
        sock: socket.socket | None = None,
    ) -> None:
        if sock is None:
            sock = socket.create_connection(
                ("127.0.0.1", port),
                timeout=timeout,
                source_address=None if source is None else (source, 0),
            )
        self.sock = sock
        self.buffer = b""

    def write(self, line: str | bytes) -> None:
        self.sock.sendall(encoded(line) + b"\r\n")

    def read(self) -> dict[str, Any]:
        """
        The next reply.

        @raise ConnectionError: if the server closed the connection first.
        """
        while DELIMITER not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            self.buffer += data
        frame, self.buffer = self.buffer.split(DELIMITER, 1)
        return json.loads(frame)  # type: ignore[no-any-return]

    def read_until_closed(self) -> tuple[list[dict[str, Any]], bool]:
        """
        Every reply until the server closes the connection.

        @return: the replies, and whether the connection was reset (rather
            than closed cleanly).
        """
        replies: list[dict[str, Any]] = []
        reset = False
        while True:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                reset = True
                data = b""
            if not data:
                break
            self.buffer += data
        for frame in self.buffer.split(DELIMITER):
            if frame.strip():
                replies.append(json.loads(frame))
        self.buffer = b""
        return replies, reset

    def close(self) -> None:
        self.sock.close()


def make_certificate(
    directory: Path, key_directory: Path | None = None
) -> tuple[Path, Path]:
    """
    A throwaway self-signed certificate for localhost and 127.0.0.1 in
    C{directory}, and its key (in C{key_directory}, by default the same).

    @return: the key's path and the certificate's path.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path = (key_directory or directory) / "key.pem"
    cert_path = directory / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path
