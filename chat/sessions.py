"""
Login sessions: uuid4 tokens, stored as sha256 hashes, with an idle timeout
and a maximum age, surviving restarts.

Validating a token must be cheap, since every command carries one, so the
manager keeps a cache of live sessions. Activity is written back to the
store at most once per C{touch_interval} per session; that write also
re-checks that the session still exists in the store. After a restart,
idle time is counted from the last written activity, at most
C{touch_interval} early.

Sessions ended by another process (C{chat-admin passwd} or C{userdel})
end here at once, not at the next touch: on PostgreSQL the store's
C{NOTIFY chat_sessions} reaches L{SessionManager.user_changed_elsewhere}
(L{chat.cluster}); on SQLite a L{ChangeWatcher} asks the store a few times
a second whether another process wrote to it, and if so the manager checks
which of its cached sessions still exist (L{SessionManager.revalidate}).
Either way the session ends through the manager's own paths
(L{SessionManager.ended_elsewhere}): its L{Live} is marked ended, so the
connections that cached it stop trusting it at once, and its subscriptions
are told (C{ended_listeners}).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable

import attrs
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from chat.errors import NoSuchUser, SessionNotFound, StorageUnavailable
from chat.logs import make_logger, token_label
from chat.model import Rehash, Session
from chat.store.interfaces import IExternalChanges, ISessionStore


def hash_token(token: str) -> str:
    """
    The stored form of a token.
    """
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def user_gone(f: Failure) -> str:
    """
    An errback: a user who no longer exists (L{NoSuchUser}) has no
    session, so a request in their name fails as with no session
    (L{SessionNotFound}); any other failure passes through.
    """
    f.trap(NoSuchUser)
    raise SessionNotFound("the user no longer exists")


@attrs.define
class Live:
    """
    A session in the manager's cache. Connections keep a reference to the
    live sessions they use (see L{SessionManager.vouch}); C{ended} is set
    when the session ends, however it ends, so they stop trusting it at
    once.
    """

    username: str
    created_at: float
    last_seen_at: float
    stored_last_seen_at: float
    ended: bool = False


@attrs.define
class SessionManager:
    """
    Creates and resolves session tokens.

    @ivar idle_timeout: seconds without activity after which a session ends.
    @ivar max_age: seconds after creation after which a session ends anyway.
    """

    store: ISessionStore
    clock: IReactorTime
    idle_timeout: float
    max_age: float
    touch_interval: float = 60.0
    sweep_interval: float = 600.0
    _live: dict[str, Live] = attrs.field(factory=dict, init=False)
    #: Sessions being ended: a lookup that was in flight when one ended
    #: must not bring it back into the cache.
    _ending: dict[str, int] = attrs.field(factory=dict, init=False)
    #: Called with (token hash, reason) whenever a session ends.
    ended_listeners: list[Callable[[str, str], None]] = attrs.field(
        factory=list, init=False
    )
    _sweeper: LoopingCall | None = attrs.field(default=None, init=False)

    log = make_logger()

    def start(self) -> None:
        """
        Start deleting expired sessions every C{sweep_interval} seconds.
        """
        self._sweeper = LoopingCall(self.sweep)
        self._sweeper.clock = self.clock
        self._sweeper.start(self.sweep_interval, now=True).addErrback(
            lambda f: self.log.failure("Session sweeper stopped", f)
        )

    def stop(self) -> None:
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()

    def sweep(self) -> Deferred[int]:
        """
        Forget and delete every expired session.
        """
        now = self.clock.seconds()
        for token_hash, live in list(self._live.items()):
            if self._expired(live, now):
                live.ended = True
                del self._live[token_hash]
        d = self.store.delete_expired_sessions(
            now - self.idle_timeout, now - self.max_age
        )

        def swept(count: int) -> int:
            if count:
                self.log.info("Deleted {count} expired sessions", count=count)
            return count

        def failed(f: Failure) -> int:
            self.log.warn("Could not delete expired sessions: {why}", why=f.value)
            return 0

        return d.addCallbacks(swept, failed)

    def create(self, username: str, rehash: Rehash | None = None) -> Deferred[str]:
        """
        Start a session for C{username}; store C{rehash}, the user's
        password hash made with the current parameters, with it.

        @return: fires with the token once the session is stored.
        """
        token = str(uuid.uuid4())
        token_hash = hash_token(token)
        now = self.clock.seconds()
        session = Session(token_hash, username, now, now)
        d = self.store.create_session(session, rehash)

        def created(_: None) -> str:
            self._live[token_hash] = Live(username, now, now, now)
            self.log.info(
                "Session {session} started for {user}",
                session=token_label(token_hash),
                user=username,
            )
            if rehash is not None:
                self.log.info(
                    "Password hash of {user} made again with the current parameters",
                    user=username,
                )
            return token

        return d.addCallbacks(created, user_gone)

    def resolve(self, token: str) -> Deferred[str]:
        """
        The username a token belongs to, recording activity.

        @return: fails with L{SessionNotFound} for an unknown, expired or
            revoked token.
        """
        token_hash = hash_token(token)
        live = self._live.get(token_hash)
        if live is not None:
            return self._use(token_hash, live)
        d = self.store.get_session(token_hash)

        def loaded(session: Session | None) -> Deferred[str]:
            if session is None or token_hash in self._ending:
                return fail(SessionNotFound())
            found = self._live.setdefault(
                token_hash,
                Live(
                    session.username,
                    session.created_at,
                    session.last_seen_at,
                    session.last_seen_at,
                ),
            )
            return self._use(token_hash, found)

        return d.addCallback(loaded)

    def live(self, token: str) -> Live | None:
        """
        The cached session of C{token}, if any (for L{vouch}).
        """
        return self._live.get(hash_token(token))

    def vouch(self, live: Live, now: float) -> bool:
        """
        Whether a cached session may be used at C{now} without asking the
        store: it has not ended or expired, and needs no activity written
        back now. Records the activity. This is the fast path of every
        command after the first on a connection: no hashing, no Deferred,
        no store.
        """
        if (
            live.ended
            or now - live.last_seen_at > self.idle_timeout
            or now - live.created_at > self.max_age
            or now - live.stored_last_seen_at >= self.touch_interval
        ):
            return False
        if now > live.last_seen_at:
            live.last_seen_at = now
        return True

    def _expired(self, live: Live, now: float) -> bool:
        return (
            now - live.last_seen_at > self.idle_timeout
            or now - live.created_at > self.max_age
        )

    def _use(self, token_hash: str, live: Live) -> Deferred[str]:
        now = self.clock.seconds()
        if self._expired(live, now):
            self._end(token_hash, "expired").addErrback(
                lambda f: self.log.warn(
                    "Could not delete a session: {why}", why=f.value
                )
            )
            return fail(SessionNotFound())
        live.last_seen_at = max(live.last_seen_at, now)
        if now - live.stored_last_seen_at < self.touch_interval:
            return succeed(live.username)
        live.stored_last_seen_at = now

        def touched(exists: bool) -> str:
            if not exists:
                live.ended = True
                if self._live.pop(token_hash, None) is not None:
                    self._ended(token_hash, "the session was ended elsewhere")
                raise SessionNotFound()
            return live.username

        return self.store.touch_session(token_hash, now).addCallback(touched)

    def end(self, token: str) -> Deferred[None]:
        """
        End the session of C{token} (logout): it stops resolving at once,
        and is deleted from the store. Every way a session is ended
        explicitly goes through here.

        @return: fires once the deletion has been committed; fails with
            L{chat.errors.StorageUnavailable} if it could not be (then the
            session may still work: the client should try again).
        """
        return self._end(hash_token(token), "logged out")

    def ended_elsewhere(self, token_hash: str, why: str) -> None:
        """
        Another node or process ended a session (and deleted it from the
        store): stop resolving it here at once.
        """
        live = self._live.pop(token_hash, None)
        if live is not None:
            live.ended = True
            self._ended(token_hash, why)

    def user_changed_elsewhere(self, username: str, why: str) -> None:
        """
        Another process changed a user's password or deleted the user,
        which ended all of its sessions in the store: stop resolving them
        here at once.
        """
        for token_hash, live in list(self._live.items()):
            if live.username == username:
                live.ended = True
                del self._live[token_hash]
                self._ended(token_hash, why)

    def revalidate(
        self, why: str = "password changed or user deleted"
    ) -> Deferred[int]:
        """
        Another process changed the store: end here every cached session it
        deleted (C{chat-admin passwd} or C{userdel} did, with the user's
        password or account; or another node, while this one did not hear
        it), as L{ended_elsewhere} does, for C{why}.

        @return: fires with how many ended; fails with
            L{chat.errors.StorageUnavailable}.
        """
        cached = dict(self._live)

        def checked(existing: set[str]) -> int:
            ended = 0
            for token_hash, live in cached.items():
                if token_hash in existing or self._live.get(token_hash) is not live:
                    continue
                self.ended_elsewhere(token_hash, why)
                ended += 1
            return ended

        return self.store.existing_sessions(list(cached)).addCallback(checked)

    def _ended(self, token_hash: str, why: str) -> None:
        for listener in list(self.ended_listeners):
            listener(token_hash, why)
        self.log.info(
            "Session {session} ended: {why}", session=token_label(token_hash), why=why
        )

    def _end(self, token_hash: str, why: str) -> Deferred[None]:
        live = self._live.pop(token_hash, None)
        if live is not None:
            live.ended = True
        self._ending[token_hash] = self._ending.get(token_hash, 0) + 1
        self._ended(token_hash, why)

        def deleted(passthrough: object) -> object:
            left = self._ending.pop(token_hash) - 1
            if left:
                self._ending[token_hash] = left
            return passthrough

        return self.store.delete_session(token_hash).addBoth(deleted)


@attrs.define
class ChangeWatcher:
    """
    Notices that another process wrote to a store this server does not hear
    from (SQLite, when C{chat-admin} runs), every C{interval} seconds, and
    then has the session manager drop the sessions that process ended.

    Asking is an operation of the store's next batch, which reads SQLite's
    C{data_version} anyway (L{chat.store.sqlite}): it costs no statement,
    and a batch of its own only while the store is otherwise idle. The
    sessions are checked only after a change.
    """

    source: IExternalChanges
    sessions: SessionManager
    clock: IReactorTime
    interval: float = 0.5
    _seen: int | None = attrs.field(default=None, init=False)
    _loop: LoopingCall | None = attrs.field(default=None, init=False)
    _checking: bool = attrs.field(default=False, init=False)

    log = make_logger()

    def start(self) -> None:
        self._loop = LoopingCall(self.check)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True).addErrback(
            lambda f: self.log.failure("Watching the store for changes stopped", f)
        )

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def check(self) -> Deferred[None] | None:
        """
        Ask whether the store changed; if it did, revalidate the sessions.
        (A check still running when the next is due is not doubled.)
        """
        if self._checking:
            return None
        self._checking = True

        async def check() -> None:
            changes = await self.source.external_changes()
            if self._seen is not None and changes != self._seen:
                ended = await self.sessions.revalidate()
                if ended:
                    self.log.info(
                        "{count} sessions ended by another process", count=ended
                    )
            # Only once the sessions were checked: a failure checks again.
            self._seen = changes

        def failed(f: Failure) -> None:
            # The store is unavailable: the next check tries again. Anything
            # else is a bug, logged; the checks go on.
            if not f.check(StorageUnavailable):
                self.log.failure("Could not check the store for changes", f)

        def done(_: object) -> None:
            self._checking = False

        d = ensureDeferred(check())
        d.addErrback(failed)
        d.addBoth(done)
        return d
