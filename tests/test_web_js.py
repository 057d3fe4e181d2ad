"""
The web client's JavaScript outside a browser, on Node.js: the unit tests
of its modules (C{tests/js/*.test.js}, on Node's own test runner), and its
checks of names held against the server's own, on thousands of names.

Without Node.js these tests are skipped (with CI=true they fail; C{.ci/run}
installs Debian's C{nodejs}).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from chat import commands
from chat.errors import InvalidFileName
from chat.links import REALM_ID_PATTERN
from chat.model import (
    GROUP_NAME_PATTERN,
    MAX_FILE_NAME_BYTES,
    USERNAME_PATTERN,
    validate_file_name,
)
from chat.web.rules import page_rules

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
JS_TESTS = ROOT / "tests" / "js"

#: Longer than any run of these tests takes on a loaded machine.
NODE_TIMEOUT = 300


def require_node() -> str:
    """
    The path of C{node}; skips the calling test without it (under
    CI=true, fails instead).
    """
    node = shutil.which("node")
    if node is not None:
        return node
    reason = "node (Node.js 18 or later) is not installed: apt-get install nodejs"
    if os.environ.get("CI") == "true":
        pytest.fail(f"the JavaScript tests cannot run, and CI=true: {reason}")
    pytest.skip(reason)


def run_node(arguments: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_node(), *arguments],
        cwd=ROOT,
        input=stdin,
        env={**os.environ, "CHAT_WEB_RULES": json.dumps(page_rules())},
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT,
    )


def test_javascript_unit_tests() -> None:
    """The web client's modules pass their unit tests on Node's test runner."""
    files = sorted(str(path.relative_to(ROOT)) for path in JS_TESTS.glob("*.test.js"))
    assert {
        "tests/js/format.test.js",
        "tests/js/screen.test.js",
        "tests/js/sender.test.js",
        "tests/js/state.test.js",
    } <= set(files)
    result = run_node(["--test", *files])
    if result.returncode != 0:
        pytest.fail(
            f"node --test failed (exit {result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}",
            pytrace=False,
        )


def test_missing_node_skips_or_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without node the JavaScript tests skip with the reason; with CI=true
    they fail instead."""
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="nodejs"):
        require_node()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_node()


# The page's checks against the server's.

#: Characters that make names interesting: the name alphabet, what file
#: systems and the wire refuse, every kind of blank, controls, invisible
#: formatting (and the joiners that stay), look-alikes of separators,
#: letters whose case is special, lone surrogates and astral characters.
_ALPHABET = (
    list("abcxyz019_.-.#@ABZ/\\:*?\"<>|'()[]{}$%&+,;=~`!^")
    + [chr(c) for c in range(0x00, 0x20)]
    + ["\x7f", "\x85", "\xa0", "\u1680", "\u2000", "\u200a", "\u2028", "\u2029"]
    + ["\u202f", "\u205f", "\u3000", "\ufeff", "\u180e", "\u00ad"]
    + ["\u200b", "\u200c", "\u200d", "\u200e", "\u202e", "\u2066", "\u061c"]
    + ["\u2044", "\u2215", "\u2216", "\u2236", "\uff0f", "\uff1a", "\uff3c"]
    + ["\u0130", "\u0131", "\u017f", "\u212a", "\u00df", "\u00e9", "\u00b9", "\u00b2"]
    + ["\u0645", "\u65e5", "\ud800", "\udfff", "\U0001f600", "\U0001f468"]
)

#: Pieces that the rules treat as wholes.
_PIECES = [
    "con",
    "CON",
    "nul",
    "com1",
    "COM\u00b9",
    "lpt3",
    "conin$",
    "CONOUT$",
    "clock$",
    "aux",
    "prn",
    ".txt",
    ".pdf",
    "..",
    "...",
    "messi",
    "henderson",
    "team",
    "@realm-b",
    "@-realm",
    "@a.b.c",
    "#",
    " ",
    "\t",
    "\r\n",
    "\u200d",
]

_HANDPICKED = [
    "",
    "messi",
    "Messi ",
    "#Team",
    "budi@realm-b",
    "two words",
    "a" * 32,
    "a" * 33,
    "x@" + "r" * 63,
    "x@" + "r" * 64,
    "my report.pdf",
    "../../.bashrc",
    "C:\\Users\\me\\notes.txt",
    "a\tb\u0007.txt",
    "CON.txt",
    "con .txt",
    "nul..txt",
    "com\u00b9",
    "invoice\u202efdp.exe",
    "notes.",
    "_config.txt",
    "a" * 300,
    "a" * 400 + ".pdf",
    "\U0001f600" * 100 + ".txt",
    "\u20ac" * 200,
    "a" * 250 + ".b.pdf",
    "\u0645\u06cc\u200c\u062e\u0648\u0627\u0645.txt",
]


