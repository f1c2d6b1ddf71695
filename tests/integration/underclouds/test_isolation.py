"""Issue 10, points 2 and 5, against the real kernel: a box whose workload is root in it (it
has CAP_NET_RAW) can neither speak as another box on the site bridge (spoofed ARP, spoofed
IPv4 source, another box's MAC) nor reach the host's services other than the one the
LocalHost allows (the Construction DataLake's S3 port).

Own bridges and CIDRs (octi/octj, 10.213.210-211.0/24, overlay 10.250.210.0/23; a second
"Tower" on octk, 10.213.212.0/24), so it never touches a running Tower's sites. Needs root.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from overcloud.underclouds.local import net
from overcloud.underclouds.local import LocalHost, LocalSiteConfig

from test_local import acquire_all, in_box, reaches, release_all, serve_once, spec

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

SITES = [
    LocalSiteConfig("i-a", "octi", "10.213.210.0/24"),
    LocalSiteConfig("i-b", "octj", "10.213.211.0/24"),
]
OTHER_SITES = [LocalSiteConfig("o-a", "octk", "10.213.212.0/24")]
OVERLAY = "10.250.210.0/23"
OTHER_ADDR = "10.213.219.1"  # "the host's other address", on lo (this kernel has no dummy links)

# Raw frames from inside a box (root there: CAP_NET_RAW), stdlib only. argv[1] is JSON:
# {"frames": [hex, ...], "repeat": n, "gap": seconds}.
SENDER = r"""
import json, socket, sys, time
job = json.loads(sys.argv[1])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
for _ in range(job["repeat"]):
    for f in job["frames"]:
        s.send(bytes.fromhex(f))
    time.sleep(job["gap"])
"""

# Counts frames on the box's eth0 (before its firewall) that carry the marker, for argv[2] s.
SNIFFER = r"""
import socket, sys, time
marker = bytes.fromhex(sys.argv[1])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind(("eth0", 0))
s.settimeout(0.1)
print("ready", flush=True)
seen, end = 0, time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    try:
        if marker in s.recv(65535):
            seen += 1
    except OSError:
        pass
print(seen, flush=True)
"""


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("tests/integration/underclouds/test_isolation.py needs root (network namespaces, bridges, nftables)")


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def ip_bytes(ip: str) -> bytes:
    return socket.inet_aton(ip)


def ether(dst: str, src: str, ethertype: int, payload: bytes) -> bytes:
    return mac_bytes(dst) + mac_bytes(src) + ethertype.to_bytes(2, "big") + payload


def arp_reply(ether_src: str, sender_mac: str, sender_ip: str, target_mac: str, target_ip: str,
              dst: str = "ff:ff:ff:ff:ff:ff") -> bytes:
    body = (bytes.fromhex("0001080006040002") + mac_bytes(sender_mac) + ip_bytes(sender_ip)
            + mac_bytes(target_mac) + ip_bytes(target_ip))
    return ether(dst, ether_src, 0x0806, body)


def _checksum(data: bytes) -> int:
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(dst_mac: str, src_mac: str, src_ip: str, dst_ip: str, dport: int, payload: bytes) -> bytes:
    udp = (40000).to_bytes(2, "big") + dport.to_bytes(2, "big") + (8 + len(payload)).to_bytes(2, "big") + b"\0\0"
    header = bytearray(b"\x45\x00" + (20 + len(udp) + len(payload)).to_bytes(2, "big") + b"\x12\x34\x40\x00\x40\x11\0\0"
                       + ip_bytes(src_ip) + ip_bytes(dst_ip))
    header[10:12] = _checksum(bytes(header)).to_bytes(2, "big")
    return ether(dst_mac, src_mac, 0x0800, bytes(header) + udp + payload)


def vxlan_payload(vni: int, marker: bytes) -> bytes:
    """A VXLAN packet for ``vni`` carrying a broadcast frame with ``marker`` in it."""
    inner = ether("ff:ff:ff:ff:ff:ff", "02:00:de:ad:be:ef", 0x0800, marker * 4)
    return b"\x08\0\0\0" + vni.to_bytes(3, "big") + b"\0" + inner


def send_from(box, frames: list[bytes], repeat: int = 1, gap: float = 0.0) -> None:
    job = json.dumps({"frames": [f.hex() for f in frames], "repeat": repeat, "gap": gap})
    r = in_box(box.handle, sys.executable, "-c", SENDER, job, timeout=30)
    assert r.returncode == 0, r.stderr


class Sniffer:
    """Counts marked frames arriving on a box's eth0 (an AF_PACKET socket: it sees frames
    before the box's firewall, so a frame the firewall would drop still counts)."""

    def __init__(self, box, marker: bytes, seconds: float):
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", box.handle, sys.executable, "-c", SNIFFER, marker.hex(), str(seconds)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready", self.proc.stderr.read()

    def count(self) -> int:
        out, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, err
        return int(out.split()[-1])


