"""
The benchmark baseline: the chat protocol in memory, on plain Twisted.

It speaks the same wire contract as C{twistd chat} (auth, send, inbox,
ping; one JSON reply per request, ending in CR LF CR LF) with the course's
three demo users and their plaintext password, tokens in a dict and messages
in per-user lists. No durability, no password hashing, no limits, no
logging per connection: what is left is the cost of Twisted, the line
parsing and the JSON encoding, which is what our server is compared with.

    python bench/baseline_server.py --port 8890
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid

from twisted.internet import epollreactor

epollreactor.install()  # type: ignore[no-untyped-call]

from twisted.internet import reactor  # noqa: E402
from twisted.internet.protocol import ServerFactory  # noqa: E402
from twisted.protocols.basic import LineReceiver  # noqa: E402

DELIMITER = b"\r\n\r\n"
PASSWORD = "surabaya"
USERS = {
    "messi": "Lionel Messi",
    "henderson": "Jordan Henderson",
    "lineker": "Gary Lineker",
}


def ok(**fields: object) -> dict[str, object]:
    return {"status": "OK", **fields}


def error(message: str, code: str) -> dict[str, object]:
    return {"status": "ERROR", "message": message, "code": code}


class State:
    """
    Everything the server knows: sessions and undelivered messages.
    """

    def __init__(self) -> None:
        self.tokens: dict[str, str] = {}
        self.inboxes: dict[str, list[dict[str, str]]] = {u: [] for u in USERS}

    def handle(self, line: str) -> dict[str, object]:
        words = line.split(None, 1)
        if not words:
            return error("**Protocol Tidak Benar", "unknown_command")
        verb = words[0].lower()
        rest = words[1] if len(words) > 1 else ""
        if verb == "auth":
            args = rest.split()
            if len(args) < 2:
                return error("--Protocol Tidak Benar", "missing_argument")
            if args[0] not in USERS:
                return error("User Tidak Ada", "unknown_user")
            if args[1] != PASSWORD:
                return error("Password Salah", "wrong_password")
            token = str(uuid.uuid4())
            self.tokens[token] = args[0]
            return ok(tokenid=token)
        if verb == "send":
            parts = rest.split(None, 2)
            if len(parts) < 3 or not parts[2].strip():
                return error("--Protocol Tidak Benar", "missing_argument")
            token, recipient, text = parts[0], parts[1], parts[2].strip()
            sender = self.tokens.get(token)
            if sender is None:
                return error("Session Tidak Ditemukan", "no_session")
            if recipient not in USERS:
                return error("User Tidak Ditemukan", "no_such_user")
            self.inboxes[recipient].append(
                {
                    "msg_from": USERS[sender],
                    "msg_to": USERS[recipient],
                    "msg": text,
                    "from": sender,
                }
            )
            return ok(message="Message Sent")
        if verb == "inbox":
            args = rest.split()
            if not args:
                return error("--Protocol Tidak Benar", "missing_argument")
            user = self.tokens.get(args[0])
            if user is None:
                return error("Session Tidak Ditemukan", "no_session")
            pending, self.inboxes[user] = self.inboxes[user], []
            # The course's shape: messages grouped by sending username.
            grouped: dict[str, list[dict[str, str]]] = {}
            for m in pending:
                grouped.setdefault(m["from"], []).append(
                    {"msg_from": m["msg_from"], "msg_to": m["msg_to"], "msg": m["msg"]}
                )
            return ok(messages=grouped)
        if verb == "ping":
            return ok(message="PONG")
        return error("**Protocol Tidak Benar", "unknown_command")


class BaselineProtocol(LineReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 1 << 20

    def __init__(self, state: State) -> None:
        self.state = state

    def lineReceived(self, line: bytes) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        try:
            reply = self.state.handle(line.decode("utf-8"))
        except UnicodeDecodeError:
            reply = error("invalid UTF-8 in request", "bad_encoding")
        assert self.transport is not None
        self.transport.write(
            json.dumps(reply, separators=(",", ":")).encode("ascii") + DELIMITER
        )


class BaselineFactory(ServerFactory):
    def __init__(self) -> None:
        self.state = State()

    def buildProtocol(self, addr: object) -> BaselineProtocol:
        return BaselineProtocol(self.state)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interface", default="127.0.0.1")
    parser.add_argument(
        "--backlog", type=int, default=50, help="listen backlog (default 50)"
    )
    args = parser.parse_args(argv)
    # The default backlog, 50, is also that of the chat server's tcp: endpoint.
    reactor.listenTCP(
        args.port, BaselineFactory(), backlog=args.backlog, interface=args.interface
    )
    print(f"baseline chat server listening on {args.interface}:{args.port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
