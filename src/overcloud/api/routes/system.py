"""/healthz (no auth) and /metrics (auth)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from overcloud import __version__
from overcloud.api.deps import PrincipalDep, TowerDep

router = APIRouter(tags=["system"])


@router.get("/healthz", summary="Liveness: the Tower answers (no token needed)")
async def healthz() -> dict[str, str]:  # on the event loop: never queued behind the thread pool
    return {"status": "ok", "version": __version__}


@router.get("/metrics", summary="Prometheus metrics of the Tower", response_class=Response,
            responses={200: {"content": {"text/plain": {}}}})
def metrics(tower: TowerDep, _: PrincipalDep) -> Response:
    return Response(generate_latest(tower.metrics.registry), media_type=CONTENT_TYPE_LATEST)
