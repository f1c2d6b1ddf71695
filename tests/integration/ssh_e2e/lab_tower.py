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
    from overcloud.config import tower_identity
    from overcloud.identity.secrets import SecretBox, load_key
    from overcloud.underclouds.ssh.driver import SSHUnderCloud
    from overcloud.underclouds.ssh.sites import load_ssh_sites_file

    box = SecretBox(load_key(state_dir))
    w = SSHUnderCloud(load_ssh_sites_file(os.environ["OC_TEST_SITES_FILE"]), state_dir=state_dir / "ssh",
                      tower_id=tower_identity(state_dir), seal=box.seal, unseal=box.open,
                      bundle_cache=state_dir / "host-bundle")
    try:
        left = w.list_tagged()
        if left:
            w.sweep({r.overcloud_id for r in left})
        w.teardown()
        assert not left, [r.name for r in left][:10]
    finally:
        w.close()
