"""Placement: a box for every replica of a pattern.

Rules, in order: the box's labels satisfy the Deployment's ``nodeSelector``; the box has the
replica's requests free (its flavor minus what OverCloud's own programs reserve minus what is
placed already); among those, replicas of one Deployment spread — fewest of its replicas on
the site first, then on the box — and ties go to the box with the most memory free, then to
its name (so a plan is the same for the same input).

A refusal says why, with the numbers: which boxes the selector allows and the largest free
memory and CPU among them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from overcloud.composition.pattern import Deployment, Pattern, format_memory

# What OverCloud's own programs on a cluster box take (volume server, node-exporter, flow
# agent, supervisord, health responder), measured at ~120 MiB resident and a few % of a core.
RESERVED_MEMORY = 128 * 2**20
RESERVED_CPU = 0.1

LABEL_SITE, LABEL_BOX, LABEL_CLUSTER, LABEL_ROLE = (
    "overcloud.io/site", "overcloud.io/box", "overcloud.io/cluster", "overcloud.io/role")


@dataclasses.dataclass
class Node:
    """A box as placement sees it."""

    name: str
    site: str
    labels: dict[str, str]
    cpus: float
    memory: int  # bytes
    used_cpu: float = 0.0
    used_memory: int = 0
    schedulable: bool = True
    # TCP ports taken in the box's namespace (OverCloud's own programs, other replicas):
    # replicas share their box's network namespace, so a port is like a Kubernetes hostPort
    ports: set[int] = dataclasses.field(default_factory=set)

    @property
    def free_cpu(self) -> float:
        return round(self.cpus - RESERVED_CPU - self.used_cpu, 6)

    @property
    def free_memory(self) -> int:
        return self.memory - RESERVED_MEMORY - self.used_memory


def box_labels(box: Any, site_labels: dict[str, dict[str, str]] | None = None) -> dict[str, str]:
    """The labels OverCloud puts on a box, plus its site's configured (user) labels."""
    labels = dict((site_labels or {}).get(box.site, {}))
    labels.update({LABEL_SITE: box.site, LABEL_BOX: box.name, LABEL_ROLE: box.role})
    if box.role == "cluster":
        labels[LABEL_CLUSTER] = box.name
    return labels


def nodes_from_boxes(boxes: Iterable[Any], site_labels: dict[str, dict[str, str]] | None = None,
                     unschedulable: Iterable[str] = (), listening: dict[str, set[int]] | None = None) -> list[Node]:
    """Cluster boxes become nodes; the DevOps Post runs the OverCloud's own services only."""
    bad = set(unschedulable)
    return [
        Node(name=b.name, site=b.site, labels=box_labels(b, site_labels), cpus=float(b.cpus),
             memory=int(b.memory_mb * 2**20), schedulable=b.name not in bad,
             ports=set((listening or {}).get(b.name, set())))
        for b in boxes if b.role == "cluster"
    ]


class PlacementError(ValueError):
    def __init__(self, deployment: str, reason: str):
        self.deployment, self.reason = deployment, reason
        super().__init__(f"Deployment/{deployment}: {reason}")


@dataclasses.dataclass
class Assignment:
    deployment: str
    index: int
    box: str
    site: str


def ports_of(d: Deployment) -> set[int]:
    return {p for c in d.containers for p in c.ports}


def _matches(node: Node, selector: dict[str, str]) -> bool:
    return all(node.labels.get(k) == v for k, v in selector.items())


