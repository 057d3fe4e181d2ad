"""
The --realm-* options of twistd chat, and how makeService wires them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.python import usage

from chat import tap
from chat.federation import Federation


def parse(*argv: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(argv))
    return options


def test_realm_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """The realm id comes from the host name; the limits have sane defaults."""
    monkeypatch.setattr(tap.socket, "gethostname", lambda: "Chat_Server.Example.ORG")
    options = parse()
    assert options["realm-id"] == "chat-server.example.org"
    settings = tap.federation_settings(options)
    assert settings.realm_id == "chat-server.example.org"
    assert settings.max_queue == 10_000
    assert (settings.rate, settings.burst) == (50.0, 200.0)
    assert (settings.retry_min, settings.retry_max) == (1.0, 60.0)
    assert settings.timeout == 30.0
    assert settings.seen_ttl == 30 * 86400.0
    assert settings.max_text == options["max-line"]
    assert settings.max_file_size == options["max-file-size"] == 1024 * 1024
    # A link's lines carry the largest file, in base64, and the longest text.
    assert settings.max_line >= 4 * 1024 * 1024 // 3 + 6 * options["max-line"]


def test_realm_options() -> None:
    """Every --realm-* option reaches the federation's settings."""
    options = parse(
        "--realm-id",
        "realm-a",
        "--realm-queue-max",
        "5",
        "--realm-rate",
        "2.5",
        "--realm-burst",
        "10",
        "--realm-retry-min",
        "0.2s",
        "--realm-retry-max",
        "5m",
        "--realm-timeout",
        "10s",
        "--realm-seen-ttl",
        "7d",
        "--max-line",
        "20000",
        "--max-file-size",
        "1K",
    )
    settings = tap.federation_settings(options)
    assert settings == tap.FederationSettings(
        realm_id="realm-a",
        max_queue=5,
        rate=2.5,
        burst=10.0,
        retry_min=0.2,
        retry_max=300.0,
        timeout=10.0,
        seen_ttl=7 * 86400.0,
        max_text=20000,
        max_file_size=1024,
    )
    assert settings.max_line == 6 * 20000 + 1368 + 16 * 1024


@pytest.mark.parametrize(
    "argv",
    [
        ["--realm-id", "Realm_A"],
        ["--realm-id", ""],
        ["--realm-queue-max", "0"],
        ["--realm-rate", "-1"],
        ["--realm-rate", "inf"],
        ["--realm-retry-min", "never"],
        ["--realm-retry-min", "2m", "--realm-retry-max", "1m"],
        ["--realm-timeout", "0"],
    ],
)
def test_bad_realm_options(argv: list[str]) -> None:
    """Bad --realm-* values are usage errors."""
    with pytest.raises(usage.UsageError):
        parse(*argv)


def test_make_service_wires_the_federation(tmp_path: Path) -> None:
    """The service's realm and factory share one Federation with those settings."""
    options = parse(
        "--store", f"sqlite:{tmp_path / 'c.sqlite'}", "--realm-id", "realm-a"
    )
    service = tap.makeService(options)
    federation = service.chat.federation  # type: ignore[attr-defined]
    assert isinstance(federation, Federation)
    assert federation.realm_id == "realm-a"
    assert service.chat.realm.federation is federation  # type: ignore[attr-defined]
    assert service.factory.federation is federation  # type: ignore[attr-defined]
    assert federation.store is service.store  # type: ignore[attr-defined]
