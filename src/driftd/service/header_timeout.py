"""A deadline for request headers, which uvicorn does not have.

uvicorn times out an idle keep-alive connection, and the app times out a slow body (``[server]
read_timeout_seconds``), but nothing bounds the wait for a request's headers: a client that
opens a connection and sends nothing, or sends a header line now and then (the original slow
loris), holds the connection and its file descriptor for as long as it likes. Enough of them
exhaust the daemon's descriptors.

:class:`HeaderTimeout` runs on the server's tick (every 0.1 s, on the event loop) over uvicorn's
open connections. A connection is waiting for headers when it has no request in flight (none
yet, or the last one answered) and uvicorn's keep-alive timer is not running (it stops when the
next request's first bytes arrive). One that waits longer than the deadline is closed: with a
``408`` JSON answer if it had sent part of a request, silently if it never sent a byte. Both
are counted in ``driftd_records_rejected_total`` (``read_timeout``, ``idle_connection``).

The protocol attributes read here (``cycle``, ``headers``, ``timeout_keep_alive_task``,
``transport``) are uvicorn's own, the same in its httptools and h11 protocols; a protocol
without them is left alone rather than guessed at.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any

from driftd.service.http import error_body

__all__ = ["HeaderTimeout"]

_MISSING = object()


class HeaderTimeout:
    """Closes connections whose request headers take longer than ``seconds`` to arrive;
    ``reject(reason)`` counts each one."""

    def __init__(self, seconds: float, reject: Callable[[str], None]) -> None:
        self.seconds = seconds
        self.reject = reject
        self._since: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    def check(self, connections: Iterable[Any], now: float) -> None:
        """Look at every open connection once; call from the event loop."""
        for conn in list(connections):
            if not _waiting_for_headers(conn):
                self._since.pop(conn, None)
                continue
            since = self._since.setdefault(conn, now)
            if now - since >= self.seconds:
                self._since.pop(conn, None)
                self._close(conn)

    def _close(self, conn: Any) -> None:
        transport = conn.transport
        if transport.is_closing():
            return
        if conn.headers is None:  # not a byte of a request: nobody to answer
            self.reject("idle_connection")
        else:
            self.reject("read_timeout")
            message = f"the request headers did not arrive within {self.seconds:g} s"
            body = error_body("read_timeout", message)
            transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )
        transport.close()


def _waiting_for_headers(conn: Any) -> bool:
    cycle: Any = getattr(conn, "cycle", _MISSING)
    keep_alive: Any = getattr(conn, "timeout_keep_alive_task", _MISSING)
    if cycle is _MISSING or keep_alive is _MISSING or not hasattr(conn, "headers"):
        return False  # not a protocol this knows
    in_flight = cycle is not None and not cycle.response_complete
    return not in_flight and keep_alive is None
