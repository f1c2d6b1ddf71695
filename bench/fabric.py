#!/usr/bin/env python3
"""The Visible Fabric's numbers, in one run on a Tower of the benchmark's own:

* what the Fabric adds to create: READY time with and without it (DataLake on in both);
* the agents' CPU (node-exporter + flow agent, per box, % of one core) at idle and during a
  100 MB TCP transfer between two cluster boxes;
* scrape-to-API latency: from the start of a transfer to its edge showing a rate in
  GET /overclouds/{id}/topology.

Usage (root): bench/fabric.py [-k 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

import benchtower
from overcloud.boxes.netns import NetnsTransport
from overcloud.boxes.supervision import _rpc_proxy

SITES = [
    {"name": "local-a", "kind": "local", "bridge": "ocbench-a", "cidr": "10.213.120.0/24"},
    {"name": "local-b", "kind": "local", "bridge": "ocbench-b", "cidr": "10.213.121.0/24"},
]
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def agent_pids(d: dict) -> list[int]:
    pids = []
    for b in [d["post"], *d["clusters"]]:
        rpc = _rpc_proxy(f"/run/overcloud/{b['handle']}.sock").supervisor
        pids += [rpc.getProcessInfo(n)["pid"] for n in ("node-exporter", "flow-agent")]
    return pids


def cpu_share(pids: list[int], seconds: float, during=None) -> float:
    """% of one core used by ``pids`` per box, over ``seconds`` (optionally while ``during`` runs)."""
    before = sum(cpu_seconds(p) for p in pids)
    t0 = time.monotonic()
    if during:
        during()
    rest = seconds - (time.monotonic() - t0)
    if rest > 0:
        time.sleep(rest)
    used = sum(cpu_seconds(p) for p in pids) - before
    return 100 * used / (time.monotonic() - t0) / (len(pids) / 2)


def transfer(src: dict, dst: dict, total: int, port: int) -> float:
    srv = NetnsTransport(dst["handle"]).listen_tcp(dst["overlay_address"], port)
    got = []

    def sink():
        conn, _ = srv.accept()
        n = 0
        while True:
            b = conn.recv(1 << 16)
            if not b:
                break
            n += len(b)
        got.append(n)
        conn.close()

    th = threading.Thread(target=sink)
    th.start()
    s = NetnsTransport(src["handle"]).connect_tcp(dst["overlay_address"], port)
    t0 = time.monotonic()
    chunk = b"x" * (1 << 16)
    for _ in range(total // len(chunk)):
        s.sendall(chunk)
    s.close()
    th.join(30)
    srv.close()
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-k", type=int, default=3)
    args = ap.parse_args()
    base = {"sites": [{"undercloud": "local-a", "clusters": 2, "post": True}, {"undercloud": "local-b", "clusters": 1}]}
    with_f, without_f, fabric_task = [], [], []
    with benchtower.tower(SITES, "10.254.0.0/16") as c:
        c.get("/datalake/archives")  # the Tower's own store is up before anything is timed
        for i in range(args.k):
            for enabled, into in ((True, with_f), (False, without_f)):
                body = {**base, "name": f"f{i}", "fabric": {"enabled": enabled}, "datalake": {"preserve": False}}
                d = c.post("/overclouds", json=body, params={"wait": "true"}).json()
                if d["status"] != "READY":
                    print(f"{d['status']}: {d['error']}", file=sys.stderr)
                    return 1
                into.append(d["create_seconds"])
                if enabled:
                    fabric_task.append(next(t["duration_s"] for t in d["workflow"]["workflows"]["create_overcloud"]
                                            if t["task"] == "fabric"))
                    keep = d
                else:
                    c.delete(f"/overclouds/{d['overcloud_ID']}", params={"wait": "true"})
            if i < args.k - 1:
                c.delete(f"/overclouds/{keep['overcloud_ID']}", params={"wait": "true"})
        d = keep
        pids = agent_pids(d)
        time.sleep(3)
        idle = cpu_share(pids, 20)
        c1, c2 = d["clusters"][0], d["clusters"][1]
        seconds = []
        busy = cpu_share(pids, 5, during=lambda: seconds.append(transfer(c1, c2, 100 * 1024 * 1024, 7300)))
        t0 = time.monotonic()
        stop = threading.Event()
        threading.Thread(target=lambda: transfer(c1, c2, 400 * 1024 * 1024, 7301), daemon=True).start()
        latency = None
        while time.monotonic() - t0 < 20:
            flows = c.get(f"/overclouds/{d['overcloud_ID']}/topology").json()["flows"]
            if any(f["src"] == "c1" and f["dst"] == "c2" and f["bytes_per_s"] > 1e6 for f in flows):
                latency = time.monotonic() - t0
                break
            time.sleep(0.05)
        stop.set()
        time.sleep(2)
        c.delete(f"/overclouds/{d['overcloud_ID']}", params={"wait": "true"})
    add = statistics.median(with_f) - statistics.median(without_f)
    print(f"Post + 3 clusters over 2 sites, DataLake on, {args.k} creates each way")
    print(f"READY with Fabric {statistics.median(with_f):.2f} s, without {statistics.median(without_f):.2f} s: "
          f"the Fabric adds {add:.2f} s (target < 1 s); fabric task itself {statistics.median(fabric_task):.2f} s, "
          f"parallel to the DataLake")
    print(f"agents (node-exporter + flow agent) per box: idle {idle:.2f} % of a core, during a 100 MB transfer "
          f"({100 / seconds[0]:.0f} MB/s) {busy:.2f} %")
    print(f"transfer start to its edge in the topology: {latency:.2f} s" if latency else "edge not seen within 20 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
