"""Address and overlay leases of the local UnderCloud, as JSON files.

``<state_dir>/leases/<handle>.json`` reserves a box's site address and
names its OverCloud; ``<state_dir>/overlays/<overcloud id>.json`` reserves
an overlay's VNI, subnet and per-box addresses. A lease is written
*before* anything is made in the kernel, so a box left half-made by a
crash is still found by its lease. Allocation scans the lease files under
a lock that holds across threads and processes (``fcntl.flock``).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from overcloud.files import write_atomic

VNI_BASE = 4096


class LeaseError(Exception):
    pass


class LeaseStore:
    def __init__(self, state_dir: Path):
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
        with self._thread_lock, open(self._lock_path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

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
        with contextlib.suppress(FileNotFoundError):
            self.box_path(handle).unlink()
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
        with contextlib.suppress(FileNotFoundError):
            self.overlay_path(overcloud_id).unlink()
        for tmp in self.overlay_dir.glob(f"{overcloud_id}.tmp*"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    # -- allocation ----------------------------------------------------
    def reserve_box(self, handle: str, record: dict[str, Any], cidr: str) -> tuple[dict[str, Any], bool]:
        """The box's lease, made with the lowest free address of ``cidr``
        (``.1`` is the gateway) when there is none. Returns (lease, new)."""
        with self.lock():
            existing = self.box(handle)
            if existing is not None:
                if existing.get("name") != record.get("name") or existing.get("overcloud_id") != record.get(
                    "overcloud_id"
                ):
                    raise LeaseError(f"handle {handle} is leased to another box: {existing}")
                return existing, False
            net = ipaddress.ip_network(cidr)
            used = {b.get("address") for b in self.boxes()}
            hosts = list(net.hosts())[1:]  # hosts()[0] is the gateway
            for addr in hosts:
                if str(addr) not in used:
                    break
            else:
                raise LeaseError(f"no free address left in {cidr}")
            lease = dict(record, handle=handle, address=str(addr), prefixlen=net.prefixlen)
            self._write(self.box_path(handle), lease)
            return lease, True

    def reserve_overlay(self, overcloud_id: str, overlay_cidr: str, names: list[str]) -> dict[str, Any]:
        """The OverCloud's overlay lease (VNI, /24 subnet, an address per box
        name), extended with any new names. Idempotent."""
        with self.lock():
            lease = self.overlay(overcloud_id)
            if lease is None:
                pool = ipaddress.ip_network(overlay_cidr)
                taken = {o["index"] for o in self.overlays()}
                subnets = list(pool.subnets(new_prefix=24)) if pool.prefixlen <= 24 else [pool]
                for index, subnet in enumerate(subnets):
                    if index not in taken:
                        break
                else:
                    raise LeaseError(f"no free overlay subnet left in {overlay_cidr}")
                lease = {
                    "overcloud_id": overcloud_id,
                    "index": index,
                    "vni": VNI_BASE + index,
                    "subnet": str(subnet),
                    "addresses": {},
                }
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
