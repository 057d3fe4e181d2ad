"""
L{SQLStore}: the store interfaces on a SQL database, each method one
operation (L{chat.store.users}, L{chat.store.sessions},
L{chat.store.sending}, L{chat.store.mailbox}, L{chat.store.history},
L{chat.store.groups}, L{chat.store.realms})
queued for the next batch transaction (L{chat.store.batching}).

The operations' SQL is the dialect SQLite and PostgreSQL share:

    - C{?} parameters; the PostgreSQL connection turns them into C{%s};
    - new ids come from C{RETURNING id} (or, for many rows at once, from
      each dialect's own form);
    - no operation relies on catching an integrity error (which aborts the
      whole transaction in PostgreSQL): C{ON CONFLICT DO NOTHING} or a check
      first;
    - where nodes sharing a PostgreSQL database could race for the same
      rows (draining a mailbox), the rows are locked (C{FOR UPDATE}).

The hot methods (sending, draining, acknowledging) also come in a form
that takes a plain callback instead of returning a Deferred
(C{..._then(..., done)}): the request path makes no Deferred per request.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from zope.interface import implementer

from chat.callbacks import Done
from chat.limits import DEFAULT_MAX_MAILBOX, Quotas
from chat.links import Delivery, InboundMessage, OutboundMessage, RealmLink
from chat.model import Attachment, Group, Message, Page, Rehash, Session, User
from chat.store import (
    groups,
    history,
    mailbox,
    messages,
    realms,
    sending,
    sessions,
    users,
)
from chat.store.batching import GroupCommit
from chat.store.interfaces import IChatStore


@implementer(IChatStore)
class SQLStore(GroupCommit):
    """
    L{IChatStore} on a SQL database.

    @ivar max_mailbox: the most undelivered messages per recipient.
    @ivar max_per_sender: the most of them from one sender.
    @ivar quotas: what each user may keep stored (L{chat.store.quotas}).
    @ivar clock: the clock of the times the store records by itself (when a
        user was added): the reactor's.
    """

    max_mailbox: int = DEFAULT_MAX_MAILBOX
    max_per_sender: int = DEFAULT_MAX_MAILBOX
    quotas: Quotas = Quotas()

    def __init__(self, reactor: IReactorFromThreads, thread_name: str) -> None:
        super().__init__(reactor, thread_name)
        self.clock: IReactorTime = IReactorTime(reactor)

    # Users.

    def add_user(self, user: User) -> Deferred[None]:
        return self.run(users.AddUser(user, self.clock.seconds()))

    def get_user(self, username: str) -> Deferred[User]:
        return self.run(users.GetUser(username))

    def set_password_hash(self, username: str, password_hash: str) -> Deferred[None]:
        return self.run(users.SetPasswordHash(username, password_hash))

    def delete_user(self, username: str) -> Deferred[None]:
        return self.run(users.DeleteUser(username))

    def list_users(self, limit: int | None = None) -> Deferred[list[User]]:
        return self.run(users.ListUsers(limit))

    def set_admin(self, username: str, is_admin: bool) -> Deferred[None]:
        return self.run(users.SetAdmin(username, is_admin))

    def is_admin(self, username: str) -> Deferred[bool]:
        return self.run(users.IsAdmin(username))

    # Sessions.

    def create_session(
        self, session: Session, rehash: Rehash | None = None
    ) -> Deferred[None]:
        return self.run(sessions.CreateSession(session, rehash))

    def get_session(self, token_hash: str) -> Deferred[Session | None]:
        return self.run(sessions.GetSession(token_hash))

    def touch_session(self, token_hash: str, last_seen_at: float) -> Deferred[bool]:
        return self.run(sessions.TouchSession(token_hash, last_seen_at))

    def delete_session(self, token_hash: str) -> Deferred[None]:
        return self.run(sessions.DeleteSession(token_hash))

    def existing_sessions(self, token_hashes: Sequence[str]) -> Deferred[set[str]]:
        return self.run(sessions.ExistingSessions(list(token_hashes)))

    def delete_expired_sessions(
        self, idle_since: float, created_since: float
    ) -> Deferred[int]:
        return self.run(sessions.DeleteExpiredSessions(idle_since, created_since))

    # Messages.

    def store_message_then(
        self, sender: str, recipient: str, text: str, sent_at: float, done: Done
    ) -> None:
        self.submit(sending.StoreMessage(sender, recipient, text, sent_at), done)

    def store_message(
        self, sender: str, recipient: str, text: str, sent_at: float
    ) -> Deferred[Message]:
        return self.run(sending.StoreMessage(sender, recipient, text, sent_at))

    def store_messages_then(
        self,
        sender: str,
        recipients: Sequence[str],
        text: str,
        sent_at: float,
        attachment: Attachment | None,
        done: Done,
    ) -> None:
        operation = sending.StoreMessages(
            sender, list(recipients), text, sent_at, attachment
        )
        self.submit(operation, done)

    def store_messages(
        self,
        sender: str,
        recipients: Sequence[str],
        text: str,
        sent_at: float,
        attachment: Attachment | None = None,
    ) -> Deferred[list[Message]]:
        return self.run(
            sending.StoreMessages(sender, list(recipients), text, sent_at, attachment)
        )

    def store_group_message_then(
        self,
        sender: str,
        group: str,
        text: str,
        sent_at: float,
        attachment: Attachment | None,
        done: Done,
    ) -> None:
        operation = sending.StoreGroupMessage(sender, group, text, sent_at, attachment)
        self.submit(operation, done)

    def store_group_message(
        self,
        sender: str,
        group: str,
        text: str,
        sent_at: float,
        attachment: Attachment | None = None,
    ) -> Deferred[list[Message]]:
        return self.run(
            sending.StoreGroupMessage(sender, group, text, sent_at, attachment)
        )

    def store_to_name_then(
        self,
        sender: str,
        name: str,
        text: str,
        sent_at: float,
        attachment: Attachment | None,
        done: Done,
    ) -> None:
        operation = sending.StoreToName(sender, name, text, sent_at, attachment)
        self.submit(operation, done)

    def store_to_name(
        self,
        sender: str,
        name: str,
        text: str,
        sent_at: float,
        attachment: Attachment | None = None,
    ) -> Deferred[list[Message]]:
        return self.run(sending.StoreToName(sender, name, text, sent_at, attachment))

    def drain_inbox_then(
        self, username: str, delivered_at: float, max_bytes: int | None, done: Done
    ) -> None:
        self.submit(mailbox.DrainInbox(username, delivered_at, max_bytes), done)

    def drain_inbox(
        self, username: str, delivered_at: float, max_bytes: int | None = None
    ) -> Deferred[list[Message]]:
        return self.run(mailbox.DrainInbox(username, delivered_at, max_bytes))

    def drain_inbox_from(
        self,
        username: str,
        sender: str,
        delivered_at: float,
        max_bytes: int | None = None,
    ) -> Deferred[list[Message]]:
        return self.run(
            mailbox.DrainInboxFrom(username, sender, delivered_at, max_bytes)
        )

    def undelivered(
        self, username: str, after_id: int, limit: int
    ) -> Deferred[list[Message]]:
        return self.run(mailbox.Undelivered(username, after_id, limit))

    def mark_delivered_then(
        self, username: str, up_to_id: int, delivered_at: float, done: Done
    ) -> None:
        self.submit(mailbox.MarkDelivered(username, up_to_id, delivered_at), done)

    def mark_delivered(
        self, username: str, up_to_id: int, delivered_at: float
    ) -> Deferred[int]:
        return self.run(mailbox.MarkDelivered(username, up_to_id, delivered_at))

    def mark_delivered_ids_then(
        self, username: str, ids: Sequence[int], delivered_at: float, done: Done
    ) -> None:
        operation = mailbox.MarkDeliveredIds(username, list(ids), delivered_at)
        self.submit(operation, done)

    def mark_delivered_ids(
        self, username: str, ids: Sequence[int], delivered_at: float
    ) -> Deferred[int]:
        return self.run(mailbox.MarkDeliveredIds(username, list(ids), delivered_at))

    def conversation(
        self,
        username: str,
        peer: str,
        limit: int,
        before_id: int | None = None,
        max_bytes: int | None = None,
    ) -> Deferred[Page]:
        return self.run(
            history.Conversation(username, peer, limit, before_id, max_bytes)
        )

    def group_history(
        self,
        username: str,
        group: str,
        limit: int,
        before_id: int | None = None,
        max_bytes: int | None = None,
    ) -> Deferred[Page]:
        return self.run(
            history.GroupHistory(username, group, limit, before_id, max_bytes)
        )

    def purge_messages(self, sent_before: float, limit: int) -> Deferred[int]:
        return self.run(history.PurgeMessages(sent_before, limit))

    def messages_by_id(self, ids: Sequence[int]) -> Deferred[list[Message]]:
        """
        Read messages (delivered or not) by id, in id order: for other
        nodes' notifications (L{chat.cluster}).
        """
        return self.run(messages.MessagesById(list(ids)))

    # Groups.

    def create_group(
        self,
        name: str,
        owner: str,
        created_at: float,
        members: Sequence[str] = (),
    ) -> Deferred[Group]:
        return self.run(groups.CreateGroup(name, owner, created_at, tuple(members)))

    def join_group(self, name: str, username: str, joined_at: float) -> Deferred[Group]:
        return self.run(groups.JoinGroup(name, username, joined_at))

    def leave_group(self, name: str, username: str) -> Deferred[Group | None]:
        return self.run(groups.LeaveGroup(name, username))

    def kick_from_group(self, name: str, by: str, username: str) -> Deferred[Group]:
        return self.run(groups.KickFromGroup(name, by, username))

    def list_groups(self, username: str) -> Deferred[list[Group]]:
        return self.run(groups.ListGroups(username))

    def list_all_groups(self, limit: int) -> Deferred[list[Group]]:
        return self.run(groups.ListAllGroups(limit))

    # Realms.

    def add_realm_link(self, link: RealmLink) -> Deferred[None]:
        return self.run(realms.AddRealmLink(link))

    def get_realm_link(self, realm_id: str) -> Deferred[RealmLink]:
        return self.run(realms.GetRealmLink(realm_id))

    def list_realm_links(self) -> Deferred[list[RealmLink]]:
        return self.run(realms.ListRealmLinks())

    def remove_realm_link(self, realm_id: str, now: float) -> Deferred[list[Message]]:
        return self.run(realms.RemoveRealmLink(realm_id, now))

    def queue_outbound(
        self,
        sender: str,
        text: str,
        sent_at: float,
        batches: Sequence[tuple[str, tuple[str, ...], str]],
        max_queue: int,
        attachment: Attachment | None = None,
    ) -> Deferred[list[OutboundMessage]]:
        return self.run(
            realms.QueueOutbound(
                sender, text, sent_at, list(batches), max_queue, attachment
            )
        )

    def next_outbound(
        self, realm_id: str, limit: int
    ) -> Deferred[list[OutboundMessage]]:
        return self.run(realms.NextOutbound(realm_id, limit))

    def outbox_size(self, realm_id: str) -> Deferred[int]:
        return self.run(realms.OutboxSize(realm_id))

    def finish_outbound(
        self, outbox_id: int, failed: Sequence[str], reason: str, now: float
    ) -> Deferred[Message | None]:
        return self.run(realms.FinishOutbound(outbox_id, list(failed), reason, now))

    def receive_remote(
        self, realm_id: str, message: InboundMessage, received_at: float
    ) -> Deferred[Delivery]:
        return self.run(realms.ReceiveRemote(realm_id, message, received_at))

    def drain_realm_inbox(
        self, username: str, realm_id: str, delivered_at: float
    ) -> Deferred[list[Message]]:
        return self.run(realms.DrainRealmInbox(username, realm_id, delivered_at))

    def forget_remote_ids(self, before: float) -> Deferred[int]:
        return self.run(realms.ForgetRemoteIds(before))
