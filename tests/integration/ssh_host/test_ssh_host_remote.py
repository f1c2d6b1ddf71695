"""The host side on a simulated remote host (tests/hostslab.py: its own network, mount, UTS and
PID namespaces and sshd), reached only through the real SSH transport: hostprep checks the host
and installs the bundle, the agent makes a box there and removes it. The box exists in the
host's namespaces, not on the Tower's machine. Own bridge and subnet on the host (ocsbr,
10.79.101.0/24), apart from the lab's box subnets (10.79.<host#>.0/24)."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from pathlib import Path

import pytest

from overcloud.underclouds.local import box_handle
from overcloud.underclouds.ssh import hostprep
from overcloud.underclouds.ssh.transport import SSHHost

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]

HOST = "och-a2"
SITE = {"name": "ssh-a", "bridge": "ocsbr", "cidr": "10.79.101.0/24"}


@pytest.fixture(scope="module")
def remote(hosts_lab):  # noqa: F811 - the session fixture from conftest
    ssh = SSHHost(hosts_lab.host_config(HOST))

    def run(argv, input=None):
        return ssh.run(argv, input=input, check=False, timeout=120, max_output=1 << 20)

    yield ssh, run
    ssh.close()


def call(run, installed: str, op: str, req: dict) -> dict:
    r = run(hostprep.agent_command(installed, op), input=json.dumps(req).encode())
    answer = json.loads(r.stdout)
    assert r.returncode == 0 and answer["ok"], (op, answer, r.stderr.decode()[-2000:])
    return answer["result"]


def test_prepare_a_remote_host_and_make_a_box_there(remote, hosts_lab, artifact):  # noqa: F811
    ssh, run = remote
    tower_id = secrets.token_hex(8)
    # a root of its own: the session's other tests (a Tower on the ssh sites) may already have
    # installed this very bundle at the default root, and then nothing would be transferred
    root = f"/var/lib/overcloud/host-test-{tower_id}"
    trips = ssh.round_trips
    t0 = time.perf_counter()
    facts, installed = hostprep.prepare_host(run, artifact.path, artifact.sha256, tower_id=tower_id, host=HOST,
                                             root=root)
    print(f"\nprepare {HOST} over SSH: {time.perf_counter() - t0:.3f}s, {ssh.round_trips - trips} round trips "
          f"(install {installed.seconds:.3f}s)")
    assert facts.os_id == "debian" and installed.transferred
    trips = ssh.round_trips
    t0 = time.perf_counter()
    _, again = hostprep.prepare_host(run, artifact.path, artifact.sha256, tower_id=tower_id, host=HOST, root=root)
    print(f"prepare again: {time.perf_counter() - t0:.3f}s, {ssh.round_trips - trips} round trips")
    assert not again.transferred and ssh.round_trips - trips == 2  # the check and the look

    hello = call(run, installed.path, "hello", {})
    assert hello["hostname"] == HOST and hello["executable"] == "/usr/bin/python3"
    assert all(o.startswith(installed.path + "/") for o in hello["modules"].values()), hello["modules"]

    base = {"tower_id": tower_id, "sites": [SITE], "overlay_cidr": "10.250.234.0/24", "max_boxes": 4}
    oc = uuid.uuid4().hex
    handle = box_handle(oc, "r1")
    call(run, installed.path, "ensure-site", base)
    try:
        t0 = time.perf_counter()
        [box] = call(run, installed.path, "make-box", {**base, "specs": [
            {"overcloud_id": oc, "name": "r1", "role": "cluster", "site": "ssh-a", "size": "small"}]})["boxes"]
        print(f"make-box over SSH {time.perf_counter() - t0:.3f}s")
        assert box["handle"] == handle and box["address"].startswith("10.79.101.")
        # on the host, not here
        assert handle in hosts_lab.outside(HOST, ["ip", "netns", "list"]).stdout
        assert not Path(f"/run/netns/{handle}").exists()
        sup = hosts_lab.outside(HOST, ["sh", "-c", f"cat {box['extra']['box_dir']}/supervisord.pid"]).stdout.strip()
        cmd = hosts_lab.outside(HOST, ["sh", "-c", f"tr '\\0' ' ' < /proc/{sup}/cmdline"]).stdout
        assert cmd.startswith(f"/usr/bin/python3 -IS {installed.path}/bin/supervisord"), cmd
        tagged = call(run, installed.path, "list-tagged", {**base, "overcloud_id": oc})["resources"]
        assert {"netns", "veth", "process"} <= {r["kind"] for r in tagged}
        t0 = time.perf_counter()
        call(run, installed.path, "destroy-box", {**base, "boxes": [box]})
        print(f"destroy-box over SSH {time.perf_counter() - t0:.3f}s")
        assert call(run, installed.path, "list-tagged", {**base, "overcloud_id": oc})["resources"] == []
        assert handle not in hosts_lab.outside(HOST, ["ip", "netns", "list"]).stdout
    finally:
        call(run, installed.path, "sweep", {**base, "overcloud_ids": [oc]})
        call(run, installed.path, "teardown-site", base)
        run(["rm", "-rf", root])
    assert "ocsbr" not in hosts_lab.outside(HOST, ["ip", "-br", "link"]).stdout
