"""
chat-admin, run as a real process as an administrator would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import argon2
import pytest

REPO = Path(__file__).resolve().parent.parent

#: These tests start processes (see tests/conftest.py).
pytestmark = pytest.mark.slow


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

    import sqlite3

    connection = sqlite3.connect(tmp_path / "chat.sqlite")
    (stored,) = connection.execute("SELECT password_hash FROM users").fetchone()
    connection.close()
    assert stored.startswith("$argon2id$")
    assert argon2.PasswordHasher().verify(stored, "rahasia")

    changed = admin(tmp_path, "passwd", "budi", stdin="baru\n")
    assert changed.returncode == 0, changed.stderr
    deleted = admin(tmp_path, "userdel", "budi")
    assert deleted.returncode == 0
    assert admin(tmp_path, "users").stdout == ""


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
