"""End to end on the simulated ssh sites (tests/hostslab.py)."""

from __future__ import annotations

import secrets
import time

import pytest
from cryptography.fernet import Fernet

from hostslab import hosts_lab  # noqa: F401 - the session fixture

from overcloud.identity.secrets import SecretBox
from overcloud.underclouds.ssh.driver import SSHUnderCloud
from overcloud.underclouds.ssh.sites import load_ssh_sites_file


@pytest.fixture(scope="module")
def world(hosts_lab, tmp_path_factory):  # noqa: F811
    """The ssh driver alone (no Tower) on the lab's four hosts, prepared; torn down after the module."""
    box = SecretBox(Fernet.generate_key())
    w = SSHUnderCloud(load_ssh_sites_file(hosts_lab.sites_file), state_dir=tmp_path_factory.mktemp("ssh-state"),
                      tower_id=secrets.token_hex(8), seal=box.seal, unseal=box.open,
                      overlay_cidr="10.250.0.0/16", bundle_cache=tmp_path_factory.mktemp("bundle"))
    t0 = time.perf_counter()
    w.prepare()
    print(f"\n[measure] prepare 4 hosts (bundle, ensure-host, WAN): {time.perf_counter() - t0:.2f}s")
    yield w
    try:
        w.teardown()
    finally:
        w.close()
