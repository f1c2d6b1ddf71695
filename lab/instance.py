#!/usr/bin/env python3
"""Namespace instances: what the cloud labs (OpenStack, AWS) boot a "server" as.

Standard library only, Python >= 3.11, run as root (Debian's /usr/bin/python3 is enough).
docs/underclouds.md, "Namespace instances", describes it. The commands:

    python3 lab/instance.py rootfs                     # build once (mmdebstrap), print the cached path
    python3 lab/instance.py boot --name N --state-dir D --bridge BR --gateway 10.90.3.1/24 \\
            --address 10.90.3.5/24 --user-data F [--meta-data F] [--hostname H] [--timeout S]
        # prints {"name", "pid", "address", ...} as JSON once cloud-init ran and sshd listens
        # on ADDRESS:22, or exits 1 with why
    python3 lab/instance.py kill --name N --state-dir D  # idempotent; the bridge goes when no instance is left on it
    python3 lab/instance.py list --state-dir D           # JSON list
    python3 lab/instance.py schema FILE                  # the rootfs's `cloud-init schema`; exit 1 with the problems

and the same as functions: :func:`rootfs`, :func:`boot`, :func:`kill`, :func:`list_instances`,
:func:`schema_check`.

An instance N is:
  * a network namespace N (``ip netns``), ``eth0`` a veth whose other end is on the bridge BR of
    the root namespace (made with the gateway address when missing), the address and a default
    route via the gateway;
  * its own mount, UTS and PID namespaces (``nsenter --net`` + ``unshare --mount --uts --pid
    --fork --propagation private``): nothing is mounted in the root mount namespace. Its PID 1
    mounts an overlayfs (lower: the cached rootfs, upper/work: D/N/disk) and /proc, /sys (with
    the machine's cgroup hierarchies), a small /dev (null, zero, full, random, urandom, tty,
    net/tun, its own devpts), /run and /tmp (tmpfs), then ``pivot_root``s into it (not chroot:
    a chrooted process may not make user namespaces, and bwrap needs them), runs cloud-init's
    stages from the NoCloud seed (D/N's user-data and meta-data, instance-id = N) and starts
    sshd; it stays as the reaper. Killing it ends the instance's PID namespace, and so every
    process of the instance, and its mount namespace with every mount.
  * recorded in D/N/pids as "role pid starttime" (killed by those PIDs only, after checking the
    start time, as scripts/hosts-lab.sh does).

A forward guard in the root namespace (nft table ``inet overcloud_cloudlab``, its set ``bridges``
holds every bridge an instance was booted on): instances' packets go only between lab bridges
(other instances, any lab), and the root namespace accepts from them only replies (to the
Tower's connections); nothing leaves the machine. The table goes with the last bridge.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path("/var/cache/overcloud/instance-rootfs")
LOCK = Path("/run/overcloud-cloudlab.lock")  # bridges and the guard: one change at a time
NFT_TABLE = "overcloud_cloudlab"
BRIDGE_ALIAS = "overcloud-cloudlab"  # marks the bridges this module made (and so may remove)
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,14}$")
#: Bumped when the way the rootfs is made changes (its key changes with it).
RECIPE = 2

#: Packages of every instance, besides the ssh hosts' list (hostprep.HOST_PACKAGES, read from
#: the checkout) and the patterns' image packages (patterns/*/images/*/packages).
BASE_PACKAGES = {
    "cloud-init": "runs the server's user data from the NoCloud seed",
    "openssh-server": "the Tower's way in",
    "sudo": "the cloud's user is not root: the Tower runs commands with sudo -n",
    "iproute2": "ip: interfaces, namespaces",
    "mount": "mount/umount (the process runtime, pivot_root's old root)",
    "netbase": "/etc/protocols, /etc/services, as on any cloud image",
    "iputils-ping": "ping, to look at an instance",
    "mosquitto-clients": "mosquitto_pub/_sub: inject a smart-energy fault in a box, as on the Tower's machine",
    "wireguard-go": "this kernel has no WireGuard: the hosts' underlay runs in userspace",
}

#: cloud-init settings of the image (/etc/cloud/cloud.cfg.d/90_overcloud_lab.cfg).
CLOUD_CFG = """\
# lab/instance.py: a namespace instance (docs/underclouds.md, "Namespace instances")
datasource_list: [NoCloud, None]
# the lab sets eth0's address and route itself before cloud-init runs
network: {config: disabled}
"""
#: Modules of Debian's cloud.cfg that are not run: locale (60 s, then fails: FACTS.md), and
#: those that act on disks, boot loaders or package mirrors an instance does not have.
DISABLED_MODULES = ("locale", "growpart", "resizefs", "grub-dpkg", "apt-configure", "apt-pipelining",
                    "ntp", "timezone", "byobu", "fan", "landscape", "lxd", "ubuntu-advantage",
                    "ubuntu-drivers", "snap", "rh_subscription", "spacewalk", "puppet", "chef",
                    "mcollective", "salt-minion", "reset_rmc", "power-state-change", "keyboard",
                    "disk_setup", "mounts", "seed_random", "rsyslog", "emit_upstart")
#: /usr/local/sbin/service (first on PATH): there is no init system; the instance's init starts
#: sshd once cloud-init is done, so a restart asked by a module (set-passwords) has nothing to do.
SERVICE_SHIM = """\
#!/bin/sh
# lab/instance.py: no init system here; sshd is started by the instance's init after cloud-init
case "$1" in ssh|sshd) exit 0 ;; esac
exec /usr/sbin/service "$@"
"""
SSHD_CFG = """\
# lab/instance.py: parallel bursts from the Tower (as scripts/hosts-lab.sh's hosts)
MaxStartups 200:30:400
MaxSessions 100
"""


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


# -- the rootfs ----------------------------------------------------------------------------------
def codename() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip().strip('"')
    raise InstanceError("cannot tell the Debian release from /etc/os-release")


def _host_packages() -> dict[str, str]:
    """hostprep.HOST_PACKAGES, read from the checkout's source (this module imports nothing of ours)."""
    src = REPO / "src/overcloud/underclouds/ssh/hostprep.py"
    try:
        tree = ast.parse(src.read_text())
    except OSError as exc:
        raise InstanceError(f"cannot read the ssh hosts' package list from {src}: {exc}") from None
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "HOST_PACKAGES":
            return ast.literal_eval(node.value)
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "HOST_PACKAGES" for t in node.targets):
            return ast.literal_eval(node.value)
    raise InstanceError(f"no HOST_PACKAGES in {src}")


