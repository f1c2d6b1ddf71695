"""The southbound seam on the local UnderCloud, against the real kernel: LocalSite as an
UnderCloudDriver (join/leave overlay, connect, list_tagged, sweep) and LocalBoxSession (commands,
modules of our package, files, the supervisor, TCP and HTTP from inside a box), reached only
through a Southbound, as actions reach them. Own bridges and CIDRs (ocsea/ocseb,
10.213.214-215.0/24, overlay 10.250.212.0/22). Needs root; fails without it."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
import uuid
from types import SimpleNamespace

import pytest

from overcloud.boxes import entry
from overcloud.datalake.clients import S3Error
from overcloud.southbound import Southbound
from overcloud.underclouds.base import BoxCommandError, BoxSession, BoxSpec, UnderCloudError, resolve_flavor
from overcloud.underclouds.local import LocalHost, LocalSiteConfig, net

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

SITES = [LocalSiteConfig("s-a", "ocsea", "10.213.214.0/24"), LocalSiteConfig("s-b", "ocseb", "10.213.215.0/24")]
OVERLAY = "10.250.212.0/22"


@pytest.fixture(scope="module")
def sb(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("test_session.py needs root (network namespaces, bridges, nftables)")
    host = LocalHost(tmp_path_factory.mktemp("session-uc"), SITES, OVERLAY, max_boxes=10)
    host.ensure_sites()
    south = Southbound(drivers=dict(host.sites), records=None, settings=None, secrets=None,
                       construction_datalake=lambda timeout=0: None)
    yield south
    ids = {lease["overcloud_id"] for lease in host.leases.boxes()}
    if ids:
        host.sweep(ids)
    host.teardown_sites()
    for c in SITES:
        assert not net.link_exists(c.bridge)


@pytest.fixture(scope="module")
def oc(sb):
    """A Post on one site and a cluster box on the other, in one overlay (through the seam)."""
    oid = uuid.uuid4().hex
    post = sb.driver("s-a").acquire([BoxSpec(oid, "p0", "post", "s-a", resolve_flavor("small"))])[0]
    c1 = sb.driver("s-b").acquire([BoxSpec(oid, "c1", "cluster", "s-b", resolve_flavor("medium"))])[0]
    overlay = sb.join_overlay(oid, [post, c1])  # both sites' boxes in one call: one overlay domain
    yield SimpleNamespace(id=oid, post=post, c1=c1, overlay=overlay)


def test_sessions_come_from_the_drivers_and_keep_the_protocol(sb, oc):
    s = sb.session(oc.post)
    assert isinstance(s, BoxSession) and not hasattr(s, "call")
    assert oc.post.overlay_address and oc.c1.overlay_address
    assert oc.overlay.addresses == {"p0": oc.post.overlay_address, "c1": oc.c1.overlay_address}
    assert sb.session(oc.c1).limits() == (1.0, 1024)  # its flavor, read back from the kernel
    with pytest.raises(UnderCloudError, match="site nowhere is not served"):
        sb.session(dataclasses.replace(oc.post, site="nowhere"))


def test_commands_run_in_the_box_and_failures_name_it(sb, oc):
    s = sb.session(oc.c1)
    addrs = s.run(["ip", "-4", "-o", "addr"]).stdout.decode()
    assert oc.c1.overlay_address in addrs and oc.c1.address in addrs  # the box's network, not the host's
    assert oc.c1.address not in subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    with pytest.raises(BoxCommandError, match=r"^sh -c echo oops.* in box c1 exited 3: oops$"):
        s.run(["sh", "-c", "echo oops >&2; exit 3"])
    assert s.run(["sh", "-c", "exit 3"], check=False).returncode == 3
    assert s.run(["sleep", "5"], timeout=0.3, check=False).returncode is None
    head = s.run(["sh", "-c", "yes | head -c 100000"], max_output=1000, check=False)
    assert head.returncode == 0 and len(head.stdout) == 1000
    assert s.run(["cat"], input="piped").stdout == b"piped"


def test_files_stay_under_the_box_dir(sb, oc):
    s = sb.session(oc.post)
    s.put_file("deep/dir/secret.txt", "s3cr3t", mode=0o600)
    assert s.get_file("deep/dir/secret.txt") == b"s3cr3t"
    assert s.get_file("deep/dir/secret.txt", max_bytes=2) == b"s3"
    path = os.path.join(s.box_dir, "deep/dir/secret.txt")
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert oct(os.stat(os.path.join(s.box_dir, "deep")).st_mode & 0o777) == "0o700"
    with pytest.raises(ValueError, match="not under the box's directory"):
        s.put_file("../escape", "x")
    with pytest.raises(FileNotFoundError):
        s.get_file("no/such/file")
    s.make_dirs(["data/a", "data/b"])
    assert os.path.isdir(os.path.join(s.box_dir, "data/b"))


def test_supervisor_programs_tcp_and_http_from_inside_boxes(sb, oc):
    post, c1 = sb.session(oc.post), sb.session(oc.c1)
    assert post.supervisor_running() and post.supervisor_state() == "RUNNING"
    ip = oc.post.overlay_address
    post.add_program("web", [sys.executable, "-m", "http.server", "--bind", ip, "8123"], startsecs=0)
    deadline = time.monotonic() + 10
    while not c1.tcp_check(ip, 8123, timeout=0.5):
        assert time.monotonic() < deadline, "the program never listened"
        time.sleep(0.05)
    assert post.program_states()["web"] == "RUNNING"
    assert any(p["name"] == "web" and p["pid"] for p in post.process_info())
    status, headers, body = c1.http("GET", f"http://{ip}:8123/")  # over the overlay, from the cluster box
    assert status == 200 and b"Directory listing" in body and "content-type" in {k.lower() for k in headers}
    with c1.http_client(timeout=2.0) as client:
        assert client.get(f"http://{ip}:8123/").status_code == 200
    post.stop_program("web")
    assert post.program_states()["web"] == "STOPPED"
    post.start_program("web", wait=False)
    post.signal_program("web", "TERM")  # supervisord restarts it (autorestart)
    assert post.tail_log("web", "err", 4096)  # http.server logs requests to stderr
    assert post.remove_programs(["web", "not-there"]) == ["web"]
    post.forget_programs(["web"])
    assert "web" not in post.program_states()
    assert not os.path.exists(os.path.join(post.log_dir, "web.err.log"))
    assert not c1.tcp_check(ip, 8123, timeout=0.5)


def test_modules_run_in_the_box_and_their_errors_come_back_as_they_were(sb, oc):
    s = sb.session(oc.c1)
    with pytest.raises(ValueError, match="unknown operation"):
        entry.call(s, "overcloud.datalake.boxops", "nosuch", {})
    # an S3 round trip against the Post where nothing listens: boto3 fails inside the box, and
    # the Tower gets the same S3Error, its message naming the step
    with pytest.raises(S3Error, match=f"round trip: s3_bucket failed against s3=http://{oc.post.overlay_address}:8333"):
        entry.call(s, "overcloud.datalake.boxops", "round-trip",
                   {"s3": f"http://{oc.post.overlay_address}:8333", "filer": f"http://{oc.post.overlay_address}:8888",
                    "access": "AKIAX", "secret": "y" * 40, "bucket": "data", "security": None}, timeout=60)


def test_leave_overlay_list_tagged_and_sweep_through_the_southbound(sb, oc):
    assert any(r.kind == "vxlan" for r in sb.list_tagged(oc.id))
    sb.leave_overlay(oc.id, [oc.post, oc.c1])
    assert not any(r.kind == "vxlan" for r in sb.list_tagged(oc.id))
    removed = sb.sweep({oc.id})
    assert {r.kind for r in removed} >= {"netns", "lease"}
    assert sb.list_tagged(oc.id) == []
