#!/usr/bin/env python3
"""Remote hosts (ssh sites) against the local UnderCloud, in one run on the simulated hosts lab
(scripts/hosts-lab.sh: two sites, ssh-a and ssh-b, of two hosts each, in a temp dir, removed at
the end, even on error), with one Tower that has both the local sites and the lab's sites file:

* create and delete of Post + 3 clusters over two sites with DataLake and Fabric (ssh-a: Post + 2,
  ssh-b: 1) against the same shape on the local UnderCloud, as ratios (targets: create <= 1.5x,
  delete <= 2x): ``--rounds`` rounds, each printed, medians compared;
* SSH round trips per create and per delete (the Tower's ``overcloud_ssh_round_trips_total``,
  summed over the hosts, read from /metrics before and after);
* S3 PUT and GET throughput from a cluster box at ssh-b to the Post's S3 at ssh-a (VXLAN over
  WireGuard across the WAN) against the same client and server on the local UnderCloud (VXLAN
  over plain veths and bridges): MB/s and the ratio. The client is boto3 in this process, in
  the box's network namespace, which it enters from the outside (the netns's inode is read on
  the host with nsenter, like the tests' ``HostsLab.outside``; the Tower itself never does);
  the same from a cluster box at ssh-a (same site, VXLAN in clear on the site's LAN) for context,
  and one plain TCP stream box -> Post over both overlays (the path without SeaweedFS);
* the cold first create on ssh sites (a Tower on a fresh state dir, the create sent as soon as
  /healthz answers, as bench/coldstart.py does; the hosts are prepared meanwhile) against the
  warm creates (target <= 1.5x). Round 0 is also the hosts' first (no bundle, no ``weed`` in
  their caches); ``--cold-rounds`` more start a new Tower on a fresh state dir each, with the
  hosts' disks as the earlier Towers left them.

Prints every round and a table with targets and PASS/MISS; exits 0 on a MISS (a benchmark
reports), 1 when a create or delete fails. Bounded: ``--max-minutes`` for the whole run, 300 s
per request. Root; own bridges (ocbrm-a/-b) and address ranges on the local side.
Usage: bench/remote.py [--rounds 3] [--cold-rounds 1] [--mb 32] [--max-minutes 40]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import benchtower
from datalake import throughput

REPO = Path(__file__).resolve().parents[1]
LAB_SCRIPT = REPO / "scripts" / "hosts-lab.sh"
HOSTS = ("och-a1", "och-a2", "och-b1", "och-b2")
SITES = [
    {"name": "local-a", "kind": "local", "bridge": "ocbrm-a", "cidr": "10.213.130.0/24"},
    {"name": "local-b", "kind": "local", "bridge": "ocbrm-b", "cidr": "10.213.131.0/24"},
]
OVERLAY = "10.254.0.0/16"
TIMEOUT = 300  # per request: a create that hangs ends the run, not the machine


def body(a: str, b: str) -> dict:
    return {"name": "remote", "datalake": {"enabled": True}, "fabric": {"enabled": True},
            "sites": [{"undercloud": a, "clusters": 2, "post": True}, {"undercloud": b, "clusters": 1}]}


SSH, LOCAL = body("ssh-a", "ssh-b"), body("local-a", "local-b")


class Failed(Exception):
    pass


class Trips(tuple):
    """(SSH channels, kept-agent requests); their sum is the round trips."""

    def __new__(cls, channels: int, calls: int):
        return super().__new__(cls, (channels, calls))

    def __sub__(self, other: "Trips") -> "Trips":
        return Trips(self[0] - other[0], self[1] - other[1])

    @property
    def total(self) -> int:
        return self[0] + self[1]

    def __str__(self) -> str:
        return f"{self.total} SSH round trips ({self[0]} channels + {self[1]} agent requests)"


def round_trips(c) -> Trips:
    """Exchanges with every host since the Tower started (its /metrics): SSH channels (commands,
    file transfers, streams opened) and requests to the hosts' kept agents."""
    text = c.get("/metrics").text

    def total(name: str) -> int:
        return sum(int(float(v)) for v in re.findall(rf'^{name}_total\{{host="[^"]+"\}} (\S+)$', text, re.M))

    return Trips(total("overcloud_ssh_round_trips"), total("overcloud_ssh_agent_calls"))


def create(c, b: dict) -> tuple[float, Trips, dict]:
    rt0, t0 = round_trips(c), time.perf_counter()
    d = c.post("/overclouds", json=b, params={"wait": "true"}, timeout=TIMEOUT).json()
    took = time.perf_counter() - t0
    if d.get("status") != "READY":
        raise Failed(f"create on {b['sites'][0]['undercloud']} ended {d.get('status')}: {d.get('error')}")
    return took, round_trips(c) - rt0, d


