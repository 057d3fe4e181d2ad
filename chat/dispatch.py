"""
The dispatcher: one request line in, one JSON reply out, for any transport.

A door (the TCP/TLS line connection, L{chat.lines}; a WebSocket,
L{chat.web.socket}) hands each request line to its connection's
L{Dispatcher}, one at a time, and writes the reply: returned at once, or
handed to the door's C{answer} later. The dispatcher knows nothing of
framing, buffering or flow control; the door knows nothing of commands.

The flow on one connection:

 1. C{auth} logs in through the portal with the username and password and
    opens a session; C{register} asks the L{IRegistrar} (it needs no
    login), then logs in as C{auth} does; every other command names a
    session token (a few may leave it out, for the session of this
    connection's C{auth}), which logs in through the portal once per
    connection and token, and then calls the L{IChatUser} avatar it got.
 2. After that first time, a token the connection already used is checked
    against the session manager's live session it got then
    (L{chat.sessions.SessionManager.vouch}): no hashing and no Deferred,
    and a session that ended (logout, new password, deleted user, expiry)
    stops working at once.
 3. The hot commands (C{send}, C{sendgroup}, C{inbox}, C{ack}, C{ping})
    are parsed straight from the line's words, call the avatar's callback
    forms, and answer with prebuilt or directly built bytes: no command
    object and no Deferred per request. The others are parsed by
    L{chat.commands} and run through Deferreds (L{chat.handlers}). The
    course family's spellings (L{chat.aliases.ALIASES}) run as the command
    they mean: an alias of a hot command by its handler, any other as a
    command object (the reply in the alias's shape, L{chat.compat}).
 4. A connection may instead become a link from another realm: it says
    C{realm-hello}, and from then on its lines go to a
    L{chat.federation.InboundLinkHandler}, never to a user's dispatcher.
    A connection that acted as a user cannot become a link.

Domain errors become the course's error replies (L{ERRORS}); anything
unexpected is logged and answered with C{internal error}, never with a
traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from chat import commands, compat, replies
from chat.checkers import NewAccount, PasswordCredentials, SessionToken
from chat.errors import (
    ClientGone,
    RateLimited,
    RegistrationClosed,
    SessionNotFound,
    WrongPassword,
)
from chat.handlers import Handlers
from chat.interfaces import IChatUser, IDoor, ILineHandler, IRegistrar
from chat.limits import FailureLimiter
from chat.logs import debugging, make_logger, unverified_name
from chat.replies import (
    ACKNOWLEDGED,
    MESSAGE_SENT,
    PONG,
    SUBSCRIBED,
    dumps,
    error_reply,
    ok,
)
from chat.sessions import Live, SessionManager

if TYPE_CHECKING:
    from chat.federation import Federation
    from chat.metrics import Metrics

_log = make_logger("chat.dispatch")

#: The replies to lines that are no command.
UNKNOWN_COMMAND = commands.UnknownCommand().reply_bytes()
BAD_ENCODING = commands.BadEncoding().reply_bytes()
NUL_BYTE = commands.NulByte().reply_bytes()

#: What a reply may be: bytes now, or None when the door's C{answer} is
#: called with it later (perhaps before C{dispatch} returned).
Reply = bytes | None

#: Per connection, the tokens remembered (each with its live session and
#: avatar); a connection presenting more than this many forgets them all.
MAX_TOKENS = 16


@attrs.define(eq=False)
class Frontend:
    """
    What every connection's dispatcher shares: the portal, the session
    manager, the registrar, the failure limits, the links to other realms,
    the metrics.

    Before L{open}, connections are accepted but no command runs: they wait
    (the service holds them while it starts).
    """

    portal: Portal
    clock: IReactorTime
    failures: FailureLimiter
    sessions: SessionManager | None = None
    registrar: IRegistrar | None = None
    #: Links to other realms (chat.federation), if enabled.
    federation: Federation | None = None
    #: Counts the commands run (chat.metrics), if enabled.
    metrics: Metrics | None = None
    _waiting: list[Deferred[None]] | None = None

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


@implementer(ILineHandler)
class Dispatcher(Handlers):
    """
    One connection's commands: parses each line, calls the avatar, formats
    the reply.

    @ivar peer: the client's address and port, for logs.
    """

    log = _log

    __slots__ = (
        "_address",
        "_auth_token",
        "_door",
        "_frontend",
        "_host",
        "_links",
        "_logouts",
        "_lost",
        "_sessions",
        "_subscription",
        "_tokens",
        "peer",
    )

    def __init__(
        self,
        frontend: Frontend,
        door: IDoor,
        host: str,
        address: str,
        peer: str,
        links: bool = True,
    ) -> None:
        """
        @param host: the client's address, as the registrar limits it.
        @param address: the key of the per-address limits (L{address_key}).
        @param links: whether this door may become a realm link.
        """
        self._frontend = frontend
        self._sessions = frontend.sessions
        self._door = door
        self._host = host
        self._address = address
        self.peer = peer
        self._links = links
        self._tokens: dict[str, tuple[Live, Any]] = {}
        # Per user this connection has acted as: its cred logout.
        self._logouts: dict[str, Callable[[], None]] = {}
        self._subscription: tuple[Any, Any] | None = None
        self._auth_token: str | None = None
        self._lost = False

    @property
    def listening(self) -> bool:
        """
        Whether the connection is subscribed to events: quiet by design,
        so never idle.
        """
        return self._subscription is not None

    def connection_lost(self) -> None:
        """
        The connection is gone: end its subscription and its logins.
        """
        self._lost = True
        self._unsubscribe()
        self._tokens.clear()
        logouts, self._logouts = self._logouts, {}
        for logout in logouts.values():
            logout()

    # Lines.

    def dispatch(self, line: bytes, now: float) -> Reply:
        """
        Run one request line (without its line ending) received at C{now}.

        @return: the reply, or None if it will be given to the door's
            C{answer} (perhaps already was).
        """
        frontend = self._frontend
        if frontend._waiting is not None:
            frontend.when_open().addCallback(self._run_later, line)
            return None
        if b"\0" in line:
            self._count(None)
            return NUL_BYTE
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self._count(None)
            return BAD_ENCODING
        parts = text.split(None, 3)
        if not parts:
            self._count(None)
            return UNKNOWN_COMMAND
        verb = parts[0].lower()
        hot = _HOT.get(verb)
        if hot is None:
            return self._slow(verb, text, now)
        try:
            reply = hot(self, parts, now)
        except commands.BadCommand as e:
            self._count(None)
            return e.reply_bytes()
        except Exception as e:
            reply = error_reply(e, verb, self.peer)
        self._count(verb)
        return reply

    def _run_later(self, _: object, line: bytes) -> None:
        reply = self.dispatch(line, self._frontend.clock.seconds())
        if reply is not None:
            self._door.answer(reply)

    def _count(self, verb: str | None) -> None:
        metrics = self._frontend.metrics
        if metrics is not None:
            metrics.command(verb)

    # Sessions.

    def _cached(self, token: str, now: float) -> Any:
        """
        The avatar of a token this connection already used, if its session
        is still good; None when only the portal can tell.
        """
        entry = self._tokens.get(token)
        if entry is not None and self._sessions.vouch(entry[0], now):  # type: ignore[union-attr]
            return entry[1]
        return None

    def _with_avatar(self, token: str) -> Deferred[Any]:
        """
        Log in with a token through the portal: the avatar.
        """
        try:
            self._frontend.failures.check_token(self._address)
        except RateLimited:
            return fail()
        d = self._frontend.portal.login(SessionToken(token), self._door, IChatUser)
        return d.addCallbacks(self._logged_in, self._token_invalid, (token,))

    def _logged_in(
        self, result: tuple[Any, Any, Callable[[], None]], token: str
    ) -> Any:
        _, avatar, logout = result
        first = not self._logouts
        self._logouts.setdefault(avatar.username, logout)
        sessions = self._sessions
        if sessions is not None:
            live = sessions.live(token)
            if live is not None:
                if len(self._tokens) >= MAX_TOKENS:
                    self._tokens.clear()
                self._tokens[token] = (live, avatar)
        if first:
            self._door.logged_in(avatar.username)
        return avatar

    def _token_invalid(self, f: Failure) -> Failure:
        if f.check(SessionNotFound):
            self._frontend.failures.token_failed(self._address)
        return f

    def _with_session(self, token: str | None) -> Deferred[Any]:
        """
        The avatar of C{token}, or without one, of the session this
        connection logged in with (C{auth} or C{register}).
        """
        if token is None:
            token = self._auth_token
            if token is None:
                return fail(SessionNotFound("no token and no auth on this connection"))
        return self._with_avatar(token)

    def _later(self, token: str, act: Callable[[Any], object]) -> None:
        """
        Log in with C{token} through the portal, then C{act} with the avatar
        (which answers); a failure is answered.
        """
        self._with_avatar(token).addCallback(act).addErrback(self._answer_failure)

    def _answer_failure(self, f: Failure) -> None:
        self._door.answer(error_reply(f.value, None, self.peer))  # type: ignore[arg-type]

    # The hot commands: parsed from the line's words (the command word and
    # up to three more, the last with the rest of the line).

    def _send(self, parts: list[str], now: float) -> Reply:
        if len(parts) < 4:
            raise commands.MissingArgument()
        text = parts[3].strip()
        token, recipient = parts[1], parts[2]
        if "@" in recipient:
            return self._slow_command(commands.Send(token, recipient, text))
        avatar = self._cached(token, now)
        if avatar is None:
            self._later(token, lambda a: a.send_then(recipient, text, now, self._sent))
        else:
            avatar.send_then(recipient, text, now, self._sent)
        return None

    def _sent(self, succeeded: bool, value: Any) -> None:
        self._door.answer(
            MESSAGE_SENT if succeeded else error_reply(value, "send", self.peer)
        )

    def _sendgroup(self, parts: list[str], now: float) -> Reply:
        if len(parts) < 4:
            raise commands.MissingArgument()
        text = parts[3].strip()
        token = parts[1]
        targets = commands.Targets.parse(parts[2])
        group = targets.group
        if group is not None:

            def act(avatar: Any) -> None:
                avatar.send_to_group_then(group, text, now, self._sent)

        elif targets.name is not None:
            # One name: a user's, or else a group's (the course family's
            # "sendgroup <token> team hi"), told apart in the store's
            # transaction.
            name = targets.name

            def act(avatar: Any) -> None:
                avatar.send_to_name_then(name, text, now, self._sent)

        else:
            users = targets.users

            def act(avatar: Any) -> None:
                avatar.send_many_then(users, text, now, self._sent)

        avatar = self._cached(token, now)
        if avatar is None:
            self._later(token, act)
        else:
            act(avatar)
        return None

    def _inbox(self, parts: list[str], now: float) -> Reply:
        if len(parts) < 2:
            raise commands.MissingArgument()
        token = parts[1]
        avatar = self._cached(token, now)
        if avatar is None:
            self._later(token, lambda a: a.inbox_then(now, self._inboxed))
        else:
            avatar.inbox_then(now, self._inboxed)
        return None

    def _inboxed(self, succeeded: bool, value: Any) -> None:
        if succeeded:
            try:
                reply = replies.inbox_json(value)
            except Exception as e:
                # Never the case for what the store holds; if it were, the
                # client still gets its answer and the connection goes on.
                reply = error_reply(e, "inbox", self.peer)
        else:
            reply = error_reply(value, "inbox", self.peer)
        self._door.answer(reply)

    def _ack(self, parts: list[str], now: float) -> Reply:
        if len(parts) < 3:
            raise commands.MissingArgument()
        token = parts[1]
        up_to_id = commands.message_id(parts[2])
        avatar = self._cached(token, now)
        if avatar is None:
            self._later(token, lambda a: a.acknowledge_then(up_to_id, now, self._acked))
        else:
            avatar.acknowledge_then(up_to_id, now, self._acked)
        return None

    def _acked(self, succeeded: bool, value: Any) -> None:
        self._door.answer(
            b"%s%d}" % (ACKNOWLEDGED, value)
            if succeeded
            else error_reply(value, "ack", self.peer)
        )

    def _ping(self, parts: list[str], now: float) -> Reply:
        if len(parts) < 2:
            return PONG
        return dumps(ok(message="PONG", echo=parts[1]))

    # The other commands: parsed into command objects (chat.commands), and
    # run through Deferreds.

    def _slow(self, verb: str, text: str, now: float) -> Reply:
        """
        Parse a command that is not hot (or is a course family's spelling,
        L{commands.ALIASES}), and run it.
        """
        kind = commands.VERBS.get(verb)
        parse: Callable[[str], commands.Command]
        if kind is not None:
            parse = kind.from_arguments
        else:
            alias = commands.ALIASES.get(verb)
            if alias is None:
                self._count(None)
                return UNKNOWN_COMMAND
            verb = alias.verb
            hot = _HOT.get(verb)
            if hot is not None and alias.plain:
                return self._hot_alias(hot, verb, text, now)
            parse = alias.parse
        rest = text.split(None, 1)
        try:
            command = parse(rest[1] if len(rest) > 1 else "")
        except commands.BadCommand as e:
            self._count(None)
            return e.reply_bytes()
        self._count(verb)
        try:
            return self._slow_command(command)
        except Exception as e:
            return error_reply(e, verb, self.peer)

    def _hot_alias(
        self,
        hot: Callable[[Dispatcher, list[str], float], Reply],
        verb: str,
        text: str,
        now: float,
    ) -> Reply:
        """
        Another word for a hot command (C{sendprivate}, C{send_group}): run
        by the hot command's own handler, as L{dispatch} runs it.
        """
        try:
            reply = hot(self, text.split(None, 3), now)
        except commands.BadCommand as e:
            self._count(None)
            return e.reply_bytes()
        except Exception as e:
            reply = error_reply(e, verb, self.peer)
        self._count(verb)
        return reply

    def _slow_command(self, command: commands.Command) -> Reply:
        handler = getattr(self, f"do_{command.verb.replace('-', '_')}")
        try:
            result = handler(command)
        except Exception as e:
            return error_reply(e, command.verb, self.peer)
        if isinstance(result, bytes):
            return result
        result.addCallbacks(self._answer_slow, self._answer_failure)
        return None

    def _answer_slow(self, reply: bytes | None) -> None:
        if reply is not None:
            self._door.answer(reply)

    # Logging in: auth and register. The other commands that are not hot
    # are in chat.handlers (this class inherits them).

    def do_auth(self, command: commands.Auth) -> Deferred[bytes]:
        d = ensureDeferred(self._login(command))
        return d.addCallback(lambda token: dumps(self._auth_fields(token)))

    async def _login(self, command: commands.Auth) -> str:
        """
        Log in with a username and password, and open a session: its token.
        """
        failures = self._frontend.failures

        def admit() -> None:
            if self._lost:
                # Nobody is waiting for this login any more: no hash for
                # it (a storm's clients that gave up cost nothing).
                raise ClientGone()
            try:
                failures.check_login(command.username, self._address)
            except RateLimited:
                if debugging():
                    self.log.debug(
                        "Refused login for {user} from {peer}: too many failures",
                        user=unverified_name(command.username),
                        peer=self.peer,
                    )
                raise

        # Before hashing: a refused attempt costs no KDF. Checked again when
        # the hasher comes to it, since attempts queued before it may have
        # failed meanwhile (a burst of guesses on many connections).
        admit()
        credentials = PasswordCredentials(
            command.username, command.password, self._address, admit
        )
        door = self._door
        # Waiting for the password hasher is the server's time, not the
        # client's: the login deadline stops meanwhile (issue 14).
        door.pause_login_clock()
        try:
            _, avatar, logout = await self._frontend.portal.login(
                credentials, door, IChatUser
            )
        except UnauthorizedLogin as e:
            failures.login_failed(command.username, self._address)
            self.log.info(
                "Failed login for {user} from {peer}: {why}",
                # A name that is no user's may be a password typed there.
                user=command.username
                if isinstance(e, WrongPassword)
                else unverified_name(command.username),
                peer=self.peer,
                why=type(e).__name__,
            )
            raise
        finally:
            door.resume_login_clock()
        failures.login_succeeded(command.username, self._address)
        return await self._opened(command.username, avatar, logout)

    async def _opened(
        self, username: str, avatar: Any, logout: Callable[[], None]
    ) -> str:
        """
        C{username} logged in on this connection: open a session, its token.
        """
        self.log.info("Login by {user} from {peer}", user=username, peer=self.peer)
        first = not self._logouts
        self._logouts.setdefault(username, logout)
        token = await IChatUser(avatar).open_session()
        if first:
            self._door.logged_in(username)
        self._auth_token = token
        return token

    def _auth_fields(self, token: str) -> dict[str, object]:
        federation = self._frontend.federation
        return compat.auth_fields(
            token, None if federation is None else federation.realm_id
        )

    def do_register(self, command: commands.Register) -> Deferred[bytes]:
        registrar = self._frontend.registrar
        if registrar is None:
            return fail(RegistrationClosed())

        async def register(registrar: IRegistrar) -> bytes:
            # Hashing the password is the server's time (see _login).
            self._door.pause_login_clock()
            try:
                user = await registrar.register(
                    command.username,
                    command.password,
                    command.full_name,
                    self._address,
                )
            finally:
                self._door.resume_login_clock()
            # Registering logs in, as in most of the course family (issue
            # 17): the reply carries auth's keys. As the account just made,
            # shown by its new hash: the password is not hashed again.
            _, avatar, logout = await self._frontend.portal.login(
                NewAccount(user.username, user.password_hash), self._door, IChatUser
            )
            token = await self._opened(user.username, avatar, logout)
            return dumps(
                {
                    **self._auth_fields(token),
                    "message": "User Registered",
                    "username": user.username,
                }
            )

        return ensureDeferred(register(registrar))

    # The connection's events (a subscription ends with the connection).

    def do_subscribe(self, command: commands.Subscribe) -> Deferred[None]:
        def subscribe(avatar: IChatUser) -> None:
            self._unsubscribe()
            # The reply goes out before the first event.
            self._door.answer(SUBSCRIBED)
            self._subscription = (avatar, avatar.subscribe(self._door, command.token))

        return self._with_avatar(command.token).addCallback(subscribe)

    def _unsubscribe(self) -> None:
        if self._subscription is not None:
            avatar, subscription = self._subscription
            self._subscription = None
            avatar.unsubscribe(subscription)


_HOT: dict[str, Callable[[Dispatcher, list[str], float], Reply]] = {
    "send": Dispatcher._send,
    "sendgroup": Dispatcher._sendgroup,
    "inbox": Dispatcher._inbox,
    "ack": Dispatcher._ack,
    "ping": Dispatcher._ping,
}
