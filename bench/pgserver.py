"""
A throwaway PostgreSQL server for the benchmark (standard library only).

Debian's binaries (the newest C{/usr/lib/postgresql/*/bin}, or C{--pg-bin}):
C{initdb} into a temporary folder, C{pg_ctl start} on a free loopback port
with trust authentication, C{createdb}/C{dropdb} for a fresh database per
measurement, C{pg_ctl stop} at the end. PostgreSQL refuses to run as root,
so as root every command runs as the C{postgres} user (C{runuser}).

The settings are PostgreSQL's defaults plus the durability the chat server
relies on, spelled out (C{fsync=on}, C{synchronous_commit=on}): the same as
the tests' throwaway server.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def find_bindir() -> str | None:
    """
    The newest C{/usr/lib/postgresql/*/bin} with C{initdb}, or None.
    """

    def version(path: str) -> int:
        part = path.split("/")[-3]
        return int(part) if part.isdigit() else 0

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    return os.path.dirname(candidates[-1]) if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ThrowawayPostgres:
    """
    One PostgreSQL cluster in a temporary folder of its own (directly in
    the system's temporary directory: the C{postgres} user must be able to
    reach it), started, stopped and removed by this object.

    @ivar cpus: a C{taskset -c} CPU list for the server and its backends
        (they inherit the postmaster's affinity), or None: unpinned.
    @ivar settings: more C{name=value} server settings (C{postgres -c}).
    """

    def __init__(
        self, bindir: str, cpus: str | None = None, settings: list[str] | None = None
    ) -> None:
        self.bindir = bindir
        self.settings = settings or []
        self.directory = Path(tempfile.mkdtemp(prefix="chat-bench-pg-"))
        self.data = self.directory / "data"
        self.port = _free_port()
        self.cpus = cpus
        self.as_root = os.geteuid() == 0
        self.user = "postgres" if self.as_root else pwd.getpwuid(os.geteuid())[0]
        self.log_path = self.directory / "postgres.log"
        self._next_db = 0

    def _command(self, program: str, *argv: str) -> list[str]:
        command = [os.path.join(self.bindir, program), *argv]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        return command

    def _run(self, program: str, *argv: str) -> str:
        done = subprocess.run(
            self._command(program, *argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd="/",  # runuser: postgres may not read the caller's directory
        )
        output = done.stdout.decode(errors="replace")
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}): {output[-800:]}")
        return output

    def start(self) -> None:
        """
        C{initdb}, then start the server and wait until it accepts
        connections.
        """
        if self.as_root:
            shutil.chown(self.directory, "postgres", "postgres")
            self.directory.chmod(0o700)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-instructions",
        )
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1"
            f" -c unix_socket_directories={self.directory}"
            " -c max_connections=200 -c fsync=on -c synchronous_commit=on"
        )
        for setting in self.settings:
            options += f" -c {setting}"
        pg_ctl = ["-D", str(self.data), "-o", options, "-l", str(self.log_path)]
        pg_ctl += ["-w", "-t", "60", "start"]
        if self.cpus is None:
            self._run("pg_ctl", *pg_ctl)
        else:
            # The postmaster and every backend it forks inherit the affinity.
            command = ["taskset", "-c", self.cpus, *self._command("pg_ctl", *pg_ctl)]
            done = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd="/",
            )
            if done.returncode != 0:
                output = done.stdout.decode(errors="replace")
                raise RuntimeError(f"pg_ctl start failed: {output[-800:]}")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self, keep: bool = False) -> None:
        """
        Stop the server if it runs, and delete its folder unless C{keep}.
        """
        try:
            self.stop()
        finally:
            if not keep:
                shutil.rmtree(self.directory, ignore_errors=True)

    def pid(self) -> int | None:
        """
        The postmaster's pid.
        """
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def pids(self) -> list[int]:
        """
        The postmaster and its children (backends, checkpointer, WAL writer...).
        """
        top = self.pid()
        if top is None:
            return []
        found = [top]
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            # After the parenthesised command: state, ppid, ...
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == top:
                found.append(int(entry))
        return found

    def _sql(self, statement: str) -> None:
        self._run(
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            self.user,
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-q",
            "-c",
            statement,
        )

    def create_database(self) -> str:
        """
        Create an empty database; return its name.
        """
        self._next_db += 1
        name = f"chat_bench_{self._next_db}"
        self._sql(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        """
        Drop a database (its nodes must have stopped), and checkpoint so that
        the next measurement does not pay for this one's writes.
        """
        self._sql(f'DROP DATABASE IF EXISTS "{name}"')
        self._sql("CHECKPOINT")

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"
