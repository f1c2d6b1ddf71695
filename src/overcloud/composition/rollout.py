"""Applying a pattern to a composed one, and rolling updates: pure functions of stored specs.

A composed Deployment's spec (the ``services`` row) carries its pod template
(``deployment``), its ``generation`` (1 until the first update) and, while a rollout is in
progress, ``templates``: the templates of older generations that still have replicas. Every
replica records the generation it was started from, and runs that template until it is
stopped. The service controller asks :func:`step` once per tick what the next move is and
carries it out.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

from overcloud.composition import placement as pl
from overcloud.composition.pattern import generation_of


def comparable(value: Any) -> Any:
    """A spec as the repository gives it back (JSON: tuples become lists), for comparing."""
    return json.loads(json.dumps(value))


def rolling(spec: dict[str, Any]) -> bool:
    """Whether a rollout is in progress: it keeps the older templates until it is done (the old
    replicas are gone and as many new ones as wanted are placed)."""
    return "templates" in spec


def rollout_state(spec: dict[str, Any]) -> dict[str, Any]:
    """The keys of a stored spec that belong to rolling updates (kept when the rest changes)."""
    return {k: spec[k] for k in ("generation", "templates") if k in spec}


def started(spec: dict[str, Any], replicas: list[dict[str, Any]], new: dict[str, Any]) -> dict[str, Any]:
    """The spec that starts rolling out ``new`` (a spec without rollout keys) over ``spec``:
    the next generation, with the templates of every generation that still has replicas."""
    gen = generation_of(spec)
    keep = {str(generation_of(r)) for r in replicas}
    templates = {k: v for k, v in (spec.get("templates") or {}).items() if k in keep}
    if str(gen) in keep:
        templates[str(gen)] = spec["deployment"]
    return {**new, "generation": gen + 1, "templates": templates}


def finished(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k != "templates"}


def _without_replicas(deployment: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in deployment.items() if k != "replicas"}


def action(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    """What applying spec ``new`` to a composed Deployment with spec ``old`` (None: not
    composed) does: create, update (a rolling update), scale, services, or unchanged."""
    if old is None:
        return "create"
    if _without_replicas(old["deployment"]) != _without_replicas(new["deployment"]):
        return "update"
    if old["deployment"]["replicas"] != new["deployment"]["replicas"]:
        return "scale"
    if old["services"] != new["services"] or old.get("depends_on") != new["depends_on"]:
        return "services"
    return "unchanged"


def action_detail(kind: str, old: dict[str, Any] | None, new: dict[str, Any],
                  placed: list[pl.Assignment] | None) -> dict[str, Any]:
    """What the plan shows of one action (``placed``: where an update's replicas would go)."""
    d = new["deployment"]
    if kind == "create":
        return {"replicas": d["replicas"]}
    if kind == "update":
        return {"generation": generation_of(old) + 1,
                "changed": diff(_without_replicas(old["deployment"]), _without_replicas(d)),
                "replicas": d["replicas"], "strategy": "one new replica ready, then one old one stopped",
                "boxes": [a.box for a in placed or []]}
    if kind == "scale":
        return {"from": old["deployment"]["replicas"], "to": d["replicas"]}
    if kind == "services":
        return {"changed": diff({"services": old["services"], "depends_on": old.get("depends_on")},
                                {"services": new["services"], "depends_on": new["depends_on"]})}
    return {}


def diff(old: Any, new: Any, path: str = "", depth: int = 4) -> list[str]:
    """Paths where two specs differ (containers are named by their name), for people."""
    if old == new:
        return []
    if depth and isinstance(old, dict) and isinstance(new, dict):
        return [p for k in sorted(set(old) | set(new), key=str)
                for p in diff(old.get(k), new.get(k), f"{path}.{k}" if path else str(k), depth - 1)]
    if (depth and isinstance(old, list) and isinstance(new, list) and old and new
            and all(isinstance(x, dict) and "name" in x for x in old + new)):
        a, b = {x["name"]: x for x in old}, {x["name"]: x for x in new}
        return [p for k in sorted(set(a) | set(b)) for p in diff(a.get(k), b.get(k), f"{path}[{k}]", depth - 1)]
    return [path or "."]


@dataclasses.dataclass
class Step:
    """One move of a rollout. ``hold``: nothing to do now, keep the current message."""

    stop: dict[str, Any] | None = None  # a replica to stop (the caller removes it)
    start: pl.Assignment | None = None  # a new replica, placed (the caller adds it)
    done: bool = False
    retry: bool = False  # placement failed with a replica already missing: try again later
    hold: bool = False
    message: str | None = None


def step(spec: dict[str, Any], replicas: list[dict[str, Any]],
         place: Callable[[int, list[dict[str, Any]]], pl.Assignment | None]) -> Step:
    """The next move of the rollout of ``spec``, like a Deployment's maxSurge 1,
    maxUnavailable 0: while every new-generation replica is ready, stop an old one (not ready
    ones first) if more run than wanted, else place one more new one until there are as many
    as wanted. ``place(index, new_replicas)`` places a replica of the new template (None: not
    now; PlacementError: no room). Without room for an extra replica an old one is stopped
    first — never a second one while one is missing."""
    gen = generation_of(spec)
    want = spec["deployment"]["replicas"]
    new = [r for r in replicas if generation_of(r) == gen]
    old = [r for r in replicas if generation_of(r) != gen]

    def stop(r: dict[str, Any]) -> Step:
        return Step(stop=r, message=f"rolling out generation {gen}: {len(new)}/{want} new, stopping {r['name']}")

    def oldest() -> dict[str, Any]:
        return next((r for r in old if not r["ready"]), None) or max(old, key=lambda r: r["index"])

    if len(new) > want:  # scaled down during the rollout
        return stop(max(new, key=lambda r: r["index"]))
    waiting = [r for r in new if not r["ready"]]
    if waiting:
        r = waiting[0]
        return Step(message=f"rolling out generation {gen}: waiting for {r['name']} ({r['state']}: {r.get('message')})")
    if old and len(replicas) > want:
        return stop(oldest())
    if len(new) == want:
        return Step(done=True)
    try:
        placed = place(max((r["index"] for r in replicas), default=-1) + 1, new)
    except pl.PlacementError as exc:
        if old and len(replicas) >= want:
            return stop(oldest())
        return Step(retry=True, message=f"rolling out generation {gen}: {len(new)} of {want} placed; {exc.reason}")
    if placed is None:
        return Step(hold=True)
    return Step(start=placed, message=f"rolling out generation {gen}: starting {placed.deployment}-{placed.index} "
                                      f"on {placed.box}")
