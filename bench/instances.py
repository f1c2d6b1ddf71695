"""Namespace instances (lab/instance.py): boot and kill times, memory and disk per instance.

    sudo .venv/bin/python bench/instances.py [--count 4] [--cold]

Boots COUNT instances at once (threads, as the AWS harness and Nova's compute do) on one bridge
of 10.91.249.0/24, with the drivers' user data; prints each boot's time, the instances' memory
(RSS and PSS of their processes: init, sshd, and the unshare holding them), the overlay upper
dir's size, then kills them and prints the kill times. ``--cold`` first removes the cached
rootfs (the one build per machine is timed). Run it under the integration lock
(flock /tmp/oc-integ.lock) when tests may run.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lab"))
import instance  # noqa: E402

from overcloud.underclouds.cloud import userdata  # noqa: E402


def mem_kb(pid: int) -> tuple[int, int]:
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def tree(pid: int) -> list[int]:
    out = [pid]
    for p in out:
        try:
            out += [int(x) for x in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=4)
    ap.add_argument("--cold", action="store_true")
    a = ap.parse_args()
    if a.cold:
        shutil.rmtree(instance.CACHE / instance.rootfs_key(), ignore_errors=True)
    t0 = time.monotonic()
    root = instance.rootfs()
    print(f"rootfs {root}: {time.monotonic() - t0:.1f} s ({'built' if a.cold else 'cached'}); "
          f"{subprocess.run(['du', '-sh', str(root)], capture_output=True, text=True).stdout.split()[0]}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-instances-"))
    _, pub = userdata.client_key(tmp / "keys")
    ud = userdata.user_data("overcloud", pub, userdata.new_host_key())
    names = [f"bench-i{i}" for i in range(a.count)]
    results: dict[str, dict | Exception] = {}

    def one(i: int, n: str) -> None:
        try:
            results[n] = instance.boot(n, tmp, "bench-br", "10.91.249.1/24", f"10.91.249.{10 + i}/24", ud)
        except Exception as exc:
            results[n] = exc

    t0 = time.monotonic()
    threads = [threading.Thread(target=one, args=(i, n)) for i, n in enumerate(names)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    try:
        for n in names:
            r = results[n]
            if isinstance(r, Exception):
                print(f"{n}: FAILED {r}")
                continue
            pids = [p for _, p, _ in instance._read_pids(tmp / n)]
            procs = sorted({q for p in pids for q in tree(p)})
            rss = sum(mem_kb(p)[0] for p in procs)
            pss = sum(mem_kb(p)[1] for p in procs)
            cg = Path(f"/sys/fs/cgroup/memory/{instance.CGROUP_PARENT}/{n}/memory.usage_in_bytes")
            cgmem = f"; cgroup memory {int(cg.read_text()) / 2**20:.1f} MB (page cache included)" if cg.exists() else ""
            upper = subprocess.run(["du", "-sk", str(tmp / n / "disk")], capture_output=True, text=True).stdout.split()[0]
            print(f"{n}: boot {r['boot_s']:.2f} s; {len(procs)} processes RSS {rss / 1024:.1f} MB PSS {pss / 1024:.1f} MB; "
                  f"disk (upper) {int(upper) / 1024:.1f} MB{cgmem}; cloud-init errors {r['cloud_init_errors']}")
        print(f"{a.count} at once: {wall:.2f} s wall")
    finally:
        for n in names:
            t0 = time.monotonic()
            instance.kill(n, tmp)
            print(f"{n}: kill {time.monotonic() - t0:.2f} s")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