def delete(c, oc: str) -> tuple[float, Trips]:
    rt0, t0 = round_trips(c), time.perf_counter()
    r = c.delete(f"/overclouds/{oc}", params={"wait": "true"}, timeout=TIMEOUT).json()
    took = time.perf_counter() - t0
    if r.get("status") != "DELETED":
        raise Failed(f"delete of {oc} ended {r.get('status')}: {r.get('error')}")
    return took, round_trips(c) - rt0


def tasks(d: dict, workflow: str = "create_overcloud") -> str:
    return ", ".join(f"{t['task']} {t['duration_s']:.1f}" for t in d["workflow"]["workflows"][workflow]
                     if t.get("duration_s") is not None and t["duration_s"] >= 0.3)


def steps(d: dict) -> str:
    """The DataLake task's own steps (s)."""
    return ", ".join(f"{k} {v:.1f}" for k, v in (d.get("datalake") or {}).get("steps_seconds", {}).items() if v >= 0.3)


def delete_tasks(c, oc: str) -> str:
    return tasks({"workflow": c.get(f"/overclouds/{oc}/workflow").json()}, "delete_overcloud")


# -- the lab ---------------------------------------------------------------------------------------
def lab(*args: str) -> None:
    r = subprocess.run(["bash", str(LAB_SCRIPT), *args], capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise Failed(f"scripts/hosts-lab.sh {' '.join(args)}: {r.stderr.strip()}")


def host_init(lab_dir: Path, host: str) -> int:
    lines = (lab_dir / "hosts" / host / "pids").read_text().split("\n")
    return int([ln.split()[1] for ln in lines if ln.startswith("init ")][-1])


def box_netns(lab_dir: Path, handle: str) -> str:
    """A path this process can setns() to for a box on a lab host: /proc/<pid>/ns/net of a
    process living in it (found by the namespace's inode, read on the host)."""
    from overcloud.boxes.netns import pids_by_netns_inode

    for host in HOSTS:
        r = subprocess.run(["nsenter", "-t", str(host_init(lab_dir, host)), "--net", "--mount", "--",
                            "stat", "-L", "-c", "%i", f"/run/netns/{handle}"], capture_output=True, text=True, timeout=30)
        if r.returncode == 0:
            pids = pids_by_netns_inode().get(int(r.stdout))
            if not pids:
                raise Failed(f"no process lives in box {handle}'s namespace on {host}")
            return f"/proc/{pids[0]}/ns/net"
    raise Failed(f"box {handle} is on no lab host")


def ssh_cleanup(sites_file: Path):
    """The ssh hosts' teardown after a Tower stops: sweep what it left, remove bridges and WAN."""

    def cleanup(state: Path) -> None:
        from overcloud.underclouds.ssh.driver import clear_hosts_after
        from overcloud.underclouds.ssh.sites import load_ssh_sites_file

        left = clear_hosts_after(load_ssh_sites_file(sites_file), state)
        print(f"ssh hosts: nothing left behind: {not left}" + (f" (swept {[r.name for r in left][:10]})" if left else ""))

    return cleanup


# -- the measurements ------------------------------------------------------------------------------
def tcp_upload(client_ns: str, server_ns: str, addr: str, total: int, port: int = 5299) -> float:
    """MB/s of one plain TCP stream from a box to ``addr`` in another box (the overlay, no S3):
    what the path itself carries, to tell the tunnel's cost from SeaweedFS's."""
    from overcloud.boxes.netns import run_in_netns

    ready, done = threading.Event(), {}

    def sink() -> None:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, port))
            s.listen(1)
            s.settimeout(30)
            ready.set()
            conn, _ = s.accept()
            with conn:
                n = 0
                while chunk := conn.recv(1 << 20):
                    n += len(chunk)
                conn.sendall(str(n).encode())
                done["n"] = n

    def source() -> float:
        buf = os.urandom(1 << 16)
        with socket.create_connection((addr, port), timeout=30) as conn:
            t0, sent = time.perf_counter(), 0
            while sent < total:
                conn.sendall(buf)
                sent += len(buf)
            conn.shutdown(socket.SHUT_WR)
            got = int(conn.recv(64))
            took = time.perf_counter() - t0
        if got != sent:
            raise Failed(f"TCP to {addr}: {got} of {sent} bytes arrived")
        return sent / took / 1e6

    server = threading.Thread(target=run_in_netns, args=(server_ns, sink), daemon=True)
    server.start()
    if not ready.wait(10):
        raise Failed(f"no TCP sink at {addr}")
    try:
        return run_in_netns(client_ns, source)
    finally:
        server.join(35)


