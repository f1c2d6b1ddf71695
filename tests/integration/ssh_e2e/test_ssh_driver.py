"""The ssh UnderCloud driver on the simulated hosts, without a Tower: boxes acquired on ssh-a
and ssh-b land on the hosts by free capacity, their sessions run commands, programs and
files in them, boxes on different hosts and sites reach each other over the overlay (VXLAN
across hosts inside a site, through WireGuard between sites), and release leaves nothing on
any host (checked over SSH and from outside)."""

from __future__ import annotations

import contextlib
import ipaddress
import time
import uuid

import pytest

from overcloud.underclouds.base import BoxSpec, resolve_flavor

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]


def test_boxes_on_two_sites_reach_each_other_and_release_leaves_nothing(world, hosts_lab):  # noqa: F811
    oc = uuid.uuid4().hex
    small = resolve_flavor("small")
    a, b = world.sites["ssh-a"], world.sites["ssh-b"]
    t0 = time.perf_counter()
    boxes_a = a.acquire([BoxSpec(oc, "p0", "post", "ssh-a", small), BoxSpec(oc, "c1", "cluster", "ssh-a", small)])
    boxes_b = b.acquire([BoxSpec(oc, "c2", "cluster", "ssh-b", small)])
    print(f"[measure] acquire 2 + 1 boxes: {time.perf_counter() - t0:.2f}s")
    boxes = boxes_a + boxes_b
    try:
        # placement: the two boxes of ssh-a on its two hosts (equal free capacity), c2 on ssh-b
        assert {x.extra["host"] for x in boxes_a} == {"och-a1", "och-a2"}
        assert boxes_b[0].extra["host"] in ("och-b1", "och-b2")
        # again: the same boxes, found where they are
        again = a.acquire([BoxSpec(oc, "p0", "post", "ssh-a", small), BoxSpec(oc, "c1", "cluster", "ssh-a", small)])
        assert [(x.handle, x.extra["host"]) for x in again] == [(x.handle, x.extra["host"]) for x in boxes_a]
        for x in boxes:
            host = x.extra["host"]
            assert x.handle in hosts_lab.outside(host, ["ip", "netns", "list"]).stdout
            s = world.session(x)
            assert s.run(["hostname"]).stdout.decode().strip() == host
            assert x.address in s.run(["ip", "-br", "addr", "show", "eth0"]).stdout.decode()
            s.put_file("probe/x.txt", b"hello " + x.name.encode())
            assert s.get_file("probe/x.txt") == b"hello " + x.name.encode()
            assert s.supervisor_running()
        t0 = time.perf_counter()
        overlay = a.join_overlay(oc, boxes)
        print(f"[measure] overlay over 3 hosts, 2 sites: {time.perf_counter() - t0:.2f}s")
        assert set(overlay.addresses) == {"p0", "c1", "c2"}
        p0, c1, c2 = boxes
        sp = world.session(p0)
        # VXLAN across hosts inside ssh-a, and through WireGuard to ssh-b, at the MTU the WAN
        # allows across sites (1500 - 80 - 50): a packet of exactly that size with DF crosses
        mtu = world.overlay_mtu({"ssh-a", "ssh-b"}, list(world.hosts))
        assert mtu == 1370, mtu
        assert f"mtu {mtu} " in sp.run(["ip", "link", "show", "vx0"]).stdout.decode()
        for peer in (c1, c2):
            r = sp.run(["ping", "-c", "1", "-W", "3", "-M", "do", "-s", str(mtu - 28), peer.overlay_address], check=False)
            assert r.returncode == 0, (peer.name, r.stdout, r.stderr)
        deadline = time.monotonic() + 20
        while not sp.tcp_check(c2.overlay_address, 9001, timeout=1.0):  # c2's health answers on the overlay
            assert time.monotonic() < deadline, "c2's health port never answered across sites"
            time.sleep(0.3)
        sock = sp.connect_tcp(c2.overlay_address, 9001)
        try:
            sock.settimeout(10)
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
        finally:
            sock.close()
        assert c2.handle.encode() in data
        # a program, and HTTP from the box over connect_tcp
        world.session(c2).add_program("web", ["/usr/bin/python3", "-m", "http.server", "--bind",
                                              c2.overlay_address, "8080"], directory=world.session(c2).box_dir)
        deadline = time.monotonic() + 20
        while world.session(c2).program_states().get("web") != "RUNNING" or not sp.tcp_check(c2.overlay_address, 8080):
            assert time.monotonic() < deadline, world.session(c2).tail_log("web", "err")
            time.sleep(0.3)
        status, _, body = sp.http("GET", f"http://{c2.overlay_address}:8080/")
        assert status == 200 and b"logs" in body
        assert world.session(c2).remove_programs(["web"]) == ["web"]
        # a box of ssh-a does not reach a box of another OverCloud's... (isolation: not here)
    finally:
        t0 = time.perf_counter()
        world.leave_overlay(oc, boxes)
        a.release(boxes_a)
        b.release(boxes_b)
        print(f"[measure] leave overlay + release 3 boxes: {time.perf_counter() - t0:.2f}s")
    assert world.list_tagged(oc) == []
    for host in ("och-a1", "och-a2", "och-b1", "och-b2"):
        assert oc[:8] not in hosts_lab.outside(host, ["ip", "netns", "list"]).stdout
        ps = hosts_lab.outside(host, ["ps", "-eo", "args"]).stdout
        assert oc[:8] not in ps


