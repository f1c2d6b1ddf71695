"""The AWS lab end to end below the Tower: scripts/aws-lab.sh up, AWSProvider from the lab's
sites.yaml makes two servers with the cloud sites' real user data, the harness boots them as
namespace instances, the Tower's key logs in as the user cloud-init made (the host key pinned to
the one in the server's tag) and sudo works; delete: the cloud lists nothing by tag and the
instances are gone from the machine (and their bridge with the last of them)."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid

import pytest

from overcloud.underclouds.cloud.aws import AWSProvider
from overcloud.underclouds.cloud.config import load_cloud_sites_file
from overcloud.underclouds.cloud.provider import (
    ACTIVE, TAG_BOX, TAG_BOX_CIDR, TAG_HOST_KEY, TAG_OVERCLOUD, TAG_TOWER, ServerRequest, server_name)
from overcloud.underclouds.cloud.userdata import client_key, new_host_key, user_data


def netns() -> set[str]:
    return {line.split()[0] for line in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines()
            if line.strip()}


def routed_to_lab(address: str) -> bool:
    """The address is reached through a lab bridge (never try it before: the packet would take
    the machine's default route, and nothing may leave the machine)."""
    out = subprocess.run(["ip", "-o", "route", "get", address], capture_output=True, text=True).stdout
    return " dev awb-" in out


def bridges() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show", "type", "bridge"], capture_output=True, text=True).stdout
    return {line.split(":")[1].strip() for line in out.splitlines()}


@pytest.fixture
def lab(aws_lab):
    """The session's AWS lab (conftest.py: one lab per machine, so one per session)."""
    return aws_lab


async def _login(address: str, host_key: str, key_path) -> list[str]:
    import asyncssh

    known = asyncssh.import_known_hosts(f"{address} {host_key}\n")
    async with asyncssh.connect(address, username="overcloud", client_keys=[str(key_path)], known_hosts=known,
                                connect_timeout=10) as conn:
        r1 = await conn.run("hostname", check=True)
        r2 = await conn.run("sudo -n id -u", check=True)
        return [r1.stdout.strip(), r2.stdout.strip()]


def test_servers_boot_and_answer_ssh(lab, tmp_path):
    site = load_cloud_sites_file(lab.sites_file)[0]
    assert site.name == "aws-1" and site.endpoint_url == lab.url
    assert "aws_secret_access_key" not in lab.sites_file.read_text()
    tower = "tower-" + uuid.uuid4().hex[:8]
    p = AWSProvider(site, tower)
    p.check()
    key_path, public = client_key(tmp_path / "keys")
    oc = uuid.uuid4().hex
    net = p.ensure_network(oc, public)
    reqs, host_keys = [], {}
    for i, box in enumerate(("p0", "c0")):
        hk = new_host_key()
        name = server_name(oc, box)
        host_keys[name] = hk.public
        tags = {TAG_OVERCLOUD: oc, TAG_TOWER: tower, TAG_BOX: box, TAG_HOST_KEY: hk.public, TAG_BOX_CIDR: f"10.97.0.{64 * i}/26"}
        reqs.append(ServerRequest(overcloud_id=oc, box=box, name=name, flavor="small",
                                  user_data=user_data(site.user, public, hk, hostname=name), tags=tags))
    t0 = time.monotonic()
    servers = p.wait_servers([s.id for s in p.create_servers(net, reqs)], timeout=site.boot_timeout)
    t_running = time.monotonic() - t0
    assert all(s.status == ACTIVE for s in servers)
    answers = {}
    deadline = time.monotonic() + 180
    for s in servers:  # the harness boots each (cloud-init, sshd) after moto says running
        import asyncssh

        while True:
            try:
                if not routed_to_lab(s.private_address):
                    raise OSError("no lab bridge routes to it yet")
                answers[s.name] = asyncio.run(_login(s.private_address, s.tags[TAG_HOST_KEY], key_path))
                break
            except (OSError, asyncio.TimeoutError, asyncssh.Error) as exc:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{s.name} at {s.private_address} never answered SSH: {exc}\n"
                                         f"{(lab.dir / 'harness' / 'harness.log').read_text()[-2000:]}")
                time.sleep(0.5)
    t_ssh = time.monotonic() - t0
    print(f"2 servers running in {t_running:.2f} s, both logged in over SSH {t_ssh:.1f} s after create; "
          f"stats {p.stats.snapshot()}")
    for s in servers:
        assert answers[s.name][1] == "0"  # sudo -n as the cloud-init user
    booted = {n for n in netns() if n.startswith("awi-")}
    assert len(booted) == 2

    t1 = time.monotonic()
    p.delete_servers([s.id for s in servers], timeout=site.delete_timeout)
    p.delete_network(oc, timeout=site.delete_timeout)
    print(f"delete confirmed by EC2 in {time.monotonic() - t1:.2f} s")
    assert p.list_tagged(oc) == []
    deadline = time.monotonic() + 30
    while booted & netns():  # the harness kills terminated instances at its next poll
        assert time.monotonic() < deadline, f"instances still on the machine: {booted & netns()}"
        time.sleep(0.2)
    deadline = time.monotonic() + 10
    while routed_to_lab(servers[0].private_address):  # the subnet's bridge goes with its last instance
        assert time.monotonic() < deadline, f"the lab bridge of {net.cidr} is still there: {bridges()}"
        time.sleep(0.2)
