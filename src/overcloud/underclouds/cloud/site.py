"""A site of kind ``openstack`` or ``aws``: one cloud server per box, handed to the SSH world.

:class:`CloudSite` is the :class:`~overcloud.underclouds.base.UnderCloudDriver` of one cloud site.
Its domain is the Tower's SSH world (``SSHUnderCloud``): overlays, sessions, what is on the hosts
and its sweep are the world's, exactly as for an ssh site. What the site adds is where the hosts
come from: ``acquire`` makes one server per box through its :class:`CloudProvider`, waits until the
cloud says it runs, adds it to the world as a host (its host key pinned from the start: the Tower
generated it and gave it to the server in its user data), waits for sshd, prepares it like any
ssh host, and makes the box there. ``release`` does the reverse and waits until the cloud
confirms each server gone; the OverCloud's network, security group and key pair go with its last
server on the site.

Nothing of a cloud site is kept in the Tower's database beyond the Box records: each server
carries its OverCloud, Tower, box, host key and box subnet on its tags, so a Tower that starts
again (after ``kill -9`` too) lists its servers by tag and adds those of live OverClouds back
as hosts (:meth:`CloudSite.start`). See docs/underclouds.md.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from overcloud.underclouds.base import (
    Box,
    BoxSpec,
    DomainSite,
    Quota,
    TaggedResource,
    UnderCloudError,
    parallel,
    resolve_flavor,
)
from overcloud.underclouds.cloud.config import CloudSiteConfig
from overcloud.underclouds.cloud.provider import (
    ACTIVE,
    TAG_BOX,
    TAG_BOX_CIDR,
    TAG_HOST_KEY,
    CloudProvider,
    CloudQuotaExceeded,
    CloudUnavailable,
    Limits,
    Server,
    ServerRequest,
    network_name,
    server_name,
)
from overcloud.underclouds.cloud.userdata import new_host_key, user_data

logger = logging.getLogger(__name__)

#: the label of a cloud host naming its LAN (the OverCloud's network on the site): hosts of one site
#: route to each other in clear only within one LAN (see the ssh world's WAN plan)
LAN_LABEL = "overcloud.io/lan"
#: the box's flavor on its server (what the host lends), beside the contract's tags; a provider that
#: does not keep it gives "small" on both paths (acquire and start), so the host config is the same
TAG_FLAVOR = "overcloud.io/flavor"
BOX_PREFIX = 26  # each server's box subnet: a /26 of the site's box_pool
DESTROY_TIMEOUT = 20.0  # destroy-box before a delete: best effort, the server goes anyway
START_WAIT = 30.0  # how long a create waits for the site's start (check, hosts re-added) to finish


def _parallel(fn: Callable[[Any], Any], items: list) -> list[tuple[Any, Any, BaseException | None]]:
    return parallel(fn, items, name="cloud")


class CloudSite(DomainSite):
    """One cloud site (kind ``openstack`` or ``aws``) of the Tower's SSH world."""

    def __init__(self, world: Any, config: CloudSiteConfig, provider: CloudProvider, *, client_key: Path,
                 client_public: str, peers: Callable[[], Iterable["CloudSite"]] | None = None):
        super().__init__(config.name)
        self.kind = config.kind
        self.world = self.domain = world
        self.config = config
        self.provider = provider
        self.client_key = Path(client_key)
        self.client_public = client_public
        self._peers = peers or (lambda: [self])
        self.unavailable: str | None = None  # why the site cannot be used (its check failed); None: it can
        self.started = threading.Event()  # set once start() has checked the site and re-added its hosts
        self._alloc_lock = threading.Lock()  # box subnets: listed and claimed as one step
        self._claimed: set[str] = set()  # box subnets handed to servers being made (not listed yet)
        self._limits: tuple[float, Limits] | None = None  # the last limits() and when
        self._limits_lock = threading.Lock()
        world.add_site(self.name, dict(config.labels))

    # -- start: check, and the hosts of live OverClouds back -------------------------------------
    def start(self, live: Callable[[], set[str]]) -> None:
        """Check authentication and endpoint (one cheap call); a failure marks the site unavailable
        with the reason (other sites keep working). Then this Tower's servers of live OverClouds
        (``live()``) are found by tag and added back to the world as hosts (after a restart)."""
        try:
            try:
                self.provider.check()
            except CloudUnavailable as exc:
                self.unavailable = exc.reason
                logger.error("site %s is unavailable: %s", self.name, exc.reason)
                return
            except Exception as exc:  # noqa: BLE001 - a provider bug or an SDK error it did not wrap
                self.unavailable = f"{exc.__class__.__name__}: {exc}"[:500]
                logger.error("site %s is unavailable: %s", self.name, self.unavailable)
                return
            self.unavailable = None
            try:
                alive = live()
                servers = [s for s in self.provider.list_servers() if s.overcloud_id in alive and s.status == ACTIVE]
                for s, _, err in _parallel(self._add_host, servers):
                    if err is not None:
                        logger.error("site %s: adding server %s back as a host failed: %s", self.name, s.name, err)
                if servers:
                    logger.info("site %s: %d server(s) of live OverClouds added back as hosts", self.name, len(servers))
            except Exception as exc:  # noqa: BLE001 - the acquire/release of each OverCloud adds them again
                logger.error("site %s: finding the servers of live OverClouds failed: %s", self.name, exc)
        finally:
            self.started.set()

    def wait_started(self, timeout: float = START_WAIT) -> None:
        if not self.started.wait(timeout):
            raise CloudUnavailable(f"site {self.name} is still being checked (its cloud API has not answered "
                                   f"in {timeout:.0f} s); try again shortly", site=self.name)

    def ensure_available(self) -> None:
        """CloudUnavailable naming the site and why, when its check failed (the API: 503)."""
        self.wait_started()
        if self.unavailable is not None:
            raise CloudUnavailable(f"site {self.name} ({self.kind}) is unavailable: {self.unavailable}", site=self.name)

    # -- quota -----------------------------------------------------------------------------------
    def limits(self, max_age: float = 0.0) -> Limits:
        with self._limits_lock:
            if self._limits is not None and time.monotonic() - self._limits[0] <= max_age:
                return self._limits[1]
        found = self.provider.limits()
        with self._limits_lock:
            self._limits = (time.monotonic(), found)
        return found

    def check_quota(self, flavors: list[str], overcloud_id: str | None = None, *, new_network: bool = True) -> None:
        """Whether ``flavors`` (our names, one server each) fit: the site's ``max_servers`` and the
        cloud's quotas (instances, vCPUs, RAM, and what else the provider's :meth:`needs` names, e.g.
        Neutron's ports and networks). CloudQuotaExceeded with the numbers (429) when not; nothing
        is made either way. Servers this OverCloud has already (a resumed acquire) are not asked
        twice: the caller passes only the missing ones (and ``new_network=False`` when its network
        is there)."""
        if not flavors:
            return
        numbers: dict[str, dict[str, Any]] = {}
        mine = len(self.provider.list_servers())
        if mine + len(flavors) > self.config.max_servers:
            numbers["servers"] = {"limit": self.config.max_servers, "used": mine, "asked": len(flavors)}
        lim = self.limits()
        oc = overcloud_id or "0" * 32
        reqs = [ServerRequest(overcloud_id=oc, box=f"b{i}", name=server_name(oc, f"b{i}"), flavor=f, user_data="",
                              tags={}) for i, f in enumerate(flavors)]
        need = dict(self.provider.needs(reqs, new_network=new_network))
        sizes = [lim.flavors.get(f) for f in flavors]
        if "cores" not in need and all(sizes):
            need["cores"] = sum(s[0] for s in sizes)
        if "ram_mb" not in need and all(sizes):
            need["ram_mb"] = sum(s[1] for s in sizes)
        caps = {"instances": (lim.max_instances, lim.used_instances), "cores": (lim.max_cores, lim.used_cores),
                "ram_mb": (lim.max_ram_mb, lim.used_ram_mb)}
        caps.update({k: (v.get("limit"), v.get("used")) for k, v in (lim.quotas or {}).items()})
        for k, asked in need.items():
            limit, used = caps.get(k, (None, None))
            if asked and limit is not None and limit >= 0 and (used or 0) + asked > limit:
                numbers[k] = {"limit": limit, "used": used or 0, "asked": asked}
        if numbers:
            raise CloudQuotaExceeded(quota_message(self.name, self.kind, numbers), numbers, site=self.name,
                                     overcloud_id=overcloud_id)

    def check_create(self, flavors: list[str]) -> None:
        """What a create asks of this site, before the OverCloud is recorded: the site is available
        (else 503 naming it and why) and the cloud's quota holds its servers (else 429 with the numbers)."""
        self.ensure_available()
        for f in flavors:
            self.config.cloud_flavor(f)  # a size the site does not map: UnderCloudError naming what to add
        self.check_quota(flavors)

    # -- hosts -----------------------------------------------------------------------------------
    def _host_config(self, server: Server):
        """The server as an ssh host: reached at its public address (else its private one), its
        pinned host key and box subnet from its tags, lending what its box's flavor asks."""
        from overcloud.underclouds.ssh.sites import SSHHostConfig

        host_key = server.tags.get(TAG_HOST_KEY)
        box_cidr = server.tags.get(TAG_BOX_CIDR)
        if not host_key or not box_cidr:
            raise UnderCloudError(f"server {server.name} ({server.id}) on site {self.name} lacks its "
                                  f"{TAG_HOST_KEY} or {TAG_BOX_CIDR} tag: it was not made by this Tower's cloud site",
                                  site=self.name, overcloud_id=server.overcloud_id)
        address = server.public_address or server.private_address
        if not address:
            raise UnderCloudError(f"server {server.name} ({server.id}) on site {self.name} has no address yet",
                                  site=self.name, overcloud_id=server.overcloud_id)
        try:
            fl = resolve_flavor(server.tags.get(TAG_FLAVOR) or "small")
        except KeyError:
            fl = resolve_flavor("small")
        return SSHHostConfig(
            name=server.name, address=address, key_file=self.client_key, host_key=host_key, port=22,
            user=self.config.user, labels={**self.config.labels, LAN_LABEL: network_name(server.overcloud_id or '')}, cpus=max(1, math.ceil(fl.cpus)),
            memory_mb=fl.memory_mb, lan_address=server.private_address, box_cidr=box_cidr,
            connect_timeout=10.0,
        )

    def _add_host(self, server: Server):
        return self.world.add_host(self.name, self._host_config(server))

    def hosts(self) -> list[Any]:
        return self.world.site_hosts(self.name)

    def _free_cidrs(self, n: int) -> list[str]:
        """``n`` /26s of the box pool that no server of this Tower on the site holds (listed from
        the cloud), no host of the world has, and no acquire under way has claimed. Called with
        ``_alloc_lock`` held; the caller claims them."""
        used = {s.tags.get(TAG_BOX_CIDR) for s in self.provider.list_servers()}
        used |= {h.config.box_cidr for h in self.world.hosts.values()}
        used |= self._claimed
        taken = [ipaddress.ip_network(c) for c in used if c]
        out = []
        for net in ipaddress.ip_network(self.config.box_pool).subnets(new_prefix=BOX_PREFIX):
            if any(net.overlaps(t) for t in taken):
                continue
            out.append(str(net))
            if len(out) == n:
                return out
        raise UnderCloudError(f"site {self.name}: box_pool {self.config.box_pool} has no {n} free /{BOX_PREFIX} left "
                              f"({len(taken)} in use); enlarge it", site=self.name)

    # -- acquire ---------------------------------------------------------------------------------
    def acquire(self, specs: list[BoxSpec]) -> list[Box]:
        if not specs:
            return []
        ids = {s.overcloud_id for s in specs}
        if len(ids) != 1:
            raise UnderCloudError(f"site {self.name}: one OverCloud per acquire", site=self.name)
        oc = next(iter(ids))
        wrong = [s.name for s in specs if s.site != self.name]
        if wrong:
            raise UnderCloudError(f"boxes {wrong} are not for site {self.name}", overcloud_id=oc, site=self.name)
        self.ensure_available()
        asked: set[str] = set()  # names of the servers this call asked the cloud for
        networked = False  # ensure_network was called (its network goes with the last server)
        added_hosts: list[str] = []
        made_boxes: list[Box] = []
        claimed: list[str] = []
        try:
            existing = {s.name: s for s in self.provider.list_servers(oc) if s.status != "deleted"}
            missing = [s for s in specs if server_name(oc, s.name) not in existing]
            # quota first: nothing is made when the cloud cannot hold the servers
            self.check_quota([s.flavor.name for s in missing], overcloud_id=oc, new_network=not existing)
            networked = True
            net = self.provider.ensure_network(oc, self.client_public)
            if missing:
                with self._alloc_lock:
                    cidrs = self._free_cidrs(len(missing))
                    self._claimed.update(cidrs)
                    claimed = cidrs
                reqs = []
                for spec, cidr in zip(missing, cidrs):
                    key = new_host_key()
                    name = server_name(oc, spec.name)
                    tags = {**self.provider.base_tags(oc), TAG_BOX: spec.name, TAG_HOST_KEY: key.public,
                            TAG_BOX_CIDR: cidr, TAG_FLAVOR: spec.flavor.name}
                    reqs.append(ServerRequest(overcloud_id=oc, box=spec.name, name=name, flavor=spec.flavor.name,
                                              user_data=user_data(self.config.user, self.client_public, key, hostname=name),
                                              tags=tags))
                asked.update(r.name for r in reqs)
                for s in self.provider.create_servers(net, reqs):
                    existing[s.name] = s
            order = [existing[server_name(oc, s.name)].id for s in specs]
            servers = self.provider.wait_servers(order, timeout=self.config.boot_timeout)
            with self._alloc_lock:
                self._claimed.difference_update(claimed)
                claimed = []
            by_box = {s.name: srv for s, srv in zip(specs, servers)}
            before = set(self.world.hosts)
            boot_waits: list[float] = []

            def bring_up(spec: BoxSpec) -> Box:
                srv = by_box[spec.name]
                h = self._add_host(srv)
                if h.name not in before:
                    added_hosts.append(h.name)
                t = time.monotonic()
                self.world.wait_ssh(h.name, timeout=self.config.boot_timeout)
                boot_waits.append(time.monotonic() - t)
                self.world.ensure([h])
                self.world.touch(oc, [h.name])  # before make-box: a revert and list_tagged must reach it
                answer = h.agent("make-box", timeout=180, specs=[
                    {"overcloud_id": spec.overcloud_id, "name": spec.name, "role": spec.role, "site": spec.site,
                     "flavor": {"name": spec.flavor.name, "cpus": spec.flavor.cpus,
                                "memory_mb": spec.flavor.memory_mb}}])
                box = Box.from_dict(answer["boxes"][0])
                box.extra = {**box.extra, "host": h.name, "host_address": h.config.address,
                             "lan_address": h.config.lan_address, "bundle_dir": h.bundle_dir, "server_id": srv.id}
                made_boxes.append(box)
                return box

            results = _parallel(bring_up, specs)
            # the servers' boot after the API said they run counts as waiting on the cloud (EC2 says
            # running before the machine has booted; Nova says ACTIVE after): the slowest one, as
            # the servers boot in parallel
            self.provider.stats.waited(max(boot_waits, default=0.0))
            errors = [(spec, e) for spec, _, e in results if e is not None]
            if errors:
                spec, cause = errors[0]
                raise UnderCloudError(f"server {server_name(oc, spec.name)} on site {self.name}: {cause}",
                                      overcloud_id=oc, site=self.name) from cause
            self._allow_peers(oc)
            return [b for _, b, _ in results]
        except BaseException as exc:
            with self._alloc_lock:
                self._claimed.difference_update(claimed)
            self._undo(oc, made_boxes, added_hosts, asked, networked)
            if isinstance(exc, UnderCloudError):
                raise
            raise UnderCloudError(f"acquiring {len(specs)} server(s) on site {self.name} failed: "
                                  f"{exc.__class__.__name__}: {exc}", overcloud_id=oc, site=self.name) from exc

    def _undo(self, oc: str, boxes: list[Box], hosts: list[str], asked: set[str], networked: bool) -> None:
        """All or nothing: what this acquire made goes (boxes best effort, servers confirmed, the
        network when the OverCloud has no server left on the site). The servers are found by name
        among the OverCloud's: a create that failed half-way may have made some."""
        if not (boxes or hosts or asked):
            if networked and self._servers_left(oc) == []:
                self._delete_network_quietly(oc)
            return
        for b in boxes:
            try:
                self.world.host_of(b).agent("destroy-box", timeout=DESTROY_TIMEOUT, boxes=[b.to_dict()])
            except Exception as exc:  # noqa: BLE001 - the server goes anyway
                logger.info("site %s: destroy-box %s before deleting its server: %s", self.name, b.name, exc)
        for name in hosts:
            try:
                self.world.remove_host(name)
            except Exception as exc:  # noqa: BLE001
                logger.warning("site %s: removing host %s: %s", self.name, name, exc)
        try:
            servers = [s.id for s in self.provider.list_servers(oc) if s.name in asked]
            if servers:
                self.provider.delete_servers(servers, timeout=self.config.delete_timeout)
            if not self._servers_left(oc):
                self._delete_network_quietly(oc)
        except Exception as exc:  # noqa: BLE001 - the workflow's revert sweeps what is tagged
            logger.error("site %s: undoing a failed acquire of %s: %s", self.name, oc, exc)

    def _servers_left(self, oc: str) -> list[Server] | None:
        try:
            return [s for s in self.provider.list_servers(oc) if s.status != "deleted"]
        except Exception as exc:  # noqa: BLE001
            logger.warning("site %s: listing the servers of %s: %s", self.name, oc, exc)
            return None

    def _delete_network_quietly(self, oc: str) -> None:
        try:
            self.provider.delete_network(oc, timeout=self.config.delete_timeout)
        except Exception as exc:  # noqa: BLE001
            logger.error("site %s: deleting the network of %s: %s", self.name, oc, exc)

    def _allow_peers(self, oc: str) -> None:
        """WireGuard between this site's hosts of the OverCloud and the other sites' hosts: this
        site's group lets the others in, and each other cloud site with servers of the OverCloud
        lets these in (whichever site finishes last sees the other's hosts in the world)."""
        mine = {h.name for h in self.hosts() if h.name.startswith(network_name(oc) + "-")}
        if not mine:
            return
        others = [h for h in self.world.hosts.values() if h.site != self.name]
        cidrs = sorted({f"{h.config.address}/32" for h in others if _is_ip(h.config.address)})
        if cidrs:
            self.provider.allow_wan_peers(oc, cidrs)
        mine_cidrs = sorted({f"{self.world.hosts[n].config.address}/32" for n in mine
                             if _is_ip(self.world.hosts[n].config.address)})
        for peer in self._peers():
            if peer is self or peer.unavailable is not None:
                continue
            if any(h.name.startswith(network_name(oc) + "-") for h in peer.hosts()):
                peer.provider.allow_wan_peers(oc, mine_cidrs)

    # -- release ---------------------------------------------------------------------------------
    def release(self, boxes: list[Box]) -> None:
        mine = [b for b in boxes if b.site == self.name]
        if not mine:
            return
        self.wait_started()
        by_oc: dict[str, list[Box]] = {}
        for b in mine:
            by_oc.setdefault(b.overcloud_id, []).append(b)
        for oc, bs in by_oc.items():
            self._release(oc, bs)

    def _release(self, oc: str, boxes: list[Box]) -> None:
        servers = {s.name: s for s in self.provider.list_servers(oc)}
        names = {server_name(oc, b.name) for b in boxes}

        def destroy(b: Box) -> None:  # best effort: the server is going anyway
            name = server_name(oc, b.name)
            h = self.world.hosts.get(name)
            if h is None:
                return
            try:
                h.agent("destroy-box", timeout=DESTROY_TIMEOUT, boxes=[b.to_dict()])
            except Exception as exc:  # noqa: BLE001
                logger.info("site %s: destroy-box %s before deleting its server: %s", self.name, b.name, exc)

        _parallel(destroy, boxes)
        for name in sorted(names):
            if name in self.world.hosts:
                self.world.remove_host(name)
        ids = [s.id for n, s in servers.items() if n in names]
        if ids:
            self.provider.delete_servers(ids, timeout=self.config.delete_timeout)
        left = [s for s in self.provider.list_servers(oc) if s.status != "deleted"]
        if not left:
            self.provider.delete_network(oc, timeout=self.config.delete_timeout)

    # -- inventory -------------------------------------------------------------------------------
    def site_tagged(self, overcloud_id: str | None = None) -> list[TaggedResource]:
        """What this site made in the cloud (servers, networks, groups, key pairs), by tag. The
        boxes on its hosts are the world's (``list_tagged``)."""
        if self.unavailable is not None or not self.started.is_set():
            # its cloud does not answer: what is there cannot be listed (an OverCloud's release
            # there failed already, naming it); every other site's listing goes on
            logger.warning("site %s: not listing its cloud resources: %s", self.name,
                           self.unavailable or "still being checked")
            return []
        return [TaggedResource(r.overcloud_id, r.kind, f"{self.name}: {r.name}")
                for r in self.provider.list_tagged(overcloud_id)]

    def sweep_site(self, overcloud_ids: set[str]) -> list[TaggedResource]:
        """The cloud resources of these OverClouds deleted (confirmed); their hosts leave the world."""
        if not overcloud_ids:
            return []
        for h in list(self.hosts()):
            if any(h.name.startswith(network_name(oc) + "-") for oc in overcloud_ids):
                try:
                    self.world.remove_host(h.name)
                except Exception as exc:  # noqa: BLE001
                    logger.warning("site %s: removing host %s: %s", self.name, h.name, exc)
        return [TaggedResource(r.overcloud_id, r.kind, f"{self.name}: {r.name}")
                for r in self.provider.sweep(set(overcloud_ids))]

    def quota(self) -> Quota:
        """Servers this site may still make (its ``max_servers``), counting its hosts: no API call
        (every create's validate asks every site). The cloud's own quota is checked at create."""
        if self.unavailable is not None:
            return Quota(max_boxes=0, used_boxes=0)
        return Quota(max_boxes=self.config.max_servers, used_boxes=len(self.hosts()))

    def describe(self, *, max_age: float = 5.0, wait: float = 2.0) -> dict[str, Any]:
        problems: list[str] = []
        d: dict[str, Any] = {"name": self.name, "kind": self.kind, "labels": dict(self.config.labels),
                             "region": self.config.region, "image": self.config.image,
                             "flavors": dict(self.config.flavors), "max_servers": self.config.max_servers}
        if not self.started.is_set():
            problems.append("being checked (the cloud API has not answered yet)")
        elif self.unavailable is not None:
            problems.append(f"unavailable: {self.unavailable}")
        d["available"] = self.started.is_set() and self.unavailable is None
        d["reason"] = self.unavailable
        capacity: dict[str, Any] = {"servers": {"limit": self.config.max_servers, "used": len(self.hosts())}}
        if d["available"]:
            box: dict[str, Any] = {}

            def ask() -> None:
                try:
                    box["limits"] = self.limits(max_age=max(30.0, max_age))
                except Exception as exc:  # noqa: BLE001
                    box["error"] = f"{exc.__class__.__name__}: {exc}"[:300]

            t = threading.Thread(target=ask, name="cloud-limits", daemon=True)
            t.start()
            t.join(wait)
            lim = box.get("limits")
            if lim is not None:
                capacity["cloud"] = {
                    "instances": {"limit": lim.max_instances, "used": lim.used_instances},
                    "cores": {"limit": lim.max_cores, "used": lim.used_cores},
                    "ram_mb": {"limit": lim.max_ram_mb, "used": lim.used_ram_mb},
                }
            elif "error" in box:
                problems.append(f"limits: {box['error']}")
            else:
                capacity["cloud"] = None  # not answered within wait: asked again next time
        d["capacity"] = capacity
        hosts = self.world.describe_hosts(self.name, max_age=max_age, wait=wait) if self.hosts() else []
        d["hosts"] = hosts
        problems += [f"{h['name']}: {p}" for h in hosts for p in h["health"]["problems"]]
        d["healthy"] = not problems
        d["problems"] = problems
        d["api"] = self.provider.stats.snapshot()
        return d

    def underlay_problems(self, boxes: list[Box]) -> dict[str, str]:
        return self.world.underlay_problems(boxes)


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
        return True
    except ValueError:
        return False


