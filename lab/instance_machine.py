"""The machine's side of namespace instances (lab/instance.py): what every instance shares in
the root namespaces. Standard library only.

* the forward guard: nft table ``inet {NFT_TABLE}`` whose set ``bridges`` holds every bridge an
  instance was booted on; instances' packets go only between lab bridges, the root namespace
  takes only replies from them, nothing leaves the machine; the table goes with the last bridge;
* the bridges: made with the gateway address (fixed MAC, alias ``overcloud-cloudlab``) when
  missing, removed when this module made them and no port is left;
* the instances' cgroups: ``<hierarchy>/overcloud-cloudlab/<name>`` in every v1 hierarchy (and
  the hybrid layout's v2 one), the root of the instance's cgroup namespace;
* small helpers (commands, PIDs with their start times, a file lock) and :class:`InstanceError`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import subprocess
from pathlib import Path

LOCK = Path("/run/overcloud-cloudlab.lock")  # bridges and the guard: one change at a time
NFT_TABLE = "overcloud_cloudlab"
BRIDGE_ALIAS = "overcloud-cloudlab"  # marks the bridges this module made (and so may remove)
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class InstanceError(Exception):
    """Something the caller can act on; the message says what and where to look."""


# -- small helpers -------------------------------------------------------------------------------
def _run(argv: list[str], *, check: bool = True, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout,
                       env={"PATH": PATH, "LANG": "C.UTF-8"})
    if check and r.returncode != 0:
        raise InstanceError(f"{' '.join(argv)} failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-500:]}")
    return r


def _starttime(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[19]  # field 22 of stat: fields after "(comm)" start at field 3


def _alive(pid: int, start: str) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[19] == start and fields[0] != "Z"


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _has_netns(name: str) -> bool:
    return Path("/run/netns", name).exists()


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def _mac(kind: str, name: str) -> str:
    h = hashlib.sha256(f"{kind}:{name}".encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in h[:5])


def _host_veth(name: str) -> str:
    return f"{name}-h" if len(name) <= 13 else "ci" + hashlib.sha256(name.encode()).hexdigest()[:12]


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _require_root() -> None:
    if os.geteuid() != 0:
        raise InstanceError("needs root (network namespaces, bridges, mounts)")


# -- the guard and the bridges -------------------------------------------------------------------
GUARD = f"""\
table inet {NFT_TABLE} {{
    set bridges {{ type ifname; }}
    chain forward {{
        type filter hook forward priority -10; policy accept;
        iifname @bridges oifname @bridges accept
        iifname @bridges drop
        oifname @bridges drop
    }}
    chain input {{
        type filter hook input priority -10; policy accept;
        iifname @bridges ct state established,related accept
        iifname @bridges drop
    }}
}}
"""


def _guard_ensure(bridge: str) -> None:
    if _run(["nft", "list", "table", "inet", NFT_TABLE], check=False).returncode != 0:
        _run(["nft", "-f", "-"], input=GUARD)
    _run(["nft", "add", "element", "inet", NFT_TABLE, "bridges", "{", bridge, "}"])


def _guard_forget(bridge: str) -> None:
    r = _run(["nft", "-j", "list", "set", "inet", NFT_TABLE, "bridges"], check=False)
    if r.returncode != 0:
        return
    elems = _guard_elements(r.stdout)
    if bridge in elems:
        _run(["nft", "delete", "element", "inet", NFT_TABLE, "bridges", "{", bridge, "}"], check=False)
        elems.discard(bridge)
    if not elems:
        _run(["nft", "delete", "table", "inet", NFT_TABLE], check=False)


def _guard_elements(js: str) -> set[str]:
    for item in json.loads(js).get("nftables", []):
        if "set" in item:
            return {e if isinstance(e, str) else str(e) for e in item["set"].get("elem", [])}
    return set()


def _bridge_ensure(bridge: str, gateway: ipaddress.IPv4Interface) -> None:
    if not _link_exists(bridge):
        _run(["ip", "link", "add", bridge, "type", "bridge"])
        _run(["ip", "link", "set", bridge, "address", _mac("bridge", bridge), "alias", BRIDGE_ALIAS, "up"])
    r = _run(["ip", "-j", "addr", "show", "dev", bridge])
    have = {f"{a['local']}/{a['prefixlen']}" for link in json.loads(r.stdout) for a in link.get("addr_info", [])}
    if str(gateway) not in have:
        _run(["ip", "addr", "add", str(gateway), "dev", bridge])
    _run(["ip", "link", "set", bridge, "up"])


def _bridge_ports(bridge: str) -> list[str]:
    try:
        return os.listdir(f"/sys/class/net/{bridge}/brif")
    except OSError:
        return []


def _bridge_release(bridge: str) -> None:
    """Remove the bridge when this module made it and no port is left on it."""
    if not _link_exists(bridge):
        _guard_forget(bridge)
        return
    if _bridge_ports(bridge):
        return
    try:
        alias = Path(f"/sys/class/net/{bridge}/ifalias").read_text().strip()
    except OSError:
        alias = ""
    if alias == BRIDGE_ALIAS:
        _run(["ip", "link", "delete", bridge], check=False)
    _guard_forget(bridge)


# -- the instances' cgroups ----------------------------------------------------------------------
CGROUP_PARENT = "overcloud-cloudlab"


def _cgroup_mounts() -> list[tuple[str, str, str]]:
    """The machine's cgroup mounts: (mount point, fstype, super options)."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        parts = line.split()
        sep = parts.index("-")
        point, fstype, superopts = parts[4], parts[sep + 1], parts[sep + 3]
        if point == "/sys/fs/cgroup" or point.startswith("/sys/fs/cgroup/"):
            out.append((point, fstype, superopts))
    return out


