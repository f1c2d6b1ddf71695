"""Helpers for the fabric integration tests: test namespaces, processes stopped by PID, scrapes.

Not a conftest (a second conftest module name clashes); the test module imports it."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

NS_A, NS_B = "ocfab-a", "ocfab-b"
ADDR_A, ADDR_B = "10.213.250.1", "10.213.250.2"
VETH_A, VETH_B = "ocfab-va", "ocfab-vb"
PYTHON = sys.executable


def sh(*argv: str, check: bool = True, timeout: float = 10) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)


def netns_pair_up() -> None:
    """Two namespaces joined by a veth: ocfab-a (10.213.250.1/24) and ocfab-b (10.213.250.2/24)."""
    netns_pair_down()
    for ns in (NS_A, NS_B):
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "link", "add", VETH_A, "netns", NS_A, "type", "veth", "peer", "name", VETH_B, "netns", NS_B)
    for ns, dev, addr in ((NS_A, VETH_A, ADDR_A), (NS_B, VETH_B, ADDR_B)):
        sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")


def netns_pair_down() -> None:
    for ns in (NS_A, NS_B):
        for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
            try:
                subprocess.run(["kill", "-9", pid], check=False)
            except OSError:
                pass
        sh("ip", "netns", "del", ns, check=False)  # takes the veth pair with it


class Procs:
    """Processes a test started; stopped by PID (TERM, then KILL) at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, argv: list[str], log: Path | None = None, **kw) -> subprocess.Popen:
        kw.setdefault("stdout", open(log, "wb") if log else subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.STDOUT if log else subprocess.DEVNULL)
        p = subprocess.Popen(argv, **kw)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen, timeout: float = 5) -> None:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout)

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            self.stop(p)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SCRAPE = """
import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())
"""


def scrape_in_ns(ns: str, url: str) -> dict[str, float]:
    """GET a /metrics page from inside ``ns``; returns {"name{labels}": value}."""
    out = sh("ip", "netns", "exec", ns, PYTHON, "-c", SCRAPE, url).stdout
    samples = {}
    for line in out.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def wait_for(predicate, timeout: float, what: str, step: float = 0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 (retry until the deadline, report the last error)
            last = exc
        time.sleep(step)
    raise TimeoutError(f"{what} not true after {timeout}s (last: {last!r})")
