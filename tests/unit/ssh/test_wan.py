"""The WAN plan, keys, wg config, routes, MTU arithmetic and status parsing (no namespaces)."""

from __future__ import annotations

import base64
import json
import subprocess

import pytest
from cryptography.fernet import Fernet

from overcloud.identity.secrets import SecretBox
from overcloud.underclouds.ssh import wan


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(Fernet.generate_key())


def _host(name, site, n, keys, **kw) -> wan.WanHost:
    return wan.WanHost(
        name=name,
        site=site,
        wan_address=f"10.87.0.{n}",
        lan_address=f"10.88.{1 if site == 'a' else 2}.{n}",
        box_cidr=f"10.89.{n}.0/24",
        wg_address=f"10.89.250.{n}",
        keys=keys,
        **kw,
    )


@pytest.fixture
def plan(box) -> wan.WanPlan:
    return wan.WanPlan(tuple(
        _host(name, site, n, wan.make_keys(box.seal))
        for name, site, n in [("a1", "a", 11), ("a2", "a", 12), ("b1", "b", 21), ("b2", "b", 22)]
    ))


def test_keys_are_wg_keys_and_the_private_half_is_only_kept_sealed(box):
    sealed = []
    keys = wan.make_keys(lambda s: sealed.append(s) or box.seal(s))
    private = box.open(keys.sealed_private)
    assert sealed == [private] and private not in keys.sealed_private
    assert len(base64.b64decode(private)) == 32 and len(private) == 44
    # what `wg pubkey` says of the same private key
    out = subprocess.run(["wg", "pubkey"], input=private.encode(), capture_output=True, check=True).stdout.decode().strip()
    assert keys.public == out == wan.public_key(private)
    # clamped like `wg genkey`
    raw = base64.b64decode(private)
    assert raw[0] & 7 == 0 and raw[31] & 128 == 0 and raw[31] & 64
    assert keys.sealed_private not in repr(keys) and private not in repr(keys)


def test_two_key_pairs_differ(box):
    assert wan.make_keys(box.seal).public != wan.make_keys(box.seal).public


@pytest.mark.parametrize("bad", ["", "abc", base64.b64encode(b"x" * 31).decode(), "!" * 44])
def test_public_key_refuses_what_is_not_a_key(bad):
    with pytest.raises(ValueError, match="32 bytes"):
        wan.public_key(bad)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(name="a1"), "appears twice"),
        (dict(box_cidr="10.89.11.128/25"), "overlaps 10.89.11.0/24 of host a1"),
        (dict(box_cidr="10.89.300.0/24"), "is not a network"),
        (dict(wan_address="10.87.0.11"), "wan_address 10.87.0.11 is also wan_address of host a1"),
        (dict(wg_address="10.89.250.11"), "is also wg_address of host a1"),
        (dict(wg_address="10.89.11.7"), "lies in box_cidr 10.89.11.0/24 of host a1"),
        (dict(lan_address="lan-a"), "lan_address 'lan-a' is not an IP address"),
        (dict(lan_address="fd00::1"), "lan_address fd00::1 must be IPv4"),
        (dict(box_cidr="fd00:79::/64"), "box_cidr fd00:79::/64 must be IPv4"),
        (dict(site="a", lan_address="10.88.1.11"), "lan_address 10.88.1.11 is also lan_address of host a1"),
        (dict(interface="wireguard-overcloud0"), "interface"),
        (dict(interface="wg;rm"), "interface"),
        (dict(listen_port=70000), "listen_port 70000"),
        (dict(path_mtu=500), "path_mtu 500"),
        (dict(run_dir="run/wan"), "absolute path"),
    ],
)
def test_a_bad_plan_is_refused_naming_the_host_and_field(box, change, message):
    a1 = _host("a1", "a", 11, wan.make_keys(box.seal))
    other = _host("x9", "b", 29, wan.make_keys(box.seal))
    other = wan.WanHost(**{**other.__dict__, **change})
    with pytest.raises(ValueError, match=message):
        wan.WanPlan((a1, other))


def test_a_public_key_that_is_not_one_is_refused(box):
    keys = wan.WanKeys(public="not-a-key", sealed_private=box.seal("x"))
    with pytest.raises(ValueError, match="host a1: public key"):
        wan.WanPlan((_host("a1", "a", 11, keys),))


def test_config_has_a_peer_per_host_of_every_other_site_only(plan, box):
    private = box.open(plan.host("a1").keys.sealed_private)
    text = wan.render_config(plan, "a1", private)
    assert text.count("[Peer]") == 2
    assert f"PrivateKey = {private}" in text and "ListenPort = 51820" in text
    for peer in ("b1", "b2"):
        h = plan.host(peer)
        n = h.wan_address.rsplit(".", 1)[1]
        block = text.split(f"# {peer} (site b)\n")[1].split("\n\n")[0]
        assert f"PublicKey = {h.keys.public}" in block
        assert f"AllowedIPs = 10.89.{n}.0/24, 10.89.250.{n}/32" in block
        assert f"Endpoint = 10.87.0.{n}:51820" in block
        assert "PersistentKeepalive = 25" in block
    assert plan.host("a2").keys.public not in text  # same site: no WireGuard between them


