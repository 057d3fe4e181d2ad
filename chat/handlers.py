"""
What the commands that are not hot do: log in with the command's token,
call the avatar (L{chat.interfaces.IChatUser}), and format the reply.

L{chat.dispatch.Dispatcher} inherits L{Handlers} and runs a command
object (L{chat.commands}) by its word: C{do_<verb>}, with C{-} as C{_}.
The dispatcher keeps the hot commands, the logins (C{auth},
C{register}), the connection's sessions and its subscription to events
(C{subscribe}); these handlers reach the dispatcher only through the few
members L{Handlers} names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred, fail

from chat import commands, compat, replies
from chat.errors import (
    RealmLinkOnly,
    RealmNotAuthenticated,
    RealmsDisabled,
    SessionNotFound,
)
from chat.interfaces import IChatUser, IDoor
from chat.links import OutboundMessage
from chat.model import Group, Message
from chat.replies import (
    BYE,
    LOGGED_OUT,
    MESSAGE_SENT,
    dumps,
    ok,
)

if TYPE_CHECKING:
    from chat.dispatch import Frontend


class Handlers:
    """
    One C{do_<verb>} method per command that is not hot: each returns the
    reply, or a Deferred firing with it (or with None if it answered
    itself), or failing with a domain error that becomes the wire's error
    reply.
    """

    __slots__ = ()

    # The dispatcher's (chat.dispatch.Dispatcher) state these use.
    peer: str
    _frontend: Frontend
    _door: IDoor
    _links: bool
    _logouts: dict[str, Callable[[], None]]
    _auth_token: str | None

    def _with_avatar(self, token: str) -> Deferred[Any]:
        """
        The avatar of the session C{token} (the dispatcher's).
        """
        raise NotImplementedError()

    def _with_session(self, token: str | None) -> Deferred[Any]:
        """
        The avatar of C{token}, or without one, of the session the
        connection logged in with (the dispatcher's).
        """
        raise NotImplementedError()

    def do_send(self, command: commands.Send) -> Deferred[bytes]:
        # Only for user@realm (the hot path takes the rest).
        username, _, realm_id = command.recipient.partition("@")
        federation = self._frontend.federation
        d = self._with_avatar(command.token)
        if federation is not None and realm_id == federation.realm_id:
            d.addCallback(lambda avatar: avatar.send(username, command.text))
        else:
            d.addCallback(
                lambda avatar: avatar.send_to_realm(realm_id, [username], command.text)
            )
        return d.addCallback(lambda _: MESSAGE_SENT)

    def do_logout(self, command: commands.Logout) -> Deferred[bytes]:
        d = self._with_avatar(command.token)
        d.addCallback(lambda avatar: avatar.end_session(command.token))
        return d.addCallback(lambda _: LOGGED_OUT)

    def do_sendfile(self, command: commands.SendFile) -> Deferred[bytes]:
        d = self._with_avatar(command.token)
        username, at, realm_id = command.recipient.partition("@")
        federation = self._frontend.federation
        if at and (federation is None or realm_id != federation.realm_id):
            # user@realm: a file for another realm, as send does with text.
            d.addCallback(
                lambda avatar: avatar.send_file_to_realm(
                    realm_id, [username], command.file_name, command.content
                )
            )
            return d.addCallback(_file_sent_to_realm, False)
        if at:
            command = attrs.evolve(command, recipient=username)
        d.addCallback(
            lambda avatar: avatar.send_file(
                [command.recipient], command.file_name, command.content
            )
        )
        return d.addCallback(_file_sent)

    def do_sendgroupfile(self, command: commands.SendGroupFile) -> Deferred[bytes]:
        targets = command.targets
        d = self._with_avatar(command.token)
        if targets.group is not None:
            group = targets.group
            d.addCallback(
                lambda avatar: avatar.send_file_to_group(
                    group, command.file_name, command.content
                )
            )
        elif targets.name is not None:
            name = targets.name
            d.addCallback(
                lambda avatar: avatar.send_file_to_name(
                    name, command.file_name, command.content
                )
            )
        else:
            d.addCallback(
                lambda avatar: avatar.send_file(
                    targets.users, command.file_name, command.content
                )
            )
        return d.addCallback(_file_sent)

    def do_creategroup(self, command: commands.CreateGroup) -> Deferred[bytes]:
        d = self._with_session(command.token)
        d.addCallback(
            lambda avatar: avatar.create_group(command.group, command.members)
        )
        return d.addCallback(_group_reply("Group Created"))

    def do_joingroup(self, command: commands.JoinGroup) -> Deferred[bytes]:
        d = self._with_avatar(command.token)
        d.addCallback(lambda avatar: avatar.join_group(command.group))
        return d.addCallback(_group_reply("Group Joined"))

    def do_leavegroup(self, command: commands.LeaveGroup) -> Deferred[bytes]:
        d = self._with_avatar(command.token)
        d.addCallback(lambda avatar: avatar.leave_group(command.group))
        return d.addCallback(
            lambda group: dumps(
                ok(
                    message="Group Left",
                    group=None if group is None else replies.group_fields(group),
                )
            )
        )

    def do_kickgroup(self, command: commands.KickGroup) -> Deferred[bytes]:
        d = self._with_avatar(command.token)
        d.addCallback(lambda avatar: avatar.kick(command.group, command.username))
        return d.addCallback(_group_reply("Member Removed"))

    def do_groups(self, command: commands.Groups) -> Deferred[bytes]:
        d = self._with_avatar(command.token)
        d.addCallback(lambda avatar: avatar.groups())
        return d.addCallback(
            lambda groups: dumps(
                ok(groups=[replies.group_fields(group) for group in groups])
            )
        )

    def do_users(self, command: commands.Users) -> Deferred[bytes]:
        d = self._with_session(command.token)
        d.addCallback(lambda avatar: avatar.all_users(compat.LIST_LIMIT))
        return d.addCallback(
            lambda listed: compat.users_reply(listed[0], listed[1], command.shape)
        )

    def do_allgroups(self, command: commands.AllGroups) -> Deferred[bytes]:
        d = self._with_session(command.token)
        d.addCallback(lambda avatar: avatar.all_groups(compat.LIST_LIMIT))
        return d.addCallback(
            lambda listed: compat.groups_reply(listed[0], listed[1], command.shape)
        )

    def do_privateinbox(self, command: commands.PrivateInbox) -> Deferred[bytes]:
        d = self._with_avatar(command.token)
        d.addCallback(lambda avatar: avatar.private_inbox(command.peer))
        return d.addCallback(replies.inbox_json)

    def do_history(self, command: commands.History) -> Deferred[bytes]:
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
        return d.addCallback(compat.history_reply, command.shape)

    def do_who(self, command: commands.Who) -> Deferred[bytes]:
        def who(avatar: IChatUser) -> bytes:
            users = [
                {"username": username, "full_name": full_name}
                for username, full_name in avatar.online()
            ]
            return dumps(ok(users=users))

        return self._with_avatar(command.token).addCallback(who)

    def do_quit(self, command: commands.Quit) -> bytes:
        self._door.close()
        return BYE

    # Other realms: users' commands.

    def do_sendprivaterealm(
        self, command: commands.SendPrivateRealm
    ) -> Deferred[bytes]:
        d = self._with_avatar(command.token)
        d.addCallback(
            lambda avatar: avatar.send_to_realm(
                command.realm_id, [command.recipient], command.text
            )
        )
        return d.addCallback(lambda _: dumps(ok(message="Message Sent to Realm")))

    def do_sendgrouprealm(self, command: commands.SendGroupRealm) -> Deferred[bytes]:
        d = self._with_avatar(command.token)
        d.addCallback(
            lambda avatar: avatar.send_to_realm(
                command.realm_id, command.recipients, command.text
            )
        )
        return d.addCallback(
            lambda _: dumps(ok(message="Message Sent to Group in Realm"))
        )

    def do_sendfilerealm(self, command: commands.SendFileRealm) -> Deferred[bytes]:
        d = self._with_avatar(command.token)
        d.addCallback(
            lambda avatar: avatar.send_file_to_realm(
                command.realm_id, command.recipients, command.file_name, command.content
            )
        )
        to_group = command.shape == compat.GROUP_IN_REALM
        return d.addCallback(_file_sent_to_realm, to_group)

    def do_getrealminbox(self, command: commands.GetRealmInbox) -> Deferred[bytes]:
        d = self._with_avatar(command.token)
        d.addCallback(lambda avatar: avatar.realm_inbox(command.realm_id))
        return d.addCallback(replies.inbox_json)

    def do_addrealm(self, command: commands.AddRealm) -> Deferred[bytes]:
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

        def added(secret: str) -> bytes:
            federation = self._frontend.federation
            assert federation is not None
            return dumps(
                ok(
                    message="Realm Added",
                    realm=command.realm_id,
                    secret=secret,
                    this_realm=federation.realm_id,
                )
            )

        return d.addCallback(added)

    # Other realms: a connection that becomes a link.

    def do_realm_hello(self, command: commands.RealmHello) -> bytes:
        from chat.federation import InboundLinkHandler

        federation = self._frontend.federation
        if federation is None:
            raise RealmsDisabled()
        if self._logouts or not self._links:
            raise RealmLinkOnly("a user's connection cannot become a realm link")
        challenge = federation.hello(command.realm_id, command.to_realm, command.nonce)
        self._door.take_over(
            InboundLinkHandler(federation, self._door, challenge, self.peer)
        )
        return dumps(
            ok(
                message="realm-challenge",
                realm=federation.realm_id,
                nonce=challenge.server_nonce,
            )
        )

    def do_realm_auth(self, command: commands.RealmAuth) -> bytes:
        raise RealmNotAuthenticated("realm-auth without realm-hello")

    def do_realm_msg(self, command: commands.RealmMsg) -> bytes:
        raise RealmNotAuthenticated("realm-msg before realm-auth")


def _file_reply(
    message: str, name: str | None, size: int | None, sha256: str | None
) -> bytes:
    """
    The reply to a file sent: C{message}, with the file's keys.
    """
    return dumps(
        ok(
            message=message,
            file_name=name,
            file_size=size,
            file_sha256=sha256,
            # Where some of the course family's clients read the name.
            address=name,
        )
    )


def _file_sent(messages: list[Message]) -> bytes:
    first = messages[0]
    return _file_reply("File Sent", first.file_name, first.file_size, first.file_sha256)


def _file_sent_to_realm(queued: list[OutboundMessage], to_group: bool) -> bytes:
    """
    The reply to a file queued for another realm: the course family's text
    (as C{sendprivaterealm}'s and C{sendgrouprealm}'s), with the file's
    keys as C{sendfile} gives them.
    """
    attachment = queued[0].attachment
    assert attachment is not None
    return _file_reply(
        "File Sent to Group in Realm" if to_group else "File Sent to Realm",
        attachment.name,
        attachment.size,
        attachment.sha256,
    )


def _group_reply(message: str) -> Callable[[Group], bytes]:
    return lambda group: dumps(ok(message=message, group=replies.group_fields(group)))
