"""The Visible Fabric: a node-exporter and our flow agent on every box, and the OverCloud
Datastore — Prometheus on the DevOps Post — scraping them, the DataLake's SeaweedFS parts
and itself. Everything listens on overlay addresses only.

The scrape configuration is generated from the repository (the boxes and what runs on them)
and applied with a reload (SIGHUP through the Post's supervisord), never a restart:
Prometheus' HTTP lifecycle endpoints are off, so no workload can reload or stop it. The fabric
task is done only when Prometheus itself reports every target UP.

The Tower asks Prometheus from the Post's own network, over the Post's BoxSession
(``session.http_client``): Prometheus listens on the overlay only.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path
from typing import Any

from overcloud.components.post import find_post
from overcloud.components.programs import remove_everywhere
from overcloud.southbound import Southbound, box_obj
from overcloud.underclouds.base import Box
from overcloud.workflows.actions import ActionContext, registry

logger = logging.getLogger(__name__)

NODE, FLOW, PROM = 9100, 9101, 9090
PROGRAMS = ("prometheus", "node-exporter", "flow-agent")
#: the flow agent's names of overlay addresses (boxes, Service VIPs), under the box's dir
NAMES_FILE = "fabric/names.json"


def settings_of(sb: Southbound, overcloud_id: str) -> dict[str, Any]:
    spec = sb.records.get(overcloud_id).spec or {}
    return {"enabled": True, **(spec.get("fabric") or {})}


def prometheus_url(post_ip: str) -> str:
    return f"http://{post_ip}:{PROM}"


def _targets(sb: Southbound, overcloud_id: str, boxes: list[Box], addr: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """Every scrape target of the OverCloud, labelled with its box and site."""
    from overcloud.components.datalake import METRICS
    from overcloud.components.datalake import settings_of as datalake_settings

    with_datalake = datalake_settings(sb, overcloud_id)["enabled"]
    targets: dict[str, list[dict[str, Any]]] = {"node": [], "flow": [], "prometheus": [], "seaweedfs": []}
    for b in boxes:
        labels = {"box": b.name, "site": b.site, "role": b.role}
        targets["node"].append({"target": f"{addr[b.name]}:{NODE}", "labels": labels})
        targets["flow"].append({"target": f"{addr[b.name]}:{FLOW}", "labels": labels})
        if b.role == "post":
            targets["prometheus"].append({"target": f"{addr[b.name]}:{PROM}", "labels": labels})
        if with_datalake:
            parts = ("weed-master", "weed-filer", "weed-s3") if b.role == "post" else ("weed-volume",)
            for part in parts:
                targets["seaweedfs"].append({"target": f"{addr[b.name]}:{METRICS[part]}", "labels": {**labels, "part": part}})
    targets["workloads"] = sb.services.scrape_targets(overcloud_id)
    return {job: t for job, t in targets.items() if t}


@registry.action("fabric.deploy", revert_on_failure=True)
def deploy(ctx: ActionContext, overcloud_id: str, boxes: list[dict[str, Any]], overlay: dict[str, Any]) -> dict[str, Any]:
    from overcloud.fabric import prometheus as prom

    sb = ctx.services
    if not settings_of(sb, overcloud_id)["enabled"]:
        return {"skipped": True, "message": "Fabric disabled for this OverCloud"}
    t0 = time.monotonic()
    objs = [Box.from_dict(b) for b in boxes]
    post = find_post(objs)
    addr = overlay["addresses"]
    names = {addr[b.name]: b.name for b in objs}
    for b in objs:  # agents first: they are up by the time Prometheus looks
        session = sb.session(b)
        session.put_file(NAMES_FILE, json.dumps(names))
        nf = Path(session.box_dir) / NAMES_FILE
        # stopped only when the OverCloud goes away: SIGKILL, no graceful waits (see _stop)
        session.add_program("node-exporter", prom.node_exporter_argv(f"{addr[b.name]}:{NODE}"), startsecs=0, startretries=10,
                        stopsignal="KILL")
        session.add_program(
            "flow-agent",
            [*session.module_command("overcloud.fabric.flowagent"), "--listen", f"{addr[b.name]}:{FLOW}",
             "--names", str(nf), "--subnet", overlay["subnet"]],
            startsecs=0, startretries=10, stopsignal="KILL",
        )
    url = apply_config(sb, overcloud_id, objs, addr, start=True)
    expected = [t["target"] for ts in _targets(sb, overcloud_id, objs, addr).values() for t in ts]
    with sb.session(post).http_client() as http:
        prom.wait_all_up(url, expected, timeout=ctx.remaining() or 60, http=http)
    info = {"prometheus": url, "targets": len(expected), "scrape_interval_s": sb.settings.fabric_scrape_interval,
            "retention": sb.settings.fabric_retention, "ready_seconds": round(time.monotonic() - t0, 3)}
    sb.records.update_info(overcloud_id, fabric=info)
    return {"message": f"Prometheus on {post.name} scrapes {len(expected)} targets, all UP "
                       f"(node-exporter and flow agent on {len(objs)} boxes)", "targets": len(expected)}


@deploy.revert
def deploy_revert(ctx: ActionContext, result, overcloud_id: str, boxes: list[dict[str, Any]], **_: Any) -> None:
    _stop(ctx.services, boxes)


def apply_config(sb: Southbound, overcloud_id: str, boxes: list[Box], addr: dict[str, str], start: bool = False) -> str:
    """Write the Post's prometheus.yml from the repository's boxes; start Prometheus, or
    reload it (no restart) when it already runs. Returns its URL."""
    from overcloud.fabric import prometheus as prom

    post = find_post(boxes)
    session = sb.session(post)
    session.make_dirs(["prometheus/data"])
    d = Path(session.box_dir) / "prometheus"
    config = d / "prometheus.yml"
    text = prom.scrape_config(sb.settings.fabric_scrape_interval, _targets(sb, overcloud_id, boxes, addr))
    session.put_file("prometheus/prometheus.yml", text)  # atomic: Prometheus never reads half a file
    url = prometheus_url(addr[post.name])
    if "prometheus" in session.program_states():
        # SIGHUP through the box's supervisord (its socket is root-only): the only way to reload
        with session.http_client(timeout=5.0) as http:
            prom.reload(url, lambda: session.signal_program("prometheus", "HUP"), text, http=http)
    elif start:
        session.add_program("prometheus", prom.prometheus_argv(str(config), str(d / "data"), f"{addr[post.name]}:{PROM}",
                                                                 sb.settings.fabric_retention), startsecs=0, startretries=10,
                            stopsignal="KILL")
        with session.http_client() as http:
            prom.wait_ready(url, 30, http=http)
    return url


def _stop(sb: Southbound, boxes: list[dict[str, Any]]) -> list[str]:
    return remove_everywhere(sb, boxes, PROGRAMS)


@registry.action("fabric.remove")
def remove(ctx: ActionContext, overcloud_id: str, boxes: list[dict[str, Any]] | None = None, **_: Any) -> dict[str, Any]:
    stopped = _stop(ctx.services, boxes or [])
    return {"message": f"Fabric stopped: {len(stopped)} programs"}


# -- what the Tower asks the Fabric -----------------------------------------------------

def _boxes_of(row) -> list[Box]:
    return [box_obj(b) for b in row.boxes]


def health(sb: Southbound, row) -> dict[str, str]:
    """Boxes that are not well, by name: supervisord silent, or its node-exporter not scraped
    successfully for 3 scrape intervals. Empty when all is well."""
    from overcloud.fabric import prometheus as prom

    problems: dict[str, str] = {}
    boxes = _boxes_of(row)
    for b in boxes:
        try:
            running = sb.session(b).supervisor_running()
        except Exception as exc:  # noqa: BLE001 - no session: its host is not there (ssh: not answering)
            problems[b.name] = f"supervisord does not answer ({exc})"[:300]
            continue
        if not running:
            problems[b.name] = "supervisord does not answer"
    post = find_post(boxes)
    url = (row.info or {})["fabric"]["prometheus"]
    window_ms = int(3 * sb.settings.fabric_scrape_interval * 1000)
    query = f'max_over_time(up{{job="node"}}[{window_ms}ms])'
    try:
        with sb.session(post).http_client(timeout=60.0) as http:
            data = prom.query(url, query, http=http)
    except Exception as exc:  # noqa: BLE001 - Prometheus itself is what is down
        problems.setdefault(post.name, f"the OverCloud Datastore does not answer ({exc.__class__.__name__})")
        return problems
    seen = {}
    for r in data.get("result", []):
        seen[r["metric"].get("box")] = float(r["value"][1])
    for b in boxes:
        if seen.get(b.name, 0.0) < 1.0 and b.name not in problems:
            problems[b.name] = f"node-exporter not scraped successfully for 3 scrape intervals ({window_ms / 1000:g} s)"
    return problems


FLOW_RATE = 'sum by (src_box, dst_box, port, listener) (irate(overcloud_flow_bytes_sent_total[5s]))'
FLOW_CONNS = 'sum by (src_box, dst_box) (overcloud_flow_connections)'


@functools.cache
def own_ports() -> dict[int, str]:
    """The ports OverCloud's own programs listen on in a box (SeaweedFS's gRPC ports are each
    HTTP port + 10000)."""
    from overcloud.boxes.supervision import HEALTH_PORT
    from overcloud.components import datalake as dl

    ports = {NODE: "node-exporter", FLOW: "flow-agent", PROM: "prometheus", HEALTH_PORT: "overcloud-health"}
    for port, name in ((dl.MASTER, "weed-master"), (dl.VOLUME, "weed-volume"), (dl.FILER, "weed-filer"), (dl.S3, "weed-s3")):
        ports[port] = ports[port + 10000] = name
    ports.update({port: name for name, port in dl.METRICS.items()})
    return ports


def _serving(workloads: dict[str, list[dict[str, Any]]], box: str, port: int) -> dict[str, Any]:
    """Who listens on ``port`` in ``box``: a replica of a composed service, or one of
    OverCloud's own programs; a Service's VIP (``svc/x``, as a client sees it) names the Service."""
    if box.startswith("svc/"):
        return {"service": box[4:], "replica": None, "program": None}
    for w in workloads.get(box, []):
        if port in w.get("ports", ()):
            return {"service": w["service"], "replica": w["replica"], "program": None}
    return {"service": None, "replica": None, "program": own_ports().get(port)}


def topology(sb: Southbound, row, info: dict[str, Any], post_session) -> dict[str, Any]:
    """Sites → boxes → workloads from the repository, flow edges with rates from the Datastore
    (asked from the Post, over ``post_session``)."""
    from overcloud.fabric import prometheus as prom

    url = info["prometheus"]
    sites: dict[str, dict[str, Any]] = {}
    workloads = sb.services.workloads_by_box(row.id)
    for b in row.boxes:
        try:
            processes = sorted(sb.session(b).program_states())
        except Exception:  # noqa: BLE001 - a silent supervisord shows as no processes
            processes = []
        sites.setdefault(b.site, {"site": b.site, "boxes": []})["boxes"].append({
            "name": b.name, "role": b.role, "address": b.address, "overlay_address": b.overlay_address,
            "state": b.state, "flavor": b.flavor, "processes": processes,
            "workloads": workloads.get(b.name, []),
        })

    with post_session.http_client(timeout=60.0) as http:
        rates, conns = prom.query(url, FLOW_RATE, http=http), prom.query(url, FLOW_CONNS, http=http)
    edges: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rates.get("result", []):
        m = r["metric"]
        key = (m.get("src_box", "?"), m.get("dst_box", "?"))
        e = edges.setdefault(key, {"src": key[0], "dst": key[1], "bytes_per_s": 0.0, "connections": 0, "ports": []})
        rate = float(r["value"][1])
        e["bytes_per_s"] = round(e["bytes_per_s"] + rate, 1)
        if m.get("port"):  # the service port and which end serves it: name the workload listening there
            server = key[0] if m.get("listener") == "src" else key[1]
            e["ports"].append({"port": int(m["port"]), "server": server, **_serving(workloads, server, int(m["port"])),
                               "bytes_per_s": round(rate, 1)})
    for r in conns.get("result", []):
        key = (r["metric"].get("src_box", "?"), r["metric"].get("dst_box", "?"))
        edges.setdefault(key, {"src": key[0], "dst": key[1], "bytes_per_s": 0.0, "connections": 0, "ports": []})
        edges[key]["connections"] = int(float(r["value"][1]))
    for e in edges.values():  # which workloads each end of a flow runs
        e["src_workloads"] = sorted({w["service"] for w in workloads.get(e["src"], [])})
        e["dst_workloads"] = sorted({w["service"] for w in workloads.get(e["dst"], [])})
        e["ports"].sort(key=lambda p: -p["bytes_per_s"])
    flows = sorted(edges.values(), key=lambda e: -e["bytes_per_s"])
    return {"overcloud_ID": row.id, "status": row.status, "sites": list(sites.values()), "flows": flows,
            "degraded": (row.info or {}).get("degraded") or {}}
