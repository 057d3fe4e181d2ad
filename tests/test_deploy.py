"""
C{deploy/}: HAProxy accepts C{deploy/haproxy.cfg}; two real C{twistd chat}
nodes on one throwaway PostgreSQL database behind a real HAProxy running a
copy of that file, where a client whose node is killed (or hangs)
reconnects through HAProxy and carries on with the same token; and
C{deploy/local-cluster}, which starts all that in one command and stops it
all on SIGTERM.

Without HAProxy installed these tests are skipped, with the reason, except
under C{CI=true}, where they fail (as for PostgreSQL, in L{tests.postgres}).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from tests.postgres import NEEDED as POSTGRES_NEEDED
from tests.postgres import find_bindir, free_port, seed_demo_users
from tests.twistd_helpers import REPO, LineClient, TwistdChat
from tests.waiting import wait_until

#: These tests start processes (see tests/conftest.py).
pytestmark = pytest.mark.slow

DEPLOY = REPO / "deploy"
CONFIG = DEPLOY / "haproxy.cfg"
LOCAL_CLUSTER = DEPLOY / "local-cluster"
HAPROXY_NEEDED = "HAProxy (Debian package haproxy) is not installed"


def _required(missing: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(missing + ", and CI=true requires it")
    pytest.skip(missing)


@pytest.fixture(scope="session")
def haproxy() -> str:
    """
    The HAProxy binary.
    """
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
    if found is None:
        _required(HAPROXY_NEEDED)
    assert found is not None
    return found


def free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


#: What the nodes behind HAProxy need first from 127.0.0.1, the address
#: they trust as HAProxy's (deploy/haproxy.cfg sends PROXY headers): a
#: header, here one that names no client.
NO_CLIENT = b"PROXY UNKNOWN\r\n"


def answers(port: int, header: bytes = b"") -> bool:
    """
    Whether a chat server (or HAProxy in front of one) answers a ping, sent
    after C{header}.
    """
    try:
        client = LineClient(port, timeout=2)
    except OSError:
        return False
    try:
        client.sock.sendall(header)
        return client.request("ping up").get("echo") == "up"
    except (OSError, ValueError):
        return False
    finally:
        client.close()


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def local_config(
    directory: Path, port: int, node_ports: tuple[int, int], maxconn: int = 1000
) -> Path:
    """
    A copy of C{deploy/haproxy.cfg} that runs unprivileged on loopback: the
    same rewriting as C{deploy/local-cluster} does with sed (other ports, the
    stats socket in C{directory}, logs to standard error, fewer connections,
    no user, group or chroot), each change checked to have happened.
    """
    text = CONFIG.read_text()
    node1, node2 = node_ports
    socket_path = directory / "haproxy.sock"
    for pattern, replacement in [
        (r"^(\s*bind)\s+\S*:8889\b.*$", rf"\1 127.0.0.1:{port}"),
        (r"^(\s*server node1)\s+\S+", rf"\1 127.0.0.1:{node1}"),
        (r"^(\s*server node2)\s+\S+", rf"\1 127.0.0.1:{node2}"),
        (r"^(\s*stats socket)\s+\S+", rf"\1 {socket_path}"),
        (r"^(\s*log)\s+/dev/log\b.*$", r"\1 stderr format short local0"),
        (r"^(\s*maxconn)\s+\d+", rf"\1 {maxconn}"),
        (r"^\s*(user|group|chroot)\s.*\n", ""),
    ]:
        text, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
        assert count, f"deploy/haproxy.cfg has no line matching {pattern!r}"
    config = directory / "haproxy.cfg"
    config.write_text(text)
    return config


class HAProxy:
    """
    HAProxy in the foreground, in a subprocess, with a stats socket.
    """

    def __init__(self, binary: str, config: Path, port: int) -> None:
        self.binary = binary
        self.config = config
        self.port = port
        self.socket = config.parent / "haproxy.sock"
        self.log = config.parent / "haproxy.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        check = subprocess.run(
            [self.binary, "-c", "-q", "-f", str(self.config)],
            capture_output=True,
            text=True,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [self.binary, "-db", "-f", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(lambda: answers(self.port), what="HAProxy passes a ping on")

    def servers(self) -> dict[str, dict[str, str]]:
        """
        C{show stat} for the chat nodes: server name to its row (C{scur},
        the connections it has now; C{status}, UP or DOWN ...).
        """
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.socket))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        header, *rows = data.decode().strip().splitlines()
        names = header.lstrip("# ").split(",")
        table = [dict(zip(names, row.split(","), strict=False)) for row in rows]
        return {
            row["svname"]: row
            for row in table
            if row["pxname"] == "chat_nodes" and row["svname"] != "BACKEND"
        }

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@attrs.define
class Cluster:
    nodes: dict[str, TwistdChat]
    proxy: HAProxy

    def node_of_only_client(self) -> str:
        """
        The name (node1, node2) of the node with the one client connection.
        """
        found: list[str] = []

        def one() -> bool:
            servers = self.proxy.servers()
            found[:] = [name for name, row in servers.items() if row["scur"] == "1"]
            total = sum(int(row["scur"]) for row in servers.values())
            return len(found) == 1 and total == 1

        wait_until(one, what="exactly one connection through HAProxy")
        return found[0]

    def down(self, name: str) -> bool:
        return self.proxy.servers()[name]["status"].startswith("DOWN")


@pytest.fixture
def cluster(haproxy: str, postgres_url: str, tmp_path: Path) -> Iterator[Cluster]:
    """
    Two C{twistd chat} nodes on one new PostgreSQL database (with the demo
    users, made beforehand with cheap hashes), and HAProxy in front of
    them.
    """
    nodes: dict[str, TwistdChat] = {}
    proxy: HAProxy | None = None
    seed_demo_users(postgres_url)
    try:
        for name in ("node1", "node2"):
            workdir = tmp_path / name
            workdir.mkdir()
            arguments = ["--store", postgres_url, "--realm-id", "cluster-test"]
            arguments += ["--trusted-proxy", "127.0.0.1"]
            if name == "node1":
                arguments.append("--demo")
            node = nodes[name] = TwistdChat(workdir, *arguments)
            node_port = node.start()
            wait_until(
                lambda p=node_port: answers(p, NO_CLIENT),  # type: ignore[misc]
                what=f"{name} answers",
            )
        port = free_port()
        ports = (nodes["node1"].port, nodes["node2"].port)
        config = local_config(tmp_path, port, ports)
        proxy = HAProxy(haproxy, config, port)
        proxy.start()
        wait_until(
            lambda: all(r["status"] == "UP" for r in proxy.servers().values()),
            what="both nodes UP in HAProxy",
        )
        yield Cluster(nodes, proxy)
    finally:
        if proxy is not None:
            proxy.stop()
        for node in nodes.values():
            if node.process is not None and node.process.poll() is None:
                os.kill(node.pid, signal.SIGCONT)
            node.kill()


def inbox_texts(port: int, username: str) -> list[str]:
    client = LineClient(port)
    try:
        token = client.login(username)
        reply = client.request(f"inbox {token}")
    finally:
        client.close()
    assert reply["status"] == "OK", reply
    return [m["msg"] for messages in reply["messages"].values() for m in messages]


def test_haproxy_accepts_the_config(haproxy: str) -> None:
    """haproxy -c accepts deploy/haproxy.cfg as shipped."""
    result = subprocess.run(
        [haproxy, "-c", "-f", str(CONFIG)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """
    systemd-analyze verify finds nothing to say about deploy/chat@.service
    (an unknown or misplaced key is only a warning, so its output must be
    empty). The twistd it names is replaced by one that exists.
    """
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze (Debian package systemd) is not installed")
    unit = (DEPLOY / "chat@.service").read_text()
    assert "/opt/chat/venv/bin/twistd " in unit
    instance = tmp_path / "chat@1.service"
    instance.write_text(
        unit.replace("/opt/chat/venv/bin/twistd ", f"{sys.executable} ")
    )
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(instance)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


def test_client_survives_its_node_killed(cluster: Cluster) -> None:
    """
    A client logs in and sends through HAProxy; its node is killed with
    SIGKILL; HAProxy closes the client's connection at once; the client
    connects again, lands on the other node, and goes on with the token it
    got from the dead one; nothing it was told was sent is lost.
    """
    port = cluster.proxy.port
    client = LineClient(port, timeout=10)
    token = client.login("messi")
    assert client.request(f"send {token} henderson before the crash")["status"] == "OK"
    victim = cluster.node_of_only_client()
    (survivor,) = set(cluster.nodes) - {victim}

    os.kill(cluster.nodes[victim].pid, signal.SIGKILL)
    cluster.nodes[victim].process.wait(timeout=10)  # type: ignore[union-attr]
    # Closed (rather than left to the client's 10 s timeout, which would
    # raise TimeoutError).
    with pytest.raises(ConnectionError):
        client.request("ping")
    client.close()

    # At once, before HAProxy's checks mark the node down: a connection it
    # sends to the dead node is refused and redispatched to the other one.
    client = LineClient(port, timeout=10)
    reply = client.request(f"send {token} henderson after the crash")
    assert reply == {"status": "OK", "message": "Message Sent"}
    assert cluster.node_of_only_client() == survivor
    client.close()

    assert inbox_texts(port, "henderson") == ["before the crash", "after the crash"]
    wait_until(lambda: cluster.down(victim), what=f"HAProxy marks {victim} down")


def test_clients_of_a_hung_node_move(cluster: Cluster) -> None:
    """
    A node that hangs (SIGSTOP: its connections stay open) fails HAProxy's
    ping checks; HAProxy marks it down and closes its clients' connections
    (on-marked-down shutdown-sessions), and they carry on on the other
    node.
    """
    port = cluster.proxy.port
    client = LineClient(port, timeout=30)
    token = client.login("lineker")
    victim = cluster.node_of_only_client()
    (survivor,) = set(cluster.nodes) - {victim}

    os.kill(cluster.nodes[victim].pid, signal.SIGSTOP)
    # Checks every 2 s (1 s once one failed), 3 s to answer, 2 failures;
    # then HAProxy closes the connection (the client's 30 s timeout is the
    # deadline: it would raise TimeoutError).
    replies, _ = client.read_until_closed()
    assert replies == []
    assert cluster.down(victim)
    client.close()

    client = LineClient(port, timeout=10)
    reply = client.request(f"send {token} messi still here")
    assert reply == {"status": "OK", "message": "Message Sent"}
    assert cluster.node_of_only_client() == survivor
    client.close()
    assert inbox_texts(port, "messi") == ["still here"]


def test_nodes_see_the_clients_addresses(haproxy: str, tmp_path: Path) -> None:
    """
    Through HAProxy (send-proxy-v2), a node trusting HAProxy's address
    admits, limits and logs each client by its own address: with two
    connections per address, a third from 127.0.0.2 is refused while one
    from 127.0.0.3 is served; HAProxy's health checks still pass.
    """
    node = TwistdChat(
        tmp_path,
        "--demo",
        "--trusted-proxy",
        "127.0.0.1",
        "--max-connections-per-address",
        "2",
    )
    proxy: HAProxy | None = None
    clients: list[LineClient] = []
    try:
        node_port = node.start()
        wait_until(lambda: answers(node_port, NO_CLIENT), what="the node answers")
        port = free_port()
        config = local_config(tmp_path, port, (node_port, node_port))
        proxy = HAProxy(haproxy, config, port)
        proxy.start()
        servers = proxy.servers
        wait_until(
            lambda: all(r["status"] == "UP" for r in servers().values()),
            what="the node UP in HAProxy (health checks with PROXY headers)",
        )
        for _ in range(2):
            client = LineClient(port, source="127.0.0.2", timeout=10)
            clients.append(client)
            client.login("messi")  # logged in: no room made by closing it
        third = LineClient(port, source="127.0.0.2", timeout=10)
        clients.append(third)
        assert third.request("ping") == {
            "status": "ERROR",
            "message": "too many connections from your address",
            "code": "too_many_connections",
        }
        other = LineClient(port, source="127.0.0.3", timeout=10)
        clients.append(other)
        assert other.request("ping")["message"] == "PONG"
        log = node.log_text()
        assert "Connection from 127.0.0.2:" in log
        assert "Connection from 127.0.0.3:" in log
        assert "Refused connection from 127.0.0.2:" in log
        assert all(r["status"] == "UP" for r in servers().values())
    finally:
        for client in clients:
            client.close()
        if proxy is not None:
            proxy.stop()
        node.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone but for its exit status.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def test_local_cluster_starts_and_stops(haproxy: str) -> None:
    """
    deploy/local-cluster starts PostgreSQL, two nodes and HAProxy on the
    ports it is given; a client logs in and sends through HAProxy; SIGTERM
    stops all of them.
    """
    if find_bindir() is None:
        _required(POSTGRES_NEEDED)
    twistd = Path(sys.executable).with_name("twistd")
    if not twistd.exists():
        pytest.skip(f"no twistd beside {sys.executable}")
    port, node1, node2, pg_port = free_ports(4)
    # Not under pytest's tmp_path: as root, PostgreSQL runs as postgres,
    # which cannot enter /tmp/pytest-of-root.
    directory = Path(tempfile.mkdtemp(prefix="chat-local-cluster-"))
    output: list[str] = []
    process = subprocess.Popen(
        [
            str(LOCAL_CLUSTER),
            "--dir",
            str(directory),
            "--port",
            str(port),
            "--node-ports",
            f"{node1},{node2}",
            "--pg-port",
            str(pg_port),
            "--demo",
            "--twistd",
            str(twistd),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    stdout = process.stdout
    assert stdout is not None
    reader = threading.Thread(target=lambda: output.extend(stdout), daemon=True)
    reader.start()
    try:
        wait_until(
            lambda: (
                any("Chat cluster running" in line for line in output)
                or process.poll() is not None
            ),
            120,
            what="local-cluster says the cluster runs",
        )
        assert process.poll() is None, "".join(output)

        client = LineClient(port, timeout=10)
        token = client.login("messi")
        assert client.request(f"send {token} henderson hello")["status"] == "OK"
        client.close()
        assert inbox_texts(port, "henderson") == ["hello"]

        text = "".join(output)
        match = re.search(r"HAProxy, pid (\d+)", text)
        assert match, text
        pids = {
            "HAProxy": int(match.group(1)),
            "node 1": int((directory / "node1" / "twistd.pid").read_text()),
            "node 2": int((directory / "node2" / "twistd.pid").read_text()),
            "PostgreSQL": int(
                (directory / "pg" / "data" / "postmaster.pid").read_text().split()[0]
            ),
        }
        assert all(_alive(pid) for pid in pids.values()), pids

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 128 + signal.SIGTERM, "".join(output)
        reader.join(timeout=5)
        still = [name for name, pid in pids.items() if _alive(pid)]
        assert still == [], "".join(output)
        assert not any(listening(p) for p in (port, node1, node2, pg_port))
        # --dir is kept; PostgreSQL was shut down cleanly.
        assert (directory / "pg" / "data" / "PG_VERSION").exists()
        assert not (directory / "pg" / "data" / "postmaster.pid").exists()
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=60)
        shutil.rmtree(directory, ignore_errors=True)
