"""Encryption and routing between the hosts of the ssh UnderClouds: the WAN side of a host.

Every host's boxes sit on that host's own bridge, in a box subnet (``box_cidr``) unique in the
world of the plan. For box-to-box VXLAN (unicast FDB to peers' box addresses) to work across
hosts, each host routes every peer's box subnet:

* **same site** — via the peer's ``lan_address``, in clear, on the site's private network;
* **another site** — through this host's one WireGuard interface. Its peers are the hosts of
  every *other* site; a peer's AllowedIPs are its box subnet plus its WireGuard address, its
  Endpoint is its WAN address and port. So everything that crosses sites is WireGuard UDP.

The WireGuard interface is the kernel's where ``ip link add … type wireguard`` works, else
Debian's ``wireguard-go`` (userspace, TUN), started in the foreground under
``start-stop-daemon`` with a PID file so we know its PID and stop exactly that process.

Promises:

* **Transport-agnostic.** Everything runs through ``run(argv, input=None)`` for one host (a
  subprocess here, an SSH channel for a remote host); it returns an object with ``returncode``,
  ``stdout`` and ``stderr`` and does not raise on a non-zero exit. One :func:`up` or :func:`down`
  at a time per host (the driver serialises per host); hosts in parallel are fine.
* **Idempotent.** :func:`up` reconciles: it makes what is missing, keeps what is right (an
  existing interface, its process and its sessions: ``wg syncconf``, not ``setconf``) and
  removes our routes that the plan no longer wants. :func:`down` removes our routes (found by
  their protocol tag :data:`ROUTE_PROTO`, not by the plan), the interface, the wireguard-go
  process (by its PID file) and our files, and succeeds when they are already gone.
* **Private keys stay private.** The caller seals them (:func:`make_keys` takes ``seal``) and
  :func:`up` unseals one only to write it to ``wg syncconf``'s stdin: never on argv (``ps``), never
  on the host's disk, never in a log line, an exception or a ``repr``. Status reads
  ``wg show <if> latest-handshakes|transfer|endpoints``, never ``dump``/``showconf``, which
  print the private key.

MTU: a box's VXLAN MTU is the underlay path MTU − 80 (WireGuard over IPv4 or IPv6) − 50
(VXLAN) when the OverCloud spans sites, − 50 alone inside one site. :func:`up` reads the MTU of
the device that carries this host's traffic to its peers and reports both figures.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import subprocess
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from overcloud.underclouds.base import UnderCloudError

# The plan's names are this module's too: callers need only `wan`.
from overcloud.underclouds.ssh.wan_plan import (  # noqa: F401
    DEFAULT_INTERFACE, DEFAULT_PORT, DEFAULT_RUN_DIR, HANDSHAKE_FRESH_S, KEEPALIVE_S, ROUTE_PROTO, VXLAN_OVERHEAD,
    WIREGUARD_OVERHEAD, Route, WanHost, WanKeys, WanPlan, desired_routes, make_keys, public_key, render_config,
    vxlan_mtu, wireguard_mtu,
)

logger = logging.getLogger(__name__)

WIREGUARD_GO = "/usr/bin/wireguard-go"
WIREGUARD_SOCKET_DIR = "/var/run/wireguard"  # where wireguard-go and wg meet (the UAPI socket)


class WanError(UnderCloudError):
    """The WAN side of a host could not be brought up or down. Names the host; never a key."""

    def __init__(self, host: str, message: str, *, site: str | None = None):
        super().__init__(f"host {host}: {message}", site=site)
        self.host = host


class Run(Protocol):
    def __call__(self, argv: Sequence[str], input: bytes | None = None) -> Any: ...


def local_runner(prefix: Sequence[str] = (), timeout: float = 30) -> Run:
    """A ``run`` for this machine, optionally through a prefix such as ``ip netns exec <ns>``."""

    def run(argv: Sequence[str], input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        try:
            return subprocess.run([*prefix, *argv], input=input, capture_output=True, timeout=timeout)
        except FileNotFoundError as exc:
            return subprocess.CompletedProcess([*prefix, *argv], 127, b"", str(exc).encode())

    return run


# --- bringing a host up and down ----------------------------------------------------------------


@dataclasses.dataclass
class WanState:
    """What :func:`up` left on one host (JSON-serialisable)."""

    host: str
    interface: str | None  # None when the host has no peer at another site
    backend: str | None  # "kernel" | "wireguard-go"
    pid: int | None  # wireguard-go's PID
    created: bool  # this call made the interface (False: found it and reconciled it)
    wan_mtu: int | None  # the underlay MTU towards other sites (device, or path_mtu when smaller)
    wireguard_mtu: int | None
    lan_mtu: int | None
    vxlan_mtu: int | None  # the largest box VXLAN MTU every path from this host carries
    routes: list[str]


def up(plan: WanPlan, name: str, run: Run, unseal: Callable[[str], str]) -> WanState:
    """Bring the WAN side of host ``name`` to what the plan says; see the module's promises."""
    me = plan.host(name)
    across = plan.cross_site_peers(name)
    within = plan.same_site_peers(name)
    sh = _Shell(run, me)
    backend = pid = wan_mtu = wg_mtu = None
    created = False
    config = _config(plan, me, unseal) if across else None  # before anything is made: a bad key leaves nothing
    if config is None:
        _remove_interface(sh, me)
    else:
        backend, pid, created = _ensure_interface(sh, me)
    try:
        if config is not None:
            wan_mtu, wg_mtu = _configure_interface(sh, me, across, config)
        lan_mtu = _device_mtu(sh, [p.lan_address for p in within]) if within else None
        routes = desired_routes(plan, name)
        wanted_dsts = {r.dst for r in routes}
        stale = [f"route del {dst} proto {ROUTE_PROTO}" for dst in _our_routes(sh) if dst not in wanted_dsts]
        sh.batch(stale + [f"route replace {r.ip_args()}" for r in routes])
    except Exception:
        if created:  # undo what this call made; what it found stays for down or the next up
            try:
                _remove_interface(sh, me)
            except WanError as exc:
                logger.warning("WAN up on host %s failed, and removing the interface it made failed too: %s", me.name, exc)
        raise
    state = WanState(
        host=me.name,
        interface=me.interface if across else None,
        backend=backend,
        pid=pid,
        created=created,
        wan_mtu=wan_mtu,
        wireguard_mtu=wg_mtu,
        lan_mtu=lan_mtu,
        vxlan_mtu=vxlan_mtu(lan_mtu=lan_mtu, wan_mtu=wan_mtu),
        routes=[r.ip_args() for r in routes],
    )
    logger.info(
        "WAN up on host %s: %s peers across sites (%s%s), %s within, wg MTU %s, box VXLAN MTU %s",
        me.name, len(across), backend or "no interface", f" pid {pid}" if pid else "", len(within), wg_mtu, state.vxlan_mtu,
    )
    return state