def _pattern_packages() -> list[str]:
    names: set[str] = set()
    for f in sorted((REPO / "patterns").glob("*/images/*/packages")):
        for line in f.read_text().splitlines():
            names.update(line.split("#", 1)[0].split())
    return sorted(names)


def packages() -> list[str]:
    """Every Debian package the rootfs is made with."""
    return sorted({*BASE_PACKAGES, *_host_packages(), *_pattern_packages()})


def rootfs_key() -> str:
    recipe = {"recipe": RECIPE, "codename": codename(), "packages": packages(), "cloud_cfg": CLOUD_CFG,
              "disabled": DISABLED_MODULES, "sshd": SSHD_CFG, "service": SERVICE_SHIM}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def _customize(root: Path) -> None:
    (root / "etc/cloud/cloud.cfg.d/90_overcloud_lab.cfg").write_text(CLOUD_CFG)
    cfg = root / "etc/cloud/cloud.cfg"
    kept = [line for line in cfg.read_text().splitlines()
            if not re.fullmatch(r"\s*-\s*\[?\s*(%s)\b.*" % "|".join(map(re.escape, DISABLED_MODULES)), line)]
    cfg.write_text("\n".join(kept) + "\n")
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()  # every instance gets its own (user data's ssh_keys, or cloud-init makes them)
    (root / "etc/ssh/sshd_config.d").mkdir(exist_ok=True)
    (root / "etc/ssh/sshd_config.d/90-overcloud-lab.conf").write_text(SSHD_CFG)
    shim = root / "usr/local/sbin/service"
    shim.write_text(SERVICE_SHIM)
    shim.chmod(0o755)
    (root / "etc/hostname").write_text("localhost\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n")
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    (root / "etc/resolv.conf").write_text("options timeout:1 attempts:1\n")  # no nameserver: lookups fail fast


