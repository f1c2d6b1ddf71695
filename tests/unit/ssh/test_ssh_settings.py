"""OVERCLOUD_SITES_FILE's ssh sites join the Tower's settings after the local ones, and the
seed's "provider": "ssh" picks the first of them."""

from __future__ import annotations

import asyncssh
import pytest

from overcloud.api.requests import Sites
from overcloud.config import Settings
from overcloud.underclouds.ssh.sites import SiteConfigError

SITES = """\
- name: ssh-a
  kind: ssh
  labels: {overcloud.io/tier: cloud}
  hosts:
  - {name: h1, address: 10.77.0.11, key_file: key, host_key: "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", box_cidr: 10.79.1.0/24, lan_address: 10.78.1.11}
- name: ssh-b
  kind: ssh
  hosts:
  - {name: h2, address: 10.77.0.12, key_file: key, host_key: "SHA256:BAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", box_cidr: 10.79.2.0/24, lan_address: 10.78.2.11}
"""


def test_ssh_sites_from_the_sites_file_follow_the_local_ones(tmp_path, monkeypatch):
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(tmp_path / "key"))
    (tmp_path / "sites.yaml").write_text(SITES)
    monkeypatch.setenv("OVERCLOUD_SITES_FILE", str(tmp_path / "sites.yaml"))
    monkeypatch.delenv("OVERCLOUD_SITES", raising=False)
    s = Settings(state_dir=tmp_path / "state")
    assert [(x.name, x.kind) for x in s.sites] == [("local-a", "local"), ("local-b", "local"), ("ssh-a", "ssh"), ("ssh-b", "ssh")]
    assert s.sites[2].labels == {"overcloud.io/tier": "cloud"}
    assert [c.name for c in s.ssh_site_configs()] == ["ssh-a", "ssh-b"]
    sites = Sites({x.name: x.kind for x in s.sites})
    assert sites.resolve("ssh", "provider") == "ssh-a"
    assert sites.resolve("local", "provider") == "local-a"


def test_a_sites_file_with_a_missing_key_is_refused_naming_the_path(tmp_path, monkeypatch):
    (tmp_path / "sites.yaml").write_text(SITES)
    monkeypatch.setenv("OVERCLOUD_SITES_FILE", str(tmp_path / "sites.yaml"))
    with pytest.raises((SiteConfigError, ValueError), match=str(tmp_path / "key")):
        Settings(state_dir=tmp_path / "state")
