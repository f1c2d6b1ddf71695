"""The Tower dies; OverClouds do not leak. kill -9 mid-create, restart, and the sweeper."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from towers import local_host
from kernel import leftovers
from overcloud.underclouds.base import BoxSpec, resolve_flavor

pytestmark = pytest.mark.slow


def _wait_task_running(t, oid: str, tasks: set[str], timeout: float = 30) -> str:
    """Poll until one of ``tasks`` is RUNNING; returns its name."""
    deadline = time.monotonic() + timeout
    with t.client() as c:
        while time.monotonic() < deadline:
            wf = c.get(f"/overclouds/{oid}/workflow").json()["workflows"]["create_overcloud"]
            running = [x["task"] for x in wf if x["state"] == "RUNNING" and x["task"] in tasks]
            if running:
                return running[0]
            time.sleep(0.002)
    raise AssertionError(f"none of {tasks} ran")


@pytest.mark.parametrize(
    "clusters,kill_in",
    [(6, {"acquire_boxes"}), (2, {"acquire_boxes", "overlay_network"}), (4, {"devops_post", "clusters", "register"})],
)
def test_kill_9_mid_create_then_restart_ends_ready_or_failed_with_nothing_left(own_tower, clusters, kill_in):
    t = own_tower().start()
    with t.client() as c:
        oid = c.post("/overclouds", json={"provider": "heterogeneous", "local-a": {"number": str(clusters // 2), "size": "small"},
                                          "local-b": {"number": str(clusters - clusters // 2), "size": "small"}}).json()["overcloud_ID"]
    task = _wait_task_running(t, oid, kill_in)
    t.kill9()
    t.start()  # same state dir: resumes the unfinished workflow
    d = t.wait_status(oid, {"READY", "FAILED"}, timeout=120)
    if d["status"] == "READY":
        assert len(d["clusters"]) == clusters and all(b["state"] == "READY" for b in d["clusters"])
        with t.client() as c:
            c.delete(f"/overclouds/{oid}")
        assert t.wait_status(oid, {"DELETED"})["status"] == "DELETED"
    else:
        assert d["error"]["task"], d
    assert leftovers(oid, t.state_dir) == [], f"killed while {task} ran; ended {d['status']}"


def test_sweep_lists_and_removes_only_what_no_live_overcloud_owns(own_tower):
    t = own_tower().start()
    with t.client() as c:
        live = c.post("/overclouds", json={"provider": "local", "number": "1", "size": "small"}, params={"wait": "true"}).json()
    assert live["status"] == "READY", live["error"]
    orphan_id = uuid.uuid4().hex
    host = local_host(t.state_dir, t.sites, t.overlay)
    host.site("local-b").acquire([BoxSpec(orphan_id, "c1", "cluster", "local-b", resolve_flavor("small"))])
    assert leftovers(orphan_id, t.state_dir) != []

    listed = t.cli("-o", "json", "sweep", check=True)
    rows = json.loads(listed.stdout)
    assert rows and {r["overcloud_id"] for r in rows} == {orphan_id}
    assert {"netns", "veth", "cgroup"} <= {r["kind"] for r in rows}
    assert leftovers(orphan_id, t.state_dir) != []  # listing removes nothing

    t.cli("sweep", "--yes", check=True)
    assert leftovers(orphan_id, t.state_dir) == []
    assert json.loads(t.cli("-o", "json", "sweep", check=True).stdout) == []
    with t.client() as c:  # the live OverCloud was not touched
        assert c.get(f"/overclouds/{live['overcloud_ID']}").json()["status"] == "READY"
    assert leftovers(live["overcloud_ID"], t.state_dir) != []


def test_a_tower_on_postgresql_creates_deletes_and_resumes(own_tower, postgres):
    url = postgres.create_database("oc_tower_pg")
    t = own_tower(OVERCLOUD_DATABASE_URL=url.replace("postgresql+psycopg://", "postgresql://")).start()
    assert not (t.state_dir / "overcloud.db").exists() and not (t.state_dir / "workflows.db").exists()
    with t.client() as c:
        oid = c.post("/overclouds", json={"provider": "local", "number": "2", "size": "small"}).json()["overcloud_ID"]
    _wait_task_running(t, oid, {"acquire_boxes", "overlay_network"})
    t.kill9()
    t.start()
    d = t.wait_status(oid, {"READY", "FAILED"}, timeout=120)
    if d["status"] == "READY":
        with t.client() as c:
            c.delete(f"/overclouds/{oid}")
        assert t.wait_status(oid, {"DELETED"})["status"] == "DELETED"
    assert leftovers(oid, t.state_dir) == []


def test_preserve_failure_stops_the_delete_and_a_tower_killed_during_preserve_finishes_it(own_tower):
    """The Construction DataLake is down: the delete stops before destroying anything. Then the
    Tower dies in the middle of preserving: on restart the delete resumes; nothing is lost."""
    from concurrent.futures import ThreadPoolExecutor

    from overcloud.boxes.netns import NetnsTransport
    from overcloud.components.construction import ConstructionDataLake
    from overcloud.datalake import clients

    t = own_tower().start()
    with t.client() as c:
        d = c.post("/overclouds", json={"provider": "local", "number": "1", "size": "small"}, params={"wait": "true"},
                   timeout=180).json()
        assert d["status"] == "READY", d["error"]
        oid = d["overcloud_ID"]
        cr = c.get(f"/overclouds/{oid}/datalake/credentials").json()
    objects = {f"o/{i:05d}": f"payload {i}".encode() * 20 for i in range(1500)}
    box = NetnsTransport(d["clusters"][0]["handle"])

    def write():
        client = clients.s3_client(cr["s3_endpoint"], cr["access_key"], cr["secret_key"])
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda kv: client.put_object(Bucket="data", Key=kv[0], Body=kv[1]), objects.items()))

    def count() -> int:
        client = clients.s3_client(cr["s3_endpoint"], cr["access_key"], cr["secret_key"])
        pages = client.get_paginator("list_objects_v2").paginate(Bucket="data")
        return sum(len(p.get("Contents", [])) for p in pages)

    box.call(write)
    ConstructionDataLake(t.state_dir).stop()
    with t.client() as c:
        assert c.delete(f"/overclouds/{oid}").status_code == 202
    failed = t.wait_status(oid, {"FAILED", "DELETED"}, timeout=180)
    assert failed["status"] == "FAILED" and failed["error"]["task"] == "preserve_datalake"
    assert "nothing was destroyed" in failed["error"]["cause"]
    assert box.call(count) == len(objects)  # the DataLake still runs with every object

    t.kill9()
    t.start()  # starts the Construction DataLake again
    with t.client() as c:
        assert c.delete(f"/overclouds/{oid}").status_code == 202
    _wait_delete_task_running(t, oid, "preserve_datalake")
    time.sleep(0.5)  # let it copy a part
    t.kill9()
    t.start()
    gone = t.wait_status(oid, {"DELETED", "FAILED"}, timeout=300)
    assert gone["status"] == "DELETED", gone["error"]
    with t.client() as c:
        archive = c.get(f"/datalake/archives/{oid}").json()
    assert archive["complete"] and archive["counts"]["objects"] == len(objects)
    assert leftovers(oid, t.state_dir) == []


def _wait_delete_task_running(t, oid: str, task: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with t.client() as c:
        while time.monotonic() < deadline:
            wf = c.get(f"/overclouds/{oid}/workflow").json()["workflows"].get("delete_overcloud", [])
            if any(x["task"] == task and x["state"] == "RUNNING" for x in wf):
                return
            time.sleep(0.01)
    raise AssertionError(f"{task} never ran")