def corpus(count: int, seed: int = 18) -> list[str]:
    """
    C{count} names made at random (the same ones each run) from
    L{_ALPHABET} and L{_PIECES}, some of them long, after L{_HANDPICKED}.
    """
    chosen = random.Random(seed)
    names = list(_HANDPICKED)
    while len(names) < count:
        length = chosen.choice([1, 2, 3, 5, 8, 13, 30, 90, 300])
        parts = []
        for _ in range(length):
            if chosen.random() < 0.15:
                parts.append(chosen.choice(_PIECES))
            else:
                parts.append(chosen.choice(_ALPHABET))
        names.append("".join(parts))
    return names


def page_verdicts(names: list[str]) -> list[dict[str, Any]]:
    """
    What the page's C{rules.js} says about each of C{names}, built from
    the rules the server serves (C{tests/js/judge.js}).
    """
    stdin = json.dumps({"rules": page_rules(), "names": names})
    result = run_node(["tests/js/judge.js"], stdin)
    assert result.returncode == 0, result.stderr
    verdicts: list[dict[str, Any]] = json.loads(result.stdout)
    assert len(verdicts) == len(names)
    return verdicts


@pytest.fixture(scope="module")
def judged() -> list[tuple[str, dict[str, Any]]]:
    names = corpus(4000)
    return list(zip(names, page_verdicts(names), strict=True))


def server_accepts_recipient(key: str) -> bool:
    """
    Whether C{key} names a recipient by the server's patterns: C{#group},
    C{user}, or C{user@realm}.
    """
    if key.startswith("#"):
        return GROUP_NAME_PATTERN.fullmatch(key[1:]) is not None
    user, at, realm = key.partition("@")
    if USERNAME_PATTERN.fullmatch(user) is None:
        return False
    return not at or REALM_ID_PATTERN.fullmatch(realm) is not None


def test_page_usernames_are_the_servers(
    judged: list[tuple[str, dict[str, Any]]],
) -> None:
    """The page takes exactly the usernames the server's pattern takes."""
    wrong = [
        name
        for name, verdict in judged
        if verdict["username"] != (USERNAME_PATTERN.fullmatch(name) is not None)
    ]
    assert wrong == []
    assert sum(verdict["username"] for _, verdict in judged) > 50


def test_page_recipients_are_the_servers(
    judged: list[tuple[str, dict[str, Any]]],
) -> None:
    """What the page takes for a user, #group or user@realm is exactly what
    the server's patterns take."""
    wrong = []
    for name, verdict in judged:
        normalized = verdict["normalized"]
        expected = normalized if server_accepts_recipient(normalized) else None
        if verdict["key"] != expected:
            wrong.append((name, verdict))
    assert wrong == []
    keys = [verdict["key"] for _, verdict in judged if verdict["key"] is not None]
    assert any(key.startswith("#") for key in keys)
    assert any("@" in key for key in keys)


def test_page_file_names_are_accepted(
    judged: list[tuple[str, dict[str, Any]]],
) -> None:
    """Whatever a file is called, the page sends it under a name the server
    accepts, as one word of the request, and a name the server accepts
    already (one word, not starting with '_') unchanged."""
    refused = []
    changed = []
    for name, verdict in judged:
        sent = verdict["file"]
        try:
            validate_file_name(sent)
            command = commands.parse(f"sendfile t bob {sent} aGk=".encode())
        except (InvalidFileName, commands.BadCommand, UnicodeEncodeError) as error:
            refused.append((name, sent, error))
            continue
        if not isinstance(command, commands.SendFile) or command.file_name != sent:
            refused.append((name, sent, command))
        if acceptable_as_is(name) and sent != name:
            changed.append((name, sent))
    assert refused == []
    assert changed == []
    assert sum(acceptable_as_is(name) for name, _ in judged) > 100


def acceptable_as_is(name: str) -> bool:
    try:
        validate_file_name(name)
    except InvalidFileName:
        return False
    return name.split() == [name] and not name.startswith("_")


def test_page_file_names_fill_the_limit(
    judged: list[tuple[str, dict[str, Any]]],
) -> None:
    """A long name is shortened to fit the server's limit, not far below."""
    lengths = [
        len(verdict["file"].encode("utf-8"))
        for name, verdict in judged
        if len(name.encode("utf-8", "surrogatepass")) > MAX_FILE_NAME_BYTES
    ]
    assert lengths
    assert max(lengths) <= MAX_FILE_NAME_BYTES
    assert max(lengths) >= MAX_FILE_NAME_BYTES - 3
