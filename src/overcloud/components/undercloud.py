"""Actions that borrow and return boxes: acquire (all sites in parallel), overlay, release, verify."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from overcloud import states
from overcloud.southbound import Southbound
from overcloud.underclouds.base import Box, BoxSpec, Flavor, UnderCloudError
from overcloud.workflows.actions import ActionContext, registry

logger = logging.getLogger(__name__)


def _spec(d: dict[str, Any]) -> BoxSpec:
    return BoxSpec(d["overcloud_id"], d["name"], d["role"], d["site"], Flavor(**d["flavor"]))


@registry.action("undercloud.acquire", revert_on_failure=True)
def acquire(ctx: ActionContext, overcloud_id: str, box_specs: list[dict[str, Any]]) -> dict[str, Any]:
    """Ask every site for its boxes at once. All or nothing: a site that fails makes the
    others give theirs back before the error is raised."""
    sb = ctx.services
    by_site: dict[str, list[BoxSpec]] = {}
    for d in box_specs:
        by_site.setdefault(d["site"], []).append(_spec(d))
    made: list[Box] = []
    errors: list[BaseException] = []
    with ThreadPoolExecutor(max_workers=len(by_site), thread_name_prefix="acquire") as pool:
        futures = {site: pool.submit(sb.driver(site).acquire, specs) for site, specs in by_site.items()}
        for site, fut in futures.items():
            try:
                made.extend(fut.result())
            except BaseException as exc:  # noqa: BLE001 - collected, re-raised below
                errors.append(exc)
    if errors:
        _release(sb, overcloud_id, made)
        first = errors[0]
        if isinstance(first, UnderCloudError):
            raise first
        raise UnderCloudError(str(first), overcloud_id=overcloud_id) from first
    order = {d["name"]: i for i, d in enumerate(box_specs)}
    made.sort(key=lambda b: order[b.name])
    boxes = [b.to_dict() for b in made]
    sb.records.save_boxes(overcloud_id, boxes, state=states.BOX_BOOTING)
    sites = sorted(by_site)
    return {"boxes": boxes, "message": f"{len(boxes)} boxes on {', '.join(sites)}"}


@acquire.revert
def acquire_revert(ctx: ActionContext, result, overcloud_id: str, box_specs: list[dict[str, Any]]) -> None:
    boxes = [Box.from_dict(b) for b in (result or {}).get("boxes", [])]
    _release(ctx.services, overcloud_id, boxes)


def _release(sb: Southbound, overcloud_id: str, boxes: list[Box]) -> None:
    """Give back known boxes through their drivers, then anything else tagged with the id."""
    by_site: dict[str, list[Box]] = {}
    for b in boxes:
        by_site.setdefault(b.site, []).append(b)
    for site, site_boxes in by_site.items():
        sb.driver(site).release(site_boxes)
    if sb.list_tagged(overcloud_id):
        sb.sweep({overcloud_id})


@registry.action("network.overlay", revert_on_failure=True)
def overlay(ctx: ActionContext, overcloud_id: str, boxes: list[dict[str, Any]]) -> dict[str, Any]:
    """Join the boxes into the OverCloud's own overlay network (its own VNI and subnet)."""
    sb = ctx.services
    objs = [Box.from_dict(b) for b in boxes]
    net = sb.join_overlay(overcloud_id, objs)
    for b in objs:
        sb.records.set_box_fields(overcloud_id, b.name, overlay_address=net.addresses[b.name])
    sb.records.update_info(overcloud_id, overlay={"vni": net.vni, "subnet": net.subnet})
    return {
        "overlay": net.to_dict(),
        "message": f"VXLAN {net.vni} on {net.subnet} across {len(objs)} boxes",
    }


@overlay.revert
def overlay_revert(ctx: ActionContext, result, overcloud_id: str, boxes: list[dict[str, Any]]) -> None:
    ctx.services.leave_overlay(overcloud_id, [Box.from_dict(b) for b in boxes])


@registry.action("undercloud.release")
def release(ctx: ActionContext, overcloud_id: str, boxes: list[dict[str, Any]]) -> dict[str, Any]:
    sb = ctx.services
    objs = [Box.from_dict(b) for b in boxes]
    if objs:
        sb.leave_overlay(overcloud_id, objs)
    _release(sb, overcloud_id, objs)
    sb.records.set_boxes_state(overcloud_id, states.BOX_RELEASED)
    return {"message": f"{len(objs)} boxes released"}


@registry.action("undercloud.verify_clean")
def verify_clean(ctx: ActionContext, overcloud_id: str, **_: Any) -> dict[str, Any]:
    """Ask every driver, from the kernel/cloud up, whether anything tagged with the id remains."""
    left = ctx.services.list_tagged(overcloud_id)
    if left:
        names = ", ".join(f"{r.kind} {r.name}" for r in left[:10])
        raise UnderCloudError(f"{len(left)} resources of this OverCloud remain: {names}", overcloud_id=overcloud_id)
    return {"message": "nothing tagged with this OverCloud remains (namespaces, links, cgroups, processes, leases)"}
