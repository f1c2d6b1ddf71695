"""A host's kept agent (ssh/agentlink.py) on the simulated hosts: many calls share one agent
process and one SSH channel; it is started again, transparently, when it dies or when the
host's sshd restarts; requests never appear on an argv."""

from __future__ import annotations

import concurrent.futures
import secrets
import time

import pytest

from overcloud.underclouds.ssh import bundle, hostprep
from overcloud.underclouds.ssh.agentlink import AgentLink, AgentOpError
from overcloud.underclouds.ssh.transport import SSHConnectError

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]

HOST = "och-b1"


@pytest.fixture
def link(hosts_lab, ssh_host, tmp_path):
    h = ssh_host(HOST)
    art = bundle.host_bundle(tmp_path / "bundle-cache")
    root = f"/var/lib/overcloud/host-agentlink-{secrets.token_hex(4)}"

    def run(argv, input=None):
        return h.run(argv, input=input, check=False, timeout=120)

    installed = hostprep.install_bundle(run, art.path, art.sha256, tower_id=secrets.token_hex(8), root=root)
    lk = AgentLink(h, lambda: installed.path)
    yield h, lk
    lk.close()
    hosts_lab.start_sshd(HOST) if not _sshd_up(hosts_lab) else None
    h.run(["rm", "-rf", "--", root])


def _sshd_up(hosts_lab) -> bool:
    return "sshd" in hosts_lab.outside(HOST, ["ps", "-eo", "comm"]).stdout


def _serve_pids(hosts_lab) -> list[int]:
    out = hosts_lab.outside(HOST, ["ps", "-ww", "-eo", "pid,args"]).stdout
    return [int(line.split()[0]) for line in out.splitlines() if line.rstrip().endswith(" serve")]


def test_many_calls_share_one_agent_and_one_channel(hosts_lab, link):
    h, lk = link
    trips = h.round_trips
    secret = "s3cr3t-" + secrets.token_hex(8)
    req = {"host": "127.0.0.1", "port": 22, "timeout": 2, "note": secret}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: lk.call("tcp-check", req, timeout=30), range(40)))
    assert results == [True] * 40
    # one stream opened for forty calls (one SSH exec each before)
    assert h.round_trips - trips == 1 and lk.starts == 1 and lk.calls == 40
    assert _serve_pids(hosts_lab) == [lk.pid]
    # what a request carries travels on stdin: no argv on the host shows it
    assert secret not in hosts_lab.outside(HOST, ["ps", "-ww", "-eo", "args"]).stdout
    # an op's failure comes back as the op's error, naming what went wrong
    with pytest.raises(AgentOpError, match="handle must be a box handle") as err:
        lk.call("sup", {"handle": "nope", "box_dir": "/x", "method": "state"})
    assert err.value.type == "ValueError"
    assert lk.call("tcp-check", req) is True and lk.starts == 1


def test_a_dead_agent_is_started_again(hosts_lab, link):
    h, lk = link
    assert lk.call("tcp-check", {"host": "127.0.0.1", "port": 22}) is True
    first = lk.pid
    hosts_lab.outside(HOST, ["kill", "-9", str(first)])
    deadline = time.monotonic() + 10
    while lk.pid is not None and time.monotonic() < deadline:  # the reader sees its stream end
        time.sleep(0.05)
    assert lk.call("tcp-check", {"host": "127.0.0.1", "port": 22}) is True
    assert lk.starts == 2 and lk.pid not in (None, first)
    assert _serve_pids(hosts_lab) == [lk.pid]


def test_the_agent_comes_back_after_an_sshd_restart(hosts_lab, link):
    h, lk = link
    assert lk.call("tcp-check", {"host": "127.0.0.1", "port": 22}) is True
    first = lk.pid
    hosts_lab.stop_sshd(HOST)
    try:
        with pytest.raises(SSHConnectError, match=HOST):
            lk.call("tcp-check", {"host": "127.0.0.1", "port": 22}, idempotent=True)
        # the agent's channel is gone with sshd: the agent sees EOF and ends
        deadline = time.monotonic() + 20
        while _serve_pids(hosts_lab) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _serve_pids(hosts_lab) == []
    finally:
        hosts_lab.start_sshd(HOST)
    assert lk.call("tcp-check", {"host": "127.0.0.1", "port": 22}) is True
    assert lk.pid != first and h.connects == 2
    assert _serve_pids(hosts_lab) == [lk.pid]


def test_concurrent_host_ops_of_a_new_tower_all_answer(link):
    """Requests run in threads of one process: the first ops of a Tower new to the host (each
    records the bundle it uses) may not trip over one another."""
    h, lk = link
    tower_id = secrets.token_hex(8)
    req = {"tower_id": tower_id, "sites": [{"name": "agentlink", "bridge": "ocbxt0", "cidr": "10.79.9.0/24"}],
           "overlay_cidr": "10.250.0.0/16", "max_boxes": 8}
    try:
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            results = list(pool.map(lambda _: lk.call("boxes", req, timeout=60), range(24)))
        assert results == [[]] * 24
    finally:
        h.run(["rm", "-rf", "--", f"{lk._bundle_dir().rsplit('/', 1)[0]}/{tower_id}"])
