#!/usr/bin/env python3
"""The DataLake's numbers, measured in one run on a Tower of the benchmark's own:

* DataLake readiness as a share of OverCloud create time (Post + 3 clusters), and READY time
  (target: under 5 s);
* S3 PUT/GET throughput from a cluster box, over the overlay, against the same from a client
  in the DevOps Post's own namespace — the closest this machine has to "the host directly":
  the host cannot reach overlay addresses, and from the Post no network lies between client
  and S3 gateway (target ratio >= 0.9);
* preserve throughput (MB/s) of the delete.

Usage (root): bench/datalake.py [-k 3] [--mb 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import benchtower
from overcloud.boxes.netns import NetnsTransport
from overcloud.datalake import clients

SITES = [
    {"name": "local-a", "kind": "local", "bridge": "ocbench-a", "cidr": "10.213.120.0/24"},
    {"name": "local-b", "kind": "local", "bridge": "ocbench-b", "cidr": "10.213.121.0/24"},
]
OBJECT = 4 * 1024 * 1024


def throughput(handle: str, cr: dict, total_mb: int, tag: str) -> tuple[float, float]:
    """MB/s for PUT and GET of total_mb in 4 MiB objects, 4 streams, from inside ``handle``."""
    n = max(1, total_mb * 1024 * 1024 // OBJECT)
    blob = os.urandom(OBJECT)

    def run():
        client = clients.s3_client(cr["s3_endpoint"], cr["access_key"], cr["secret_key"])
        t0 = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: client.put_object(Bucket="data", Key=f"{tag}/{i}", Body=blob), range(n)))
        put = time.perf_counter() - t0
        t0 = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            sizes = list(pool.map(lambda i: len(client.get_object(Bucket="data", Key=f"{tag}/{i}")["Body"].read()), range(n)))
        get = time.perf_counter() - t0
        assert sum(sizes) == n * OBJECT
        return put, get

    put, get = NetnsTransport(handle).call(run)
    mb = n * OBJECT / 1e6
    return mb / put, mb / get


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-k", type=int, default=3, help="OverClouds to create for the readiness share")
    ap.add_argument("--mb", type=int, default=64, help="MB written and read per throughput run")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved throughput rounds")
    args = ap.parse_args()
    body = {"name": "bench-dl", "sites": [{"undercloud": "local-a", "clusters": 2, "post": True},
                                          {"undercloud": "local-b", "clusters": 1}]}
    ready, shares, steps = [], [], []
    with benchtower.tower(SITES, "10.254.0.0/16") as c:
        c.get("/datalake/archives")  # waits until the Tower's own store is up: not part of any create
        for i in range(args.k):
            d = c.post("/overclouds", json=body, params={"wait": "true"}).json()
            if d["status"] != "READY":
                print(f"create {i}: {d['status']} {d['error']}", file=sys.stderr)
                return 1
            tasks = {t["task"]: t for t in d["workflow"]["workflows"]["create_overcloud"]}
            ready.append(d["create_seconds"])
            shares.append(tasks["datalake"]["duration_s"] / d["create_seconds"])
            steps.append(d["datalake"]["steps_seconds"])
            if i < args.k - 1:
                c.delete(f"/overclouds/{d['overcloud_ID']}", params={"wait": "true"})
        oid = d["overcloud_ID"]
        cr = c.get(f"/overclouds/{oid}/datalake/credentials").json()
        throughput(d["post"]["handle"], cr, 16, "warm-up")  # the bucket's first writes grow its volumes
        runs = {"post": [], "same": [], "other": []}
        for r in range(args.rounds):  # interleaved, medians: the machine is noisy
            runs["post"].append(throughput(d["post"]["handle"], cr, args.mb, f"post{r}"))
            runs["same"].append(throughput(d["clusters"][0]["handle"], cr, args.mb, f"same{r}"))
            runs["other"].append(throughput(d["clusters"][2]["handle"], cr, args.mb, f"other{r}"))
        med = {k: (statistics.median(p for p, _ in v), statistics.median(g for _, g in v)) for k, v in runs.items()}
        (post_put, post_get), (same_put, same_get), (box_put, box_get) = med["post"], med["same"], med["other"]
        r = c.delete(f"/overclouds/{oid}", params={"wait": "true"}).json()
        wf = c.get(f"/overclouds/{oid}/workflow").json()["workflows"]["delete_overcloud"]
        pres = next(t for t in wf if t["task"] == "preserve_datalake")
        c.delete(f"/datalake/archives/{oid}")
    print(f"OverCloud = Post + 3 clusters over 2 sites with DataLake, {args.k} creates")
    print(f"READY: median {statistics.median(ready):.2f} s (target < 5 s); DataLake share of create time: "
          f"median {statistics.median(shares):.0%}")
    keys = steps[0].keys()
    print("  DataLake steps (median s): " + ", ".join(f"{k} {statistics.median(s[k] for s in steps):.2f}" for k in keys))
    print(f"S3 from a cluster box, same site as the Post: PUT {same_put:.0f} MB/s, GET {same_get:.0f} MB/s "
          f"(ratio PUT {same_put / post_put:.2f}, GET {same_get / post_get:.2f})")
    print(f"S3 from a cluster box on the other site:     PUT {box_put:.0f} MB/s, GET {box_get:.0f} MB/s")
    print(f"S3 from the Post itself (baseline):    PUT {post_put:.0f} MB/s, GET {post_get:.0f} MB/s")
    print(f"ratio other-site cluster/baseline: PUT {box_put / post_put:.2f}, GET {box_get / post_get:.2f} (target >= 0.9)"
          f"  [medians of {args.rounds} interleaved rounds of {args.mb} MB]")
    print(f"preserve: {pres['message']}")
    return 0 if r["status"] == "DELETED" else 1


if __name__ == "__main__":
    sys.exit(main())
