"""
twisted.cred pieces: password hashing and the two credential checkers.

A connection logs in with C{auth <user> <password>} (checked by
L{StoreChecker} against the argon2id hash in the store), which opens a
session; every later command presents that session's token (checked by
L{SessionChecker}). Both yield the username as the avatar id, and the realm
turns it into a L{chat.realm.ChatUser}.
"""

from __future__ import annotations

from typing import Any

import argon2
import attrs
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials, IUsernamePassword
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import Attribute, Interface, implementer

from chat.errors import NoSuchUser, UnknownUser, WrongPassword
from chat.interfaces import IPasswordHasher
from chat.model import User
from chat.sessions import SessionManager
from chat.store.interfaces import IUserStore


@implementer(IPasswordHasher)
class Argon2Hasher:
    """
    argon2id (argon2-cffi) on a small thread pool of its own, so at most
    C{concurrency} hashes run at once and the reactor never waits for one.
    """

    def __init__(
        self,
        reactor: IReactorFromThreads,
        concurrency: int = 2,
        hasher: argon2.PasswordHasher | None = None,
    ) -> None:
        self._reactor = reactor
        self._hasher = hasher or argon2.PasswordHasher()
        self._pool = ThreadPool(
            minthreads=0, maxthreads=concurrency, name="chat-argon2"
        )

    def start(self) -> None:
        self._pool.start()

    def stop(self) -> None:
        self._pool.stop()

    def _call(self, f: Any, *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self._reactor, self._pool, f, *args)

    def hash(self, password: str) -> Deferred[str]:
        return self._call(self._hasher.hash, password)

    def verify(self, password_hash: str, password: str) -> Deferred[bool]:
        return self._call(verify_password, self._hasher, password_hash, password)


def verify_password(
    hasher: argon2.PasswordHasher, password_hash: str, password: str
) -> bool:
    """
    Whether C{password} matches; a malformed hash never matches.
    """
    try:
        return hasher.verify(password_hash, password)
    except argon2.exceptions.VerificationError:
        return False
    except argon2.exceptions.InvalidHashError:
        return False


@implementer(ICredentialsChecker)
@attrs.define
class StoreChecker:
    """
    Checks a username and password against the store.

    Fails with L{UnknownUser} or L{WrongPassword}, both L{UnauthorizedLogin}:
    the course protocol tells them apart on the wire.
    """

    store: IUserStore
    hasher: IPasswordHasher
    credentialInterfaces = (IUsernamePassword,)

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred[Any]:
        username = _text(credentials.username)
        password = _text(credentials.password)

        def unknown(f: Failure) -> str:
            f.trap(NoSuchUser)
            raise UnknownUser()

        def check(user: User) -> Deferred[str]:
            def checked(matches: bool) -> str:
                if not matches:
                    raise WrongPassword()
                return user.username

            return self.hasher.verify(user.password_hash, password).addCallback(checked)

        return self.store.get_user(username).addCallbacks(check, unknown)


def _text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


class ISessionToken(Interface):
    """
    Credentials: a session token from an earlier C{auth}.
    """

    token = Attribute("The token, a str.")


@implementer(ISessionToken, ICredentials)
@attrs.frozen
class SessionToken:
    token: str = attrs.field(repr=False)


@implementer(ICredentialsChecker)
@attrs.define
class SessionChecker:
    """
    Checks a session token; fails with L{chat.errors.SessionNotFound}.
    """

    sessions: SessionManager
    credentialInterfaces = (ISessionToken,)

    def requestAvatarId(self, credentials: ISessionToken) -> Deferred[Any]:
        return self.sessions.resolve(credentials.token)
