"""End to end ACROSS the two clouds, through one real Tower whose sites are both labs (issue 12,
testing 3: the heterogeneous body across openstack and aws; DataLake, Fabric and the smart-energy
pattern across the two; delete leaves nothing in either cloud and nothing on any instance).

* The seed's heterogeneous body spanning kinds: the Post and c1 on openstack-1 (Nova servers
  booted as namespace instances by the OpenStack lab's compute driver), c2 on aws-1 (an EC2
  instance of moto booted by the AWS lab's harness): READY with the DataLake and the Fabric; the
  Post's Prometheus on openstack-1 scrapes c2 on aws-1 across the WireGuard between the clouds.
* The smart-energy pattern composed onto it on the process runtime: openstack-1 is the cloud tier
  (its lab's label), aws-1 the edge tier (this test's sites file labels it so): broker and sensors
  on aws-1, collector, analyzer, notifier and dashboard on openstack-1, every replica READY. The
  sensors' readings cross from aws-1 to the collector on openstack-1 and land in the DataLake on
  the Post (read with a signed S3 client at the Post's published address); the dashboard's
  NodePort answers at its host's address.
* DELETE: DELETED; each provider lists nothing tagged by this Tower; every namespace instance the
  OverCloud booted (osi-*, awi-*) is gone, and no process of the OverCloud is left on the machine
  (the boxes lived in the instances' PID namespaces).

Prints [measure] lines. Uses the labs of the session (OVERCLOUD_OSLAB_DIR: a running OpenStack lab).
"""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from overcloud.underclouds.cloud.config import load_cloud_sites_file
from overcloud.underclouds.cloud.site import provider_class

from cloud_sites import merge_sites

pytestmark = [pytest.mark.root]

ROOT = Path(__file__).resolve().parents[3]
SMART = ROOT / "patterns" / "smart_energy"
PATTERN = (SMART / "smart-energy.yaml").read_text()
BODY = {"provider": "heterogeneous",
        "openstack-1": {"number": "1", "size": "m1.small", "post": "yes"},
        "aws-1": {"number": "1", "size": "m1.small"}}


def _netns(*prefixes: str) -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith(prefixes)}


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - a lab address
        return r.status, r.read()


def _measure(what: str, seconds: float) -> None:
    print(f"\n[measure] {what}: {seconds:.1f}s", flush=True)


