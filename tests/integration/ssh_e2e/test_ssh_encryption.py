"""Between sites only WireGuard crosses the WAN, for a real OverCloud's DataLake traffic.

A Tower on the hosts lab's sites file creates the heterogeneous OverCloud (Post + cluster on
ssh-a, a cluster on ssh-b). A cluster box at ssh-b then PUTs and GETs a known random payload
to and from the Post's S3 at ssh-a through the driver's session (``loopback_relay``: the
connection is opened from the box, on the overlay), while tcpdump captures the lab's WAN bridge
(``ocw-wan``, in the root namespace) without the Tower's own SSH to the hosts: every packet
left is WireGuard UDP, there are enough of them to carry the payload both ways, and no slice of
the payload appears. Control: the same transfer from the cluster at ssh-a crosses the site's
LAN bridge in clear VXLAN (as docs/remote-hosts.md says), and the same search finds it there.
"""

from __future__ import annotations

import os
import re
import time
from urllib.parse import urlsplit

import pytest

from pcap import Capture, leaked
from lab_tower import HOSTS, teardown_hosts
from towers import SIDE_OVERLAY, SIDE_SITES, TowerProcess

pytestmark = [pytest.mark.root, pytest.mark.timeout(600)]

HETERO = {"provider": "heterogeneous", "ssh-a": {"number": "1", "size": "small", "post": "yes"},
          "ssh-b": {"number": "1", "size": "small"}}
TOWER_WAN = "10.77.0.1"  # the root namespace's address on the lab's WAN bridge
WG_PORT = 51820
PAYLOAD = 4 * 1024 * 1024


def _box(oc: str, view: dict):
    from overcloud.underclouds.base import Box, Flavor

    return Box(overcloud_id=oc, name=view["name"], role=view["role"], site=view["site"], flavor=Flavor(**view["flavor"]),
               handle=view["handle"], address=view["address"], overlay_address=view["overlay_address"])


def _world(hosts_lab, state_dir):
    """The ssh driver of the Tower's own state (keys, leases), in this process: its sessions."""
    from overcloud.config import tower_identity
    from overcloud.identity.secrets import SecretBox, load_key
    from overcloud.underclouds.ssh.driver import SSHUnderCloud

    box = SecretBox(load_key(state_dir))
    return SSHUnderCloud(hosts_lab.sites(), state_dir=state_dir / "ssh", tower_id=tower_identity(state_dir),
                         seal=box.seal, unseal=box.open, bundle_cache=state_dir / "host-bundle")


def _put_get(session, s3_endpoint: str, creds: dict, key: str, payload: bytes) -> tuple[bytes, float]:
    """PUT then GET ``payload`` from the session's box to the DataLake's S3, through the session."""
    from overcloud.components.datalake import BUCKET
    from overcloud.datalake import clients

    u = urlsplit(s3_endpoint)
    t0 = time.perf_counter()
    with session.loopback_relay(u.hostname, u.port) as addr:
        s3 = clients.s3_client(f"http://{addr}", creds["access_key"], creds["secret_key"])
        s3.put_object(Bucket=BUCKET, Key=key, Body=payload)
        got = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        s3.delete_object(Bucket=BUCKET, Key=key)
    return got, time.perf_counter() - t0


