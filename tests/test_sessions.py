"""
Sessions, the cred checkers and the realm, on a fake clock.
"""

from __future__ import annotations

import os
import sys
import threading
import uuid

import pytest_twisted
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail, succeed

from chat.checkers import (
    NewAccount,
    NewAccountChecker,
    SessionChecker,
    SessionToken,
    StoreChecker,
)
from chat.errors import (
    SessionNotFound,
    StorageUnavailable,
    UnknownUser,
    WrongPassword,
)
from chat.hashing import WORKER_NICENESS, Argon2Hasher, verify_password
from chat.interfaces import IChatUser
from chat.model import VerifiedPassword
from chat.realm import ChatUser
from chat.sessions import ChangeWatcher, SessionManager, hash_token
from tests.helpers import FAST_ARGON2, FAST_PARAMETERS, Server, failure_of, result_of


def test_store_checker_accepts_right_password() -> None:
    """The checker yields the username for the right password (hash current)."""
    server = Server()
    checker = StoreChecker(server.store, _hasher())
    d = checker.requestAvatarId(UsernamePassword(b"messi", b"surabaya"))
    assert result_of(d) == VerifiedPassword("messi")


def test_store_checker_wrong_password_and_unknown_user() -> None:
    """Wrong password and unknown user both fail as UnauthorizedLogin, told apart."""
    server = Server()
    checker = StoreChecker(server.store, _hasher())
    wrong = failure_of(
        checker.requestAvatarId(UsernamePassword("messi", "x")), WrongPassword
    )
    unknown = failure_of(
        checker.requestAvatarId(UsernamePassword("ronaldo", "x")), UnknownUser
    )
    assert wrong.check(UnauthorizedLogin) and unknown.check(UnauthorizedLogin)


def test_new_account_checker_takes_the_hash_its_registration_stored() -> None:
    """A just-registered account logs in by the hash its registration
    stored; any other hash (the password changed meanwhile) is a wrong
    password, a missing account an unknown user, and neither hashes."""
    server = Server()
    checker = NewAccountChecker(server.store)
    stored = server.store.users["messi"].password_hash
    d = checker.requestAvatarId(NewAccount("messi", stored))
    assert result_of(d) == VerifiedPassword("messi")
    other = NewAccount("messi", stored.replace("$argon2id$", "$argon2i$"))
    wrong = failure_of(checker.requestAvatarId(other), WrongPassword)
    unknown = failure_of(
        checker.requestAvatarId(NewAccount("ronaldo", stored)), UnknownUser
    )
    assert wrong.check(UnauthorizedLogin) and unknown.check(UnauthorizedLogin)
    assert stored not in repr(NewAccount("messi", stored))


def test_malformed_hash_never_matches() -> None:
    """A corrupted hash in the store is a wrong password, not a crash."""
    assert verify_password(FAST_ARGON2, "not-a-hash", "surabaya") is False


def test_portal_gives_chat_user_avatar() -> None:
    """Logging in through the portal yields a ChatUser for that user."""
    server = Server()
    iface, avatar, logout = result_of(
        server.portal.login(UsernamePassword("lineker", "surabaya"), None, IChatUser)
    )
    assert iface is IChatUser
    assert isinstance(avatar, ChatUser) and avatar.username == "lineker"
    logout()
    logout()


def test_token_is_stored_hashed() -> None:
    """The store holds the sha256 of the token, never the token."""
    server = Server()
    token = server.connect().login()
    assert list(server.store.sessions) == [hash_token(token)]
    assert token not in repr(server.store.sessions)


def test_session_idle_expiry() -> None:
    """A session unused for longer than the idle timeout ends."""
    server = Server(idle=100, max_age=1000)
    client = server.connect()
    token = client.login()
    server.clock.advance(99)
    assert client.request(f"inbox {token}")["status"] == "OK"
    server.clock.advance(99)
    assert client.request(f"inbox {token}")["status"] == "OK"
    server.clock.advance(101)
    assert client.request(f"inbox {token}")["message"] == "Session Tidak Ditemukan"
    assert server.store.sessions == {}


def test_session_max_age() -> None:
    """A session ends after its maximum age even while in use."""
    server = Server(idle=100, max_age=250)
    client = server.connect()
    token = client.login()
    for _ in range(5):
        server.clock.advance(50)
        assert client.request(f"inbox {token}")["status"] == "OK"
    server.clock.advance(1)
    assert client.request(f"inbox {token}")["message"] == "Session Tidak Ditemukan"


