"""
The twistd plugin's options and wiring.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.python import usage

from chat import tap
from chat.service import ChatService


def parse(*argv: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(argv))
    return options


def test_defaults() -> None:
    """Without options: loopback port 8889, chat.sqlite, sane limits."""
    options = parse()
    assert options["listen"] == ["tcp:8889:interface=127.0.0.1"]
    assert options["store"] == "sqlite:chat.sqlite"
    assert options["demo"] == 0
    assert options["max-line"] == 16 * 1024
    assert options["session-idle"] == 86400.0
    assert options["session-max-age"] == 30 * 86400.0


def test_listen_is_repeatable() -> None:
    """--listen may be given several times."""
    options = parse("--listen", "tcp:1", "--listen", "tcp:2")
    assert options["listen"] == ["tcp:1", "tcp:2"]


def test_durations() -> None:
    """Durations accept plain seconds and s/m/h/d suffixes."""
    assert tap.duration("90") == 90
    assert tap.duration("15m") == 900
    assert tap.duration("2h") == 7200
    assert tap.duration("1.5d") == 1.5 * 86400
    options = parse("--session-idle", "10m", "--session-max-age", "7d")
    assert options["session-idle"] == 600
    assert options["session-max-age"] == 7 * 86400


@pytest.mark.parametrize(
    "argv",
    [
        ["--session-idle", "soon"],
        ["--session-idle", "0"],
        ["--max-line", "-5"],
        ["--max-line", "lots"],
        ["--store", "mysql:x"],
        ["--store", "sqlite:"],
        ["--log-level", "chatty"],
    ],
)
def test_bad_options(argv: list[str]) -> None:
    """Bad option values are usage errors, not tracebacks."""
    with pytest.raises(usage.UsageError):
        parse(*argv)


def test_make_service(tmp_path: Path) -> None:
    """makeService opens the store and wires the options in."""
    options = parse(
        "--store",
        f"sqlite:{tmp_path / 'c.sqlite'}",
        "--demo",
        "--max-line",
        "1000",
        "--session-idle",
        "1h",
        "--push-window",
        "7",
    )
    service = tap.makeService(options)
    assert isinstance(service, ChatService)
    assert service.demo
    assert service.factory.max_line == 1000
    assert service.sessions.idle_timeout == 3600
    assert service.realm.push_window == 7
    assert (tmp_path / "c.sqlite").exists()


def test_make_service_refuses_bad_store(tmp_path: Path) -> None:
    """A store that cannot be opened ends twistd with a one-line message."""
    bad = tmp_path / "c.sqlite"
    bad.write_bytes(b"not a database at all" * 100)
    options = parse("--store", f"sqlite:{bad}")
    with pytest.raises(SystemExit, match="not a chat database"):
        tap.makeService(options)
