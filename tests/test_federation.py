"""
Realm links in memory: the handshake, the outbox and what users do with
other realms, with every realm on a fake clock and the connections on
StringTransports pumped by hand.
"""

from __future__ import annotations

import base64
import hashlib
import json
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.protocols.basic import LineReceiver

from chat import links
from chat.federation.outbound import DeliveryState
from chat.links import RealmLink
from tests.helpers import Connection, Server, result_of
from tests.realm_helpers import (
    SECRET,
    Network,
    Wire,
    bring_up,
    endpoint_of,
    link,
    realm_server,
    take_down,
)


class Realms:
    """
    realm-a and realm-b (and realm-c if asked), linked, on one network.
    """

    def __init__(self, *names: str, start: bool = True, **settings: Any) -> None:
        self.clock = Clock()
        self.clock.advance(1764037200)
        self.network = Network()
        self.servers = {
            name: realm_server(name, self.network, self.clock, **settings.get(name, {}))
            for name in names or ("realm-a", "realm-b")
        }
        if start:
            self.link_all()
            self.start()

    def link_all(self) -> None:
        names = sorted(self.servers)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                link(self.servers[a], self.servers[b])

    def start(self) -> None:
        for server in self.servers.values():
            server.federation.start()
        self.network.pump()

    def __getitem__(self, name: str) -> Server:
        return self.servers[name]

    def login(self, realm: str, user: str) -> tuple[Connection, str]:
        client = self[realm].connect()
        return client, client.login(user)

    def settle(self, seconds: float = 0.0) -> None:
        """
        Let time pass, then move every byte.
        """
        self.clock.advance(seconds)
        self.network.pump()


def inbound_link(connection: Any) -> Any:
    """
    The realm link a server-side connection became, if it authenticated.
    """
    return getattr(connection.handler, "link", None)


def inbox(realms: Realms, realm: str, user: str) -> dict[str, Any]:
    client, token = realms.login(realm, user)
    reply = client.request(f"inbox {token}")
    assert reply["status"] == "OK", reply
    messages: dict[str, Any] = reply["messages"]
    return messages


def outbox_size(server: Server, realm_id: str) -> int:
    size: int = result_of(server.store.outbox_size(realm_id))
    return size


def lines_of(wire: Wire, who: str) -> list[dict[str, Any]]:
    """
    The replies the server sent on a wire, parsed.
    """
    data = b"".join(d for side, d in wire.log if side == who)
    return [json.loads(chunk) for chunk in data.split(b"\r\n\r\n") if chunk]


# The handshake.


