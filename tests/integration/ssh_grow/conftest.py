"""The ssh world growing and shrinking at run time on the simulated hosts (tests/hostslab.py)."""

from __future__ import annotations

from hostslab import hosts_lab  # noqa: F401 - the session fixture
