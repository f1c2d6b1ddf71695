"""The local UnderCloud against the real kernel: namespaces, bridges,
VXLAN, nftables, cgroups, supervisord. Needs root; fails (never skips)
without it. Uses its own bridges/CIDRs (octa/octb, 10.213.200-201.0/24,
overlay 10.250.200.0/22) so it never touches a running Tower's sites.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from overcloud.boxes import netns as boxnetns
from overcloud.underclouds.local import net
from overcloud.underclouds.base import BoxSpec, UnderCloudError, resolve_flavor
from overcloud.underclouds.local import LocalHost, LocalSiteConfig, box_handle

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

SITES = [
    LocalSiteConfig("t-a", "octa", "10.213.200.0/24"),
    LocalSiteConfig("t-b", "octb", "10.213.201.0/24"),
]
OVERLAY = "10.250.200.0/22"
HAVE_PING = subprocess.run(["sh", "-c", "command -v ping"], capture_output=True).returncode == 0


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("tests/integration/underclouds/test_local.py needs root (network namespaces, bridges, nftables)")


def spec(oc: str, name: str, site: str, role: str = "cluster", size: str = "small") -> BoxSpec:
    return BoxSpec(oc, name, role, site, resolve_flavor(size))


def new_id() -> str:
    return uuid.uuid4().hex


def acquire_all(host: LocalHost, specs: list[BoxSpec]):
    """Acquire across sites in parallel, as the create workflow does."""
    by_site: dict[str, list[BoxSpec]] = {}
    for s in specs:
        by_site.setdefault(s.site, []).append(s)
    with ThreadPoolExecutor(len(by_site)) as pool:
        futures = [pool.submit(host.site(site).acquire, ss) for site, ss in by_site.items()]
        return [b for f in futures for b in f.result()]


def release_all(host: LocalHost, boxes) -> None:
    with ThreadPoolExecutor(len(host.sites)) as pool:
        for f in [pool.submit(site.release, boxes) for site in host.sites.values()]:
            f.result()


def in_box(handle: str, *argv: str, timeout: float = 5) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", handle, *argv], capture_output=True, text=True, timeout=timeout)


def host_pings(addr: str) -> bool:
    return subprocess.run(["ping", "-c", "1", "-W", "1", addr], capture_output=True).returncode == 0


def serve_once(host: LocalHost, box, bind: str, port: int) -> tuple[object, threading.Thread]:
    """A listener inside ``box`` that answers every connection with b'hi'."""
    sock = host.transport(box).listen_tcp(bind, port)
    sock.settimeout(0.2)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"hi")
        sock.close()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    t.stop = stop  # type: ignore[attr-defined]
    return sock, t


def reaches(host: LocalHost, src, addr: str, port: int, timeout: float = 0.5, within: float = 0.0) -> bool:
    """One TCP exchange from ``src``; with ``within``, tried again until that many seconds have
    passed (positive controls: the first packets across sites wait for ARP over VXLAN, which a
    loaded 2-core machine can make slower than one short timeout)."""
    deadline = time.monotonic() + within
    while True:
        if _exchange(host, src, addr, port, timeout):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _exchange(host: LocalHost, src, addr: str, port: int, timeout: float) -> bool:
    try:
        s = host.transport(src).connect_tcp(addr, port, timeout)
    except OSError:
        return False
    with s:
        s.settimeout(timeout)
        try:
            return s.recv(16) != b""
        except OSError:
            return False


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    _require_root()
    state = tmp_path_factory.mktemp("local-uc")
    h = LocalHost(state, SITES, OVERLAY, max_boxes=40)
    h.ensure_sites()
    yield h
    ids = {lease["overcloud_id"] for lease in h.leases.boxes()}
    if ids:
        h.sweep(ids)
    h.teardown_sites()
    for c in SITES:
        assert not net.link_exists(c.bridge), c.bridge
    chain = net.host_guard_chain([c.bridge for c in SITES])
    listing = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
    assert chain not in listing


@pytest.fixture(scope="module")
def oc1(host):
    """One OverCloud: a Post and three cluster boxes on two sites, overlaid."""
    oc = new_id()
    specs = [
        spec(oc, "p0", "t-a", "post", "medium"),
        spec(oc, "c1", "t-a"),
        spec(oc, "c2", "t-b"),
        spec(oc, "c3", "t-b"),
    ]
    t0 = time.perf_counter()
    boxes = acquire_all(host, specs)
    t1 = time.perf_counter()
    overlay = host.join_overlay(oc, boxes)
    t2 = time.perf_counter()
    print(f"\nacquire 4 boxes {t1 - t0:.3f}s, overlay {t2 - t1:.3f}s")
    yield oc, {b.name: b for b in boxes}, overlay
    t3 = time.perf_counter()
    release_all(host, boxes)
    print(f"\nrelease 4 boxes {time.perf_counter() - t3:.3f}s")
    assert host.list_tagged(oc) == []


def test_host_guard_and_forwarding(host):
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
    rules = subprocess.run(["nft", "list", "table", "inet", net.HOST_TABLE], capture_output=True, text=True)
    assert rules.returncode == 0
    assert '"octa"' in rules.stdout and "drop" in rules.stdout


def test_acquire_across_sites(host, oc1):
    oc, boxes, _ = oc1
    assert {b.site for b in boxes.values()} == {"t-a", "t-b"}
    assert boxes["p0"].address.startswith("10.213.200.") and boxes["c2"].address.startswith("10.213.201.")
    assert len({b.address for b in boxes.values()}) == 4
    for b in boxes.values():
        assert b.handle == box_handle(oc, b.name) and len(b.handle) <= 15
        assert host.supervisor(b).is_running(), b.handle
        routes = in_box(b.handle, "ip", "route").stdout
        assert "default" not in routes and "10.213.200.0/23 via" in routes, routes
        assert "timeout:1" in in_box(b.handle, "cat", "/etc/resolv.conf").stdout


def test_cgroup_limits_equal_flavor(host, oc1):
    _, boxes, _ = oc1
    for b in boxes.values():
        assert host.cgroups.limits(b.handle) == (b.flavor.cpus, b.flavor.memory_mb)
        sup_pid = int((Path(b.extra["box_dir"]) / "supervisord.pid").read_text())
        assert sup_pid in host.cgroups.pids(b.handle)


def test_overlay_reaches_across_sites(host, oc1):
    _, boxes, overlay = oc1
    post = boxes["p0"]
    assert post.overlay_address == overlay.addresses["p0"]
    sock, t = serve_once(host, post, post.overlay_address, 7100)
    try:
        for name in ("c1", "c2", "c3"):
            assert reaches(host, boxes[name], post.overlay_address, 7100, within=5), name
    finally:
        t.stop.set()
    deadline = time.monotonic() + 3
    for name in ("c1", "c2", "c3"):  # the overlay health responder of each box
        while not reaches(host, post, boxes[name].overlay_address, 9001):
            assert time.monotonic() < deadline, f"no health answer from {name}"
            time.sleep(0.05)


def test_set_hosts_in_place(host, oc1):
    _, boxes, _ = oc1
    b = boxes["c1"]
    sup = host.supervisor(b)
    before = os.stat(sup.etc_dir / "hosts").st_ino
    sup.set_hosts({"p0": boxes["p0"].overlay_address, "datalake": "10.250.200.99"})
    assert os.stat(sup.etc_dir / "hosts").st_ino == before
    assert "datalake" in in_box(b.handle, "cat", "/etc/hosts").stdout


def test_two_overclouds_are_isolated(host, oc1):
    oc, boxes, _ = oc1
    other = new_id()
    theirs = acquire_all(host, [spec(other, "p0", "t-a", "post"), spec(other, "c1", "t-b")])
    try:
        host.join_overlay(other, theirs)
        assert theirs[0].overlay_address != boxes["p0"].overlay_address
        _, t = serve_once(host, boxes["p0"], "0.0.0.0", 7200)
        _, t2 = serve_once(host, theirs[0], "0.0.0.0", 7200)
        try:
            # positive controls: each OverCloud reaches its own Post
            assert reaches(host, boxes["c2"], boxes["p0"].overlay_address, 7200, within=5)
            assert reaches(host, theirs[1], theirs[0].overlay_address, 7200, within=5)
            for src in theirs:
                for dst in boxes.values():
                    for addr in (dst.overlay_address, dst.address):
                        assert not reaches(host, src, addr, 7200, 0.3), (src.name, addr)
            for src in boxes.values():
                for addr in (theirs[0].overlay_address, theirs[0].address):
                    assert not reaches(host, src, addr, 7200, 0.3), (src.name, addr)
            if HAVE_PING:
                def ping(src, addr):
                    return in_box(src.handle, "ping", "-c1", "-W1", addr).returncode == 0

                jobs = [(theirs[0], boxes["c1"].address), (theirs[0], boxes["c3"].address),
                        (theirs[1], boxes["p0"].overlay_address), (boxes["c2"], theirs[0].address)]
                with ThreadPoolExecutor(len(jobs) + 1) as pool:
                    own = pool.submit(ping, boxes["c2"], boxes["p0"].overlay_address)
                    bad = [pool.submit(ping, s, a) for s, a in jobs]
                    assert own.result(), "ping inside one OverCloud over the overlay"
                    assert not any(f.result() for f in bad)
        finally:
            t.stop.set()
            t2.stop.set()
    finally:
        release_all(host, theirs)


def test_teardown_refused_while_boxes_remain(host, oc1):
    with pytest.raises(UnderCloudError, match="boxes remain"):
        host.teardown_sites()


def test_idempotent_acquire(host, oc1):
    oc, boxes, _ = oc1
    pid = (Path(boxes["c1"].extra["box_dir"]) / "supervisord.pid").read_text()
    again = host.site("t-a").acquire([spec(oc, "c1", "t-a")])
    assert again[0].handle == boxes["c1"].handle and again[0].address == boxes["c1"].address
    assert again[0].overlay_address == boxes["c1"].overlay_address
    assert (Path(boxes["c1"].extra["box_dir"]) / "supervisord.pid").read_text() == pid
    assert len([lease for lease in host.leases.boxes() if lease["overcloud_id"] == oc]) == 4


def test_the_gateway_keeps_its_mac_as_boxes_come_and_go(host, oc1):
    """A bridge left to itself takes its ports' lowest MAC: deleting one box then cut every
    other box of the site off the host until ARP noticed (a preserve timed out)."""
    oc, boxes, _ = oc1
    mac = Path("/sys/class/net/octb/address").read_text().strip()
    assert mac == net.bridge_mac("octb") and Path("/sys/class/net/octb/addr_assign_type").read_text().strip() == "3"
    gateway, c2 = host.gateways["t-b"], boxes["c2"].handle
    # the host pings the box (boxes may not open anything to the host but the store's S3 port)
    assert host_pings(boxes["c2"].address)
    assert mac in in_box(c2, "ip", "neigh", "show", gateway).stdout  # c2 holds the gateway's MAC
    for _ in range(3):  # a box with the lowest MAC on the bridge would have changed it, coming or going
        extra = acquire_all(host, [spec(new_id(), "c9", "t-b")])
        release_all(host, extra)
        assert Path("/sys/class/net/octb/address").read_text().strip() == mac
        assert host_pings(boxes["c2"].address)


def test_a_second_state_dir_on_the_same_bridges_leaves_them_alone(host, oc1, tmp_path):
    """Another Tower configured with the same bridges knows none of oc1's boxes: tearing its
    sites down would cut them off. It refuses, and everything stays."""
    oc, boxes, _ = oc1
    other = LocalHost(tmp_path / "other", SITES, OVERLAY, max_boxes=40)
    with pytest.raises(UnderCloudError, match="bridge octa still carries ocv"):
        other.teardown_sites()
    assert net.link_exists("octa") and net.link_exists("octb")
    assert host_pings(boxes["c2"].address)
    assert "fwd_" in subprocess.run(["nft", "list", "table", "inet", net.HOST_TABLE], capture_output=True, text=True).stdout


def test_a_second_tower_never_takes_over_a_box_whose_handle_it_shares(host, oc1, tmp_path):
    """Handles carry 8 hex digits of the OverCloud id: another Tower (another state dir, same
    bridges) making a box with oc1's handle is refused before it leases anything, so undoing
    its acquire never touches oc1's box; and its sweep of that id finds nothing to remove."""
    oc, boxes, _ = oc1
    other = LocalHost(tmp_path / "other", SITES, OVERLAY, max_boxes=40)
    twin = oc[:8] + new_id()[8:]  # a different OverCloud whose id starts the same
    with pytest.raises(UnderCloudError, match="is not this Tower's"):
        other.site("t-b").acquire([spec(twin, "c2", "t-b")])
    assert other.list_tagged(twin) == [] and other.list_tagged(oc) == [] and other.list_tagged() == []
    assert other.sweep({oc, twin}) == []
    c2 = boxes["c2"].handle
    assert c2 in boxnetns.list_netns() and host.leases.box(c2) is not None
    _, t = serve_once(host, boxes["c2"], boxes["c2"].overlay_address, 7300)
    try:  # and it still works, across the sites
        assert reaches(host, boxes["c1"], boxes["c2"].overlay_address, 7300, within=5)
    finally:
        t.stop.set()
    assert {r.kind for r in host.list_tagged(oc)} >= {"netns", "veth", "cgroup", "lease"}


