"""
What every door shares: running one connection's request lines in order,
and the limits on a connection, whatever its transport.

A L{Door} is given whole request lines (by L{chat.lines.LineConnection}
from TCP or TLS bytes, by L{chat.web.socket.ChatWebSocket} from WebSocket
frames) and hands each to its line handler (the connection's
L{chat.dispatch.Dispatcher}, or the handler of a realm link that took it
over), one at a time, writing each reply before the next line runs:

 - Pipelining: lines that arrive while a command waits (for a commit, a
   password hash) queue up; past C{max_pipeline} queued lines, reading
   pauses.
 - Backpressure: when the client stops reading and its transport's buffer
   fills, reading and running commands pause until it has read what was
   sent; if more than C{max_output} bytes (of pushed events) pile up
   meanwhile anyway, the connection is dropped. What all such clients
   hold together, and the connections of one user, is bounded too
   (C{max_output_total}, C{max_output_per_user}): past either, the
   connection holding the most is dropped.
 - The command rate: beyond it, reading pauses.
 - Deadlines (one slot in the factory's L{chat.limits.Deadlines}): a line
   in progress must keep arriving (C{line_timeout}: slowloris), and, if
   set, a login deadline and an idle timeout (off by default: a student
   thinking for an hour is not punished; TCP keepalive finds dead peers).
   The login deadline measures the client, not the server: it stops while
   the connection's C{auth} waits for the password hasher.
 - Half-close: a client that stops sending gets the replies to every line
   it sent, in order, then the close.

A subclass frames its transport's input, and says how to write one reply
or event (C{_emit}), pause and resume its input, and close.
"""

from __future__ import annotations

from collections import deque
from enum import Enum
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IDelayedCall
from zope.interface import implementer

from chat import replies
from chat.interfaces import IDoor, ILineHandler
from chat.limits import take_token
from chat.logs import make_logger
from chat.model import Message

if TYPE_CHECKING:
    from chat.lines import ChatFactory

#: A line in progress must grow by this many bytes within each
#: C{line_timeout}, or the connection is closed.
LINE_PROGRESS = 1024

#: Queued in place of a line that was too long.
TOO_LONG = b"line too long"

# Why reading is paused (bits of Door._paused_by).
PIPELINE = 1  # too many lines queued behind a slow command
RATE = 2  # the command rate
OUTPUT = 4  # the client is not reading its replies
CHECKING = 8  # a long line's session is being checked


class State(Enum):
    """
    Where a connection is in its life.
    """

    #: Connected, not logged in yet (nor a realm link that authenticated).
    NEW = "new"
    #: Logged in (a successful auth, a valid token, a realm link).
    ACTIVE = "active"
    #: Closing: nothing more is read or run.
    CLOSING = "closing"
    #: Gone.
    CLOSED = "closed"


