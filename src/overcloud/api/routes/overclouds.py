"""/overclouds: create, list, show, watch and delete OverClouds (seed-compatible)."""

from __future__ import annotations

import functools
import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse

from overcloud import states
from overcloud.api.deps import PrincipalDep, TowerDep
from overcloud.api.requests import RequestError, Sites, parse_create, parse_json, read_body, too_large
from overcloud.api.streams import EventHub, EventStream, TooManyStreams
from overcloud.api.views import detail_view, summary_view, workflow_view
from overcloud.repository import NotFound
from overcloud.repository.models import OverCloudRow

router = APIRouter(prefix="/overclouds", tags=["overclouds"])

SEED_EXAMPLE = {"provider": "local", "number": "3", "size": "m1.small"}
CREATE_BODY_SCHEMA = {
    "oneOf": [
        {
            "title": "SeedBody",
            "type": "object",
            "properties": {
                "provider": {"type": "string", "description": "a site name or kind: local, aws (Amazon), openstack"},
                "number": {"oneOf": [{"type": "string"}, {"type": "integer"}], "description": "clusters, e.g. \"3\""},
                "size": {"type": "string", "description": "small, medium, large or m1.small ..."},
                "name": {"type": "string"},
            },
            "required": ["provider", "number", "size"],
            "additionalProperties": False,
        },
        {
            "title": "NativeBody",
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "sites": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "undercloud": {"type": "string"},
                            "clusters": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
                            "size": {"type": "string"},
                            "post": {"type": "boolean"},
                        },
                        "required": ["undercloud", "clusters"],
                        "additionalProperties": False,
                    },
                },
                "datalake": {"type": "object"},
                "fabric": {"type": "object"},
            },
            "required": ["sites"],
            "additionalProperties": False,
        },
        {
            "title": "SeedHeterogeneousBody",
            "type": "object",
            "properties": {"provider": {"const": "heterogeneous"}},
            "required": ["provider"],
            "additionalProperties": {
                "type": "object",
                "properties": {"number": {}, "size": {"type": "string"}, "post": {}},
            },
        },
    ]
}


def _visible(tower, principal, overcloud_id: str) -> OverCloudRow:
    """The OverCloud if the caller may see it; another tenant's is as unknown as a missing one."""
    row = tower.repo.get(overcloud_id)
    if not principal.is_admin and row.tenant_id != principal.tenant_id:
        raise NotFound(overcloud_id)
    return row


async def _json_body(request: Request) -> Any:
    limit = request.app.state.tower.settings.max_body_bytes
    raw = await read_body(request, limit, too_large(limit))
    if not raw.strip():
        raise RequestError("the body is empty; send JSON such as " + json.dumps(SEED_EXAMPLE))
    return parse_json(raw, json.dumps(SEED_EXAMPLE))


@router.post(
    "",
    status_code=202,
    summary="Create an OverCloud (seed body, seed heterogeneous body or native body)",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": CREATE_BODY_SCHEMA, "example": SEED_EXAMPLE}}}},
    responses={202: {"description": "creating; the workflow runs in the background"}, 201: {"description": "READY (with ?wait=true)"}},
)
async def create_overcloud(
    request: Request,
    tower: TowerDep,
    principal: PrincipalDep,
    wait: Annotated[bool, Query(description="block until READY or FAILED, like the seed")] = False,
):
    body = await _json_body(request)
    plan = parse_create(body, Sites(tower.site_kinds()), tower.settings.max_clusters)
    overcloud_id = await run_in_threadpool(tower.create, plan, principal.tenant_id)
    if wait:
        await run_in_threadpool(tower.wait, overcloud_id)
    row = tower.repo.get(overcloud_id)
    code = 202 if not wait else (201 if row.status == states.READY else 200)
    detail = detail_view(row, tower.repo.tasks(overcloud_id), await run_in_threadpool(tower.datalake_status, overcloud_id),
                         tower.repo.services(overcloud_id))
    return JSONResponse(detail, status_code=code,
                        headers={"Location": f"/overclouds/{overcloud_id}"})


@router.get("", summary="List OverClouds (seed fields overcloud_ID, tenant_ID, plus status)")
def list_overclouds(tower: TowerDep, principal: PrincipalDep, include_deleted: bool = False) -> list[dict[str, Any]]:
    tenant = None if principal.is_admin else principal.tenant_id
    return [summary_view(r) for r in tower.repo.list(tenant, include_deleted=include_deleted)]


@router.get("/{overcloud_id}", summary="One OverCloud: Post, clusters, addresses, status, timings")
def get_overcloud(overcloud_id: str, tower: TowerDep, principal: PrincipalDep) -> dict[str, Any]:
    row = _visible(tower, principal, overcloud_id)
    return detail_view(row, tower.repo.tasks(overcloud_id), tower.datalake_status(overcloud_id), tower.repo.services(overcloud_id))


