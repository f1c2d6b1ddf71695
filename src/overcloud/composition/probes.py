"""Probes, run by the Tower from inside a box's network namespace (a thread that has
``setns``-ed into it), against ``127.0.0.1``: the replica shares the box's namespace."""

from __future__ import annotations

import concurrent.futures
import os
import queue
import selectors
import socket
import subprocess
import threading
import time
from typing import Any, Callable

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


def run(net, p: Probe, exec_argv: Callable[[list[str]], list[str]], exec_env: dict[str, str] | None = None) -> bool:
    """Whether the probe passes. ``exec_argv`` turns an exec probe's command into what runs
    it (``podman exec NAME ...``, or the command in the box with the replica's environment)."""
    try:
        if p.kind == "tcp":
            net.connect_tcp("127.0.0.1", p.port, timeout=p.timeout).close()
            return True
        if p.kind == "http":
            sock = net.connect_tcp("127.0.0.1", p.port, timeout=p.timeout)
            try:
                sock.sendall(f"GET {p.path} HTTP/1.0\r\nHost: localhost\r\nUser-Agent: overcloud-probe\r\n\r\n".encode())
                head = sock.recv(64).decode("latin-1")
            finally:
                sock.close()
            parts = head.split()
            return len(parts) >= 2 and parts[1].isdigit() and 200 <= int(parts[1]) < 400
        code, _ = run_bounded(exec_argv(p.command), timeout=p.timeout + 5, env=exec_env)
        return code == 0
    except (OSError, socket.timeout, ValueError):
        return False


def run_bounded(argv: list[str], *, timeout: float, env: dict[str, str] | None = None,
                keep: int = PROBE_OUTPUT_BYTES) -> tuple[int | None, bytes]:
    """Run ``argv`` (a workload's command: its output is the workload's to choose) and read its
    stdout and stderr as they come, keeping the first ``keep`` bytes and dropping the rest: a
    probe that printed 400 MB once grew the Tower by 700 MB when it was all captured. The exit
    code is None when ``timeout`` passed first (the command is killed)."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    head = bytearray()
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while (left := deadline - time.monotonic()) > 0:
                if not sel.select(left):
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:  # every writer has closed it
                    return proc.wait(max(0.0, deadline - time.monotonic())), bytes(head)
                if len(head) < keep:
                    head += chunk[: keep - len(head)]
        return None, bytes(head)
    except subprocess.TimeoutExpired:
        return None, bytes(head)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def listening_ports() -> set[int]:
    """TCP ports in LISTEN state in the calling thread's network namespace."""
    ports: set[int] = set()
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/thread-self/net/{name}") as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A":
                        ports.add(int(parts[1].rsplit(":", 1)[1], 16))
        except OSError:
            continue
    return ports
