"""/overclouds/{id}/topology and /overclouds/{id}/metrics: the Visible Fabric, through the Tower.

Callers never need the Post's address: the Tower asks the OverCloud's Prometheus from inside
the Post's namespace, with the caller's authorization checked here first."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool

from overcloud.api.deps import PrincipalDep, TowerDep
from overcloud.api.routes.overclouds import _visible

router = APIRouter(prefix="/overclouds", tags=["fabric"])


@router.get("/{overcloud_id}/topology", summary="Sites → boxes → workloads, and flow edges with rates")
async def topology(overcloud_id: str, tower: TowerDep, principal: PrincipalDep) -> dict[str, Any]:
    _visible(tower, principal, overcloud_id)
    return await run_in_threadpool(tower.topology, overcloud_id)


@router.get(
    "/{overcloud_id}/metrics",
    summary="PromQL on the OverCloud's own Prometheus (instant; range with start, end, step)",
    description="At most 11,000 points per series (Prometheus' own limit); a query Prometheus cannot parse is a 400 "
    "with its message.",
)
async def metrics(
    overcloud_id: str,
    tower: TowerDep,
    principal: PrincipalDep,
    query: Annotated[str, Query(min_length=1, max_length=10000, description="PromQL")],
    start: Annotated[float | None, Query(description="unix seconds")] = None,
    end: Annotated[float | None, Query(description="unix seconds")] = None,
    step: Annotated[float | None, Query(gt=0, description="seconds")] = None,
    time: Annotated[float | None, Query(description="unix seconds (instant query)")] = None,
) -> dict[str, Any]:
    _visible(tower, principal, overcloud_id)
    return await run_in_threadpool(tower.metrics_query, overcloud_id, query, start, end, step, time)
