"""
The SQLite database as a file: paths that cannot be a database, read-only
files, the lock of a running server, and damage, found at start (quick
check), while serving (the first malformed page stops every write), and
by chat-admin check.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python import usage

from chat import tap
from chat.errors import DatabaseDamaged, StorageUnavailable, StoreInUse, StoreReadOnly
from chat.model import Session, User
from chat.store import schema, sqlitefile
from chat.store.sqlite import SQLiteStore
from tests.test_admin import admin, run_admin

MESSI = User("messi", "Lionel Messi", "Argentina", "$argon2id$x")
HENDERSON = User("henderson", "Jordan Henderson", "Inggris", "$argon2id$y")


def read_only(monkeypatch: pytest.MonkeyPatch, *paths: Path) -> None:
    """
    Make C{paths} read-only for chat, as permissions would (the tests may
    run as root, whom permissions do not stop).
    """
    refused = {os.path.abspath(p) for p in paths}
    writable = sqlitefile.writable
    monkeypatch.setattr(
        sqlitefile,
        "writable",
        lambda path: os.path.abspath(path) not in refused and writable(path),
    )


# Paths.


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("missing/chat.sqlite", "there is no folder {tmp}/missing (make it first)"),
        (".", "{tmp}/. is a folder: give a file name, such as sqlite:"),
    ],
)
def test_paths_that_cannot_be_a_database(
    tmp_path: Path, where: str, message: str
) -> None:
    """A missing folder, or a folder, is refused in one line; nothing is
    created."""
    path = f"{tmp_path}/{where}"
    with pytest.raises(StorageUnavailable) as raised:
        SQLiteStore(reactor, path)
    assert message.format(tmp=tmp_path) in str(raised.value)
    assert os.listdir(tmp_path) == []


def test_folder_not_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database cannot be created in a folder that is not writable."""
    read_only(monkeypatch, tmp_path)
    with pytest.raises(StorageUnavailable, match=r"the folder .* is not writable"):
        SQLiteStore(reactor, str(tmp_path / "chat.sqlite"))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["--store", "sqlite:{tmp}/missing/chat.sqlite"],
        ["--store", "sqlite:{tmp}"],
    ],
)
def test_twistd_store_path_errors_are_one_line(tmp_path: Path, argv: list[str]) -> None:
    """twistd chat on a store path that cannot be a database ends with one
    line saying why."""
    options = tap.Options()
    options.parseOptions([a.format(tmp=tmp_path) for a in argv])
    with pytest.raises(SystemExit) as exited:
        tap.makeService(options)
    message = str(exited.value.code)
    assert message.startswith("chat: ") and "\n" not in message
    assert os.listdir(tmp_path) == []


@pytest_twisted.ensureDeferred
async def test_admin_read_commands_create_nothing(tmp_path: Path) -> None:
    """users, realm list and check on a mistyped path create no database
    and no folder, and neither do the commands that change what must
    already be there (passwd, userdel, setadmin, realm remove); useradd and
    realm add create the file, never its folder."""
    for argv in (
        ["users"],
        ["realm", "list"],
        ["check"],
        ["passwd", "x"],
        ["userdel", "x"],
        ["setadmin", "x", "yes"],
        ["realm", "remove", "realm-b"],
    ):
        for store in (tmp_path / "chat.sqlite", tmp_path / "typo" / "chat.sqlite"):
            result = await run_admin("--store", f"sqlite:{store}", *argv, stdin="")
            assert result.returncode == 1, result
            assert result.stderr == (
                f"chat-admin: no database at {store} (twistd chat creates it "
                "when it first starts, and so do chat-admin useradd and realm "
                "add)\n"
            )
    assert os.listdir(tmp_path) == []
    typo = tmp_path / "typo" / "chat.sqlite"
    result = await run_admin(
        "--store", f"sqlite:{typo}", "useradd", "x", "--name", "X", stdin="rahasia1"
    )
    assert result.stderr == (
        f"chat-admin: cannot open {typo}: there is no folder {typo.parent} "
        "(make it first)\n"
    )
    made = await admin(tmp_path, "useradd", "ani", "--name", "Ani", stdin="rahasia1")
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "chat.sqlite").exists()


