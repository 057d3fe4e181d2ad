"""
Cross-node push latency: two C{twistd chat} nodes on one PostgreSQL, a
subscriber on node B, a sender on node A. Each message is sent alone (the
next only once the previous one was pushed), so this is latency without
queueing.

For each message it measures, with one monotonic clock:

 - send -> push: from writing C{send} to A until B's subscriber has read
   the pushed message (A's commit, the NOTIFY, B reading the row, the push);
 - ack -> push: from reading A's "Message Sent" (the commit is done) until
   the push is read on B, i.e. what the cluster adds.

Run from the repository root with a Python that has chat's dependencies::

    python bench/cluster_latency.py --messages 1000

Without C{--store} it starts a throwaway PostgreSQL (the tests' helper;
Debian's postgresql binaries needed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.postgres import ThrowawayPostgres, find_bindir
from tests.twistd_helpers import LineClient, TwistdChat


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summary(name: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (
        f"{name:<14} p50 {percentile(ms, 0.50):7.2f} ms"
        f"   p90 {percentile(ms, 0.90):7.2f} ms"
        f"   p99 {percentile(ms, 0.99):7.2f} ms"
        f"   max {max(ms):7.2f} ms"
        f"   mean {statistics.fmean(ms):7.2f} ms"
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--store", help="postgresql://... (default: throwaway)")
    parser.add_argument(
        "--ack-every",
        type=int,
        default=1,
        help="acknowledge every N pushes (at most the push window, 100)",
    )
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="chat-cluster-bench-"))
    server: ThrowawayPostgres | None = None
    nodes: list[TwistdChat] = []
    try:
        url = args.store
        if url is None:
            bindir = find_bindir()
            if bindir is None:
                raise SystemExit("PostgreSQL binaries not found; give --store")
            # Its own folder: as root, initdb runs as postgres, which must
            # reach it.
            server = ThrowawayPostgres(bindir, tempfile.mkdtemp(prefix="chat-pg-"))
            server.init()
            server.start()
            url = server.create_database("chat_bench")
        for name in ("a", "b"):
            workdir = root / name
            workdir.mkdir()
            node = TwistdChat(workdir, "--demo", "--store", url, "--node-id", name)
            nodes.append(node)
            node.start()
            node.wait_ready()
        a, b = nodes
        sender = LineClient(a.port)
        token = sender.login("messi")
        subscriber = LineClient(b.port)
        other = subscriber.login("henderson")
        assert subscriber.request(f"subscribe {other}")["status"] == "OK"
        send_to_push: list[float] = []
        ack_to_push: list[float] = []
        for i in range(args.warmup + args.messages):
            started = time.perf_counter()
            sender.write(f"send {token} henderson m{i}")
            reply = sender.read()
            acked = time.perf_counter()
            assert reply["status"] == "OK", reply
            event = subscriber.read()
            while event.get("event") == "presence":
                event = subscriber.read()
            pushed = time.perf_counter()
            assert event.get("event") == "message" and event["msg"] == f"m{i}", event
            if (i + 1) % args.ack_every == 0:
                subscriber.write(f"ack {other} {event['id']}")
                while "status" not in (ack := subscriber.read()):
                    pass
                assert ack["status"] == "OK", ack
            if i >= args.warmup:
                send_to_push.append(pushed - started)
                ack_to_push.append(pushed - acked)
        print(
            f"{args.messages} messages, node A -> subscriber on node B"
            f" ({args.warmup} warm-up messages not counted), {os.cpu_count()} CPUs"
        )
        print(summary("send -> push", send_to_push))
        print(summary("ack -> push", ack_to_push))
        return 0
    finally:
        for node in nodes:
            node.kill()
        if server is not None:
            if server.is_running():
                server.stop("fast")
            shutil.rmtree(server.directory, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
