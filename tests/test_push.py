"""
Live delivery: subscribe, ack, the push window, who and presence, on a
StringTransport with the in-memory store and a fake clock.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from chat.errors import StorageUnavailable
from chat.model import Message
from chat.push import Backlog, LocalFanout, Reader, Subscription
from chat.store.memory import Stored
from tests.helpers import Connection, Server


def texts(events: list[dict[str, Any]]) -> list[str]:
    return [e["msg"] for e in events if e.get("event") == "message"]


def subscribed(server: Server, username: str) -> tuple[Connection, str]:
    client = server.connect()
    token = client.login(username)
    client.send(f"subscribe {token}\r\n".encode())
    return client, token


def test_subscribe_pushes_backlog_after_reply() -> None:
    """subscribe answers OK, then pushes undelivered messages oldest first."""
    server = Server()
    messi = server.connect()
    token = messi.login("messi")
    for text in ["one", "two"]:
        messi.request(f"send {token} henderson {text}")
    henderson, _ = subscribed(server, "henderson")
    events = henderson.events()
    assert events[0] == {"status": "OK", "message": "Subscribed"}
    assert texts(events[1:]) == ["one", "two"]
    assert all("status" not in e for e in events[1:])
    event = events[1]
    assert event["event"] == "message"
    assert event["from"] == "messi" and event["msg_from"] == "Lionel Messi"
    assert event["to"] == "henderson" and event["msg_to"] == "Jordan Henderson"
    assert {"id", "sent_at"} <= set(event)


def test_live_message_pushed_at_commit() -> None:
    """A message sent after subscribe is pushed at once."""
    server = Server()
    henderson, _ = subscribed(server, "henderson")
    henderson.events()
    messi = server.connect()
    token = messi.login("messi")
    messi.request(f"send {token} henderson live")
    assert texts(henderson.events()) == ["live"]


def test_unsubscribed_connection_gets_no_events() -> None:
    """A connection that never subscribed only ever sees replies."""
    server = Server()
    course = server.connect()
    token = course.login("henderson")
    other = server.connect()
    messi = other.login("messi")
    other.request(f"send {messi} henderson hello")
    assert course.events() == []
    reply = course.request(f"inbox {token}")
    assert reply["messages"]["messi"][0]["msg"] == "hello"


def test_unacked_messages_come_again() -> None:
    """Pushed but unacknowledged messages are pushed again on resubscribe."""
    server = Server()
    messi = server.connect()
    token = messi.login("messi")
    messi.request(f"send {token} henderson once")
    first, token_h = subscribed(server, "henderson")
    assert texts(first.events()) == ["once"]
    first.transport.loseConnection()
    first.protocol.connectionLost(None)  # type: ignore[arg-type]
    second = server.connect()
    second.send(f"subscribe {token_h}\r\n".encode())
    assert texts(second.events()) == ["once"]


def test_ack_marks_delivered() -> None:
    """After ack, the messages are neither pushed again nor in the inbox."""
    server = Server()
    messi = server.connect()
    token = messi.login("messi")
    messi.request(f"send {token} henderson a")
    messi.request(f"send {token} henderson b")
    henderson, token_h = subscribed(server, "henderson")
    events = henderson.events()
    first_id = events[1]["id"]
    assert henderson.request(f"ack {token_h} {first_id}") == {
        "status": "OK",
        "message": "Acknowledged",
        "count": 1,
    }
    inbox = henderson.request(f"inbox {token_h}")
    assert [m["msg"] for m in inbox["messages"]["messi"]] == ["b"]


def test_window_bounds_unacked_pushes() -> None:
    """At most a window of messages is pushed before an ack makes room."""
    server = Server(push_window=3)
    messi = server.connect()
    token = messi.login("messi")
    for i in range(5):
        messi.request(f"send {token} henderson m{i}")
    henderson, token_h = subscribed(server, "henderson")
    events = henderson.events()
    assert texts(events) == ["m0", "m1", "m2"]
    messi.request(f"send {token} henderson m5")
    assert henderson.events() == []
    henderson.send(f"ack {token_h} {events[-1]['id']}\r\n".encode())
    after = henderson.events()
    # Events may come before or after the ack's reply.
    assert [e["message"] for e in after if "status" in e] == ["Acknowledged"]
    assert texts(after) == ["m3", "m4", "m5"]


def test_several_connections_each_get_every_live_event() -> None:
    """Two subscribed connections of one user both get a live message."""
    server = Server()
    laptop, _ = subscribed(server, "henderson")
    phone, _ = subscribed(server, "henderson")
    laptop.events()
    phone.events()
    messi = server.connect()
    token = messi.login("messi")
    messi.request(f"send {token} henderson both")
    assert texts(laptop.events()) == ["both"]
    assert texts(phone.events()) == ["both"]


def test_who_and_presence_events() -> None:
    """who lists users with live connections; subscribers see presence changes."""
    server = Server()
    henderson, token_h = subscribed(server, "henderson")
    henderson.events()
    messi = server.connect()
    messi.login("messi")
    assert henderson.events() == [
        {
            "event": "presence",
            "user": "messi",
            "full_name": "Lionel Messi",
            "online": True,
        }
    ]
    assert henderson.request(f"who {token_h}") == {
        "status": "OK",
        "users": [
            {"username": "henderson", "full_name": "Jordan Henderson"},
            {"username": "messi", "full_name": "Lionel Messi"},
        ],
    }
    messi.protocol.connectionLost(None)  # type: ignore[arg-type]
    assert henderson.events()[0] == {
        "event": "presence",
        "user": "messi",
        "full_name": "Lionel Messi",
        "online": False,
    }
    assert [u["username"] for u in henderson.request(f"who {token_h}")["users"]] == [
        "henderson"
    ]


def test_second_connection_keeps_user_online() -> None:
    """A user stays online while any of their connections is open."""
    server = Server()
    watcher, _ = subscribed(server, "lineker")
    first = server.connect()
    first.login("messi")
    second = server.connect()
    second.login("messi")
    watcher.events()
    first.protocol.connectionLost(None)  # type: ignore[arg-type]
    assert watcher.events() == []
    second.protocol.connectionLost(None)  # type: ignore[arg-type]
    assert watcher.events()[0]["online"] is False


def test_lost_connection_stops_its_subscription() -> None:
    """A closed connection no longer listens for messages."""
    server = Server()
    henderson, _ = subscribed(server, "henderson")
    henderson.protocol.connectionLost(None)  # type: ignore[arg-type]
    assert server.realm.subscriptions_of("henderson") == []
    assert server.realm.fanout._listeners == {}


def test_resubscribe_replaces_subscription() -> None:
    """A second subscribe on one connection replaces the first."""
    server = Server()
    client = server.connect()
    henderson = client.login("henderson")
    lineker = client.login("lineker")
    client.request(f"subscribe {henderson}")
    client.request(f"subscribe {lineker}")
    assert server.realm.subscriptions_of("henderson") == []
    assert len(server.realm.subscriptions_of("lineker")) == 1


def test_ack_argument_errors() -> None:
    """ack needs a numeric id and a valid token."""
    server = Server()
    client = server.connect()
    token = client.login()
    assert client.request(f"ack {token} abc") == {
        "status": "ERROR",
        "message": "the message id must be a number",
        "code": "invalid_argument",
    }
    assert client.request(f"ack {token}")["message"] == "--Protocol Tidak Benar"
    assert client.request("ack nope 1")["message"] == "Session Tidak Ditemukan"
    assert client.request("subscribe nope")["message"] == "Session Tidak Ditemukan"


def test_inbox_while_subscribed_frees_the_window() -> None:
    """Messages taken by inbox no longer hold the push window."""
    server = Server(push_window=2)
    messi = server.connect()
    token = messi.login("messi")
    for i in range(4):
        messi.request(f"send {token} henderson m{i}")
    henderson, token_h = subscribed(server, "henderson")
    assert texts(henderson.events()) == ["m0", "m1"]
    henderson.send(f"inbox {token_h}\r\n".encode())
    events = henderson.events()
    assert [m["msg"] for m in events[0]["messages"]["messi"]] == [
        "m0",
        "m1",
        "m2",
        "m3",
    ]
    messi.request(f"send {token} henderson m4")
    assert texts(henderson.events()) == ["m4"]


def test_store_failure_while_pushing_retries() -> None:
    """If the store cannot be read, the subscription retries later."""
    server = Server()
    messi = server.connect()
    token = messi.login("messi")
    messi.request(f"send {token} henderson later")
    server.store.fail_with("undelivered", lambda: StorageUnavailable("disk"))
    henderson, _ = subscribed(server, "henderson")
    assert texts(henderson.events()) == []
    server.store.clear("undelivered")
    server.clock.advance(1.0)
    assert texts(henderson.events()) == ["later"]


def test_logout_ends_subscriptions_of_that_session() -> None:
    """logout stops the subscriptions made with that token, and says so."""
    server = Server()
    henderson, token_h = subscribed(server, "henderson")
    other, _ = subscribed(server, "henderson")
    henderson.events()
    other.events()
    henderson.send(f"logout {token_h}\r\n".encode())
    events = henderson.events()
    assert {"event": "unsubscribed", "reason": "logged out"} in events
    assert {"status": "OK", "message": "Logged Out"} in events
    assert len(server.realm.subscriptions_of("henderson")) == 1
    messi = server.connect()
    token = messi.login("messi")
    messi.request(f"send {token} henderson still here")
    assert henderson.events() == []
    assert texts(other.events()) == ["still here"]


def test_group_and_list_messages_are_pushed() -> None:
    """sendgroup to a list or a group pushes to every recipient but the sender."""
    server = Server()
    henderson, _ = subscribed(server, "henderson")
    lineker, _ = subscribed(server, "lineker")
    messi_sub, _ = subscribed(server, "messi")
    for client in (henderson, lineker, messi_sub):
        client.events()
    messi = server.connect()
    token = messi.login("messi")
    messi.request(f"creategroup {token} team")
    for name in ("henderson", "lineker"):
        client = server.connect()
        client.request(f"joingroup {client.login(name)} team")
    messi.request(f"sendgroup {token} henderson,lineker to both")
    messi.request(f"sendgroup {token} #team to the team")
    assert texts(henderson.events()) == ["to both", "to the team"]
    lineker_events = [e for e in lineker.events() if e.get("event") == "message"]
    assert [e["msg"] for e in lineker_events] == ["to both", "to the team"]
    assert lineker_events[1]["group"] == "team"
    assert texts(messi_sub.events()) == []


def test_file_message_is_pushed_with_content() -> None:
    """A file arrives live with its name, size, hash and base64 content."""
    server = Server()
    henderson, _ = subscribed(server, "henderson")
    henderson.events()
    messi = server.connect()
    token = messi.login("messi")
    messi.request(f"sendfile {token} henderson hi.txt aGVsbG8=")
    (event,) = [e for e in henderson.events() if e.get("event") == "message"]
    assert event["file_name"] == "hi.txt"
    assert event["file_size"] == 5
    assert event["file_content"] == "aGVsbG8="


def test_ack_marks_what_was_pushed_not_a_late_lower_id() -> None:
    """On a cluster a lower id can commit after a higher one was pushed: an
    ack of the higher id must not mark the lower one delivered unseen."""
    server = Server()
    messi = server.connect()
    token = messi.login("messi")
    henderson, token_h = subscribed(server, "henderson")
    henderson.events()
    messi.request(f"send {token} henderson pushed")
    (pushed,) = [e for e in henderson.events() if e.get("event") == "message"]
    # A message with a lower id, committed late by another node: stored,
    # but not (yet) pushed here.
    late = server.store.messages[-1].message._replace(id=0, text="late")
    server.store.messages.insert(0, Stored(late))
    reply = henderson.request(f"ack {token_h} {pushed['id']}")
    assert reply["count"] == 1
    inbox = henderson.request(f"inbox {token_h}")
    assert [m["msg"] for m in inbox["messages"]["messi"]] == ["late"]


def test_ack_when_caught_up_reads_nothing() -> None:
    """A subscriber that acks each push while caught up costs no store read
    per ack (new messages come from the fan-out); one whose window was full
    gets the waiting messages read after its ack."""
    server = Server(push_window=1)
    messi = server.connect()
    token = messi.login("messi")
    henderson, token_h = subscribed(server, "henderson")
    henderson.events()
    reads: list[int] = []
    server.store.watch("undelivered", lambda args: reads.append(args[1]))
    messi.request(f"send {token} henderson one")
    (one,) = [e for e in henderson.events() if e.get("event") == "message"]
    henderson.request(f"ack {token_h} {one['id']}")
    assert reads == []
    messi.request(f"send {token} henderson two")
    messi.request(f"send {token} henderson three")  # the window is full
    (two,) = [e for e in henderson.events() if e.get("event") == "message"]
    henderson.send(f"ack {token_h} {two['id']}\r\n".encode())
    pushed = [e for e in henderson.events() if e.get("event") == "message"]
    assert [e["msg"] for e in pushed] == ["three"]
    assert reads


# The subscription's states (Reader, Backlog), with reads answered by hand.


class ReadsByHand:
    """
    The one store call a subscription makes, answered by the test.
    """

    def __init__(self) -> None:
        self.reads: list[tuple[int, int]] = []
        self._pending: list[Deferred[list[Message]]] = []

    def undelivered(
        self, username: str, after: int, limit: int
    ) -> Deferred[list[Message]]:
        d: Deferred[list[Message]] = Deferred()
        self.reads.append((after, limit))
        self._pending.append(d)
        return d

    def answer(self, *messages: Message) -> None:
        self._pending.pop(0).callback(list(messages))

    def fail(self) -> None:
        self._pending.pop(0).errback(StorageUnavailable("down"))


class Pushed:
    """
    A mind that records the ids pushed to it.
    """

    def __init__(self) -> None:
        self.ids: list[int] = []

    def message_received(self, message: Message) -> None:
        self.ids.append(message.id)


def message(message_id: int) -> Message:
    return Message(message_id, "messi", "henderson", "M", "H", "hi", 1.0)


def by_hand(window: int) -> tuple[Subscription, ReadsByHand, Pushed, Clock]:
    store, client, clock = ReadsByHand(), Pushed(), Clock()
    sub = Subscription(
        store,  # type: ignore[arg-type]
        LocalFanout(),
        clock,
        client,  # type: ignore[arg-type]
        "henderson",
        "h",
        window,
    )
    return sub, store, client, clock


def test_subscription_reads_until_caught_up_then_takes_the_fanout() -> None:
    """A started subscription reads from the store until a read comes back
    short, then pushes what the fan-out tells of without reading."""
    sub, store, client, _ = by_hand(window=2)
    assert (sub.reader, sub.backlog) == (Reader.STOPPED, Backlog.NEWER)
    sub.start()
    assert (sub.reader, store.reads) == (Reader.READING, [(0, 2)])
    store.answer(message(1), message(2))  # a full answer: more may wait
    assert (sub.reader, sub.backlog) == (Reader.IDLE, Backlog.NEWER)
    sub.acknowledged(1)
    assert (sub.reader, store.reads[-1]) == (Reader.READING, (2, 1))
    store.answer()
    assert (sub.reader, sub.backlog) == (Reader.IDLE, Backlog.CAUGHT_UP)
    sub.fanout.publish(message(3))
    assert client.ids == [1, 2, 3] and len(store.reads) == 2
    sub.stop()
    assert sub.reader is Reader.STOPPED and not sub.active


def test_a_commit_during_a_read_reads_again() -> None:
    """A message committed while a read is in flight is read by a second
    read once the first answers, not pushed past it."""
    sub, store, client, _ = by_hand(window=5)
    sub.start()
    sub.fanout.publish(message(1))
    assert (sub.reader, client.ids) == (Reader.READING_AGAIN, [])
    store.answer()
    assert (sub.reader, store.reads) == (Reader.READING, [(0, 5), (0, 5)])
    store.answer(message(1))
    assert (sub.reader, sub.backlog) == (Reader.IDLE, Backlog.CAUGHT_UP)
    assert client.ids == [1]


def test_resync_heard_during_a_read_is_owed() -> None:
    """A resync heard while a read from the last pushed is in flight that
    finds no more leaves the subscription caught up but owing a read from
    the oldest, which it starts at once; an ack during that read reads
    nothing more."""
    sub, store, client, _ = by_hand(window=2)
    sub.start()
    store.answer()
    sub.fanout.publish(message(1))
    sub.fanout.publish(message(2))
    sub.fanout.publish(message(3))  # the window is full
    assert (client.ids, sub.backlog) == ([1, 2], Backlog.NEWER)
    sub.acknowledged(1)
    assert store.reads[-1] == (2, 1)
    sub.resync()
    assert (sub.reader, sub.backlog) == (Reader.READING_AGAIN, Backlog.OLDER)
    store.answer()  # found nothing after 2: owes the read from the oldest
    assert store.reads[-1] == (0, 2)
    assert (sub.reader, sub.backlog) == (Reader.READING, Backlog.CAUGHT_UP)
    sub.acknowledged(2)
    assert sub.reader is Reader.READING
    store.answer(message(3))
    assert (sub.reader, sub.backlog) == (Reader.IDLE, Backlog.CAUGHT_UP)
    assert client.ids == [1, 2, 3] and len(store.reads) == 3


def test_failed_read_from_the_oldest_is_owed_until_the_retry() -> None:
    """A read from the oldest that fails while caught up is owed: new
    messages are still pushed at once, acks read nothing, and the retry
    reads from the oldest."""
    sub, store, client, clock = by_hand(window=3)
    sub.start()
    store.answer(message(1))
    sub.fanout.publish(message(2))  # pushed: caught up
    sub.fanout.publish(message(3))
    sub.fanout.publish(message(4))  # the window is full
    sub.acknowledged(1)
    sub.resync()  # while reading after 3
    store.answer()
    assert (sub.reader, sub.backlog) == (Reader.READING, Backlog.CAUGHT_UP)
    store.fail()
    assert (sub.reader, sub.backlog) == (Reader.IDLE, Backlog.RESYNC_OWED)
    reads = len(store.reads)
    sub.fanout.publish(message(5))
    sub.acknowledged(2)
    assert client.ids == [1, 2, 3, 5] and len(store.reads) == reads
    clock.advance(sub.retry_delay)
    assert (sub.reader, store.reads[-1]) == (Reader.READING, (0, 3))
    store.answer(message(3), message(4), message(5))
    assert (sub.reader, sub.backlog) == (Reader.IDLE, Backlog.OLDER)  # full
    assert client.ids == [1, 2, 3, 5, 4]


def test_failed_read_from_the_oldest_is_tried_again_on_an_ack() -> None:
    """A read from the oldest that fails while behind leaves the
    subscription owing it, and an ack starts it again."""
    sub, store, client, _ = by_hand(window=2)
    sub.start()
    store.answer(message(1))
    sub.resync()
    store.fail()
    assert (sub.reader, sub.backlog) == (Reader.IDLE, Backlog.OLDER)
    sub.acknowledged(1)
    assert (sub.reader, store.reads[-1]) == (Reader.READING, (0, 2))
    assert sub.backlog is Backlog.NEWER
    store.answer(message(2))
    assert (sub.reader, sub.backlog) == (Reader.IDLE, Backlog.CAUGHT_UP)
    assert client.ids == [1, 2]


def test_resync_with_a_full_window_waits_for_room() -> None:
    """A resync with a full window reads nothing until an ack makes room;
    a read from the oldest that fills the window leaves it owed."""
    sub, store, client, _ = by_hand(window=2)
    sub.start()
    store.answer(message(1))
    sub.fanout.publish(message(2))
    sub.resync()
    assert (sub.reader, sub.backlog, len(store.reads)) == (
        Reader.IDLE,
        Backlog.OLDER,
        1,
    )
    sub.acknowledged(1)
    assert store.reads[-1] == (0, 2) and sub.backlog is Backlog.NEWER
    store.answer(message(2), message(3))
    assert (sub.reader, sub.backlog) == (Reader.IDLE, Backlog.OLDER)
    assert client.ids == [1, 2, 3]
    sub.acknowledged(3)
    assert store.reads[-1] == (0, 2)


def test_a_read_answering_after_stop_is_ignored() -> None:
    """A read that answers after the subscription stopped pushes nothing."""
    sub, store, client, _ = by_hand(window=2)
    sub.start()
    sub.stop()
    store.answer(message(1))
    assert (sub.reader, client.ids) == (Reader.STOPPED, [])