def rootfs(progress=None) -> Path:
    """The cached rootfs (built once per machine and recipe, atomically: in a temp dir, renamed)."""
    _require_root()
    key = rootfs_key()
    path = CACHE / key
    if (path / ".complete").exists():
        return path
    if shutil.which("mmdebstrap") is None:
        raise InstanceError("mmdebstrap is not installed (apt-get install mmdebstrap; `make install` does)")
    CACHE.mkdir(parents=True, exist_ok=True)
    with _locked(CACHE / ".lock"):
        if (path / ".complete").exists():  # another process built it while this one waited
            return path
        tmp = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=CACHE))
        try:
            pkgs = packages()
            if progress:
                progress(f"instance rootfs {key}: mmdebstrap {codename()} with {len(pkgs)} packages (~2 min)")
            log = CACHE / f"{key}.build.log"
            with open(log, "w") as out:
                r = subprocess.run(
                    ["mmdebstrap", "--variant=minbase", "--mode=root", f"--include={','.join(pkgs)}",
                     "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/doc/*",
                     "--dpkgopt=path-include=/usr/share/doc/*/copyright",
                     '--customize-hook=rm -f "$1"/var/cache/apt/*.bin',
                     codename(), str(tmp)],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env={"PATH": PATH, "LANG": "C.UTF-8"},
                )
            if r.returncode != 0:
                tail = log.read_text()[-1500:]
                raise InstanceError(f"mmdebstrap failed ({r.returncode}; {log}): {tail}")
            _customize(tmp)
            (tmp / ".complete").write_text(json.dumps({"packages": pkgs, "built": time.time()}) + "\n")
            tmp.chmod(0o755)
            tmp.rename(path)
            _remove_unused(path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return path


def _remove_unused(keep: Path) -> None:
    """Older builds no instance runs on (no process's mount table names them) are removed."""
    used = set()
    for mi in Path("/proc").glob("[0-9]*/mountinfo"):
        with contextlib.suppress(OSError):
            used.update(m for m in re.findall(r"lowerdir=([^,\s]+)", mi.read_text()))
    for old in CACHE.iterdir():
        if old != keep and old.is_dir() and not old.name.startswith(".") and str(old) not in used:
            shutil.rmtree(old, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                (CACHE / f"{old.name}.build.log").unlink()


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


# -- an instance ---------------------------------------------------------------------------------
INIT_SH = r"""
set -eu
lower=$1 disk=$2 root=$3 host=$4 cgroups=$5
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$disk/upper,workdir=$disk/work" "$root"
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
# the machine's cgroup hierarchies, mounted afresh in the instance's cgroup namespace: their root
# is the instance's own cgroup (what it makes there is under overcloud-cloudlab/<name> outside)
printf '%s\n' "$cgroups" | while read -r kind path fstype opts; do
    case $kind in
        T) mount -t tmpfs -o mode=755 cgroup_root "$root$path" ;;
        M) mkdir -p "$root$path"; mount -t "$fstype" -o "$opts" "$fstype" "$root$path" ;;
        L) ln -s "$fstype" "$root$path" ;;
        B) mount --rbind "$path" "$root$path" ;;
    esac
done
mount -t tmpfs -o mode=755,size=4m tmpfs "$root/dev"
for d in null zero full random urandom tty; do touch "$root/dev/$d"; mount --bind "/dev/$d" "$root/dev/$d"; done
mkdir -p "$root/dev/net" "$root/dev/pts" "$root/dev/shm"
touch "$root/dev/net/tun"; mount --bind /dev/net/tun "$root/dev/net/tun"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
mount -t tmpfs -o mode=1777 tmpfs "$root/dev/shm"
ln -s /proc/self/fd "$root/dev/fd"; ln -s /proc/self/fd/0 "$root/dev/stdin"
ln -s /proc/self/fd/1 "$root/dev/stdout"; ln -s /proc/self/fd/2 "$root/dev/stderr"
mount -t tmpfs -o mode=755 tmpfs "$root/run"
mkdir -p "$root/run/sshd" "$root/run/netns" "$root/run/lock"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
cp "$disk/../init.py" "$root/run/overcloud-lab-init.py"
hostname "$host"
cd "$root"
pivot_root . .
umount -l .
cd /
exec /usr/bin/python3 -I /run/overcloud-lab-init.py
"""

INIT_PY = r"""
import os, signal, subprocess, sys, time
env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
os.chdir("/")
t0 = time.monotonic()
print("init: cloud-init stages", flush=True)
stages = "cloud-init init --local; cloud-init init; cloud-init modules --mode=config; cloud-init modules --mode=final"
rc = subprocess.run(["sh", "-c", stages], env=env, stdin=subprocess.DEVNULL).returncode
print(f"init: cloud-init done in {time.monotonic() - t0:.1f} s (last stage exit {rc})", flush=True)
sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e"], env=env, stdin=subprocess.DEVNULL)
print(f"init: sshd {sshd.pid}", flush=True)
signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
while True:
    try:
        pid, status = os.wait()
        if pid == sshd.pid:
            print(f"init: sshd exited ({status})", flush=True)
    except ChildProcessError:
        time.sleep(0.5)
"""


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


def _dir(state_dir: str | Path, name: str) -> Path:
    return Path(state_dir).resolve() / name


def _read_pids(idir: Path) -> list[tuple[str, int, str]]:
    out = []
    try:
        for line in (idir / "pids").read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:
                out.append((parts[0], int(parts[1]), parts[2]))
    except OSError:
        pass
    return out


def _record(idir: Path, role: str, pid: int) -> None:
    start = _starttime(pid)
    with open(idir / "pids", "a") as f:
        f.write(f"{role} {pid} {start}\n")


def _init_pid(idir: Path) -> int | None:
    for role, pid, start in _read_pids(idir):
        if role == "init" and _alive(pid, start):
            return pid
    return None


def _check_name(name: str) -> None:
    if not NAME_RE.fullmatch(name):
        raise InstanceError(f"instance name {name!r}: 1-15 of a-z 0-9 - (it is a netns name), e.g. awi-1a2b3c4d")


def _halt(name: str, idir: Path) -> None:
    """Processes (recorded PIDs only), the network namespace and its veth; the disk stays."""
    recs = _read_pids(idir)
    order = {"init": 0, "unshare": 1}
    for role, pid, start in sorted(recs, key=lambda r: order.get(r[0], 2)):
        if _alive(pid, start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(_alive(p, s) for _, p, s in recs) and time.monotonic() < deadline:
        time.sleep(0.02)
    left = [p for _, p, s in recs if _alive(p, s)]
    if left:
        raise InstanceError(f"instance {name}: processes {left} did not end after SIGKILL")
    with contextlib.suppress(FileNotFoundError):
        (idir / "pids").unlink()
    if _has_netns(name):
        _run(["ip", "netns", "delete", name], check=False)
    veth = _host_veth(name)
    if _link_exists(veth):
        _run(["ip", "link", "delete", veth], check=False)
    deadline = time.monotonic() + 5
    while (_link_exists(veth) or _has_netns(name)) and time.monotonic() < deadline:
        time.sleep(0.02)
    _cgroups_remove(name)
    # nothing of an instance is mounted in this namespace by design; remove anything that is
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for m in sorted((m for m in mounts if m == str(idir) or m.startswith(f"{idir}/")), reverse=True):
        _run(["umount", "-l", m], check=False)


def boot(name: str, state_dir: str | Path, bridge: str, gateway: str, address: str, user_data: str,
         meta_data: str | None = None, hostname: str | None = None, timeout: float = 120,
         progress=None) -> dict:
    """Boot instance ``name`` (see the module's docstring); ``user_data`` and ``meta_data`` are
    the seed's texts. Returns {"name", "pid", "address", "bridge", "boot_s", "cloud_init_errors"}
    once sshd listens on the address's port 22. An instance of that name that runs already is
    refused; one whose processes are gone (a crash) is booted again on its disk."""
    _require_root()
    _check_name(name)
    if not NAME_RE.fullmatch(bridge):
        raise InstanceError(f"bridge name {bridge!r}: 1-15 of a-z 0-9 -")
    gw = ipaddress.IPv4Interface(gateway)
    addr = ipaddress.IPv4Interface(address)
    if addr.network != gw.network or addr.ip == gw.ip:
        raise InstanceError(f"address {address} must be in the gateway's network {gw.network}, not the gateway")
    hostname = hostname or name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]{0,62}", hostname):
        raise InstanceError(f"hostname {hostname!r}: letters, digits, . and -")
    lower = rootfs(progress)
    t0 = time.monotonic()
    idir = _dir(state_dir, name)
    if _init_pid(idir):
        raise InstanceError(f"instance {name} runs already (pid {_init_pid(idir)}); kill it first")
    if (idir / "info.json").exists():
        _halt(name, idir)  # what a crashed earlier boot of this instance left
    if _has_netns(name):
        raise InstanceError(f"network namespace {name} exists and is not this instance's: remove it first")
    disk = idir / "disk"
    for d in (idir, disk, disk / "upper", disk / "work", idir / "root"):
        d.mkdir(parents=True, exist_ok=True)
    idir.chmod(0o700)
    seed = disk / "upper/var/lib/cloud/seed/nocloud"
    seed.mkdir(parents=True, exist_ok=True)
    meta = meta_data if meta_data is not None else ""
    if not re.search(r"(?m)^instance-id:", meta):
        meta = f"instance-id: {name}\n" + meta
    if not re.search(r"(?m)^local-hostname:", meta):
        meta += f"\nlocal-hostname: {hostname}\n"
    for fname, text in (("user-data", user_data), ("meta-data", meta)):
        p = seed / fname
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    hosts = disk / "upper/etc/hosts"
    if not hosts.exists():
        hosts.parent.mkdir(parents=True, exist_ok=True)
        hosts.write_text(f"127.0.0.1 localhost\n127.0.1.1 {hostname}\n::1 localhost ip6-localhost ip6-loopback\n")
    (idir / "init.sh").write_text(INIT_SH)
    (idir / "init.py").write_text(INIT_PY)
    (idir / "info.json").write_text(json.dumps({"name": name, "bridge": bridge, "gateway": str(gw),
                                                "address": str(addr), "hostname": hostname,
                                                "rootfs": str(lower)}) + "\n")
    veth = _host_veth(name)
    try:
        with _locked(LOCK):
            _run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])  # as the hosts lab: set, never reset
            _bridge_ensure(bridge, gw)
            _guard_ensure(bridge)
            _run(["ip", "netns", "add", name])
            _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name])
            _run(["ip", "link", "set", veth, "master", bridge, "up"])
        _run(["ip", "-n", name, "link", "set", "lo", "up"])
        _run(["ip", "-n", name, "link", "set", "eth0", "address", _mac("instance", name), "up"])
        _run(["ip", "-n", name, "addr", "add", str(addr), "dev", "eth0"])
        _run(["ip", "-n", name, "route", "add", "default", "via", str(gw.ip)])
        console = open(idir / "console.log", "a")
        console.write(f"--- boot {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {name} {addr}\n")
        console.flush()
        procs, mounts = _cgroups_make(name)
        p = subprocess.Popen(
            ["sh", "-c", 'while [ "$1" != -- ]; do echo $$ >"$1"; shift; done; shift; exec "$@"', "cgroups",
             *procs, "--",
             "nsenter", f"--net=/run/netns/{name}", "--", "unshare", "--mount", "--uts", "--pid", "--fork",
             *(["--cgroup"] if procs else []),
             "--propagation", "private", "sh", "-c", INIT_SH, "init", str(lower), str(disk), str(idir / "root"),
             hostname, mounts],
            stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, start_new_session=True,
            env={"PATH": PATH, "LANG": "C.UTF-8"},
        )
        console.close()
        _record(idir, "unshare", p.pid)
        init = None
        deadline = time.monotonic() + 10
        while init is None and time.monotonic() < deadline:
            kids = _children(p.pid)
            if kids:
                init = kids[0]
            elif p.poll() is not None:
                break
            else:
                time.sleep(0.01)
        if init is None:
            raise InstanceError(f"instance {name}: its init did not start: {_tail(idir)}")
        _record(idir, "init", init)
        deadline = time.monotonic() + timeout
        while True:
            if p.poll() is not None or not _init_pid(idir):
                raise InstanceError(f"instance {name}: its init ended: {_tail(idir)}")
            with contextlib.suppress(OSError), socket.create_connection((str(addr.ip), 22), timeout=0.5):
                break
            if time.monotonic() > deadline:
                raise InstanceError(f"instance {name}: sshd not listening on {addr.ip}:22 after {timeout:.0f} s: {_tail(idir)}")
            time.sleep(0.1)
    except BaseException:
        with contextlib.suppress(Exception):
            _halt(name, idir)
            with _locked(LOCK):
                _bridge_release(bridge)
        raise
    return {"name": name, "pid": init, "address": str(addr.ip), "bridge": bridge,
            "boot_s": round(time.monotonic() - t0, 2), "cloud_init_errors": _cloud_init_errors(init)}


