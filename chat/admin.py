"""
C{chat-admin}: manage accounts in a chat store.

    chat-admin --store sqlite:chat.sqlite useradd USERNAME --name "Full Name" \
        [--country C] [--hash-memory KIB --hash-time-cost N --hash-parallelism N]
    chat-admin --store sqlite:chat.sqlite passwd USERNAME [--hash-...]
    chat-admin --store sqlite:chat.sqlite userdel USERNAME
    chat-admin --store sqlite:chat.sqlite users
    chat-admin --store sqlite:chat.sqlite setadmin USERNAME yes|no
    chat-admin --store sqlite:chat.sqlite realm add REALM_ID ENDPOINT [--generate]
    chat-admin --store sqlite:chat.sqlite realm list
    chat-admin --store sqlite:chat.sqlite realm remove REALM_ID
    chat-admin migrate --from sqlite:chat.sqlite \
        --to postgresql://USER@HOST:PORT/DBNAME

Passwords, and the secrets realm links share, are read from standard input
(one line; asked twice, hidden, on a terminal), never from the command
line, where other users of the machine could see them. It is safe to run
while the server runs; it picks up link changes within
L{chat.federation.FederationSettings.sync_interval}.

Passwords are hashed with argon2id with the C{--hash-*} parameters, by
default those of C{twistd chat}; a server with other parameters hashes a
user's password again with its own at the user's next login.

C{migrate} copies a SQLite store into an empty PostgreSQL database (see
L{chat.migrate}); stop the server first. PostgreSQL passwords come from
C{PGPASSWORD}, C{~/.pgpass} or a C{passfile=} parameter of the URL.
"""

from __future__ import annotations

import getopt
import getpass
import signal
import sys
from typing import Any, TextIO

from twisted.internet import task
from twisted.internet.defer import ensureDeferred, maybeDeferred
from twisted.internet.endpoints import clientFromString
from twisted.python import usage

from chat.errors import (
    ChatError,
    InvalidFullName,
    InvalidRealmId,
    InvalidUsername,
    NoSuchRealm,
    NoSuchUser,
    RealmExists,
    UserExists,
)
from chat.hashing import PARAMETER_OPTIONS, parameters_from
from chat.links import RealmLink, new_secret, validate_realm_id, validate_secret
from chat.migrate import migrate, source_path, target_url
from chat.model import User, validate_full_name, validate_username
from chat.store import STORE_HELP, open_store
from chat.store.sql import SQLStore


class InterspersedOptions(usage.Options):
    """
    Options that may come after positional arguments too, as in
    C{useradd USERNAME --name "Full Name"} (Twisted stops at the first
    positional argument, like POSIX getopt).
    """

    def parseOptions(self, options: list[str] | None = None) -> None:
        if options is None:
            options = sys.argv[1:]
        try:
            found, arguments = getopt.gnu_getopt(options, self.shortOpt, self.longOpt)
        except getopt.error as e:
            raise usage.UsageError(str(e)) from None
        ordered: list[str] = []
        for option, value in found:
            if option.startswith("--"):
                takes_value = option[2:] + "=" in self.longOpt
                ordered.append(f"{option}={value}" if takes_value else option)
            else:
                takes_value = option[1:] + ":" in self.shortOpt
                ordered.extend([option, value] if takes_value else [option])
        super().parseOptions([*ordered, "--", *arguments])


class UserAddOptions(InterspersedOptions):
    synopsis = "USERNAME --name 'Full Name' [--country COUNTRY] [--admin]"
    optParameters = [
        ["name", None, None, "The user's full name (required)."],
        ["country", None, "", "The user's country."],
        *PARAMETER_OPTIONS,
    ]
    optFlags = [
        ["admin", None, "An administrator (may link realms with addrealm)."],
    ]

    def parseArgs(self, username: str) -> None:  # type: ignore[override]
        self["username"] = username

    def postOptions(self) -> None:
        if not self["name"] or not self["name"].strip():
            raise usage.UsageError("--name is required")
        self["hash-parameters"] = parameters_from(self)


class UserOptions(InterspersedOptions):
    synopsis = "USERNAME"

    def parseArgs(self, username: str) -> None:  # type: ignore[override]
        self["username"] = username


class PasswdOptions(UserOptions):
    optParameters = PARAMETER_OPTIONS

    def postOptions(self) -> None:
        self["hash-parameters"] = parameters_from(self)


class NoOptions(usage.Options):
    synopsis = ""


class SetAdminOptions(InterspersedOptions):
    synopsis = "USERNAME yes|no"

    def parseArgs(self, username: str, flag: str) -> None:  # type: ignore[override]
        if flag not in ("yes", "no"):
            raise usage.UsageError("say yes or no")
        self["username"] = username
        self["admin"] = flag == "yes"


