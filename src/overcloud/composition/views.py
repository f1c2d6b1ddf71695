"""What the API shows of composed services: one service's replicas, endpoints and recent
log lines, and the workloads per box for the Fabric topology."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from overcloud.composition import runtime as rt
from overcloud.composition import stitching
from overcloud.composition.pattern import Deployment, deployment_of, generation_of


def describe(sb, oc, row, rows: Iterable[Any], *, logs: int = 0) -> dict[str, Any]:
    """One service as the API shows it; ``logs`` lines of each replica's log (read over its
    box's session, from ``sb``)."""
    boxes = {b.name: b for b in oc.boxes}
    svcs = stitching.services(rows, boxes)
    d, services = deployment_of(row.spec)
    replicas = []
    for r in row.replicas:
        b = boxes.get(r["box"])
        item = {k: r.get(k) for k in ("name", "box", "site", "state", "ready", "restarts", "message", "started_at")}
        item["generation"] = generation_of(r)
        item["address"] = b.overlay_address if b else None
        item["site_address"] = b.address if b else None
        if logs and b is not None:
            item["logs"] = log_tail(sb.session(b), r["name"], deployment_of(row.spec, generation_of(r))[0], logs)
        replicas.append(item)
    return {
        "name": row.name, "status": row.status, "message": row.message, "runtime": row.runtime,
        "pattern_id": row.pattern_id, "generation": generation_of(row.spec),
        "replicas_ready": sum(1 for r in row.replicas if r["ready"]), "replicas_wanted": d.replicas,
        "images": sorted(d.images), "depends_on": row.spec.get("depends_on", []),
        "requests": {"cpu": d.cpu_request, "memory": d.memory_request},
        "node_selector": d.node_selector,
        # a NodePort Service's urls: where it is published (the site address of each box running a
        # ready replica); nothing else of a box is reachable from the site network
        "services": [{"name": s.name, "type": s.type, "ports": [p.port for p in s.ports], "vip": svcs[s.name]["vip"],
                      **({"node_ports": [p.node_port for p in s.ports]} if s.type == "NodePort" else {}),
                      "endpoints": [f"{e['address']}:{e['targets'][p.port]}" for e in svcs[s.name]["endpoints"] for p in s.ports],
                      "urls": stitching.node_port_urls(svcs, s.name, (oc.info or {}).get(stitching.PUBLISHED_INFO))}
                     for s in services],
        "replicas": replicas,
        "created_at": row.created_at.isoformat() if row.created_at else None,
        "ready_at": row.ready_at.isoformat() if row.ready_at else None,
        "ready_seconds": round((row.ready_at - row.created_at).total_seconds(), 2) if row.ready_at and row.created_at else None,
    }


def log_tail(session, replica: str, d: Deployment, lines: int) -> list[str]:
    """The last lines of each container's stdout and stderr (supervisord's log files)."""
    out: list[str] = []
    for c in d.containers:
        for stream in ("out", "err"):
            data = session.tail_log(rt.program_name(replica, c.name), stream, 64 * 1024)
            out += [f"[{c.name}] {line}" for line in tail_lines(data, lines)]
    return out[-lines:] if len(d.containers) == 1 else out


def workloads_by_box(rows: Iterable[Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        for r in row.replicas:
            d = deployment_of(row.spec, generation_of(r))[0]
            out.setdefault(r["box"], []).append({"replica": r["name"], "service": row.name, "state": r["state"],
                                                "ready": r["ready"], "restarts": r["restarts"],
                                                "ports": sorted({p for c in d.containers for p in c.ports})})
    return out


def tail_lines(data: bytes, lines: int) -> list[str]:
    """The last ``lines`` non-blank lines of a log's tail."""
    return [line for line in data.decode("utf-8", "replace").splitlines() if line.strip()][-lines:]


def tail(path: Path, lines: int) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [line for line in data.splitlines() if line.strip()][-lines:]
