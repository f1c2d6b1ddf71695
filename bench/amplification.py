"""How long a Tower takes to refuse each input that once amplified (issue 10, point 7), and
how much its memory grows over all of them. Target: every refusal under 1 s, growth under
50 MB. The inputs are tests/integration/amplifiers.py's (the integration test asserts the
refusals and the memory; timings are printed here only).

Runs as root on the local UnderCloud with a bridge of its own (ocamp-a) and address ranges;
cleans up after itself.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import benchtower

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
from amplifiers import inputs, rss_bytes  # noqa: E402

SITES = [{"name": "local-a", "kind": "local", "bridge": "ocamp-a", "cidr": "10.213.124.0/24"}]
MB = 2**20


def main() -> None:
    hostile = inputs()
    with benchtower.tower(SITES, "10.247.0.0/16") as c:
        d = c.post("/overclouds", json={"name": "amp", "sites": [{"undercloud": "local-a", "clusters": 1}],
                                        "datalake": {"enabled": False}, "fabric": {"enabled": False}},
                   params={"wait": "true"}).json()
        assert d["status"] == "READY", d.get("error")
        oid = d["overcloud_ID"]
        pid = _serve_pid(c.base_url.port)
        c.post(f"/overclouds/{oid}/services", content=b"kind: Nope\n", headers={"Content-Type": "application/yaml"})
        before = rss_bytes(pid)
        print(f"{'input':38} {'bytes':>10} {'status':>6} {'seconds':>8} {'answer bytes':>12}")
        slowest = 0.0
        for x in hostile:
            start = time.perf_counter()
            r = c.request(x.method, x.path.format(oc=oid), content=x.body, headers={"Content-Type": x.content_type})
            took = time.perf_counter() - start
            slowest = max(slowest, took)
            print(f"{x.name:38} {len(x.body):>10} {r.status_code:>6} {took:>8.3f} {len(r.content):>12}")
        grown = rss_bytes(pid) - before
        print(f"slowest refusal {slowest:.3f} s (target < 1 s); Tower RSS grew {grown / MB:.1f} MB (target < 50 MB)")
        c.delete(f"/overclouds/{oid}", params={"wait": "true"})


def _serve_pid(port: int) -> int:
    """The `overcloud serve` listening on ``port`` (the benchmark's own Tower)."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"serve" in argv and str(port).encode() in argv:
                return int(proc.name)
    raise LookupError(f"no overcloud serve on port {port}")


if __name__ == "__main__":
    main()
