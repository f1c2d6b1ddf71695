"""Faults on the simulated ssh sites (tests/hostslab.py): dead hosts, wrong pins, sshd killed,
a Tower killed, a host rebooted."""

from __future__ import annotations

from hostslab import hosts_lab  # noqa: F401 - the session fixture
