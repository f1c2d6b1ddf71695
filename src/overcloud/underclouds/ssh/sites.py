"""Sites of kind ``ssh``: their hosts, read and checked before anything connects.

A site definition comes from the Tower's configuration: ``OVERCLOUD_SITES`` (a JSON or YAML list)
or the YAML file named by ``OVERCLOUD_SITES_FILE`` (a list, or a mapping with a ``sites`` list).
Entries of other kinds are left to their own drivers. Example::

    - name: ssh-a
      kind: ssh
      labels: {overcloud.io/tier: cloud}
      hosts:
      - name: och-a1                 # optional; default: the address
        address: 10.77.0.11
        port: 22                     # default 22
        user: root                   # default root
        key_file: /etc/overcloud/id_ed25519   # relative: to the sites file's directory
        host_key: "ssh-ed25519 AAAA..."       # or "SHA256:..." (as `ssh-keygen -lf` prints it)
        lan_address: 10.78.1.11      # the host's address on the site's private network
        box_cidr: 10.79.1.0/24       # the boxes' subnet on this host (routed between hosts)
        cpus: 2                      # what the host lends to boxes
        memory_mb: 2048
        labels: {}
        max_sessions: 10             # commands at once on the kept connection (sshd MaxSessions)

Everything a host needs is checked here, with messages that say what to fix: a missing or
unreadable key file (named by path), a missing host key, a bad address or port, a host listed
twice, box subnets that overlap. A key file's contents never appear in a message.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "SSHHostConfig",
    "SSHSiteConfig",
    "SiteConfigError",
    "load_ssh_sites",
    "parse_ssh_sites",
    "ssh_sites_from_env",
]

_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}=?$")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_USER = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
_HOST_FIELDS = {
    "name", "address", "port", "user", "key_file", "host_key", "labels", "cpus", "memory_mb",
    "lan_address", "box_cidr", "max_sessions", "connect_timeout",
}
_SITE_FIELDS = {"name", "kind", "labels", "hosts"}


class SiteConfigError(ValueError):
    """A site definition cannot be used; the message says which site, host and field, and how to fix it."""


@dataclasses.dataclass(frozen=True)
class SSHHostConfig:
    """One remote host, as the Tower reaches it and as it lends capacity to boxes."""

    name: str  # for messages and records; the address when the config gives none
    address: str  # IP address or DNS name the Tower connects to (its WAN side)
    key_file: Path  # the client's private key (absolute; read when the site loads)
    host_key: str  # the host's pinned public key line ("ssh-ed25519 AAAA...") or "SHA256:..." fingerprint
    port: int = 22
    user: str = "root"
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    cpus: int = 1  # CPUs lent to boxes
    memory_mb: int = 1024  # memory lent to boxes
    lan_address: str | None = None  # address on the site's private network (peers in the site route via it)
    box_cidr: str | None = None  # the boxes' subnet on this host, unique in the world
    max_sessions: int = 10  # concurrent channels on one connection (OpenSSH's MaxSessions default is 10)
    connect_timeout: float = 10.0  # seconds for TCP connect + SSH handshake + authentication

    @property
    def endpoint(self) -> str:
        """``name (address:port)`` for messages."""
        where = f"{self.address}:{self.port}"
        return where if self.name == self.address else f"{self.name} ({where})"


@dataclasses.dataclass(frozen=True)
class SSHSiteConfig:
    """A site of kind ``ssh``: a named group of hosts (one private network, one WireGuard peer set)."""

    name: str
    hosts: tuple[SSHHostConfig, ...]
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    kind: str = "ssh"


def _where(site: str, host: str | None = None) -> str:
    return f"site {site!r}" + (f", host {host!r}" if host else "")


def _int(value: Any, where: str, field: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SiteConfigError(f"{where}: {field} must be an integer from {lo} to {hi}, not {value!r}")
    if not lo <= value <= hi:
        raise SiteConfigError(f"{where}: {field} must be from {lo} to {hi}, not {value}")
    return value


def _labels(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise SiteConfigError(f"{where}: labels must be a mapping of strings to strings")
    return dict(value)


def _check_key_file(path: Path, where: str) -> None:
    """The private key must exist, be readable, and load without a passphrase (keys only, no agent)."""
    if not path.exists():
        raise SiteConfigError(f"{where}: key_file {path} does not exist")
    if not path.is_file():
        raise SiteConfigError(f"{where}: key_file {path} is not a regular file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SiteConfigError(f"{where}: key_file {path} cannot be read ({exc.strerror})") from None
    import asyncssh  # lazily: the Tower starts without it when no ssh site is configured

    try:
        asyncssh.import_private_key(data)
    except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError, ValueError) as exc:
        if isinstance(exc, asyncssh.KeyEncryptionError) or "passphrase" in str(exc).lower():
            raise SiteConfigError(f"{where}: key_file {path} is encrypted; use a key without a passphrase") from None
        raise SiteConfigError(f"{where}: key_file {path} is not an SSH private key asyncssh can read") from None


def _check_host_key(value: Any, where: str) -> str:
    if value is None or value == "":
        raise SiteConfigError(
            f"{where}: host_key is missing; give the host's public key line (e.g. the contents of "
            "/etc/ssh/ssh_host_ed25519_key.pub) or its fingerprint (`ssh-keygen -lf` prints SHA256:...). "
            "Unknown host keys are never accepted"
        )
    if not isinstance(value, str):
        raise SiteConfigError(f"{where}: host_key must be a string")
    value = value.strip()
    if value.startswith("SHA256:"):
        if not _FINGERPRINT.match(value):
            raise SiteConfigError(f"{where}: host_key {value!r} is not a SHA256 fingerprint (SHA256: + 43 base64 characters)")
        return value
    import asyncssh

    try:
        asyncssh.import_public_key(value)
    except (asyncssh.KeyImportError, ValueError):
        raise SiteConfigError(f"{where}: host_key is neither a public key line ('ssh-ed25519 AAAA...') nor a SHA256: fingerprint") from None
    return value


def _address(value: Any, where: str, field: str, *, hostname_ok: bool) -> str:
    if not isinstance(value, str) or not value:
        raise SiteConfigError(f"{where}: {field} is missing")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        if hostname_ok and _HOSTNAME.match(value) and not value.replace(".", "").isdigit():
            return value
    kind = "an IP address or DNS name" if hostname_ok else "an IPv4 address"
    raise SiteConfigError(f"{where}: {field} {value!r} is not {kind}")


def _parse_host(raw: Any, site: str, index: int, base_dir: Path | None) -> SSHHostConfig:
    if not isinstance(raw, Mapping):
        raise SiteConfigError(f"{_where(site)}: host #{index + 1} must be a mapping with address, key_file, host_key, ...")
    label = raw.get("name") or raw.get("address") or f"#{index + 1}"
    where = _where(site, str(label))
    unknown = sorted(set(raw) - _HOST_FIELDS)
    if unknown:
        raise SiteConfigError(f"{where}: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(_HOST_FIELDS))})")
    address = _address(raw.get("address"), where, "address", hostname_ok=True)
    name = raw.get("name", address)
    if not isinstance(name, str) or not (_NAME.match(name) or name == address):
        raise SiteConfigError(f"{where}: name must be lower-case letters, digits and '-' (up to 63)")
    port = _int(raw.get("port", 22), where, "port", 1, 65535)
    user = raw.get("user", "root")
    if not isinstance(user, str) or not _USER.match(user):
        raise SiteConfigError(f"{where}: user {user!r} is not a valid user name")
    key_raw = raw.get("key_file")
    if not key_raw or not isinstance(key_raw, str):
        raise SiteConfigError(f"{where}: key_file is missing (the path of the private key the Tower logs in with)")
    key_file = Path(key_raw).expanduser()
    if not key_file.is_absolute():
        key_file = (base_dir or Path.cwd()) / key_file
    _check_key_file(key_file, where)
    host_key = _check_host_key(raw.get("host_key"), where)
    lan = raw.get("lan_address")
    lan_address = _address(lan, where, "lan_address", hostname_ok=False) if lan is not None else None
    box_cidr = None
    if raw.get("box_cidr") is not None:
        try:
            net = ipaddress.IPv4Network(str(raw["box_cidr"]), strict=True)
        except ValueError as exc:
            raise SiteConfigError(f"{where}: box_cidr {raw['box_cidr']!r} is not an IPv4 network ({exc})") from None
        if net.prefixlen > 28:
            raise SiteConfigError(f"{where}: box_cidr {net} is too small (a /28 or larger)")
        box_cidr = str(net)
    timeout = raw.get("connect_timeout", 10.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 300:
        raise SiteConfigError(f"{where}: connect_timeout must be seconds, more than 0 and at most 300")
    return SSHHostConfig(
        name=name,
        address=address,
        port=port,
        user=user,
        key_file=key_file,
        host_key=host_key,
        labels=_labels(raw.get("labels"), where),
        cpus=_int(raw.get("cpus", 1), where, "cpus", 1, 4096),
        memory_mb=_int(raw.get("memory_mb", 1024), where, "memory_mb", 64, 64 * 1024 * 1024),
        lan_address=lan_address,
        box_cidr=box_cidr,
        max_sessions=_int(raw.get("max_sessions", 10), where, "max_sessions", 1, 1024),
        connect_timeout=float(timeout),
    )


def parse_ssh_sites(data: Any, *, base_dir: Path | None = None) -> list[SSHSiteConfig]:
    """The ``ssh`` sites of a sites definition (a list of sites, or ``{"sites": [...]}``), checked.

    ``base_dir`` resolves relative key files (the sites file's directory). Raises SiteConfigError.
    """
    if isinstance(data, Mapping) and "sites" in data:
        data = data["sites"]
    if not isinstance(data, list):
        raise SiteConfigError("sites must be a list of sites (each with name and kind), or a mapping with a 'sites' list")
    sites: list[SSHSiteConfig] = []
    names: set[str] = set()
    for i, raw in enumerate(data):
        if not isinstance(raw, Mapping):
            raise SiteConfigError(f"site #{i + 1} must be a mapping with name and kind")
        name = raw.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise SiteConfigError(f"site #{i + 1}: name must be lower-case letters, digits and '-' (up to 63), not {name!r}")
        if name in names:
            raise SiteConfigError(f"site {name!r} is defined twice")
        names.add(name)
        if raw.get("kind", "local") != "ssh":
            continue
        unknown = sorted(set(raw) - _SITE_FIELDS)
        if unknown:
            raise SiteConfigError(f"{_where(name)}: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(_SITE_FIELDS))})")
        hosts_raw = raw.get("hosts")
        if not isinstance(hosts_raw, list) or not hosts_raw:
            raise SiteConfigError(f"{_where(name)}: hosts must be a non-empty list (address, key_file, host_key, ...)")
        hosts = tuple(_parse_host(h, name, j, base_dir) for j, h in enumerate(hosts_raw))
        sites.append(SSHSiteConfig(name=name, hosts=hosts, labels=_labels(raw.get("labels"), _where(name))))
    _check_across(sites)
    return sites


def _check_across(sites: list[SSHSiteConfig]) -> None:
    """Hosts are unique (by name and by endpoint) and their box subnets do not overlap, across all sites."""
    by_name: dict[str, str] = {}
    by_endpoint: dict[tuple[str, int], str] = {}
    nets: list[tuple[ipaddress.IPv4Network, str]] = []
    lans: dict[str, str] = {}
    for site in sites:
        for h in site.hosts:
            who = f"{_where(site.name, h.name)}"
            if h.name in by_name:
                raise SiteConfigError(f"{who}: host name {h.name!r} is already used by {by_name[h.name]}")
            by_name[h.name] = who
            if (h.address, h.port) in by_endpoint:
                raise SiteConfigError(f"{who}: {h.address}:{h.port} is listed twice (also {by_endpoint[(h.address, h.port)]})")
            by_endpoint[(h.address, h.port)] = who
            if h.lan_address is not None:
                if h.lan_address in lans:
                    raise SiteConfigError(f"{who}: lan_address {h.lan_address} is also {lans[h.lan_address]}'s")
                lans[h.lan_address] = who
            if h.box_cidr is not None:
                net = ipaddress.IPv4Network(h.box_cidr)
                for other, owner in nets:
                    if net.overlaps(other):
                        raise SiteConfigError(f"{who}: box_cidr {net} overlaps {other} of {owner}; give each host its own subnet")
                nets.append((net, who))


def load_sites_with(parse: Callable[..., list[Any]], text: str, *, base_dir: Path | None = None,
                    source: str = "OVERCLOUD_SITES") -> list[Any]:
    """Parse a JSON or YAML sites text (JSON is YAML) with ``parse(data, base_dir=...)``: the ssh
    sites' parser here, the cloud sites' in ``cloud/config.py``. Errors name ``source``."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise SiteConfigError(f"{source}: not valid YAML or JSON{at}") from None
    if data is None:
        return []
    try:
        return parse(data, base_dir=base_dir)
    except SiteConfigError as exc:
        raise SiteConfigError(f"{source}: {exc}") from None


def load_sites_file_with(parse: Callable[..., list[Any]], path: str | os.PathLike[str]) -> list[Any]:
    """The sites ``parse`` finds in a YAML sites file; relative paths are from the file's directory."""
    p = Path(path).expanduser()
    try:
        text = p.read_text()
    except OSError as exc:
        raise SiteConfigError(f"sites file {p} cannot be read ({exc.strerror})") from None
    return load_sites_with(parse, text, base_dir=p.resolve().parent, source=f"sites file {p}")


def sites_from_env_with(parse: Callable[..., list[Any]], environ: Mapping[str, str] | None = None) -> list[Any]:
    """The sites ``parse`` finds in the Tower's environment: ``OVERCLOUD_SITES_FILE`` first, else ``OVERCLOUD_SITES``."""
    env = os.environ if environ is None else environ
    if env.get("OVERCLOUD_SITES_FILE"):
        return load_sites_file_with(parse, env["OVERCLOUD_SITES_FILE"])
    if env.get("OVERCLOUD_SITES"):
        return load_sites_with(parse, env["OVERCLOUD_SITES"])
    return []


def load_ssh_sites(text: str, *, base_dir: Path | None = None, source: str = "OVERCLOUD_SITES") -> list[SSHSiteConfig]:
    """Parse a JSON or YAML sites text (JSON is YAML), then check it."""
    return load_sites_with(parse_ssh_sites, text, base_dir=base_dir, source=source)


def load_ssh_sites_file(path: str | os.PathLike[str]) -> list[SSHSiteConfig]:
    """The ssh sites of a YAML sites file; relative key files are taken from the file's directory."""
    return load_sites_file_with(parse_ssh_sites, path)


def ssh_sites_from_env(environ: Mapping[str, str] | None = None) -> list[SSHSiteConfig]:
    """The ssh sites the Tower's environment defines: ``OVERCLOUD_SITES_FILE`` first, else ``OVERCLOUD_SITES``."""
    return sites_from_env_with(parse_ssh_sites, environ)


def dump_host(h: SSHHostConfig) -> dict[str, Any]:
    """A host as a JSON-serializable dict (the key file by path only)."""
    d = dataclasses.asdict(h)
    d["key_file"] = str(h.key_file)
    d["labels"] = dict(h.labels)
    return json.loads(json.dumps(d))
