"""A Tower's identity and the leases every Tower on a host shares (files only, no kernel)."""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor

import pytest

from overcloud.config import tower_identity
from overcloud.underclouds.local import net
from overcloud.underclouds.local.leases import HostLeases, LeaseError, LeaseStore

CIDR = "10.213.0.0/24"


def test_a_tower_id_is_made_once_private_and_kept(tmp_path):
    first = tower_identity(tmp_path)
    assert len(first) == 16 and int(first, 16) >= 0
    assert tower_identity(tmp_path) == first
    assert stat.S_IMODE(os.stat(tmp_path / "tower.id").st_mode) == 0o600
    assert tower_identity(tmp_path / "other") != first
    with ThreadPoolExecutor(8) as pool:  # racing first starts agree on one id
        assert len(set(pool.map(tower_identity, [tmp_path / "race"] * 8))) == 1
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tower.id").write_text("not an id\n")
    with pytest.raises(RuntimeError, match="does not hold a Tower id"):
        tower_identity(tmp_path / "bad")


def test_tags_carry_the_tower_and_old_tags_still_parse():
    assert net.parse_tag(net.tag("ab" * 16, "c1", "0123456789abcdef")) == ("ab" * 16, "c1", "0123456789abcdef")
    assert net.parse_tag(net.tag("ab" * 16, "c1")) == ("ab" * 16, "c1", None)
    assert net.parse_tag("overcloud:site:local-a") == ("site", "local-a", None)
    assert net.parse_tag("something else") is None and net.parse_tag(None) is None


def _record(oc: str, name: str, bridge: str = "ocb-a") -> dict:
    return {"overcloud_id": oc, "name": name, "role": "cluster", "site": "local-a", "bridge": bridge}


def test_two_state_dirs_on_one_bridge_never_lease_the_same_address(tmp_path):
    host = HostLeases(tmp_path / "host")
    a = LeaseStore(tmp_path / "a", host, "a" * 16)
    b = LeaseStore(tmp_path / "b", host, "b" * 16)
    with ThreadPoolExecutor(8) as pool:
        jobs = [pool.submit(s.reserve_box, f"oc-{s.tower_id[:8]}-c{i}", _record(s.tower_id * 2, f"c{i}"), CIDR)
                for i in range(10) for s in (a, b)]
        addresses = [j.result()[0]["address"] for j in jobs]
    assert len(set(addresses)) == 20
    assert "10.213.0.1" not in addresses  # the gateway
    # a released address is free again for either
    freed = a.box("oc-aaaaaaaa-c0")["address"]
    a.delete_box("oc-aaaaaaaa-c0")
    assert b.reserve_box("oc-bbbbbbbb-new", _record("b" * 32, "new"), CIDR)[0]["address"] == freed
    # another bridge is another address space
    assert a.reserve_box("oc-aaaaaaaa-x", _record("a" * 32, "x", "ocb-z"), CIDR)[0]["address"] == "10.213.0.2"


def test_a_claim_whose_owner_is_gone_is_dropped(tmp_path):
    host = HostLeases(tmp_path / "host")
    a = LeaseStore(tmp_path / "a", host, "a" * 16)
    lease, _ = a.reserve_box("oc-aaaaaaaa-c1", _record("a" * 32, "c1"), CIDR)
    a.box_path("oc-aaaaaaaa-c1").unlink()  # the state dir lost it (removed, or a crash mid-release)
    b = LeaseStore(tmp_path / "b", host, "b" * 16)
    assert b.reserve_box("oc-bbbbbbbb-c1", _record("b" * 32, "c1"), CIDR)[0]["address"] == lease["address"]


def test_leases_made_before_host_claims_are_claimed_at_start(tmp_path):
    old = LeaseStore(tmp_path / "a", HostLeases(tmp_path / "elsewhere"), None)
    lease, _ = old.reserve_box("oc-aaaaaaaa-c1", _record("a" * 32, "c1"), CIDR)  # claimed elsewhere only
    host = HostLeases(tmp_path / "host")
    LeaseStore(tmp_path / "a", host, "a" * 16).claim_boxes("ocb-a")
    b = LeaseStore(tmp_path / "b", host, "b" * 16)
    assert b.reserve_box("oc-bbbbbbbb-c1", _record("b" * 32, "c1"), CIDR)[0]["address"] != lease["address"]


def test_overlays_of_two_state_dirs_get_distinct_vnis_and_subnets(tmp_path):
    host = HostLeases(tmp_path / "host")
    a = LeaseStore(tmp_path / "a", host, "a" * 16)
    b = LeaseStore(tmp_path / "b", host, "b" * 16)
    la = [a.reserve_overlay(f"{i:032x}", "10.250.0.0/16", ["p0"]) for i in range(3)]
    lb = [b.reserve_overlay(f"{i + 100:032x}", "10.250.0.0/16", ["p0"]) for i in range(3)]
    assert len({x["vni"] for x in la + lb}) == 6 and len({x["subnet"] for x in la + lb}) == 6
    a.delete_overlay(f"{0:032x}")
    assert b.reserve_overlay("f" * 32, "10.250.0.0/16", ["p0"])["vni"] == la[0]["vni"]


def test_vnis_held_in_another_range_do_not_starve_a_small_range(tmp_path):
    """A /22 holds four /24s; five VNIs another Tower holds in its own /16 leave all four free
    (the clean-clone run that ran out: the index was both the VNI and the subnet)."""
    host = HostLeases(tmp_path / "host")
    big = LeaseStore(tmp_path / "big", host, "a" * 16)
    small = LeaseStore(tmp_path / "small", host, "b" * 16)
    held = [big.reserve_overlay(f"{i:032x}", "10.250.0.0/16", ["p0"]) for i in range(5)]
    got = [small.reserve_overlay(f"{i + 100:032x}", "10.250.200.0/22", ["p0"]) for i in range(4)]
    assert [g["subnet"] for g in got] == [f"10.250.{200 + i}.0/24" for i in range(4)]
    assert not {g["vni"] for g in got} & {h["vni"] for h in held}
    with pytest.raises(LeaseError, match="no free overlay subnet left in 10.250.200.0/22"):
        small.reserve_overlay("e" * 32, "10.250.200.0/22", ["p0"])


def test_a_subnet_another_tower_holds_in_the_same_range_is_skipped(tmp_path):
    host = HostLeases(tmp_path / "host")
    a = LeaseStore(tmp_path / "a", host, "a" * 16)
    b = LeaseStore(tmp_path / "b", host, "b" * 16)
    first = a.reserve_overlay("1" * 32, "10.250.200.0/22", ["p0"])
    b.reserve_overlay("2" * 32, "10.250.0.0/16", ["p0"])  # VNI index 1, subnet 10.250.0.0/24
    a.delete_overlay("1" * 32)  # index 0 free again, subnet 10.250.200.0/24 free again
    again = b.reserve_overlay("3" * 32, "10.250.200.0/22", ["p0"])
    assert again["vni"] == first["vni"] and again["subnet"] == "10.250.200.0/24"
    assert b.reserve_overlay("4" * 32, "10.250.200.0/22", ["p0"])["subnet"] == "10.250.201.0/24"
