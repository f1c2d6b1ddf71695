"""OpenStackProvider without a cloud: tags, clouds.yaml handling, and what Keystone's refusals and
silence become (real openstacksdk/keystoneauth against loopback endpoints; the lab tests are in
tests/integration/clouds/test_openstack_provider.py)."""

from __future__ import annotations

import http.server
import json
import logging
import socket
import threading

import pytest

from overcloud.underclouds.cloud.config import parse_cloud_sites
from overcloud.underclouds.cloud.openstack import OpenStackProvider, os_tag, parse_tags
from overcloud.underclouds.cloud.provider import (
    TAG_BOX, TAG_OVERCLOUD, TAG_TOWER, CloudUnavailable,
)

SECRET = "s3cr3t-Application-Credential-Secret-Value"
OC = "0123456789abcdef0123456789abcdef"
TOWER = "fedcba9876543210"


def _site(tmp_path, auth_url: str, cloud: str = "lab", entry: str = "lab"):
    (tmp_path / "clouds.yaml").write_text(json.dumps({"clouds": {entry: {
        "auth_type": "v3applicationcredential", "region_name": "RegionOne",
        "auth": {"auth_url": auth_url, "application_credential_id": "0f0f0f0f0f0f",
                 "application_credential_secret": SECRET}}}}))
    [cfg] = parse_cloud_sites([{
        "name": "openstack-1", "kind": "openstack", "cloud": cloud, "clouds_file": "clouds.yaml",
        "image": "debian-12-overcloud", "flavors": {"small": "m1.small"},
        "network": {"cidr_pool": "10.90.0.0/16"}, "ssh_cidrs": ["10.90.0.0/16"], "box_pool": "10.96.0.0/16"}],
        base_dir=tmp_path)
    p = OpenStackProvider(cfg, TOWER)
    p.retry = {"attempts": 3, "base": 0.01, "cap": 0.05}
    return p


def test_tags_round_trip_and_fit_nova():
    tags = [os_tag(TAG_OVERCLOUD, OC), os_tag(TAG_TOWER, TOWER), os_tag(TAG_BOX, "c12")]
    for t in tags:  # Nova's schema for a server tag: at most 60 characters, no '/' and no ','
        assert len(t) <= 60 and "/" not in t and "," not in t
    assert parse_tags(tags + ["someone-else"]) == {TAG_OVERCLOUD: OC, TAG_TOWER: TOWER, TAG_BOX: "c12"}


def test_missing_cloud_entry_is_unavailable(tmp_path):
    p = _site(tmp_path, "http://127.0.0.1:1/v3", cloud="lab", entry="other")
    with pytest.raises(CloudUnavailable) as err:
        p.check()
    assert "'lab'" in str(err.value) and SECRET not in str(err.value)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_keystone_is_retried_then_unavailable(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    p = _site(tmp_path, f"http://127.0.0.1:{_closed_port()}/v3")
    with pytest.raises(CloudUnavailable) as err:
        p.check()
    assert "does not answer" in str(err.value)
    assert p.stats.retries == 2 and p.stats.calls == 3
    assert SECRET not in str(err.value) and SECRET not in caplog.text


class _Keystone(http.server.BaseHTTPRequestHandler):
    """Answers like Keystone v3 does to a wrong application credential secret (or with 503)."""

    status = 401
    seen: list[str] = []

    def log_message(self, *a):  # quiet
        pass

    def do_GET(self):
        body = json.dumps({"version": {"id": "v3.14", "status": "stable", "links": [
            {"rel": "self", "href": f"http://127.0.0.1:{self.server.server_port}/v3/"}]}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.seen.append(self.rfile.read(int(self.headers["Content-Length"])).decode())
        msg = {401: "The request you have made requires authentication.", 503: "Service Unavailable"}[self.status]
        body = json.dumps({"error": {"code": self.status, "title": "x", "message": msg}}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def keystone():
    handler = type("K", (_Keystone,), {"seen": []})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv, handler
    srv.shutdown()
    srv.server_close()


def test_wrong_secret_is_unavailable_with_reason_and_no_secret(tmp_path, keystone, caplog):
    caplog.set_level(logging.DEBUG)
    srv, handler = keystone
    p = _site(tmp_path, f"http://127.0.0.1:{srv.server_port}/v3")
    with pytest.raises(CloudUnavailable) as err:
        p.check()
    assert "refused the credentials" in str(err.value) and "application credential" in str(err.value)
    assert SECRET in handler.seen[0]  # it was really sent ...
    assert len(handler.seen) == 1  # ... once: a 401 is not retried
    assert SECRET not in str(err.value) and SECRET not in repr(err.value.__dict__) and SECRET not in caplog.text


def test_keystone_503_is_retried_then_unavailable(tmp_path, keystone):
    srv, handler = keystone
    handler.status = 503
    p = _site(tmp_path, f"http://127.0.0.1:{srv.server_port}/v3")
    with pytest.raises(CloudUnavailable) as err:
        p.check()
    assert len(handler.seen) == 3 and p.stats.retries == 2
    assert "503" in str(err.value) and SECRET not in str(err.value)


def test_the_sites_clouds_file_alone_is_read(tmp_path, keystone, monkeypatch):
    """OS_CLIENT_CONFIG_FILE and OS_* variables naming another Keystone are not merged in: the
    site's clouds_file (whose Keystone does not answer) is the one used."""
    srv, handler = keystone
    other = tmp_path / "other"
    other.mkdir()
    (other / "clouds.yaml").write_text(json.dumps({"clouds": {"lab": {"auth": {
        "auth_url": f"http://127.0.0.1:{srv.server_port}/v3", "username": "u", "password": "p", "project_name": "x"}}}}))
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(other / "clouds.yaml"))
    monkeypatch.setenv("OS_AUTH_URL", f"http://127.0.0.1:{srv.server_port}/v3")
    monkeypatch.setenv("OS_CLOUD", "lab")
    p = _site(tmp_path, f"http://127.0.0.1:{_closed_port()}/v3")
    with pytest.raises(CloudUnavailable) as err:
        p.check()
    assert "does not answer" in str(err.value) and handler.seen == []