def _config(plan: WanPlan, me: WanHost, unseal: Callable[[str], str]) -> bytes:
    try:
        private = unseal(me.keys.sealed_private)
    except Exception as exc:  # whatever unseal raises, it must not carry the key out
        raise WanError(me.name, f"cannot unseal its WireGuard key ({type(exc).__name__})", site=me.site) from None
    try:
        public = public_key(private)
    except ValueError:
        raise WanError(me.name, "its unsealed WireGuard key is not a key (32 bytes in base64)", site=me.site) from None
    if public != me.keys.public:
        raise WanError(me.name, "its sealed private key does not match its public key in the plan", site=me.site)
    return render_config(plan, me.name, private).encode()


def _configure_interface(sh: _Shell, me: WanHost, across: list[WanHost], config: bytes) -> tuple[int, int]:
    """Keys and peers (on stdin), address, MTU from the WAN device; returns (WAN MTU, wg MTU)."""
    res = sh.call(["wg", "syncconf", me.interface, "/dev/stdin"], input=config)
    if res.returncode != 0:
        raise WanError(me.name, f"wg syncconf {me.interface} failed: {res.err}", site=me.site)
    wan_mtu = _device_mtu(sh, [p.wan_address for p in across])
    if me.path_mtu is not None:
        wan_mtu = min(wan_mtu, me.path_mtu)
    wg_mtu = wireguard_mtu(wan_mtu)
    wanted = f"{me.wg_address}/{ipaddress.ip_address(me.wg_address).max_prefixlen}"
    batch = [f"address del {a} dev {me.interface}" for a in _addresses(sh) if a != wanted]
    batch += [f"address replace {wanted} dev {me.interface}", f"link set dev {me.interface} mtu {wg_mtu} up"]
    sh.batch(batch)
    return wan_mtu, wg_mtu


