"""Hosts that come and go (issue 12): a world built from site ssh-a alone, then och-b1 and
och-b2 added at run time as a new site (``add_site``/``add_host``, as a cloud site hands over
its servers), prepared; boxes on both sites joined in one overlay talk across the WAN; then
``remove_host`` makes the remaining hosts forget each (WireGuard peer, routes, host guard
subnet), read on the hosts themselves (``wg show``, ``ip route``, ``nft``)."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import secrets
import time
import uuid

import pytest
from cryptography.fernet import Fernet

from overcloud.identity.secrets import SecretBox
from overcloud.underclouds.base import Box, BoxSpec, resolve_flavor
from overcloud.underclouds.ssh import wan
from overcloud.underclouds.ssh.driver import SSHUnderCloud
from overcloud.underclouds.ssh.sites import SSHSiteConfig

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]

B_SITE = "ssh-b"


def _wg_peers(lab, host: str) -> set[str]:
    r = lab.outside(host, ["wg", "show", "ocwg0", "peers"])
    return set(r.stdout.split()) if r.returncode == 0 else set()


def _has_wg(lab, host: str) -> bool:
    return lab.outside(host, ["ip", "link", "show", "dev", "ocwg0"]).returncode == 0


def _routes(lab, host: str) -> str:
    return lab.outside(host, ["ip", "route", "show", "proto", str(wan.ROUTE_PROTO)]).stdout


class _Guard:
    """The box subnets a host's guard lets through (nft prints them merged: ranges and prefixes)."""

    def __init__(self, text: str):
        self.text = text
        m = re.search(r'iifname "ocbx0" ip daddr \{ ([^}]*) \} accept', text)
        self.ranges = []
        for item in (m.group(1).split(",") if m else []):
            item = item.strip()
            if "-" in item:
                lo, hi = item.split("-")
                self.ranges.append((int(ipaddress.ip_address(lo)), int(ipaddress.ip_address(hi))))
            else:
                net = ipaddress.ip_network(item)
                self.ranges.append((int(net.network_address), int(net.broadcast_address)))

    def __contains__(self, cidr: str) -> bool:
        net = ipaddress.ip_network(cidr)
        lo, hi = int(net.network_address), int(net.broadcast_address)
        return any(a <= lo and hi <= b for a, b in self.ranges)

    def __repr__(self) -> str:
        return self.text


def _guard(lab, host: str) -> _Guard:
    return _Guard(lab.outside(host, ["nft", "list", "table", "inet", "overcloud_host"]).stdout)


def _make_boxes(world: SSHUnderCloud, host: str, specs: list[BoxSpec]) -> list[Box]:
    """Boxes on one added host, as a cloud site makes them (each on its own server)."""
    h = world.hosts[host]
    h.ensure_prepared()
    world.touch(specs[0].overcloud_id, [host])
    answer = h.agent("make-box", timeout=180, specs=[
        {"overcloud_id": s.overcloud_id, "name": s.name, "role": s.role, "site": s.site,
         "flavor": {"name": s.flavor.name, "cpus": s.flavor.cpus, "memory_mb": s.flavor.memory_mb}} for s in specs])
    boxes = []
    for d in answer["boxes"]:
        b = Box.from_dict(d)
        b.extra = {**b.extra, "host": host, "host_address": h.config.address, "lan_address": h.config.lan_address,
                   "bundle_dir": h.bundle_dir}
        boxes.append(b)
    return boxes


@pytest.fixture
def world_a(hosts_lab, tmp_path):  # noqa: F811
    """The ssh driver (no Tower) built from site ssh-a alone, prepared; torn down after."""
    sites = {s.name: s for s in hosts_lab.sites()}
    box = SecretBox(Fernet.generate_key())
    w = SSHUnderCloud([sites["ssh-a"]], state_dir=tmp_path / "ssh", tower_id=secrets.token_hex(8), seal=box.seal,
                      unseal=box.open, overlay_cidr="10.250.0.0/16", bundle_cache=tmp_path / "bundle")
    w.prepare()
    yield w
    try:
        w.teardown()
    finally:
        w.close()