@pytest_twisted.ensureDeferred
async def test_admin_unknown_store_is_one_line(tmp_path: Path) -> None:
    """A --store that names no store is the same line for every command,
    check included (it was taken for a PostgreSQL URL)."""
    for store in ("sqlite:", "nonsense"):
        for argv in (["users"], ["check"], ["userdel", "x"]):
            result = await run_admin("--store", store, *argv)
            assert result.returncode == 1, result
            assert result.stderr.startswith(
                f"chat-admin: unknown store {store!r}; expected sqlite:PATH"
            ), result.stderr
    assert os.listdir(tmp_path) == []


# Read-only.


@pytest_twisted.ensureDeferred
async def test_read_only_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a read-only database, chat-admin's reading commands work; the
    others say it is read-only, before asking for a password."""
    made = await admin(tmp_path, "useradd", "ani", "--name", "Ani", stdin="rahasia1")
    assert made.returncode == 0, made.stderr
    read_only(monkeypatch, tmp_path / "chat.sqlite")
    listed = await admin(tmp_path, "users")
    assert (listed.returncode, listed.stdout) == (0, "ani\tAni\t\n")
    assert (await admin(tmp_path, "realm", "list")).returncode == 0
    assert (await admin(tmp_path, "check")).returncode == 0
    for argv in (
        ["useradd", "budi", "--name", "Budi"],
        ["passwd", "ani"],
        ["userdel", "ani"],
        ["realm", "remove", "realm-b"],
    ):
        refused = await admin(tmp_path, *argv, stdin="")
        assert refused.returncode == 1
        assert refused.stderr == (
            f"chat-admin: {tmp_path / 'chat.sqlite'} is read-only "
            f"({tmp_path / 'chat.sqlite'} is not writable): it can be read "
            "(chat-admin users, realm list, check) but not changed\n"
        )


def test_twistd_refuses_a_read_only_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server needs to write its database: a read-only one is refused at
    start, in one line."""
    path = tmp_path / "chat.sqlite"
    schema.prepare(str(path))
    read_only(monkeypatch, tmp_path)
    options = tap.Options()
    options.parseOptions(["--store", f"sqlite:{path}"])
    with pytest.raises(SystemExit, match=r"is read-only \(its folder .* is not"):
        tap.makeService(options)


