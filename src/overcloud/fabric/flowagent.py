"""The flow agent: TCP bytes between overlay addresses of one box, as Prometheus counters.

One agent runs per box, inside the box's network namespace (started by the box's supervisord),
and answers ``GET /metrics`` only. What it promises:

- The kernel is the source of truth: sock_diag over netlink (``tcp_info`` of every TCP socket,
  ``bytes_acked`` / ``bytes_received``), no subprocess, no /proc parsing, no conntrack.
- ``overcloud_flow_bytes_{sent,received}_total`` are monotonic per (local address, remote
  address, service port) even when connections close: each socket's last seen values are kept
  by its sock_diag cookie, and when the socket goes away its final values are folded into a
  per-flow accumulator. The service port is the listening end's port (``port``), and
  ``listener`` says which end listens: ``src`` when this box serves (its local port is one it
  listens on), ``dst`` when it is the client. So a flow names the service it is for, not an
  ephemeral port, and the Tower can tell which workload serves it. The kernel also broadcasts a socket's final ``tcp_info`` when it is destroyed
  (``SKNLGRP_INET_TCP_DESTROY``); the agent listens for it (a blocked thread, no cost at idle)
  so that bytes sent after the last scan, or by a connection that lived between two scans,
  are counted too. Without CAP_NET_ADMIN it falls back to scans only.
- The scan runs on a scrape, at most once per ``--interval`` (cached): an idle agent that is
  scraped every second costs next to nothing, and an unscraped one costs nothing at all.
- Box names come from ``--names`` (a JSON {address: box}) re-read when its mtime changes; an
  unknown address is labelled with itself. Loopback flows, a box's flows to its own address
  (the scrapes of a Prometheus in the same box, say), and flows whose both ends are neither
  named nor inside ``--subnet`` are skipped.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from pyroute2 import DiagSocket
from pyroute2.netlink.diag import (
    SKNLGRP_INET6_TCP_DESTROY,
    SKNLGRP_INET_TCP_DESTROY,
    SS_CLOSE,
    SS_LISTEN,
    SS_SYN_RECV,
    SS_TIME_WAIT,
)

logger = logging.getLogger(__name__)

INET_DIAG_INFO = 2  # extension number; the request carries it as bit (1 << (n - 1))
TCP_ESTABLISHED = 1
# Every state that has a full socket (and so a tcp_info); TIME_WAIT sockets carry no counters.
SCAN_STATES = 0xFFF & ~((1 << SS_LISTEN) | (1 << SS_TIME_WAIT) | (1 << SS_SYN_RECV) | (1 << SS_CLOSE))
RETIRED_KEEP_S = 300.0  # how long a retired cookie is remembered, to merge a late destroy event
RETIRED_MAX = 50_000


def _ephemeral_ports() -> tuple[int, int]:
    """This network namespace's range of ports for outgoing connections."""
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _addr(raw: str) -> str:
    """Plain IPv4 for v4-mapped IPv6 (a listener on ``::`` sees v4 peers as ``::ffff:a.b.c.d``)."""
    ip = ipaddress.ip_address(raw)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


Flow = tuple[str, str, int, str]  # (local address, remote address, service port, listener: "src" | "dst")


@dataclass
class _Sock:
    flow: Flow
    sent: int
    received: int
    established: bool


