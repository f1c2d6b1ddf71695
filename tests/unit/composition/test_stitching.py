"""Stitching from repository rows: VIPs, hosts entries, the nft table, service variables."""

from __future__ import annotations

import dataclasses
import types

import yaml

from overcloud.composition import pattern as pat
from overcloud.composition import stitching
from test_pattern import DEPLOY


def rows_and_boxes():
    p = pat.parse([d for d in yaml.safe_load_all(DEPLOY) if d])
    d = p.deployments[0]
    svc = {**dataclasses.asdict(p.services[0]), "vip": stitching.vip(0)}
    svc["ports"][0].update(port=80, target_port="http")
    spec = {"deployment": dataclasses.asdict(d), "services": [svc]}
    replicas = [{"name": "web-0", "box": "c1", "ready": True}, {"name": "web-1", "box": "c3", "ready": True},
                {"name": "web-2", "box": "c4", "ready": False}]
    boxes = {n: types.SimpleNamespace(name=n, site=site, overlay_address=f"10.9.0.{i + 2}", address=f"10.8.0.{i + 2}", role="cluster")
             for i, (n, site) in enumerate([("c1", "local-a"), ("c3", "local-b"), ("c4", "local-b")])}
    return [types.SimpleNamespace(spec=spec, replicas=replicas, name="web")], boxes


def test_vips_are_stable_and_reused():
    assert stitching.vip(0) == "198.18.0.1"
    assert stitching.next_vips(["198.18.0.1", "198.18.0.3"], 2) == ["198.18.0.2", "198.18.0.4"]


def test_services_hosts_env_and_nat():
    rows, boxes = rows_and_boxes()
    svcs = stitching.services(rows, boxes)
    web = svcs["web"]
    assert web["vip"] == "198.18.0.1" and [e["replica"] for e in web["endpoints"]] == ["web-0", "web-1"]  # ready only
    assert web["endpoints"][0]["targets"] == {80: 8070}
    assert stitching.hosts({"c1": "10.9.0.2"}, svcs) == {"c1": "10.9.0.2", "web": "198.18.0.1"}
    assert stitching.service_env(svcs) == {"WEB_SERVICE_HOST": "198.18.0.1", "WEB_SERVICE_PORT": "80"}
    # a box of local-b sends to its site's replica only; a box of another site to all of them
    edge = stitching.nat_script(svcs, "local-b")
    assert "ip daddr 198.18.0.1 tcp dport 80 dnat ip addr . port to numgen inc mod 1 map { 0 : 10.9.0.3 . 8070 }" in edge
    cloud = stitching.nat_script(svcs, "local-a")
    assert "mod 1 map { 0 : 10.9.0.2 . 8070 }" in cloud
    other = stitching.nat_script(svcs, "local-c")
    assert "mod 2 map { 0 : 10.9.0.2 . 8070, 1 : 10.9.0.3 . 8070 }" in other
    assert other.startswith("table ip overcloud_svc\ndelete table ip overcloud_svc\n")  # atomic replace
    assert "ip daddr 198.18.0.0/15 meta l4proto tcp reject with tcp reset" in other
