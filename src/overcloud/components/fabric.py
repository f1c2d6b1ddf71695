"""Visible Fabric (node-exporter, flow agent, Prometheus on the Post). Not built yet: its
tasks are registered under their real names and say plainly that they did nothing."""

from __future__ import annotations

from typing import Any

from overcloud.workflows.actions import registry

NOT_BUILT = "the Visible Fabric is not built yet (issue 5): nothing was {}"


@registry.action("fabric.deploy")
def deploy(ctx, **_: Any) -> dict[str, Any]:
    return {"skipped": True, "message": NOT_BUILT.format("deployed")}


@registry.action("fabric.remove")
def remove(ctx, **_: Any) -> dict[str, Any]:
    return {"skipped": True, "message": NOT_BUILT.format("removed")}