def quota_message(site: str, kind: str, numbers: dict[str, dict[str, Any]]) -> str:
    """``site aws-1: the cloud's quota cannot hold this OverCloud: instances 8 of 10 used, 4 asked; ...``"""
    what = {"servers": "servers (the site's max_servers)", "instances": "instances", "cores": "vCPUs",
            "ram_mb": "RAM (MiB)", "ports": "ports", "networks": "networks", "subnets": "subnets",
            "security_groups": "security groups", "routers": "routers", "floating_ips": "floating IPs"}
    parts = [f"{what.get(k, k)}: {v['used']} of {v['limit']} used, {v['asked']} asked" for k, v in numbers.items()]
    fix = ("raise max_servers in the site config, delete an OverCloud, or ask for fewer clusters"
           if set(numbers) == {"servers"} else
           f"ask the {'OpenStack project' if kind == 'openstack' else 'AWS account'}'s quota to be raised, "
           "delete an OverCloud, or ask for fewer or smaller clusters")
    return f"site {site}: the quota cannot hold this OverCloud's servers: {'; '.join(parts)}; {fix}"


def provider_class(kind: str) -> Callable[..., CloudProvider]:
    """The provider of a kind (``openstack``: OpenStackProvider, ``aws``: AWSProvider). A provider
    that cannot be imported (its SDK is not installed) gives a stand-in whose check fails with the
    reason, so that its site is marked unavailable and the others work."""
    if kind not in ("openstack", "aws"):
        raise UnderCloudError(f"no cloud provider of kind {kind!r} (kinds: openstack, aws)")
    try:
        if kind == "openstack":
            from overcloud.underclouds.cloud.openstack import OpenStackProvider

            return OpenStackProvider
        from overcloud.underclouds.cloud.aws import AWSProvider

        return AWSProvider
    except ImportError as exc:
        reason = f"the {kind} provider cannot be loaded ({exc}); install the Tower's dependencies (make install)"

        def missing(config: CloudSiteConfig, tower_id: str) -> CloudProvider:
            return MissingProvider(config, tower_id, reason)

        return missing


class MissingProvider(CloudProvider):
    """A provider that is not there: every call raises CloudUnavailable with the reason."""

    def __init__(self, config: CloudSiteConfig, tower_id: str, reason: str):
        super().__init__(config, tower_id)
        self.kind = config.kind
        self.reason = reason

    def _fail(self, *_: Any, **__: Any) -> Any:
        raise CloudUnavailable(self.reason, site=self.site)

    check = limits = ensure_network = allow_wan_peers = create_servers = wait_servers = _fail
    delete_servers = delete_network = list_servers = list_tagged = sweep = _fail
