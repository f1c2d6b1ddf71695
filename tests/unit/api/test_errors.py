"""The API's error answers on hostile bodies: 4xx in our shape ({"error", "message", "field"}),
never a 500, and never more than a few hundred characters of what was sent (a 100 KB
``provider`` came back whole before). A real app on an unstarted Tower: nothing here reaches
an UnderCloud."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from overcloud.api.app import create_app
from overcloud.config import Settings
from overcloud.tower import Tower

LONG = "x" * 100_000
DEEP = b"[" * 200_000 + b"]" * 200_000
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    tower = Tower(Settings(state_dir=tmp_path_factory.mktemp("tower")))
    tower.repo.upgrade()
    app = create_app(tower)
    return TestClient(app, headers={"Authorization": f"Bearer {app.state.admin_token}"})


def small(r, status: int) -> dict:
    assert r.status_code == status, r.text[:300]
    assert len(r.content) < 1200, r.text[:300]
    body = r.json()
    assert body["error"] and body["message"] and len(body.get("field") or "") < 260
    return body


@pytest.mark.parametrize("method,path", [("POST", "/overclouds"), ("DELETE", "/overclouds"),
                                         ("PATCH", "/overclouds/x/services/y")])
def test_json_nested_deep_or_with_a_5000_digit_number_is_400(client, method, path):
    small(client.request(method, path, content=DEEP, headers=JSON), 400)
    small(client.request(method, path, content=b'{"number": ' + b"1" * 5000 + b"}", headers=JSON), 400)


def test_create_refusals_echo_little_of_the_body(client):
    body = small(client.post("/overclouds", json={"provider": LONG, "number": "1", "size": "small"}), 422)
    assert "100000 characters" in body["message"] and "configured:" in body["message"]
    small(client.post("/overclouds", json={"provider": "heterogeneous", LONG: {"number": "1", "size": "small"}}), 422)
    small(client.post("/overclouds", json={"provider": "local", "number": "1", "size": LONG}), 422)
    small(client.post("/overclouds", json={"provider": "local", "number": 10**4000, "size": "small"}), 422)
    small(client.post("/overclouds", json={"provider": "local", "number": "1", "size": "small", LONG: 1}), 422)
    small(client.post("/overclouds", json={"sites": [{"undercloud": "local", "clusters": 1, LONG: 1}]}), 422)


def test_validation_and_path_errors_echo_little(client):
    body = small(client.patch("/overclouds/x/services/y", json={"replicas": 1, LONG: 1}), 422)
    assert "Extra inputs" in body["message"]
    small(client.get("/overclouds/" + "y" * 10_000), 404)
    small(client.get("/overclouds/x/services/" + "z" * 10_000), 404)


def test_starlette_errors_answer_in_our_shape(client):
    assert small(client.get("/no-such-path"), 404)["error"] == "not_found"
    assert small(client.put("/healthz"), 405)["error"] == "method_not_allowed"