def test_every_box_resource_carries_the_tower_id_and_is_found_by_it(host):
    """The namespace (its lo), the host veth, vx0 and the cgroups carry this Tower's tag; a box
    whose lease and state dir are gone is still found, and swept, by those tags alone."""
    oc = new_id()
    boxes = acquire_all(host, [spec(oc, "p0", "t-a", "post"), spec(oc, "c1", "t-b")])
    host.join_overlay(oc, boxes)
    tag = host.tag(oc, "c1")
    assert tag.endswith(":" + host.tower_id) and len(host.tower_id) == 16
    h = boxes[1].handle
    assert net.netns_alias(h) == tag and net.box_vxlan_alias(h) == tag and host.cgroups.tag(h) == tag
    assert (net.host_veth_name(h), oc, "c1", "veth", host.tower_id) in net.host_tagged_links(host.bridges)
    # the state dir forgets the box: the kernel's tags still say it is this Tower's
    host.leases.delete_box(h)
    shutil.rmtree(host.boxes_dir / h)
    kinds = {r.kind for r in host.list_tagged(oc) if h in r.name or net.host_veth_name(h) in r.name}
    assert {"netns", "veth", "cgroup"} <= kinds, kinds
    assert oc in {r.overcloud_id for r in host.list_tagged()}
    host.sweep({oc})
    assert host.list_tagged(oc) == [] and h not in boxnetns.list_netns()


