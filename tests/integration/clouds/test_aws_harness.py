"""The AWS lab's harness (lab/aws_harness.py): moto's running instances become namespace instances.

A real moto server (ec2lab.MotoServer), the harness as scripts/aws-lab.sh runs it (a background
process under Debian's python3), instances made with boto3's run_instances and the drivers' user
data; reached over SSH with the host key pinned; terminate kills the instance; SIGTERM kills the rest.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncssh
import boto3
import pytest

from ec2lab import MotoServer
from overcloud.underclouds.cloud import userdata

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "lab"))
import aws_harness  # noqa: E402  (lab/aws_harness.py)
import instance  # noqa: E402  (lab/instance.py)

pytestmark = pytest.mark.root

VPC_CIDR = "10.91.253.0/24"


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def ssh_sudo(address: str, client_key, host_public: str) -> str:
    async def go():
        async with asyncssh.connect(address, username="overcloud", client_keys=[client_key],
                                    known_hosts=([asyncssh.import_public_key(host_public)], [], []),
                                    connect_timeout=10) as conn:
            return (await conn.run("sudo -n hostname", check=True)).stdout.strip()

    return asyncio.run(go())


def test_harness_boots_running_instances_and_kills_terminated_ones(tmp_path):
    moto = MotoServer().start()
    harness = None
    try:
        ec2 = boto3.client("ec2", endpoint_url=moto.url, region_name="us-east-1",
                           aws_access_key_id="lab", aws_secret_access_key="lab")
        vpc = ec2.create_vpc(CidrBlock=VPC_CIDR)["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=VPC_CIDR)["Subnet"]["SubnetId"]
        client_path, client_pub = userdata.client_key(tmp_path / "keys")
        client = asyncssh.read_private_key(str(client_path))
        state = tmp_path / "aws-lab"
        harness = subprocess.Popen(["/usr/bin/python3", str(REPO / "lab/aws_harness.py"), "--endpoint", moto.url,
                                    "--state-dir", str(state)], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                   env={"PATH": os.environ["PATH"]})
        made = []
        for _ in range(2):
            hk = userdata.new_host_key()
            r = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1, InstanceType="t3.micro",
                                  SubnetId=subnet, UserData=userdata.user_data("overcloud", client_pub, hk))
            inst = r["Instances"][0]
            made.append((inst["InstanceId"], inst["PrivateIpAddress"], hk))
        bridge = aws_harness.bridge_name(subnet)
        for iid, ip, hk in made:
            name = aws_harness.instance_name(iid)
            wait_for(lambda: b"booted" if (state / "harness.log").exists() and
                     f"{name} up in".encode() in (state / "harness.log").read_bytes() else None,
                     240, f"the harness to boot {name} ({(state / 'harness.log')})")
            assert ssh_sudo(ip, client, hk.public) == name
            assert Path("/sys/class/net", bridge).exists()

        # terminate one: its instance goes, the other keeps running
        gone_id, gone_ip, _ = made[0]
        gone = aws_harness.instance_name(gone_id)
        ec2.terminate_instances(InstanceIds=[gone_id])
        wait_for(lambda: not Path("/run/netns", gone).exists(), 30, f"{gone} to be killed")
        assert Path("/run/netns", aws_harness.instance_name(made[1][0])).exists()

        # SIGTERM: every instance it booted goes, and the bridge with the last one
        harness.send_signal(signal.SIGTERM)
        assert harness.wait(60) == 0, harness.stderr.read()
        harness = None
        for iid, _, _ in made:
            assert not Path("/run/netns", aws_harness.instance_name(iid)).exists()
        assert not Path("/sys/class/net", bridge).exists()
        log = (state / "harness.log").read_text()
        assert "harness down" in log
        assert "PRIVATE KEY" not in log  # the user data (a host's private key) is never logged
    finally:
        if harness is not None and harness.poll() is None:
            harness.send_signal(signal.SIGTERM)
            try:
                harness.wait(60)
            except subprocess.TimeoutExpired:
                harness.kill()
        moto.stop()


def test_a_harness_killed_with_9_is_followed_by_one_that_adopts_its_instances(tmp_path):
    """The instance moto still runs is adopted (not booted again: same init), the one moto no
    longer runs is killed, and terminate then works through the new harness."""
    moto = MotoServer().start()
    procs: list[subprocess.Popen] = []
    state = tmp_path / "aws-lab"

    def start() -> subprocess.Popen:
        p = subprocess.Popen(["/usr/bin/python3", str(REPO / "lab/aws_harness.py"), "--endpoint", moto.url,
                              "--state-dir", str(state)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env={"PATH": os.environ["PATH"]})
        procs.append(p)
        return p

    try:
        ec2 = boto3.client("ec2", endpoint_url=moto.url, region_name="us-east-1",
                           aws_access_key_id="lab", aws_secret_access_key="lab")
        vpc = ec2.create_vpc(CidrBlock=VPC_CIDR)["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=VPC_CIDR)["Subnet"]["SubnetId"]
        _, client_pub = userdata.client_key(tmp_path / "keys")
        ids = [ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1, SubnetId=subnet,
                                 UserData=userdata.user_data("overcloud", client_pub, userdata.new_host_key())
                                 )["Instances"][0]["InstanceId"] for _ in range(2)]
        names = [aws_harness.instance_name(i) for i in ids]
        first = start()
        log = state / "harness.log"
        for n in names:
            wait_for(lambda: log.exists() and f"{n} up in" in log.read_text(), 240, f"{n} booted")
        inits = {r["name"]: r["pid"] for r in instance.list_instances(state / "instances")}
        first.kill()
        first.wait(10)
        # while no harness runs, one instance is terminated: the next harness must not keep it
        ec2.terminate_instances(InstanceIds=[ids[1]])
        ec2.get_waiter("instance_terminated").wait(InstanceIds=[ids[1]], WaiterConfig={"Delay": 1})
        second = start()
        wait_for(lambda: f"{names[0]} left running by an earlier run: adopted" in log.read_text(), 30, "adoption")
        # killed: its namespace gone and its record too (the kill removes the record last)
        wait_for(lambda: not Path("/run/netns", names[1]).exists()
                 and [r["name"] for r in instance.list_instances(state / "instances")] == [names[0]],
                 60, f"{names[1]} killed")
        [rec] = instance.list_instances(state / "instances")
        assert rec["name"] == names[0] and rec["pid"] == inits[names[0]]  # the same init: not booted again
        ec2.terminate_instances(InstanceIds=[ids[0]])
        wait_for(lambda: not Path("/run/netns", names[0]).exists(), 30, f"{names[0]} killed")
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0
        assert not Path("/sys/class/net", aws_harness.bridge_name(subnet)).exists()
        assert instance.list_instances(state / "instances") == []
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
        moto.stop()
