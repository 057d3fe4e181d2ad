"""
The line protocol on a StringTransport with an in-memory store and a fake
clock: every command, every error reply, and the framing rules.
"""

from __future__ import annotations

import json
import re
import uuid

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher

from tests.helpers import Server

UUID4 = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
)


def test_auth_returns_uuid4_token() -> None:
    """auth with the right password answers OK with a uuid4 tokenid (and
    the same as token_id, with realm_id, which some clients read)."""
    reply = Server().connect().request("auth messi surabaya")
    assert reply["status"] == "OK"
    assert UUID4.fullmatch(reply["tokenid"])
    assert set(reply) == {"status", "tokenid", "token_id", "realm_id"}
    assert reply["token_id"] == reply["tokenid"]


def test_course_client_bytes() -> None:
    """The course client's exact bytes (trailing space, CRLF) work."""
    client = Server().connect()
    client.send(b"auth messi surabaya \r\n")
    (reply,) = client.replies()
    token = reply["tokenid"]
    client.send(f"send {token} henderson  hello gimana kabarnya son \r\n".encode())
    assert client.replies() == [{"status": "OK", "message": "Message Sent"}]


def test_auth_unknown_user() -> None:
    """auth for a user that does not exist answers User Tidak Ada."""
    reply = Server().connect().request("auth ronaldo surabaya")
    assert reply == {
        "status": "ERROR",
        "message": "User Tidak Ada",
        "code": "unknown_user",
    }


def test_auth_wrong_password() -> None:
    """auth with a wrong password answers Password Salah."""
    reply = Server().connect().request("auth messi barcelona")
    assert reply == {
        "status": "ERROR",
        "message": "Password Salah",
        "code": "wrong_password",
    }


def test_send_and_inbox() -> None:
    """A sent message arrives once in the recipient's inbox, in course shape."""
    server = Server()
    server.clock.advance(1764037200.25)
    messi = server.connect()
    token = messi.login("messi")
    assert messi.request(f"send {token} henderson hello son") == {
        "status": "OK",
        "message": "Message Sent",
    }
    henderson = server.connect()
    other = henderson.login("henderson")
    reply = henderson.request(f"inbox {other}")
    assert reply == {
        "status": "OK",
        "messages": {
            "messi": [
                {
                    "msg_from": "Lionel Messi",
                    "msg_to": "Jordan Henderson",
                    "msg": "hello son",
                    "id": 1,
                    "sent_at": "2025-11-25T02:20:00.250Z",
                    "from": "messi",
                    "to": "henderson",
                }
            ]
        },
    }
    assert henderson.request(f"inbox {other}") == {"status": "OK", "messages": {}}


def test_inbox_groups_by_sender_in_order() -> None:
    """The inbox groups messages by sender username, each group in send order."""
    server = Server()
    client = server.connect()
    messi = client.login("messi")
    lineker = client.login("lineker")
    henderson = client.login("henderson")
    client.request(f"send {messi} henderson one")
    client.request(f"send {lineker} henderson two")
    client.request(f"send {messi} henderson three")
    messages = client.request(f"inbox {henderson}")["messages"]
    assert list(messages) == ["messi", "lineker"]
    assert [m["msg"] for m in messages["messi"]] == ["one", "three"]
    assert [m["msg"] for m in messages["lineker"]] == ["two"]


def test_message_text_is_rest_of_line_stripped() -> None:
    """The text keeps inner spacing and loses surrounding whitespace."""
    server = Server()
    client = server.connect()
    token = client.login()
    client.request(f"send {token}   messi    a  b\tc   ")
    messages = client.request(f"inbox {token}")["messages"]
    assert messages["messi"][0]["msg"] == "a  b\tc"


def test_send_unknown_session() -> None:
    """send with an unknown token answers Session Tidak Ditemukan."""
    reply = Server().connect().request(f"send {uuid.uuid4()} henderson hi")
    assert reply["message"] == "Session Tidak Ditemukan"
    assert reply["status"] == "ERROR"


def test_inbox_unknown_session() -> None:
    """inbox with an unknown token answers Session Tidak Ditemukan."""
    reply = Server().connect().request("inbox nope")
    assert reply == {
        "status": "ERROR",
        "message": "Session Tidak Ditemukan",
        "code": "no_session",
    }