@pytest.mark.timeout(2400)
def test_heterogeneous_openstack_aws_with_smart_energy_then_nothing_left(openstack_lab, aws_lab, own_tower,
                                                                          tmp_path):
    import boto3
    import botocore.config

    sites_file = merge_sites([openstack_lab.sites_file, aws_lab.sites_file], tmp_path / "sites.yaml",
                             overrides={"aws-1": {"labels": {"overcloud.io/tier": "edge"}}})
    before = _netns("osi-", "awi-")
    t = own_tower(OVERCLOUD_SITES_FILE=str(sites_file)).start()
    tower_id = (t.state_dir / "tower.id").read_text().strip()
    providers = {s.name: provider_class(s.kind)(s, tower_id) for s in load_cloud_sites_file(sites_file)}
    assert sorted(providers) == ["aws-1", "openstack-1"]
    t0 = time.monotonic()
    t.cli("images", "build", str(SMART), "--runtime", "process", check=True, timeout=900)
    _measure("images build smart-energy (process runtime)", time.monotonic() - t0)

    with t.client() as c:
        deadline = time.monotonic() + 120  # cloud sites are checked in the background at start
        while True:
            us = {d["name"]: d for d in c.get("/underclouds", timeout=60).json()["underclouds"]}
            if all(us.get(n, {}).get("available") is True for n in providers):
                break
            assert time.monotonic() < deadline, {n: us.get(n) for n in providers}
            time.sleep(1)

        # 1. the heterogeneous body across the two kinds
        t0 = time.monotonic()
        d = c.post("/overclouds", json=BODY, params={"wait": "true"}, timeout=1500).json()
        create_s = time.monotonic() - t0
        assert d["status"] == "READY", (d.get("error"), d.get("error_task"), t.log.read_text()[-6000:])
        oc = d["overcloud_ID"]
        _measure(f"heterogeneous create openstack-1 (post + 1) + aws-1 (1) READY (server says "
                 f"{d.get('create_seconds')} s)", create_s)
        where = {b["name"]: b["site"] for b in [d["post"], *d["clusters"]]}
        assert where == {"p0": "openstack-1", "c1": "openstack-1", "c2": "aws-1"}, where
        assert d["datalake"] and d["fabric"] and d["overlay"], d
        servers = {n: p.list_servers(oc) for n, p in providers.items()}
        assert sorted(s.name for s in servers["openstack-1"]) == [f"oc-{oc[:8]}-c1", f"oc-{oc[:8]}-p0"]
        assert [s.name for s in servers["aws-1"]] == [f"oc-{oc[:8]}-c2"]
        mine = _netns("osi-", "awi-") - before  # the OverCloud's namespace instances
        assert len({n for n in mine if n.startswith("osi-")}) == 2 and len({n for n in mine if n.startswith("awi-")}) == 1, mine
        # the Fabric on the Post (openstack-1) scrapes node-exporter of c2 (aws-1) over the WireGuard between them
        deadline = time.monotonic() + 60
        while True:
            res = c.get(f"/overclouds/{oc}/metrics", params={"query": "up"}).json()["result"]
            node = {r["metric"]["box"]: r["value"][1] for r in res if r["metric"].get("job") == "node"}
            if node == {"p0": "1", "c1": "1", "c2": "1"}:
                break
            assert time.monotonic() < deadline, res
            time.sleep(2)
        api_after_create = {n: us["api"] for n, us in
                            ((x["name"], x) for x in c.get("/underclouds").json()["underclouds"]) if n in providers}
        print(f"[measure] cloud API through READY (start and GET /underclouds included): {api_after_create}")

        # 2. the smart-energy pattern composed onto it, on the process runtime
        t0 = time.monotonic()
        r = c.post(f"/overclouds/{oc}/services", content=PATTERN, headers={"Content-Type": "application/yaml"},
                   params={"runtime": "process", "wait": "true", "timeout": "300"}, timeout=400)
        assert r.status_code == 201, r.text
        _measure("compose smart-energy (process) across openstack-1 + aws-1", time.monotonic() - t0)
        svc = {s["name"]: s for s in c.get(f"/overclouds/{oc}/services").json()}
        assert all(s["status"] == "READY" for s in svc.values()), \
            {n: (s["status"], s["message"]) for n, s in svc.items()}
        sites = {n: {rep["site"] for rep in s["replicas"]} for n, s in svc.items()}
        assert sites["broker"] == {"aws-1"} and sites["sensors"] == {"aws-1"}, sites  # edge tier
        for n in ("collector", "analyzer", "dashboard", "notifier"):
            assert sites[n] == {"openstack-1"}, sites  # cloud tier
        detail = c.get(f"/overclouds/{oc}").json()
        creds = c.get(f"/overclouds/{oc}/datalake/credentials").json()
        dash = c.get(f"/overclouds/{oc}/services/dashboard", params={"logs": 5}).json()
    # the dashboard's NodePort at its host's (an OpenStack server's) address, from this machine
    [url] = dash["services"][0]["urls"]
    assert url.startswith("http://10.90.") and url.endswith(":30850"), url
    deadline = time.monotonic() + 30
    while True:
        try:
            status, body = _get(url + "/")
            break
        except OSError:
            assert time.monotonic() < deadline, url
            time.sleep(0.5)
    assert status == 200 and body
    # readings: sensors (aws-1) -> broker (aws-1) -> collector (openstack-1) -> the DataLake on the Post
    s3_url = detail["datalake"]["published"]["s3"]
    s3 = boto3.client("s3", endpoint_url=s3_url, aws_access_key_id=creds["access_key"],
                      aws_secret_access_key=creds["secret_key"], region_name="us-east-1",
                      config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                                                    connect_timeout=5, read_timeout=20))
    bucket = creds["buckets"][0]
    t0 = time.monotonic()
    deadline = t0 + 120
    while not s3.list_objects_v2(Bucket=bucket, Prefix="readings/").get("KeyCount"):
        assert time.monotonic() < deadline, ("no reading reached the DataLake", t.log.read_text()[-4000:])
        time.sleep(1)
    _measure("first reading in the DataLake after READY services (aws-1 sensors -> openstack-1 collector)",
             time.monotonic() - t0)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="readings/").get("Contents", [])]
    assert any(k.startswith("readings/device=") for k in keys), keys

    # 3. DELETE: nothing left in either cloud, no instance, nothing of the OverCloud on the machine
    t0 = time.monotonic()
    done = t.delete_and_wait(oc, timeout=900)
    delete_s = time.monotonic() - t0
    assert done["status"] == "DELETED", (done.get("error"), t.log.read_text()[-6000:])
    _measure("heterogeneous delete (with the services) DELETED", delete_s)
    for name, p in providers.items():
        assert p.list_tagged(oc) == [], name
        assert p.list_tagged() == [], name
    deadline = time.monotonic() + 120  # the AWS harness kills a terminated instance at its next poll
    while _netns("osi-", "awi-") & mine and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not (_netns("osi-", "awi-") & mine), f"instances left after DELETE: {_netns('osi-', 'awi-') & mine}"
    _measure("DELETE to every namespace instance gone", time.monotonic() - t0)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert oc[:8] not in ps and oc[:12] not in ps, [line for line in ps.splitlines() if oc[:8] in line]
    with t.client() as c:
        for x in c.get("/underclouds").json()["underclouds"]:
            if x["name"] in providers:
                assert x["hosts"] == [] and x["capacity"]["servers"]["used"] == 0, x
