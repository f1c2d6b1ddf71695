"""The Tower's own files belong to root alone: `serve` runs with umask 077, the state dir is
0700 and its files 0600, whatever modes an earlier install left."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess

import pytest

pytestmark = pytest.mark.slow


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_state_dir_and_its_files_are_roots_alone(own_tower, tmp_path):
    state = tmp_path / "tower"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    # what an older Tower left: a world-readable database
    sqlite3.connect(state / "overcloud.db").close()
    os.chmod(state / "overcloud.db", 0o644)
    t = own_tower().start()
    assert t.state_dir == state
    with t.client() as c:
        d = c.post("/overclouds", json={"provider": "local", "number": "1", "size": "small"},
                   params={"wait": "true"}, timeout=240).json()
    assert d["status"] == "READY", d.get("error")
    assert _mode(state) == 0o700
    top = {p.name: _mode(p) for p in state.iterdir() if p.is_file()}
    for name in ("overcloud.db", "workflows.db", "admin.token", "secret.key"):
        assert top.get(name) == 0o600, (name, oct(top.get(name, 0)))
    exposed = {n: oct(m) for n, m in top.items() if m & 0o077}
    assert not exposed, exposed
    # another local user can read nothing of it, however deep
    for path in (state / "overcloud.db", state / "admin.token", *state.glob("local/**/*")):
        if path.is_file():
            r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat", str(path)],
                               capture_output=True)
            assert r.returncode != 0 and not r.stdout, path
    # what boxes must read stays readable: their /etc/hosts
    etc = [p for p in os.listdir("/etc/netns") if d["overcloud_ID"][:8] in p]
    assert etc
    for h in etc:
        assert _mode(f"/etc/netns/{h}/hosts") == 0o644
