"""The shape of GET /underclouds' sites (UnderCloudDriver.describe) and what the ssh hosts' probes
add to an OverCloud's health; no host needed (probes are built from what a host answers)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

from cryptography.fernet import Fernet

from overcloud.identity.secrets import SecretBox
from overcloud.underclouds.local import LocalHost, LocalSiteConfig
from overcloud.underclouds.ssh import wan
from overcloud.underclouds.ssh.health import PROBE_SEPARATOR, HostHealth, Probe, describe_host, parse_probe
from overcloud.underclouds.ssh.sites import SSHHostConfig

SECRET_KEY = "the-sealed-private-key-token"


def _host(name: str, cpus: int = 2, mem: int = 2048):
    cfg = SSHHostConfig(name=name, address="10.77.0.11", key_file=Path("/root/.ssh/lab_key"), host_key="SHA256:abc",
                        cpus=cpus, memory_mb=mem, box_cidr="10.79.1.0/24", lan_address="10.78.1.11",
                        labels={"zone": "z1"})
    return SimpleNamespace(name=name, config=cfg)


def _plan() -> wan.WanPlan:
    box = SecretBox(Fernet.generate_key())
    hosts = []
    for name, site, n in [("a1", "a", 1), ("a2", "a", 2), ("b1", "b", 3)]:
        hosts.append(wan.WanHost(name=name, site=site, wan_address=f"10.77.0.1{n}", lan_address=f"10.78.{site == 'b' and 2 or 1}.1{n}",
                                 box_cidr=f"10.79.{n}.0/24", wg_address=f"100.79.0.{n}", keys=wan.make_keys(box.seal)))
    return wan.WanPlan(tuple(hosts))


def _wg_text(plan: wan.WanPlan, name: str, now: int, ages: dict[str, int | None]) -> str:
    """What `wg show latest-handshakes|transfer|endpoints` prints on host ``name``."""
    rows = [[], [], []]
    for p in plan.cross_site_peers(name):
        age = ages.get(p.name)
        rows[0].append(f"{p.keys.public}\t{0 if age is None else now - age}")
        rows[1].append(f"{p.keys.public}\t100\t200")
        rows[2].append(f"{p.keys.public}\t{p.wan_address}:51820")
    return f"{now}\n" + "\n@@\n".join("\n".join(r) for r in rows) + "\n"


def test_a_probe_reads_box_leases_and_the_wireguard_part():
    lease = {"handle": "oc-abcdef01-p0", "overcloud_id": "ab" * 16, "name": "p0", "site": "ssh-a",
             "flavor": {"name": "small", "cpus": 0.5, "memory_mb": 512}, "address": "10.79.1.2", "mac": "x"}
    text = f"1700000000\n{json.dumps(lease)}\nnot json\n{PROBE_SEPARATOR}\n1700000000\nkey\t0\n"
    boxes, wg = parse_probe(text)
    assert boxes == [{k: lease[k] for k in ("handle", "overcloud_id", "name", "site", "flavor", "address")}]
    assert wg.startswith("1700000000\n")
    assert parse_probe(f"1\n{PROBE_SEPARATOR}\n") == ([], None)  # no WireGuard part: no cross-site peer


def test_an_ssh_host_describes_what_it_lends_uses_and_its_wan_peers():
    plan = _plan()
    now = int(time.time())
    status = wan.parse_status(plan, "a1", _wg_text(plan, "a1", now, {"b1": 12}))
    probe = Probe("a1", time.monotonic(), 0.01, True, boxes=[
        {"flavor": {"cpus": 0.5, "memory_mb": 512}}, {"flavor": {"cpus": 1.0, "memory_mb": 1024}}], wan=status,
        prepared=True)
    d = describe_host(_host("a1"), probe, prepared=True, prepare_error=None)
    assert d["name"] == "a1" and d["address"] == "10.77.0.11" and d["labels"] == {"zone": "z1"}
    assert d["lent"] == {"cpus": 2, "memory_mb": 2048}
    assert d["used"] == {"cpus": 1.5, "memory_mb": 1536, "boxes": 2}
    assert d["free"] == {"cpus": 0.5, "memory_mb": 512}
    h = d["health"]
    assert h["reachable"] is True and h["prepared"] is True and h["healthy"] is True and h["problems"] == []
    assert h["checked_age_s"] is not None and h["checked_age_s"] < 60
    [peer] = h["wan"]["peers"]
    assert peer["host"] == "b1" and peer["latest_handshake_age_s"] == 12 and peer["fresh"] is True
    text = json.dumps(d)
    assert "lab_key" not in text and "sealed" not in text  # no key path, no sealed token
    for k in plan.hosts:
        assert k.keys.sealed_private not in text


def test_a_probe_from_before_the_preparation_is_not_healthy_yet():
    """It did not read the WAN (the host was not prepared when probed): healthy only once a
    probe after the preparation says so (GET /underclouds may answer while that one runs)."""
    early = Probe("a1", time.monotonic(), 0.01, True, prepared=False)
    d = describe_host(_host("a1"), early, prepared=True, prepare_error=None)
    assert d["health"]["healthy"] is False and d["health"]["wan"] is None
    assert d["health"]["problems"] == ["not probed since its preparation yet"]


def test_an_unreachable_or_unprepared_host_is_unhealthy_with_the_reason():
    down = Probe("a1", time.monotonic(), 5.0, False, error="SSHConnectError: a1 (10.77.0.11:22): connection refused")
    d = describe_host(_host("a1"), down, prepared=True, prepare_error=None)
    assert d["health"]["healthy"] is False and d["health"]["reachable"] is False
    assert any("unreachable" in p and "connection refused" in p for p in d["health"]["problems"])
    assert d["used"] is None and d["free"] is None  # not known, not guessed
    d = describe_host(_host("a1"), None, prepared=False, prepare_error="a1: lacks packages: wireguard-tools")
    assert d["health"]["healthy"] is False
    assert d["health"]["problems"][0] == "preparation failed: a1: lacks packages: wireguard-tools"
    assert "not probed yet" in d["health"]["problems"]


def test_overcloud_health_names_the_host_and_the_peer_only_across_sites():
    plan = _plan()
    now = int(time.time())
    world = SimpleNamespace(hosts={})
    hh = HostHealth(world)
    stale = wan.parse_status(plan, "a1", _wg_text(plan, "a1", now, {"b1": None}))
    down = wan.WanStatus("b1", False, {}, ["WireGuard interface ocwg0 is not up"])
    hh._probes = {
        "a1": Probe("a1", time.monotonic(), 0.01, True, wan=stale),
        "a2": Probe("a2", time.monotonic(), 5.0, False, error="SSHTimeout: a2 (10.77.0.12:22): no answer in 5 s"),
        "b1": Probe("b1", time.monotonic(), 0.01, True, wan=down),
    }
    problems = hh.problems({"a1", "a2", "b1"}, spans_sites=True)
    assert problems["host a2"].startswith("unreachable: SSHTimeout")
    assert "peer b1" in problems["host a1"] and "never" in problems["host a1"]
    assert "ocwg0 is not up" in problems["host b1"]
    # inside one site the WAN is not the OverCloud's: only reachability counts
    assert hh.problems({"a1", "a2"}, spans_sites=False) == {"host a2": problems["host a2"]}
    # a peer outside the OverCloud's hosts is not its problem
    assert hh.problems({"a1"}, spans_sites=True) == {}
    assert hh.problems({"zz"}, spans_sites=True) == {}  # never probed: nothing claimed


def test_a_local_site_describes_its_bridge_and_the_hosts_capacity(tmp_path):
    host = LocalHost(tmp_path / "local", sites=[LocalSiteConfig("local-x", "ocx-nobridge", "10.213.250.0/24")],
                     tower_id="t" * 16, host_leases=tmp_path / "claims")
    d = host.sites["local-x"].describe()
    assert d["name"] == "local-x" and d["kind"] == "local"
    assert d["bridge"] == {"name": "ocx-nobridge", "cidr": "10.213.250.0/24", "gateway": "10.213.250.1",
                           "exists": False, "up": False, "ports": 0}
    assert d["healthy"] is False and d["problems"] == ["bridge ocx-nobridge does not exist"]
    assert d["capacity"]["cpus"] >= 1 and d["capacity"]["memory_mb"] > 0 and d["capacity"]["max_boxes"] == 200
    assert d["used"] == {"boxes": 0, "cpus": 0.0, "memory_mb": 0}
    json.dumps(d)


def test_the_base_driver_describes_at_least_its_name_and_kind():
    from overcloud.underclouds.base import UnderCloudDriver

    class Bare(UnderCloudDriver):
        kind = "bare"
        acquire = release = join_overlay = leave_overlay = connect = list_tagged = sweep = quota = None

    d = Bare("s1").describe()
    assert d == {"name": "s1", "kind": "bare", "healthy": True, "problems": []}
    assert Bare("s1").underlay_problems([]) == {}


def test_a_peer_that_sends_nothing_for_a_minute_is_a_problem_before_its_handshake_is_stale():
    from overcloud.underclouds.ssh.health import RX_SILENT_S

    plan = _plan()
    hh = HostHealth(SimpleNamespace(hosts={}))
    now = int(time.time())

    def probe(at: float, rx: int) -> Probe:
        st = wan.parse_status(plan, "a1", _wg_text(plan, "a1", now, {"b1": 30}).replace("\t100\t", f"\t{rx}\t"))
        p = Probe("a1", at, 0.01, True, wan=st)
        hh.note_rx(p)
        return p

    assert probe(1000.0, 100).wan.problems == []
    assert probe(1000.0 + RX_SILENT_S / 2, 100).wan.problems == []  # within a keepalive or two
    silent = probe(1000.0 + RX_SILENT_S + 1, 100)
    assert silent.wan.problems == [f"peer b1 (10.77.0.13:51820): nothing received for over {RX_SILENT_S:g} s"]
    hh._probes = {"a1": silent, "b1": Probe("b1", time.monotonic(), 0.01, True)}
    assert "nothing received" in hh.problems({"a1", "b1"}, spans_sites=True)["host a1"]
    assert probe(1000.0 + RX_SILENT_S + 2, 150).wan.problems == []  # it sent something again
    assert probe(1000.0 + RX_SILENT_S + 3, 20).wan.problems == []  # a restarted interface counts anew