class RealmAddOptions(InterspersedOptions):
    synopsis = "REALM_ID ENDPOINT [--generate]"
    optFlags = [
        [
            "generate",
            None,
            "Make a new random secret and print it (for the other realm's "
            "chat-admin) instead of reading one from standard input.",
        ],
    ]

    def parseArgs(self, realm_id: str, endpoint: str) -> None:  # type: ignore[override]
        self["realm_id"] = realm_id
        self["endpoint"] = endpoint


class RealmIdOptions(InterspersedOptions):
    synopsis = "REALM_ID"

    def parseArgs(self, realm_id: str) -> None:  # type: ignore[override]
        self["realm_id"] = realm_id


class RealmOptions(usage.Options):
    synopsis = "add|list|remove ..."
    subCommands = [
        [
            "add",
            None,
            RealmAddOptions,
            "Link to a realm reachable at a Twisted client endpoint "
            "(tcp:host=H:port=P, ssl:..., tls:...); the shared secret is "
            "read from standard input.",
        ],
        ["list", None, NoOptions, "List the links and their queued messages."],
        [
            "remove",
            None,
            RealmIdOptions,
            "Remove a link; its queued messages go back to their senders.",
        ],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("add, list or remove")


class MigrateOptions(usage.Options):
    synopsis = "--from sqlite:PATH --to postgresql://USER@HOST:PORT/DBNAME"
    optParameters = [
        ["from", None, None, "The SQLite store to copy: sqlite:PATH (read only)."],
        [
            "to",
            None,
            None,
            "An empty PostgreSQL database: postgresql://USER@HOST:PORT/DBNAME "
            "(the password from PGPASSWORD, ~/.pgpass or passfile=).",
        ],
    ]

    def postOptions(self) -> None:
        if not self["from"] or not self["to"]:
            raise usage.UsageError("--from and --to are required")
        try:
            self["source"] = source_path(self["from"])
            self["target"] = target_url(self["to"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None


class AdminOptions(usage.Options):
    synopsis = "--store STORE COMMAND [ARGS]"
    optParameters = [
        ["store", None, "sqlite:chat.sqlite", f"The chat store: {STORE_HELP}."],
    ]
    subCommands = [
        ["useradd", None, UserAddOptions, "Create a user (password on stdin)."],
        [
            "passwd",
            None,
            PasswdOptions,
            "Set a user's password (on stdin); ends its sessions.",
        ],
        ["userdel", None, UserOptions, "Delete a user, its sessions and its mailbox."],
        ["users", None, NoOptions, "List the users."],
        [
            "setadmin",
            None,
            SetAdminOptions,
            "Make a user an administrator (yes) or not (no).",
        ],
        ["realm", None, RealmOptions, "Links to other realms (chat servers)."],
        [
            "migrate",
            None,
            MigrateOptions,
            "Copy a SQLite store into an empty PostgreSQL database (--store "
            "is not used).",
        ],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("a command is required")


def read_secret(stdin: TextIO) -> str:
    """
    A link secret from standard input: prompted twice on a terminal, else
    the first line.
    """
    if stdin.isatty():
        secret = getpass.getpass("Shared secret: ")
        if getpass.getpass("Again: ") != secret:
            raise ChatError("the secrets differ")
    else:
        secret = stdin.readline().rstrip("\r\n")
    return validate_secret(secret)


def read_password(stdin: TextIO) -> str:
    """
    One password from standard input: prompted twice on a terminal, else
    the first line.
    """
    if stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise ChatError("the passwords differ")
    else:
        password = stdin.readline().rstrip("\r\n")
    if not password:
        raise ChatError("the password is empty")
    if any(c.isspace() for c in password):
        raise ChatError(
            "the password contains whitespace, which the protocol cannot carry"
        )
    return password


async def run(
    reactor: Any, options: AdminOptions, stdin: TextIO, stdout: TextIO
) -> None:
    command = options.subCommand
    sub = options.subOptions
    password_hash = None
    secret = None
    if command in ("useradd", "passwd"):
        if command == "useradd":
            validate_username(sub["username"])
            sub["name"] = validate_full_name(sub["name"])
        hasher = sub["hash-parameters"].password_hasher()
        password_hash = hasher.hash(read_password(stdin))
    elif command == "realm":
        secret = prepare_realm(reactor, sub, stdin)
    store = open_store(reactor, options["store"])
    store.start()
    try:
        if command == "useradd":
            assert password_hash is not None
            user = User(sub["username"], sub["name"], sub["country"], password_hash)
            await store.add_user(user)
            if sub["admin"]:
                await store.set_admin(user.username, True)
            kind = "administrator" if sub["admin"] else "user"
            print(f"created {kind} {user.username}", file=stdout)
        elif command == "passwd":
            assert password_hash is not None
            await store.set_password_hash(sub["username"], password_hash)
            print(f"changed the password of {sub['username']}", file=stdout)
        elif command == "userdel":
            await store.delete_user(sub["username"])
            print(f"deleted user {sub['username']}", file=stdout)
        elif command == "users":
            for user in await store.list_users():
                admin = "\tadmin" if await store.is_admin(user.username) else ""
                print(
                    f"{user.username}\t{user.full_name}\t{user.country}{admin}",
                    file=stdout,
                )
        elif command == "setadmin":
            await store.set_admin(sub["username"], sub["admin"])
            state = "is" if sub["admin"] else "is no longer"
            print(f"{sub['username']} {state} an administrator", file=stdout)
        elif command == "realm":
            await run_realm(reactor, store, sub, secret, stdout)
    finally:
        await store.close()


def prepare_realm(reactor: Any, options: RealmOptions, stdin: TextIO) -> str | None:
    """
    Check a realm command's arguments before opening the store; read the
    secret of C{realm add}.
    """
    if options.subCommand == "add":
        sub = options.subOptions
        validate_realm_id(sub["realm_id"])
        try:
            clientFromString(reactor, sub["endpoint"])
        except Exception as e:
            raise ChatError(f"invalid endpoint {sub['endpoint']!r}: {e}") from None
        return new_secret() if sub["generate"] else read_secret(stdin)
    if options.subCommand == "remove":
        validate_realm_id(options.subOptions["realm_id"])
    return None


async def run_realm(
    reactor: Any,
    store: SQLStore,
    options: RealmOptions,
    secret: str | None,
    stdout: TextIO,
) -> None:
    sub = options.subOptions
    if options.subCommand == "add":
        assert secret is not None
        link = RealmLink(sub["realm_id"], sub["endpoint"], secret, reactor.seconds())
        await store.add_realm_link(link)
        print(f"linked realm {link.realm_id} at {link.endpoint}", file=stdout)
        if sub["generate"]:
            print(
                f"secret (give it to {link.realm_id}'s administrator, who runs "
                f"chat-admin realm add with this realm's id): {secret}",
                file=stdout,
            )
    elif options.subCommand == "list":
        for link in await store.list_realm_links():
            queued = await store.outbox_size(link.realm_id)
            print(f"{link.realm_id}\t{link.endpoint}\t{queued} queued", file=stdout)
    elif options.subCommand == "remove":
        bounced = await store.remove_realm_link(sub["realm_id"], reactor.seconds())
        print(
            f"removed the link to realm {sub['realm_id']}; {len(bounced)} queued "
            "messages returned to their senders",
            file=stdout,
        )


def run_migrate(options: MigrateOptions) -> None:
    """
    The migration: synchronous (nothing else runs meanwhile), and Ctrl-C
    interrupts it at once, rolling back what it wrote.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        migrate(options["source"], options["target"], sys.stdout, sys.stderr)
    except KeyboardInterrupt:
        print("\nchat-admin: interrupted; nothing was written", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        signal.signal(signal.SIGINT, previous)


def describe(error: Exception) -> str:
    if isinstance(error, NoSuchUser):
        return f"no such user: {error.username}"
    if isinstance(error, NoSuchRealm):
        return f"no link to realm {error.realm_id}"
    if isinstance(error, RealmExists):
        return f"realm already linked: {error.realm_id}"
    if isinstance(error, InvalidRealmId):
        return f"invalid realm id: {error}"
    if isinstance(error, UserExists):
        return f"user already exists: {error.username}"
    if isinstance(error, InvalidUsername):
        return f"invalid username: {error}"
    if isinstance(error, InvalidFullName):
        return f"invalid full name: {error}"
    return str(error)


def main(reactor: Any, *argv: str) -> Any:
    options = AdminOptions()
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        print(f"{options}\nchat-admin: {e}", file=sys.stderr)
        raise SystemExit(2) from None

    def failed(f: Any) -> None:
        if f.check(ChatError, ValueError):
            print(f"chat-admin: {describe(f.value)}", file=sys.stderr)
            raise SystemExit(1)
        return f

    if options.subCommand == "migrate":
        return maybeDeferred(run_migrate, options.subOptions).addErrback(failed)
    d = ensureDeferred(run(reactor, options, sys.stdin, sys.stdout))
    return d.addErrback(failed)


def script() -> None:
    """
    The C{chat-admin} console script.
    """
    task.react(main, sys.argv[1:])


if __name__ == "__main__":
    script()