def test_send_unknown_recipient() -> None:
    """send to a user that does not exist answers User Tidak Ditemukan."""
    client = Server().connect()
    token = client.login()
    reply = client.request(f"send {token} ronaldo hi")
    assert reply == {
        "status": "ERROR",
        "message": "User Tidak Ditemukan",
        "code": "no_such_user",
    }


def test_unknown_command_and_empty_line() -> None:
    """An unknown command word or an empty line answers **Protocol Tidak Benar."""
    client = Server().connect()
    for line in ["logon messi surabaya", "", "   "]:
        assert client.request(line)["message"] == "**Protocol Tidak Benar"


def test_missing_arguments() -> None:
    """Too few arguments, or empty text, answers --Protocol Tidak Benar."""
    client = Server().connect()
    token = client.login()
    for line in [
        "auth",
        "auth messi",
        "send",
        f"send {token}",
        f"send {token} messi",
        f"send {token} messi   ",
        "inbox",
    ]:
        reply = client.request(line)
        assert reply == {
            "status": "ERROR",
            "message": "--Protocol Tidak Benar",
            "code": "missing_argument",
        }, line


def test_command_word_case_insensitive() -> None:
    """AUTH, Send and INBOX work like their lowercase forms."""
    client = Server().connect()
    token = client.request("AUTH messi surabaya")["tokenid"]
    assert client.request(f"Send {token} messi hi")["status"] == "OK"
    assert client.request(f"INBOX {token}")["messages"]["messi"][0]["msg"] == "hi"


def test_lf_and_crlf() -> None:
    """Lines may end in LF or CRLF."""
    client = Server().connect()
    client.send(b"ping a\nping b\r\n")
    assert [r["echo"] for r in client.replies()] == ["a", "b"]


def test_split_packets() -> None:
    """A line split over many packets is handled once complete."""
    client = Server().connect()
    for byte in b"auth messi surabaya\r":
        client.send(bytes([byte]))
    assert client.replies() == []
    client.send(b"\n")
    assert client.replies()[0]["status"] == "OK"


def test_several_lines_in_one_packet() -> None:
    """Several lines in one packet are answered in order."""
    client = Server().connect()
    token = client.login()
    client.send(
        f"send {token} henderson one\r\nping x\r\n"
        f"send {token} henderson two\r\n".encode()
    )
    replies = client.replies()
    assert [r.get("message") for r in replies] == [
        "Message Sent",
        "PONG",
        "Message Sent",
    ]


def test_replies_stay_in_order_while_a_command_waits() -> None:
    """A later line is answered only after an earlier, slower one."""
    server = Server()
    client = server.connect()
    token = client.login()
    slow = server.store.hold("store_message")
    client.send(f"send {token} henderson hi\r\nping after\r\n".encode())
    assert client.replies() == []
    slow.callback(None)
    replies = client.replies()
    assert [r["message"] for r in replies] == ["Message Sent", "PONG"]


def test_pipelining_pauses_reading() -> None:
    """Too many lines queued behind a slow command pause the transport."""
    server = Server()
    client = server.connect()
    token = client.login()
    slow = server.store.hold("store_message")
    client.send(f"send {token} henderson hi\r\n".encode() + b"ping\r\n" * 100)
    assert client.transport.producerState == "paused"
    slow.callback(None)
    assert len(client.replies()) == 101
    assert client.transport.producerState == "producing"


def test_ping_and_quit() -> None:
    """ping answers PONG; quit answers bye and closes."""
    client = Server().connect()
    assert client.request("ping") == {"status": "OK", "message": "PONG"}
    assert client.request("quit") == {"status": "OK", "message": "bye"}
    assert client.transport.disconnecting


def test_oversized_line_closes_after_error() -> None:
    """A line over max-line gets one error after earlier replies; nothing after runs."""
    server = Server(max_line=100)
    client = server.connect()
    token = client.login()
    client.send(
        b"ping first\r\n" + b"x" * 200 + f"\r\nsend {token} henderson no\r\n".encode()
    )
    replies = client.replies()
    assert replies == [
        {"status": "OK", "message": "PONG", "echo": "first"},
        {"status": "ERROR", "message": "line too long", "code": "line_too_long"},
    ]
    assert client.transport.disconnecting
    assert server.store.messages == []


def test_oversized_line_without_newline() -> None:
    """An endless line without a newline is cut off at max-line."""
    client = Server(max_line=100).connect()
    client.send(b"y" * 150)
    assert client.replies()[0]["code"] == "line_too_long"
    assert client.transport.disconnecting


