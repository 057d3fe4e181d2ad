"""
The messages table's helpers (L{chat.store.messages}): what fits a budget of
bytes, for rows and for messages alike (both stores page with it).
"""

from __future__ import annotations

from chat.model import Message
from chat.store.messages import message_values, within


def message(id: int, text: str, file_size: int | None = None) -> Message:
    return Message(id, "messi", "henderson", "M", "H", text, 1.0, None, None, file_size)


def row(id: int, text: str, file_size: int | None = None) -> tuple[object, ...]:
    return tuple(message(id, text, file_size)[:11])


def test_within_counts_text_and_file_bytes() -> None:
    """Rows are taken while their text and file bytes fit the budget, and
    the rest is said to be left out."""
    rows = [row(1, "aaaa"), row(2, "b", file_size=5), row(3, "cc")]
    assert within(rows, 10) == (rows[:2], True)
    assert within(rows, 12) == (rows, False)


def test_within_takes_at_least_one() -> None:
    """A first row larger than the budget is still taken (alone)."""
    rows = [row(1, "x" * 100), row(2, "y")]
    assert within(rows, 10) == (rows[:1], True)


def test_within_stops_at_the_limit() -> None:
    """At most C{limit} rows, then more is said to be left."""
    rows = [row(i, "a") for i in range(5)]
    assert within(rows, None, 3) == (rows[:3], True)
    assert within(rows, None, 5) == (rows, False)
    assert within(rows[:0], 10) == ([], False)


def test_within_treats_messages_as_rows() -> None:
    """Messages (whose fields come in the columns' order) are paged exactly
    as their rows are: the in-memory store shares the rule."""
    sizes = [(1, "hello", None), (2, "f.png", 40), (3, "bye", None)]
    messages = [message(*size) for size in sizes]
    rows = [row(*size) for size in sizes]
    for budget in (None, 1, 5, 45, 48, 100):
        taken, more = within(messages, budget)
        taken_rows, more_rows = within(rows, budget)
        assert [m.id for m in taken] == [r[0] for r in taken_rows]
        assert more == more_rows


def test_message_values_are_a_message_without_id_or_content() -> None:
    """The values inserted for one copy are those of the L{Message} read back,
    after its id and before its file's content."""
    values = message_values(
        ("messi", "Lionel Messi"),
        ("henderson", "Jordan Henderson"),
        "hi",
        2.0,
        "team",
        None,
    )
    read_back = Message(7, *values)
    assert read_back == Message(
        7, "messi", "henderson", "Lionel Messi", "Jordan Henderson", "hi", 2.0, "team"
    )
