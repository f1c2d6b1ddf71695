"""The one asyncio event loop of the ssh transport, in its own daemon thread for the whole
process (started on first use, stopped by :func:`shutdown` or at exit). Blocking callers hand it
coroutines (``run_coroutine_threadsafe``); a blocking call from the loop's own thread is refused
instead of deadlocking. A forked child starts afresh. See transport.py."""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import os
import threading
import weakref
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .transport import SSHHost

logger = logging.getLogger("overcloud.underclouds.ssh.transport")

T = TypeVar("T")


class _LoopThread:
    """One asyncio loop in a daemon thread, started on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()
                thread = threading.Thread(target=self._main, args=(loop, ready), name="overcloud-ssh", daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    @staticmethod
    def _main(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
            tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in tasks:
                t.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()

    def in_loop_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        """Run ``coro`` on the loop and wait for it from this (ordinary) thread."""
        if self.in_loop_thread():
            coro.close()
            raise RuntimeError("a blocking SSH call from the SSH event loop's own thread would deadlock")
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop())
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise

    def stop(self) -> None:
        """Close every host's connection, stop the loop, join its thread. A later call starts a new loop."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        if threading.current_thread() is thread:
            raise RuntimeError("shutdown() from the SSH event loop's own thread")
        hosts = list(_HOSTS)
        try:
            asyncio.run_coroutine_threadsafe(_close_all(hosts), loop).result(10)
        except Exception:  # noqa: BLE001 - best effort at shutdown; the loop stops anyway
            logger.warning("closing SSH connections at shutdown failed", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


_LOOP = _LoopThread()
_HOSTS: weakref.WeakSet[SSHHost] = weakref.WeakSet()


async def _close_all(hosts: list[SSHHost]) -> None:
    await asyncio.gather(*(h._aclose() for h in hosts), return_exceptions=True)


def shutdown() -> None:
    """Close all connections and stop the SSH loop thread (also done at interpreter exit)."""
    _LOOP.stop()


atexit.register(shutdown)


def _forget_after_fork() -> None:
    """A forked child has no loop thread and must not touch the parent's connections: start afresh."""
    _LOOP._lock = threading.Lock()
    _LOOP._loop = _LOOP._thread = None
    for h in list(_HOSTS):
        h._conn = None
        h._prims_loop = None


os.register_at_fork(after_in_child=_forget_after_fork)
