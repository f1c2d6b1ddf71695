"""Applying a pattern to a composed one: what changes is a create, a rolling update, a scale
or a Service change; a rollout's old replicas keep their own pod template; and the rollout's
steps keep the Service served (surge one, stop one), also when there is no room to surge."""

from __future__ import annotations

import dataclasses

import pytest
from test_placement import deployment

from overcloud.composition import pattern as pat
from overcloud.composition import placement as pl
from overcloud.composition import rollout


def spec_of(manifest, **extra):
    d = pat.parse([manifest]).deployments[0]
    return rollout.comparable({"deployment": dataclasses.asdict(d), "services": [], "depends_on": []}) | extra


def test_each_kind_of_change_has_its_action():
    base = spec_of(deployment(replicas=2, memory="64Mi"))
    assert rollout.action(None, base) == "create"
    assert rollout.action(base, spec_of(deployment(replicas=2, memory="64Mi"))) == "unchanged"
    assert rollout.action(base, spec_of(deployment(replicas=3, memory="64Mi"))) == "scale"
    assert rollout.action(base, spec_of(deployment(replicas=3, memory="128Mi"))) == "update"
    assert rollout.action(base, {**base, "depends_on": ["mqtt"]}) == "services"


def test_the_plan_names_what_changed_by_container_name():
    old = spec_of(deployment(memory="64Mi"))
    new = spec_of(deployment(memory="128Mi", port=8080))
    detail = rollout.action_detail("update", old, new, [])
    assert detail["generation"] == 2
    assert detail["changed"] == ["containers[web].memory_request", "containers[web].ports"], detail


def test_old_replicas_run_their_own_generation():
    old = spec_of(deployment(memory="64Mi", port=8080))
    new = spec_of(deployment(replicas=3, memory="128Mi", port=9090))
    rolling = rollout.started(old, [{"generation": 1}], new)
    assert rolling["generation"] == 2 and rolling["templates"] == {"1": old["deployment"]}
    d1, _ = pat.deployment_of(rolling, 1)
    d2, _ = pat.deployment_of(rolling, 2)
    assert (d1.memory_request, d1.containers[0].ports) == (64 * 2**20, [8080])
    assert (d2.memory_request, d2.containers[0].ports) == (128 * 2**20, [9090])
    assert d1.replicas == d2.replicas == 3  # the count wanted is the new one
    assert pat.deployment_of(rolling)[0] == d2
    assert rollout.rolling(rolling) and not rollout.rolling(rollout.finished(rolling))
    assert pat.generation_of({}) == 1  # records from before updates existed are generation 1


def replica(index, generation, ready=True):
    return {"name": f"web-{index}", "index": index, "box": f"c{index}", "site": "s", "generation": generation,
            "ready": ready, "state": "READY" if ready else "STARTING", "message": None}


def run(spec, replicas, room: int, rounds=30):
    """Drive a rollout to its end: ``room`` boxes have space for a replica beyond those running,
    a started replica is ready at the next step. Returns the ready count before each step."""
    ready_seen = []
    for _ in range(rounds):
        ready_seen.append(sum(r["ready"] for r in replicas))

        def place(index, new):
            if len(replicas) >= spec["deployment"]["replicas"] + room:
                raise pl.PlacementError("web", "port 8070 is taken on every box")
            return pl.Assignment("web", index, f"c{index}", "s")

        s = rollout.step(spec, replicas, place)
        for r in replicas:
            r["ready"] = True  # what started last step is ready now
        if s.done:
            return ready_seen
        if s.stop:
            replicas.remove(s.stop)
        if s.start:
            replicas.append(replica(s.start.index, spec["generation"], ready=False))
    raise AssertionError("the rollout did not end")


@pytest.mark.parametrize("want,room,floor", [(1, 1, 1), (2, 1, 2), (3, 1, 3), (2, 0, 1), (1, 0, 0)])
def test_a_rollout_ends_with_only_new_replicas_and_keeps_the_service_up(want, room, floor):
    spec = {"deployment": {"replicas": want}, "generation": 2, "templates": {"1": {}}}
    replicas = [replica(i, 1) for i in range(want)]
    ready_seen = run(spec, replicas, room)
    assert len(replicas) == want and {r["generation"] for r in replicas} == {2}
    # with room for one more, never fewer ready than wanted; without, one fewer at most
    assert min(ready_seen) == floor, ready_seen


def test_no_second_old_replica_is_stopped_while_one_is_missing():
    spec = {"deployment": {"replicas": 2}, "generation": 2, "templates": {"1": {}}}
    replicas = [replica(0, 1), replica(1, 1)]

    def full(index, new):
        raise pl.PlacementError("web", "port 8070 is taken on every box")

    first = rollout.step(spec, replicas, full)
    assert first.stop is not None  # no room: one old replica makes room
    replicas.remove(first.stop)
    second = rollout.step(spec, replicas, full)  # its port is not free yet
    assert second.stop is None and second.retry and "0 of 2 placed" in second.message


def test_a_broken_new_replica_holds_the_rollout_and_a_scale_down_stops_new_ones_first():
    spec = {"deployment": {"replicas": 1}, "generation": 2, "templates": {"1": {}}}
    replicas = [replica(0, 1), replica(1, 2, ready=False)]
    s = rollout.step(spec, replicas, lambda i, n: pytest.fail("nothing is placed while a new replica is not ready"))
    assert (s.stop, s.start, s.done) == (None, None, False) and "waiting for web-1" in s.message
    spec0 = {**spec, "deployment": {"replicas": 0}}
    assert rollout.step(spec0, replicas, lambda i, n: None).stop["name"] == "web-1"
