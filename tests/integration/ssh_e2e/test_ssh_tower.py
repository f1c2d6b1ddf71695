"""A Tower with the hosts lab's sites file (OVERCLOUD_SITES_FILE): the seed's request on
``"provider": "ssh"`` reaches READY (Post, clusters, DataLake, Fabric) with every box on the
lab's remote hosts, and delete leaves nothing on any host. The same request on the local
UnderCloud, on the same Tower, is timed beside it."""

from __future__ import annotations

import time

import pytest

from lab_tower import HOSTS, teardown_hosts
from towers import SIDE_OVERLAY, SIDE_SITES, TowerProcess

pytestmark = [pytest.mark.root, pytest.mark.timeout(600)]

SEED = {"provider": "ssh", "number": "2", "size": "m1.small"}


def _create(tower: TowerProcess, body: dict, timeout: float = 300) -> tuple[dict, float]:
    t0 = time.perf_counter()
    with tower.client() as c:
        r = c.post("/overclouds", json=body, params={"wait": "true"}, timeout=timeout)
    assert r.status_code in (200, 201, 202), r.text
    d = r.json()
    return d, time.perf_counter() - t0


def _delete(tower: TowerProcess, oc: str) -> tuple[dict, float]:
    t0 = time.perf_counter()
    d = tower.delete_and_wait(oc, timeout=300)
    return d, time.perf_counter() - t0


def _task_times(tower: TowerProcess, oc: str) -> str:
    """The last workflow's tasks and their durations, for the [measure] lines."""
    with tower.client() as c:
        wf = c.get(f"/overclouds/{oc}/workflow").json()
    tasks = wf["workflows"][wf["current"]]
    return ", ".join(f"{t['task']} {t['duration_s']:.2f}" for t in tasks if t.get("duration_s") is not None)


def test_seed_request_on_ssh_sites_is_ready_and_delete_leaves_nothing(hosts_lab, tmp_path, monkeypatch):  # noqa: F811
    from overcloud.datalake import seaweed
    from overcloud.underclouds.ssh.driver import ARTIFACT_CACHE

    monkeypatch.setenv("OC_TEST_SITES_FILE", str(hosts_lab.sites_file))
    weed = f"{ARTIFACT_CACHE}/{seaweed.weed_sha256(seaweed.weed_binary())}"
    for h in HOSTS:  # no host holds weed: the Tower's preparation at serve puts it on every one
        hosts_lab.outside(h, ["rm", "-f", weed], check=True)
    tower = TowerProcess(tmp_path / "tower", sites=SIDE_SITES, overlay=SIDE_OVERLAY,
                         OVERCLOUD_SITES_FILE=str(hosts_lab.sites_file)).start()
    try:
        with tower.client() as c:
            kinds = {u["name"]: u["kind"] for u in c.get("/underclouds").json()["underclouds"]}
        print(f"\nunderclouds: {kinds}")
        d, created = _create(tower, SEED)
        oc = d.get("overcloud_ID") or d.get("id")
        if d["status"] != "READY":
            print(tower.log.read_text()[-6000:])
        assert d["status"] == "READY", (d.get("error"), d.get("error_task"))
        with tower.client() as c:
            detail = c.get(f"/overclouds/{oc}").json()
        boxes = [detail["post"], *detail["clusters"]]
        assert len(boxes) == 3
        print(f"[measure] ssh create (Post + 2 clusters): {created:.2f}s")
        print(f"[measure] ssh create tasks: {_task_times(tower, oc)}")
        for b in boxes:
            assert b["site"] == "ssh-a", b
        # the boxes are on the remote hosts, not here
        on_hosts = " ".join(hosts_lab.outside(h, ["ip", "netns", "list"]).stdout for h in HOSTS)
        assert on_hosts.count(oc[:8]) == 3, on_hosts
        # weed is on ssh-b's hosts too, where this OverCloud has no box: staged with the hosts'
        # preparation at serve, not by a create's DataLake task
        deadline, missing = time.monotonic() + 120, list(HOSTS)
        while missing and time.monotonic() < deadline:
            missing = [h for h in HOSTS if hosts_lab.outside(h, ["test", "-f", weed]).returncode != 0]
            time.sleep(0.5 if missing else 0)
        assert not missing, f"weed not in the artifact cache of {missing}"
        # the seed's heterogeneous body across the two ssh sites: DataLake and Fabric span
        # WireGuard (volume servers and scrape targets on ssh-b, master and Prometheus on ssh-a)
        d, hetero = _create(tower, {"provider": "heterogeneous",
                                    "ssh-a": {"number": "1", "size": "small", "post": "yes"},
                                    "ssh-b": {"number": "1", "size": "small"}})
        assert d["status"] == "READY", (d.get("error"), d.get("error_task"))
        oc3 = d.get("overcloud_ID") or d.get("id")
        with tower.client() as c:
            detail3 = c.get(f"/overclouds/{oc3}").json()
            sites = sorted(b["site"] for b in [detail3["post"], *detail3["clusters"]])
        assert sites == ["ssh-a", "ssh-a", "ssh-b"], sites
        print(f"[measure] ssh-a + ssh-b create: {hetero:.2f}s; tasks: {_task_times(tower, oc3)}")
        d, _ = _delete(tower, oc3)
        assert d["status"] == "DELETED", (d.get("error"), d.get("error_task"))
        # a second create (warm: the hosts are prepared) for the comparison with local
        d, warm = _create(tower, SEED)
        assert d["status"] == "READY", (d.get("error"), d.get("error_task"))
        oc2 = d.get("overcloud_ID") or d.get("id")
        print(f"[measure] ssh create again (warm): {warm:.2f}s; tasks: {_task_times(tower, oc2)}")
        # the Tower reaches the remote Post's Prometheus through the session: PromQL, topology,
        # and the health watch keeps the OverCloud READY over several scrape intervals
        with tower.client() as c:
            r = c.get(f"/overclouds/{oc2}/metrics", params={"query": "up"})
            assert r.status_code == 200, r.text
            up = r.json()["result"]
            assert up and all(x["value"][1] == "1" for x in up), up
            assert c.get(f"/overclouds/{oc2}/topology").status_code == 200
            time.sleep(4)
            assert c.get(f"/overclouds/{oc2}").json()["status"] == "READY"
        created = warm
        _delete(tower, oc2)
        d, deleted = _delete(tower, oc)
        print(f"[measure] ssh delete: {deleted:.2f}s")
        print(f"[measure] ssh delete tasks: {_task_times(tower, oc)}")
        assert d["status"] == "DELETED", (d.get("error"), d.get("error_task"))
        for h in HOSTS:
            assert oc[:8] not in hosts_lab.outside(h, ["ip", "netns", "list"]).stdout, h
            assert oc[:8] not in hosts_lab.outside(h, ["ps", "-eo", "args"]).stdout, h
        # the same request on the local UnderCloud, for the ratio
        d, created_l = _create(tower, {**SEED, "provider": "local"})
        assert d["status"] == "READY", d.get("error")
        print(f"[measure] local create tasks: {_task_times(tower, d.get('overcloud_ID') or d.get('id'))}")
        _, deleted_l = _delete(tower, d.get("overcloud_ID") or d.get("id"))
        print(f"[measure] local create {created_l:.2f}s, delete {deleted_l:.2f}s; "
              f"ssh/local create {created / created_l:.2f}x, delete {deleted / deleted_l:.2f}x")
    finally:
        try:
            tower.cleanup()
        finally:
            teardown_hosts(tower.state_dir)
