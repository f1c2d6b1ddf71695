"""CPU and memory limits per box, as cgroups named ``overcloud/<handle>``.

Works on cgroup v1 (``/sys/fs/cgroup/{cpu,memory}``, Debian 12 hybrid
hosts) and v2 (unified ``/sys/fs/cgroup`` with ``cgroup.controllers``).
A box's supervisord is written into ``cgroup.procs`` before it spawns
anything, so every process of the box inherits the limits.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

logger = logging.getLogger(__name__)

ROOT = Path("/sys/fs/cgroup")
PARENT = "overcloud"
CFS_PERIOD_US = 100_000
TAG_XATTR = "trusted.overcloud.tag"  # whose box a cgroup is, and which Tower made it
_MIB = 1024 * 1024


class CgroupError(Exception):
    pass


def is_v2(root: Path = ROOT) -> bool:
    """Unified hierarchy only (v1 hybrid hosts have the controllers split)."""
    return (root / "cgroup.controllers").exists()


class Cgroups:
    """Box cgroups under one root; v1 or v2 is detected once."""

    def __init__(self, root: Path = ROOT, parent: str = PARENT):
        self.root = root
        self.parent = parent
        self.v2 = is_v2(root)

    # -- paths ---------------------------------------------------------
    def _parents(self) -> list[Path]:
        if self.v2:
            return [self.root / self.parent]
        parents = [self.root / "cpu" / self.parent, self.root / "memory" / self.parent]
        # where cpuacct is its own hierarchy (not co-mounted with cpu), a box's CPU time is
        # only counted if the box is in a cpuacct group too (the Fabric reports it)
        if (self.root / "cpuacct").is_dir() and not (self.root / "cpu" / "cpuacct.usage").exists():
            parents.append(self.root / "cpuacct" / self.parent)
        return parents

    def dirs(self, handle: str) -> list[Path]:
        """Every cgroup directory of one box (one on v2, two on v1)."""
        return [p / handle for p in self._parents()]

    def procs_files(self, handle: str) -> list[Path]:
        return [d / "cgroup.procs" for d in self.dirs(handle)]

    # -- lifecycle -----------------------------------------------------
    def _ensure_parent_v2(self) -> None:
        parent = self.root / self.parent
        parent.mkdir(exist_ok=True)
        for level in (self.root, parent):
            control = (level / "cgroup.subtree_control").read_text().split()
            missing = [c for c in ("cpu", "memory") if c not in control]
            if missing:
                (level / "cgroup.subtree_control").write_text(" ".join("+" + c for c in missing))

    def create(self, handle: str, cpus: float, memory_mb: int, tag: str | None = None) -> None:
        """Make (or re-limit) the box's cgroups. Idempotent. ``tag`` (the box's
        ``overcloud:<overcloud>:<box>:<tower>``) is kept in an extended attribute of each
        directory, so the groups say who made them even when no lease does."""
        quota = max(1000, int(round(cpus * CFS_PERIOD_US)))
        memory = int(memory_mb) * _MIB
        if self.v2:
            self._ensure_parent_v2()
            d = self.root / self.parent / handle
            d.mkdir(exist_ok=True)
            for level in (d.parent, d):  # as for v1 below
                os.chmod(level, 0o755)
            self._set_tag(d, tag)
            (d / "cpu.max").write_text(f"{quota} {CFS_PERIOD_US}")
            (d / "memory.max").write_text(str(memory))
            return
        dirs = self.dirs(handle)
        cpu, mem = dirs[0], dirs[1]
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
            # 0755 whatever the Tower's umask: a Podman container in a user namespace of its
            # own (runtime.py) must reach the group Podman makes for it below this one
            for level in (d.parent, d):
                os.chmod(level, 0o755)
            self._set_tag(d, tag)
        (cpu / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
        (cpu / "cpu.cfs_quota_us").write_text(str(quota))
        (mem / "memory.limit_in_bytes").write_text(str(memory))

    @staticmethod
    def _set_tag(d: Path, tag: str | None) -> None:
        if tag is None:
            return
        try:
            os.setxattr(d, TAG_XATTR, tag.encode())
        except OSError as exc:  # a kernel without xattrs on cgroupfs: the lease still says whose it is
            logger.debug("cannot tag cgroup %s: %s", d, exc)

    def tag(self, handle: str) -> str | None:
        """The tag ``create`` gave the box's cgroups, or None (untagged, or gone)."""
        for d in self.dirs(handle):
            try:
                return os.getxattr(d, TAG_XATTR).decode()
            except OSError:
                continue
        return None

    def attach(self, handle: str, pid: int) -> None:
        for f in self.procs_files(handle):
            f.write_text(str(pid))

    def limits(self, handle: str) -> tuple[float, int]:
        """``(cpus, memory_mb)`` as the kernel reports them."""
        if self.v2:
            d = self.root / self.parent / handle
            quota, period = (d / "cpu.max").read_text().split()
            cpus = float("inf") if quota == "max" else int(quota) / int(period)
            mem_raw = (d / "memory.max").read_text().strip()
            memory_mb = -1 if mem_raw == "max" else int(mem_raw) // _MIB
            return cpus, memory_mb
        cpu, mem = self.dirs(handle)[:2]
        quota = int((cpu / "cpu.cfs_quota_us").read_text())
        period = int((cpu / "cpu.cfs_period_us").read_text())
        cpus = float("inf") if quota < 0 else quota / period
        memory_mb = int((mem / "memory.limit_in_bytes").read_text()) // _MIB
        return cpus, memory_mb

    def tree(self, handle: str) -> list[Path]:
        """Every cgroup directory of the box in every hierarchy, children before parents.

        Containers started with ``--cgroup-parent`` (the podman runtime) nest their own groups
        under the box's, and in hierarchies the box itself does not use (cpuset, pids, ...)."""
        tops = list(self.dirs(handle))
        if not self.v2 and self.root.is_dir():
            for h in self.root.iterdir():
                d = h / self.parent / handle
                if d not in tops and d.is_dir():
                    tops.append(d)
        found: list[Path] = []
        for top in tops:
            if not top.is_dir():
                continue
            subs = [Path(dirpath) for dirpath, _, _ in os.walk(top)]
            found += sorted(subs, key=lambda p: -len(p.parts))
        return found

    def pids(self, handle: str) -> list[int]:
        found: set[int] = set()
        for d in self.tree(handle) or self.dirs(handle):
            try:
                found.update(int(x) for x in (d / "cgroup.procs").read_text().split())
            except FileNotFoundError:
                pass
        return sorted(found)

    def exists(self, handle: str) -> bool:
        return any(d.exists() for d in self.dirs(handle))

    def remove(self, handle: str, timeout: float = 3.0) -> None:
        """Kill what is left in the box's cgroups (by PID) and rmdir them."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.pids(handle)
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            busy = []
            for d in self.tree(handle):
                try:
                    d.rmdir()
                except FileNotFoundError:
                    pass
                except OSError:
                    busy.append(d)
            if not busy:
                return
            if time.monotonic() > deadline:
                raise CgroupError(f"cgroup {busy[0]} still busy (pids {pids})")
            time.sleep(0.01)

    def list_handles(self) -> list[str]:
        found: set[str] = set()
        for p in self._parents():
            try:
                found.update(e.name for e in os.scandir(p) if e.is_dir())
            except FileNotFoundError:
                pass
        return sorted(found)


_default: Cgroups | None = None


def default() -> Cgroups:
    global _default
    if _default is None:
        _default = Cgroups()
    return _default


def create(handle: str, cpus: float, memory_mb: int) -> None:
    default().create(handle, cpus, memory_mb)


def attach(handle: str, pid: int) -> None:
    default().attach(handle, pid)


def limits(handle: str) -> tuple[float, int]:
    return default().limits(handle)


def remove(handle: str) -> None:
    default().remove(handle)


def list_handles() -> list[str]:
    return default().list_handles()


def own_usage(proc_cgroup: str = "/proc/self/cgroup", root: Path = ROOT) -> dict[str, float]:
    """CPU seconds and memory bytes used by the cgroup this process is in (its box), and the
    box's limits: what the Fabric's flow agent reports for ``overcloud top``."""
    paths: dict[str, str] = {}
    for line in Path(proc_cgroup).read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            paths[c] = path
    out: dict[str, float] = {}

    def read(p: Path) -> str | None:
        try:
            return p.read_text().strip()
        except OSError:
            return None

    if is_v2(root):
        d = root / paths.get("", "/").lstrip("/")
        stat = read(d / "cpu.stat") or ""
        for line in stat.splitlines():
            if line.startswith("usage_usec"):
                out["cpu_seconds"] = int(line.split()[1]) / 1e6
        if (v := read(d / "memory.current")) is not None:
            out["memory_bytes"] = float(v)
        if (v := read(d / "memory.max")) not in (None, "max"):
            out["memory_limit_bytes"] = float(v)
        if (v := read(d / "cpu.max")) and not v.startswith("max"):
            quota, period = v.split()
            out["cpu_limit_cores"] = int(quota) / int(period)
        return out
    acct = paths.get("cpuacct")
    if acct is not None:
        base = root / "cpuacct" if (root / "cpuacct").is_dir() else root / "cpu,cpuacct"
        if (v := read(base / acct.lstrip("/") / "cpuacct.usage")) is not None:
            out["cpu_seconds"] = int(v) / 1e9
    mem = paths.get("memory")
    if mem is not None:
        d = root / "memory" / mem.lstrip("/")
        if (v := read(d / "memory.usage_in_bytes")) is not None:
            out["memory_bytes"] = float(v)
        if (v := read(d / "memory.limit_in_bytes")) is not None and int(v) < 1 << 60:
            out["memory_limit_bytes"] = float(v)
    cpu = paths.get("cpu")
    if cpu is not None:
        d = root / "cpu" / cpu.lstrip("/")
        quota, period = read(d / "cpu.cfs_quota_us"), read(d / "cpu.cfs_period_us")
        if quota and period and int(quota) > 0:
            out["cpu_limit_cores"] = int(quota) / int(period)
    return out