def test_release_leaves_nothing(host):
    oc = new_id()
    boxes = acquire_all(host, [spec(oc, "p0", "t-a", "post"), spec(oc, "c1", "t-b")])
    host.join_overlay(oc, boxes)
    host.supervisor(boxes[1]).add_program("sleeper", "sleep 600", startsecs=0)
    handles = [b.handle for b in boxes]
    t0 = time.perf_counter()
    release_all(host, boxes)
    print(f"\nrelease 2 boxes {time.perf_counter() - t0:.3f}s")
    assert not set(handles) & set(boxnetns.list_netns())
    assert oc not in subprocess.run(["ip", "-d", "link"], capture_output=True, text=True).stdout
    assert not set(handles) & set(host.cgroups.list_handles())
    for h in handles:
        assert not Path(f"/etc/netns/{h}").exists()
        assert not (host.state_dir / "leases" / f"{h}.json").exists()
        assert not (host.boxes_dir / h).exists()
    assert host.list_tagged(oc) == []
    release_all(host, boxes)  # idempotent


def test_failed_acquire_undoes_its_boxes(host):
    oc = new_id()
    with pytest.raises(UnderCloudError) as err:
        host.site("t-a").acquire([spec(oc, "c1", "t-a"), spec(oc, "b/d", "t-a")])
    assert err.value.overcloud_id == oc and err.value.site == "t-a"
    assert err.value.__cause__ is not None
    assert host.list_tagged(oc) == []


