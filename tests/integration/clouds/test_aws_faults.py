"""Faults of the AWS kind through a real Tower on the AWS lab, with our fault-injecting HTTP proxy
(ec2lab.FaultProxy) between the Tower and moto:

* EC2 throttling: CreateVpc, RunInstances and DescribeInstances answered 503 RequestLimitExceeded
  first; the Tower retries them and the seed's request is READY with exactly two instances;
* the Tower killed with -9 while a RunInstances is under way at the cloud (held by the proxy,
  then done there after the Tower died: an instance the Tower never heard of); the Tower started
  again resumes to READY with no duplicate server (found by name and tag).
Both end with DELETE: nothing of the OverCloud listed by tag.
* bad credentials (moto with IAM authentication on, not the lab): the site whose profile has a
  wrong secret is unavailable with a clear reason at start, a create there is a 503 naming it,
  the site with the right key works; no secret in any answer or log line."""

from __future__ import annotations

import time
from pathlib import Path

import boto3
import pytest
import yaml

from ec2lab import FaultProxy, MotoServer
from towers import TowerProcess
from overcloud.underclouds.cloud.aws import AWSProvider
from overcloud.underclouds.cloud.config import load_cloud_sites_file

SEED = {"provider": "aws", "number": "1", "size": "m1.small"}


@pytest.fixture
def proxy(aws_lab):
    p = FaultProxy(aws_lab.url).start()
    yield p
    p.stop()


def sites_via(aws_lab, proxy: FaultProxy, tmp_path: Path) -> Path:
    """The lab's sites file with EC2 reached through the proxy."""
    sites = yaml.safe_load(aws_lab.sites_file.read_text())
    for s in sites:
        s["endpoint_url"] = proxy.url
        s["credentials_file"] = str(aws_lab.dir / "aws" / "credentials")
    path = tmp_path / "sites-via-proxy.yaml"
    path.write_text(yaml.safe_dump(sites))
    return path


def every_instance(aws_lab, oc: str) -> list[tuple[str, str, str]]:
    """(id, Name, state) of every instance ever made for the OverCloud, terminated ones included."""
    site = load_cloud_sites_file(aws_lab.sites_file)[0]
    ec2 = boto3.client("ec2", region_name=site.region, endpoint_url=aws_lab.url, aws_access_key_id="lab",
                       aws_secret_access_key="lab")
    out = []
    for r in ec2.describe_instances(Filters=[{"Name": "tag:overcloud.io/overcloud", "Values": [oc]}])["Reservations"]:
        for i in r["Instances"]:
            name = next((t["Value"] for t in i.get("Tags", []) if t["Key"] == "Name"), "?")
            out.append((i["InstanceId"], name, i["State"]["Name"]))
    return sorted(out, key=lambda x: x[1])


def provider_of(aws_lab, tower) -> AWSProvider:
    site = load_cloud_sites_file(aws_lab.sites_file)[0]
    return AWSProvider(site, (tower.state_dir / "tower.id").read_text().strip())


def post(tower, body: dict) -> str:
    with tower.client() as c:
        r = c.post("/overclouds", json=body)
    assert r.status_code in (200, 201, 202), r.text
    return r.json()["overcloud_ID"]


@pytest.mark.timeout(900)
def test_ec2_throttling_is_retried_through_the_tower(aws_lab, own_tower, proxy, tmp_path):
    t = own_tower(OVERCLOUD_SITES_FILE=str(sites_via(aws_lab, proxy, tmp_path))).start()
    proxy.fail("CreateVpc", 1, 503, "RequestLimitExceeded", "Request limit exceeded.")
    proxy.fail("RunInstances", 2, 503, "RequestLimitExceeded", "Request limit exceeded.")
    proxy.fail("DescribeInstances", 2, 503, "RequestLimitExceeded", "Request limit exceeded.")
    oc = post(t, SEED)
    d = t.wait_status(oc, {"READY", "FAILED"}, timeout=600)
    assert d["status"] == "READY", (d.get("error"), t.log.read_text()[-3000:])
    print(f"throttled create READY in {d.get('create_seconds')} s; RunInstances answers {proxy.calls('RunInstances')}, "
          f"CreateVpc {proxy.calls('CreateVpc')}, DescribeInstances {proxy.calls('DescribeInstances')[:6]}...")
    assert proxy.calls("CreateVpc") == [503, 200]
    assert proxy.calls("RunInstances").count(503) == 2 and proxy.calls("RunInstances").count(200) == 2
    assert proxy.calls("DescribeInstances").count(503) == 2  # (other DescribeInstances may run beside: limits, probes)
    made = every_instance(aws_lab, oc)
    assert [n for _, n, _ in made] == [f"oc-{oc[:8]}-c1", f"oc-{oc[:8]}-p0"], made
    assert "RequestLimitExceeded" in t.log.read_text()  # each retry is logged (with the code, nothing secret)
    d = t.delete_and_wait(oc, timeout=300)
    assert d["status"] == "DELETED", d.get("error")
    assert provider_of(aws_lab, t).list_tagged(oc) == []


