"""Fixtures of the cloud labs (one OpenStack lab per machine, one per test session).

``openstack_lab``: the lab of ``scripts/openstack-lab.sh``. When ``OVERCLOUD_OSLAB_DIR`` names a
lab that is up (a developer's, e.g. /var/tmp/oslab-dev), it is used and left running; otherwise
the fixture starts one in a temporary directory and stops it after the session. A test that
needs the lab fails (never skips) when it cannot start.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
OSLAB = REPO / "scripts" / "openstack-lab.sh"


class OpenStackLab:
    def __init__(self, directory: Path):
        self.dir = Path(directory).resolve()

    @property
    def clouds_file(self) -> Path:
        return self.dir / "clouds.yaml"

    @property
    def admin_clouds_file(self) -> Path:
        return self.dir / "clouds-admin.yaml"

    @property
    def sites_file(self) -> Path:
        return self.dir / "sites.yaml"

    def script(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(["bash", str(OSLAB), *args], capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise RuntimeError(f"scripts/openstack-lab.sh {' '.join(args)} failed ({r.returncode}): "
                               f"{(r.stderr or r.stdout).strip()[-2000:]}")
        return r

    def is_up(self) -> bool:
        if not (self.clouds_file.is_file() and self.sites_file.is_file()):
            return False
        try:
            r = subprocess.run(["bash", str(OSLAB), "status", str(self.dir)], capture_output=True, text=True,
                               timeout=60, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            return False
        if r.returncode != 0:
            return False
        try:
            st = json.loads(r.stdout)
        except ValueError:
            return True  # a status that is not JSON but succeeded
        return bool(st.get("up", st.get("ok", True))) if isinstance(st, dict) else True

    def up(self) -> "OpenStackLab":
        self.script("up", str(self.dir))
        return self

    def down(self) -> None:
        self.script("down", str(self.dir), timeout=300)

    def stop_keystone(self) -> None:
        self.script("stop-keystone", str(self.dir), timeout=60)

    def start_keystone(self) -> None:
        self.script("start-keystone", str(self.dir), timeout=180)


def _running(lab):
    """``lab`` up for the fixture's life and down after; a failed start takes down what it left."""
    try:
        lab.up()
    except Exception:
        with contextlib.suppress(Exception):
            lab.down()
        raise
    try:
        yield lab
    finally:
        lab.down()


@pytest.fixture(scope="session")
def openstack_lab(tmp_path_factory):
    dev = os.environ.get("OVERCLOUD_OSLAB_DIR")
    if dev and OpenStackLab(Path(dev)).is_up():
        yield OpenStackLab(Path(dev))
        return
    yield from _running(OpenStackLab(tmp_path_factory.mktemp("oslab")))


@pytest.fixture(scope="session")
def aws_lab(tmp_path_factory):
    """The AWS lab of ``scripts/aws-lab.sh`` (moto + the harness booting its instances), once per
    session (one lab per machine: every test that needs it uses this fixture). ``.dir``,
    ``.sites_file`` (site aws-1), ``.url``. Fails, never skips, when it cannot start."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from ec2lab import AWSLab

    yield from _running(AWSLab(tmp_path_factory.mktemp("awslab")))


# The cloud tests' own Towers get local sites and an overlay of their own (towers.SIDE_SITES, not
# OWN_SITES): `make test` runs this directory beside the rest of the suite, in a second pytest
# process (scripts/test.sh), so its Towers must never share bridges or ranges with the others'.
@pytest.fixture
def own_tower(tmp_path):
    """A Tower for one test, on the side process's local sites (towers.SIDE_SITES)."""
    from towers import SIDE_OVERLAY, SIDE_SITES, own_towers

    yield from own_towers(tmp_path / "tower", SIDE_SITES, SIDE_OVERLAY)
