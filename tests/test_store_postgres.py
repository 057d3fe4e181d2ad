"""
What only the PostgreSQL store does (the contract is in test_store.py):
the same schema as SQLite, notifications in the commit, several stores on
one database, faults, schema versions.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import gatherResults

from chat.errors import MailboxFull, NoSuchUser, SchemaTooNew, StorageUnavailable
from chat.model import Attachment, Message
from chat.store import open_store, schema
from chat.store.cluster import MAX_PAYLOAD, notification_payloads
from chat.store.migration import CLUSTER_TABLES
from chat.store.postgres import PostgresStore, safe_url
from tests.postgres import ThrowawayPostgres
from tests.test_store import HENDERSON, LINEKER, MESSI
from tests.waiting import TIMEOUT, eventually


def sqlite_columns(path: Path) -> dict[str, set[str]]:
    """
    The columns of each table of the SQLite database at C{path}.
    """
    with sqlite3.connect(path) as connection:
        tables = [
            row[0]
            for row in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
            )
        ]
        return {
            table: {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
            for table in tables
        }


def postgres_columns(url: str) -> dict[str, set[str]]:
    """
    The columns of each table of the PostgreSQL database at C{url}.
    """
    with psycopg.connect(url) as connection:
        rows = connection.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema()"
        ).fetchall()
    columns: dict[str, set[str]] = {}
    for table, column in rows:
        columns.setdefault(table, set()).add(column)
    return columns


@pytest.fixture
def pg_store(postgres_db: str) -> Iterator[PostgresStore]:
    store = PostgresStore(reactor, postgres_db, node_id="node-a")
    store.start()
    yield store
    pytest_twisted.blockon(store.close())


def test_same_tables_and_columns_as_sqlite(tmp_path: Path, postgres_url: str) -> None:
    """Both schemas define the same tables and columns (PostgreSQL adds the
    cluster's own tables)."""
    PostgresStore(reactor, postgres_url)
    path = tmp_path / "schema.sqlite"
    schema.prepare(str(path))
    in_sqlite = sqlite_columns(path)
    in_postgres = postgres_columns(postgres_url)
    assert set(in_postgres) - set(CLUSTER_TABLES) == set(in_sqlite)
    for table, columns in in_sqlite.items():
        assert in_postgres[table] == columns, table


def test_schema_version_recorded(postgres_url: str) -> None:
    """A new database records the schema version; opening it again keeps it."""
    PostgresStore(reactor, postgres_url)
    with psycopg.connect(postgres_url) as connection:
        row = connection.execute("SELECT version FROM schema_version").fetchone()
    assert row == (schema.SCHEMA_VERSION,)
    # Opening again keeps it (no second creation).
    PostgresStore(reactor, postgres_url)


def _indexes(url: str) -> set[tuple[str, str]]:
    with psycopg.connect(url) as connection:
        rows = connection.execute(
            "SELECT indexname, indexdef FROM pg_indexes"
            " WHERE schemaname = current_schema()"
        ).fetchall()
    return {(name, definition) for name, definition in rows}


def test_schema_upgrade_from_v1_equals_fresh(
    postgres_url: str, postgres: ThrowawayPostgres
) -> None:
    """A version 1 database, upgraded, has the fresh schema's tables, columns
    and indexes, and keeps its rows."""
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        with connection.transaction():
            for statement in schema._statements(schema._sql("v1.sql", "postgresql")):
                connection.execute(statement)
            connection.execute(
                "INSERT INTO users (username, full_name, password_hash, created_at)"
                " VALUES ('messi', 'Lionel Messi', 'x', 1.0)"
            )
        assert schema.prepare_postgres(connection) == 1
        row = connection.execute("SELECT version FROM schema_version").fetchone()
        assert row == (schema.SCHEMA_VERSION,)
        assert connection.execute("SELECT username FROM users").fetchall() == [
            ("messi",)
        ]
    fresh = postgres.create_database()
    PostgresStore(reactor, fresh)
    assert postgres_columns(postgres_url) == postgres_columns(fresh)
    assert _indexes(postgres_url) == _indexes(fresh)


def test_schema_upgrade_from_v2_equals_fresh(
    postgres_url: str, postgres: ThrowawayPostgres
) -> None:
    """A version 2 database upgrades to version 3 (files in the realm
    outbox): the fresh schema's tables, columns and indexes, its outbox
    rows kept, without a file."""
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        with connection.transaction():
            for statement in schema._statements(schema._sql("v2.sql", "postgresql")):
                connection.execute(statement)
            connection.execute(
                "INSERT INTO realm_links VALUES ('realm-b', 'tcp:host=b:port=1',"
                " 's', 1.0)"
            )
            connection.execute(
                "INSERT INTO realm_outbox (realm_id, message_uid, sender,"
                " sender_name, recipients, body, sent_at) VALUES ('realm-b',"
                " 'u1', 'messi', 'Lionel Messi', '[\"xavi\"]', 'queued', 1.0)"
            )
        assert schema.prepare_postgres(connection) == 2
        row = connection.execute("SELECT version FROM schema_version").fetchone()
        assert row == (3,)
        assert connection.execute(
            "SELECT message_uid, body, file_name, file_size, file_sha256"
            " FROM realm_outbox"
        ).fetchall() == [("u1", "queued", None, None, None)]
    fresh = postgres.create_database()
    PostgresStore(reactor, fresh)
    assert postgres_columns(postgres_url) == postgres_columns(fresh)
    assert _indexes(postgres_url) == _indexes(fresh)


def test_schema_refuses_newer(postgres_url: str) -> None:
    """A database with a newer schema version is refused and left unchanged."""
    PostgresStore(reactor, postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(SchemaTooNew, match="schema version 99"):
        PostgresStore(reactor, postgres_url)
    with psycopg.connect(postgres_url) as connection:
        row = connection.execute("SELECT version FROM schema_version").fetchone()
    assert row == (99,)


def test_refuses_a_database_with_other_tables(postgres_url: str) -> None:
    """A database holding other tables and no chat schema is refused."""
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("CREATE TABLE invoices (id INTEGER)")
    with pytest.raises(StorageUnavailable, match="not a chat database"):
        PostgresStore(reactor, postgres_url)


def test_unreachable_at_start(postgres: ThrowawayPostgres) -> None:
    """A clear error, without the password."""
    from tests.postgres import free_port

    url = f"postgresql://chat:hunter2@127.0.0.1:{free_port()}/chat"
    with pytest.raises(StorageUnavailable, match="cannot connect") as raised:
        open_store(reactor, url)
    assert "hunter2" not in str(raised.value)
    assert "chat:***@127.0.0.1" in str(raised.value)


def test_safe_url() -> None:
    """A database URL's password is masked; a URL without one is unchanged."""
    assert safe_url("postgresql://u:pw@h:5/db") == "postgresql://u:***@h:5/db"
    assert safe_url("postgresql://u@h/db") == "postgresql://u@h/db"


def test_notification_payloads_split_under_the_limit() -> None:
    """Many messages are announced in payloads under the notification size limit, all
    ids in order."""
    messages = [
        Message(i, "messi", f"user{i:05d}", "M", "U", "text", 1.0)
        for i in range(1, 2001)
    ]
    payloads = notification_payloads("node-a", messages)
    assert len(payloads) > 1
    seen = []
    for payload in payloads:
        assert len(payload.encode()) <= MAX_PAYLOAD < 8000
        decoded = json.loads(payload)
        assert decoded["node"] == "node-a"
        assert isinstance(decoded["at"], float)
        seen.extend(decoded["messages"])
    assert seen == [[m.id, m.recipient] for m in messages]


def test_notification_payloads_few_in_one() -> None:
    """A batch's few messages are announced in one payload; none, in none."""
    messages = [Message(i, "messi", "henderson", "M", "H", "t", 1.0) for i in (7, 8)]
    (payload,) = notification_payloads("node-a", messages)
    assert json.loads(payload)["messages"] == [[7, "henderson"], [8, "henderson"]]
    assert notification_payloads("node-a", []) == []


@pytest_twisted.ensureDeferred
async def test_notify_in_the_commit(pg_store: PostgresStore, postgres_db: str) -> None:
    """One notification per committed batch, with ids and recipients only;
    nothing for a batch that stored no message."""
    await pg_store.add_user(MESSI)
    await pg_store.add_user(HENDERSON)
    await pg_store.add_user(LINEKER)
    listener = psycopg.connect(postgres_db, autocommit=True)
    try:
        listener.execute("LISTEN chat_messages")
        sent = await gatherResults(
            [
                pg_store.store_message("messi", "henderson", "one", 1.0),
                pg_store.store_messages("messi", ["henderson", "lineker"], "two", 2.0),
                pg_store.list_users(),
            ]
        )
        await pg_store.drain_inbox("henderson", 3.0)
        # A notification for the drain would come before this one's.
        later = await pg_store.store_message("lineker", "messi", "later", 4.0)
        notifies = list(listener.notifies(timeout=TIMEOUT, stop_after=2))
    finally:
        listener.close()
    assert len(notifies) == 2
    assert json.loads(notifies[1].payload)["messages"] == [[later.id, "messi"]]
    payload = json.loads(notifies[0].payload)
    assert payload["node"] == "node-a"
    one, (two_h, two_l) = sent[0], sent[1]
    assert payload["messages"] == [
        [one.id, "henderson"],
        [two_h.id, "henderson"],
        [two_l.id, "lineker"],
    ]


@pytest_twisted.ensureDeferred
async def test_messages_by_id(pg_store: PostgresStore) -> None:
    """Messages are found by id in id order; unknown ids are skipped."""
    await pg_store.add_user(MESSI)
    await pg_store.add_user(HENDERSON)
    a = await pg_store.store_message("messi", "henderson", "a", 1.0)
    b = await pg_store.store_message("henderson", "messi", "b", 2.0)
    found = await pg_store.messages_by_id([b.id, a.id, 999])
    assert [(m.id, m.text) for m in found] == [(a.id, "a"), (b.id, "b")]


@pytest_twisted.ensureDeferred
async def test_two_nodes_drain_each_message_once(postgres_db: str) -> None:
    """Two stores (two nodes) draining the same mailbox at the same moment:
    every message is taken by exactly one of them."""
    a = PostgresStore(reactor, postgres_db, node_id="a")
    b = PostgresStore(reactor, postgres_db, node_id="b")
    a.start()
    b.start()
    try:
        await a.add_user(MESSI)
        await a.add_user(HENDERSON)
        sent = await gatherResults(
            [a.store_message("messi", "henderson", f"m{i}", i) for i in range(300)]
        )
        drains = await gatherResults(
            [
                store.drain_inbox("henderson", 1000.0, 2000)
                for _ in range(10)
                for store in (a, b)
            ]
        )
        while True:
            more = await a.drain_inbox("henderson", 1000.0)
            if not more:
                break
            drains.append(more)
    finally:
        await a.close()
        await b.close()
    taken = [m.id for drain in drains for m in drain]
    assert sorted(taken) == sorted(m.id for m in sent)
    assert len(taken) == len(set(taken)) == 300


@pytest_twisted.ensureDeferred
async def test_database_down_then_back(postgres: ThrowawayPostgres) -> None:
    """PostgreSQL stopped: operations fail with StorageUnavailable (no false
    acknowledgement); started again: the store recovers by itself."""
    url = postgres.create_database()
    store = PostgresStore(reactor, url)
    store.start()
    try:
        await store.add_user(MESSI)
        await store.add_user(HENDERSON)
        acked = await store.store_message("messi", "henderson", "before", 1.0)
        postgres.stop("fast")
        try:
            with pytest.raises(StorageUnavailable):
                await store.store_message("messi", "henderson", "lost", 2.0)
            with pytest.raises(StorageUnavailable):
                await store.store_message("messi", "henderson", "lost too", 3.0)
        finally:
            postgres.start()

        async def stored_after() -> Message | None:
            try:
                return await store.store_message("messi", "henderson", "after", 4.0)
            except StorageUnavailable:
                return None

        recovered = await eventually(stored_after, what="the store recovers")
        texts = [m.text for m in await store.drain_inbox("henderson", 5.0)]
    finally:
        await store.close()
    assert texts == ["before", "after"]
    assert acked.id < recovered.id


def test_open_store_passes_node_id(postgres_db: str) -> None:
    """open_store gives a PostgreSQL URL's store its node id and mailbox limit."""
    store: Any = open_store(reactor, postgres_db, node_id="node-7", max_mailbox=5)
    assert isinstance(store, PostgresStore)
    assert (store.node_id, store.max_mailbox, store.url) == ("node-7", 5, postgres_db)


@pytest_twisted.ensureDeferred
async def test_one_batch_of_sends_and_drains(postgres_db: str) -> None:
    """Sends and drains asked for together (one batch, run in bulk) succeed
    or fail each as it would alone: unknown users and full mailboxes are
    refused one by one, and two drains of one mailbox share it out."""
    store = PostgresStore(reactor, postgres_db, max_mailbox=3)
    store.start()
    try:
        for user in (MESSI, HENDERSON, LINEKER):
            await store.add_user(user)
        await store.store_message("messi", "lineker", "old", 0.5)
        await store.store_message("henderson", "lineker", "older", 0.6)
        commits = store.commits
        asked = [
            store.store_message("messi", "henderson", "h1", 1.0),
            store.store_message("nobody", "henderson", "x", 1.0),
            store.store_message("messi", "nobody", "x", 1.0),
            store.store_message("lineker", "henderson", "h2", 1.0),
            store.store_message("messi", "henderson", "h3", 1.0),
            store.store_message("messi", "henderson", "h4", 1.0),
            store.drain_inbox("lineker", 2.0, 1),
            store.drain_inbox("lineker", 2.0),
            store.drain_inbox("messi", 2.0),
        ]
        outcomes: list[Any] = []
        for d in asked:
            outcomes.append(await d.addErrback(lambda f: f.value))
        assert store.commits - commits <= 2
        left = await store.drain_inbox("henderson", 3.0)
    finally:
        await store.close()
    h1, nobody_sender, nobody_recipient, h2, h3, h4 = outcomes[:6]
    assert (h1.text, h2.text, h3.text) == ("h1", "h2", "h3")
    assert h1.id < h2.id < h3.id
    assert (h2.sender_name, h2.recipient_name) == ("Gary Lineker", "Jordan Henderson")
    assert isinstance(nobody_sender, NoSuchUser) and nobody_sender.username == "nobody"
    assert isinstance(nobody_recipient, NoSuchUser)
    assert isinstance(h4, MailboxFull)
    first, second, messi = outcomes[6:]
    assert [m.text for m in first] == ["old"]
    assert [m.text for m in second] == ["older"]
    assert messi == []
    assert [m.text for m in left] == ["h1", "h2", "h3"]


def test_drain_takes_only_the_rows_it_returns(postgres_db: str) -> None:
    """A message with a lower id committed by another node between the
    drain's read and its delete from the mailbox stays undelivered (it used
    to be marked delivered without being returned: lost)."""
    from chat.store.mailbox import DrainInbox
    from chat.store.postgres import _Translating, transaction

    with psycopg.connect(postgres_db, autocommit=True) as setup:
        for user in (MESSI, HENDERSON):
            setup.execute(
                "INSERT INTO users (username, full_name, password_hash, created_at)"
                " VALUES (%s, %s, %s, 0)",
                (user.username, user.full_name, user.password_hash),
            )
    insert = (
        "WITH m AS (INSERT INTO messages (sender, recipient, sender_name,"
        " recipient_name, body, sent_at) VALUES ('messi', 'henderson', 'M', 'H',"
        " %s, 1) RETURNING id) INSERT INTO mailbox (recipient, message_id, sender)"
        " SELECT 'henderson', id, 'messi' FROM m RETURNING message_id"
    )
    with (
        psycopg.connect(postgres_db) as slow,
        psycopg.connect(postgres_db, autocommit=True) as fast,
        psycopg.connect(postgres_db, autocommit=True) as drainer,
    ):
        (late,) = slow.execute(insert, ("late",)).fetchone()  # not committed
        (early,) = fast.execute(insert, ("early",)).fetchone()
        assert late < early

        translating = _Translating(drainer)

        def commits_the_slow_one_after_reading(sql: str, parameters: Any = ()) -> Any:
            if sql.startswith("DELETE"):
                slow.commit()
            return translating.execute(sql, parameters)

        txn = transaction(drainer)
        txn.execute = commits_the_slow_one_after_reading
        drainer.execute("BEGIN")
        taken = DrainInbox("henderson", 2.0, None).run(txn)
        drainer.execute("COMMIT")
        assert [m.text for m in taken] == ["early"]
        undelivered = fast.execute(
            "SELECT body FROM mailbox JOIN messages ON id = message_id"
        ).fetchall()
        assert undelivered == [("late",)]


@pytest_twisted.ensureDeferred
async def test_ended_sessions_are_notified(
    pg_store: PostgresStore, postgres_db: str
) -> None:
    """Logout, a new password and a deleted user are announced to the other
    nodes (which cache sessions) in the committing transaction."""
    await pg_store.add_user(MESSI)
    await pg_store.add_user(HENDERSON)
    listener = psycopg.connect(postgres_db, autocommit=True)
    try:
        listener.execute("LISTEN chat_sessions")
        await pg_store.delete_session("f" * 64)
        await pg_store.set_password_hash("messi", "$argon2id$new")
        await pg_store.delete_user("henderson")
        notifies = list(listener.notifies(timeout=TIMEOUT, stop_after=3))
    finally:
        listener.close()
    assert [json.loads(n.payload) for n in notifies] == [
        {"node": "node-a", "session": "f" * 64},
        {"node": "node-a", "user": "messi"},
        {"node": "node-a", "user": "henderson"},
    ]


@pytest_twisted.ensureDeferred
async def test_a_file_another_node_starts_using_is_not_deleted(
    pg_store: PostgresStore, postgres_db: str
) -> None:
    """Another node's transaction starts using a file (its message is not
    committed yet) while this store deletes the last message that used it:
    the store waits for that transaction, then keeps the file, and the
    operation succeeds rather than failing on the foreign key."""
    await pg_store.add_user(MESSI)
    await pg_store.add_user(HENDERSON)
    await pg_store.add_user(LINEKER)
    attachment = Attachment("plan.txt", b"the plan\n")
    await pg_store.store_messages("messi", ["henderson"], "plan.txt", 1.0, attachment)
    other = psycopg.connect(postgres_db)
    try:
        # The other node's send of the same file to lineker, not committed.
        row = other.execute(
            "INSERT INTO messages (sender, recipient, sender_name,"
            " recipient_name, body, sent_at, file_name, file_size, file_sha256)"
            " VALUES ('messi', 'lineker', 'Lionel Messi', 'Gary Lineker',"
            " 'plan.txt', 2.0, 'plan.txt', %s, %s) RETURNING id",
            (attachment.size, attachment.sha256),
        ).fetchone()
        assert row is not None
        other.execute(
            "INSERT INTO mailbox (recipient, message_id, sender)"
            " VALUES ('lineker', %s, 'messi')",
            (row[0],),
        )
        # henderson's account goes, with the only committed use of the file.
        deleted = pg_store.delete_user("henderson")

        def waiting_for_the_other() -> bool:
            row = other_watch.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname ="
                " current_database() AND wait_event_type = 'Lock'"
            ).fetchone()
            return bool(row and row[0])

        with psycopg.connect(postgres_db, autocommit=True) as other_watch:
            await eventually(waiting_for_the_other, what="the store waits for the lock")
        other.commit()
        await deleted
    finally:
        other.close()
    with psycopg.connect(postgres_db) as check:
        (files,) = check.execute(
            "SELECT count(*) FROM files WHERE sha256 = %s", (attachment.sha256,)
        ).fetchone() or (0,)
    assert files == 1
    (got,) = await pg_store.drain_inbox("lineker", 3.0)
    assert got.file_content == b"the plan\n"
