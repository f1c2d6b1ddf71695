"""The WAN side of ssh hosts (underclouds/ssh/wan.py) against the real kernel and wireguard-go.

Three "hosts" as plain network namespaces: a1 and a2 on site a's LAN, b1 on site b's, all three
on a WAN segment, each with a box netns behind it on its own box subnet. The bridges live in
a switch namespace of their own, so the root namespace is not touched. wan.py drives every
host through ``ip netns exec <host>``, the same ``run(argv, input)`` an SSH channel gives it.

These hosts share /run (plain ``ip netns exec``), hence wireguard-go's socket directory
/var/run/wireguard: each host gets its own interface name (ocwtwg-<host>) and its own run dir.
Helper B's simulated hosts have a private /run each and can all use the default name.

Own names (ocwt-*) and addresses (WAN 10.87.0.0/24, LANs 10.88.1-2.0/24, box subnets
10.89.1-3.0/24, WireGuard addresses 10.89.250.x, a VXLAN overlay 10.88.200.0/24), clear of
the hosts lab (10.77-10.79) and of the local UnderCloud (10.213, 10.250). Needs root.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from overcloud.identity.secrets import SecretBox
from overcloud.underclouds.ssh import wan
from pcap import Capture

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]

SWITCH = "ocwt-sw"
HOSTS = {  # name: (site, host number, box subnet index)
    "a1": ("a", 11, 1),
    "a2": ("a", 12, 2),
    "b1": ("b", 21, 3),
}
WAN_MTU = 1460  # like a cloud whose network carries 1460 (GCE): WireGuard 1380, VXLAN over it 1330
A1_PATH_MTU = 1400  # a1 is told its path between sites is narrower than its device
PORT = 51820
MARKER = b"OCWT-CLEARTEXT-MARKER-0123456789-"
VNI = 8787
OVERLAY = {"a2": "10.88.200.2", "b1": "10.88.200.3", "a1": "10.88.200.1"}

# Receives until EOF, answers with the byte count: the sender's clock then covers delivery.
SINK = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1)
print("ready", flush=True)
c, _ = s.accept(); n = 0
while True:
    b = c.recv(1 << 20)
    if not b: break
    n += len(b)
c.sendall(str(n).encode()); c.close()
"""
SOURCE = r"""
import socket, sys, time
total = int(sys.argv[3]); chunk = (sys.argv[4].encode() * (65536 // len(sys.argv[4]) + 1))[:65536]
t0 = time.monotonic(); c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
sent = 0
while sent < total:
    sent += c.send(chunk[: total - sent])
c.shutdown(socket.SHUT_WR); got = int(c.recv(64)); dt = time.monotonic() - t0
print(got, dt)
"""


def sh(*argv: str, check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(argv), capture_output=True, text=input is None, input=input, timeout=120)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: exit {res.returncode}: {res.stderr}")
    return res