def test_session_survives_restart() -> None:
    """A new session manager on the same store accepts an old token."""
    server = Server()
    token = server.connect().login()
    restarted = Server(store=server.store, clock=server.clock)
    client = restarted.connect()
    assert client.request(f"send {token} henderson after restart")["status"] == "OK"


def test_restart_counts_idle_from_stored_activity() -> None:
    """After a restart, idle time counts from the last stored activity."""
    server = Server(idle=1000, max_age=100000)
    client = server.connect()
    token = client.login()
    server.clock.advance(500)
    client.request(f"inbox {token}")
    restarted = Server(
        store=server.store, clock=server.clock, idle=1000, max_age=100000
    )
    server.clock.advance(900)
    assert restarted.connect().request(f"inbox {token}")["status"] == "OK"


def test_revoked_session_ends_within_touch_interval() -> None:
    """A session deleted in the store stops working within the touch interval."""
    server = Server()
    client = server.connect()
    token = client.login()
    server.store.sessions.clear()
    server.clock.advance(server.sessions.touch_interval + 1)
    assert client.request(f"inbox {token}")["message"] == "Session Tidak Ditemukan"


def test_deleted_user_cannot_send() -> None:
    """Once its user is deleted, a token is refused."""
    server = Server()
    client = server.connect()
    token = client.login("lineker")
    result_of(server.store.delete_user("lineker"))
    reply = client.request(f"send {token} messi hi")
    assert reply["message"] == "Session Tidak Ditemukan"
    assert server.store.messages == []


def test_sweep_deletes_expired_sessions() -> None:
    """The periodic sweep deletes expired sessions from the store."""
    server = Server()
    store = server.store
    sessions = SessionManager(store, server.clock, idle_timeout=10, max_age=100)
    token = result_of(sessions.create("messi"))
    sessions.start()
    server.clock.advance(11)
    server.clock.advance(sessions.sweep_interval)
    assert store.sessions == {}
    failure_of(sessions.resolve(token), SessionNotFound)
    sessions.stop()


def test_session_checker_unknown_token() -> None:
    """The session checker fails an unknown token with SessionNotFound."""
    server = Server()
    checker = SessionChecker(server.sessions)
    failure_of(
        checker.requestAvatarId(SessionToken(str(uuid.uuid4()))), SessionNotFound
    )


def test_session_for_deleted_user_cannot_be_created() -> None:
    """Opening a session for a user deleted meanwhile fails cleanly."""
    server = Server()
    failure_of(server.sessions.create("ronaldo"), SessionNotFound)


def _hasher() -> object:
    from tests.helpers import InlineHasher

    return InlineHasher()


@pytest_twisted.ensureDeferred
async def test_argon2_hasher_runs_in_threads() -> None:
    """The threaded hasher produces argon2id hashes that verify."""
    from twisted.internet import reactor

    hasher = Argon2Hasher(reactor, FAST_PARAMETERS, threads=1)
    hasher.start()
    try:
        password_hash = await hasher.hash("pässword")
        assert password_hash.startswith("$argon2id$v=19$m=64,t=1,p=1$")
        assert (await hasher.check(password_hash, "pässword")).matches is True
        assert (await hasher.check(password_hash, "password")).matches is False
        # Its worker is nicer than this (the reactor's) thread, on Linux.
        if sys.platform.startswith("linux"):
            mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            workers = [
                t.native_id
                for t in threading.enumerate()
                if t.name.startswith("PoolThread-chat-argon2") and t.native_id
            ]
            assert workers
            for worker in workers:
                theirs = os.getpriority(os.PRIO_PROCESS, worker)
                assert theirs == min(19, mine + WORKER_NICENESS)
    finally:
        hasher.stop()


def test_end_forgets_and_deletes_the_session() -> None:
    """end() refuses the token at once and deletes it from the store."""
    server = Server()
    token = result_of(server.sessions.create("messi"))
    other = result_of(server.sessions.create("messi"))
    assert result_of(server.sessions.end(token)) is None
    assert hash_token(token) not in server.store.sessions
    failure_of(server.sessions.resolve(token), SessionNotFound)
    assert result_of(server.sessions.resolve(other)) == "messi"