@pytest_twisted.ensureDeferred
async def test_companion_files_another_user_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A -wal or -shm file this process may not write (left by another
    user's reading chat-admin) makes every write fail: the server and the
    writing commands refuse to start on it, saying which file; reading
    works."""
    path = tmp_path / "chat.sqlite"
    made = await admin(tmp_path, "useradd", "ani", "--name", "Ani", stdin="rahasia1")
    assert made.returncode == 0, made.stderr
    shm = tmp_path / "chat.sqlite-shm"
    shm.write_bytes(b"")
    read_only(monkeypatch, shm)
    options = tap.Options()
    options.parseOptions(["--store", f"sqlite:{path}"])
    with pytest.raises(SystemExit, match=f"{shm} is not writable"):
        tap.makeService(options)
    refused = await admin(tmp_path, "passwd", "ani", stdin="rahasia2")
    assert refused.returncode == 1
    assert refused.stderr.startswith(
        f"chat-admin: {path} cannot be written: {shm} is not writable"
    )
    listed = await admin(tmp_path, "users")
    assert (listed.returncode, listed.stdout) == (0, "ani\tAni\t\n")


@pytest_twisted.ensureDeferred
async def test_writes_to_a_read_only_store_fail_as_such(tmp_path: Path) -> None:
    """A store opened read-only reads, and refuses writes with
    StoreReadOnly (SQLite's own refusal)."""
    path = str(tmp_path / "chat.sqlite")
    writer = SQLiteStore(reactor, path)
    writer.start()
    await writer.add_user(MESSI)
    await writer.close()
    store = SQLiteStore(reactor, path, read_only=True)
    store.start()
    try:
        assert [u.username for u in await store.list_users()] == ["messi"]
        with pytest.raises(StorageUnavailable, match="read-only"):
            await store.add_user(HENDERSON)
    finally:
        await store.close()


def test_read_only_does_not_upgrade(tmp_path: Path) -> None:
    """An older schema is not upgraded by a read-only open: it says so."""
    path = str(tmp_path / "chat.sqlite")
    schema.prepare(path)
    connection = sqlite3.connect(path)
    connection.execute("UPDATE schema_version SET version = 0")
    connection.commit()
    connection.close()
    with pytest.raises(StoreReadOnly, match="upgrades it to"):
        SQLiteStore(reactor, path, read_only=True)


# One server per file.


def test_second_server_is_refused_naming_the_first(tmp_path: Path) -> None:
    """While a server holds the file, a second one is refused with the
    first one's pid; chat-admin (not a server) may still open it."""
    path = str(tmp_path / "chat.sqlite")
    first = SQLiteStore(reactor, path, server=True)
    with pytest.raises(StoreInUse) as raised:
        SQLiteStore(reactor, path, server=True)
    assert raised.value.pid == os.getpid()
    assert str(raised.value) == (
        f"{path} is in use by a chat server (pid {os.getpid()}): stop it "
        "first, or use another --store"
    )
    SQLiteStore(reactor, path)  # chat-admin's kind of store
    first._close_txn()
    SQLiteStore(reactor, path, server=True)._close_txn()


@pytest_twisted.ensureDeferred
async def test_migrate_refuses_a_source_a_server_runs_on(tmp_path: Path) -> None:
    """chat-admin migrate refuses a SQLite file a server holds (what the
    server writes after the copy starts would be lost)."""
    path = tmp_path / "chat.sqlite"
    server = SQLiteStore(reactor, str(path), server=True)
    try:
        result = await run_admin(
            "migrate", "--from", f"sqlite:{path}", "--to", "postgresql://u@h/db"
        )
    finally:
        server._close_txn()
    assert result.returncode == 1
    assert result.stderr == (
        f"chat-admin: {path} is in use by a chat server (pid {os.getpid()}): "
        "stop it first, or use another --store\n"
    )


def test_lock_file_names_the_server_after_a_fork(tmp_path: Path) -> None:
    """The lock file holds the pid of the process that runs the server
    (twistd may fork after opening the store, to run in the background)."""
    path = str(tmp_path / "chat.sqlite")
    lock = sqlitefile.ServerLock(path)
    lock.acquire()
    with open(sqlitefile.lock_path(path)) as f:
        assert f.read() == f"{os.getpid()}\n"
    lock.release()
    with open(sqlitefile.lock_path(path)) as f:
        assert f.read() == ""


# Damage.


def damage(path: Path, table: str = "messages") -> None:
    """
    Overwrite the root page of C{table} with garbage, as a disk fault
    would (after moving every commit into the main file).
    """
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (page_size,) = connection.execute("PRAGMA page_size").fetchone()
    (root,) = connection.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)
    ).fetchone()
    connection.close()
    with open(path, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(bytes([0xA5]) * page_size)


async def filled(path: Path) -> None:
    store = SQLiteStore(reactor, str(path))
    store.start()
    try:
        await store.add_user(MESSI)
        await store.add_user(HENDERSON)
        for i in range(50):
            await store.store_message("messi", "henderson", f"m{i}", float(i))
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_damaged_database_refused_at_start(tmp_path: Path) -> None:
    """A server checks the file at start (quick_check) and refuses a
    damaged one, saying what to do; the check can be skipped."""
    path = tmp_path / "chat.sqlite"
    await filled(path)
    damage(path)
    with pytest.raises(DatabaseDamaged) as raised:
        SQLiteStore(reactor, str(path), server=True, check=True)
    message = str(raised.value)
    assert message.startswith(f"{path} is damaged (SQLite quick_check: ")
    assert "restore it from a backup (the file and its -wal file together)" in message
    assert f"chat-admin --store sqlite:{path} check lists the damage" in message
    # The lock of the refused server was let go.
    SQLiteStore(reactor, str(path), server=True)._close_txn()
    options = tap.Options()
    options.parseOptions(["--store", f"sqlite:{path}"])
    with pytest.raises(SystemExit, match="is damaged"):
        tap.makeService(options)
    options = tap.Options()
    options.parseOptions(["--store", f"sqlite:{path}", "--skip-integrity-check"])
    skipped = tap.makeService(options)
    skipped.store._close_txn()  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred
async def test_damage_found_while_serving_stops_every_write(tmp_path: Path) -> None:
    """The first malformed page (here found by an inbox read) rolls its
    batch back and is logged as damage; from then on nothing is written
    into the file, nor acknowledged, even where SQLite would not notice."""
    path = tmp_path / "chat.sqlite"
    await filled(path)
    damage(path)
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    store = SQLiteStore(reactor, str(path))  # as with --skip-integrity-check
    store.start()
    try:
        with pytest.raises(StorageUnavailable, match="is damaged"):
            await store.drain_inbox("henderson", 100.0)
        with pytest.raises(StorageUnavailable, match="is damaged"):
            await store.create_session(Session("a" * 64, "messi", 1.0, 1.0))
        with pytest.raises(StorageUnavailable, match="is damaged"):
            await store.add_user(User("ani", "Ani", "", "$argon2id$z"))
    finally:
        await store.close()
        globalLogPublisher.removeObserver(observer)
    critical = [e for e in observer if e["log_level"] == LogLevel.critical]
    assert len(critical) == 1
    assert "is damaged" in critical[0]["log_format"]
    connection = sqlite3.connect(path)
    assert connection.execute("SELECT count(*) FROM sessions").fetchone() == (0,)
    assert connection.execute("SELECT count(*) FROM users").fetchone() == (2,)
    connection.close()


@pytest_twisted.ensureDeferred
async def test_admin_check(tmp_path: Path) -> None:
    """chat-admin check says ok for a sound file, and lists the damage of a
    damaged one (exit status 1)."""
    path = tmp_path / "chat.sqlite"
    await filled(path)
    sound = await admin(tmp_path, "check")
    assert (sound.returncode, sound.stdout) == (0, f"sqlite:{path}: ok\n")
    damage(path, "messages_conversation")
    damaged = await admin(tmp_path, "check")
    assert damaged.returncode == 1
    assert damaged.stdout.strip()
    assert damaged.stderr.startswith(f"chat-admin: sqlite:{path} is damaged (")
    assert damaged.stderr.endswith(
        "restore it from a backup (a SQLite file together with its -wal file)\n"
    )


def test_is_corruption() -> None:
    """SQLite's corruption errors are told apart from others."""
    connection = sqlite3.connect(":memory:")
    with pytest.raises(sqlite3.Error) as other:
        connection.execute("SELECT * FROM nowhere")
    assert not sqlitefile.is_corruption(other.value)
    assert not sqlitefile.is_corruption(ValueError("malformed"))
    assert sqlitefile.is_corruption(
        sqlite3.DatabaseError("database disk image is malformed")
    )


def test_skip_integrity_check_option() -> None:
    """--skip-integrity-check is a flag, off by default."""
    options = tap.Options()
    options.parseOptions([])
    assert not options["skip-integrity-check"]
    options = tap.Options()
    options.parseOptions(["--skip-integrity-check"])
    assert options["skip-integrity-check"]
    with pytest.raises(usage.UsageError):
        tap.Options().parseOptions(["--skip-integrity-check=yes"])
