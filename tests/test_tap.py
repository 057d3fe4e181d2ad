"""
The twistd plugin's options and wiring.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from twisted.python import usage

from chat import tap
from chat.hashing import HashParameters, usable_cpus
from chat.limits import Limits, Quotas, Rate
from chat.service import ChatService
from chat.web.site import ChatSite


def parse(*argv: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(argv))
    return options


def test_defaults() -> None:
    """Without options: loopback port 8889, chat.sqlite, sane limits."""
    options = parse()
    assert options["listen"] == ["tcp:8889:interface=127.0.0.1:backlog=1024"]
    assert options["store"] == "sqlite:chat.sqlite"
    assert options["demo"] == 0
    assert options["session-idle"] == 86400.0
    assert options["session-max-age"] == 30 * 86400.0
    assert options["registration"] == "closed"
    assert options["registration-rate"] == (5, 3600.0)
    assert options["max-file-size"] == 1024 * 1024
    assert options["max-recipients"] == 100
    assert options["retention"] is None
    assert tap.max_unread_per_sender(options) == 1000
    assert tap.limits_from(options) == Limits(
        login_timeout=None,
        idle_timeout=None,
        line_timeout=30,
        max_partial_total=64 * 1024 * 1024,
        login_failures_per_user=Rate(10, 60),
        login_failures_per_address=Rate(30, 60),
        token_failures_per_address=Rate(60, 60),
        command_rate=Rate(1000, 1),
        max_connections=10_000,
        max_connections_per_address=1000,
        max_output=1024 * 1024,
        max_mailbox=10_000,
    )


def test_classroom_timeouts() -> None:
    """The login deadline and the idle timeout are off unless given; given,
    they are durations (or off again)."""
    options = parse("--login-timeout", "5m", "--idle-timeout", "off")
    limits = tap.limits_from(options)
    assert (limits.login_timeout, limits.idle_timeout) == (300, None)
    options = parse("--line-timeout", "10s", "--max-unread-per-sender", "50")
    assert tap.limits_from(options).line_timeout == 10
    assert tap.max_unread_per_sender(options) == 50
    with pytest.raises(usage.UsageError, match="--line-timeout"):
        parse("--line-timeout", "off")


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


def test_limit_options() -> None:
    """Every limit is an option, parsed into Limits."""
    options = parse(
        "--login-timeout",
        "5s",
        "--idle-timeout",
        "2m",
        "--login-failures-per-user",
        "3/1h",
        "--login-failures-per-address",
        "20/30s",
        "--token-failures-per-address",
        "7/7",
        "--command-rate",
        "off",
        "--max-connections",
        "50",
        "--max-connections-per-address",
        "5",
        "--max-output",
        "64k",
        "--max-mailbox",
        "100",
    )
    assert tap.limits_from(options) == Limits(
        login_timeout=5,
        idle_timeout=120,
        login_failures_per_user=Rate(3, 3600),
        login_failures_per_address=Rate(20, 30),
        token_failures_per_address=Rate(7, 7),
        command_rate=None,
        max_connections=50,
        max_connections_per_address=5,
        max_output=64 * 1024,
        max_mailbox=100,
    )


def test_sizes_and_rates() -> None:
    """Sizes take binary k/M suffixes; limit rates are COUNT/DURATION."""
    assert tap.size("100") == 100
    assert tap.size("64k") == 65536
    assert tap.size("1M") == tap.size("1MiB") == 1024 * 1024
    assert tap.limit_rate("10/1m") == Rate(10, 60)
    assert tap.limit_rate("0.5/1s") == Rate(0.5, 1)
    assert tap.limit_rate_or_off("OFF") is None
    for bad in ["", "0", "-1k", "lots", "2G"]:
        with pytest.raises(ValueError):
            tap.size(bad)
    for bad in ["10", "10/", "0/1m", "x/1m", "10/soon", "off"]:
        with pytest.raises(ValueError):
            tap.limit_rate(bad)


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
        ["--login-timeout", "0"],
        ["--command-rate", "fast"],
        ["--login-failures-per-user", "off"],
        ["--max-connections", "0"],
        ["--max-output", "big"],
        ["--max-mailbox", "-1"],
        ["--registration", "maybe"],
        ["--registration-rate", "5"],
        ["--registration-rate", "0/1h"],
        ["--registration-rate", "5/never"],
        ["--max-file-size", "0"],
        ["--max-file-size", "1G"],
        ["--max-recipients", "0"],
        ["--retention", "never"],
        ["--hash-memory", "7"],
        ["--hash-memory", "19M"],
        ["--hash-time-cost", "0"],
        ["--hash-parallelism", "0"],
        ["--hash-memory", "64", "--hash-parallelism", "9"],
        ["--hash-concurrency", "0"],
        ["--hash-queue-max", "0"],
    ],
)
def test_bad_options(argv: list[str]) -> None:
    """Bad option values are usage errors naming the option, not
    tracebacks, nor Twisted's "Parameter type enforcement failed"."""
    with pytest.raises(usage.UsageError) as raised:
        parse(*argv)
    assert str(raised.value).startswith(f"{argv[0]}: ")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--max-connections", "abc"],
            "--max-connections: expected a positive whole number, not 'abc'",
        ),
        (["--realm-rate", "0"], "--realm-rate: expected a positive number, not '0'"),
        (
            ["--log-level", "verbose"],
            "--log-level: unknown log level 'verbose' (debug, info, warn, error "
            "or critical)",
        ),
        (
            ["--session-idle", "soon"],
            "--session-idle: not a positive duration: 'soon' (examples: 90s 15m "
            "24h 30d)",
        ),
    ],
)
def test_bad_values_say_what_is_expected(argv: list[str], message: str) -> None:
    """A bad value's error names the option and what it takes."""
    with pytest.raises(usage.UsageError) as raised:
        parse(*argv)
    assert str(raised.value) == message


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """twistd chat --version prints chat's version, not Twisted's."""
    import chat

    with pytest.raises(SystemExit):
        parse("--version")
    assert capsys.readouterr().out == f"chat {chat.__version__}\n"


