"""
The seams between the connections, the realm and its collaborators: the
avatar (L{IChatUser}), the mind (L{IChatClient}), the doors and their line
handlers, the fan-out, registration and password hashing.

The store's interfaces, one per domain, are in L{chat.store.interfaces};
what several nodes sharing a database need of it (L{IClusterStore}, with
L{IClusterConnection} and L{INotificationListener}) is here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from zope.interface import Attribute, Interface

from chat.callbacks import Done

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IReactorFromThreads, IReactorTime

    from chat.links import OutboundMessage
    from chat.model import Group, Message, Page, PasswordCheck, Profile, User
    from chat.push import Subscription
    from chat.store.cluster import SyncResult


class IChatUser(Interface):
    """
    The avatar of one authenticated user; what a connection may do.
    """

    username = Attribute("The user's name, a str.")

    def open_session() -> Deferred[str]:
        """
        Start a new session for this user.

        @return: fires with the new token (a uuid4 string); fails with
            L{chat.errors.StorageUnavailable}.
        """

    def send(recipient: str, text: str) -> Deferred[Message]:
        """
        Store a private message; fires only after it has been committed.

        @return: fires with the stored L{Message}; fails with
            L{chat.errors.NoSuchUser} for an unknown recipient,
            L{chat.errors.MailboxFull} if the recipient's mailbox is full,
            L{chat.errors.SessionNotFound} if this user was deleted, or
            L{chat.errors.StorageUnavailable}.
        """

    def send_then(recipient: str, text: str, now: float, done: Done) -> None:
        """
        L{send}, sent at C{now}, telling C{done} instead of returning a
        Deferred.
        """

    def inbox() -> Deferred[list[Message]]:
        """
        Take every undelivered message of this user, oldest first, marking
        them delivered in the same transaction. The bytes taken per call are
        capped (see L{chat.realm.REPLY_BUDGET}); messages beyond the cap
        stay for the next call.

        @return: fires with the messages after the commit; fails with
            L{chat.errors.StorageUnavailable} (then nothing was marked).
        """

    def inbox_then(now: float, done: Done) -> None:
        """
        L{inbox}, delivered at C{now}, telling C{done}.
        """

    def end_session(token: str) -> Deferred[None]:
        """
        Log out: the session of C{token} (one of this user's) stops working
        at once, everywhere.

        @return: fires once the session is deleted from the store.
        """

    def send_many(recipients: Sequence[str], text: str) -> Deferred[list[Message]]:
        """
        Store one message for several users, all or none, in one
        transaction. Duplicates are sent once; the sender may be one of them.

        @return: fires with one L{Message} per recipient; fails with
            L{chat.errors.NoSuchUsers} naming every unknown recipient,
            L{chat.errors.TooManyRecipients}, L{chat.errors.SessionNotFound}
            if this user was deleted, or L{chat.errors.StorageUnavailable}.
        """

    def send_many_then(
        recipients: Sequence[str], text: str, now: float, done: Done
    ) -> None:
        """
        L{send_many}, sent at C{now}, telling C{done}.
        """

    def send_to_group(group: str, text: str) -> Deferred[list[Message]]:
        """
        Store a message for every member of C{group} but this user (and a
        copy, already delivered, for this user's history).

        @return: fires with the stored messages; fails with
            L{chat.errors.NoSuchGroup} or L{chat.errors.NotAMember}.
        """

    def send_to_group_then(group: str, text: str, now: float, done: Done) -> None:
        """
        L{send_to_group}, sent at C{now}, telling C{done}.
        """

    def send_file(
        recipients: Sequence[str], file_name: str, content: bytes
    ) -> Deferred[list[Message]]:
        """
        Like L{send_many}, with a file: C{file_name} is a plain name or a
        path, whose last component is kept (L{chat.model.plain_file_name});
        C{content} is at most the server's maximum file size.

        @return: also fails with L{chat.errors.InvalidFileName} or
            L{chat.errors.FileTooLarge}. With a single recipient, an unknown
            one fails with L{chat.errors.NoSuchUser}.
        """

    def send_file_to_group(
        group: str, file_name: str, content: bytes
    ) -> Deferred[list[Message]]:
        """
        Like L{send_to_group}, with a file (see L{send_file}).
        """

    def send_to_name(name: str, text: str) -> Deferred[list[Message]]:
        """
        A message to C{name}, given without the C{#} of a group: like
        L{send_many} to the user of that name, or, if no user has it and a
        group does, like L{send_to_group} (a user of that name wins; the
        course family writes C{sendgroup <token> team hi} for C{#team}).

        @return: fails as those do, and with L{chat.errors.NoSuchUsers}
            naming C{name} if it is neither a user nor a group.
        """

    def send_to_name_then(name: str, text: str, now: float, done: Done) -> None:
        """
        L{send_to_name}, sent at C{now}, telling C{done}.
        """

    def send_file_to_name(
        name: str, file_name: str, content: bytes
    ) -> Deferred[list[Message]]:
        """
        L{send_to_name} with a file (see L{send_file}).
        """

    def create_group(name: str, members: Sequence[str] = ()) -> Deferred[Group]:
        """
        Create a group owned by this user, who becomes its first member,
        with C{members} joined as if each had joined it.

        @return: fails with L{chat.errors.InvalidGroupName},
            L{chat.errors.GroupExists}, L{chat.errors.TooManyRecipients}
            for more members than a message may have recipients, or
            L{chat.errors.NoSuchUsers} naming the unknown members (then
            nothing is created).
        """

    def join_group(name: str) -> Deferred[Group]:
        """
        @return: fires with the group joined; fails with
            L{chat.errors.NoSuchGroup} or L{chat.errors.AlreadyAMember}.
        """

    def leave_group(name: str) -> Deferred[Group | None]:
        """
        Leave a group. If the owner leaves, the longest-standing remaining
        member becomes the owner; a group left empty is deleted.

        @return: fires with the group as it is now, or None if deleted;
            fails with L{chat.errors.NoSuchGroup} or
            L{chat.errors.NotAMember}.
        """

    def kick(name: str, username: str) -> Deferred[Group]:
        """
        Remove a member from a group this user owns.

        @return: fires with the group as it is now; fails with
            L{chat.errors.NoSuchGroup}, L{chat.errors.NotGroupOwner},
            L{chat.errors.CannotKickSelf} or L{chat.errors.NotAMember}.
        """

    def groups() -> Deferred[list[Group]]:
        """
        @return: fires with this user's groups, ordered by name.
        """

    def all_groups(limit: int) -> Deferred[tuple[list[Group], bool]]:
        """
        @return: fires with the first C{limit} groups of the server, ordered
            by name, and whether there are more.
        """

    def all_users(limit: int) -> Deferred[tuple[list[Profile], bool]]:
        """
        @return: fires with the public profiles of the first C{limit} users,
            ordered by username, and whether there are more.
        """

    def private_inbox(peer: str) -> Deferred[list[Message]]:
        """
        Like L{inbox}, only the private messages from C{peer}.

        @return: fails with L{chat.errors.NoSuchUser} if C{peer} does not
            exist.
        """

    def history(peer: str, limit: int, before_id: int | None = None) -> Deferred[Page]:
        """
        The conversation with C{peer}, both ways, newest first.

        @return: fails with L{chat.errors.NoSuchUser} if C{peer} does not
            exist.
        """

    def group_history(
        group: str, limit: int, before_id: int | None = None
    ) -> Deferred[Page]:
        """
        The messages of C{group} in this user's mailbox (sent or received
        while a member), newest first.

        @return: fails with L{chat.errors.NoSuchGroup} or
            L{chat.errors.NotAMember}.
        """

    def subscribe(client: IChatClient, token: str) -> Subscription:
        """
        Push this user's messages (and presence changes) to C{client} until
        L{unsubscribe}, or until the session of C{token} ends.
        """

    def unsubscribe(subscription: Subscription) -> None:
        """
        Stop a subscription.
        """

    def acknowledge(up_to_id: int) -> Deferred[int]:
        """
        Mark this user's messages up to C{up_to_id} delivered.

        @return: fires with how many were marked.
        """

    def acknowledge_then(up_to_id: int, now: float, done: Done) -> None:
        """
        L{acknowledge} at C{now}, telling C{done}.
        """

    def online() -> list[tuple[str, str]]:
        """
        (username, full name) of every user with a live connection.
        """

    def send_to_realm(
        realm_id: str, recipients: Sequence[str], text: str
    ) -> Deferred[list[OutboundMessage]]:
        """
        Queue a message for users of another realm (C{recipients} are
        usernames there, or C{user@realm} addresses of further realms).
        Fires once the message is durably in the outbox; it is delivered
        later, and a recipient that does not exist there comes back as a
        bounce in this user's inbox.

        @return: fires with one queued message per realm; fails with
            L{chat.errors.NoSuchRealm} if no link to a realm is configured,
            L{chat.errors.RealmQueueFull}, L{chat.errors.NoSuchUser} for a
            malformed username, or L{chat.errors.StorageUnavailable}.
        """

    def send_file_to_realm(
        realm_id: str, recipients: Sequence[str], file_name: str, content: bytes
    ) -> Deferred[list[OutboundMessage]]:
        """
        Like L{send_to_realm}, for a file: named and limited as by
        L{send_file} (a path's last component, C{--max-file-size}), and
        counted in this user's file quota until the other realm has it.

        @return: also fails with L{chat.errors.InvalidFileName},
            L{chat.errors.FileTooLarge} or L{chat.errors.QuotaExceeded}.
        """

    def realm_inbox(realm_id: str) -> Deferred[list[Message]]:
        """
        Like L{inbox}, but only the messages from users of C{realm_id}.

        @return: fails with L{chat.errors.NoSuchRealm} if no link to that
            realm is configured.
        """

    def add_realm(realm_id: str, host: str, port: int) -> Deferred[str]:
        """
        Link this realm to another (administrators only), with a new random
        secret.

        @return: fires with the secret, for the other realm's administrator;
            fails with L{chat.errors.NotAdmin}, L{chat.errors.RealmExists}.
        """


class IChatClient(Interface):
    """
    The mind of a connection: what the realm tells it, in the chat's own
    terms (the connection formats it for its wire).
    """

    def message_received(message: Message) -> None:
        """
        A message for the subscribed user was committed (or is still
        undelivered from before).
        """

    def presence_changed(username: str, full_name: str, online: bool) -> None:
        """
        A user's first connection arrived, or its last one went.
        """

    def unsubscribed(reason: str) -> None:
        """
        The subscription ended with its session (logout, a new password,
        the user deleted, expiry).
        """


class ILineHandler(Interface):
    """
    What a door hands its request lines to: a connection's
    L{chat.dispatch.Dispatcher}, or the handler of a realm link that took
    the connection over.
    """

    listening = Attribute(
        "Whether the connection is quiet by design (subscribed to events, or "
        "a realm link with keepalives of its own): never closed as idle."
    )

    def dispatch(line: bytes, now: float) -> bytes | None:
        """
        Run one request line (without its line ending), received at
        C{now}, one at a time.

        @return: the reply (a JSON object, without the delimiter), or None
            if it is given to the door's C{answer} instead (perhaps before
            this returned).
        """

    def connection_lost() -> None:
        """
        The connection is gone.
        """


class IDoor(IChatClient):
    """
    A connection as its line handler sees it: a TCP or TLS line connection,
    or a WebSocket. The door frames, buffers and limits; the handler runs
    commands.
    """

    def answer(reply: bytes) -> None:
        """
        The reply to the line in progress, which C{dispatch} left
        unanswered.
        """

    def logged_in(username: str | None = None) -> None:
        """
        The connection proved who it is (a login or a valid token, as
        C{username}): the login deadline gives way to the idle timeout.
        """

    def close() -> None:
        """
        Close after the reply to the line in progress, running nothing
        more.
        """

    def take_over(handler: ILineHandler) -> None:
        """
        Hand the lines after this one to C{handler} (a realm link).

        @raise chat.errors.RealmLinkOnly: if this door cannot be a link.
        """

    def set_max_line(length: int) -> None:
        """
        Accept lines of up to C{length} bytes from now on.
        """

    def pause_login_clock() -> None:
        """
        The line in progress waits for the server's work on the client's
        behalf (its password being hashed): until L{resume_login_clock},
        that time does not count against the login deadline, and the
        connection is not the one closed to make room for others.
        """

    def resume_login_clock() -> None:
        """
        The server's work for the line in progress is done (or failed).
        """


class IFanout(Interface):
    """
    Tells listeners that messages were committed for their users.

    In one process this is a dict of listeners; with several nodes on one
    database it is fed by the database's notifications as well.
    """

    def listen(
        username: str,
        listener: Callable[[Message], None],
        resync: Callable[[], None] | None = None,
    ) -> None:
        """
        Call C{listener} with each message committed for C{username}.

        @param resync: called when the fan-out may have missed messages
            (its connection to the other nodes was lost and made again):
            the listener should read what it has not seen from the store.
            A fan-out that cannot miss messages never calls it.
        """

    def listening(username: str) -> bool:
        """
        Whether anyone here listens for C{username}'s messages (if not,
        publishing them here would do nothing).
        """

    def unlisten(username: str, listener: Callable[[Message], None]) -> None:
        """
        Stop calling C{listener} (a no-op if it was not listening).
        """

    def publish(message: Message) -> None:
        """
        Announce a committed message to its recipient's listeners.
        """


class IRegistrar(Interface):
    """
    Self-registration of new accounts, before any login.
    """

    def register(
        username: str, password: str, full_name: str, address: str
    ) -> Deferred[User]:
        """
        Create an account, hashing the password with argon2id.

        @param address: the key of the client's address for the per-address
            limits (L{chat.limits.address_key}: an IPv6 client by its /64),
            the key of the rate limit and of the hashing queue.
        @return: fires with the new L{User}; fails with
            L{chat.errors.RegistrationClosed}, L{chat.errors.RateLimited},
            L{chat.errors.InvalidUsername}, L{chat.errors.InvalidPassword},
            L{chat.errors.InvalidFullName} or L{chat.errors.UserExists}.
        """


class IPasswordHasher(Interface):
    """
    Slow password hashing, kept off the reactor thread.

    Requests are served in turns across C{key}s (client addresses), so one
    client cannot starve the others; each may fail with
    L{chat.errors.ServerBusy} when too many are waiting.
    """

    def hash(password: str, key: str = "") -> Deferred[str]:
        """
        @param key: who asks (a client address).
        @return: fires with a PHC string (argon2id).
        """

    def check(
        password_hash: str,
        password: str,
        key: str = "",
        admit: Callable[[], None] | None = None,
    ) -> Deferred[PasswordCheck]:
        """
        @param key: who asks (a client address).
        @param admit: called when the request's turn comes, just before the
            password is hashed; if it raises, the request fails with that
            (the failure limits, checked again after a wait).
        @return: fires with whether C{password} matches C{password_hash},
            and a new hash of it if that one has other parameters than the
            hasher's (L{PasswordCheck}).
        """


class IClusterStore(Interface):
    """
    A store that several nodes share (PostgreSQL): each node serves the
    same realm, and hears of the others' commits through the database
    (L{chat.cluster}).

    In the transaction of each batch that stores messages, the store sends
    C{pg_notify('chat_messages', payload)}, where the payload is the JSON
    object C{{"node": <node_id>, "at": <commit time, seconds>, "messages":
    [[id, recipient], ...]}} (several notifications if it would be long).
    The channels and their payloads are listed in L{chat.store.cluster}.

    The cluster's own reads and writes (heartbeats, presence, link leases,
    notifications) go through two connections the store makes for it, each
    on a thread of its own: L{cluster_connection} and
    L{notification_listener}.
    """

    node_id = Attribute("This node's id, a str unique among the nodes.")
    url = Attribute("The libpq URI of the database, a str.")

    def messages_by_id(ids: Sequence[int]) -> Deferred[list[Message]]:
        """
        The messages with these ids (delivered or not), in id order; ids
        that no longer exist are left out.

        @return: fails with L{chat.errors.StorageUnavailable}.
        """

    def cluster_connection(reactor: IReactorFromThreads) -> IClusterConnection:
        """
        A new connection for this node's writes to the cluster's tables,
        not started yet; its results come back through C{reactor}.
        """

    def notification_listener(
        reactor: IReactorFromThreads, clock: IReactorTime
    ) -> INotificationListener:
        """
        A new listener to the cluster's notifications, handing them over
        through C{reactor}; C{clock} bounds how long stopping it waits.
        """


class IClusterConnection(Interface):
    """
    A node's connection for its writes to the cluster's tables, on a thread
    of its own, in the order asked for. Made on first use, and made again
    by the first write after it broke: each time is a new session, and the
    link leases of the last one are gone.

    Each method's Deferred fails with L{chat.errors.StorageUnavailable} if
    PostgreSQL failed.
    """

    lost_observers = Attribute(
        "Callables called (with no argument, in the reactor thread) when the"
        " connection broke: the link leases it held are gone."
    )

    def start() -> None:
        """
        Start the connection's thread; writes asked for before wait.
        """

    def close() -> Deferred[None]:
        """
        Close the connection (releasing its link leases) after the writes
        already asked for, and end its thread.
        """

    def sync_node(
        node_id: str,
        desired: dict[str, str],
        written: dict[str, str] | None,
        expire_after: float | None,
    ) -> Deferred[SyncResult]:
        """
        In one transaction: heartbeat node C{node_id} (making its row if
        missing), make its users (username -> full name) C{desired},
        knowing that they are C{written} (or rewriting them all if None),
        and tell the other nodes; then, if C{expire_after} is given, remove
        the nodes whose heartbeat is older than that many seconds (by the
        database's clock), with their users, and tell the others.

        @return: fires with whether the node's row had to be made again,
            and the nodes removed.
        """

    def leave_cluster(node_id: str) -> Deferred[None]:
        """
        Remove node C{node_id} and its users, and tell the other nodes.
        """

    def take_leases(
        wanted: Sequence[str], released: Sequence[str]
    ) -> Deferred[tuple[int, list[str]]]:
        """
        Give up the leases of the realm links C{released}, and try to take
        those of C{wanted}; with neither, check that the session (and the
        leases it holds) is alive.

        @return: fires with the number of the session they were taken in
            (a new number: the leases of the earlier session are gone) and
            the realms of C{wanted} whose lease the session holds.
        """

    def wake_link(node_id: str, realm_id: str) -> Deferred[None]:
        """
        Tell the node holding the lease of C{realm_id}'s link that node
        C{node_id} queued a message for it.
        """


class INotificationListener(Interface):
    """
    A node's LISTEN connection to the cluster's notification channels, one
    session at a time.
    """

    def listen(
        ready: Callable[[dict[str, dict[str, str]]], None],
        notified: Callable[[str, str], None],
    ) -> Deferred[None]:
        """
        Start a session.

        @param ready: called with the presence snapshot (node -> username
            -> full name) once LISTEN is in effect.
        @param notified: called with (channel, payload) of each
            notification, in order, after C{ready}.
        @return: fires when the session ends: with None after L{stop},
            with L{chat.errors.StorageUnavailable} if the connection
            failed.
        """

    def stop() -> Deferred[None]:
        """
        End the session.

        @return: fires when it ended, or after two seconds anyway.
        """
