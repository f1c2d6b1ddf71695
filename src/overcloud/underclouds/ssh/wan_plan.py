"""The WAN plan of the ssh hosts: keys, who peers with whom, routes and MTU (pure, no I/O).

:mod:`overcloud.underclouds.ssh.wan` applies it to a host; see there for the design.
Private keys appear here only as the caller sealed them, except in :func:`render_config`'s
result, which goes to ``wg syncconf``'s stdin and nowhere else.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

WIREGUARD_OVERHEAD = 80  # outer IPv6 40 + UDP 8 + WireGuard 32 (IPv4 underlays need 60; 80 is safe for both)
VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
ROUTE_PROTO = 87  # the protocol tag on every route we add: down finds them without the plan
DEFAULT_PORT = 51820
DEFAULT_INTERFACE = "ocwg0"
DEFAULT_RUN_DIR = "/run/overcloud/wan"  # a PID file belongs in /run: a reboot forgets it with the process
KEEPALIVE_S = 25  # also makes the first handshake happen at once, and keeps NAT mappings
HANDSHAKE_FRESH_S = 185  # a session lives 180 s; with keepalives a live peer re-handshakes within it

_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")

# --- keys ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WanKeys:
    """One host's WireGuard key pair; the private half only as the caller's ``seal`` made it."""

    public: str  # base64, as `wg pubkey` prints it
    sealed_private: str = dataclasses.field(repr=False)


def make_keys(seal: Callable[[str], str]) -> WanKeys:
    """A new key pair, like ``wg genkey | wg pubkey`` (32 random bytes, clamped, base64)."""
    raw = bytearray(os.urandom(32))
    raw[0] &= 248
    raw[31] = (raw[31] & 127) | 64
    private = base64.b64encode(bytes(raw)).decode()
    return WanKeys(public=public_key(private), sealed_private=seal(private))


def public_key(private: str) -> str:
    """The public key of a base64 private key (what ``wg pubkey`` prints)."""
    # Imported here: this module also loads where only the standard library is (the host bundle).
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = X25519PrivateKey.from_private_bytes(_key_bytes(private))
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def _key_bytes(text: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ValueError("a WireGuard key is 32 bytes in base64 (44 characters)")
    return raw


# --- the plan --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WanHost:
    """One host as the WAN side sees it (from the site config plus the keys the Tower made)."""

    name: str  # unique in the plan
    site: str
    wan_address: str  # where hosts of other sites reach it (the Endpoint)
    lan_address: str  # on its site's private network (same-site routes go via it)
    box_cidr: str  # its boxes' subnet, unique in the plan
    wg_address: str  # its own address on the WireGuard interface (a /32)
    keys: WanKeys
    listen_port: int = DEFAULT_PORT
    interface: str = DEFAULT_INTERFACE
    run_dir: str = DEFAULT_RUN_DIR  # PID file and wireguard-go's log, on the host
    path_mtu: int | None = None  # when the path between sites is narrower than the WAN device says
    # the private network it shares with the hosts of its site that have the same ``lan`` (None: the
    # whole site, as for ssh sites). A cloud site makes one network per OverCloud: its hosts of two
    # OverClouds are on different networks, so neither LAN peers (no next hop on-link) nor WireGuard
    # peers (their boxes never talk)
    lan: str | None = None

    @property
    def endpoint(self) -> str:
        """Where its peers send WireGuard packets: ``address:port`` (``[v6]:port``)."""
        addr = ipaddress.ip_address(self.wan_address)
        return f"[{addr}]:{self.listen_port}" if addr.version == 6 else f"{addr}:{self.listen_port}"

    @property
    def pid_file(self) -> str:
        return f"{self.run_dir}/{self.interface}.pid"

    @property
    def log_file(self) -> str:
        return f"{self.run_dir}/{self.interface}.log"


@dataclasses.dataclass(frozen=True)
class WanPlan:
    """Every host of every ssh site in one world; checked when made."""

    hosts: tuple[WanHost, ...]

    def __post_init__(self) -> None:
        _validate(self.hosts)

    def host(self, name: str) -> WanHost:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(f"no host {name!r} in the WAN plan (hosts: {', '.join(h.name for h in self.hosts)})")

    def cross_site_peers(self, name: str) -> list[WanHost]:
        me = self.host(name)
        return [h for h in self.hosts if h.site != me.site]

    def same_site_peers(self, name: str) -> list[WanHost]:
        me = self.host(name)
        return [h for h in self.hosts if h.site == me.site and h.lan == me.lan and h.name != me.name]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WanPlan:
        return cls(tuple(WanHost(**{**h, "keys": WanKeys(**h["keys"])}) for h in data["hosts"]))


def _validate(hosts: Sequence[WanHost]) -> None:
    names: set[str] = set()
    nets: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = []  # (box_cidr, host)
    seen: dict[str, str] = {}
    for h in hosts:
        if h.name in names:
            raise ValueError(f"host {h.name!r} appears twice in the WAN plan")
        names.add(h.name)
        for field in ("wan_address", "lan_address", "wg_address"):
            value = getattr(h, field)
            try:
                addr = ipaddress.ip_address(value)
            except ValueError:
                raise ValueError(f"host {h.name}: {field} {value!r} is not an IP address") from None
            if field != "wan_address" and addr.version != 4:
                raise ValueError(f"host {h.name}: {field} {value} must be IPv4 (the overlay is IPv4; the WAN may be IPv6)")
            # sites (and a site's separate LANs) may reuse LAN ranges
            key = f"{h.site}/{h.lan or ''}/{addr}" if field == "lan_address" else str(addr)
            if key in seen:
                raise ValueError(f"host {h.name}: {field} {value} is also {seen[key]}")
            seen[key] = f"{field} of host {h.name}"
        try:
            net = ipaddress.ip_network(h.box_cidr)
        except ValueError:
            raise ValueError(f"host {h.name}: box_cidr {h.box_cidr!r} is not a network such as 10.79.1.0/24") from None
        if net.version != 4:
            raise ValueError(f"host {h.name}: box_cidr {net} must be IPv4")
        for other, owner in nets:
            if net.overlaps(other):
                raise ValueError(f"host {h.name}: box_cidr {net} overlaps {other} of host {owner}; each host needs its own")
        nets.append((net, h.name))
        if not _IFNAME.match(h.interface):
            raise ValueError(f"host {h.name}: interface {h.interface!r} must be 1-15 of A-Z a-z 0-9 _ . -")
        if not 1 <= h.listen_port <= 65535:
            raise ValueError(f"host {h.name}: listen_port {h.listen_port} is not a UDP port")
        if h.path_mtu is not None and not 1280 <= h.path_mtu <= 65535:
            raise ValueError(f"host {h.name}: path_mtu {h.path_mtu} must be 1280-65535")
        try:
            _key_bytes(h.keys.public)
        except ValueError as exc:
            raise ValueError(f"host {h.name}: public key: {exc}") from None
        if not h.run_dir.startswith("/") or "\n" in h.run_dir:
            raise ValueError(f"host {h.name}: run_dir {h.run_dir!r} must be an absolute path")
    for h in hosts:
        addr = ipaddress.ip_address(h.wg_address)
        for net, owner in nets:
            if addr in net:
                raise ValueError(f"host {h.name}: wg_address {addr} lies in box_cidr {net} of host {owner}")


# --- what a host should look like (pure) -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Route:
    dst: str  # a network, normalised ("10.79.3.0/24", "10.79.250.3/32")
    dev: str | None = None  # through the WireGuard interface, or
    via: str | None = None  # through a same-site peer's lan_address

    def ip_args(self) -> str:
        target = f"dev {self.dev}" if self.dev else f"via {self.via}"
        return f"{self.dst} {target} proto {ROUTE_PROTO}"


def render_config(plan: WanPlan, name: str, private: str) -> str:
    """The ``wg setconf``/``syncconf`` text for one host: a peer per host of every other site."""
    me = plan.host(name)
    lines = ["[Interface]", f"PrivateKey = {private}", f"ListenPort = {me.listen_port}", ""]
    for peer in plan.cross_site_peers(name):
        allowed = [str(ipaddress.ip_network(peer.box_cidr)), str(ipaddress.ip_network(peer.wg_address))]
        lines += [
            "[Peer]",
            f"# {peer.name} (site {peer.site})",
            f"PublicKey = {peer.keys.public}",
            f"AllowedIPs = {', '.join(allowed)}",
            f"Endpoint = {peer.endpoint}",
            f"PersistentKeepalive = {KEEPALIVE_S}",
            "",
        ]
    return "\n".join(lines)


def desired_routes(plan: WanPlan, name: str) -> list[Route]:
    """Routes to every peer's box subnet: via the LAN inside the site, through WireGuard across."""
    me = plan.host(name)
    routes = [Route(str(ipaddress.ip_network(p.box_cidr)), via=p.lan_address) for p in plan.same_site_peers(name)]
    for p in plan.cross_site_peers(name):
        routes.append(Route(str(ipaddress.ip_network(p.box_cidr)), dev=me.interface))
        routes.append(Route(str(ipaddress.ip_network(p.wg_address)), dev=me.interface))
    return routes


def wireguard_mtu(underlay_mtu: int) -> int:
    return underlay_mtu - WIREGUARD_OVERHEAD


def vxlan_mtu(*, lan_mtu: int | None = None, wan_mtu: int | None = None) -> int | None:
    """The largest box VXLAN MTU every path carries: LAN − 50 inside a site, WAN − 80 − 50 across."""
    candidates = []
    if lan_mtu is not None:
        candidates.append(lan_mtu - VXLAN_OVERHEAD)
    if wan_mtu is not None:
        candidates.append(wireguard_mtu(wan_mtu) - VXLAN_OVERHEAD)
    return min(candidates) if candidates else None