def test_an_acquire_that_fails_on_one_host_leaves_nothing_on_the_others(world, hosts_lab):  # noqa: F811
    """All or nothing across hosts: c1 is placed on och-a2 (most room, then the name), where a
    namespace of its handle exists that this Tower did not make; a2's make-box refuses it, and
    the p0 made meanwhile on och-a1 is destroyed again. The foreign namespace is left alone."""
    from overcloud.underclouds.base import UnderCloudError
    from overcloud.underclouds.local import box_handle

    oc = uuid.uuid4().hex
    small = resolve_flavor("small")
    foreign = box_handle(oc, "c1")
    hosts_lab.outside("och-a2", ["ip", "netns", "add", foreign])
    try:
        with pytest.raises(UnderCloudError) as err:
            world.sites["ssh-a"].acquire([BoxSpec(oc, "p0", "post", "ssh-a", small),
                                          BoxSpec(oc, "c1", "cluster", "ssh-a", small)])
        assert "och-a2" in str(err.value) and "not this Tower's" in str(err.value), str(err.value)
        assert world.list_tagged(oc) == []
        assert oc[:8] not in hosts_lab.outside("och-a1", ["ip", "netns", "list"]).stdout
        assert foreign in hosts_lab.outside("och-a2", ["ip", "netns", "list"]).stdout
    finally:
        hosts_lab.outside("och-a2", ["ip", "netns", "del", foreign])


def _serve(world, box, port: int) -> None:
    """A TCP listener on every address of ``box`` (its site address and its overlay address)."""
    s = world.session(box)
    s.add_program("listener", ["/usr/bin/python3", "-m", "http.server", "--bind", "0.0.0.0", str(port)],
                  directory=s.box_dir)
    deadline = time.monotonic() + 20
    while not s.tcp_check("127.0.0.1", port, timeout=1.0):
        assert time.monotonic() < deadline, s.tail_log("listener", "err")
        time.sleep(0.3)


def _heard_on_vx0(session, src: str, send) -> bool:
    """Whether anything from ``src`` (IP or ARP) comes out of the box's VXLAN device while
    ``send()`` runs: tcpdump in the box, started first, for at most 6 s."""
    import threading

    out: dict[str, object] = {}
    t = threading.Thread(target=lambda: out.update(r=session.run(
        ["timeout", "6", "tcpdump", "-n", "-l", "-i", "vx0", "-c", "1", "host", src], check=False, timeout=15)))
    t.start()
    time.sleep(1.5)  # tcpdump is listening
    send()
    t.join(20)
    r = out["r"]
    return r.returncode == 0 and b"1 packet captured" in r.stderr


