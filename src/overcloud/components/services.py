"""The delete workflow's first step: remove the services composed onto the OverCloud."""

from __future__ import annotations

from typing import Any

from overcloud.workflows.actions import ActionContext, registry


@registry.action("services.remove")
def remove(ctx: ActionContext, overcloud_id: str) -> dict[str, Any]:
    names = ctx.services.services.remove_all(overcloud_id)
    return {"removed": names, "message": f"{len(names)} services removed" if names else "no services to remove"}
