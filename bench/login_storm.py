#!/usr/bin/env python3
"""
Login storm: a whole class logs in at once (issue 14).

C{--conns} connections from this machine (one address) are opened and each
answers a C{ping}; then every one of them writes C{auth <user> <password>}
at once (users taken round-robin from C{--users}), and each waits for its
reply. Meanwhile one user logged in before the storm (the first of
C{--users}) sends a message to the second every C{--interval} seconds,
open loop (each send written when due, whatever the replies), and the time
from writing each send to reading its reply is recorded; so is the time of
a C{ping} sent as often on another connection (the reactor's share of a
send's time: a send also waits for its commit). With C{--conns 0}, the
same for C{--calm} seconds without a storm, for comparison.

Reports the logins that succeeded, the time from the first C{auth} written
to the last successful reply and the logins per second over it, the errors
by kind (the reply's C{code}, or C{closed} for a connection closed without
a reply, C{timeout} for none within C{--timeout}), and percentiles of the
sends written during the storm. Prints C{LOAD} when the storm starts and
C{DONE} when it is over (for C{run.py}'s CPU readings), a summary on
standard error and, as the last line, one JSON object. Standard library
only (asyncio); exits 2 when it could not set up.

    python bench/login_storm.py --port 8889 --conns 1000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from collections import Counter, deque
from typing import Any

DELIMITER = b"\r\n\r\n"


def log(message: str) -> None:
    print(f"login_storm: {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


async def read_reply(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """
    The next reply, or None if the connection closed first.
    """
    try:
        data = await reader.readuntil(DELIMITER)
    except asyncio.IncompleteReadError:
        return None
    reply: dict[str, Any] = json.loads(data[: -len(DELIMITER)])
    return reply


async def request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: str
) -> dict[str, Any] | None:
    writer.write(line.encode() + b"\n")
    return await read_reply(reader)


async def connect(
    host: str, port: int, opened: asyncio.Semaphore
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    async with opened:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        reply = await request(reader, writer, "ping storm")
        if reply is None or reply.get("message") != "PONG":
            raise ConnectionError(f"no PONG: {reply}")
        return reader, writer


class Sender:
    """
    The logged-in user: one send every C{interval} seconds, open loop;
    replies are matched to sends in order.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        token: str,
        recipient: str,
        interval: float,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.token = token
        self.recipient = recipient
        self.interval = interval
        self.written: deque[float] = deque()
        #: (written at, seconds to the reply, error code or None)
        self.samples: list[tuple[float, float, str | None]] = []
        self.stopping = False
        self.closed = False

    def line(self, sequence: int) -> str:
        return f"send {self.token} {self.recipient} storm {sequence}\n"

    async def send_loop(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        sequence = 0
        while not self.stopping:
            sequence += 1
            line = self.line(sequence)
            self.written.append(time.monotonic())
            self.writer.write(line.encode())
            due += self.interval
            await asyncio.sleep(max(0.0, due - loop.time()))

    async def read_loop(self) -> None:
        while True:
            reply = await read_reply(self.reader)
            if reply is None:
                self.closed = True
                return
            now = time.monotonic()
            written = self.written.popleft()
            error = None if reply.get("status") == "OK" else reply.get("code", "?")
            self.samples.append((written, now - written, error))
            if self.stopping and not self.written:
                return


class Pinger(Sender):
    """
    Another connection of the same user sending C{ping} as often: what the
    reactor alone takes (a send also waits for its commit).
    """

    def line(self, sequence: int) -> str:
        return f"ping {sequence}\n"


def latency_figures(
    prefix: str, sender: Sender, started: float, ended: float
) -> dict[str, Any]:
    """
    Percentiles of C{sender}'s requests written between C{started} and
    C{ended}, and when the slowest were written.
    """
    during = [s for s in sender.samples if started <= s[0] <= ended]
    latencies = [1000 * seconds for _, seconds, error in during if error is None]
    figures: dict[str, Any] = {
        f"{prefix}s": len(during),
        f"{prefix}_errors": dict(Counter(e for _, _, e in during if e is not None)),
        f"{prefix}_closed": sender.closed,
        f"{prefix}s_unanswered": len(sender.written),
    }
    for name, fraction in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        value = percentile(latencies, fraction)
        figures[f"{prefix}_{name}_ms"] = None if value is None else round(value, 2)
    figures[f"{prefix}_max_ms"] = round(max(latencies), 2) if latencies else None
    # When the slowest were written (seconds into the storm), and ms.
    slowest = sorted(during, key=lambda s: -s[1])[:10]
    figures[f"{prefix}_slowest"] = [
        (round(at - started, 3), round(1000 * seconds, 1)) for at, seconds, _ in slowest
    ]
    return figures


async def storm(args: argparse.Namespace) -> dict[str, Any]:
    users = [u.strip() for u in args.users.split(",") if u.strip()]
    host, port = args.host, args.port
    result: dict[str, Any] = {"conns": args.conns, "users": users}

    # The logged-in user, before the storm.
    reader, writer = await asyncio.open_connection(host, port)
    reply = await request(reader, writer, f"auth {users[0]} {args.password}")
    if reply is None or reply.get("status") != "OK":
        raise ConnectionError(f"the sending user could not log in: {reply}")
    recipient = users[1 % len(users)]
    sender = Sender(reader, writer, reply["tokenid"], recipient, args.interval)
    ping_reader, ping_writer = await asyncio.open_connection(host, port)
    # Logged in too, or the login deadline would close it.
    reply = await request(ping_reader, ping_writer, f"auth {users[0]} {args.password}")
    if reply is None or reply.get("status") != "OK":
        raise ConnectionError(f"the pinging user could not log in: {reply}")
    pinger = Pinger(ping_reader, ping_writer, "", "", args.interval)

    started = time.monotonic()
    opened = asyncio.Semaphore(args.connect_concurrency)
    connections = await asyncio.gather(
        *(connect(host, port, opened) for _ in range(args.conns))
    )
    result["setup_s"] = round(time.monotonic() - started, 3)
    log(f"{args.conns} connections open and pinged in {result['setup_s']} s")

    loops = [sender, pinger]
    reading = [asyncio.create_task(one.read_loop()) for one in loops]
    sending = [asyncio.create_task(one.send_loop()) for one in loops]
    await asyncio.sleep(args.interval * 4)  # a few sends before the storm

    outcomes: list[tuple[str, float]] = []

    async def answer(reader: asyncio.StreamReader) -> None:
        try:
            reply = await asyncio.wait_for(read_reply(reader), args.timeout)
        except asyncio.TimeoutError:
            outcomes.append(("timeout", time.monotonic()))
            return
        if reply is None:
            outcomes.append(("closed", time.monotonic()))
        elif reply.get("status") == "OK":
            outcomes.append(("ok", time.monotonic()))
        else:
            outcomes.append((str(reply.get("code", "?")), time.monotonic()))

    print("LOAD", flush=True)
    storm_started = time.monotonic()
    cpu_before = time.process_time()
    for i, (_, conn_writer) in enumerate(connections):
        user = users[i % len(users)]
        conn_writer.write(f"auth {user} {args.password}\n".encode())
    await asyncio.gather(*(answer(conn_reader) for conn_reader, _ in connections))
    if not connections:
        # No storm: the user's sends on a calm server, for comparison.
        await asyncio.sleep(args.calm)
    storm_ended = time.monotonic()
    tool_cpu = time.process_time() - cpu_before
    print("DONE", flush=True)

    for one, send_task, read_task in zip(loops, sending, reading, strict=True):
        one.stopping = True
        await send_task
        if one.written:
            try:
                await asyncio.wait_for(read_task, 30)
            except asyncio.TimeoutError:
                log("the last replies to the user or pings did not come in 30 s")
        else:
            read_task.cancel()
    for _, conn_writer in connections:
        conn_writer.close()
    writer.close()
    ping_writer.close()

    kinds = Counter(kind for kind, _ in outcomes)
    ok_times = [t for kind, t in outcomes if kind == "ok"]
    result["ok"] = kinds.pop("ok", 0)
    result["errors"] = dict(kinds)
    result["storm_s"] = round(storm_ended - storm_started, 3)
    result["tool_cpu_pct"] = round(100 * tool_cpu / max(result["storm_s"], 1e-3), 1)
    if ok_times:
        last_ok = max(ok_times) - storm_started
        result["last_login_s"] = round(last_ok, 3)
        result["logins_per_s"] = round(result["ok"] / last_ok, 2)
        result["first_login_ms"] = round(1000 * (min(ok_times) - storm_started), 1)
    result.update(latency_figures("send", sender, storm_started, storm_ended))
    result.update(latency_figures("ping", pinger, storm_started, storm_ended))
    return result


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--host", default="127.0.0.1")
    add("--port", type=int, required=True)
    add(
        "--conns",
        type=int,
        default=1000,
        help="logins at once; 0 measures the user's sends on a calm server "
        "(%(default)s)",
    )
    add("--users", default="messi,henderson,lineker", help="round-robin users")
    add("--password", default="surabaya")
    add(
        "--interval",
        type=float,
        default=0.05,
        help="seconds between the logged-in user's sends (%(default)s)",
    )
    add(
        "--timeout",
        type=float,
        default=600.0,
        help="most seconds to wait for each login's reply (%(default)s)",
    )
    add(
        "--calm",
        type=float,
        default=20.0,
        help="with --conns 0: seconds to measure the user's sends without a "
        "storm (%(default)s)",
    )
    add(
        "--connect-concurrency",
        type=int,
        default=100,
        help="connections being opened at once during setup (%(default)s)",
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.conns + 64
    if soft < need:
        soft = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        result = asyncio.run(storm(args))
    except (OSError, ConnectionError) as e:
        log(f"could not set up: {e}")
        return 2
    log(
        f"{result['ok']} of {args.conns} logged in, the last after "
        f"{result.get('last_login_s')} s ({result.get('logins_per_s')}/s); "
        f"errors {result['errors']}; the user's sends: p99 "
        f"{result['send_p99_ms']} ms of {result['sends']}, errors "
        f"{result['send_errors']}; pings: p99 {result['ping_p99_ms']} ms"
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
