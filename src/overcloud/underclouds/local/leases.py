"""Address and overlay leases of the local UnderCloud, as JSON files.

``<state_dir>/leases/<handle>.json`` reserves a box's site address and
names its OverCloud; ``<state_dir>/overlays/<overcloud id>.json`` reserves
an overlay's VNI, subnet and per-box addresses. A lease is written
*before* anything is made in the kernel, so a box left half-made by a
crash is still found by its lease. Allocation scans the lease files under
a lock that holds across threads and processes (``fcntl.flock``).

A bridge is the host's, not one Tower's: two Towers (two state dirs) configured with the
same sites put their boxes on the same bridges. So every site address, and every overlay's
VNI and subnet, is also claimed host-wide (:class:`HostLeases`, under
``/var/lib/overcloud/leases``): a claim names the Tower's own lease file, and is honoured
while that file still holds it. A Tower that released (or whose state dir is gone) leaves
nothing that blocks the others; a crash between the two writes leaves a claim nobody owns,
which the next allocation drops.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from overcloud.files import flocked, write_atomic

logger = logging.getLogger(__name__)

VNI_BASE = 4096
HOST_LEASES = Path("/var/lib/overcloud/leases")


class LeaseError(Exception):
    pass


class HostLeases:
    """Claims every Tower on this host shares, one JSON file per claimed key in a space
    (``bridge-<name>/<address>.json``, ``overlay/<index>.json``), each space under its own
    ``flock``. A claim is ``{"owner": <path of a lease file>, "tower": <id>, "holds": {...}}``
    and is live while the owner file exists and holds those fields; a dead claim is dropped
    when an allocation meets it."""

    def __init__(self, root: Path = HOST_LEASES):
        self.root = Path(root)

    def _space(self, space: str) -> Path:
        d = self.root / space
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        return d

    @contextlib.contextmanager
    def lock(self, space: str) -> Iterator[None]:
        with flocked(self._space(space) / ".lock"):
            yield

    @staticmethod
    def _live(claim: dict[str, Any] | None, known: dict[str, dict[str, Any]]) -> bool:
        if not claim or not claim.get("owner"):
            return False
        owner = claim["owner"]
        held = known[owner] if owner in known else LeaseStore._read(Path(owner))
        return held is not None and all(held.get(k) == v for k, v in (claim.get("holds") or {}).items())

    def taken(self, space: str, known: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
        """Live claims of a space by key; drops dead ones. Call under ``lock(space)``.
        ``known``: lease files the caller has just read, by path (not read again)."""
        found = {}
        for p in sorted(self._space(space).glob("*.json")):
            try:
                claim = json.loads(p.read_text())
            except (OSError, ValueError):
                claim = None
            if self._live(claim, known or {}):
                found[p.stem] = claim
            else:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
        return found

    def claim(self, space: str, key: str, owner: Path, tower: str | None, holds: dict[str, Any]) -> None:
        """Claim ``key`` for ``owner`` (call under ``lock(space)``, after ``taken`` said it is free)."""
        write_atomic(self._space(space) / f"{key}.json",
                     json.dumps({"owner": str(owner), "tower": tower, "holds": holds}, sort_keys=True))

    def release(self, space: str, key: str, owner: Path) -> None:
        """Drop ``owner``'s claim of ``key`` (another owner's claim stays)."""
        path = self._space(space) / f"{key}.json"
        with self.lock(space):
            try:
                claim = json.loads(path.read_text())
            except (OSError, ValueError):
                return
            if claim.get("owner") == str(owner):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


def bridge_space(bridge: str) -> str:
    return f"bridge-{bridge}"


OVERLAY_SPACE = "overlay"


class LeaseStore:
    def __init__(self, state_dir: Path, host: HostLeases | None = None, tower_id: str | None = None):
        """``host``: the host-wide claims (default :data:`HOST_LEASES`); ``tower_id`` is
        written into every lease and claim."""
        self.host = host or HostLeases()
        self.tower_id = tower_id
        self.state_dir = Path(state_dir)
        self.box_dir = self.state_dir / "leases"
        self.overlay_dir = self.state_dir / "overlays"
        self.box_dir.mkdir(parents=True, exist_ok=True)
        self.overlay_dir.mkdir(parents=True, exist_ok=True)
        self._lock_path = self.state_dir / "leases.lock"
        self._thread_lock = threading.Lock()
        self._drop_stale_temp_files()

    def _drop_stale_temp_files(self) -> None:
        """A process killed between write and rename leaves ``<name>.tmp<pid>.<tid>``;
        remove those whose writer is gone (they never became a lease)."""
        for d in (self.box_dir, self.overlay_dir):
            for tmp in d.glob("*.tmp*"):
                pid = tmp.name.split(".tmp", 1)[1].split(".")[0]
                if not pid.isdigit() or not Path(f"/proc/{pid}").exists():
                    with contextlib.suppress(FileNotFoundError):
                        tmp.unlink()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        with self._thread_lock, flocked(self._lock_path):
            yield

    # -- files ---------------------------------------------------------
    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None

    @staticmethod
    def _write(path: Path, data: dict[str, Any]) -> None:
        write_atomic(path, json.dumps(data, indent=1, sort_keys=True))

    def box_path(self, handle: str) -> Path:
        return self.box_dir / f"{handle}.json"

    def box(self, handle: str) -> dict[str, Any] | None:
        return self._read(self.box_path(handle))

    def boxes(self) -> list[dict[str, Any]]:
        found = []
        for p in sorted(self.box_dir.glob("*.json")):
            data = self._read(p)
            if data is not None:
                found.append(data)
        return found

    def update_box(self, handle: str, **fields: Any) -> None:
        with self.lock():
            data = self.box(handle)
            if data is not None:
                data.update(fields)
                self._write(self.box_path(handle), data)

    def delete_box(self, handle: str) -> None:
        lease = self.box(handle)
        with contextlib.suppress(FileNotFoundError):
            self.box_path(handle).unlink()
        if lease and lease.get("bridge") and lease.get("address"):
            self.host.release(bridge_space(lease["bridge"]), lease["address"], self.box_path(handle))
        for tmp in self.box_dir.glob(f"{handle}.tmp*"):  # a writer killed mid-write
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def overlay_path(self, overcloud_id: str) -> Path:
        return self.overlay_dir / f"{overcloud_id}.json"

    def overlay(self, overcloud_id: str) -> dict[str, Any] | None:
        return self._read(self.overlay_path(overcloud_id))

    def overlays(self) -> list[dict[str, Any]]:
        return [d for p in sorted(self.overlay_dir.glob("*.json")) if (d := self._read(p)) is not None]

    def delete_overlay(self, overcloud_id: str) -> None:
        lease = self.overlay(overcloud_id)
        with contextlib.suppress(FileNotFoundError):
            self.overlay_path(overcloud_id).unlink()
        if lease and "index" in lease:
            self.host.release(OVERLAY_SPACE, str(lease["index"]), self.overlay_path(overcloud_id))
        for tmp in self.overlay_dir.glob(f"{overcloud_id}.tmp*"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    # -- allocation ----------------------------------------------------
    def _claim_own(self, space: str, taken: dict[str, dict[str, Any]], own: dict[str, tuple[Path, dict[str, Any]]]) -> None:
        """Claim host-wide what this state dir leased without a claim (leases made before claims
        existed, or a claim lost with ``/var/lib``). A key another owner holds is a collision
        already made: said loudly, never taken from it."""
        for key, (path, holds) in own.items():
            claim = taken.get(key)
            if claim is None:
                self.host.claim(space, key, path, self.tower_id, holds)
                taken[key] = {"owner": str(path), "holds": holds}
            elif claim.get("owner") != str(path):
                logger.error("%s holds %s of %s, which %s holds too", path, key, space, claim.get("owner"))

    def claim_boxes(self, bridge: str) -> None:
        """Claim this state dir's box addresses on ``bridge`` host-wide (at start)."""
        with self.lock(), self.host.lock(bridge_space(bridge)):
            self._claim_own(bridge_space(bridge), self.host.taken(bridge_space(bridge)),
                            self._own_addresses(bridge, self.boxes()))

    def _own_addresses(self, bridge: str, boxes: list[dict[str, Any]]) -> dict[str, tuple[Path, dict[str, Any]]]:
        return {b["address"]: (self.box_path(b["handle"]), {"handle": b["handle"], "address": b["address"]})
                for b in boxes if b.get("bridge") == bridge and b.get("address") and b.get("handle")}

    def reserve_box(self, handle: str, record: dict[str, Any], cidr: str) -> tuple[dict[str, Any], bool]:
        """The box's lease, made with the lowest free address of ``cidr``
        (``.1`` is the gateway) when there is none. Returns (lease, new).

        With ``record["bridge"]`` the address is free host-wide: not leased by any Tower on
        this host that puts boxes on the same bridge."""
        bridge = record.get("bridge")
        with self.lock():
            existing = self.box(handle)
            if existing is not None:
                if existing.get("name") != record.get("name") or existing.get("overcloud_id") != record.get(
                    "overcloud_id"
                ):
                    raise LeaseError(f"handle {handle} is leased to another box: {existing}")
                return existing, False
            net = ipaddress.ip_network(cidr)
            boxes = self.boxes()
            used = {b.get("address") for b in boxes}
            space = bridge_space(bridge) if bridge else None
            with self.host.lock(space) if space else contextlib.nullcontext():
                if space:
                    taken = self.host.taken(space, {str(self.box_path(b["handle"])): b for b in boxes if "handle" in b})
                    self._claim_own(space, taken, self._own_addresses(bridge, boxes))
                    used |= set(taken)
                hosts = list(net.hosts())[1:]  # hosts()[0] is the gateway
                for addr in hosts:
                    if str(addr) not in used:
                        break
                else:
                    raise LeaseError(f"no free address left in {cidr}" + (f" on bridge {bridge} (host-wide)" if bridge else ""))
                lease = dict(record, handle=handle, address=str(addr), prefixlen=net.prefixlen, tower=self.tower_id)
                if space:  # claimed first: no other Tower can see the claim before the lease exists (lock)
                    self.host.claim(space, str(addr), self.box_path(handle), self.tower_id,
                                    {"handle": handle, "address": str(addr)})
                self._write(self.box_path(handle), lease)
            return lease, True

    @staticmethod
    def _overlay_holds(lease: dict[str, Any]) -> dict[str, Any]:
        return {"overcloud_id": lease["overcloud_id"], "index": lease["index"], "subnet": lease.get("subnet")}

    @staticmethod
    def _claimed_subnet(claim: dict[str, Any]) -> str | None:
        """The /24 a live overlay claim holds (claims made before subnets were claimed name
        only the index: their owner's lease says)."""
        subnet = (claim.get("holds") or {}).get("subnet")
        if subnet is None and claim.get("owner"):
            subnet = (LeaseStore._read(Path(claim["owner"])) or {}).get("subnet")
        return subnet

    def reserve_overlay(self, overcloud_id: str, overlay_cidr: str, names: list[str]) -> dict[str, Any]:
        """The OverCloud's overlay lease (VNI, /24 subnet, an address per box
        name), extended with any new names. Idempotent.

        The index (the VNI) is free host-wide, and so is the subnet: no two OverClouds of any
        Towers on this host share a VNI or a /24. The two are chosen apart, so a Tower with a
        small overlay range (a /22 holds four /24s) is not starved by the VNIs other Towers
        hold in theirs."""
        with self.lock():
            lease = self.overlay(overcloud_id)
            if lease is None:
                with self.host.lock(OVERLAY_SPACE):
                    host_taken = self.host.taken(OVERLAY_SPACE)
                    self._claim_own(OVERLAY_SPACE, host_taken, {
                        str(o["index"]): (self.overlay_path(o["overcloud_id"]), self._overlay_holds(o))
                        for o in self.overlays() if "index" in o})
                    taken = {o["index"] for o in self.overlays()} | {int(k) for k in host_taken if k.isdigit()}
                    used = {o.get("subnet") for o in self.overlays()} | {
                        self._claimed_subnet(c) for c in host_taken.values()}
                    index = next(i for i in itertools.count() if i not in taken)
                    pool = ipaddress.ip_network(overlay_cidr)
                    subnets = pool.subnets(new_prefix=24) if pool.prefixlen <= 24 else iter([pool])
                    subnet = next((n for n in subnets if str(n) not in used), None)
                    if subnet is None:
                        raise LeaseError(f"no free overlay subnet left in {overlay_cidr} (host-wide)")
                    lease = {
                        "overcloud_id": overcloud_id,
                        "index": index,
                        "vni": VNI_BASE + index,
                        "subnet": str(subnet),
                        "addresses": {},
                        "tower": self.tower_id,
                    }
                    self.host.claim(OVERLAY_SPACE, str(index), self.overlay_path(overcloud_id), self.tower_id,
                                    self._overlay_holds(lease))
                    self._write(self.overlay_path(overcloud_id), lease)
            subnet = ipaddress.ip_network(lease["subnet"])
            used = set(lease["addresses"].values())
            free = (str(a) for a in subnet.hosts() if str(a) not in used)
            for name in names:
                if name not in lease["addresses"]:
                    try:
                        lease["addresses"][name] = next(free)
                    except StopIteration:
                        raise LeaseError(f"overlay {lease['subnet']} is full") from None
            self._write(self.overlay_path(overcloud_id), lease)
            return lease
