"""The local UnderCloud: boxes are network namespaces on this host.

A site is a Linux bridge with a gateway address (``.1``) on the host; a
box is a namespace ``oc-<8 hex of the OverCloud id>-<box name>`` with a
veth on its site's bridge, one route to the sites' supernet (no default
route), an nftables input firewall, cgroup limits from its flavor and its
own supervisord. Each OverCloud gets a VXLAN overlay (own VNI and /24)
across its boxes on all sites; the box firewalls accept VXLAN only from
the OverCloud's own peers, so two OverClouds cannot reach each other at
any address.

:class:`LocalHost` owns what the sites share (bridges, leases, overlays,
the host's forwarding guard) and must be shared by every
:class:`LocalSite` of one Tower; a :class:`LocalSite` is the
:class:`~overcloud.underclouds.base.UnderCloudDriver` for one site.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import ipaddress
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from overcloud.boxes import netns as boxnetns
from overcloud.boxes.cgroups import Cgroups
from overcloud.boxes.netns import NetnsTransport
from overcloud.boxes.supervision import ETC_NETNS, BoxSupervisor
from overcloud.files import write_atomic
from overcloud.underclouds.local import containers
from overcloud.underclouds.local import net
from overcloud.underclouds.local import publish
from overcloud.underclouds.base import (
    Box,
    BoxSpec,
    DomainSite,
    Overlay,
    Quota,
    TaggedResource,
    UnderCloudDriver,
    UnderCloudError,
    parallel,
)
from overcloud.underclouds.local.leases import HostLeases, LeaseStore
from overcloud.underclouds.local.session import LocalBoxSession

logger = logging.getLogger(__name__)

HANDLE_PREFIX = "oc-"
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21


@dataclasses.dataclass
class LocalSiteConfig:
    name: str
    bridge: str
    cidr: str


DEFAULT_SITES = [
    LocalSiteConfig("local-a", "ocb-a", "10.213.0.0/24"),
    LocalSiteConfig("local-b", "ocb-b", "10.213.1.0/24"),
]


def box_handle(overcloud_id: str, box_name: str) -> str:
    """``oc-<8 hex>-<name>``; names longer than 3 characters are hashed so
    the handle fits an interface name (15 characters)."""
    handle = f"{HANDLE_PREFIX}{overcloud_id[:8]}-{box_name}"
    if len(handle) > 15:
        handle = f"{HANDLE_PREFIX}{overcloud_id[:8]}-{hashlib.sha1(box_name.encode()).hexdigest()[:3]}"
    return handle


def _handle_prefix(overcloud_id: str) -> str:
    return f"{HANDLE_PREFIX}{overcloud_id[:8]}-"


def _parallel(fn, items: list) -> list[tuple[Any, Any, BaseException | None]]:
    return parallel(fn, items, name="local-uc")


class LocalHost:
    """Owns the host side shared by all local sites: bridges, address
    leases, overlays, tags. One per Tower; thread-safe."""

    def __init__(
        self,
        state_dir: Path,
        sites: list[LocalSiteConfig] | None = None,
        overlay_cidr: str = "10.250.0.0/16",
        max_boxes: int = 200,
        tower_id: str | None = None,
        host_leases: Path | None = None,
    ):
        """``tower_id``: the identity every resource made here carries (the Tower passes its
        own; without one, ``<state_dir>/tower.id``). ``host_leases``: where the claims every
        Tower on this host shares live (default ``/var/lib/overcloud/leases``)."""
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.boxes_dir = self.state_dir / "boxes"
        self.boxes_dir.mkdir(exist_ok=True)
        self.configs = list(sites or DEFAULT_SITES)
        self.overlay_cidr = overlay_cidr
        self.max_boxes = max_boxes
        if tower_id is None:
            from overcloud.config import tower_identity

            tower_id = tower_identity(self.state_dir)
        self.tower_id = tower_id
        self.leases = LeaseStore(self.state_dir, HostLeases(host_leases) if host_leases else None, tower_id)
        self.cgroups = Cgroups()
        nets = [ipaddress.ip_network(c.cidr) for c in self.configs]
        self.supernet = str(self._supernet(nets))
        self.gateways = {c.name: str(next(ipaddress.ip_network(c.cidr).hosts())) for c in self.configs}
        self.sites: dict[str, LocalSite] = {c.name: LocalSite(self, c) for c in self.configs}
        self.bridges = [c.bridge for c in self.configs]
        self.pin_table = net.pin_table(self.bridges)

    @staticmethod
    def _supernet(nets: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
        sup = nets[0]
        while not all(n.subnet_of(sup) for n in nets):
            sup = sup.supernet()
        return sup

    # -- host ----------------------------------------------------------
    @staticmethod
    def check_privileges() -> None:
        """Root alone is not enough (a container may drop capabilities): look at what the
        process may really do."""
        caps = 0
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    caps = int(line.split()[1], 16)
        missing = [n for n, bit in (("CAP_NET_ADMIN", CAP_NET_ADMIN), ("CAP_SYS_ADMIN", CAP_SYS_ADMIN)) if not caps >> bit & 1]
        if missing:
            raise UnderCloudError(
                "the local UnderCloud needs root or CAP_NET_ADMIN: it creates network namespaces, "
                f"bridges and nftables rules (missing {', '.join(missing)}; run the Tower as root)"
            )

    @property
    def _host_state(self) -> Path:
        return self.state_dir / "host.json"

    def ensure_sites(self) -> None:
        """Bridges up with their gateway address, ip_forward=1, the host guard
        (``table inet overcloud_host``: forwarding, and input from the bridges) and the
        bridge pins (``table bridge overcloud_pin_<hash>``), re-pinning the boxes this state
        dir already has (boxes made before pins existed get them here). Idempotent."""
        self.check_privileges()
        with self.leases.lock():
            for c in self.configs:
                prefix = ipaddress.ip_network(c.cidr).prefixlen
                net.ensure_bridge(c.bridge, self.gateways[c.name], prefix, f"{net.TAG_PREFIX}site:{c.name}")
            net.install_host_guard([c.bridge for c in self.configs])
            net.ensure_pin_table(self.pin_table)
            old = net.set_ip_forward(1)
            if not self._host_state.exists():
                self._host_state.write_text(json.dumps({"ip_forward_before": old}))
        for c in self.configs:  # boxes leased before host-wide claims existed
            self.leases.claim_boxes(c.bridge)
        for lease in self.leases.boxes():
            if lease.get("address") and net.link_exists(net.host_veth_name(lease["handle"])):
                try:
                    self._pin(lease)
                except Exception as exc:  # noqa: BLE001 - one broken box does not stop the sites
                    logger.error("pinning box %s to its address failed: %s", lease["handle"], exc)

    def allow_host_services(self, services: list[tuple[str, int]]) -> None:
        """The (host address, TCP port) pairs boxes may connect to on the host — the
        Construction DataLake's S3 endpoint; everything else on the host is dropped for them
        (see ``local.net.install_host_guard``). Replaces what this state dir allowed before."""
        with self.leases.lock():
            state = json.loads(self._host_state.read_text()) if self._host_state.exists() else {}
            before = [tuple(x) for x in state.get("host_services", [])]
            wanted = [(str(ip), int(port)) for ip, port in services]
            net.allow_host_services(self.bridges, wanted, [x for x in before if x not in wanted])
            state["host_services"] = wanted
            write_atomic(self._host_state, json.dumps(state))

    def _pin(self, lease: dict[str, Any]) -> str:
        """Pin the box's bridge port to its eth0 MAC and leased address; returns the MAC."""
        handle = lease["handle"]
        mac = lease.get("mac")
        if not mac:
            mac = net.box_eth0_mac(handle)
            self.leases.update_box(handle, mac=mac)
        net.pin_port(self.pin_table, net.host_veth_name(handle), mac, lease["address"],
                     self.tag(lease["overcloud_id"], lease["name"]))
        return mac

    def teardown_sites(self) -> None:
        """Remove our bridges, guard chains and pin table; restore ip_forward when the
        guard table is gone. Refuses while boxes remain."""
        left = [lease["handle"] for lease in self.leases.boxes()]
        left += [h for h in self._kernel_handles() if h not in left]
        if left:
            raise UnderCloudError(f"cannot tear down local sites: boxes remain: {', '.join(sorted(left))}")
        # boxes of another state dir (another Tower configured with the same bridges) would lose
        # their network, and their forwarding guard, with the bridges: leave everything to it
        busy = {c.bridge: ports for c in self.configs if (ports := net.bridge_ports(c.bridge))}
        if busy:
            raise UnderCloudError("cannot tear down local sites: " + "; ".join(
                f"bridge {b} still carries {', '.join(p)}" for b, p in busy.items())
                + " (boxes this state dir does not know: another Tower with the same bridges?)")
        with self.leases.lock():
            table_gone = net.remove_host_guard([c.bridge for c in self.configs])
            net.remove_pin_table(self.pin_table)
            for c in self.configs:
                net.delete_link(c.bridge)
            if self._host_state.exists():
                before = json.loads(self._host_state.read_text()).get("ip_forward_before", 1)
                if table_gone and before == 0:
                    net.set_ip_forward(0)
                self._host_state.unlink()

    def tag(self, overcloud_id: str, box_name: str) -> str:
        """The tag of one box's links, namespace and cgroups: its OverCloud and this Tower."""
        return net.tag(overcloud_id, box_name, self.tower_id)

    def site(self, name: str) -> LocalSite:
        try:
            return self.sites[name]
        except KeyError:
            raise UnderCloudError(f"no local site {name!r} (have {', '.join(self.sites)})", site=name) from None

    def transport(self, box: Box) -> NetnsTransport:
        return NetnsTransport(box.handle)

    def session(self, box: Box) -> LocalBoxSession:
        """The BoxSession of one of this host's boxes."""
        return LocalBoxSession(self, box)

    def service_table(self, handle: str, script: str, vip_cidr: str) -> None:
        """Install a box's Service VIP table (see composition.stitching)."""
        net.service_table(handle, script, vip_cidr)

    def supervisor(self, box: Box | str) -> BoxSupervisor:
        handle = box if isinstance(box, str) else box.handle
        return BoxSupervisor(handle, self.boxes_dir / handle, self.cgroups)

    # -- overlays ------------------------------------------------------
    def join_overlay(self, overcloud_id: str, boxes: list[Box]) -> Overlay:
        """Join ``boxes`` (any sites) in the OverCloud's VXLAN overlay;
        sets ``box.overlay_address``. Idempotent per overcloud_id; call it
        again with more boxes to grow the overlay."""
        try:
            lease = self.leases.reserve_overlay(overcloud_id, self.overlay_cidr, [b.name for b in boxes])
            subnet = ipaddress.ip_network(lease["subnet"])
            hosts = {b.name: lease["addresses"][b.name] for b in boxes}
            gateways = list(self.gateways.values())

            def join(box: Box) -> None:
                peers = [b.address for b in boxes if b.name != box.name]
                addr = lease["addresses"][box.name]
                net.box_firewall(box.handle, gateways, peers)
                net.ensure_vxlan(
                    box.handle, lease["vni"], box.address, addr, subnet.prefixlen, peers,
                    self.tag(overcloud_id, box.name),
                )
                sup = self.supervisor(box)
                sup.set_hosts(hosts)
                sup.enable_inet(addr)
                self.leases.update_box(
                    box.handle, overlay={"vni": lease["vni"], "subnet": lease["subnet"], "address": addr, "peers": peers}
                )
                box.overlay_address = addr

            failed = [(b.handle, e) for b, _, e in _parallel(join, boxes) if e is not None]
            if failed:
                raise failed[0][1]
        except Exception as exc:
            raise UnderCloudError(f"overlay for {overcloud_id} failed: {exc}", overcloud_id=overcloud_id) from exc
        return Overlay(overcloud_id, lease["vni"], lease["subnet"], dict(lease["addresses"]))

    def leave_overlay(self, overcloud_id: str, boxes: list[Box]) -> None:
        """Remove vx0 and VXLAN peers from the boxes, then the overlay lease."""
        gateways = list(self.gateways.values())

        def leave(box: Box) -> None:
            if not os.path.exists(boxnetns.netns_path(box.handle)):
                return
            net.delete_vxlan(box.handle)
            net.box_firewall(box.handle, gateways, [])
            with contextlib.suppress(Exception):
                self.supervisor(box).remove_program("overcloud-health")
            self.leases.update_box(box.handle, overlay=None)
            box.overlay_address = None

        failed = [(b.handle, e) for b, _, e in _parallel(leave, boxes) if e is not None]
        if failed:
            raise UnderCloudError(
                f"removing overlay of {overcloud_id} from {failed[0][0]} failed: {failed[0][1]}",
                overcloud_id=overcloud_id,
            ) from failed[0][1]
        self.leases.delete_overlay(overcloud_id)

    def forget_empty_overlays(self, overcloud_ids: set[str]) -> None:
        """Drop the overlay lease of OverClouds that have no box left."""
        with_boxes = {lease["overcloud_id"] for lease in self.leases.boxes()}
        for oc in overcloud_ids - with_boxes:
            self.leases.delete_overlay(oc)

    # -- boxes (used by LocalSite) ------------------------------------
    def make_box(self, site: LocalSite, spec: BoxSpec) -> tuple[Box, bool]:
        """Make (or finish making) one box. Returns (box, leased by this call)."""
        handle = box_handle(spec.overcloud_id, spec.name)
        record = {
            "overcloud_id": spec.overcloud_id,
            "name": spec.name,
            "role": spec.role,
            "site": site.name,
            "bridge": site.config.bridge,
            "flavor": dataclasses.asdict(spec.flavor),
        }
        if self.leases.box(handle) is None and os.path.exists(boxnetns.netns_path(handle)) \
                and self._mine(net.netns_alias(handle)) is None:
            # a handle is 8 hex digits of the OverCloud id: another Tower's box may have it. Refused
            # before anything is leased, so undoing this acquire never touches that box
            raise UnderCloudError(f"namespace {handle} exists and is not this Tower's (another Tower's box, "
                                  "or a leftover it did not make); create the OverCloud again for another id",
                                  overcloud_id=spec.overcloud_id, site=site.name)
        lease, new = self.leases.reserve_box(handle, record, site.config.cidr)
        try:
            gateway = self.gateways[site.name]
            mac = net.create_box_network(
                handle, self.tag(spec.overcloud_id, spec.name), site.config.bridge,
                lease["address"], lease["prefixlen"], gateway, self.supernet, mac=net.box_mac(handle),
            )
            if lease.get("mac") != mac:
                self.leases.update_box(handle, mac=mac)
                lease = dict(lease, mac=mac)
            self._pin(lease)  # before anything runs in the box
            overlay = lease.get("overlay") or {}
            net.box_firewall(handle, self.gateways.values(), overlay.get("peers", []))
            self.cgroups.create(handle, spec.flavor.cpus, spec.flavor.memory_mb, self.tag(spec.overcloud_id, spec.name))
            sup = self.supervisor(handle)
            sup.write_files({spec.name: lease["address"]})
            sup.start()
            sup.wait_ready()
        except BaseException as exc:
            exc.leased_by_this_call = new  # type: ignore[attr-defined]
            raise
        box = Box(
            overcloud_id=spec.overcloud_id, name=spec.name, role=spec.role, site=site.name,
            flavor=spec.flavor, handle=handle, address=lease["address"],
            overlay_address=overlay.get("address"),
            extra={
                "bridge": site.config.bridge,
                "gateway": gateway,
                "host_veth": net.host_veth_name(handle),
                "box_dir": str(self.boxes_dir / handle),
                "supervisor_socket": str(sup.sock_path),
            },
        )
        return box, new

    def destroy_box(self, handle: str) -> None:
        """Remove everything of one box, made fully or half-way. Idempotent;
        raises naming what is left."""
        sup = self.supervisor(handle)
        sup.stop_box()
        self.cgroups.remove(handle)
        net.delete_vxlan(handle)
        publish.unpublish(handle)  # ports it published on the host's address (a remote host's)
        net.unpin_port(self.pin_table, net.host_veth_name(handle))
        net.delete_link(net.host_veth_name(handle))
        net.remove_netns(handle)
        shutil.rmtree(ETC_NETNS / handle, ignore_errors=True)
        shutil.rmtree(self.boxes_dir / handle, ignore_errors=True)
        sup.sock_path.unlink(missing_ok=True)
        self.leases.delete_box(handle)
        left = self._left_of(handle)
        if left:
            raise UnderCloudError(f"box {handle} not fully removed: {', '.join(left)} remain")

    def _left_of(self, handle: str) -> list[str]:
        left = []
        if os.path.exists(boxnetns.netns_path(handle)):
            left.append(f"netns {handle}")
        if net.link_exists(net.host_veth_name(handle)):
            left.append(f"veth {net.host_veth_name(handle)}")
        if net.port_pinned(self.pin_table, net.host_veth_name(handle)):
            left.append(f"bridge pin {net.host_veth_name(handle)} in {self.pin_table}")
        if self.cgroups.exists(handle):
            left.append(f"cgroup overcloud/{handle}")
        if (ETC_NETNS / handle).exists():
            left.append(f"/etc/netns/{handle}")
        if (self.boxes_dir / handle).exists():
            left.append(f"state dir {self.boxes_dir / handle}")
        if self.leases.box(handle) is not None:
            left.append(f"lease {handle}")
        left += [f"nft table {t}" for t in publish.of_box(handle)]
        return left

    # -- finding -------------------------------------------------------
    def _mine(self, alias: str | None) -> tuple[str, str] | None:
        """(overcloud id, box name) when ``alias`` is a tag this Tower made, else None."""
        parsed = net.parse_tag(alias)
        if parsed is None or parsed[2] is None or parsed[2] != self.tower_id:
            return None
        return parsed[0], parsed[1]

    def _kernel_handles(self, prefix: str = HANDLE_PREFIX) -> dict[str, str]:
        """Handles of boxes that are ours, with their OverCloud id (or its 8 hex digits): by
        lease, by state dir, or by the tag of the namespace (its loopback) or cgroups.

        Only what carries this Tower's id counts: the kernel, the bridges and Podman are the
        host's, and another Tower's boxes, with the same handle prefix, live beside ours."""
        ours = {lease["handle"]: lease["overcloud_id"] for lease in self.leases.boxes()}
        for p in self.boxes_dir.iterdir():
            if p.is_dir():
                ours.setdefault(p.name, p.name[len(HANDLE_PREFIX):].split("-")[0])
        for h in boxnetns.list_netns():
            if h.startswith(prefix) and h not in ours and (tagged := self._mine(net.netns_alias(h))):
                ours[h] = tagged[0]
        for h in self.cgroups.list_handles():
            if h.startswith(prefix) and h not in ours and (tagged := self._mine(self.cgroups.tag(h))):
                ours[h] = tagged[0]
        return ours

    def list_tagged(self, overcloud_id: str | None = None) -> list[TaggedResource]:
        """Everything this Tower made, found from the kernel, Podman and the lease files.

        A box is ours by its lease or state dir here, or by this Tower's id in the tag of its
        host veth, namespace or cgroups; a container by its ``overcloud.io/tower`` label. Boxes,
        links and containers of other Towers on the host (same bridges, same Podman) are never
        listed, so never swept. With an id, only that OverCloud's.
        """
        owner = self._kernel_handles(_handle_prefix(overcloud_id) if overcloud_id else HANDLE_PREFIX)
        links = net.host_tagged_links(self.bridges)
        veths = []
        for ifname, oc, name, kind, tower in links:
            h = box_handle(oc, name)
            # a tag without a Tower id predates them: ours only when the lease says so
            if tower == self.tower_id or (tower is None and h in owner):
                owner.setdefault(h, oc)
                veths.append((ifname, oc, name, kind))
        if overcloud_id is not None:
            owner = {h: oc for h, oc in owner.items() if oc == overcloud_id or oc == overcloud_id[:8]}

        found: list[TaggedResource] = []
        netns_names = set(boxnetns.list_netns())
        cgroup_handles = set(self.cgroups.list_handles())
        by_inode = boxnetns.pids_by_netns_inode()
        for h, oc in sorted(owner.items()):
            if self.leases.box(h) is not None:
                found.append(TaggedResource(oc, "lease", f"lease {h}"))
            if h in netns_names:
                found.append(TaggedResource(oc, "netns", f"netns {h}"))
                if net.box_vxlan_alias(h):
                    found.append(TaggedResource(oc, "vxlan", f"vxlan {net.VXLAN_DEV} in {h}"))
                ino = boxnetns.netns_inode(h)
                for pid in by_inode.get(ino, []) if ino else []:
                    found.append(TaggedResource(oc, "process", f"process {pid} in {h}"))
            if h in cgroup_handles:
                found.append(TaggedResource(oc, "cgroup", f"cgroup overcloud/{h}"))
                for pid in self.cgroups.pids(h):
                    if not any(r.name.startswith(f"process {pid} ") for r in found):
                        found.append(TaggedResource(oc, "process", f"process {pid} in cgroup {h}"))
            if (ETC_NETNS / h).exists():
                found.append(TaggedResource(oc, "statedir", f"/etc/netns/{h}"))
            if (self.boxes_dir / h).exists():
                found.append(TaggedResource(oc, "statedir", str(self.boxes_dir / h)))
        for ifname, oc, name, kind in veths:
            if box_handle(oc, name) in owner and kind == "veth":
                found.append(TaggedResource(oc, "veth", f"veth {ifname}"))
        pins = net.pinned_ports(self.pin_table)
        published = publish.tables()
        for h, oc in sorted(owner.items()):
            if net.host_veth_name(h) in pins:
                found.append(TaggedResource(oc, "nftables", f"bridge pin {net.host_veth_name(h)} of {h}"))
            for t in sorted(published):
                if t.startswith(f"{publish.PREFIX}{h.replace('-', '_')}_"):
                    found.append(TaggedResource(oc, "nftables", f"published ports table {t} of {h}"))
        for lease in self.leases.overlays():
            if overcloud_id is None or lease["overcloud_id"] == overcloud_id:
                found.append(TaggedResource(lease["overcloud_id"], "lease", f"overlay lease {lease['overcloud_id']}"))
        found += [TaggedResource(oc, "container", f"container {name}")
                  for oc, name in containers.tagged(overcloud_id, self.tower_id)]
        return found

    def sweep(self, overcloud_ids: set[str]) -> list[TaggedResource]:
        """Remove everything of these OverCloud ids that this Tower made (``list_tagged``);
        returns it. Another Tower's boxes and containers are left alone, whatever their id."""
        removed: list[TaggedResource] = []
        for oc in sorted(overcloud_ids):
            tagged = self.list_tagged(oc)
            handles = {  # "netns <h>", "cgroup overcloud/<h>", "lease <h>", "/etc/netns/<h>", "<boxes>/<h>"
                Path(r.name.split()[-1]).name for r in tagged
                if r.kind in ("netns", "cgroup", "statedir") or r.name.startswith(("lease ", "published ports table "))
            }
            handles |= {
                box_handle(o, n) for _, o, n, _, t in net.host_tagged_links(self.bridges)
                if o == oc and t == self.tower_id
            }
            containers.remove([r.name.split(" ", 1)[1] for r in tagged if r.kind == "container"])
            errors = [e for _, _, e in _parallel(self.destroy_box, sorted(handles)) if e is not None]
            self.leases.delete_overlay(oc)
            if errors:
                raise UnderCloudError(f"sweep of {oc} incomplete: {errors[0]}", overcloud_id=oc) from errors[0]
            removed.extend(tagged)
        return removed


