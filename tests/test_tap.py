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
    assert options["session-idle"] == 86400.0
    assert options["session-max-age"] == 30 * 86400.0
    assert options["registration"] == "closed"
    assert options["registration-rate"] == (5, 3600.0)
    assert options["max-file-size"] == 1024 * 1024
    assert options["max-recipients"] == 100
    assert options["retention"] is None


def test_default_max_line_carries_max_file_size() -> None:
    """The default max-line fits a max-file-size file in b'...' base64."""
    for argv, file_size in [((), 1024 * 1024), (("--max-file-size", "5M"), 5 << 20)]:
        options = parse(*argv)
        encoded = len("b''") + 4 * -(-file_size // 3)
        assert options["max-line"] == encoded + 16 * 1024


def test_max_line_too_small_for_files() -> None:
    """A max-line that cannot carry max-file-size is refused at startup."""
    with pytest.raises(usage.UsageError, match="cannot carry a file"):
        parse("--max-line", "16384")
    options = parse("--max-line", "20000", "--max-file-size", "1000")
    assert options["max-line"] == 20000


def test_sizes_rates_and_retention() -> None:
    """Sizes take K and M, rates COUNT/DURATION, retention a duration."""
    assert tap.size("512K") == 512 * 1024
    assert tap.size("2m") == 2 << 20
    assert tap.size("100") == 100
    options = parse(
        "--registration",
        "open",
        "--registration-rate",
        "10/15m",
        "--retention",
        "30d",
        "--max-file-size",
        "64K",
        "--max-recipients",
        "7",
    )
    assert options["registration"] == "open"
    assert options["registration-rate"] == (10, 900.0)
    assert options["retention"] == 30 * 86400
    assert options["max-file-size"] == 64 * 1024
    assert options["max-recipients"] == 7
    assert parse("--retention", "forever")["retention"] is None


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
        ["--registration", "maybe"],
        ["--registration-rate", "5"],
        ["--registration-rate", "0/1h"],
        ["--registration-rate", "5/never"],
        ["--max-file-size", "0"],
        ["--max-file-size", "1G"],
        ["--max-recipients", "0"],
        ["--retention", "never"],
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
        "20000",
        "--max-file-size",
        "1000",
        "--session-idle",
        "1h",
        "--push-window",
        "7",
        "--registration",
        "open",
        "--registration-rate",
        "2/1m",
        "--max-recipients",
        "3",
        "--retention",
        "1d",
    )
    service = tap.makeService(options)
    assert isinstance(service, ChatService)
    assert service.demo
    assert service.factory.max_line == 20000
    assert service.sessions.idle_timeout == 3600
    assert service.realm.push_window == 7
    assert service.realm.max_file_size == 1000
    assert service.realm.max_recipients == 3
    assert service.registrar.open
    assert service.registrar.limiter.burst == 2
    assert service.registrar.limiter.rate == 2 / 60
    assert service.factory.registrar is service.registrar
    assert service.purger is not None and service.purger.retention == 86400
    closed = tap.makeService(parse("--store", f"sqlite:{tmp_path / 'd.sqlite'}"))
    assert isinstance(closed, ChatService)
    assert not closed.registrar.open
    assert closed.purger is None
    assert (tmp_path / "c.sqlite").exists()


def test_make_service_refuses_bad_store(tmp_path: Path) -> None:
    """A store that cannot be opened ends twistd with a one-line message."""
    bad = tmp_path / "c.sqlite"
    bad.write_bytes(b"not a database at all" * 100)
    options = parse("--store", f"sqlite:{bad}")
    with pytest.raises(SystemExit, match="not a chat database"):
        tap.makeService(options)
