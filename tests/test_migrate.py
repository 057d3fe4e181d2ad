"""
chat-admin migrate: a real SQLite store, filled through SQLiteStore, copied
into a real (throwaway) PostgreSQL by chat-admin run as a process.
"""

from __future__ import annotations

import hashlib
import io
import os
import pty
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import argon2
import psycopg
import pytest
import pytest_twisted
from twisted.internet import reactor

import chat.migrate
import chat.store.migration
from chat.links import InboundMessage, RealmLink
from chat.migrate import Progress
from chat.model import Attachment, Session, User
from chat.store import open_store, schema
from chat.store.migration import CLUSTER_TABLES, TABLES
from chat.store.postgres import safe_url
from chat.store.sqlite import SQLiteStore
from tests.test_admin import run_admin
from tests.test_store_postgres import postgres_columns, sqlite_columns

REPO = Path(__file__).resolve().parent.parent
PNG = bytes(range(256)) * 5 + b"\x89PNG\r\n\x1a\n\x00"
TOKEN_HASH = hashlib.sha256(b"messi-token").hexdigest()


async def chat_admin(*argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """
    Run chat-admin (in this process: see L{tests.test_admin}).
    """
    return await run_admin(*argv, stdin=stdin)


def chat_admin_on_terminal(cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """
    Run chat-admin as a process whose standard error is a terminal.
    """
    command = [sys.executable, "-m", "chat.admin", *argv]
    environment = dict(os.environ, PYTHONPATH=str(REPO))
    master, slave = pty.openpty()
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
        env=environment,
        cwd=cwd,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert process.stdout is not None
    stdout = process.stdout.read().decode()
    process.stdout.close()
    returncode = process.wait(timeout=120)
    stderr = b"".join(chunks).decode()
    return subprocess.CompletedProcess(command, returncode, stdout, stderr)


async def migrate(source: Path, url: str) -> subprocess.CompletedProcess[str]:
    return await chat_admin("migrate", "--from", f"sqlite:{source}", "--to", url)


async def fill(store: SQLiteStore) -> None:
    """
    A store with something in every table: delivered and undelivered
    messages, a group with its messages, a file, sessions, a realm link with
    queued messages, messages accepted from that realm, and gaps in the ids.
    """
    await store.add_user(User("messi", "Lionel Messi", "Argentina", "$argon2id$h1"))
    await store.add_user(User("henderson", "Jordan Henderson", "Inggris", "$h2"))
    await store.add_user(User("lineker", "Gary Lineker", "Inggris", "$argon2id$h3"))
    await store.add_user(User("ani", "Ani", "", "$argon2id$h4"))
    await store.set_admin("messi", True)
    await store.create_session(Session(TOKEN_HASH, "messi", 10.5, 11.25))
    await store.create_session(Session("f" * 64, "henderson", 12.0, 13.0))
    await store.store_message("henderson", "messi", "halo messi", 20.0)
    await store.store_message("lineker", "messi", "apa kabar?", 21.0)
    await store.drain_inbox("messi", 22.5)  # delivered
    await store.store_message("messi", "henderson", "belum dibaca", 23.0)
    await store.store_message("ani", "messi", "gone with ani", 23.5)
    await store.store_messages("messi", ["henderson", "lineker"], "untuk kalian", 24.0)
    await store.store_messages(
        "lineker", ["henderson"], "photo.png", 25.0, Attachment("photo.png", PNG)
    )
    await store.create_group("tim", "messi", 30.0)
    await store.join_group("tim", "ani", 30.5)
    await store.join_group("tim", "henderson", 31.0)
    await store.join_group("tim", "lineker", 32.0)
    await store.store_group_message("henderson", "tim", "rapat jam 5", 33.0)
    await store.store_group_message(
        "messi", "tim", "doc.bin", 34.0, Attachment("doc.bin", b"\x00\xff" * 100)
    )
    await store.delete_user("ani")  # gaps in the message and member ids
    await store.add_realm_link(
        RealmLink("realm-b", "tcp:host=b:port=8889", "secret-of-realm-b", 40.0)
    )
    await store.add_realm_link(
        RealmLink("realm-c", "ssl:host=c:port=8890", "secret-of-realm-c", 41.0)
    )
    await store.queue_outbound(
        "messi", "to xavi", 42.0, [("realm-b", ("xavi",), "u1")], 9
    )
    await store.queue_outbound(
        "henderson", "to both", 43.0, [("realm-b", ("xavi", "puyol"), "u2")], 9
    )
    # A file for another realm, kept only by its outbox entry (schema 3).
    await store.queue_outbound(
        "messi",
        "plan.txt",
        43.5,
        [("realm-c", ("puyol",), "u3")],
        9,
        Attachment("plan.txt", b"only in the outbox"),
    )
    inbound = InboundMessage("r1", "xavi", "Xavi", ("messi", "nobody"), "hola", 44.0)
    await store.receive_remote("realm-b", inbound, 45.0)
    inbound = InboundMessage("r2", "xavi", "Xavi", ("henderson",), "dua", 46.0)
    await store.receive_remote("realm-b", inbound, 47.0)
    await store.drain_realm_inbox("henderson", "realm-b", 48.0)


async def make_store(path: Path, filler: Any = fill) -> Path:
    store = SQLiteStore(reactor, str(path))
    store.start()
    try:
        await filler(store)
    finally:
        await store.close()
    return path


@pytest_twisted.async_fixture
async def source(tmp_path: Path) -> Path:
    """
    A filled SQLite store.
    """
    return await make_store(tmp_path / "chat.sqlite")


#: The columns each table is compared in order of.
KEYS = {"realm_inbound": 2}


def sqlite_rows(path: Path, table: str) -> list[tuple[Any, ...]]:
    columns = next(t.columns for t in TABLES if t.name == table)
    connection = sqlite3.connect(path)
    try:
        rows = connection.execute(
            f"SELECT {', '.join(columns)} FROM {table}"
        ).fetchall()
    finally:
        connection.close()
    return sorted(rows, key=lambda row: row[: KEYS.get(table, 1)])


def postgres_rows(url: str, table: str) -> list[tuple[Any, ...]]:
    columns = next(t.columns for t in TABLES if t.name == table)
    with psycopg.connect(url) as connection:
        rows = connection.execute(
            f"SELECT {', '.join(columns)} FROM {table}"  # type: ignore[arg-type]
        ).fetchall()
    return sorted(rows, key=lambda row: row[: KEYS.get(table, 1)])


def postgres_tables(url: str) -> dict[str, int]:
    """
    The tables of the database at C{url}, with their row counts.
    """
    with psycopg.connect(url) as connection:
        names = [
            row[0]
            for row in connection.execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = current_schema()"
            )
        ]
        return {
            name: connection.execute(
                f'SELECT count(*) FROM "{name}"'  # type: ignore[arg-type]
            ).fetchone()[0]  # type: ignore[index]
            for name in names
        }


@pytest_twisted.ensureDeferred
async def test_copies_every_row(
    tmp_path: Path, source: Path, postgres_url: str
) -> None:
    """
    Every table is copied row for row: ids, password hashes, delivery
    state, file bytes, realm queues; the cluster tables stay empty; the
    counts are printed and match.
    """
    result = await migrate(source, postgres_url)
    assert result.returncode == 0, result.stderr
    for table in TABLES:
        expected = sqlite_rows(source, table.name)
        assert postgres_rows(postgres_url, table.name) == expected, table.name
        assert expected, f"the test leaves {table.name} empty"
    tables = postgres_tables(postgres_url)
    assert tables["schema_version"] == 1
    assert all(tables[name] == 0 for name in CLUSTER_TABLES)

    messages = sqlite_rows(source, "messages")
    undelivered = sqlite_rows(source, "mailbox")
    assert 0 < len(undelivered) < len(messages)
    ids = [row[0] for row in messages]
    assert ids != list(range(1, len(ids) + 1)), "the test wants gaps in the ids"

    lines = result.stdout.splitlines()
    assert lines[0].split() == ["sqlite", "postgresql"]
    counts = {line.rsplit(None, 2)[0]: line.rsplit(None, 2)[1:] for line in lines[1:-1]}
    assert counts["messages"] == [str(len(messages))] * 2
    assert counts["users"] == ["3", "3"]
    assert counts["messages: highest id"] == [str(max(ids))] * 2
    assert counts["messages: undelivered"] == [str(len(undelivered))] * 2
    assert "every count matches" in lines[-1]
    assert f"rows from {source} to {postgres_url}" in lines[-1]
    assert result.stderr.splitlines() == [
        f"copied {table.name}: {tables[table.name]:,} row"
        + "s" * (tables[table.name] != 1)
        for table in TABLES
    ]
    assert sqlite_rows(source, "messages") == messages


@pytest_twisted.ensureDeferred
async def test_sequences_continue_after_the_copied_ids(
    tmp_path: Path, source: Path, postgres_url: str
) -> None:
    """New rows in PostgreSQL get ids above the copied ones."""
    assert (await migrate(source, postgres_url)).returncode == 0
    inserts = {
        "messages": "INSERT INTO messages (sender, recipient, sender_name,"
        " recipient_name, body, sent_at)"
        " VALUES ('messi', 'lineker', 'M', 'L', 'new', 50.0)",
        "group_members": "INSERT INTO group_members (group_name, username, joined_at)"
        " VALUES ('tim', 'ani', 51.0)",
        "realm_outbox": "INSERT INTO realm_outbox (realm_id, message_uid, sender,"
        " sender_name, recipients, body, sent_at)"
        " VALUES ('realm-b', 'u9', 'messi', 'M', '[\"xavi\"]', 'x', 52.0)",
    }
    with psycopg.connect(postgres_url) as connection:
        connection.execute("INSERT INTO users VALUES ('ani', 'Ani', '', 'h', 1.0, 0)")
        for table, insert in inserts.items():
            highest = one(connection, f"SELECT max(id) FROM {table}")
            assert one(connection, insert + " RETURNING id") == highest + 1, table


def one(connection: psycopg.Connection[Any], query: str) -> Any:
    row = connection.execute(query).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return row[0]


@pytest_twisted.ensureDeferred
async def test_empty_store(tmp_path: Path, postgres_url: str) -> None:
    """An empty store migrates to an empty schema whose ids start at 1."""
    source = await make_store(tmp_path / "empty.sqlite", nothing)
    result = await migrate(source, postgres_url)
    assert result.returncode == 0, result.stderr
    assert "migrated 0 rows" in result.stdout
    assert set(postgres_tables(postgres_url).values()) <= {0, 1}
    with psycopg.connect(postgres_url) as connection:
        connection.execute("INSERT INTO users VALUES ('a', 'A', '', 'h', 1.0, 0)")
        new = one(
            connection,
            "INSERT INTO messages (sender, recipient, sender_name, recipient_name,"
            " body, sent_at) VALUES ('a', 'a', 'A', 'A', 'x', 1.0) RETURNING id",
        )
    assert new == 1


async def nothing(store: SQLiteStore) -> None:
    pass


@pytest_twisted.ensureDeferred
async def test_refuses_a_target_with_rows(
    tmp_path: Path, source: Path, postgres_url: str
) -> None:
    """A second migration into the same database is refused; nothing changes."""
    assert (await migrate(source, postgres_url)).returncode == 0
    before = postgres_tables(postgres_url)
    again = await migrate(source, postgres_url)
    assert again.returncode == 1
    assert "is not empty" in again.stderr
    assert "migrate into a new, empty database" in again.stderr
    assert "Traceback" not in again.stderr
    assert postgres_tables(postgres_url) == before


@pytest_twisted.ensureDeferred
async def test_refuses_a_target_in_use(
    tmp_path: Path, source: Path, postgres_url: str
) -> None:
    """Rows in the cluster tables alone (a node ran there) are enough to refuse."""
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        schema.prepare_postgres(connection)
        connection.execute("INSERT INTO cluster_nodes VALUES ('node-1', 1.0, 2.0)")
    result = await migrate(source, postgres_url)
    assert result.returncode == 1
    assert "cluster_nodes have rows" in result.stderr
    assert postgres_tables(postgres_url)["users"] == 0


@pytest_twisted.ensureDeferred
async def test_refuses_a_target_with_other_tables(
    tmp_path: Path, source: Path, postgres_url: str
) -> None:
    """A database with tables that are not chat's is refused, left as it was."""
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("CREATE TABLE invoices (id integer)")
    result = await migrate(source, postgres_url)
    assert result.returncode == 1
    assert "has tables that are not chat's (invoices)" in result.stderr
    assert postgres_tables(postgres_url) == {"invoices": 0}


@pytest_twisted.ensureDeferred
async def test_refuses_bad_sources(tmp_path: Path, postgres_url: str) -> None:
    """
    A missing file, a file that is not a SQLite database, a SQLite database
    that is not chat's, and chat databases of another schema version are
    refused with a one-line message; the target stays empty.
    """
    (tmp_path / "notes.txt").write_text("not a database at all\n" * 100)
    other = sqlite3.connect(tmp_path / "other.sqlite")
    other.execute("CREATE TABLE t (x)")
    other.commit()
    other.close()
    versions = {}
    for version in (0, schema.SCHEMA_VERSION + 1):
        path = tmp_path / f"v{version}.sqlite"
        schema.prepare(str(path))
        connection = sqlite3.connect(path)
        connection.execute("UPDATE schema_version SET version = ?", (version,))
        connection.commit()
        connection.close()
        versions[version] = path
    cases = [
        (tmp_path / "missing.sqlite", "missing.sqlite: no such file"),
        (tmp_path / "notes.txt", "notes.txt: not a chat database"),
        (tmp_path / "other.sqlite", "other.sqlite: not a chat database"),
        (versions[0], "start this chat once on it"),
        (versions[schema.SCHEMA_VERSION + 1], "written by a newer chat"),
    ]
    for path, message in cases:
        result = await migrate(path, postgres_url)
        assert result.returncode == 1, (path, result)
        assert message in result.stderr, (path, result.stderr)
        assert len(result.stderr.splitlines()) == 1, result.stderr
    assert postgres_tables(postgres_url) == {}
    assert not (tmp_path / "missing.sqlite").exists()


@pytest_twisted.ensureDeferred
async def test_usage_errors(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--from and --to are checked before anything is opened (exit 2)."""
    monkeypatch.chdir(tmp_path)
    cases = [
        (["--from", "chat.sqlite", "--to", postgres_url], "--from must be sqlite:PATH"),
        (["--from", "sqlite:", "--to", postgres_url], "--from must be sqlite:PATH"),
        (["--from", "sqlite:chat.sqlite"], "--from and --to are required"),
        (
            ["--from", "sqlite:chat.sqlite", "--to", "mysql://root:pw@db/chat"],
            "--to must be a postgresql://",
        ),
        (
            ["--from", "sqlite:chat.sqlite", "--to", "postgresql://u@h/db?nonsense=1"],
            "invalid --to URL",
        ),
    ]
    for argv, message in cases:
        result = await chat_admin("migrate", *argv)
        assert result.returncode == 2, (argv, result)
        assert message in result.stderr, (argv, result.stderr)
        assert "pw@" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # no chat.sqlite made by --store


@pytest_twisted.ensureDeferred
async def test_password_in_the_url_is_never_shown(
    tmp_path: Path, source: Path, postgres_url: str
) -> None:
    """
    A password in the URL works (this server trusts everyone) but is masked
    in every message, with a warning to use PGPASSWORD or ~/.pgpass.
    """
    url = postgres_url.replace("://postgres@", "://postgres:Sekr1t-pw@")
    result = await migrate(source, url)
    assert result.returncode == 0, result.stderr
    assert "Sekr1t" not in result.stdout + result.stderr
    assert "postgres:***@127.0.0.1" in result.stdout
    assert "use PGPASSWORD or ~/.pgpass" in result.stderr
    refused = await migrate(source, url + "?password=Sekr1t-pw")
    assert refused.returncode == 1
    assert "Sekr1t" not in refused.stdout + refused.stderr
    port = postgres_url.rsplit(":", 1)[1].split("/")[0]
    unreachable = url.replace(f":{port}/", ":1/")
    failed = await migrate(source, unreachable)
    assert failed.returncode == 1
    assert "cannot connect to PostgreSQL at postgresql://postgres:***@" in failed.stderr
    assert "Sekr1t" not in failed.stdout + failed.stderr


def test_safe_url_masks_password_parameters() -> None:
    """A database URL's password is masked in the user part and in the query."""
    assert (
        safe_url("postgresql://u@h/db?sslmode=require&password=pw")
        == "postgresql://u@h/db?sslmode=require&password=***"
    )
    assert safe_url("postgresql://u:pw@h/db?password=pw") == (
        "postgresql://u:***@h/db?password=***"
    )


def test_progress_bar_on_a_terminal(
    tmp_path: Path, source: Path, postgres_url: str
) -> None:
    """On a terminal, each table gets a bar, drawn in place up to 100%."""
    result = chat_admin_on_terminal(
        tmp_path, "migrate", "--from", f"sqlite:{source}", "--to", postgres_url
    )
    assert result.returncode == 0, result.stderr
    full = "[" + "#" * Progress.width + "]"
    for table in TABLES:
        assert f"\r{table.name}" in result.stderr
    lines = [line for line in result.stderr.split("\n") if line.strip("\r")]
    assert len(lines) == len(TABLES)
    for line, table in zip(lines, TABLES, strict=True):
        final = line.rstrip("\r").rsplit("\r", 1)[-1]
        assert final.startswith(table.name)
        assert full in final and final.endswith("100%"), final
    assert "copied users" not in result.stderr


def test_progress_bar_draws_in_place() -> None:
    """The bar is redrawn with \\r as rows are copied, then ends its line."""
    stream = io.StringIO()
    progress = Progress(stream, tty=True)
    progress.interval = 0
    progress.start("messages", 200_000)
    progress.advance(50_000)
    progress.advance(150_000)
    progress.finish()
    frames = stream.getvalue().split("\r")[1:]
    assert [frame.rsplit(None, 1)[-1] for frame in frames] == [
        "0%",
        "25%",
        "100%",
        "100%",
    ]
    assert "50,000/200,000" in frames[1]
    assert frames[-1].endswith("200,000/200,000 100%\n")


def test_tables_cover_both_schemas(tmp_path: Path, postgres_url: str) -> None:
    """
    Every table and column of both schemas is copied, except the version
    and PostgreSQL's cluster tables.
    """
    path = tmp_path / "chat.sqlite"
    schema.prepare(str(path))
    sqlite_tables = sqlite_columns(path)
    with psycopg.connect(postgres_url, autocommit=True) as pg:
        schema.prepare_postgres(pg)
    pg_tables = postgres_columns(postgres_url)
    copied = {table.name: set(table.columns) for table in TABLES}
    del sqlite_tables["schema_version"]
    assert sqlite_tables == copied
    assert set(pg_tables) == set(copied) | {"schema_version", *CLUSTER_TABLES}
    assert {name: pg_tables[name] for name in copied} == copied
    assert [t.name for t in TABLES if t.identity] == [
        "messages",
        "group_members",
        "realm_outbox",
    ]


def test_counts_that_differ_roll_back(
    tmp_path: Path,
    source: Path,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    If the copy came out different (here: a row of messages lost), the
    counts say which, and nothing is committed.
    """
    original = chat.store.migration.source_rows

    def losing(connection: Any, table: Any) -> Any:
        for rows in original(connection, table):
            yield rows[1:] if table.name == "messages" else rows

    monkeypatch.setattr(chat.store.migration, "source_rows", losing)
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.raises(chat.migrate.MigrationError) as raised:
        chat.migrate.migrate(str(source), postgres_url, stdout, stderr)
    assert "the copy differs (messages);" in str(raised.value)
    assert "nothing was written" in str(raised.value)
    assert "DIFFERENT" in stdout.getvalue()
    assert postgres_tables(postgres_url) == {}


async def everything(store: Any, later: float) -> dict[str, Any]:
    """
    What a server sees of the filled store, through the store API: users,
    a session, groups, histories, the realm queue, then the mailboxes
    drained, a new message, and a message from realm-b received again.
    """
    seen: dict[str, Any] = {
        "users": await store.list_users(),
        "admin": await store.is_admin("messi"),
        "session": await store.get_session(TOKEN_HASH),
        "groups": await store.list_groups("henderson"),
        "links": await store.list_realm_links(),
        "outbox": await store.next_outbound("realm-b", 10),
        "outbox size": await store.outbox_size("realm-b"),
    }
    for user, peer in [("messi", "henderson"), ("henderson", "lineker")]:
        seen[f"conversation {user} {peer}"] = await store.conversation(user, peer, 50)
    seen["group history"] = await store.group_history("lineker", "tim", 50)
    for user in ("messi", "henderson", "lineker"):
        seen[f"inbox {user}"] = await store.drain_inbox(user, later)
    seen["new"] = await store.store_message("lineker", "messi", "baru", later)
    again = InboundMessage("r1", "xavi", "Xavi", ("messi", "nobody"), "hola", 44.0)
    seen["again"] = await store.receive_remote("realm-b", again, later)
    return seen


@pytest_twisted.ensureDeferred
async def test_the_postgres_store_serves_what_was_migrated(
    tmp_path: Path, source: Path, postgres_url: str
) -> None:
    """
    The PostgreSQL store, opened as the server would, answers as the SQLite
    store does: the old session token still resolves, the same messages
    (ids, files, delivery state) are in the histories and mailboxes, the
    next message gets the same id, and realm-b's message is a duplicate.
    """
    result = await migrate(source, postgres_url)
    assert result.returncode == 0, result.stderr
    seen = {}
    for description in (f"sqlite:{source}", postgres_url):
        store = open_store(reactor, description)
        store.start()
        try:
            seen[description] = await everything(store, 99.0)
        finally:
            await store.close()
    expected, got = seen[f"sqlite:{source}"], seen[postgres_url]
    assert expected["session"] is not None
    assert [m.text for m in expected["inbox henderson"]] == [
        "belum dibaca",
        "untuk kalian",
        "photo.png",
        "doc.bin",
    ]
    assert expected["inbox henderson"][2].file_content == PNG
    assert expected["again"].duplicate
    for key in expected:
        assert got[key] == expected[key], key


@pytest_twisted.ensureDeferred
async def test_admin_commands_on_postgresql(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """chat-admin --store postgresql://... works for every command (and
    makes no file in the current folder)."""
    monkeypatch.chdir(tmp_path)
    store = ["--store", postgres_url]
    made = await chat_admin(
        *store, "useradd", "budi", "--name", "Budi", stdin="rahasia1\n"
    )
    assert made.returncode == 0, made.stderr
    assert (await chat_admin(*store, "users")).stdout == "budi\tBudi\t\n"
    changed = await chat_admin(*store, "passwd", "budi", stdin="barubaru\n")
    assert changed.returncode == 0
    with psycopg.connect(postgres_url) as connection:
        stored = one(connection, "SELECT password_hash FROM users")
    assert argon2.PasswordHasher().verify(stored, "barubaru")
    assert (await chat_admin(*store, "setadmin", "budi", "yes")).returncode == 0
    assert (await chat_admin(*store, "users")).stdout == "budi\tBudi\t\tadmin\n"
    added = await chat_admin(
        *store,
        "realm",
        "add",
        "realm-b",
        "tcp:host=b:port=8889",
        stdin="a-shared-secret-of-some-length",
    )
    assert added.returncode == 0, added.stderr
    listed = await chat_admin(*store, "realm", "list")
    assert listed.stdout == "realm-b\ttcp:host=b:port=8889\t0 queued\n"
    assert (await chat_admin(*store, "realm", "remove", "realm-b")).returncode == 0
    assert (await chat_admin(*store, "userdel", "budi")).returncode == 0
    assert (await chat_admin(*store, "users")).stdout == ""
    missing = await chat_admin(*store, "userdel", "nobody")
    assert missing.returncode == 1
    assert missing.stderr == "chat-admin: no such user: nobody\n"
    checked = await chat_admin(*store, "check")
    assert (checked.returncode, checked.stdout) == (0, f"{postgres_url}: ok\n")
    assert list(tmp_path.iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_admin_on_unreachable_postgresql(
    tmp_path: Path, postgres_url: str
) -> None:
    """An unreachable database is a one-line error, the password masked."""
    port = postgres_url.rsplit(":", 1)[1].split("/")[0]
    url = postgres_url.replace("://postgres@", "://postgres:Sekr1t@")
    url = url.replace(f":{port}/", ":1/")
    result = await chat_admin("--store", url, "users")
    assert result.returncode == 1
    assert result.stderr.startswith("chat-admin: cannot connect to PostgreSQL at")
    assert "postgres:***@127.0.0.1:1/" in result.stderr
    assert "Sekr1t" not in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_refuses_a_target_in_use_by_a_server(
    source: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A target whose tables a server holds (here: a transaction that locked
    users) is refused after the lock timeout, not waited for forever.
    """
    monkeypatch.setattr(chat.store.migration, "LOCK_TIMEOUT", 1)
    with psycopg.connect(postgres_url, autocommit=True) as server:
        schema.prepare_postgres(server)
        with server.transaction():
            server.execute("LOCK TABLE users IN ROW EXCLUSIVE MODE")
            with pytest.raises(chat.migrate.MigrationError) as raised:
                chat.migrate.migrate(
                    str(source), postgres_url, io.StringIO(), io.StringIO()
                )
    assert "is in use (by a chat server?)" in str(raised.value)
    assert postgres_tables(postgres_url)["users"] == 0