def test_handshake_with_the_right_secret_links_both_ways() -> None:
    """Two realms with the same secret authenticate each other both ways."""
    realms = Realms()
    a_link = realms["realm-a"].federation.links["realm-b"]
    b_link = realms["realm-b"].federation.links["realm-a"]
    assert a_link.connected and b_link.connected
    (wire,) = realms.network.live(origin="realm-a")
    assert inbound_link(wire.server).realm_id == "realm-a"
    sent = wire.sent_by_client()
    assert sent[0].startswith(b"realm-hello realm-a realm-b ")
    assert sent[1].startswith(b"realm-auth ")
    everything = b"".join(data for _, data in wire.log)
    assert SECRET.encode() not in everything
    replies = lines_of(wire, "server")
    assert replies[0]["message"] == "realm-challenge"
    assert replies[1] == {
        "status": "OK",
        "message": "Realm Authenticated",
        "realm": "realm-b",
        "proof": replies[1]["proof"],
        # The longest text, escaped, and a file of --max-file-size (1 MiB
        # here), in base64.
        "max_line": 7 * 16 * 1024 + 4 * ((1024 * 1024 + 2) // 3),
        "files": True,
    }


def test_handshake_with_a_wrong_secret_is_refused_and_backs_off() -> None:
    """A wrong secret is refused, the connection closed, and retries slow down."""
    realms = Realms(start=False)
    a, b = realms["realm-a"], realms["realm-b"]
    link(a, b, secret=SECRET, b_secret="another-secret-entirely")
    a.federation.start()
    realms.network.pump()
    a_link = a.federation.links["realm-b"]
    assert not a_link.connected
    assert a_link.handshake_failures == 1
    (wire,) = [w for w in realms.network.wires if w.origin == "realm-a"]
    assert wire.closed
    assert lines_of(wire, "server")[-1] == {
        "status": "ERROR",
        "message": "realm authentication failed",
        "code": "realm_auth_failed",
    }
    assert inbound_link(wire.server) is None
    # Each failed handshake doubles the wait before the next attempt.
    delays = []
    for _ in range(4):
        (call,) = [c for c in realms.clock.getDelayedCalls() if "_reconnect" in repr(c)]
        delays.append(call.getTime() - realms.clock.seconds())
        realms.settle(delays[-1])
    assert delays == [1.0, 2.0, 4.0, 8.0]
    assert a_link.handshake_failures == 5


def test_replayed_handshake_is_refused() -> None:
    """The lines of a good handshake, replayed on a new connection, fail."""
    realms = Realms()
    (wire,) = realms.network.live(origin="realm-a")
    hello, auth = wire.sent_by_client()[:2]
    attacker = realms["realm-b"].connect()
    attacker.send(hello + b"\r\n")
    (challenge,) = attacker.replies()
    assert challenge["message"] == "realm-challenge"
    assert challenge["nonce"] != lines_of(wire, "server")[0]["nonce"]
    attacker.send(auth + b"\r\n")
    assert attacker.replies() == [
        {
            "status": "ERROR",
            "message": "realm authentication failed",
            "code": "realm_auth_failed",
        }
    ]
    assert attacker.transport.disconnecting
    assert inbound_link(attacker.protocol) is None


class Impostor(LineReceiver):
    """
    Pretends to be realm-b: accepts any proof, answers with a made-up one.
    """

    delimiter = b"\n"

    def lineReceived(self, line: bytes) -> None:
        if line.startswith(b"realm-hello"):
            reply = {
                "status": "OK",
                "message": "realm-challenge",
                "realm": "realm-b",
                "nonce": "ef" * 16,
            }
        else:
            reply = {
                "status": "OK",
                "message": "Realm Authenticated",
                "realm": "realm-b",
                "proof": "0" * 64,
            }
        self.transport.write(json.dumps(reply).encode() + b"\r\n\r\n")


def test_server_that_cannot_prove_the_secret_gets_nothing() -> None:
    """A server that accepts any proof but cannot prove its own is dropped."""
    realms = Realms("realm-a", start=False)
    a = realms["realm-a"]
    result_of(
        a.store.add_realm_link(RealmLink("realm-b", endpoint_of("realm-b"), SECRET, 0))
    )
    realms.network.servers[endpoint_of("realm-b")] = SimpleNamespace(
        factory=Factory.forProtocol(Impostor),
        federation=SimpleNamespace(realm_id="realm-b"),
    )
    messi, token = realms.login("realm-a", "messi")
    assert (
        messi.request(f"send {token} henderson@realm-b secret plans")["status"] == "OK"
    )
    a.federation.start()
    realms.network.pump()
    a_link = a.federation.links["realm-b"]
    assert not a_link.connected
    assert a_link.handshake_failures == 1
    (wire,) = realms.network.wires
    assert wire.closed
    assert not any(line.startswith(b"realm-msg") for line in wire.sent_by_client())
    assert outbox_size(a, "realm-b") == 1


def test_hello_for_another_realm_is_refused() -> None:
    """realm-hello naming another realm as the server is an error."""
    realms = Realms()
    client = realms["realm-b"].connect()
    reply = client.request(f"realm-hello realm-a realm-x {'ab' * 16}")
    assert reply == {"status": "ERROR", "message": "wrong realm", "code": "wrong_realm"}


def test_link_commands_need_the_handshake() -> None:
    """realm-msg and realm-auth before the handshake are refused."""
    realms = Realms()
    client = realms["realm-b"].connect()
    payload = json.dumps(
        {
            "id": "x",
            "from": "messi",
            "from_name": "M",
            "to": ["henderson"],
            "msg": "hi",
            "sent_at": 1.0,
        }
    )
    assert client.request(f"realm-msg {payload}")["code"] == "realm_not_authenticated"
    assert client.request(f"realm-auth {'0' * 64}")["code"] == "realm_not_authenticated"
    assert inbox(realms, "realm-b", "henderson") == {}


def test_link_gets_no_user_privileges() -> None:
    """An authenticated link cannot log in or use a user's token."""
    realms = Realms()
    _, token = realms.login("realm-b", "henderson")
    (wire,) = realms.network.live(origin="realm-a")
    link_protocol = wire.server
    transport = wire.server_transport
    for line in (f"inbox {token}", "auth messi surabaya", f"send {token} messi hi"):
        link_protocol.dataReceived(line.encode() + b"\r\n")
        reply = json.loads(transport.value().split(b"\r\n\r\n")[0])
        transport.clear()
        assert reply == {
            "status": "ERROR",
            "message": "not allowed on a realm link",
            "code": "realm_link",
        }


def test_user_connection_cannot_become_a_link() -> None:
    """After a user logged in on a connection, realm-hello is refused."""
    realms = Realms()
    client, _ = realms.login("realm-b", "henderson")
    reply = client.request(f"realm-hello realm-a realm-b {'ab' * 16}")
    assert reply["code"] == "realm_link"


# Messages across.


def test_message_to_another_realm_and_a_reply() -> None:
    """send to user@realm arrives there as from user@realm; replies come back."""
    realms = Realms()
    messi, token = realms.login("realm-a", "messi")
    reply = messi.request(f"send {token} henderson@realm-b hello from a")
    assert reply == {"status": "OK", "message": "Message Sent"}
    realms.settle()
    got = inbox(realms, "realm-b", "henderson")
    assert list(got) == ["messi@realm-a"]
    (message,) = got["messi@realm-a"]
    assert message["msg"] == "hello from a"
    assert message["msg_from"] == "Lionel Messi"
    assert message["msg_to"] == "Jordan Henderson"
    assert message["from"] == "messi@realm-a"
    assert message["to"] == "henderson"
    assert message["realm"] == "realm-a"
    assert outbox_size(realms["realm-a"], "realm-b") == 0
    henderson, other = realms.login("realm-b", "henderson")
    henderson.request(f"send {other} messi@realm-a thanks")
    realms.settle()
    back = inbox(realms, "realm-a", "messi")["henderson@realm-b"]
    assert [(m["msg"], m["msg_from"], m["realm"]) for m in back] == [
        ("thanks", "Jordan Henderson", "realm-b")
    ]


def test_course_commands_to_another_realm() -> None:
    """sendprivaterealm and sendgrouprealm answer with the course's replies."""
    realms = Realms()
    messi, token = realms.login("realm-a", "messi")
    assert messi.request(f"sendprivaterealm {token} realm-b henderson one") == {
        "status": "OK",
        "message": "Message Sent to Realm",
    }
    assert messi.request(
        f"sendgrouprealm {token} realm-b henderson,lineker two words"
    ) == {"status": "OK", "message": "Message Sent to Group in Realm"}
    realms.settle()
    got = inbox(realms, "realm-b", "henderson")["messi@realm-a"]
    assert [m["msg"] for m in got] == ["one", "two words"]
    got = inbox(realms, "realm-b", "lineker")["messi@realm-a"]
    assert [m["msg"] for m in got] == ["two words"]


def test_group_across_three_realms() -> None:
    """One group message reaches users of two other realms."""
    realms = Realms("realm-a", "realm-b", "realm-c")
    messi, token = realms.login("realm-a", "messi")
    reply = messi.request(
        f"sendgrouprealm {token} realm-b henderson,lineker,messi@realm-c hi all"
    )
    assert reply["status"] == "OK"
    realms.settle()
    for realm, user in [
        ("realm-b", "henderson"),
        ("realm-b", "lineker"),
        ("realm-c", "messi"),
    ]:
        assert [m["msg"] for m in inbox(realms, realm, user)["messi@realm-a"]] == [
            "hi all"
        ]


def test_send_to_own_realm_address_is_local() -> None:
    """send to user@<this realm> is an ordinary local message."""
    realms = Realms()
    messi, token = realms.login("realm-a", "messi")
    assert messi.request(f"send {token} henderson@realm-a local")["status"] == "OK"
    assert [m["msg"] for m in inbox(realms, "realm-a", "henderson")["messi"]] == [
        "local"
    ]
    assert outbox_size(realms["realm-a"], "realm-b") == 0


def test_unknown_realm_is_an_error() -> None:
    """A realm without a link is an error, and nothing is queued."""
    realms = Realms()
    messi, token = realms.login("realm-a", "messi")
    for line in (
        f"send {token} henderson@realm-z hi",
        f"sendprivaterealm {token} realm-z henderson hi",
        f"sendgrouprealm {token} realm-z henderson,lineker hi",
        f"sendgrouprealm {token} realm-b henderson,lineker@realm-z hi",
        f"getrealminbox {token} realm-z",
    ):
        assert messi.request(line) == {
            "status": "ERROR",
            "message": "Realm Tidak Ditemukan",
            "code": "no_such_realm",
        }
    assert outbox_size(realms["realm-a"], "realm-b") == 0


def test_unknown_remote_user_bounces_to_the_sender() -> None:
    """A recipient the other realm does not have comes back as a bounce."""
    realms = Realms()
    messi, token = realms.login("realm-a", "messi")
    reply = messi.request(f"sendgrouprealm {token} realm-b henderson,ronaldo halo")
    assert reply["status"] == "OK"
    realms.settle()
    assert [
        m["msg"] for m in inbox(realms, "realm-b", "henderson")["messi@realm-a"]
    ] == ["halo"]
    (bounce,) = inbox(realms, "realm-a", "messi")["postmaster@realm-b"]
    assert bounce["msg_from"] == "Mail Delivery System"
    assert bounce["realm"] == "realm-b"
    assert bounce["msg"] == (
        "Undeliverable to ronaldo@realm-b: no such user. Your message: halo"
    )
    assert outbox_size(realms["realm-a"], "realm-b") == 0


def test_refused_message_bounces_with_the_reason() -> None:
    """A message the other realm refuses for good comes back to its sender."""
    realms = Realms(**{"realm-b": {"max_text": 8}})
    messi, token = realms.login("realm-a", "messi")
    messi.request(f"send {token} henderson@realm-b this is far too long")
    realms.settle()
    assert inbox(realms, "realm-b", "henderson") == {}
    (bounce,) = inbox(realms, "realm-a", "messi")["postmaster@realm-b"]
    assert bounce["msg"] == (
        "Undeliverable to henderson@realm-b: refused by realm-b (malformed realm"
        " message). Your message: this is far too long"
    )


def test_message_too_long_for_the_other_realm_bounces() -> None:
    """A message longer than the other realm's links accept is returned at once."""
    realms = Realms(**{"realm-b": {"max_text": 100, "max_file_size": 300}})
    (wire,) = realms.network.live(origin="realm-a")
    assert lines_of(wire, "server")[1]["max_line"] == 600 + 400 + 16 * 1024
    a = realms["realm-a"]
    a.federation.send("messi", "realm-b", ["henderson"], "x" * 18_000)
    a.federation.send("messi", "realm-b", ["henderson"], "short")
    realms.settle()
    got = inbox(realms, "realm-b", "henderson")["messi@realm-a"]
    assert [m["msg"] for m in got] == ["short"]
    (bounce,) = inbox(realms, "realm-a", "messi")["postmaster@realm-b"]
    assert bounce["msg"].startswith(
        "Undeliverable to henderson@realm-b: refused by realm-b (message too long)."
    )
    assert wire.closed is False


def test_subscriber_gets_remote_message_pushed() -> None:
    """A subscribed user sees a message from another realm the moment it lands."""
    realms = Realms()
    henderson, other = realms.login("realm-b", "henderson")
    henderson.send(f"subscribe {other}\r\n".encode())
    henderson.events()
    messi, token = realms.login("realm-a", "messi")
    messi.request(f"send {token} henderson@realm-b live")
    realms.settle()
    events = [e for e in henderson.events() if e.get("event") == "message"]
    assert [(e["msg"], e["from"], e["realm"]) for e in events] == [
        ("live", "messi@realm-a", "realm-a")
    ]


def test_getrealminbox_takes_only_that_realm() -> None:
    """getrealminbox returns and marks delivered one realm's messages only."""
    realms = Realms("realm-a", "realm-b", "realm-c")
    for realm in ("realm-a", "realm-c"):
        client, token = realms.login(realm, "messi")
        client.request(f"send {token} henderson@realm-b from {realm}")
    local, token = realms.login("realm-b", "lineker")
    local.request(f"send {token} henderson local")
    realms.settle()
    henderson, other = realms.login("realm-b", "henderson")
    reply = henderson.request(f"getrealminbox {other} realm-a")
    assert list(reply["messages"]) == ["messi@realm-a"]
    assert [m["msg"] for m in reply["messages"]["messi@realm-a"]] == ["from realm-a"]
    assert henderson.request(f"getrealminbox {other} realm-a")["messages"] == {}
    rest = henderson.request(f"inbox {other}")["messages"]
    assert sorted(rest) == ["lineker", "messi@realm-c"]


def rogue_link(realms: Realms, server: str = "realm-b") -> Connection:
    """
    A connection to C{server} that authenticated as realm-a by hand, to
    send realm-msg lines of our own making.
    """
    rogue = realms[server].connect()
    hello = rogue.request(f"realm-hello realm-a {server} {'cd' * 16}")
    proof = links.proof(SECRET, "client", "realm-a", server, "cd" * 16, hello["nonce"])
    assert rogue.request(f"realm-auth {proof}")["status"] == "OK"
    return rogue


def test_forged_sender_realm_is_refused() -> None:
    """A realm cannot send as another realm's user; a claimed realm is ignored."""
    realms = Realms("realm-a", "realm-b", "realm-c")
    rogue = rogue_link(realms)
    forged = {
        "id": "f-1",
        "from": "messi@realm-c",
        "from_name": "Lionel Messi",
        "to": ["henderson"],
        "msg": "send me your password",
        "sent_at": realms.clock.seconds(),
    }
    assert rogue.request(f"realm-msg {json.dumps(forged)}") == {
        "status": "ERROR",
        "message": "forged sender",
        "code": "forged_sender",
    }
    claimed = {**forged, "id": "f-2", "from": "messi", "realm": "realm-c"}
    reply = rogue.request(f"realm-msg {json.dumps(claimed)}")
    assert reply["status"] == "OK" and reply["delivered"] == 1
    got = inbox(realms, "realm-b", "henderson")
    assert list(got) == ["messi@realm-a"]
    assert got["messi@realm-a"][0]["realm"] == "realm-a"


def test_message_from_beyond_year_9999_is_refused_and_the_inbox_still_works() -> None:
    """A realm-msg whose sent_at no date can show (4e12, past year 9999) is
    refused with an error on the link and not stored; the recipient's inbox
    and live delivery go on working, local messages included."""
    realms = Realms()
    henderson, token = realms.login("realm-b", "henderson")
    assert henderson.request(f"subscribe {token}")["status"] == "OK"
    lineker, other = realms.login("realm-b", "lineker")
    assert lineker.request(f"send {other} henderson before")["status"] == "OK"
    rogue = rogue_link(realms)
    poison = {
        "id": "p-1",
        "from": "messi",
        "from_name": "Lionel Messi",
        "to": ["henderson"],
        "msg": "from the far future",
        "sent_at": 4e12,
    }
    assert rogue.request(f"realm-msg {json.dumps(poison)}") == {
        "status": "ERROR",
        "message": "malformed realm message",
        "code": "bad_realm_message",
        "reason": "bad sent_at",
    }
    fine = {**poison, "id": "p-2", "msg": "from now", "sent_at": realms.clock.seconds()}
    assert rogue.request(f"realm-msg {json.dumps(fine)}")["delivered"] == 1
    assert lineker.request(f"send {other} henderson after")["status"] == "OK"
    realms.settle()
    pushed = [e["msg"] for e in henderson.events() if e.get("event") == "message"]
    assert pushed == ["before", "from now", "after"]
    reply = henderson.request(f"inbox {token}")
    assert reply["status"] == "OK"
    texts = [m["msg"] for ms in reply["messages"].values() for m in ms]
    assert sorted(texts) == ["after", "before", "from now"]
    assert henderson.request(f"inbox {token}")["messages"] == {}


# The outbox.


def test_retry_after_lost_ack_is_delivered_once() -> None:
    """A message whose acknowledgement was lost is sent again, stored once."""
    realms = Realms()
    a = realms["realm-a"]
    (wire,) = realms.network.live(origin="realm-a")
    messi, token = realms.login("realm-a", "messi")
    messi.request(f"send {token} henderson@realm-b exactly once")
    # The message crosses and realm-b commits and answers...
    assert wire.client_to_server().startswith(b"realm-msg ")
    assert wire.server_transport.value().startswith(
        b'{"status":"OK","message":"Delivered"'
    )
    # ...but the connection breaks before the answer arrives.
    wire.cut()
    assert outbox_size(a, "realm-b") == 1
    realms.settle(1.0)
    (again,) = realms.network.live(origin="realm-a")
    resent = [line for line in again.sent_by_client() if line.startswith(b"realm-msg")]
    first = [line for line in wire.sent_by_client() if line.startswith(b"realm-msg")]
    assert resent == first
    assert lines_of(again, "server")[-1]["duplicate"] is True
    assert outbox_size(a, "realm-b") == 0
    got = inbox(realms, "realm-b", "henderson")["messi@realm-a"]
    assert [m["msg"] for m in got] == ["exactly once"]


def test_outage_queues_then_drains_in_order_one_at_a_time() -> None:
    """Messages sent while a realm is down wait, then arrive in order."""
    realms = Realms()
    b = realms["realm-b"]
    take_down(realms.network, b)
    messi, token = realms.login("realm-a", "messi")
    for i in range(5):
        assert messi.request(f"send {token} henderson@realm-b m{i}")["status"] == "OK"
    realms.settle(30)
    assert inbox(realms, "realm-b", "henderson") == {}
    assert outbox_size(realms["realm-a"], "realm-b") == 5
    bring_up(realms.network, b)
    realms.settle(8)
    (wire,) = realms.network.live(origin="realm-a")
    # One message in flight at a time: each realm-msg waits for its answer.
    in_flight = 0
    for side, data in wire.log:
        if side == "client":
            in_flight += data.count(b"realm-msg ")
            assert in_flight <= 1
        else:
            in_flight -= data.count(b'"message":"Delivered"')
    got = inbox(realms, "realm-b", "henderson")["messi@realm-a"]
    assert [m["msg"] for m in got] == [f"m{i}" for i in range(5)]
    assert outbox_size(realms["realm-a"], "realm-b") == 0


def test_link_delivery_states() -> None:
    """A link delivers while messages wait, reads its outbox again when
    woken mid-delivery, pauses on a temporary error (ignoring wakes), and
    resumes when the pause is over."""
    realms = Realms()
    a, b = realms["realm-a"], realms["realm-b"]
    a_link = a.federation.links["realm-b"]
    assert a_link.connected and a_link.state is DeliveryState.IDLE
    messi, token = realms.login("realm-a", "messi")
    messi.request(f"send {token} henderson@realm-b one")
    assert a_link.state is DeliveryState.DELIVERING  # waiting for the answer
    messi.request(f"send {token} henderson@realm-b two")
    assert a_link.state is DeliveryState.WOKEN
    realms.settle()
    assert a_link.state is DeliveryState.IDLE and a_link.delivered == 2
    b.store.broken = True
    messi.request(f"send {token} henderson@realm-b three")
    realms.settle()
    assert a_link.state is DeliveryState.PAUSED
    (wire,) = realms.network.live(origin="realm-a")
    offered = len(wire.sent_by_client())
    b.store.broken = False
    messi.request(f"send {token} henderson@realm-b four")
    realms.settle()
    assert a_link.state is DeliveryState.PAUSED
    assert len(wire.sent_by_client()) == offered
    realms.settle(1.0)
    assert a_link.state is DeliveryState.IDLE and a_link.delivered == 4
    got = inbox(realms, "realm-b", "henderson")["messi@realm-a"]
    assert [m["msg"] for m in got] == ["one", "two", "three", "four"]


def test_link_paused_ends_its_pause_on_a_new_connection() -> None:
    """A link paused by a temporary error offers again as soon as a new
    connection authenticates, not only when the pause is over."""
    realms = Realms(**{"realm-b": {"rate": 0.01, "burst": 1.0}})
    a_link = realms["realm-a"].federation.links["realm-b"]
    messi, token = realms.login("realm-a", "messi")
    messi.request(f"send {token} henderson@realm-b first")
    messi.request(f"send {token} henderson@realm-b second")
    realms.settle()
    (wire,) = realms.network.live(origin="realm-a")
    assert lines_of(wire, "server")[-1]["retry_after_ms"] == 100_000
    assert a_link.state is DeliveryState.PAUSED
    wire.cut()
    realms.settle(1.0)  # the first reconnection attempt
    (again,) = realms.network.live(origin="realm-a")
    offered = [line for line in again.sent_by_client() if line.startswith(b"realm-msg")]
    assert len(offered) == 1
    assert lines_of(again, "server")[-1]["code"] == "rate_limited"
    assert a_link.connected and a_link.state is DeliveryState.PAUSED


def test_reconnects_with_exponential_backoff() -> None:
    """While a realm is down, attempts come at 1, 2, 4, 8, 8... seconds."""
    realms = Realms()
    take_down(realms.network, realms["realm-b"])
    assert not realms["realm-b"].federation.links
    delays = []
    for _ in range(6):
        (call,) = [c for c in realms.clock.getDelayedCalls() if "_reconnect" in repr(c)]
        delays.append(call.getTime() - realms.clock.seconds())
        realms.settle(delays[-1])
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_outbox_survives_a_restart_of_the_sender() -> None:
    """Queued messages are delivered by a new Federation on the same store."""
    realms = Realms()
    a, b = realms["realm-a"], realms["realm-b"]
    take_down(realms.network, b)
    messi, token = realms.login("realm-a", "messi")
    messi.request(f"send {token} henderson@realm-b queued")
    take_down(realms.network, a)
    restarted = realm_server("realm-a", realms.network, realms.clock)
    restarted.store = a.store
    restarted.federation.store = a.store
    bring_up(realms.network, b)
    bring_up(realms.network, restarted)
    realms.settle()
    got = inbox(realms, "realm-b", "henderson")["messi@realm-a"]
    assert [m["msg"] for m in got] == ["queued"]


def test_local_storage_failure_after_delivery_retries_once() -> None:
    """If the sender cannot record the acknowledgement, it offers again: one copy."""
    realms = Realms()
    a = realms["realm-a"]
    messi, token = realms.login("realm-a", "messi")
    messi.request(f"send {token} henderson@realm-b disk trouble")
    a.store.broken = True
    realms.settle()
    assert [m.message.text for m in realms["realm-b"].store.messages] == [
        "disk trouble"
    ]
    a.store.broken = False
    assert outbox_size(a, "realm-b") == 1
    realms.settle(1.0)
    assert outbox_size(a, "realm-b") == 0
    (wire,) = realms.network.live(origin="realm-a")
    assert [r.get("duplicate") for r in lines_of(wire, "server")[2:]] == [False, True]
    got = inbox(realms, "realm-b", "henderson")["messi@realm-a"]
    assert [m["msg"] for m in got] == ["disk trouble"]


def test_remote_storage_failure_is_retried() -> None:
    """storage unavailable on the other side means: offer it again later."""
    realms = Realms()
    b = realms["realm-b"]
    b.store.broken = True
    messi, token = realms.login("realm-a", "messi")
    messi.request(f"send {token} henderson@realm-b later")
    realms.settle()
    assert outbox_size(realms["realm-a"], "realm-b") == 1
    b.store.broken = False
    realms.settle(1.0)
    got = inbox(realms, "realm-b", "henderson")["messi@realm-a"]
    assert [m["msg"] for m in got] == ["later"]
    assert inbox(realms, "realm-a", "messi") == {}


def test_link_added_at_runtime_starts_on_first_message() -> None:
    """A link chat-admin added while running starts when a message is queued."""
    realms = Realms("realm-a", "realm-b", "realm-c", start=False)
    a, b, c = realms["realm-a"], realms["realm-b"], realms["realm-c"]
    link(a, b)
    realms.start()
    assert set(a.federation.links) == {"realm-b"}
    link(a, c)
    c.federation.start()
    messi, token = realms.login("realm-a", "messi")
    messi.request(f"send {token} lineker@realm-c new link")
    realms.settle()
    assert set(a.federation.links) == {"realm-b", "realm-c"}
    got = inbox(realms, "realm-c", "lineker")["messi@realm-a"]
    assert [m["msg"] for m in got] == ["new link"]


def test_link_with_a_bad_endpoint_is_skipped() -> None:
    """A link whose endpoint cannot be parsed is logged and skipped, others run."""
    realms = Realms(start=False)
    a = realms["realm-a"]
    link(a, realms["realm-b"])
    result_of(a.store.add_realm_link(RealmLink("realm-x", "carrier:pigeon", SECRET, 0)))
    realms.start()
    assert set(a.federation.links) == {"realm-b"}
    assert a.federation.links["realm-b"].connected


def test_endpoint_of_another_realm_is_refused() -> None:
    """If the endpoint leads to another realm, the handshake fails at hello."""
    realms = Realms("realm-a", "realm-x", start=False)
    a = realms["realm-a"]
    result_of(
        a.store.add_realm_link(
            RealmLink("realm-b", endpoint_of("realm-x"), SECRET, 0.0)
        )
    )
    a.federation.start()
    realms.network.pump()
    a_link = a.federation.links["realm-b"]
    assert not a_link.connected and a_link.handshake_failures == 1
    (wire,) = realms.network.wires
    assert lines_of(wire, "server") == [
        {"status": "ERROR", "message": "wrong realm", "code": "wrong_realm"}
    ]


def test_queue_cap_refuses_and_stores_nothing() -> None:
    """Over --realm-queue-max, send is an error and nothing is queued."""
    realms = Realms(**{"realm-a": {"max_queue": 2}})
    take_down(realms.network, realms["realm-b"])
    messi, token = realms.login("realm-a", "messi")
    for i in range(2):
        assert messi.request(f"send {token} henderson@realm-b m{i}")["status"] == "OK"
    assert messi.request(f"send {token} henderson@realm-b m2") == {
        "status": "ERROR",
        "message": "realm queue full",
        "code": "realm_queue_full",
    }
    assert outbox_size(realms["realm-a"], "realm-b") == 2


def test_inbound_rate_limit_delays_but_loses_nothing() -> None:
    """Over a link's rate limit, the sender waits and offers the message again."""
    realms = Realms(**{"realm-b": {"rate": 1.0, "burst": 2.0}})
    messi, token = realms.login("realm-a", "messi")
    for i in range(4):
        messi.request(f"send {token} henderson@realm-b m{i}")
    realms.settle()
    assert outbox_size(realms["realm-a"], "realm-b") == 2
    (wire,) = realms.network.live(origin="realm-a")
    limited = lines_of(wire, "server")[-1]
    assert limited["code"] == "rate_limited"
    assert limited["retry_after_ms"] == 1000
    realms.settle(1.0)
    realms.settle(1.0)
    got = inbox(realms, "realm-b", "henderson")["messi@realm-a"]
    assert [m["msg"] for m in got] == ["m0", "m1", "m2", "m3"]
    assert outbox_size(realms["realm-a"], "realm-b") == 0


def test_silent_link_is_pinged_then_dropped() -> None:
    """An idle link is pinged; one that stops answering is dropped and made again."""
    realms = Realms()
    (wire,) = realms.network.live(origin="realm-a")
    realms.settle(30)
    assert wire.sent_by_client()[-1] == b"ping"
    assert not wire.closed
    # From now on realm-b reads but never answers on this connection.
    wire.server_transport.write = lambda data: None  # type: ignore[method-assign]
    realms.clock.advance(30)
    wire.step()
    realms.clock.advance(30)
    assert wire.client_transport.disconnecting
    realms.settle()
    assert wire.closed
    realms.settle(1)
    assert realms["realm-a"].federation.links["realm-b"].connected
    assert len(realms.network.live(origin="realm-a")) == 1


# addrealm.


def admin(realms: Realms, realm: str, username: str = "messi") -> None:
    result_of(realms[realm].store.set_admin(username, True))


def test_addrealm_from_a_non_admin_is_refused() -> None:
    """addrealm, in either form, is an error for a user who is not an admin."""
    realms = Realms()
    client, token = realms.login("realm-a", "henderson")
    for line in ("addrealm realm-x 127.0.0.1 9000", f"addrealm {token} realm-x h 9000"):
        assert client.request(line) == {
            "status": "ERROR",
            "message": "not an administrator",
            "code": "not_admin",
        }
    assert "realm-x" not in realms["realm-a"].store.realm_links


def test_addrealm_without_login_is_refused() -> None:
    """The course's addrealm on a connection that never logged in is refused."""
    realms = Realms()
    client = realms["realm-a"].connect()
    assert client.request("addrealm realm-x 127.0.0.1 9000")["code"] == "no_session"


def test_addrealm_by_an_admin_links_and_returns_the_secret() -> None:
    """An admin's addrealm stores the link with a fresh secret and starts it."""
    realms = Realms()
    admin(realms, "realm-a")
    client, token = realms.login("realm-a", "messi")
    reply = client.request("addrealm realm-x 10.0.0.7 9000")
    assert reply["status"] == "OK" and reply["message"] == "Realm Added"
    assert reply["realm"] == "realm-x" and reply["this_realm"] == "realm-a"
    stored = realms["realm-a"].store.realm_links["realm-x"]
    assert stored.endpoint == "tcp:host=10.0.0.7:port=9000"
    assert stored.secret == reply["secret"] and len(reply["secret"]) >= 40
    assert "realm-x" in realms["realm-a"].federation.links
    again = client.request(f"addrealm {token} realm-x 10.0.0.8 9001")
    assert again == {
        "status": "ERROR",
        "message": "Realm sudah ada",
        "code": "realm_exists",
    }
    bad = client.request(f"addrealm {token} Realm_X 10.0.0.8 9001")
    assert bad["code"] == "invalid_realm_id"
    bad = client.request(f"addrealm {token} realm-y bad_host! 9001")
    assert bad["code"] == "invalid_realm_id"
    bad = client.request(f"addrealm {token} realm-a 10.0.0.8 9001")
    assert bad["code"] == "invalid_realm_id"
    assert set(realms["realm-a"].store.realm_links) == {"realm-b", "realm-x"}


def test_link_removed_at_runtime_stops() -> None:
    """A link removed from the store stops at the next sync."""
    realms = Realms()
    a = realms["realm-a"]
    result_of(a.store.remove_realm_link("realm-b", 0.0))
    realms.settle(30)
    assert "realm-b" not in a.federation.links
    assert realms.network.live(origin="realm-a") == []


@pytest.mark.parametrize(
    "recipients",
    ["Bad!Name", ",".join(f"u{i}" for i in range(101))],
)
def test_bad_recipient_lists(recipients: str) -> None:
    """Malformed usernames and too many recipients are refused before queueing."""
    realms = Realms()
    messi, token = realms.login("realm-a", "messi")
    reply = messi.request(f"sendgrouprealm {token} realm-b {recipients} hi")
    assert reply["status"] == "ERROR"
    assert reply["code"] in ("no_such_user", "too_many_recipients")
    assert outbox_size(realms["realm-a"], "realm-b") == 0


def test_realms_disabled_without_federation() -> None:
    """A server without federation refuses link commands and remote sends."""
    client = Server().connect()
    token = client.login()
    assert client.request(f"realm-hello a b {'ab' * 16}")["code"] == "realms_disabled"
    assert client.request(f"send {token} henderson@b hi")["code"] == "no_such_realm"


# Files between realms.


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def test_file_to_another_realm_is_pushed_as_a_local_file() -> None:
    """A file for a user of another realm is queued (the realm link says it
    takes files), delivered once, and pushed to a subscribed recipient as a
    local file message from user@realm; the outbox is then empty."""
    realms = Realms()
    (wire,) = realms.network.live(origin="realm-a")
    assert lines_of(wire, "server")[1]["files"] is True
    henderson, other = realms.login("realm-b", "henderson")
    henderson.send(f"subscribe {other}\r\n".encode())
    henderson.events()
    content = bytes(range(256)) * 8
    messi, token = realms.login("realm-a", "messi")
    reply = messi.request(
        f"sendprivatefilerealm {token} realm-b henderson data.bin {_b64(content)}"
    )
    assert reply["message"] == "File Sent to Realm"
    realms.settle()
    (event,) = [e for e in henderson.events() if e.get("event") == "message"]
    assert (event["from"], event["realm"], event["msg"]) == (
        "messi@realm-a",
        "realm-a",
        "data.bin",
    )
    assert (event["file_name"], event["file_size"]) == ("data.bin", len(content))
    assert event["file_sha256"] == hashlib.sha256(content).hexdigest()
    assert base64.b64decode(event["file_content"]) == content
    assert outbox_size(realms["realm-a"], "realm-b") == 0
    assert inbox(realms, "realm-a", "messi") == {}


def test_file_too_large_for_the_other_realm_bounces() -> None:
    """A file larger than the other realm's --max-file-size is refused
    there and comes back to its sender; a smaller one goes through."""
    realms = Realms(**{"realm-b": {"max_file_size": 100}})
    messi, token = realms.login("realm-a", "messi")
    big = messi.request(
        f"sendfilerealm {token} realm-b henderson big.bin {_b64(b'x' * 101)}"
    )
    assert big["status"] == "OK"
    messi.request(f"sendfile {token} henderson@realm-b small.bin {_b64(b'y' * 100)}")
    realms.settle()
    got = inbox(realms, "realm-b", "henderson")["messi@realm-a"]
    assert [(m["file_name"], m["file_size"]) for m in got] == [("small.bin", 100)]
    (bounce,) = inbox(realms, "realm-a", "messi")["postmaster@realm-b"]
    assert bounce["msg"] == (
        "Undeliverable to henderson@realm-b: refused by realm-b (file too large)."
        " Your message: big.bin"
    )


def test_files_follow_the_local_rules_when_sent() -> None:
    """The sending realm checks a file as a local sendfile: its name (a
    path's last component; '..' refused), its --max-file-size, the sender's
    file quota; nothing is queued when refused."""
    realms = Realms(**{"realm-a": {"max_file_size": 10}})
    a = realms["realm-a"]
    a.realm.max_file_size = 10
    messi, token = realms.login("realm-a", "messi")
    too_big = messi.request(
        f"sendfilerealm {token} realm-b henderson a.bin {_b64(b'x' * 11)}"
    )
    assert too_big["code"] == "file_too_large"
    bad = messi.request(
        f"sendfilerealm {token} realm-b henderson ../a.bin {_b64(b'x')}"
    )
    assert bad["code"] == "invalid_file_name"
    unknown = messi.request(
        f"sendfilerealm {token} realm-z henderson a.bin {_b64(b'x')}"
    )
    assert unknown["message"] == "Realm Tidak Ditemukan"
    assert outbox_size(a, "realm-b") == 0


def test_a_realm_that_takes_no_files_gets_none() -> None:
    """A link to an older realm, which does not say it takes files, would
    lose the file (kept as a text of its name): the file comes back to its
    sender instead, and texts still go."""
    realms = Realms()
    outbound = realms["realm-a"].federation.links["realm-b"]
    assert outbound._protocol.peer_files is True
    outbound._protocol.peer_files = False
    messi, token = realms.login("realm-a", "messi")
    messi.request(f"sendfilerealm {token} realm-b henderson a.txt {_b64(b'hi')}")
    messi.request(f"send {token} henderson@realm-b text still goes")
    realms.settle()
    got = inbox(realms, "realm-b", "henderson")["messi@realm-a"]
    assert [m["msg"] for m in got] == ["text still goes"]
    (bounce,) = inbox(realms, "realm-a", "messi")["postmaster@realm-b"]
    assert bounce["msg"] == (
        "Undeliverable to henderson@realm-b: refused by realm-b (files are not"
        " sent to that realm). Your message: a.txt"
    )
