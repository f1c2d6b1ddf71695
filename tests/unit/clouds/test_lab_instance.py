"""lab/instance.py and lab/aws_harness.py without root: what the rootfs is made of, its cache key,
names. (Booting, the guard and the harness against moto: tests/integration/clouds/.)"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from overcloud.underclouds.ssh import hostprep

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "lab"))
import aws_harness  # noqa: E402
import instance  # noqa: E402
import instance_rootfs  # noqa: E402


def test_the_rootfs_has_what_an_ssh_host_and_the_patterns_need():
    pkgs = set(instance.packages())
    assert set(hostprep.HOST_PACKAGES) <= pkgs  # the one list the Tower's host check uses
    assert hostprep.USERSPACE_WIREGUARD[0] in pkgs  # this kernel has no WireGuard
    assert {"cloud-init", "openssh-server", "sudo", "iproute2", "python3"} <= pkgs
    for f in (REPO / "patterns").glob("*/images/*/packages"):  # the process runtime's image packages
        names = {w for line in f.read_text().splitlines() for w in line.split("#", 1)[0].split()}
        assert names <= pkgs, f


def test_the_cache_key_follows_the_inputs(monkeypatch):
    key = instance.rootfs_key()
    assert key == instance.rootfs_key() and len(key) == 16
    monkeypatch.setitem(instance.BASE_PACKAGES, "less", "a pager")
    assert instance.rootfs_key() != key
    monkeypatch.delitem(instance.BASE_PACKAGES, "less")
    monkeypatch.setattr(instance_rootfs, "CLOUD_CFG", instance_rootfs.CLOUD_CFG + "# changed\n")
    assert instance.rootfs_key() != key


def test_locale_is_among_the_disabled_modules():
    assert "locale" in instance.DISABLED_MODULES  # FACTS.md: 60 s, then it fails
    assert "datasource_list: [NoCloud, None]" in instance.CLOUD_CFG


@pytest.mark.parametrize("name", ["awi-1a2b3c4d", "osi-00ff00ff", "a", "x" * 15])
def test_names_that_are_netns_names(name):
    instance._check_name(name)


@pytest.mark.parametrize("name", ["", "x" * 16, "Awi-1", "awi_1", "-awi", "a/b"])
def test_names_refused(name):
    with pytest.raises(instance.InstanceError, match="netns name"):
        instance._check_name(name)


def test_harness_names():
    assert aws_harness.instance_name("i-0123456789abcdef0") == "awi-01234567"
    assert aws_harness.bridge_name("subnet-0a1b2c3d4e5f") == "awb-0a1b2c3d"
    for n in (aws_harness.instance_name("i-" + "f" * 17), aws_harness.bridge_name("subnet-" + "f" * 17)):
        instance._check_name(n)