def ns(name: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", name, *argv, check=check)


def host_ns(h: str) -> str:
    return f"ocwt-{h}"


def box_ns(h: str) -> str:
    return f"ocwt-{h}x"


def box_addr(h: str) -> str:
    return f"10.89.{HOSTS[h][2]}.2"


def _wipe() -> None:
    """Remove this module's namespaces (and the processes in them: ours, from an earlier run)."""
    names = sh("ip", "netns", "list").stdout.split()
    for n in names:
        if n.startswith("ocwt-"):
            for pid in sh("ip", "netns", "pids", n, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            sh("ip", "netns", "del", n, check=False)


class Recorder:
    """A real runner for one host that remembers every argv and every input it was handed."""

    def __init__(self, host: str):
        self.inner = wan.local_runner(["ip", "netns", "exec", host_ns(host)])
        self.argvs: list[list[str]] = []
        self.inputs: list[bytes] = []

    def __call__(self, argv, input=None):
        self.argvs.append(list(argv))
        if input is not None:
            self.inputs.append(input)
        return self.inner(argv, input=input)


class LogTrap(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    _wipe()
    secrets = SecretBox(Fernet.generate_key())
    run_root = tmp_path_factory.mktemp("wan-run")
    sh("ip", "netns", "add", SWITCH)
    ns(SWITCH, "ip", "link", "set", "lo", "up")
    no_ipv6 = ("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
    ns(SWITCH, *no_ipv6)  # no router solicitations or MLD in the captures
    for br in ("wan", "lana", "lanb"):
        # without snooping the bridge joins no group (224.0.0.106) and sends no IGMP into the captures
        ns(SWITCH, "ip", "link", "add", br, "type", "bridge", "mcast_snooping", "0")
        ns(SWITCH, "ip", "link", "set", br, "up")
    ns(SWITCH, "ip", "link", "set", "wan", "mtu", str(WAN_MTU))
    hosts = []
    for h, (site, n, k) in HOSTS.items():
        hn, bn = host_ns(h), box_ns(h)
        sh("ip", "netns", "add", hn)
        sh("ip", "netns", "add", bn)
        for name in (hn, bn):
            ns(name, *no_ipv6)
            ns(name, "ip", "link", "set", "lo", "up")
        for dev, br, addr, mtu in (("wan", "wan", f"10.87.0.{n}/24", WAN_MTU),
                                   ("lan", f"lan{site}", f"10.88.{1 if site == 'a' else 2}.{n}/24", 1500)):
            ns(hn, "ip", "link", "add", dev, "mtu", str(mtu), "type", "veth", "peer", "name", f"{h}-{dev}",
               "mtu", str(mtu), "netns", SWITCH)
            ns(hn, "ip", "addr", "add", addr, "dev", dev)
            ns(hn, "ip", "link", "set", dev, "up")
            ns(SWITCH, "ip", "link", "set", f"{h}-{dev}", "master", br, "up")
        ns(hn, "ip", "link", "add", "box", "type", "veth", "peer", "name", "eth0", "netns", bn)
        ns(hn, "ip", "addr", "add", f"10.89.{k}.1/24", "dev", "box")
        ns(hn, "ip", "link", "set", "box", "up")
        ns(hn, "sysctl", "-qw", "net.ipv4.ip_forward=1")  # LocalHost's job on a real host
        ns(bn, "ip", "addr", "add", f"{box_addr(h)}/24", "dev", "eth0")
        ns(bn, "ip", "link", "set", "eth0", "up")
        ns(bn, "ip", "route", "add", "default", "via", f"10.89.{k}.1")
        hosts.append(wan.WanHost(
            name=h, site=site, wan_address=f"10.87.0.{n}", lan_address=f"10.88.{1 if site == 'a' else 2}.{n}",
            box_cidr=f"10.89.{k}.0/24", wg_address=f"10.89.250.{k}", keys=wan.make_keys(secrets.seal),
            listen_port=PORT, interface=f"ocwtwg-{h}", run_dir=str(run_root / h),
            path_mtu=A1_PATH_MTU if h == "a1" else None,
        ))
    trap = LogTrap()
    logging.getLogger("overcloud").addHandler(trap)
    logging.getLogger("overcloud").setLevel(logging.DEBUG)
    lab = Lab(wan.WanPlan(tuple(hosts)), secrets, trap)
    yield lab
    logging.getLogger("overcloud").removeHandler(trap)
    logging.getLogger("overcloud").setLevel(logging.NOTSET)
    for h in lab.plan.hosts:
        try:
            wan.down(h, lab.runners[h.name])
        except Exception as exc:  # the namespaces go anyway
            print(f"teardown: down {h.name}: {exc}")
    _wipe()


class Lab:
    def __init__(self, plan: wan.WanPlan, secrets: SecretBox, trap: LogTrap):
        self.plan = plan
        self.secrets = secrets
        self.trap = trap
        self.runners = {h.name: Recorder(h.name) for h in plan.hosts}
        self.states: dict[str, wan.WanState] = {}
        self.first_up_calls: dict[str, int] = {}

    def up(self, name: str) -> wan.WanState:
        calls = len(self.runners[name].argvs)
        state = wan.up(self.plan, name, self.runners[name], self.secrets.open)
        self.first_up_calls.setdefault(name, len(self.runners[name].argvs) - calls)
        self.states[name] = state
        return state

    def private_keys(self) -> list[str]:
        return [self.secrets.open(h.keys.sealed_private) for h in self.plan.hosts]


def alive(pid: int) -> bool:
    """Running (a zombie waiting for PID 1 to reap it counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def ping(src_ns: str, dst: str, *extra: str) -> bool:
    return ns(src_ns, "ping", "-c1", "-W1", *extra, dst, check=False).returncode == 0


def transfer(src: str, dst: str, dst_addr: str, total: int, port: int = 5201) -> tuple[int, float]:
    sink = subprocess.Popen(["ip", "netns", "exec", dst, sys.executable, "-c", SINK, dst_addr, str(port)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout.readline().strip() == "ready"
        out = ns(src, sys.executable, "-c", SOURCE, dst_addr, str(port), str(total), MARKER.decode()).stdout.split()
        return int(out[0]), float(out[1])
    finally:
        sink.wait(timeout=30)


def test_cross_site_through_wireguard_and_same_site_in_clear(lab):
    t0 = time.monotonic()
    for h in ("a1", "a2"):
        lab.up(h)
    t_b = time.monotonic()
    b1 = lab.up("b1")
    t_up = time.monotonic()
    while not ping(box_ns("a2"), box_addr("b1")):
        assert time.monotonic() - t_up < 15, "a2's box never reached b1's box through WireGuard"
    t_ping = time.monotonic()
    print(f"\nup a1+a2 {t_b - t0:.2f} s, up b1 {t_up - t_b:.2f} s; from b1's up call to the first box ping "
          f"a2->b1 answered (handshake included) {t_ping - t_b:.2f} s")

    for name, state in lab.states.items():
        assert state.backend == "wireguard-go" and state.created and state.interface == f"ocwtwg-{name}"
        assert alive(state.pid)
        assert Path(lab.plan.host(name).pid_file).read_text().strip() == str(state.pid)
    assert b1.routes == [f"10.89.1.0/24 dev ocwtwg-b1 proto {wan.ROUTE_PROTO}", f"10.89.250.1/32 dev ocwtwg-b1 proto {wan.ROUTE_PROTO}",
                         f"10.89.2.0/24 dev ocwtwg-b1 proto {wan.ROUTE_PROTO}", f"10.89.250.2/32 dev ocwtwg-b1 proto {wan.ROUTE_PROTO}"]

    # across sites: through the WireGuard interface; inside site a: via a2's LAN address
    assert "dev ocwtwg-a2" in ns(host_ns("a2"), "ip", "route", "get", box_addr("b1")).stdout
    assert "via 10.88.1.12 dev lan" in ns(host_ns("a1"), "ip", "route", "get", box_addr("a2")).stdout
    assert ping(box_ns("a1"), box_addr("b1")) and ping(box_ns("b1"), box_addr("a1"))
    assert ping(host_ns("a2"), "10.89.250.3")  # host to host over WireGuard addresses
    assert ping(box_ns("a1"), box_addr("a2"))

    st = wan.status(lab.plan, "a2", lab.runners["a2"])
    assert st.healthy, st.problems
    assert set(st.peers) == {"b1"} and st.peers["b1"].fresh and st.peers["b1"].rx_bytes > 0
    assert st.peers["b1"].endpoint == f"10.87.0.21:{PORT}"
    assert set(wan.status(lab.plan, "b1", lab.runners["b1"]).peers) == {"a1", "a2"}


def test_mtu_comes_from_the_wan_device(lab):
    a1, a2, b1 = (lab.states[h] for h in ("a1", "a2", "b1"))
    assert (a2.wan_mtu, a2.wireguard_mtu, a2.lan_mtu, a2.vxlan_mtu) == (WAN_MTU, WAN_MTU - 80, 1500, WAN_MTU - 130)
    assert (b1.wan_mtu, b1.wireguard_mtu, b1.lan_mtu, b1.vxlan_mtu) == (WAN_MTU, WAN_MTU - 80, None, WAN_MTU - 130)
    assert (a1.wan_mtu, a1.wireguard_mtu, a1.vxlan_mtu) == (A1_PATH_MTU, A1_PATH_MTU - 80, A1_PATH_MTU - 130)
    for h, state in lab.states.items():
        out = ns(host_ns(h), "ip", "-o", "link", "show", f"ocwtwg-{h}").stdout
        assert f" mtu {state.wireguard_mtu} " in out
    print(f"\nMTU: WAN device {WAN_MTU} -> WireGuard {WAN_MTU - 80} -> box VXLAN {WAN_MTU - 130} "
          f"(a1 with path_mtu {A1_PATH_MTU}: {a1.vxlan_mtu})")


def test_the_wan_carries_only_wireguard_udp(lab, tmp_path):
    """Box VXLAN (at the MTU up chose) and plain box TCP between sites: the capture on b1's WAN
    veth holds WireGuard UDP only, and never the bytes that were sent. The same transfer inside
    site a is readable on the LAN: VXLAN there runs in clear, as the docs say."""
    mtu = min(s.vxlan_mtu for s in lab.states.values())
    for h in ("a1", "a2", "b1"):
        b = box_ns(h)
        # df set: an outer packet too big for the path is dropped, not fragmented, so the pings below prove the MTU
        ns(b, "ip", "link", "add", "vx", "type", "vxlan", "id", str(VNI), "local", box_addr(h), "dstport", "4789",
           "dev", "eth0", "df", "set")
        for peer in ("a1", "a2", "b1"):
            if peer != h:
                ns(b, "bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vx", "dst", box_addr(peer))
        ns(b, "ip", "link", "set", "vx", "mtu", str(mtu), "up")
        ns(b, "ip", "addr", "add", f"{OVERLAY[h]}/24", "dev", "vx")
    try:
        wan_cap = Capture(host_ns("b1"), "wan", tmp_path / "wan.pcap")
        lan_cap = Capture(host_ns("a2"), "lan", tmp_path / "lan.pcap")
        # the MTU chosen (a1's, the narrowest) carries a full-size packet from a1 across sites
        # without fragmenting; one byte more does not get through
        assert mtu == A1_PATH_MTU - 130
        assert ping(box_ns("a1"), OVERLAY["b1"], "-M", "do", "-s", str(mtu - 28))
        ns(box_ns("a1"), "ip", "link", "set", "vx", "mtu", str(mtu + 1))
        assert not ping(box_ns("a1"), OVERLAY["b1"], "-M", "do", "-s", str(mtu - 27))
        ns(box_ns("a1"), "ip", "link", "set", "vx", "mtu", str(mtu))
        size = 20 * 1024 * 1024
        got, dt_vx = transfer(box_ns("a2"), box_ns("b1"), OVERLAY["b1"], size)  # VXLAN over WireGuard
        assert got == size
        got, dt_plain = transfer(box_ns("a1"), box_ns("b1"), box_addr("b1"), size)  # box TCP over WireGuard
        assert got == size
        got, _ = transfer(box_ns("a1"), box_ns("a2"), OVERLAY["a2"], 2 * 1024 * 1024)  # inside site a
        wan_bytes, lan_bytes = wan_cap.stop(), lan_cap.stop()
    finally:
        for h in ("a1", "a2", "b1"):
            ns(box_ns(h), "ip", "link", "del", "vx", check=False)
    wg_packets = wan_cap.count(f"udp port {PORT}")
    others = sh("tcpdump", "-r", str(wan_cap.path), "-nn", f"not (udp port {PORT}) and not arp").stdout
    print(f"\nWAN capture: {wg_packets} WireGuard packets, {len(wan_bytes)} bytes; box VXLAN over wg "
          f"{size * 8 / dt_vx / 1e6:.0f} Mbit/s, box TCP over wg {size * 8 / dt_plain / 1e6:.0f} Mbit/s (20 MB each)")
    assert others == "", f"not WireGuard on the WAN:\n{others[:2000]}"
    assert wg_packets > 2 * size // 1500
    assert wan_cap.count("udp port 4789 or tcp") == 0
    assert MARKER not in wan_bytes
    # inside the site: VXLAN on the LAN, payload readable
    assert lan_cap.count("udp port 4789") > 0 and MARKER in lan_bytes


def test_up_again_keeps_the_process_and_sessions_and_drops_stale_routes(lab):
    a2 = lab.states["a2"]
    before = wan.status(lab.plan, "a2", lab.runners["a2"]).peers["b1"]
    ns(host_ns("a2"), "ip", "route", "add", "10.89.9.0/24", "via", "10.88.1.11", "proto", str(wan.ROUTE_PROTO))
    calls = len(lab.runners["a2"].argvs)
    again = lab.up("a2")
    print(f"\nrun() calls (SSH round trips on a remote host): up a2 fresh {lab.first_up_calls['a2']}, "
          f"again {len(lab.runners['a2'].argvs) - calls}")
    assert not again.created and again.pid == a2.pid and again.routes == a2.routes
    assert "10.89.9.0/24" not in ns(host_ns("a2"), "ip", "route", "show", "proto", str(wan.ROUTE_PROTO)).stdout
    after = wan.status(lab.plan, "a2", lab.runners["a2"]).peers["b1"]
    assert after.rx_bytes >= before.rx_bytes and after.latest_handshake == before.latest_handshake  # same session
    assert ping(box_ns("a2"), box_addr("b1"))


def test_a_host_without_peers_across_sites_has_no_wireguard(lab):
    site_a = wan.WanPlan(tuple(h for h in lab.plan.hosts if h.site == "a"))
    state = wan.up(site_a, "a1", lab.runners["a1"], lab.secrets.open)
    assert state.interface is None and state.vxlan_mtu == 1450
    assert ns(host_ns("a1"), "ip", "link", "show", "ocwtwg-a1", check=False).returncode != 0
    assert not alive(lab.states["a1"].pid)
    routes = ns(host_ns("a1"), "ip", "route", "show", "proto", str(wan.ROUTE_PROTO)).stdout
    assert routes.split("\n")[0].startswith("10.89.2.0/24 via 10.88.1.12") and "10.89.3.0" not in routes
    assert ping(box_ns("a1"), box_addr("a2"))
    again = lab.up("a1")  # and back
    assert again.created and again.backend == "wireguard-go"
    deadline = time.monotonic() + 10
    while not ping(box_ns("a1"), box_addr("b1")):
        assert time.monotonic() < deadline


def test_private_keys_never_reach_argv_ps_or_logs(lab):
    keys = lab.private_keys()
    seen_ps: list[str] = []
    stop = threading.Event()

    def watch_ps():
        while not stop.is_set():
            seen_ps.append(sh("ps", "-eo", "args").stdout)

    watcher = threading.Thread(target=watch_ps)
    watcher.start()
    try:
        for _ in range(3):
            lab.up("b1")
    finally:
        stop.set()
        watcher.join()
    argv_text = "\n".join(" ".join(a) for r in lab.runners.values() for a in r.argvs)
    wg_logs = "".join(Path(h.log_file).read_text() for h in lab.plan.hosts)
    for key in keys:
        assert key not in argv_text
        assert not any(key in snapshot for snapshot in seen_ps)
        assert key not in "\n".join(lab.trap.lines)
        assert key not in wg_logs
        assert key not in repr(lab.plan) and key not in repr(lab.states)
    # where it did go: on the stdin of `wg syncconf`, and nowhere on disk
    assert all(any(key.encode() in i for i in r.inputs) for key, r in zip(keys, lab.runners.values()))
    assert all(a[:2] == ["wg", "syncconf"] and a[3] == "/dev/stdin" for r in lab.runners.values() for a in r.argvs if a[0] == "wg")
    run_dirs = str(Path(lab.plan.host("b1").run_dir).parent)
    stored = sh("grep", "-rlF", "-D", "skip", keys[2], run_dirs, wan.WIREGUARD_SOCKET_DIR, check=False)
    assert stored.returncode == 1, stored.stdout  # 1: found nowhere
    print(f"\nps snapshots taken during 3 ups of b1: {len(seen_ps)}")


def test_plain_veth_against_wireguard_throughput(lab):
    size = 200 * 1024 * 1024
    got, dt_wg = transfer(box_ns("a2"), box_ns("b1"), box_addr("b1"), size, port=5202)
    assert got == size
    got, dt_lan = transfer(box_ns("a1"), box_ns("a2"), box_addr("a2"), size, port=5203)
    assert got == size
    print(f"\n200 MB box to box: over WireGuard (wireguard-go) {size * 8 / dt_wg / 1e6:.0f} Mbit/s ({dt_wg:.2f} s), "
          f"plain veth routing inside a site {size * 8 / dt_lan / 1e6:.0f} Mbit/s ({dt_lan:.2f} s)")


def leftovers(h: wan.WanHost) -> list[str]:
    """What of wan.py's doing is still on host ``h``, looked up without wan.py."""
    hn = host_ns(h.name)
    left = []
    links = [line.split(":")[1].strip().split("@")[0] for line in ns(hn, "ip", "-o", "link").stdout.splitlines()]
    left += [f"link {name}" for name in links if name not in ("lo", "wan", "lan", "box")]
    left += [f"route {r}" for r in ns(hn, "ip", "route", "show", "proto", str(wan.ROUTE_PROTO)).stdout.splitlines()]
    if Path(h.run_dir).exists():
        left.append(f"dir {h.run_dir}: {os.listdir(h.run_dir)}")
    if Path(f"{wan.WIREGUARD_SOCKET_DIR}/{h.interface}.sock").exists():
        left.append(f"socket {h.interface}.sock")
    left += [f"process {p}" for p in sh("ps", "-eo", "pid,args").stdout.splitlines() if f"wireguard-go -f {h.interface}" in p]
    return left


def test_down_leaves_nothing(lab):
    pids = {h: s.pid for h, s in lab.states.items()}
    for h in lab.plan.hosts:
        removed = wan.down(h, lab.runners[h.name])
        assert f"wireguard-go ({h.pid_file})" in removed and any(r.startswith("route ") for r in removed)
    for h in lab.plan.hosts:
        assert leftovers(h) == []
        assert not alive(pids[h.name])
        assert wan.down(h, lab.runners[h.name]) == []  # again: nothing to do
    assert not ping(box_ns("a2"), box_addr("b1"))


def test_a_failed_up_undoes_what_it_made_and_names_the_host(lab):
    a1, a2, b1 = (lab.plan.host(h) for h in ("a1", "a2", "b1"))
    # a2's LAN address is not on a1's LAN: a1's interface is made, then its LAN side fails
    bad = wan.WanPlan((a1, dataclasses.replace(a2, lan_address="10.88.9.12"), b1))
    with pytest.raises(wan.WanError, match=r"^host a1: .*10\.88\.9\.12"):
        wan.up(bad, "a1", lab.runners["a1"], lab.secrets.open)
    assert leftovers(a1) == []

    # an unseal that fails with the key in its message: the error carries neither
    key = lab.private_keys()[0]

    def unseal(token: str) -> str:
        raise ValueError(f"cannot open {key}")

    with pytest.raises(wan.WanError, match="^host a1: cannot unseal its WireGuard key \\(ValueError\\)$") as err:
        wan.up(lab.plan, "a1", lab.runners["a1"], unseal)
    assert err.value.__cause__ is None and err.value.__suppress_context__
    # a key that is not a1's (b1's) is refused before anything is made
    with pytest.raises(wan.WanError, match="does not match its public key"):
        wan.up(lab.plan, "a1", lab.runners["a1"], lambda _: lab.private_keys()[2])
    assert leftovers(a1) == []

    # an interface of that name that we did not make is not taken over
    ns(host_ns("b1"), "ip", "link", "add", b1.interface, "type", "veth", "peer", "name", "ocwt-other")
    try:
        with pytest.raises(wan.WanError, match=f"^host b1: interface {b1.interface} exists \\(veth\\) but is not one we started"):
            wan.up(lab.plan, "b1", lab.runners["b1"], lab.secrets.open)
        assert ns(host_ns("b1"), "ip", "link", "show", b1.interface, check=False).returncode == 0
    finally:
        ns(host_ns("b1"), "ip", "link", "del", b1.interface)
    assert leftovers(b1) == []
