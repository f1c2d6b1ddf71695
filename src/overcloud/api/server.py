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
  ``http.disconnect``).

Once a whole request is in, no deadline runs: a long answer (an event stream) is never
cut. Beside it, ``limit_concurrency`` answers 503 once ``max_connections`` are open.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from overcloud.config import Settings

logger = logging.getLogger(__name__)


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with deadlines for a request's head and body."""

    header_timeout: float = 5.0
    body_timeout: float = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._phase = "head"  # head | body | busy (the app has the request) | idle (between requests)

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

    # -- uvicorn's hooks ----------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("head")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
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

    def handle_websocket_upgrade(self, event: Any) -> None:  # pragma: no cover - no websocket routes
        self._disarm()
        self._phase = "busy"
        super().handle_websocket_upgrade(event)


def protocol_class(settings: Settings) -> type[DeadlineH11Protocol]:
    return type("DeadlineH11Protocol", (DeadlineH11Protocol,),
                {"header_timeout": settings.header_timeout, "body_timeout": settings.body_timeout})


def run(app: Any, settings: Settings, *, host: str, port: int, log_level: str) -> None:
    """Serve ``app`` until SIGINT/SIGTERM, with the request deadlines and connection cap above."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False,
                http=protocol_class(settings), limit_concurrency=settings.max_connections)
