"""Workloads on remote boxes, and reaching them from the Tower's machine.

* Publishing (the driver alone): a NodePort published by a box of an ssh site answers the
  Tower's machine at the host's WAN address (plain urllib); its other ports do not; a second box
  on the same host is refused the same port; unpublish and release leave no table on the host.
* A Tower on the lab's sites file (as test_ssh_tower): the smart-energy pattern on an
  OverCloud across ssh-a (Post + the cloud tier) and ssh-b (the edge tier: broker, sensors),
  on the process runtime, is READY; its NodePort dashboard answers urllib at the host's address;
  the DataLake's S3 published at the Post's host address refuses anonymous requests (403) and
  serves signed ones; logs come back; delete leaves nothing on any host (published tables
  included).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from overcloud.composition import stitching
from overcloud.underclouds.base import BoxSpec, UnderCloudError, resolve_flavor

from lab_tower import HOSTS, teardown_hosts

pytestmark = [pytest.mark.root, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[3]
SMART = ROOT / "patterns" / "smart_energy"
PATTERN = (SMART / "smart-energy.yaml").read_text()


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


def test_kill_processes_kills_the_boxs_processes_only(world, hosts_lab):  # noqa: F811
    """A replica's recorded PIDs are the box's host's: the session kills one only while it is in
    the box; a process of the host outside the box, with a PID it was given, is left alone."""
    oc = uuid.uuid4().hex
    site = world.sites["ssh-b"]
    [box] = site.acquire([BoxSpec(oc, "c1", "cluster", "ssh-b", resolve_flavor("small"))])
    host = box.extra["host"]
    outsider = hosts_lab.outside(host, ["sh", "-c", "setsid sleep 300 >/dev/null 2>&1 & echo $!"]).stdout.strip()
    try:
        s = world.session(box)
        s.add_program("sleeper", ["sleep", "300"], autorestart=False)
        deadline = time.monotonic() + 20
        while not (pid := next((p["pid"] for p in s.process_info() if p["name"] == "sleeper"), 0)):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        s.kill_processes([int(outsider), pid])
        deadline = time.monotonic() + 10
        while hosts_lab.outside(host, ["kill", "-0", str(pid)]).returncode == 0:
            assert time.monotonic() < deadline, "the box's process is still alive"
            time.sleep(0.2)
        assert hosts_lab.outside(host, ["kill", "-0", outsider]).returncode == 0  # not the box's: alive
    finally:
        hosts_lab.outside(host, ["kill", outsider])
        site.release([box])


# -- a Tower on the lab's sites ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def tower(hosts_lab, tmp_path_factory):  # noqa: F811
    import os

    from towers import SIDE_OVERLAY, SIDE_SITES, TowerProcess

    os.environ["OC_TEST_SITES_FILE"] = str(hosts_lab.sites_file)
    t = TowerProcess(tmp_path_factory.mktemp("tower") / "state", sites=SIDE_SITES, overlay=SIDE_OVERLAY,
                     OVERCLOUD_SITES_FILE=str(hosts_lab.sites_file)).start()
    try:
        t.cli("images", "build", str(SMART), "--runtime", "process", check=True, timeout=900)
        yield t
    finally:
        try:
            t.cleanup()
        finally:
            teardown_hosts(t.state_dir)


@pytest.fixture(scope="module")
def overcloud(tower):
    with tower.client() as c:
        r = c.post("/overclouds", json={"provider": "heterogeneous",
                                        "ssh-a": {"number": "1", "size": "small", "post": "yes"},
                                        "ssh-b": {"number": "1", "size": "small"}},
                   params={"wait": "true"}, timeout=400)
    assert r.status_code in (200, 201, 202), r.text
    d = r.json()
    if d["status"] != "READY":
        print(tower.log.read_text()[-6000:])
    assert d["status"] == "READY", (d.get("error"), d.get("error_task"))
    return d


def _compose(tower, oid: str, runtime: str) -> dict:
    t0 = time.perf_counter()
    with tower.client() as c:
        r = c.post(f"/overclouds/{oid}/services", content=PATTERN, headers={"Content-Type": "application/yaml"},
                   params={"runtime": runtime, "wait": "true", "timeout": "240"}, timeout=300)
        assert r.status_code == 201, r.text
        print(f"\n[measure] compose smart-energy ({runtime}) on ssh-a + ssh-b: {time.perf_counter() - t0:.2f}s")
        return {s["name"]: s for s in c.get(f"/overclouds/{oid}/services").json()}


def _host_address(hosts_lab, host: str) -> str:
    import yaml

    sites = yaml.safe_load(hosts_lab.sites_file.read_text())
    sites = sites["sites"] if isinstance(sites, dict) else sites
    return next(h["address"] for s in sites for h in s["hosts"] if h.get("name") == host)


def test_smart_energy_across_ssh_sites_on_the_process_runtime(tower, overcloud, hosts_lab):  # noqa: F811
    import boto3
    import botocore.config

    oid = overcloud["overcloud_ID"]
    svc = _compose(tower, oid, "process")
    assert all(s["status"] == "READY" for s in svc.values()), {n: (s["status"], s["message"]) for n, s in svc.items()}
    sites = {n: {r["site"] for r in s["replicas"]} for n, s in svc.items()}
    # the lab's ssh-b is the edge tier, ssh-a the cloud tier
    assert sites["broker"] == {"ssh-b"} and sites["sensors"] == {"ssh-b"}, sites
    assert sites["dashboard"] == sites["collector"] == sites["analyzer"] == {"ssh-a"}, sites
    with tower.client() as c:
        detail = c.get(f"/overclouds/{oid}").json()
        dash = c.get(f"/overclouds/{oid}/services/dashboard", params={"logs": 5}).json()
        creds = c.get(f"/overclouds/{oid}/datalake/credentials").json()
    # the dashboard's NodePort at its box's host's address, from this machine with plain urllib
    dash_box = next(b for b in [detail["post"], *detail["clusters"]] if b["name"] == dash["replicas"][0]["box"])
    [url] = dash["services"][0]["urls"]
    assert url.startswith("http://10.77.0.") and url.endswith(":30850"), url
    assert dash_box["address"] not in url  # not the box's address on its host's bridge
    deadline = time.monotonic() + 20
    while True:
        try:
            status, body = _get(url + "/", timeout=5)
            break
        except OSError:
            assert time.monotonic() < deadline, url
            time.sleep(0.5)
    assert status == 200 and body
    # the detail and `overcloud show` print the same URLs
    assert {s["name"]: s["urls"] for s in detail["services"]}["dashboard"] == [url]
    shown = tower.cli("show", oid, check=True).stdout
    s3_url = detail["datalake"]["published"]["s3"]
    assert s3_url.startswith("http://10.77.0.") and s3_url.endswith(":8333"), detail["datalake"]["published"]
    assert f"published  dashboard      {url}" in shown and f"datalake S3    {s3_url}" in shown, shown
    # logs of a replica on a remote box
    assert any(line.strip() for r in dash["replicas"] for line in r.get("logs") or []), dash["replicas"]
    # S3 at the Post's host: anonymous refused, signed served
    for path in ("/", f"/{creds['buckets'][0]}", f"/{creds['buckets'][0]}/x.txt"):
        with pytest.raises(urllib.error.HTTPError) as e:
            _get(s3_url + path, timeout=5)
        assert e.value.code == 403, (path, e.value.code)
    s3 = boto3.client("s3", endpoint_url=s3_url, aws_access_key_id=creds["access_key"],
                      aws_secret_access_key=creds["secret_key"], region_name="us-east-1",
                      config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                                                    connect_timeout=5, read_timeout=20))
    bucket = creds["buckets"][0]
    s3.put_object(Bucket=bucket, Key="from-the-tower.txt", Body=b"over the host's address")
    assert s3.get_object(Bucket=bucket, Key="from-the-tower.txt")["Body"].read() == b"over the host's address"
    # the collector's readings reach the DataLake from ssh-a (sensors at ssh-b, through the broker)
    deadline = time.monotonic() + 60
    while not s3.list_objects_v2(Bucket=bucket, Prefix="readings/").get("KeyCount"):
        assert time.monotonic() < deadline, "no reading reached the DataLake"
        time.sleep(1)
    s3.delete_object(Bucket=bucket, Key="from-the-tower.txt")


def _podman_images(hosts_lab, host: str) -> list[str]:
    out = hosts_lab.outside(host, ["podman", "images", "--format", "{{.Repository}}:{{.Tag}}",
                                   "--filter", "reference=localhost/overcloud/*"]).stdout
    return [line for line in out.split() if line]


def test_smart_energy_on_podman_sends_the_image_to_the_hosts(tower, overcloud, hosts_lab):  # noqa: F811
    """Each lab host has its own Podman store (scripts/hosts-lab.sh): the image built on the
    Tower's machine is not there until the compose sends it (podman save | load over SSH)."""
    oid = overcloud["overcloud_ID"]
    tower.cli("images", "build", str(SMART), "--runtime", "podman", check=True, timeout=900)
    with tower.client() as c:
        for s in c.get(f"/overclouds/{oid}/services").json():  # the process runtime's, from the test before
            assert c.delete(f"/overclouds/{oid}/services/{s['name']}").status_code == 200
    for h in HOSTS:  # whatever an earlier run left in the hosts' own stores
        for ref in _podman_images(hosts_lab, h):
            hosts_lab.outside(h, ["podman", "rmi", "-f", ref])
        assert _podman_images(hosts_lab, h) == [], h
    svc = _compose(tower, oid, "podman")
    assert all(s["status"] == "READY" for s in svc.values()), {n: (s["status"], s["message"]) for n, s in svc.items()}
    assert {s["runtime"] for s in svc.values()} == {"podman"}
    with tower.client() as c:
        detail = c.get(f"/overclouds/{oid}").json()
    hosts_of = {b["name"]: next(h for h in HOSTS if b["address"].startswith(f"10.79.{HOSTS.index(h) + 1}."))
                for b in detail["clusters"]}
    used = {hosts_of[r["box"]] for s in svc.values() for r in s["replicas"]}
    for h in HOSTS:
        images = _podman_images(hosts_lab, h)
        assert bool(images) == (h in used), (h, images, used)
    # the containers run on the hosts, not here
    for h in used:
        ps = hosts_lab.outside(h, ["podman", "ps", "--format", "{{.Names}}"]).stdout
        assert f"oc-{oid[:12]}-" in ps, (h, ps)
    [url] = svc["dashboard"]["services"][0]["urls"]
    deadline = time.monotonic() + 20
    while True:
        try:
            assert _get(url + "/", timeout=5)[0] == 200
            break
        except OSError:
            assert time.monotonic() < deadline, url
            time.sleep(0.5)


def test_delete_leaves_nothing_on_any_host(tower, overcloud, hosts_lab):  # noqa: F811
    oid = overcloud["overcloud_ID"]
    d = tower.delete_and_wait(oid, timeout=300)
    assert d["status"] == "DELETED", (d.get("error"), d.get("error_task"))
    for h in HOSTS:
        assert _published_tables(hosts_lab, h) == [], h
        assert oid[:8] not in hosts_lab.outside(h, ["ip", "netns", "list"]).stdout, h
        assert oid[:8] not in hosts_lab.outside(h, ["ps", "-eo", "args"]).stdout, h
        left = hosts_lab.outside(h, ["sh", "-c", "ls /var/lib/overcloud/host/*/boxes 2>/dev/null; true"]).stdout
        assert oid[:8] not in left, (h, left)
        ps = hosts_lab.outside(h, ["podman", "ps", "-a", "--format", "{{.Names}}"]).stdout
        assert oid[:12] not in ps, (h, ps)