def test_line_of_exactly_max_line_with_crlf() -> None:
    """A line of exactly max-line bytes is accepted, even ending in CRLF."""
    client = Server(max_line=20).connect()
    line = b"ping " + b"z" * 15
    assert len(line) == 20
    client.send(line + b"\r\n")
    assert client.replies()[0]["echo"] == "z" * 15


def test_invalid_utf8_keeps_connection() -> None:
    """Invalid UTF-8 is an error reply; the connection stays usable."""
    client = Server().connect()
    client.send(b"send \xff\xfe x y\r\n")
    assert client.replies() == [
        {
            "status": "ERROR",
            "message": "invalid UTF-8 in request",
            "code": "bad_encoding",
        }
    ]
    assert not client.transport.disconnecting
    assert client.request("ping")["message"] == "PONG"


def test_nul_byte_is_an_error() -> None:
    """A NUL byte is an error reply; the connection stays usable."""
    client = Server().connect()
    client.send(b"auth messi\x00 surabaya\r\n")
    assert client.replies()[0]["code"] == "bad_request"
    assert client.request("ping")["message"] == "PONG"


def test_unicode_text_is_ascii_json() -> None:
    """Replies are ASCII (escaped JSON), so any chunking decodes; text survives."""
    client = Server().connect()
    token = client.login()
    client.request(f"send {token} messi héllo 🎉")
    client.send(f"inbox {token}\r\n".encode())
    data = client.transport.value()
    data.decode("ascii")
    assert json.loads(data[:-4])["messages"]["messi"][0]["msg"] == "héllo 🎉"


def test_storage_unavailable_is_not_acknowledged() -> None:
    """When the store fails, send answers storage unavailable, then recovers."""
    server = Server()
    client = server.connect()
    token = client.login()
    server.store.broken = True
    assert client.request(f"send {token} henderson hi") == {
        "status": "ERROR",
        "message": "storage unavailable",
        "code": "storage_unavailable",
    }
    server.store.broken = False
    assert client.request(f"send {token} henderson hi")["status"] == "OK"
    assert len(server.store.messages) == 1


def test_unexpected_error_is_logged_not_leaked() -> None:
    """A bug gives 'internal error' to the client and a logged traceback."""
    server = Server()
    client = server.connect()
    token = client.login()
    server.store.fail_with("drain_inbox", ZeroDivisionError)
    events = EventLoggingObserver()
    globalLogPublisher.addObserver(events)
    try:
        client.send(f"inbox {token}\r\n".encode())
    finally:
        globalLogPublisher.removeObserver(events)
    data = client.transport.value()
    assert b"Traceback" not in data and b"ZeroDivision" not in data
    assert json.loads(data[:-4]) == {
        "status": "ERROR",
        "message": "internal error",
        "code": "internal",
    }
    failures = [e for e in events if "log_failure" in e]
    assert failures and failures[0]["log_failure"].check(ZeroDivisionError)


def test_passwords_and_tokens_never_logged() -> None:
    """No event carries the password or the token, even failed logins."""
    server = Server()
    events = EventLoggingObserver()
    globalLogPublisher.addObserver(events)
    try:
        client = server.connect()
        token = client.login()
        client.request("auth messi wrongpassword123")
        client.request(f"send {token} henderson hi")
        client.request(f"inbox {token}")
    finally:
        globalLogPublisher.removeObserver(events)
    assert len(events) >= 4
    from twisted.logger import formatEvent

    for event in events:
        text = formatEvent(event) + repr(event)
        assert "surabaya" not in text
        assert "wrongpassword123" not in text
        assert token not in text


def test_commands_wait_until_factory_opens() -> None:
    """Commands that arrive before the server is ready run once it is."""
    server = Server()
    server.factory.hold()
    client = server.connect()
    client.send(b"ping early\r\n")
    assert client.replies() == []
    server.factory.open()
    assert client.replies()[0]["echo"] == "early"


def test_rate_limited_reply_carries_retry_after() -> None:
    """A rate-limited command answers 'too many attempts' with retry_after_ms."""

    from chat.errors import RateLimited

    server = Server()
    client = server.connect()
    token = client.login()
    server.store.fail_with("store_message", lambda: RateLimited(1.5))
    assert client.request(f"send {token} henderson hi") == {
        "status": "ERROR",
        "message": "too many attempts",
        "code": "rate_limited",
        "retry_after_ms": 1500,
    }
