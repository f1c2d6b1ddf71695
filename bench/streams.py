#!/usr/bin/env python3
"""Many or slow clients against one Tower (issue 10, point 8). Prints:

* ``/healthz`` latency p50/p99 with no event stream open, then with N server-sent-event
  clients connected to ``GET /overclouds/{id}/events?follow=true`` (target: under 50 ms);
* how long the Tower holds M connections that never finish their request headers
  (slowloris), and how many it still held when the bench gave up waiting; and /healthz
  latency while they are held.

Runs as root on the local UnderCloud with bridges of its own (ocbs-a/-b) and address ranges;
cleans up after itself. Usage: bench/streams.py [--streams 200] [--slow 1000] [--probes 300]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import threading
import time

import httpx

import benchtower

SITES = [
    {"name": "local-a", "kind": "local", "bridge": "ocbs-a", "cidr": "10.213.122.0/24"},
    {"name": "local-b", "kind": "local", "bridge": "ocbs-b", "cidr": "10.213.123.0/24"},
]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def healthz_latency(url: str, probes: int) -> list[float]:
    out = []
    with httpx.Client(base_url=url, timeout=30) as c:
        c.get("/healthz")
        for _ in range(probes):
            t = time.perf_counter()
            c.get("/healthz").raise_for_status()
            out.append((time.perf_counter() - t) * 1000)
            time.sleep(0.01)
    return out


class Streams:
    """N SSE clients on raw sockets in an event loop of their own (a thread)."""

    def __init__(self, port: int, path: str, token: str, n: int):
        self.port, self.path, self.token, self.n = port, path, token, n
        self.statuses: list[int] = []
        self.events = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.stop = asyncio.Event()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),), daemon=True)

    async def _one(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 20)
        writer.write(f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {self.token}\r\n"
                     "Accept: text/event-stream\r\n\r\n".encode())
        await writer.drain()
        line = await reader.readline()
        self.statuses.append(int(line.split()[1]) if line else 0)
        if len(self.statuses) == self.n:
            self.ready.set()
        try:
            while not self.stop.is_set():
                line = await reader.readline()
                if not line:
                    return
                if line.startswith(b"id: "):
                    self.events += 1
        finally:
            writer.close()

    async def _main(self) -> None:
        self.stop = asyncio.Event()
        tasks = [asyncio.create_task(self._one()) for _ in range(self.n)]
        await self.stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __enter__(self) -> "Streams":
        self.thread.start()
        if not self.ready.wait(60):
            raise SystemExit(f"only {len(self.statuses)} of {self.n} streams got an answer within 60 s")
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)


def slow_headers(port: int, n: int, give_up: float, meanwhile) -> tuple[list[float], int]:
    """Open ``n`` connections that send an unfinished request head, call ``meanwhile()``; return
    how long each was held before the Tower closed it, and how many were still open after ``give_up`` s."""
    socks, opened = [], []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        s.setblocking(False)
        socks.append(s)
        opened.append(time.monotonic())
    meanwhile()
    held: list[float] = []
    open_ = set(range(n))
    deadline = time.monotonic() + give_up
    while open_ and time.monotonic() < deadline:
        for i in list(open_):
            try:
                if socks[i].recv(4096) == b"":
                    raise ConnectionResetError
            except BlockingIOError:
                continue
            except OSError:
                pass
            held.append(time.monotonic() - opened[i])
            open_.discard(i)
            socks[i].close()
        time.sleep(0.05)
    for i in open_:
        socks[i].close()
    return held, len(open_)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=200)
    ap.add_argument("--slow", type=int, default=1000)
    ap.add_argument("--probes", type=int, default=300)
    ap.add_argument("--give-up", type=float, default=60.0, help="stop waiting for slow connections after this many s")
    a = ap.parse_args()
    with benchtower.tower(SITES, "10.248.0.0/16") as c:
        url = str(c.base_url).rstrip("/")
        port = int(url.rsplit(":", 1)[1])
        token = c.headers["Authorization"].split(" ", 1)[1]
        d = c.post("/overclouds", json={"provider": "local", "number": "1", "size": "small"},
                   params={"wait": "true"}).json()
        oid = d["overcloud_ID"]
        assert d["status"] == "READY", d.get("error")
        try:
            idle = healthz_latency(url, a.probes)
            print(f"/healthz, no streams:        p50 {pct(idle, .5):6.1f} ms  p99 {pct(idle, .99):6.1f} ms")
            opening: list[float] = []
            prober = threading.Thread(target=lambda: opening.extend(healthz_latency(url, 100)))
            prober.start()  # while the streams connect and read their backlogs
            with Streams(port, f"/overclouds/{oid}/events?follow=true", token, a.streams) as st:
                codes = {code: st.statuses.count(code) for code in set(st.statuses)}
                prober.join()
                print(f"/healthz, {a.streams} streams opening: p50 {pct(opening, .5):6.1f} ms  p99 {pct(opening, .99):6.1f} ms")
                seen = -1
                while seen != st.events:  # every stream has its backlog: measure the steady state
                    seen = st.events
                    time.sleep(0.5)
                busy = healthz_latency(url, a.probes)
                print(f"/healthz, {a.streams} streams open:  p50 {pct(busy, .5):6.1f} ms  p99 {pct(busy, .99):6.1f} ms"
                      f"  (stream answers {codes}, events read {st.events})")
            during: list[float] = []
            held, still = slow_headers(port, a.slow, a.give_up, lambda: during.extend(healthz_latency(url, 20)))
            print(f"/healthz beside {a.slow} slow-header connections: p50 {pct(during, .5):6.1f} ms  max {max(during):6.1f} ms")
            if held:
                print(f"{a.slow} slow-header connections: closed by the Tower after median {statistics.median(held):.1f} s,"
                      f" max {max(held):.1f} s; {still} still open after {a.give_up:.0f} s")
            else:
                print(f"{a.slow} slow-header connections: none closed within {a.give_up:.0f} s")
            after = healthz_latency(url, 20)
            print(f"/healthz afterwards:         p50 {pct(after, .5):6.1f} ms")
        finally:
            c.delete(f"/overclouds/{oid}", params={"wait": "true"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
