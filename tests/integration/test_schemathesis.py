"""Property-based run over the Tower's own OpenAPI spec: whatever is sent, never a 5xx.

A Tower of its own with a tight quota (2 clusters per OverCloud, 12 boxes in all), so the
valid bodies hypothesis finds create real but few OverClouds; the rest must be 4xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from towers import TowerProcess

SITES = [
    {"name": "local-a", "kind": "local", "bridge": "oct-e", "cidr": "10.213.114.0/24"},
    {"name": "local-b", "kind": "local", "bridge": "oct-f", "cidr": "10.213.115.0/24"},
]


@pytest.fixture(scope="module")
def fuzz_tower(tmp_path_factory):
    t = TowerProcess(tmp_path_factory.mktemp("fuzz"), sites=SITES, overlay="10.253.0.0/16",
                     OVERCLOUD_MAX_CLUSTERS=2, OVERCLOUD_MAX_BOXES=12).start()
    yield t
    t.cleanup()


def _operations(tower):
    with tower.client() as c:
        spec = c.get("/openapi.json").json()
    schema = schemathesis.openapi.from_dict(spec)
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.slow
def test_no_server_errors_anywhere_in_the_spec(fuzz_tower):
    headers = {"Authorization": f"Bearer {fuzz_tower.token}"}
    ops = _operations(fuzz_tower)
    assert len(ops) >= 8, [op.label for op in ops]
    tried: dict[str, int] = {}
    codes: dict[str, set[int]] = {}

    for op in ops:

        @given(case=op.as_strategy())
        @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def run(case):
            if case.path.endswith("/events"):
                case.query = {**(case.query or {}), "follow": "false"}
            response = case.call(base_url=fuzz_tower.url, headers=headers, timeout=60)
            tried[op.label] = tried.get(op.label, 0) + 1
            codes.setdefault(op.label, set()).add(response.status_code)
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path} {case.body!r} -> {response.status_code}: {response.text[:300]}"
            )
            if response.status_code >= 400:
                body = response.json()
                assert body.get("error") and body.get("message"), body

        run()
    assert all(n > 0 for n in tried.values()) and len(tried) == len(ops)
    assert all(code < 500 for seen in codes.values() for code in seen)
