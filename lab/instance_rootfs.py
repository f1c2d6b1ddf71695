"""The namespace instances' root filesystem (lab/instance.py), and cloud-init's schema check
with the cloud-init in it. Standard library only.

``mmdebstrap --variant=minbase`` of this machine's Debian release with :data:`BASE_PACKAGES`,
the ssh hosts' packages (``hostprep.HOST_PACKAGES``, read from the checkout: one list) and the
patterns' image packages (``patterns/*/images/*/packages``), then the settings below. Built once
per machine and recipe into ``/var/cache/overcloud/instance-rootfs/<key>`` (the key hashes every
input), in a temporary directory renamed into place, under a lock; older builds that no running
instance uses are removed.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from instance_machine import PATH, InstanceError, _locked, _require_root

REPO = Path(__file__).resolve().parent.parent
CACHE = Path("/var/cache/overcloud/instance-rootfs")
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

