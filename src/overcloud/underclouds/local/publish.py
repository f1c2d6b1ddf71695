"""Ports of a box published on its host's own address: how a user off the box network reaches a
NodePort (or the DataLake's S3) of a box on a remote host.

The box itself publishes on its site address (its own ``prerouting`` table rewrites
``<site address>:<port>`` to the workload, and its firewall admits such rewritten connections
from its gateways only: composition.stitching, local/net.box_firewall). On the Tower's machine
that address is directly reachable; on a remote host it is an address on the host's box bridge,
which nothing outside the host routes to. So the host gets one nft table per box and group
(``ocpub_<handle>_<group>``, the Tower's id and the box in its comment):

* ``prerouting``: ``<host address>:<port>`` arriving from anywhere but the box bridge →
  ``<box site address>:<port>`` (same port), with a connection mark (:data:`MARK`);
* ``postrouting``: connections carrying that mark leave towards the box masqueraded to the
  bridge's gateway address: the box answers through its gateway (it has no default route), and
  its firewall's "published ports answer the gateways only" holds unchanged;
* the host guard (``net.install_host_guard``) lets forwarded connections with that mark through,
  both ways; nothing else crosses between the bridge and the host's other interfaces.

A port is one box's on a host: :func:`publish` refuses one that another table (any Tower's,
any box's) holds on the same address, or that a process of the host listens on. All of it runs
under one host-wide lock. Standard library only (it runs on remote hosts from the bundle).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import re
import subprocess
from collections.abc import Iterable, Iterator

PREFIX = "ocpub_"
MARK = 0x4F430001  # "OC" + 1: only these tables set it
LOCK = "/run/overcloud/publish.lock"
GROUP = re.compile(r"^[a-z][a-z0-9]{0,15}$")
RULE = re.compile(r"ip daddr (\S+) tcp dport (\d+) ")


class PublishError(RuntimeError):
    """A port cannot be published here (held, or bad input); the message says by whom."""


def table(handle: str, group: str) -> str:
    if not GROUP.match(group):
        raise ValueError("group must be a short lowercase name")
    return f"{PREFIX}{handle.replace('-', '_')}_{group}"


def _nft(args: list[str], script: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["nft", *args], input=script, capture_output=True, text=True, timeout=20)


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    os.makedirs(os.path.dirname(LOCK), exist_ok=True)
    with open(LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def tables() -> dict[str, str]:
    """Every publishing table on this host (ours or another Tower's) with its listing."""
    r = _nft(["list", "tables", "ip"])
    names = [line.split()[-1] for line in r.stdout.splitlines() if line.startswith("table ip ")]
    out = {}
    for name in names:
        if name.startswith(PREFIX):
            listing = _nft(["list", "table", "ip", name])
            if listing.returncode == 0:
                out[name] = listing.stdout
    return out


def held(listing: str) -> set[tuple[str, int]]:
    """(address, port) pairs a table's prerouting rules publish."""
    return {(m.group(1), int(m.group(2))) for m in RULE.finditer(listing)}


def _listeners(ports: set[int]) -> list[str]:
    """``address:port`` of this host's TCP listeners on any of ``ports``."""
    r = subprocess.run(["ss", "-Htln"], capture_output=True, text=True, timeout=10)
    found = []
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4:
            local = parts[3]
            port = local.rsplit(":", 1)[-1]
            if port.isdigit() and int(port) in ports:
                found.append(local)
    return found


def publish(*, handle: str, group: str, address: str, box_address: str, bridge: str, ports: Iterable[int],
            comment: str) -> list[int]:
    """Make ``ports`` of box ``handle`` reachable at ``address`` (this host's), same numbers,
    replacing what the box published in ``group`` before; no ports: :func:`unpublish`. Refuses
    (PublishError) a port held by another table on this address or listened on by the host."""
    addr = str(ipaddress.IPv4Address(address))
    box = str(ipaddress.IPv4Address(box_address))
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", bridge):
        raise ValueError("bad bridge name")
    want = sorted({int(p) for p in ports})
    if any(not 1 <= p <= 65535 for p in want):
        raise ValueError("ports are 1-65535")
    name = table(handle, group)
    with _locked():
        if not want:
            _delete([name])
            return []
        mine = held(tables().get(name, ""))
        for other, listing in tables().items():
            if other == name:
                continue
            taken = sorted(p for a, p in held(listing) if a == addr and p in want)
            if taken:
                who = re.search(r'comment "([^"]*)"', listing)
                raise PublishError(f"port {', '.join(map(str, taken))} of {addr} is already published on this host "
                                   f"(by {who.group(1) if who else other})")
        busy = [x for x in _listeners(set(want)) if (addr, int(x.rsplit(':', 1)[1])) not in mine]
        if busy:
            raise PublishError(f"a process of the host listens on {', '.join(busy)}")
        safe = comment.replace('"', "'")[:120]
        dnat = "\n".join(f"    iifname != \"{bridge}\" ip daddr {addr} tcp dport {p} ct mark set {MARK:#x} "
                         f"dnat to {box}:{p}" for p in want)
        script = f"""table ip {name}
delete table ip {name}
table ip {name} {{
  comment "{safe}"
  chain pre {{
    type nat hook prerouting priority -100; policy accept;
{dnat}
  }}
  chain post {{
    type nat hook postrouting priority 100; policy accept;
    oifname "{bridge}" ip daddr {box} ct mark {MARK:#x} masquerade
  }}
}}
"""
        r = _nft(["-f", "-"], script)
        if r.returncode != 0:
            raise RuntimeError(f"nft on the host failed: {r.stderr.strip()[-300:]}")
    return want


def _delete(names: list[str]) -> list[str]:
    gone = []
    for name in names:
        r = _nft(["delete", "table", "ip", name])
        if r.returncode == 0:
            gone.append(name)
    return gone


def unpublish(handle: str, group: str | None = None) -> list[str]:
    """Remove the box's publishing tables (one group, or all); returns the tables removed.
    Idempotent."""
    with _locked():
        prefix = f"{PREFIX}{handle.replace('-', '_')}_"
        names = [n for n in tables() if n.startswith(prefix) and (group is None or n == table(handle, group))]
        return _delete(names)


def of_box(handle: str) -> list[str]:
    """The publishing tables of one box (for list_tagged)."""
    prefix = f"{PREFIX}{handle.replace('-', '_')}_"
    return sorted(n for n in tables() if n.startswith(prefix))
