"""A cloud site makes one network per OverCloud, so its hosts of two OverClouds share the site but
not a LAN: the WAN plan routes in clear only between hosts of one site AND one ``lan`` (the host
label overcloud.io/lan the cloud site sets), and hosts of one site are never WireGuard peers. Without
this, wan.up on the second OverCloud's host ran `ip route replace <box subnet> via <the other's
address>` with a next hop not on its network ("Nexthop has invalid gateway", seen on the AWS lab)."""

from __future__ import annotations

from overcloud.underclouds.ssh import wan_plan as wp


def _host(name, site, lan_address, box_cidr, wg, lan=None, wan=None):
    return wp.WanHost(name=name, site=site, wan_address=wan or lan_address, lan_address=lan_address, box_cidr=box_cidr,
                      wg_address=wg, keys=wp.make_keys(lambda s: s), lan=lan)


def test_hosts_of_one_cloud_site_on_two_overcloud_networks_are_not_lan_peers():
    plan = wp.WanPlan((
        _host("oc-aaaaaaaa-p0", "aws-1", "10.91.0.10", "10.97.0.0/26", "100.79.0.1", lan="oc-aaaaaaaa"),
        _host("oc-aaaaaaaa-c1", "aws-1", "10.91.0.11", "10.97.0.64/26", "100.79.0.2", lan="oc-aaaaaaaa"),
        _host("oc-bbbbbbbb-p0", "aws-1", "10.91.1.10", "10.97.0.128/26", "100.79.0.3", lan="oc-bbbbbbbb"),
        _host("och-a1", "ssh-a", "10.78.1.11", "10.79.1.0/24", "100.79.0.4", wan="10.77.0.11"),
        _host("och-a2", "ssh-a", "10.78.1.12", "10.79.2.0/24", "100.79.0.5", wan="10.77.0.12"),
    ))
    assert [h.name for h in plan.same_site_peers("oc-aaaaaaaa-p0")] == ["oc-aaaaaaaa-c1"]
    assert plan.same_site_peers("oc-bbbbbbbb-p0") == []
    assert [h.name for h in plan.same_site_peers("och-a1")] == ["och-a2"]  # no label: the whole site, as before
    assert [h.name for h in plan.cross_site_peers("oc-bbbbbbbb-p0")] == ["och-a1", "och-a2"]
    routes = {r.dst: r for r in wp.desired_routes(plan, "oc-bbbbbbbb-p0")}
    assert "10.97.0.0/26" not in routes and "10.97.0.64/26" not in routes  # never via the other OverCloud's network
    assert routes["10.79.1.0/24"].dev == plan.host("oc-bbbbbbbb-p0").interface  # through WireGuard
    routes = {r.dst: r for r in wp.desired_routes(plan, "oc-aaaaaaaa-p0")}
    assert routes["10.97.0.64/26"].via == "10.91.0.11"
    config = wp.render_config(plan, "oc-aaaaaaaa-p0", "x")
    assert "oc-bbbbbbbb-p0" not in config and "och-a1" in config


def test_two_separate_lans_of_a_site_may_reuse_an_address_range():
    wp.WanPlan((
        _host("oc-aaaaaaaa-p0", "os-1", "10.90.0.10", "10.96.0.0/26", "100.79.0.1", lan="oc-aaaaaaaa", wan="192.0.2.1"),
        _host("oc-bbbbbbbb-p0", "os-1", "10.90.0.10", "10.96.0.64/26", "100.79.0.2", lan="oc-bbbbbbbb", wan="192.0.2.2"),
    ))
