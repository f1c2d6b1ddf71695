"""The seed's request on the AWS lab, through a real Tower: {"provider": "aws", "number": "1",
"size": "m1.small"} makes two EC2 instances (moto), the harness boots them as namespace instances
with their cloud-init user data, the Tower logs in with the host keys it generated, prepares them
as ssh hosts and makes the Post and one cluster box there: READY, DataLake and Fabric included.
DELETE leaves nothing: the cloud lists nothing of the Tower by tag, and no instance runs."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from pathlib import Path

import pytest

from overcloud.underclouds.cloud.aws import AWSProvider
from overcloud.underclouds.cloud.config import load_cloud_sites_file

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "lab"))

import instance  # noqa: E402  (lab/instance.py: schema_check runs the instances' cloud-init)


def _user_data(site, server_id: str) -> str:
    """The user data EC2 (moto) holds for an instance, as the instance's cloud-init reads it."""
    import boto3
    import botocore.session

    core = botocore.session.Session(profile=site.profile)
    core.set_config_variable("credentials_file", str(site.credentials_file))
    ec2 = boto3.session.Session(botocore_session=core, region_name=site.region).client("ec2", endpoint_url=site.endpoint_url)
    raw = ec2.describe_instance_attribute(InstanceId=server_id, Attribute="userData")["UserData"]["Value"]
    return base64.b64decode(raw).decode()


def _instances() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("awi-")}


@pytest.mark.timeout(1200)
def test_seed_request_on_aws_ready_then_delete_leaves_nothing(aws_lab, own_tower):
    before = _instances()
    t = own_tower(OVERCLOUD_SITES_FILE=str(aws_lab.sites_file)).start()
    site = load_cloud_sites_file(aws_lab.sites_file)[0]
    provider = AWSProvider(site, (t.state_dir / "tower.id").read_text().strip())
    with t.client() as c:
        aws = next(d for d in c.get("/underclouds").json()["underclouds"] if d["name"] == "aws-1")
        assert aws["kind"] == "aws" and aws["available"] is True, aws
        r = c.post("/overclouds", json={"provider": "aws", "number": "1", "size": "m1.small"},
                   params={"wait": "true"}, timeout=900)
        d = r.json()
        assert d["status"] == "READY", (d.get("error"), d.get("tasks"), t.log.read_text()[-4000:])
        oc = d["overcloud_ID"]
        boxes = [d["post"], *d["clusters"]]
        assert sorted((b["name"], b["site"]) for b in boxes) == [("c1", "aws-1"), ("p0", "aws-1")], boxes
        assert all(b["address"].startswith("10.97.") for b in boxes), boxes  # from the site's box_pool
        assert d["datalake"] and d["fabric"], d
        print(f"seed create on the AWS lab: READY in {d['create_seconds']} s")
        servers = provider.list_servers(oc)
        assert sorted(s.name for s in servers) == [f"oc-{oc[:8]}-c1", f"oc-{oc[:8]}-p0"]
        assert all(s.status == "active" and s.tags["overcloud.io/host-key"].startswith("ssh-ed25519 ") for s in servers)
        assert len(_instances() - before) == 2
        for srv in servers:  # what the cloud really holds passes cloud-init's schema and pins the tagged host key
            text = _user_data(site, srv.id)
            assert text.startswith("#cloud-config") and instance.schema_check(text) == [], srv.name
            assert srv.tags["overcloud.io/host-key"] in text
        aws = next(d for d in c.get("/underclouds").json()["underclouds"] if d["name"] == "aws-1")
        assert sorted(h["name"] for h in aws["hosts"]) == sorted(s.name for s in servers), aws
        assert aws["capacity"]["servers"]["used"] == 2
        calls_create = aws["api"]["calls"]

    t0 = time.monotonic()

    done = t.delete_and_wait(oc, timeout=600)
    assert done["status"] == "DELETED", (done.get("error"), t.log.read_text()[-4000:])
    print(f"delete: DELETED in {time.monotonic() - t0:.1f} s; EC2 calls by the Tower's site: "
          f"{calls_create} through READY (start and GET /underclouds included)")
    assert provider.list_tagged(oc) == []
    assert provider.list_tagged() == []
    deadline = time.monotonic() + 60  # the harness kills a terminated instance at its next poll
    while _instances() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not (_instances() - before), "instances left running after DELETE"
    with t.client() as c:
        aws = next(d for d in c.get("/underclouds").json()["underclouds"] if d["name"] == "aws-1")
        assert aws["hosts"] == [] and aws["capacity"]["servers"]["used"] == 0
