"""Stitching: how a Service name becomes a working connection from any box.

Every Service gets a virtual IP (``VIP_CIDR``, a range never routed anywhere) when it is
composed. In every box of the OverCloud:

* ``/etc/hosts`` names the Service with its VIP (and ``<NAME>_SERVICE_HOST/PORT`` carry it,
  as Kubernetes does for pods started after the Service);
* an nftables ``nat output`` chain rewrites ``VIP:port`` to a ready replica's overlay address
  and target port, round-robin over the ready replicas of the box's own site when there are
  any, else over all of them (kube-proxy's job, topology-aware);
* a VIP with no ready replica answers a connection with a TCP reset at once, not a timeout;
* a ``type: NodePort`` Service is also published on the site address of every box running a
  ready replica of it: ``<site address>:<nodePort>`` is rewritten (``prerouting``) to that
  replica's overlay address and target port. The box firewall admits from the site network
  only what this table rewrote (see the UnderCloud's box firewall), so ClusterIP Services and
  every other port of a box stay unreachable from there.

Pure functions of the repository's rows; the controller writes what they return.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable

from overcloud.composition.pattern import deployment_of, generation_of, templates_of

VIP_CIDR = "198.18.0.0/15"  # RFC 2544's benchmarking range: never routed, free inside a box
NFT_TABLE = "overcloud_svc"


def env_name(service: str) -> str:
    return service.upper().replace("-", "_")


def vip(index: int) -> str:
    return str(ipaddress.ip_network(VIP_CIDR).network_address + 1 + index)


def next_vips(taken: Iterable[str], count: int) -> list[str]:
    """The ``count`` lowest free VIPs (a Service keeps its VIP for as long as it exists)."""
    used = set(taken)
    out: list[str] = []
    i = 0
    while len(out) < count:
        v = vip(i)
        if v not in used:
            out.append(v)
        i += 1
    return out


def services(rows: Iterable[Any], boxes: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Service name -> its VIP, ports, and ready endpoints (replica, box, site, addresses,
    and the target port of each Service port on that replica)."""
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        _, svcs = deployment_of(row.spec)
        templates = templates_of(row.spec, row.replicas)
        for s, raw in zip(svcs, row.spec["services"]):
            entry = out.setdefault(s.name, {"vip": raw.get("vip"), "ports": [(p.name, p.port) for p in s.ports],
                                            "type": s.type, "endpoints": [],
                                            "node_ports": {p.port: p.node_port for p in s.ports if p.node_port}})
            for r in row.replicas:
                b = boxes.get(r["box"])
                if r["ready"] and b is not None and b.overlay_address:
                    d = templates[generation_of(r)]  # during a rolling update, a named port may differ
                    entry["endpoints"].append({
                        "replica": r["name"], "box": b.name, "site": b.site, "address": b.overlay_address,
                        "site_address": b.address, "targets": {p.port: p.target(d) for p in s.ports}})
    return out


def local_first(eps: list[dict[str, Any]], site: str) -> list[dict[str, Any]]:
    same = [e for e in eps if e["site"] == site]
    return sorted(same or eps, key=lambda e: e["replica"])