def neigh_mac(ip: str, handle: str | None = None) -> str | None:
    argv = ["ip", "-j", "neigh", "show", ip]
    if handle:
        argv = ["ip", "-n", handle, "-j", "neigh", "show", ip]
    entries = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout or "[]")
    macs = [e.get("lladdr") for e in entries if e.get("lladdr")]
    return macs[0] if macs else None


def host_ping(addr: str) -> bool:
    return subprocess.run(["ping", "-c", "1", "-W", "1", addr], capture_output=True).returncode == 0


def box_ping(box, addr: str) -> bool:
    return in_box(box.handle, "ping", "-c", "1", "-W", "1", addr).returncode == 0


def fdb_port(bridge: str, mac: str) -> str | None:
    entries = json.loads(subprocess.run(["bridge", "-j", "fdb", "show", "br", bridge], capture_output=True,
                                        text=True, check=True).stdout or "[]")
    for e in entries:
        if e.get("mac") == mac and e.get("ifname") and "self" not in e.get("flags", []):
            return e["ifname"]
    return None


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    _require_root()
    state = tmp_path_factory.mktemp("isolation")
    h = LocalHost(state / "tower", SITES, OVERLAY, max_boxes=20, host_leases=state / "host-leases")
    h.ensure_sites()
    yield h
    ids = {lease["overcloud_id"] for lease in h.leases.boxes()}
    if ids:
        h.sweep(ids)
    h.teardown_sites()
    listing = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert h.pin_table not in listing and net.host_input_chain(h.bridges) not in listing


@pytest.fixture(scope="module")
def two(host):
    """OverCloud A (a1 on octi, a2 on octj) and OverCloud B (b1, b2 on octi, b3 on octj)."""
    a, b = uuid.uuid4().hex, uuid.uuid4().hex
    boxes = acquire_all(host, [spec(a, "a1", "i-a"), spec(a, "a2", "i-b"),
                               spec(b, "b1", "i-a"), spec(b, "b2", "i-a"), spec(b, "b3", "i-b")])
    by = {x.name: x for x in boxes}
    ovl_a = host.join_overlay(a, [by["a1"], by["a2"]])
    ovl_b = host.join_overlay(b, [by["b1"], by["b2"], by["b3"]])
    yield by, ovl_a, ovl_b
    release_all(host, boxes)
    assert host.list_tagged(a) == [] and host.list_tagged(b) == []


def test_each_box_has_a_fixed_mac_and_its_port_is_pinned(host, two):
    by, _, _ = two
    pins = net.pinned_ports(host.pin_table)
    for box in by.values():
        lease = host.leases.box(box.handle)
        assert lease["mac"] == net.box_mac(box.handle) == net.box_eth0_mac(box.handle)
        veth = net.host_veth_name(box.handle)
        assert veth in pins and net.parse_tag(pins[veth])[:2] == (box.overcloud_id, box.name)
        rules = subprocess.run(["nft", "list", "chain", "bridge", host.pin_table, f"box_{veth}"],
                               capture_output=True, text=True, check=True).stdout
        assert f"ether saddr != {lease['mac']} drop" in rules and f"ip saddr {box.address} accept" in rules
        assert any(r.kind == "nftables" and veth in r.name for r in host.list_tagged(box.overcloud_id))