def test_sites_may_reuse_a_lan_range(box):
    a1 = _host("a1", "a", 11, wan.make_keys(box.seal))
    b1 = wan.WanHost(**{**_host("b1", "b", 21, wan.make_keys(box.seal)).__dict__, "lan_address": a1.lan_address})
    assert wan.WanPlan((a1, b1)).host("b1").lan_address == "10.88.1.11"


def test_an_ipv6_endpoint_is_bracketed(box):
    a = _host("a1", "a", 11, wan.make_keys(box.seal))
    b = wan.WanHost(**{**_host("b1", "b", 21, wan.make_keys(box.seal)).__dict__, "wan_address": "2001:db8::21", "listen_port": 51999})
    text = wan.render_config(wan.WanPlan((a, b)), "a1", "k")
    assert "Endpoint = [2001:db8::21]:51999" in text


def test_routes_go_via_the_lan_inside_a_site_and_through_wireguard_across(plan):
    routes = wan.desired_routes(plan, "a1")
    assert routes == [
        wan.Route("10.89.12.0/24", via="10.88.1.12"),
        wan.Route("10.89.21.0/24", dev="ocwg0"),
        wan.Route("10.89.250.21/32", dev="ocwg0"),
        wan.Route("10.89.22.0/24", dev="ocwg0"),
        wan.Route("10.89.250.22/32", dev="ocwg0"),
    ]
    assert routes[0].ip_args() == f"10.89.12.0/24 via 10.88.1.12 proto {wan.ROUTE_PROTO}"
    assert routes[1].ip_args() == f"10.89.21.0/24 dev ocwg0 proto {wan.ROUTE_PROTO}"


def test_a_single_site_world_has_no_wireguard_peers(box):
    p = wan.WanPlan((_host("a1", "a", 11, wan.make_keys(box.seal)), _host("a2", "a", 12, wan.make_keys(box.seal))))
    assert p.cross_site_peers("a1") == []
    assert wan.desired_routes(p, "a1") == [wan.Route("10.89.12.0/24", via="10.88.1.12")]


def test_mtu_is_the_underlay_less_wireguard_and_vxlan():
    assert wan.wireguard_mtu(1500) == 1420
    assert wan.vxlan_mtu(wan_mtu=1500) == 1370  # across sites: 1500 - 80 - 50
    assert wan.vxlan_mtu(lan_mtu=1500) == 1450  # inside a site: in clear
    assert wan.vxlan_mtu(lan_mtu=9001, wan_mtu=1460) == 1330  # the narrowest path wins
    assert wan.vxlan_mtu(lan_mtu=1400, wan_mtu=9001) == 1350
    assert wan.vxlan_mtu() is None


def test_the_plan_survives_json(plan):
    again = wan.WanPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan


def test_status_names_peers_that_never_or_long_ago_shook_hands(plan):
    b1, b2 = plan.host("b1").keys.public, plan.host("b2").keys.public
    text = (
        "1000000\n"
        f"{b1}\t999990\n{b2}\t0\n@@\n"
        f"{b1}\t1234\t5678\n{b2}\t0\t148\n@@\n"
        f"{b1}\t10.87.0.21:51820\n{b2}\t(none)\n"
    )
    st = wan.parse_status(plan, "a1", text)
    assert st.interface_up and not st.healthy
    assert st.peers["b1"].fresh and st.peers["b1"].handshake_age_s == 10
    assert (st.peers["b1"].rx_bytes, st.peers["b1"].tx_bytes) == (1234, 5678)
    assert st.peers["b1"].endpoint == "10.87.0.21:51820"
    assert st.peers["b2"].handshake_age_s is None and st.peers["b2"].endpoint is None
    assert st.problems == ["peer b2 (site b, 10.87.0.22:51820): last handshake never"]
    stale = text.replace("999990", str(1000000 - 400))
    assert wan.parse_status(plan, "a1", stale).problems[0] == "peer b1 (site b, 10.87.0.21:51820): last handshake 400 s ago"


def test_status_names_a_peer_missing_from_the_interface(plan):
    b1 = plan.host("b1").keys.public
    st = wan.parse_status(plan, "a1", f"1000\n{b1}\t990\n@@\n{b1}\t1\t2\n@@\n{b1}\t10.87.0.21:51820\n")
    assert st.problems == ["peer b2 (site b) is not configured on the interface"]


def test_errors_name_the_host():
    err = wan.WanError("a1", "wg syncconf failed", site="a")
    assert str(err) == "host a1: wg syncconf failed" and err.site == "a" and err.host == "a1"


def test_the_local_runner_reports_a_missing_program_as_exit_127():
    run = wan.local_runner()
    assert run(["sh", "-c", "cat; exit 3"], input=b"in").returncode == 3
    assert run(["sh", "-c", "cat"], input=b"in").stdout == b"in"
    res = run(["/nonexistent/wg", "show"])
    assert res.returncode == 127 and b"nonexistent" in res.stderr