def down(host: WanHost, run: Run) -> list[str]:
    """Remove everything :func:`up` made on ``host``; returns what was found and removed."""
    sh = _Shell(run, host)
    removed = []
    ours = _our_routes(sh)
    if ours:
        sh.batch([f"route del {dst} proto {ROUTE_PROTO}" for dst in ours])
        removed += [f"route {dst}" for dst in ours]
    removed += _remove_interface(sh, host)
    logger.info("WAN down on host %s: removed %s", host.name, ", ".join(removed) or "nothing (already clean)")
    return removed


def _ensure_interface(sh: _Shell, me: WanHost) -> tuple[str, int | None, bool]:
    link = sh.json(["ip", "-j", "-d", "link", "show", "dev", me.interface], missing_ok=True)
    if link:
        kind = link[0].get("linkinfo", {}).get("info_kind")
        if kind == "wireguard":
            return "kernel", None, False
        if kind == "tun":
            res = sh.call(["cat", me.pid_file])
            pid = int(res.out) if res.returncode == 0 and res.out.strip().isdigit() else None
            if pid and sh.call(_ssd("--status", me)).returncode == 0:
                return "wireguard-go", pid, False
        raise WanError(
            me.name,
            f"interface {me.interface} exists ({kind or 'unknown kind'}) but is not one we started; "
            "remove it or pick another interface name",
            site=me.site,
        )
    res = sh.call(["ip", "link", "add", me.interface, "type", "wireguard"])
    if res.returncode == 0:
        return "kernel", None, True
    kernel_said = res.err
    if sh.call(["test", "-x", WIREGUARD_GO]).returncode != 0:
        raise WanError(
            me.name,
            f"no WireGuard: the kernel has none ({kernel_said}) and {WIREGUARD_GO} is missing "
            "(install the Debian package wireguard-go)",
            site=me.site,
        )
    sh.check(["mkdir", "-p", "-m", "0700", me.run_dir])
    sh.check([*_ssd("--start", me), "--background", "--make-pidfile", "--output", me.log_file, "--", "-f", me.interface])
    # Wait for its UAPI socket (wg talks to it); give up early when the process died.
    wait = (
        'p=$(cat "$2") || exit 4; i=0; '
        'while [ ! -S "$3/$1.sock" ]; do kill -0 "$p" 2>/dev/null || exit 3; '
        'i=$((i+1)); [ "$i" -gt 200 ] && exit 1; sleep 0.05; done; echo "$p"'
    )
    res = sh.call(["sh", "-c", wait, "sh", me.interface, me.pid_file, WIREGUARD_SOCKET_DIR])
    if res.returncode != 0:
        log = sh.call(["tail", "-c", "1500", me.log_file]).out.strip()
        _remove_interface(sh, me)
        why = f"wireguard-go did not bring up {me.interface} (exit {res.returncode}); its log: {log or '(empty)'}"
        raise WanError(me.name, why, site=me.site)
    return "wireguard-go", int(res.out.strip()), True


