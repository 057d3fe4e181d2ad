"""
chat-admin, run as a real process as an administrator would.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import argon2

REPO = Path(__file__).resolve().parent.parent


def admin(
    tmp_path: Path, *argv: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "chat.admin",
            "--store",
            f"sqlite:{tmp_path / 'chat.sqlite'}",
            *argv,
        ],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        cwd=tmp_path,
    )


def test_useradd_users_passwd_userdel(tmp_path: Path) -> None:
    """Users are created with an argon2id hash, listed, re-passworded, deleted."""
    created = admin(
        tmp_path,
        "useradd",
        "budi",
        "--name",
        "Budi Santoso",
        "--country",
        "Indonesia",
        stdin="rahasia\n",
    )
    assert created.returncode == 0, created.stderr
    assert "created user budi" in created.stdout
    listed = admin(tmp_path, "users")
    assert listed.stdout == "budi\tBudi Santoso\tIndonesia\n"

    stored = stored_hash(tmp_path)
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert argon2.PasswordHasher().verify(stored, "rahasia")

    changed = admin(tmp_path, "passwd", "budi", stdin="baru\n")
    assert changed.returncode == 0, changed.stderr
    deleted = admin(tmp_path, "userdel", "budi")
    assert deleted.returncode == 0
    assert admin(tmp_path, "users").stdout == ""


def test_hash_parameters(tmp_path: Path) -> None:
    """useradd and passwd hash with the --hash-* parameters; bad ones are refused."""
    created = admin(
        tmp_path,
        "useradd",
        "budi",
        "--name",
        "Budi",
        "--hash-memory",
        "64",
        "--hash-time-cost",
        "1",
        stdin="rahasia\n",
    )
    assert created.returncode == 0, created.stderr
    assert stored_hash(tmp_path).startswith("$argon2id$v=19$m=64,t=1,p=1$")
    changed = admin(
        tmp_path, "passwd", "budi", "--hash-parallelism", "2", stdin="baru\n"
    )
    assert changed.returncode == 0, changed.stderr
    assert stored_hash(tmp_path).startswith("$argon2id$v=19$m=19456,t=2,p=2$")
    assert argon2.PasswordHasher().verify(stored_hash(tmp_path), "baru")
    refused = admin(tmp_path, "passwd", "budi", "--hash-memory", "4", stdin="x\n")
    assert refused.returncode == 2
    assert "--hash-*: the memory must be at least 8 KiB" in refused.stderr
    assert argon2.PasswordHasher().verify(stored_hash(tmp_path), "baru")


def stored_hash(tmp_path: Path) -> str:
    connection = sqlite3.connect(tmp_path / "chat.sqlite")
    try:
        (stored,) = connection.execute("SELECT password_hash FROM users").fetchone()
    finally:
        connection.close()
    return str(stored)


def test_errors_are_one_line(tmp_path: Path) -> None:
    """Mistakes give a one-line message and a non-zero exit, no traceback."""
    admin(tmp_path, "useradd", "budi", "--name", "Budi", stdin="pw\n")
    cases = [
        (
            admin(tmp_path, "useradd", "budi", "--name", "Budi", stdin="pw\n"),
            "user already exists: budi",
        ),
        (admin(tmp_path, "userdel", "nobody"), "no such user: nobody"),
        (admin(tmp_path, "passwd", "nobody", stdin="pw\n"), "no such user: nobody"),
        (
            admin(tmp_path, "useradd", "Bad Name!", "--name", "X", stdin="pw\n"),
            "invalid username",
        ),
        (
            admin(tmp_path, "useradd", "postmaster", "--name", "X", stdin="pw\n"),
            "invalid username: 'postmaster' is reserved",
        ),
        (
            admin(tmp_path, "useradd", "ani", "--name", "A\u202eni", stdin="pw\n"),
            "invalid full name",
        ),
        (
            admin(tmp_path, "useradd", "ani", "--name", "Ani", stdin="\n"),
            "the password is empty",
        ),
        (
            admin(tmp_path, "useradd", "ani", "--name", "Ani", stdin="two words\n"),
            "whitespace",
        ),
    ]
    for result, message in cases:
        assert result.returncode == 1, result
        assert message in result.stderr
        assert "Traceback" not in result.stderr


def test_usage_errors(tmp_path: Path) -> None:
    """A missing command or --name is a usage error (exit 2)."""
    assert admin(tmp_path).returncode == 2
    result = admin(tmp_path, "useradd", "ani")
    assert result.returncode == 2
    assert "--name is required" in result.stderr


def test_password_never_on_command_line(tmp_path: Path) -> None:
    """There is no option that takes a password."""
    result = admin(tmp_path, "useradd", "ani", "--name", "Ani", "--password", "x")
    assert result.returncode == 2
