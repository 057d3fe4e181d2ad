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
    chat-admin --store sqlite:chat.sqlite check
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

Commands that only read (C{users}, C{realm list}, C{check}) never create
a database, and work on a read-only one; the others create a missing
database file (never its folder) and refuse a read-only one, before
asking for anything.

C{migrate} copies a SQLite store into an empty PostgreSQL database (see
L{chat.migrate}); stop the server first. PostgreSQL passwords come from
C{PGPASSWORD}, C{~/.pgpass} or a C{passfile=} parameter of the URL.
"""

from __future__ import annotations

import getopt
import getpass
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

import argon2
from twisted.internet import task
from twisted.internet.defer import Deferred, ensureDeferred
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
from chat.hashing import PARAMETER_CONVERTERS, PARAMETER_OPTIONS, parameters_from
from chat.links import RealmLink, new_secret, validate_realm_id, validate_secret
from chat.migrate import migrate, source_path, target_url
from chat.model import User, validate_full_name, validate_password, validate_username
from chat.options import ChatOptions, usage_error
from chat.store import STORE_HELP, check_store, open_store, preflight
from chat.store.postgres import is_postgres_url, safe_url
from chat.store.sql import SQLStore
from chat.store.sqlitefile import ServerLock

#: The commands that only read the store.
READ_ONLY = frozenset({"users", "realm list", "check"})
#: The commands that may create a missing database: the others could only
#: answer that there is no such user or realm in it.
CREATES = frozenset({"useradd", "realm add"})


class InterspersedOptions(ChatOptions):
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
    arguments = ("USERNAME",)
    optParameters = [
        ["name", None, None, "The user's full name (required)."],
        ["country", None, "", "The user's country."],
        *PARAMETER_OPTIONS,
    ]
    optFlags = [
        ["admin", None, "An administrator (may link realms with addrealm)."],
    ]
    converters = PARAMETER_CONVERTERS

    def postOptions(self) -> None:
        super().postOptions()
        if not self["name"] or not self["name"].strip():
            raise usage.UsageError("--name is required")
        self["hash-parameters"] = parameters_from(self)


class UserOptions(InterspersedOptions):
    synopsis = "USERNAME"
    arguments = ("USERNAME",)


class PasswdOptions(UserOptions):
    optParameters = PARAMETER_OPTIONS
    converters = PARAMETER_CONVERTERS

    def postOptions(self) -> None:
        super().postOptions()
        self["hash-parameters"] = parameters_from(self)


class NoOptions(ChatOptions):
    pass


class SetAdminOptions(InterspersedOptions):
    synopsis = "USERNAME yes|no"
    arguments = ("USERNAME", "yes|no")

    def parseArgs(self, *values: str) -> None:
        super().parseArgs(*values)
        flag = self.pop("yes|no")
        if flag not in ("yes", "no"):
            raise usage.UsageError(f"yes or no, not {flag!r}")
        self["admin"] = flag == "yes"


class RealmAddOptions(InterspersedOptions):
    synopsis = "REALM_ID ENDPOINT [--generate]"
    arguments = ("REALM_ID", "ENDPOINT")
    optFlags = [
        [
            "generate",
            None,
            "Make a new random secret and print it (for the other realm's "
            "chat-admin) instead of reading one from standard input.",
        ],
    ]


class RealmIdOptions(InterspersedOptions):
    synopsis = "REALM_ID"
    arguments = ("REALM_ID",)


class RealmOptions(ChatOptions):
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
            raise usage.UsageError("realm add, realm list or realm remove?")


class MigrateOptions(ChatOptions):
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


class AdminOptions(ChatOptions):
    program = "chat-admin"
    common = "[--store STORE]"
    synopsis = "[--store STORE] COMMAND [ARGS]"
    optParameters = [
        ["store", None, "sqlite:chat.sqlite", f"The chat store: {STORE_HELP}."],
    ]
    subCommands: list[list[Any]] = [
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
            "check",
            None,
            NoOptions,
            "Check the database for damage (SQLite's integrity_check); "
            "exit status 1 if damaged.",
        ],
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
            names = ", ".join(str(row[0]) for row in self.subCommands)
            raise usage.UsageError(f"which command? ({names})")

    @property
    def command(self) -> str:
        """
        The command, with its subcommand (C{realm list}).
        """
        sub = getattr(self.subOptions, "subCommand", None)
        return f"{self.subCommand} {sub}" if sub else str(self.subCommand)


class Interrupted(Exception):
    """
    The person pressed Ctrl-C (or Ctrl-D) at a prompt.
    """


@contextmanager
def _interruptible() -> Iterator[None]:
    """
    Ctrl-C and Ctrl-D at a prompt end chat-admin with a message, not a
    traceback (and Ctrl-C is not left to the reactor's handler, which
    would only stop the reactor once the prompt returns).
    """
    try:
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the main thread (tests): nothing to restore
        previous = None
    try:
        yield
    except (KeyboardInterrupt, EOFError):
        raise Interrupted() from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _ask_twice(stdin: TextIO, what: str) -> str:
    """
    A secret from standard input: asked twice, hidden, on a terminal; else
    the first line.
    """
    if not stdin.isatty():
        return stdin.readline().rstrip("\r\n")
    with _interruptible():
        first = getpass.getpass(f"{what}: ")
        if getpass.getpass("Again: ") != first:
            raise ChatError(f"the {what.lower()}s differ; nothing was changed")
    return first


def read_secret(stdin: TextIO) -> str:
    """
    A link secret from standard input (see L{_ask_twice}).
    """
    return validate_secret(_ask_twice(stdin, "Shared secret"))


def read_password(stdin: TextIO) -> str:
    """
    A new password from standard input (see L{_ask_twice}), checked with
    the rule of C{register}: 8-1024 characters, none of them a space.
    """
    password = _ask_twice(stdin, "Password")
    if not password:
        raise ChatError("the password is empty")
    if any(c.isspace() for c in password):
        raise ChatError(
            "the password contains whitespace, which the protocol cannot carry"
        )
    validate_password(password)
    return password


async def run(
    reactor: Any,
    options: AdminOptions,
    stdin: TextIO,
    stdout: TextIO,
    hasher: argon2.PasswordHasher | None = None,
) -> int:
    """
    Run a command other than C{migrate}.

    @return: the exit status.
    @raise ChatError: for a mistake or a store that cannot be used.
    """
    command = options.subCommand
    sub = options.subOptions
    read_only = options.command in READ_ONLY
    # Everything that can be checked before asking for a password is.
    preflight(options["store"], write=not read_only, create=options.command in CREATES)
    if command == "check":
        return check(options["store"], stdout)
    password_hash = None
    secret = None
    if command in ("useradd", "passwd"):
        if command == "useradd":
            validate_username(sub["username"])
            sub["name"] = validate_full_name(sub["name"])
        password = read_password(stdin)
        if hasher is None:
            hasher = sub["hash-parameters"].password_hasher()
        password_hash = hasher.hash(password)
    elif command == "realm":
        secret = prepare_realm(reactor, sub, stdin)
    store = open_store(reactor, options["store"], read_only=read_only)
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
    return 0


def check(description: str, stdout: TextIO) -> int:
    """
    C{check}: print what is wrong with the database, or that nothing is.

    @return: the exit status: 1 if it is damaged.
    """
    problems = check_store(description)
    shown = safe_url(description) if is_postgres_url(description) else description
    for problem in problems:
        print(problem, file=stdout)
    if problems:
        count = f"{len(problems)} problem" + ("s" if len(problems) > 1 else "")
        raise ChatError(
            f"{shown} is damaged ({count}, above): restore it "
            "from a backup (a SQLite file together with its -wal file)"
        )
    print(f"{shown}: ok", file=stdout)
    return 0


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


def run_migrate(options: MigrateOptions, stdout: TextIO, stderr: TextIO) -> int:
    """
    The migration: synchronous (nothing else runs meanwhile), and Ctrl-C
    interrupts it at once, rolling back what it wrote. It refuses a source
    a server is running on (what it writes after the copy starts would not
    be copied).

    @return: the exit status.
    """
    lock = ServerLock(options["source"])
    lock.acquire(exclusive=False)
    try:
        with _interruptible():
            migrate(options["source"], options["target"], stdout, stderr)
    except Interrupted:
        print("\nchat-admin: interrupted; nothing was written", file=stderr)
        return 130
    finally:
        lock.release()
    return 0


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


async def command(
    reactor: Any,
    argv: Sequence[str],
    stdin: TextIO,
    stdout: TextIO,
    stderr: TextIO,
    hasher: argon2.PasswordHasher | None = None,
) -> int:
    """
    Run chat-admin with the arguments C{argv}: what it prints goes to
    C{stdout}, and its mistakes, one line each, to C{stderr}.

    @param hasher: hashes new passwords (unless given, argon2id with the
        C{--hash-*} parameters).
    @return: the exit status: 0, 1 for a mistake or a store that cannot be
        used, 2 for a usage error, 130 if interrupted.
    """
    options = AdminOptions()
    try:
        options.parseOptions(list(argv))
    except usage.UsageError as e:
        print(usage_error(options, e), file=stderr)
        return 2
    try:
        if options.subCommand == "migrate":
            return run_migrate(options.subOptions, stdout, stderr)
        return await run(reactor, options, stdin, stdout, hasher)
    except Interrupted:
        print("\nchat-admin: interrupted; nothing was changed", file=stderr)
        return 130
    except (ChatError, ValueError) as e:
        print(f"chat-admin: {describe(e)}", file=stderr)
        return 1


def main(reactor: Any, *argv: str) -> Deferred[None]:
    async def go() -> None:
        code = await command(reactor, argv, sys.stdin, sys.stdout, sys.stderr)
        if code:
            raise SystemExit(code)

    return ensureDeferred(go())


def script() -> None:
    """
    The C{chat-admin} console script.
    """
    task.react(main, sys.argv[1:])


if __name__ == "__main__":
    script()