def test_half_made_box_is_found_and_swept(host):
    oc = new_id()
    handle = box_handle(oc, "c1")
    # what a Tower killed mid-acquire leaves: lease, netns + veth, cgroup, no supervisord
    lease, _ = host.leases.reserve_box(
        handle, {"overcloud_id": oc, "name": "c1", "role": "cluster", "site": "t-a"}, SITES[0].cidr
    )
    net.create_box_network(handle, net.tag(oc, "c1"), "octa", lease["address"], 24, "10.213.200.1", "10.213.200.0/23")
    host.cgroups.create(handle, 0.5, 256)
    stray = f"oc-{oc[:8]}-zz"  # a namespace with no lease at all, tagged by this Tower
    subprocess.run(["ip", "netns", "add", stray], check=True)
    subprocess.run(["ip", "-n", stray, "link", "set", "lo", "alias", host.tag(oc, "zz")], check=True)
    foreign = f"oc-{oc[:8]}-zy"  # the same prefix, no lease, no tag of ours: not this Tower's
    subprocess.run(["ip", "netns", "add", foreign], check=True)
    try:
        kinds = {r.kind for r in host.list_tagged(oc)}
        assert {"lease", "netns", "veth", "cgroup"} <= kinds
        assert any(r.name == f"netns {stray}" for r in host.list_tagged(oc))
        assert not any(foreign in r.name for r in host.list_tagged(oc))
        removed = host.sweep({oc})
        assert any(r.kind == "veth" for r in removed)
        assert host.list_tagged(oc) == []
        assert stray not in boxnetns.list_netns() and handle not in boxnetns.list_netns()
        assert foreign in boxnetns.list_netns()
    finally:
        subprocess.run(["ip", "netns", "del", foreign], capture_output=True)


