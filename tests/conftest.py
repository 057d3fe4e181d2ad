"""
pytest configuration: keep the chat loggers at debug so tests can observe
every event; put temporary files on a RAM disk where there is one; compile
chat once for the processes the tests start; mark the tests that start
processes C{slow}, and run them first.
"""

from __future__ import annotations

import compileall
import os
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings

from chat import logs

# Hypothesis's per-example deadline (200 ms) is a timed assertion: on a
# loaded machine it fails tests that are right. The examples still run.
settings.register_profile("chat", deadline=None)
settings.load_profile("chat")

logs.set_level("debug")

pytest_plugins = ["tests.postgres"]

#: Where temporary files go if TMPDIR does not say: the tests commit with
#: fsync (SQLite, PostgreSQL), which a RAM disk makes free without
#: changing anything they check.
RAM_DISK = "/dev/shm"

if "TMPDIR" not in os.environ and os.path.isdir(RAM_DISK):
    if os.access(RAM_DISK, os.W_OK | os.X_OK):
        # Also for the processes the tests start (twistd, PostgreSQL).
        os.environ["TMPDIR"] = RAM_DISK
        tempfile.tempdir = None  # found again, from TMPDIR

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """
    Where Python may not write bytecode (C{PYTHONDONTWRITEBYTECODE}), each
    twistd, chat-admin and chat-client the tests start (and each
    pytest-xdist worker) would compile chat from source again: compile it
    once, into its C{__pycache__} folders (which git ignores), for them to
    read.
    """
    if sys.dont_write_bytecode and not hasattr(config, "workerinput"):
        for folder in ("chat", "twisted/plugins", "tests"):
            compileall.compile_dir(REPO / folder, quiet=1)


#: Markers of tests that start processes, and so are slow too.
_SLOW_KINDS = ("fault", "browser")
#: The parameter of the tests run on each kind of store that starts a
#: PostgreSQL server (through a fixture the test asks for by name).
_POSTGRESQL = "postgresql"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """
    Mark C{slow} the tests that start processes (a PostgreSQL server
    included, also for a test parametrized with C{"postgresql"}), before
    C{-m} selects; and run them first, so that with several workers the
    long ones do not come last (the same order on every worker, as
    pytest-xdist requires).
    """
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        callspec = getattr(item, "callspec", None)
        params = callspec.params.values() if callspec is not None else ()
        if (
            "postgres" in fixtures
            or _POSTGRESQL in params
            or any(item.get_closest_marker(kind) for kind in _SLOW_KINDS)
        ):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
