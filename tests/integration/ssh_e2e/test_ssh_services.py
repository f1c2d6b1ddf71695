"""Workloads on remote boxes, and reaching them from the Tower's machine.

* Publishing (the driver alone): a NodePort published by a box of an ssh site answers the
  Tower's machine at the host's WAN address (plain urllib); its other ports do not; a second box
  on the same host is refused the same port; unpublish and release leave no table on the host.
"""

from __future__ import annotations

import secrets
import time
import urllib.error
import urllib.request
import uuid

import pytest
from cryptography.fernet import Fernet

from overcloud.composition import stitching
from overcloud.identity.secrets import SecretBox
from overcloud.underclouds.base import BoxSpec, UnderCloudError, resolve_flavor
from overcloud.underclouds.ssh.driver import SSHUnderCloud
from overcloud.underclouds.ssh.sites import load_ssh_sites_file

pytestmark = [pytest.mark.root, pytest.mark.timeout(600)]

HOSTS = ("och-a1", "och-a2", "och-b1", "och-b2")


@pytest.fixture(scope="module")
def world(hosts_lab, tmp_path_factory):  # noqa: F811
    box = SecretBox(Fernet.generate_key())
    w = SSHUnderCloud(load_ssh_sites_file(hosts_lab.sites_file), state_dir=tmp_path_factory.mktemp("ssh-state"),
                      tower_id=secrets.token_hex(8), seal=box.seal, unseal=box.open,
                      overlay_cidr="10.250.0.0/16", bundle_cache=tmp_path_factory.mktemp("bundle"))
    w.prepare()
    yield w
    try:
        w.teardown()
    finally:
        w.close()


def _get(url: str, timeout: float = 3.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - a lab address
        return r.status, r.read()


def _published_tables(hosts_lab, host: str) -> list[str]:
    out = hosts_lab.outside(host, ["nft", "list", "tables", "ip"]).stdout
    return [line.split()[-1] for line in out.splitlines() if "ocpub_" in line]


def test_a_nodeport_of_a_remote_box_answers_at_its_hosts_address(world, hosts_lab):  # noqa: F811
    oc = uuid.uuid4().hex
    small = resolve_flavor("small")
    site = world.sites["ssh-a"]
    boxes = site.acquire([BoxSpec(oc, f"c{i}", "cluster", "ssh-a", small) for i in (1, 2, 3)])
    try:
        world.join_overlay(oc, boxes)
        by_host: dict[str, list] = {}
        for b in boxes:
            by_host.setdefault(b.extra["host"], []).append(b)
        pair = next(v for v in by_host.values() if len(v) >= 2)  # three boxes, two hosts: two share one
        web, other = pair[0], pair[1]
        host = world.host_of(web)
        s = world.session(web)
        s.add_program("web", ["/usr/bin/python3", "-m", "http.server", "--bind", web.overlay_address, "8080"],
                      directory=s.box_dir)
        svcs = {"web": {"vip": None, "type": "NodePort", "ports": [(None, 80)], "node_ports": {80: 30900},
                        "endpoints": [{"replica": "web-0", "box": web.name, "site": web.site, "address": web.overlay_address,
                                       "site_address": web.address, "targets": {80: 8080}}]}}
        s.set_service_table(stitching.nat_script(svcs, web.site, web), stitching.VIP_CIDR)
        # not published yet: the host's address does not answer
        with pytest.raises(OSError):
            _get(f"http://{host.config.address}:30900/", timeout=2)
        address = s.publish([30900])
        assert address == host.config.address == s.published_address
        deadline = time.monotonic() + 20
        while True:  # the program may still be starting
            try:
                status, body = _get(f"http://{address}:30900/")
                break
            except OSError:
                assert time.monotonic() < deadline, s.tail_log("web", "err")
                time.sleep(0.3)
        assert status == 200 and b"Directory listing" in body
        assert any("published ports table" in r.name for r in world.list_tagged(oc))
        assert _published_tables(hosts_lab, host.name) == [f"ocpub_{web.handle.replace('-', '_')}_nodeport"]
        # only what the box publishes: its health port (9001) is not reachable at the host's address
        with pytest.raises(OSError):
            _get(f"http://{address}:9001/", timeout=2)
        # the same port on the same host is another box's: refused, naming who holds it
        with pytest.raises(UnderCloudError, match="already published"):
            world.session(other).publish([30900])
        # unpublish: gone; published again, then the box's release removes it
        s.unpublish()
        assert _published_tables(hosts_lab, host.name) == []
        with pytest.raises(OSError):
            _get(f"http://{address}:30900/", timeout=2)
        assert s.publish([30900]) == address
        assert _get(f"http://{address}:30900/")[0] == 200
    finally:
        world.leave_overlay(oc, boxes)
        site.release(boxes)
    assert world.list_tagged(oc) == []
    for h in HOSTS:
        assert _published_tables(hosts_lab, h) == []
