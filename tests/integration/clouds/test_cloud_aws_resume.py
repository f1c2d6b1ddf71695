"""kill -9 of a Tower in the middle of a create on the AWS lab: the Tower started again on the same
state dir resumes it to READY with no duplicate server (the servers are found again by name and tag,
their host keys from their tags), then DELETE leaves nothing in the cloud or on the machine.

Two moments: while acquire_boxes runs after the cloud has the servers (the acquire runs again and
reuses them), and in the fabric task after acquire (its hosts come back only from the start's
listing by tag: nothing of a cloud site is in the database but the Box records)."""

from __future__ import annotations

import subprocess
import time

import pytest

from overcloud.underclouds.cloud.aws import AWSProvider
from overcloud.underclouds.cloud.config import load_cloud_sites_file


def _instances() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("awi-")}


def _all_instances(site, oc: str) -> list[dict]:
    """Every instance EC2 ever made for the OverCloud (terminated ones too): duplicates would show here."""
    import boto3
    import botocore.session

    core = botocore.session.Session(profile=site.profile)
    core.set_config_variable("credentials_file", str(site.credentials_file))
    ec2 = boto3.session.Session(botocore_session=core, region_name=site.region).client("ec2", endpoint_url=site.endpoint_url)
    res = ec2.describe_instances(Filters=[{"Name": "tag:overcloud.io/overcloud", "Values": [oc]}])["Reservations"]
    return [i for r in res for i in r["Instances"]]


def _task_state(c, oc: str) -> dict[str, str]:
    wf = c.get(f"/overclouds/{oc}/workflow").json()["workflows"]["create_overcloud"]
    return {x["task"]: x["state"] for x in wf}


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("moment", ["servers made, acquire running", "fabric running"])
def test_tower_killed_mid_create_on_aws_resumes_without_duplicates(aws_lab, own_tower, moment):
    before = _instances()
    t = own_tower(OVERCLOUD_SITES_FILE=str(aws_lab.sites_file)).start()
    site = load_cloud_sites_file(aws_lab.sites_file)[0]
    provider = AWSProvider(site, (t.state_dir / "tower.id").read_text().strip())
    with t.client() as c:
        r = c.post("/overclouds", json={"provider": "aws", "number": "1", "size": "m1.small"})
        assert r.status_code == 202, r.text
        oc = r.json()["overcloud_ID"]
        deadline = time.monotonic() + 300
        while True:
            states = _task_state(c, oc)
            if moment.startswith("servers") and states.get("acquire_boxes") == "RUNNING" and len(provider.list_servers(oc)) == 2:
                break
            if moment.startswith("fabric") and states.get("fabric") == "RUNNING":
                break
            assert c.get(f"/overclouds/{oc}").json()["status"] == "CREATING", f"ended before {moment}: {states}"
            assert time.monotonic() < deadline, f"never reached {moment}: {states}"
            time.sleep(0.05)
    t.kill9()
    print(f"\n[fault] Tower killed with -9 ({moment})")
    t.start()
    d = t.wait_status(oc, {"READY", "FAILED"}, timeout=600)
    assert d["status"] == "READY", (d.get("error"), t.log.read_text()[-4000:])
    # the restarted Tower found them by tag (nothing of them is in its database but the Box records)
    assert "site aws-1: 2 server(s) of live OverClouds added back as hosts" in t.log.read_text()
    made = _all_instances(site, oc)
    names = sorted(next(tag["Value"] for tag in i["Tags"] if tag["Key"] == "Name") for i in made)
    assert names == [f"oc-{oc[:8]}-c1", f"oc-{oc[:8]}-p0"], f"duplicate or missing servers: {names}"
    assert all(i["State"]["Name"] == "running" for i in made)
    with t.client() as c:
        aws = next(x for x in c.get("/underclouds").json()["underclouds"] if x["name"] == "aws-1")
        assert sorted(h["name"] for h in aws["hosts"]) == [f"oc-{oc[:8]}-c1", f"oc-{oc[:8]}-p0"], aws["hosts"]
    d = t.delete_and_wait(oc, timeout=600)
    assert d["status"] == "DELETED", (d.get("error"), t.log.read_text()[-4000:])
    assert provider.list_tagged() == []
    deadline = time.monotonic() + 60
    while _instances() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not (_instances() - before), "instances left running after DELETE"