@dataclass
class FlowTable:
    """Per-socket last values + per-flow accumulators. Thread-safe; no I/O of its own."""

    live: dict[int, _Sock] = field(default_factory=dict)
    closed: dict[Flow, list[int]] = field(default_factory=dict)
    retired: dict[int, tuple[int, int, float]] = field(default_factory=dict)  # cookie -> sent, received, when
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _retire(self, cookie: int, flow: Flow, sent: int, received: int) -> None:
        """Fold a gone socket's bytes into its flow, counting only what was not folded already
        (a scan may retire a socket with its last seen values, the destroy event with its final)."""
        prev_sent, prev_recv, _ = self.retired.get(cookie, (0, 0, 0.0))
        acc = self.closed.setdefault(flow, [0, 0])
        acc[0] += max(0, sent - prev_sent)
        acc[1] += max(0, received - prev_recv)
        self.retired[cookie] = (max(sent, prev_sent), max(received, prev_recv), time.monotonic())
        if len(self.retired) > RETIRED_MAX:  # an unscraped agent under connection churn stays bounded
            self._prune()

    def update(self, seen: dict[int, _Sock]) -> None:
        """Replace the live set with one scan's result; sockets gone since are retired."""
        with self.lock:
            for cookie, old in self.live.items():
                if cookie not in seen:
                    self._retire(cookie, old.flow, old.sent, old.received)
            for cookie, new in seen.items():
                if cookie in self.retired:  # destroyed between the dump and now: already folded
                    continue
                old = self.live.get(cookie)
                if old is not None:  # counters of one socket never go back
                    new.sent, new.received = max(new.sent, old.sent), max(new.received, old.received)
            self.live = {c: s for c, s in seen.items() if c not in self.retired}
            self._prune()

    def _prune(self) -> None:
        horizon = time.monotonic() - RETIRED_KEEP_S
        self.retired = {c: v for c, v in self.retired.items() if v[2] >= horizon}

    def destroyed(self, cookie: int, flow: Flow, sent: int, received: int) -> None:
        with self.lock:
            old = self.live.pop(cookie, None)
            if old is not None:
                sent, received = max(sent, old.sent), max(received, old.received)
            self._retire(cookie, flow, sent, received)

    def totals(self) -> tuple[dict[Flow, list[int]], dict[Flow, int], int]:
        """(bytes per flow [sent, received], established connections per flow, live sockets)."""
        with self.lock:
            sums = {flow: list(acc) for flow, acc in self.closed.items()}
            conns: dict[tuple[str, str], int] = {}
            for s in self.live.values():
                acc = sums.setdefault(s.flow, [0, 0])
                acc[0] += s.sent
                acc[1] += s.received
                if s.established:
                    conns[s.flow] = conns.get(s.flow, 0) + 1
            return sums, conns, len(self.live)


