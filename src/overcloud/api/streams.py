"""Server-sent event streams: one watcher reads new events once and fans them out.

What holds:

* **One reader.** While any stream is open, one asyncio task reads the events table every
  :data:`TICK` seconds (one query for every OverCloud together), renders each new event
  once and puts it on the queues of that OverCloud's streams. While no stream is open
  nothing reads. (Before, every stream polled the database itself every 0.2 s: 200
  streams kept the thread pool busy and ``/healthz`` took over a second.)
* **Bounded queues.** A stream more than :data:`QUEUE_EVENTS` events behind (a client
  reading slower than events come, or not at all) is closed, never buffered without
  limit; its client resumes with ``Last-Event-ID``.
* **Caps.** At most ``max_total`` streams at once and ``max_per_token`` per bearer
  token; one more is :class:`TooManyStreams` (the API answers 429). Tokens are counted
  under a SHA-256 prefix; the token itself is neither kept nor logged.
* **Nothing lost between backlog and live events.** A stream is registered before it
  reads its own backlog from the database, and drops ids it has already sent; the
  watcher's cursor is set before any stream reads its backlog.

Everything here but the database reads runs on the server's event loop, so the counts
and queues need no lock.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from overcloud import states
from overcloud.api.views import iso
from overcloud.repository import NotFound, Repository
from overcloud.repository.models import EventRow

logger = logging.getLogger(__name__)

TICK = 0.2  # seconds between the watcher's reads
BATCH = 1000  # events per read; a full batch is followed by the next read at once
QUEUE_EVENTS = 1000  # a stream this far behind is closed
READERS = 2  # threads reading the database for streams at once (see EventHub.run)
KEEPALIVE = 15.0  # seconds of quiet before a stream sends a comment line
BACKLOG_PAGE = 500
RESTING = frozenset({states.READY, states.FAILED, states.DELETED, states.DEGRADED})

END = "end"  # the OverCloud rests: a stream without follow ends
DROPPED = "dropped"  # the stream fell too far behind


class TooManyStreams(Exception):
    """One more stream would pass a cap; the message says which and what to do."""


def token_key(token: str) -> str:
    """What a token's streams are counted under: a hash prefix, never the token."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def render(ev: EventRow) -> str:
    data = {**ev.data, "at": iso(ev.at), "overcloud_ID": ev.overcloud_id}
    return f"id: {ev.id}\nevent: {ev.kind}\ndata: {json.dumps(data)}\n\n"


@dataclasses.dataclass(eq=False)
class Subscription:
    """One open stream: what it follows, whose slot it holds, what is queued for it."""

    overcloud_id: str
    key: str  # token_key of the caller's token
    follow: bool
    queue: asyncio.Queue = dataclasses.field(default_factory=asyncio.Queue)  # (id, text) | END | DROPPED
    closed: bool = False  # no more events are put on its queue
    dropped: bool = False  # closed for falling too far behind
    released: bool = False  # its slot is free again
    scope: anyio.CancelScope | None = None  # set while its response is being sent


