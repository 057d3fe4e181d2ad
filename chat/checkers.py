"""
twisted.cred pieces: the two credential checkers (the hashing itself is in
L{chat.hashing}).

A connection logs in with C{auth <user> <password>} (checked by
L{StoreChecker} against the argon2id hash in the store), which opens a
session; every later command presents that session's token (checked by
L{SessionChecker}). A C{register} logs in as the account it just made
(L{NewAccountChecker}: the hash it made is the one stored, so the
password is not hashed a second time). The password checkers yield a
L{chat.model.VerifiedPassword}, the session checker the username, as the
avatar id; the realm turns either into a L{chat.realm.ChatUser}.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

import attrs
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials, IUsernamePassword
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from chat.errors import NoSuchUser, UnknownUser, WrongPassword
from chat.interfaces import IPasswordHasher
from chat.model import PasswordCheck, Rehash, User, VerifiedPassword
from chat.sessions import SessionManager
from chat.store.interfaces import IUserStore


@implementer(IUsernamePassword)
@attrs.frozen
class PasswordCredentials:
    """
    Credentials of C{auth}: a username and password, the client address
    they came from (hashes are computed in turns across addresses), and
    what may still refuse them when their hash's turn comes (C{admit}: the
    failure limits, which earlier attempts may have used up meanwhile).
    """

    username: str
    password: str = attrs.field(repr=False)
    address: str = ""
    admit: Callable[[], None] | None = attrs.field(default=None, repr=False, eq=False)

    def checkPassword(self, password: bytes) -> bool:
        return hmac.compare_digest(
            self.password.encode("utf-8", "surrogateescape"), password
        )


@implementer(ICredentialsChecker)
@attrs.define
class StoreChecker:
    """
    Checks a username and password against the store; yields a
    L{VerifiedPassword}, with a new hash if the stored one was made with
    other parameters than the hasher's.

    Fails with L{UnknownUser} or L{WrongPassword}, both L{UnauthorizedLogin}:
    the course protocol tells them apart on the wire; or with
    L{chat.errors.ServerBusy} when too many hashes are waiting.
    """

    store: IUserStore
    hasher: IPasswordHasher
    credentialInterfaces = (IUsernamePassword,)

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred[Any]:
        username = _text(credentials.username)
        password = _text(credentials.password)
        address = getattr(credentials, "address", "")
        admit = getattr(credentials, "admit", None)

        def check(user: User) -> Deferred[VerifiedPassword]:
            def checked(result: PasswordCheck) -> VerifiedPassword:
                if not result.matches:
                    raise WrongPassword()
                if result.new_hash is None:
                    return VerifiedPassword(user.username)
                rehash = Rehash(user.password_hash, result.new_hash)
                return VerifiedPassword(user.username, rehash)

            d = self.hasher.check(user.password_hash, password, address, admit)
            return d.addCallback(checked)

        return self.store.get_user(username).addCallbacks(check, _unknown_user)


class INewAccount(ICredentials):
    """
    Credentials: the account this connection has just registered, shown by
    the password hash the registration made (never from the wire).
    """

    username = Attribute("The new account's username, a str.")
    password_hash = Attribute("The hash its registration stored, a str.")


@implementer(INewAccount)
@attrs.frozen
class NewAccount:
    username: str
    password_hash: str = attrs.field(repr=False)


@implementer(ICredentialsChecker)
@attrs.define
class NewAccountChecker:
    """
    Lets a registration log in without a second argon2 verification (about
    28 ms of CPU): the account's stored hash must still be the one the
    registration made (it is unguessable, and a password changed meanwhile
    changes it). Yields a L{VerifiedPassword}; fails with L{UnknownUser} or
    L{WrongPassword}.
    """

    store: IUserStore
    credentialInterfaces = (INewAccount,)

    def requestAvatarId(self, credentials: INewAccount) -> Deferred[Any]:
        def check(user: User) -> VerifiedPassword:
            if not hmac.compare_digest(user.password_hash, credentials.password_hash):
                raise WrongPassword()
            return VerifiedPassword(user.username)

        d = self.store.get_user(credentials.username)
        return d.addCallbacks(check, _unknown_user)


def _unknown_user(f: Failure) -> VerifiedPassword:
    """
    A login's user is not in the store: L{UnknownUser}, which the course
    protocol tells apart from a wrong password.
    """
    f.trap(NoSuchUser)
    raise UnknownUser()


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
