"""
chat-admin for realms and administrators, run as a real process.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.test_admin import admin

#: These tests start processes (see tests/conftest.py).
pytestmark = pytest.mark.slow

SECRET = "a-shared-secret-of-some-length"


def test_useradd_admin_and_setadmin(tmp_path: Path) -> None:
    """useradd --admin makes an administrator; setadmin grants and revokes."""
    made = admin(tmp_path, "useradd", "boss", "--name", "Boss", "--admin", stdin="pw\n")
    assert made.returncode == 0, made.stderr
    assert "created administrator boss" in made.stdout
    admin(tmp_path, "useradd", "budi", "--name", "Budi", stdin="pw\n")
    assert admin(tmp_path, "users").stdout == "boss\tBoss\t\tadmin\nbudi\tBudi\t\n"
    assert admin(tmp_path, "setadmin", "budi", "yes").returncode == 0
    assert admin(tmp_path, "setadmin", "boss", "no").returncode == 0
    assert admin(tmp_path, "users").stdout == "boss\tBoss\t\nbudi\tBudi\t\tadmin\n"
    missing = admin(tmp_path, "setadmin", "nobody", "yes")
    assert missing.returncode == 1 and "no such user: nobody" in missing.stderr
    assert admin(tmp_path, "setadmin", "budi", "maybe").returncode == 2


def test_realm_add_list_remove(tmp_path: Path) -> None:
    """Links are added with the secret from stdin, listed, and removed."""
    added = admin(
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
    generated = admin(
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
    listed = admin(tmp_path, "realm", "list")
    assert listed.stdout == (
        "realm-b\ttcp:host=127.0.0.1:port=9001\t0 queued\n"
        "realm-c\tssl:host=c.example:port=9002\t0 queued\n"
    )
    connection = sqlite3.connect(tmp_path / "chat.sqlite")
    stored = dict(connection.execute("SELECT realm_id, secret FROM realm_links"))
    connection.close()
    assert stored == {"realm-b": SECRET, "realm-c": secret}
    removed = admin(tmp_path, "realm", "remove", "realm-b")
    assert removed.returncode == 0, removed.stderr
    assert "removed the link to realm realm-b; 0 queued messages" in removed.stdout
    assert admin(tmp_path, "realm", "list").stdout.startswith("realm-c\t")


def test_realm_mistakes_are_one_line(tmp_path: Path) -> None:
    """Bad realm ids, endpoints, secrets and duplicates give one-line errors."""
    ok = admin(tmp_path, "realm", "add", "realm-b", "tcp:host=h:port=1", stdin=SECRET)
    assert ok.returncode == 0, ok.stderr
    cases = [
        (
            admin(
                tmp_path, "realm", "add", "realm-b", "tcp:host=h:port=1", stdin=SECRET
            ),
            "realm already linked: realm-b",
        ),
        (
            admin(
                tmp_path, "realm", "add", "Realm_B", "tcp:host=h:port=1", stdin=SECRET
            ),
            "invalid realm id",
        ),
        (
            admin(tmp_path, "realm", "add", "realm-x", "carrier:pigeon", stdin=SECRET),
            "invalid endpoint",
        ),
        (
            admin(
                tmp_path, "realm", "add", "realm-x", "tcp:host=h:port=1", stdin="short"
            ),
            "at least 16 characters",
        ),
        (admin(tmp_path, "realm", "remove", "realm-x"), "no link to realm realm-x"),
    ]
    for result, message in cases:
        assert result.returncode == 1, result
        assert message in result.stderr
        assert "Traceback" not in result.stderr


def test_secret_never_on_command_line(tmp_path: Path) -> None:
    """There is no option that takes a secret."""
    result = admin(
        tmp_path, "realm", "add", "realm-b", "tcp:host=h:port=1", "--secret", SECRET
    )
    assert result.returncode == 2