def test_help_reads_well() -> None:
    """--help shows each option's help as one paragraph (no runs of spaces)
    and defaults as they are written."""
    text = str(tap.Options())
    for line in text.splitlines():
        words = line.strip()
        if words.startswith("--"):
            words = words.partition(" ")[2].strip()
        assert "  " not in words, line
    joined = " ".join(text.split())
    assert "(repeatable). [default: off]" in joined
    assert "--realm-rate= Messages per second a linked realm may send to" in joined
    assert "this one. [default: 50]" in joined
    assert "[default: 200]" in joined


def test_readme_lists_every_option() -> None:
    """README's "Server options" describes every option of twistd chat,
    and no other."""
    readme = (Path(__file__).parent.parent / "README.rst").read_text()
    section = readme.split("\nServer options\n", 1)[1].split("\nTLS\n", 1)[0]
    documented = set(re.findall(r"^``(--[a-z-]+)", section, re.MULTILINE))
    documented |= set(re.findall(r"^``--[a-z-]+[^`]*``, ``(--[a-z-]+)", section, re.M))
    options = tap.Options()
    offered = {f"--{name}" for name in options.synonyms} - {"--help", "--version"}
    assert documented == offered


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
        "--max-mailbox",
        "7",
        "--idle-timeout",
        "1m",
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
    assert service.chat.sessions.idle_timeout == 3600
    assert service.factory.limits.idle_timeout == 60
    assert service.store.max_mailbox == 7
    assert service.chat.realm.push_window == 7
    assert service.chat.realm.max_file_size == 1000
    assert service.chat.realm.max_recipients == 3
    assert service.chat.registrar.open
    assert service.chat.registrar.limiter.burst == 2
    assert service.chat.registrar.limiter.rate == 2 / 60
    assert service.factory.frontend.registrar is service.chat.registrar
    assert service.chat.purger is not None and service.chat.purger.retention == 86400
    closed = tap.makeService(parse("--store", f"sqlite:{tmp_path / 'd.sqlite'}"))
    assert isinstance(closed, ChatService)
    assert not closed.chat.registrar.open
    assert closed.chat.purger is None
    assert (tmp_path / "c.sqlite").exists()


