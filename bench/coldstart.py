#!/usr/bin/env python3
"""Cold start: the first create after ``overcloud serve`` on a fresh state dir, against warm
creates on the same Tower, in the same run, as a ratio (target <= 1.5).

Each cold round starts a Tower of its own on a fresh state dir (so its Construction DataLake,
its artifact cache and its databases are new), sends the create as soon as /healthz answers,
then times ``--warm`` more creates on the same Tower. It prints both round trips, the ratio,
how long /healthz took to answer, the Construction DataLake's own start-up timeline (from the
Tower's log) and the tasks whose durations differ most between the cold and the warm create.
``--drop-caches`` also empties the page cache before each cold round (slows the whole host for
a moment; shows what a first run after boot pays on top).

Runs as root on the local UnderCloud with its own bridges (ocbcs-a/-b) and address ranges;
every OverCloud is deleted and the Tower's state removed after each round.
Usage: bench/coldstart.py [--rounds 2] [--warm 2] [--drop-caches]
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import statistics
import subprocess
import sys
import time

import benchtower
from create_delete import ts

SITES = [
    {"name": "local-a", "kind": "local", "bridge": "ocbcs-a", "cidr": "10.213.126.0/24"},
    {"name": "local-b", "kind": "local", "bridge": "ocbcs-b", "cidr": "10.213.127.0/24"},
]
OVERLAY = "10.254.0.0/16"
BODY = {"name": "cold", "datalake": {"enabled": True}, "fabric": {"enabled": True},
        "sites": [{"undercloud": "local-a", "clusters": 2, "post": True}, {"undercloud": "local-b", "clusters": 1}]}
CREATE_TIMEOUT = 300  # bounded: a create that hangs fails the benchmark


def create(c) -> tuple[float, dict]:
    t0 = time.perf_counter()
    d = c.post("/overclouds", json=BODY, params={"wait": "true"}, timeout=CREATE_TIMEOUT).json()
    took = time.perf_counter() - t0
    if d.get("status") != "READY":
        raise SystemExit(f"create ended {d.get('status')}: {d.get('error')}")
    r = c.delete(f"/overclouds/{d['overcloud_ID']}", params={"wait": "true"}, timeout=CREATE_TIMEOUT).json()
    if r.get("status") != "DELETED":
        raise SystemExit(f"delete ended {r.get('status')}: {r.get('error')}")
    return took, d


def durations(d: dict) -> dict[str, float]:
    return {t["task"]: t["duration_s"] for t in d["workflow"]["workflows"]["create_overcloud"]}


def _at(line: str) -> dt.datetime:
    """A Tower log line's time (``%(asctime)s``: local time, which is UTC on our hosts)."""
    return dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=dt.timezone.utc)


def timeline(log: str, d: dict) -> list[str]:
    """The Construction DataLake's start-up as the Tower logged it, and when the cold create's
    tasks started, in seconds after the Tower's first log line."""
    lines = [ln for ln in log.splitlines() if re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", ln)]
    if not lines:
        return []
    t0 = _at(lines[0])
    events = [(_at(ln), ln.split(": ", 1)[-1]) for ln in lines if "onstruction DataLake" in ln or "Tower on http" in ln]
    tasks = {t["task"]: t for t in d["workflow"]["workflows"]["create_overcloud"]}
    events.append((ts(d["created_at"]), "the cold create is recorded"))
    for name in ("datalake", "fabric"):
        events.append((ts(tasks[name]["started_at"]), f"its {name} task starts"))
    events.append((ts(d["ready_at"]), "it is READY"))
    return [f"+{(at - t0).total_seconds():6.2f} s  {text}" for at, text in sorted(events)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2, help="cold rounds, each on a fresh Tower and state dir")
    ap.add_argument("--warm", type=int, default=2, help="warm creates after the cold one, same Tower")
    ap.add_argument("--drop-caches", action="store_true", help="drop the page cache before each cold round")
    args = ap.parse_args()
    colds, warms, health = [], [], []
    for rnd in range(args.rounds):
        if args.drop_caches:
            subprocess.run(["sync"], check=True)
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
        t0 = time.perf_counter()
        with benchtower.tower(SITES, OVERLAY, log_level="info") as c:
            health.append(time.perf_counter() - t0)
            cold, dc = create(c)
            colds.append(cold)
            round_warm = []
            for _ in range(args.warm):
                took, dw = create(c)
                round_warm.append(took)
            warms.extend(round_warm)
            log = (c.state_dir / "tower.log").read_text(errors="replace")
        print(f"round {rnd}: /healthz after {health[-1]:.2f} s; cold create {cold:.2f} s; warm "
              + ", ".join(f"{w:.2f}" for w in round_warm) + " s")
        for line in timeline(log, dc):
            print("   " + line)
        a, b = durations(dc), durations(dw)
        diff = sorted(((a[t] - b.get(t, 0.0), t) for t in a), reverse=True)[:4]
        print("   tasks, cold vs warm: " + ", ".join(f"{t} {a[t]:.2f}/{b.get(t, 0):.2f} s" for _, t in diff))
        sc, sw = dc["datalake"].get("steps_seconds", {}), dw["datalake"].get("steps_seconds", {})
        print("   datalake steps, cold vs warm: " + ", ".join(f"{k} {sc[k]:.2f}/{sw.get(k, 0):.2f}" for k in sc))
    warm = statistics.median(warms)
    cold = statistics.median(colds)
    print(f"OverCloud = DevOps Post + 3 clusters with DataLake and Fabric; {args.rounds} cold rounds, "
          f"{args.warm} warm creates each{' (page cache dropped before each round)' if args.drop_caches else ''}")
    print(f"/healthz after spawn: median {statistics.median(health):.2f} s")
    print(f"cold first create (POST ?wait=true, sent as /healthz answers): median {cold:.2f} s "
          f"(min {min(colds):.2f}, max {max(colds):.2f})")
    print(f"warm create: median {warm:.2f} s (min {min(warms):.2f}, max {max(warms):.2f})")
    print(f"cold / warm: {cold / warm:.2f}  target <= 1.5")
    return 0


if __name__ == "__main__":
    sys.exit(main())
