#!/usr/bin/env python3
"""
Benchmark C{twistd chat} against a minimal in-memory Twisted server.

For each server (ours: C{twistd chat} with a fresh SQLite store and
C{--demo}; baseline: C{bench/baseline_server.py}) and each connection count,
start the server pinned to CPU 0, run C{bench/loadgen} (closed loop) pinned
to CPU 1, and stop the server. Then, per server, hold many authenticated
idle connections and read the server's resident memory (VmRSS) meanwhile.
Prints a table and optionally writes every figure as JSON.

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
SERVERS = ("ours", "baseline")
SERVER_CPU, LOADGEN_CPU = "0", "1"

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
    """

    def __init__(self, kind: str, args: argparse.Namespace, workdir: Path) -> None:
        self.kind = kind
        self.args = args
        self.dir = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=workdir))
        self.port = free_port()
        self.log_path = self.dir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        backlog = self.args.listen_backlog
        if self.kind == "ours":
            listen = f"tcp:{self.port}:interface=127.0.0.1"
            if backlog:
                listen += f":backlog={backlog}"
            return [
                self.args.twistd,
                "-n",
                "--pidfile=",
                "chat",
                "--demo",
                "--listen",
                listen,
                "--store",
                f"sqlite:{self.dir}/chat.sqlite",
                *self.args.chat_arg,
            ]
        command = [self.args.python, str(BENCH / "baseline_server.py")]
        command += ["--port", str(self.port)]
        if backlog:
            command += ["--backlog", str(backlog)]
        return command

    def start(self) -> None:
        env = dict(os.environ)
        if self.kind == "ours":
            paths = (self.args.chat_src, env.get("PYTHONPATH"))
            env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        command = self.command()
        if self.args.pin:
            command = ["taskset", "-c", SERVER_CPU, *command]
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
                    f"{self.kind} server exited while starting:\n{self.log_tail()}"
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
        raise RuntimeError(f"{self.kind} server not ready after {timeout} s")

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


# Load runs.


def run_loadgen(
    args: argparse.Namespace,
    port: int,
    options: list[str],
    on_line: Callable[[str], bool],
    timeout: float,
) -> dict[str, Any]:
    """
    Run loadgen against C{port}; call C{on_line} with each line it prints on
    stdout, as it comes, until C{on_line} returns True. Return loadgen's
    JSON result (its last line).
    """
    command = [str(LOADGEN), "--port", str(port), "--users", args.users]
    command += ["--password", args.password, "--quiet", *options]
    if args.pin:
        command = ["taskset", "-c", LOADGEN_CPU, *command]
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
        result["loadgen_failed"] = f"exit {proc.returncode}: {err[-500:]}"
    for line in reversed(lines):
        if line.startswith("{"):
            result.update(json.loads(line))
            return result
    raise RuntimeError(f"no result from loadgen (exit {proc.returncode}): {err[-500:]}")


