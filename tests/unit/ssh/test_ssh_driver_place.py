"""Placement of boxes on an ssh site's hosts by free capacity (driver.place), and the remote
session's path checks; no host needed."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from overcloud.underclouds.base import Box, BoxSpec, UnderCloudError, resolve_flavor
from overcloud.underclouds.local import box_handle
from overcloud.underclouds.ssh.driver import place
from overcloud.underclouds.ssh.session import RemoteBoxSession
from overcloud.underclouds.ssh.sites import SSHHostConfig

OC = "ab" * 16


def host(name: str, cpus: int, mem: int):
    cfg = SSHHostConfig(name=name, address="10.77.0.11", key_file=Path("/k"), host_key="SHA256:x", cpus=cpus,
                        memory_mb=mem, box_cidr="10.79.1.0/24")
    return SimpleNamespace(name=name, config=cfg)


def spec(name: str, size: str = "small") -> BoxSpec:
    return BoxSpec(OC, name, "cluster", "ssh-a", resolve_flavor(size))


def test_boxes_spread_by_free_cpus_then_memory():
    hosts = [host("h1", 2, 2048), host("h2", 2, 2048)]
    out = place([spec("c1"), spec("c2"), spec("c3"), spec("c4")], hosts, {})
    assert sorted(len(v) for v in out.values()) == [2, 2]


def test_existing_boxes_count_and_stay_where_they_are():
    hosts = [host("h1", 2, 2048), host("h2", 2, 2048)]
    inv = {"h1": [{"handle": box_handle(OC, "c1"), "flavor": {"cpus": 0.5, "memory_mb": 512}}],
           "h2": [{"handle": "oc-ffffffff-x", "flavor": {"cpus": 1.5, "memory_mb": 1536}}]}
    out = place([spec("c1"), spec("c2")], hosts, inv)
    assert [s.name for s in out["h1"]] == ["c1", "c2"]  # c1 found there; h1 has more free CPUs
    assert "h2" not in out


def test_a_box_that_fits_nowhere_is_refused_naming_the_room_left():
    hosts = [host("h1", 1, 1024)]
    with pytest.raises(UnderCloudError, match=r"no host of the site has room for box c1 .*h1: 1 CPUs 1024 MiB"):
        place([spec("c1", "large")], hosts, {})
    with pytest.raises(UnderCloudError, match="c3"):
        place([spec("c1", "small"), spec("c2", "small"), spec("c3", "small")], hosts, {})


def test_a_box_refused_names_the_hosts_left_out_and_why():
    """Hosts that do not answer are not placed on; when the others have no room, the refusal
    names them with their reason (it names its host: "dead (10.77.0.99:22): ...")."""
    with pytest.raises(UnderCloudError, match=r"box c3 .*free: h1: 0 CPUs 0 MiB; unavailable: dead \(10.77.0.99:22\): no SSH"):
        place([spec("c1"), spec("c2"), spec("c3")], [host("h1", 1, 1024)], {},
              {"dead": "dead (10.77.0.99:22): no SSH connection"})
    with pytest.raises(UnderCloudError, match=r"free: none; unavailable: dead"):
        place([spec("c1")], [], {}, {"dead": "dead (10.77.0.99:22): no SSH connection"})


def test_session_paths_stay_under_the_box_dir():
    box = Box(OC, "c1", "cluster", "ssh-a", resolve_flavor("small"), box_handle(OC, "c1"), "10.79.1.2",
              extra={"host": "h1", "box_dir": f"/var/lib/overcloud/host/t/boxes/{box_handle(OC, 'c1')}"})
    fake = SimpleNamespace(ssh=None, state_dir="/var/lib/overcloud/host/t", bundle_dir="/b", tower_id="t", name="h1")
    s = RemoteBoxSession(fake, box)
    assert s._path("a/b") == s.box_dir + "/a/b"
    assert s.program_python() == ["/usr/bin/python3", "-IS", "/b"]
    for bad in ("../x", "/etc/passwd", "a/../../x"):
        with pytest.raises(ValueError):
            s._path(bad)


def test_a_box_read_back_without_extra_is_found_on_the_host_of_its_address(tmp_path):
    from overcloud.underclouds.ssh.driver import SSHUnderCloud
    from overcloud.underclouds.ssh.sites import SSHSiteConfig

    key = tmp_path / "k"
    import asyncssh

    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(key))
    hosts = tuple(SSHHostConfig(name=n, address=f"10.77.0.{i}", key_file=key, host_key="SHA256:x",
                                box_cidr=f"10.79.{i}.0/24", lan_address=f"10.78.1.{i}") for i, n in ((1, "h1"), (2, "h2")))
    w = SSHUnderCloud([SSHSiteConfig("ssh-a", hosts)], state_dir=tmp_path / "s", tower_id="0" * 16,
                      seal=str, unseal=str)
    try:
        box = Box(OC, "c1", "cluster", "ssh-a", resolve_flavor("small"), box_handle(OC, "c1"), "10.79.2.7")
        assert w.host_of(box).name == "h2"
        with pytest.raises(UnderCloudError, match="names no host"):
            w.host_of(Box(OC, "c2", "cluster", "ssh-a", resolve_flavor("small"), box_handle(OC, "c2"), "10.79.9.7"))
    finally:
        w.close()
