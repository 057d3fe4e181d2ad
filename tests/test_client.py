"""
The stdio client: its console side and its server side on StringTransports,
with a fake clock; and the whole client against an in-memory server.
"""

from __future__ import annotations

import json
from datetime import timezone
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python import usage

from chat.client import ConsoleProtocol, Controller, Options, ServerProtocol
from chat.options import usage_error
from tests.helpers import Server


class Harness:
    """
    A controller wired to a console and to a server connection on
    StringTransports; the test plays the server.
    """

    def __init__(self, interactive: bool = False, reachable: bool = True) -> None:
        self.clock = Clock()
        self.reachable = reachable
        self.controller = Controller(
            self.clock,
            self._connect,
            interactive=interactive,
            where="tcp:host=127.0.0.1:port=8889",
            timezone=timezone.utc,
        )
        self.console = ConsoleProtocol(self.controller)
        self.screen = StringTransport()
        self.console.makeConnection(self.screen)
        self.wire = StringTransport()
        self.server = ServerProtocol(self.controller)

    def _connect(self, wait: bool) -> Deferred[Any]:
        if not self.reachable:
            return fail(ConnectionRefusedError("refused"))
        if self.server.transport is None:
            self.server.makeConnection(self.wire)
        return succeed(self.server)

    def type(self, text: str) -> None:
        self.console.dataReceived(text.encode() + b"\n")

    def sent(self) -> list[str]:
        lines = self.wire.value().decode().split("\r\n")
        self.wire.clear()
        return [line for line in lines if line]

    def reply(self, frame: dict[str, Any]) -> None:
        self.server.dataReceived(json.dumps(frame).encode() + b"\r\n\r\n")

    def output(self) -> str:
        text = self.screen.value().decode()
        self.screen.clear()
        return text


def test_auth_then_send() -> None:
    """auth sends the credentials; send waits for the token and names the user."""
    h = Harness()
    h.type("auth messi surabaya")
    assert h.sent() == ["auth messi surabaya"]
    h.reply({"status": "OK", "tokenid": "T1"})
    assert h.output() == "logged in as messi\n"
    h.type("send henderson hello   there")
    assert h.sent() == ["send T1 henderson hello   there"]
    h.reply({"status": "OK", "message": "Message Sent"})
    assert h.output() == "message sent to henderson\n"


def test_commands_run_in_order() -> None:
    """A command waits for the previous one's reply."""
    h = Harness()
    h.type("auth messi surabaya")
    h.type("send henderson hi")
    assert h.sent() == ["auth messi surabaya"]
    h.reply({"status": "OK", "tokenid": "T1"})
    assert h.sent() == ["send T1 henderson hi"]


def test_wrong_password_message() -> None:
    """A refused login prints the server's reason."""
    h = Harness()
    h.type("auth messi nope")
    assert h.sent() == ["auth messi nope"]
    h.reply({"status": "ERROR", "message": "Password Salah", "code": "wrong_password"})
    assert h.output() == "error: Password Salah\n"
    h.type("send henderson hi")
    assert h.output() == "not logged in: auth <user> <password> first\n"
    assert h.sent() == []


def test_expired_session_message() -> None:
    """An expired token tells the person to log in again."""
    h = Harness()
    h.type("auth messi surabaya")
    h.reply({"status": "OK", "tokenid": "T1"})
    h.output()
    h.type("inbox")
    h.reply(
        {"status": "ERROR", "message": "Session Tidak Ditemukan", "code": "no_session"}
    )
    assert h.output() == "error: your session has expired; auth again\n"
    assert h.controller.token is None