def hosts(base: dict[str, str], svcs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """A box's hosts entries: the OverCloud's box names, then every Service's VIP."""
    entries = dict(base)
    for name, s in svcs.items():
        if s["vip"]:
            entries[name] = s["vip"]
    return entries


def service_env(svcs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """``<NAME>_SERVICE_HOST``, ``<NAME>_SERVICE_PORT`` and ``..._PORT_<PORTNAME>`` for every
    Service with a ready replica now (as Kubernetes gives a pod the Services that exist)."""
    env: dict[str, str] = {}
    for name, s in sorted(svcs.items()):
        if not s["endpoints"] or not s["vip"]:
            continue
        key = env_name(name)
        env[f"{key}_SERVICE_HOST"] = s["vip"]
        env[f"{key}_SERVICE_PORT"] = str(s["ports"][0][1])
        for pname, port in s["ports"]:
            if pname:
                env[f"{key}_SERVICE_PORT_{env_name(pname)}"] = str(port)
    return env


def publications(svcs: dict[str, dict[str, Any]], box: Any) -> list[dict[str, Any]]:
    """The NodePorts ``box`` publishes: one per port of each NodePort Service with a ready
    replica on it (the box's own replica serves what reaches its site address)."""
    out: dict[int, dict[str, Any]] = {}
    for name, s in sorted(svcs.items()):
        if s.get("type") != "NodePort":
            continue
        for e in s["endpoints"]:
            if e["box"] != box.name:
                continue
            for port, node_port in sorted(s["node_ports"].items()):
                out.setdefault(node_port, {"service": name, "node_port": node_port, "site_address": box.address,
                                           "address": e["address"], "target": e["targets"][port]})
    return [out[k] for k in sorted(out)]


def node_port_urls(svcs: dict[str, dict[str, Any]], name: str, published: dict[str, Any] | None = None) -> list[str]:
    """``http://<address>:<nodePort>`` of every box publishing Service ``name``: the address its
    session published it at (``published``, the OverCloud's info :data:`PUBLISHED_INFO`: a
    remote box's host address), else its site address. A box whose host refused the port has
    no URL."""
    s = svcs.get(name) or {}
    if s.get("type") != "NodePort":
        return []
    published = published or {}
    urls = []
    for e in sorted(s["endpoints"], key=lambda e: e["box"]):
        address = published.get(e["box"], e["site_address"])
        if not isinstance(address, str):
            continue  # {"problem": ...}
        urls += [f"http://{address}:{s['node_ports'][port]}" for _, port in s["ports"] if port in s["node_ports"]]
    return list(dict.fromkeys(urls))


#: the OverCloud info key where the service controller keeps where each box's NodePorts are
#: published (box name -> address, or {"problem": ...})
PUBLISHED_INFO = "node_ports_published"


def nat_script(svcs: dict[str, dict[str, Any]], site: str, box: Any = None) -> str:
    """The box's whole service table, replaced atomically by ``nft -f``; with ``box``, also
    the NodePorts it publishes on its site address."""
    rules = []
    for name, s in sorted(svcs.items()):
        if not s["vip"] or not s["endpoints"]:
            continue
        eps = local_first(s["endpoints"], site)
        for _, port in s["ports"]:
            choices = ", ".join(f"{i} : {e['address']} . {e['targets'][port]}" for i, e in enumerate(eps))
            rules.append(f"    ip daddr {s['vip']} tcp dport {port} dnat ip addr . port to numgen inc mod {len(eps)} "
                         f"map {{ {choices} }} comment \"{name}\"")
    body = "\n".join(rules)
    published = "\n".join(
        f"    ip daddr {p['site_address']} tcp dport {p['node_port']} dnat to {p['address']}:{p['target']} "
        f"comment \"{p['service']}\"" for p in (publications(svcs, box) if box is not None else []))
    return f"""table ip {NFT_TABLE}
delete table ip {NFT_TABLE}
table ip {NFT_TABLE} {{
  chain services {{
    type nat hook output priority -100; policy accept;
{body}
  }}
  chain published {{
    type nat hook prerouting priority -100; policy accept;
{published}
  }}
  chain unserved {{
    type filter hook output priority 0; policy accept;
    ip daddr {VIP_CIDR} meta l4proto tcp reject with tcp reset
  }}
}}
"""


def scrape_targets(rows: Iterable[Any], boxes: dict[str, Any]) -> list[dict[str, Any]]:
    """Prometheus targets of ready replicas whose pods ask to be scraped (annotations)."""
    out = []
    for row in rows:
        for r in row.replicas:
            scrape = deployment_of(row.spec, generation_of(r))[0].scrape
            b = boxes.get(r["box"])
            if scrape and r["ready"] and b is not None and b.overlay_address:
                out.append({"target": f"{b.overlay_address}:{scrape['port']}",
                            "labels": {"box": b.name, "site": b.site, "role": b.role, "service": row.name,
                                       "replica": r["name"], "__metrics_path__": scrape["path"]}})
    return sorted(out, key=lambda t: t["labels"]["replica"])