class _FifoStore:
    """
    A store whose session reads and deletes complete only on release(), in
    the order asked, as the SQLite store's queue completes them.
    """

    def __init__(self, store: object) -> None:
        self._store = store
        self.waiting: list[tuple[Deferred[object], object]] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    def _later(self, result: Deferred[object]) -> Deferred[object]:
        d: Deferred[object] = Deferred()
        self.waiting.append((d, result_of(result)))
        return d

    def get_session(self, token_hash: str) -> Deferred[object]:
        return self._later(self._store.get_session(token_hash))  # type: ignore[attr-defined]

    def delete_session(self, token_hash: str) -> Deferred[object]:
        return self._later(self._store.delete_session(token_hash))  # type: ignore[attr-defined]

    def release(self) -> None:
        waiting, self.waiting = self.waiting, []
        for d, result in waiting:
            d.callback(result)


def test_lookup_in_flight_does_not_revive_ended_session() -> None:
    """A lookup that read the session before a logout does not cache it again."""
    server = Server()
    token = result_of(server.sessions.create("messi"))
    fifo = _FifoStore(server.store)
    restarted = SessionManager(fifo, server.clock, 3600, 86400)  # type: ignore[arg-type]
    lookup = restarted.resolve(token)
    ending = restarted.end(token)
    fifo.release()
    failure_of(lookup, SessionNotFound)
    result_of(ending)
    late = restarted.resolve(token)
    fifo.release()
    failure_of(late, SessionNotFound)


def test_avatar_and_registrar_provide_their_interfaces() -> None:
    """ChatUser provides IChatUser and Registrar IRegistrar, signatures included."""
    from zope.interface.verify import verifyObject

    from chat.interfaces import IRegistrar

    server = Server()
    _, avatar, _ = result_of(
        server.portal.login(UsernamePassword("messi", "surabaya"), None, IChatUser)
    )
    assert verifyObject(IChatUser, avatar)
    assert verifyObject(IRegistrar, server.registrar)


def test_history_with_oneself_after_deletion_is_no_session() -> None:
    """A deleted user asking for its own notes is refused like a bad session."""
    server = Server()
    client = server.connect()
    token = client.login("lineker")
    result_of(server.store.delete_user("lineker"))
    # The cached session still resolves until the next touch.
    reply = client.request(f"history {token} lineker")
    assert reply["code"] == "no_session"


def test_session_ended_elsewhere_stops_at_once() -> None:
    """Another node's logout (a notification) ends a cached session here at
    once, tells the listeners, and leaves other sessions alone."""
    server = Server()
    client = server.connect()
    token = client.login()
    other = result_of(server.sessions.create("henderson"))
    ended: list[tuple[str, str]] = []
    server.sessions.ended_listeners.append(lambda h, why: ended.append((h, why)))
    assert client.request(f"inbox {token}")["status"] == "OK"
    server.store.sessions.pop(hash_token(token))  # deleted by the other node
    server.sessions.ended_elsewhere(hash_token(token), "logged out on another node")
    server.sessions.ended_elsewhere(hash_token("not-cached"), "whatever")
    assert ended == [(hash_token(token), "logged out on another node")]
    assert client.request(f"inbox {token}")["message"] == "Session Tidak Ditemukan"
    assert result_of(server.sessions.resolve(other)) == "henderson"


def test_user_changed_elsewhere_ends_all_its_sessions() -> None:
    """A user changed on another node loses all its live sessions here; other users keep
    theirs."""
    server = Server()
    first = result_of(server.sessions.create("messi"))
    second = result_of(server.sessions.create("messi"))
    other = result_of(server.sessions.create("henderson"))
    for token in (first, second, other):
        result_of(server.sessions.resolve(token))
    server.store.sessions.clear()
    server.sessions.user_changed_elsewhere("messi", "password changed")
    assert server.sessions.live(first) is None
    assert server.sessions.live(second) is None
    live = server.sessions.live(other)
    assert live is not None and live.username == "henderson"


def _username(server: Server, token: str) -> str | None:
    live = server.sessions.live(token)
    return None if live is None else live.username


def test_revalidate_ends_what_another_process_deleted() -> None:
    """After another process deleted sessions (chat-admin passwd), revalidate
    ends exactly those here, marking their cached sessions ended and telling
    their subscriptions why; the token then fails on the connection that was
    using it."""
    server = Server()
    client, bystander = server.connect(), server.connect()
    token = client.login("messi")
    assert client.request(f"subscribe {token}")["status"] == "OK"
    other = bystander.login("henderson")
    client.replies()
    live = server.sessions.live(token)
    assert live is not None
    del server.store.sessions[hash_token(token)]  # done by chat-admin passwd
    assert result_of(server.sessions.revalidate()) == 1
    assert live.ended
    assert client.events() == [
        {"event": "unsubscribed", "reason": "password changed or user deleted"}
    ]
    assert client.request(f"inbox {token}")["code"] == "no_session"
    assert bystander.request(f"inbox {other}")["status"] == "OK"
    assert result_of(server.sessions.revalidate()) == 0


