"""Applying a pattern to a composed one: what changes is a create, a rolling update, a scale
or a Service change, and a rollout's old replicas keep their own pod template."""

from __future__ import annotations

import dataclasses
import types

from test_placement import deployment

from overcloud.composition import controller as ctl
from overcloud.composition import pattern as pat


def spec_of(manifest, **extra):
    p = pat.parse([manifest])
    d = p.deployments[0]
    return ctl._comparable({"deployment": dataclasses.asdict(d), "services": [], "depends_on": []}) | extra


def row(spec, replicas=()):
    return types.SimpleNamespace(spec=spec, replicas=list(replicas))


def test_each_kind_of_change_has_its_action():
    base = spec_of(deployment(replicas=2, memory="64Mi"))
    assert ctl._action(None, base) == "create"
    assert ctl._action(row(base), spec_of(deployment(replicas=2, memory="64Mi"))) == "unchanged"
    assert ctl._action(row(base), spec_of(deployment(replicas=3, memory="64Mi"))) == "scale"
    assert ctl._action(row(base), spec_of(deployment(replicas=3, memory="128Mi"))) == "update"
    assert ctl._action(row(base), {**base, "depends_on": ["mqtt"]}) == "services"


def test_the_plan_names_what_changed_by_container_name():
    old = spec_of(deployment(memory="64Mi"))
    new = spec_of(deployment(memory="128Mi", port=8080))
    detail = ctl._action_detail("update", row(old), new, [])
    assert detail["generation"] == 2
    assert detail["changed"] == ["containers[web].memory_request", "containers[web].ports"], detail


def test_old_replicas_run_their_own_generation():
    old = spec_of(deployment(memory="64Mi", port=8080))
    new = spec_of(deployment(replicas=3, memory="128Mi", port=9090))
    rolling = {**new, "generation": 2, "templates": {"1": old["deployment"]}}
    d1, _ = pat.deployment_of(rolling, 1)
    d2, _ = pat.deployment_of(rolling, 2)
    assert (d1.memory_request, d1.containers[0].ports) == (64 * 2**20, [8080])
    assert (d2.memory_request, d2.containers[0].ports) == (128 * 2**20, [9090])
    assert d1.replicas == d2.replicas == 3  # the count wanted is the new one
    assert pat.deployment_of(rolling)[0] == d2
    assert ctl._rolling(row(rolling, [{"generation": 1}, {"generation": 2}]))
    assert not ctl._rolling(row(old, [{}]))
    assert pat.generation_of({}) == 1  # records from before updates existed are generation 1