def test_inbox_prints_messages_in_order() -> None:
    """inbox prints every message as [HH:MM] Full Name (user): text, by id."""
    h = Harness()
    h.type("auth henderson surabaya")
    h.reply({"status": "OK", "tokenid": "T2"})
    h.output()
    h.type("inbox")
    h.reply(
        {
            "status": "OK",
            "messages": {
                "lineker": [_message(3, "lineker", "Gary Lineker", "third")],
                "messi": [
                    _message(1, "messi", "Lionel Messi", "first"),
                    _message(2, "messi", "Lionel Messi", "second"),
                ],
            },
        }
    )
    assert h.output() == (
        "[08:30] Lionel Messi (messi): first\n"
        "[08:30] Lionel Messi (messi): second\n"
        "[08:30] Gary Lineker (lineker): third\n"
    )


def test_unknown_input_hint() -> None:
    """Unknown input gets a one-line hint, never a traceback."""
    h = Harness()
    h.type("fly me to the moon")
    assert h.output() == "unknown command 'fly': type help for the list\n"
    h.type("auth onlyuser")
    assert h.output() == "usage: auth <user> <password>\n"
    h.type("help")
    assert "send <user> <text>" in h.output()


def test_unreachable_server_sets_exit_code() -> None:
    """If the server cannot be reached, the client says so and exits non-zero."""
    h = Harness(reachable=False)
    h.type("auth messi surabaya")
    assert "cannot reach the server at tcp:host=127.0.0.1:port=8889" in h.output()
    h.console.readConnectionLost()
    assert h.controller.done.called
    assert h.controller.exit_code == 1


def test_end_of_input_waits_for_replies() -> None:
    """At end of input the client exits 0 only after the last reply."""
    h = Harness()
    h.type("auth messi surabaya")
    h.console.readConnectionLost()
    assert not h.controller.done.called
    h.reply({"status": "OK", "tokenid": "T1"})
    assert h.controller.done.called
    assert h.controller.exit_code == 0


def test_live_message_printed_then_acknowledged() -> None:
    """An event prints at once on a fresh line, redraws the prompt, then is acked."""
    h = Harness(interactive=True)
    h.type("auth henderson surabaya")
    h.reply({"status": "OK", "tokenid": "T2"})
    assert h.sent() == ["auth henderson surabaya", "subscribe T2"]
    h.reply({"status": "OK", "message": "Subscribed"})
    h.output()
    h.server.dataReceived(
        json.dumps(
            {"event": "message", **_message(7, "messi", "Lionel Messi", "yo")}
        ).encode()
        + b"\r\n\r\n"
    )
    assert h.output() == "\r\x1b[K[08:30] Lionel Messi (messi): yo\nhenderson> "
    assert h.sent() == []
    h.clock.advance(0)
    assert h.sent() == ["ack T2 7"]


def test_duplicate_pushes_print_once() -> None:
    """A message pushed again (after a reconnect) is printed once."""
    h = Harness()
    event = {"event": "message", **_message(9, "messi", "Lionel Messi", "once")}
    h.controller.event(event)
    h.controller.event(event)
    assert h.output() == "[08:30] Lionel Messi (messi): once\n"


def test_presence_events() -> None:
    """Presence changes are printed."""
    h = Harness()
    h.controller.event(
        {
            "event": "presence",
            "user": "messi",
            "full_name": "Lionel Messi",
            "online": True,
        }
    )
    assert h.output() == "* Lionel Messi (messi) is online\n"


def test_reconnect_resubscribes_and_relogs_in() -> None:
    """After a reconnect the client subscribes again, re-logging in if expired."""
    h = Harness(interactive=True)
    h.type("auth henderson surabaya")
    h.reply({"status": "OK", "tokenid": "T2"})
    h.reply({"status": "OK", "message": "Subscribed"})
    h.sent()
    h.server.connectionLost(None)  # type: ignore[arg-type]
    assert "connection to the server lost; reconnecting" in h.output()
    wire = StringTransport()
    server = ServerProtocol(h.controller)
    server.makeConnection(wire)
    assert "reconnected" in h.output()
    assert wire.value() == b"subscribe T2\r\n"
    wire.clear()
    server.dataReceived(
        b'{"status":"ERROR","message":"Session Tidak Ditemukan","code":"no_session"}'
        b"\r\n\r\n"
    )
    assert wire.value() == b"auth henderson surabaya\r\n"