@implementer(IDoor)
class Door:
    """
    One client connection's request lines, replies and events.

    @ivar address: the key of the per-address limits.
    @ivar peer: the client's address and port, for logs.
    """

    log = make_logger()
    factory: ChatFactory

    # Slots, out of the instance dict: a server holds thousands of idle
    # connections.
    __slots__ = (
        "_busy",
        "_close_after_reply",
        "_deadline_at",
        "_deadline_slot",
        "_draining",
        "_input_closed",
        "_last_active",
        "_last_write",
        "_login_paused",
        "_max_line",
        "_output_blocked",
        "_paused_by",
        "_peer_closed",
        "_queue",
        "_rate_at",
        "_rate_tokens",
        "_throttle",
        "_unsent",
        "address",
        "handler",
        "held_output",
        "max_pipeline",
        "peer",
        "state",
        "user",
    )

    def __init__(self, max_line: int, max_pipeline: int = 64) -> None:
        # +1 so that a line of exactly max_line characters may end in CR.
        self._max_line = max_line + 1
        self.max_pipeline = max_pipeline
        self.state = State.NEW
        self.handler: ILineHandler | None = None
        self.address = ""
        self.peer = "?"
        self._queue: deque[bytes] = deque()
        self._busy = False
        self._draining = False
        self._close_after_reply = False
        self._input_closed = False
        self._peer_closed = False
        self._paused_by = 0
        self._throttle: IDelayedCall | None = None
        self._output_blocked = False
        self._unsent = 0
        #: Bytes counted against the factory's output totals (kept by
        #: L{chat.lines.ChatFactory.hold_output}) while output is blocked.
        self.held_output = 0
        self._last_write = 0
        #: The user the connection first acted as, for the per-user limits.
        self.user: str | None = None
        self._rate_tokens = 0.0
        self._rate_at = 0.0
        self._last_active = 0.0
        self._deadline_slot = 0
        self._deadline_at: float | None = None
        # While the login clock is stopped: since when, and when the
        # connection was made.
        self._login_paused: tuple[float, float] | None = None

    # What a subclass provides.

    def _emit(self, data: bytes) -> None:
        """
        Write one reply or event (a JSON object, without a delimiter).
        """
        raise NotImplementedError

    def _pause_input(self) -> None:
        raise NotImplementedError

    def _resume_input(self) -> None:
        raise NotImplementedError

    def _lose(self, abort: bool) -> None:
        """
        Close the transport: after flushing what was written, or at once.
        """
        raise NotImplementedError

    def _partial_started(self) -> float | None:
        """
        When the line in progress last grew by L{LINE_PROGRESS} bytes, or
        None if no line is in progress.
        """
        return None

    # Lifecycle.

    def opened(self, handler: ILineHandler, now: float) -> None:
        """
        The connection was admitted: its lines go to C{handler}.
        """
        self.handler = handler
        self._last_active = self._rate_at = now
        rate = self.factory.limits.command_rate
        if rate is not None:
            self._rate_tokens = rate.count
        self._schedule()

    def closed(self) -> None:
        """
        The transport is gone.
        """
        self.state = State.CLOSED
        self._input_closed = True
        self._queue.clear()
        if self._throttle is not None and self._throttle.active():
            self._throttle.cancel()
        self._throttle = None
        handler, self.handler = self.handler, None
        if handler is not None:
            handler.connection_lost()
        factory = self.factory
        if self._deadline_at is not None:
            factory.deadlines.remove(self, self._deadline_slot)
            self._deadline_at = None
        factory.release_output(self)
        factory.release(self)

    def logged_in(self, username: str | None = None) -> None:
        if self.user is None:
            self.user = username
        if self.state is State.NEW:
            self.state = State.ACTIVE
            factory = self.factory
            factory.logged_in(self)
            self._max_line = max(self._max_line, factory.max_line + 1)
            self._schedule()

    def set_max_line(self, length: int) -> None:
        self._max_line = length

    def pause_login_clock(self) -> None:
        if self.state is not State.NEW or self._login_paused is not None:
            return
        factory = self.factory
        self._login_paused = (factory.clock.seconds(), factory.stop_login_clock(self))
        self._schedule()

    def resume_login_clock(self) -> None:
        paused, self._login_paused = self._login_paused, None
        if paused is None or self.state is not State.NEW:
            return
        factory = self.factory
        since, connected_at = paused
        waited = factory.clock.seconds() - since
        factory.start_login_clock(self, connected_at + waited)
        self._schedule()

    def take_over(self, handler: ILineHandler) -> None:
        self.handler = handler

    def close(self) -> None:
        self._close_after_reply = True

    def _close(self, abort: bool = False) -> None:
        """
        Stop reading and running commands, and close the connection: after
        flushing what was written, or at once if the client is not reading
        (or C{abort}).
        """
        if self.state in (State.CLOSING, State.CLOSED):
            return
        self.state = State.CLOSING
        self._input_closed = True
        self._queue.clear()
        self._lose(abort or self._output_blocked)

    def abort(self) -> None:
        """
        Close the connection at once, dropping what it has not sent.
        """
        self._close(abort=True)

    def close_with_error(self, message: str, code: str) -> None:
        """
        Send one error reply, and close.
        """
        self.log.info(
            "Closing connection from {peer}: {why}", peer=self.peer, why=message
        )
        self._write(replies.dumps(replies.error(message, code)))
        self._close()

    # Deadlines.

    def _next_deadline(self) -> float | None:
        limits = self.factory.limits
        found = None
        started = self._partial_started()
        if started is not None:
            found = started + limits.line_timeout
        if self.state is State.NEW:
            if limits.login_timeout is not None and self._login_paused is None:
                login = self.factory.connected_at(self) + limits.login_timeout
                found = login if found is None else min(found, login)
        elif (
            limits.idle_timeout is not None
            and self.handler is not None
            and not self.handler.listening
        ):
            idle = self._last_active + limits.idle_timeout
            found = idle if found is None else min(found, idle)
        return found

    def _schedule(self) -> None:
        when = self._next_deadline()
        if when == self._deadline_at:
            return
        deadlines = self.factory.deadlines
        if self._deadline_at is not None:
            deadlines.remove(self, self._deadline_slot)
        self._deadline_at = when
        if when is not None:
            self._deadline_slot = deadlines.add(self, when)

    def deadline_passed(self, now: float) -> None:
        """
        Called by the factory's L{Deadlines} when this connection's next
        deadline passed.
        """
        self._deadline_at = None
        if self.state not in (State.NEW, State.ACTIVE):
            return
        limits = self.factory.limits
        started = self._partial_started()
        if started is not None and now >= started + limits.line_timeout:
            self.close_with_error("line timeout", "line_timeout")
            return
        if (
            self.state is State.NEW
            and limits.login_timeout is not None
            and self._login_paused is None
            and now >= self.factory.connected_at(self) + limits.login_timeout
        ):
            self.close_with_error("login timeout", "login_timeout")
            return
        if (
            self.state is State.ACTIVE
            and limits.idle_timeout is not None
            and self.handler is not None
            and not self.handler.listening
            and not self._busy
            and now >= self._last_active + limits.idle_timeout
        ):
            self.close_with_error("idle timeout", "idle_timeout")
            return
        self._schedule()

    # Reading: paused while any reason holds.

    def _pause_reading(self, reason: int) -> None:
        if not self._paused_by and not self._input_closed:
            self._pause_input()
        self._paused_by |= reason

    def _resume_reading(self, reason: int) -> None:
        if not self._paused_by & reason:
            return
        self._paused_by &= ~reason
        if self._paused_by or self._input_closed:
            return
        self._resume_input()

    # IPushProducer: the transport calls these when its send buffer fills up
    # (the client is not reading) and when it has been flushed again.

    def pauseProducing(self) -> None:
        self._output_blocked = True
        self._unsent = 0
        self._pause_reading(OUTPUT)
        if self.state in (State.NEW, State.ACTIVE):
            # What the client has not taken: about the write that filled
            # the transport's buffer (a reply may be megabytes).
            self.factory.hold_output(self, self._last_write)

    def resumeProducing(self) -> None:
        self._output_blocked = False
        self._unsent = 0
        self.factory.release_output(self)
        self._resume_reading(OUTPUT)
        self._drain()

    def stopProducing(self) -> None:
        self._input_closed = True
        self._queue.clear()

    # Lines.

    def line_received(self, line: bytes) -> None:
        """
        A whole request line (without its line ending).
        """
        self._queue.append(line)
        self._drain()
        if len(self._queue) >= self.max_pipeline:
            self._pause_reading(PIPELINE)

    def too_long(self) -> None:
        """
        The line in progress is over the limit: answer after the lines
        before it, and close; nothing after it runs.
        """
        self._input_closed = True
        self._queue.append(TOO_LONG)
        self._drain()

    def input_ended(self) -> None:
        """
        The client stopped sending: answer what it sent, then close.
        """
        self._peer_closed = True
        self._input_closed = True
        if not self._busy and not self._queue:
            self._close()
        else:
            self._drain()

    def run_now(self, line: bytes) -> None:
        """
        Run one line at once: nothing is queued or running (the usual case,
        without the queue).
        """
        factory = self.factory
        now = factory.clock.seconds()
        rate = factory.limits.command_rate
        if rate is not None:
            self._rate_tokens, wait = take_token(
                self._rate_tokens, self._rate_at, now, rate
            )
            self._rate_at = now
            if wait:
                self._queue.append(line)
                self._throttled(wait)
                return
        self._last_active = now
        if self.state is State.NEW:
            factory.active(self)
        self._busy = True
        handler = self.handler
        assert handler is not None
        reply = handler.dispatch(line, now)
        if reply is not None:
            self._busy = False
            self._write(reply)
            if self._close_after_reply:
                self._close()
        elif not self._busy and (self._queue or self._peer_closed):
            self._drain()  # answered already (a store that answers at once)

    def _drain(self) -> None:
        """
        Run queued lines, one at a time, until one has to wait.
        """
        if self._draining:
            return
        self._draining = True
        try:
            queue = self._queue
            while (
                queue
                and not self._busy
                and self._throttle is None
                and not self._output_blocked
                and self.state in (State.NEW, State.ACTIVE)
            ):
                line = queue[0]
                if line is TOO_LONG:
                    self.close_with_error("line too long", "line_too_long")
                    return
                factory = self.factory
                now = factory.clock.seconds()
                rate = factory.limits.command_rate
                if rate is not None:
                    self._rate_tokens, wait = take_token(
                        self._rate_tokens, self._rate_at, now, rate
                    )
                    self._rate_at = now
                    if wait:
                        self._throttled(wait)
                        break
                queue.popleft()
                self._last_active = now
                if self.state is State.NEW:
                    factory.active(self)
                self._busy = True
                handler = self.handler
                assert handler is not None
                reply = handler.dispatch(line, now)
                if reply is not None:
                    self._busy = False
                    self._write(reply)
                    if self._close_after_reply:
                        self._close()
                        return
            if (
                self._peer_closed
                and not queue
                and not self._busy
                and self.state in (State.NEW, State.ACTIVE)
            ):
                self._close()
        finally:
            self._draining = False
        if len(self._queue) < self.max_pipeline // 2:
            self._resume_reading(PIPELINE)

    def _throttled(self, wait: float) -> None:
        """
        The command rate says to wait: pause reading until the connection
        may run its next command.
        """
        self._pause_reading(RATE)
        self._throttle = self.factory.clock.callLater(wait, self._unthrottle)

    def _unthrottle(self) -> None:
        self._throttle = None
        self._resume_reading(RATE)
        self._drain()

    # IDoor: the handler's replies.

    def answer(self, reply: bytes) -> None:
        if not self._busy:
            return  # the connection closed meanwhile
        self._busy = False
        self._write(reply)
        if self._close_after_reply:
            self._close()
            return
        if self._queue or self._peer_closed:
            self._drain()

    def _write(self, data: bytes) -> None:
        if self.state not in (State.NEW, State.ACTIVE):
            return
        if self._output_blocked:
            # The transport's buffer is full and the client is not reading:
            # count what piles up behind it (events, and the reply of a
            # command that was running when it filled up).
            self._unsent += len(data)
            if self._unsent > self.factory.limits.max_output:
                self.log.info(
                    "Dropping connection from {peer}: over {limit} bytes unsent",
                    peer=self.peer,
                    limit=self.factory.limits.max_output,
                )
                self._close(abort=True)
                return
            self._emit(data)
            self.factory.hold_output(self, len(data))
            return
        self._last_write = len(data)
        self._emit(data)

    # IChatClient: events for a subscribed connection.

    def message_received(self, message: Message) -> None:
        self._write(replies.message_event(message))

    def presence_changed(self, username: str, full_name: str, online: bool) -> None:
        self._write(replies.presence_event(username, full_name, online))

    def unsubscribed(self, reason: str) -> None:
        self._write(replies.unsubscribed_event(reason))
