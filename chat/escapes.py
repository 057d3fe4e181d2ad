"""
Text made safe to show on a terminal or write to a log: control and
invisible formatting characters become visible escapes.

Text from other people (messages, names, file names, anything a client
sent) may carry characters that a terminal obeys rather than shows: C{ESC}
sequences that move the cursor, erase a line or set the window title,
C{CR} that returns to the start of the line, bidirectional overrides
(U+202E) that reverse what follows. Printed raw, a message can forge a
line that looks like another user's, or hide what it says; written raw to
a log, it can forge log lines. L{visible} shows each such character as a
Python-style escape instead (C{\\x1b}, C{\\u202e}), so the text still says
what it said, and nothing more.

No Twisted here: the terminal client and the server's log both use it.
"""

from __future__ import annotations

import unicodedata

#: Unicode categories shown escaped: control characters (C0, DEL, C1),
#: format characters (bidi controls, zero-width spaces, BOM, ...), lone
#: surrogates (not text at all; they cannot even be encoded), and the
#: line and paragraph separators.
ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})

#: Format characters that real text needs and that move nothing: zero
#: width non-joiner and joiner (Persian, Indic scripts, emoji sequences).
JOINERS = frozenset({"\u200c", "\u200d"})


def escape(char: str) -> str:
    """
    The visible escape of one character: C{\\xNN}, C{\\uNNNN} or
    C{\\UNNNNNNNN}, as Python writes them.
    """
    point = ord(char)
    if point <= 0xFF:
        return f"\\x{point:02x}"
    if point <= 0xFFFF:
        return f"\\u{point:04x}"
    return f"\\U{point:08x}"


def visible(text: str, keep: str = "") -> str:
    """
    C{text} with every control, format and separator character escaped,
    except those in C{keep} (say C{"\\t"}, or C{"\\n"} for text already
    split into lines by its writer) and the zero-width joiners.

    Cheap for ordinary text: C{str.isprintable} is true for it, and it is
    returned as is.
    """
    if text.isprintable():
        return text
    return "".join(
        escape(char)
        if char not in keep
        and char not in JOINERS
        and unicodedata.category(char) in ESCAPED_CATEGORIES
        else char
        for char in text
    )
