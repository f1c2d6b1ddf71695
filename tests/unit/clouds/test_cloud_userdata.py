"""A cloud server's user data: the login user with the Tower's key and sudo without a password,
the host key the Tower generated (and pins), root and passwords off, nothing fetched; and the
Tower's client key for cloud hosts, made once and kept 0600."""

from __future__ import annotations

import stat

import asyncssh
import yaml

from overcloud.underclouds.cloud.userdata import client_key, new_host_key, user_data

FETCHING = {"packages", "package_update", "package_upgrade", "apt", "yum_repos", "runcmd", "bootcmd", "write_files",
            "snap", "ansible", "chef", "puppet", "salt_minion", "phone_home", "scripts_user"}


def test_user_data_makes_the_user_pins_the_host_key_and_fetches_nothing():
    public = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode().strip()
    key = new_host_key()
    text = user_data("overcloud", public, key, hostname="oc-1234abcd-p0")
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    (user,) = doc["users"]
    assert user == {"name": "overcloud", "sudo": "ALL=(ALL) NOPASSWD:ALL", "shell": "/bin/bash", "lock_passwd": True,
                    "ssh_authorized_keys": [public]}
    assert doc["disable_root"] is True and doc["ssh_pwauth"] is False
    assert doc["ssh_deletekeys"] is True and doc["ssh_genkeytypes"] == ["ed25519"]  # the one given: none made
    # the host key's two halves belong together, and the public one is what the Tower pins
    private = asyncssh.import_private_key(doc["ssh_keys"]["ed25519_private"])
    assert private.export_public_key("openssh").decode().split()[:2] == key.public.split()
    assert doc["ssh_keys"]["ed25519_public"] == key.public
    assert key.public.startswith("ssh-ed25519 ") and len(key.public.split()) == 2
    assert doc["hostname"] == "oc-1234abcd-p0"
    # nothing installed or fetched, no command run: the package comes over SSH
    assert not [k for k in doc if k in FETCHING and doc[k]]
    assert "http://" not in text and "https://" not in text
    assert "PRIVATE KEY" not in repr(key)  # the private half never shows in a repr (logs)


def test_each_server_gets_its_own_host_key():
    assert new_host_key().public != new_host_key().public


def test_the_towers_client_key_is_made_once_0600_and_read_back(tmp_path):
    path, public = client_key(tmp_path / "cloud")
    assert path == tmp_path / "cloud" / "id_ed25519"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "cloud").stat().st_mode) == 0o700
    assert asyncssh.read_private_key(str(path)).export_public_key("openssh").decode().split()[:2] == public.split()
    assert (tmp_path / "cloud" / "id_ed25519.pub").read_text().split()[:2] == public.split()
    again = client_key(tmp_path / "cloud")
    assert again == (path, public)
    assert [p.name for p in sorted((tmp_path / "cloud").iterdir())] == ["id_ed25519", "id_ed25519.pub"]


def test_root_is_never_the_login_user():
    import pytest

    with pytest.raises(ValueError, match="not root"):
        user_data("root", "ssh-ed25519 AAAA", new_host_key())
