"""Look at the kernel directly (not through our driver) for what an OverCloud left behind."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from pathlib import Path


def leftovers(overcloud_id: str, state_dir: Path | None = None) -> list[str]:
    prefix = f"oc-{overcloud_id[:8]}-"
    left: list[str] = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    left += [f"netns {n}" for n in netns if n.startswith(prefix)]
    links = subprocess.run(["ip", "-d", "-o", "link", "show"], capture_output=True, text=True).stdout
    left += [f"link {line.split(':')[1].strip()}" for line in links.splitlines() if overcloud_id in line]
    # every hierarchy: podman nests containers' groups under a box's, in cpuset, pids, ... too
    left += [f"cgroup {p}" for p in glob.glob(f"/sys/fs/cgroup/*/overcloud/{prefix}*") + glob.glob(f"/sys/fs/cgroup/overcloud/{prefix}*")]
    if shutil.which("podman"):
        ps = subprocess.run(["podman", "ps", "-a", "--filter", f"label=overcloud.io/overcloud={overcloud_id}",
                             "--format", "{{.Names}}"], capture_output=True, text=True).stdout
        left += [f"container {n}" for n in ps.split()]
    left += [f"/etc/netns/{p}" for p in os.listdir("/etc/netns")] if os.path.isdir("/etc/netns") else []
    left = [x for x in left if not x.startswith("/etc/netns/") or prefix in x]
    left += [f"socket {p}" for p in glob.glob(f"/run/overcloud/{prefix}*")]
    # bridge pins (table bridge overcloud_pin_*): a port's map element carries the box's tag
    bridge_rules = subprocess.run(["nft", "list", "ruleset", "bridge"], capture_output=True, text=True).stdout
    # by element, not by line: nft prints a map's first element on the `elements = {` line
    pins = re.findall(r'"([^"]+)"\s+comment\s+"(overcloud:' + overcloud_id + r':[^"]*)"', bridge_rules)
    left += [f"bridge pin {port} {tag}"[:120] for port, tag in pins]
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if prefix in cmd:
            left.append(f"process {pid}: {cmd[:80]}")
    if state_dir is not None:
        left += [f"box dir {p}" for p in glob.glob(str(state_dir / "local" / "boxes" / f"{prefix}*"))]
        left += [f"lease {p}" for p in glob.glob(str(state_dir / "local" / "leases" / f"*{overcloud_id[:8]}*"))]
    return left


def in_netns(handle: str, argv: list[str], timeout: float = 5) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", handle, *argv], capture_output=True, text=True, timeout=timeout)