def throughputs(c, lab_dir: Path, mb: int, rounds: int) -> tuple[dict[str, tuple[float, float]], dict[str, float]]:
    """Median PUT/GET MB/s: cluster at ssh-b -> Post at ssh-a (WireGuard), cluster at ssh-a -> Post
    (same site), cluster at local-b -> Post at local-a (plain veths); interleaved rounds. And one
    plain TCP stream over the same overlay paths (ssh-b and local) per round."""
    made = []
    try:
        clients, posts = {}, {}
        for b, kind in ((SSH, "ssh"), (LOCAL, "local")):
            _, _, d = create(c, b)
            made.append(d["overcloud_ID"])
            cr = c.get(f"/overclouds/{d['overcloud_ID']}/datalake/credentials").json()
            post = d["post"]
            posts[kind] = (box_netns(lab_dir, post["handle"]) if kind == "ssh" else post["handle"], post["overlay_address"])
            for cl in d["clusters"]:
                if kind == "ssh":
                    clients.setdefault(f"ssh-{cl['site'][-1]}", (box_netns(lab_dir, cl["handle"]), cr))
                elif cl["site"] == "local-b":
                    clients.setdefault("local", (cl["handle"], cr))
        tcp: dict[str, list[float]] = {"ssh-b": [], "local": []}
        for name, (ns, cr) in clients.items():
            throughput(ns, cr, 16, f"warm-{name}")  # the bucket's first writes grow its volumes
        runs: dict[str, list[tuple[float, float]]] = {k: [] for k in clients}
        for r in range(rounds):
            for name, (ns, cr) in clients.items():
                runs[name].append(throughput(ns, cr, mb, f"{name}{r}"))
            print(f"  S3 round {r}: " + "; ".join(f"{k} PUT {v[-1][0]:.0f} GET {v[-1][1]:.0f} MB/s" for k, v in runs.items()))
            for name, kind in (("ssh-b", "ssh"), ("local", "local")):
                tcp[name].append(tcp_upload(clients[name][0], posts[kind][0], posts[kind][1], mb * 4 * 1024 * 1024))
            print(f"  TCP round {r}: " + "; ".join(f"{k} {v[-1]:.0f} MB/s" for k, v in tcp.items()))
        return ({k: (statistics.median(p for p, _ in v), statistics.median(g for _, g in v)) for k, v in runs.items()},
                {k: statistics.median(v) for k, v in tcp.items()})
    finally:
        for oc in made:
            delete(c, oc)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3, help="ssh + local create/delete rounds (medians)")
    ap.add_argument("--cold-rounds", type=int, default=1,
                    help="more cold creates, each on a new Tower and fresh state dir (hosts' disks kept)")
    ap.add_argument("--mb", type=int, default=32, help="MB per S3 throughput run")
    ap.add_argument("--s3-rounds", type=int, default=3)
    ap.add_argument("--max-minutes", type=float, default=40, help="the whole run's bound")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the benchmark needs root (network namespaces, the hosts lab)")

    def out_of_time(*_):
        raise Failed(f"the run took more than {args.max_minutes} minutes")

    signal.signal(signal.SIGALRM, out_of_time)
    signal.alarm(int(args.max_minutes * 60))
    lab_dir = Path(tempfile.mkdtemp(prefix="oc-bench-lab-"))
    sites_file = lab_dir / "sites.yaml"
    env = {"OVERCLOUD_SITES_FILE": str(sites_file)}
    R: dict[str, list] = {k: [] for k in ("ssh_c", "ssh_d", "loc_c", "loc_d", "rt_c", "rt_d", "cold", "cold_fresh")}
    try:
        t0 = time.perf_counter()
        lab("up", str(lab_dir))
        print(f"hosts lab up in {time.perf_counter() - t0:.1f} s ({lab_dir})")
        t0 = time.perf_counter()
        with benchtower.tower(SITES, OVERLAY, env=env, cleanup=ssh_cleanup(sites_file)) as c:
            health = time.perf_counter() - t0
            took, rt, d = create(c, SSH)  # cold: fresh state dir, fresh hosts
            R["cold_fresh"].append(took)
            print(f"cold create (fresh state dir, hosts never prepared; /healthz after {health:.1f} s): "
                  f"{took:.1f} s, {rt} (preparation included); tasks: {tasks(d)}; datalake steps: {steps(d)}")
            delete(c, d["overcloud_ID"])
            for r in range(args.rounds):
                sc, rc, d = create(c, SSH)
                sd, rd = delete(c, d["overcloud_ID"])
                lc, _, dl = create(c, LOCAL)
                ld, _ = delete(c, dl["overcloud_ID"])
                for k, v in zip(("ssh_c", "rt_c", "ssh_d", "rt_d", "loc_c", "loc_d"), (sc, rc, sd, rd, lc, ld)):
                    R[k].append(v)
                print(f"round {r}: ssh create {sc:.1f} s ({rc}), delete {sd:.1f} s ({rd}); "
                      f"local create {lc:.1f} s, delete {ld:.1f} s; ratios {sc / lc:.2f}x, {sd / ld:.2f}x")
                print(f"   ssh tasks: {tasks(d)}; datalake steps: {steps(d)}; delete: {delete_tasks(c, d['overcloud_ID'])}")
                print(f"   local tasks: {tasks(dl)}; delete: {delete_tasks(c, dl['overcloud_ID'])}")
            tp, tcp = throughputs(c, lab_dir, args.mb, args.s3_rounds)
        for r in range(args.cold_rounds):
            t0 = time.perf_counter()
            with benchtower.tower(SITES, OVERLAY, env=env, cleanup=ssh_cleanup(sites_file)) as c:
                health = time.perf_counter() - t0
                took, rt, d = create(c, SSH)
                R["cold"].append(took)
                print(f"cold create {r + 1} (new Tower, fresh state dir; hosts keep bundle and weed; /healthz after "
                      f"{health:.1f} s): {took:.1f} s, {rt}; tasks: {tasks(d)}; datalake steps: {steps(d)}")
                delete(c, d["overcloud_ID"])
    except Failed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.alarm(0)
        try:
            from overcloud.underclouds.ssh.transport import shutdown

            shutdown()
        finally:
            try:
                lab("down", str(lab_dir))
                shutil.rmtree(lab_dir, ignore_errors=True)
                print("hosts lab down")
            except (Failed, subprocess.SubprocessError) as exc:
                print(f"hosts lab NOT down ({exc}): run scripts/hosts-lab.sh down {lab_dir}", file=sys.stderr)

    med = {k: statistics.median(v) for k, v in R.items() if v and k not in ("rt_c", "rt_d")}

    def spread(trips: list[Trips]) -> str:
        t = sorted(trips, key=lambda x: x.total)[len(trips) // 2]
        return f"{t.total} = {t[0]} + {t[1]} (min {min(x.total for x in trips)}, max {max(x.total for x in trips)})"

    rows = [
        ("create ssh / local (median s)", f"{med['ssh_c']:.1f} / {med['loc_c']:.1f} = {med['ssh_c'] / med['loc_c']:.2f}x",
         "<= 1.5x", med["ssh_c"] / med["loc_c"] <= 1.5),
        ("delete ssh / local (median s)", f"{med['ssh_d']:.1f} / {med['loc_d']:.1f} = {med['ssh_d'] / med['loc_d']:.2f}x",
         "<= 2x", med["ssh_d"] / med["loc_d"] <= 2.0),
        ("SSH round trips per create (channels+agent)", spread(R["rt_c"]), "", None),
        ("SSH round trips per delete (channels+agent)", spread(R["rt_d"]), "", None),
    ]
    (wp, wg), (lp, lg) = tp["ssh-b"], tp["local"]
    rows += [
        ("S3 PUT ssh-b -> ssh-a (WireGuard) / local", f"{wp:.0f} / {lp:.0f} MB/s = {wp / lp:.2f}", "", None),
        ("S3 GET ssh-b -> ssh-a (WireGuard) / local", f"{wg:.0f} / {lg:.0f} MB/s = {wg / lg:.2f}", "", None),
    ]
    if "ssh-a" in tp:
        ap_, ag = tp["ssh-a"]
        rows.append(("S3 PUT / GET ssh-a -> ssh-a (same site, LAN)", f"{ap_:.0f} / {ag:.0f} MB/s", "", None))
    rows.append(("plain TCP box -> Post, ssh-b -> ssh-a / local", f"{tcp['ssh-b']:.0f} / {tcp['local']:.0f} MB/s = "
                 f"{tcp['ssh-b'] / tcp['local']:.2f}", "", None))
    warm = med["ssh_c"]
    rows.append(("cold first create / warm (fresh hosts)", f"{med['cold_fresh']:.1f} / {warm:.1f} = "
                 f"{med['cold_fresh'] / warm:.2f}x", "<= 1.5x", med["cold_fresh"] / warm <= 1.5))
    if R["cold"]:
        rows.append(("cold first create / warm (prepared hosts)", f"{med['cold']:.1f} / {warm:.1f} = "
                     f"{med['cold'] / warm:.2f}x", "<= 1.5x", med["cold"] / warm <= 1.5))
    print(f"\nOverCloud = Post + 3 clusters over 2 sites with DataLake and Fabric; {args.rounds} rounds, "
          f"S3: {args.s3_rounds} rounds of {args.mb} MB in 4 MiB objects, 4 streams")
    w = max(len(r[0]) for r in rows)
    for name, value, target, ok in rows:
        verdict = "" if ok is None else ("PASS" if ok else "MISS")
        print(f"{name:<{w}}  {value:<34} {target:<8} {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
