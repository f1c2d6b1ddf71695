"""Preparing a host: check that it can carry boxes, then install the host bundle on it.

Transport-agnostic: everything goes through ``run(argv, input=None)``, a callable that runs a
command on the host as root and returns an object with ``returncode``, ``stdout`` and
``stderr`` (bytes or str), as ``subprocess.run(..., capture_output=True)`` does. The ssh
driver passes its SSH transport's ``run``; the tests pass a local runner.

* :func:`check_host` refuses a host that is not Debian 12 or later, has no ``python3`` of at
  least 3.11, or lacks any of the Debian packages in :data:`HOST_PACKAGES`. The refusal lists
  everything that is missing at once, with the ``apt-get install`` line that fixes it: Debian
  packages come from the host's own apt, as on any cloud image; we never install them.
* :func:`install_bundle` puts the bundle at ``<root>/bundle-<sha>.pyz``, checks its SHA-256
  on the host, unpacks it into ``<root>/bundle-<sha>/`` and removes bundles no Tower on the
  host uses any more. A second call with the same bundle transfers nothing (one round trip).
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Where bundles and the Towers' state dirs live on a host.
HOST_ROOT = "/var/lib/overcloud/host"
HOST_PYTHON = "/usr/bin/python3"
MIN_PYTHON = (3, 11)
MIN_DEBIAN = 12

#: The Debian packages a host must have, and why. One list: the refusal names what is missing
#: from it, docs/remote-hosts.md shows it. (supervisor and pyroute2 are not here: they come in
#: the bundle. podman is not here: a host without it runs workloads under the process runtime.)
HOST_PACKAGES: dict[str, str] = {
    "python3": "runs the host bundle (the agent, box supervisord, box programs)",
    "iproute2": "ip netns / link / vxlan and bridge fdb: the boxes' namespaces, veths, bridge and overlay",
    "nftables": "nft: each box's input firewall, the host guard, bridge pins, Service VIP tables",
    "util-linux": "unshare, setpriv, nsenter, mount: the process runtime's sandbox and namespaces",
    "bubblewrap": "bwrap: the process runtime's sandbox for workloads",
    "procps": "sysctl, ps, pkill: forwarding and what a person uses to look at a host",
    "prometheus": "the Visible Fabric's Prometheus on the Post box",
    "prometheus-node-exporter": "the Visible Fabric's node-exporter on every box",
    "wireguard-tools": "wg: the encrypted underlay between sites",
}
#: Needed only where the kernel has no WireGuard (check_host probes it).
USERSPACE_WIREGUARD = ("wireguard-go", "WireGuard in userspace where the kernel has none")


class HostRefused(Exception):
    """The host cannot carry boxes as it is; the message lists everything that is missing."""

    def __init__(self, host: str, problems: list[str]):
        self.host = host
        self.problems = problems
        super().__init__(f"host {host} refused: " + "; ".join(problems))


class HostPrepError(RuntimeError):
    """A step on the host failed (transfer, checksum, unpack); names the host and the step."""


@dataclasses.dataclass
class HostFacts:
    """What :func:`check_host` found."""

    os_id: str
    debian_version: str
    python: str  # "3.11.2", "" when there is none
    wireguard_kernel: bool  # the kernel makes WireGuard links (else wireguard-go is required)


@dataclasses.dataclass
class Installed:
    """Where the bundle is on the host and what this call did."""

    path: str  # <root>/bundle-<sha>: python3 <path> agent <op>
    sha256: str
    transferred: bool  # False: it was there already
    removed: list[str]  # old bundles removed
    seconds: float
    round_trips: int


Runner = Callable[..., Any]

FACTS_SCRIPT = r"""
. /etc/os-release 2>/dev/null
echo "os=${ID:-unknown} ${VERSION_ID:-unknown}"
if [ -x "$0" ]; then "$0" -IS -c 'import sys; print("python=%d.%d.%d" % sys.version_info[:3])'; else echo "python="; fi
dpkg-query -W -f='pkg=${Package} ${Status}\n' "$@" 2>/dev/null
# does the kernel make WireGuard links (loading its module if it has one)? the probe goes at once
if [ -d /sys/module/wireguard ] || { ip link add "ocwgp$$" type wireguard && ip link del "ocwgp$$"; } >/dev/null 2>&1
then echo wgkernel=1; else echo wgkernel=0; fi
echo end
"""


def _text(b: Any) -> str:
    return b.decode(errors="replace") if isinstance(b, (bytes, bytearray)) else (b or "")


def _run(run: Runner, host: str, step: str, argv: list[str], input: bytes | None = None) -> Any:
    try:
        r = run(argv, input=input)
    except Exception as exc:  # the transport's own error (timeout, connection lost): name the step
        raise HostPrepError(f"host {host}: {step} failed: {exc}") from exc
    return r


def check_host(run: Runner, host: str = "host", packages: dict[str, str] | None = None) -> HostFacts:
    """Refuse (:class:`HostRefused`, listing every problem) a host that cannot carry boxes:
    ``packages`` (default :data:`HOST_PACKAGES`), and ``wireguard-go`` where the kernel makes
    no WireGuard link (probed with a link removed at once). One round trip."""
    wanted = dict(HOST_PACKAGES if packages is None else packages)
    query = sorted({*wanted, USERSPACE_WIREGUARD[0]})
    r = _run(run, host, "checking the host", ["sh", "-c", FACTS_SCRIPT, HOST_PYTHON, *query])
    out = _text(r.stdout)
    if "\nend" not in "\n" + out:
        raise HostPrepError(f"host {host}: checking the host failed (exit {r.returncode}): {_text(r.stderr).strip()[-300:]}")
    os_id, version, python, installed, wg_kernel = "unknown", "unknown", "", set(), False
    for line in out.splitlines():
        if line.startswith("wgkernel="):
            wg_kernel = line.strip() == "wgkernel=1"
        elif line.startswith("os="):
            os_id, _, version = line[3:].partition(" ")
        elif line.startswith("python="):
            python = line[7:].strip()
        elif line.startswith("pkg="):
            name, _, status = line[4:].partition(" ")
            if status.strip().endswith(" installed") and status.split()[0] in ("install", "hold"):
                installed.add(name.split(":")[0])
    if not wg_kernel:
        wanted.setdefault(USERSPACE_WIREGUARD[0], USERSPACE_WIREGUARD[1])
    problems = []
    major = re.match(r"^(\d+)", version)
    if os_id != "debian" or not major or int(major.group(1)) < MIN_DEBIAN:
        problems.append(f"not Debian {MIN_DEBIAN} or later (os-release says {os_id} {version})")
    if not python:
        problems.append(f"no {HOST_PYTHON}")
    elif tuple(int(x) for x in python.split(".")[:2]) < MIN_PYTHON:
        problems.append(f"{HOST_PYTHON} is {python}, at least {'.'.join(map(str, MIN_PYTHON))} is needed")
    missing = sorted(p for p in wanted if p not in installed)
    if missing:
        problems.append(f"missing Debian packages: {', '.join(missing)} "
                        f"(apt-get install {' '.join(missing)}; {'; '.join(f'{p}: {wanted[p]}' for p in missing)})")
    if problems:
        raise HostRefused(host, problems)
    return HostFacts(os_id, version, python, wg_kernel)


def install_bundle(run: Runner, bundle: Path, sha256: str, *, tower_id: str, host: str = "host",
                   root: str = HOST_ROOT) -> Installed:
    """Install the bundle on the host (idempotent; see the module's docstring) and record
    that ``tower_id`` uses it. The bytes go through ``run``'s input, and are checked there
    against ``sha256`` before anything runs them."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise ValueError("sha256 must be 64 hex digits")
    t0 = time.perf_counter()
    trips = 0
    target = f"{root}/bundle-{sha256}"
    gc = [HOST_PYTHON, "-IS", target, "gc", "--tower", tower_id]
    # one round trip when it is there: check, and record this Tower's use (gc)
    r = _run(run, host, "looking for the bundle",
             ["sh", "-c", 'if [ -f "$1/.installed" ]; then shift; exec "$@"; else echo absent; fi', "sh", target, *gc])
    trips += 1
    answer = _text(r.stdout).strip()
    if r.returncode == 0 and answer.startswith("{"):
        return Installed(target, sha256, False, _removed(answer), time.perf_counter() - t0, trips)
    if answer != "absent":
        raise HostPrepError(f"host {host}: looking for the bundle failed (exit {r.returncode}): {_tail(r)}")
    data = Path(bundle).read_bytes()
    upload = (
        'set -e; umask 022; mkdir -p "$1"; t="$1/.upload-$2.$$"; trap \'rm -f "$t"\' EXIT; cat > "$t"; '
        's=$(sha256sum "$t" | cut -d" " -f1); '
        'if [ "$s" != "$2" ]; then echo "sha256 of the transferred bundle is $s, expected $2" >&2; exit 3; fi; '
        'mv "$t" "$1/bundle-$2.pyz"; trap - EXIT'
    )
    r = _run(run, host, "transferring the bundle", ["sh", "-c", upload, "sh", root, sha256], input=data)
    trips += 1
    if r.returncode != 0:
        raise HostPrepError(f"host {host}: transferring the bundle failed (exit {r.returncode}): {_tail(r)}")
    r = _run(run, host, "unpacking the bundle",
             ["sh", "-c", '"$1" -IS "$2" unpack && shift 2 && exec "$@"', "sh", HOST_PYTHON, f"{target}.pyz", *gc])
    trips += 1
    last = _text(r.stdout).strip().splitlines()[-1:] or [""]
    if r.returncode != 0 or not last[0].startswith("{"):
        raise HostPrepError(f"host {host}: unpacking the bundle failed (exit {r.returncode}): {_tail(r)}")
    return Installed(target, sha256, True, _removed(last[0]), time.perf_counter() - t0, trips)


def _removed(answer: str) -> list[str]:
    import json

    try:
        return list(json.loads(answer)["result"].get("removed", []))
    except (ValueError, AttributeError, KeyError, TypeError):
        return []


def _tail(r: Any) -> str:
    return (_text(r.stderr).strip() or _text(r.stdout).strip())[-400:]


def prepare_host(run: Runner, bundle: Path, sha256: str, *, tower_id: str, host: str = "host",
                 root: str = HOST_ROOT, packages: dict[str, str] | None = None) -> tuple[HostFacts, Installed]:
    """check_host, then install_bundle: what the ssh driver does before a host's first box
    (nothing is sent to a host that is refused)."""
    facts = check_host(run, host, packages)
    return facts, install_bundle(run, bundle, sha256, tower_id=tower_id, host=host, root=root)


def agent_command(installed_path: str, op: str) -> list[str]:
    """The argv that runs one agent op on the host (the request goes to its stdin). ``-IS``:
    no environment variables, no user or Debian site-packages: the bundle and the standard
    library only, whatever else the host has installed."""
    return [HOST_PYTHON, "-IS", installed_path, "agent", op]


def shell_line(argv: list[str]) -> str:
    """One command line for transports that take a string (SSH)."""
    return shlex.join(argv)
