"""
TLS: C{--listen ssl:...} serves the same protocol, with a throwaway
self-signed certificate made for the test.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.twistd_helpers import LineClient, TwistdChat


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """
    A self-signed certificate for localhost and 127.0.0.1, and its key.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[TwistdChat, Path]]:
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
