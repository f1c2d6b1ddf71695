"""End to end on the simulated ssh sites (tests/hostslab.py)."""

from __future__ import annotations

from hostslab import hosts_lab  # noqa: F401 - the session fixture
