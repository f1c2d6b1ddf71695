"""No input amplifies (issue 10, point 7), on a real Tower: each hostile input of amplifiers.py
is a 4xx naming its cap, the answer is small, nothing is composed, and the Tower's memory
grows by less than 50 MB over all of them (a 500-byte pattern alone once cost 280 MB). An
exec probe that prints 400 MB costs the Tower little too (it grew by 700 MB). How long each
refusal takes is printed by bench/amplification.py, not asserted here."""

from __future__ import annotations

import pytest
from amplifiers import DEPLOYMENT, GZIP, YAML, inputs, rss_bytes

pytestmark = pytest.mark.slow
MB = 2**20


@pytest.fixture(scope="module")
def oc(tower):
    """A small READY OverCloud to send patterns to (one cluster, nothing else)."""
    with tower.client() as c:
        d = c.post("/overclouds", json={"name": "amp", "sites": [{"undercloud": "local-a", "clusters": 1}],
                                        "datalake": {"enabled": False}, "fabric": {"enabled": False}},
                   params={"wait": "true"}, timeout=240).json()
    assert d["status"] == "READY", d.get("error")
    yield d
    assert tower.delete_and_wait(d["overcloud_ID"])["status"] == "DELETED"


def send(c, oid: str, method: str, path: str, body: bytes, content_type: str):
    return c.request(method, path.format(oc=oid), content=body, headers={"Content-Type": content_type}, timeout=120)


def test_hostile_inputs_are_refused_small_and_cost_the_tower_little_memory(tower, oc):
    oid = oc["overcloud_ID"]
    hostile = inputs()
    with tower.client() as c:
        # benign mistakes of each kind first, so that the modules they load are not counted
        for body, ctype in ((b"kind: Nope\n", YAML), (b"\x1f\x8b not a gzip", GZIP)):
            assert send(c, oid, "POST", "/overclouds/{oc}/services", body, ctype).status_code == 422
        assert c.post("/overclouds", content=b"[1", headers={"Content-Type": "application/json"}).status_code == 400
        before = rss_bytes(tower.proc.pid)
        seen = []  # the growth after each, for the message
        for _ in range(2):  # twice: what a refusal leaves behind must not add up
            for x in hostile:
                r = send(c, oid, x.method, x.path, x.body, x.content_type)
                assert r.status_code == x.status, (x.name, r.status_code, r.text[:300])
                assert x.words in r.json()["message"] and len(r.content) < 2000, (x.name, r.text[:300])
                seen.append(f"{x.name}: {(rss_bytes(tower.proc.pid) - before) / MB:+.0f} MB")
        grown = rss_bytes(tower.proc.pid) - before
        assert c.get(f"/overclouds/{oid}/services").json() == []
    assert grown < 50 * MB, f"the Tower grew by {grown / MB:.0f} MB: " + "; ".join(seen)


def test_an_exec_probe_printing_400_mb_costs_the_tower_little_memory(tower, oc, tmp_path):
    (tmp_path / "images" / "amp").mkdir(parents=True)
    tower.cli("images", "build", str(tmp_path), "--runtime", "process", check=True)
    pattern = DEPLOYMENT.format(extra="          readinessProbe: {exec: {command: [sh, -c, 'head -c 400000000 /dev/zero']},"
                                      " periodSeconds: 3600, timeoutSeconds: 30}\n")
    oid = oc["overcloud_ID"]
    with tower.client() as c:
        before = rss_bytes(tower.proc.pid)
        r = c.post(f"/overclouds/{oid}/services", content=pattern, headers={"Content-Type": YAML},
                   params={"runtime": "process", "wait": "true", "timeout": "120"}, timeout=180)
        assert r.status_code == 201, r.text[:500]  # READY: the probe ran, printed its 400 MB and passed
        grown = rss_bytes(tower.proc.pid) - before
        assert c.delete(f"/overclouds/{oid}/services/amp").status_code == 200
    assert grown < 50 * MB, f"the Tower grew by {grown / MB:.0f} MB"
