"""Connected DataLake (SeaweedFS). Not built yet: its tasks are registered under their
real names so the workflows have their final shape, and each says plainly that it did nothing."""

from __future__ import annotations

from typing import Any

from overcloud.workflows.actions import registry

NOT_BUILT = "the Connected DataLake is not built yet (issue 4): nothing was {}"


@registry.action("datalake.deploy")
def deploy(ctx, **_: Any) -> dict[str, Any]:
    return {"skipped": True, "message": NOT_BUILT.format("deployed")}


@registry.action("datalake.preserve")
def preserve(ctx, **_: Any) -> dict[str, Any]:
    return {"skipped": True, "message": NOT_BUILT.format("preserved")}


@registry.action("datalake.reclaim")
def reclaim(ctx, **_: Any) -> dict[str, Any]:
    return {"skipped": True, "message": NOT_BUILT.format("reclaimed")}