def test_concurrent_acquires_get_distinct_addresses(host):
    ids = [new_id() for _ in range(3)]
    # separate LocalHost objects on one state dir: only the file lock serialises them
    hosts = [LocalHost(host.state_dir, SITES, OVERLAY, max_boxes=40) for _ in ids]
    specs = [[spec(oc, "c1", "t-a"), spec(oc, "c2", "t-a")] for oc in ids]
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda hs: hs[0].site("t-a").acquire(hs[1]), zip(hosts, specs)))
    try:
        addresses = [b.address for boxes in results for b in boxes]
        assert len(addresses) == len(set(addresses)) == 6
        with ThreadPoolExecutor(3) as pool:
            overlays = list(pool.map(lambda x: x[0].join_overlay(x[1], x[2]), zip(hosts, ids, results)))
        assert len({o.subnet for o in overlays}) == 3 and len({o.vni for o in overlays}) == 3
    finally:
        for boxes in results:
            host.site("t-a").release(boxes)
    # released addresses are reused
    again = host.site("t-a").acquire([spec(ids[0], "c1", "t-a")])
    try:
        assert again[0].address in addresses
    finally:
        host.site("t-a").release(again)


def test_privileges_message_when_not_root():
    _require_root()
    code = (
        "import os\n"
        "from overcloud.underclouds.local import LocalHost\n"
        "os.setgid(65534); os.setuid(65534)  # drops every capability\n"
        "LocalHost.check_privileges()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert proc.returncode != 0
    assert "the local UnderCloud needs root or CAP_NET_ADMIN" in proc.stderr
