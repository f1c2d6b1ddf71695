"""Actions that move an OverCloud's record: validate the plan, mark READY, mark DELETED."""

from __future__ import annotations

import logging
from typing import Any

from overcloud import states
from overcloud.plan import CreatePlan
from overcloud.underclouds.base import resolve_flavor
from overcloud.workflows.actions import ActionContext, registry

logger = logging.getLogger(__name__)


@registry.action("overcloud.validate")
def validate(ctx: ActionContext, overcloud_id: str, plan: dict[str, Any]) -> dict[str, Any]:
    """Check the plan against what this Tower has now (sites, sizes), and lay out its boxes."""
    sb = ctx.services
    p = CreatePlan.from_dict(plan)
    for site in p.sites:
        if site.site not in sb.drivers:
            raise ValueError(f"site {site.site} is not served by this Tower (configured: {', '.join(sb.drivers)})")
        resolve_flavor(site.size)
    specs = p.box_specs(overcloud_id)
    quota = {name: d.quota() for name, d in sb.drivers.items()}
    for site in {s["site"] for s in specs}:
        wanted = sum(1 for s in specs if s["site"] == site)
        q = quota[site]
        # boxes of this OverCloud already made (a resumed run) do not count twice
        if q.used_boxes + wanted > q.max_boxes + len([b for b in sb.records.get(overcloud_id).boxes if b.site == site]):
            raise ValueError(f"site {site} has {q.max_boxes - q.used_boxes} boxes free, this OverCloud needs {wanted}")
    return {"box_specs": specs, "message": f"{len(specs)} boxes planned: 1 DevOps Post + {len(specs) - 1} clusters"}


def _settle(ctx: ActionContext, overcloud_id: str, status: str, was: str) -> dict[str, Any]:
    """Move the OverCloud and its boxes to ``status``; a no-op when a re-run finds it done."""
    records = ctx.services.records
    if records.get(overcloud_id).status != status:
        records.set_boxes_state(overcloud_id, states.BOX_STATE_OF_STATUS[status])
        if status == states.DELETED:
            records.delete_secrets(overcloud_id)  # its keys die with it; the archive keeps the data
        workflow = ctx.run_id.split(":", 1)[1] if ":" in ctx.run_id else ""
        records.set_status(overcloud_id, status, expect={was}, done_task=(workflow, ctx.task))
    return {"message": f"OverCloud {status}"}


@registry.action("overcloud.mark_ready")
def mark_ready(ctx: ActionContext, overcloud_id: str, **_: Any) -> dict[str, Any]:
    return _settle(ctx, overcloud_id, states.READY, states.CREATING)


@registry.action("overcloud.mark_deleted")
def mark_deleted(ctx: ActionContext, overcloud_id: str, **_: Any) -> dict[str, Any]:
    return _settle(ctx, overcloud_id, states.DELETED, states.DELETING)
