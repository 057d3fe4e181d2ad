"""
pytest configuration: keep the chat loggers at debug so tests can observe
every event; put temporary files on a RAM disk where there is one; compile
chat once for the processes the tests start; mark the tests that start
processes C{slow}, and run them first.
"""

from __future__ import annotations

import compileall
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from chat import logs

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
    twistd, chat-admin and chat-client the tests start would compile chat
    from source again: compile it once, into a cache of this run that they
    (and pytest-xdist's workers) read through C{PYTHONPYCACHEPREFIX}.
    """
    if not sys.dont_write_bytecode or hasattr(config, "workerinput"):
        return
    if "PYTHONPYCACHEPREFIX" in os.environ:
        return
    cache = tempfile.mkdtemp(prefix="chat-tests-pycache-")
    config.stash[_PYCACHE] = cache
    os.environ["PYTHONPYCACHEPREFIX"] = cache
    sys.pycache_prefix = cache
    for folder in ("chat", "twisted/plugins", "tests"):
        compileall.compile_dir(REPO / folder, quiet=1)


def pytest_unconfigure(config: pytest.Config) -> None:
    cache = config.stash.get(_PYCACHE, None)
    if cache is not None:
        shutil.rmtree(cache, ignore_errors=True)


_PYCACHE = pytest.StashKey[str]()

#: Markers of tests that start processes, and so are slow too.
_SLOW_KINDS = ("fault", "browser")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """
    Mark C{slow} the tests that start processes (a PostgreSQL server
    included), before C{-m} selects; and run them first, so that with
    several workers the long ones do not come last (the same order on
    every worker, as pytest-xdist requires).
    """
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "postgres" in fixtures or any(
            item.get_closest_marker(kind) for kind in _SLOW_KINDS
        ):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
