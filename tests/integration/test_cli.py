"""The CLI against a running Tower: the whole life of an OverCloud, and its exit codes."""

from __future__ import annotations

import json

import pytest

from kernel import leftovers

pytestmark = pytest.mark.slow


def test_cli_create_show_workflow_list_delete(tower):
    r = tower.cli("-o", "json", "create", "--clusters", "2", "--site", "local-a", "--site", "local-b", "--wait", check=True)
    d = json.loads(r.stdout)
    oid = d["overcloud_ID"]
    assert d["status"] == "READY" and [b["site"] for b in d["clusters"]] == ["local-a", "local-b"]

    show = tower.cli("show", oid, check=True).stdout
    assert "c1" in show and "c2" in show and "READY" in show and "local-b" in show
    wf = tower.cli("workflow", oid, check=True).stdout
    for task in ("acquire_boxes", "overlay_network", "devops_post", "clusters", "register"):
        assert task in wf
    assert oid in tower.cli("list", check=True).stdout
    assert json.loads(tower.cli("-o", "json", "workflow", oid, check=True).stdout)["status"] == "READY"
    keys = json.loads(tower.cli("-o", "json", "datalake", "credentials", oid, check=True).stdout)
    assert keys["access_key"].startswith("AKIA") and len(keys["secret_key"]) == 40
    assert keys["secret_key"] not in show

    r = tower.cli("delete", oid, "--wait", check=True)
    assert "DELETED" in r.stdout
    assert leftovers(oid, tower.state_dir) == []
    archives = json.loads(tower.cli("-o", "json", "datalake", "archives", check=True).stdout)
    assert oid in [a["archive_id"] for a in archives]
    assert "purged" in tower.cli("datalake", "purge", oid, check=True).stdout
    r = tower.cli("create", "--clusters", "1", "--restore-from", oid)
    assert r.returncode == 2 and "no preserved DataLake" in r.stderr


def test_cli_exit_codes(tower, tmp_path):
    r = tower.cli("create", "--clusters", "0")
    assert r.returncode == 2 and "clusters" in r.stderr
    r = tower.cli("create", "--size", "m1.gigantic")
    assert r.returncode == 2 and "not a known size" in r.stderr and r.stderr.count("\n") == 1
    r = tower.cli("show", "nope")
    assert r.returncode == 2 and "no OverCloud" in r.stderr
    r = tower.cli("--url", "http://127.0.0.1:9", "list")
    assert r.returncode == 1 and "cannot reach the Tower" in r.stderr
    r = tower.cli("--token", "wrong", "list")
    assert r.returncode == 2 and "401" in r.stderr
    r = tower.cli("--state-dir", str(tmp_path), "--token", "", "list")
    assert r.returncode == 2 and "no token" in r.stderr
