"""Logical clusters: boxes that run workloads. Verified, not assumed: a cluster box is
READY only when its supervisord answers, it and the Post reach each other over the
overlay (a real TCP connection each way) and its CPU/memory limits read back from the kernel."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from overcloud import states
from overcloud.boxes.supervision import HEALTH_PORT
from overcloud.components.post import find_post, stop_programs
from overcloud.southbound import Southbound
from overcloud.underclouds.base import Box
from overcloud.workflows.actions import ActionContext, registry

logger = logging.getLogger(__name__)


REACH_SECONDS = 5.0


class ClusterCheckError(RuntimeError):
    pass


def _reach(session, ip: str, within: float = REACH_SECONDS) -> bool:
    """A real TCP connection to the box's health responder; it may still be starting, so
    try until ``within`` seconds have passed."""
    deadline = time.monotonic() + within
    while True:
        if session.tcp_check(ip, HEALTH_PORT, timeout=0.5):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def _check_one(sb: Southbound, overcloud_id: str, post: Box, box: Box, addresses: dict[str, str]) -> dict[str, Any]:
    session = sb.session(box)
    state = session.supervisor_state()
    if state != "RUNNING":
        raise ClusterCheckError(f"supervisord on cluster box {box.handle} is {state}")
    post_ip, box_ip = addresses[post.name], addresses[box.name]
    if not _reach(sb.session(post), box_ip):
        raise ClusterCheckError(f"the DevOps Post cannot reach cluster box {box.name} at {box_ip}:{HEALTH_PORT} over the overlay")
    if not _reach(session, post_ip):
        raise ClusterCheckError(f"cluster box {box.name} cannot reach the DevOps Post at {post_ip}:{HEALTH_PORT} over the overlay")
    cpus, memory_mb = session.limits()
    capacity = {"cpus": cpus, "memory_mb": memory_mb, "supervisor": state, "overlay_tcp": "ok"}
    sb.records.set_box_fields(overcloud_id, box.name, capacity=capacity, state=states.BOX_READY)
    return {"name": box.name, "site": box.site, "address": box.address, "overlay_address": box_ip, "capacity": capacity}


@registry.action("cluster.deploy")
def deploy(ctx: ActionContext, overcloud_id: str, boxes: list[dict[str, Any]], overlay: dict[str, Any]) -> dict[str, Any]:
    sb = ctx.services
    objs = [Box.from_dict(b) for b in boxes]
    post = find_post(objs)
    clusters = [b for b in objs if b.role == "cluster"]
    with ThreadPoolExecutor(max_workers=min(8, len(clusters)) or 1, thread_name_prefix="cluster") as pool:
        checked = list(pool.map(lambda b: _check_one(sb, overcloud_id, post, b, overlay["addresses"]), clusters))
    cpus = sum(c["capacity"]["cpus"] for c in checked)
    mem = sum(c["capacity"]["memory_mb"] for c in checked)
    sites = sorted({c["site"] for c in checked})
    return {
        "clusters": checked,
        "message": f"{len(checked)} cluster boxes verified on {', '.join(sites)}: {cpus:g} CPUs, {mem} MiB in all",
    }


@registry.action("cluster.remove")
def remove(ctx: ActionContext, overcloud_id: str, boxes: list[dict[str, Any]]) -> dict[str, Any]:
    """Stop the workloads on the cluster boxes (the boxes are released later)."""
    sb = ctx.services
    stopped = []
    for b in boxes:
        if b["role"] == "cluster":
            stopped += stop_programs(sb, Box.from_dict(b))
    return {"message": f"cluster programs stopped: {len(stopped)}"}
