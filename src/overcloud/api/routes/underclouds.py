"""/underclouds: the sites this Tower builds on, their hosts, capacity and health (admin only).

Answers within a few seconds whatever the hosts do: each ssh host is probed over its kept SSH
connection with a short timeout, at most one probe in flight per host, and a host that does not
answer is reported unhealthy with the reason (see underclouds/ssh/health.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.concurrency import run_in_threadpool

from overcloud.api.deps import PrincipalDep, TowerDep

router = APIRouter(tags=["underclouds"])


@router.get(
    "/underclouds",
    summary="Sites, their hosts (ssh) or bridge (local), capacity, and health",
    description="Each site: name, kind, labels, healthy, problems; an ssh site its hosts (address, labels, "
    "cpus and memory_mb lent, used by this Tower's boxes, free; health: reachable, prepared, WAN peers with "
    "their latest handshake's age, the probe's age); a local site its bridge and the host's capacity; a cloud "
    "site (openstack, aws) whether it is available (its authentication works) or the reason it is not, its "
    "capacity (servers against max_servers, the cloud's instances, vCPUs and RAM), its servers as hosts, "
    "and its API calls. Never a key, a password or a sealed secret.",
)
async def underclouds(tower: TowerDep, principal: PrincipalDep) -> dict[str, Any]:
    if not principal.is_admin:
        raise HTTPException(403, "only an admin may see the UnderClouds")
    return {"underclouds": await run_in_threadpool(tower.underclouds)}