class EventHub:
    def __init__(self, repo: Repository, is_running: Callable[[str], bool], *, max_total: int, max_per_token: int):
        self.repo, self.is_running = repo, is_running
        self.max_total, self.max_per_token = max_total, max_per_token
        self._subs: dict[str, set[Subscription]] = {}  # OverCloud id -> its streams still fed
        self._per_key: collections.Counter[str] = collections.Counter()
        self.open = 0  # streams holding a slot
        self._cursor = 0  # the last event id the watcher has read
        self._task: asyncio.Task | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        self._ready: asyncio.Event | None = None
        self.reads = 0  # database reads by the watcher (for tests and the curious)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a database read for streams in a thread, at most READERS at once. 200 streams
        opening together would otherwise put 200 threads of SQLAlchemy work against the event
        loop for the GIL, and /healthz waited 400 ms behind them."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(READERS)
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    # -- slots ------------------------------------------------------------
    async def subscribe(self, overcloud_id: str, token: str, follow: bool) -> Subscription:
        """Take a slot (or raise :class:`TooManyStreams`) and make sure the watcher runs."""
        key = token_key(token)
        if self.open >= self.max_total:
            raise TooManyStreams(
                f"{self.open} event streams are open on this Tower, the most it serves at once "
                "(OVERCLOUD_MAX_STREAMS); close one, or retry later")
        if self._per_key[key] >= self.max_per_token:
            raise TooManyStreams(
                f"this token already has {self._per_key[key]} event streams open, the most one token may "
                "(OVERCLOUD_MAX_STREAMS_PER_TOKEN); close one, or retry later")
        sub = Subscription(overcloud_id, key, follow)
        self.open += 1
        self._per_key[key] += 1
        self._subs.setdefault(overcloud_id, set()).add(sub)
        try:
            loop = asyncio.get_running_loop()
            if self._task is None or self._task.get_loop() is not loop:  # (a test client's loop per request)
                self._limiter, self._ready = None, asyncio.Event()
                self._task = loop.create_task(self._watch(self._ready), name="event-watcher")
            assert self._ready is not None
            await self._ready.wait()  # the cursor is set: this stream's backlog read comes after it
        except BaseException:
            self.release(sub)
            raise
        return sub

    def release(self, sub: Subscription) -> None:
        """Free the stream's slot (idempotent); called when its response ends, however it ends."""
        self._close(sub)
        if sub.released:
            return
        sub.released = True
        self.open -= 1
        self._per_key[sub.key] -= 1
        if self._per_key[sub.key] <= 0:
            del self._per_key[sub.key]

    def _close(self, sub: Subscription) -> None:
        sub.closed = True
        subs = self._subs.get(sub.overcloud_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.overcloud_id]

    def _offer(self, sub: Subscription, item: Any) -> None:
        if sub.closed:
            return
        if sub.queue.qsize() >= QUEUE_EVENTS:
            logger.warning("an event stream of OverCloud %s fell %d events behind; closed (its client "
                           "resumes with Last-Event-ID)", sub.overcloud_id, QUEUE_EVENTS)
            self._close(sub)
            sub.dropped = True
            while not sub.queue.empty():
                sub.queue.get_nowait()
            sub.queue.put_nowait(DROPPED)
            if sub.scope is not None:
                sub.scope.cancel()  # it may be stuck writing to a client that does not read
            return
        sub.queue.put_nowait(item)

    # -- the watcher --------------------------------------------------------
    async def _watch(self, ready: asyncio.Event) -> None:
        try:
            while not ready.is_set() and self.open:
                try:
                    self._cursor = await self.run(self.repo.last_event_id)
                    ready.set()
                except Exception:  # noqa: BLE001 - the database may come back; streams wait meanwhile
                    logger.exception("the event watcher could not read the events table")
                    await asyncio.sleep(TICK)
            while self.open:
                try:
                    more = await self._tick()
                except Exception:  # noqa: BLE001 - one bad read never stops the watcher
                    logger.exception("the event watcher's read failed")
                    more = False
                if not more:
                    await asyncio.sleep(TICK)
        finally:
            if self._task is asyncio.current_task():
                self._task = self._ready = None

    async def _tick(self) -> bool:
        """One read for every stream; True when more events are waiting."""
        # which non-following streams may end: their OverCloud runs no workflow now. Its status is
        # read before the events, so every event up to that status is delivered before END.
        candidates = [oc for oc, subs in self._subs.items()
                      if any(not s.follow for s in subs) and not self.is_running(oc)]
        statuses, rows = await self.run(self._read, candidates, self._cursor)
        self.reads += 1
        for ev in rows:
            self._cursor = ev.id
            subs = self._subs.get(ev.overcloud_id)
            if subs:
                item = (ev.id, render(ev))
                for sub in list(subs):
                    self._offer(sub, item)
        if len(rows) >= BATCH:
            return True
        for oc in candidates:
            if statuses.get(oc) in RESTING or statuses.get(oc) is None:
                for sub in [s for s in self._subs.get(oc, ()) if not s.follow]:
                    sub.queue.put_nowait(END)
                    self._close(sub)
        return False

    def _read(self, candidates: list[str], cursor: int) -> tuple[dict[str, str | None], list[EventRow]]:
        statuses: dict[str, str | None] = {}
        for oc in candidates:
            try:
                statuses[oc] = self.repo.get(oc).status
            except NotFound:
                statuses[oc] = None
        return statuses, self.repo.events_since(cursor, BATCH)

    # -- one stream ---------------------------------------------------------
    def _backlog(self, overcloud_id: str, after: int) -> tuple[str | None, list[EventRow]]:
        try:
            status = self.repo.get(overcloud_id).status
        except NotFound:
            status = None
        return status, self.repo.events_after(overcloud_id, after, BACKLOG_PAGE)

    async def stream(self, sub: Subscription, after: int) -> AsyncIterator[str]:
        """The stream's text: its backlog after ``after`` from the database, then what the
        watcher hands it; without follow it ends once the OverCloud rests."""
        running = self.is_running(sub.overcloud_id)  # before the status, as in _tick
        status, rows = await self.run(self._backlog, sub.overcloud_id, after)
        last = after
        while rows:  # a page at a time, each one write
            last = rows[-1].id
            yield "".join(render(ev) for ev in rows)
            if len(rows) < BACKLOG_PAGE:
                break
            rows = await self.run(self.repo.events_after, sub.overcloud_id, last, BACKLOG_PAGE)
        if not sub.follow and (status is None or status in RESTING) and not running:
            return
        while True:
            try:
                item = await asyncio.wait_for(sub.queue.get(), KEEPALIVE)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            texts, ended = [], False
            while True:  # what is queued goes out as one write
                if item == END or item == DROPPED:
                    ended = True
                    break
                ev_id, text = item
                if ev_id > last:
                    last = ev_id
                    texts.append(text)
                if sub.queue.empty():
                    break
                item = sub.queue.get_nowait()
            if texts:
                yield "".join(texts)
            if ended:
                return


class EventStream(StreamingResponse):
    """The stream's response: frees its slot however it ends (done, client gone, dropped)."""

    def __init__(self, hub: EventHub, sub: Subscription, after: int):
        super().__init__(hub.stream(sub, after), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.hub, self.sub = hub, sub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            with anyio.CancelScope() as self.sub.scope:
                if self.sub.dropped:  # dropped before its response began
                    self.sub.scope.cancel()
                await super().__call__(scope, receive, send)
        finally:
            self.sub.scope = None
            self.hub.release(self.sub)
