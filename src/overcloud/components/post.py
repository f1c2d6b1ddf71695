"""The DevOps Post: the OverCloud's control box.

Today it holds the OverCloud's name service (every box resolves ``post``,
``c1``..``cN`` and their handles to overlay addresses) and its supervisord;
the DataLake master and the OverCloud Datastore join it with their issues.
"""

from __future__ import annotations

import logging
from typing import Any

from overcloud import states
from overcloud.southbound import Southbound
from overcloud.underclouds.base import Box
from overcloud.workflows.actions import ActionContext, registry

logger = logging.getLogger(__name__)


def find_post(boxes: list[Box]) -> Box:
    for b in boxes:
        if b.role == "post":
            return b
    raise ValueError("this OverCloud has no DevOps Post box")


def hosts_entries(boxes: list[Box], addresses: dict[str, str]) -> dict[str, str]:
    """Names every box answers to inside the OverCloud (name -> overlay address): box name,
    handle, and ``post``/``devops-post`` for the Post."""
    entries: dict[str, str] = {}
    for b in boxes:
        for name in [b.name, b.handle] + (["post", "devops-post"] if b.role == "post" else []):
            entries[name] = addresses[b.name]
    return entries


@registry.action("post.deploy")
def deploy(ctx: ActionContext, overcloud_id: str, boxes: list[dict[str, Any]], overlay: dict[str, Any]) -> dict[str, Any]:
    sb = ctx.services
    objs = [Box.from_dict(b) for b in boxes]
    post = find_post(objs)
    state = sb.session(post).supervisor_state()
    if state != "RUNNING":
        raise RuntimeError(f"supervisord on the DevOps Post {post.handle} is {state}")
    entries = hosts_entries(objs, overlay["addresses"])
    for b in objs:
        sb.session(b).set_hosts(entries)
    sb.records.set_box_fields(overcloud_id, post.name, state=states.BOX_READY)
    return {
        "post": {"name": post.name, "site": post.site, "address": post.address, "overlay_address": overlay["addresses"][post.name]},
        "message": f"DevOps Post {post.handle} on {post.site}: supervisord RUNNING, names of {len(objs)} boxes published",
    }


@registry.action("post.remove")
def remove(ctx: ActionContext, overcloud_id: str, boxes: list[dict[str, Any]]) -> dict[str, Any]:
    """Stop the Post's programs (the box itself is released later)."""
    sb = ctx.services
    posts = [Box.from_dict(b) for b in boxes if b["role"] == "post"]
    stopped = []
    for post in posts:
        stopped += stop_programs(sb, post)
    return {"message": f"DevOps Post programs stopped: {', '.join(stopped) or 'none'}"}


def stop_programs(sb: Southbound, box: Box) -> list[str]:
    """Stop every program on a box's supervisord, if it still answers; returns their names."""
    session = sb.session(box)
    if not session.supervisor_running():
        return []
    names = list(session.program_states())
    if names:
        session.stop_all_programs()
    return names
