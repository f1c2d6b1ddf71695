"""The seed's exact request on the OpenStack lab, through a real Tower: {"provider": "OpenStack",
"number": "3", "size": "m1.small"} makes four Nova servers (our compute driver boots each as a
namespace instance with its cloud-init user data), the Tower logs in with the host keys it
generated, prepares them as ssh hosts and makes the Post and three clusters there: READY, DataLake
and Fabric included. DELETE leaves nothing the cloud lists by tag, and no instance.

Then the seed's heterogeneous body across the two kinds ("openstack-1" and "aws-1", both labs up):
READY with one overlay across the clouds, then nothing left in either."""

from __future__ import annotations

import subprocess
import time

import pytest
import yaml

from overcloud.underclouds.cloud.config import load_cloud_sites_file
from overcloud.underclouds.cloud.site import provider_class


def _netns(prefix: str) -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith(prefix)}


def _wait_gone(prefix: str, before: set[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while _netns(prefix) - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not (_netns(prefix) - before), f"instances left running after DELETE: {_netns(prefix) - before}"


def _providers(sites_file, tower_id: str) -> dict:
    return {c.name: provider_class(c.kind)(c, tower_id) for c in load_cloud_sites_file(sites_file)}


@pytest.mark.timeout(1800)
def test_seed_request_on_openstack_ready_then_delete_leaves_nothing(openstack_lab, own_tower):
    before = _netns("osi-")
    t = own_tower(OVERCLOUD_SITES_FILE=str(openstack_lab.sites_file)).start()
    provider = _providers(openstack_lab.sites_file, (t.state_dir / "tower.id").read_text().strip())["openstack-1"]
    with t.client() as c:
        os1 = next(d for d in c.get("/underclouds").json()["underclouds"] if d["name"] == "openstack-1")
        assert os1["kind"] == "openstack" and os1["available"] is True, os1
        t0 = time.monotonic()
        d = c.post("/overclouds", json={"provider": "OpenStack", "number": "3", "size": "m1.small"},
                   params={"wait": "true"}, timeout=1500).json()
        assert d["status"] == "READY", (d.get("error"), t.log.read_text()[-5000:])
        oc = d["overcloud_ID"]
        boxes = [d["post"], *d["clusters"]]
        assert sorted((b["name"], b["site"]) for b in boxes) == [("c1", "openstack-1"), ("c2", "openstack-1"),
                                                                 ("c3", "openstack-1"), ("p0", "openstack-1")]
        servers = provider.list_servers(oc)
        assert sorted(s.name for s in servers) == sorted(f"oc-{oc[:8]}-{b}" for b in ("p0", "c1", "c2", "c3"))
        os1 = next(x for x in c.get("/underclouds").json()["underclouds"] if x["name"] == "openstack-1")
        assert len(os1["hosts"]) == 4 and os1["capacity"]["servers"]["used"] == 4, os1
        print(f"\nseed create on the OpenStack lab: READY in {d['create_seconds']} s "
              f"({time.monotonic() - t0:.1f} s at the client); cloud API calls so far: {os1['api']}")
    t0 = time.monotonic()
    done = t.delete_and_wait(oc, timeout=900)
    assert done["status"] == "DELETED", (done.get("error"), t.log.read_text()[-5000:])
    print(f"delete: DELETED in {time.monotonic() - t0:.1f} s")
    assert provider.list_tagged(oc) == []
    assert provider.list_tagged() == []
    _wait_gone("osi-", before)


@pytest.mark.timeout(1800)
def test_heterogeneous_body_across_openstack_and_aws(openstack_lab, aws_lab, own_tower, tmp_path):
    sites = []
    for f in (openstack_lab.sites_file, aws_lab.sites_file):  # one file, the paths made absolute
        for s in yaml.safe_load(f.read_text()):
            for key in ("clouds_file", "credentials_file"):
                if s.get(key):
                    s[key] = str((f.parent / s[key]).resolve())
            sites.append(s)
    both = tmp_path / "sites.yaml"
    both.write_text(yaml.safe_dump(sites))
    before = _netns("osi-") | _netns("awi-")
    t = own_tower(OVERCLOUD_SITES_FILE=str(both)).start()
    providers = _providers(both, (t.state_dir / "tower.id").read_text().strip())
    with t.client() as c:
        d = c.post("/overclouds", json={"provider": "heterogeneous",
                                        "openstack-1": {"number": "1", "size": "m1.small", "post": "yes"},
                                        "aws-1": {"number": "1", "size": "m1.small"}},
                   params={"wait": "true"}, timeout=1500).json()
        assert d["status"] == "READY", (d.get("error"), t.log.read_text()[-5000:])
        oc = d["overcloud_ID"]
        where = {b["name"]: b["site"] for b in [d["post"], *d["clusters"]]}
        assert where == {"p0": "openstack-1", "c1": "openstack-1", "c2": "aws-1"}, where
        assert d["overlay"] and d["overlay"]["subnet"], d["overlay"]
        print(f"\nheterogeneous create across openstack-1 and aws-1: READY in {d['create_seconds']} s")
        # the Fabric on the Post (openstack-1) scrapes the cluster box on aws-1: across the clouds' WireGuard
        res = c.get(f"/overclouds/{oc}/metrics", params={"query": "up"}).json()["result"]
        node = {r["metric"]["box"]: r["value"][1] for r in res if r["metric"]["job"] == "node"}
        assert node == {"p0": "1", "c1": "1", "c2": "1"}, res  # c2 is on aws-1, scraped from p0 on openstack-1
    done = t.delete_and_wait(oc, timeout=900)
    assert done["status"] == "DELETED", (done.get("error"), t.log.read_text()[-5000:])
    for name, p in providers.items():
        assert p.list_tagged() == [], name
    _wait_gone("osi-", before)
    _wait_gone("awi-", before)
