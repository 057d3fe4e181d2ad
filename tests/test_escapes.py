"""
Control and formatting characters shown as escapes (chat.escapes).
"""

from __future__ import annotations

import pytest

from chat.escapes import visible


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("hello, world", "hello, world"),
        ("Grüße, 你好, 👍", "Grüße, 你好, 👍"),
        ("\r\x1b[2K[03:13] Lionel Messi", "\\x0d\\x1b[2K[03:13] Lionel Messi"),
        ("\x1b]0;owned\x07", "\\x1b]0;owned\\x07"),
        ("two\nlines", "two\\x0alines"),
        ("tab\there", "tab\\x09here"),
        ("nul\x00 del\x7f", "nul\\x00 del\\x7f"),
        ("c1 \x85 \x9b", "c1 \\x85 \\x9b"),
        ("abc\u202edcba", "abc\\u202edcba"),
        ("\u2066isolate\u2069 \u200e\u200f", "\\u2066isolate\\u2069 \\u200e\\u200f"),
        ("zero\u200bwidth \ufeff", "zero\\u200bwidth \\ufeff"),
        ("line\u2028para\u2029", "line\\u2028para\\u2029"),
        ("tag \U000e0041", "tag \\U000e0041"),
        ("lone \ud800", "lone \\ud800"),
        ("nbsp\u00a0ideographic\u3000space", "nbsp\u00a0ideographic\u3000space"),
        ("👨\u200d👩\u200d👧 and \u200c", "👨\u200d👩\u200d👧 and \u200c"),
    ],
)
def test_visible(text: str, shown: str) -> None:
    """Controls, format characters and separators become escapes; printable
    text, other spaces and the zero-width joiners stay as they are."""
    assert visible(text) == shown
    assert visible(shown) == shown  # nothing left to escape


def test_visible_keeps_what_is_asked() -> None:
    """Characters named in keep are left alone, and only those."""
    assert visible("a\tb\nc\rd", keep="\t\n") == "a\tb\nc\\x0dd"


def test_visible_output_can_always_be_encoded() -> None:
    """Whatever came in, what comes out encodes as UTF-8 (a terminal write
    never fails on a lone surrogate)."""
    assert visible("\udfff\ud83d").encode("utf-8") == b"\\udfff\\ud83d"


def test_printable_text_is_returned_as_is() -> None:
    """Ordinary text costs no copy."""
    text = "just words " * 100
    assert visible(text) is text
