"""Two OverClouds on one cloud site at once: each gets its own network (a VPC /24 on the AWS lab)
and its own servers; their hosts are hosts of the same site of the SSH world but not of one LAN.
Both reach READY; deleting one leaves the other READY and whole; then nothing is left."""

from __future__ import annotations

import subprocess
import time

import pytest

from overcloud.underclouds.cloud.aws import AWSProvider
from overcloud.underclouds.cloud.config import load_cloud_sites_file


def _instances() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("awi-")}


@pytest.mark.timeout(1200)
def test_two_overclouds_on_one_aws_site(aws_lab, own_tower):
    before = _instances()
    t = own_tower(OVERCLOUD_SITES_FILE=str(aws_lab.sites_file)).start()
    site = load_cloud_sites_file(aws_lab.sites_file)[0]
    provider = AWSProvider(site, (t.state_dir / "tower.id").read_text().strip())
    body = {"provider": "aws", "number": "1", "size": "m1.small"}
    with t.client() as c:
        ids = []
        for _ in range(2):
            r = c.post("/overclouds", json=body)
            assert r.status_code == 202, r.text
            ids.append(r.json()["overcloud_ID"])
    done = [t.wait_status(oc, {"READY", "FAILED"}, timeout=600) for oc in ids]
    assert [d["status"] for d in done] == ["READY", "READY"], ([d.get("error") for d in done], t.log.read_text()[-5000:])
    nets = [{s.private_address.rsplit(".", 1)[0] for s in provider.list_servers(oc)} for oc in ids]
    assert all(len(n) == 1 for n in nets) and nets[0] != nets[1], nets  # one /24 each, not shared
    first, second = ids
    d = t.delete_and_wait(first, timeout=600)
    assert d["status"] == "DELETED", (d.get("error"), t.log.read_text()[-4000:])
    assert provider.list_tagged(first) == []
    with t.client() as c:
        time.sleep(4)  # a few health intervals (1 s each): the other stays READY
        d = c.get(f"/overclouds/{second}").json()
        assert d["status"] == "READY", d
        assert c.get(f"/overclouds/{second}/metrics", params={"query": "up"}).status_code == 200
    d = t.delete_and_wait(second, timeout=600)
    assert d["status"] == "DELETED", (d.get("error"), t.log.read_text()[-4000:])
    assert provider.list_tagged() == []
    deadline = time.monotonic() + 60
    while _instances() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not (_instances() - before)