def _remove_interface(sh: _Shell, host: WanHost) -> list[str]:
    """The interface, wireguard-go and our files in the run dir; what was there and went."""
    removed = []
    if sh.call(["test", "-e", host.pid_file]).returncode == 0:
        res = sh.call([*_ssd("--stop", host), "--oknodo", "--retry", "TERM/5/KILL/2", "--remove-pidfile"])
        if res.returncode != 0:
            raise WanError(host.name, f"cannot stop wireguard-go ({host.pid_file}): {res.err}", site=host.site)
        removed.append(f"wireguard-go ({host.pid_file})")
    if sh.call(["ip", "link", "show", "dev", host.interface]).returncode == 0:  # kernel's, or outlived its process
        res = sh.call(["ip", "link", "del", "dev", host.interface])
        if res.returncode != 0:
            raise WanError(host.name, f"cannot delete interface {host.interface}: {res.err}", site=host.site)
        removed.append(f"interface {host.interface}")
    elif removed:
        removed.append(f"interface {host.interface} (went with its process)")
    res = sh.call(["rm", "-f", host.pid_file, host.log_file])
    if res.returncode != 0:
        raise WanError(host.name, f"cannot remove {host.log_file}: {res.err}", site=host.site)
    sh.call(["rmdir", "--ignore-fail-on-non-empty", host.run_dir])  # gone already, or shared: fine
    if any(r.startswith("wireguard-go") for r in removed):  # the socket dir it made, when no one else uses it
        sh.call(["rmdir", "--ignore-fail-on-non-empty", WIREGUARD_SOCKET_DIR])
    return removed


def _ssd(action: str, host: WanHost) -> list[str]:
    """start-stop-daemon matching exactly our wireguard-go: its PID file and its executable."""
    return ["start-stop-daemon", action, "--pidfile", host.pid_file, "--exec", WIREGUARD_GO]


def _device_mtu(sh: _Shell, towards: list[str]) -> int:
    """The smallest MTU of the devices that carry this host's packets to these addresses."""
    devs = set()
    for addr in towards:
        route = sh.json(["ip", "-j", "route", "get", addr])
        if not route or not route[0].get("dev"):
            raise WanError(sh.host.name, f"no route towards {addr}", site=sh.host.site)
        devs.add(route[0]["dev"])
    return min(int(sh.json(["ip", "-j", "link", "show", "dev", dev])[0]["mtu"]) for dev in sorted(devs))


def _addresses(sh: _Shell) -> list[str]:
    link = sh.json(["ip", "-j", "addr", "show", "dev", sh.host.interface])
    return [f"{a['local']}/{a['prefixlen']}" for a in link[0].get("addr_info", []) if a.get("scope") != "link"]


def _our_routes(sh: _Shell) -> list[str]:
    routes = sh.json(["ip", "-j", "route", "show", "proto", str(ROUTE_PROTO)])
    return [str(ipaddress.ip_network(r["dst"])) for r in routes if r.get("dst") and r["dst"] != "default"]


@dataclasses.dataclass
class _Result:
    returncode: int
    out: str
    err: str


class _Shell:
    """``run`` for one host, with errors that name the host and never the command's input."""

    def __init__(self, run: Run, host: WanHost):
        self.run = run
        self.host = host

    def call(self, argv: list[str], input: bytes | None = None) -> _Result:
        res = self.run(argv, input=input)
        out, err = res.stdout, res.stderr
        out = out.decode(errors="replace") if isinstance(out, bytes) else (out or "")
        err = err.decode(errors="replace") if isinstance(err, bytes) else (err or "")
        return _Result(res.returncode, out, err.strip()[-500:])

    def check(self, argv: list[str], input: bytes | None = None) -> _Result:
        res = self.call(argv, input=input)
        if res.returncode != 0:
            why = f"`{' '.join(argv[:4])}…` failed (exit {res.returncode}): {res.err}"
            raise WanError(self.host.name, why, site=self.host.site)
        return res

    def json(self, argv: list[str], missing_ok: bool = False) -> list[dict[str, Any]]:
        res = self.call(argv)
        if res.returncode != 0:
            if missing_ok:
                return []
            why = f"`{' '.join(argv)}` failed (exit {res.returncode}): {res.err}"
            raise WanError(self.host.name, why, site=self.host.site)
        return json.loads(res.out or "[]")

    def batch(self, lines: list[str]) -> None:
        if lines:
            self.check(["ip", "-batch", "-"], input=("\n".join(lines) + "\n").encode())