def test_hosts_added_at_run_time_join_the_overlay_and_removed_ones_are_forgotten(world_a, hosts_lab):  # noqa: F811
    world, lab = world_a, hosts_lab
    b1, b2 = lab.host_config("och-b1"), lab.host_config("och-b2")
    assert not _has_wg(lab, "och-a1") and not _has_wg(lab, "och-a2")  # one site: no WireGuard
    wg_a = {h.name: h.wg_address for h in world.wan_plan().hosts}
    gen = world.plan_gen

    world.add_site(B_SITE, {"overcloud.io/tier": "edge"})
    lab.stop_sshd("och-a2")  # och-a2 misses the updates: its next probe that answers brings it up to date
    try:
        t0 = time.perf_counter()
        hb1 = world.add_host(B_SITE, b1)
        hb2 = world.add_host(B_SITE, b2)
        print(f"\n[measure] add_host x2 (och-a1 updated each time, och-a2 not answering): {time.perf_counter() - t0:.2f}s")
        a2 = world.hosts["och-a2"]
        assert world.hosts["och-a1"].plan_gen == world.plan_gen and a2.plan_gen != world.plan_gen
    finally:
        lab.start_sshd("och-a2")
    deadline = time.monotonic() + 30
    while a2.plan_gen != world.plan_gen:
        assert time.monotonic() < deadline, "och-a2 was not brought up to date once it answered"
        world.health.refresh(["och-a2"], max_age=0, wait=5)
        time.sleep(0.5)
    assert world.add_host(B_SITE, b1) is hb1 and world.plan_gen == gen + 2  # the same again: nothing changes
    assert {h.name: h.wg_address for h in world.wan_plan().hosts if h.site == "ssh-a"} == wg_a  # kept
    t0 = time.perf_counter()
    for n in ("och-b1", "och-b2"):
        world.wait_ssh(n, 30)
    world.ensure([hb1, hb2])
    print(f"[measure] wait_ssh + prepare the two added hosts: {time.perf_counter() - t0:.2f}s")
    plan = world.wan_plan()
    key = {h.name: h.keys.public for h in plan.hosts}
    for a in ("och-a1", "och-a2"):  # the hosts of ssh-a learnt both, without being prepared again
        assert _wg_peers(lab, a) == {key["och-b1"], key["och-b2"]}
        routes, guard = _routes(lab, a), _guard(lab, a)
        for cidr in (b1.box_cidr, b2.box_cidr):
            assert f"{cidr} dev ocwg0" in routes, routes
            assert cidr in guard, guard
    for b, other in (("och-b1", b2), ("och-b2", b1)):  # the new site's hosts: each other over the LAN
        assert _wg_peers(lab, b) == {key["och-a1"], key["och-a2"]}
        assert f"{other.box_cidr} via {other.lan_address}" in _routes(lab, b)
        assert other.box_cidr in _guard(lab, b)
    described = {d["name"]: d for d in world.describe_hosts(B_SITE, max_age=0, wait=10)}
    assert set(described) == {"och-b1", "och-b2"} and all(d["health"]["reachable"] for d in described.values())

    # boxes on both sites, one overlay, ping and TCP across the WAN
    oc = uuid.uuid4().hex
    small = resolve_flavor("small")
    boxes_a = world.sites["ssh-a"].acquire([BoxSpec(oc, "p0", "post", "ssh-a", small)])
    boxes_b = _make_boxes(world, "och-b1", [BoxSpec(oc, "c1", "cluster", B_SITE, small)])
    boxes = boxes_a + boxes_b
    left_b: list[Box] = list(boxes_b)
    try:
        world.join_overlay(oc, boxes)
        p0, c1 = boxes
        sp = world.session(p0)
        r = sp.run(["ping", "-c", "1", "-W", "3", c1.overlay_address], check=False)
        assert r.returncode == 0, (r.stdout, r.stderr)
        deadline = time.monotonic() + 20
        while not sp.tcp_check(c1.overlay_address, 9001, timeout=1.0):  # c1's health port, across sites
            assert time.monotonic() < deadline, "c1's health port never answered across the WAN"
            time.sleep(0.3)
        world.health.refresh(max_age=0, wait=10)
        assert world.underlay_problems(boxes) == {}
        assert {r.overcloud_id for r in world.list_tagged(oc)} == {oc}
        world.leave_overlay(oc, boxes)
        world.sites["ssh-a"].release(boxes_a)
        world.hosts["och-b1"].agent("destroy-box", timeout=180, boxes=[b.to_dict() for b in boxes_b])
        left_b = []
    finally:
        if left_b:
            world.sweep({oc})

    # och-b1's server goes away: torn down (what deleting it does), its sshd gone, then removed
    h = world.hosts["och-b1"]
    h.agent("teardown-site")
    wan.down(plan.host("och-b1"), h.run)
    lab.stop_sshd("och-b1")
    try:
        t0 = time.perf_counter()
        world.remove_host("och-b1")
        print(f"[measure] remove_host (host gone, three hosts updated): {time.perf_counter() - t0:.2f}s")
    finally:
        lab.start_sshd("och-b1")
    assert "och-b1" not in world.hosts and "och-b1" not in {h.name for h in world.wan_plan().hosts}
    assert "och-b1" not in world.touched_hosts().get(oc, set())
    for a in ("och-a1", "och-a2"):
        assert _wg_peers(lab, a) == {key["och-b2"]}, a
        assert b1.box_cidr not in _routes(lab, a) and b1.box_cidr not in _guard(lab, a)
        assert b2.box_cidr in _routes(lab, a) and b2.box_cidr in _guard(lab, a)
    assert b1.box_cidr not in _routes(lab, "och-b2") and b1.box_cidr not in _guard(lab, "och-b2")
    # a host added again gets new keys (the old ones were forgotten)
    assert "och-b1" not in (world.state_dir / "wan-keys.json").read_text()

    # the last host of the other site goes: ssh-a's hosts drop their WireGuard interface
    h = world.hosts["och-b2"]
    h.agent("teardown-site")
    wan.down(plan.host("och-b2"), h.run)
    world.remove_host("och-b2")
    for a in ("och-a1", "och-a2"):
        assert not _has_wg(lab, a), a
        assert b2.box_cidr not in _routes(lab, a) and b2.box_cidr not in _guard(lab, a)
    assert world.site_hosts(B_SITE) == [] and world.describe_hosts(B_SITE) == []
    assert {h.name: h.wg_address for h in world.wan_plan().hosts} == wg_a


