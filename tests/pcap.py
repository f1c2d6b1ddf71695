"""Packet captures for tests that prove what crosses a wire (WireGuard only, no cleartext)."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path


class Capture:
    """tcpdump on one device, to a pcap file, stopped with SIGINT by its PID. ``netns`` None
    captures in the root namespace (e.g. the hosts lab's WAN bridge); ``expr`` is a capture filter."""

    def __init__(self, netns: str | None, dev: str, path: Path, expr: str | None = None):
        self.path = Path(path)
        argv = ["tcpdump", "-i", dev, "-nn", "-U", "-s", "0", "-w", str(self.path)]
        if expr:
            argv.append(expr)
        if netns is not None:
            argv = ["ip", "netns", "exec", netns, *argv]
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
        assert "listening on" in self.proc.stderr.readline()

    def stop(self) -> bytes:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=10)
        return self.path.read_bytes()

    def read(self, expr: str = "") -> str:
        """The captured packets matching ``expr``, one line each (tcpdump -r)."""
        argv = ["tcpdump", "-r", str(self.path), "-nn"] + ([expr] if expr else [])
        res = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise AssertionError(f"tcpdump -r {self.path} {expr}: exit {res.returncode}: {res.stderr}")
        return res.stdout

    def count(self, expr: str) -> int:
        return len(self.read(expr).splitlines())


def leaked(payload: bytes, captured: bytes, probes: int = 256, size: int = 32) -> list[int]:
    """Offsets of ``size``-byte slices of ``payload``, evenly spread, found in ``captured``: a
    payload split over packets is never whole in a capture, but a 32-byte slice of it mostly
    is, wherever it travels in clear."""
    step = max(1, (len(payload) - size) // probes)
    return [off for off in range(0, len(payload) - size, step) if payload[off:off + size] in captured]
