"""The ssh transport and site tests run against the simulated hosts (tests/hostslab.py)."""

from __future__ import annotations

import dataclasses

import pytest

from hostslab import hosts_lab  # noqa: F401 - the session fixture

from overcloud.underclouds.ssh.transport import SSHHost


@pytest.fixture
def ssh_host(hosts_lab):  # noqa: F811
    """A fresh SSHHost for och-a1 (its own connection), closed after the test."""
    made: list[SSHHost] = []

    def make(base: str = "och-a1", **changes) -> SSHHost:
        """An SSHHost for the lab host ``base``, with ``changes`` to its config (dataclasses.replace)."""
        cfg = dataclasses.replace(hosts_lab.host_config(base), **changes)
        h = SSHHost(cfg)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()
