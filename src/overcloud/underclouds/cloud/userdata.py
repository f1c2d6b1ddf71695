"""What a cloud server boots with: cloud-init user data, its host key, the Tower's client key.

The Tower generates each server's ed25519 host key itself and gives the private half to the
server in its user data; the public half goes on the server's tags (``overcloud.io/host-key``)
and is pinned when the Tower connects: no trust on first use, and after a restart the Tower
reads the pin back from the cloud. The user data makes the login user (sudo without a
password), installs the Tower's public key for it, and fetches nothing: no packages, no apt.

The Tower's own client key pair for cloud hosts is made once and kept in its state dir
(``<state>/cloud/id_ed25519``, 0600, and ``.pub``).
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from pathlib import Path

import yaml

__all__ = ["HostKey", "client_key", "new_host_key", "user_data"]

CLIENT_KEY = "id_ed25519"


@dataclasses.dataclass(frozen=True)
class HostKey:
    """A server's host key: ``private`` (OpenSSH PEM text, for its user data only) and ``public``
    (``ssh-ed25519 AAAA...``, for its tags and the Tower's pin)."""

    private: str = dataclasses.field(repr=False)
    public: str


def new_host_key() -> HostKey:
    """A fresh ed25519 host key."""
    import asyncssh

    key = asyncssh.generate_private_key("ssh-ed25519")
    private = key.export_private_key("openssh").decode()
    public = key.export_public_key("openssh").decode().strip()
    return HostKey(private=private, public=_bare(public))


def _bare(line: str) -> str:
    """``type base64`` of a public key line (the comment dropped: tags are short and it says nothing)."""
    parts = line.split()
    return f"{parts[0]} {parts[1]}"


def client_key(state_dir: Path) -> tuple[Path, str]:
    """The Tower's client key for cloud hosts: (private key path, public key line). Made on first
    use under ``state_dir`` (0700) as ``id_ed25519`` (0600) and ``id_ed25519.pub``; two processes
    starting at once agree (the first link wins)."""
    import asyncssh

    state_dir = Path(state_dir)
    path = state_dir / CLIENT_KEY
    if not path.exists():
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = asyncssh.generate_private_key("ssh-ed25519", comment="overcloud-tower")
        tmp = state_dir / f".{CLIENT_KEY}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.export_private_key("openssh"))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    key = asyncssh.read_private_key(str(path))
    public = _bare(key.export_public_key("openssh").decode())
    pub_path = path.with_suffix(".pub")
    if not pub_path.exists() or pub_path.read_text().split()[:2] != public.split():
        tmp = state_dir / f".{CLIENT_KEY}.pub.{secrets.token_hex(4)}"
        tmp.write_text(public + " overcloud-tower\n")
        tmp.replace(pub_path)
    return path, public


def user_data(user: str, tower_public_key: str, host_key: HostKey, *, hostname: str | None = None) -> str:
    """The ``#cloud-config`` text of one server: the login user with the Tower's key and sudo
    without a password, the Tower-generated host key (the others removed and none generated),
    root login off, and nothing fetched from the internet."""
    if user == "root":
        raise ValueError("the login user of a cloud server is not root (cloud-init makes it, with sudo)")
    doc: dict = {
        "users": [{
            "name": user,
            "sudo": "ALL=(ALL) NOPASSWD:ALL",
            "shell": "/bin/bash",
            "lock_passwd": True,
            "ssh_authorized_keys": [tower_public_key.strip()],
        }],
        "ssh_deletekeys": True,
        # only the type given in ssh_keys (already there: nothing is generated). Not []: cloud-init's
        # schema wants at least one type (`cloud-init schema`: "ssh_genkeytypes: [] is too short")
        "ssh_genkeytypes": ["ed25519"],
        "ssh_keys": {"ed25519_private": host_key.private, "ed25519_public": host_key.public},
        "disable_root": True,
        "ssh_pwauth": False,
        "package_update": False,
        "package_upgrade": False,
    }
    if hostname:
        doc["hostname"] = hostname
        doc["preserve_hostname"] = False
    return "#cloud-config\n" + yaml.dump(doc, Dumper=_Dumper, default_flow_style=False, sort_keys=False, width=4096)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the private key) as literal blocks, as a person would write them."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)
