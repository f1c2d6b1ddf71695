"""Sites of kind ``openstack`` and ``aws``: their config, read and checked before any API call.

They live in the same ``OVERCLOUD_SITES_FILE`` / ``OVERCLOUD_SITES`` as ssh sites (see
``ssh/sites.py``). Example::

    - name: openstack-1
      kind: openstack
      cloud: overcloud-lab          # the entry of clouds.yaml (application credentials supported)
      clouds_file: clouds.yaml      # optional; relative to the sites file; else OS_CLIENT_CONFIG_FILE / standard places
      region: RegionOne             # optional
      image: debian-12-overcloud    # image name
      flavors: {small: m1.small, medium: m1.medium, large: m1.large}
      network: {cidr_pool: 10.90.0.0/16, external_network: null, floating_ip: false}
      ssh_cidrs: [10.90.0.0/16]     # where the Tower connects from, as the cloud sees it
      nodeport_cidrs: []            # who may reach NodePorts 30000-32767
      user: overcloud               # made by cloud-init, sudo without password
      box_pool: 10.96.0.0/16        # box subnets of this site's servers (a /26 each)
      max_servers: 20
      labels: {overcloud.io/tier: cloud}
    - name: aws-1
      kind: aws
      region: us-east-1
      profile: null                 # a profile of ~/.aws; else the standard chain (env, instance role)
      credentials_file: null        # optional shared credentials file (relative: to the sites file)
      endpoint_url: null            # only for a stand-in (moto in the lab)
      image: ami-0123456789abcdef0  # or an image name (resolved with DescribeImages)
      instance_types: {small: t3.micro, medium: t3.small, large: t3.medium}
      network: {vpc_cidr: 10.91.0.0/16, vpc_id: null, subnet_id: null}
      ssh_cidrs: [203.0.113.7/32]
      ...

Unknown fields are refused naming the site and field. Secrets never live here: clouds.yaml and
the AWS credential chain hold them, and a field that looks like one is refused with that advice.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from overcloud.underclouds.base import FLAVORS, UnderCloudError
from overcloud.underclouds.ssh.sites import SiteConfigError, load_sites_file_with, load_sites_with, sites_from_env_with

__all__ = [
    "CLOUD_KINDS",
    "CloudNetworkConfig",
    "CloudSiteConfig",
    "SiteConfigError",
    "SizeNotMapped",
    "cloud_sites_from_env",
    "load_cloud_sites",
    "load_cloud_sites_file",
    "parse_cloud_sites",
]

CLOUD_KINDS = ("openstack", "aws")

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_COMMON = {"name", "kind", "image", "network", "ssh_cidrs", "nodeport_cidrs", "user", "box_pool", "max_servers",
           "labels", "region", "boot_timeout", "delete_timeout"}
_FIELDS = {
    "openstack": _COMMON | {"cloud", "clouds_file", "flavors"},
    "aws": _COMMON | {"profile", "credentials_file", "endpoint_url", "instance_types"},
}
_NET_FIELDS = {
    "openstack": {"cidr_pool", "external_network", "floating_ip"},
    "aws": {"vpc_cidr", "vpc_id", "subnet_id", "public_ip"},
}
_SECRETS = re.compile(r"(secret|password|passwd|token|access_key|private_key|credential(s)?$|^key$)", re.I)
_WHERE_SECRETS = {
    "openstack": "in clouds.yaml (the site names its entry with `cloud:`; application credentials work)",
    "aws": "in the AWS credential chain (a profile of ~/.aws/credentials named with `profile:`, "
           "a `credentials_file:` path, the environment, or an instance role)",
}


class SizeNotMapped(UnderCloudError):
    """A size the cloud site does not map to a flavor / instance type (the API: 422)."""


@dataclasses.dataclass(frozen=True)
class CloudNetworkConfig:
    """The network options of a cloud site (the fields of the other kind stay None)."""

    # openstack
    cidr_pool: str | None = None  # each OverCloud gets a /24 of it
    external_network: str | None = None  # a name: a router to it per OverCloud
    floating_ip: bool = False  # a floating IP per server (needs external_network)
    # aws
    vpc_cidr: str | None = None  # each OverCloud gets a /24 of it (in its own VPC, or in vpc_id)
    vpc_id: str | None = None  # an existing VPC to make the OverClouds' subnets in
    subnet_id: str | None = None  # an existing subnet every server goes into (no subnet made)
    public_ip: bool = False  # a public IP per instance (+ internet gateway and default route in an OverCloud's own VPC)

    @property
    def pool(self) -> str | None:
        """The pool the OverClouds' /24s come from (either kind)."""
        return self.cidr_pool or self.vpc_cidr


