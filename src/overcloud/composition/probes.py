"""Probes, run by the Tower from inside a box's network (over its BoxSession), against
``127.0.0.1``: the replica shares the box's network."""

from __future__ import annotations

import concurrent.futures
import queue
import socket
import threading
from typing import Any, Callable

from overcloud.boxes.commands import run_bounded  # noqa: F401 - the probes' runner, also for tests
from overcloud.composition.pattern import Probe
from overcloud.limits import PROBE_OUTPUT_BYTES


class Pool:
    """Daemon threads that run probes, so that one waiting out its timeoutSeconds holds up
    neither the service controller nor the Tower's exit (a ThreadPoolExecutor's threads are
    joined when the interpreter exits)."""

    def __init__(self, threads: int):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        for i in range(threads):
            threading.Thread(target=self._work, name=f"probe-{i}", daemon=True).start()

    def submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((fut, fn))
        return fut

    def _work(self) -> None:
        while True:
            fut, fn = self._jobs.get()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
                fut.set_exception(exc)


def run(session, p: Probe, exec_argv: Callable[[list[str]], list[str]], exec_env: dict[str, str] | None = None,
        on_host: bool = False) -> bool:
    """Whether the probe passes. ``exec_argv`` turns an exec probe's command into what runs
    it (``podman exec NAME ...`` on the box's host: ``on_host``, or the command in the box with
    the replica's environment). Its output is kept only up to PROBE_OUTPUT_BYTES."""
    try:
        if p.kind == "tcp":
            session.connect_tcp("127.0.0.1", p.port, timeout=p.timeout).close()
            return True
        if p.kind == "http":
            sock = session.connect_tcp("127.0.0.1", p.port, timeout=p.timeout)
            try:
                sock.sendall(f"GET {p.path} HTTP/1.0\r\nHost: localhost\r\nUser-Agent: overcloud-probe\r\n\r\n".encode())
                head = sock.recv(64).decode("latin-1")
            finally:
                sock.close()
            parts = head.split()
            return len(parts) >= 2 and parts[1].isdigit() and 200 <= int(parts[1]) < 400
        done = session.run(exec_argv(p.command), timeout=p.timeout + 5, env=exec_env, check=False,
                           max_output=PROBE_OUTPUT_BYTES, on_host=on_host)
        return done.returncode == 0
    except (OSError, socket.timeout, ValueError):
        return False


def listening_ports(session) -> set[int]:
    """TCP ports in LISTEN state in the box's network (its kernel's socket tables, read in it)."""
    done = session.run(["cat", "/proc/net/tcp", "/proc/net/tcp6"], timeout=10, check=False)
    return parse_listening(done.stdout.decode("ascii", "replace"))


def parse_listening(text: str) -> set[int]:
    """Local ports of the LISTEN (``0A``) rows of ``/proc/net/tcp`` and ``tcp6``."""
    ports: set[int] = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) > 3 and parts[3] == "0A" and ":" in parts[1]:
            try:
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
            except ValueError:
                continue
    return ports
