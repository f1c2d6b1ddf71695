"""Kernel plumbing of the local UnderCloud: site bridges, the host's
guard (forwarding and input from the bridges), the bridge pins (each box's
port admits only its own MAC and address), box namespaces, VXLAN overlays
and box firewalls.

Netlink through pyroute2; inside a box, the netlink socket is opened by a
thread that has ``setns``-ed into the box (no helper process). nftables
through the ``nft`` CLI (``nft -f -``, one atomic transaction each).
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import json
import logging
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from overcloud.boxes.netns import create_netns, netns_exists, netns_path, remove_netns, run_in_netns  # noqa: F401
from overcloud.underclouds.local import publish

logger = logging.getLogger(__name__)

TAG_PREFIX = "overcloud:"
HOST_TABLE = "overcloud_host"
PIN_TABLE_PREFIX = "overcloud_pin_"
BOX_TABLE = "overcloud"
VXLAN_DEV = "vx0"
VXLAN_PORT = 4789


def tag(overcloud_id: str, box_name: str, tower_id: str | None = None) -> str:
    """``overcloud:<overcloud id>:<box>:<tower id>``: whose box, and which Tower made it."""
    return f"{TAG_PREFIX}{overcloud_id}:{box_name}" + (f":{tower_id}" if tower_id else "")


def parse_tag(alias: str | None) -> tuple[str, str, str | None] | None:
    """(overcloud id, box name, tower id); the tower id is None in tags made before Towers
    had one (and in a site bridge's ``overcloud:site:<name>``)."""
    if not alias or not alias.startswith(TAG_PREFIX):
        return None
    parts = alias.split(":")
    if len(parts) == 3:
        return parts[1], parts[2], None
    if len(parts) == 4:
        return parts[1], parts[2], parts[3]
    return None


def host_veth_name(handle: str) -> str:
    return "ocv" + hashlib.sha1(handle.encode()).hexdigest()[:8]


def nft(script: str, netns_name: str | None = None) -> None:
    argv = ["nft", "-f", "-"]
    if netns_name:
        argv = ["ip", "netns", "exec", netns_name, *argv]
    proc = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=10)
    if proc.returncode != 0:
        where = f" in {netns_name}" if netns_name else ""
        raise RuntimeError(f"nft{where} failed: {proc.stderr.strip()}")