def _tail(idir: Path, n: int = 1500) -> str:
    parts = []
    for f in (idir / "console.log", idir / "disk/upper/var/log/cloud-init-output.log"):
        with contextlib.suppress(OSError):
            parts.append(f"{f}: ...{f.read_text(errors='replace')[-n:]}")
    return "\n".join(parts) or "(no log)"


def _cloud_init_errors(init: int) -> list[str]:
    try:
        result = json.loads(Path(f"/proc/{init}/root/run/cloud-init/result.json").read_text())
    except (OSError, ValueError):
        return ["no /run/cloud-init/result.json on the instance"]
    return [str(e) for e in (result.get("v1") or {}).get("errors", [])]


def kill(name: str, state_dir: str | Path) -> None:
    """Kill instance ``name`` (idempotent): its processes, netns and veth, its disk and seed (its
    console.log stays), and its bridge when no instance is left on it."""
    _require_root()
    _check_name(name)
    idir = _dir(state_dir, name)
    bridge = None
    with contextlib.suppress(OSError, ValueError):
        bridge = json.loads((idir / "info.json").read_text())["bridge"]
    if not (idir / "info.json").exists():
        return  # never booted here, or killed already (a netns of that name is someone else's)
    _halt(name, idir)
    for sub in ("disk", "root"):
        shutil.rmtree(idir / sub, ignore_errors=True)
    for f in ("info.json", "init.sh", "init.py"):
        with contextlib.suppress(FileNotFoundError):
            (idir / f).unlink()
    if bridge:
        with _locked(LOCK):
            _bridge_release(bridge)


