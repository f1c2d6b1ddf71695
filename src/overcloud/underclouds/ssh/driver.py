"""The ``ssh`` UnderCloud driver: boxes on remote hosts, over SSH.

:class:`SSHUnderCloud` owns what every ssh site of one Tower shares: the transport (one kept
connection per host), the hosts' preparation (the bundle installed, the box bridge and host
guard, the WAN: WireGuard between sites, routes inside a site), and the overlay leases (VNI and
/24 per OverCloud, kept in the Tower's state dir, ``<state>/ssh``). :class:`SSHSite` is the
:class:`~overcloud.underclouds.base.UnderCloudDriver` of one site; all ssh sites share one
overlay domain, so an OverCloud across ``ssh-a`` and ``ssh-b`` gets one VXLAN overlay.

On each host, boxes are made by the same ``LocalHost`` code as on the Tower's machine, driven
by the agent (``underclouds/ssh/agent.py``: make-box, destroy-box, list-tagged, sweep) and by
``boxctl`` (host guard with the peers' box subnets, overlay join and leave, supervisor calls).
Each host is a one-site ``LocalHost`` whose site is the ssh site's name, with bridge
:data:`BRIDGE` and the host's ``box_cidr``.

Placement: boxes go to the site's host with the most free CPUs (then memory) of what it lends
(``cpus``, ``memory_mb``), counting the boxes this Tower has there; a box that exists already
(same OverCloud and name) stays where it is, so an acquire run again finds it.

See docs/remote-hosts.md, "The ssh driver".
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import threading
from pathlib import Path
from typing import Any, Callable

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
from overcloud.underclouds.local.host import box_handle
from overcloud.underclouds.ssh.session import RemoteBoxSession
from overcloud.underclouds.ssh.sites import SSHHostConfig, SSHSiteConfig

logger = logging.getLogger(__name__)

BRIDGE = "ocbx0"  # the box bridge on every remote host
HOST_ROOT = "/var/lib/overcloud/host"
ARTIFACT_CACHE = "/var/lib/overcloud/artifact-cache"  # content-addressed, shared by every Tower on the host
WG_POOL = "100.79.0.0/24"  # WireGuard interface addresses (/32 each), outside every box subnet
READ_OPS = frozenset({"hello", "boxes", "list-tagged"})  # sent again to a new agent if one ended under them


def _parallel(fn: Callable[[Any], Any], items: list) -> list[tuple[Any, Any, BaseException | None]]:
    return parallel(fn, items, name="ssh-uc")


class RemoteHost:
    """One remote host as the driver sees it: its connection, its site and its bundle."""

    def __init__(self, world: "SSHUnderCloud", site: str, config: SSHHostConfig, ssh: Any):
        if not config.box_cidr:
            raise UnderCloudError(f"ssh host {config.endpoint} of site {site} has no box_cidr", site=site)
        self.world = world
        self.name = config.name
        self.site = site
        self.config = config
        self.ssh = ssh
        self.tower_id = world.tower_id
        self.state_dir = f"{HOST_ROOT}/{world.tower_id}"
        self.bundle_dir = ""  # set by prepare
        self.vxlan_mtu: int | None = None
        self._stage_lock = threading.Lock()
        self._staged: set[str] = set()
        from overcloud.underclouds.ssh.agentlink import AgentLink

        self.link = AgentLink(ssh, lambda: self.bundle_dir)  # the host's kept agent (agent and boxctl ops)

    def __repr__(self) -> str:
        return f"RemoteHost({self.name}, site {self.site})"

    @property
    def public_ip(self) -> str:
        """The host's address (the site config's ``address``, resolved when a name) where boxes'
        published ports are reached (see local/publish.py)."""
        import socket

        try:
            return str(ipaddress.IPv4Address(self.config.address))
        except ValueError:
            return socket.gethostbyname(self.config.address)

    def run(self, argv: list[str], input: bytes | None = None, timeout: float = 120):
        """``run(argv, input=None)`` as hostprep and wan want it: exit statuses read by the caller."""
        return self.ssh.run(argv, input=input, check=False, timeout=timeout, max_output=16 << 20)

    def stage_artifact(self, path: Path, sha256: str) -> str:
        """Put a content-addressed artifact (``weed``) into the host's artifact cache, unless it
        is there; returns the cache dir (``fetch.py`` finds ``<cache>/<sha256>`` and checks it).
        The bytes go over the SSH connection and are checked on the host before the rename."""
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ValueError("sha256 must be 64 hex digits")
        with self._stage_lock:  # one transfer per artifact and host, whatever asks at once
            if sha256 in self._staged:
                return ARTIFACT_CACHE
            r = self.run(["test", "-f", f"{ARTIFACT_CACHE}/{sha256}"], timeout=30)
            if r.returncode != 0:
                script = (
                    'set -e; umask 022; mkdir -p "$1"; t="$1/.$2.part$$"; trap \'rm -f "$t"\' EXIT; cat > "$t"; '
                    's=$(sha256sum "$t" | cut -d" " -f1); '
                    'if [ "$s" != "$2" ]; then echo "sha256 of the transferred artifact is $s, expected $2" >&2; exit 3; fi; '
                    'chmod 755 "$t"; mv -f "$t" "$1/$2"; trap - EXIT'
                )
                r = self.run(["sh", "-c", script, "sh", ARTIFACT_CACHE, sha256], input=Path(path).read_bytes(), timeout=600)
                if r.returncode != 0:
                    raise UnderCloudError(f"host {self.config.endpoint}: putting {Path(path).name} into the artifact "
                                          f"cache failed (exit {r.returncode}): "
                                          f"{r.stderr.decode('utf-8', 'replace').strip()[-300:]}", site=self.site)
            self._staged.add(sha256)
        return ARTIFACT_CACHE

    def config_req(self, **extra: Any) -> dict[str, Any]:
        return {
            "tower_id": self.tower_id,
            "sites": [{"name": self.site, "bridge": BRIDGE, "cidr": self.config.box_cidr}],
            "overlay_cidr": self.world.overlay_cidr,
            "max_boxes": self.world.max_boxes,
            **extra,
        }

    def agent(self, op: str, timeout: float = 120, **extra: Any) -> dict[str, Any]:
        """An agent op (make-box, destroy-box, list-tagged, sweep, teardown-site) with this
        Tower's host config, on the host's kept agent: its result."""
        return self.boxctl(op, timeout, **extra)

    def boxctl(self, op: str, timeout: float = 120, **extra: Any) -> Any:
        """A boxctl op (ensure-host, boxes, join, leave, ...) likewise: its result."""
        from overcloud.underclouds.ssh.agentlink import AgentOpError

        try:
            return self.link.call(op, self.config_req(**extra), timeout=timeout, idempotent=op in READ_OPS)
        except AgentOpError as exc:
            raise UnderCloudError(f"host {self.config.endpoint}: {op}: {exc}", site=self.site) from None


class SSHUnderCloud:
    """Every ssh site of one Tower: hosts, their preparation, the WAN and the overlays."""

    def __init__(self, sites: list[SSHSiteConfig], *, state_dir: Path, tower_id: str,
                 seal: Callable[[str], str], unseal: Callable[[str], str],
                 overlay_cidr: str = "10.250.0.0/16", max_boxes: int = 200,
                 bundle_cache: Path | None = None):
        from overcloud.underclouds.local.leases import HostLeases, LeaseStore
        from overcloud.underclouds.ssh.transport import SSHTransport

        self.configs = list(sites)
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.tower_id = tower_id
        self.overlay_cidr = overlay_cidr
        self.max_boxes = max_boxes
        self._seal, self._unseal = seal, unseal
        self.bundle_cache = Path(bundle_cache or self.state_dir / "host-bundle")
        self.transport = SSHTransport([h for s in self.configs for h in s.hosts])
        self.hosts: dict[str, RemoteHost] = {}
        for s in self.configs:
            for h in s.hosts:
                self.hosts[h.name] = RemoteHost(self, s.name, h, self.transport.host(h.name))
        # overlay leases (VNI, subnet) of this Tower's ssh OverClouds: the hosts' kernels only
        # see them inside box namespaces, so the Tower's own claims keep them apart
        self.leases = LeaseStore(self.state_dir, HostLeases(self.state_dir / "claims"), tower_id)
        self.sites: dict[str, SSHSite] = {s.name: SSHSite(self, s) for s in self.configs}
        self._lock = threading.Lock()
        self._prepared = False
        self.wan_states: dict[str, Any] = {}

    # -- preparation ---------------------------------------------------------------------------
    def site_hosts(self, site: str) -> list[RemoteHost]:
        return [h for h in self.hosts.values() if h.site == site]

    def prepare(self) -> None:
        """Every host checked, the bundle installed, the box bridge and host guard up, the WAN
        up. Once per Tower process (idempotent on the hosts: run again after a restart)."""
        if self._prepared:
            return
        with self._lock:
            if self._prepared:
                return
            from overcloud.underclouds.ssh import bundle, hostprep

            art = bundle.host_bundle(self.bundle_cache)
            all_cidrs = {h.name: h.config.box_cidr for h in self.hosts.values()}

            def prep(h: RemoteHost) -> None:
                _, installed = hostprep.prepare_host(h.run, art.path, art.sha256, tower_id=self.tower_id, host=h.name)
                h.bundle_dir = installed.path
                peers = [c for n, c in all_cidrs.items() if n != h.name]
                h.boxctl("ensure-host", peer_cidrs=peers)

            errors = [(h, e) for h, _, e in _parallel(prep, list(self.hosts.values())) if e is not None]
            if errors:
                h, e = errors[0]
                raise UnderCloudError(f"preparing ssh host {h.config.endpoint} failed: {e}", site=h.site) from e
            self._wan_up()
            self._prepared = True

    def wan_plan(self):
        from overcloud.underclouds.ssh import wan
        from overcloud.files import write_atomic

        path = self.state_dir / "wan-keys.json"
        keys = json.loads(path.read_text()) if path.exists() else {}
        changed = False
        pool = list(ipaddress.ip_network(WG_POOL).hosts())
        hosts = []
        for i, h in enumerate(sorted(self.hosts.values(), key=lambda x: x.name)):
            if h.name not in keys:
                k = wan.make_keys(self._seal)
                keys[h.name] = {"public": k.public, "sealed_private": k.sealed_private}
                changed = True
            if not h.config.lan_address:
                raise UnderCloudError(f"ssh host {h.config.endpoint} has no lan_address", site=h.site)
            hosts.append(wan.WanHost(name=h.name, site=h.site, wan_address=h.config.address,
                                     lan_address=h.config.lan_address, box_cidr=h.config.box_cidr,
                                     wg_address=str(pool[i]), keys=wan.WanKeys(**keys[h.name])))
        if changed:
            write_atomic(path, json.dumps(keys))
            path.chmod(0o600)
        return wan.WanPlan(tuple(hosts))

    def _wan_up(self) -> None:
        from overcloud.underclouds.ssh import wan

        plan = self.wan_plan()
        results = _parallel(lambda h: wan.up(plan, h.name, h.run, self._unseal), list(self.hosts.values()))
        errors = [(h, e) for h, _, e in results if e is not None]
        if errors:
            h, e = errors[0]
            raise UnderCloudError(f"WAN up on ssh host {h.config.endpoint} failed: {e}", site=h.site) from e
        for h, state, _ in results:
            h.vxlan_mtu = state.vxlan_mtu
            self.wan_states[h.name] = state

    def wan_down(self) -> None:
        from overcloud.underclouds.ssh import wan

        plan = self.wan_plan()
        _parallel(lambda h: wan.down(plan.host(h.name), h.run), list(self.hosts.values()))

    # -- boxes ---------------------------------------------------------------------------------
    def host_of(self, box: Box) -> RemoteHost:
        """The box's host: ``extra["host"]`` as acquire set it, else (a box read back from the
        repository, which keeps no ``extra``) the host whose ``box_cidr`` holds its address."""
        name = box.extra.get("host")
        if name is None and box.address:
            addr = ipaddress.ip_address(box.address)
            name = next((h.name for h in self.hosts.values() if h.site == box.site
                         and addr in ipaddress.ip_network(h.config.box_cidr)), None)
        if name not in self.hosts:
            raise UnderCloudError(f"box {box.name} names no host of the ssh sites ({name!r})",
                                  overcloud_id=box.overcloud_id, site=box.site)
        return self.hosts[name]

    def session(self, box: Box) -> RemoteBoxSession:
        self.prepare()
        return RemoteBoxSession(self.host_of(box), box)

    def join_overlay(self, overcloud_id: str, boxes: list[Box]) -> Overlay:
        self.prepare()
        try:
            lease = self.leases.reserve_overlay(overcloud_id, self.overlay_cidr, [b.name for b in boxes])
            by_host: dict[str, list[Box]] = {}
            for b in boxes:
                by_host.setdefault(self.host_of(b).name, []).append(b)
            peers = [b.address for b in boxes]
            mtu = self.overlay_mtu({b.site for b in boxes}, list(by_host))

            def join(name: str) -> None:
                h = self.hosts[name]
                routes = [o.config.box_cidr for o in self.hosts.values() if o.name != name]
                h.boxctl("join", vni=lease["vni"], subnet=lease["subnet"], addresses=lease["addresses"], peers=peers,
                         routes=routes, mtu=mtu, boxes=[{"handle": b.handle, "name": b.name, "address": b.address,
                                                "site": b.site, "overcloud_id": b.overcloud_id} for b in by_host[name]])

            errors = [e for _, _, e in _parallel(join, sorted(by_host)) if e is not None]
            if errors:
                raise errors[0]
        except UnderCloudError:
            raise
        except Exception as exc:
            raise UnderCloudError(f"overlay for {overcloud_id} failed: {exc}", overcloud_id=overcloud_id) from exc
        for b in boxes:
            b.overlay_address = lease["addresses"][b.name]
        return Overlay(overcloud_id, lease["vni"], lease["subnet"], dict(lease["addresses"]))

    def overlay_mtu(self, sites: set[str], hosts: list[str]) -> int | None:
        """The VXLAN MTU every underlay path between these hosts carries, from what the WAN's
        ``up`` found: LAN − 50 inside one site, WAN − 80 − 50 across sites (see "MTU" above);
        None when unknown (the device keeps its default)."""
        states = [self.wan_states[n] for n in hosts if n in self.wan_states]
        if len(sites) > 1:
            found = [s.vxlan_mtu for s in states if s.vxlan_mtu]
        else:
            found = [s.lan_mtu - 50 for s in states if s.lan_mtu]
        return min(found) if found else None

    def leave_overlay(self, overcloud_id: str, boxes: list[Box]) -> None:
        self.prepare()
        by_host: dict[str, list[Box]] = {}
        for b in boxes:
            by_host.setdefault(self.host_of(b).name, []).append(b)
        results = _parallel(lambda n: self.hosts[n].boxctl("leave", boxes=[
            {"handle": b.handle, "name": b.name} for b in by_host[n]]), sorted(by_host))
        errors = [(n, e) for n, _, e in results if e is not None]
        if errors:
            n, e = errors[0]
            raise UnderCloudError(f"removing overlay of {overcloud_id} on {n} failed: {e}", overcloud_id=overcloud_id) from e
        for b in boxes:
            b.overlay_address = None
        self.leases.delete_overlay(overcloud_id)

    def list_tagged(self, overcloud_id: str | None = None) -> list[TaggedResource]:
        self.prepare()
        extra = {"overcloud_id": overcloud_id} if overcloud_id else {}
        results = _parallel(lambda h: h.agent("list-tagged", **extra)["resources"], list(self.hosts.values()))
        found: list[TaggedResource] = []
        for h, res, err in results:
            if err is not None:
                raise UnderCloudError(f"listing what this Tower made on {h.config.endpoint} failed: {err}") from err
            found += [TaggedResource(r["overcloud_id"], r["kind"], f"{h.name}: {r['name']}") for r in res]
        for lease in self.leases.overlays():
            if overcloud_id is None or lease["overcloud_id"] == overcloud_id:
                found.append(TaggedResource(lease["overcloud_id"], "lease", f"ssh overlay lease {lease['overcloud_id']}"))
        return found

    def sweep(self, overcloud_ids: set[str]) -> list[TaggedResource]:
        self.prepare()
        ids = sorted(overcloud_ids)
        results = _parallel(lambda h: h.agent("sweep", overcloud_ids=ids)["removed"], list(self.hosts.values()))
        removed: list[TaggedResource] = []
        errors = []
        for h, res, err in results:
            if err is not None:
                errors.append((h, err))
                continue
            removed += [TaggedResource(r["overcloud_id"], r["kind"], f"{h.name}: {r['name']}") for r in res]
        for oc in ids:
            if self.leases.overlay(oc) is not None:
                removed.append(TaggedResource(oc, "lease", f"ssh overlay lease {oc}"))
                self.leases.delete_overlay(oc)
        if errors:
            h, e = errors[0]
            raise UnderCloudError(f"sweep on {h.config.endpoint} incomplete: {e}") from e
        return removed

    def teardown(self) -> None:
        """Remove the box bridges, host guards and the WAN from every host (refused on a host
        where boxes remain); the bundle stays for the next Tower start."""
        self.prepare()
        errors = [(h, e) for h, _, e in _parallel(lambda h: h.agent("teardown-site"), list(self.hosts.values()))
                  if e is not None]
        self.wan_down()
        self._prepared = False
        if errors:
            h, e = errors[0]
            raise UnderCloudError(f"tearing down ssh host {h.config.endpoint} failed: {e}", site=h.site) from e

    def close(self) -> None:
        for h in self.hosts.values():
            h.link.close()
        self.transport.close()


def place(specs: list[BoxSpec], hosts: list[RemoteHost], inventory: dict[str, list[dict[str, Any]]]
          ) -> dict[str, list[BoxSpec]]:
    """Which host each spec goes to: where its box exists already, else the host with the most
    free CPUs (then memory) that fits it. ``inventory``: each host's box leases (with flavor).
    Raises UnderCloudError when a box fits nowhere."""
    where: dict[str, str] = {}
    free: dict[str, list[float]] = {}
    for h in hosts:
        used_cpu = sum(float((b.get("flavor") or {}).get("cpus", 0)) for b in inventory.get(h.name, []))
        used_mem = sum(int((b.get("flavor") or {}).get("memory_mb", 0)) for b in inventory.get(h.name, []))
        free[h.name] = [h.config.cpus - used_cpu, h.config.memory_mb - used_mem]
        for b in inventory.get(h.name, []):
            where[b["handle"]] = h.name
    out: dict[str, list[BoxSpec]] = {}
    for spec in sorted(specs, key=lambda s: (-s.flavor.cpus, -s.flavor.memory_mb, s.name)):
        handle = box_handle(spec.overcloud_id, spec.name)
        if handle in where:
            out.setdefault(where[handle], []).append(spec)
            continue
        fits = [n for n, (c, m) in free.items() if c + 1e-9 >= spec.flavor.cpus and m >= spec.flavor.memory_mb]
        if not fits:
            room = ", ".join(f"{n}: {c:g} CPUs {m} MiB" for n, (c, m) in sorted(free.items()))
            raise UnderCloudError(f"no host of the site has room for box {spec.name} ({spec.flavor.name}: "
                                  f"{spec.flavor.cpus:g} CPUs, {spec.flavor.memory_mb} MiB); free: {room}",
                                  overcloud_id=spec.overcloud_id, site=spec.site)
        best = max(fits, key=lambda n: (free[n][0], free[n][1], n))
        free[best][0] -= spec.flavor.cpus
        free[best][1] -= spec.flavor.memory_mb
        where[handle] = best
        out.setdefault(best, []).append(spec)
    return out


class SSHSite(DomainSite):
    """One ssh site: the driver the workflows call. Its domain is the world of every ssh host
    of this Tower (one overlay across sites, inventory and sweep of all hosts)."""

    kind = "ssh"

    def __init__(self, world: SSHUnderCloud, config: SSHSiteConfig):
        super().__init__(config.name)
        self.world = self.domain = world
        self.config = config

    @property
    def hosts(self) -> list[RemoteHost]:
        return self.world.site_hosts(self.name)

    def inventory(self) -> dict[str, list[dict[str, Any]]]:
        self.world.prepare()
        results = _parallel(lambda h: h.boxctl("boxes"), self.hosts)
        out = {}
        for h, boxes, err in results:
            if err is not None:
                raise UnderCloudError(f"site {self.name}: asking {h.config.endpoint} for its boxes failed: {err}",
                                      site=self.name) from err
            out[h.name] = boxes
        return out

    def acquire(self, specs: list[BoxSpec]) -> list[Box]:
        if not specs:
            return []
        ids = {s.overcloud_id for s in specs}
        oc = next(iter(ids)) if len(ids) == 1 else None
        wrong = [s.name for s in specs if s.site != self.name]
        if wrong:
            raise UnderCloudError(f"boxes {wrong} are not for site {self.name}", overcloud_id=oc, site=self.name)
        inventory = self.inventory()
        existing = {b["handle"] for boxes in inventory.values() for b in boxes}
        placed = place(specs, self.hosts, inventory)
        hosts = {h.name: h for h in self.hosts}

        def make(name: str) -> list[Box]:
            h = hosts[name]
            answer = h.agent("make-box", timeout=180, specs=[
                {"overcloud_id": s.overcloud_id, "name": s.name, "role": s.role, "site": s.site,
                 "flavor": {"name": s.flavor.name, "cpus": s.flavor.cpus, "memory_mb": s.flavor.memory_mb}}
                for s in placed[name]])
            boxes = []
            for d in answer["boxes"]:
                box = Box.from_dict(d)
                box.extra = {**box.extra, "host": h.name, "host_address": h.config.address,
                             "lan_address": h.config.lan_address, "bundle_dir": h.bundle_dir}
                boxes.append(box)
            return boxes

        results = _parallel(make, sorted(placed))
        errors = [(n, e) for n, _, e in results if e is not None]
        if not errors:
            by_name = {b.name: b for _, boxes, _ in results for b in boxes}
            return [by_name[s.name] for s in specs]
        # all or nothing: undo what this call made on the hosts that succeeded (a failed host's
        # make-box undid its own)
        undo = [b for _, boxes, e in results if e is None for b in boxes if b.handle not in existing]
        try:
            self.release(undo)
        except UnderCloudError as exc:
            logger.error("undoing boxes after a failed acquire on site %s: %s", self.name, exc)
        name, cause = errors[0]
        raise UnderCloudError(f"acquiring {len(specs)} box(es) on site {self.name} failed on host {name}: {cause}",
                              overcloud_id=oc, site=self.name) from cause

    def release(self, boxes: list[Box]) -> None:
        mine = [b for b in boxes if b.site == self.name]
        if not mine:
            return
        self.world.prepare()
        by_host: dict[str, list[Box]] = {}
        for b in mine:
            by_host.setdefault(self.world.host_of(b).name, []).append(b)
        results = _parallel(lambda n: self.world.hosts[n].agent("destroy-box", timeout=180, boxes=[
            b.to_dict() for b in by_host[n]]), sorted(by_host))
        errors = [(n, e) for n, _, e in results if e is not None]
        if errors:
            n, cause = errors[0]
            raise UnderCloudError(f"releasing boxes on {n} (site {self.name}) failed: {cause}",
                                  overcloud_id=mine[0].overcloud_id, site=self.name) from cause

    def quota(self) -> Quota:
        """Boxes this Tower has on the site's hosts (their lease files, one plain command per
        host, no preparation: a create's validate asks before the hosts need to be ready)."""
        def count(h: RemoteHost) -> int:
            r = h.run(["sh", "-c", 'ls -1 "$1" 2>/dev/null | grep -c "\\.json$" || true', "sh",
                       f"{h.state_dir}/leases"], timeout=30)
            return int(r.stdout.decode().strip() or 0) if r.returncode == 0 else 0

        results = _parallel(count, self.hosts)
        errors = [(h, e) for h, _, e in results if e is not None]
        if errors:
            h, e = errors[0]
            raise UnderCloudError(f"site {self.name}: counting boxes on {h.config.endpoint} failed: {e}",
                                  site=self.name) from e
        return Quota(max_boxes=self.world.max_boxes, used_boxes=sum(n for _, n, _ in results))
