#!/usr/bin/env python3
"""Create and delete an OverCloud (DevOps Post + 3 clusters) K times on a Tower of its own
and print: median create and delete seconds, and the engine overhead ratio
(create wall time ÷ the sum of task durations along the critical path).

Runs as root on the local UnderCloud with its own bridges (ocbench-a/-b) and address
ranges; cleans up after itself. Usage: bench/create_delete.py [-k 10] [--clusters 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time

import benchtower

CRITICAL_PATH = ["validate", "acquire_boxes", "overlay_network", "devops_post", "clusters", ("datalake", "fabric"), "register"]
SITES = [
    {"name": "local-a", "kind": "local", "bridge": "ocbench-a", "cidr": "10.213.120.0/24"},
    {"name": "local-b", "kind": "local", "bridge": "ocbench-b", "cidr": "10.213.121.0/24"},
]


def ts(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00"))


def critical_seconds(tasks: list[dict]) -> float:
    by = {t["task"]: t for t in tasks}
    total = 0.0
    for step in CRITICAL_PATH:
        names = step if isinstance(step, tuple) else (step,)
        total += max(by[n]["duration_s"] for n in names)
    return total


def gaps(d: dict) -> dict[str, float]:
    """Where the non-task time goes: before the first task, between tasks, after the last."""
    tasks = {t["task"]: t for t in d["workflow"]["workflows"]["create_overcloud"]}
    created, ready = ts(d["created_at"]), ts(d["ready_at"])
    first = ts(tasks["validate"]["started_at"])
    out = {"before first task": (first - created).total_seconds()}
    between = 0.0
    prev_end = ts(tasks["validate"]["ended_at"])
    for step in CRITICAL_PATH[1:]:
        names = step if isinstance(step, tuple) else (step,)
        start = min(ts(tasks[n]["started_at"]) for n in names)
        between += (start - prev_end).total_seconds()
        prev_end = max(ts(tasks[n]["ended_at"]) for n in names)
    out["between tasks"] = between
    out["after register ended"] = (ready - prev_end).total_seconds()
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--clusters", type=int, default=3)
    ap.add_argument("--full", action="store_true",
                    help="with DataLake and Fabric (default: without, to time the Tower and the UnderCloud themselves)")
    args = ap.parse_args()
    creates, deletes, walls, paths, overheads = [], [], [], [], []
    body = {"name": "bench", "datalake": {"enabled": args.full}, "fabric": {"enabled": args.full},
            "sites": [{"undercloud": "local-a", "clusters": args.clusters - args.clusters // 2, "post": True},
                      {"undercloud": "local-b", "clusters": args.clusters // 2}]}
    body["sites"] = [s for s in body["sites"] if s["clusters"]]
    with benchtower.tower(SITES, "10.254.0.0/16") as c:
        for i in range(args.k):
            t0 = time.perf_counter()
            d = c.post("/overclouds", json=body, params={"wait": "true"}).json()
            creates.append(time.perf_counter() - t0)
            if d["status"] != "READY":
                print(f"run {i}: {d['status']} {d['error']}", file=sys.stderr)
                return 1
            tasks = d["workflow"]["workflows"]["create_overcloud"]
            walls.append((ts(d["ready_at"]) - ts(d["created_at"])).total_seconds())
            overheads.append(gaps(d))
            paths.append(critical_seconds(tasks))
            t1 = time.perf_counter()
            r = c.delete(f"/overclouds/{d['overcloud_ID']}", params={"wait": "true"}).json()
            deletes.append(time.perf_counter() - t1)
            if r["status"] != "DELETED":
                print(f"run {i}: delete ended {r['status']}", file=sys.stderr)
                return 1
        slowest = sorted(((t["duration_s"], t["task"]) for t in tasks), reverse=True)[:3]
    ratio = [w / p for w, p in zip(walls, paths)]
    dl = "with" if args.full else "without"
    print(f"OverCloud = DevOps Post + {args.clusters} clusters {dl} DataLake and Fabric, {args.k} create/delete cycles, one Tower, 2 sites")
    print(f"create (POST ?wait=true round trip): median {statistics.median(creates):.3f} s  (min {min(creates):.3f}, max {max(creates):.3f})  target < 3 s")
    print(f"delete (DELETE ?wait=true round trip): median {statistics.median(deletes):.3f} s  (min {min(deletes):.3f}, max {max(deletes):.3f})  target < 1 s")
    print(f"create wall (created_at -> ready_at): median {statistics.median(walls):.3f} s")
    print(f"critical path, sum of task durations: median {statistics.median(paths):.3f} s")
    print(f"engine overhead ratio (wall / critical path): median {statistics.median(ratio):.3f}  target < 1.10")
    for key in overheads[0]:
        print(f"  non-task time {key}: median {statistics.median(o[key] for o in overheads) * 1000:.1f} ms")
    print("slowest tasks of the last create: " + ", ".join(f"{n} {s:.3f} s" for s, n in slowest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
