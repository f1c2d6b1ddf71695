"""OpenStack sites: servers, networks and security groups through openstacksdk (Keystone v3).

One :class:`OpenStackProvider` per site. Per OverCloud it makes a network and a /24 subnet of the
site's ``network.cidr_pool`` (a router to ``external_network`` when the site names one), a security
group, a key pair (the Tower's public key), then one Neutron port per box (carrying the box subnet
as an allowed address pair) and one server on it, and a floating IP per server when the site asks.
Everything is found again by tag (servers are created with theirs), so a resumed create makes
only what is missing (the contract's *Idempotent*), and deletes are confirmed by listing.
Connection, retries, errors without secrets and the tag strings: ``openstack_base.py``.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from overcloud.underclouds.base import TaggedResource, UnderCloudError, parallel
from overcloud.underclouds.cloud.openstack_base import OpenStackBase, meta_key, os_tag, parse_tags
from overcloud.underclouds.cloud.provider import (
    ACTIVE, BUILDING, DELETED, ERROR, NODEPORT_RANGE, TAG_BOX, TAG_BOX_CIDR, TAG_OVERCLOUD, TAG_TOWER, VXLAN_PORT,
    WG_PORT, CloudQuotaExceeded, CloudServerFailed, CloudUnavailable, Limits, NetworkInfo, Server, ServerRequest,
    network_name,
)

__all__ = ["OpenStackProvider", "os_tag", "parse_tags"]

logger = logging.getLogger(__name__)

_NOVA_STATUS = {"ACTIVE": ACTIVE, "BUILD": BUILDING, "REBUILD": BUILDING, "REBOOT": BUILDING, "HARD_REBOOT": BUILDING,
                "PASSWORD": BUILDING, "MIGRATING": BUILDING, "RESIZE": BUILDING, "VERIFY_RESIZE": BUILDING,
                "DELETED": DELETED, "SOFT_DELETED": DELETED}  # every other status (ERROR, SHUTOFF, ...) is an error
_POLL_S = (0.5, 1.0, 1.0, 2.0)  # pauses between list calls while waiting (then 2 s)


def _pause(i: int) -> float:
    return _POLL_S[i] if i < len(_POLL_S) else _POLL_S[-1]


class OpenStackProvider(OpenStackBase):
    """The ``openstack`` kind: one site = one cloud entry of clouds.yaml (+ region)."""

    # -- check, limits -------------------------------------------------------------------------

    def check(self) -> None:
        """A token from Keystone, then the flavor list (one cheap call that also proves the
        compute endpoint and the site's flavor names)."""
        self._call("authenticate", lambda c: c.authorize())
        try:
            self._flavors(refresh=True)
        except CloudUnavailable:
            raise
        except UnderCloudError as exc:  # the site names a flavor the cloud lacks: unusable as configured
            raise CloudUnavailable(str(exc), site=self.site) from None

    def _flavors(self, refresh: bool = False, *, need: Iterable[str] = ()) -> dict[str, tuple[str, int, int]]:
        """our flavor -> (flavor id, vcpus, ram_mb); UnderCloudError naming a flavor the cloud lacks,
        or one of ``need`` the site does not map."""
        for f in need:
            self.config.cloud_flavor(f)  # UnderCloudError naming what to add to the site's flavors
        if refresh or not self._flavor_sizes:
            by_name = {f.name: f for f in self._call("list flavors", lambda c: c.compute.flavors(details=True))}
            missing = sorted(v for v in self.config.flavors.values() if v not in by_name)
            if missing:
                raise UnderCloudError(f"site {self.site}: the cloud has no flavor {', '.join(missing)} (it has "
                                      f"{', '.join(sorted(by_name)) or 'none'}); fix the site's flavors", site=self.site)
            for ours, theirs in self.config.flavors.items():
                f = by_name[theirs]
                self._ids[f"flavor:{ours}"] = f.id
                self._flavor_sizes[ours] = (int(f.vcpus or 0), int(f.ram or 0))
        return {k: (self._ids[f"flavor:{k}"], *v) for k, v in self._flavor_sizes.items()}

    def limits(self) -> Limits:
        """Nova's absolute limits (instances, cores, RAM: -1 = unlimited = None) with usage, and
        Neutron's quotas with usage for networks, subnets, ports, routers, security groups,
        security group rules and floating IPs in ``Limits.quotas`` (when the credentials may read them)."""
        lim = self._call("get compute limits", lambda c: c.compute.get_limits()).absolute
        sizes = self._flavors()

        def cap(v: Any) -> int | None:
            return None if v is None or int(v) < 0 else int(v)

        out = Limits(max_instances=cap(lim.instances), used_instances=cap(lim.instances_used),
                     max_cores=cap(lim.total_cores), used_cores=cap(lim.total_cores_used),
                     max_ram_mb=cap(lim.total_ram), used_ram_mb=cap(lim.total_ram_used),
                     flavors={k: (v[1], v[2]) for k, v in sizes.items()})
        try:
            q = self._call("get network quotas", lambda c: c.network.get_quota(c.current_project_id, details=True))
        except CloudUnavailable:
            raise
        except UnderCloudError as exc:  # a member may not read them on some clouds: Nova's still count
            logger.info("site %s: Neutron quotas not readable: %s", self.site, exc)
        else:
            for name in ("networks", "subnets", "ports", "routers", "security_groups", "security_group_rules",
                         "floating_ips"):
                d = getattr(q, name, None)
                if isinstance(d, dict):
                    out.quotas[name] = {"limit": cap(d.get("limit")), "used": int(d.get("used") or 0)}
        return out

    def needs(self, reqs: list[ServerRequest], *, new_network: bool) -> dict[str, int]:
        """What making ``reqs`` (and, when ``new_network``, an OverCloud's network) takes from the
        quotas, in the keys of :meth:`limits`: the caller compares and raises 429 with the numbers."""
        sizes = self._flavors(need={r.flavor for r in reqs})
        n = len(reqs)
        out = {"instances": n, "cores": sum(sizes[r.flavor][1] for r in reqs),
               "ram_mb": sum(sizes[r.flavor][2] for r in reqs), "ports": n}
        if self.config.network.floating_ip:
            out["floating_ips"] = n
        if new_network:
            out.update(networks=1, subnets=1, security_groups=1)
            out["ports"] += 1 + (1 if self.config.network.external_network else 0)  # DHCP, router interface
            if self.config.network.external_network:
                out["routers"] = 1
        return out

    def check_quota(self, overcloud_id: str, reqs: list[ServerRequest]) -> Limits:
        """Before anything is made: CloudQuotaExceeded with the numbers of every quota (Nova's
        instances/cores/RAM, Neutron's networks/ports/...) that cannot hold what is still to make
        for these requests (servers and network already there, from a resumed create, are not
        asked again). Returns the limits read."""
        have = {s.name for s in self._servers(overcloud_id)}
        todo = [r for r in reqs if r.name not in have]
        nets = self._call("list networks", lambda c: c.network.networks(tags=self._filter(overcloud_id)),
                          overcloud_id=overcloud_id)
        lim = self.limits()
        need = self.needs(todo, new_network=not nets)
        caps = {"instances": (lim.max_instances, lim.used_instances), "cores": (lim.max_cores, lim.used_cores),
                "ram_mb": (lim.max_ram_mb, lim.used_ram_mb)}
        caps.update({k: (v.get("limit"), v.get("used")) for k, v in lim.quotas.items()})
        short = {}
        for k, asked in need.items():
            limit, used = caps.get(k, (None, None))
            if asked and limit is not None and (used or 0) + asked > limit:
                short[k] = {"limit": limit, "used": used or 0, "asked": asked}
        if short:
            what = "; ".join(f"{k}: {v['used']} of {v['limit']} used, {v['asked']} asked" for k, v in short.items())
            raise CloudQuotaExceeded(f"site {self.site}: the project's quota cannot hold {len(todo)} more server(s) "
                                     f"({what})", short, site=self.site, overcloud_id=overcloud_id)
        return lim

    def _quota_error(self, overcloud_id: str, reqs: list[ServerRequest], detail: str) -> CloudQuotaExceeded:
        lim = self.limits()
        need = self.needs(reqs, new_network=False)
        numbers = {"instances": {"limit": lim.max_instances, "used": lim.used_instances, "asked": need["instances"]},
                   "cores": {"limit": lim.max_cores, "used": lim.used_cores, "asked": need["cores"]},
                   "ram_mb": {"limit": lim.max_ram_mb, "used": lim.used_ram_mb, "asked": need["ram_mb"]}}
        return CloudQuotaExceeded(f"site {self.site}: the project's quota cannot hold {len(reqs)} more server(s): "
                                  f"{detail}", numbers, site=self.site, overcloud_id=overcloud_id)

    # -- network ---------------------------------------------------------------------------

    def _pick_cidr(self, overcloud_id: str) -> ipaddress.IPv4Network:
        """A /24 of the pool no subnet of the project overlaps (this Tower's other OverClouds' and
        anyone else's): the first free one from a start derived from the OverCloud id, so a retry
        picks the same one."""
        pool = ipaddress.IPv4Network(self.config.network.cidr_pool)
        used = []
        for s in self._call("list subnets", lambda c: c.network.subnets(ip_version=4), overcloud_id=overcloud_id):
            try:
                used.append(ipaddress.IPv4Network(s.cidr))
            except ValueError:
                continue
        candidates = list(pool.subnets(new_prefix=24)) if pool.prefixlen <= 24 else [pool]
        start = int(hashlib.sha256(overcloud_id.encode()).hexdigest(), 16) % len(candidates)
        for i in range(len(candidates)):
            c = candidates[(start + i) % len(candidates)]
            if not any(c.overlaps(u) for u in used):
                return c
        raise CloudQuotaExceeded(f"site {self.site}: no free /24 left in network.cidr_pool {pool}",
                                 {"networks": {"limit": len(candidates), "used": len(candidates), "asked": 1}},
                                 site=self.site, overcloud_id=overcloud_id)

    def ensure_network(self, overcloud_id: str, public_key: str) -> NetworkInfo:
        name = network_name(overcloud_id)
        cfg = self.config.network
        net = self._neutron_find_or_create(
            "network", overcloud_id, lambda c: c.network.networks(name=name),
            lambda c, extra: c.network.create_network(name=name, **extra))
        with self._cidr_lock:  # two OverClouds of this Tower never pick the same free /24 at once
            subnets = self._call("list subnets", lambda c: c.network.subnets(network_id=net.id),
                                 overcloud_id=overcloud_id)
            if subnets:
                cidr = ipaddress.IPv4Network(subnets[0].cidr)
                gateway = subnets[0].gateway_ip or str(cidr.network_address + 1)
            else:
                cidr = self._pick_cidr(overcloud_id)
                gateway = str(cidr.network_address + 1)
            subnet = self._neutron_find_or_create(
                "subnet", overcloud_id, lambda c: c.network.subnets(network_id=net.id, name=name),
                lambda c, extra: c.network.create_subnet(name=name, network_id=net.id, ip_version=4, cidr=str(cidr),
                                                         gateway_ip=gateway, enable_dhcp=True, **extra),
                listed=[s for s in subnets if s.name == name])
        ids = {"network": net.id, "subnet": subnet.id}
        if cfg.external_network:
            ext = self._external_network_id()
            router = self._neutron_find_or_create(
                "router", overcloud_id, lambda c: c.network.routers(name=name),
                lambda c, extra: c.network.create_router(name=name, external_gateway_info={"network_id": ext}, **extra))
            ids["router"] = router.id
            ifaces = self._call("list router ports", lambda c: c.network.ports(
                device_id=router.id, network_id=net.id), overcloud_id=overcloud_id)
            if not ifaces:
                self._call("add router interface", lambda c: c.network.add_interface_to_router(router, subnet_id=subnet.id),
                           overcloud_id=overcloud_id)
        sg = self._neutron_find_or_create(
            "security group", overcloud_id, lambda c: c.network.security_groups(name=name),
            lambda c, extra: c.network.create_security_group(name=name, **extra))
        ids["security_group"] = sg.id
        want = [self._rule(sg.id, "tcp", 22, 22, cidr=c) for c in self.config.ssh_cidrs]
        want.append(self._rule(sg.id, "udp", VXLAN_PORT, VXLAN_PORT, group=sg.id))
        want += [self._rule(sg.id, "tcp", *NODEPORT_RANGE, cidr=c) for c in self.config.nodeport_cidrs]
        self._add_rules(overcloud_id, sg, want)
        ids["key_pair"] = self._ensure_keypair(overcloud_id, name, public_key)
        return NetworkInfo(overcloud_id=overcloud_id, cidr=str(cidr), gateway=gateway, ids=ids)

    def _external_network_id(self) -> str:
        if "external" not in self._ids:
            name = self.config.network.external_network
            found = self._call("find external network", lambda c: c.network.networks(name=name, is_router_external=True))
            if not found:
                raise UnderCloudError(f"site {self.site}: no external network {name!r} (network.external_network)",
                                      site=self.site)
            self._ids["external"] = found[0].id
        return self._ids["external"]

    @staticmethod
    def _rule(sg_id: str, proto: str, lo: int, hi: int, *, cidr: str | None = None, group: str | None = None) -> dict:
        r = {"security_group_id": sg_id, "direction": "ingress", "ethertype": "IPv4", "protocol": proto,
             "port_range_min": lo, "port_range_max": hi}
        if group:
            r["remote_group_id"] = group
        else:
            r["remote_ip_prefix"] = cidr
        return r

    def _add_rules(self, overcloud_id: str, sg: Any, want: list[dict]) -> None:
        """The rules of ``want`` the group lacks, in one bulk create (Neutron's rules have no
        tags: they go with their group)."""
        def key(r: Any) -> tuple:
            get = r.get if isinstance(r, dict) else (lambda k: getattr(r, k, None))
            return (get("direction"), get("protocol"), get("port_range_min"), get("port_range_max"),
                    get("remote_ip_prefix"), get("remote_group_id"))
        have = {key(r) for r in self._call("list security group rules", lambda c: c.network.security_group_rules(
            security_group_id=sg.id), overcloud_id=overcloud_id)}
        missing = [r for r in want if key(r) not in have]
        if missing:
            self._call("create security group rules", lambda c: c.network.create_security_group_rules(missing),
                       overcloud_id=overcloud_id, retry_fn=lambda c: self._retry_rules(c, sg, missing, key))

    @staticmethod
    def _retry_rules(conn: Any, sg: Any, missing: list[dict], key: Callable[[Any], tuple]) -> Any:
        have = {key(r) for r in conn.network.security_group_rules(security_group_id=sg.id)}
        still = [r for r in missing if key(r) not in have]
        return list(conn.network.create_security_group_rules(still)) if still else []

    def allow_wan_peers(self, overcloud_id: str, cidrs: list[str]) -> None:
        name = network_name(overcloud_id)
        tags = self._tags(overcloud_id)
        groups = [g for g in self._call("find security group", lambda c: c.network.security_groups(
            name=name, tags=",".join(tags)), overcloud_id=overcloud_id)]
        if not groups:
            raise UnderCloudError(f"site {self.site}: OverCloud {overcloud_id} has no security group here "
                                  "(ensure_network first)", site=self.site, overcloud_id=overcloud_id)
        sg = groups[0]
        want = [self._rule(sg.id, "udp", WG_PORT, WG_PORT, cidr=str(ipaddress.IPv4Network(c, strict=False)))
                for c in cidrs]
        self._add_rules(overcloud_id, sg, want)

    def _ensure_keypair(self, overcloud_id: str, name: str, public_key: str) -> str:
        """Nova key pairs have neither tags nor descriptions: ``oc-<id8>`` with the Tower's key.
        One of that name with another key is replaced (the Tower's key is the one that works)."""
        from openstack import exceptions as osx

        def get(c: Any) -> Any:
            try:
                return c.compute.get_keypair(name)
            except osx.NotFoundException:
                return None

        kp = self._call("find key pair", get, overcloud_id=overcloud_id)
        if kp is not None and (kp.public_key or "").split()[:2] != public_key.split()[:2]:
            self._call("delete key pair", lambda c: c.compute.delete_keypair(name, ignore_missing=True),
                       overcloud_id=overcloud_id)
            kp = None
        if kp is None:
            self._call("create key pair", lambda c: c.compute.create_keypair(name=name, public_key=public_key.strip()),
                       overcloud_id=overcloud_id, retry_fn=lambda c: get(c) or c.compute.create_keypair(
                           name=name, public_key=public_key.strip()))
        return name

    # -- servers ---------------------------------------------------------------------------

    def _image_id(self) -> str:
        if "image" not in self._ids:
            name = self.config.image
            found = [i for i in self._call("find image", lambda c: c.image.images(name=name))
                     if (i.status or "active") == "active"]
            if not found:
                raise UnderCloudError(f"site {self.site}: no active image named {name!r} in the cloud (the site's "
                                      "image)", site=self.site)
            self._ids["image"] = found[0].id
        return self._ids["image"]

    def _to_server(self, s: Any, ports: dict[str, Any] | None = None, fips: dict[str, str] | None = None) -> Server:
        tags = {meta_key(k, back=True): v for k, v in (s.metadata or {}).items() if k.startswith("overcloud.io:")}
        tags.update(parse_tags(s.tags))
        status = _NOVA_STATUS.get((s.status or "").upper(), ERROR)
        private = public = None
        for addrs in (s.addresses or {}).values():
            for a in addrs:
                if a.get("version", 4) != 4:
                    continue
                if a.get("OS-EXT-IPS:type") == "floating":
                    public = public or a.get("addr")
                else:
                    private = private or a.get("addr")
        port = (ports or {}).get(s.id)
        if private is None and port is not None:
            ips = port.fixed_ips or []
            private = ips[0]["ip_address"] if ips else None
        if public is None and port is not None and fips:
            public = fips.get(port.id)
        fault = None
        if status == ERROR:
            f = s.fault or {}
            fault = ((f.get("message") if isinstance(f, dict) else str(f)) or f"status {s.status}").strip()
        return Server(id=s.id, name=s.name, box=tags.get(TAG_BOX), status=status, private_address=private,
                      public_address=public, tags=tags, fault=fault)

    def _complete(self, raw: list[Any]) -> list[Server]:
        """Servers with their addresses. Nova's address cache may lag behind Neutron (a floating IP
        just associated, a port just bound): then the ports (one call) and floating IPs (one call)
        fill them in."""
        servers = [self._to_server(s) for s in raw]
        fip = self.config.network.floating_ip
        lacking = [r.id for r, s in zip(raw, servers)
                   if s.status == ACTIVE and (s.private_address is None or (fip and s.public_address is None))]
        if not lacking:
            return servers
        ports = {p.device_id: p for p in self._call("list ports", lambda c: c.network.ports(device_id=lacking))}
        fips: dict[str, str] = {}
        if fip:
            fips = {i.port_id: i.floating_ip_address for i in self._call(
                "list floating IPs", lambda c: c.network.ips(tags=self._filter(None))) if i.port_id}
        return [self._to_server(r, ports, fips) if r.id in lacking else s for r, s in zip(raw, servers)]

    def _servers(self, overcloud_id: str | None) -> list[Any]:
        return self._call("list servers", lambda c: c.compute.servers(details=True, tags=self._filter(overcloud_id)),
                          overcloud_id=overcloud_id)

    def create_servers(self, net: NetworkInfo, reqs: list[ServerRequest]) -> list[Server]:
        if not reqs:
            return []
        oc = net.overcloud_id
        flavors = self._flavors(need={r.flavor for r in reqs})
        image = self._image_id()
        existing = {s.name: s for s in self._servers(oc)}
        ports = {p.name: p for p in self._call("list ports", lambda c: c.network.ports(
            network_id=net.ids["network"], description=self._marker(oc)), overcloud_id=oc)}
        fips = None
        if self.config.network.floating_ip:
            fips = {i.port_id: i for i in self._call("list floating IPs", lambda c: c.network.ips(
                tags=self._filter(oc)), overcloud_id=oc) if i.port_id}

        def one(req: ServerRequest) -> Any:
            s = existing.get(req.name)
            if s is None:
                port = self._make_port(net, req, listed=[ports[req.name]] if req.name in ports else [], fips=fips)
                s = self._create_server(net, req, flavors[req.flavor][0], image, port)
            return s

        done = parallel(one, list(reqs), name=f"os-{self.site}")
        failed = [err for _, _, err in done if err is not None]
        if failed:  # every request was tried: what was made carries its tags, for the revert to find
            raise failed[0]
        return [self._to_server(s) for _, s, _ in done]

    def _make_port(self, net: NetworkInfo, req: ServerRequest, *, listed: list[Any] | None = None,
                   fips: dict[str, Any] | None = None) -> Any:
        """The server's port, ours (not Nova's) so that it can carry the box subnet as an allowed
        address pair: boxes on the server send and receive from that subnet on the site's network,
        which port security would otherwise drop."""
        oc = net.overcloud_id
        attrs: dict[str, Any] = {"name": req.name, "network_id": net.ids["network"],
                                 "security_groups": [net.ids["security_group"]]}
        cidr = req.tags.get(TAG_BOX_CIDR)
        if cidr:
            attrs["allowed_address_pairs"] = [{"ip_address": cidr}]

        port = self._neutron_find_or_create(
            "port", oc, lambda c: c.network.ports(network_id=net.ids["network"], name=req.name),
            lambda c, extra: c.network.create_port(**attrs, **extra), listed=listed)
        if self.config.network.floating_ip:
            self._neutron_find_or_create(
                "floating IP", oc, lambda c: c.network.ips(port_id=port.id),
                lambda c, extra: c.network.create_ip(floating_network_id=self._external_network_id(), port_id=port.id,
                                                     **extra),
                listed=None if fips is None else [fips[port.id]] if port.id in fips else [])
        return port

    def _create_server(self, net: NetworkInfo, req: ServerRequest, flavor_id: str, image_id: str, port: Any) -> Any:
        from openstack import exceptions as osx
        oc = net.overcloud_id
        tags = self._tags(oc) + [os_tag(TAG_BOX, req.box)]
        meta = {meta_key(k): str(v) for k, v in {**req.tags, TAG_OVERCLOUD: oc, TAG_TOWER: self.tower_id,
                                                   TAG_BOX: req.box}.items()}
        user_data = base64.b64encode(req.user_data.encode()).decode()

        def create(c: Any) -> Any:
            try:
                return c.compute.create_server(
                    name=req.name, flavor_id=flavor_id, image_id=image_id, networks=[{"port": port.id}],
                    key_name=net.ids.get("key_pair"), user_data=user_data, metadata=meta, tags=tags)
            except osx.HttpException as exc:
                if exc.status_code == 403 and "quota" in str(exc.details or exc).lower():
                    raise self._quota_error(oc, [req], self._scrub(str(exc.details or "quota exceeded"))) from None
                raise

        def again(c: Any) -> Any:  # a create that failed with a server error may still have made it
            for s in c.compute.servers(details=True, tags=",".join(tags)):
                if s.name == req.name:
                    return s
            return create(c)

        return self._call(f"create server {req.name}", create, overcloud_id=oc, retry_fn=again)

    def wait_servers(self, ids: list[str], timeout: float) -> list[Server]:
        """One list call per pause for all of them (by this Tower's tag), never one per server."""
        deadline = time.monotonic() + timeout
        want = list(ids)
        i = 0
        with self.stats.waiting():
            while True:
                by_id = {s.id: s for s in self._servers(None)}
                for x in [x for x in want if x not in by_id]:  # not listed (yet?): asked by id; 404 = gone
                    found = self._call(f"get server {x}", lambda c, x=x: c.compute.find_server(x, ignore_missing=True))
                    if found is None:
                        raise CloudServerFailed(f"site {self.site}: server {x} is gone while booting",
                                                server=x, fault="deleted", site=self.site)
                    by_id[x] = found
                servers = [self._to_server(by_id[x]) for x in want]
                for s in servers:
                    if s.status == ERROR and not by_id[s.id].fault:  # a listing may leave the fault out: ask once
                        full = self._call(f"get server {s.id}", lambda c, x=s.id: c.compute.find_server(
                            x, ignore_missing=True))
                        if full is not None:
                            s = self._to_server(full)
                    if s.status in (ERROR, DELETED):
                        raise CloudServerFailed(f"site {self.site}: server {s.name} went to {s.status}: {s.fault}",
                                                server=s.id, fault=s.fault, site=self.site,
                                                overcloud_id=s.overcloud_id)
                if all(s.status == ACTIVE for s in servers):
                    return self._complete([by_id[x] for x in want])
                if time.monotonic() >= deadline:
                    slow = [f"{s.name} {s.status}" for s in servers if s.status != ACTIVE]
                    raise UnderCloudError(f"site {self.site}: servers not active after {timeout:.0f} s: "
                                          f"{', '.join(slow)}", site=self.site)
                time.sleep(min(_pause(i), max(0.0, deadline - time.monotonic())))
                i += 1

    def delete_servers(self, ids: list[str], timeout: float) -> None:
        """Delete, then list (one call per pause) until none of them is there; a server that went
        to ERROR while deleting is asked again once. Then the servers' own ports and floating IPs."""
        if not ids:
            return
        deadline = time.monotonic() + timeout
        ports = [p for p in self._call("list ports", lambda c: c.network.ports(device_id=list(ids)))
                 if (p.description or "").startswith("overcloud.io ") and f"tower={self.tower_id}" in p.description]
        for _, _, err in parallel(lambda sid: self._call(f"delete server {sid}", lambda c: c.compute.delete_server(
                sid, ignore_missing=True)), list(ids), name=f"os-{self.site}"):
            if err is not None:
                raise err
        asked_again: set[str] = set()
        i = 0
        with self.stats.waiting():
            while True:
                left = [s for s in self._call("list servers", lambda c: c.compute.servers(
                    details=True, tags=self._filter(None))) if s.id in ids]
                if not left:
                    break
                for s in left:
                    if (s.status or "").upper() == "ERROR" and s.id not in asked_again and not s.task_state:
                        asked_again.add(s.id)
                        self._call(f"delete server {s.id}", lambda c, sid=s.id: c.compute.delete_server(
                            sid, ignore_missing=True))
                if time.monotonic() >= deadline:
                    raise UnderCloudError(f"site {self.site}: servers still there after {timeout:.0f} s: "
                                          f"{', '.join(f'{s.name} {s.status}' for s in left)}", site=self.site)
                time.sleep(min(_pause(i), max(0.0, deadline - time.monotonic())))
                i += 1
        fips: list[Any] = []
        if ports and self.config.network.floating_ip:
            ours = {p.id for p in ports}
            fips = [i for i in self._call("list floating IPs", lambda c: c.network.ips(tags=self._filter(None)))
                    if i.port_id in ours]
        for ip in fips:
            self._call("delete floating IP", lambda c, ip=ip: c.network.delete_ip(ip, ignore_missing=True))
        for _, _, err in parallel(self._delete_port, ports, name=f"os-{self.site}"):
            if err is not None:
                raise err

    def _delete_port(self, port: Any) -> None:
        self._call(f"delete port {port.name}", lambda c: c.network.delete_port(port, ignore_missing=True))

    def delete_network(self, overcloud_id: str, timeout: float) -> None:
        """Floating IPs and ports left (a server deleted by hand), the router's interface and the
        router, the security group, the key pair, the subnet, the network: each delete answered
        (Neutron deletes synchronously), then one more listing by tag that must be empty."""
        name = network_name(overcloud_id)
        filt = self._filter(overcloud_id)
        marker = self._marker(overcloud_id)

        def mine(rs: Iterable[Any]) -> list[Any]:
            return [r for r in rs if set(filt.split(",")) <= set(r.tags or ()) or (r.description or "") == marker]

        oc = overcloud_id
        for ip in mine(self._call("list floating IPs", lambda c: c.network.ips(tags=filt), overcloud_id=oc)):
            self._call("delete floating IP", lambda c, ip=ip: c.network.delete_ip(ip, ignore_missing=True), overcloud_id=oc)
        nets = mine(self._call("list networks", lambda c: c.network.networks(name=name), overcloud_id=oc))
        for port in mine(self._call("list ports", lambda c: c.network.ports(description=marker), overcloud_id=oc)):
            self._delete_port(port)
        for router in mine(self._call("list routers", lambda c: c.network.routers(name=name), overcloud_id=oc)):
            for p in self._call("list router ports", lambda c, r=router: c.network.ports(
                    device_id=r.id, device_owner="network:router_interface"), overcloud_id=oc):
                for ip in p.fixed_ips or []:
                    self._call("remove router interface", lambda c, r=router, s=ip["subnet_id"]:
                               self._remove_interface(c, r, s), overcloud_id=oc)
            self._call("delete router", lambda c, r=router: c.network.delete_router(r, ignore_missing=True), overcloud_id=oc)
        for sg in mine(self._call("list security groups", lambda c: c.network.security_groups(name=name), overcloud_id=oc)):
            self._call("delete security group", lambda c, sg=sg: c.network.delete_security_group(sg, ignore_missing=True),
                       overcloud_id=oc)
        self._call("delete key pair", lambda c: c.compute.delete_keypair(name, ignore_missing=True), overcloud_id=oc)
        for net in nets:
            for sub in self._call("list subnets", lambda c, n=net: c.network.subnets(network_id=n.id), overcloud_id=oc):
                self._call("delete subnet", lambda c, s=sub: c.network.delete_subnet(s, ignore_missing=True),
                           overcloud_id=oc)
            self._call("delete network", lambda c, n=net: c.network.delete_network(n, ignore_missing=True), overcloud_id=oc)
        left = [r for r in self.list_tagged(overcloud_id) if r.kind != "server"]
        if left:
            raise UnderCloudError(f"site {self.site}: still there after delete: {', '.join(r.name for r in left)}",
                                  site=self.site, overcloud_id=overcloud_id)

    @staticmethod
    def _remove_interface(conn: Any, router: Any, subnet_id: str) -> None:
        from openstack import exceptions as osx
        try:
            conn.network.remove_interface_from_router(router, subnet_id=subnet_id)
        except osx.NotFoundException:
            pass
        except osx.BadRequestException:  # the gateway port of the router, or the interface went meanwhile
            pass

    # -- finding -----------------------------------------------------------------------------

    def list_servers(self, overcloud_id: str | None = None) -> list[Server]:
        return [s for s in self._complete(self._servers(overcloud_id)) if s.status != DELETED]

    def list_tagged(self, overcloud_id: str | None = None) -> list[TaggedResource]:
        """Servers, floating IPs, ports, routers, security groups, subnets, networks (by tag) and
        key pairs (by name, for the OverClouds found)."""
        filt = self._filter(overcloud_id)
        out: list[TaggedResource] = []
        seen: set[str] = set()
        listings: list[tuple[str, Callable[[Any], Any]]] = [
            ("server", lambda c: c.compute.servers(details=True, tags=filt)),
            ("floating_ip", lambda c: c.network.ips(tags=filt)),
            ("port", lambda c: c.network.ports(tags=filt)),
            ("router", lambda c: c.network.routers(tags=filt)),
            ("security_group", lambda c: c.network.security_groups(tags=filt)),
            ("subnet", lambda c: c.network.subnets(tags=filt)),
            ("network", lambda c: c.network.networks(tags=filt)),
        ]
        for kind, fn in listings:
            for r in self._call(f"list {kind}s", fn, overcloud_id=overcloud_id):
                oc = parse_tags(r.tags).get(TAG_OVERCLOUD)
                if oc is None or (kind == "server" and _NOVA_STATUS.get((r.status or "").upper()) == DELETED):
                    continue
                seen.add(oc)
                label = getattr(r, "name", None) or getattr(r, "floating_ip_address", None) or r.id
                out.append(TaggedResource(overcloud_id=oc, kind=kind, name=f"{kind} {label} ({r.id})"))
        if overcloud_id:
            seen.add(overcloud_id)
        names = {network_name(oc): oc for oc in seen}
        if names:
            for kp in self._call("list key pairs", lambda c: c.compute.keypairs(), overcloud_id=overcloud_id):
                if kp.name in names:
                    out.append(TaggedResource(overcloud_id=names[kp.name], kind="key_pair", name=f"key_pair {kp.name}"))
        return out

    def sweep(self, overcloud_ids: set[str]) -> list[TaggedResource]:
        gone: list[TaggedResource] = []
        for oc in sorted(overcloud_ids):
            found = self.list_tagged(oc)
            servers = [s.id for s in self._servers(oc)]
            if servers:
                self.delete_servers(servers, self.config.delete_timeout)
            self.delete_network(oc, self.config.delete_timeout)
            gone += found
        return gone

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass
                self._conn = None