def closed_run(
    kind: str, conns: int, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    server = Server(kind, args, workdir)
    result: dict[str, Any] = {"server": kind, "conns": conns}
    cpu: dict[str, tuple[float | None, float, dict[str, float]]] = {}

    def on_line(line: str) -> bool:
        # loadgen prints "LOAD <n>" when the load phase (warmup included)
        # starts and "DONE" when it ends: the server's CPU time in between
        # tells whether it was CPU-bound.
        word = line.split(" ", 1)[0].strip()
        if word in ("LOAD", "DONE"):
            cpu[word] = (cpu_seconds(server.pid), time.monotonic(), cpus_busy())
        if word == "DONE":
            result["server_rss_kb"] = rss_kb(server.pid)
            return True
        return False

    try:
        server.start()
        options = ["--conns", str(conns), "--duration", str(args.duration)]
        options += ["--warmup", str(args.warmup), "--msg-size", str(args.msg_size)]
        timeout = args.duration + args.warmup + 180
        result.update(run_loadgen(args, server.port, options, on_line, timeout))
        if "LOAD" in cpu and "DONE" in cpu:
            (before, t0, busy0), (after, t1, busy1) = cpu["LOAD"], cpu["DONE"]
            if before is not None and after is not None:
                server_cpu = 100 * (after - before) / (t1 - t0)
                result["server_cpu_pct"] = round(server_cpu, 1)
            # How busy each CPU was: CPU 0 well above the server's own
            # share, or CPU 1 above loadgen's, means something else ran.
            result["cpu_busy_pct"] = {
                name: round(100 * (busy1[name] - busy0[name]) / (t1 - t0), 1)
                for name in busy1
            }
        result["server_alive_after"] = server.alive()
    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
        result["failed"] = str(e)
    finally:
        result.update(server.stop())
    return result


def idle_run(kind: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    server = Server(kind, args, workdir)
    result: dict[str, Any] = {"server": kind, "conns": args.idle_conns}
    samples: list[int] = []

    def on_line(line: str) -> bool:
        # loadgen prints "HOLD <n>" once its connections are set up, pinged
        # and idle; it keeps them open for --hold seconds after.
        if not line.startswith("HOLD "):
            return False
        time.sleep(min(1.0, args.hold / 4))  # let the server settle
        end = time.monotonic() + args.hold / 2
        while True:
            rss = rss_kb(server.pid)
            if rss is not None:
                samples.append(rss)
            if time.monotonic() >= end:
                return True
            time.sleep(0.25)

    try:
        server.start()
        result["rss_before_kb"] = rss_kb(server.pid)
        options = ["--idle", "--conns", str(args.idle_conns)]
        options += ["--hold", str(args.hold)]
        result.update(run_loadgen(args, server.port, options, on_line, args.hold + 180))
        result["rss_held_kb"] = max(samples) if samples else None
        result["rss_samples"] = len(samples)
        before, held = result.get("rss_before_kb"), result["rss_held_kb"]
        if before and held and result.get("established"):
            per_conn = (held - before) / result["established"]
            result["kb_per_conn"] = round(per_conn, 2)
        result["server_alive_after"] = server.alive()
    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
        result["failed"] = str(e)
    finally:
        result.update(server.stop())
    return result


# Report.


def ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "-"
    return f"{a / b:.2f}x"


def fmt(value: Any, spec: str = ".1f", suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def print_closed(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    closed = {(r["server"], r["conns"]): r for r in results}
    print(
        f"Closed loop: {args.warmup:g} s warmup + {args.duration:g} s measured; "
        f"send with {args.msg_size}-byte text, every 10th request an inbox; "
        f"users {args.users}; "
        + ("server on CPU 0, loadgen on CPU 1" if args.pin else "not pinned")
    )
    header = (
        f"{'server':<10} {'conns':>6} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} "
        f"{'p99 ms':>8} {'max ms':>8} {'errors':>6} {'lost':>5} {'setup s':>7} "
        f"{'srv cpu':>7} {'lg cpu':>6}"
    )
    print(header)
    print("-" * len(header))
    for conns in args.conns:
        for kind in args.servers:
            r = closed.get((kind, conns))
            if r is None:
                continue
            if "rps" not in r:
                failure = r.get("failed") or r.get("loadgen_failed") or "?"
                print(f"{kind:<10} {conns:>6}  FAILED: {failure[:70]}")
                continue
            lost = r.get("disconnects", 0) + r.get("setup_failures", 0)
            print(
                f"{kind:<10} {conns:>6} {r['rps']:>9.1f} {r['p50_ms']:>8.2f} "
                f"{r['p90_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['max_ms']:>8.1f} "
                f"{r['errors']:>6} {lost:>5} {r['setup_s']:>7.2f} "
                f"{fmt(r.get('server_cpu_pct'), '.0f', '%'):>7} "
                f"{r['lg_cpu_pct']:>5.0f}%"
            )
        ours, base = closed.get(("ours", conns)), closed.get(("baseline", conns))
        if ours and base and "rps" in ours and "rps" in base:
            print(
                f"{'ours/base':<10} {conns:>6} {ratio(ours['rps'], base['rps']):>9} "
                f"{ratio(ours['p50_ms'], base['p50_ms']):>8} "
                f"{ratio(ours['p90_ms'], base['p90_ms']):>8} "
                f"{ratio(ours['p99_ms'], base['p99_ms']):>8}"
            )


def print_idle(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"Idle: {args.idle_conns} connections, authenticated, one ping each, "
        f"then held {args.hold:g} s; server VmRSS before and while held"
    )
    header = (
        f"{'server':<10} {'conns':>6} {'held':>6} {'lost':>5} {'setup s':>7} "
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
            failure = r.get("failed") or r.get("loadgen_failed") or "?"
            print(f"{kind:<10} FAILED: {failure[:70]}")
            continue
        before, held = r.get("rss_before_kb"), r.get("rss_held_kb")
        lost = r.get("disconnects", 0) + r.get("setup_failures", 0)
        print(
            f"{kind:<10} {r['conns']:>6} {r['established']:>6} {lost:>5} "
            f"{r['setup_s']:>7.2f} "
            f"{fmt(before and before / 1024, '.1f', ' MB'):>11} "
            f"{fmt(held and held / 1024, '.1f', ' MB'):>10} "
            f"{fmt(r.get('kb_per_conn'), '.2f'):>8}"
        )
    ours, base = idle.get("ours"), idle.get("baseline")
    if ours and base:
        print(
            f"{'ours/base':<10} {'':>6} {'':>6} {'':>5} {'':>7} "
            f"{ratio(ours.get('rss_before_kb'), base.get('rss_before_kb')):>11} "
            f"{ratio(ours.get('rss_held_kb'), base.get('rss_held_kb')):>10} "
            f"{ratio(ours.get('kb_per_conn'), base.get('kb_per_conn')):>8}"
        )


def interference(r: dict[str, Any]) -> str | None:
    """
    Whether a CPU was much busier than the process pinned to it (the server
    on CPU 0, loadgen on CPU 1): then something else competed with it, and
    the run's figures are too low. Kernel I/O threads take a few % at most.
    """
    busy = r.get("cpu_busy_pct", {})
    for cpu, key, who in (
        ("cpu0", "server_cpu_pct", "the server"),
        ("cpu1", "lg_cpu_pct", "loadgen"),
    ):
        if cpu in busy and r.get(key) is not None and busy[cpu] - r[key] > 20:
            return f"{cpu} was {busy[cpu]:.0f}% busy but {who} used {r[key]:.0f}%"
    return None


def print_interference(results: list[dict[str, Any]]) -> None:
    for r in results:
        why = interference(r)
        if why:
            print(
                f"\n?? {r['server']} with {r['conns']} connections: {why}: "
                "something else ran there, so these figures are too low"
            )


def print_problems(results: list[dict[str, Any]]) -> None:
    keys = ["failed", "loadgen_failed", "crashed", "killed", "errors"]
    keys += ["unexpected", "disconnects", "setup_failures"]
    for r in results:
        if not (r.get("log_problems") or any(r.get(k) for k in keys)):
            continue
        print(f"\n!! {r['server']} with {r['conns']} connections:")
        for key in (*keys, "exit_code"):
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
    add("--warmup", type=float, default=1.0, help="unmeasured s before (%(default)s)")
    add(
        "--idle-conns",
        type=int,
        default=10000,
        help="connections of the idle-memory run; 0 skips it (%(default)s)",
    )
    add("--hold", type=float, default=5.0, help="idle hold in s (%(default)s)")
    add("--servers", default="ours,baseline", help="which servers (%(default)s)")
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
        help="extra option for twistd chat, repeatable (e.g."
        " --chat-arg=--max-connections-per-address=20000: the load comes"
        " from one address, which the default per-address limit of 1000"
        " would cap)",
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
    add("--json", metavar="PATH", help="also write every figure as JSON")
    add("--keep", action="store_true", help="keep the servers' directories and logs")
    args = parser.parse_args(argv)
    args.conns = [int(n) for n in args.conns.split(",") if n.strip()]
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    for s in args.servers:
        if s not in SERVERS:
            parser.error(f"--servers: unknown {s!r} (known: {', '.join(SERVERS)})")
    if args.twistd is None:
        args.twistd = str(Path(args.python).parent / "twistd")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    check = subprocess.run([args.python, "-c", "import twisted"], capture_output=True)
    if check.returncode != 0:
        log(f"{args.python} cannot import twisted; pass --python")
        return 2
    if "ours" in args.servers and not Path(args.twistd).exists():
        log(f"no twistd at {args.twistd}; pass --twistd")
        return 2
    if args.pin and (not shutil.which("taskset") or (os.cpu_count() or 1) < 2):
        log("taskset or a second CPU is missing: running unpinned")
        args.pin = False

    build_loadgen()
    largest = max([*args.conns, args.idle_conns])
    nofile = raise_nofile(largest + 256)
    if nofile < largest + 256:
        log(f"only {nofile} file descriptors allowed; the largest run may fail")
    ports = local_port_count()
    if ports is not None and ports < largest:
        log(f"only {ports} local ports: not enough for {largest} connections")

    results: dict[str, Any] = {
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "nofile": nofile,
        },
        "chat": "",
        "closed": [],
        "idle": [],
    }
    workdir = Path(tempfile.mkdtemp(prefix="chat-bench-"))
    if args.chat_commit:
        args.chat_src = str(workdir / "chat-src")
        commit = export_commit(args.chat_commit, Path(args.chat_src))
        results["chat"] = f"{commit} (exported)"
    else:
        results["chat"] = chat_version(args.chat_src)
    try:
        for kind in args.servers:
            for conns in args.conns:
                log(f"{kind}: {conns} connections, {args.duration:g} s")
                for attempt in range(1 + args.retries):
                    wait_quiet(args.quiet_wait)
                    r = closed_run(kind, conns, args, workdir)
                    r["attempt"] = attempt + 1
                    why = interference(r)
                    if not why or attempt == args.retries:
                        break
                    log(f"  {why}: something else ran; again in 10 s")
                    time.sleep(10)
                results["closed"].append(r)
                if "rps" in r:
                    log(
                        f"  {r['rps']:.1f} req/s, p99 {r['p99_ms']:.2f} ms, "
                        f"{r['errors']} errors, loadgen cpu {r['lg_cpu_pct']:.0f}%"
                    )
                else:
                    log(f"  failed: {r.get('failed') or r.get('loadgen_failed')}")
            if args.idle_conns > 0:
                log(f"{kind}: {args.idle_conns} idle connections, {args.hold:g} s")
                wait_quiet(args.quiet_wait)
                r = idle_run(kind, args, workdir)
                results["idle"].append(r)
                log(f"  {r.get('established')} held, RSS {r.get('rss_held_kb')} kB")
    finally:
        if args.keep:
            log(f"kept the servers' directories in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(f"twistd chat from {args.chat_src} at {results['chat']}")
    print_closed(results["closed"], args)
    if results["idle"]:
        print()
        print_idle(results["idle"], args)
    print_problems(results["closed"] + results["idle"])
    print_interference(results["closed"])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
