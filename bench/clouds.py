#!/usr/bin/env python3
"""Cloud sites (kinds ``openstack`` and ``aws``) against the local UnderCloud, in one run.

Both labs are started here (in a temp dir, stopped at the end, even on error): the OpenStack lab
(``scripts/openstack-lab.sh``: Keystone, Nova with our compute driver booting namespace instances,
Neutron, Glance, Placement) and the AWS lab (``scripts/aws-lab.sh``: moto, and a harness booting
each instance moto runs). ``OVERCLOUD_OSLAB_DIR`` names an OpenStack lab that is up already (it is
used and left running). One Tower has the local sites and both labs' sites. Per round and kind:

* the seed's request ``{"provider": <kind>, "number": "3", "size": "m1.small"}`` (the Post and 3
  cluster boxes: 4 servers on a cloud) created and deleted, against the same request on the local
  UnderCloud: seconds and the ratio;
* the cloud API calls per create and per delete (the site's ``api.calls`` in ``GET /underclouds``,
  before and after), and the seconds spent waiting on the cloud (``api.wait_s``: waiters, polls,
  backoff, and the servers' boot until SSH answers) against the rest of the create (our own tasks: SSH, preparation, boxes, DataLake,
  Fabric);
* the seed prototype's figures beside them: create 6 min 33 s (OpenStack) / 5 min 47 s (AWS),
  delete 52 s / 48 s.

Prints every round and a table of medians. Exits 1 when a create or delete fails, 0 otherwise (a
benchmark reports). Bounded: ``--max-minutes`` for the whole run, 900 s per request. Root.
Usage: bench/clouds.py [--rounds 2] [--number 3] [--max-minutes 45] [--skip openstack|aws]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import benchtower

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration" / "clouds"))
from cloud_sites import merge_sites  # noqa: E402  (the heterogeneous e2e test's helper too)

REPO = Path(__file__).resolve().parents[1]
SITES = [  # the local baseline, on the benchmark's own bridges and ranges
    {"name": "local-a", "kind": "local", "bridge": "ocbcl-a", "cidr": "10.213.140.0/24"},
    {"name": "local-b", "kind": "local", "bridge": "ocbcl-b", "cidr": "10.213.141.0/24"},
]
OVERLAY = "10.253.0.0/16"
TIMEOUT = 900  # per request
SEED = {"openstack": (393.0, 52.0), "aws": (347.0, 48.0)}  # the prototype's create / delete, seconds
LAB_SITE = {"openstack": "openstack-1", "aws": "aws-1"}


class Failed(Exception):
    pass


def lab_script(kind: str, *args: str, timeout: float = 1200) -> None:
    script = REPO / "scripts" / f"{kind}-lab.sh"
    r = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise Failed(f"scripts/{kind}-lab.sh {' '.join(args)} failed ({r.returncode}): "
                     f"{(r.stderr or r.stdout).strip()[-1500:]}")


def lab_up(directory: Path) -> bool:
    """Whether the OpenStack lab in ``directory`` runs (``status`` exits 0 with "up": true)."""
    r = subprocess.run(["bash", str(REPO / "scripts" / "openstack-lab.sh"), "status", str(directory)],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    try:
        return r.returncode == 0 and json.loads(r.stdout).get("up") is True
    except ValueError:
        return False


def merged_sites(files: list[Path], out: Path) -> Path:
    """One sites file holding every site of ``files``, with their relative paths (``*_file``)
    made absolute, so one Tower gets both labs' sites (the tests' helper, one copy)."""
    return merge_sites(files, out)


def site_api(c, name: str) -> dict:
    for d in c.get("/underclouds", timeout=60).json()["underclouds"]:
        if d["name"] == name:
            return d.get("api") or {"calls": 0, "wait_s": 0.0}
    raise Failed(f"the Tower has no site {name}")


def one_round(c, provider: str, number: int, site: str | None) -> dict:
    before = site_api(c, site) if site else None
    t0 = time.perf_counter()
    d = c.post("/overclouds", json={"provider": provider, "number": str(number), "size": "m1.small"},
               params={"wait": "true"}, timeout=TIMEOUT).json()
    create = time.perf_counter() - t0
    if d.get("status") != "READY":
        raise Failed(f"create on {provider} ended {d.get('status')}: {d.get('error')} ({d.get('error_task')})")
    mid = site_api(c, site) if site else None
    t0 = time.perf_counter()
    r = c.delete(f"/overclouds/{d['overcloud_ID']}", params={"wait": "true"}, timeout=TIMEOUT).json()
    delete = time.perf_counter() - t0
    if r.get("status") != "DELETED":
        raise Failed(f"delete on {provider} ended {r.get('status')}: {r.get('error')}")
    out = {"create": create, "delete": delete}
    if site:
        after = site_api(c, site)
        out.update(create_calls=mid["calls"] - before["calls"], delete_calls=after["calls"] - mid["calls"],
                   create_wait=mid["wait_s"] - before["wait_s"], delete_wait=after["wait_s"] - mid["wait_s"])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--number", type=int, default=3, help="clusters per create (the seed's \"number\")")
    ap.add_argument("--max-minutes", type=float, default=45)
    ap.add_argument("--skip", choices=["openstack", "aws"], action="append", default=[])
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the benchmark needs root (network namespaces)")
    # bounded: the whole run ends after --max-minutes, labs and Tower cleaned up by the finally blocks
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(Failed(f"over {args.max_minutes} minutes")))
    signal.alarm(int(args.max_minutes * 60))
    kinds = [k for k in ("openstack", "aws") if k not in args.skip]
    work = Path(tempfile.mkdtemp(prefix="oc-bench-clouds-"))
    labs: dict[str, Path] = {}
    started: list[str] = []
    results: dict[str, list[dict]] = {k: [] for k in ["local", *kinds]}
    try:
        t0 = time.perf_counter()
        errors: dict[str, BaseException] = {}

        def up(kind: str) -> None:
            dev = os.environ.get("OVERCLOUD_OSLAB_DIR") if kind == "openstack" else None
            if dev and (Path(dev) / "sites.yaml").is_file() and lab_up(Path(dev)):
                labs[kind] = Path(dev)
                return
            labs[kind] = work / f"{kind}-lab"
            labs[kind].mkdir()
            started.append(kind)
            try:
                lab_script(kind, "up", str(labs[kind]))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors[kind] = exc

        threads = [threading.Thread(target=up, args=(k,)) for k in kinds]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise Failed("; ".join(str(e) for e in errors.values()))
        print(f"labs up in {time.perf_counter() - t0:.0f} s: {', '.join(f'{k} {v}' for k, v in labs.items())}")
        sites_file = merged_sites([labs[k] / "sites.yaml" for k in kinds], work / "sites.yaml")
        with benchtower.tower(SITES, OVERLAY, env={"OVERCLOUD_SITES_FILE": str(sites_file)}) as c:
            deadline = time.monotonic() + 120
            while True:  # the cloud sites are checked in the background at start
                ready = {d["name"]: d for d in c.get("/underclouds", timeout=60).json()["underclouds"]}
                if all(ready.get(LAB_SITE[k], {}).get("available") is True for k in kinds):
                    break
                if time.monotonic() > deadline:
                    raise Failed(f"cloud sites not available: { {k: ready.get(LAB_SITE[k]) for k in kinds} }")
                time.sleep(1)
            for i in range(args.rounds):
                for kind in ["local", *kinds]:
                    r = one_round(c, kind, args.number, LAB_SITE.get(kind))
                    results[kind].append(r)
                    extra = (f"; API calls {r['create_calls']} + {r['delete_calls']}, waiting on the cloud "
                             f"{r['create_wait']:.1f} s of the create, {r['delete_wait']:.1f} s of the delete"
                             if kind != "local" else "")
                    print(f"round {i} {kind:9s}: create {r['create']:.1f} s, delete {r['delete']:.1f} s{extra}",
                          flush=True)
    except Failed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.alarm(0)
        for kind in started:
            with contextlib.suppress(Exception):
                lab_script(kind, "down", str(labs[kind]), timeout=600)

    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in results.items() if v}
    base = med["local"]
    print(f"\nmedians of {args.rounds} round(s), the seed's request with number={args.number} "
          f"(the Post + {args.number} cluster boxes):")
    print(f"{'site':10s} {'create s':>9s} {'vs local':>9s} {'delete s':>9s} {'vs local':>9s} "
          f"{'API calls c/d':>14s} {'cloud wait c':>13s} {'own work c':>11s} {'seed c / d':>12s}")
    for k, m in med.items():
        row = f"{k:10s} {m['create']:9.1f} {m['create'] / base['create']:8.2f}x {m['delete']:9.1f} " \
              f"{m['delete'] / base['delete']:8.2f}x"
        if k != "local":
            sc, sd = SEED[k]
            row += (f" {m['create_calls']:6.0f} / {m['delete_calls']:<5.0f} {m['create_wait']:12.1f}s "
                    f"{m['create'] - m['create_wait']:10.1f}s {int(sc // 60):4d}m{int(sc % 60):02d}s / {sd:.0f}s")
        print(row)
    print("cloud wait: seconds spent in waiters, polls and backoff, and until the slowest new server answered SSH "
          "(its boot); own work: the rest of the create")
    return 0


if __name__ == "__main__":
    sys.exit(main())