class Names:
    """The Tower's {address: box} file, re-read when its mtime changes. A broken file keeps the
    previous names (the Tower rewrites it; a half-written read must not relabel everything)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mtime: float | None = None
        self.names: dict[str, str] = {}

    def refresh(self) -> dict[str, str]:
        try:
            mtime = self.path.stat().st_mtime_ns
        except OSError:
            return self.names
        if mtime != self.mtime:
            try:
                data = json.loads(self.path.read_text())
                self.names = {_addr(str(a)): str(b) for a, b in data.items()}
                self.mtime = mtime
            except (OSError, ValueError, AttributeError) as exc:
                logger.warning("names file %s unreadable, keeping the previous names: %s", self.path, exc)
        return self.names


class FlowAgent:
    def __init__(self, names_path: Path, interval: float = 1.0, subnet: str | None = None) -> None:
        self.names = Names(names_path)
        self.interval = interval
        self.subnet = ipaddress.ip_network(subnet) if subnet else None
        self.table = FlowTable()
        self.listening: set[int] = set()  # TCP ports this box listens on, as of the last scan
        self.ephemeral = _ephemeral_ports()
        self._scan_lock = threading.Lock()
        self._last_scan = float("-inf")
        self._scan_seconds = 0.0
        self._diag = DiagSocket()
        self._diag.bind()

    def wanted(self, local: str, remote: str, names: dict[str, str]) -> bool:
        a, b = ipaddress.ip_address(local), ipaddress.ip_address(remote)
        if a == b or a.is_loopback or b.is_loopback or a.is_unspecified or b.is_unspecified:
            return False  # a box talking to itself never crosses the fabric
        return any(x in names or (self.subnet is not None and ip in self.subnet) for x, ip in ((local, a), (remote, b)))

    def _parse(self, msg, names: dict[str, str]) -> tuple[int, _Sock] | None:
        info = None
        for key, value in msg["attrs"]:
            if key == "INET_DIAG_INFO":
                info = value
                break
        if info is None:
            return None
        local, remote = _addr(msg["idiag_src"]), _addr(msg["idiag_dst"])
        if not self.wanted(local, remote, names):
            return None
        sport, dport = int(msg["idiag_sport"]), int(msg["idiag_dport"])
        side = self.listener(sport, dport)
        flow = (local, remote, sport if side == "src" else dport, side)
        sock = _Sock(flow, int(info["tcpi_bytes_acked"]), int(info["tcpi_bytes_received"]),
                     msg["idiag_state"] == TCP_ESTABLISHED)
        return int(msg["idiag_cookie"]), sock

    def scan(self) -> None:
        """One sock_diag dump (IPv4 and IPv6 sockets), unless the last one is younger than --interval."""
        with self._scan_lock:
            now = time.monotonic()
            if now - self._last_scan < self.interval:
                return
            names = self.names.refresh()
            self._read_listening()
            seen: dict[int, _Sock] = {}
            for family in (socket.AF_INET, socket.AF_INET6):
                for msg in self._diag.get_sock_stats(family=family, states=SCAN_STATES,
                                                     extensions=1 << (INET_DIAG_INFO - 1)):
                    parsed = self._parse(msg, names)
                    if parsed is not None:
                        seen[parsed[0]] = parsed[1]
            self.table.update(seen)
            self._last_scan = time.monotonic()
            self._scan_seconds = self._last_scan - now

    def _read_listening(self) -> None:
        """The ports this box listens on (a dump of LISTEN sockets only: cheap). Caller holds
        the scan lock (one netlink socket, one user at a time)."""
        self.listening = {int(m["idiag_sport"]) for family in (socket.AF_INET, socket.AF_INET6)
                          for m in self._diag.get_sock_stats(family=family, states=1 << SS_LISTEN)}

    def listener(self, sport: int, dport: int) -> str:
        """Which end of a socket listens: ``src`` (this box) when its local port is one this box
        listened on at the last scan. A listener started since (a connection that lived and
        died between two scans) is told by the ports: the client's is the one in the
        ephemeral range."""
        if sport in self.listening:
            return "src"
        lo, hi = self.ephemeral
        if not lo <= sport <= hi and lo <= dport <= hi:
            return "src"
        return "dst"

    def watch_destroyed(self, timeout: float = 5.0) -> bool:
        """Start the thread that folds final tcp_info of destroyed sockets; False if not allowed.

        The netlink socket is made inside that thread: pyroute2 0.9 delivers multicast messages
        only to the thread that created the socket (a socket made elsewhere receives nothing)."""
        bound = threading.Event()
        ok: list[bool] = []

        def loop() -> None:
            try:
                events = DiagSocket()
                events.bind(groups=(1 << (SKNLGRP_INET_TCP_DESTROY - 1)) | (1 << (SKNLGRP_INET6_TCP_DESTROY - 1)))
            except OSError as exc:
                logger.warning("no socket-destroy events (%s): bytes after the last scan of a closing socket are lost",
                               exc)
                bound.set()
                return
            ok.append(True)
            bound.set()
            while True:
                try:
                    for msg in events.get():
                        parsed = self._parse(msg, self.names.names)
                        if parsed is not None:
                            cookie, sock = parsed
                            self.table.destroyed(cookie, sock.flow, sock.sent, sock.received)
                except Exception:  # one bad message must not end the watch
                    logger.exception("socket-destroy event")
                    time.sleep(0.1)

        threading.Thread(target=loop, name="flowagent-destroy", daemon=True).start()
        bound.wait(timeout)
        return bool(ok)

    def render(self) -> str:
        self.scan()
        names = self.names.names
        sums, conns, nsocks = self.table.totals()
        box = lambda addr: names.get(addr, addr)  # noqa: E731
        out = [
            "# HELP overcloud_flow_bytes_sent_total TCP bytes sent (acked) from src_addr to dst_addr, by the "
            "service port (port) and the end listening on it (listener: src or dst).",
            "# TYPE overcloud_flow_bytes_sent_total counter",
        ]
        flows = sorted(sums)
        for f in flows:
            out.append(f"overcloud_flow_bytes_sent_total{_labels(box(f[0]), box(f[1]), *f)} {sums[f][0]}")
        out += [
            "# HELP overcloud_flow_bytes_received_total TCP bytes received by src_addr from dst_addr.",
            "# TYPE overcloud_flow_bytes_received_total counter",
        ]
        for f in flows:
            out.append(f"overcloud_flow_bytes_received_total{_labels(box(f[0]), box(f[1]), *f)} {sums[f][1]}")
        per_box: dict[tuple[str, str], int] = {}
        for f in flows:  # every box pair ever seen, so the gauge goes back to 0 rather than vanish
            key = (box(f[0]), box(f[1]))
            per_box[key] = per_box.get(key, 0) + conns.get(f, 0)
        out += [
            "# HELP overcloud_flow_connections Established TCP connections from src_box to dst_box.",
            "# TYPE overcloud_flow_connections gauge",
        ]
        for (sb, db), n in sorted(per_box.items()):
            out.append(f'overcloud_flow_connections{{src_box="{_esc(sb)}",dst_box="{_esc(db)}"}} {n}')
        out += box_usage_lines()
        out += [
            "# HELP overcloud_flow_agent_scrape_seconds Duration of the last sock_diag scan.",
            "# TYPE overcloud_flow_agent_scrape_seconds gauge",
            f"overcloud_flow_agent_scrape_seconds {self._scan_seconds:.6f}",
            "# HELP overcloud_flow_agent_sockets TCP sockets tracked at the last scan.",
            "# TYPE overcloud_flow_agent_sockets gauge",
            f"overcloud_flow_agent_sockets {nsocks}",
        ]
        return "\n".join(out) + "\n"


BOX_METRICS = {
    "cpu_seconds": ("overcloud_box_cpu_seconds_total", "counter", "CPU time used by the box's processes."),
    "memory_bytes": ("overcloud_box_memory_bytes", "gauge", "Memory used by the box's processes."),
    "cpu_limit_cores": ("overcloud_box_cpu_limit_cores", "gauge", "The box's CPU limit (its flavor)."),
    "memory_limit_bytes": ("overcloud_box_memory_limit_bytes", "gauge", "The box's memory limit (its flavor)."),
}


class _ProcUsage:
    """The box's CPU seconds (monotonic) and resident memory, summed over the processes in this
    agent's network namespace, from /proc. Used where the box's cgroup files cannot be read:
    ``ip netns exec`` mounts a fresh sysfs without /sys/fs/cgroup."""

    def __init__(self) -> None:
        self._last: dict[int, float] = {}
        self._gone = 0.0
        self._tick = os.sysconf("SC_CLK_TCK")
        self._page = os.sysconf("SC_PAGE_SIZE")

    def read(self) -> dict[str, float]:
        mine = os.stat("/proc/self/ns/net").st_ino
        now: dict[int, float] = {}
        rss = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino != mine:
                    continue
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            now[int(entry)] = (int(fields[11]) + int(fields[12])) / self._tick
            rss += int(fields[21]) * self._page
        for pid, cpu in self._last.items():
            if pid not in now:
                self._gone += cpu  # a process that exited keeps its CPU time in the total
        self._last = now
        return {"cpu_seconds": self._gone + sum(now.values()), "memory_bytes": float(rss)}


_proc_usage = _ProcUsage()


def box_usage_lines() -> list[str]:
    """The box's own resource use (and limits where readable): node-exporter in a namespace
    sees the host's CPU and memory, not the box's. From the box's cgroup when /sys/fs/cgroup
    is visible, else from /proc (see _ProcUsage)."""
    from overcloud.boxes.cgroups import own_usage

    try:
        usage = own_usage()
    except (OSError, ValueError):
        usage = {}
    if "cpu_seconds" not in usage or "memory_bytes" not in usage:
        usage = {**usage, **_proc_usage.read()}
    lines = []
    for key, (name, kind, text) in BOX_METRICS.items():
        if key in usage:
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {usage[key]:.12g}"]
    return lines


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(src_box: str, dst_box: str, src_addr: str, dst_addr: str, port: int, listener: str) -> str:
    return (f'{{src_box="{_esc(src_box)}",dst_box="{_esc(dst_box)}",'
            f'src_addr="{_esc(src_addr)}",dst_addr="{_esc(dst_addr)}",port="{port}",listener="{listener}"}}')


def make_server(agent: FlowAgent, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404)
                return
            try:
                body = agent.render().encode()
            except Exception:
                logger.exception("scan failed")
                self.send_error(500)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args) -> None:  # a scrape per second is not news
            logger.debug(fmt, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m overcloud.fabric.flowagent", description=__doc__.split("\n")[0])
    p.add_argument("--listen", required=True, help="IP:PORT to serve /metrics on (the box's overlay address)")
    p.add_argument("--names", required=True, type=Path, help="JSON file {address: box name}, re-read on change")
    p.add_argument("--interval", type=float, default=1.0, help="minimum seconds between two scans (cache)")
    p.add_argument("--subnet", default=None, help="overlay CIDR: flows touching it are reported even if unnamed")
    args = p.parse_args(argv)
    logging.basicConfig(level=os.environ.get("OVERCLOUD_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    host, _, port = args.listen.rpartition(":")
    agent = FlowAgent(args.names, args.interval, args.subnet)
    agent.watch_destroyed()
    server = make_server(agent, host.strip("[]"), int(port))
    logger.info("flow agent on %s", args.listen)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
