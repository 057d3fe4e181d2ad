"""
The stdio client with users of other realms: it passes C{user@realm}
through, so replying to a message from another realm just works.
"""

from __future__ import annotations

from tests.helpers import Connection
from tests.test_client import Harness
from tests.test_federation import Realms, inbox


def attach(h: Harness, connection: Connection) -> None:
    """
    Move bytes between the client and the server until both are quiet.
    """
    while h.wire.value() or connection.transport.value():
        data = h.wire.value()
        if data:
            h.wire.clear()
            connection.send(data)
        data = connection.transport.value()
        if data:
            connection.transport.clear()
            h.server.dataReceived(data)


def test_client_shows_and_answers_a_message_from_another_realm() -> None:
    """A message from messi@realm-a is shown as such; 'send messi@realm-a' replies."""
    realms = Realms()
    h = Harness(interactive=True)
    connection = realms["realm-b"].connect()
    h.type("auth henderson surabaya")
    attach(h, connection)
    h.output()

    messi, token = realms.login("realm-a", "messi")
    messi.request(f"send {token} henderson@realm-b hola desde a")
    realms.settle()
    attach(h, connection)
    assert "Lionel Messi (messi@realm-a): hola desde a" in h.output()

    h.type("send messi@realm-a gracias")
    assert h.wire.value().decode().endswith(" messi@realm-a gracias\r\n")
    attach(h, connection)
    assert "message sent to messi@realm-a" in h.output()
    realms.settle()
    got = inbox(realms, "realm-a", "messi")["henderson@realm-b"]
    assert [(m["msg"], m["realm"]) for m in got] == [("gracias", "realm-b")]
