"""
TLS: C{--listen ssl:...} serves the same protocol, with a throwaway
self-signed certificate made for the test.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.twistd_helpers import LineClient, TwistdChat, make_certificate

#: These tests start processes (see tests/conftest.py).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[TwistdChat, Path]]:
    """
    One TLS server for the module's tests (they do not disturb each other).
    """
    tmp_path = tmp_path_factory.mktemp("tls")
    key, cert = make_certificate(tmp_path)
    server = TwistdChat(
        tmp_path,
        "--demo",
        listen=f"ssl:{{port}}:interface=127.0.0.1:privateKey={key}:certKey={cert}",
    )
    server.start()
    yield server, cert
    server.kill()


def tls_client(port: int, cert: Path) -> LineClient:
    context = ssl.create_default_context(cafile=str(cert))
    raw = socket.create_connection(("127.0.0.1", port), timeout=20)
    return LineClient(port, sock=context.wrap_socket(raw, server_hostname="localhost"))


def test_tls_serves_the_protocol(tls_server: tuple[TwistdChat, Path]) -> None:
    """Over TLS (certificate verified): auth, send and inbox work as over TCP."""
    server, cert = tls_server
    messi = tls_client(server.port, cert)
    henderson = tls_client(server.port, cert)
    token = messi.login("messi")
    reply = messi.request(f"send {token} henderson lewat TLS")
    assert reply == {"status": "OK", "message": "Message Sent"}
    other = henderson.login("henderson")
    messages = henderson.request(f"inbox {other}")["messages"]
    assert [m["msg"] for m in messages["messi"]] == ["lewat TLS"]
    # Pipelined requests over TLS come back in order.
    for i in range(50):
        messi.write(f"ping {i}")
    assert [messi.read()["echo"] for _ in range(50)] == [str(i) for i in range(50)]
    messi.close()
    henderson.close()


def test_tls_refuses_plaintext(tls_server: tuple[TwistdChat, Path]) -> None:
    """A plaintext client on the TLS port gets no chat reply."""
    server, _ = tls_server
    plain = socket.create_connection(("127.0.0.1", server.port), timeout=20)
    plain.sendall(b"auth messi surabaya\r\n")
    data = b""
    try:
        while chunk := plain.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    plain.close()
    assert b"tokenid" not in data
    assert b'"status"' not in data
    # The server is still fine.
    client = tls_client(server.port, server_cert(server))
    assert client.request("ping")["message"] == "PONG"
    client.close()


def server_cert(server: TwistdChat) -> Path:
    return server.workdir / "cert.pem"
