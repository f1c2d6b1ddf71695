"""Stitching: which replica answers for each Service name, as seen from each box.

Every box's ``/etc/hosts`` names every Service with its nearest ready replica (same box, then
same site, then any); replicas started later also get Kubernetes' ``<NAME>_SERVICE_HOST/PORT``
variables; and replicas that ask to be scraped become the Fabric's ``workloads`` targets.
Pure functions of the repository's rows: the controller writes what they return.
"""

from __future__ import annotations

from typing import Any, Iterable


def env_name(service: str) -> str:
    return service.upper().replace("-", "_")


def endpoints(rows: Iterable[Any], boxes: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Service name -> its ready replicas (box, site, overlay and site address, ports)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        for s in row.spec["services"]:
            eps = out.setdefault(s["name"], [])
            for r in row.replicas:
                b = boxes.get(r["box"])
                if r["ready"] and b is not None and b.overlay_address:
                    eps.append({"replica": r["name"], "box": b.name, "site": b.site, "address": b.overlay_address,
                                "site_address": b.address, "ports": s["ports"]})
    return out


def nearest(eps: list[dict[str, Any]], box: str, site: str) -> dict[str, Any]:
    return min(eps, key=lambda e: (e["box"] != box, e["site"] != site, e["replica"]))


def hosts(base: dict[str, str], eps: dict[str, list[dict[str, Any]]], box: Any) -> dict[str, str]:
    """One box's hosts entries: the OverCloud's box names, then every Service's nearest replica."""
    entries = dict(base)
    for name, found in eps.items():
        if found:
            entries[name] = nearest(found, box.name, box.site)["address"]
    return entries


def service_env(eps: dict[str, list[dict[str, Any]]], box: Any) -> dict[str, str]:
    """``<NAME>_SERVICE_HOST``, ``<NAME>_SERVICE_PORT`` and ``..._PORT_<PORTNAME>`` for every
    Service with a ready replica now (as Kubernetes gives a pod the Services that exist)."""
    env: dict[str, str] = {}
    for name, found in sorted(eps.items()):
        if not found:
            continue
        ep = nearest(found, box.name, box.site)
        key = env_name(name)
        env[f"{key}_SERVICE_HOST"] = ep["address"]
        env[f"{key}_SERVICE_PORT"] = str(ep["ports"][0]["port"])
        for port in ep["ports"]:
            if port.get("name"):
                env[f"{key}_SERVICE_PORT_{env_name(port['name'])}"] = str(port["port"])
    return env


def scrape_targets(rows: Iterable[Any], boxes: dict[str, Any]) -> list[dict[str, Any]]:
    """Prometheus targets of ready replicas whose pods ask to be scraped (annotations)."""
    out = []
    for row in rows:
        scrape = row.spec["deployment"].get("scrape")
        if not scrape:
            continue
        for r in row.replicas:
            b = boxes.get(r["box"])
            if r["ready"] and b is not None and b.overlay_address:
                out.append({"target": f"{b.overlay_address}:{scrape['port']}",
                            "labels": {"box": b.name, "site": b.site, "role": b.role, "service": row.name,
                                       "replica": r["name"], "__metrics_path__": scrape["path"]}})
    return sorted(out, key=lambda t: t["labels"]["replica"])