def test_a_box_cannot_speak_as_another(host, two):
    """a1 (OverCloud A, root in its box) sends spoofed ARP replies for b1's address and the
    gateway's, a frame with b1's MAC, VXLAN packets in B's VNI from b1's address to b2
    (same bridge) and b3 (the other site, through the gateway), and a packet to b2 from the
    gateway's address. None poisons a neighbour
    table or the bridge's FDB, none arrives; the legitimate traffic still flows."""
    by, ovl_a, ovl_b = two
    a1, b1, b2, b3 = by["a1"], by["b1"], by["b2"], by["b3"]
    gw = host.gateways["i-a"]
    gw_mac = net.bridge_mac("octi")
    mac = {n: host.leases.box(x.handle)["mac"] for n, x in by.items()}

    # neighbour entries to poison: the host's for b1, b2's for b1 and for the gateway
    assert host_ping(b1.address) and host_ping(b2.address) and host_ping(b3.address)
    assert box_ping(b2, ovl_b.addresses["b1"]) and box_ping(b1, ovl_b.addresses["b3"])  # the overlay resolves the underlay
    assert neigh_mac(b1.address) == mac["b1"]
    assert neigh_mac(b1.address, b2.handle) == mac["b1"] and neigh_mac(gw, b2.handle) == gw_mac
    time.sleep(1.1)  # past the neighbour entries' locktime (1 s): a reply now would override them

    marker = b"OC-SPOOF-" + uuid.uuid4().hex[:8].encode()
    frames = [
        arp_reply(mac["a1"], mac["a1"], b1.address, "ff:ff:ff:ff:ff:ff", b1.address),  # "b1 is at a1's MAC"
        arp_reply(mac["a1"], mac["a1"], gw, "ff:ff:ff:ff:ff:ff", gw),                   # "the gateway is at a1's MAC"
        arp_reply(mac["a1"], mac["a1"], b1.address, mac["b2"], b2.address, dst=mac["b2"]),
        arp_reply(mac["b1"], mac["b1"], b1.address, mac["b2"], b2.address, dst=mac["b2"]),  # b1's MAC: steal its port
        udp_frame(mac["b2"], mac["a1"], b1.address, b2.address, net.VXLAN_PORT, vxlan_payload(ovl_b.vni, marker)),
        udp_frame(gw_mac, mac["a1"], b1.address, b3.address, net.VXLAN_PORT, vxlan_payload(ovl_b.vni, marker)),
        udp_frame(mac["b2"], mac["b1"], b1.address, b2.address, net.VXLAN_PORT, vxlan_payload(ovl_b.vni, marker)),
        udp_frame(mac["b2"], mac["a1"], gw, b2.address, 9001, marker * 2),  # the gateway's address: box firewalls admit it
    ]
    sniffers = {"b2": Sniffer(b2, marker, 3.0), "b3": Sniffer(b3, marker, 3.0)}
    send_from(a1, frames, repeat=10, gap=0.15)
    seen = {name: s.count() for name, s in sniffers.items()}

    assert seen == {"b2": 0, "b3": 0}, f"spoofed VXLAN packets arrived: {seen}"
    assert neigh_mac(b1.address) == mac["b1"], "the host's entry for b1 was poisoned"
    assert neigh_mac(b1.address, b2.handle) == mac["b1"], "b2's entry for b1 was poisoned"
    assert neigh_mac(gw, b2.handle) == gw_mac, "b2's entry for the gateway was poisoned"
    assert neigh_mac(gw, b1.handle) in (gw_mac, None), "b1's entry for the gateway was poisoned"
    assert fdb_port("octi", mac["b1"]) in (net.host_veth_name(b1.handle), None), "b1's MAC moved to another port"
    drops = subprocess.run(["nft", "list", "chain", "bridge", host.pin_table, f"box_{net.host_veth_name(a1.handle)}"],
                           capture_output=True, text=True, check=True).stdout
    assert "counter packets 0 " not in drops  # the IPv4/ARP from a1 with its own MAC met the final drop

    # legitimate traffic: the overlay within each OverCloud, across sites; the gateway and boxes
    assert box_ping(b2, ovl_b.addresses["b1"]) and box_ping(b2, ovl_b.addresses["b3"])
    assert box_ping(a1, ovl_a.addresses["a2"]) and box_ping(by["a2"], ovl_a.addresses["a1"])
    assert host_ping(a1.address) and host_ping(b1.address)
    _, t = serve_once(host, b1, ovl_b.addresses["b1"], 7301)
    try:
        assert reaches(host, b3, ovl_b.addresses["b1"], 7301, within=5)
    finally:
        t.stop.set()


class HostListener:
    """A TCP listener on the host answering b'hi' to every connection."""

    def __init__(self, bind: str = "0.0.0.0", port: int = 0):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((bind, port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"hi")
        self.sock.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=2)


@pytest.fixture
def other_tower(tmp_path):
    """A second Tower's sites on the same host (its own bridge, guard and pins), and another
    address of the host (on lo)."""
    other = LocalHost(tmp_path / "other", OTHER_SITES, "10.250.214.0/24", max_boxes=5, host_leases=tmp_path / "hl")
    try:
        other.ensure_sites()
        subprocess.run(["ip", "addr", "add", f"{OTHER_ADDR}/32", "dev", "lo"], check=True)
        yield other
    finally:
        subprocess.run(["ip", "addr", "del", f"{OTHER_ADDR}/32", "dev", "lo"], capture_output=True)
        other.teardown_sites()


