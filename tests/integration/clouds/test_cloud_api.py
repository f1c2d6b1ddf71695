"""The API of a Tower with cloud sites, against a real moto EC2 server: GET /underclouds shows each
cloud site's capacity and health; a site whose endpoint does not answer at start is marked
unavailable with the reason while the other works; a create that asks for it is a 503 naming it
(the heterogeneous body across sites too); a create its quota cannot hold is a 429 with the
numbers, and nothing is recorded or made in the cloud."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import boto3
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ec2lab import MotoServer  # noqa: E402
from towers import TowerProcess  # noqa: E402

CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "never-in-an-answer-7f3a", "AWS_DEFAULT_REGION": "us-east-1"}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _site(name: str, endpoint: str, pool: str, max_servers: int) -> str:
    return f"""\
- name: {name}
  kind: aws
  region: us-east-1
  endpoint_url: {endpoint}
  image: ami-12c6146b
  instance_types: {{small: t3.micro, medium: t3.small, large: t3.medium}}
  network: {{vpc_cidr: 10.91.0.0/16}}
  ssh_cidrs: [10.91.0.0/16]
  box_pool: {pool}
  max_servers: {max_servers}
  labels: {{overcloud.io/tier: cloud}}
"""


@pytest.fixture
def moto():
    m = MotoServer().start()
    yield m
    m.stop()


@pytest.fixture
def cloud_tower(tmp_path, moto, monkeypatch):
    for k, v in CREDS.items():
        monkeypatch.setenv(k, v)
    sites = tmp_path / "sites.yaml"
    sites.write_text(_site("aws-1", moto.url, "10.97.0.0/20", 3) + _site("aws-2", f"http://127.0.0.1:{_closed_port()}", "10.97.16.0/20", 3))
    t = TowerProcess(tmp_path / "tower", sites=[], OVERCLOUD_SITES_FILE=str(sites), **CREDS).start()
    yield t
    t.stop()


def _ec2(moto):
    return boto3.client("ec2", endpoint_url=moto.url, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def _nothing_made(moto) -> None:
    ec2 = _ec2(moto)
    instances = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
    assert instances == []
    tagged = ec2.describe_tags(Filters=[{"Name": "key", "Values": ["overcloud.io/overcloud"]}])["Tags"]
    assert tagged == []


def test_underclouds_unavailable_site_503_and_quota_429(cloud_tower, moto):
    with cloud_tower.client() as c:
        sites = {d["name"]: d for d in c.get("/underclouds").json()["underclouds"]}
        assert set(sites) == {"aws-1", "aws-2"}
        ok, down = sites["aws-1"], sites["aws-2"]
        assert ok["kind"] == "aws" and ok["available"] is True and ok["healthy"] is True, ok
        assert ok["capacity"]["servers"] == {"limit": 3, "used": 0}
        assert ok["labels"] == {"overcloud.io/tier": "cloud"}
        assert down["available"] is False and down["healthy"] is False
        assert down["reason"] and any("unavailable" in p for p in down["problems"])
        text = c.get("/underclouds").text
        assert CREDS["AWS_SECRET_ACCESS_KEY"] not in text

        # a create on the unavailable site: 503 naming it and why; nothing recorded
        r = c.post("/overclouds", json={"provider": "aws-2", "number": "1", "size": "m1.small"})
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["error"] == "unavailable" and body["site"] == "aws-2" and "aws-2" in body["message"]
        assert down["reason"] in body["message"]
        # the heterogeneous body across both: 503 naming aws-2 as well
        r = c.post("/overclouds", json={"provider": "heterogeneous", "aws-1": {"number": "1", "size": "m1.small", "post": "yes"},
                                        "aws-2": {"number": "1", "size": "m1.small"}})
        assert r.status_code == 503 and r.json()["site"] == "aws-2", r.text

        # the seed's body with more servers than the site's max_servers: 429 with the numbers
        r = c.post("/overclouds", json={"provider": "aws", "number": "3", "size": "m1.small"})
        assert r.status_code == 429, r.text
        body = r.json()
        assert body["error"] == "quota_exceeded" and body["site"] == "aws-1"
        assert body["numbers"]["servers"] == {"limit": 3, "used": 0, "asked": 4}
        assert "4 asked" in body["message"]
        # a size the site does not map would be a 422 naming the field (all three are mapped here)
        assert c.get("/overclouds").json() == []
        assert CREDS["AWS_SECRET_ACCESS_KEY"] not in r.text
    _nothing_made(moto)
    log = cloud_tower.log.read_text()
    assert "site aws-2 is unavailable" in log
    assert CREDS["AWS_SECRET_ACCESS_KEY"] not in log
