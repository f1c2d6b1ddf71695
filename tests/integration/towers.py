"""A real Tower process on the real local UnderCloud (needs root), for the integration tests.

Test Towers use their own site bridges and address ranges, so a developer's demo
Tower on the default ones is never touched."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from servers import free_port, wait_http

ROOT = Path(__file__).resolve().parents[2]
OVERCLOUD = str(Path(sys.executable).parent / "overcloud")
TEST_SITES = [
    {"name": "local-a", "kind": "local", "bridge": "oct-a", "cidr": "10.213.110.0/24", "labels": {"overcloud.io/tier": "cloud"}},
    {"name": "local-b", "kind": "local", "bridge": "oct-b", "cidr": "10.213.111.0/24", "labels": {"overcloud.io/tier": "edge"}},
]
TEST_OVERLAY = "10.251.0.0/16"
# a second set for Towers that live for one test (killed, restarted), beside the shared one
OWN_SITES = [
    {"name": "local-a", "kind": "local", "bridge": "oct-c", "cidr": "10.213.112.0/24", "labels": {"overcloud.io/tier": "cloud"}},
    {"name": "local-b", "kind": "local", "bridge": "oct-d", "cidr": "10.213.113.0/24", "labels": {"overcloud.io/tier": "edge"}},
]
OWN_OVERLAY = "10.252.0.0/16"
# the Towers of the tests `make test` runs in its second pytest process (scripts/test.sh: the cloud
# labs and the hosts lab), at the same time as the others: bridges and ranges of their own
SIDE_SITES = [
    {"name": "local-a", "kind": "local", "bridge": "occ-a", "cidr": "10.213.116.0/24", "labels": {"overcloud.io/tier": "cloud"}},
    {"name": "local-b", "kind": "local", "bridge": "occ-b", "cidr": "10.213.117.0/24", "labels": {"overcloud.io/tier": "edge"}},
]
SIDE_OVERLAY = "10.248.0.0/16"


class TowerProcess:
    """``overcloud serve`` in a subprocess, with its own state dir, port, bridges and ranges."""

    def __init__(self, state_dir: Path, sites=TEST_SITES, overlay=TEST_OVERLAY, **env):
        self.state_dir, self.sites, self.overlay = state_dir, sites, overlay
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "OVERCLOUD_STATE_DIR": str(state_dir),
            "OVERCLOUD_SITES": json.dumps(sites),
            "OVERCLOUD_OVERLAY_CIDR": overlay,
            **{k: str(v) for k, v in env.items()},
        }
        self.proc: subprocess.Popen | None = None
        self.log = state_dir / "tower.log"

    def start(self) -> "TowerProcess":
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [OVERCLOUD, "serve", "--port", str(self.port)], env=self.env, stdout=log, stderr=log,
                start_new_session=True,
            )
        wait_http(self.url + "/healthz", timeout=30, proc=self.proc)
        return self

    @property
    def token(self) -> str:
        return (self.state_dir / "admin.token").read_text().strip()

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token or self.token}"}, timeout=60)

    def cli(self, *args: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
        env = {**self.env, "OVERCLOUD_URL": self.url, "COLUMNS": "200"}
        r = subprocess.run([OVERCLOUD, *args], env=env, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"overcloud {' '.join(args)} exited {r.returncode}: {r.stderr}")
        return r

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def wait_status(self, overcloud_id: str, wanted: set[str], timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        with self.client() as c:
            while True:
                d = c.get(f"/overclouds/{overcloud_id}").json()
                if d["status"] in wanted:
                    return d
                if time.monotonic() > deadline:
                    raise AssertionError(f"{overcloud_id} still {d['status']} after {timeout} s: {d.get('error')}")
                time.sleep(0.05)

    def create_two_site(self, clusters_a: int, clusters_b: int, timeout: float = 240) -> dict:
        """A READY OverCloud from the seed's heterogeneous body: the Post and ``clusters_a``
        small clusters on local-a, ``clusters_b`` on local-b."""
        with self.client() as c:
            d = c.post("/overclouds", json={"provider": "heterogeneous",
                                            "local-a": {"number": str(clusters_a), "size": "small", "post": "yes"},
                                            "local-b": {"number": str(clusters_b), "size": "small"}},
                       params={"wait": "true"}, timeout=timeout).json()
        assert d["status"] == "READY", d["error"]
        return d

    def delete_and_wait(self, overcloud_id: str, timeout: float = 150) -> dict:
        """Delete and wait for DELETED or FAILED; returns the final detail. A refused delete
        fails here with the Tower's answer (not as a wait that outlives pytest's timeout)."""
        with self.client() as c:
            r = c.delete(f"/overclouds/{overcloud_id}")
        assert r.status_code in (200, 202), f"DELETE {overcloud_id}: {r.status_code} {r.text}"
        return self.wait_status(overcloud_id, {"DELETED", "FAILED"}, timeout=timeout)

    def cleanup(self) -> None:
        """Delete every OverCloud left, stop, and remove the test sites; fail if anything remains."""
        if self.proc is not None and self.proc.poll() is None:
            with self.client() as c:
                for oc in c.get("/overclouds").json():
                    if oc["status"] in ("READY", "FAILED", "DEGRADED"):
                        c.delete(f"/overclouds/{oc['overcloud_ID']}")
                    if oc["status"] != "DELETED":
                        d = self.wait_status(oc["overcloud_ID"], {"DELETED", "FAILED"}, timeout=120)
                        if d["status"] == "FAILED":  # e.g. its Post is gone: delete is still possible
                            c.delete(f"/overclouds/{oc['overcloud_ID']}", params={"preserve": "false"})
                            self.wait_status(oc["overcloud_ID"], {"DELETED", "FAILED"}, timeout=120)
        self.stop()
        from overcloud.components.construction import ConstructionDataLake

        ConstructionDataLake(self.state_dir).stop()  # the Tower's own store outlives the Tower
        host = local_host(self.state_dir, self.sites, self.overlay)
        left = host.list_tagged()
        if left:
            host.sweep({r.overcloud_id for r in left})
        host.teardown_sites()
        assert not left, f"the test Tower left resources behind: {[r.name for r in left][:10]}"


def own_towers(directory: Path, sites, overlay):
    """The body of an ``own_tower`` fixture: yields ``make(**env)``, which gives the test its one
    Tower on ``sites``/``overlay`` (not started), and cleans it up after the test."""
    towers: list[TowerProcess] = []

    def make(**env) -> TowerProcess:
        assert not towers, "one own Tower per test: they share the same bridges"
        t = TowerProcess(directory, sites=sites, overlay=overlay, **env)
        towers.append(t)
        return t

    yield make
    for t in towers:
        t.cleanup()


def local_host(state_dir: Path, sites=TEST_SITES, overlay=TEST_OVERLAY):
    """The same LocalHost the Tower in ``state_dir`` uses (to look at or sweep what it made)."""
    from overcloud.config import tower_identity
    from overcloud.underclouds.local import LocalHost, LocalSiteConfig

    return LocalHost(
        state_dir / "local",
        sites=[LocalSiteConfig(name=s["name"], bridge=s["bridge"], cidr=s["cidr"]) for s in sites],
        overlay_cidr=overlay,
        tower_id=tower_identity(state_dir),  # the Tower's own: it sees (and sweeps) what that Tower made
    )


def wait_for(fn, what: str, bound: float = 20.0):
    """Poll a condition (bounded); the assertion is the condition, not the time it took."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not seen within {bound} s")
