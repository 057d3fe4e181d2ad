"""
Writing replies straight to a TCP connection's socket.

Why: Twisted's C{transport.write} buffers the bytes and asks the reactor to
say when the socket can be written (an C{epoll_ctl} to watch it, a pass
through the reactor loop, the C{send}, another C{epoll_ctl} to stop
watching). A chat server writes one small reply per request, so that
machinery was a large share of the cost of a request (issue 13's profile).
When Twisted holds nothing unsent for the connection, the reply can go to
the socket at once, in order, with one C{send}.

How, and why it is safe:

 - Only for Twisted's plain TCP server transport (C{twisted.internet.tcp.Server},
   without C{startTLS}); TLS and WebSocket connections write through their
   transports as always.
 - The socket is the transport's own (L{ISystemHandle.getHandle}), and it is
   non-blocking: C{send} takes what the kernel's buffer has room for.
 - Until the first time the kernel takes less than all of a write, Twisted
   has never been given anything, so nothing of Twisted's can be unsent and
   the bytes stay in order. From that moment on (a client that reads
   slowly), the rest and every later write go through C{transport.write}:
   Twisted's buffer, its backpressure (the connection's producer is paused)
   and its error handling, exactly as without this module.
 - Any error from C{send} hands the bytes to C{transport.write} as well, so
   that Twisted meets the error on its own write and closes the connection
   the way it always does.

This is the one place where the server goes below Twisted's transport API;
C{tests/test_directwrite.py} checks the order and the hand-over on a real
loopback connection.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp


class DirectWriter:
    """
    Writes to one connection: to its socket while Twisted holds nothing for
    it, else through its transport.
    """

    __slots__ = ("_send", "_transport")

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._send: Any = None
        if type(transport) is tcp.Server and not getattr(transport, "TLS", False):
            self._send = transport.getHandle().send

    @property
    def direct(self) -> bool:
        """
        Whether writes still go to the socket directly.
        """
        return self._send is not None

    def write(self, data: bytes) -> None:
        send = self._send
        if send is not None:
            try:
                sent = send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = 0
            if sent == len(data):
                return
            # From now on Twisted holds unsent bytes for this connection:
            # everything goes through it, in order.
            self._send = None
            data = data[sent:]
        self._transport.write(data)