def _refusal(d: Deployment, nodes: list[Node], index: int) -> str:
    selector = ", ".join(f"{k}={v}" for k, v in d.node_selector.items())
    allowed = [n for n in nodes if _matches(n, d.node_selector) and n.schedulable]
    if not allowed:
        if not any(_matches(n, d.node_selector) for n in nodes):
            offered = sorted({f"{k}={v}" for n in nodes for k, v in n.labels.items() if k != LABEL_BOX and k != LABEL_CLUSTER})
            return (f"no box matches nodeSelector {{{selector}}}; the cluster boxes carry "
                    f"{', '.join(offered) or 'no labels'}")
        return f"every box matching nodeSelector {{{selector}}} is out of service"
    where = f"in site {', '.join(sorted({n.site for n in allowed}))}" if d.node_selector else "in this OverCloud"
    need_mem, need_cpu = d.memory_request, d.cpu_request
    wanted = ports_of(d)
    if wanted and all(wanted & n.ports for n in allowed):
        taken = sorted({p for n in allowed for p in wanted & n.ports})
        return (f"replica {index + 1} of {d.replicas}: port {', '.join(map(str, taken))} is taken on every box {where} "
                f"({', '.join(n.name for n in allowed)}); replicas share their box's network, so two listening on one "
                "port need two boxes: lower the replicas, add boxes, or change the port")
    best_mem = max(allowed, key=lambda n: (n.free_memory, n.name))
    best_cpu = max(allowed, key=lambda n: (n.free_cpu, n.name))
    replica = f"replica {index + 1} of {d.replicas}"
    if best_mem.free_memory < need_mem:
        return (f"{replica}: no box {where} has {format_memory(need_mem)} free; largest free is "
                f"{format_memory(max(best_mem.free_memory, 0))} on {best_mem.name} ({best_mem.site})")
    if best_cpu.free_cpu < need_cpu:
        return (f"{replica}: no box {where} has {need_cpu:g} CPU free; largest free is "
                f"{max(best_cpu.free_cpu, 0):g} on {best_cpu.name} ({best_cpu.site})")
    return (f"{replica}: no single box {where} has both {format_memory(need_mem)} and {need_cpu:g} CPU free")


def charge(nodes: list[Node], d: Deployment, placed: Iterable[Assignment]) -> None:
    """Count already placed replicas of ``d`` against their nodes (requests and ports)."""
    by_name = {n.name: n for n in nodes}
    for a in placed:
        n = by_name.get(a.box)
        if n is not None:
            n.used_cpu += d.cpu_request
            n.used_memory += d.memory_request
            n.ports |= ports_of(d)


def place_replicas(d: Deployment, nodes: list[Node], indexes: Iterable[int],
                   existing: list[Assignment] = ()) -> list[Assignment]:
    """Place the given replica indexes of one Deployment onto ``nodes`` (whose ``used_*`` are
    updated); ``existing`` are its replicas already placed (they count for spreading)."""
    on_site: dict[str, int] = {}
    on_box: dict[str, int] = {}
    for a in existing:
        on_site[a.site] = on_site.get(a.site, 0) + 1
        on_box[a.box] = on_box.get(a.box, 0) + 1
    out: list[Assignment] = []
    wanted = ports_of(d)
    for i in indexes:
        fits = [n for n in nodes if n.schedulable and _matches(n, d.node_selector) and not (wanted & n.ports)
                and n.free_memory >= d.memory_request and n.free_cpu >= d.cpu_request - 1e-9]
        if not fits:
            raise PlacementError(d.name, _refusal(d, nodes, i))
        n = min(fits, key=lambda n: (on_site.get(n.site, 0), on_box.get(n.name, 0), -n.free_memory, n.name))
        n.used_cpu += d.cpu_request
        n.used_memory += d.memory_request
        n.ports |= wanted
        on_site[n.site] = on_site.get(n.site, 0) + 1
        on_box[n.name] = on_box.get(n.name, 0) + 1
        out.append(Assignment(d.name, i, n.name, n.site))
    return out


def place(pattern: Pattern, nodes: list[Node]) -> list[Assignment]:
    """Every replica of every Deployment, bigger requests first (they are the hard ones)."""
    if not nodes:
        raise PlacementError(pattern.deployments[0].name, "this OverCloud has no cluster boxes to run it on")
    order = sorted(pattern.deployments, key=lambda d: (-d.memory_request, -d.cpu_request, d.name))
    out: list[Assignment] = []
    for d in order:
        out += place_replicas(d, nodes, range(d.replicas))
    return out