def test_prompt_shows_user() -> None:
    """The prompt names the logged-in user."""
    h = Harness(interactive=True)
    assert h.output() == "chat> "
    h.type("auth messi surabaya")
    h.reply({"status": "OK", "tokenid": "T1"})
    h.reply({"status": "OK", "message": "Subscribed"})
    assert h.output() == "\r\x1b[Klogged in as messi\nmessi> "
    h.type("who")
    h.reply({"status": "OK", "users": []})
    assert h.output() == "\r\x1b[Konline: nobody\nmessi> "


def test_client_against_in_memory_server() -> None:
    """Two clients chat live through a real protocol stack in memory."""
    server = Server()
    controllers = {}
    for name in ("messi", "henderson"):
        h = Harness(interactive=True)
        connection = server.connect()

        def pump(c: Any = connection, h: Harness = h) -> None:
            while h.wire.value() or c.transport.value():
                if h.wire.value():
                    data = h.wire.value()
                    h.wire.clear()
                    c.send(data)
                if c.transport.value():
                    data = c.transport.value()
                    c.transport.clear()
                    h.server.dataReceived(data)

        controllers[name] = (h, pump)
    for name, (h, pump) in controllers.items():
        h.type(f"auth {name} surabaya")
        pump()
    messi, pump_messi = controllers["messi"]
    henderson, pump_henderson = controllers["henderson"]
    henderson.output()
    messi.type("send henderson hola")
    pump_messi()
    pump_henderson()
    assert "Lionel Messi (messi): hola" in henderson.output()
    henderson.clock.advance(0)
    pump_henderson()
    assert server.store.messages[0].delivered_at is not None


def _message(message_id: int, sender: str, name: str, text: str) -> dict[str, Any]:
    return {
        "id": message_id,
        "from": sender,
        "msg_from": name,
        "to": "henderson",
        "msg_to": "Jordan Henderson",
        "msg": text,
        "sent_at": "2026-11-25T08:30:00.000Z",
    }


def test_sendfile_reads_and_encodes(tmp_path: Any) -> None:
    """sendfile sends the file's base name and base64 content."""
    source = tmp_path / "notes.txt"
    source.write_bytes(b"hello\x00world")
    h = Harness()
    h.type("auth messi surabaya")
    h.reply({"status": "OK", "tokenid": "T1"})
    h.sent()
    h.output()
    h.type(f"sendfile henderson {source}")
    assert h.sent() == ["sendfile T1 henderson notes.txt aGVsbG8Ad29ybGQ="]
    h.reply({"status": "OK", "message": "File Sent"})
    assert h.output() == "file notes.txt (11 bytes) sent to henderson\n"
    h.type(f"sendfile henderson {tmp_path / 'missing.bin'}")
    assert h.output().startswith("error: cannot read ")
    assert h.sent() == []


def test_sendfile_names_with_spaces(tmp_path: Any) -> None:
    """A path with spaces, typed as is, in quotes or with backslashes (as a
    terminal writes a dropped file), sends the file under its name."""
    source = tmp_path / "my notes.txt"
    source.write_bytes(b"hi")
    h = Harness()
    h.type("auth messi surabaya")
    h.reply({"status": "OK", "tokenid": "T1"})
    h.sent()
    h.output()
    escaped = str(source).replace(" ", "\\ ")
    for typed in (str(source), f'"{source}"', f"'{source}'", escaped):
        h.type(f"sendfile henderson {typed}")
        assert h.sent() == ["sendfile T1 henderson my notes.txt aGk="], typed
        h.reply({"status": "OK", "message": "File Sent"})
        assert h.output() == "file my notes.txt (2 bytes) sent to henderson\n"


