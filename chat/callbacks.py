"""
Plain callbacks for the request path: C{done(succeeded, value)} instead of
a Deferred per request (see L{chat.store.batching}), and the two ways
between them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred

T = TypeVar("T")

#: Told how an operation ended: C{(True, result)} or C{(False, exception)}.
Done = Callable[[bool, Any], None]


def firing(d: Deferred[T]) -> Done:
    """
    A callback that fires C{d} with the outcome it is told.
    """

    def done(succeeded: bool, value: Any) -> None:
        if succeeded:
            d.callback(value)
        else:
            d.errback(value)

    return done


def as_deferred(then: Callable[..., None], *args: Any) -> Deferred[Any]:
    """
    Call C{then(*args, done)}, the callback form of an operation, and
    return its outcome as a Deferred.
    """
    d: Deferred[Any] = Deferred()
    then(*args, firing(d))
    return d
