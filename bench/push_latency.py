#!/usr/bin/env python3
"""
Push latency: how long a message takes from C{send} on node A to its
C{{"event": "message"}} push on node B.

One subscriber logs in on B (C{--sub-port}), sends C{subscribe <token>},
and acknowledges what it receives (C{ack <token> <id>}, cumulative). Then
C{--senders} connections log in on A (C{--send-port}; the same port as B
measures the push within one node) and send to the subscriber at a fixed
C{--rate}, open loop: each message is written when it is due, whatever the
replies. Each text carries the message's sequence number and the time it
was written (C{time.monotonic_ns}, same process), so the latency of a push
is its arrival time minus that.

The first C{--warmup} seconds of messages must arrive too but are left out
of the percentiles. After the last send, it waits up to C{--drain} seconds
for the pushes still missing. Prints a summary and, as the last line, one
JSON object; exits 0 when it could run the test (whether or not every
message arrived: read C{missing}), 2 when it could not set up.

    python bench/push_latency.py --send-port 8001 --sub-port 8002 --rate 1000
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import epollreactor

epollreactor.install()

from twisted.internet import reactor  # noqa: E402
from twisted.internet.defer import Deferred  # noqa: E402
from twisted.internet.protocol import ClientFactory  # noqa: E402
from twisted.internet.task import LoopingCall  # noqa: E402
from twisted.protocols.basic import LineReceiver  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402

MARK = "pl"  # texts are "pl <seq> <sent_ns>"


def now_ns() -> int:
    return time.monotonic_ns()


class Line(LineReceiver):
    """
    A chat connection: requests in, replies answered in order, events aside.
    """

    delimiter = b"\r\n\r\n"
    MAX_LENGTH = 1 << 20

    def __init__(self) -> None:
        self.waiting: list[Deferred[dict[str, Any]] | None] = []
        self.on_event: Callable[[dict[str, Any], int], None] | None = None
        self.connected_d: Deferred[Line] = Deferred()
        self.lost = False
        self.token = ""
        #: Called with the replies to fire_and_forget requests.
        self.unrequested_reply: Callable[[dict[str, Any]], None] = lambda reply: None

    def connectionMade(self) -> None:
        # No Nagle: a request must leave when written, not when the
        # previous one is acknowledged (loadgen does the same).
        assert self.transport is not None
        self.transport.setTcpNoDelay(True)  # type: ignore[attr-defined]
        self.connected_d.callback(self)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = True
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            if d is not None:
                d.errback(reason)

    def request(self, line: str) -> Deferred[dict[str, Any]]:
        d: Deferred[dict[str, Any]] = Deferred()
        self.waiting.append(d)
        self.sendLine(line.encode())
        return d

    def sendLine(self, line: bytes) -> None:  # requests end in LF, not the delimiter
        assert self.transport is not None
        self.transport.write(line + b"\n")

    def lineReceived(self, line: bytes) -> None:
        at = now_ns()
        reply = json.loads(line)
        if "event" in reply:
            if self.on_event is not None:
                self.on_event(reply, at)
            return
        if not self.waiting:
            raise RuntimeError(f"reply without a request: {line[:200]!r}")
        d = self.waiting.pop(0)
        if d is not None:
            d.callback(reply)
        else:
            self.unrequested_reply(reply)

    def fire_and_forget(self, line: bytes) -> None:
        """
        Send a request whose reply goes to L{unrequested_reply}.
        """
        self.waiting.append(None)
        assert self.transport is not None
        self.transport.write(line)


class Factory(ClientFactory):
    protocol = Line

    def __init__(self) -> None:
        self.made: Deferred[Line] = Deferred()

    def buildProtocol(self, addr: Any) -> Line:
        p = Line()
        p.factory = self
        p.connected_d.chainDeferred(self.made)
        return p

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.made.errback(reason)


def connect(host: str, port: int) -> Deferred[Line]:
    factory = Factory()
    reactor.connectTCP(host, port, factory, timeout=10)
    return factory.made


def percentile(sorted_values: list[float], p: float) -> float | None:
    """
    The nearest-rank p-quantile (0 < p <= 1) of sorted values.
    """
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), int(p * len(sorted_values) + 0.999999)))
    return sorted_values[rank - 1]


class PushLatency:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.senders: list[Line] = []
        self.sub: Line | None = None
        self.sub_token = ""
        self.send_times: list[int] = []  # by sequence number
        self.arrived: dict[int, int] = {}  # seq -> arrival ns
        self.duplicates = 0
        self.foreign = 0  # pushes that are not ours
        self.send_ok = 0
        self.send_errors = 0
        self.error_samples: list[str] = []
        self.acks_sent = 0
        self.ack_errors = 0
        self.max_id = 0
        self.acked_id = 0
        self.unacked = 0
        self.max_lag_ns = 0
        self.t0 = 0
        self.t_end = 0
        self.done: Deferred[None] = Deferred()
        self.notes: list[str] = []

    # Setup.

    async def login(self, port: int, user: str) -> tuple[Line, str]:
        line = await connect(self.args.host, port)
        reply = await line.request(f"auth {user} {self.args.password}")
        if reply.get("status") != "OK":
            raise RuntimeError(f"auth {user} on port {port}: {reply}")
        return line, str(reply["tokenid"])

    async def setup(self) -> None:
        a = self.args
        self.sub, self.sub_token = await self.login(a.sub_port, a.subscriber)
        self.sub.on_event = self.on_event
        self.sub.unrequested_reply = self.on_ack_reply
        reply = await self.sub.request(f"subscribe {self.sub_token}")
        if reply.get("status") != "OK":
            raise RuntimeError(f"subscribe: {reply}")
        users = [u for u in a.senders_from.split(",") if u]
        for i in range(a.senders):
            line, token = await self.login(a.send_port, users[i % len(users)])
            line.unrequested_reply = self.on_send_reply
            line.token = token
            self.senders.append(line)
        # Let the presence events of the senders' logins go by.
        await deferLater(0.2)

    # Sending.

    def start(self) -> None:
        a = self.args
        self.total = int(a.rate * (a.warmup + a.duration))
        self.warm = int(a.rate * a.warmup)
        self.t0 = now_ns()
        self.usage0 = resource.getrusage(resource.RUSAGE_SELF)
        self.ticker = LoopingCall(self.tick)
        self.ticker.start(a.tick, now=True)
        self.acker = LoopingCall(self.ack)
        self.acker.start(a.ack_interval, now=False)
        print("LOAD", flush=True)

    def tick(self) -> None:
        a = self.args
        now = now_ns()
        due = min(self.total, int((now - self.t0) * a.rate / 1e9) + 1)
        seq = len(self.send_times)
        if seq < due:
            lag = now - (self.t0 + int(seq * 1e9 / a.rate))
            self.max_lag_ns = max(self.max_lag_ns, lag)
        while seq < due:
            line = self.senders[seq % len(self.senders)]
            sent = now_ns()
            self.send_times.append(sent)
            line.fire_and_forget(
                f"send {line.token} {a.subscriber} {MARK} {seq} {sent}\n".encode()
            )
            seq += 1
        if seq >= self.total:
            self.ticker.stop()
            self.t_end = now_ns()
            print("DONE", flush=True)
            reactor.callLater(a.drain, self.finish)
            self.check_done()

    def on_send_reply(self, reply: dict[str, Any]) -> None:
        if reply.get("status") == "OK":
            self.send_ok += 1
        else:
            self.send_errors += 1
            if len(self.error_samples) < 5:
                self.error_samples.append(json.dumps(reply)[:200])
        self.check_done()

    # Receiving.

    def on_event(self, event: dict[str, Any], at: int) -> None:
        if event.get("event") != "message":
            return
        self.max_id = max(self.max_id, int(event.get("id", 0)))
        self.unacked += 1
        words = str(event.get("msg", "")).split()
        if len(words) != 3 or words[0] != MARK:
            self.foreign += 1
        else:
            seq = int(words[1])
            if seq in self.arrived:
                self.duplicates += 1
            else:
                self.arrived[seq] = at
        if self.unacked >= self.args.ack_after:
            self.ack()
        self.check_done()

    def ack(self) -> None:
        if self.sub is None or self.max_id <= self.acked_id or self.sub.lost:
            return
        self.acked_id = self.max_id
        self.unacked = 0
        self.acks_sent += 1
        self.sub.fire_and_forget(f"ack {self.sub_token} {self.max_id}\n".encode())

    def on_ack_reply(self, reply: dict[str, Any]) -> None:
        if reply.get("status") != "OK":
            self.ack_errors += 1
            if len(self.error_samples) < 5:
                self.error_samples.append("ack: " + json.dumps(reply)[:200])

    def check_done(self) -> None:
        replies = self.send_ok + self.send_errors
        if (
            self.t_end
            and replies >= len(self.send_times)
            and len(self.arrived) >= self.send_ok
        ):
            self.finish()

    def finish(self) -> None:
        if not self.done.called:
            self.ack()
            self.done.callback(None)

    # Report.

    def result(self) -> dict[str, Any]:
        a = self.args
        usage = resource.getrusage(resource.RUSAGE_SELF)
        wall = (now_ns() - self.t0) / 1e9
        cpu = (usage.ru_utime + usage.ru_stime) - (
            self.usage0.ru_utime + self.usage0.ru_stime
        )
        latencies = sorted(
            (self.arrived[s] - self.send_times[s]) / 1e6
            for s in self.arrived
            if s >= self.warm
        )
        sent = len(self.send_times)
        send_span = (self.t_end - self.t0) / 1e9 if self.t_end else None
        r: dict[str, Any] = {
            "mode": "push",
            "same_node": a.send_port == a.sub_port,
            "rate": a.rate,
            "senders": a.senders,
            "duration_s": a.duration,
            "warmup_s": a.warmup,
            "sent": sent,
            "send_ok": self.send_ok,
            "send_errors": self.send_errors,
            "send_replies_missing": sent - self.send_ok - self.send_errors,
            "received": len(self.arrived),
            # Sends refused with an error are not expected to arrive.
            "missing": max(0, sent - self.send_errors - len(self.arrived)),
            "duplicates": self.duplicates,
            "foreign": self.foreign,
            "measured": len(latencies),
            "acks": self.acks_sent,
            "ack_errors": self.ack_errors,
            "achieved_rate": round(sent / send_span, 1) if send_span else None,
            "max_send_lag_ms": round(self.max_lag_ns / 1e6, 3),
            "tool_cpu_pct": round(100 * cpu / wall, 1) if wall > 0 else None,
            "error_samples": self.error_samples,
        }
        for name, p in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)):
            v = percentile(latencies, p)
            r[f"{name}_ms"] = None if v is None else round(v, 3)
        # Whether latency drifts during the run: p50 and p99 of the messages
        # sent in each second (warmup included).
        by_second: dict[int, list[float]] = {}
        for s, arrived in self.arrived.items():
            second = (self.send_times[s] - self.t0) // 1_000_000_000
            by_second.setdefault(second, []).append(
                (arrived - self.send_times[s]) / 1e6
            )
        r["by_second"] = [
            [
                second,
                len(values),
                round(percentile(sorted(values), 0.5) or 0, 2),
                round(percentile(sorted(values), 0.99) or 0, 2),
            ]
            for second, values in sorted(by_second.items())
        ]
        return r


def deferLater(seconds: float) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    add = parser.add_argument
    add("--host", default="127.0.0.1")
    add("--send-port", type=int, required=True, help="node A: the senders' port")
    add("--sub-port", type=int, required=True, help="node B: the subscriber's port")
    add("--rate", type=float, default=1000.0, help="messages/s (%(default)s)")
    add("--duration", type=float, default=10.0, help="measured s (%(default)s)")
    add("--warmup", type=float, default=1.0, help="unmeasured s before (%(default)s)")
    add("--drain", type=float, default=5.0, help="most s to wait after (%(default)s)")
    add(
        "--senders",
        type=int,
        default=8,
        help="sending connections, each at rate/senders (%(default)s)",
    )
    add("--from", dest="senders_from", default="messi,lineker", help="sending users")
    add("--subscriber", default="henderson", help="the receiving user")
    add("--password", default="surabaya")
    add("--tick", type=float, default=0.001, help="send timer period, s")
    add(
        "--ack-interval",
        type=float,
        default=0.01,
        help="acknowledge what arrived at least this often, s (%(default)s)",
    )
    add(
        "--ack-after",
        type=int,
        default=25,
        help="or as soon as this many pushes are unacknowledged (%(default)s; "
        "the server's --push-window is 100 by default)",
    )
    add("--quiet", action="store_true", help="only the JSON line")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    test = PushLatency(args)
    outcome: dict[str, Any] = {}

    async def run() -> None:
        try:
            await test.setup()
        except Exception as e:  # any setup failure is reported
            outcome["setup_failed"] = f"{type(e).__name__}: {e}"
            return
        test.start()
        await test.done

    def stop(result: object) -> None:
        if isinstance(result, Failure):
            outcome["failed"] = result.getErrorMessage()
        reactor.stop()

    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(run()).addBoth(stop))
    reactor.run()
    if "setup_failed" in outcome:
        print(json.dumps({"mode": "push", **outcome}))
        return 2
    r = {**test.result(), **outcome}
    if not args.quiet:
        where = "same node" if r["same_node"] else "cross node"
        print(
            f"push latency ({where}): {r['sent']} sent at {args.rate:g}/s "
            f"(achieved {r['achieved_rate']}/s, max send lag "
            f"{r['max_send_lag_ms']} ms) over {args.senders} connections; "
            f"{r['send_errors']} send errors"
        )
        print(
            f"received {r['received']} of {r['sent']} ({r['missing']} missing, "
            f"{r['duplicates']} duplicates); {r['acks']} acks"
        )
        print(
            f"latency ms (after {args.warmup:g} s warmup, {r['measured']} pushes): "
            f"p50 {r['p50_ms']}  p90 {r['p90_ms']}  p99 {r['p99_ms']}  "
            f"max {r['max_ms']}; tool cpu {r['tool_cpu_pct']}%"
        )
        print(
            "by second sent (pushes, p50, p99 ms): "
            + "  ".join(
                f"{s}: {n}, {p50:g}, {p99:g}" for s, n, p50, p99 in r["by_second"]
            )
        )
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