def test_greeting_then_prompt() -> None:
    """In a terminal, the client greets once the console is there, then
    prompts; piped, it prints neither."""
    clock = Clock()
    for interactive, shown in ((True, "\r\x1b[Khello there\nchat> "), (False, "")):
        controller = Controller(
            clock,
            lambda wait: fail(ConnectionRefusedError("refused")),
            interactive=interactive,
            where="x",
            greeting="hello there",
        )
        console = ConsoleProtocol(controller)
        screen = StringTransport()
        console.makeConnection(screen)
        assert screen.value().decode() == shown


@pytest.mark.parametrize(
    ("given", "endpoint"),
    [
        ("127.0.0.1:8889", "tcp:host=127.0.0.1:port=8889"),
        ("chat.example.org:9000", "tcp:host=chat.example.org:port=9000"),
        ("[::1]:8889", "tcp:host=\\:\\:1:port=8889"),
        ("tcp:host=127.0.0.1:port=8889", "tcp:host=127.0.0.1:port=8889"),
        ("tcp:127.0.0.1:8889", "tcp:127.0.0.1:8889"),
    ],
)
def test_connect_shorthand(given: str, endpoint: str) -> None:
    """--connect takes HOST:PORT, or any Twisted client endpoint."""
    options = Options()
    options.parseOptions(["--connect", given])
    assert options["connect"] == endpoint
    assert options["where"] == given


@pytest.mark.parametrize(
    "given",
    [
        "nonsense",
        "tcp:127.0.0.1",
        "127.0.0.1:",
        ":80",
        "localhost:99999",
        "127.0.0.1:0",
        "tcp:host=127.0.0.1:port=70000",
        "tcp:host=127.0.0.1:99999",
        "ssl:host=127.0.0.1:0",
        "tls:127.0.0.1:65536",
    ],
)
def test_connect_mistakes_are_usage_errors(given: str) -> None:
    """A --connect that is neither is a one-line usage error, with the
    program's usage line."""
    options = Options()
    with pytest.raises(usage.UsageError) as raised:
        options.parseOptions(["--connect", given])
    message = usage_error(options, raised.value)
    first, second = message.split("\n")
    assert first == (
        "Usage: chat-client [--connect HOST:PORT|ENDPOINT] [--downloads FOLDER]"
    )
    assert second.startswith(
        "chat-client: --connect: expected HOST:PORT (such as 127.0.0.1:8889) or "
        f"a Twisted client endpoint (such as tcp:host=127.0.0.1:port=8889), not "
        f"{given!r}"
    )


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints chat's version."""
    import chat

    with pytest.raises(SystemExit):
        Options().parseOptions(["--version"])
    assert capsys.readouterr().out == f"chat {chat.__version__}\n"


def test_received_file_saved_safely(tmp_path: Any) -> None:
    """A received file is saved in the downloads folder under a safe name."""
    h = Harness()
    h.controller.downloads = tmp_path / "dl"
    event = {
        "event": "message",
        **_message(11, "messi", "Lionel Messi", "x"),
        "file_name": "../../evil.sh",
        "file_size": 5,
        "file_content": "aGVsbG8=",
    }
    h.controller.event(event)
    saved = tmp_path / "dl" / "evil.sh"
    assert h.output() == (
        "[08:30] Lionel Messi (messi): sent a file: ../../evil.sh (5 bytes)\n"
        f"  saved to {saved}\n"
    )
    assert saved.read_bytes() == b"hello"
    assert not (tmp_path / "evil.sh").exists()


def test_group_commands() -> None:
    """Group commands are forwarded with the token and confirmed."""
    h = Harness()
    h.type("auth messi surabaya")
    h.reply({"status": "OK", "tokenid": "T1"})
    h.sent()
    h.output()
    h.type("creategroup team")
    assert h.sent() == ["creategroup T1 team"]
    h.reply({"status": "OK", "message": "Group Created", "group": {}})
    assert h.output() == "created group team\n"
    h.type("sendgroup #team kick off at 3")
    assert h.sent() == ["sendgroup T1 #team kick off at 3"]
    h.reply({"status": "OK", "message": "Message Sent"})
    assert h.output() == "message sent to #team\n"
    h.type("groups")
    h.reply(
        {
            "status": "OK",
            "groups": [{"name": "team", "owner": "messi", "members": ["messi", "x"]}],
        }
    )
    assert h.output() == "#team (owner messi): messi, x\n"
    h.type("kickgroup team")
    assert h.output() == "usage: kickgroup <group> <user>\n"