def _cgroups_make(name: str) -> tuple[list[str], str]:
    """The instance's own cgroup in every v1 hierarchy (and the hybrid layout's v2 one):
    ``<hierarchy>/overcloud-cloudlab/<name>``; returns the cgroup.procs files its init is put in
    and the lines init.sh mounts /sys/fs/cgroup from. A machine with cgroup v2 alone: no own
    cgroup (v2 would need controllers delegated to a cgroup with no process of its own); the
    machine's hierarchy is bound as it is, as on the ssh lab's hosts."""
    mounts = _cgroup_mounts()
    if any(p == "/sys/fs/cgroup" and t == "cgroup2" for p, t, _ in mounts) or not mounts:
        return [], "B /sys/fs/cgroup - -"
    procs, lines = [], []
    for point, fstype, superopts in mounts:
        if point == "/sys/fs/cgroup":
            lines.append("T /sys/fs/cgroup - -")
            continue
        if fstype not in ("cgroup", "cgroup2"):
            continue
        opts = superopts
        if fstype == "cgroup" and re.search(r"(^|,)name=", opts) and "none" not in opts.split(","):
            opts = "none," + opts
        lines.append(f"M {point} {fstype} {opts}")
        d = Path(point)
        for sub in (d / CGROUP_PARENT, d / CGROUP_PARENT / name):
            sub.mkdir(exist_ok=True)
            for knob in ("cpuset.cpus", "cpuset.mems"):  # a cpuset cgroup takes no process while they are empty
                f = sub / knob
                if f.exists() and not f.read_text().strip():
                    f.write_text((sub.parent / knob).read_text())
        procs.append(str(d / CGROUP_PARENT / name / "cgroup.procs"))
    for entry in Path("/sys/fs/cgroup").iterdir():  # cpu -> cpu,cpuacct and the like
        if entry.is_symlink():
            lines.append(f"L {entry} {os.readlink(entry)} -")
    return procs, "\n".join(lines)


def _cgroups_remove(name: str) -> None:
    """The instance's cgroups and everything made under them (its processes are gone)."""
    for point, fstype, _ in _cgroup_mounts():
        top = Path(point) / CGROUP_PARENT / name
        if fstype not in ("cgroup", "cgroup2") or not top.is_dir():
            continue
        for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)
        with contextlib.suppress(OSError):
            os.rmdir(top.parent)  # the last instance's

