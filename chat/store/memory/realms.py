"""
The in-memory store's links to other realms
(L{chat.store.interfaces.IRealmStore}).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from twisted.internet.defer import Deferred

from chat.errors import NoSuchRealm, RealmExists, RealmQueueFull
from chat.links import (
    POSTMASTER,
    POSTMASTER_NAME,
    Delivery,
    InboundMessage,
    OutboundMessage,
    RealmLink,
    address,
    bounce_text,
)
from chat.model import Attachment, Message
from chat.store.memory.state import MemoryState, Stored


class MemoryRealms(MemoryState):
    """
    The links, the outbox, messages received from other realms, bounces.
    """

    def add_realm_link(self, link: RealmLink) -> Deferred[None]:
        def add() -> None:
            if link.realm_id in self.realm_links:
                raise RealmExists(link.realm_id)
            self.realm_links[link.realm_id] = link

        return self.answer(add)

    def get_realm_link(self, realm_id: str) -> Deferred[RealmLink]:
        return self.answer(self._link, realm_id)

    def _link(self, realm_id: str) -> RealmLink:
        try:
            return self.realm_links[realm_id]
        except KeyError:
            raise NoSuchRealm(realm_id) from None

    def list_realm_links(self) -> Deferred[list[RealmLink]]:
        return self.answer(
            lambda: [self.realm_links[r] for r in sorted(self.realm_links)]
        )

    def remove_realm_link(self, realm_id: str, now: float) -> Deferred[list[Message]]:
        def remove() -> list[Message]:
            self._link(realm_id)
            bounces = []
            for outbox_id, queued in sorted(self.outbox.items()):
                if queued.realm_id != realm_id:
                    continue
                del self.outbox[outbox_id]
                bounce = self._bounce(
                    queued, queued.recipients, "the link was removed", now
                )
                if bounce is not None:
                    bounces.append(bounce)
            del self.realm_links[realm_id]
            return bounces

        return self.answer(remove)

    def queue_outbound(
        self,
        sender: str,
        text: str,
        sent_at: float,
        batches: Sequence[tuple[str, tuple[str, ...], str]],
        max_queue: int,
        attachment: Attachment | None = None,
    ) -> Deferred[list[OutboundMessage]]:
        def queue() -> list[OutboundMessage]:
            user = self.require_user(sender)
            for realm_id, _, _ in batches:
                self._link(realm_id)
                if self._outbox_size(realm_id) >= max_queue:
                    raise RealmQueueFull(realm_id, max_queue)
            if attachment is not None:
                self._check_file_quota(sender, attachment)
            queued = []
            for realm_id, recipients, uid in batches:
                message = OutboundMessage(
                    self.next_outbox_id(),
                    uid,
                    realm_id,
                    sender,
                    user.full_name,
                    tuple(recipients),
                    text,
                    sent_at,
                    attachment,
                )
                self.outbox[message.id] = message
                queued.append(message)
            return queued

        return self.answer(queue)

    def next_outbound(
        self, realm_id: str, limit: int
    ) -> Deferred[list[OutboundMessage]]:
        def read() -> list[OutboundMessage]:
            found = [
                m for _, m in sorted(self.outbox.items()) if m.realm_id == realm_id
            ]
            return found[:limit]

        return self.answer(read)

    def _outbox_size(self, realm_id: str) -> int:
        return sum(1 for m in self.outbox.values() if m.realm_id == realm_id)

    def outbox_size(self, realm_id: str) -> Deferred[int]:
        return self.answer(self._outbox_size, realm_id)

    def _bounce(
        self, queued: OutboundMessage, failed: Sequence[str], reason: str, now: float
    ) -> Message | None:
        user = self.users.get(queued.sender)
        if user is None:
            return None
        bounce = Message(
            self.next_message_id(),
            address(POSTMASTER, queued.realm_id),
            queued.sender,
            POSTMASTER_NAME,
            user.full_name,
            bounce_text(queued.realm_id, failed, reason, queued.text),
            now,
        )
        self.messages.append(Stored(bounce))
        return bounce

    def finish_outbound(
        self, outbox_id: int, failed: Sequence[str], reason: str, now: float
    ) -> Deferred[Message | None]:
        def finish() -> Message | None:
            queued = self.outbox.pop(outbox_id, None)
            if queued is None or not failed:
                return None
            return self._bounce(queued, failed, reason, now)

        return self.answer(finish)

    def receive_remote(
        self, realm_id: str, message: InboundMessage, received_at: float
    ) -> Deferred[Delivery]:
        def receive() -> Delivery:
            self._link(realm_id)
            key = (realm_id, message.uid)
            seen = self.realm_inbound.get(key)
            if seen is not None:
                return Delivery((), tuple(json.loads(seen[0])), True)
            sender = address(message.sender, realm_id)
            attachment = message.attachment
            if attachment is not None and any(
                r in self.users for r in message.recipients
            ):
                self._check_file_quota(sender, attachment)
            stored = []
            unknown = []
            for recipient in message.recipients:
                user = self.users.get(recipient)
                if user is None:
                    unknown.append(recipient)
                    continue
                stored_message = Message(
                    self.next_message_id(),
                    sender,
                    recipient,
                    message.sender_name,
                    user.full_name,
                    message.text,
                    message.sent_at,
                    None,
                    *Attachment.fields(attachment),
                )
                self.messages.append(Stored(stored_message))
                stored.append(stored_message)
            self.realm_inbound[key] = (json.dumps(unknown), received_at)
            return Delivery(tuple(stored), tuple(unknown), False)

        return self.answer(receive)

    def drain_realm_inbox(
        self, username: str, realm_id: str, delivered_at: float
    ) -> Deferred[list[Message]]:
        def drain() -> list[Message]:
            self._link(realm_id)
            taken = []
            for stored in self.messages:
                message = stored.message
                if (
                    message.recipient == username
                    and stored.delivered_at is None
                    and message.realm == realm_id
                ):
                    stored.delivered_at = delivered_at
                    taken.append(message)
            return taken

        return self.answer(drain)

    def forget_remote_ids(self, before: float) -> Deferred[int]:
        def forget() -> int:
            old = [k for k, (_, at) in self.realm_inbound.items() if at < before]
            for key in old:
                del self.realm_inbound[key]
            return len(old)

        return self.answer(forget)