@router.get(
    "/{overcloud_id}/datalake/credentials",
    summary="The OverCloud's own S3 keys (the only place they are shown)",
    tags=["datalake"],
)
def get_datalake_credentials(overcloud_id: str, tower: TowerDep, principal: PrincipalDep) -> dict[str, Any]:
    _visible(tower, principal, overcloud_id)
    return tower.datalake_credentials(overcloud_id)


@router.get("/{overcloud_id}/workflow", summary="Every workflow task: state, start/end, error")
def get_workflow(overcloud_id: str, tower: TowerDep, principal: PrincipalDep) -> dict[str, Any]:
    row = _visible(tower, principal, overcloud_id)
    return workflow_view(row, tower.repo.tasks(overcloud_id))


@router.get(
    "/{overcloud_id}/events",
    summary="Server-sent events of status and task changes",
    description="Streams until the OverCloud rests (READY, FAILED, DELETED) unless follow=true. "
    "Resume with the Last-Event-ID header or ?after=<id>. A Tower serves a limited number of streams "
    "at once, in all and per token (429 beyond); a stream that falls far behind is closed (resume it).",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}},
               429: {"description": "too many event streams open (in all, or with this token)"}},
)
async def events(
    overcloud_id: str,
    request: Request,
    tower: TowerDep,
    principal: PrincipalDep,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    follow: bool = False,
    last_event_id: Annotated[str | None, Header()] = None,
):
    hub: EventHub = request.app.state.streams
    await hub.run(_visible, tower, principal, overcloud_id)  # off the loop, and streams come in crowds
    if last_event_id and last_event_id.isdigit():
        after = int(last_event_id)
    token = request.headers.get("authorization", "").partition(" ")[2]  # authenticated above
    try:
        sub = await hub.subscribe(overcloud_id, token, follow)
    except TooManyStreams as exc:
        raise HTTPException(429, str(exc), headers={"Retry-After": "5"}) from None
    return EventStream(hub, sub, after)


NOT_KEPT = ("preserve=false: the DataLake's objects and files are deleted without an archive "
            "(an earlier archive of this OverCloud, if any, is untouched)")


async def _delete(overcloud_id: str, tower, principal, wait: bool, preserve: bool = True) -> JSONResponse:
    _visible(tower, principal, overcloud_id)
    status = await run_in_threadpool(functools.partial(tower.delete, overcloud_id, preserve=preserve))
    if wait:
        await run_in_threadpool(tower.wait, overcloud_id)
        status = tower.repo.get(overcloud_id).status
    body = {"overcloud_ID": overcloud_id, "status": status}
    if not preserve:
        body["not_kept"] = NOT_KEPT
    return JSONResponse(body, status_code=200 if status == states.DELETED else 202)


@router.delete(
    "/{overcloud_id}",
    status_code=202,
    summary="Delete an OverCloud",
    description="202 and DELETING at once; a second DELETE while DELETING is also 202 (idempotent); "
    "409 while CREATING; 200 once DELETED. `preserve=false` deletes without archiving the DataLake "
    "(the way out when the Post is gone and a normal delete FAILED at preserve); the answer says what "
    "was not kept.",
)
async def delete_overcloud(
    overcloud_id: str, tower: TowerDep, principal: PrincipalDep, wait: bool = False, preserve: bool = True
) -> JSONResponse:
    return await _delete(overcloud_id, tower, principal, wait, preserve)


@router.delete(
    "",
    status_code=202,
    summary="Delete an OverCloud, the seed's way: body {\"overcloud_id\": ...}",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {"overcloud_id": {"type": "string"}},
                        "required": ["overcloud_id"],
                        "additionalProperties": False,
                    }
                }
            },
        }
    },
)
async def delete_overcloud_seed(request: Request, tower: TowerDep, principal: PrincipalDep, wait: bool = False) -> JSONResponse:
    body = await _json_body(request)
    if not isinstance(body, dict) or "overcloud_id" not in body:
        raise RequestError("send {\"overcloud_id\": \"<id>\"}", field="overcloud_id")
    extra = sorted(set(body) - {"overcloud_id"})
    if extra:
        raise RequestError(f"unknown field {extra[0]!r}; send only {{\"overcloud_id\": \"<id>\"}}", field=extra[0])
    if not isinstance(body["overcloud_id"], str):
        raise RequestError("overcloud_id must be a string", field="overcloud_id")
    return await _delete(body["overcloud_id"], tower, principal, wait)
