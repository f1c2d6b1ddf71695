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
import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the machine's side (guard, bridges, cgroups) and the rootfs: their names are this module's too
from instance_machine import (  # noqa: E402,F401
    CGROUP_PARENT, LOCK, NFT_TABLE, PATH, InstanceError, _alive, _bridge_ensure, _bridge_release,
    _cgroups_make, _cgroups_remove, _children, _guard_elements, _guard_ensure, _has_netns, _host_veth,
    _link_exists, _locked, _mac, _require_root, _run, _starttime,
)
from instance_rootfs import (  # noqa: E402,F401
    BASE_PACKAGES, CACHE, CLOUD_CFG, DISABLED_MODULES, codename, packages, rootfs, rootfs_key, schema_check,
)

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,14}$")


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