# --- health ------------------------------------------------------------------------------------


@dataclasses.dataclass
class PeerStatus:
    host: str
    public_key: str
    endpoint: str | None
    latest_handshake: int  # epoch seconds on the host; 0 = never
    handshake_age_s: int | None  # None = never
    rx_bytes: int
    tx_bytes: int

    @property
    def fresh(self) -> bool:
        return self.handshake_age_s is not None and self.handshake_age_s <= HANDSHAKE_FRESH_S


@dataclasses.dataclass
class WanStatus:
    host: str
    interface_up: bool
    peers: dict[str, PeerStatus]  # by peer host name
    problems: list[str]  # empty = healthy; each names the peer and what is wrong

    @property
    def healthy(self) -> bool:
        return not self.problems


_STATUS_SCRIPT = (
    'date +%s; wg show "$1" latest-handshakes || exit 3; echo @@; '
    'wg show "$1" transfer || exit 3; echo @@; wg show "$1" endpoints || exit 3'
)


def status(plan: WanPlan, name: str, run: Run) -> WanStatus:
    """Handshakes and traffic per cross-site peer of host ``name``, and what looks wrong."""
    me = plan.host(name)
    across = plan.cross_site_peers(name)
    if not across:
        return WanStatus(me.name, False, {}, [])
    res = _Shell(run, me).call(["sh", "-c", _STATUS_SCRIPT, "sh", me.interface])
    if res.returncode != 0:
        return WanStatus(me.name, False, {}, [f"interface {me.interface} is not up: {res.err or 'wg show failed'}"])
    return parse_status(plan, name, res.out)


def parse_status(plan: WanPlan, name: str, text: str) -> WanStatus:
    """Read the output of :data:`_STATUS_SCRIPT` (``date +%s`` then three ``wg show`` sections)."""
    now_line, _, rest = text.partition("\n")
    sections = rest.split("@@\n")
    now = int(now_line.strip())

    def table(i: int) -> dict[str, list[str]]:
        rows = sections[i].strip().splitlines() if i < len(sections) else []
        return {cols[0]: cols[1:] for cols in (r.split("\t") for r in rows) if cols and cols[0]}

    handshakes, transfer, endpoints = table(0), table(1), table(2)
    peers: dict[str, PeerStatus] = {}
    problems: list[str] = []
    for peer in plan.cross_site_peers(name):
        key = peer.keys.public
        if key not in handshakes:
            problems.append(f"peer {peer.name} (site {peer.site}) is not configured on the interface")
            continue
        latest = int(handshakes[key][0])
        rx, tx = (int(v) for v in transfer.get(key, ["0", "0"])[:2])
        endpoint = endpoints.get(key, ["(none)"])[0]
        ps = PeerStatus(
            peer.name, key, None if endpoint == "(none)" else endpoint, latest, now - latest if latest else None, rx, tx
        )
        peers[peer.name] = ps
        if not ps.fresh:
            when = "never" if ps.handshake_age_s is None else f"{ps.handshake_age_s} s ago"
            problems.append(f"peer {peer.name} (site {peer.site}, {peer.endpoint}): last handshake {when}")
    return WanStatus(plan.host(name).name, True, peers, problems)
