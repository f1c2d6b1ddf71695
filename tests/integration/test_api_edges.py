"""Auth, bad input and metrics on a running Tower: 4xx with a message, nothing half-made."""

from __future__ import annotations

import os
import stat

import httpx
import pytest


def count(tower) -> int:
    with tower.client() as c:
        return len(c.get("/overclouds", params={"include_deleted": True}).json())


def test_healthz_is_open_and_everything_else_needs_the_token(tower):
    assert httpx.get(tower.url + "/healthz").json()["status"] == "ok"
    for path in ("/overclouds", "/metrics", "/openapi.json", "/docs", "/overclouds/x/workflow"):
        r = httpx.get(tower.url + path)
        assert r.status_code == 401, path
        assert r.json()["error"] == "unauthorized" and "Bearer" in r.json()["message"]
        r = httpx.get(tower.url + path, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["message"] == "the bearer token is not valid"
    with tower.client() as c:
        assert c.get("/openapi.json").json()["info"]["title"] == "OverCloud Tower"
        assert c.get("/docs").status_code == 200


def test_admin_token_file_is_private_and_never_logged(tower):
    path = tower.state_dir / "admin.token"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert tower.token not in tower.log.read_text()


BAD_BODIES = [
    ({"provider": "local", "number": "abc", "size": "m1.small"}, 422, "number"),
    ({"provider": "local", "number": "-1", "size": "m1.small"}, 422, "number"),
    ({"provider": "local", "number": "0", "size": "m1.small"}, 422, "number"),
    ({"provider": "local", "number": "1.5", "size": "m1.small"}, 422, "number"),
    ({"provider": "local", "number": "31", "size": "m1.small"}, 422, "maximum"),
    ({"provider": "Amazon", "number": "1", "size": "m1.small"}, 422, "configured: local-a (local), local-b (local)"),
    ({"provider": "local", "number": "1", "size": "m1.gigantic"}, 422, "known:"),
    ({"provider": "local", "number": "1"}, 422, "missing field 'size'"),
    ({"provider": "local", "number": "1", "size": "small", "extra": 1}, 422, "unknown field 'extra'"),
]


@pytest.mark.parametrize("body,status,words", BAD_BODIES)
def test_bad_create_bodies_are_4xx_with_a_message_and_create_nothing(tower, body, status, words):
    before = count(tower)
    with tower.client() as c:
        r = c.post("/overclouds", json=body)
    assert r.status_code == status and words in r.json()["message"], r.text
    assert count(tower) == before


def test_non_json_empty_and_huge_bodies(tower):
    before = count(tower)
    with tower.client() as c:
        r = c.post("/overclouds", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and "not valid JSON" in r.json()["message"]
        r = c.post("/overclouds", content=b"")
        assert r.status_code == 422 and "empty" in r.json()["message"]
        big = b'{"provider": "local", "number": "1", "size": "small", "name": "' + b"x" * (1024 * 1024) + b'"}'
        r = c.post("/overclouds", content=big, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["error"] == "body_too_large"

        def chunks():  # no Content-Length: the limit holds while streaming too
            for _ in range(20):
                yield b"x" * 100_000

        r = c.post("/overclouds", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413
    assert count(tower) == before


def test_unknown_ids_are_404_and_bad_seed_delete_bodies_422(tower):
    with tower.client() as c:
        for method, path in (("GET", "/overclouds/nope"), ("GET", "/overclouds/nope/workflow"),
                             ("GET", "/overclouds/nope/events"), ("DELETE", "/overclouds/nope")):
            r = c.request(method, path)
            assert r.status_code == 404 and "GET /overclouds" in r.json()["message"], (method, path)
        r = c.request("DELETE", "/overclouds", json={"overcloud_id": "nope"})
        assert r.status_code == 404
        for body in ({}, {"overcloud_id": 3}, {"overcloud_id": "x", "also": 1}):
            r = c.request("DELETE", "/overclouds", json=body)
            assert r.status_code == 422, body


def test_metrics_count_requests_workflows_and_overclouds_by_status(tower):
    with tower.client() as c:
        d = c.post("/overclouds", json={"provider": "local", "number": "1", "size": "small"}, params={"wait": "true"}).json()
        assert d["status"] == "READY"
        text = c.get("/metrics").text
        c.delete(f"/overclouds/{d['overcloud_ID']}", params={"wait": "true"})
    assert 'overcloud_overclouds{status="READY"}' in text
    assert 'overcloud_http_requests_total{method="POST",route="/overclouds",status="201"}' in text
    assert 'overcloud_workflow_seconds_count{outcome="success",workflow="create_overcloud"}' in text
    assert 'overcloud_workflow_task_seconds_count{state="SUCCESS",task="acquire_boxes",workflow="create_overcloud"}' in text