def test_boxes_reach_only_the_allowed_host_service(host, two, other_tower):
    by, _, _ = two
    a1, b3 = by["a1"], by["b3"]
    gw_a, gw_b, gw_other = host.gateways["i-a"], host.gateways["i-b"], other_tower.gateways["o-a"]
    # a workload is root in its box: it can route to whatever address it likes via its gateway
    for box in (a1, b3):
        gw = host.gateways[box.site]
        for addr in (gw_other, OTHER_ADDR):
            r = in_box(box.handle, "ip", "route", "replace", f"{addr}/32", "via", gw)
            assert r.returncode == 0, r.stderr
    anywhere = HostListener("0.0.0.0")   # a service of the host that boxes must not reach
    store = HostListener(gw_a)           # stands in for the Construction DataLake's S3 port
    other_store = HostListener(gw_other)  # the other Tower's store, not allowed here
    host.allow_host_services([(gw_a, store.port)])
    other_tower.allow_host_services([(gw_other, other_store.port)])
    try:
        assert reaches(host, a1, gw_a, store.port, within=3), "the allowed store port"
        assert reaches(host, b3, gw_a, store.port, within=3), "the allowed store port, from the other site"
        for box in (a1, b3):
            for addr in (gw_a, gw_b, gw_other, OTHER_ADDR):
                assert not reaches(host, box, addr, anywhere.port, 0.3), (box.name, addr, "0.0.0.0 listener")
            assert not reaches(host, box, gw_other, other_store.port, 0.3), (box.name, "the other Tower's store")
            assert not reaches(host, box, gw_b, store.port, 0.3), (box.name, "the store port at another address")
        # traffic the host starts reaches a box listener only where the box publishes it (a
        # DNAT of its own tables, as a NodePort is; issue 11.6): otherwise dropped
        _, t = serve_once(host, a1, "0.0.0.0", 7302)
        try:
            with pytest.raises(OSError):
                socket.create_connection((a1.address, 7302), timeout=1).close()
            publish = (f"table ip t_pub {{\n chain p {{\n  type nat hook prerouting priority -100; policy accept;\n"
                       f"  ip daddr {a1.address} tcp dport 30302 dnat to {a1.address}:7302\n }}\n}}\n")
            assert subprocess.run(["ip", "netns", "exec", a1.handle, "nft", "-f", "-"], input=publish, text=True,
                                  capture_output=True).returncode == 0
            with socket.create_connection((a1.address, 30302), timeout=2) as s:
                s.settimeout(2)
                assert s.recv(2) == b"hi"
            in_box(a1.handle, "nft", "delete", "table", "ip", "t_pub")
            with pytest.raises(ConnectionRefusedError):  # an unpublished NodePort is refused at once
                socket.create_connection((a1.address, 30302), timeout=2).close()
        finally:
            t.stop.set()
        assert host_ping(b3.address)
        # a new store port replaces the old one
        moved = HostListener(gw_a)
        try:
            host.allow_host_services([(gw_a, moved.port)])
            assert reaches(host, a1, gw_a, moved.port, within=3)
            assert not reaches(host, a1, gw_a, store.port, 0.3)
        finally:
            moved.close()
    finally:
        for listener in (anywhere, store, other_store):
            listener.close()
        for box in (a1, b3):
            for addr in (gw_other, OTHER_ADDR):
                in_box(box.handle, "ip", "route", "del", f"{addr}/32")


def test_pins_go_with_the_box_and_come_back_with_the_sites(host):
    oc = uuid.uuid4().hex
    (box,) = acquire_all(host, [spec(oc, "c1", "i-a")])
    veth = net.host_veth_name(box.handle)
    assert net.port_pinned(host.pin_table, veth)
    # a box made before pins existed (or whose pin was lost) is pinned again with the sites
    net.unpin_port(host.pin_table, veth)
    assert not net.port_pinned(host.pin_table, veth)
    host.ensure_sites()
    assert net.port_pinned(host.pin_table, veth)
    host.site("i-a").release([box])
    assert not net.port_pinned(host.pin_table, veth)
    assert host.list_tagged(oc) == []
    # a half-made box (lease, network, pin; no supervisord) is swept with its pin
    (box,) = acquire_all(host, [spec(oc, "c2", "i-a")])
    host.supervisor(box).stop_box()
    veth = net.host_veth_name(box.handle)
    assert any(r.kind == "nftables" for r in host.list_tagged(oc))
    host.sweep({oc})
    assert not net.port_pinned(host.pin_table, veth)
    assert host.list_tagged(oc) == []
