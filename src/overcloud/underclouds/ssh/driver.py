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

import dataclasses
import ipaddress
import json
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

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
#: a host label naming the private network it shares with the hosts of its site that carry the same
#: value (a cloud site's OverCloud network); absent: the whole site is one LAN (see wan_plan.WanHost.lan)
LAN_LABEL = "overcloud.io/lan"
CONVERGE_WAIT = 5.0  # seconds add_host/remove_host wait for the other hosts' update (then it goes on behind)
WG_POOL = "100.79.0.0/24"  # WireGuard interface addresses (/32 each), outside every box subnet
READ_OPS = frozenset({"hello", "boxes", "list-tagged"})  # sent again to a new agent if one ended under them
# The host's side of a gzip transfer: the host's python3 (zlib: ~2x gzip(1)'s inflate speed) writes
# the decompressed bytes to argv[1] and prints their SHA-256, in one pass (gzip -dc | sha256sum
# reads them twice: 2.3 s for weed against 1.3 s here). Any number of gzip members; a corrupted,
# truncated or trailing-garbage stream exits 1 with the reason. No single quote in it (see below).
INFLATE = (
    "import sys, zlib, hashlib\n"
    "i, o, h = sys.stdin.buffer, open(sys.argv[1], \"wb\"), hashlib.sha256()\n"
    "d, ended = zlib.decompressobj(31), False\n"
    "try:\n"
    "    while b := i.read(1 << 20):\n"
    "        while b:\n"
    "            out = d.decompress(b); h.update(out); o.write(out); b, ended = b\"\", False\n"
    "            if d.eof:\n"
    "                b, d, ended = d.unused_data, zlib.decompressobj(31), True\n"
    "    if not ended:\n"
    "        raise ValueError(\"the gzip stream ends early\")\n"
    "    o.close()\n"
    "except (zlib.error, ValueError, OSError) as e:\n"
    "    sys.exit(f\"decompressing the transferred artifact failed: {e}\")\n"
    "print(h.hexdigest())\n"
)
# The host's side of a transfer into the artifact cache ($1 cache, $2 sha256, $3 gz|raw): the bytes
# from stdin (decompressed while received when gz) into a temporary file, whose SHA-256 is checked
# before the rename. On a failure before the end of the bytes the rest is read and dropped: a
# closed channel would hide the reason (mkdir's, cat's or python's message) behind a write error.
STAGE_SCRIPT = (
    'set -e; umask 022; mkdir -p "$1" || { cat >/dev/null; exit 4; }; t="$1/.$2.part$$"; '
    'trap \'rm -f "$t"\' EXIT; '
    'if [ "$3" = gz ]; then s=$(/usr/bin/python3 -IS -c \'' + INFLATE + '\' "$t") || { cat >/dev/null; exit 5; }; '
    'else cat > "$t" || { cat >/dev/null; exit 5; }; s=$(sha256sum "$t" | cut -d" " -f1); fi; '
    'if [ "$s" != "$2" ]; then echo "sha256 of the transferred artifact is $s, expected $2" >&2; exit 3; fi; '
    'chmod 755 "$t"; mv -f "$t" "$1/$2"; trap - EXIT'
)


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
        # preparation, per host (see ensure_prepared): a host that fails is retried on the next
        # need, and its reason is kept for messages and inventory
        self.prepared = False
        self.problem: str | None = None  # why the last preparation failed; None once prepared
        self._prep_lock = threading.Lock()
        self._prep_attempts = 0
        self._prepared_connects = -1  # the transport's connection count when last known prepared
        # the generation of the world's WAN plan (SSHUnderCloud.plan_gen) whose peers, routes and
        # guard subnets this host has; hosts added or removed at run time make it older
        self.plan_gen = -1

    @property
    def up_to_date(self) -> bool:
        """Prepared, on the same connection, and knowing every host of the world as it is now."""
        return self.prepared and self.ssh.connects == self._prepared_connects and self.plan_gen == self.world.plan_gen

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

    @property
    def prepared_marker(self) -> str:
        """A file in the host's ``/run`` (empty after a reboot) that says this Tower prepared it."""
        return f"/run/overcloud/prepared-{self.tower_id}"

    def ensure_prepared(self) -> None:
        """Prepare this host unless it is (see :meth:`SSHUnderCloud.prepare_host`); raises
        UnderCloudError naming the host and why. A host prepared earlier is trusted while the
        transport keeps the same connection; after a new connection (the host, or its sshd,
        may have restarted) one command checks :attr:`prepared_marker`, and a host that lost it
        (rebooted: its bridge, guard and WAN are gone) is prepared again. Needs that wait while
        an attempt runs share its outcome (a dead host costs one connect timeout, not one each);
        the next need after a failure tries again. A prepared host that does not know the hosts
        added or removed since (its WAN plan generation is older) is brought up to date
        (:meth:`SSHUnderCloud.converge_host`)."""
        if self.up_to_date:
            return
        try:
            self._ensure_prepared()
        finally:
            self.world.settle(self)

    def _ensure_prepared(self) -> None:
        seen = self._prep_attempts
        with self._prep_lock:
            if self.prepared and self.ssh.connects == self._prepared_connects:
                if self.plan_gen != self.world.plan_gen:
                    self.world.converge_host(self)
                return
            if self._prep_attempts != seen and not self.prepared and self.problem:
                raise UnderCloudError(self.problem, site=self.site)
            self._prep_attempts += 1
            try:
                if self.prepared:
                    r = self.run(["test", "-e", self.prepared_marker], timeout=30)
                    if r.returncode == 0:
                        self._prepared_connects = self.ssh.connects
                        if self.plan_gen != self.world.plan_gen:
                            self.world.converge_host(self)
                        return
                    logger.warning("ssh host %s lost its preparation (restarted?): preparing it again",
                                   self.config.endpoint)
                    self.prepared = False
                self.world.prepare_host(self)
            except Exception as exc:  # noqa: BLE001 - kept as the host's problem, raised with its name
                self.prepared = False
                text = str(exc)
                self.problem = text if self.name in text else f"preparing ssh host {self.config.endpoint} failed: {text}"
                self.world.prepare_errors[self.name] = self.problem[:500]
                raise UnderCloudError(self.problem, site=self.site) from exc
            self.prepared = True
            self.problem = None
            self.world.prepare_errors.pop(self.name, None)
            self._prepared_connects = self.ssh.connects

    def run(self, argv: list[str], input: bytes | None = None, timeout: float = 120):
        """``run(argv, input=None)`` as hostprep and wan want it: exit statuses read by the caller."""
        return self.ssh.run(argv, input=input, check=False, timeout=timeout, max_output=16 << 20)

    def stage_artifact(self, path: Path, sha256: str) -> str:
        """Put a content-addressed artifact (``weed``) into the host's artifact cache, unless it
        is there; returns the cache dir (``fetch.py`` finds ``<cache>/<sha256>`` and checks it).
        The bytes go over the SSH connection, gzip-compressed when the Tower has the compressed
        form (see :mod:`compressed`: made once, at serve), and the host checks the SHA-256 of the
        decompressed bytes before the rename. A compressed form the host refuses (corrupted on
        the Tower's disk) is dropped and the raw bytes are sent instead."""
        from overcloud.underclouds.ssh import compressed

        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ValueError("sha256 must be 64 hex digits")
        with self._stage_lock:  # one transfer per artifact and host, whatever asks at once
            if sha256 in self._staged:
                return ARTIFACT_CACHE
            r = self.run(["test", "-f", f"{ARTIFACT_CACHE}/{sha256}"], timeout=30)
            if r.returncode != 0:
                form = self.world.compressed_form(Path(path), sha256)
                r = self._send_artifact(Path(path), sha256, form)
                if form is not None and r.returncode != 0 and (r.returncode == 3 or b"decompressing the transferred artifact" in r.stderr):
                    logger.warning("ssh host %s refused the compressed form of %s (%s): dropping it, sending it raw",
                                   self.name, Path(path).name, r.stderr.decode("utf-8", "replace").strip()[-200:])
                    compressed.forget(sha256, form)
                    r = self._send_artifact(Path(path), sha256, None)
                if r.returncode != 0:
                    raise UnderCloudError(f"host {self.config.endpoint}: putting {Path(path).name} into the artifact "
                                          f"cache failed (exit {r.returncode}): "
                                          f"{r.stderr.decode('utf-8', 'replace').strip()[-300:]}", site=self.site)
            self._staged.add(sha256)
        return ARTIFACT_CACHE

    def _send_artifact(self, path: Path, sha256: str, form: Path | None):
        """One transfer into the artifact cache: ``form`` (gzip) or the raw bytes; the host's exit
        status is the caller's to read (3: SHA-256 mismatch, 5: the bytes could not be written or
        decompressed); a failure leaves nothing on the host."""
        t0 = time.monotonic()
        data = (form or path).read_bytes()
        try:
            r = self.run(["sh", "-c", STAGE_SCRIPT, "sh", ARTIFACT_CACHE, sha256, "gz" if form else "raw"],
                         input=data, timeout=600)
        except Exception as exc:  # noqa: BLE001 - the transport's own error, named with the host
            text = str(exc)
            raise UnderCloudError(f"host {self.config.endpoint}: putting {path.name} into the artifact "
                                  f"cache failed: {text or type(exc).__name__}",
                                  site=self.site) from exc
        if r.returncode == 0:
            logger.info("ssh host %s: %s (%d MB, sent %d MB%s) put into the artifact cache in %.1f s", self.name,
                        path.name, path.stat().st_size >> 20, len(data) >> 20, " gzip" if form else " raw",
                        time.monotonic() - t0)
        return r

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
        # sites whose hosts come at run time (cloud sites, add_site): their own drivers place boxes
        self.added_sites: dict[str, dict[str, str]] = {}  # name -> labels
        self._lock = threading.Lock()
        self._plan_lock = threading.Lock()  # the bundle, built once
        self._hosts_lock = threading.RLock()  # add_host / remove_host, one at a time
        self._wan_lock = threading.RLock()  # the WAN plan and wan-keys.json (made, read and replaced)
        self._bundle: Any = None  # the host bundle (Artifact), built once
        self._plan: Any = None  # the WAN plan, made on first need and again when hosts come or go
        self.plan_gen = 0  # bumped with each new plan of a changed world (RemoteHost.plan_gen)
        self.wan_states: dict[str, Any] = {}
        # hosts each OverCloud may have something on (written before a make-box there): what
        # list_tagged and sweep must reach for it; a host that no record names and does not
        # answer holds nothing of ours and is skipped (see docs/remote-hosts.md, "Faults")
        self.touched_dir = self.state_dir / "touched"
        self._touch_lock = threading.Lock()
        from overcloud.underclouds.ssh.health import HostHealth

        self.health = HostHealth(self)  # probe cache: GET /underclouds and the OverClouds' health
        self.prepare_errors: dict[str, str] = {}  # host -> why its last preparation failed

    # -- preparation ---------------------------------------------------------------------------
    def site_hosts(self, site: str) -> list[RemoteHost]:
        return [h for h in self.hosts.values() if h.site == site]

    @property
    def site_names(self) -> set[str]:
        """Every site of this world: the ssh sites and those added at run time."""
        return set(self.sites) | set(self.added_sites)

    def prepare(self, artifacts: list[tuple[Path, str]] | tuple = ()) -> None:
        """Every host prepared (see :meth:`prepare_host`), in parallel. Hosts are independent: one
        that fails does not stop the others, keeps its reason (``RemoteHost.problem``) and is
        tried again on its next need. Raises UnderCloudError naming every host that failed.

        ``artifacts`` (``(path, sha256)``: ``weed``, what the DataLake's boxes run) are then put
        into each host's artifact cache (:meth:`RemoteHost.stage_artifact`), each host as soon as
        it is prepared (hosts in parallel): the Tower does this at ``serve``, so the first create
        does not push them in its DataLake task. A host whose staging fails is named in the error
        and in the log, and stays prepared: the box that needs the artifact stages it then (or
        waits for the transfer under way: one per host and artifact at a time)."""
        hosts = list(self.hosts.values())
        if not artifacts:
            self.ensure(hosts)
            return
        from overcloud.underclouds.ssh import compressed

        for path, sha in artifacts:  # compressed once, while the hosts are prepared (see stage_artifact)
            compressed.start(Path(path), sha, self.state_dir / "compressed")

        def one(h: RemoteHost) -> None:
            h.ensure_prepared()
            for path, sha in artifacts:
                h.stage_artifact(path, sha)

        errors = [(h, e) for h, _, e in _parallel(one, hosts) if e is not None]
        if errors:
            h, e = errors[0]
            text = "; ".join(str(e) for _, e in errors)
            raise UnderCloudError(text, site=h.site if len(errors) == 1 else None) from e

    def compressed_form(self, path: Path, sha256: str) -> Path | None:
        """The gzip form of an artifact to send to a host (see :mod:`compressed`), or None to send
        it raw. A compression under way (:meth:`prepare` starts it at serve) is waited for; when
        none was started, one starts for the next hosts and this transfer goes raw rather than
        wait for a whole compression."""
        from overcloud.underclouds.ssh import compressed

        fut = compressed.under_way(sha256)
        if fut is None:
            fut = compressed.start(path, sha256, self.state_dir / "compressed")
            if not fut.done():
                return None
        try:
            form = fut.result(timeout=600)
        except Exception:  # noqa: BLE001 - no compressed form (the reason is logged): sent raw
            return None
        return form if form is not None and form.is_file() else None

    def ensure(self, hosts: list[RemoteHost]) -> None:
        """These hosts prepared (in parallel); raises UnderCloudError naming each that failed."""
        todo = [h for h in hosts if not h.up_to_date]
        if not todo:
            return
        errors = [(h, e) for h, _, e in _parallel(lambda h: h.ensure_prepared(), todo) if e is not None]
        if errors:
            h, e = errors[0]
            text = "; ".join(str(e) for _, e in errors)
            raise UnderCloudError(text, site=h.site if len(errors) == 1 else None) from e

    @property
    def _prepared(self) -> bool:
        """Some host is prepared (its WAN plan made): what health.py asks before reading the WAN."""
        return any(h.prepared for h in self.hosts.values())

    def host_bundle(self):
        with self._plan_lock:
            if self._bundle is None:
                from overcloud.underclouds.ssh import bundle

                self._bundle = bundle.host_bundle(self.bundle_cache)
            return self._bundle

    def prepare_host(self, h: RemoteHost) -> None:
        """One host checked, the bundle installed, the box bridge and host guard (with every
        other host's box subnet let through) up, its WAN up (WireGuard to the hosts of other
        sites, routes to the hosts of its own), then :attr:`RemoteHost.prepared_marker`.
        Idempotent on the host; independent of every other host.

        Nothing is sent to a host that the check refuses; then the bundle and ``ensure-host``
        (which needs the bundle) run beside ``wan.up`` (plain commands and ``wg``, no bundle),
        and the marker is written only when both succeeded. The Tower builds the bundle (once)
        while the first host is checked."""
        from overcloud.underclouds.ssh import hostprep, wan

        t0 = time.monotonic()
        gen, plan = self.plan_snapshot()  # peers, routes and guard subnets of one world
        building = threading.Thread(target=self._build_bundle_quietly, name="ssh-uc-bundle", daemon=True)
        building.start()
        hostprep.check_host(h.run, h.name)
        t_check = time.monotonic() - t0
        times: dict[str, float] = {}

        def bundle_and_site() -> bool:
            t = time.monotonic()
            art = self.host_bundle()
            installed = hostprep.install_bundle(h.run, art.path, art.sha256, tower_id=self.tower_id, host=h.name)
            h.bundle_dir = installed.path
            times["bundle"] = time.monotonic() - t
            t = time.monotonic()
            h.boxctl("ensure-host", peer_cidrs=peer_cidrs(plan, h.name))
            times["ensure-host"] = time.monotonic() - t
            return installed.transferred

        def wan_up() -> Any:
            t = time.monotonic()
            try:
                return wan.up(plan, h.name, h.run, self._unseal)
            except Exception as exc:
                raise UnderCloudError(f"WAN up on ssh host {h.config.endpoint} failed: {exc}", site=h.site) from exc
            finally:
                times["WAN"] = time.monotonic() - t

        (_, transferred, e1), (_, state, e2) = _parallel(lambda f: f(), [bundle_and_site, wan_up])
        if e1 is not None or e2 is not None:
            raise e1 if e1 is not None else e2  # type: ignore[misc]
        h.vxlan_mtu = state.vxlan_mtu
        self.wan_states[h.name] = state
        h.plan_gen = gen
        r = h.run(["sh", "-c", 'mkdir -p /run/overcloud && : > "$1"', "sh", h.prepared_marker], timeout=30)
        if r.returncode != 0:
            raise UnderCloudError(f"ssh host {h.config.endpoint}: cannot write {h.prepared_marker} "
                                  f"(exit {r.returncode})", site=h.site)
        logger.info("ssh host %s prepared in %.1f s: check %.1f s, then bundle %.1f s (%s) + ensure-host %.1f s "
                    "beside WAN %.1f s", h.name, time.monotonic() - t0, t_check, times.get("bundle", -1),
                    "transferred" if transferred else "there already", times.get("ensure-host", -1),
                    times.get("WAN", -1))

    def _build_bundle_quietly(self) -> None:
        try:
            self.host_bundle()
        except Exception:  # noqa: BLE001 - the host's own call to host_bundle raises it with its context
            pass

    def wan_plan(self):
        return self.plan_snapshot()[1]

    def plan_snapshot(self) -> tuple[int, Any]:
        """(generation, WAN plan) of the world as it is now, read together."""
        with self._wan_lock:
            if self._plan is None:
                self._plan = self._make_wan_plan(list(self.hosts.values()))
            return self.plan_gen, self._plan

    def _make_wan_plan(self, hosts: list[Any], forget: tuple[str, ...] = ()):
        """The plan of these hosts; their WAN keys and WireGuard addresses made when missing and
        kept in ``wan-keys.json`` (``forget``: entries dropped), written only once the plan is
        valid. A host keeps its WireGuard address while the Tower knows it, so hosts coming and
        going never move the others'; the first plan of a world gives the n-th host by name the
        n-th address of :data:`WG_POOL` (as before addresses were kept). Raises UnderCloudError."""
        from overcloud.underclouds.ssh import wan
        from overcloud.files import write_atomic

        path = self.state_dir / "wan-keys.json"
        keys = json.loads(path.read_text()) if path.exists() else {}
        changed = False
        for name in forget:
            changed |= keys.pop(name, None) is not None
        pool = [str(a) for a in ipaddress.ip_network(WG_POOL).hosts()]
        ordered = sorted(hosts, key=lambda x: x.name)
        taken = {k.get("wg_address") for k in keys.values()} - {None}
        for i, h in enumerate(ordered):
            if h.name not in keys:
                k = wan.make_keys(self._seal)
                keys[h.name] = {"public": k.public, "sealed_private": k.sealed_private}
                changed = True
            if not keys[h.name].get("wg_address"):
                free = [a for a in ([pool[i]] if i < len(pool) else []) + pool if a not in taken]
                if not free:
                    raise UnderCloudError(f"no WireGuard address left in {WG_POOL} for ssh host {h.name}", site=h.site)
                keys[h.name]["wg_address"] = free[0]
                taken.add(free[0])
                changed = True
        plan_hosts = []
        for h in ordered:
            if not h.config.lan_address:
                raise UnderCloudError(f"ssh host {h.config.endpoint} has no lan_address", site=h.site)
            k = keys[h.name]
            plan_hosts.append(wan.WanHost(name=h.name, site=h.site, wan_address=h.config.address,
                                          lan_address=h.config.lan_address, box_cidr=h.config.box_cidr,
                                          wg_address=k["wg_address"], lan=h.config.labels.get(LAN_LABEL),
                                          keys=wan.WanKeys(public=k["public"], sealed_private=k["sealed_private"])))
        try:
            plan = wan.WanPlan(tuple(plan_hosts))
        except ValueError as exc:
            raise UnderCloudError(f"the ssh hosts' WAN plan: {exc}") from None
        if changed:
            write_atomic(path, json.dumps(keys))
            path.chmod(0o600)
        return plan

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

    def hosts_of(self, boxes: list[Box]) -> list[RemoteHost]:
        """The boxes' hosts, each once, prepared (raises UnderCloudError naming a host that is not)."""
        hosts = list({h.name: h for h in (self.host_of(b) for b in boxes)}.values())
        self.ensure(hosts)
        return hosts

    # -- what each OverCloud may have on which host (see touched_dir) --------------------------
    def _touched_path(self, overcloud_id: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", overcloud_id) or overcloud_id.startswith("."):
            raise UnderCloudError(f"bad OverCloud id {overcloud_id[:40]!r}")
        return self.touched_dir / f"{overcloud_id}.json"

    def touched(self, overcloud_id: str) -> set[str]:
        """The hosts ``overcloud_id`` may have something on (boxes made or being made there)."""
        try:
            return set(json.loads(self._touched_path(overcloud_id).read_text()))
        except (OSError, ValueError):
            return set()

    def touched_hosts(self) -> dict[str, set[str]]:
        """Every OverCloud's touched hosts."""
        out: dict[str, set[str]] = {}
        for f in sorted(self.touched_dir.glob("*.json")) if self.touched_dir.is_dir() else []:
            try:
                out[f.stem] = set(json.loads(f.read_text()))
            except (OSError, ValueError):
                continue
        return out

    def touch(self, overcloud_id: str, hosts: list[str]) -> None:
        """Record (before any make-box there) that ``overcloud_id`` may have boxes on ``hosts``."""
        from overcloud.files import write_atomic

        with self._touch_lock:
            now = self.touched(overcloud_id)
            if set(hosts) <= now:
                return
            self.touched_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomic(self._touched_path(overcloud_id), json.dumps(sorted(now | set(hosts))))

    def _forget_touched(self, overcloud_id: str) -> None:
        with self._touch_lock:
            self._touched_path(overcloud_id).unlink(missing_ok=True)

    def sweep_host(self, name: str, overcloud_ids: set[str], timeout: float = 60) -> list[TaggedResource]:
        """These OverClouds' resources removed from one host (prepared first; raises when it does
        not answer), then the host struck from their records; a record left naming no host goes,
        with the OverCloud's overlay lease. What the Tower's leftover sweeper (leftovers.py) does
        for OverClouds that are no longer live, once a host a record names answers again."""
        from overcloud.files import write_atomic

        h = self.hosts[name]
        ids = sorted(overcloud_ids)
        h.ensure_prepared()
        res = h.agent("sweep", timeout=timeout, overcloud_ids=ids)["removed"]
        removed = [TaggedResource(r["overcloud_id"], r["kind"], f"{name}: {r['name']}") for r in res]
        for oc in ids:
            with self._touch_lock:
                path = self._touched_path(oc)
                if not path.exists():
                    continue
                left = self.touched(oc) - {name}
                if left:
                    write_atomic(path, json.dumps(sorted(left)))
                else:
                    path.unlink(missing_ok=True)
            if not left and self.leases.overlay(oc) is not None:
                removed.append(TaggedResource(oc, "lease", f"ssh overlay lease {oc}"))
                self.leases.delete_overlay(oc)
        return removed

    def _each_host(self, fn: Callable[[RemoteHost], Any], needed: set[str], what: str,
                   answers: list[tuple[RemoteHost, Any]] | None = None) -> list[tuple[RemoteHost, Any]]:
        """``fn`` on every host (prepared first), in parallel; returns the answers (appended to
        ``answers`` when given). A host that fails but holds nothing of ours (no OverCloud's
        record names it) is skipped and logged; one in ``needed`` makes it raise
        UnderCloudError naming it and why (after every host was asked)."""
        def call(h: RemoteHost) -> Any:
            h.ensure_prepared()
            return fn(h)

        answers = [] if answers is None else answers
        errors = []
        for h, res, err in _parallel(call, list(self.hosts.values())):
            if err is None:
                answers.append((h, res))
            elif h.name in needed:
                errors.append((h, err))
            else:
                logger.info("%s: skipped ssh host %s, which holds nothing of this Tower's OverClouds and "
                            "does not answer: %s", what, h.config.endpoint, err)
        if errors:
            text = "; ".join(f"{h.config.endpoint}: {e}" if h.name not in str(e) else str(e) for h, e in errors)
            raise UnderCloudError(f"{what}: not every ssh host that may hold something of it answered: {text}",
                                  site=errors[0][0].site) from errors[0][1]
        return answers

    def session(self, box: Box) -> RemoteBoxSession:
        h = self.host_of(box)
        h.ensure_prepared()
        return RemoteBoxSession(h, box)

    def join_overlay(self, overcloud_id: str, boxes: list[Box]) -> Overlay:
        self.hosts_of(boxes)
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
        by_host: dict[str, list[Box]] = {}
        for b in boxes:
            by_host.setdefault(self.host_of(b).name, []).append(b)

        def leave(n: str) -> None:  # each host on its own: one that does not answer stops none of the others
            self.hosts[n].ensure_prepared()
            self.hosts[n].boxctl("leave", boxes=[{"handle": b.handle, "name": b.name} for b in by_host[n]])

        results = _parallel(leave, sorted(by_host))
        errors = [(n, e) for n, _, e in results if e is not None]
        if errors:
            n, e = errors[0]
            raise UnderCloudError(f"removing overlay of {overcloud_id} on {n} failed: {e}", overcloud_id=overcloud_id) from e
        for b in boxes:
            b.overlay_address = None
        self.leases.delete_overlay(overcloud_id)

    def list_tagged(self, overcloud_id: str | None = None) -> list[TaggedResource]:
        """What this Tower made on the hosts (for one OverCloud or all) and its overlay leases.
        A host that does not answer is skipped when no record says the OverCloud (any, for
        ``None``) touched it; otherwise UnderCloudError names it: what is there cannot be told.
        A record whose hosts all answered with nothing of its OverCloud is dropped."""
        extra = {"overcloud_id": overcloud_id} if overcloud_id else {}
        touched = ({overcloud_id: self.touched(overcloud_id)} if overcloud_id else self.touched_hosts())
        needed = set().union(*touched.values()) if touched else set()
        answers = self._each_host(lambda h: h.agent("list-tagged", **extra)["resources"], needed,
                                           f"listing what {'OverCloud ' + overcloud_id if overcloud_id else 'this Tower'} "
                                           "left on the ssh hosts")
        found: list[TaggedResource] = []
        for h, res in answers:
            found += [TaggedResource(r["overcloud_id"], r["kind"], f"{h.name}: {r['name']}") for r in res]
        for lease in self.leases.overlays():
            if overcloud_id is None or lease["overcloud_id"] == overcloud_id:
                found.append(TaggedResource(lease["overcloud_id"], "lease", f"ssh overlay lease {lease['overcloud_id']}"))
        if overcloud_id and not found and touched[overcloud_id]:
            self._forget_touched(overcloud_id)  # its hosts answered (a silent one would have raised): clean
        return found

    def sweep(self, overcloud_ids: set[str]) -> list[TaggedResource]:
        """Remove everything of these OverClouds from every host, and their overlay leases.
        Hosts that do not answer and no record names for them are skipped; one that a record
        names makes it raise (after the others are swept), naming it."""
        ids = sorted(overcloud_ids)
        touched = {oc: self.touched(oc) for oc in ids}
        needed = set().union(*touched.values()) if touched else set()
        removed: list[TaggedResource] = []
        failure: UnderCloudError | None = None
        answers: list[tuple[RemoteHost, Any]] = []
        try:
            self._each_host(lambda h: h.agent("sweep", overcloud_ids=ids)["removed"], needed,
                            f"sweeping {', '.join(ids)}", answers)
        except UnderCloudError as exc:
            failure = exc
        for h, res in answers:
            removed += [TaggedResource(r["overcloud_id"], r["kind"], f"{h.name}: {r['name']}") for r in res]
        for oc in ids:
            if self.leases.overlay(oc) is not None:
                removed.append(TaggedResource(oc, "lease", f"ssh overlay lease {oc}"))
                self.leases.delete_overlay(oc)
        if failure is not None:
            raise failure
        for oc in ids:
            self._forget_touched(oc)
        return removed

    def teardown(self) -> None:
        """Remove the box bridges, host guards and the WAN from every host (refused on a host
        where boxes remain); the bundle stays for the next Tower start."""
        self.prepare()
        errors = [(h, e) for h, _, e in _parallel(lambda h: h.agent("teardown-site"), list(self.hosts.values()))
                  if e is not None]
        self.wan_down()
        for h in self.hosts.values():
            h.prepared = False
        if errors:
            h, e = errors[0]
            raise UnderCloudError(f"tearing down ssh host {h.config.endpoint} failed: {e}", site=h.site) from e

    def agent_calls(self) -> dict[str, int]:
        """Requests sent to each host's kept agent (the Tower's /metrics)."""
        return {name: h.link.calls for name, h in self.hosts.items()}

    def close(self) -> None:
        for h in list(self.hosts.values()):
            h.link.close()
        self.transport.close()

    # -- hosts that come and go (cloud sites hand their servers over at run time) -------------
    def add_site(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        """An empty site of this world (a cloud site): no ssh config entry, hosts come with
        :meth:`add_host`. Idempotent (labels replaced). Its boxes are placed by its own driver;
        describe_hosts, list_tagged, sweep, underlay_problems and health cover its hosts."""
        if name in self.sites:
            raise UnderCloudError(f"site {name} is an ssh site of the sites file already", site=name)
        self.added_sites = {**self.added_sites, name: dict(labels or {})}

    def add_host(self, site: str, config: SSHHostConfig) -> RemoteHost:
        """Add (or replace) a host of ``site`` at run time; see docs/remote-hosts.md, "Hosts that
        come and go". Thread-safe; same name and config: the existing host. The caller prepares
        it (``host.ensure_prepared()``); the other prepared hosts learn it here."""
        if site not in self.site_names:
            raise UnderCloudError(f"no site {site} in the ssh world (add_site first)", site=site)
        if not config.box_cidr or not config.lan_address:
            raise UnderCloudError(f"ssh host {config.endpoint} of site {site} needs a box_cidr and a lan_address",
                                  site=site)
        with self._hosts_lock:
            old = self.hosts.get(config.name)
            if old is not None and old.site == site and old.config == config:
                return old
            for o in self.hosts.values():
                if o.name != config.name and (o.config.address, o.config.port) == (config.address, config.port):
                    raise UnderCloudError(f"ssh host {config.name}: {config.address}:{config.port} is host "
                                          f"{o.name}'s already", site=site)
            others = [o for o in self.hosts.values() if o.name != config.name]
            with self._wan_lock:
                # checks box_cidr and addresses against the others' before anything changes
                plan = self._make_wan_plan([*others, _Planned(config.name, site, config)])
                if old is not None:  # replaced: its agent goes (and its connection, when the config changed)
                    old.prepared = False
                    old.link.close()
                h = RemoteHost(self, site, config, self.transport.add(config))
                self.hosts = {**self.hosts, config.name: h}
                self._plan = plan
                self.plan_gen += 1
            self.prepare_errors.pop(config.name, None)
            self.health.forget(config.name)
            self.wan_states.pop(config.name, None)
        logger.info("ssh world: host %s of site %s %s; updating the other hosts", config.endpoint, site,
                    "replaced" if old is not None else "added")
        self._converge_all(exclude=config.name)
        return h

    def remove_host(self, name: str) -> None:
        """Forget a host (its server is going away: it is not asked anything): the other prepared
        hosts drop its WireGuard peer, routes and guard subnet; its connection closes; its WAN
        keys are forgotten. Unknown names are a no-op."""
        with self._hosts_lock:
            h = self.hosts.get(name)
            if h is None:
                return
            hosts = {n: o for n, o in self.hosts.items() if n != name}
            with self._wan_lock:
                self._plan = self._make_wan_plan(list(hosts.values()), forget=(name,))
                self.hosts = hosts
                self.plan_gen += 1
            h.prepared = False
            h.link.close()
            self.transport.remove(name)
            self.prepare_errors.pop(name, None)
            self.wan_states.pop(name, None)
            self.health.forget(name)
            self._strike_touched(name)
        logger.info("ssh world: host %s of site %s removed; updating the other hosts", h.config.endpoint, h.site)
        self._converge_all()

    def _strike_touched(self, name: str) -> None:
        """A host that is gone holds nothing: struck from every OverCloud's record (a record left
        empty goes; the OverCloud's overlay lease stays for its own release)."""
        from overcloud.files import write_atomic

        with self._touch_lock:
            for oc, hosts in self.touched_hosts().items():
                if name in hosts:
                    left = hosts - {name}
                    if left:
                        write_atomic(self._touched_path(oc), json.dumps(sorted(left)))
                    else:
                        self._touched_path(oc).unlink(missing_ok=True)

    def wait_ssh(self, name: str, timeout: float) -> None:
        """Connect to a host that has just booted, retrying until its sshd answers (host key
        pinned as always); UnderCloudError naming the host and the last error after ``timeout``.
        A host key other than the pinned one is refused at once: that is another machine."""
        from overcloud.underclouds.ssh.transport import SSHError, SSHHostKeyError

        h = self.hosts.get(name)
        if h is None:
            raise UnderCloudError(f"no ssh host {name!r}")
        deadline = time.monotonic() + timeout
        pause, tries, last = 0.25, 0, None
        while True:
            tries += 1
            try:
                h.ssh.connect()  # bounded by the host's connect_timeout (the last try may end past timeout)
                logger.info("ssh host %s answered after %d attempt(s)", h.config.endpoint, tries)
                return
            except SSHHostKeyError:
                raise
            except SSHError as exc:
                last = exc
            left = deadline - time.monotonic()
            if left <= 0:
                raise UnderCloudError(f"ssh host {h.config.endpoint} did not answer within {timeout:g} s "
                                      f"({tries} attempts); last error: {last}", site=h.site) from last
            time.sleep(min(pause, left))
            pause = min(pause * 2, 2.0)

    def converge_host(self, h: RemoteHost) -> None:
        """Bring a prepared host to the world as it is now: its WireGuard peers and routes
        (``wan.up`` reconciles: peers added and removed by ``wg syncconf``, routes of ours the
        plan no longer wants deleted) and its host guard's peer box subnets (``ensure-host``
        rebuilds its chain in one nft transaction). The caller holds the host's preparation lock."""
        from overcloud.underclouds.ssh import wan

        gen, plan = self.plan_snapshot()
        t0 = time.monotonic()
        try:
            state = wan.up(plan, h.name, h.run, self._unseal)
            h.boxctl("ensure-host", peer_cidrs=peer_cidrs(plan, h.name))
        except Exception as exc:
            raise UnderCloudError(f"updating ssh host {h.config.endpoint} with the hosts that came or went "
                                  f"failed: {exc}", site=h.site) from exc
        h.vxlan_mtu = state.vxlan_mtu
        self.wan_states[h.name] = state
        h.plan_gen = gen
        logger.info("ssh host %s now knows %d other host(s) (plan %d) in %.2f s", h.name, len(plan.hosts) - 1, gen,
                    time.monotonic() - t0)

    def settle(self, h: RemoteHost) -> None:
        """Bring ``h`` up to date if it is prepared and older than the plan, unless someone holds
        its preparation lock: every holder calls this after releasing it, so the last change of
        the world is always applied by someone. A failure is logged: the host's next need (its
        ensure_prepared) tries again and raises it."""
        while h.prepared and h.plan_gen != self.plan_gen and h.name in self.hosts:
            if not h._prep_lock.acquire(blocking=False):
                return
            try:
                if h.prepared and h.plan_gen != self.plan_gen:
                    self.converge_host(h)
            except Exception as exc:  # noqa: BLE001 - said in the log; retried at the next need
                logger.warning("%s (tried again at its next use)", exc)
                return
            finally:
                h._prep_lock.release()

    def _converge_all(self, exclude: str | None = None, wait: float | None = None) -> None:
        """Every prepared host brought up to date, in parallel (see :meth:`settle`), waiting at
        most ``wait`` s: a host that does not answer costs its connect timeout, which add_host
        and remove_host do not pay; the update goes on in the background (a host's next need
        waits for it on the host's preparation lock, so nothing uses a host half updated)."""
        todo = [h for h in self.hosts.values() if h.name != exclude and h.prepared]
        if not todo:
            return
        t = threading.Thread(target=_parallel, args=(self.settle, todo), name="ssh-uc-converge", daemon=True)
        t.start()
        t.join(CONVERGE_WAIT if wait is None else wait)
        if t.is_alive():
            logger.info("ssh world: still updating %s in the background",
                        ", ".join(h.name for h in todo if h.plan_gen != self.plan_gen) or "hosts")

    # -- inventory and health (GET /underclouds, the OverClouds' health; see health.py) -------
    def describe_hosts(self, site: str, *, max_age: float = 5.0, wait: float = 2.0) -> list[dict[str, Any]]:
        """The site's hosts with what they lend, what this Tower's boxes use there and their
        health, from probes at most ``max_age`` s old (waiting at most ``wait`` s for them)."""
        from overcloud.underclouds.ssh.health import describe_host

        names = [h.name for h in self.site_hosts(site)]
        probes = self.health.refresh(names, max_age=max_age, wait=wait)
        return [describe_host(h, probes.get(h.name), h.prepared,
                              self.prepare_errors.get(h.name)) for h in self.site_hosts(site)]

    def underlay_problems(self, boxes: list[Box]) -> dict[str, str]:
        """What the hosts of these boxes (one OverCloud's) lack, from the probe cache: a host
        unreachable; across sites, its WireGuard down or a peer among them not handshaking."""
        mine = [b for b in boxes if b.site in self.site_names]
        hosts = set()
        for b in mine:
            try:
                hosts.add(self.host_of(b).name)
            except UnderCloudError:
                continue
        return self.health.problems(hosts, spans_sites=len({b.site for b in mine}) > 1)


@dataclasses.dataclass(frozen=True)
class _Planned:
    """A host as the WAN plan needs it, before it is one of the world's (add_host checks it)."""

    name: str
    site: str
    config: SSHHostConfig


def peer_cidrs(plan: Any, name: str) -> list[str]:
    """The box subnets host ``name``'s guard lets through: every other host's of the plan."""
    return [o.box_cidr for o in plan.hosts if o.name != name]


def place(specs: list[BoxSpec], hosts: list[RemoteHost], inventory: dict[str, list[dict[str, Any]]],
          unavailable: dict[str, str] | None = None) -> dict[str, list[BoxSpec]]:
    """Which host each spec goes to: where its box exists already, else the host with the most
    free CPUs (then memory) that fits it. ``inventory``: each host's box leases (with flavor);
    ``unavailable``: hosts left out (not answering or not prepared) and why, named when a box
    fits nowhere. Raises UnderCloudError when a box fits nowhere."""
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
            room = ", ".join(f"{n}: {c:g} CPUs {m} MiB" for n, (c, m) in sorted(free.items())) or "none"
            down = "; ".join(why for _, why in sorted((unavailable or {}).items()))  # each names its host
            raise UnderCloudError(f"no host of the site has room for box {spec.name} ({spec.flavor.name}: "
                                  f"{spec.flavor.cpus:g} CPUs, {spec.flavor.memory_mb} MiB); free: {room}"
                                  + (f"; unavailable: {down}" if down else ""),
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
        """Each host's boxes of this Tower; raises UnderCloudError naming a host that does not answer."""
        out, down = self.inventory_of_healthy()
        if down:
            raise UnderCloudError(f"site {self.name}: " + "; ".join(down.values()), site=self.name)
        return out

    def inventory_of_healthy(self) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str]]:
        """Each host's boxes of this Tower, from the hosts that are prepared and answer (each
        prepared first, in parallel), and the others with why (their reason names them)."""
        def ask(h: RemoteHost) -> list[dict[str, Any]]:
            h.ensure_prepared()
            return h.boxctl("boxes")

        out, down = {}, {}
        for h, boxes, err in _parallel(ask, self.hosts):
            if err is None:
                out[h.name] = boxes
            else:
                text = str(err)
                down[h.name] = text if h.name in text else f"{h.config.endpoint}: {text}"
        return out, down

    def acquire(self, specs: list[BoxSpec]) -> list[Box]:
        if not specs:
            return []
        ids = {s.overcloud_id for s in specs}
        oc = next(iter(ids)) if len(ids) == 1 else None
        wrong = [s.name for s in specs if s.site != self.name]
        if wrong:
            raise UnderCloudError(f"boxes {wrong} are not for site {self.name}", overcloud_id=oc, site=self.name)
        inventory, down = self.inventory_of_healthy()
        # a host that does not answer is left out of placement, unless this OverCloud may have
        # boxes there already (an acquire run again): placing them elsewhere would make two
        doubt = {n: why for n, why in down.items() if any(n in self.world.touched(i) for i in ids)}
        if doubt:
            raise UnderCloudError(f"acquiring on site {self.name}: "
                                  + "; ".join(f"{why} (boxes of this OverCloud may be there already)"
                                              for why in doubt.values()), overcloud_id=oc, site=self.name)
        if down and len(down) == len(self.hosts):
            raise UnderCloudError(f"no host of site {self.name} can take boxes now: " + "; ".join(down.values()),
                                  overcloud_id=oc, site=self.name)
        if down:
            logger.warning("site %s: placing boxes without %s", self.name, "; ".join(down.values()))
        existing = {b["handle"] for boxes in inventory.values() for b in boxes}
        placed = place(specs, [h for h in self.hosts if h.name not in down], inventory, down)
        hosts = {h.name: h for h in self.hosts}
        for i in ids:  # before any make-box: a revert and list_tagged must reach these hosts
            self.world.touch(i, sorted(placed))

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
        # make-box undid its own; one whose connection was lost may not have: it stays in the
        # OverCloud's record, so the revert's list_tagged and sweep must reach it)
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
        by_host: dict[str, list[Box]] = {}
        for b in mine:
            by_host.setdefault(self.world.host_of(b).name, []).append(b)

        def destroy(n: str) -> Any:  # each host on its own: one that does not answer stops none of the others
            self.world.hosts[n].ensure_prepared()
            return self.world.hosts[n].agent("destroy-box", timeout=180, boxes=[b.to_dict() for b in by_host[n]])

        results = _parallel(destroy, sorted(by_host))
        errors = [(n, e) for n, _, e in results if e is not None]
        if errors:
            n, cause = errors[0]
            raise UnderCloudError(f"releasing boxes on {n} (site {self.name}) failed: {cause}",
                                  overcloud_id=mine[0].overcloud_id, site=self.name) from cause

    def quota(self) -> Quota:
        """Boxes this Tower has on the site's hosts (their lease files, one plain command per
        host, no preparation: a create's validate asks before the hosts need to be ready). A
        host that does not answer counts none (logged): placement leaves it out anyway."""
        def count(h: RemoteHost) -> int:
            r = h.run(["sh", "-c", 'ls -1 "$1" 2>/dev/null | grep -c "\\.json$" || true', "sh",
                       f"{h.state_dir}/leases"], timeout=30)
            return int(r.stdout.decode().strip() or 0) if r.returncode == 0 else 0

        results = _parallel(count, self.hosts)
        for h, _, e in results:
            if e is not None:
                logger.warning("site %s: counting boxes on %s failed (counted as none): %s", self.name,
                               h.config.endpoint, e)
        return Quota(max_boxes=self.world.max_boxes, used_boxes=sum(n for _, n, e in results if e is None))

    def describe(self, *, max_age: float = 5.0, wait: float = 2.0) -> dict[str, Any]:
        hosts = self.world.describe_hosts(self.name, max_age=max_age, wait=wait)
        problems = [f"{h['name']}: {p}" for h in hosts for p in h["health"]["problems"]]
        return {"name": self.name, "kind": self.kind, "labels": dict(self.config.labels), "hosts": hosts,
                "healthy": not problems, "problems": problems}

    def underlay_problems(self, boxes: list[Box]) -> dict[str, str]:
        return self.world.underlay_problems(boxes)


def clear_hosts_after(sites: list[SSHSiteConfig], state_dir: Path) -> list[TaggedResource]:
    """After the Tower of ``state_dir`` has stopped: sweep whatever it left on its ssh hosts,
    then take down its box bridges, host guards and WAN there (the bundle and artifact caches
    stay). Returns what was left behind and swept: a test or a benchmark that expected nothing
    fails on it, naming it. Uses the Tower's own identity and sealed keys from ``state_dir``."""
    from overcloud.config import tower_identity
    from overcloud.identity.secrets import SecretBox, load_key

    box = SecretBox(load_key(state_dir))
    world = SSHUnderCloud(sites, state_dir=state_dir / "ssh", tower_id=tower_identity(state_dir),
                          seal=box.seal, unseal=box.open, bundle_cache=state_dir / "host-bundle")
    try:
        left = world.list_tagged()
        if left:
            world.sweep({r.overcloud_id for r in left})
        world.teardown()
        return left
    finally:
        world.close()