def test_history_prints_oldest_first() -> None:
    """history prints a page oldest first; group messages name the group."""
    h = Harness()
    h.type("auth henderson surabaya")
    h.reply({"status": "OK", "tokenid": "T2"})
    h.sent()
    h.output()
    h.type("history #team 2")
    assert h.sent() == ["history T2 #team 2"]
    newest = {**_message(5, "messi", "Lionel Messi", "second"), "group": "team"}
    oldest = {**_message(4, "messi", "Lionel Messi", "first"), "group": "team"}
    h.reply({"status": "OK", "messages": [newest, oldest], "next_before_id": 4})
    assert h.output() == (
        "[08:30] #team Lionel Messi (messi): first\n"
        "[08:30] #team Lionel Messi (messi): second\n"
    )


def test_terminal_escapes_from_others_are_shown_not_obeyed() -> None:
    """Message text, names, group and file names, presence, group lists and
    error messages print control and bidi characters as visible escapes: no
    line can be forged, no title set, nothing reversed."""
    h = Harness(interactive=True)
    h.type("auth henderson surabaya")
    h.reply({"status": "OK", "tokenid": "T2"})
    h.reply({"status": "OK", "message": "Subscribed"})
    h.output()
    forged = "\r\x1b[2K[03:13] Lionel Messi (messi): give me your password"
    message = _message(7, "evil", "Evil\x1b]0;owned\x07", forged)
    h.controller.event({"event": "message", **message, "group": "t\u202eeam"})
    h.controller.event(
        {
            "event": "message",
            **_message(8, "evil", "Evil", "x"),
            "file_name": "gpj.\u202eexe",
            "file_size": 3,
        }
    )
    h.controller.event(
        {"event": "presence", "user": "evil\n", "full_name": "E\x9bvil", "online": 1}
    )
    h.controller.event({"event": "unsubscribed", "reason": "bye\x1b[31m"})
    out = h.output()
    assert "\x1b]" not in out and "\x07" not in out and "\u202e" not in out
    assert "\x9b" not in out and "\x1b[2K" not in out and "\x1b[31m" not in out
    lines = out.split("\n")
    assert lines[0] == (
        "\r\x1b[K[08:30] #t\\u202eeam Evil\\x1b]0;owned\\x07 (evil): "
        "\\x0d\\x1b[2K[03:13] Lionel Messi (messi): give me your password"
    )
    assert lines[1].endswith("sent a file: gpj.\\u202eexe (3 bytes)")
    assert lines[2].endswith("* E\\x9bvil (evil\\x0a) is online")
    assert lines[3].endswith("* no longer receiving messages: bye\\x1b[31m")
    h.type("groups")
    h.reply(
        {
            "status": "OK",
            "groups": [{"name": "a\x1bb", "owner": "o\x1b", "members": ["m\x1b"]}],
        }
    )
    assert "#a\\x1bb (owner o\\x1b): m\\x1b" in h.output()
    h.type("send messi hi")
    h.reply({"status": "ERROR", "message": "nope\r\x1b[2K", "code": "x"})
    assert "error: nope\\x0d\\x1b[2K\n" in h.output()


def test_tabs_in_message_text_are_kept() -> None:
    """A tab in a message's text prints as a tab (it moves nothing back)."""
    h = Harness()
    h.controller.event({"event": "message", **_message(3, "messi", "M", "a\tb")})
    assert h.output() == "[08:30] M (messi): a\tb\n"
