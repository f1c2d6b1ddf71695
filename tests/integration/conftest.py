"""Integration fixtures: a real Tower process on the real local UnderCloud (needs root).

Test Towers use their own site bridges and address ranges (see towers.py), so a developer's
demo Tower on the default ones is never touched."""

from __future__ import annotations

import os

import pytest

from towers import OWN_OVERLAY, OWN_SITES, TowerProcess, own_towers


@pytest.fixture(autouse=True)
def _needs_root():
    if os.geteuid() != 0:
        pytest.fail("integration tests need root (network namespaces, bridges, cgroups); run `make test` as root")


@pytest.fixture(scope="session")
def tower(tmp_path_factory):
    """One Tower shared by the tests that do not kill it."""
    t = TowerProcess(tmp_path_factory.mktemp("tower")).start()
    yield t
    t.cleanup()


@pytest.fixture
def own_tower(tmp_path):
    """A Tower for one test (to be killed, restarted, configured differently)."""
    yield from own_towers(tmp_path / "tower", OWN_SITES, OWN_OVERLAY)