class LocalSite(DomainSite):
    """One local site (a bridge); the driver the workflows call. Its domain is the host: the
    overlay of all local sites is made in one call, and inventory and sweep are the host's."""

    kind = "local"

    def __init__(self, host: LocalHost, config: LocalSiteConfig):
        super().__init__(config.name)
        self.host = self.domain = host
        self.config = config

    def acquire(self, specs: list[BoxSpec]) -> list[Box]:
        if not specs:
            return []
        ids = {s.overcloud_id for s in specs}
        oc = next(iter(ids)) if len(ids) == 1 else None
        wrong = [s.name for s in specs if s.site != self.name]
        if wrong:
            raise UnderCloudError(f"boxes {wrong} are not for site {self.name}", overcloud_id=oc, site=self.name)
        new = [s for s in specs if self.host.leases.box(box_handle(s.overcloud_id, s.name)) is None]
        quota = self.quota()
        if len(new) > quota.max_boxes - quota.used_boxes:
            raise UnderCloudError(
                f"site {self.name} quota: {len(new)} new boxes asked, "
                f"{quota.max_boxes - quota.used_boxes} left of {quota.max_boxes}",
                overcloud_id=oc,
                site=self.name,
            )
        results = _parallel(lambda s: self.host.make_box(self, s), specs)
        errors = [(s, e) for s, _, e in results if e is not None]
        if not errors:
            return [r[0] for _, r, _ in results]
        # all or nothing: undo only what this call leased
        undo = [box_handle(s.overcloud_id, s.name) for s, r, e in results if (r and r[1]) or (e and getattr(e, "leased_by_this_call", False))]
        for handle, _, err in _parallel(self.host.destroy_box, undo):
            if err is not None:
                logger.error("undoing box %s after a failed acquire: %s", handle, err)
        spec, cause = errors[0]
        raise UnderCloudError(
            f"acquiring {len(specs)} box(es) on site {self.name} failed at {spec.name}: {cause}",
            overcloud_id=spec.overcloud_id,
            site=self.name,
        ) from cause

    def release(self, boxes: list[Box]) -> None:
        mine = [b for b in boxes if b.site == self.name] if boxes else []
        results = _parallel(lambda b: self.host.destroy_box(b.handle), mine)
        errors = [(b, e) for b, _, e in results if e is not None]
        self.host.forget_empty_overlays({b.overcloud_id for b in mine})
        if errors:
            box, cause = errors[0]
            raise UnderCloudError(
                f"releasing {box.handle} on site {self.name} failed: {cause}",
                overcloud_id=box.overcloud_id,
                site=self.name,
            ) from cause

    def quota(self) -> Quota:
        # the limit is the host's: every local site shares its cores and memory
        used = len(self.host.leases.boxes())
        return Quota(max_boxes=self.host.max_boxes, used_boxes=used)

    def describe(self, *, max_age: float = 5.0, wait: float = 2.0) -> dict[str, Any]:
        """The site's bridge (present, up, with its gateway address) and the host's capacity
        (its CPUs and memory, shared by every local site) with what this Tower's boxes use."""
        c = self.config
        gateway = self.host.gateways[self.name]
        problems: list[str] = []
        state, addresses = _bridge_state(c.bridge)
        if state is None:
            problems.append(f"bridge {c.bridge} does not exist")
        else:
            if state != "UP":
                problems.append(f"bridge {c.bridge} is not up")
            if gateway not in addresses:
                problems.append(f"bridge {c.bridge} lacks its gateway address {gateway}")
        leases = self.host.leases.boxes()
        here = [lease for lease in leases if lease.get("site") == self.name]

        def total(rows: list[dict[str, Any]], key: str) -> float:
            return sum(float((r.get("flavor") or {}).get(key, 0)) for r in rows)

        return {
            "name": self.name, "kind": self.kind, "healthy": not problems, "problems": problems,
            "bridge": {"name": c.bridge, "cidr": c.cidr, "gateway": gateway, "exists": state is not None,
                       "up": state == "UP", "ports": len(net.bridge_ports(c.bridge))},
            "capacity": {"cpus": os.cpu_count() or 1, "memory_mb": _memory_mb(), "max_boxes": self.host.max_boxes,
                         "used_boxes": len(leases)},
            "used": {"boxes": len(here), "cpus": round(total(here, "cpus"), 3), "memory_mb": int(total(here, "memory_mb"))},
        }


def _bridge_state(bridge: str) -> tuple[str | None, list[str]]:
    """(admin state "UP"/"DOWN", IPv4 addresses) of a bridge; (None, []) when it does not exist."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=bridge)
        if not found:
            return None, []
        link = ipr.get_links(found[0])[0]
        state = "UP" if link["flags"] & 1 else "DOWN"  # IFF_UP
        addrs = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=found[0], family=2)]
        return state, addrs


def _memory_mb() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0
