"""
C{chat-client}: an interactive chat client for the terminal, with live
delivery.

    chat-client [--connect HOST:PORT|ENDPOINT]    default 127.0.0.1:8889

Three pieces, each testable alone:

 - L{ServerProtocol} speaks the wire protocol: one request line out, one
   C{\\r\\n\\r\\n}-framed JSON reply back, in order; frames with an
   C{"event"} key are pushed events.
 - L{ConsoleProtocol} reads what a person types (or a script pipes in)
   from standard input, and prints.
 - L{Controller} sits between them: it turns typed commands into requests,
   prints results and incoming messages, acknowledges messages after
   printing them, and logs in and subscribes again after a reconnect
   (C{ClientService} reconnects with backoff).

It never imports the server's realm or store: it only knows the wire.

Everything that came from the server (message text, names, file names,
error messages) is printed with its control and formatting characters
escaped (L{chat.escapes.visible}): another user cannot move the cursor,
rewrite a line, set the window title or reverse text with what they send.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
import sys
from collections import deque
from collections.abc import Callable
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import stdio, task
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.protocols.basic import LineReceiver
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import implementer

from chat.downloads import save
from chat.escapes import visible
from chat.options import ChatOptions, usage_error

DEFAULT_CONNECT = "127.0.0.1:8889"

#: C{--connect HOST:PORT}: a host name, an IPv4 address or an IPv6 one in
#: brackets, and a port.
_HOST_PORT = re.compile(
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(?P<port>\d{1,5})"
)
#: Twisted's client endpoint types a C{--connect} value may start with.
_ENDPOINT_TYPES = ("tcp", "ssl", "tls", "unix")

HELP = """\
commands:
  auth <user> <password>   log in (messages then arrive as they are sent)
  send <user> <text>       send a message
  inbox                    show messages not shown yet
  who                      who is online
  sendfile <user> <path>   send a file (saved by the receiver's client)
  sendgroup <u1,u2,..|#group> <text>
                           send to several users, or to a group
  creategroup <group>      create a group (joingroup, leavegroup too)
  kickgroup <group> <user> remove a member from a group you own
  groups                   your groups and their members
  history <user|#group> [n]  the last n messages of a conversation
  logout                   end the session
  help                     this list
  quit                     leave (Ctrl-D works too)"""


#: Commands that need a login: each has a Controller._<verb> method.
_NEEDS_LOGIN = (
    "send",
    "inbox",
    "who",
    "logout",
    "sendfile",
    "sendgroup",
    "creategroup",
    "joingroup",
    "leavegroup",
    "kickgroup",
    "groups",
    "history",
)
HELP_LINES = {
    "creategroup": "creategroup <group>",
    "joingroup": "joingroup <group>",
    "leavegroup": "leavegroup <group>",
    "kickgroup": "kickgroup <group> <user>",
}


def shown(value: object, keep: str = "") -> str:
    """
    A value from the server as it may be printed: its text, with control
    and formatting characters escaped (all of them: a line feed too, so
    nothing received can start a line of its own).
    """
    return visible(str(value), keep)


class ServerError(Exception):
    """
    The server answered a request with an ERROR reply.
    """

    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(reply.get("message", "error"))
        self.reply = reply
        self.message = str(reply.get("message", "error"))


class ServerProtocol(LineReceiver):
    """
    The connection to the server.
    """

    delimiter = b"\r\n\r\n"
    MAX_LENGTH = 64 * 1024 * 1024

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self._pending: deque[Deferred[dict[str, Any]]] = deque()

    def connectionMade(self) -> None:
        self.controller.connection_made(self)

    def request(self, line: str) -> Deferred[dict[str, Any]]:
        """
        Send one request line.

        @return: fires with the OK reply; fails with L{ServerError} for an
            ERROR reply, or L{ConnectionLost}.
        """
        d: Deferred[dict[str, Any]] = Deferred()
        self._pending.append(d)
        self.transport.write(line.encode("utf-8") + b"\r\n")  # type: ignore[union-attr]
        return d

    def lineReceived(self, line: bytes) -> None:
        try:
            frame = json.loads(line)
        except ValueError:
            return
        if not isinstance(frame, dict):
            return
        if "event" in frame and "status" not in frame:
            self.controller.event(frame)
        elif self._pending:
            d = self._pending.popleft()
            if frame.get("status") == "OK":
                d.callback(frame)
            else:
                d.errback(ServerError(frame))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        pending, self._pending = self._pending, deque()
        for d in pending:
            d.errback(ConnectionLost("the connection to the server was lost"))
        self.controller.connection_lost(self)


class ServerFactory(Factory):
    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def buildProtocol(self, addr: Any) -> ServerProtocol:
        return ServerProtocol(self.controller)


@implementer(IHalfCloseableProtocol)
class ConsoleProtocol(LineReceiver):
    """
    Standard input and output. The end of input is not the end of output:
    replies to the last commands are still printed (half-close).
    """

    delimiter = b"\n"
    MAX_LENGTH = 64 * 1024 * 1024

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.controller.attach(self)

    def lineReceived(self, line: bytes) -> None:
        self.controller.typed(line.rstrip(b"\r").decode("utf-8", "replace"))

    def readConnectionLost(self) -> None:
        self.controller.end_of_input()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.controller.end_of_input()
        if not self.closed.called:
            self.closed.callback(None)

    def write(self, text: str) -> None:
        self.transport.write(text.encode("utf-8"))  # type: ignore[union-attr]

    def close(self) -> Deferred[None]:
        """
        Flush what was printed, then close.
        """
        self.transport.loseConnection()  # type: ignore[union-attr]
        return self.closed


class Controller:
    """
    What the client does, between the console and the server connection.

    @ivar exit_code: 0 unless the server could not be reached or the
        connection failed while commands were waiting.
    """

    def __init__(
        self,
        clock: IReactorTime,
        connect: Callable[[bool], Deferred[Any]],
        *,
        interactive: bool,
        where: str,
        timezone: tzinfo | None = None,
        downloads: Path = Path("chat-downloads"),
        greeting: str | None = None,
    ) -> None:
        self.downloads = downloads
        self.greeting = greeting
        self.clock = clock
        self.connect = connect
        self.interactive = interactive
        self.where = where
        self.timezone = timezone
        self.console: ConsoleProtocol | None = None
        self.server: ServerProtocol | None = None
        self.username: str | None = None
        self.token: str | None = None
        self._password: str | None = None
        self._commands: deque[str] = deque()
        self._running = False
        self._input_ended = False
        self._seen: deque[int] = deque(maxlen=4096)
        self._ack_up_to = 0
        self._ack_scheduled = False
        self._was_connected = False
        self.exit_code = 0
        self.done: Deferred[int] = Deferred()

    # Output.

    def attach(self, console: ConsoleProtocol) -> None:
        """
        The console is there: greet (in a terminal), then prompt.
        """
        self.console = console
        if self.greeting is not None and self.interactive:
            self.say(self.greeting)  # and the prompt after it
        else:
            self.show_prompt()

    def prompt(self) -> str:
        return f"{self.username or 'chat'}> "

    def show_prompt(self) -> None:
        if self.interactive and self.console is not None and not self._input_ended:
            self.console.write(self.prompt())

    def say(self, text: str) -> None:
        """
        Print a line; in a terminal, on a fresh line with the prompt redrawn.

        Callers pass what came from the server through L{shown}; as a second
        line of defence, no control character but a line feed or a tab gets
        through here either.
        """
        if self.console is None:
            return
        text = visible(text, keep="\n\t")
        if self.interactive:
            self.console.write(f"\r\x1b[K{text}\n")
            if not self._running:
                # Between commands: the person may be typing, so give the
                # prompt back. After a command, _ran draws it.
                self.show_prompt()
        else:
            self.console.write(f"{text}\n")

    def format_message(self, message: dict[str, Any]) -> str:
        try:
            sent = datetime.fromisoformat(
                str(message["sent_at"]).replace("Z", "+00:00")
            )
            when = sent.astimezone(self.timezone).strftime("%H:%M")
        except (KeyError, ValueError):
            when = "--:--"
        where = f"#{shown(message['group'])} " if message.get("group") else ""
        who = (
            f"{shown(message.get('msg_from', '?'))} ({shown(message.get('from', '?'))})"
        )
        if message.get("file_name") is not None:
            what = (
                f"sent a file: {shown(message['file_name'])} "
                f"({shown(message.get('file_size', '?'))} bytes)"
            )
        else:
            what = shown(message.get("msg", ""), keep="\t")
        return f"[{when}] {where}{who}: {what}"

    # Input.

    def typed(self, text: str) -> None:
        self._commands.append(text)
        self._next()

    def end_of_input(self) -> None:
        self._input_ended = True
        self._next()

    def _next(self) -> None:
        if self._running:
            return
        if self._commands:
            self._running = True
            d = ensureDeferred(self.run(self._commands.popleft()))
            d.addErrback(self._crashed)
            d.addBoth(self._ran)
        elif self._input_ended and not self.done.called:
            self.done.callback(self.exit_code)

    def _crashed(self, f: Failure) -> None:
        self.say(f"error: {f.getErrorMessage()}")

    def _ran(self, _: object) -> None:
        self._running = False
        if not self._commands:
            self.show_prompt()
        self._next()

    async def run(self, text: str) -> None:
        """
        Run one typed command.
        """
        words = text.split()
        if not words:
            return
        verb = words[0].lower()
        if verb == "help":
            self.say(HELP)
        elif verb == "quit":
            self._commands.clear()
            self._input_ended = True
        elif verb == "auth":
            if len(words) != 3:
                self.say("usage: auth <user> <password>")
                return
            await self.login(words[1], words[2])
        elif verb in _NEEDS_LOGIN:
            if self.token is None:
                self.say("not logged in: auth <user> <password> first")
                return
            await getattr(self, f"_{verb}")(text)
        else:
            self.say(f"unknown command {verb!r}: type help for the list")

    async def _request(self, line: str) -> dict[str, Any] | None:
        """
        Send a request, connecting first if needed; print what went wrong.
        """
        try:
            server = self.server or await self.connect(self.interactive)
            return await server.request(line)
        except ServerError as e:
            if e.reply.get("code") == "no_session":
                self.say("error: your session has expired; auth again")
                self.token = None
            else:
                self.say(f"error: {shown(e.message)}")
        except Exception as e:
            self.say(f"error: cannot reach the server at {self.where}: {e}")
            self.exit_code = 1
        return None

    async def login(self, username: str, password: str) -> None:
        reply = await self._request(f"auth {username} {password}")
        if reply is None:
            return
        self.username, self.token, self._password = username, reply["tokenid"], password
        self.say(f"logged in as {username}")
        if self.interactive:
            await self._subscribe()

    async def _subscribe(self) -> None:
        if self.server is not None and self.token is not None:
            try:
                await self.server.request(f"subscribe {self.token}")
            except ServerError as e:
                self.say(f"error: cannot receive messages live: {shown(e.message)}")

    async def _send(self, text: str) -> None:
        parts = text.split(None, 2)
        if len(parts) < 3:
            self.say("usage: send <user> <text>")
            return
        if await self._request(f"send {self.token} {parts[1]} {parts[2]}"):
            self.say(f"message sent to {parts[1]}")

    async def _sendfile(self, text: str) -> None:
        parts = text.split(None, 2)
        if len(parts) < 3:
            self.say("usage: sendfile <user> <path>")
            return
        path = file_path(parts[2])
        try:
            content = path.read_bytes()
        except OSError as e:
            self.say(f"error: cannot read {path}: {e.strerror}")
            return
        encoded = base64.b64encode(content).decode("ascii")
        # The name may hold spaces: the server takes everything between the
        # recipient and the content (the last word) as the name.
        line = f"sendfile {self.token} {parts[1]} {path.name} {encoded}"
        if await self._request(line):
            self.say(f"file {path.name} ({len(content)} bytes) sent to {parts[1]}")

    async def _sendgroup(self, text: str) -> None:
        parts = text.split(None, 2)
        if len(parts) < 3:
            self.say("usage: sendgroup <user1,user2,...|#group> <text>")
            return
        if await self._request(f"sendgroup {self.token} {parts[1]} {parts[2]}"):
            self.say(f"message sent to {parts[1]}")

    async def _group_command(self, text: str, arguments: int, done: str) -> None:
        parts = text.split()
        verb = parts[0].lower()
        if len(parts) != arguments + 1:
            self.say(f"usage: {HELP_LINES[verb]}")
            return
        reply = await self._request(" ".join([verb, self.token or "", *parts[1:]]))
        if reply is not None:
            self.say(done.format(*parts[1:]))

    async def _creategroup(self, text: str) -> None:
        await self._group_command(text, 1, "created group {0}")

    async def _joingroup(self, text: str) -> None:
        await self._group_command(text, 1, "joined group {0}")

    async def _leavegroup(self, text: str) -> None:
        await self._group_command(text, 1, "left group {0}")

    async def _kickgroup(self, text: str) -> None:
        await self._group_command(text, 2, "removed {1} from group {0}")

    async def _groups(self, text: str) -> None:
        reply = await self._request(f"groups {self.token}")
        if reply is None:
            return
        if not reply["groups"]:
            self.say("no groups")
        for group in reply["groups"]:
            members = ", ".join(shown(member) for member in group["members"])
            self.say(
                f"#{shown(group['name'])} (owner {shown(group['owner'])}): {members}"
            )

    async def _history(self, text: str) -> None:
        parts = text.split()
        if len(parts) not in (2, 3):
            self.say("usage: history <user|#group> [count]")
            return
        reply = await self._request(" ".join(["history", self.token or "", *parts[1:]]))
        if reply is None:
            return
        if not reply["messages"]:
            self.say("no messages")
        for message in reversed(reply["messages"]):
            self.say(self.format_message(message))

    async def _inbox(self, text: str) -> None:
        reply = await self._request(f"inbox {self.token}")
        if reply is None:
            return
        messages = [m for ms in reply["messages"].values() for m in ms]
        messages.sort(key=lambda m: m.get("id", 0))
        if not messages:
            self.say("no new messages")
        for message in messages:
            self._show(message)

    async def _who(self, text: str) -> None:
        reply = await self._request(f"who {self.token}")
        if reply is not None:
            users = ", ".join(
                f"{shown(u['username'])} ({shown(u['full_name'])})"
                for u in reply["users"]
            )
            self.say(f"online: {users or 'nobody'}")

    async def _logout(self, text: str) -> None:
        await self._request(f"logout {self.token}")
        self.say(f"logged out {self.username}")
        self.username = self.token = self._password = None

    # Events from the server.

    def _show(self, message: dict[str, Any]) -> None:
        message_id = message.get("id")
        if isinstance(message_id, int):
            if message_id in self._seen:
                return
            self._seen.append(message_id)
        self.say(self.format_message(message))
        if message.get("file_content") is not None:
            self._save_file(message)

    def _save_file(self, message: dict[str, Any]) -> None:
        try:
            content = base64.b64decode(str(message["file_content"]), validate=True)
            path = save(self.downloads, str(message.get("file_name", "file")), content)
        except (ValueError, OSError) as e:
            self.say(f"  could not save the file: {shown(e)}")
        else:
            self.say(f"  saved to {shown(path)}")

    def event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "message":
            self._show(event)
            if isinstance(event.get("id"), int):
                self._ack_up_to = max(self._ack_up_to, event["id"])
                if not self._ack_scheduled:
                    self._ack_scheduled = True
                    self.clock.callLater(0, self._acknowledge)
        elif kind == "presence":
            state = "online" if event.get("online") else "offline"
            name, user = shown(event.get("full_name")), shown(event.get("user"))
            self.say(f"* {name} ({user}) is {state}")
        elif kind == "unsubscribed":
            self.say(f"* no longer receiving messages: {shown(event.get('reason'))}")

    def _acknowledge(self) -> None:
        self._ack_scheduled = False
        if self.server is not None and self.token is not None:
            d = self.server.request(f"ack {self.token} {self._ack_up_to}")
            d.addErrback(lambda f: None)

    # The connection.

    def connection_made(self, server: ServerProtocol) -> None:
        self.server = server
        if self._was_connected:
            self.say("* reconnected")
            if self.token is not None and self.interactive:
                ensureDeferred(self._resume())
        self._was_connected = True

    async def _resume(self) -> None:
        assert self.server is not None
        try:
            await self.server.request(f"subscribe {self.token}")
            return
        except ServerError as e:
            if e.reply.get("code") != "no_session" or self._password is None:
                self.say(f"error: {shown(e.message)}; auth again")
                self.token = None
                return
        except ConnectionLost:
            return
        assert self.username is not None
        await self.login(self.username, self._password)

    def connection_lost(self, server: ServerProtocol) -> None:
        if self.server is server:
            self.server = None
            if not self.done.called:
                if self.interactive:
                    self.say("* connection to the server lost; reconnecting...")
                elif self._commands or self._running:
                    self.exit_code = 1


def file_path(text: str) -> Path:
    """
    The file a person named in C{sendfile}: a path as typed (spaces and
    all), or, if there is no such file, as a shell would read it (in
    quotes, or with backslashes, as a terminal writes a file dropped on
    it).
    """
    path = Path(text).expanduser()
    if not path.exists():
        try:
            words = shlex.split(text)
        except ValueError:
            words = []
        if len(words) == 1:
            return Path(words[0]).expanduser()
    return path


def endpoint_description(text: str) -> str:
    """
    The Twisted client endpoint C{--connect} names: C{HOST:PORT} (the
    shorthand), or a Twisted endpoint string.

    @raise ValueError: for neither.
    """
    from twisted.internet import reactor

    description = text
    shorthand = _HOST_PORT.fullmatch(text)
    if shorthand is not None and text.partition(":")[0] not in _ENDPOINT_TYPES:
        host = shorthand.group("host").strip("[]").replace(":", "\\:")
        description = f"tcp:host={host}:port={shorthand.group('port')}"
    try:
        clientFromString(reactor, description)
        _check_port(description)
    except Exception as e:
        raise ValueError(
            f"expected HOST:PORT (such as 127.0.0.1:8889) or a Twisted client "
            f"endpoint (such as tcp:host=127.0.0.1:port=8889), not {text!r} ({e})"
        ) from None
    return description


def _check_port(description: str) -> None:
    """
    Twisted takes any number for a port, and a connection to port 99999
    fails inside its client service, with a traceback.

    @raise ValueError: if the endpoint's port is not 1-65535.
    """
    kind, *arguments = re.split(r"(?<!\\):", description)
    if kind not in ("tcp", "ssl", "tls"):
        return
    positional = [a for a in arguments if "=" not in a]
    named = dict(a.split("=", 1) for a in arguments if "=" in a)
    port = named.get("port")
    if port is None and len(positional) > 1:
        port = positional[1]
    elif port is None and len(positional) == 1 and "host" in named:
        # tcp:host=HOST:PORT: Twisted reads a lone positional as the port.
        port = positional[0]
    if port is not None and not 1 <= int(port) <= 65535:
        raise ValueError(f"port {port} is not 1-65535")


class Options(ChatOptions):
    program = "chat-client"
    synopsis = "[--connect HOST:PORT|ENDPOINT] [--downloads FOLDER]"
    optParameters = [
        [
            "connect",
            "c",
            DEFAULT_CONNECT,
            "The server: HOST:PORT, or a Twisted client endpoint "
            "(tcp:host=...:port=..., ssl:host=...:port=... for TLS).",
        ],
        [
            "downloads",
            "d",
            "chat-downloads",
            "Folder where received files are saved (never overwriting).",
        ],
    ]
    converters = {"connect": endpoint_description}

    def postOptions(self) -> None:
        self["where"] = self["connect"]
        super().postOptions()


async def run(reactor: Any, options: Options) -> int:
    interactive = sys.stdin.isatty()
    endpoint = clientFromString(reactor, options["connect"])
    where = options["where"]

    def connect(wait: bool) -> Deferred[Any]:
        return service.whenConnected(failAfterFailures=None if wait else 1)

    controller = Controller(
        reactor,
        connect,
        interactive=interactive,
        where=where,
        downloads=Path(options["downloads"]),
        greeting=f"chat client for {where}; type help for commands",
    )
    service = ClientService(
        endpoint,
        ServerFactory(controller),
        retryPolicy=backoffPolicy(initialDelay=0.5, maxDelay=30.0),
        clock=reactor,
    )
    service.startService()
    console = ConsoleProtocol(controller)
    stdio.StandardIO(console, reactor=reactor)
    code = await controller.done
    # The last command may have failed inside the service's own state
    # machine (a host name that resolves to nothing listening): stop it
    # from the reactor, not from within that call.
    await task.deferLater(reactor, 0, lambda: None)
    await service.stopService()
    if interactive:
        console.write("\n")
    await console.close()
    return code


def main(reactor: Any, *argv: str) -> Deferred[None]:
    options = Options()
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        print(usage_error(options, e), file=sys.stderr)
        raise SystemExit(2) from None

    async def go() -> None:
        code = await run(reactor, options)
        if code:
            raise SystemExit(code)

    return ensureDeferred(go())


def script() -> None:
    """
    The C{chat-client} console script.
    """
    task.react(main, sys.argv[1:])


if __name__ == "__main__":
    script()
