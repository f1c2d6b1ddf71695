"""The Southbound (what actions get instead of the Tower) and the box-module error round trip,
without touching the kernel: a LocalHost that never ensured its sites makes no kernel objects."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from overcloud.boxes import entry
from overcloud.datalake.clients import S3Error
from overcloud.southbound import Southbound, box_dict, box_obj
from overcloud.underclouds.base import FLAVORS, Box, UnderCloudError
from overcloud.underclouds.local import LocalHost, LocalSiteConfig
from overcloud.underclouds.local.session import LocalBoxSession


@pytest.fixture
def sb(tmp_path):
    host = LocalHost(tmp_path, [LocalSiteConfig("u-a", "ocua", "10.213.240.0/24"),
                                LocalSiteConfig("u-b", "ocub", "10.213.241.0/24")], tower_id="t" * 32,
                     host_leases=tmp_path / "host-leases")
    return Southbound(drivers=dict(host.sites), records=None, settings=None, secrets=None,
                      construction_datalake=lambda timeout=0: None)


def box(name: str, site: str) -> Box:
    return Box("a" * 32, name, "cluster", site, FLAVORS["small"], f"oc-aaaaaaaa-{name}", "10.213.240.9")


def test_sessions_by_site_and_an_unknown_site_is_named(sb):
    s = sb.session(box("c1", "u-b"))
    assert isinstance(s, LocalBoxSession) and s.box.site == "u-b"
    with pytest.raises(UnderCloudError, match="site far is not served by this Tower \\(configured: u-a, u-b\\)"):
        sb.session(box("c1", "far"))


def test_local_sites_are_one_overlay_domain_and_each_driver_is_asked_once(sb):
    groups = sb._domains([box("p0", "u-a"), box("c1", "u-b"), box("c2", "u-b")])
    assert len(groups) == 1 and [b.name for b in groups[0][1]] == ["p0", "c1", "c2"]
    assert len(sb._unique_drivers()) == 1  # list_tagged / sweep ask the host once, not once per site


def test_box_rows_become_boxes():
    row = SimpleNamespace(overcloud_id="a" * 32, name="p0", role="post", site="u-a", flavor="small", cpus=0.5,
                          memory_mb=512, handle="oc-aaaaaaaa-p0", address="10.213.240.2", overlay_address=None)
    b = box_obj(row)
    assert b == Box.from_dict(box_dict(row)) and b.flavor == FLAVORS["small"]
    assert box_obj(b) is b


def test_errors_of_box_modules_come_back_with_their_class_and_message():
    assert type(entry._exception({"type": "TimeoutError", "module": "builtins", "message": "late"})) is TimeoutError
    err = entry._exception({"type": "S3Error", "module": "overcloud.datalake.clients", "message": "round trip: x"})
    assert type(err) is S3Error and str(err) == "round trip: x"
    # not ours: the same name (messages that show it read as before), never imported
    other = entry._exception({"type": "ConnectError", "module": "httpx", "message": "refused"})
    assert isinstance(other, entry.BoxModuleError) and type(other).__name__ == "ConnectError"
    assert "os" not in entry._exception({"type": "system", "module": "os", "message": "x"}).__class__.__module__


def test_a_box_module_answers_json_and_an_unknown_operation_is_named():
    done = subprocess.run([sys.executable, "-m", "overcloud.datalake.boxops", "nosuch"], input="{}",
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == entry.FAILED
    err = json.loads(done.stdout)["error"]
    assert err["type"] == "ValueError" and "unknown operation ['nosuch']; have archive, prepare, round-trip" in err["message"]


def test_dataclass_replace_keeps_a_box_a_box(sb):
    moved = dataclasses.replace(box("c1", "u-a"), site="u-b")
    assert sb.session(moved).box.site == "u-b"
