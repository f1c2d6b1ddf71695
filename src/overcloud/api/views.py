"""What the API answers: repository rows turned into JSON, with the seed's field names kept."""

from __future__ import annotations

import datetime as dt
from typing import Any

from overcloud import states
from overcloud.repository.models import BoxRow, OverCloudRow, TaskRow


def iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite hands back naive datetimes; we only ever store UTC
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.isoformat().replace("+00:00", "Z")


def box_view(b: BoxRow) -> dict[str, Any]:
    return {
        "name": b.name,
        "role": b.role,
        "site": b.site,
        "handle": b.handle,
        "address": b.address,
        "overlay_address": b.overlay_address,
        "flavor": {"name": b.flavor, "cpus": b.cpus, "memory_mb": b.memory_mb},
        "state": b.state,
        "capacity": b.capacity or {},
    }


def task_view(t: TaskRow) -> dict[str, Any]:
    duration = None
    if t.started_at and t.ended_at:
        duration = round((t.ended_at - t.started_at).total_seconds(), 4)
    out = t.output or {}
    return {
        "task": t.task,
        "action": t.action,
        "state": t.state,
        "attempts": t.attempts,
        "started_at": iso(t.started_at),
        "ended_at": iso(t.ended_at),
        "duration_s": duration,
        "error": t.error,
        "message": out.get("message") if isinstance(out, dict) else None,
    }


def summary_view(row: OverCloudRow) -> dict[str, Any]:
    return {
        "overcloud_ID": row.id,
        "tenant_ID": row.tenant_id,
        "name": row.name,
        "status": row.status,
        "created_at": iso(row.created_at),
    }


def workflow_view(row: OverCloudRow, tasks: list[TaskRow]) -> dict[str, Any]:
    by_wf: dict[str, list[dict[str, Any]]] = {}
    for t in tasks:
        by_wf.setdefault(t.workflow, []).append(task_view(t))
    current = "delete_overcloud" if "delete_overcloud" in by_wf else "create_overcloud"
    return {"overcloud_ID": row.id, "status": row.status, "current": current, "workflows": by_wf}


def datalake_view(spec: dict[str, Any], info: dict[str, Any] | None) -> dict[str, Any]:
    """The DataLake part of the detail; never a secret (keys come from .../datalake/credentials)."""
    settings = {"enabled": True, "preserve": True, "restore_from": None, **(spec.get("datalake") or {})}
    if not settings["enabled"]:
        return {"status": "disabled", "settings": settings}
    if not info:
        return {"status": "not deployed", "settings": settings}
    return {"status": "deployed", "settings": settings, **info}


def fabric_view(spec: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    settings = {"enabled": True, **(spec.get("fabric") or {})}
    fabric = info.get("fabric")
    if not settings["enabled"]:
        return {"status": "disabled", "settings": settings}
    if not fabric:
        return {"status": "not deployed", "settings": settings}
    return {"status": "deployed", "settings": settings, "targets": fabric.get("targets"),
            "scrape_interval_s": fabric.get("scrape_interval_s"), "retention": fabric.get("retention"),
            "ready_seconds": fabric.get("ready_seconds"), "degraded": info.get("degraded") or {}}


def services_view(rows, boxes=(), published: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The detail's short list of composed services (the full view is /services/{name}), with
    the URLs their NodePort Services are published at (``http://<site address>:<nodePort>``)."""
    from overcloud.composition import stitching

    rows = list(rows)
    svcs = stitching.services(rows, {b.name: b for b in boxes}) if rows else {}
    return [{"name": r.name, "status": r.status, "runtime": r.runtime,
             "replicas": [f"{x['name']}@{x['box']} {x['state']}" for x in r.replicas],
             "urls": [u for s in r.spec.get("services", []) for u in stitching.node_port_urls(svcs, s["name"], published)],
             "link": f"/overclouds/{r.overcloud_id}/services/{r.name}"} for r in rows]


def detail_view(row: OverCloudRow, tasks: list[TaskRow], datalake: dict[str, Any] | None = None,
                services: list[Any] = ()) -> dict[str, Any]:
    post = next((b for b in row.boxes if b.role == "post"), None)
    clusters = [b for b in row.boxes if b.role == "cluster"]
    spec = row.spec or {}
    out = {
        **summary_view(row),
        "id": row.id,
        "ready_at": iso(row.ready_at),
        "deleted_at": iso(row.deleted_at),
        "updated_at": iso(row.updated_at),
        "create_seconds": round((row.ready_at - row.created_at).total_seconds(), 3) if row.ready_at else None,
        # the seed's names: the Post's address and the cluster addresses
        "devops_post": post.address if post else None,
        "logical_cluster": [b.address for b in clusters],
        "post": box_view(post) if post else None,
        "clusters": [box_view(b) for b in clusters],
        "sites": spec.get("sites", []),
        "overlay": (row.info or {}).get("overlay"),
        "datalake": datalake_view(spec, datalake),
        "fabric": fabric_view(spec, row.info or {}),
        "services": services_view(services, row.boxes, (row.info or {}).get("node_ports_published")),
        "workflow": workflow_view(row, tasks),
        "error": None,
        "links": {
            "self": f"/overclouds/{row.id}",
            "workflow": f"/overclouds/{row.id}/workflow",
            "topology": f"/overclouds/{row.id}/topology",
            "services": f"/overclouds/{row.id}/services",
            "metrics": f"/overclouds/{row.id}/metrics?query=up",
            "events": f"/overclouds/{row.id}/events",
        },
    }
    if row.status == states.FAILED:
        out["error"] = {"task": row.error_task, "cause": row.error}
    return out