def test_revalidate_spares_sessions_started_meanwhile() -> None:
    """A session started while the check was in flight is not ended by it."""
    server = Server()
    old = result_of(server.sessions.create("messi"))
    del server.store.sessions[hash_token(old)]  # done by chat-admin passwd
    release = server.store.hold("existing_sessions")
    d = server.sessions.revalidate()
    new = result_of(server.sessions.create("messi"))
    release.callback(None)
    assert result_of(d) == 1
    assert server.sessions.live(old) is None
    assert _username(server, new) == "messi"


def test_touch_that_finds_the_session_gone_tells_the_subscriptions() -> None:
    """A session found gone when its activity is written back ends like any
    other: its subscriptions are told."""
    server = Server()
    client = server.connect()
    token = client.login()
    assert client.request(f"subscribe {token}")["status"] == "OK"
    server.store.sessions.clear()
    server.clock.advance(server.sessions.touch_interval + 1)
    client.send(f"inbox {token}\r\n".encode())
    assert client.replies() == [
        {"event": "unsubscribed", "reason": "the session was ended elsewhere"},
        {"status": "ERROR", "message": "Session Tidak Ditemukan", "code": "no_session"},
    ]


class FakeChanges:
    """
    A store's count of changes by other processes, changed by hand; or
    unavailable.
    """

    def __init__(self) -> None:
        self.count = 0
        self.asked = 0
        self.broken = False

    def external_changes(self) -> Deferred[int]:
        self.asked += 1
        if self.broken:
            return fail(StorageUnavailable("disk on fire"))
        return succeed(self.count)


def test_change_watcher_revalidates_after_a_change_only() -> None:
    """The watcher asks every half second; only when another process wrote
    does it check the sessions, which then end at once."""
    server = Server()
    client = server.connect()
    token = client.login()
    assert client.request(f"subscribe {token}")["status"] == "OK"
    changes = FakeChanges()
    checked: list[list[str]] = []
    server.store.watch("existing_sessions", lambda args: checked.append(list(args[0])))
    watcher = ChangeWatcher(changes, server.sessions, server.clock)
    watcher.start()
    server.clock.pump([0.5] * 10)
    assert changes.asked == 11 and checked == []
    del server.store.sessions[hash_token(token)]
    changes.count = 1
    server.clock.advance(0.5)
    assert checked == [[hash_token(token)]]
    assert client.events() == [
        {"event": "unsubscribed", "reason": "password changed or user deleted"}
    ]
    changes.broken = True
    server.clock.pump([0.5] * 4)
    changes.broken = False
    server.clock.advance(0.5)
    assert len(checked) == 1
    watcher.stop()
    server.clock.pump([0.5] * 10)
    assert changes.asked == 11 + 1 + 4 + 1


def test_change_watcher_checks_again_after_a_failed_revalidation() -> None:
    """If the sessions could not be checked, the change is not forgotten."""
    server = Server()
    changes = FakeChanges()
    calls: list[int] = []

    class Sessions:
        def revalidate(self) -> Deferred[int]:
            calls.append(1)
            if len(calls) == 1:
                return fail(StorageUnavailable("busy"))
            return succeed(0)

    watcher = ChangeWatcher(changes, Sessions(), server.clock)  # type: ignore[arg-type]
    watcher.start()
    changes.count = 1
    server.clock.advance(0.5)
    server.clock.advance(0.5)
    server.clock.advance(0.5)
    assert calls == [1, 1]
    watcher.stop()


def test_change_watcher_does_not_double_a_slow_check() -> None:
    """A check still waiting for the store when the next is due is not
    asked again meanwhile."""
    server = Server()
    pending: list[Deferred[int]] = []

    class SlowChanges:
        def external_changes(self) -> Deferred[int]:
            pending.append(Deferred())
            return pending[-1]

    watcher = ChangeWatcher(SlowChanges(), server.sessions, server.clock)
    watcher.start()
    server.clock.pump([0.5] * 4)
    assert len(pending) == 1
    pending[0].callback(0)
    server.clock.advance(0.5)
    assert len(pending) == 2
    watcher.stop()