def test_two_overclouds_do_not_reach_each_other_across_hosts_and_sites(world, hosts_lab):  # noqa: F811
    """Isolation between OverClouds holds across hosts (issue 11, point 5). X = x0 (ssh-a) + x1
    (ssh-b); Y = y0, y1 (ssh-a: one of them on x0's host, the other on the other host) + y2
    (ssh-b). Hosts route every box subnet to each other, so x0 can send to Y's boxes' site
    addresses: their firewalls must drop it. x0 also forges Y's VXLAN (Y's VNI, sent to a Y box
    from x0's own address): dropped, since a box takes VXLAN only from its own OverCloud's peers."""
    small = resolve_flavor("small")
    x, y = uuid.uuid4().hex, uuid.uuid4().hex
    a, b = world.sites["ssh-a"], world.sites["ssh-b"]
    xa = a.acquire([BoxSpec(x, "x0", "post", "ssh-a", small)])
    xb = b.acquire([BoxSpec(x, "x1", "cluster", "ssh-b", small)])
    ya = a.acquire([BoxSpec(y, "y0", "post", "ssh-a", small), BoxSpec(y, "y1", "cluster", "ssh-a", small)])
    yb = b.acquire([BoxSpec(y, "y2", "cluster", "ssh-b", small)])
    xs, ys = xa + xb, ya + yb
    try:
        assert {bx.extra["host"] for bx in ya} == {"och-a1", "och-a2"}  # one Y box shares x0's host
        ox = a.join_overlay(x, xs)
        oy = a.join_overlay(y, ys)
        assert ox.vni != oy.vni and ox.subnet != oy.subnet
        x0, x1 = xs
        for bx in ys + [x1]:
            _serve(world, bx, 8080)
        sx = world.session(x0)
        # its own OverCloud: across sites, on the overlay
        assert sx.tcp_check(x1.overlay_address, 8080, timeout=3.0)
        # and Y sees its own boxes (the listeners work), also across sites
        sy = world.session(ya[0])
        for peer in ys[1:]:
            assert sy.tcp_check(peer.overlay_address, 8080, timeout=3.0), peer.name
        # another OverCloud's boxes: not on their overlay addresses, not on their routed site
        # addresses, whether on x0's host, the other host of the site, or the other site
        for peer in ys:
            for addr in (peer.overlay_address, peer.address):
                assert not sx.tcp_check(addr, 8080, timeout=1.5), (peer.name, peer.extra["host"], addr)
                assert not sx.tcp_check(addr, 9001, timeout=1.5), (peer.name, peer.extra["host"], addr, "health")
        # a forged VXLAN of Y's VNI from x0 to each Y box, with an address of Y's subnet
        spare = str(list(ipaddress.ip_network(oy.subnet).hosts())[-2])
        sx.run(["ip", "link", "add", "vxforge", "type", "vxlan", "id", str(oy.vni), "dstport", "4789",
                "dev", "eth0"])
        sx.run(["ip", "addr", "add", f"{spare}/24", "dev", "vxforge"])
        sx.run(["ip", "link", "set", "vxforge", "up"])
        for peer in ys:
            sx.run(["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vxforge", "dst", peer.address])
        for peer in ys:
            # nothing of it comes out of the peer's vx0 (the capture's control: a real peer does)
            heard = _heard_on_vx0(world.session(peer), spare, lambda p=peer: sx.run(
                ["ping", "-c", "3", "-i", "0.3", "-W", "1", "-I", "vxforge", p.overlay_address], check=False))
            assert not heard, (peer.name, peer.extra["host"])
            assert not sx.tcp_check(peer.overlay_address, 8080, timeout=1.5), peer.name
        y0, y1 = ya
        assert _heard_on_vx0(world.session(y1), y0.overlay_address, lambda: sy.run(
            ["ping", "-c", "3", "-i", "0.3", "-W", "1", y1.overlay_address], check=False))
        # the forging box's VXLAN did reach the hosts' wires: Y's own boxes still talk
        assert sy.tcp_check(ys[2].overlay_address, 8080, timeout=3.0)
    finally:
        for bx in ys + [xs[1]]:
            with contextlib.suppress(Exception):  # the box goes below anyway
                world.session(bx).remove_programs(["listener"])
        world.leave_overlay(x, xs)
        world.leave_overlay(y, ys)
        a.release(xa + ya)
        b.release(xb + yb)
    assert world.list_tagged(x) == [] and world.list_tagged(y) == []
