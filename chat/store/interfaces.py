"""
The store's interfaces, one per domain (as synapse splits its storage):
accounts (L{IUserStore}), sessions (L{ISessionStore}), sending messages
(L{IMessageStore}), the mailbox of undelivered messages
(L{IMailboxStore}), history and retention (L{IHistoryStore}), groups
(L{IGroupStore}) and links to other realms (L{IRealmStore}).
L{IChatStore} is all of them: what a collaborator that needs the whole
store asks for; one that needs a single domain asks for that one.

Every method returns a L{Deferred} that fires after the change (if any) has
been committed, and fails with L{chat.errors.StorageUnavailable} when the
storage could not do it. The hot methods (sending, draining,
acknowledging) also come in a callback form, C{..._then(..., done)}: the
same, telling C{done(succeeded, value)} (L{chat.callbacks.Done}) after the
commit instead of returning a Deferred.

(Files have no methods of their own: they travel as the attachments of
messages. A store shared by several nodes also provides
L{chat.interfaces.IClusterStore}.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from zope.interface import Interface

from chat.callbacks import Done

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from chat.links import Delivery, InboundMessage, OutboundMessage, RealmLink
    from chat.model import Attachment, Group, Message, Page, Rehash, Session, User


class IUserStore(Interface):
    """
    Accounts: users, their password hashes, and who is an administrator.
    """

    def add_user(user: User) -> Deferred[None]:
        """
        @return: fails with L{chat.errors.UserExists}.
        """

    def get_user(username: str) -> Deferred[User]:
        """
        @return: fires with the L{User}; fails with L{chat.errors.NoSuchUser}.
        """

    def set_password_hash(username: str, password_hash: str) -> Deferred[None]:
        """
        Replace a password hash and end every session of that user.

        @return: fails with L{chat.errors.NoSuchUser}.
        """

    def delete_user(username: str) -> Deferred[None]:
        """
        Delete a user, its sessions, its mailbox and its group memberships
        (as if it left each group). Messages it sent to others stay in
        their mailboxes.

        @return: fails with L{chat.errors.NoSuchUser}.
        """

    def list_users(limit: int | None = None) -> Deferred[list[User]]:
        """
        @return: fires with every user (or the first C{limit}), ordered by
            username.
        """

    def set_admin(username: str, is_admin: bool) -> Deferred[None]:
        """
        Grant or revoke the administrator flag.

        @return: fails with L{chat.errors.NoSuchUser}.
        """

    def is_admin(username: str) -> Deferred[bool]:
        """
        @return: fires with whether the user is an administrator; fails
            with L{chat.errors.NoSuchUser}.
        """


class ISessionStore(Interface):
    """
    Sessions: the hashes of the tokens of logged-in users.
    """

    def create_session(
        session: Session, rehash: Rehash | None = None
    ) -> Deferred[None]:
        """
        Store a new session; with C{rehash}, also replace the user's
        password hash in the same operation, if it is still the old one
        (sessions are not ended by this).

        @return: fails with L{chat.errors.NoSuchUser} if the user is gone.
        """

    def get_session(token_hash: str) -> Deferred[Session | None]:
        """
        @return: fires with the L{Session}, or None if there is none.
        """

    def touch_session(token_hash: str, last_seen_at: float) -> Deferred[bool]:
        """
        Record activity on a session.

        @return: fires with False if the session no longer exists.
        """

    def delete_session(token_hash: str) -> Deferred[None]:
        """
        End a session (a no-op if it does not exist).
        """

    def existing_sessions(token_hashes: Sequence[str]) -> Deferred[set[str]]:
        """
        Which of these sessions still exist (another process may have ended
        them: C{chat-admin passwd} or C{userdel}).

        @return: fires with the token hashes that do.
        """

    def delete_expired_sessions(
        idle_since: float, created_since: float
    ) -> Deferred[int]:
        """
        Delete sessions last seen before C{idle_since} or created before
        C{created_since}.

        @return: fires with how many were deleted.
        """


class IMessageStore(Interface):
    """
    Sending: storing messages (and files) in their recipients' mailboxes.
    """

    def store_message(
        sender: str, recipient: str, text: str, sent_at: float
    ) -> Deferred[Message]:
        """
        Store a private message in the recipient's mailbox.

        @return: fires with the stored L{Message} after the commit; fails
            with L{chat.errors.NoSuchUser} naming whichever of sender or
            recipient does not exist, L{chat.errors.MailboxFull} if the
            recipient already has the store's maximum of undelivered
            messages, or L{chat.errors.TooManyUnread} if it has the
            store's maximum from this sender (both checked in the same
            transaction as the insert).
        """

    def store_message_then(
        sender: str, recipient: str, text: str, sent_at: float, done: Done
    ) -> None:
        """
        L{store_message}, telling C{done} after the commit instead of
        returning a Deferred.
        """

    def store_messages(
        sender: str,
        recipients: Sequence[str],
        text: str,
        sent_at: float,
        attachment: Attachment | None = None,
    ) -> Deferred[list[Message]]:
        """
        Store one message (with a file, if C{attachment}) in the mailbox of
        each distinct recipient, all or none, in one transaction.

        @return: fires with one L{Message} per distinct recipient, in the
            order given; fails with L{chat.errors.NoSuchUser} if the sender
            does not exist, L{chat.errors.NoSuchUsers} naming every
            recipient that does not, L{chat.errors.MailboxFull} (or
            L{chat.errors.TooManyUnread}) naming a recipient whose mailbox
            is full (then nothing is stored), or
            L{chat.errors.QuotaExceeded} if a new file would take the
            sender past its quota.
        """

    def store_messages_then(
        sender: str,
        recipients: Sequence[str],
        text: str,
        sent_at: float,
        attachment: Attachment | None,
        done: Done,
    ) -> None:
        """
        L{store_messages}, telling C{done}.
        """

    def store_group_message(
        sender: str,
        group: str,
        text: str,
        sent_at: float,
        attachment: Attachment | None = None,
    ) -> Deferred[list[Message]]:
        """
        Store a message in the mailbox of every member of C{group} as it is
        in this transaction: undelivered for the others, already delivered
        for the sender (its copy, for its history). Each carries C{group}.
        A member whose mailbox is full (the store's maximum of undelivered
        messages) gets a copy stored as delivered, for its history only.

        @return: fires with the sender's copy first, then the undelivered
            others' in join order; fails with L{chat.errors.NoSuchGroup},
            L{chat.errors.NotAMember} if the sender is not a member, or
            L{chat.errors.QuotaExceeded} (as L{store_messages}).
        """

    def store_group_message_then(
        sender: str,
        group: str,
        text: str,
        sent_at: float,
        attachment: Attachment | None,
        done: Done,
    ) -> None:
        """
        L{store_group_message}, telling C{done}.
        """

    def store_to_name(
        sender: str,
        name: str,
        text: str,
        sent_at: float,
        attachment: Attachment | None = None,
    ) -> Deferred[list[Message]]:
        """
        Store a message for C{name}, decided in the same transaction: as
        L{store_messages} for the one user of that name if there is one,
        or else as L{store_group_message} for the group of that name.

        @return: fires as either does; fails as either does, and with
            L{chat.errors.NoSuchUsers} naming C{name} if it is neither a user
            nor a group.
        """

    def store_to_name_then(
        sender: str,
        name: str,
        text: str,
        sent_at: float,
        attachment: Attachment | None,
        done: Done,
    ) -> None:
        """
        L{store_to_name}, telling C{done}.
        """


class IMailboxStore(Interface):
    """
    The mailbox: each user's undelivered messages, taken out of it as they
    are delivered (by C{inbox}, or pushed and acknowledged).
    """

    def drain_inbox(
        username: str, delivered_at: float, max_bytes: int | None = None
    ) -> Deferred[list[Message]]:
        """
        Return the user's undelivered messages, oldest first, and mark them
        delivered in the same transaction. Each message is returned by
        exactly one call. Delivered messages stay stored (for
        L{IHistoryStore}).

        @param max_bytes: if set, stop before the first message whose text
            and file would take the bytes returned over this (but always
            return at least one message); the rest stays undelivered.
        """

    def drain_inbox_then(
        username: str, delivered_at: float, max_bytes: int | None, done: Done
    ) -> None:
        """
        L{drain_inbox}, telling C{done}.
        """

    def drain_inbox_from(
        username: str, sender: str, delivered_at: float, max_bytes: int | None = None
    ) -> Deferred[list[Message]]:
        """
        Like L{drain_inbox}, but only the private messages (not a group's)
        from C{sender}.

        @return: fails with L{chat.errors.NoSuchUser} if C{sender} (a local
            name, without C{@}) does not exist.
        """

    def undelivered(
        username: str, after_id: int, limit: int
    ) -> Deferred[list[Message]]:
        """
        Read (without marking) up to C{limit} undelivered messages of the
        user with ids above C{after_id}, oldest first.
        """

    def mark_delivered(
        username: str, up_to_id: int, delivered_at: float
    ) -> Deferred[int]:
        """
        Mark every undelivered message of the user with an id up to
        C{up_to_id} delivered.

        @return: fires with how many were marked.
        """

    def mark_delivered_then(
        username: str, up_to_id: int, delivered_at: float, done: Done
    ) -> None:
        """
        L{mark_delivered}, telling C{done}.
        """

    def mark_delivered_ids(
        username: str, ids: Sequence[int], delivered_at: float
    ) -> Deferred[int]:
        """
        Mark the user's undelivered messages with these ids delivered (an
        acknowledgement of exactly what was pushed: with several nodes, a
        lower id may commit after a higher one was pushed).

        @return: fires with how many were marked.
        """

    def mark_delivered_ids_then(
        username: str, ids: Sequence[int], delivered_at: float, done: Done
    ) -> None:
        """
        L{mark_delivered_ids}, telling C{done}.
        """


class IHistoryStore(Interface):
    """
    History: the messages kept after delivery, read a page at a time, and
    deleted when they are older than the retention.
    """

    def conversation(
        username: str,
        peer: str,
        limit: int,
        before_id: int | None = None,
        max_bytes: int | None = None,
    ) -> Deferred[Page]:
        """
        The private messages (not group messages) between C{username} and
        C{peer}, both ways, newest first: at most C{limit}, with ids below
        C{before_id} if set, and (if C{max_bytes} is set) stopping
        before the text and file bytes would pass it, but with at least one
        message.

        @return: fires with the L{Page}; fails with L{chat.errors.NoSuchUser}
            if C{peer} does not exist.
        """

    def group_history(
        username: str,
        group: str,
        limit: int,
        before_id: int | None = None,
        max_bytes: int | None = None,
    ) -> Deferred[Page]:
        """
        The messages of C{group} in C{username}'s mailbox, newest first,
        paged as in L{conversation}.

        @return: fails with L{chat.errors.NoSuchGroup}, or
            L{chat.errors.NotAMember} if C{username} is not a member now.
        """

    def purge_messages(sent_before: float, limit: int) -> Deferred[int]:
        """
        Delete at most C{limit} messages (delivered or not) sent before
        C{sent_before}, oldest first, and the files no message uses any
        more.

        @return: fires with how many messages were deleted.
        """


class IGroupStore(Interface):
    """
    Groups: their owners and members.
    """

    def create_group(
        name: str, owner: str, created_at: float, members: Sequence[str] = ()
    ) -> Deferred[Group]:
        """
        Create a group with C{owner} as its owner and first member, and
        C{members} (duplicates and the owner dropped) joined after it, in
        that order, all in one transaction.

        @return: fails with L{chat.errors.GroupExists},
            L{chat.errors.NoSuchUser} if C{owner} does not exist,
            L{chat.errors.NoSuchUsers} naming every member that does not,
            or L{chat.errors.TooManyGroups} if one of them is in as many
            groups as its quota allows (then nothing is created).
        """

    def join_group(name: str, username: str, joined_at: float) -> Deferred[Group]:
        """
        @return: fires with the group after joining; fails with
            L{chat.errors.NoSuchGroup}, L{chat.errors.AlreadyAMember},
            L{chat.errors.NoSuchUser} or L{chat.errors.TooManyGroups}.
        """

    def leave_group(name: str, username: str) -> Deferred[Group | None]:
        """
        Remove a member. If it owned the group, the longest-standing
        remaining member becomes the owner; a group left empty is deleted.

        @return: fires with the group after leaving, or None if it was
            deleted; fails with L{chat.errors.NoSuchGroup} or
            L{chat.errors.NotAMember}.
        """

    def kick_from_group(name: str, by: str, username: str) -> Deferred[Group]:
        """
        Remove C{username} from a group on behalf of C{by}, who must own it.

        @return: fires with the group after the kick; fails with
            L{chat.errors.NoSuchGroup}, L{chat.errors.NotGroupOwner},
            L{chat.errors.CannotKickSelf} or L{chat.errors.NotAMember}
            (naming C{username}).
        """

    def list_groups(username: str) -> Deferred[list[Group]]:
        """
        @return: fires with the groups C{username} is a member of, ordered
            by name.
        """

    def list_all_groups(limit: int) -> Deferred[list[Group]]:
        """
        @return: fires with the first C{limit} groups, ordered by name.
        """


class IRealmStore(Interface):
    """
    Durable state of the links to other realms (federation): the links,
    the outbox of messages for other realms, the messages received from
    them, and the bounces back to senders.
    """

    def add_realm_link(link: RealmLink) -> Deferred[None]:
        """
        @return: fails with L{chat.errors.RealmExists}.
        """

    def get_realm_link(realm_id: str) -> Deferred[RealmLink]:
        """
        @return: fails with L{chat.errors.NoSuchRealm}.
        """

    def list_realm_links() -> Deferred[list[RealmLink]]:
        """
        @return: fires with every link, ordered by realm id.
        """

    def remove_realm_link(realm_id: str, now: float) -> Deferred[list[Message]]:
        """
        Delete a link. Messages still queued for that realm are returned to
        their senders as bounces, in the same transaction.

        @return: fires with the bounces stored; fails with
            L{chat.errors.NoSuchRealm}.
        """

    def queue_outbound(
        sender: str,
        text: str,
        sent_at: float,
        batches: Sequence[tuple[str, tuple[str, ...], str]],
        max_queue: int,
        attachment: Attachment | None = None,
    ) -> Deferred[list[OutboundMessage]]:
        """
        Queue one message for each C{(realm_id, recipients, uid)} batch, all
        or none, with the sender's full name as of now. With an
        C{attachment} (C{text} is then its name), each carries the file,
        kept until that realm acknowledges it, and counted meanwhile in
        the sender's file quota (L{chat.store.quotas}).

        @return: fires with the queued messages; fails with
            L{chat.errors.NoSuchRealm} if a realm has no link,
            L{chat.errors.RealmQueueFull} if a realm already has
            C{max_queue} messages queued, L{chat.errors.NoSuchUser} if the
            sender does not exist, L{chat.errors.QuotaExceeded} if a new
            file would take the sender past their quota.
        """

    def next_outbound(realm_id: str, limit: int) -> Deferred[list[OutboundMessage]]:
        """
        Read (without removing) the oldest C{limit} queued messages of a
        realm, in queue order.
        """

    def outbox_size(realm_id: str) -> Deferred[int]:
        """
        @return: fires with how many messages are queued for the realm.
        """

    def finish_outbound(
        outbox_id: int, failed: Sequence[str], reason: str, now: float
    ) -> Deferred[Message | None]:
        """
        Remove a delivered (or refused) message from the outbox. If
        C{failed} names recipients it could not reach, store a bounce from
        C{postmaster@<realm>} in the sender's inbox in the same transaction,
        saying C{reason}. Nothing happens if the message is no longer
        queued (it was finished before), so finishing twice bounces once.

        @return: fires with the bounce stored, or None.
        """

    def receive_remote(
        realm_id: str, message: InboundMessage, received_at: float
    ) -> Deferred[Delivery]:
        """
        Store a message from a user of another realm in the mailboxes of
        its recipients that exist here, as from C{<sender>@<realm_id>}, and
        remember its id: a message whose id was accepted from that realm
        before is not stored again. A file is stored as a local one, within
        the file quota of C{<sender>@<realm_id>} (L{chat.store.quotas}).

        @return: fires with the L{Delivery}; fails with
            L{chat.errors.NoSuchRealm} if no link to that realm is
            configured (any more), L{chat.errors.QuotaExceeded} if a new
            file would take the sender past their quota (then nothing is
            stored, nor the id remembered).
        """

    def drain_realm_inbox(
        username: str, realm_id: str, delivered_at: float
    ) -> Deferred[list[Message]]:
        """
        Like L{IMailboxStore.drain_inbox}, but only the messages from users
        of C{realm_id}.

        @return: fails with L{chat.errors.NoSuchRealm} if no link to that
            realm is configured.
        """

    def forget_remote_ids(before: float) -> Deferred[int]:
        """
        Forget the ids of messages accepted from other realms before
        C{before}.

        @return: fires with how many were forgotten.
        """


class IChatStore(
    IUserStore,
    ISessionStore,
    IMessageStore,
    IMailboxStore,
    IHistoryStore,
    IGroupStore,
    IRealmStore,
):
    """
    The whole store: every domain's interface, and its lifecycle.
    """

    def close() -> Deferred[None]:
        """
        Finish in-flight work and release the storage.
        """


class IExternalChanges(Interface):
    """
    A store that other processes may write without telling this one
    (SQLite: C{chat-admin} changes the file while the server runs), and
    that can tell cheaply whether they did.
    """

    def external_changes() -> Deferred[int]:
        """
        How many times this store has noticed that another process
        committed to it (SQLite: its C{PRAGMA data_version} changed), up to
        date with every commit made before the call: compare two answers to
        know whether anything changed in between.

        @return: fails with L{chat.errors.StorageUnavailable}.
        """