def test_cross_site_datalake_traffic_is_only_wireguard_on_the_wan(hosts_lab, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("OC_TEST_SITES_FILE", str(hosts_lab.sites_file))  # for teardown_hosts
    tower = TowerProcess(tmp_path / "tower", sites=SIDE_SITES, overlay=SIDE_OVERLAY,
                         OVERCLOUD_SITES_FILE=str(hosts_lab.sites_file)).start()
    world = None
    oc = None
    try:
        with tower.client() as c:
            d = c.post("/overclouds", json=HETERO, params={"wait": "true"}, timeout=300).json()
            assert d["status"] == "READY", (d.get("error"), d.get("error_task"))
            oc = d["overcloud_ID"]
            detail = c.get(f"/overclouds/{oc}").json()
            creds = c.get(f"/overclouds/{oc}/datalake/credentials").json()
            # the Tower counts its SSH exchanges with every host (/metrics; bench/remote.py reads it)
            metrics = c.get("/metrics").text
        trips = dict(re.findall(r'^overcloud_ssh_round_trips_total\{host="([^"]+)"\} (\S+)$', metrics, re.M))
        assert set(trips) == set(HOSTS) and all(float(n) > 0 for n in trips.values()), trips
        calls = dict(re.findall(r'^overcloud_ssh_agent_calls_total\{host="([^"]+)"\} (\S+)$', metrics, re.M))
        assert set(calls) == set(HOSTS) and all(float(n) > 0 for n in calls.values()), calls

        post = _box(oc, detail["post"])
        by_site = {cl["site"]: _box(oc, cl) for cl in detail["clusters"]}
        assert set(by_site) == {"ssh-a", "ssh-b"}, detail["clusters"]
        world = _world(hosts_lab, tower.state_dir)
        at_b, at_a = world.host_of(by_site["ssh-b"]), world.host_of(by_site["ssh-a"])
        # the control needs the ssh-a cluster on the other host of its site than the Post
        assert at_a.name != world.host_of(post).name, "Post and cluster share a host: placement changed?"

        payload, control = os.urandom(PAYLOAD), os.urandom(PAYLOAD)
        wan = Capture(None, "ocw-wan", tmp_path / "wan.pcap", expr=f"not (host {TOWER_WAN} and tcp port 22)")
        lan = Capture(None, "ocw-lan-a", tmp_path / "lan.pcap")
        try:
            got, took = _put_get(world.session(by_site["ssh-b"]), creds["s3_endpoint"], creds, "enc/cross-site", payload)
            got_a, _ = _put_get(world.session(by_site["ssh-a"]), creds["s3_endpoint"], creds, "enc/same-site", control)
        finally:
            wan_bytes, lan_bytes = wan.stop(), lan.stop()
        assert got == payload and got_a == control

        # link housekeeping carries no data: ARP, and the kernel's link-local ICMPv6 (router and
        # neighbour solicitations); everything else on the WAN must be WireGuard
        housekeeping = "arp or (icmp6 and src net fe80::/10)"
        not_wg = wan.read(f"not ({housekeeping}) and not (udp port {WG_PORT})")
        wg_packets = wan.count(f"udp port {WG_PORT}")
        from_b = wan.count(f"udp port {WG_PORT} and host {at_b.config.address}")
        print(f"\n[measure] PUT + GET of {PAYLOAD >> 20} MiB from {at_b.name} (ssh-b) to the Post's S3 on "
              f"{world.host_of(post).name} (ssh-a) through the session: {took:.2f} s; WAN capture without the "
              f"Tower's SSH: {wg_packets} WireGuard packets ({from_b} to or from {at_b.name}), {len(wan_bytes)} bytes, "
              f"{wan.count(housekeeping)} ARP/link-local ICMPv6")
        assert not_wg == "", f"not WireGuard on the WAN:\n{not_wg[:2000]}"
        assert from_b > 2 * PAYLOAD // 1500 and len(wan_bytes) > 2 * PAYLOAD  # it carried the payload both ways
        assert leaked(payload, wan_bytes) == []
        assert leaked(control, wan_bytes) == []
        # the control: inside ssh-a, box VXLAN runs in clear on the LAN, and the search finds it
        assert wan_bytes and len(leaked(control, lan_bytes)) > 100

        assert tower.delete_and_wait(oc, timeout=300)["status"] == "DELETED"
        oc = None
        for h in HOSTS:
            assert d["overcloud_ID"][:8] not in hosts_lab.outside(h, ["ip", "netns", "list"]).stdout, h
            assert d["overcloud_ID"][:8] not in hosts_lab.outside(h, ["ps", "-eo", "args"]).stdout, h
    finally:
        try:
            if world is not None:
                world.close()
            if oc is not None:
                tower.delete_and_wait(oc, timeout=300)
            tower.cleanup()
        finally:
            teardown_hosts(tower.state_dir)
