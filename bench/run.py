#!/usr/bin/env python3
"""
Benchmark C{twistd chat} against a minimal in-memory Twisted server.

Server kinds: baseline (C{bench/baseline_server.py}), ours (C{twistd chat}
with a fresh SQLite store and C{--demo}), ours-pg (one node on a fresh
PostgreSQL database) and ours-pg2 (two nodes on one fresh database, the
load's connections spread over both). For each kind and each connection
count, start the server(s) pinned to CPU 0, run C{bench/loadgen} (closed
loop) pinned to CPU 1, and stop the server(s). PostgreSQL is a throwaway
server started for the run (L{pgserver}), pinned to CPU 0 with the nodes
by default (C{--pg-cpus}). Then, per kind, hold many authenticated idle
connections and read the server's resident memory (VmRSS) meanwhile. With
C{--push-latency}, also measure how long a message takes from C{send} to
its push to a subscriber, on one node and from one node to another
(C{bench/push_latency.py}). Prints tables and optionally writes every
figure as JSON.

Standard library only; run it with a Python that has Twisted (the servers
use the same interpreter):

    python bench/run.py --conns 1,10,100,1000 --duration 5 --json out.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
LOADGEN = BENCH / "loadgen"
PUSH_LATENCY = BENCH / "push_latency.py"
LOGIN_STORM = BENCH / "login_storm.py"
SERVER_CPU, LOADGEN_CPU = "0", "1"

sys.path.insert(0, str(BENCH))
from pgserver import ThrowawayPostgres, find_bindir  # noqa: E402

#: The server kinds, and how many chat nodes each runs (the baseline: 0).
NODES = {"baseline": 0, "ours": 1, "ours-pg": 1, "ours-pg2": 2}
SERVERS = tuple(NODES)
#: The kinds that run on PostgreSQL.
PG_KINDS = ("ours-pg", "ours-pg2")
#: Push-latency rows: (kind, whether sender and subscriber are on one node).
PUSH_ROWS = (("ours", True), ("ours-pg", True), ("ours-pg2", False))

#: Log lines that point at a problem in a server (the --demo warning aside).
PROBLEM_MARKERS = ("Traceback", "#error]", "#critical]", "Unhandled", "#warn]")
IGNORED_WARNINGS = ("Demo accounts are enabled",)


def log(message: str) -> None:
    print(f"run: {message}", file=sys.stderr, flush=True)


# Environment.


def build_loadgen() -> None:
    """
    Build bench/loadgen with make (a no-op when it is up to date).
    """
    if shutil.which("make"):
        command = ["make", "-s", "-C", str(BENCH), "loadgen"]
    else:
        command = ["gcc", "-O2", "-Wall", "-Wextra", "-std=gnu11"]
        command += ["-o", str(LOADGEN), str(BENCH / "loadgen.c")]
    subprocess.run(command, check=True)


def raise_nofile(need: int) -> int:
    """
    Raise this process's RLIMIT_NOFILE (the servers inherit it) towards
    C{need}; return the soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        try:  # Only root may raise the hard limit.
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            soft, hard = need, need
        except (ValueError, OSError):
            log(f"RLIMIT_NOFILE hard limit is {hard}, below the {need} needed")
    if soft < need:
        soft = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def local_port_count() -> int | None:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        low, high = text.split()
        return int(high) - int(low) + 1
    except (OSError, ValueError):
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def git(src: str, *command: str) -> str:
    done = subprocess.run(["git", "-C", src, *command], capture_output=True)
    return done.stdout.decode(errors="replace").strip()


def chat_version(src: str) -> str:
    """
    The commit of the chat sources measured, and whether chat/ had local
    changes then.
    """
    commit = git(src, "rev-parse", "--short", "HEAD") or "unknown"
    return commit + (
        " + uncommitted changes" if git(src, "status", "--short", "chat") else ""
    )


