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
