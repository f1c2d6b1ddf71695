"""Addresses that must never leave the Tower's machine: ``unreachable`` routes in its root namespace.

The project's own ranges — the overlay (``overlay_cidr``, which exists only inside box
namespaces) and the box subnets of the ssh sites (``box_cidr``, routed only between the remote
hosts) — have no route in the Tower's root namespace, so a packet to one of them from there
(a test, a tool, a mistaken request) would follow the default route out of ``eth0``. The Tower
therefore adds ``unreachable <cidr> proto 88 metric 4242`` for each at start: a connect from
the root namespace then fails at once with EHOSTUNREACH, and a box that sends there through its
gateway gets an ICMP unreachable instead of a forwarded packet.

* **Never in the way.** The metric is high, so any route someone else has to such a range
  (a more specific or a lower-metric one) still wins; ``replace`` only ever matches our own
  route (same prefix, same metric). Routes are found by their protocol, :data:`PROTO`.
* **Host-wide, shared.** Several Towers on one machine may want the same range. Each records
  what it wants in ``<state dir>/unreachable.json`` and claims it host-wide
  (:class:`~overcloud.underclouds.local.leases.HostLeases`, space :data:`SPACE`, a claim per
  Tower); :func:`release` (at the Tower's close) drops its claim and removes the routes that
  it, or a claim found dead on the way, wanted and no live claim still wants: never a route no
  claim of this space named. A Tower killed with -9 leaves its claim live (its file stays): the
  routes stay, which is the safe side, until that state dir's Tower closes or is removed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import subprocess
from collections.abc import Iterable
from pathlib import Path

from overcloud.files import write_atomic
from overcloud.underclouds.local.leases import HostLeases

logger = logging.getLogger(__name__)

PROTO = 88  # our unreachable routes (the WAN's routes on remote hosts are 87)
METRIC = 4242
SPACE = "unreachable"
OWNER_FILE = "unreachable.json"


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)


def ours() -> set[str]:
    """The unreachable routes of :data:`PROTO` in this namespace."""
    r = _ip("-j", "route", "show", "type", "unreachable", "proto", str(PROTO))
    if r.returncode != 0:
        return set()
    out = set()
    for route in json.loads(r.stdout or "[]"):
        dst = route.get("dst", "")
        out.add(str(ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False)))
    return out


def install(cidrs: Iterable[str], state_dir: Path, tower_id: str, host: HostLeases | None = None) -> list[str]:
    """Claim ``cidrs`` for this Tower and make sure each has our unreachable route; returns them."""
    wanted = sorted({str(ipaddress.ip_network(c, strict=False)) for c in cidrs if c})
    host = host or HostLeases()
    owner = Path(state_dir) / OWNER_FILE
    with host.lock(SPACE):
        write_atomic(owner, json.dumps({"cidrs": wanted}))
        host.claim(SPACE, tower_id, owner, tower_id, {"cidrs": wanted})
        for cidr in wanted:
            r = _ip("route", "replace", "unreachable", cidr, "proto", str(PROTO), "metric", str(METRIC))
            if r.returncode != 0:
                raise OSError(f"ip route replace unreachable {cidr} failed: {r.stderr.strip()}")
    return wanted


def release(state_dir: Path, tower_id: str, host: HostLeases | None = None) -> list[str]:
    """Drop this Tower's claim; remove the routes no other live claim wants. Returns those removed."""
    host = host or HostLeases()
    owner = Path(state_dir) / OWNER_FILE
    removed = []
    with host.lock(SPACE):
        with contextlib.suppress(FileNotFoundError):
            owner.unlink()
        claims = {}
        for p in (host.root / SPACE).glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                claims[p.stem] = json.loads(p.read_text())
        live = host.taken(SPACE)  # drops this Tower's claim, and those of Towers whose state dir is gone
        still = {c for claim in live.values() for c in (claim.get("holds") or {}).get("cidrs", [])}
        # only ranges a claim that just ended wanted: never a route this space does not know of
        ended = {c for key, claim in claims.items() if key not in live and isinstance(claim, dict)
                 for c in (claim.get("holds") or {}).get("cidrs", [])}
        for cidr in sorted((ended - still) & ours()):
            r = _ip("route", "del", "unreachable", cidr, "proto", str(PROTO), "metric", str(METRIC))
            if r.returncode == 0:
                removed.append(cidr)
            else:
                logger.warning("removing unreachable route %s failed: %s", cidr, r.stderr.strip())
    return removed
