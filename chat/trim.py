"""
Giving memory back to the operating system after large buffers are freed.

Why: replies held for clients that do not read, and lines in progress, can
take hundreds of megabytes in a burst (issue 15). Python frees them, but
glibc's allocator keeps the freed pages in the process (a large free raises
its threshold for returning memory), so the server's RSS stays at its peak
long after the connections are gone. C{malloc_trim(0)} hands those pages
back. It is called a moment after enough bytes were let go, at most once
per C{delay}, on the reactor thread (it takes about a millisecond).

Where the C library has no C{malloc_trim} (musl, macOS), nothing is done.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime


@functools.cache
def malloc_trim() -> Callable[[], object] | None:
    """
    The C library's C{malloc_trim(0)}, or None where it has none: looked
    up once, among the symbols the process has loaded (no search for the
    library, which runs C{ldconfig}).
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class Trimmer:
    """
    Asks the C allocator to return free memory once C{threshold} bytes were
    released since it last did, C{delay} seconds later.

    @param trim: gives the memory back (L{malloc_trim}); None does nothing.
    """

    def __init__(
        self,
        clock: IReactorTime,
        trim: Callable[[], object] | None,
        threshold: int = 8 * 1024 * 1024,
        delay: float = 1.0,
    ) -> None:
        self._clock = clock
        self._threshold = threshold
        self._delay = delay
        self._trim = trim
        self._released = 0
        self._call: IDelayedCall | None = None
        #: How many times memory was given back.
        self.trims = 0

    def released(self, count: int) -> None:
        """
        C{count} bytes of buffers were let go.
        """
        if self._trim is None:
            return
        self._released += count
        if self._released >= self._threshold and self._call is None:
            self._call = self._clock.callLater(self._delay, self._give_back)

    def _give_back(self) -> None:
        self._call = None
        self._released = 0
        self.trims += 1
        assert self._trim is not None
        self._trim()

    def stop(self) -> None:
        """
        Cancel a pending trim (the server is stopping).
        """
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