def test_quota_and_web_limit_options(tmp_path: Path) -> None:
    """The per-user quotas and the web limits are options with defaults a
    class never reaches, wired into the store and the web site."""
    options = parse()
    assert tap.quotas_from(options) == Quotas(
        max_files=1000, max_file_bytes=200 << 20, max_groups=100
    )
    limits = tap.limits_from(options)
    assert (limits.max_web_connections, limits.max_web_connections_per_address) == (
        2000,
        500,
    )
    options = parse(
        "--store",
        f"sqlite:{tmp_path / 'q.sqlite'}",
        "--max-files-per-user",
        "5",
        "--max-file-bytes-per-user",
        "64M",
        "--max-groups-per-user",
        "3",
        "--web",
        "tcp:0:interface=127.0.0.1",
        "--web-host",
        "Chat.Example.org",
        "--web-origin",
        "https://other.example.net",
        "--max-web-connections",
        "40",
        "--max-web-connections-per-address",
        "4",
    )
    service = tap.makeService(options)
    assert isinstance(service, ChatService)
    assert service.store.quotas == Quotas(5, 64 << 20, 3)
    site = service.chat.site
    assert isinstance(site, ChatSite)
    assert site.hosts.allows("chat.example.org")
    assert site.hosts.allows("other.example.net")
    assert not site.hosts.allows("evil.example")
    assert (site.connections.max_total, site.connections.max_per_address) == (40, 4)
    for bad in (["--web-host", "http://x/"], ["--max-file-bytes-per-user", "0"]):
        with pytest.raises(usage.UsageError):
            parse(*bad)


def test_hash_options(tmp_path: Path) -> None:
    """The argon2id parameters, threads and queue bound reach the hasher."""
    default = tap.makeService(parse("--store", f"sqlite:{tmp_path / 'a.sqlite'}"))
    assert isinstance(default, ChatService)
    assert default.hasher.parameters == HashParameters(19456, 2, 1)
    assert default.hasher.threads == usable_cpus()
    assert default.hasher.max_queued == 2000
    options = parse(
        "--store",
        f"sqlite:{tmp_path / 'b.sqlite'}",
        "--hash-memory",
        "65536",
        "--hash-time-cost",
        "3",
        "--hash-parallelism",
        "4",
        "--hash-concurrency",
        "3",
        "--hash-queue-max",
        "50",
    )
    service = tap.makeService(options)
    assert isinstance(service, ChatService)
    assert service.hasher.parameters == HashParameters(65536, 3, 4)
    assert (service.hasher.threads, service.hasher.max_queued) == (3, 50)


def test_make_service_refuses_bad_store(tmp_path: Path) -> None:
    """A store that cannot be opened ends twistd with a one-line message."""
    bad = tmp_path / "c.sqlite"
    bad.write_bytes(b"not a database at all" * 100)
    options = parse("--store", f"sqlite:{bad}")
    with pytest.raises(SystemExit, match="not a chat database"):
        tap.makeService(options)


@pytest.mark.parametrize(
    ("option", "endpoint"),
    [
        ("--listen", "tcp:notaport"),
        ("--web", "tcp:x"),
        ("--listen", "ssl:8443:privateKey=/nonexistent/key.pem"),
        ("--metrics", "nonsense:1"),
    ],
)
def test_bad_endpoints_are_usage_errors(option: str, endpoint: str) -> None:
    """A bad endpoint is refused when the options are read, naming the
    option, instead of failing later at startup."""
    with pytest.raises(usage.UsageError, match=f"^{option}: not a server endpoint"):
        tap.Options().parseOptions([option, endpoint])


def test_trusted_proxy_option(tmp_path: Path) -> None:
    """--trusted-proxy (repeatable, an address or network) reaches the
    settings, the web site and the --listen ports; none by default, and
    anything but an address or network is a usage error."""
    default = tap.makeService(parse("--store", f"sqlite:{tmp_path / 'a.sqlite'}"))
    assert isinstance(default, ChatService)
    assert not default.chat.proxies
    options = parse(
        "--store",
        f"sqlite:{tmp_path / 'p.sqlite'}",
        "--trusted-proxy",
        "10.0.0.5",
        "--trusted-proxy",
        "fd00::/64",
        "--web",
        "tcp:0:interface=127.0.0.1",
    )
    service = tap.makeService(options)
    assert isinstance(service, ChatService)
    assert service.chat.settings.trusted_proxies == ("10.0.0.5/32", "fd00::/64")
    assert service.chat.proxies.trusts("10.0.0.5")
    assert not service.chat.proxies.trusts("10.0.0.6")
    site = service.chat.site
    assert isinstance(site, ChatSite)
    assert site.proxies.trusts("fd00::1")
    with pytest.raises(usage.UsageError, match=r"^--trusted-proxy: not an IP"):
        parse("--trusted-proxy", "haproxy.example.org")