def list_instances(state_dir: str | Path) -> list[dict]:
    out = []
    d = Path(state_dir).resolve()
    if not d.is_dir():
        return out
    for info in sorted(d.glob("*/info.json")):
        with contextlib.suppress(OSError, ValueError):
            rec = json.loads(info.read_text())
            pid = _init_pid(info.parent)
            rec.update(pid=pid, running=pid is not None)
            out.append(rec)
    return out


# -- cloud-init schema -------------------------------------------------------------------------
SCHEMA_SH = r"""
set -eu
root=$1
mount -t tmpfs -o mode=755 tmpfs "$root/tmp"
mount -t tmpfs -o mode=755 tmpfs "$root/run"
mount -t tmpfs -o mode=755 tmpfs "$root/dev"
touch "$root/dev/null"; mount --bind /dev/null "$root/dev/null"
cat >"$root/tmp/user-data"
exec chroot "$root" /usr/bin/cloud-init schema --config-file /tmp/user-data
"""


def schema_check(text: str) -> list[str]:
    """The problems `cloud-init schema` (the rootfs's cloud-init, through chroot, in a mount
    namespace of its own: the cached rootfs is not touched) finds in user data ``text``; [] = valid."""
    root = rootfs()
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", SCHEMA_SH, "schema", str(root)],
                       input=text, capture_output=True, text=True, timeout=60, env={"PATH": PATH, "LANG": "C.UTF-8"})
    if r.returncode == 0:
        return []
    lines = [line.strip() for line in (r.stdout + "\n" + r.stderr).splitlines()]
    # 22.4 prints empty headings ("Cloud config schema deprecations:", "Error:") around the problems
    lines = [line.removeprefix("Cloud config schema errors: ") for line in lines
             if line and line != "Error:" and not line.endswith("deprecations:")]
    return lines or [f"cloud-init schema failed ({r.returncode})"]


