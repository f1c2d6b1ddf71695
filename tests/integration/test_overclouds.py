"""Create, look at and delete real OverClouds on the local UnderCloud, through the API."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from kernel import leftovers
from overcloud.boxes.netns import NetnsTransport

pytestmark = pytest.mark.slow

SEED = {"provider": "local", "number": "3", "size": "m1.small"}


def create(tower, body, wait=False) -> dict:
    with tower.client() as c:
        r = c.post("/overclouds", json=body, params={"wait": str(wait).lower()})
        assert r.status_code in (201, 202), r.text
        return r.json()


def delete(tower, overcloud_id) -> dict:
    with tower.client() as c:
        r = c.delete(f"/overclouds/{overcloud_id}")
        assert r.status_code in (200, 202), r.text
    return tower.wait_status(overcloud_id, {"DELETED", "FAILED"})


def test_seed_body_creates_a_verified_overcloud_and_the_seed_delete_removes_everything(tower):
    with tower.client() as c:
        r = c.post("/overclouds", json=SEED)
        assert r.status_code == 202
        first = r.json()
        assert first["status"] == "CREATING" and len(first["overcloud_ID"]) == 32
        oid = first["overcloud_ID"]
        d = tower.wait_status(oid, {"READY", "FAILED"})
        assert d["status"] == "READY", d["error"]
        assert d["ready_at"] and d["created_at"] and d["create_seconds"] > 0
        # the seed's field names, beside the richer ones
        assert d["devops_post"] == d["post"]["address"]
        assert len(d["logical_cluster"]) == 3 == len(d["clusters"])
        for box in [d["post"], *d["clusters"]]:
            assert box["site"] == "local-a" and box["state"] == "READY"
            assert box["address"].startswith("10.213.110.") and box["overlay_address"].startswith("10.251.")
        for box in d["clusters"]:
            assert box["flavor"] == {"name": "small", "cpus": 0.5, "memory_mb": 512}
        # the Post runs the DataLake's master, filer and S3 gateway: at least medium
        assert d["post"]["flavor"] == {"name": "medium", "cpus": 1.0, "memory_mb": 1024}
        for box in d["clusters"]:  # limits read back from the kernel's cgroups
            assert box["capacity"]["cpus"] == 0.5 and box["capacity"]["memory_mb"] == 512
            assert box["capacity"]["overlay_tcp"] == "ok"
        tasks = {t["task"]: t for t in d["workflow"]["workflows"]["create_overcloud"]}
        assert list(tasks) == ["validate", "acquire_boxes", "overlay_network", "devops_post", "clusters",
                               "datalake", "fabric", "register"]
        assert all(t["state"] == "SUCCESS" for t in tasks.values())
        assert "round trip" in tasks["datalake"]["message"] and "all UP" in tasks["fabric"]["message"]
        handles = [b["handle"] for b in [d["post"], *d["clusters"]]]
        # every box answers: its supervisord runs the overlay health responder
        for h in handles:
            assert NetnsTransport(h).exists()

        r = c.request("DELETE", "/overclouds", json={"overcloud_id": oid})  # the seed's form
        assert r.status_code == 202 and r.json()["status"] == "DELETING"
    gone = tower.wait_status(oid, {"DELETED", "FAILED"})
    assert gone["status"] == "DELETED" and gone["deleted_at"]
    assert leftovers(oid, tower.state_dir) == []
    with tower.client() as c:
        assert oid not in [o["overcloud_ID"] for o in c.get("/overclouds").json()]
        assert oid in [o["overcloud_ID"] for o in c.get("/overclouds", params={"include_deleted": True}).json()]
        wf = c.get(f"/overclouds/{oid}/workflow").json()["workflows"]["delete_overcloud"]
        assert [t["task"] for t in wf][-2:] == ["verify_clean", "mark_deleted"]
        assert all(t["state"] == "SUCCESS" for t in wf)


def test_native_body_spreads_clusters_over_two_sites_and_wait_blocks_until_ready(tower):
    body = {"name": "lab", "sites": [{"undercloud": "local-a", "clusters": 2, "size": "medium"},
                                     {"undercloud": "local-b", "clusters": 1, "size": "small", "post": True}]}
    with tower.client() as c:
        r = c.post("/overclouds", json=body, params={"wait": "true"})
    assert r.status_code == 201, r.text
    d = r.json()
    assert d["status"] == "READY" and d["name"] == "lab"
    assert d["post"]["site"] == "local-b" and d["post"]["address"].startswith("10.213.111.")
    assert [b["site"] for b in d["clusters"]] == ["local-a", "local-a", "local-b"]
    assert [b["capacity"]["memory_mb"] for b in d["clusters"]] == [1024, 1024, 512]
    assert delete(tower, d["overcloud_ID"])["status"] == "DELETED"
    assert leftovers(d["overcloud_ID"], tower.state_dir) == []


def test_seed_heterogeneous_body(tower):
    body = {"provider": "heterogeneous", "local-a": {"number": "1", "size": "m1.small", "post": "no"},
            "local-b": {"number": "1", "size": "m1.small", "post": "yes"}}
    d = create(tower, body, wait=True)
    assert d["status"] == "READY"
    assert d["post"]["site"] == "local-b" and [b["site"] for b in d["clusters"]] == ["local-a", "local-b"]
    assert delete(tower, d["overcloud_ID"])["status"] == "DELETED"


def _listen_in(handle: str, host: str, port: int) -> socket.socket:
    srv = NetnsTransport(handle).listen_tcp(host, port)

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conn.sendall(b"hello\n")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return srv


def test_two_overclouds_cannot_reach_each_other_at_any_address(tower):
    a = create(tower, {"provider": "heterogeneous", "local-a": {"number": "1", "size": "small", "post": "yes"},
                       "local-b": {"number": "1", "size": "small"}}, wait=True)
    b = create(tower, {"provider": "heterogeneous", "local-a": {"number": "1", "size": "small"},
                       "local-b": {"number": "1", "size": "small", "post": "yes"}}, wait=True)
    assert a["status"] == b["status"] == "READY"
    b_cluster = b["clusters"][0]
    srv = _listen_in(b_cluster["handle"], "0.0.0.0", 7777)
    try:
        # control: B's own Post reaches B's cluster over B's overlay, across sites
        b_post = NetnsTransport(b["post"]["handle"])
        # (retried, bounded: the first packets across sites wait for ARP over VXLAN)
        assert any(b_post.tcp_check(b_cluster["overlay_address"], 7777, timeout=1) for _ in range(5))
        # A's boxes, on both sites, reach B neither on the overlay nor on the site network
        for box in [a["post"], *a["clusters"]]:
            t = NetnsTransport(box["handle"])
            for addr in (b_cluster["overlay_address"], b_cluster["address"], b["post"]["address"]):
                assert not t.tcp_check(addr, 7777, timeout=0.5), f"{box['handle']} reached {addr}"
                assert not t.tcp_check(addr, 9001, timeout=0.5), f"{box['handle']} reached {addr}:9001"
        # and the same overlay subnet is never shared
        assert a["overlay"]["vni"] != b["overlay"]["vni"] and a["overlay"]["subnet"] != b["overlay"]["subnet"]
    finally:
        srv.close()
    for d in (a, b):
        assert delete(tower, d["overcloud_ID"])["status"] == "DELETED"
        assert leftovers(d["overcloud_ID"], tower.state_dir) == []


def test_events_stream_tells_the_whole_create(tower):
    d = create(tower, {"provider": "local", "number": "1", "size": "small"})
    oid = d["overcloud_ID"]
    events = []
    with tower.client() as c, c.stream("GET", f"/overclouds/{oid}/events") as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
    statuses = [e["status"] for k, e in events if k == "status"]
    assert statuses[0] == "CREATING" and statuses[-1] == "READY"
    done = {e["task"] for k, e in events if k == "task" and e["state"] == "SUCCESS"}
    assert {"acquire_boxes", "overlay_network", "devops_post", "clusters", "register"} <= done
    # resuming from an event id replays only what came after it
    with tower.client() as c:
        whole = c.get(f"/overclouds/{oid}/events", params={"after": 0}).text
        ids = [int(line[4:]) for line in whole.splitlines() if line.startswith("id: ")]
        assert ids == sorted(ids) and len(ids) == len(events)
        tail = c.get(f"/overclouds/{oid}/events", headers={"Last-Event-ID": str(ids[2])}).text
        assert [int(line[4:]) for line in tail.splitlines() if line.startswith("id: ")] == ids[3:]
    assert delete(tower, oid)["status"] == "DELETED"


def test_delete_is_idempotent_while_deleting_and_refused_while_creating(tower):
    with tower.client() as c:
        d = c.post("/overclouds", json={"provider": "local", "number": "2", "size": "small"}).json()
        oid = d["overcloud_ID"]
        r = c.delete(f"/overclouds/{oid}")
        if r.status_code == 409:  # still CREATING: refused, nothing changed
            assert "CREATING" in r.json()["message"]
            tower.wait_status(oid, {"READY"})
            r = c.delete(f"/overclouds/{oid}")
        assert r.status_code == 202
        again = c.delete(f"/overclouds/{oid}")
        assert again.status_code in (200, 202) and again.json()["status"] in ("DELETING", "DELETED")
    assert tower.wait_status(oid, {"DELETED"})["status"] == "DELETED"
    with tower.client() as c:
        assert c.delete(f"/overclouds/{oid}").status_code == 200  # already DELETED: nothing to do


def test_twenty_concurrent_creates_then_twenty_concurrent_deletes(tower):
    from concurrent.futures import ThreadPoolExecutor

    # the burst measures the Tower, not SeaweedFS and Prometheus: 20 DataLakes and Fabrics would be
    # 140 more processes on 2 cores
    def one_create(i):
        with tower.client() as c:
            return c.post("/overclouds", json={"name": f"burst{i}", "datalake": {"enabled": False}, "fabric": {"enabled": False},
                                               "sites": [{"undercloud": "local-b" if i % 2 else "local-a", "clusters": 1}]})

    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(one_create, range(20)))
    assert [r.status_code for r in responses] == [202] * 20
    ids = [r.json()["overcloud_ID"] for r in responses]
    assert len(set(ids)) == 20
    ready = [tower.wait_status(i, {"READY", "FAILED"}, timeout=180) for i in ids]
    assert [d["status"] for d in ready] == ["READY"] * 20, [d["error"] for d in ready if d["error"]]
    addresses = [b["address"] for d in ready for b in [d["post"], *d["clusters"]]]
    assert len(addresses) == len(set(addresses)) == 40

    def one_delete(i):
        with tower.client() as c:
            return c.delete(f"/overclouds/{i}")

    with ThreadPoolExecutor(20) as pool:
        codes = [r.status_code for r in pool.map(one_delete, ids)]
    assert codes == [202] * 20
    for i in ids:
        assert tower.wait_status(i, {"DELETED", "FAILED"}, timeout=180)["status"] == "DELETED"
        assert leftovers(i, tower.state_dir) == []