@dataclasses.dataclass(frozen=True)
class CloudSiteConfig:
    """A site of kind ``openstack`` or ``aws``."""

    name: str
    kind: str  # openstack | aws
    image: str  # image name (openstack), AMI id or image name (aws)
    flavors: Mapping[str, str]  # our flavor (small|medium|large) -> cloud flavor name / EC2 instance type
    network: CloudNetworkConfig
    ssh_cidrs: tuple[str, ...]  # TCP 22 from these
    box_pool: str  # the box subnets of this site's servers come from it (a /26 per server)
    nodeport_cidrs: tuple[str, ...] = ()
    user: str = "overcloud"
    max_servers: int = 20
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    region: str | None = None
    boot_timeout: float = 900.0  # seconds from create to ACTIVE/running and sshd answering
    delete_timeout: float = 600.0  # seconds for the cloud to confirm a deletion
    # openstack
    cloud: str | None = None  # the clouds.yaml entry
    clouds_file: Path | None = None  # absolute; None: OS_CLIENT_CONFIG_FILE or the standard places
    # aws
    profile: str | None = None
    credentials_file: Path | None = None  # absolute; None: the standard chain
    endpoint_url: str | None = None  # moto in the lab; None on real AWS

    def cloud_flavor(self, flavor: str) -> str:
        """The cloud's flavor / instance type for our flavor; UnderCloudError naming what to add."""
        try:
            return self.flavors[flavor]
        except KeyError:
            field = "flavors" if self.kind == "openstack" else "instance_types"
            raise SizeNotMapped(
                f"site {self.name} has no {flavor} size: add `{flavor}: <{'flavor' if self.kind == 'openstack' else 'instance type'}>` "
                f"to its {field} (it has {', '.join(sorted(self.flavors)) or 'none'})", site=self.name) from None


def _where(site: str) -> str:
    return f"site {site!r}"


def _opt_str(raw: Mapping[str, Any], field: str, where: str) -> str | None:
    v = raw.get(field)
    if v is None:
        return None
    if not isinstance(v, str) or not v.strip():
        raise SiteConfigError(f"{where}: {field} must be a non-empty string")
    return v.strip()


def _net(value: Any, where: str, field: str, *, max_prefix: int) -> str:
    if not isinstance(value, str):
        raise SiteConfigError(f"{where}: {field} must be an IPv4 network like 10.90.0.0/16, not {value!r}")
    try:
        net = ipaddress.IPv4Network(value, strict=True)
    except ValueError as exc:
        raise SiteConfigError(f"{where}: {field} {value!r} is not an IPv4 network ({exc})") from None
    if net.prefixlen > max_prefix:
        raise SiteConfigError(f"{where}: {field} {net} is too small (a /{max_prefix} or larger)")
    return str(net)