# -- CLI -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lab/instance.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("rootfs", help="build the rootfs once; print its path")
    b = sub.add_parser("boot", help="boot an instance; print JSON once sshd listens")
    b.add_argument("--name", required=True)
    b.add_argument("--state-dir", required=True)
    b.add_argument("--bridge", required=True)
    b.add_argument("--gateway", required=True, help="the bridge's address, e.g. 10.90.3.1/24")
    b.add_argument("--address", required=True, help="the instance's, e.g. 10.90.3.5/24")
    b.add_argument("--user-data", required=True, help="a file")
    b.add_argument("--meta-data", help="a file (instance-id = name when it has none)")
    b.add_argument("--hostname")
    b.add_argument("--timeout", type=float, default=120)
    k = sub.add_parser("kill", help="kill an instance (idempotent)")
    k.add_argument("--name", required=True)
    k.add_argument("--state-dir", required=True)
    li = sub.add_parser("list", help="the instances of a state dir, as JSON")
    li.add_argument("--state-dir", required=True)
    s = sub.add_parser("schema", help="check user data with the rootfs's cloud-init schema")
    s.add_argument("file")
    a = ap.parse_args(argv)
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    try:
        if a.cmd == "rootfs":
            print(rootfs(say))
        elif a.cmd == "boot":
            ud = Path(a.user_data).read_text()
            md = Path(a.meta_data).read_text() if a.meta_data else None
            print(json.dumps(boot(a.name, a.state_dir, a.bridge, a.gateway, a.address, ud, md, a.hostname,
                                  a.timeout, say)))
        elif a.cmd == "kill":
            kill(a.name, a.state_dir)
        elif a.cmd == "list":
            print(json.dumps(list_instances(a.state_dir), indent=1))
        elif a.cmd == "schema":
            problems = schema_check(Path(a.file).read_text())
            for p in problems:
                print(p)
            return 1 if problems else 0
    except (InstanceError, OSError, ValueError) as exc:
        print(f"instance: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
