"""Probes, run by the Tower from inside a box's network namespace (a thread that has
``setns``-ed into it), against ``127.0.0.1``: the replica shares the box's namespace."""

from __future__ import annotations

import socket
import subprocess
from typing import Callable

from overcloud.composition.pattern import Probe


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
        res = subprocess.run(exec_argv(p.command), capture_output=True, timeout=p.timeout + 5, env=exec_env)
        return res.returncode == 0
    except (OSError, socket.timeout, subprocess.TimeoutExpired, ValueError):
        return False


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
