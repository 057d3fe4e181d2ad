"""
The line protocol: bytes in, commands to the avatar, JSON replies out.

The flow on one connection:

 1. Each line (LF-terminated, a trailing CR stripped) is parsed by
    L{chat.commands.parse}; a bad line gets an ERROR reply and the
    connection stays usable.
 2. C{auth} logs in through the portal with the username and password and
    opens a session; C{register} asks the factory's L{IRegistrar} (it
    needs no login); every other command logs in through the portal with
    the token it carries, and calls the L{IChatUser} avatar it gets.
 3. Replies go out in request order: while one command waits (for the
    store's commit, or a password hash), later lines wait in a queue; if a
    client pipelines more than C{max_pipeline} lines, reading pauses.
 4. A line longer than C{max_line} gets one ERROR reply, after the replies
    to the lines before it, and the connection is closed; nothing after it
    runs.
 5. A connection may instead be a link from another realm: it says
    C{realm-hello}, proves with C{realm-auth} that it knows the link's
    secret (L{chat.federation.Federation.authenticate}), and may then only
    send C{realm-msg}, which its L{chat.federation.InboundLink} stores. A
    link never logs in as a user, and a user's connection never becomes a
    link.

Limits on one connection (values in L{chat.limits.Limits}; the factory
keeps what connections share, including one L{chat.limits.Deadlines} for
every connection's login deadline and idle timeout):

 - Over the connection limits (in total, per address) a new connection
   gets one ERROR reply and is closed.
 - A connection must log in (a successful C{auth}, or any command with a
   valid token) within C{login_timeout} of connecting, whatever it sends
   meanwhile (a realm link: a successful C{realm-auth}); after that it is
   closed when idle for C{idle_timeout}, unless it is subscribed to events
   or is a realm link.
 - Failed logins (per username and per address) and invalid tokens (per
   address) are limited before the password is hashed or the token looked
   up; a refused attempt gets C{too many attempts} with C{retry_after_ms}.
 - Commands beyond C{command_rate} are not refused: reading pauses until
   the connection's bucket has a token again.
 - The protocol is the streaming producer of its transport: when the
   client stops reading and the transport's buffer fills, reading its
   input and running its queued commands pause until it has read what was
   sent, so its replies do not pile up; if more than C{max_output} bytes
   (of pushed events) pile up meanwhile anyway, the connection is dropped.

Domain errors become the course's error replies; anything unexpected is
logged and answered with C{internal error}, never with a traceback.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from chat import commands
from chat.checkers import SessionToken
from chat.errors import (
    AlreadyAMember,
    BadRealmMessage,
    CannotKickSelf,
    FileTooLarge,
    ForgedSender,
    GroupExists,
    InvalidFileName,
    InvalidFullName,
    InvalidGroupName,
    InvalidPassword,
    InvalidRealmId,
    InvalidUsername,
    MailboxFull,
    NoSuchGroup,
    NoSuchRealm,
    NoSuchUser,
    NoSuchUsers,
    NotAdmin,
    NotAMember,
    NotGroupOwner,
    QuotaExceeded,
    RateLimited,
    RealmAuthFailed,
    RealmExists,
    RealmLinkOnly,
    RealmMismatch,
    RealmNotAuthenticated,
    RealmQueueFull,
    RealmsDisabled,
    RegistrationClosed,
    SessionNotFound,
    StorageUnavailable,
    TooManyGroups,
    TooManyRealmRecipients,
    TooManyRecipients,
    UnknownUser,
    UserExists,
    WrongPassword,
)
from chat.interfaces import IChatClient, IChatUser, IRegistrar
from chat.limits import (
    ConnectionTracker,
    Deadlines,
    FailureLimiter,
    Limits,
    address_key,
    take_token,
)
from chat.logs import make_logger, unverified_name
from chat.model import Group, Message, Page
from chat.sessions import SessionManager

if TYPE_CHECKING:
    from chat.federation import Challenge, Federation, InboundLink
    from chat.metrics import Metrics

Reply = dict[str, object]

#: Domain failures and their wire replies, most specific first. The
#: message is formatted with the exception ("{}" is its text).
ERRORS: list[tuple[type[Exception], str, str]] = [
    (UnknownUser, "User Tidak Ada", "unknown_user"),
    (WrongPassword, "Password Salah", "wrong_password"),
    (SessionNotFound, "Session Tidak Ditemukan", "no_session"),
    (NoSuchUser, "User Tidak Ditemukan", "no_such_user"),
    (NoSuchUsers, "User Tidak Ditemukan: {}", "no_such_user"),
    (StorageUnavailable, "storage unavailable", "storage_unavailable"),
    (RegistrationClosed, "registration is disabled", "registration_closed"),
    (InvalidUsername, "invalid username: {}", "invalid_username"),
    (InvalidPassword, "invalid password: {}", "invalid_password"),
    (InvalidFullName, "invalid full name: {}", "invalid_full_name"),
    (UserExists, "user already exists", "user_exists"),
    (InvalidGroupName, "invalid group name: {}", "invalid_group_name"),
    (NoSuchGroup, "no such group", "no_such_group"),
    (GroupExists, "group already exists", "group_exists"),
    (NotAMember, "not a member of the group", "not_a_member"),
    (AlreadyAMember, "already a member of the group", "already_member"),
    (NotGroupOwner, "only the group owner can do this", "not_owner"),
    (CannotKickSelf, "the owner cannot kick themselves", "cannot_kick_self"),
    (TooManyRecipients, "too many recipients", "too_many_recipients"),
    (InvalidFileName, "invalid file name: {}", "invalid_file_name"),
    (FileTooLarge, "file too large", "file_too_large"),
    (QuotaExceeded, "file quota exceeded", "quota_exceeded"),
    (TooManyGroups, "too many groups", "too_many_groups"),
    # Other realms (chat.federation).
    (NoSuchRealm, "Realm Tidak Ditemukan", "no_such_realm"),
    (RealmExists, "Realm sudah ada", "realm_exists"),
    (InvalidRealmId, "invalid realm id", "invalid_realm_id"),
    (RealmQueueFull, "realm queue full", "realm_queue_full"),
    (TooManyRealmRecipients, "too many recipients", "too_many_recipients"),
    (NotAdmin, "not an administrator", "not_admin"),
    (RealmsDisabled, "realms are not enabled", "realms_disabled"),
    (RealmMismatch, "wrong realm", "wrong_realm"),
    (RealmNotAuthenticated, "realm not authenticated", "realm_not_authenticated"),
    (RealmLinkOnly, "not allowed on a realm link", "realm_link"),
    (ForgedSender, "forged sender", "forged_sender"),
    (BadRealmMessage, "malformed realm message", "bad_realm_message"),
    (MailboxFull, "mailbox full", "mailbox_full"),
]

#: What a connection may send once it is (becoming) a link to another realm.
LINK_VERBS = frozenset({"realm-hello", "realm-auth", "realm-msg", "ping", "quit"})

#: Extra keys of some error replies.
ERROR_FIELDS: dict[type[Exception], Callable[[Any], dict[str, object]]] = {
    NoSuchUsers: lambda e: {"users": list(e.usernames)},
    NotAMember: lambda e: {"group": e.name, "username": e.username},
    TooManyRecipients: lambda e: {"max_recipients": e.limit},
    FileTooLarge: lambda e: {"max_file_size": e.limit},
    MailboxFull: lambda e: {"username": e.username},
    BadRealmMessage: lambda e: {"reason": str(e)},
    QuotaExceeded: lambda e: {"quota": e.quota, "limit": e.limit},
    TooManyGroups: lambda e: {"max_groups": e.limit},
}

_TOO_LONG = object()

# Why reading is paused (bits of ChatProtocol._paused_by).
_PIPELINE = 1  # too many lines queued behind a slow command
_RATE = 2  # the command rate
_OUTPUT = 4  # the client is not reading its replies


def inbox_reply(messages: list[Message]) -> Reply:
    """
    The course's inbox shape: messages grouped by sender, in send order.
    """
    grouped: dict[str, list[dict[str, object]]] = {}
    for message in messages:
        grouped.setdefault(message.sender, []).append(message.to_wire())
    return commands.ok(messages=grouped)


def history_reply(page: Page) -> Reply:
    """
    One page of a history, newest first, and where the next page starts.
    """
    next_before_id = page.messages[-1].id if page.more and page.messages else None
    return commands.ok(
        messages=[message.to_wire() for message in page.messages],
        next_before_id=next_before_id,
    )


def file_sent_reply(messages: list[Message]) -> Reply:
    first = messages[0]
    return commands.ok(
        message="File Sent",
        file_name=first.file_name,
        file_size=first.file_size,
        file_sha256=first.file_sha256,
    )


def group_reply(message: str) -> Callable[[Group], Reply]:
    return lambda group: commands.ok(message=message, group=group.to_wire())


@implementer(IChatClient)
class ChatProtocol(LineReceiver):
    """
    One client connection speaking the v1 line protocol.
    """

    delimiter = b"\n"
    factory: ChatFactory
    log = make_logger()

    # The limits' per-connection state lives in slots, out of the instance
    # dict: past 30 attributes CPython gives every instance a dict of its
    # own keys, which costs about 1.3 KB per connection.
    __slots__ = (
        "_address",
        "_authenticated",
        "_avatars",
        "_closing",
        "_counted",
        "_deadline_slot",
        "_last_active",
        "_output_blocked",
        "_paused_by",
        "_producing",
        "_rate_at",
        "_rate_tokens",
        "_throttle",
        "_unsent",
    )

    def __init__(self, portal: Portal, max_line: int, max_pipeline: int = 64) -> None:
        # +1 so that a line of exactly max_line characters may end in CR LF.
        self.MAX_LENGTH = max_line + 1
        self.portal = portal
        self.max_pipeline = max_pipeline
        self._queue: deque[Any] = deque()
        self._busy = False
        self._draining = False
        self._input_closed = False
        self._peer = "?"
        # Per user this connection has acted as: its cred logout, and the
        # avatar, reused while the session manager vouches for the token.
        self._logouts: dict[str, Callable[[], None]] = {}
        self._avatars: dict[str, Any] = {}
        self._subscription: tuple[Any, Any] | None = None
        self._host = "?"
        self._partial: list[bytes] = []
        self._partial_length = 0
        # Realm links (chat.federation): a connection that says realm-hello
        # is a link from then on, and never a user's.
        self._auth_token: str | None = None
        self._link_mode = False
        self._realm_challenge: Challenge | None = None
        self._realm_link: InboundLink | None = None
        # Connection lifecycle and limits (see the module docstring). This
        # is kept small: a server holds thousands of idle connections.
        self._address = ""
        self._counted = False
        self._closing = False
        self._authenticated = False
        self._paused_by = 0
        self._deadline_slot = 0
        self._last_active = 0.0
        self._rate_tokens = 0.0
        self._rate_at = 0.0
        self._throttle: IDelayedCall | None = None
        self._producing = False
        self._output_blocked = False
        self._unsent = 0

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        self._host = str(getattr(peer, "host", peer))
        self._address = address_key(str(getattr(peer, "host", "") or ""))
        self._peer = f"{self._host}:{getattr(peer, 'port', '')}"
        factory = self.factory
        refused = factory.connections.admit(self._address)
        if refused is not None:
            self.log.info(
                "Refused connection from {peer}: {why}", peer=self._peer, why=refused
            )
            self._write(commands.error(refused, "too_many_connections"))
            self._close()
            return
        self._counted = True
        # Replies and pushes are small writes: with Nagle's algorithm, a
        # push written just after a reply waits for the client's delayed
        # ACK of that reply (40 ms on Linux).
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        self.log.info("Connection from {peer}", peer=self._peer)
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self._producing = True
        now = factory.clock.seconds()
        self._last_active = self._rate_at = now
        if factory.limits.command_rate is not None:
            self._rate_tokens = factory.limits.command_rate.count
        self._deadline_slot = factory.deadlines.add(
            self, now + factory.limits.login_timeout
        )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._input_closed = True
        self._closing = True
        self._queue.clear()
        if self._throttle is not None and self._throttle.active():
            self._throttle.cancel()
        self._throttle = None
        self._unsubscribe()
        logouts, self._logouts = self._logouts, {}
        self._avatars.clear()
        for logout in logouts.values():
            logout()
        self._partial.clear()
        if self._counted:
            self._counted = False
            self.factory.deadlines.remove(self, self._deadline_slot)
            self.factory.connections.release(self._address)
            self.log.info("Connection from {peer} closed", peer=self._peer)

    # Lifecycle: login deadline, idle timeout, closing.

    def deadline_passed(self, now: float) -> None:
        """
        Called by the factory's L{Deadlines}: before login, the login
        deadline passed; after, the idle timeout may have.
        """
        if self._closing:
            return
        if not self._authenticated:
            self._close_with_error("login timeout", "login_timeout")
            return
        idle_timeout = self.factory.limits.idle_timeout
        idle_until = self._last_active + idle_timeout
        if idle_until > now:
            self._deadline_slot = self.factory.deadlines.add(self, idle_until)
        elif self._subscription is not None or self._realm_link is not None:
            # A connection subscribed to events is a listener, quiet by
            # design (the clients do not ping); a realm link has keepalives
            # of its own (chat.federation). Neither is idle.
            self._deadline_slot = self.factory.deadlines.add(self, now + idle_timeout)
        else:
            self._close_with_error("idle timeout", "idle_timeout")

    def _close_with_error(self, message: str, code: str) -> None:
        self.log.info(
            "Closing connection from {peer}: {why}", peer=self._peer, why=message
        )
        self._write(commands.error(message, code))
        self._close()

    def _authenticated_now(self) -> None:
        """
        The connection proved who it is: the login deadline gives way to the
        idle timeout.
        """
        if self._authenticated or self._closing:
            return
        self._authenticated = True
        factory = self.factory
        factory.deadlines.remove(self, self._deadline_slot)
        self._last_active = now = factory.clock.seconds()
        self._deadline_slot = factory.deadlines.add(
            self, now + factory.limits.idle_timeout
        )

    def _close(self, abort: bool = False) -> None:
        """
        Stop reading and running commands, and close the connection: after
        flushing what was written, or at once if the client is not reading
        (or C{abort}).
        """
        if self._closing:
            return
        self._closing = True
        self._input_closed = True
        self._queue.clear()
        transport: Any = self.transport
        if self._producing:
            # A registered producer keeps a transport from closing.
            self._producing = False
            transport.unregisterProducer()
        if abort or self._output_blocked:
            transport.abortConnection()
        else:
            transport.loseConnection()

    # Reading: paused while any reason holds (too many queued lines, command
    # rate, a client that does not read its replies).

    def _pause_reading(self, reason: int) -> None:
        if not self._paused_by and not self._input_closed:
            # LineReceiver stops splitting buffered lines while paused.
            self.paused = True
            self.transport.pauseProducing()  # type: ignore[union-attr]
        self._paused_by |= reason

    def _resume_reading(self, reason: int) -> None:
        if not self._paused_by & reason:
            return
        self._paused_by &= ~reason
        if self._paused_by or self._input_closed:
            return
        self.paused = False
        self.transport.resumeProducing()  # type: ignore[union-attr]
        self.dataReceived(b"")  # lines that arrived before the pause

    # IPushProducer: the transport calls these when its send buffer fills up
    # (the client is not reading) and when it has been flushed again.

    def pauseProducing(self) -> None:
        self._output_blocked = True
        self._unsent = 0
        self._pause_reading(_OUTPUT)

    def resumeProducing(self) -> None:
        self._output_blocked = False
        self._unsent = 0
        self._resume_reading(_OUTPUT)
        self._drain()

    def stopProducing(self) -> None:
        self._producing = False
        self._input_closed = True
        self._queue.clear()

    # Input.

    def dataReceived(self, data: bytes) -> None:
        """
        Collect the reads of a long line until one brings its end.

        LineReceiver appends every read to its buffer and searches all of
        it for the delimiter, which is quadratic in the reads of one line;
        lines carrying files are megabytes long.
        """
        if self._input_closed:
            return
        # (Empty data, from _resume_reading, runs the lines already buffered.)
        if data and self.delimiter not in data and not self._busyReceiving:
            self._partial.append(data)
            self._partial_length += len(data)
            if len(self._buffer) + self._partial_length <= self.MAX_LENGTH:
                return
            data = b""
        if self._partial:
            data = b"".join(self._partial) + data
            self._partial.clear()
            self._partial_length = 0
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._input_closed:
            return
        if self._authenticated:
            self._last_active = self.factory.clock.seconds()
        if line.endswith(b"\r"):
            line = line[:-1]
        self._queue.append(line)
        self._drain()
        if len(self._queue) >= self.max_pipeline:
            self._pause_reading(_PIPELINE)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._queue.append(_TOO_LONG)
        self._input_closed = True
        self._drain()

    def _drain(self) -> None:
        """
        Run queued lines, one at a time, until one has to wait.
        """
        if self._draining:
            return
        self._draining = True
        try:
            while (
                self._queue
                and not self._busy
                and self._throttle is None
                and not self._output_blocked
            ):
                item = self._queue[0]
                if item is _TOO_LONG:
                    self._write(commands.error("line too long", "line_too_long"))
                    self._close()
                    return
                if self._throttled():
                    break
                self._queue.popleft()
                self._busy = True
                self._respond(item).addCallback(self._answered)
        finally:
            self._draining = False
        if len(self._queue) < self.max_pipeline // 2:
            self._resume_reading(_PIPELINE)

    def _throttled(self) -> bool:
        """
        Whether the command rate says to wait; if so, pause reading until
        the connection may run its next command.
        """
        factory = self.factory
        rate = factory.limits.command_rate
        if rate is None:
            return False
        now = factory.clock.seconds()
        self._rate_tokens, wait = take_token(
            self._rate_tokens, self._rate_at, now, rate
        )
        self._rate_at = now
        if not wait:
            return False
        self._pause_reading(_RATE)
        self._throttle = factory.clock.callLater(wait, self._unthrottle)
        return True

    def _unthrottle(self) -> None:
        self._throttle = None
        self._resume_reading(_RATE)
        self._drain()

    def _answered(self, reply: Reply | None) -> None:
        self._busy = False
        if reply is not None:
            self._write(reply)
        self._drain()

    def _write(self, reply: Reply) -> None:
        if self._closing:
            return
        data = commands.encode(reply)
        if self._output_blocked:
            # The transport's buffer is full and the client is not reading:
            # count what piles up behind it (events, and the reply of a
            # command that was running when it filled up).
            self._unsent += len(data)
            if self._unsent > self.factory.limits.max_output:
                self.log.info(
                    "Dropping connection from {peer}: over {limit} bytes unsent",
                    peer=self._peer,
                    limit=self.factory.limits.max_output,
                )
                self._close(abort=True)
                return
        self.transport.write(data)  # type: ignore[union-attr]

    # Commands.

    def _respond(self, line: bytes) -> Deferred[Reply | None]:
        factory = self.factory
        if not factory.is_open:
            return factory.when_open().addCallback(lambda _: self._respond(line))
        metrics = factory.metrics
        try:
            command = commands.parse(line)
        except commands.BadCommand as e:
            if metrics is not None:
                metrics.command(None)
            return succeed(e.reply())
        if metrics is not None:
            metrics.command(command.verb)
        try:
            d = self._dispatch(command)
        except Exception:
            d = fail()
        return d.addErrback(self._failed, command)

    def _dispatch(self, command: commands.Command) -> Deferred[Reply | None]:
        if self._link_mode and command.verb not in LINK_VERBS:
            return fail(RealmLinkOnly())
        handler = getattr(self, f"do_{command.verb.replace('-', '_')}")
        result: Deferred[Reply | None] = handler(command)
        return result

    # One do_<verb> method per command: each returns a Deferred firing with
    # the reply (or None if it already answered), or failing with a domain
    # error that _failed turns into the wire's error reply.

    def do_send(self, command: commands.Send) -> Deferred[Reply | None]:
        if "@" in command.recipient:
            return self._send_to_address(command)
        d = self._with_avatar(command.token)
        d.addCallback(lambda avatar: avatar.send(command.recipient, command.text))
        return d.addCallback(lambda _: commands.ok(message="Message Sent"))

    def do_inbox(self, command: commands.Inbox) -> Deferred[Reply | None]:
        d = self._with_avatar(command.token)
        d.addCallback(lambda avatar: avatar.inbox())
        return d.addCallback(inbox_reply)

    def do_register(self, command: commands.Register) -> Deferred[Reply | None]:
        registrar = self.factory.registrar
        if registrar is None:
            return fail(RegistrationClosed())
        d = registrar.register(
            command.username, command.password, command.full_name, self._host
        )
        return d.addCallback(
            lambda user: commands.ok(message="User Registered", username=user.username)
        )

    def do_logout(self, command: commands.Logout) -> Deferred[Reply | None]:
        d = self._with_avatar(command.token)
        d.addCallback(lambda avatar: avatar.end_session(command.token))
        return d.addCallback(lambda _: commands.ok(message="Logged Out"))

    def do_sendgroup(self, command: commands.SendGroup) -> Deferred[Reply | None]:
        targets = command.targets
        d = self._with_avatar(command.token)
        if targets.group is not None:
            group = targets.group
            d.addCallback(lambda avatar: avatar.send_to_group(group, command.text))
        else:
            d.addCallback(lambda avatar: avatar.send_many(targets.users, command.text))
        return d.addCallback(lambda _: commands.ok(message="Message Sent"))

    def do_sendfile(self, command: commands.SendFile) -> Deferred[Reply | None]:
        d = self._with_avatar(command.token)
        d.addCallback(
            lambda avatar: avatar.send_file(
                [command.recipient], command.file_name, command.content
            )
        )
        return d.addCallback(file_sent_reply)

    def do_sendgroupfile(
        self, command: commands.SendGroupFile
    ) -> Deferred[Reply | None]:
        targets = command.targets
        d = self._with_avatar(command.token)
        if targets.group is not None:
            group = targets.group
            d.addCallback(
                lambda avatar: avatar.send_file_to_group(
                    group, command.file_name, command.content
                )
            )
        else:
            d.addCallback(
                lambda avatar: avatar.send_file(
                    targets.users, command.file_name, command.content
                )
            )
        return d.addCallback(file_sent_reply)

    def do_creategroup(self, command: commands.CreateGroup) -> Deferred[Reply | None]:
        d = self._with_avatar(command.token)
        d.addCallback(lambda avatar: avatar.create_group(command.group))
        return d.addCallback(group_reply("Group Created"))

    def do_joingroup(self, command: commands.JoinGroup) -> Deferred[Reply | None]:
        d = self._with_avatar(command.token)
        d.addCallback(lambda avatar: avatar.join_group(command.group))
        return d.addCallback(group_reply("Group Joined"))

    def do_leavegroup(self, command: commands.LeaveGroup) -> Deferred[Reply | None]:
        d = self._with_avatar(command.token)
        d.addCallback(lambda avatar: avatar.leave_group(command.group))
        return d.addCallback(
            lambda group: commands.ok(
                message="Group Left",
                group=None if group is None else group.to_wire(),
            )
        )

    def do_kickgroup(self, command: commands.KickGroup) -> Deferred[Reply | None]:
        d = self._with_avatar(command.token)
        d.addCallback(lambda avatar: avatar.kick(command.group, command.username))
        return d.addCallback(group_reply("Member Removed"))

    def do_groups(self, command: commands.Groups) -> Deferred[Reply | None]:
        d = self._with_avatar(command.token)
        d.addCallback(lambda avatar: avatar.groups())
        return d.addCallback(
            lambda groups: commands.ok(groups=[group.to_wire() for group in groups])
        )

    def do_history(self, command: commands.History) -> Deferred[Reply | None]:
        d = self._with_avatar(command.token)
        if command.group is not None:
            group = command.group
            d.addCallback(
                lambda avatar: avatar.group_history(
                    group, command.limit, command.before_id
                )
            )
        else:
            peer = command.peer
            d.addCallback(
                lambda avatar: avatar.history(peer, command.limit, command.before_id)
            )
        return d.addCallback(history_reply)

    def do_ping(self, command: commands.Ping) -> Deferred[Reply | None]:
        reply = commands.ok(message="PONG")
        if command.echo is not None:
            reply["echo"] = command.echo
        return succeed(reply)

    def do_subscribe(self, command: commands.Subscribe) -> Deferred[Reply | None]:
        def subscribe(avatar: IChatUser) -> None:
            self._unsubscribe()
            # The reply goes out before the first event.
            self._write(commands.ok(message="Subscribed"))
            self._subscription = (avatar, avatar.subscribe(self, command.token))

        return self._with_avatar(command.token).addCallback(subscribe)

    def do_ack(self, command: commands.Ack) -> Deferred[Reply | None]:
        d = self._with_avatar(command.token)
        d.addCallback(lambda avatar: avatar.acknowledge(command.up_to_id))
        return d.addCallback(
            lambda count: commands.ok(message="Acknowledged", count=count)
        )

    def do_who(self, command: commands.Who) -> Deferred[Reply | None]:
        def who(avatar: IChatUser) -> Reply:
            users = [
                {"username": username, "full_name": full_name}
                for username, full_name in avatar.online()
            ]
            return commands.ok(users=users)

        return self._with_avatar(command.token).addCallback(who)

    def do_quit(self, command: commands.Quit) -> Deferred[Reply | None]:
        self._write(commands.ok(message="bye"))
        self._close()
        return succeed(None)

    def do_auth(self, command: commands.Auth) -> Deferred[Reply | None]:
        return ensureDeferred(self._login(command))

    async def _login(self, command: commands.Auth) -> Reply | None:
        failures = self.factory.failures
        try:
            # Before hashing: a refused attempt costs no KDF.
            failures.check_login(command.username, self._address)
        except RateLimited:
            self.log.debug(
                "Refused login for {user} from {peer}: too many failures",
                user=unverified_name(command.username),
                peer=self._peer,
            )
            raise
        credentials = UsernamePassword(command.username, command.password)  # type: ignore[arg-type]
        try:
            _, avatar, logout = await self.portal.login(credentials, self, IChatUser)
        except UnauthorizedLogin as e:
            failures.login_failed(command.username, self._address)
            self.log.info(
                "Failed login for {user} from {peer}: {why}",
                user=command.username
                if isinstance(e, WrongPassword)
                else unverified_name(command.username),
                peer=self._peer,
                why=type(e).__name__,
            )
            raise
        self.log.info(
            "Login by {user} from {peer}", user=command.username, peer=self._peer
        )
        self._logouts.setdefault(command.username, logout)
        token = await IChatUser(avatar).open_session()
        self._authenticated_now()
        self._auth_token = token
        return commands.ok(tokenid=token)

    def _with_avatar(self, token: str) -> Deferred[Any]:
        sessions = self.factory.sessions
        if sessions is not None:
            # Fast path: a token this connection already logged in with
            # through the portal, still alive in the session cache.
            username = sessions.peek(token)
            if username is not None:
                avatar = self._avatars.get(username)
                if avatar is not None:
                    return succeed(avatar)
        failures = self.factory.failures
        try:
            failures.check_token(self._address)
        except RateLimited:
            return fail()
        d = self.portal.login(SessionToken(token), self, IChatUser)
        return d.addCallbacks(self._logged_in, self._token_invalid)

    def _logged_in(self, result: tuple[Any, Any, Callable[[], None]]) -> Any:
        _, avatar, logout = result
        self._logouts.setdefault(avatar.username, logout)
        self._avatars[avatar.username] = avatar
        if not self._authenticated:
            self._authenticated_now()
        return avatar

    def _token_invalid(self, f: Failure) -> Failure:
        if f.check(SessionNotFound):
            self.factory.failures.token_failed(self._address)
        return f

    def _unsubscribe(self) -> None:
        if self._subscription is not None:
            avatar, subscription = self._subscription
            self._subscription = None
            avatar.unsubscribe(subscription)

    # IChatClient

    def send_event(self, event: dict[str, object]) -> None:
        self._write(event)

    # Other realms (chat.federation): users' commands.

    def _send_to_address(self, command: commands.Send) -> Deferred[Reply | None]:
        username, _, realm_id = command.recipient.partition("@")
        federation = self.factory.federation
        d = self._with_avatar(command.token)
        if federation is not None and realm_id == federation.realm_id:
            d.addCallback(lambda avatar: avatar.send(username, command.text))
        else:
            d.addCallback(
                lambda avatar: avatar.send_to_realm(realm_id, [username], command.text)
            )
        return d.addCallback(lambda _: commands.ok(message="Message Sent"))

    def do_sendprivaterealm(
        self, command: commands.SendPrivateRealm
    ) -> Deferred[Reply | None]:
        d = self._with_avatar(command.token)
        d.addCallback(
            lambda avatar: avatar.send_to_realm(
                command.realm_id, [command.recipient], command.text
            )
        )
        return d.addCallback(lambda _: commands.ok(message="Message Sent to Realm"))

    def do_sendgrouprealm(
        self, command: commands.SendGroupRealm
    ) -> Deferred[Reply | None]:
        d = self._with_avatar(command.token)
        d.addCallback(
            lambda avatar: avatar.send_to_realm(
                command.realm_id, command.recipients, command.text
            )
        )
        return d.addCallback(
            lambda _: commands.ok(message="Message Sent to Group in Realm")
        )

    def do_getrealminbox(
        self, command: commands.GetRealmInbox
    ) -> Deferred[Reply | None]:
        d = self._with_avatar(command.token)
        d.addCallback(lambda avatar: avatar.realm_inbox(command.realm_id))
        return d.addCallback(inbox_reply)

    def do_addrealm(self, command: commands.AddRealm) -> Deferred[Reply | None]:
        # The course's form has no token: it acts as this connection's auth.
        token = command.token if command.token is not None else self._auth_token
        if token is None:
            return fail(SessionNotFound("addrealm before auth"))
        d = self._with_avatar(token)
        d.addCallback(
            lambda avatar: avatar.add_realm(
                command.realm_id, command.host, command.port
            )
        )

        def added(secret: str) -> Reply:
            federation = self.factory.federation
            assert federation is not None
            return commands.ok(
                message="Realm Added",
                realm=command.realm_id,
                secret=secret,
                this_realm=federation.realm_id,
            )

        return d.addCallback(added)

    # Other realms: a link's commands. A link never logs in as a user; it
    # proves which realm it is (chat.federation has the handshake) and may
    # then only deliver that realm's messages.

    def _federation(self) -> Federation:
        federation = self.factory.federation
        if federation is None:
            raise RealmsDisabled()
        return federation

    def do_realm_hello(self, command: commands.RealmHello) -> Deferred[Reply | None]:
        federation = self._federation()
        if self._logouts:
            raise RealmLinkOnly("a user's connection cannot become a realm link")
        if self._link_mode:
            raise RealmLinkOnly("one realm-hello per connection")
        self._link_mode = True
        challenge = federation.hello(command.realm_id, command.to_realm, command.nonce)
        self._realm_challenge = challenge
        return succeed(
            commands.ok(
                message="realm-challenge",
                realm=federation.realm_id,
                nonce=challenge.server_nonce,
            )
        )

    def do_realm_auth(self, command: commands.RealmAuth) -> Deferred[Reply | None]:
        federation = self._federation()
        challenge, self._realm_challenge = self._realm_challenge, None
        if challenge is None:
            raise RealmNotAuthenticated("realm-auth without realm-hello")
        d = federation.authenticate(challenge, command.proof)

        def authenticated(link: InboundLink) -> Reply:
            self._realm_link = link
            self._authenticated_now()
            self.MAX_LENGTH = federation.settings.max_line
            self.log.info(
                "Realm {realm} authenticated from {peer}",
                realm=link.realm_id,
                peer=self._peer,
            )
            return commands.ok(
                message="Realm Authenticated",
                realm=federation.realm_id,
                proof=link.server_proof,
                max_line=self.MAX_LENGTH,
            )

        def refused(f: Failure) -> None:
            f.trap(RealmAuthFailed)
            self.log.warn(
                "Realm authentication failed for {realm} from {peer}: {why}",
                realm=challenge.client_realm,
                peer=self._peer,
                why=f.value,
            )
            self._write(
                commands.error("realm authentication failed", "realm_auth_failed")
            )
            self._close()

        return d.addCallbacks(authenticated, refused)

    def do_realm_msg(self, command: commands.RealmMsg) -> Deferred[Reply | None]:
        link = self._realm_link
        if link is None:
            raise RealmNotAuthenticated("realm-msg before realm-auth")
        return cast("Deferred[Reply | None]", link.deliver(command.payload))

    def _failed(self, f: Failure, command: commands.Command) -> Reply:
        if isinstance(f.value, RateLimited):
            return commands.error(
                "too many attempts",
                "rate_limited",
                retry_after_ms=max(1, round(f.value.retry_after * 1000)),
            )
        for kind, message, code in ERRORS:
            if f.check(kind):
                extra = ERROR_FIELDS.get(kind, lambda e: {})(f.value)
                return commands.error(message.format(f.value), code, **extra)
        self.log.failure(
            "Unexpected error for {command} from {peer}",
            f,
            command=type(command).__name__,
            peer=self._peer,
        )
        return commands.error("internal error", "internal")


class ChatFactory(Factory):
    """
    Builds a L{ChatProtocol} for each connection, and keeps what the
    connections share: the limits, the clock they run on, the connection
    counts and the failure limiters.
    """

    def __init__(
        self,
        portal: Portal,
        max_line: int = 16 * 1024,
        registrar: IRegistrar | None = None,
        *,
        limits: Limits | None = None,
        clock: IReactorTime | None = None,
        sessions: SessionManager | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """
        @param metrics: counts the commands the connections run (and is
            told nothing else by the factory); None counts nothing.
        """
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        assert clock is not None
        self.portal = portal
        self.max_line = max_line
        self.registrar = registrar
        #: Lets connections skip the portal for tokens they already used.
        self.sessions = sessions
        self.limits = limits = limits or Limits()
        self.clock = clock
        self.connections = ConnectionTracker(
            limits.max_connections, limits.max_connections_per_address
        )
        self.failures = FailureLimiter.of(clock, limits)
        self.deadlines = Deadlines(clock)
        self._waiting: list[Deferred[None]] | None = None
        #: Links to other realms (chat.federation), if enabled.
        self.federation: Federation | None = None
        #: Counts the commands run (chat.metrics), if enabled.
        self.metrics = metrics

    @property
    def is_open(self) -> bool:
        return self._waiting is None

    def hold(self) -> None:
        """
        Accept connections but run no command until L{open}.
        """
        if self._waiting is None:
            self._waiting = []

    def open(self) -> None:
        waiting, self._waiting = self._waiting or [], None
        for d in waiting:
            d.callback(None)

    def when_open(self) -> Deferred[None]:
        if self._waiting is None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d

    def buildProtocol(self, addr: Any) -> ChatProtocol:  # type: ignore[override]
        protocol = ChatProtocol(self.portal, self.max_line)
        protocol.factory = self
        return protocol
