"""
A throwaway PostgreSQL server for the tests: Debian's binaries, C{initdb} in
a temporary folder, listening on a free loopback port (and a Unix socket in
that folder), trusting local connections. As root it runs PostgreSQL as the
C{postgres} user, since C{initdb} and C{postgres} refuse to run as root.

Without PostgreSQL installed the tests that need it are skipped, with the
reason, except under C{CI=true}, where they fail: CI must run them.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.twistd_helpers import TwistdChat, demo_rows, free_port

NEEDED = "PostgreSQL server binaries (Debian package postgresql) are not installed"


def find_bindir() -> str | None:
    """
    The newest C{/usr/lib/postgresql/*/bin} with C{initdb}, or None.
    """
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[-3]) if p.split("/")[-3].isdigit() else 0,
    )
    return os.path.dirname(candidates[-1]) if candidates else None


class ThrowawayPostgres:
    """
    One PostgreSQL cluster in C{directory}, started and stopped by the tests.
    """

    def __init__(self, bindir: str, directory: str, port: int | None = None) -> None:
        self.bindir = bindir
        self.directory = directory
        self.data = os.path.join(directory, "data")
        self.port = port or free_port()
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())[0]

    def _command(self, *argv: str) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *argv]
        return list(argv)

    def _run(self, *argv: str) -> None:
        subprocess.run(
            self._command(*argv),
            check=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    def init(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
            os.chmod(self.directory, 0o700)
        self._run(
            os.path.join(self.bindir, "initdb"),
            "-D",
            self.data,
            "-U",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-instructions",
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1"
            f" -c unix_socket_directories={self.directory}"
            " -c max_connections=200 -c fsync=on -c synchronous_commit=on"
        )
        self._run(
            os.path.join(self.bindir, "pg_ctl"),
            "-D",
            self.data,
            "-o",
            options,
            "-l",
            os.path.join(self.directory, "postgres.log"),
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(
            os.path.join(self.bindir, "pg_ctl"),
            "-D",
            self.data,
            "-m",
            mode,
            "-w",
            "stop",
        )

    def is_running(self) -> bool:
        return os.path.exists(os.path.join(self.data, "postmaster.pid"))

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """
        Create an empty database; return its URL.
        """
        import psycopg

        name = name or "chat_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def start_throwaway() -> Iterator[ThrowawayPostgres]:
    """
    Start a throwaway server for the session; skip (or fail under CI) if
    PostgreSQL is not installed.
    """
    bindir = find_bindir()
    if bindir is None:
        if os.environ.get("CI") == "true":
            pytest.fail(NEEDED + ", and CI=true requires them")
        pytest.skip(NEEDED)
    directory = tempfile.mkdtemp(prefix="chat-pg-")
    server = ThrowawayPostgres(bindir, directory)
    server.init()
    server.start()
    try:
        yield server
    finally:
        if server.is_running():
            try:
                server.stop("immediate")
            except subprocess.CalledProcessError:
                time.sleep(0.5)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[ThrowawayPostgres]:
    """
    A throwaway PostgreSQL server shared by the whole test session.
    """
    yield from start_throwaway()


@pytest.fixture
def postgres_url(postgres: ThrowawayPostgres) -> str:
    """
    The URL of a new, empty database on the session's server.
    """
    return postgres.create_database()


@pytest.fixture(scope="session")
def _shared_chat_database(postgres: ThrowawayPostgres) -> str:
    from twisted.internet import reactor

    from chat.store.postgres import PostgresStore

    url = postgres.create_database("chat_shared")
    PostgresStore(reactor, url)  # creates the schema
    return url


@pytest.fixture
def postgres_db(_shared_chat_database: str) -> str:
    """
    The URL of a database with the chat schema and no rows (one database
    for the session, emptied before each test: faster than creating one).
    """
    import psycopg

    from chat.store.migration import CHAT_TABLES

    tables = ", ".join(sorted(CHAT_TABLES - {"schema_version"}))
    with psycopg.connect(_shared_chat_database, autocommit=True) as connection:
        connection.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
    return _shared_chat_database


def seed_demo_users(url: str) -> None:
    """
    Give the database at C{url} the chat schema and the demo users, hashed
    cheaply (see L{tests.twistd_helpers.seed_demo_users}).
    """
    import psycopg

    from chat.store import schema

    with psycopg.connect(url, autocommit=True) as connection:
        schema.prepare_postgres(connection)
        with connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO users (username, full_name, country, password_hash,"
                " created_at) VALUES (%s, %s, %s, %s, %s)",
                demo_rows(),
            )


@pytest.fixture
def twistd_node(
    tmp_path: Path, postgres_url: str
) -> Iterator[Callable[..., TwistdChat]]:
    """
    Make twistd chat nodes (C{--demo}) on one new database (with the demo
    users, hashed cheaply), each in a folder of its own, with more options
    if given; they are killed after the test.
    """
    seed_demo_users(postgres_url)
    nodes: list[TwistdChat] = []

    def make(name: str, *arguments: str) -> TwistdChat:
        workdir = tmp_path / name
        workdir.mkdir()
        server = TwistdChat(workdir, "--demo", "--store", postgres_url, *arguments)
        nodes.append(server)
        return server

    yield make
    for server in nodes:
        server.kill()