def _cidrs(value: Any, where: str, field: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise SiteConfigError(f"{where}: {field} must be a list of IPv4 networks (e.g. [203.0.113.7/32])")
    out = []
    for v in value:
        try:
            out.append(str(ipaddress.IPv4Network(str(v), strict=True)))
        except ValueError as exc:
            raise SiteConfigError(f"{where}: {field}: {v!r} is not an IPv4 network ({exc})") from None
    return tuple(out)


def _path(raw: Mapping[str, Any], field: str, where: str, base_dir: Path | None) -> Path | None:
    v = _opt_str(raw, field, where)
    if v is None:
        return None
    p = Path(v).expanduser()
    if not p.is_absolute():
        p = (base_dir or Path.cwd()) / p
    if not p.is_file():
        raise SiteConfigError(f"{where}: {field} {p} does not exist or is not a file")
    return p


def _refuse_secrets(raw: Mapping[str, Any], kind: str, where: str, path: str = "") -> None:
    for key, value in raw.items():
        if isinstance(key, str) and _SECRETS.search(key) and key not in ("credentials_file",):
            raise SiteConfigError(
                f"{where}: field {path}{key} looks like a secret; secrets never go in the sites file: put them "
                f"{_WHERE_SECRETS[kind]}")
        if isinstance(value, Mapping):
            _refuse_secrets(value, kind, where, f"{path}{key}.")


def _parse_site(raw: Mapping[str, Any], name: str, kind: str, base_dir: Path | None) -> CloudSiteConfig:
    where = _where(name)
    _refuse_secrets(raw, kind, where)
    unknown = sorted(set(raw) - _FIELDS[kind])
    if unknown:
        raise SiteConfigError(f"{where}: unknown field(s) {', '.join(unknown)} (known for kind {kind}: "
                              f"{', '.join(sorted(_FIELDS[kind]))})")
    image = _opt_str(raw, "image", where)
    if image is None:
        raise SiteConfigError(f"{where}: image is missing (the image name{' or AMI id' if kind == 'aws' else ''} servers boot from)")
    fl_field = "flavors" if kind == "openstack" else "instance_types"
    fl = raw.get(fl_field)
    if not isinstance(fl, Mapping) or not fl:
        raise SiteConfigError(f"{where}: {fl_field} is missing: map our sizes to the cloud's, e.g. "
                              + ("{small: m1.small, medium: m1.medium, large: m1.large}" if kind == "openstack"
                                 else "{small: t3.micro, medium: t3.small, large: t3.medium}"))
    flavors: dict[str, str] = {}
    for k, v in fl.items():
        if k not in FLAVORS:
            raise SiteConfigError(f"{where}: {fl_field}: {k!r} is not one of our sizes ({', '.join(FLAVORS)})")
        if not isinstance(v, str) or not v.strip():
            raise SiteConfigError(f"{where}: {fl_field}.{k} must name the cloud's {'flavor' if kind == 'openstack' else 'instance type'}")
        flavors[k] = v.strip()
    netraw = raw.get("network") or {}
    if not isinstance(netraw, Mapping):
        raise SiteConfigError(f"{where}: network must be a mapping ({', '.join(sorted(_NET_FIELDS[kind]))})")
    nunknown = sorted(set(netraw) - _NET_FIELDS[kind])
    if nunknown:
        raise SiteConfigError(f"{where}: unknown field(s) network.{', network.'.join(nunknown)} (known for kind {kind}: "
                              f"{', '.join(sorted(_NET_FIELDS[kind]))})")
    if kind == "openstack":
        pool = netraw.get("cidr_pool")
        if pool is None:
            raise SiteConfigError(f"{where}: network.cidr_pool is missing (each OverCloud gets a /24 of it, e.g. 10.90.0.0/16)")
        fip = netraw.get("floating_ip", False)
        if not isinstance(fip, bool):
            raise SiteConfigError(f"{where}: network.floating_ip must be true or false")
        ext = _opt_str(netraw, "external_network", where)
        if fip and ext is None:
            raise SiteConfigError(f"{where}: network.floating_ip needs network.external_network (the network floating IPs come from)")
        network = CloudNetworkConfig(cidr_pool=_net(pool, where, "network.cidr_pool", max_prefix=24),
                                     external_network=ext, floating_ip=fip)
    else:
        vpc_cidr = netraw.get("vpc_cidr")
        subnet_id = _opt_str(netraw, "subnet_id", where)
        vpc_id = _opt_str(netraw, "vpc_id", where)
        if vpc_cidr is None and subnet_id is None:
            raise SiteConfigError(f"{where}: network.vpc_cidr is missing (a /24 of it per OverCloud, e.g. 10.91.0.0/16), "
                                  "or name an existing subnet with network.subnet_id")
        if subnet_id is not None and vpc_id is None and vpc_cidr is not None:
            pass  # the subnet's VPC is found from the subnet
        public_ip = netraw.get("public_ip", False)
        if not isinstance(public_ip, bool):
            raise SiteConfigError(f"{where}: network.public_ip must be true or false")
        network = CloudNetworkConfig(
            vpc_cidr=_net(vpc_cidr, where, "network.vpc_cidr", max_prefix=24) if vpc_cidr is not None else None,
            vpc_id=vpc_id, subnet_id=subnet_id, public_ip=public_ip)
    ssh_cidrs = _cidrs(raw.get("ssh_cidrs"), where, "ssh_cidrs")
    if not ssh_cidrs:
        raise SiteConfigError(f"{where}: ssh_cidrs is missing: the networks the Tower connects from as the cloud sees "
                              "them (its public address/32 for a public cloud), SSH is allowed from them only")
    if raw.get("box_pool") is None:
        raise SiteConfigError(f"{where}: box_pool is missing (the box subnets of this site's servers, a /26 each, "
                              "unique among all sites, e.g. 10.96.0.0/16)")
    box_pool = _net(raw.get("box_pool"), where, "box_pool", max_prefix=26)
    if network.pool and ipaddress.IPv4Network(box_pool).overlaps(ipaddress.IPv4Network(network.pool)):
        raise SiteConfigError(f"{where}: box_pool {box_pool} overlaps the servers' network {network.pool}; use another range")
    user = raw.get("user", "overcloud")
    if not isinstance(user, str) or not _USER.match(user) or user == "root":
        raise SiteConfigError(f"{where}: user {user!r} must be a user name other than root (cloud-init makes it, "
                              "with sudo without a password)")
    max_servers = raw.get("max_servers", 20)
    if isinstance(max_servers, bool) or not isinstance(max_servers, int) or not 1 <= max_servers <= 10000:
        raise SiteConfigError(f"{where}: max_servers must be an integer from 1 to 10000, not {max_servers!r}")
    timeouts = {}
    for field, default in (("boot_timeout", 900.0), ("delete_timeout", 600.0)):
        v = raw.get(field, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 7200:
            raise SiteConfigError(f"{where}: {field} must be seconds, more than 0 and at most 7200")
        timeouts[field] = float(v)
    labels = raw.get("labels") or {}
    if not isinstance(labels, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise SiteConfigError(f"{where}: labels must be a mapping of strings to strings")
    common = dict(name=name, kind=kind, image=image, flavors=flavors, network=network, ssh_cidrs=ssh_cidrs,
                  nodeport_cidrs=_cidrs(raw.get("nodeport_cidrs"), where, "nodeport_cidrs"), user=user,
                  box_pool=box_pool, max_servers=max_servers, labels=dict(labels),
                  region=_opt_str(raw, "region", where), **timeouts)
    if kind == "openstack":
        cloud = _opt_str(raw, "cloud", where)
        if cloud is None:
            raise SiteConfigError(f"{where}: cloud is missing (the entry of clouds.yaml holding the credentials)")
        return CloudSiteConfig(**common, cloud=cloud, clouds_file=_path(raw, "clouds_file", where, base_dir))
    endpoint = _opt_str(raw, "endpoint_url", where)
    if endpoint is not None and not re.match(r"^https?://", endpoint):
        raise SiteConfigError(f"{where}: endpoint_url {endpoint!r} must be an http(s) URL")
    if common["region"] is None:
        raise SiteConfigError(f"{where}: region is missing (e.g. us-east-1)")
    return CloudSiteConfig(**common, profile=_opt_str(raw, "profile", where),
                           credentials_file=_path(raw, "credentials_file", where, base_dir), endpoint_url=endpoint)


def parse_cloud_sites(data: Any, *, base_dir: Path | None = None) -> list[CloudSiteConfig]:
    """The ``openstack`` and ``aws`` sites of a sites definition (a list, or ``{"sites": [...]}``),
    checked; other kinds are left to their own parsers. Raises SiteConfigError."""
    if isinstance(data, Mapping) and "sites" in data:
        data = data["sites"]
    if not isinstance(data, list):
        raise SiteConfigError("sites must be a list of sites (each with name and kind), or a mapping with a 'sites' list")
    sites: list[CloudSiteConfig] = []
    for i, raw in enumerate(data):
        if not isinstance(raw, Mapping):
            raise SiteConfigError(f"site #{i + 1} must be a mapping with name and kind")
        name = raw.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise SiteConfigError(f"site #{i + 1}: name must be lower-case letters, digits and '-' (up to 63), not {name!r}")
        if raw.get("kind") in CLOUD_KINDS:
            sites.append(_parse_site(raw, name, raw["kind"], base_dir))
    _check_across(sites)
    return sites


def _check_across(sites: list[CloudSiteConfig]) -> None:
    names: set[str] = set()
    pools: list[tuple[ipaddress.IPv4Network, str]] = []
    for s in sites:
        if s.name in names:
            raise SiteConfigError(f"site {s.name!r} is defined twice")
        names.add(s.name)
        net = ipaddress.IPv4Network(s.box_pool)
        for other, owner in pools:
            if net.overlaps(other):
                raise SiteConfigError(f"{_where(s.name)}: box_pool {net} overlaps {other} of site {owner!r}; "
                                      "give each site its own range")
        pools.append((net, s.name))


def check_against_ssh(cloud: list[CloudSiteConfig], ssh_sites: list[Any]) -> None:
    """Box pools of cloud sites must not overlap the ssh hosts' box subnets (one routed world)."""
    for s in cloud:
        pool = ipaddress.IPv4Network(s.box_pool)
        for site in ssh_sites:
            for h in site.hosts:
                if h.box_cidr and pool.overlaps(ipaddress.IPv4Network(h.box_cidr)):
                    raise SiteConfigError(f"{_where(s.name)}: box_pool {pool} overlaps box_cidr {h.box_cidr} of ssh host "
                                          f"{h.name!r} (site {site.name!r}); give each its own range")


def load_cloud_sites(text: str, *, base_dir: Path | None = None, source: str = "OVERCLOUD_SITES") -> list[CloudSiteConfig]:
    """Parse a JSON or YAML sites text (JSON is YAML), then check it."""
    return load_sites_with(parse_cloud_sites, text, base_dir=base_dir, source=source)


def load_cloud_sites_file(path: str | os.PathLike[str]) -> list[CloudSiteConfig]:
    """The cloud sites of a YAML sites file; relative paths are taken from the file's directory."""
    return load_sites_file_with(parse_cloud_sites, path)


def cloud_sites_from_env(environ: Mapping[str, str] | None = None) -> list[CloudSiteConfig]:
    """The cloud sites of ``OVERCLOUD_SITES_FILE`` (first) or ``OVERCLOUD_SITES``."""
    return sites_from_env_with(parse_cloud_sites, environ)
