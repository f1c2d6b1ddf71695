"""`cloud-init schema` accepts the user data cloud sites give their servers. cloud-init is not on
the Tower's machine (it would act on the machine's next boot): the check runs the namespace
instances' own cloud-init with chroot (lab/instance.py schema_check, H5), the rootfs built once and
cached. A user data with a mistake is refused by the same check (so it checks something)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from overcloud.underclouds.cloud.userdata import client_key, new_host_key, user_data

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "lab"))

import instance  # noqa: E402  (lab/instance.py: stdlib only)


@pytest.fixture(scope="module")
def tower_key(tmp_path_factory):
    return client_key(tmp_path_factory.mktemp("cloud"))[1]


@pytest.mark.timeout(600)  # the instances' rootfs is built on first use (~70 s), cached after
@pytest.mark.parametrize("user, hostname", [("overcloud", "oc-1234abcd-p0"), ("ocadmin", None),
                                            ("overcloud", "oc-1234abcd-c17")])
def test_the_user_data_of_cloud_servers_passes_cloud_init_schema(tower_key, user, hostname):
    text = user_data(user, tower_key, new_host_key(), hostname=hostname)
    assert instance.schema_check(text) == []


@pytest.mark.timeout(600)
def test_the_check_refuses_a_user_data_with_a_mistake(tower_key):
    text = user_data("overcloud", tower_key, new_host_key()).replace("ssh_pwauth: false", "ssh_pwauth: [no]")
    assert text != user_data("overcloud", tower_key, new_host_key())
    problems = instance.schema_check(text)
    assert problems and any("ssh_pwauth" in p for p in problems), problems