def test_a_replaced_host_config_replaces_the_host(world_a, hosts_lab):  # noqa: F811
    """Same name, another config (a server made again): a new host, not prepared; the old one's
    agent and connection are gone."""
    world = world_a
    world.add_site(B_SITE)
    b1 = hosts_lab.host_config("och-b1")
    first = world.add_host(B_SITE, b1)
    world.wait_ssh("och-b1", 30)
    first.ensure_prepared()
    second = world.add_host(B_SITE, dataclasses.replace(b1, cpus=1))
    assert second is not first and not second.prepared and world.hosts["och-b1"] is second
    assert second.config.cpus == 1
    second.ensure_prepared()
    assert second.run(["hostname"]).stdout.decode().strip() == "och-b1"
    second.agent("teardown-site")
    wan.down(world.wan_plan().host("och-b1"), second.run)
    world.remove_host("och-b1")
    assert not _has_wg(hosts_lab, "och-a1")


def test_an_ssh_world_without_ssh_sites(hosts_lab, tmp_path):  # noqa: F811
    """Cloud sites only: the world starts empty; prepare, health and the plan work with no host."""
    box = SecretBox(Fernet.generate_key())
    w = SSHUnderCloud([], state_dir=tmp_path / "ssh", tower_id=secrets.token_hex(8), seal=box.seal, unseal=box.open)
    try:
        w.prepare()
        assert w.wan_plan().hosts == () and w.list_tagged() == [] and w.sweep(set()) == []
        w.add_site("cloud-1")
        assert w.describe_hosts("cloud-1") == [] and w.underlay_problems([]) == {}
        cfg = hosts_lab.host_config("och-a1")
        h = w.add_host("cloud-1", cfg)
        w.wait_ssh("och-a1", 30)
        assert h.run(["hostname"]).stdout.decode().strip() == "och-a1"
        w.remove_host("och-a1")
        assert w.hosts == {} and w.wan_plan().hosts == ()
    finally:
        w.close()
