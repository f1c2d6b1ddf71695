"""/overclouds/{id}/services: compose a pattern onto an OverCloud, watch it, remove it.

The body of a POST is the pattern itself: multi-document YAML (``application/yaml`` or any
text type) or a tar.gz of a pattern directory (``application/gzip``), up to 10 MiB. It is
checked entirely — manifests, names, images, placement — before anything starts; a problem is
a 4xx naming the manifest and the field. A PUT applies a pattern to what is composed already
(kubectl apply): changed pod templates are rolled out, one new replica ready before an old one
stops."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from overcloud.api.deps import PrincipalDep, TowerDep
from overcloud.api.requests import RequestError, read_body
from overcloud.api.routes.overclouds import _visible
from overcloud.composition import pattern as pat
from overcloud.composition.controller import ServiceNotFound

router = APIRouter(prefix="/overclouds", tags=["services"])

PATTERN_BODY = {
    "required": True,
    "content": {
        "application/yaml": {"schema": {"type": "string"}, "example": "apiVersion: apps/v1\nkind: Deployment\n..."},
        "application/gzip": {"schema": {"type": "string", "format": "binary"}},
    },
}


async def _pattern_body(request: Request) -> bytes:
    raw = await read_body(request, pat.MAX_PATTERN_BYTES, "the pattern is over 10 MiB")
    if not raw.strip():
        raise RequestError("the body is empty; send the pattern as multi-document YAML or a tar.gz of its directory",
                           status=400)
    return raw


def _row(tower, overcloud_id: str, name: str):
    row = tower.repo.service(overcloud_id, name)
    if row is None:
        raise ServiceNotFound(overcloud_id, name)
    return row


async def _compose_or_apply(overcloud_id: str, request: Request, tower, principal, *, update: bool,
                            dry_run: bool, runtime: str, wait: bool, timeout: float) -> JSONResponse:
    _visible(tower, principal, overcloud_id)
    raw = await _pattern_body(request)
    pattern = await run_in_threadpool(pat.load, raw)
    runtime = tower.settings.runtime if runtime == "auto" else runtime
    act = tower.services.apply if update else tower.services.compose
    result = await run_in_threadpool(act, overcloud_id, pattern, runtime=runtime, dry_run=dry_run)
    if dry_run:
        return JSONResponse(result, status_code=200)
    if wait:
        names = [d.name for d in pattern.deployments]
        ready = await run_in_threadpool(tower.services.wait_ready, overcloud_id, names, timeout)
        result["services"] = [await run_in_threadpool(tower.services.describe, overcloud_id, _row(tower, overcloud_id, n))
                              for n in names]
        return JSONResponse(result, status_code=201 if ready and not update else 200)
    return JSONResponse(result, status_code=202)


DryRun = Annotated[bool, Query(description="place and explain, start nothing")]
Runtime = Annotated[str, Query(pattern="^(auto|podman|process)$")]
Timeout = Annotated[float, Query(gt=0, le=600)]


@router.post(
    "/{overcloud_id}/services",
    status_code=202,
    summary="Compose a pattern (Deployments, Services, ConfigMaps) onto a READY OverCloud",
    openapi_extra={"requestBody": PATTERN_BODY},
    responses={200: {"description": "the plan (dry_run), or not all READY within the wait"},
               201: {"description": "every replica READY (with ?wait=true)"}},
)
async def compose(overcloud_id: str, request: Request, tower: TowerDep, principal: PrincipalDep,
                  dry_run: DryRun = False, runtime: Runtime = "auto", wait: bool = False, timeout: Timeout = 120) -> Any:
    return await _compose_or_apply(overcloud_id, request, tower, principal, update=False, dry_run=dry_run,
                                   runtime=runtime, wait=wait, timeout=timeout)


@router.put(
    "/{overcloud_id}/services",
    status_code=202,
    summary="Apply a pattern (like kubectl apply): create new Deployments, roll out changed pod templates "
            "one replica at a time, scale changed replica counts; others are left alone",
    openapi_extra={"requestBody": PATTERN_BODY},
    responses={200: {"description": "the plan with each Deployment's action (dry_run), or the result after ?wait=true"}},
)
async def apply(overcloud_id: str, request: Request, tower: TowerDep, principal: PrincipalDep,
                dry_run: DryRun = False, runtime: Runtime = "auto", wait: bool = False, timeout: Timeout = 120) -> Any:
    return await _compose_or_apply(overcloud_id, request, tower, principal, update=True, dry_run=dry_run,
                                   runtime=runtime, wait=wait, timeout=timeout)


@router.get("/{overcloud_id}/services", summary="The services composed onto the OverCloud")
async def list_services(overcloud_id: str, tower: TowerDep, principal: PrincipalDep) -> list[dict[str, Any]]:
    _visible(tower, principal, overcloud_id)

    def describe_all():
        return [tower.services.describe(overcloud_id, row) for row in tower.repo.services(overcloud_id)]

    return await run_in_threadpool(describe_all)


@router.get("/{overcloud_id}/services/{name}",
            summary="One service: placement, replicas, endpoints, restarts, recent log lines")
async def get_service(overcloud_id: str, name: str, tower: TowerDep, principal: PrincipalDep,
                      logs: Annotated[int, Query(ge=0, le=1000)] = 10) -> dict[str, Any]:
    _visible(tower, principal, overcloud_id)
    row = _row(tower, overcloud_id, name)
    return await run_in_threadpool(lambda: tower.services.describe(overcloud_id, row, logs=logs))


class ScaleBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    replicas: int = Field(ge=0, le=100, description="the Deployment's new replica count")


@router.patch("/{overcloud_id}/services/{name}",
              summary="Scale a service: new replicas are placed by the same rules, surplus ones removed")
async def scale_service(overcloud_id: str, name: str, body: ScaleBody, tower: TowerDep, principal: PrincipalDep) -> dict[str, Any]:
    _visible(tower, principal, overcloud_id)
    return await run_in_threadpool(tower.services.scale, overcloud_id, name, body.replicas)


@router.delete("/{overcloud_id}/services/{name}", summary="Stop and remove a service (its replicas everywhere)")
async def delete_service(overcloud_id: str, name: str, tower: TowerDep, principal: PrincipalDep) -> dict[str, Any]:
    _visible(tower, principal, overcloud_id)
    return await run_in_threadpool(tower.services.remove, overcloud_id, name)
