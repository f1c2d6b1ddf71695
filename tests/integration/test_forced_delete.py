"""Delete is always possible: an OverCloud whose Post has gone is deleted with preserve=false."""

from __future__ import annotations

import subprocess

import pytest

from kernel import leftovers

pytestmark = pytest.mark.slow


def _post_handle(t, oid: str) -> str:
    from towers import local_host

    leases = [b for b in local_host(t.state_dir, t.sites, t.overlay).leases.boxes() if b.get("overcloud_id") == oid]
    posts = [b["handle"] for b in leases if b.get("role") == "post"]
    assert posts, leases
    return posts[0]


def _ready_overcloud(t) -> str:
    """A READY OverCloud (Post + one cluster, with its DataLake); returns its id."""
    with t.client() as c:
        d = c.post("/overclouds", json={"provider": "local", "number": "1", "size": "small"},
                   params={"wait": "true"}, timeout=240).json()
    assert d["status"] == "READY", d.get("error")
    return d["overcloud_ID"]


def test_an_overcloud_whose_post_is_gone_is_deleted_with_preserve_false(own_tower):
    t = own_tower().start()
    oid = _ready_overcloud(t)
    # the Post's namespace vanishes (its processes live on, unreachable): what a crashed host looks like
    subprocess.run(["ip", "netns", "del", _post_handle(t, oid)], check=True)

    failed = t.delete_and_wait(oid)
    assert failed["status"] == "FAILED"
    assert failed["error"]["task"] == "preserve_datalake", failed["error"]
    assert "nothing was destroyed" in failed["error"]["cause"]

    r = t.cli("delete", oid, "--force", "--wait", timeout=180)
    assert r.returncode == 0, r.stderr
    assert "not kept" in r.stderr and "DataLake" in r.stderr
    with t.client() as c:
        detail = c.get(f"/overclouds/{oid}").json()
        tasks = {x["task"]: x for x in c.get(f"/overclouds/{oid}/workflow").json()["workflows"]["delete_overcloud"]}
    assert detail["status"] == "DELETED"
    assert "were not kept" in str(tasks["preserve_datalake"]), tasks["preserve_datalake"]
    assert leftovers(oid, t.state_dir) == []
    with t.client() as c:
        archives = c.get("/datalake/archives").json()
    assert oid not in str(archives), "a forced delete makes no archive"


def test_preserve_false_on_a_healthy_overcloud_keeps_no_archive(own_tower):
    t = own_tower().start()
    oid = _ready_overcloud(t)
    with t.client() as c:
        r = c.delete(f"/overclouds/{oid}", params={"preserve": "false", "wait": "true"}, timeout=180)
        assert r.status_code == 200, r.text
        assert "not_kept" in r.json() and r.json()["status"] == "DELETED"
        bad = c.delete(f"/overclouds/{oid}", params={"preserve": "maybe"})
        assert bad.status_code in (400, 422), bad.text
        assert oid not in str(c.get("/datalake/archives").json())
    assert leftovers(oid, t.state_dir) == []
