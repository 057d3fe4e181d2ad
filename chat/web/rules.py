"""
The server's rules for names, as the web page gets them: the patterns and
limits of L{chat.model} (and the realm ids of L{chat.links}) as one JSON
object, so that the page checks what a user types with the server's own
rules, never a copy of them.

The page receives them in its settings (L{chat.web.site.WebSettings}), and
its C{js/rules.js} builds its checks from them. The patterns are Python
regular expressions written in what JavaScript reads the same way
(character classes, counted repetition, alternatives, C{\\uXXXX} and C{\\$}
escapes); C{tests/test_web_js.py} runs the page's checks against the
server's own, so a pattern that JavaScript would read differently fails
the tests.
"""

from __future__ import annotations

from chat.links import REALM_ID_PATTERN
from chat.model import (
    FILE_NAME_FORBIDDEN,
    GROUP_NAME_PATTERN,
    JOINERS,
    MAX_FILE_NAME_BYTES,
    MAX_FULL_NAME_LENGTH,
    MAX_NAME_LENGTH,
    MAX_PASSWORD_LENGTH,
    MIN_PASSWORD_LENGTH,
    UNSAFE_CATEGORIES,
    USERNAME_PATTERN,
    WINDOWS_DEVICES,
)


def page_rules() -> dict[str, object]:
    """
    The rules the page needs, as JSON values::

        username, group_name, realm_id  patterns a whole name must match
        max_name_length                 of usernames and group names
        min_password_length, max_password_length, max_full_name_length
        file_name.max_bytes             UTF-8 bytes
        file_name.forbidden             characters no file name contains
                                        (the path separators too)
        file_name.unsafe_categories     Unicode categories no name contains...
        file_name.allowed_formatting    ...except these characters
        file_name.devices               a pattern (case-insensitive) of the
                                        names before the first '.' refused
    """
    return {
        "username": USERNAME_PATTERN.pattern,
        "group_name": GROUP_NAME_PATTERN.pattern,
        "realm_id": REALM_ID_PATTERN.pattern,
        "max_name_length": MAX_NAME_LENGTH,
        "min_password_length": MIN_PASSWORD_LENGTH,
        "max_password_length": MAX_PASSWORD_LENGTH,
        "max_full_name_length": MAX_FULL_NAME_LENGTH,
        "file_name": {
            "max_bytes": MAX_FILE_NAME_BYTES,
            "forbidden": "".join(sorted(FILE_NAME_FORBIDDEN | {"/", "\\"})),
            "unsafe_categories": sorted(UNSAFE_CATEGORIES),
            "allowed_formatting": "".join(sorted(JOINERS)),
            "devices": WINDOWS_DEVICES.pattern,
        },
    }
