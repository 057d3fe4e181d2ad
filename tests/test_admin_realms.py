"""
chat-admin for realms and administrators (in this process: see
L{tests.test_admin}).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest_twisted

from tests.test_admin import admin

SECRET = "a-shared-secret-of-some-length"


@pytest_twisted.ensureDeferred
async def test_useradd_admin_and_setadmin(tmp_path: Path) -> None:
    """useradd --admin makes an administrator; setadmin grants and revokes."""
    made = await admin(
        tmp_path, "useradd", "boss", "--name", "Boss", "--admin", stdin="password\n"
    )
    assert made.returncode == 0, made.stderr
    assert "created administrator boss" in made.stdout
    await admin(tmp_path, "useradd", "budi", "--name", "Budi", stdin="password\n")
    assert (
        await admin(tmp_path, "users")
    ).stdout == "boss\tBoss\t\tadmin\nbudi\tBudi\t\n"
    assert (await admin(tmp_path, "setadmin", "budi", "yes")).returncode == 0
    assert (await admin(tmp_path, "setadmin", "boss", "no")).returncode == 0
    assert (
        await admin(tmp_path, "users")
    ).stdout == "boss\tBoss\t\nbudi\tBudi\t\tadmin\n"
    missing = await admin(tmp_path, "setadmin", "nobody", "yes")
    assert missing.returncode == 1 and "no such user: nobody" in missing.stderr
    assert (await admin(tmp_path, "setadmin", "budi", "maybe")).returncode == 2


@pytest_twisted.ensureDeferred
async def test_realm_add_list_remove(tmp_path: Path) -> None:
    """Links are added with the secret from stdin, listed, and removed."""
    added = await admin(
        tmp_path,
        "realm",
        "add",
        "realm-b",
        "tcp:host=127.0.0.1:port=9001",
        stdin=SECRET,
    )
    assert added.returncode == 0, added.stderr
    assert added.stdout == "linked realm realm-b at tcp:host=127.0.0.1:port=9001\n"
    assert SECRET not in added.stdout
    generated = await admin(
        tmp_path,
        "realm",
        "add",
        "realm-c",
        "ssl:host=c.example:port=9002",
        "--generate",
    )
    assert generated.returncode == 0, generated.stderr
    secret = generated.stdout.strip().rsplit(" ", 1)[-1]
    assert len(secret) >= 40
    listed = await admin(tmp_path, "realm", "list")
    assert listed.stdout == (
        "realm-b\ttcp:host=127.0.0.1:port=9001\t0 queued\n"
        "realm-c\tssl:host=c.example:port=9002\t0 queued\n"
    )
    connection = sqlite3.connect(tmp_path / "chat.sqlite")
    stored = dict(connection.execute("SELECT realm_id, secret FROM realm_links"))
    connection.close()
    assert stored == {"realm-b": SECRET, "realm-c": secret}
    removed = await admin(tmp_path, "realm", "remove", "realm-b")
    assert removed.returncode == 0, removed.stderr
    assert "removed the link to realm realm-b; 0 queued messages" in removed.stdout
    assert (await admin(tmp_path, "realm", "list")).stdout.startswith("realm-c\t")


@pytest_twisted.ensureDeferred
async def test_realm_mistakes_are_one_line(tmp_path: Path) -> None:
    """Bad realm ids, endpoints, secrets and duplicates give one-line errors."""
    ok = await admin(
        tmp_path, "realm", "add", "realm-b", "tcp:host=h:port=1", stdin=SECRET
    )
    assert ok.returncode == 0, ok.stderr
    cases = [
        (
            await admin(
                tmp_path, "realm", "add", "realm-b", "tcp:host=h:port=1", stdin=SECRET
            ),
            "realm already linked: realm-b",
        ),
        (
            await admin(
                tmp_path, "realm", "add", "Realm_B", "tcp:host=h:port=1", stdin=SECRET
            ),
            "invalid realm id",
        ),
        (
            await admin(
                tmp_path, "realm", "add", "realm-x", "carrier:pigeon", stdin=SECRET
            ),
            "invalid endpoint",
        ),
        (
            await admin(
                tmp_path, "realm", "add", "realm-x", "tcp:host=h:port=1", stdin="short"
            ),
            "at least 16 characters",
        ),
        (
            await admin(tmp_path, "realm", "remove", "realm-x"),
            "no link to realm realm-x",
        ),
    ]
    for result, message in cases:
        assert result.returncode == 1, result
        assert message in result.stderr
        assert "Traceback" not in result.stderr


@pytest_twisted.ensureDeferred
async def test_secret_never_on_command_line(tmp_path: Path) -> None:
    """There is no option that takes a secret."""
    result = await admin(
        tmp_path, "realm", "add", "realm-b", "tcp:host=h:port=1", "--secret", SECRET
    )
    assert result.returncode == 2
