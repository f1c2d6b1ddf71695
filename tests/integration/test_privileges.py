"""Without CAP_NET_ADMIN, `overcloud serve` says why it cannot run, in one line, and exits 1."""

import subprocess
import sys
from pathlib import Path

OVERCLOUD = str(Path(sys.executable).parent / "overcloud")


def test_serve_without_net_admin_says_the_local_undercloud_needs_it(tmp_path):
    r = subprocess.run(
        ["setpriv", "--inh-caps=-net_admin,-sys_admin", "--bounding-set=-net_admin,-sys_admin",
         OVERCLOUD, "serve", "--port", "1", "--state-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 1
    assert "the local UnderCloud needs root or CAP_NET_ADMIN" in r.stderr
    assert "Traceback" not in r.stderr
