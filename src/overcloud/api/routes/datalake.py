"""/datalake/archives: DataLakes preserved in the Construction DataLake when OverClouds were deleted."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from overcloud.api.deps import PrincipalDep, TowerDep

router = APIRouter(prefix="/datalake", tags=["datalake"])


def _tenant(principal) -> str | None:
    return None if principal.is_admin else principal.tenant_id


@router.get("/archives", summary="Preserved DataLakes (restore one with datalake.restore_from)")
async def list_archives(tower: TowerDep, principal: PrincipalDep) -> list[dict[str, Any]]:
    return await run_in_threadpool(tower.archives, _tenant(principal))


@router.get("/archives/{archive_id}", summary="One preserved DataLake: counts, bytes, when")
async def get_archive(archive_id: str, tower: TowerDep, principal: PrincipalDep) -> dict[str, Any]:
    return await run_in_threadpool(tower.archive, archive_id, _tenant(principal))


@router.delete("/archives/{archive_id}", status_code=204, summary="Delete a preserved DataLake for good")
async def purge_archive(archive_id: str, tower: TowerDep, principal: PrincipalDep) -> Response:
    await run_in_threadpool(tower.purge_archive, archive_id, _tenant(principal))
    return Response(status_code=204)
