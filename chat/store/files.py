"""
Files sent with messages: each distinct content is stored once (by its
sha256), whoever sent it to how many, and deleted with the last message
that uses it, once no message waiting in the outbox for another realm
(C{realm_outbox}) uses it either.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from chat.model import Attachment
from chat.store.batching import Transaction, chunks, marks
from chat.store.quotas import check_file_quota


def keep_file(txn: Transaction, sender: str, attachment: Attachment) -> None:
    """
    Store C{attachment}, sent by C{sender}, within their quota.

    @raise QuotaExceeded: as L{check_file_quota}.
    """
    check_file_quota(txn, sender, attachment)
    store_file(txn, attachment)


def file_columns(attachment: Attachment | None) -> tuple[Any, ...]:
    """
    The C{file_name}, C{file_size} and C{file_sha256} of a row (a message,
    an outbox entry) that carries C{attachment}: all None for no file.
    """
    if attachment is None:
        return (None, None, None)
    return (attachment.name, attachment.size, attachment.sha256)


def store_file(txn: Transaction, attachment: Attachment) -> None:
    txn.execute(
        "INSERT INTO files (sha256, size, content) VALUES (?, ?, ?)"
        " ON CONFLICT (sha256) DO NOTHING",
        (attachment.sha256, attachment.size, attachment.content),
    )


def file_contents(txn: Transaction, hashes: Iterable[str]) -> dict[str, bytes]:
    """
    The content of each file of C{hashes}.
    """
    wanted = list(set(hashes))
    contents: dict[str, bytes] = {}
    for chunk in chunks(wanted):
        contents.update(
            txn.execute(
                "SELECT sha256, content FROM files"
                f" WHERE sha256 IN ({marks(len(chunk))})",
                chunk,
            ).fetchall()
        )
    return contents


def forget_unused_files(txn: Transaction, hashes: Iterable[str]) -> None:
    """
    Delete the files of C{hashes} that no message uses any more, stored
    or queued for another realm.
    """
    for sha256 in hashes:
        txn.execute(
            "DELETE FROM files WHERE sha256 = ? AND NOT EXISTS"
            " (SELECT 1 FROM messages WHERE file_sha256 = ?) AND NOT EXISTS"
            " (SELECT 1 FROM realm_outbox WHERE file_sha256 = ?)",
            (sha256, sha256, sha256),
        )