def _ignore_exists(fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise


# -- host side -----------------------------------------------------------
def bridge_mac(bridge: str) -> str:
    """A fixed, locally administered MAC address for a site bridge (from its name)."""
    digest = hashlib.sha1(f"overcloud-bridge:{bridge}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def ensure_bridge(bridge: str, gateway: str, prefixlen: int, alias: str) -> None:
    """The site bridge, up, with the gateway address. Its MAC address is set explicitly: a
    bridge without one takes the lowest MAC among its ports and changes it as boxes come and
    go, and every box's ARP entry for the gateway then points nowhere until it is resolved
    again (seconds: connections from a box to the host timed out right after another box
    on the same site was deleted)."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=bridge)
        if not found:
            _ignore_exists(ipr.link, "add", ifname=bridge, kind="bridge")
            found = ipr.link_lookup(ifname=bridge)
        idx = found[0]
        ipr.link("set", index=idx, ifalias=alias)
        mac = bridge_mac(bridge)
        if Path(f"/sys/class/net/{bridge}/addr_assign_type").read_text().strip() != "3" or \
                ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS") != mac:  # 3: NET_ADDR_SET, chosen by us
            ipr.link("set", index=idx, address=mac)
        _ignore_exists(ipr.addr, "add", index=idx, address=gateway, prefixlen=prefixlen)
        ipr.link("set", index=idx, state="up")


def bridge_ports(bridge: str) -> list[str]:
    """The interfaces enslaved to ``bridge`` (empty when it has none or does not exist)."""
    try:
        return sorted(p.name for p in Path(f"/sys/class/net/{bridge}/brif").iterdir())
    except OSError:
        return []


def delete_link(ifname: str) -> None:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if found:
            try:
                ipr.link("del", index=found[0])
            except NetlinkError as exc:
                if exc.code != errno.ENODEV:
                    raise


def link_exists(ifname: str) -> bool:
    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=ifname))


def host_tagged_links(bridges: Iterable[str] | None = None) -> list[tuple[str, str, str, str, str | None]]:
    """Host links carrying our tag: (ifname, overcloud_id, box name, kind, tower id or None).

    With ``bridges``, only links enslaved to one of them, or to none (a box made
    half-way): another Tower's boxes on its own bridges are not ours to sweep."""
    found = []
    with IPRoute() as ipr:
        links = ipr.get_links()
        masters = None
        if bridges is not None:
            wanted = set(bridges)
            masters = {link["index"] for link in links if link.get("ifname") in wanted}
        for link in links:
            parsed = parse_tag(link.get("ifalias"))
            master = link.get("master")
            if masters is not None and master and master not in masters:
                continue
            if parsed and parsed[0] != "site":
                kind = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") or "link"
                found.append((link.get("ifname"), parsed[0], parsed[1], kind, parsed[2]))
    return found


def set_ip_forward(value: int) -> int:
    """Set net.ipv4.ip_forward; returns the previous value."""
    path = "/proc/sys/net/ipv4/ip_forward"
    with open(path) as f:
        old = int(f.read().strip())
    if old != value:
        with open(path, "w") as f:
            f.write(str(value))
    return old


def _bridges_hash(bridges: Iterable[str]) -> str:
    return hashlib.sha1(",".join(sorted(bridges)).encode()).hexdigest()[:8]


def host_guard_chain(bridges: Iterable[str]) -> str:
    return "fwd_" + _bridges_hash(bridges)


def host_input_chain(bridges: Iterable[str]) -> str:
    return "in_" + _bridges_hash(bridges)


def host_allow_set(bridges: Iterable[str]) -> str:
    return "allow_" + _bridges_hash(bridges)


def install_host_guard(bridges: list[str], peer_cidrs: Iterable[str] = ()) -> None:
    """Forward only between our bridges; drop our bridges <-> anything else. Input from our
    bridges to the host itself (any local address: every bridge's gateway, another Tower's,
    the host's own): established/related traffic and the services in the allow set (the
    Construction DataLake's S3 port, see :func:`allow_host_services`) only. The allow set is
    kept as it is (``add set`` leaves its elements), so a restart does not cut boxes off the
    store until it is up again.

    ``peer_cidrs`` (a remote host of the ssh UnderCloud): the other hosts' box subnets, which
    boxes here may reach and be reached from (routed via the site LAN or WireGuard)."""
    chain, inp, allow = host_guard_chain(bridges), host_input_chain(bridges), host_allow_set(bridges)
    names = ", ".join(f'"{b}"' for b in sorted(bridges))
    peers = ", ".join(str(ipaddress.IPv4Network(c)) for c in peer_cidrs)
    peer_rules = (
        f"add rule inet {HOST_TABLE} {chain} iifname {{ {names} }} ip daddr {{ {peers} }} accept\n"
        f"add rule inet {HOST_TABLE} {chain} oifname {{ {names} }} ip saddr {{ {peers} }} accept\n"
    ) if peers else ""
    nft(
        f"add table inet {HOST_TABLE}\n"
        f"add chain inet {HOST_TABLE} {chain} {{ type filter hook forward priority 0; policy accept; }}\n"
        f"flush chain inet {HOST_TABLE} {chain}\n"
        f"add rule inet {HOST_TABLE} {chain} iifname {{ {names} }} oifname {{ {names} }} accept\n"
        + peer_rules +
        # connections to a port a box publishes on the host's address (local/publish.py), both ways
        f"add rule inet {HOST_TABLE} {chain} ct mark {publish.MARK:#x} accept\n"
        f"add rule inet {HOST_TABLE} {chain} iifname {{ {names} }} drop\n"
        f"add rule inet {HOST_TABLE} {chain} oifname {{ {names} }} drop\n"
        f"add set inet {HOST_TABLE} {allow} {{ type ipv4_addr . inet_service; }}\n"
        f"add chain inet {HOST_TABLE} {inp} {{ type filter hook input priority 0; policy accept; }}\n"
        f"flush chain inet {HOST_TABLE} {inp}\n"
        f"add rule inet {HOST_TABLE} {inp} iifname {{ {names} }} ct state established,related accept\n"
        f"add rule inet {HOST_TABLE} {inp} iifname {{ {names} }} ip daddr . tcp dport @{allow} accept\n"
        f"add rule inet {HOST_TABLE} {inp} iifname {{ {names} }} drop\n"
    )


def allow_host_services(bridges: list[str], add: Iterable[tuple[str, int]],
                        remove: Iterable[tuple[str, int]] = ()) -> None:
    """Let boxes on ``bridges`` open TCP connections to these (host address, port) pairs;
    drop ``remove`` from the allow set first (missing ones are fine). One transaction."""
    allow = host_allow_set(bridges)
    lines = [f"add set inet {HOST_TABLE} {allow} {{ type ipv4_addr . inet_service; }}"]
    for ip, port in remove:
        element = f"{ipaddress.IPv4Address(ip)} . {int(port)}"
        # add-then-delete: deleting an element that is not there would fail the transaction
        lines += [f"add element inet {HOST_TABLE} {allow} {{ {element} }}",
                  f"delete element inet {HOST_TABLE} {allow} {{ {element} }}"]
    for ip, port in add:
        lines.append(f"add element inet {HOST_TABLE} {allow} {{ {ipaddress.IPv4Address(ip)} . {int(port)} }}")
    nft("\n".join(lines) + "\n")


def remove_host_guard(bridges: list[str]) -> bool:
    """Delete our chains and allow set, and the table once no other host's chain is in it.
    Returns True when the table is gone."""
    listing = subprocess.run(["nft", "list", "table", "inet", HOST_TABLE], capture_output=True, text=True)
    if listing.returncode != 0:
        return True  # no table
    script = ""
    for chain in (host_guard_chain(bridges), host_input_chain(bridges)):
        if f"chain {chain} " in listing.stdout:
            script += f"delete chain inet {HOST_TABLE} {chain}\n"
    if f"set {host_allow_set(bridges)} " in listing.stdout:
        script += f"delete set inet {HOST_TABLE} {host_allow_set(bridges)}\n"
    if script:
        nft(script)
    listing = subprocess.run(["nft", "list", "table", "inet", HOST_TABLE], capture_output=True, text=True)
    if "chain " not in listing.stdout:
        nft(f"delete table inet {HOST_TABLE}\n")
        return True
    return False


# -- bridge pins: a box's port admits only its own MAC and address --------
def pin_table(bridges: Iterable[str]) -> str:
    """``table bridge overcloud_pin_<hash of the bridges>``: one per set of site bridges (so
    per Tower; Towers sharing bridges share it, each adding and removing only its own boxes'
    ports)."""
    return PIN_TABLE_PREFIX + _bridges_hash(bridges)


def box_mac(handle: str) -> str:
    """A fixed, locally administered unicast MAC address for a box's eth0 (from its handle)."""
    digest = hashlib.sha1(f"overcloud-box:{handle}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def _pin_chain(veth: str) -> str:
    return f"box_{veth}"


def ensure_pin_table(table: str) -> None:
    """The table, its port map and the prerouting chain that sends each pinned port's frames
    to the port's own chain (frames from other ports pass). Idempotent; pins are kept."""
    nft(
        f"add table bridge {table}\n"
        f"add map bridge {table} ports {{ type ifname : verdict; }}\n"
        f"add chain bridge {table} prerouting {{ type filter hook prerouting priority -200; policy accept; }}\n"
        f"flush chain bridge {table} prerouting\n"
        f"add rule bridge {table} prerouting iifname vmap @ports\n"
    )


def pin_port(table: str, veth: str, mac: str, address: str, comment: str) -> None:
    """Frames entering the bridge from ``veth`` must come from ``mac``; of those, only ARP
    whose sender is (``mac``, ``address``) and IPv4 from ``address`` pass; anything else
    (other sources, other ARP, IPv6, VLAN tags) is dropped before the bridge learns the
    source MAC. One transaction; replaces the port's rules when they were there."""
    mac = mac.lower()
    if not re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", mac):
        raise ValueError(f"not a MAC address: {mac!r}")
    ip = ipaddress.IPv4Address(address)
    chain = _pin_chain(veth)
    comment = comment.replace('"', "")
    nft(
        f"add chain bridge {table} {chain}\n"
        f"flush chain bridge {table} {chain}\n"
        f"add rule bridge {table} {chain} ether saddr != {mac} drop\n"
        f"add rule bridge {table} {chain} ether type arp arp htype 1 arp ptype ip arp hlen 6 arp plen 4 "
        f"arp saddr ether {mac} arp saddr ip {ip} accept\n"
        f"add rule bridge {table} {chain} ether type ip ip saddr {ip} accept\n"
        f"add rule bridge {table} {chain} counter drop\n"
        f'add element bridge {table} ports {{ "{veth}" comment "{comment}" : jump {chain} }}\n'
    )


def unpin_port(table: str, veth: str) -> None:
    """Remove a port's pin (its map element and chain). Idempotent."""
    if not port_pinned(table, veth):
        return
    chain = _pin_chain(veth)
    nft(  # add-then-delete: each step also holds when a concurrent unpin got there first
        f"add chain bridge {table} {chain}\n"
        f'add element bridge {table} ports {{ "{veth}" : jump {chain} }}\n'
        f'delete element bridge {table} ports {{ "{veth}" }}\n'
        f"delete chain bridge {table} {chain}\n"
    )


def port_pinned(table: str, veth: str) -> bool:
    r = subprocess.run(["nft", "list", "chain", "bridge", table, _pin_chain(veth)], capture_output=True, text=True)
    return r.returncode == 0


def pinned_ports(table: str) -> dict[str, str]:
    """{veth: comment} of every pinned port (the comment is the box's tag)."""
    r = subprocess.run(["nft", "-j", "list", "map", "bridge", table, "ports"], capture_output=True, text=True)
    if r.returncode != 0:
        return {}
    found: dict[str, str] = {}
    for item in json.loads(r.stdout).get("nftables", []):
        for elem in (item.get("map") or {}).get("elem", []):
            key = elem[0] if isinstance(elem, list) else elem
            comment = ""
            if isinstance(key, dict) and "elem" in key:
                comment = key["elem"].get("comment", "")
                key = key["elem"].get("val")
            if isinstance(key, str):
                found[key] = comment
    return found


def remove_pin_table(table: str) -> None:
    subprocess.run(["nft", "delete", "table", "bridge", table], capture_output=True, text=True)


# -- a box ---------------------------------------------------------------
def create_box_network(
    handle: str, alias: str, bridge: str, address: str, prefixlen: int, gateway: str, supernet: str,
    mac: str | None = None,
) -> str:
    """Namespace + veth (eth0 inside, with ``mac`` when it is made here) + address + one
    route. Idempotent. Returns eth0's MAC address (an existing box keeps its own)."""
    if not netns_exists(handle):
        create_netns(handle)
    veth = host_veth_name(handle)
    with IPRoute() as ipr:
        if not ipr.link_lookup(ifname=veth):
            peer = {"ifname": "eth0", "net_ns_fd": handle}
            if mac:
                peer["address"] = mac
            ipr.link("add", ifname=veth, kind="veth", peer=peer)
        idx = ipr.link_lookup(ifname=veth)[0]
        master = ipr.link_lookup(ifname=bridge)[0]
        ipr.link("set", index=idx, ifalias=alias, master=master, state="up")

    net = ipaddress.ip_network(supernet)

    def inside() -> None:
        with IPRoute() as ns:
            eth0 = ns.link_lookup(ifname="eth0")[0]
            _ignore_exists(ns.addr, "add", index=eth0, address=address, prefixlen=prefixlen)
            ns.link("set", index=eth0, state="up")
            # the namespace's own tag: its loopback carries the box's alias (whose box, which Tower)
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up", ifalias=alias)
            _ignore_exists(
                ns.route, "add", dst=str(net.network_address), dst_len=net.prefixlen, gateway=gateway, oif=eth0
            )

    run_in_netns(handle, inside)


def box_eth0_mac(handle: str) -> str:
    """The MAC address of a box's eth0."""

    def inside() -> str:
        with IPRoute() as ns:
            return ns.get_links(ns.link_lookup(ifname="eth0")[0])[0].get_attr("IFLA_ADDRESS")

    return run_in_netns(handle, inside)


def box_firewall(handle: str, gateways: Iterable[str], peers: Iterable[str]) -> None:
    """(Re)write the box's input firewall in one transaction. From the site network (``eth0``)
    it admits only ICMP from the gateways (the host pings boxes) and what the box's own tables
    rewrote to a published port (``ct status dnat``: a NodePort, the DataLake's S3 on the Post;
    see composition.stitching), from the gateways only: a published port is for where the user
    is (the host), not for other OverClouds' boxes, whose packets the host would route here from
    another bridge. Nothing a box listens on is reachable there otherwise. A NodePort
    that is not published (any more) is refused at once, as kube-proxy does; the rest is dropped."""
    gw = ", ".join(sorted(gateways))
    peer_list = sorted(peers)
    peer_elements = f"elements = {{ {', '.join(peer_list)} }}" if peer_list else ""
    nft(
        f"""table inet {BOX_TABLE} {{}}
delete table inet {BOX_TABLE}
table inet {BOX_TABLE} {{
  set gateways {{ type ipv4_addr; elements = {{ {gw} }} }}
  set peers {{ type ipv4_addr; {peer_elements} }}
  chain input {{
    type filter hook input priority 0; policy drop;
    iif "lo" accept
    ct state established,related accept
    iifname "{VXLAN_DEV}" accept
    ip saddr @gateways meta l4proto icmp accept
    iifname "eth0" ip saddr @gateways ct status dnat accept
    iifname "eth0" tcp dport 30000-32767 reject with tcp reset
    ip saddr @peers udp dport {VXLAN_PORT} accept
  }}
}}
""",
        handle,
    )


def ensure_vxlan(
    handle: str, vni: int, local: str, overlay_address: str, prefixlen: int, peers: list[str], alias: str
) -> None:
    """vx0 on eth0 (MTU 1450), learning on, one all-zeros FDB entry per
    peer (stale ones removed). Recreated when its VNI differs."""

    def inside() -> None:
        with IPRoute() as ns:
            eth0 = ns.link_lookup(ifname="eth0")[0]
            found = ns.link_lookup(ifname=VXLAN_DEV)
            if found:
                data = ns.get_links(found[0])[0].get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
                if data.get("IFLA_VXLAN_ID") != vni:
                    ns.link("del", index=found[0])
                    found = []
            if not found:
                ns.link(
                    "add", ifname=VXLAN_DEV, kind="vxlan", vxlan_id=vni, vxlan_local=local,
                    vxlan_link=eth0, vxlan_learning=1, vxlan_port=VXLAN_PORT,
                )
            vx = ns.link_lookup(ifname=VXLAN_DEV)[0]
            ns.link("set", index=vx, ifalias=alias)
            existing = {
                e.get("NDA_DST") for e in ns.fdb("dump", ifindex=vx) if e.get("NDA_LLADDR") == "00:00:00:00:00:00"
            }
            for peer in peers:
                if peer not in existing:
                    ns.fdb("append", ifindex=vx, lladdr="00:00:00:00:00:00", dst=peer)
            for stale in existing - set(peers) - {None}:
                ns.fdb("del", ifindex=vx, lladdr="00:00:00:00:00:00", dst=stale)
            _ignore_exists(ns.addr, "add", index=vx, address=overlay_address, prefixlen=prefixlen)
            ns.link("set", index=vx, state="up")

    run_in_netns(handle, inside)


def box_vxlan_alias(handle: str) -> str | None:
    """The ifalias of a box's vx0, or None when it has none."""

    def inside() -> str | None:
        with IPRoute() as ns:
            found = ns.link_lookup(ifname=VXLAN_DEV)
            return ns.get_links(found[0])[0].get("ifalias") if found else None

    try:
        return run_in_netns(handle, inside)
    except OSError:
        return None


def netns_alias(handle: str) -> str | None:
    """The tag a box's namespace carries (its loopback's ifalias), or None."""

    def inside() -> str | None:
        with IPRoute() as ns:
            found = ns.link_lookup(ifname="lo")
            return ns.get_links(found[0])[0].get("ifalias") if found else None

    try:
        return run_in_netns(handle, inside)
    except OSError:
        return None


def delete_vxlan(handle: str) -> None:
    if not netns_exists(handle):
        return

    def inside() -> None:
        with IPRoute() as ns:
            found = ns.link_lookup(ifname=VXLAN_DEV)
            if found:
                ns.link("del", index=found[0])

    run_in_netns(handle, inside)




def service_table(handle: str, script: str, vip_cidr: str) -> None:
    """A box's Service VIPs: a route for the VIP range over the overlay device (so the kernel
    picks the box's overlay address as source before the nat hook rewrites the destination;
    boxes have no default route), and the nft table that rewrites VIPs (replaced atomically)."""
    r = subprocess.run(["ip", "-n", handle, "route", "replace", vip_cidr, "dev", VXLAN_DEV],
                       capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        raise RuntimeError(f"route for Service VIPs in {handle} failed: {r.stderr.strip()}")
    nft(script, handle)
