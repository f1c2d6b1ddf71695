"""What remote workloads need, without hosts: the deterministic tar an image's code is sent as
(ssh/staging.py), the host-side publish tables' parsing and input checks (local/publish.py), and
the URLs a NodePort is shown at (composition.stitching.node_port_urls)."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile

import pytest

from overcloud.composition import stitching
from overcloud.underclouds.local import publish
from overcloud.underclouds.ssh import staging


def _tree(root, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def test_a_tree_tar_is_content_addressed(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    files = {"app/main.py": b"print(1)\n", "app/__init__.py": b"", "run.sh": b"#!/bin/sh\n"}
    _tree(a, files)
    _tree(b, dict(reversed(list(files.items()))))  # other order, other times
    os.chmod(a / "run.sh", 0o755)
    os.chmod(b / "run.sh", 0o700)
    _tree(a, {"app/__pycache__/main.cpython-311.pyc": b"junk"})
    (data_a, sha_a), (data_b, sha_b) = staging.tree_tar(a), staging.tree_tar(b)
    assert sha_a == sha_b == hashlib.sha256(data_a).hexdigest() and data_a == data_b
    with tarfile.open(fileobj=io.BytesIO(data_a)) as t:
        members = {m.name: m for m in t.getmembers()}
    assert sorted(members) == ["app/__init__.py", "app/main.py", "run.sh"]  # no __pycache__
    assert members["run.sh"].mode == 0o755 and members["app/main.py"].mode == 0o644
    assert {(m.uid, m.gid, m.mtime) for m in members.values()} == {(0, 0, 0)}
    (a / "app" / "main.py").write_bytes(b"print(2)\n")
    assert staging.tree_tar(a)[1] != sha_a  # a changed byte: another address


def test_publish_tables_are_parsed_and_named_per_box_and_group():
    listing = """table ip ocpub_oc_1a2b3c4d_c1_nodeport {
	comment "overcloud tower=abc box=oc-1a2b3c4d-c1"
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		iifname != "ocbx0" ip daddr 10.77.0.11 tcp dport 30850 ct mark set 0x4f430001 dnat to 10.79.1.3:30850
		iifname != "ocbx0" ip daddr 10.77.0.11 tcp dport 30851 ct mark set 0x4f430001 dnat to 10.79.1.3:30851
	}
	chain post {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "ocbx0" ip daddr 10.79.1.3 ct mark 0x4f430001 masquerade
	}
}"""
    assert publish.held(listing) == {("10.77.0.11", 30850), ("10.77.0.11", 30851)}
    assert publish.table("oc-1a2b3c4d-c1", "s3") == "ocpub_oc_1a2b3c4d_c1_s3"
    with pytest.raises(ValueError):
        publish.table("oc-1a2b3c4d-c1", "no; drop")


@pytest.mark.parametrize("kw", [{"address": "10.77.0.300"}, {"box_address": "host.example"},
                                {"bridge": "br; flush ruleset"}, {"ports": [0]}, {"ports": [70000]}])
def test_publish_refuses_bad_input_before_touching_nft(kw):
    args = {"handle": "oc-1a2b3c4d-c1", "group": "nodeport", "address": "10.77.0.11", "box_address": "10.79.1.3",
            "bridge": "ocbx0", "ports": [30850], "comment": "x", **kw}
    with pytest.raises(ValueError):
        publish.publish(**args)


def test_node_port_urls_use_the_address_each_box_was_published_at():
    svcs = {"web": {"type": "NodePort", "ports": [(None, 80)], "node_ports": {80: 30850}, "vip": "198.18.0.1",
                    "endpoints": [{"box": "c1", "site_address": "10.79.1.3"}, {"box": "c2", "site_address": "10.79.3.2"},
                                  {"box": "c3", "site_address": "10.213.1.5"}]}}
    published = {"c1": "10.77.0.11", "c2": {"problem": "port 30850 of 10.77.0.13 is already published"}}
    # c1: its host's address; c2: refused there, so no URL; c3 (not recorded, a local box): its site address
    assert stitching.node_port_urls(svcs, "web", published) == ["http://10.77.0.11:30850", "http://10.213.1.5:30850"]
    assert stitching.node_port_urls(svcs, "web") == ["http://10.79.1.3:30850", "http://10.79.3.2:30850",
                                                     "http://10.213.1.5:30850"]
