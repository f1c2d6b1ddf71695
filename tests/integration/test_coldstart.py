"""Cold start (issue 11, point 7): ``overcloud serve`` starts the Construction DataLake and
publishes its artifacts in the background; a create that comes earlier waits only for what it
still lacks, and a store that cannot start refuses creates at once with the reason.
No timing asserts: ``bench/coldstart.py`` times it."""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import os
import signal
from pathlib import Path

from towers import OWN_SITES, wait_for


def _weed_sha() -> str:
    from overcloud.datalake import seaweed

    return seaweed.weed_sha256(seaweed.weed_binary())


def _store_client(t):
    from overcloud.components.construction import ConstructionDataLake
    from overcloud.identity.secrets import SecretBox, load_key

    gateway = str(next(ipaddress.ip_network(OWN_SITES[0]["cidr"]).hosts()))
    return ConstructionDataLake(t.state_dir, bind_ip=gateway, secrets=SecretBox(load_key(t.state_dir))).client()


def _log(t) -> str:
    return t.log.read_text(errors="replace")


def test_serve_starts_the_store_and_publishes_before_any_create(own_tower):
    """Before any create: the store runs, weed is in its artifacts bucket and in the host's
    artifact cache (the file boxes run, checked against its SHA-256)."""
    from overcloud.components.construction import ARTIFACTS, ConstructionDataLake

    t = own_tower().start()
    sha = _weed_sha()
    wait_for(lambda: "Construction DataLake published weed" in _log(t), "weed published at serve", bound=90)
    with t.client() as c:
        assert c.get("/overclouds").json() == []  # nothing asked for it
    assert ConstructionDataLake(t.state_dir).pids(), "the store's supervisord and weed run"
    head = _store_client(t).head_object(Bucket=ARTIFACTS, Key=f"sha256/{sha}")
    assert head["ContentLength"] > 0
    cached = t.state_dir / "artifact-cache" / sha
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == sha
    assert not any(m in _log(t) for m in ("DataLake did not start", "could not put", "could not publish"))


def test_a_create_that_comes_while_publishing_waits_for_it_then_is_ready(own_tower):
    """The artifact cache's lock on weed is held (as a box's fetch.py would hold it while
    downloading): /healthz answers and the store starts all the same; a create sent then
    reaches its DataLake task and waits there, CREATING; once the lock goes, it is READY."""
    t = own_tower()
    sha = _weed_sha()
    cache = t.state_dir / "artifact-cache"
    cache.mkdir(parents=True)
    with open(cache / f"{sha}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        t.start()  # /healthz answers while publishing cannot finish
        wait_for(lambda: "Construction DataLake running" in _log(t), "the store running meanwhile", bound=90)
        with t.client() as c:
            r = c.post("/overclouds", json={"provider": "local", "number": "1", "size": "small"})
            assert r.status_code == 202, r.text
            oid = r.json()["overcloud_ID"]

            def datalake_running() -> bool:
                wf = c.get(f"/overclouds/{oid}/workflow").json()["workflows"]["create_overcloud"]
                return any(x["task"] == "datalake" and x["state"] == "RUNNING" for x in wf)

            wait_for(datalake_running, "the create's DataLake task running", bound=60)
            assert c.get(f"/overclouds/{oid}").json()["status"] == "CREATING"
            assert not (cache / sha).exists(), "weed was put into the cache while its lock was held"
        fcntl.flock(lock, fcntl.LOCK_UN)
    d = t.wait_status(oid, {"READY", "FAILED"}, timeout=180)
    assert d["status"] == "READY", d["error"]
    assert (cache / sha).is_file()
    wait_for(lambda: "Construction DataLake published weed" in _log(t), "weed published", bound=60)


def test_a_create_does_not_wait_for_the_store_its_boxes_do_not_need(own_tower):
    """The store's weed is stopped (SIGSTOP) before its S3 answers: the store is not running,
    yet a create becomes READY, its DataLake's programs starting from the host's artifact
    cache; once weed goes on, the store runs and weed is published."""
    from overcloud.components.construction import ConstructionDataLake

    t = own_tower().start()
    store = ConstructionDataLake(t.state_dir)

    def weed_pid() -> int | None:
        for pid in store.pids():
            try:
                if Path(f"/proc/{pid}/exe").resolve().name == "weed":
                    return pid
            except OSError:
                continue
        return None

    pid = wait_for(weed_pid, "the store's weed started", bound=30)
    os.kill(pid, signal.SIGSTOP)
    try:
        assert "Construction DataLake running" not in _log(t), "the store answered before weed could be stopped"
        with t.client() as c:
            d = c.post("/overclouds", json={"provider": "local", "number": "1", "size": "small"},
                       params={"wait": "true"}, timeout=180).json()
        assert d["status"] == "READY", d["error"]
        assert "Construction DataLake running" not in _log(t)  # it was READY without the store
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: "Construction DataLake published weed" in _log(t), "weed published once the store runs", bound=90)


def test_a_store_that_cannot_start_refuses_creates_with_the_reason(own_tower):
    """The store's data dir cannot be made (a file stands there): serve still answers, the
    log says why, and a create with a DataLake is refused at once (503) naming the cause --
    not recorded, not left to fail in its tasks; one without a DataLake does not need it."""
    t = own_tower()
    blocker = t.state_dir / "construction" / "data"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a directory")
    t.start()
    wait_for(lambda: "the Construction DataLake did not start" in _log(t), "the failure in the log", bound=60)
    with t.client() as c:
        r = c.post("/overclouds", json={"provider": "local", "number": "1", "size": "small"})
        assert r.status_code == 503, r.text
        message = r.json()["message"]
        assert "Construction DataLake did not start" in message and str(blocker) in message, message
        assert c.get("/overclouds").json() == []
        r = c.get("/datalake/archives")
        assert r.status_code == 503 and "did not start" in r.json()["message"], r.text
        d = c.post("/overclouds", json={"name": "no-datalake", "datalake": {"enabled": False}, "fabric": {"enabled": False},
                                        "sites": [{"undercloud": "local-a", "clusters": 1, "post": True}]},
                   params={"wait": "true"}, timeout=180).json()
        assert d["status"] == "READY", d["error"]
    blocker.unlink()  # so the cleanup's delete and stop find a normal state dir