def export_commit(commit: str, into: Path) -> str:
    """
    Write chat/ and twisted/plugins/ as of C{commit} into C{into}: a server
    that does not change while the benchmark runs, whatever happens to the
    work tree meanwhile. Return the short commit id.
    """
    command = ["git", "-C", str(REPO), "archive", commit, "chat", "twisted"]
    archive = subprocess.run(command, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return git(str(REPO), "rev-parse", "--short", commit)


# /proc readings.


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def cpu_seconds(pid: int) -> float | None:
    """
    User + system CPU time of a process (all its threads), in seconds.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces; after it come
    # state (field 3), ..., utime (14) and stime (15).
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpus_busy() -> dict[str, float]:
    """
    Busy (not idle, not iowait) seconds of each CPU since boot, by name.
    """
    busy: dict[str, float] = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu":
            v = [int(x) for x in values]
            busy[name] = (sum(v[:8]) - v[3] - v[4]) / ticks  # minus idle, iowait
    return busy


def wait_quiet(timeout: float, window: float = 2.0, threshold: float = 10.0) -> None:
    """
    Wait until every CPU was under C{threshold}% busy for C{window} seconds,
    or C{timeout} seconds have passed.
    """
    deadline = time.monotonic() + timeout
    while True:
        before = cpus_busy()
        time.sleep(window)
        after = cpus_busy()
        busiest = max(100 * (after[c] - before[c]) / window for c in after)
        if busiest < threshold:
            return
        if time.monotonic() >= deadline:
            log(f"CPUs still busy ({busiest:.0f}%) after {timeout:g} s: going on")
            return


# Servers.


class Server:
    """
    One server process, in a temporary directory of its own.

    @ivar store: for our server, the C{--store} (default: a new SQLite file
        in that directory).
    @ivar node_id: for our server, its C{--node-id} in a cluster, if this
        chat has that option.
    """

    def __init__(
        self,
        kind: str,
        args: argparse.Namespace,
        workdir: Path,
        store: str | None = None,
        node_id: str | None = None,
        cpus: str = SERVER_CPU,
    ) -> None:
        self.kind = kind
        self.args = args
        self.cpus = cpus
        self.dir = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=workdir))
        self.port = free_port()
        self.log_path = self.dir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.store = store or f"sqlite:{self.dir}/chat.sqlite"
        self.node_id = node_id

    @property
    def name(self) -> str:
        return f"{self.kind} {self.node_id}" if self.node_id else self.kind

    def command(self) -> list[str]:
        backlog = self.args.listen_backlog
        if self.kind != "baseline":
            listen = f"tcp:{self.port}:interface=127.0.0.1"
            if backlog:
                listen += f":backlog={backlog}"
            command = [self.args.twistd, "-n", "--pidfile=", "chat", "--demo"]
            command += ["--listen", listen, "--store", self.store]
            if self.node_id and "--node-id" in self.args.chat_options:
                command += ["--node-id", self.node_id]
            return [*command, *self.args.limit_args, *self.args.chat_arg]
        command = [self.args.python, str(BENCH / "baseline_server.py")]
        command += ["--port", str(self.port)]
        if backlog:
            command += ["--backlog", str(backlog)]
        return command

    def start(self) -> None:
        env = dict(os.environ)
        if self.kind != "baseline":
            paths = (self.args.chat_src, env.get("PYTHONPATH"))
            env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        command = self.command()
        if self.args.pin:
            command = ["taskset", "-c", self.cpus, *command]
        with open(self.log_path, "wb") as out:
            # taskset execs the server, so proc.pid is the server's pid.
            self.proc = subprocess.Popen(
                command,
                cwd=self.dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_ready(timeout=60.0)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float) -> None:
        """
        Poll until a fresh connection gets a PONG to C{ping}.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(
                    f"{self.name} server exited while starting:\n{self.log_tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), 1.0) as s:
                    s.settimeout(5.0)
                    s.sendall(b"ping ready\n")
                    reply = b""
                    while not reply.endswith(b"\r\n\r\n"):
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        reply += chunk
                    if b"PONG" in reply:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} server not ready after {timeout} s")

    def stop(self) -> dict[str, Any]:
        """
        SIGTERM, then SIGKILL after 15 s; report how it went.
        """
        outcome: dict[str, Any] = {"crashed": False, "killed": False}
        if self.proc is None:
            return outcome
        if self.proc.poll() is not None:
            outcome["crashed"] = True  # it died before we asked it to
        else:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                outcome["killed"] = True
        # twistd re-raises the signal that stopped it: -15 is a clean exit.
        outcome["exit_code"] = self.proc.returncode
        outcome["log_problems"] = self.log_problems()
        return outcome

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_problems(self, limit: int = 30) -> list[str]:
        found: list[str] = []
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return found
        for line in text.splitlines():
            if any(m in line for m in PROBLEM_MARKERS) and not any(
                w in line for w in IGNORED_WARNINGS
            ):
                found.append(line)
                if len(found) >= limit:
                    break
        return found


class Deployment:
    """
    The server processes of one measurement: the baseline, our server on
    SQLite, or our node(s) on a fresh PostgreSQL database (created here,
    dropped by L{stop}).
    """

    def __init__(
        self,
        kind: str,
        args: argparse.Namespace,
        workdir: Path,
        pg: ThrowawayPostgres | None,
        cpus: str = SERVER_CPU,
    ) -> None:
        self.kind = kind
        self.args = args
        self.workdir = workdir
        self.cpus = cpus
        self.pg = pg if kind in PG_KINDS else None
        self.database: str | None = None
        self.servers: list[Server] = []

    def start(self) -> None:
        store = None
        if self.pg is not None:
            self.database = self.pg.create_database()
            store = self.pg.url(self.database)
        count = max(1, NODES[self.kind])
        for i in range(count):
            node_id = f"node{i + 1}" if self.kind in PG_KINDS else None
            server = Server(
                self.kind, self.args, self.workdir, store, node_id, self.cpus
            )
            self.servers.append(server)
            # One after the other: the first creates the schema and the
            # demo users, the others find them.
            server.start()

    @property
    def ports(self) -> list[int]:
        return [server.port for server in self.servers]

    def alive(self) -> bool:
        return bool(self.servers) and all(server.alive() for server in self.servers)

    def rss_kb(self) -> int | None:
        """
        The servers' VmRSS, added.
        """
        values = [rss_kb(server.pid) for server in self.servers]
        return None if None in values else sum(v for v in values if v is not None)

    def cpu_seconds(self) -> float | None:
        """
        The servers' CPU time, added.
        """
        values = [cpu_seconds(server.pid) for server in self.servers]
        return None if None in values else sum(v for v in values if v is not None)

    def db_cpu(self) -> dict[int, float]:
        """
        CPU time of each PostgreSQL process (postmaster, backends, ...).
        """
        if self.pg is None:
            return {}
        found = {pid: cpu_seconds(pid) for pid in self.pg.pids()}
        return {pid: t for pid, t in found.items() if t is not None}

    def stop(self) -> dict[str, Any]:
        """
        Stop every server (see L{Server.stop}) and drop the database.
        """
        outcome: dict[str, Any] = {"crashed": False, "killed": False}
        codes, problems = [], []
        for server in self.servers:
            one = server.stop()
            outcome["crashed"] = outcome["crashed"] or one["crashed"]
            outcome["killed"] = outcome["killed"] or one["killed"]
            codes.append(one.get("exit_code"))
            prefix = f"[{server.node_id}] " if server.node_id else ""
            problems += [prefix + line for line in one.get("log_problems", [])]
        outcome["exit_code"] = codes[0] if len(codes) == 1 else codes
        outcome["log_problems"] = problems
        if self.pg is not None and self.database is not None:
            try:
                self.pg.drop_database(self.database)
            except RuntimeError as e:
                outcome["db_drop_failed"] = str(e)
        return outcome


def cpu_snapshot(deployment: Deployment) -> dict[str, Any]:
    return {
        "server": deployment.cpu_seconds(),
        "db": deployment.db_cpu(),
        "at": time.monotonic(),
        "cpus": cpus_busy(),
    }


def cpu_figures(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """
    The server's and PostgreSQL's CPU between two snapshots (100% = one
    core), and how busy each CPU was meanwhile.
    """
    wall = after["at"] - before["at"]
    figures: dict[str, Any] = {}
    if before["server"] is not None and after["server"] is not None:
        figures["server_cpu_pct"] = round(
            100 * (after["server"] - before["server"]) / wall, 1
        )
    if after["db"]:
        # A backend that started meanwhile counts whole; one that ended is
        # lost (the nodes keep theirs open).
        used = sum(t - before["db"].get(pid, 0.0) for pid, t in after["db"].items())
        figures["db_cpu_pct"] = round(100 * used / wall, 1)
    figures["cpu_busy_pct"] = {
        name: round(100 * (after["cpus"][name] - before["cpus"][name]) / wall, 1)
        for name in after["cpus"]
    }
    return figures


def commit_latency(directory: Path, count: int = 200) -> dict[str, float]:
    """
    How long one durable SQLite commit takes in C{directory} (the disk the
    servers write to): WAL, synchronous=FULL, one small insert each, as the
    chat server commits a lone send. It bounds what one connection can do.
    """
    path = directory / "commit-latency.sqlite"
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("CREATE TABLE t (x TEXT)")
        times = []
        for _ in range(count):
            started = time.perf_counter()
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("INSERT INTO t VALUES (?)", ("x" * 40,))
            connection.execute("COMMIT")
            times.append(time.perf_counter() - started)
    finally:
        connection.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    times.sort()
    return {
        "p50_ms": 1000 * times[len(times) // 2],
        "p90_ms": 1000 * times[int(len(times) * 0.9)],
    }


def cpu_per_request(
    before: dict[str, Any], after: dict[str, Any], rps: float
) -> dict[str, Any]:
    """
    CPU microseconds the server side used per request answered over the
    measured phase: utime+stime of every thread of the server (all nodes),
    and of PostgreSQL's processes if any. The steadiest figure on a shared
    machine: what other processes do changes the wall clock, not this.
    """
    wall = after["at"] - before["at"]
    requests = rps * wall
    figures: dict[str, Any] = {}
    if requests <= 0:
        return figures
    if before["server"] is not None and after["server"] is not None:
        used = after["server"] - before["server"]
        figures["server_cpu_us"] = round(1e6 * used / requests, 1)
    if after["db"]:
        used = sum(t - before["db"].get(pid, 0.0) for pid, t in after["db"].items())
        figures["db_cpu_us"] = round(1e6 * used / requests, 1)
    return figures


# Load runs.


def run_loadgen(
    args: argparse.Namespace,
    ports: list[int],
    options: list[str],
    on_line: Callable[[str], bool],
    timeout: float,
) -> dict[str, Any]:
    """
    Run loadgen against C{ports} (its connections spread round-robin over
    them); call C{on_line} with each line it prints on stdout, as it comes,
    until C{on_line} returns True. Return loadgen's JSON result (its last
    line).
    """
    command = [str(LOADGEN), "--port", ",".join(map(str, ports))]
    command += ["--users", args.users]
    command += ["--password", args.password, "--quiet", *options]
    if args.pin:
        command = ["taskset", "-c", LOADGEN_CPU, *command]
    return run_tool(command, on_line, timeout, "loadgen")


def run_tool(
    command: list[str],
    on_line: Callable[[str], bool],
    timeout: float,
    name: str,
) -> dict[str, Any]:
    """
    Run a measuring tool (loadgen, push_latency.py) that prints progress
    lines and, last, one JSON object on stdout; see L{run_loadgen}.
    """
    lines: list[str] = []
    watching = True
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=errors, text=True
        )
        assert proc.stdout is not None
        try:
            # Until EOF: loadgen always ends by itself, so this loop does too.
            for line in proc.stdout:
                lines.append(line)
                if watching and on_line(line):
                    watching = False
            proc.wait(timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        errors.seek(0)
        err = errors.read().strip()
    result: dict[str, Any] = {"loadgen_stderr": err[-2000:]}
    if proc.returncode != 0:
        result["loadgen_failed"] = f"{name} exit {proc.returncode}: {err[-500:]}"
    for line in reversed(lines):
        if line.startswith("{"):
            result.update(json.loads(line))
            return result
    raise RuntimeError(f"no result from {name} (exit {proc.returncode}): {err[-500:]}")


def closed_run(
    kind: str,
    conns: int,
    args: argparse.Namespace,
    workdir: Path,
    pg: ThrowawayPostgres | None,
) -> dict[str, Any]:
    deployment = Deployment(kind, args, workdir, pg)
    result: dict[str, Any] = {"server": kind, "conns": conns}
    result["nodes"] = NODES[kind]
    cpu: dict[str, dict[str, Any]] = {}

    def on_line(line: str) -> bool:
        # loadgen prints "LOAD <n>" when the load phase (warmup included)
        # starts and "DONE" when it ends: the server's CPU time in between
        # tells whether it was CPU-bound.
        word = line.split(" ", 1)[0].strip()
        if word in ("LOAD", "MEASURE", "DONE"):
            cpu[word] = cpu_snapshot(deployment)
        if word == "DONE":
            result["server_rss_kb"] = deployment.rss_kb()
            return True
        return False

    try:
        deployment.start()
        options = ["--conns", str(conns), "--duration", str(args.duration)]
        options += ["--warmup", str(args.warmup), "--msg-size", str(args.msg_size)]
        timeout = args.duration + args.warmup + 180
        result.update(run_loadgen(args, deployment.ports, options, on_line, timeout))
        if "LOAD" in cpu and "DONE" in cpu:
            result.update(cpu_figures(cpu["LOAD"], cpu["DONE"]))
        if "MEASURE" in cpu and "DONE" in cpu and result.get("rps"):
            result.update(cpu_per_request(cpu["MEASURE"], cpu["DONE"], result["rps"]))
        result["server_alive_after"] = deployment.alive()
    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
        result["failed"] = str(e)
    finally:
        result.update(deployment.stop())
    return result


def idle_run(
    kind: str, args: argparse.Namespace, workdir: Path, pg: ThrowawayPostgres | None
) -> dict[str, Any]:
    deployment = Deployment(kind, args, workdir, pg)
    result: dict[str, Any] = {"server": kind, "conns": args.idle_conns}
    result["nodes"] = NODES[kind]
    samples: list[int] = []

    def on_line(line: str) -> bool:
        # loadgen prints "HOLD <n>" once its connections are set up, pinged
        # and idle; it keeps them open for --hold seconds after.
        if not line.startswith("HOLD "):
            return False
        time.sleep(min(1.0, args.hold / 4))  # let the server settle
        end = time.monotonic() + args.hold / 2
        while True:
            rss = deployment.rss_kb()
            if rss is not None:
                samples.append(rss)
            if time.monotonic() >= end:
                return True
            time.sleep(0.25)

    try:
        deployment.start()
        result["rss_before_kb"] = deployment.rss_kb()
        options = ["--idle", "--conns", str(args.idle_conns)]
        options += ["--hold", str(args.hold)]
        timeout = args.hold + 180
        result.update(run_loadgen(args, deployment.ports, options, on_line, timeout))
        result["rss_held_kb"] = max(samples) if samples else None
        result["rss_samples"] = len(samples)
        before, held = result.get("rss_before_kb"), result["rss_held_kb"]
        if before and held and result.get("established"):
            per_conn = (held - before) / result["established"]
            result["kb_per_conn"] = round(per_conn, 2)
        result["server_alive_after"] = deployment.alive()
    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
        result["failed"] = str(e)
    finally:
        result.update(deployment.stop())
    return result


def profile_run(
    kind: str,
    conns: int,
    args: argparse.Namespace,
    workdir: Path,
    pg: ThrowawayPostgres | None,
) -> dict[str, Any]:
    """
    A closed-loop run like L{closed_run} with py-spy sampling the first
    node through the measured phase (py-spy pinned with the load). Sampling
    pauses the node briefly 100 times a second, so its req/s is a little
    lower than the table's; it is reported apart.
    """
    deployment = Deployment(kind, args, workdir, pg)
    result: dict[str, Any] = {"server": kind, "conns": conns}
    raw = workdir / f"py-spy-{kind}-{conns}.txt"
    spy: list[subprocess.Popen[bytes]] = []

    def on_line(line: str) -> bool:
        if line.startswith("LOAD"):
            time.sleep(args.warmup)
            command = [args.py_spy, "record", "-p", str(deployment.servers[0].pid)]
            command += ["-d", str(max(1, int(args.duration))), "-r", "100"]
            command += ["-f", "raw", "-o", str(raw), "--threads", "--idle"]
            command += ["--function"]
            if args.pin:
                command = ["taskset", "-c", LOADGEN_CPU, *command]
            spy.append(
                subprocess.Popen(
                    command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
                )
            )
        return line.startswith("DONE")

    try:
        deployment.start()
        options = ["--conns", str(conns), "--duration", str(args.duration)]
        options += ["--warmup", str(args.warmup), "--msg-size", str(args.msg_size)]
        timeout = args.duration + args.warmup + 180
        result.update(run_loadgen(args, deployment.ports, options, on_line, timeout))
    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
        result["failed"] = str(e)
    finally:
        for proc in spy:
            try:
                _, err = proc.communicate(timeout=60)
                result["py_spy_stderr"] = err.decode(errors="replace")[-500:]
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        result.update(deployment.stop())
    if raw.exists():
        result["profile"] = summarize_profile(raw.read_text())
        if args.keep:
            result["profile_raw"] = str(raw)
    return result


def summarize_profile(text: str, top: int = 12) -> dict[str, Any]:
    """
    py-spy's raw output ("thread;frame;...;frame count" per line, idle
    samples included) as samples per thread, each thread's functions with
    the most samples where they run (own), and the chat functions with the
    most samples anywhere on the stack (inclusive).
    """
    threads: dict[str, int] = {}
    own: dict[str, dict[str, int]] = {}
    chat: dict[str, int] = {}
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        thread = "?"
        if frames[0].startswith("thread ("):  # "thread (0x1234): name"
            thread = frames[0].partition(": ")[2] or frames[0]
            frames = frames[1:]
        threads[thread] = threads.get(thread, 0) + count
        if frames:
            mine = own.setdefault(thread, {})
            mine[frames[-1]] = mine.get(frames[-1], 0) + count
        for frame in set(frames):
            if "(chat/" in frame:
                chat[frame] = chat.get(frame, 0) + count

    def ranked(counts: dict[str, int]) -> list[tuple[str, int]]:
        return sorted(counts.items(), key=lambda item: -item[1])[:top]

    return {
        "samples": total,
        "threads": ranked(threads),
        "own": {thread: ranked(counts) for thread, counts in own.items()},
        "chat_inclusive": ranked(chat),
    }


def cpu_marks(
    deployment: Deployment,
) -> tuple[dict[str, dict[str, Any]], Callable[[str], bool]]:
    """
    For a tool that prints C{LOAD} when its load starts and C{DONE} when it
    ends: the CPU snapshots taken at those lines (filled in as they come),
    and the reader of its lines, which says C{DONE} ends it.
    """
    cpu: dict[str, dict[str, Any]] = {}

    def on_line(line: str) -> bool:
        word = line.strip()
        if word in ("LOAD", "DONE"):
            cpu[word] = cpu_snapshot(deployment)
        return word == "DONE"

    return cpu, on_line


def push_run(
    kind: str,
    same_node: bool,
    args: argparse.Namespace,
    workdir: Path,
    pg: ThrowawayPostgres | None,
) -> dict[str, Any]:
    """
    Push latency on C{kind}: senders on the first node, the subscriber on
    the same node or on the second.
    """
    deployment = Deployment(kind, args, workdir, pg)
    result: dict[str, Any] = {"server": kind, "same_node": same_node}
    result["nodes"] = NODES[kind]
    cpu, on_line = cpu_marks(deployment)

    try:
        deployment.start()
        ports = deployment.ports
        command = [args.python, str(PUSH_LATENCY), "--quiet"]
        command += ["--send-port", str(ports[0])]
        command += ["--sub-port", str(ports[0] if same_node else ports[-1])]
        command += ["--rate", str(args.push_rate)]
        command += ["--duration", str(args.push_duration)]
        command += ["--warmup", str(args.warmup)]
        command += ["--senders", str(args.push_senders)]
        command += ["--drain", str(args.push_drain)]
        command += ["--password", args.password]
        if args.pin:
            command = ["taskset", "-c", LOADGEN_CPU, *command]
        timeout = args.push_duration + args.warmup + args.push_drain + 120
        result.update(run_tool(command, on_line, timeout, "push_latency"))
        if "LOAD" in cpu and "DONE" in cpu:
            result.update(cpu_figures(cpu["LOAD"], cpu["DONE"]))
        result["server_alive_after"] = deployment.alive()
    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
        result["failed"] = str(e)
    finally:
        result.update(deployment.stop())
    return result


def storm_run(
    kind: str,
    cpus: str,
    args: argparse.Namespace,
    workdir: Path,
    pg: ThrowawayPostgres | None,
) -> dict[str, Any]:
    """
    A login storm (C{bench/login_storm.py}) against C{kind}, its server on
    C{cpus} (the tool on CPU 1, with the server if C{cpus} has it too).
    """
    deployment = Deployment(kind, args, workdir, pg, cpus)
    result: dict[str, Any] = {"server": kind, "server_cpus": cpus}
    cpu, on_line = cpu_marks(deployment)

    def tool(conns: int) -> list[str]:
        command = [args.python, str(LOGIN_STORM)]
        command += ["--port", str(deployment.ports[0]), "--conns", str(conns)]
        command += ["--users", args.users, "--password", args.password]
        command += ["--calm", str(args.storm_calm)]
        if args.pin:
            command = ["taskset", "-c", LOADGEN_CPU, *command]
        return command

    try:
        deployment.start()
        if args.storm_calm > 0:
            # The same user's sends before the storm, with nothing else on.
            calm = run_tool(tool(0), lambda line: False, 300.0, "login_storm")
            result["calm"] = {k: v for k, v in calm.items() if k.startswith("send")}
        result.update(run_tool(tool(args.login_storm), on_line, 900.0, "login_storm"))
        if "LOAD" in cpu and "DONE" in cpu:
            result.update(cpu_figures(cpu["LOAD"], cpu["DONE"]))
        result["server_alive_after"] = deployment.alive()
    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
        result["failed"] = str(e)
    finally:
        result.update(deployment.stop())
    return result


# Report.


def ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "-"
    return f"{a / b:.2f}x"


def cpu_us(r: dict[str, Any] | None) -> float | None:
    """
    Server-side CPU microseconds per request: the server's, and
    PostgreSQL's when it has its own.
    """
    if r is None or r.get("server_cpu_us") is None:
        return None
    return float(r["server_cpu_us"]) + float(r.get("db_cpu_us") or 0.0)


def fmt(value: Any, spec: str = ".1f", suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def placement(args: argparse.Namespace) -> str:
    """
    Where the processes ran, in words.
    """
    if not args.pin:
        return "not pinned"
    where = f"server(s) on CPU {SERVER_CPU}, load on CPU {LOADGEN_CPU}"
    if args.pg is not None:
        where += (
            ", PostgreSQL unpinned"
            if args.pg_cpus is None
            else f", PostgreSQL on CPU {args.pg_cpus}"
        )
    return where


def failure(r: dict[str, Any]) -> str:
    return str(r.get("failed") or r.get("loadgen_failed") or "?").replace("\n", " ")


#: The figures of a closed run that are summed over rounds (counts of
#: failures); the other numbers are their median.
SUMMED = ("errors", "disconnects", "setup_failures")
MEDIAN = (
    "rps",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "max_ms",
    "setup_s",
    "server_cpu_pct",
    "db_cpu_pct",
    "lg_cpu_pct",
    "server_cpu_us",
    "db_cpu_us",
)


def combine_rounds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """
    One row for a server kind and N out of its rounds: the median of each
    figure over the rounds that ran, the failures of all of them; a failed
    round makes the row a failure.
    """
    failed = [r for r in runs if "rps" not in r]
    if failed:
        return failed[0]
    row: dict[str, Any] = dict(runs[0])
    for key in MEDIAN:
        values = [r[key] for r in runs if r.get(key) is not None]
        row[key] = statistics.median(values) if values else None
    for key in SUMMED:
        row[key] = sum(r.get(key, 0) for r in runs)
    return row


def round_ratios(
    base_runs: list[dict[str, Any]], runs: list[dict[str, Any]]
) -> dict[str, list[float]]:
    """
    Each round's ratios of a server kind to the baseline of the same round
    (they ran one after the other): req/s, latencies, and CPU per request
    (baseline over ours, so that higher is better as for req/s).
    """
    base_by_round = {r.get("round"): r for r in base_runs if "rps" in r}
    ratios: dict[str, list[float]] = {}
    for r in runs:
        base = base_by_round.get(r.get("round"))
        if base is None or "rps" not in r:
            continue
        for key in ("rps", "p50_ms", "p90_ms", "p99_ms"):
            if r[key] and base[key]:
                ratios.setdefault(key, []).append(r[key] / base[key])
        ours_cpu, base_cpu = cpu_us(r), cpu_us(base)
        if ours_cpu and base_cpu:
            ratios.setdefault("cpu", []).append(base_cpu / ours_cpu)
    return ratios


def median_ratio(values: list[float] | None) -> str:
    return f"{statistics.median(values):.2f}x" if values else "-"


def print_closed(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    grouped: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in results:
        grouped.setdefault((r["server"], r["conns"]), []).append(r)
    closed = {key: combine_rounds(runs) for key, runs in grouped.items()}
    if args.rounds > 1:
        print(
            f"Each row: the median of {args.rounds} rounds; each ratio: the "
            "median of the rounds' ratios to the baseline run just before"
        )
    print(
        f"Closed loop: {args.warmup:g} s warmup + {args.duration:g} s measured; "
        f"send with {args.msg_size}-byte text, every 10th request an inbox; "
        f"users {args.users}; {placement(args)}"
    )
    header = (
        f"{'server':<13} {'conns':>6} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} "
        f"{'p99 ms':>8} {'max ms':>8} {'errors':>6} {'lost':>5} {'setup s':>7} "
        f"{'srv cpu':>7} {'db cpu':>6} {'lg cpu':>6} {'cpu us/req':>10}"
    )
    print(header)
    print("-" * len(header))
    for conns in args.conns:
        for kind in args.servers:
            r = closed.get((kind, conns))
            if r is None:
                continue
            if "rps" not in r:
                print(f"{kind:<13} {conns:>6}  FAILED: {failure(r)[:70]}")
                continue
            lost = r.get("disconnects", 0) + r.get("setup_failures", 0)
            print(
                f"{kind:<13} {conns:>6} {r['rps']:>9.1f} {r['p50_ms']:>8.2f} "
                f"{r['p90_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['max_ms']:>8.1f} "
                f"{r['errors']:>6} {lost:>5} {r['setup_s']:>7.2f} "
                f"{fmt(r.get('server_cpu_pct'), '.0f', '%'):>7} "
                f"{fmt(r.get('db_cpu_pct'), '.0f', '%'):>6} "
                f"{r['lg_cpu_pct']:>5.0f}% "
                f"{fmt(cpu_us(r), '.1f'):>10}"
            )
        base_runs = grouped.get(("baseline", conns), [])
        for kind in args.servers:
            runs = grouped.get((kind, conns))
            if kind == "baseline" or not runs or not base_runs:
                continue
            ratios = round_ratios(base_runs, runs)
            if not ratios:
                continue
            spread = ""
            if len(ratios.get("cpu", [])) > 1:
                spread = f"  cpu {min(ratios['cpu']):.2f}-{max(ratios['cpu']):.2f}x"
            print(
                f"{kind + '/base':<13} {conns:>6} "
                f"{median_ratio(ratios.get('rps')):>9} "
                f"{median_ratio(ratios.get('p50_ms')):>8} "
                f"{median_ratio(ratios.get('p90_ms')):>8} "
                f"{median_ratio(ratios.get('p99_ms')):>8} "
                f"{'':>8} {'':>8} {'':>6} {'':>5} {'':>7} {'':>7} {'':>6} "
                f"{'':>6} {'cpu ' + median_ratio(ratios.get('cpu')):>10}{spread}"
            )


def print_idle(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"Idle: {args.idle_conns} connections, authenticated, one ping each, "
        f"then held {args.hold:g} s; server VmRSS (all nodes) before and while held"
    )
    header = (
        f"{'server':<13} {'conns':>6} {'held':>6} {'lost':>5} {'setup s':>7} "
        f"{'RSS before':>11} {'RSS held':>10} {'KB/conn':>8}"
    )
    print(header)
    print("-" * len(header))
    idle = {r["server"]: r for r in results}
    for kind in args.servers:
        r = idle.get(kind)
        if r is None:
            continue
        if "established" not in r:
            print(f"{kind:<13} FAILED: {failure(r)[:70]}")
            continue
        before, held = r.get("rss_before_kb"), r.get("rss_held_kb")
        lost = r.get("disconnects", 0) + r.get("setup_failures", 0)
        print(
            f"{kind:<13} {r['conns']:>6} {r['established']:>6} {lost:>5} "
            f"{r['setup_s']:>7.2f} "
            f"{fmt(before and before / 1024, '.1f', ' MB'):>11} "
            f"{fmt(held and held / 1024, '.1f', ' MB'):>10} "
            f"{fmt(r.get('kb_per_conn'), '.2f'):>8}"
        )
    base = idle.get("baseline")
    for kind in args.servers:
        ours = idle.get(kind)
        if kind == "baseline" or not ours or not base:
            continue
        print(
            f"{kind + '/base':<13} {'':>6} {'':>6} {'':>5} {'':>7} "
            f"{ratio(ours.get('rss_before_kb'), base.get('rss_before_kb')):>11} "
            f"{ratio(ours.get('rss_held_kb'), base.get('rss_held_kb')):>10} "
            f"{ratio(ours.get('kb_per_conn'), base.get('kb_per_conn')):>8}"
        )


def print_profile(r: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"Profile: py-spy, 100 samples/s of {r['server']}'s first node "
        f"(idle samples included: % of wall time per thread), "
        f"{r['conns']} connections, {args.duration:g} s of the measured phase"
    )
    if "profile" not in r:
        why = r.get("failed") or r.get("py_spy_stderr") or "no samples"
        print(f"  FAILED: {why}")
        return
    if "rps" in r:
        print(
            f"  while sampled: {r['rps']:.1f} req/s, p99 {r['p99_ms']:.2f} ms "
            "(sampling pauses the node: compare the table, not this)"
        )
    p = r["profile"]
    per_thread = dict(p["threads"])
    for thread, own in p["own"].items():
        samples = max(1, per_thread.get(thread, 0))
        if own and own[0][1] > 0.97 * samples:
            continue  # asleep all along (e.g. the password hashers)
        print(f"  thread {thread}: {samples} samples; where it was (own):")
        for frame, n in own[:10]:
            print(f"    {100 * n / samples:5.1f}%  {frame[:100]}")
    # Every thread is sampled as often: a thread's samples are the wall time.
    wall = max(1, max(per_thread.values(), default=1))
    print("  chat functions on the stack (of whichever thread), % of wall time:")
    for frame, n in p["chat_inclusive"][:12]:
        print(f"    {100 * n / wall:5.1f}%  {frame[:100]}")


def push_label(r: dict[str, Any]) -> str:
    return "same node" if r["same_node"] else "cross node"


def print_push(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"Push latency: {args.push_rate:g} messages/s, open loop, over "
        f"{args.push_senders} sender connections (messi, lineker) on node A to "
        f"one subscriber (henderson) on node A (same node) or B (cross node); "
        f"{args.warmup:g} s warmup + {args.push_duration:g} s measured; "
        f"send written -> push read; {placement(args)}"
    )
    header = (
        f"{'server':<13} {'where':<10} {'sent':>6} {'recv':>6} {'miss':>5} "
        f"{'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'rate':>6} "
        f"{'srv cpu':>7} {'db cpu':>6} {'tool':>5}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        where = push_label(r)
        if "sent" not in r:
            print(f"{r['server']:<13} {where:<10}  FAILED: {failure(r)[:70]}")
            continue
        print(
            f"{r['server']:<13} {where:<10} {r['sent']:>6} {r['received']:>6} "
            f"{r['missing']:>5} {fmt(r['p50_ms'], '.2f'):>8} "
            f"{fmt(r['p90_ms'], '.2f'):>8} {fmt(r['p99_ms'], '.2f'):>8} "
            f"{fmt(r['max_ms'], '.1f'):>8} {fmt(r['achieved_rate'], '.0f'):>6} "
            f"{fmt(r.get('server_cpu_pct'), '.0f', '%'):>7} "
            f"{fmt(r.get('db_cpu_pct'), '.0f', '%'):>6} "
            f"{fmt(r.get('tool_cpu_pct'), '.0f', '%'):>5}"
        )
    for r in results:
        if r.get("sent") and r.get("received") == 0 and not r["same_node"]:
            print(
                f"\n!! {r['server']} cross node: no push arrived: this chat has "
                "no cross-node fan-out (LISTEN/NOTIFY), or it is not enabled"
            )


def print_storm(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"Login storm: {args.login_storm} connections from 127.0.0.1, each "
        f"auth <user> {args.password} at once (users {args.users}); meanwhile "
        f"a logged-in user sends every 50 ms (and pings as often on another "
        f"connection); the tool on CPU {LOADGEN_CPU}"
    )
    header = (
        f"{'server':<8} {'cpus':>5} {'ok':>6} {'logins/s':>9} {'last s':>7} "
        f"{'errors':<18} {'send p50':>8} {'p99 ms':>7} {'max ms':>7} "
        f"{'sends':>5} {'ping p99':>8} {'calm p99':>8} {'srv cpu':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        if "ok" not in r:
            print(f"{r['server']:<8} {r['server_cpus']:>5}  FAILED: {failure(r)[:70]}")
            continue
        errors = ",".join(f"{k}={v}" for k, v in sorted(r["errors"].items()))
        send_errors = sum(r.get("send_errors", {}).values())
        if send_errors:
            errors += f" send={send_errors}"
        print(
            f"{r['server']:<8} {r['server_cpus']:>5} {r['ok']:>6} "
            f"{fmt(r.get('logins_per_s'), '.1f'):>9} "
            f"{fmt(r.get('last_login_s'), '.1f'):>7} {errors or '-':<18} "
            f"{fmt(r.get('send_p50_ms'), '.1f'):>8} "
            f"{fmt(r.get('send_p99_ms'), '.1f'):>7} "
            f"{fmt(r.get('send_max_ms'), '.1f'):>7} {r.get('sends', 0):>5} "
            f"{fmt(r.get('ping_p99_ms'), '.1f'):>8} "
            f"{fmt(r.get('calm', {}).get('send_p99_ms'), '.1f'):>8} "
            f"{fmt(r.get('server_cpu_pct'), '.0f', '%'):>7}"
        )


def interference(r: dict[str, Any], args: argparse.Namespace) -> str | None:
    """
    Whether a CPU was much busier than the processes pinned to it (the
    server(s) on CPU 0, loadgen on CPU 1, PostgreSQL where --pg-cpus puts
    it): then something else competed with them, and the run's figures are
    too low. Kernel I/O threads take a few % at most. With PostgreSQL
    unpinned, the CPUs are checked together.
    """
    busy = r.get("cpu_busy_pct", {})
    server, tool = r.get("server_cpu_pct"), r.get("lg_cpu_pct", r.get("tool_cpu_pct"))
    db = r.get("db_cpu_pct")
    if server is None or tool is None or "cpu0" not in busy or "cpu1" not in busy:
        return None
    if not args.pin:
        return None
    spread = r.get("server_cpus", SERVER_CPU) != SERVER_CPU  # a login storm's
    if spread or (db is not None and args.pg_cpus not in (SERVER_CPU, LOADGEN_CPU)):
        total, used = busy["cpu0"] + busy["cpu1"], server + tool + (db or 0)
        if total - used > 30:
            return f"the CPUs were {total:.0f}% busy but ours used {used:.0f}%"
        return None
    expected = {"cpu0": server, "cpu1": tool}
    if db is not None:
        expected["cpu" + str(args.pg_cpus)] += db
    for cpu, who in (("cpu0", "the server side"), ("cpu1", "the load")):
        if busy[cpu] - expected[cpu] > 20:
            return (
                f"{cpu} was {busy[cpu]:.0f}% busy but {who} used {expected[cpu]:.0f}%"
            )
    return None


def describe(r: dict[str, Any]) -> str:
    if "server_cpus" in r:
        return f"{r['server']} login storm, server on CPUs {r['server_cpus']}"
    if "same_node" in r:
        return f"{r['server']} push latency, {push_label(r)}"
    return f"{r['server']} with {r['conns']} connections"


def print_interference(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    for r in results:
        why = interference(r, args)
        if why:
            print(
                f"\n?? {describe(r)}: {why}: "
                "something else ran there, so these figures are too low"
            )


def print_problems(results: list[dict[str, Any]]) -> None:
    keys = ["failed", "loadgen_failed", "crashed", "killed", "errors"]
    keys += ["unexpected", "disconnects", "setup_failures", "db_drop_failed"]
    keys += ["send_errors", "missing", "duplicates", "ack_errors"]
    for r in results:
        if not (r.get("log_problems") or any(r.get(k) for k in keys)):
            continue
        print(f"\n!! {describe(r)}:")
        for key in (*keys, "exit_code", "error_samples"):
            if r.get(key):
                print(f"   {key}: {r[key]}")
        for line in r.get("log_problems", [])[:10]:
            print(f"   log: {line}")
        if r.get("errors") and r.get("loadgen_stderr"):
            print("   loadgen: " + r["loadgen_stderr"].replace("\n", "\n   loadgen: "))


# Main.


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark twistd chat against a minimal Twisted server."
    )
    add = parser.add_argument
    add("--conns", default="1,10,100,1000", help="connection counts (%(default)s)")
    add("--duration", type=float, default=10.0, help="measured s (%(default)s)")
    add(
        "--rounds",
        type=int,
        default=1,
        help="run the closed-loop table this many times, each server kind right "
        "after the baseline at each N, and report medians (%(default)s)",
    )
    add("--warmup", type=float, default=1.0, help="unmeasured s before (%(default)s)")
    add(
        "--idle-conns",
        type=int,
        default=10000,
        help="connections of the idle-memory run; 0 skips it (%(default)s)",
    )
    add("--hold", type=float, default=5.0, help="idle hold in s (%(default)s)")
    add(
        "--servers",
        default=None,
        help=f"which server kinds, of {', '.join(SERVERS)} (default: all of "
        "them if PostgreSQL is installed, else baseline,ours)",
    )
    add("--users", default="messi,henderson,lineker", help="round-robin users")
    add("--password", default="surabaya")
    add("--msg-size", type=int, default=40, help="bytes of text per send")
    add(
        "--listen-backlog",
        type=int,
        default=None,
        help="listen backlog for both servers (default: the servers' own, 50)",
    )
    add(
        "--chat-arg",
        action="append",
        default=[],
        help="extra option for twistd chat, repeatable (e.g. "
        "--chat-arg=--push-window=200); run.py already raises "
        "--max-connections and --max-connections-per-address to fit the "
        "largest run, since all the load comes from 127.0.0.1",
    )
    add(
        "--python",
        default=sys.executable,
        help="interpreter with Twisted for the servers (default: this one)",
    )
    add("--twistd", default=None, help="twistd to run (default: next to --python)")
    add(
        "--chat-src",
        default=str(REPO),
        help="PYTHONPATH for twistd chat (default: this checkout's work tree)",
    )
    add(
        "--chat-commit",
        metavar="REV",
        help="measure chat as of this commit (e.g. HEAD), exported from git, "
        "instead of the work tree",
    )
    add(
        "--pg-bin",
        metavar="DIR",
        default=None,
        help="PostgreSQL's initdb, pg_ctl, psql (default: the newest "
        "/usr/lib/postgresql/*/bin)",
    )
    add(
        "--pg-cpus",
        default=SERVER_CPU,
        help="CPU list for PostgreSQL (taskset -c), or 'any' for unpinned "
        "(default %(default)s: with the chat nodes, so that the server side "
        "has one core in every row)",
    )
    add(
        "--pg-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a PostgreSQL server setting, repeatable (e.g. "
        "--pg-setting autovacuum_naptime=5s); default: PostgreSQL's own, "
        "with fsync and synchronous_commit on",
    )
    add(
        "--push-latency",
        action="store_true",
        help="also measure push latency: same node (ours, ours-pg) and cross "
        "node (ours-pg2), for the kinds in --servers",
    )
    add("--push-rate", type=float, default=1000.0, help="messages/s (%(default)s)")
    add(
        "--push-duration",
        type=float,
        default=10.0,
        help="measured s of each push run (%(default)s)",
    )
    add(
        "--push-senders",
        type=int,
        default=8,
        help="sending connections of the push runs (%(default)s)",
    )
    add(
        "--push-drain",
        type=float,
        default=5.0,
        help="most s to wait for missing pushes after the last send (%(default)s)",
    )
    add(
        "--profile",
        metavar="KIND:CONNS",
        help="after the table's runs, run KIND with CONNS connections once "
        "more with py-spy sampling its first node (e.g. ours-pg:100), and "
        "print where its time goes",
    )
    add(
        "--py-spy",
        default=None,
        help="py-spy for --profile (default: next to --python, or on PATH)",
    )
    add(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="before each run, wait up to this many seconds for the CPUs to "
        "be idle (%(default)s)",
    )
    add(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not pin the server to CPU 0 and loadgen to CPU 1",
    )
    add(
        "--retries",
        type=int,
        default=2,
        help="rerun a load run this often while another process competes "
        "for the CPUs (%(default)s)",
    )
    add(
        "--login-storm",
        type=int,
        default=0,
        metavar="N",
        help="also run a login storm: N connections log in at once (auth, "
        "argon2id) while a logged-in user sends every 50 ms; ours and ours-pg, "
        "of the kinds in --servers",
    )
    add(
        "--storm-calm",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="before each login storm, measure the same user's sends this "
        "long on the calm server, for comparison; 0 skips (%(default)s)",
    )
    add(
        "--storm-cpus",
        action="append",
        default=None,
        metavar="LIST",
        help="CPUs (taskset -c) of the server in a login storm, repeatable: "
        "one storm each (default: 0; e.g. --storm-cpus 0 --storm-cpus 0,1 "
        "shows how it scales)",
    )
    add("--json", metavar="PATH", help="also write every figure as JSON")
    add(
        "--keep",
        action="store_true",
        help="keep the servers' directories and logs, and PostgreSQL's",
    )
    args = parser.parse_args(argv)
    args.conns = [int(n) for n in args.conns.split(",") if n.strip()]
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    args.pg_bin = args.pg_bin or find_bindir()
    if args.servers is None:
        if args.pg_bin is None:
            log(
                "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb; "
                "--pg-bin DIR names another): measuring baseline,ours only"
            )
            args.servers = "baseline,ours"
        else:
            args.servers = ",".join(SERVERS)
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    for s in args.servers:
        if s not in SERVERS:
            parser.error(f"--servers: unknown {s!r} (known: {', '.join(SERVERS)})")
    if args.pg_bin is None and set(args.servers) & set(PG_KINDS):
        parser.error(
            "--servers: ours-pg and ours-pg2 need PostgreSQL's server binaries "
            "(Debian package postgresql), not found; --pg-bin DIR names them"
        )
    if args.profile:
        kind, _, conns = args.profile.partition(":")
        if kind not in SERVERS or kind == "baseline" or not conns.isdigit():
            parser.error("--profile: expected ours, ours-pg or ours-pg2, ':', a count")
        if kind in PG_KINDS and args.pg_bin is None:
            parser.error("--profile: PostgreSQL's server binaries are not found")
        args.profile = (kind, int(conns))
        args.py_spy = (
            args.py_spy
            or shutil.which("py-spy", path=str(Path(args.python).parent))
            or shutil.which("py-spy")
        )
        if args.py_spy is None:
            parser.error("--profile: py-spy not found; --py-spy PATH names it")
    args.storm_cpus = args.storm_cpus or [SERVER_CPU]
    if args.pg_cpus in ("any", ""):
        args.pg_cpus = None
    if args.twistd is None:
        args.twistd = str(Path(args.python).parent / "twistd")
    return args


def chat_options(args: argparse.Namespace) -> str:
    """
    C{twistd chat --help}: which options this chat has (e.g. --node-id).
    """
    env = dict(os.environ)
    paths = (args.chat_src, env.get("PYTHONPATH"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    done = subprocess.run(
        [args.twistd, "chat", "--help"], capture_output=True, env=env, text=True
    )
    return done.stdout


def limit_args(args: argparse.Namespace, largest: int) -> list[str]:
    """
    Limits that fit the load: all of it comes from one address, which the
    default per-address limit (1,000) would cap, and from three users each
    writing to one other, whose mailboxes the per-sender share (a tenth of
    the mailbox) would cap. Left alone when --chat-arg sets them.
    """
    given = " ".join(args.chat_arg)
    need = largest + 64
    wanted = {
        "--max-connections": max(need, 10_000),
        "--max-connections-per-address": max(need, 10_000),
        "--max-unread-per-sender": 10_000,
    }
    found: list[str] = []
    for option, value in wanted.items():
        if f"{option}=" not in given and f"{option} " not in given + " ":
            found.append(f"{option}={value}")
    return found


def undisturbed(
    args: argparse.Namespace, run: Callable[..., dict[str, Any]], *arguments: Any
) -> dict[str, Any]:
    """
    C{run(*arguments)} on quiet CPUs, again (at most C{--retries} times)
    while its result shows that something else ran meanwhile.
    """
    for attempt in range(1 + args.retries):
        wait_quiet(args.quiet_wait)
        r = run(*arguments)
        r["attempt"] = attempt + 1
        why = interference(r, args)
        if not why or attempt == args.retries:
            break
        log(f"  {why}: something else ran; again in 10 s")
        time.sleep(10)
    return r


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    check = subprocess.run([args.python, "-c", "import twisted"], capture_output=True)
    if check.returncode != 0:
        log(f"{args.python} cannot import twisted; pass --python")
        return 2
    if set(args.servers) - {"baseline"} and not Path(args.twistd).exists():
        log(f"no twistd at {args.twistd}; pass --twistd")
        return 2
    if args.pin and (not shutil.which("taskset") or (os.cpu_count() or 1) < 2):
        log("taskset or a second CPU is missing: running unpinned")
        args.pin = False
    if not args.pin:
        args.pg_cpus = None

    build_loadgen()
    largest = max([*args.conns, args.idle_conns, args.login_storm])
    nofile = raise_nofile(largest + 256)
    if nofile < largest + 256:
        log(f"only {nofile} file descriptors allowed; the largest run may fail")
    ports = local_port_count()
    if ports is not None and ports < largest:
        log(f"only {ports} local ports: not enough for {largest} connections")
    args.limit_args = limit_args(args, largest)

    push_rows = [
        (kind, same)
        for kind, same in PUSH_ROWS
        if args.push_latency and kind in args.servers
    ]
    kinds = set(args.servers) | ({args.profile[0]} if args.profile else set())
    uses_pg = bool(kinds & set(PG_KINDS))
    results: dict[str, Any] = {
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "nofile": nofile,
        },
        "chat": "",
        "postgres": None,
        "closed": [],
        "idle": [],
        "push": [],
        "storm": [],
        "profile": None,
    }
    workdir = Path(tempfile.mkdtemp(prefix="chat-bench-"))
    if args.chat_commit:
        args.chat_src = str(workdir / "chat-src")
        commit = export_commit(args.chat_commit, Path(args.chat_src))
        results["chat"] = f"{commit} (exported)"
    else:
        results["chat"] = chat_version(args.chat_src)
    args.chat_options = chat_options(args)
    args.pg = None
    pg: ThrowawayPostgres | None = None
    try:
        if uses_pg:
            assert args.pg_bin is not None
            pg = ThrowawayPostgres(args.pg_bin, args.pg_cpus, args.pg_setting)
            log(f"starting PostgreSQL from {args.pg_bin} in {pg.directory}")
            pg.start()
            args.pg = pg.directory
            version = subprocess.run(
                [os.path.join(args.pg_bin, "postgres"), "--version"],
                capture_output=True,
                text=True,
            ).stdout.strip()
            results["postgres"] = {
                "bin": args.pg_bin,
                "version": version,
                "cpus": args.pg_cpus or "any",
                "settings": args.pg_setting,
            }
        if "ours" in args.servers:
            results["commit"] = commit_latency(workdir)
            log(
                "SQLite commit (WAL, synchronous=FULL) in the servers' folder: "
                f"p50 {results['commit']['p50_ms']:.2f} ms"
            )
        # Each server kind right after the others at the same N, round
        # after round: the ratios compare runs minutes apart at most, not a
        # whole table apart, on a machine whose speed drifts.
        for round_ in range(1, args.rounds + 1):
            which = f" (round {round_} of {args.rounds})" if args.rounds > 1 else ""
            for conns in args.conns:
                for kind in args.servers:
                    log(f"{kind}: {conns} connections, {args.duration:g} s{which}")
                    r = undisturbed(args, closed_run, kind, conns, args, workdir, pg)
                    r["round"] = round_
                    results["closed"].append(r)
                    if "rps" in r:
                        log(
                            f"  {r['rps']:.1f} req/s, p99 {r['p99_ms']:.2f} ms, "
                            f"{r['errors']} errors, loadgen cpu {r['lg_cpu_pct']:.0f}%"
                        )
                    else:
                        log(f"  failed: {failure(r)}")
        for kind in args.servers:
            if args.idle_conns > 0:
                log(f"{kind}: {args.idle_conns} idle connections, {args.hold:g} s")
                wait_quiet(args.quiet_wait)
                r = idle_run(kind, args, workdir, pg)
                results["idle"].append(r)
                log(f"  {r.get('established')} held, RSS {r.get('rss_held_kb')} kB")
        for kind, same_node in push_rows:
            where = "same node" if same_node else "cross node"
            log(f"{kind}: push latency, {where}, {args.push_rate:g}/s")
            r = undisturbed(args, push_run, kind, same_node, args, workdir, pg)
            results["push"].append(r)
            if "sent" in r:
                log(f"  {r['received']} of {r['sent']} received, p99 {r['p99_ms']} ms")
            else:
                log(f"  failed: {failure(r)}")
        storm_kinds = [k for k in args.servers if k in ("ours", "ours-pg")]
        for kind in storm_kinds if args.login_storm else []:
            for cpus in args.storm_cpus:
                log(f"{kind}: login storm of {args.login_storm}, server on CPUs {cpus}")
                r = undisturbed(args, storm_run, kind, cpus, args, workdir, pg)
                results["storm"].append(r)
                if "ok" in r:
                    log(
                        f"  {r['ok']} logged in, {r.get('logins_per_s')}/s, "
                        f"errors {r['errors']}, send p99 {r['send_p99_ms']} ms"
                    )
                else:
                    log(f"  failed: {failure(r)}")
        if args.profile:
            kind, conns = args.profile
            log(f"{kind}: {conns} connections, {args.duration:g} s, with py-spy")
            wait_quiet(args.quiet_wait)
            results["profile"] = profile_run(kind, conns, args, workdir, pg)
    finally:
        if pg is not None:
            try:
                pg.remove(keep=args.keep)
            except RuntimeError as e:
                log(f"could not stop PostgreSQL: {e}")
        if args.keep:
            log(f"kept the servers' directories in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(f"twistd chat from {args.chat_src} at {results['chat']}")
    if results["postgres"]:
        pgi = results["postgres"]
        settings = ", ".join(pgi["settings"]) or "defaults"
        print(f"PostgreSQL: {pgi['version']}, CPUs {pgi['cpus']}, settings {settings}")
    if args.conns:  # --conns '' runs no closed loop (a login storm alone)
        print_closed(results["closed"], args)
    commit = results.get("commit")
    if commit:
        print(
            f"SQLite commit latency here (WAL, synchronous=FULL, one small "
            f"insert): p50 {commit['p50_ms']:.2f} ms, p90 {commit['p90_ms']:.2f} "
            f"ms: one connection's ceiling is {1000 / commit['p50_ms']:,.0f} "
            "req/s (every request waits for a commit); N connections' is about "
            "N times that, until the CPU bounds it"
        )
    if results["idle"]:
        print()
        print_idle(results["idle"], args)
    if results["push"]:
        print()
        print_push(results["push"], args)
    if results["storm"]:
        print()
        print_storm(results["storm"], args)
    if results["profile"]:
        print()
        print_profile(results["profile"], args)
    print_problems(
        results["closed"] + results["idle"] + results["push"] + results["storm"]
    )
    print_interference(results["closed"] + results["push"], args)
    if args.json:
        results["config"]["pg"] = str(args.pg) if args.pg else None
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