@pytest.mark.timeout(900)
def test_tower_killed_during_run_instances_resumes_without_duplicates(aws_lab, own_tower, proxy, tmp_path):
    t = own_tower(OVERCLOUD_SITES_FILE=str(sites_via(aws_lab, proxy, tmp_path))).start()
    held = proxy.hold("RunInstances", 5.0)
    oc = post(t, SEED)
    assert held.wait(300), f"no RunInstances reached the cloud: {t.log.read_text()[-3000:]}"
    t.kill9()
    time.sleep(6.0)  # the held call is done at the cloud now: an instance its caller never heard of
    before = every_instance(aws_lab, oc)
    print("made while the Tower was dead or dying:", before)
    assert before, "the held RunInstances made nothing"
    t.start()
    d = t.wait_status(oc, {"READY", "FAILED"}, timeout=600)
    assert d["status"] == "READY", (d.get("error"), t.log.read_text()[-3000:])
    made = every_instance(aws_lab, oc)
    print("after the resume:", made)
    assert [n for _, n, _ in made] == [f"oc-{oc[:8]}-c1", f"oc-{oc[:8]}-p0"], made  # one per box, ever
    assert all(state == "running" for _, _, state in made), made
    assert {i for i, _, _ in before} <= {i for i, _, _ in made}  # the one made during the kill was reused
    d = t.delete_and_wait(oc, timeout=300)
    assert d["status"] == "DELETED", d.get("error")
    assert provider_of(aws_lab, t).list_tagged(oc) == []


def test_bad_credentials_mark_the_site_unavailable_through_the_tower(tmp_path):
    server = MotoServer(env={"INITIAL_NO_AUTH_ACTION_COUNT": "3"}).start()  # 3 free calls make the IAM user
    t = None
    try:
        iam = boto3.client("iam", region_name="us-east-1", endpoint_url=server.url, aws_access_key_id="x",
                           aws_secret_access_key="y")
        iam.create_user(UserName="tower")
        iam.put_user_policy(UserName="tower", PolicyName="all", PolicyDocument='{"Version": "2012-10-17", "Statement": '
                            '[{"Effect": "Allow", "Action": "*", "Resource": "*"}]}')
        key = iam.create_access_key(UserName="tower")["AccessKey"]
        wrong = "wrong-" + key["SecretAccessKey"][::-1]
        creds = tmp_path / "credentials"
        creds.write_text(f"[good]\naws_access_key_id = {key['AccessKeyId']}\naws_secret_access_key = {key['SecretAccessKey']}\n"
                         f"[bad]\naws_access_key_id = {key['AccessKeyId']}\naws_secret_access_key = {wrong}\n")
        sites = []
        for name, profile, pool in (("aws-1", "good", "10.97.0.0/20"), ("aws-2", "bad", "10.97.16.0/20")):
            sites.append({"name": name, "kind": "aws", "region": "us-east-1", "profile": profile,
                          "credentials_file": str(creds), "endpoint_url": server.url, "image": "ami-785db401",
                          "instance_types": {"small": "t3.micro"}, "network": {"vpc_cidr": "10.91.0.0/16"},
                          "ssh_cidrs": ["10.91.0.0/16"], "box_pool": pool})
        path = tmp_path / "sites.yaml"
        path.write_text(yaml.safe_dump(sites))
        t = TowerProcess(tmp_path / "tower", sites=[], OVERCLOUD_SITES_FILE=str(path), AWS_EC2_METADATA_DISABLED="true",
                         AWS_CONFIG_FILE=str(tmp_path / "no-config")).start()
        with t.client() as c:
            deadline = time.monotonic() + 30
            while True:  # the sites are checked in threads at start
                got = {d["name"]: d for d in c.get("/underclouds").json()["underclouds"]}
                if "reason" in got["aws-2"] or got["aws-2"].get("available") is False or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            print("aws-2:", got["aws-2"].get("reason"))
            assert got["aws-1"]["available"] is True, got["aws-1"]
            assert got["aws-2"]["available"] is False, got["aws-2"]
            reason = got["aws-2"]["reason"]
            assert "aws-2" in reason and "refused the credentials" in reason and "AuthFailure" in reason, reason
            r = c.post("/overclouds", json={"provider": "aws-2", "number": "1", "size": "m1.small"})
            assert r.status_code == 503 and r.json()["site"] == "aws-2" and reason in r.json()["message"], r.text
            texts = [c.get("/underclouds").text, r.text]
        texts.append(t.log.read_text())
        for text in texts:
            assert wrong not in text and key["SecretAccessKey"] not in text
    finally:
        if t is not None:
            t.stop()
        server.stop()
