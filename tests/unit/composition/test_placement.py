"""Placement: nodeSelector, capacity, ports, spreading, and refusals that give the numbers."""

from __future__ import annotations

import types

import pytest

from overcloud.composition import pattern as pat
from overcloud.composition import placement as pl


def box(name, site, role="cluster", cpus=0.5, memory_mb=512):
    return types.SimpleNamespace(name=name, site=site, role=role, cpus=cpus, memory_mb=memory_mb)


SITES = {"local-a": {"overcloud.io/tier": "cloud"}, "local-b": {"overcloud.io/tier": "edge"}}


def nodes():
    return pl.nodes_from_boxes([box("p0", "local-a", "post"), box("c1", "local-a"), box("c2", "local-a"),
                                box("c3", "local-b"), box("c4", "local-b")], SITES)


def deployment(name="web", replicas=2, cpu="100m", memory="64Mi", selector=None, port=None):
    c = {"name": name, "image": "localhost/overcloud/x:latest", "command": ["true"],
         "resources": {"requests": {"cpu": cpu, "memory": memory}}}
    if port:
        c["ports"] = [{"containerPort": port}]
    spec = {"containers": [c]}
    if selector:
        spec["nodeSelector"] = selector
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": spec}}}


def test_labels_and_the_post_is_not_a_node():
    ns = nodes()
    assert [n.name for n in ns] == ["c1", "c2", "c3", "c4"]
    assert ns[2].labels == {"overcloud.io/tier": "edge", "overcloud.io/site": "local-b", "overcloud.io/box": "c3",
                            "overcloud.io/role": "cluster", "overcloud.io/cluster": "c3"}


def test_replicas_spread_over_sites_then_boxes():
    plan = pl.place(pat.parse([deployment(replicas=4)]), nodes())
    assert sorted(a.box for a in plan) == ["c1", "c2", "c3", "c4"]
    assert [a.site for a in sorted(plan, key=lambda a: a.index)][:2] in (["local-a", "local-b"], ["local-b", "local-a"])


def test_node_selector_is_honoured():
    plan = pl.place(pat.parse([deployment(replicas=2, selector={"overcloud.io/tier": "edge"})]), nodes())
    assert {a.site for a in plan} == {"local-b"}


def test_refusal_names_the_largest_free_memory():
    with pytest.raises(pl.PlacementError) as info:
        pl.place(pat.parse([deployment(replicas=1, memory="512Mi", selector={"overcloud.io/tier": "edge"})]), nodes())
    assert "no box in site local-b has 512Mi free; largest free is 384Mi on c4 (local-b)" in str(info.value)


def test_refusal_for_a_selector_nothing_matches_lists_the_labels():
    with pytest.raises(pl.PlacementError) as info:
        pl.place(pat.parse([deployment(selector={"overcloud.io/tier": "moon"})]), nodes())
    assert "no box matches nodeSelector {overcloud.io/tier=moon}" in str(info.value)
    assert "overcloud.io/tier=edge" in str(info.value)


def test_capacity_is_used_up():
    with pytest.raises(pl.PlacementError, match="replica 5 of 5"):
        pl.place(pat.parse([deployment(replicas=5, memory="300Mi")]), nodes())


def test_a_port_takes_a_box():
    ns = nodes()
    ns[0].ports.add(8080)  # c1 runs something on 8080 already
    plan = pl.place(pat.parse([deployment(replicas=3, port=8080)]), ns)
    assert "c1" not in {a.box for a in plan} and len({a.box for a in plan}) == 3
    with pytest.raises(pl.PlacementError, match="port 8080 is taken on every box"):
        pl.place(pat.parse([deployment(replicas=3, port=8080, selector={"overcloud.io/tier": "edge"})]), nodes())
