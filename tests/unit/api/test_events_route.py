"""GET /overclouds/{id}/events through the real app over an unstarted Tower (no UnderCloud):
the route counts streams against the caps, answers 429 in our error shape beyond them, and
gives slots back."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from fastapi.testclient import TestClient

from overcloud import states
from overcloud.api.app import create_app
from overcloud.config import Settings
from overcloud.tower import Tower


@pytest.fixture
def app(tmp_path):
    tower = Tower(Settings(state_dir=tmp_path, max_streams=2, max_streams_per_token=2))
    tower.repo.upgrade()
    yield create_app(tower)
    tower.repo.close()


def test_a_stream_past_the_cap_is_429_and_a_finished_one_gives_its_slot_back(app):
    repo = app.state.tower.repo
    oid = uuid.uuid4().hex
    repo.create_overcloud(oid, "lab", "admin", {"sites": []})
    repo.set_status(oid, states.FAILED, error="boom")
    client = TestClient(app, headers={"Authorization": f"Bearer {app.state.admin_token}"})
    for _ in range(3):  # each ends once its backlog is out (the OverCloud rests): slots come back
        text = client.get(f"/overclouds/{oid}/events").text
        assert [line for line in text.splitlines() if line.startswith("event: ")] == ["event: status", "event: status"]
    hub = app.state.streams
    assert hub.open == 0
    held = [asyncio.run(hub.subscribe(oid, "another token", follow=True)) for _ in range(2)]
    r = client.get(f"/overclouds/{oid}/events")
    assert r.status_code == 429 and r.headers["retry-after"] == "5"
    assert r.json() == {"error": "quota_exceeded", "message": "2 event streams are open on this Tower, the most it "
                        "serves at once (OVERCLOUD_MAX_STREAMS); close one, or retry later"}
    assert client.get("/overclouds/nope/events").status_code == 404  # unknown first, cap second
    hub.release(held.pop())
    assert client.get(f"/overclouds/{oid}/events").status_code == 200  # (a watcher on this loop, not the dead one)
