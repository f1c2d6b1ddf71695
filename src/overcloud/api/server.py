"""How ``overcloud serve`` runs the API: uvicorn with deadlines for reading requests.

uvicorn (0.54 here) has no timeout for reading a request: ``timeout_keep_alive`` only
covers the idle time between requests, is never armed before a connection's first
request, and is cancelled by every byte received. 1,000 connections that never
finished their headers were held for as long as their clients liked (slowloris;
uvicorn's issue #157 lists ``--timeout-request-start`` as never done).

:class:`DeadlineH11Protocol` promises, per connection:

* the request head (request line and headers) is complete within ``header_timeout``
  seconds, counted from the connection or, for a later request on a kept-alive
  connection, from its first byte;
* the body is complete within ``body_timeout`` seconds of the head;
* otherwise the connection is closed (a request already handed to the app sees
  ``http.disconnect``);
* a client that leaves the answer unread for ``write_timeout`` seconds once the buffers
  are full (the kernel's and asyncio's, which then stops the app's writes) is cut with
  an abort: a plain close would wait forever to flush to it. This is what finally
  closes an event stream the hub dropped for being too far behind.

Once a whole request is in, no deadline runs: a long answer (an event stream) is never
cut. Beside it, ``limit_concurrency`` answers 503 once ``max_connections`` are open.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from overcloud.config import Settings

logger = logging.getLogger(__name__)


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with deadlines for a request's head and body."""

    header_timeout: float = 5.0
    body_timeout: float = 30.0
    write_timeout: float = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._phase = "head"  # head | body | busy (the app has the request) | idle (between requests)
        self._stalled: asyncio.TimerHandle | None = None  # runs while the client reads nothing of ours

    def _arm(self, phase: str) -> None:
        self._disarm()
        self._phase = phase
        timeout = self.header_timeout if phase == "head" else self.body_timeout
        self._deadline = self.loop.call_later(timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport is None or self.transport.is_closing():
            return
        client = "%s:%d" % self.client if self.client else "a client"
        logger.debug("closing the connection from %s: its request %s did not arrive in time", client, self._phase)
        self.transport.close()

    def _write_stalled(self) -> None:
        self._stalled = None
        # paused all along (resume_writing cancels this); closing or not, a close would wait to flush
        client = "%s:%d" % self.client if self.client else "a client"
        logger.info("cutting the connection from %s: it read nothing of its answer for %s s", client, self.write_timeout)
        sock = self.transport.get_extra_info("socket")
        if sock is not None:  # a reset, and the kernel drops what is unsent instead of trying on
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    # -- uvicorn's hooks ----------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("head")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._phase == "idle":
            self._arm("head")  # the next request's head is due from its first byte
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        cycle = self.cycle
        if cycle is None or cycle.response_complete or self._phase not in ("head", "body"):
            return  # no new request parsed yet (a finished cycle is the previous request's)
        if cycle.more_body:
            if self._phase == "head":
                self._arm("body")
        else:
            self._disarm()
            self._phase = "busy"

    def on_response_complete(self) -> None:
        # before uvicorn's own handling, which may parse a pipelined request at once
        self._disarm()
        self._phase = "idle"  # uvicorn's keep-alive timer closes an idle connection
        super().on_response_complete()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stalled is None:
            self._stalled = self.loop.call_later(self.write_timeout, self._write_stalled)

    def resume_writing(self) -> None:
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None
        super().resume_writing()

    def handle_websocket_upgrade(self, event: Any) -> None:  # pragma: no cover - no websocket routes
        self._disarm()
        self._phase = "busy"
        super().handle_websocket_upgrade(event)


def protocol_class(settings: Settings) -> type[DeadlineH11Protocol]:
    return type("DeadlineH11Protocol", (DeadlineH11Protocol,),
                {"header_timeout": settings.header_timeout, "body_timeout": settings.body_timeout,
                 "write_timeout": settings.write_timeout})


def run(app: Any, settings: Settings, *, host: str, port: int, log_level: str) -> None:
    """Serve ``app`` until SIGINT/SIGTERM, with the deadlines and connection cap above."""
    import signal

    import uvicorn

    def _exit(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again under the handler it
    # found: with the default one the process died there, before the caller's `finally` closed the
    # Tower (its unreachable routes, SSH connections, engine and databases). This one exits
    # through that `finally`, with the shell's status for a signal (143).
    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False,
                    http=protocol_class(settings), limit_concurrency=settings.max_connections)
    finally:
        signal.signal(signal.SIGTERM, previous)
