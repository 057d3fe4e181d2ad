"""
Per-user quotas (L{chat.limits.Quotas}, the transaction's C{quotas}),
checked in the transaction that would go past them, by the operations that
store a file (L{chat.store.sending}) or add a member to a group
(L{chat.store.groups}); nothing else pays for them.

Files. What a user "has stored" is every distinct file (by sha256) that a
message they sent still carries, stored here or waiting in the outbox for
another realm (C{realm_outbox}, until that realm acknowledges it). Files
are stored once per content (C{files}, keyed by sha256) and deleted with
the last message carrying them, so:

    - sending a file again, to more people, or to a group (a copy per
      member and the sender's own) costs nothing more: it is one file;
    - a file stops counting when the last message of the user that carries
      it is gone (C{--retention}, or the recipients' accounts deleted);
    - two users who sent the same content each have it counted: either
      one's messages keep it stored.

So a user at their quota can still send a file they sent before; a new
one is refused with L{QuotaExceeded} and nothing is stored. The count
walks the index of file messages by sender (C{messages_files_by_sender},
schema version 2), a row per distinct file at most.

Groups. A user may belong to at most C{max_groups} groups, as owner or
member: creating or joining one more is refused with L{TooManyGroups}.

On PostgreSQL several nodes may send a user's files at once, so the
user's row is locked first: the checks and inserts of one user's files
run one at a time there, as they do on SQLite's single writer.
"""

from __future__ import annotations

from chat.errors import QuotaExceeded, TooManyGroups
from chat.model import Attachment
from chat.store.batching import Transaction


def file_usage(txn: Transaction, username: str) -> tuple[int, int]:
    """
    How many distinct files the messages C{username} sent still carry, and
    their bytes.
    """
    count, size = txn.execute(
        "SELECT count(*), coalesce(sum(size), 0) FROM files WHERE sha256 IN"
        " (SELECT file_sha256 FROM messages WHERE sender = ?"
        " AND file_sha256 IS NOT NULL"
        " UNION SELECT file_sha256 FROM realm_outbox WHERE sender = ?"
        " AND file_sha256 IS NOT NULL)",
        (username, username),
    ).fetchone()
    return int(count), int(size)


def _has_file(txn: Transaction, username: str, sha256: str) -> bool:
    return (
        txn.execute(
            "SELECT 1 FROM messages WHERE sender = ? AND file_sha256 = ?"
            " UNION ALL SELECT 1 FROM realm_outbox WHERE sender = ?"
            " AND file_sha256 = ? LIMIT 1",
            (username, sha256, username, sha256),
        ).fetchone()
        is not None
    )


def _lock_user(txn: Transaction, username: str) -> None:
    """
    On a database with several writers, lock the user's row until the end
    of the transaction: quota checks of one user run one at a time. (Not
    C{FOR UPDATE}, which would also hold up every insert whose foreign key
    names the user, such as messages to them.)
    """
    if txn.locks_rows:
        txn.execute(
            "SELECT 1 FROM users WHERE username = ? FOR NO KEY UPDATE", (username,)
        )


def check_file_quota(txn: Transaction, sender: str, attachment: Attachment) -> None:
    """
    Before storing C{attachment} from C{sender}: may they store it?

    @raise QuotaExceeded: if it is a file they have not stored yet and it
        would take them past C{max_files} files or C{max_file_bytes} bytes
        (the transaction's C{quotas}).
    """
    quotas = txn.quotas
    _lock_user(txn, sender)
    if _has_file(txn, sender, attachment.sha256):
        return
    count, size = file_usage(txn, sender)
    if count + 1 > quotas.max_files:
        raise QuotaExceeded("files", quotas.max_files)
    if size + attachment.size > quotas.max_file_bytes:
        raise QuotaExceeded("bytes", quotas.max_file_bytes)


def check_group_quota(txn: Transaction, username: str) -> None:
    """
    Before C{username} creates or joins a group: may they belong to one
    more?

    @raise TooManyGroups: if they already belong to C{max_groups} (the
        transaction's C{quotas}).
    """
    quotas = txn.quotas
    _lock_user(txn, username)
    (count,) = txn.execute(
        "SELECT count(*) FROM group_members WHERE username = ?", (username,)
    ).fetchone()
    if count >= quotas.max_groups:
        raise TooManyGroups(username, quotas.max_groups)
