"""
chat-admin as an administrator uses it: in this process (its command
function, with the streams of a process), and as a real process for what
only a process has (the console script, exit statuses, Ctrl-C at a
prompt on a terminal).
"""

from __future__ import annotations

import fcntl
import io
import os
import pty
import sqlite3
import subprocess
import sys
import termios
from pathlib import Path

import argon2
import pytest
import pytest_twisted
from twisted.internet import reactor

from chat import admin as chat_admin
from tests.helpers import FAST_ARGON2
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent


async def run_admin(*argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """
    Run chat-admin in this process, as C{chat-admin ARGV} with C{stdin}
    (passwords hashed cheaply).
    """
    out, err = io.StringIO(), io.StringIO()
    code = await chat_admin.command(
        reactor, argv, io.StringIO(stdin), out, err, hasher=FAST_ARGON2
    )
    return subprocess.CompletedProcess(
        ["chat-admin", *argv], code, out.getvalue(), err.getvalue()
    )


async def admin(
    tmp_path: Path, *argv: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """
    L{run_admin} on the store C{tmp_path/chat.sqlite}.
    """
    store = f"sqlite:{tmp_path / 'chat.sqlite'}"
    return await run_admin("--store", store, *argv, stdin=stdin)


def admin_process(
    tmp_path: Path, *argv: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """
    chat-admin as a real process, in C{tmp_path}, on C{chat.sqlite} there.
    """
    return subprocess.run(
        [sys.executable, "-m", "chat.admin", "--store", "sqlite:chat.sqlite", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        cwd=tmp_path,
    )


@pytest_twisted.ensureDeferred
async def test_useradd_users_passwd_userdel(tmp_path: Path) -> None:
    """Users are created with an argon2id hash, listed, re-passworded, deleted."""
    created = await admin(
        tmp_path,
        "useradd",
        "budi",
        "--name",
        "Budi Santoso",
        "--country",
        "Indonesia",
        stdin="rahasia1\n",
    )
    assert created.returncode == 0, created.stderr
    assert "created user budi" in created.stdout
    listed = await admin(tmp_path, "users")
    assert listed.stdout == "budi\tBudi Santoso\tIndonesia\n"

    connection = sqlite3.connect(tmp_path / "chat.sqlite")
    (stored,) = connection.execute("SELECT password_hash FROM users").fetchone()
    connection.close()
    assert stored.startswith("$argon2id$")
    assert argon2.PasswordHasher().verify(stored, "rahasia1")

    changed = await admin(tmp_path, "passwd", "budi", stdin="barubaru\n")
    assert changed.returncode == 0, changed.stderr
    deleted = await admin(tmp_path, "userdel", "budi")
    assert deleted.returncode == 0
    assert (await admin(tmp_path, "users")).stdout == ""


@pytest_twisted.ensureDeferred
async def test_errors_are_one_line(tmp_path: Path) -> None:
    """Mistakes give a one-line message and exit status 1, no traceback."""
    await admin(tmp_path, "useradd", "budi", "--name", "Budi", stdin="password\n")
    cases = [
        (
            await admin(
                tmp_path, "useradd", "budi", "--name", "Budi", stdin="password\n"
            ),
            "chat-admin: user already exists: budi",
        ),
        (
            await admin(
                tmp_path, "useradd", "postmaster", "--name", "X", stdin="password\n"
            ),
            "chat-admin: invalid username: 'postmaster' is reserved",
        ),
        (
            await admin(
                tmp_path, "useradd", "ani", "--name", "A\u202eni", stdin="password\n"
            ),
            "chat-admin: invalid full name",
        ),
        (
            await admin(tmp_path, "userdel", "nobody"),
            "chat-admin: no such user: nobody",
        ),
        (
            await admin(tmp_path, "passwd", "nobody", stdin="password\n"),
            "chat-admin: no such user: nobody",
        ),
        (
            await admin(
                tmp_path, "useradd", "Bad Name!", "--name", "X", stdin="password\n"
            ),
            "chat-admin: invalid username: usernames are 1-32 characters",
        ),
        (
            await admin(tmp_path, "useradd", "ani", "--name", "Ani", stdin="\n"),
            "chat-admin: the password is empty",
        ),
        (
            await admin(
                tmp_path, "useradd", "ani", "--name", "Ani", stdin="two words\n"
            ),
            "chat-admin: the password contains whitespace",
        ),
    ]
    for result, message in cases:
        assert result.returncode == 1, result
        assert result.stderr.startswith(message), result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr


@pytest_twisted.ensureDeferred
async def test_password_rule_is_registers(tmp_path: Path) -> None:
    """chat-admin takes passwords by the rule of register: 8-1024
    characters; a refused one creates nothing, not even the database."""
    for password in ("x", "seven77", "y" * 1025):
        refused = await admin(
            tmp_path, "useradd", "ani", "--name", "Ani", stdin=password
        )
        assert refused.returncode == 1
        assert refused.stderr == "chat-admin: passwords are 8-1024 characters\n"
    assert not (tmp_path / "chat.sqlite").exists()
    for password in ("eight888", "z" * 1024):
        made = await admin(tmp_path, "useradd", "ani", "--name", "Ani", stdin=password)
        assert made.returncode == 0, made.stderr
        assert (await admin(tmp_path, "userdel", "ani")).returncode == 0
    await admin(tmp_path, "useradd", "ani", "--name", "Ani", stdin="eight888")
    short = await admin(tmp_path, "passwd", "ani", stdin="short")
    assert short.stderr == "chat-admin: passwords are 8-1024 characters\n"


@pytest_twisted.ensureDeferred
async def test_usage_errors(tmp_path: Path) -> None:
    """A missing command, argument or option is a usage error (exit 2): the
    command's usage line, with the program's name, and what is missing."""
    cases = [
        (
            [],
            "Usage: chat-admin [--store STORE] COMMAND [ARGS]",
            "chat-admin: which command? (useradd, passwd, userdel, users, "
            "setadmin, realm, check, migrate)",
        ),
        (
            ["useradd", "ani"],
            "Usage: chat-admin [--store STORE] useradd USERNAME --name 'Full Name' "
            "[--country COUNTRY] [--admin]",
            "chat-admin: --name is required",
        ),
        (
            ["passwd"],
            "Usage: chat-admin [--store STORE] passwd USERNAME",
            "chat-admin: missing USERNAME",
        ),
        (
            ["userdel", "ani", "budi"],
            "Usage: chat-admin [--store STORE] userdel USERNAME",
            "chat-admin: unexpected argument: budi",
        ),
        (
            ["realm", "add", "realm-b"],
            "Usage: chat-admin [--store STORE] realm add REALM_ID ENDPOINT "
            "[--generate]",
            "chat-admin: missing ENDPOINT",
        ),
        (
            ["useradd", "ani", "--name", "Ani", "--password", "x"],
            "Usage: chat-admin [--store STORE] useradd USERNAME --name 'Full Name' "
            "[--country COUNTRY] [--admin]",
            "chat-admin: option --password not recognized",
        ),
    ]
    for argv, synopsis, error in cases:
        result = await admin(tmp_path, *argv)
        assert result.returncode == 2, (argv, result)
        assert result.stderr == f"{synopsis}\n{error}\n", result.stderr
    assert list(tmp_path.iterdir()) == []


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints chat's version."""
    import chat

    with pytest.raises(SystemExit) as exited:
        chat_admin.AdminOptions().parseOptions(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"chat {chat.__version__}\n"


# As a real process.


@pytest.mark.slow
def test_console_script(tmp_path: Path) -> None:
    """The real command: output, and exit statuses 0, 1 and 2."""
    created = admin_process(
        tmp_path, "useradd", "budi", "--name", "Budi", stdin="rahasia1\n"
    )
    assert (created.returncode, created.stdout) == (0, "created user budi\n")
    assert admin_process(tmp_path, "users").stdout == "budi\tBudi\t\n"
    missing = admin_process(tmp_path, "userdel", "nobody")
    assert (missing.returncode, missing.stderr) == (
        1,
        "chat-admin: no such user: nobody\n",
    )
    assert admin_process(tmp_path, "passwd").returncode == 2


def _own_terminal() -> None:
    """
    In the child: a session of its own, whose controlling terminal is the
    pseudo-terminal on its standard input (so Ctrl-C there is SIGINT).
    """
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Prompt:
    """
    chat-admin on a pseudo-terminal, at its password prompt.
    """

    def __init__(self, tmp_path: Path, *argv: str) -> None:
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "chat.admin",
                "--store",
                "sqlite:chat.sqlite",
                *argv,
            ],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=tmp_path,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            preexec_fn=_own_terminal,
        )
        os.close(slave)
        self.screen = ""

    def read(self) -> None:
        import select

        ready, _, _ = select.select([self.master], [], [], 0.05)
        if ready:
            try:
                self.screen += os.read(self.master, 4096).decode("utf-8", "replace")
            except OSError:  # EIO: the process closed the terminal
                pass

    def wait_for(self, text: str) -> None:
        def shown() -> bool:
            self.read()
            return text in self.screen

        wait_until(shown, what=lambda: f"{text!r} on screen: {self.screen!r}")

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def exit_status(self) -> int:
        """
        Wait for the process to end; read all it wrote.
        """
        code = self.process.wait(timeout=30)
        before = None
        while before != self.screen:
            before = self.screen
            self.read()
        os.close(self.master)
        return code


@pytest.mark.slow
@pytest.mark.parametrize("key", [b"\x03", b"\x04"], ids=["ctrl-c", "ctrl-d"])
def test_interrupted_at_the_password_prompt(tmp_path: Path, key: bytes) -> None:
    """Ctrl-C or Ctrl-D at the password prompt ends chat-admin with one line,
    no traceback, and nothing created."""
    prompt = Prompt(tmp_path, "useradd", "ani", "--name", "Ani")
    prompt.wait_for("Password: ")
    prompt.type(key)
    assert prompt.exit_status() == 130
    assert "chat-admin: interrupted; nothing was changed" in prompt.screen
    assert "Traceback" not in prompt.screen
    assert not (tmp_path / "chat.sqlite").exists()


@pytest.mark.slow
def test_password_asked_twice_on_a_terminal(tmp_path: Path) -> None:
    """On a terminal the password is asked twice, hidden; a mismatch changes
    nothing."""
    prompt = Prompt(tmp_path, "useradd", "ani", "--name", "Ani")
    prompt.wait_for("Password: ")
    prompt.type(b"rahasia123\n")
    prompt.wait_for("Again: ")
    prompt.type(b"rahasia124\n")
    assert prompt.exit_status() == 1
    assert "chat-admin: the passwords differ; nothing was changed" in prompt.screen
    assert "rahasia" not in prompt.screen
