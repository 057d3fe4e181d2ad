"""
Password hashing: the argon2id parameters, and the hasher that computes
hashes on every core this process may use, fairly, within a bound, and
never on the reactor thread.

A class that starts at once sends hundreds of C{auth} lines within seconds
(issue 14), and each costs one argon2id verify (about 28 ms of CPU with
the default parameters). So:

 - L{HashParameters}: argon2id's memory, time cost and parallelism; by
   default OWASP's recommendation (m=19 MiB, t=2, p=1). p=1 computes a hash
   on the thread that asked, without starting threads of its own.
 - L{Argon2Hasher}: one worker thread per usable CPU (argon2-cffi releases
   the GIL while it hashes), each at a lower CPU priority than the reactor
   (where they share a core, logged-in users' commands go first). Requests
   wait in a L{FairQueue}: first come, first served from one client
   address, and the addresses take turns, so one address cannot starve the
   others. Past C{max_queued} waiting requests, a request fails at once
   with L{chat.errors.ServerBusy}, saying how long the queue will take,
   instead of waiting for minutes. A request may carry an C{admit} check
   (the failure limits of its login), run again when its turn comes, just
   before it is hashed: attempts that waited behind others' failures are
   refused then, without hashing.
 - A verify that matches a hash made with other parameters also hashes the
   password again with the configured ones, in the same turn
   (L{chat.model.PasswordCheck}), so that changing the options migrates
   users as they log in.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Generic, TypeVar

import argon2
import attrs
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from chat.errors import ServerBusy
from chat.interfaces import IPasswordHasher
from chat.logs import make_logger
from chat.model import PasswordCheck

T = TypeVar("T")

#: Default of C{--hash-queue-max}: about a minute of hashing on one core
#: with the default parameters, half that on two.
DEFAULT_MAX_QUEUED = 2000

#: The hash time assumed until one has been measured, in seconds.
INITIAL_SECONDS_PER_HASH = 0.05

#: How much each measured hash moves the running estimate.
_SMOOTHING = 0.2

#: How much nicer (lower CPU priority) the worker threads are than the
#: reactor's: where they share a core, the reactor, serving the users who
#: are logged in, goes first, and hashing takes the rest.
WORKER_NICENESS = 10


class BadParameter(ValueError):
    """
    A hash parameter argon2 cannot use; C{option} names its option.
    """

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


@attrs.frozen
class HashParameters:
    """
    argon2id's cost parameters (the C{m}, C{t} and C{p} of a PHC string).

    @ivar memory_kib: memory per hash, in KiB.
    @ivar time_cost: passes over that memory.
    @ivar parallelism: lanes (threads) per hash.
    """

    memory_kib: int = 19 * 1024
    time_cost: int = 2
    parallelism: int = 1

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.parallelism <= 255:
            raise BadParameter("hash-parallelism", "the parallelism must be 1 to 255")
        if not 1 <= self.time_cost <= 1000:
            raise BadParameter("hash-time-cost", "the time cost must be 1 to 1000")
        if not 8 * self.parallelism <= self.memory_kib <= 4 * 1024 * 1024:
            raise BadParameter(
                "hash-memory",
                "the memory must be at least 8 KiB per lane of parallelism, "
                "and at most 4 GiB (4194304 KiB)",
            )

    def password_hasher(self) -> argon2.PasswordHasher:
        return argon2.PasswordHasher(
            time_cost=self.time_cost,
            memory_cost=self.memory_kib,
            parallelism=self.parallelism,
            type=argon2.Type.ID,
        )

    def __str__(self) -> str:
        return (
            f"argon2id m={self.memory_kib} KiB, t={self.time_cost}, "
            f"p={self.parallelism}"
        )


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"expected a positive whole number, not {text!r}")
    return value


_DEFAULT = HashParameters()

#: The C{usage.Options} rows of the hash parameters, shared by C{twistd
#: chat} and C{chat-admin}, with their L{PARAMETER_CONVERTERS} (a
#: L{chat.options.ChatOptions} applies them); L{parameters_from} reads them.
PARAMETER_OPTIONS: list[list[Any]] = [
    [
        "hash-memory",
        None,
        str(_DEFAULT.memory_kib),
        "argon2id memory per password hash, in KiB (19456 is 19 MiB).",
    ],
    [
        "hash-time-cost",
        None,
        str(_DEFAULT.time_cost),
        "argon2id passes over that memory per password hash.",
    ],
    [
        "hash-parallelism",
        None,
        str(_DEFAULT.parallelism),
        "argon2id lanes (threads) per password hash.",
    ],
]

PARAMETER_CONVERTERS: dict[str, Callable[[str], Any]] = {
    "hash-memory": _count,
    "hash-time-cost": _count,
    "hash-parallelism": _count,
}


def parameters_from(options: Mapping[str, Any]) -> HashParameters:
    """
    The L{HashParameters} given by parsed L{PARAMETER_OPTIONS}.

    @raise usage.UsageError: if argon2 cannot use them.
    """
    try:
        return HashParameters(
            options["hash-memory"],
            options["hash-time-cost"],
            options["hash-parallelism"],
        )
    except BadParameter as e:
        raise usage.UsageError(f"--{e.option}: {e}") from None


def usable_cpus() -> int:
    """
    How many CPUs this process may run on (its affinity, as C{taskset}
    sets it), or all of them where the system cannot say.
    """
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def verify_password(
    hasher: argon2.PasswordHasher, password_hash: str, password: str
) -> bool:
    """
    Whether C{password} matches; a malformed hash never matches.
    """
    try:
        return hasher.verify(password_hash, password)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


def check_password(
    hasher: argon2.PasswordHasher, password_hash: str, password: str
) -> PasswordCheck:
    """
    Verify C{password}; if it matches a hash made with other parameters
    than C{hasher}'s, hash it again with them. Runs on a worker thread.
    """
    if not verify_password(hasher, password_hash, password):
        return PasswordCheck(False)
    if hasher.check_needs_rehash(password_hash):
        return PasswordCheck(True, hasher.hash(password))
    return PasswordCheck(True)


def lower_thread_priority(by: int) -> None:
    """
    Make the calling thread C{by} nicer (Linux keeps a nice value per
    thread). Elsewhere, or where the system refuses, nothing changes.
    """
    if not sys.platform.startswith("linux"):
        return
    thread = threading.get_native_id()
    try:
        nice = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(19, nice + by))
    except OSError:
        pass


_worker = threading.local()


def _on_worker(f: Callable[..., T], *args: Any) -> T:
    """
    C{f(*args)}, on a worker thread made nicer the first time it runs.
    """
    if not getattr(_worker, "niced", False):
        _worker.niced = True
        lower_thread_priority(WORKER_NICENESS)
    return f(*args)


class FairQueue(Generic[T]):
    """
    A queue per key, served in turns: first in, first out within a key,
    and one item from each key in turn (round robin) across keys. Every
    operation is O(1).
    """

    def __init__(self) -> None:
        self._queues: dict[Hashable, deque[T]] = {}
        self._turns: deque[Hashable] = deque()
        self._length = 0

    def __len__(self) -> int:
        return self._length

    def push(self, key: Hashable, item: T) -> None:
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            self._turns.append(key)
        queue.append(item)
        self._length += 1

    def pop(self) -> T:
        """
        The oldest item of the key whose turn it is.

        @raise IndexError: if the queue is empty.
        """
        key = self._turns.popleft()
        queue = self._queues[key]
        item = queue.popleft()
        if queue:
            self._turns.append(key)
        else:
            del self._queues[key]
        self._length -= 1
        return item


#: Runs a function somewhere else (a worker thread): C{run(f, *args)}
#: fires with C{f(*args)}.
Runner = Callable[..., "Deferred[Any]"]
#: Raises if a request may no longer be hashed (L{Argon2Hasher.check}).
Admit = Callable[[], None]
_Job = tuple[Callable[..., Any], tuple[Any, ...], "Deferred[Any]", Admit | None]


@implementer(IPasswordHasher)
class Argon2Hasher:
    """
    argon2id with C{parameters} on C{threads} worker threads (by default
    one per usable CPU), fed from a L{FairQueue} keyed by client address.

    @ivar seconds_per_hash: a running estimate of how long one request
        keeps a worker busy, measured on C{clock}.
    """

    log = make_logger()

    def __init__(
        self,
        reactor: IReactorFromThreads,
        parameters: HashParameters | None = None,
        *,
        threads: int | None = None,
        max_queued: int = DEFAULT_MAX_QUEUED,
        clock: IReactorTime | None = None,
        runner: Runner | None = None,
    ) -> None:
        """
        @param clock: times the hashes (default: C{reactor}).
        @param runner: where the hashes run (default: this hasher's own
            thread pool); tests pass one that runs them inline or when told.
        """
        self.parameters = parameters or HashParameters()
        self._hasher = self.parameters.password_hasher()
        self.threads = threads or usable_cpus()
        self.max_queued = max_queued
        self._clock: IReactorTime = clock or reactor  # type: ignore[assignment]
        self._pool: ThreadPool | None = None
        if runner is None:
            self._pool = ThreadPool(
                minthreads=self.threads, maxthreads=self.threads, name="chat-argon2"
            )
            pool = self._pool

            def runner(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
                return deferToThreadPool(reactor, pool, _on_worker, f, *args)

        self._runner = runner
        self._queue: FairQueue[_Job] = FairQueue()
        self.running = 0
        self.seconds_per_hash = INITIAL_SECONDS_PER_HASH
        self._dispatching = False
        self._stopped = False
        self._refused = 0

    def start(self) -> None:
        if self._pool is not None:
            self._pool.start()
        self.log.info(
            "Password hashing: {parameters} on {threads} threads, at most "
            "{max_queued} waiting",
            parameters=str(self.parameters),
            threads=self.threads,
            max_queued=self.max_queued,
        )

    def stop(self) -> None:
        """
        Refuse new requests and those still waiting (L{ServerBusy}); let the
        hashes in progress finish.
        """
        self._stopped = True
        while self._queue:
            _, _, d, _ = self._queue.pop()
            d.errback(ServerBusy(1.0))
        if self._pool is not None:
            self._pool.stop()

    @property
    def waiting(self) -> int:
        """
        Requests queued and not yet started.
        """
        return len(self._queue)

    def expected_wait(self) -> float:
        """
        Seconds until the requests waiting and running now are done, at the
        recent hash time.
        """
        return (len(self._queue) + self.running) * self.seconds_per_hash / self.threads

    # IPasswordHasher

    def hash(self, password: str, key: str = "") -> Deferred[str]:
        return self._submit(key, self._hasher.hash, password)

    def check(
        self,
        password_hash: str,
        password: str,
        key: str = "",
        admit: Admit | None = None,
    ) -> Deferred[PasswordCheck]:
        return self._submit(
            key, check_password, self._hasher, password_hash, password, admit=admit
        )

    # The queue.

    def _submit(
        self, key: str, f: Callable[..., T], *args: Any, admit: Admit | None = None
    ) -> Deferred[T]:
        if self._stopped:
            return fail(ServerBusy(1.0))
        if len(self._queue) >= self.max_queued:
            return fail(self._busy())
        if self._refused:
            self.log.info(
                "Password hashing accepts requests again, after refusing {count}",
                count=self._refused,
            )
            self._refused = 0
        d: Deferred[T] = Deferred()
        self._queue.push(key, (f, args, d, admit))
        self._dispatch()
        return d

    def _busy(self) -> ServerBusy:
        if not self._refused:
            self.log.warn(
                "Password hashing is full ({count} waiting): answering 'server "
                "busy' until it has room (--hash-queue-max)",
                count=len(self._queue),
            )
        self._refused += 1
        return ServerBusy(self.expected_wait())

    def _dispatch(self) -> None:
        """
        Start waiting requests on the free workers. (Re-entrant calls, from
        a runner that finishes at once, leave it to the outer loop.)
        """
        if self._dispatching:
            return
        self._dispatching = True
        refused: list[tuple[Deferred[Any], Failure]] = []
        try:
            while self.running < self.threads and self._queue:
                f, args, d, admit = self._queue.pop()
                if admit is not None:
                    try:
                        admit()
                    except Exception:
                        refused.append((d, Failure()))
                        continue
                self.running += 1
                started = self._clock.seconds()
                self._runner(f, *args).addBoth(self._finished, d, started)
        finally:
            self._dispatching = False
        for d, failure in refused:
            d.errback(failure)

    def _finished(self, result: object, d: Deferred[Any], started: float) -> None:
        self.running -= 1
        elapsed = self._clock.seconds() - started
        self.seconds_per_hash += _SMOOTHING * (elapsed - self.seconds_per_hash)
        # This request's callbacks run before the worker takes the next one:
        # a wrong password is charged to the failure limits first, which
        # the next request's admit check then sees. (They take microseconds;
        # a hash, milliseconds.)
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)
        self._dispatch()
