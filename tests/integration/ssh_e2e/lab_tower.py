"""What the tests of a Tower on the hosts lab share (not a test module: test modules import
this, never each other): the lab's host names, and the hosts' teardown after such a Tower."""

from __future__ import annotations

import os

from hostslab import HOSTS

__all__ = ["HOSTS", "teardown_hosts"]


def teardown_hosts(state_dir) -> None:
    """After the Tower on ``state_dir`` has stopped: sweep what it left on the lab's hosts (the
    sites file is ``$OC_TEST_SITES_FILE``) and take its bridges, guards and WAN down; fails
    naming what was left."""
    from overcloud.underclouds.ssh.driver import clear_hosts_after
    from overcloud.underclouds.ssh.sites import load_ssh_sites_file

    left = clear_hosts_after(load_ssh_sites_file(os.environ["OC_TEST_SITES_FILE"]), state_dir)
    assert not left, [r.name for r in left][:10]
