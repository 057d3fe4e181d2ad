"""
Self-registration: C{register <username> <password> <full name...>}
creates an account, if the server allows it (C{--registration open}).

Checks run cheapest first: the syntax of the username, password and full
name (a typo costs no attempt), then the per-address rate limit (before the
store is asked whether the name is taken, and before the expensive hash),
then the store; the password is hashed with argon2id off the reactor
thread, as C{chat-admin} does.
"""

from __future__ import annotations

import attrs
from twisted.internet.defer import Deferred, ensureDeferred
from zope.interface import implementer

from chat.errors import NoSuchUser, RateLimited, RegistrationClosed, UserExists
from chat.interfaces import IPasswordHasher, IRegistrar
from chat.limits import RateLimiter
from chat.logs import make_logger
from chat.model import User, validate_full_name, validate_password, validate_username
from chat.store.interfaces import IUserStore


@implementer(IRegistrar)
@attrs.define
class Registrar:
    """
    Creates accounts for C{register}, when C{open}; attempts are rate
    limited per client address by C{limiter}.
    """

    store: IUserStore
    hasher: IPasswordHasher
    limiter: RateLimiter
    open: bool = False

    log = make_logger()

    def register(
        self, username: str, password: str, full_name: str, address: str
    ) -> Deferred[User]:
        return ensureDeferred(self._register(username, password, full_name, address))

    async def _register(
        self, username: str, password: str, full_name: str, address: str
    ) -> User:
        if not self.open:
            raise RegistrationClosed()
        validate_username(username)
        validate_password(password)
        full_name = validate_full_name(full_name)
        wait = self.limiter.consume(address)
        if wait:
            self.log.info("Registration from {address} rate limited", address=address)
            raise RateLimited(wait)
        try:
            await self.store.get_user(username)
        except NoSuchUser:
            pass
        else:
            raise UserExists(username)
        password_hash = await self.hasher.hash(password, address)
        user = User(username, full_name, "", password_hash)
        await self.store.add_user(user)
        self.log.info(
            "User {user} registered from {address}", user=username, address=address
        )
        return user
