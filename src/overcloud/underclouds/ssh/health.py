"""Health and inventory of the ssh hosts: one cheap probe per host, cached with its age.

A probe is ONE plain shell command over the host's kept SSH connection (no Python start on the
host, no bundle needed): this Tower's box leases there (what its boxes use) and, when the host
has peers in another site, ``wg show`` of its WireGuard interface (:func:`wan.parse_status`).
It runs with a short timeout (:data:`PROBE_TIMEOUT`, connecting included), in a thread of its
own, at most one in flight per host: ``GET /underclouds`` and the Tower's health watch read the
cache, start a refresh of what is older than they accept and wait for it a bounded time, never
longer. A host that does not answer is therefore *unreachable, with the reason* after at most
that timeout, and never blocks the API or the watch.

What the probe finds is also what turns an OverCloud DEGRADED (:meth:`HostHealth.problems`):
one of its hosts unreachable; when it spans ssh sites, a host's WireGuard interface down or a
peer among its hosts not handshaking. A dead wireguard-go is started again (``wan.up``, which
reconciles) when a second probe in a row still finds the interface down, so the OverCloud is
DEGRADED for at least one probe interval and READY again once the WAN is back.

Nothing here returns a secret: leases carry no key, and WAN status is public keys, handshake
times and byte counts (``wg show latest-handshakes|transfer|endpoints``, never ``dump``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from overcloud.underclouds.ssh.driver import RemoteHost, SSHUnderCloud
    from overcloud.underclouds.ssh.wan import WanStatus

logger = logging.getLogger(__name__)

PROBE_TIMEOUT = 5.0  # seconds for one probe, connecting included
#: a live peer sends at least a keepalive every KEEPALIVE_S (25 s); nothing received from it for
#: this long, across probes, means the path is gone (long before the 185 s handshake rule says so)
RX_SILENT_S = 60.0
PROBE_SEPARATOR = "@@@@ overcloud-probe"

# $1: the Tower's state dir on the host; $2: the WireGuard interface, empty when the host has no
# peer in another site. Exit 3: `wg show` failed (the interface is not up).
_PROBE_SCRIPT = (
    'date +%s; for f in "$1"/leases/*.json; do [ -f "$f" ] && { tr -d "\\n" < "$f"; echo; }; done; '
    f'echo "{PROBE_SEPARATOR}"; [ -n "$2" ] || exit 0; '
    'date +%s; wg show "$2" latest-handshakes || exit 3; echo @@; '
    'wg show "$2" transfer || exit 3; echo @@; wg show "$2" endpoints || exit 3'
)


@dataclasses.dataclass
class Probe:
    """What one probe of one host found."""

    host: str
    at: float  # time.monotonic() when it ended
    duration_s: float
    reachable: bool
    error: str | None = None  # why it is not reachable, or why the WAN could not be read
    boxes: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # this Tower's box leases
    wan: "WanStatus | None" = None  # None: no peer in another site (or not reachable)
    wan_down_count: int = 0  # probes in a row that found the WireGuard interface down
    repaired: str | None = None  # what the last repair of the WAN did (or why it failed)
    prepared: bool = False  # the host was prepared when probed (else its WAN was not read)

    def age(self, now: float | None = None) -> float:
        return max(0.0, (time.monotonic() if now is None else now) - self.at)


def parse_probe(text: str) -> tuple[list[dict[str, Any]], str | None]:
    """(box leases, the ``wg show`` part or None) of a probe's output."""
    head, sep, wan_text = text.partition(PROBE_SEPARATOR + "\n")
    boxes = []
    for line in head.splitlines()[1:]:
        try:
            lease = json.loads(line)
        except ValueError:
            continue  # a lease being rewritten: counted again at the next probe
        if isinstance(lease, dict):
            boxes.append({k: lease.get(k) for k in ("handle", "overcloud_id", "name", "site", "flavor", "address")})
    return boxes, (wan_text if sep and wan_text.strip() else None)


class HostHealth:
    """The probe cache of every host of one :class:`SSHUnderCloud` (thread-safe)."""

    def __init__(self, world: "SSHUnderCloud", timeout: float = PROBE_TIMEOUT):
        self.world = world
        self.timeout = timeout
        self._lock = threading.Lock()
        self._probes: dict[str, Probe] = {}
        self._inflight: dict[str, threading.Event] = {}
        self._rx: dict[tuple[str, str], tuple[int, float]] = {}  # (host, peer) -> (rx bytes, when it last grew)

    # -- probing ----------------------------------------------------------------------------
    def probe(self, h: "RemoteHost") -> Probe:
        """Probe one host now (blocks up to ``timeout``; never raises)."""
        from overcloud.underclouds.ssh import wan

        plan, iface = None, ""
        prepared = bool(h.prepared)  # read once: what the probe reads and what it records agree
        if prepared:  # before, its WAN is not up (and the plan's keys may not be made yet)
            try:
                plan = self.world.wan_plan()
                iface = plan.host(h.name).interface if plan.cross_site_peers(h.name) else ""
            except Exception as exc:  # noqa: BLE001 - no plan: probe reachability and boxes only
                logger.warning("probing ssh host %s without its WAN (no plan: %s)", h.name, exc.__class__.__name__)
        t0 = time.monotonic()
        try:
            r = h.ssh.run(["sh", "-c", _PROBE_SCRIPT, "sh", h.state_dir, iface], check=False,
                          timeout=self.timeout, max_output=4 << 20)
        except Exception as exc:  # noqa: BLE001 - SSHError and friends name the host, never a secret
            return Probe(h.name, time.monotonic(), time.monotonic() - t0, False, error=_reason(exc), prepared=prepared)
        end = time.monotonic()
        text = r.stdout.decode("utf-8", "replace")
        if r.returncode not in (0, 3) or PROBE_SEPARATOR not in text:
            err = r.stderr.decode("utf-8", "replace").strip()[-300:]
            return Probe(h.name, end, end - t0, True, error=f"probe exited {r.returncode}" + (f": {err}" if err else ""),
                         prepared=prepared)
        boxes, wan_text = parse_probe(text)
        status = None
        if iface and plan is not None:
            if r.returncode == 3:
                err = r.stderr.decode("utf-8", "replace").strip()[-200:]
                status = wan.WanStatus(h.name, False, {}, [f"WireGuard interface {iface} is not up"
                                                           + (f" ({err})" if err else "")])
            else:
                try:
                    status = wan.parse_status(plan, h.name, wan_text or "")
                except (ValueError, IndexError) as exc:
                    status = wan.WanStatus(h.name, False, {}, [f"cannot read WireGuard status: {exc}"])
        return Probe(h.name, end, end - t0, True, boxes=boxes, wan=status, prepared=prepared)

    def _probe_and_store(self, h: "RemoteHost", done: threading.Event) -> None:
        try:
            p = self.probe(h)
            with self._lock:
                before = self._probes.get(h.name)
            self.note_rx(p)
            down = p.wan is not None and not p.wan.interface_up
            p.wan_down_count = (before.wan_down_count + 1) if (down and before is not None) else int(down)
            if down and p.wan_down_count >= 2:
                p.repaired = self._repair_wan(h)
                if p.repaired == "restarted":
                    p = dataclasses.replace(self.probe(h), repaired="restarted")
            with self._lock:
                if self.world.hosts.get(h.name) is h:  # not removed (or replaced) meanwhile
                    self._probes[h.name] = p
        except Exception:  # noqa: BLE001 - a probe thread never dies silently
            logger.exception("probing ssh host %s failed", h.name)
            return
        finally:
            with self._lock:
                self._inflight.pop(h.name, None)
            done.set()
        # a prepared host that missed an update of the world (hosts came or went while it did not
        # answer) and answers now: brought up to date here, after the waiters have their probe
        if p.reachable and h.prepared and h.plan_gen != self.world.plan_gen:
            try:
                self.world.settle(h)
            except Exception:  # noqa: BLE001 - settle logs its own failures; never kill the thread
                logger.exception("updating ssh host %s after its probe failed", h.name)

    def _repair_wan(self, h: "RemoteHost") -> str:
        """``wan.up`` on a prepared host whose WireGuard interface is down (wireguard-go died):
        it reconciles, so only what is missing is made. Skipped while the host is being
        prepared (it holds the host's preparation lock)."""
        from overcloud.underclouds.ssh import wan

        world = self.world
        if not h.prepared:
            return "not repaired: the host is not prepared"
        lock = getattr(h, "_prep_lock", None) or threading.Lock()  # the host's preparation lock
        if not lock.acquire(blocking=False):
            return "not repaired: the host is being prepared"
        try:
            state = wan.up(world.wan_plan(), h.name, h.run, world._unseal)
            world.wan_states[h.name] = state
            h.vxlan_mtu = state.vxlan_mtu
            logger.warning("ssh host %s: its WireGuard interface was down; started it again", h.config.endpoint)
            return "restarted"
        except Exception as exc:  # noqa: BLE001 - said in the status; tried again at the next probe
            logger.error("ssh host %s: restarting its WireGuard interface failed: %s", h.config.endpoint,
                         exc.__class__.__name__)
            return f"restart failed: {_reason(exc)}"
        finally:
            lock.release()
            world.settle(h)  # hosts that came or went while the lock was held

    def note_rx(self, p: Probe) -> None:
        """Add a problem to ``p.wan`` for each peer from which nothing was received for
        :data:`RX_SILENT_S` across probes (bytes received did not grow; a restarted interface
        starts counting again)."""
        if p.wan is None or not p.wan.interface_up:
            return
        with self._lock:
            for name, ps in p.wan.peers.items():
                key = (p.host, name)
                before = self._rx.get(key)
                if before is None or ps.rx_bytes != before[0]:
                    self._rx[key] = (ps.rx_bytes, p.at)
                    continue
                silent = p.at - before[1]
                if silent >= RX_SILENT_S and ps.fresh:  # a stale handshake is said already
                    p.wan.problems.append(f"peer {name} ({ps.endpoint or 'no endpoint'}): nothing received "
                                          f"for over {RX_SILENT_S:g} s")

    def refresh(self, hosts: list[str] | None = None, *, max_age: float = 5.0, wait: float = 2.0) -> dict[str, Probe]:
        """Start a probe of each host (all by default) whose last one is older than ``max_age``
        and none is in flight; wait at most ``wait`` s for those in flight; return the cache."""
        world_hosts = self.world.hosts  # one view: hosts may come and go meanwhile
        names = list(world_hosts) if hosts is None else [n for n in hosts if n in world_hosts]
        now = time.monotonic()
        waits = []
        with self._lock:
            for n in names:
                if n in self._inflight:
                    waits.append(self._inflight[n])
                    continue
                p = self._probes.get(n)
                # a probe from before the host was prepared did not read its WAN: stale
                if p is None or p.age(now) >= max_age or p.prepared != bool(world_hosts[n].prepared):
                    done = self._inflight[n] = threading.Event()
                    waits.append(done)
                    threading.Thread(target=self._probe_and_store, args=(world_hosts[n], done),
                                     name=f"ssh-probe-{n}", daemon=True).start()
        deadline = time.monotonic() + wait
        for ev in waits:
            ev.wait(max(0.0, deadline - time.monotonic()))
        return self.cached()

    def forget(self, name: str) -> None:
        """A host gone from the world (or replaced): its probe and receive counters dropped."""
        with self._lock:
            self._probes.pop(name, None)
            for key in [k for k in self._rx if name in k]:
                del self._rx[key]

    def cached(self) -> dict[str, Probe]:
        with self._lock:
            return dict(self._probes)

    def in_flight(self, name: str) -> bool:
        with self._lock:
            return name in self._inflight

    # -- what an OverCloud's health adds ------------------------------------------------------
    def problems(self, host_names: set[str], spans_sites: bool) -> dict[str, str]:
        """The underlay's problems for an OverCloud on these hosts, from the cache: a host
        unreachable; across sites, its WireGuard interface down or a peer among these hosts
        not handshaking. Keys name the host (``host och-b1``)."""
        probes = self.cached()
        out: dict[str, str] = {}
        for n in sorted(host_names):
            p = probes.get(n)
            if p is None:
                continue  # not probed yet: nothing known, nothing claimed
            if not p.reachable:
                out[f"host {n}"] = f"unreachable: {p.error}"
            elif spans_sites and p.wan is not None:
                if not p.wan.interface_up:
                    out[f"host {n}"] = "; ".join(p.wan.problems) or "WireGuard interface is not up"
                    continue
                mine = [msg for msg in p.wan.problems
                        if any(msg.startswith(f"peer {o} ") for o in host_names if o != n)]
                if mine:
                    out[f"host {n}"] = "WireGuard: " + "; ".join(mine)
        return out


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}"[:400]


def describe_host(h: "RemoteHost", probe: Probe | None, prepared: bool, prepare_error: str | None,
                  now: float | None = None) -> dict[str, Any]:
    """One host of ``GET /underclouds``: where it is, what it lends, what this Tower's boxes use
    there, and its health (from the probe cache)."""
    c = h.config
    lent = {"cpus": c.cpus, "memory_mb": c.memory_mb}
    d: dict[str, Any] = {
        "name": h.name, "address": c.address, "port": c.port, "lan_address": c.lan_address,
        "box_cidr": c.box_cidr, "labels": dict(c.labels), "lent": lent, "used": None, "free": None,
    }
    problems: list[str] = []
    health: dict[str, Any] = {"reachable": None, "prepared": prepared, "prepare_error": prepare_error,
                              "checked_age_s": None, "probe_s": None, "error": None, "wan": None}
    if prepare_error:
        problems.append(f"preparation failed: {prepare_error}")
    elif not prepared:
        problems.append("not prepared yet")
    if probe is None:
        problems.append("not probed yet")
    else:
        health.update(reachable=probe.reachable, checked_age_s=round(probe.age(now), 1),
                      probe_s=round(probe.duration_s, 3), error=probe.error)
        if probe.reachable and prepared and not probe.prepared and not prepare_error:
            # probed before its preparation ended, so without its WAN: the next probe says
            problems.append("not probed since its preparation yet")
        if not probe.reachable:
            problems.append(f"unreachable: {probe.error}")
        else:
            cpus = sum(float((b.get("flavor") or {}).get("cpus", 0)) for b in probe.boxes)
            mem = sum(int((b.get("flavor") or {}).get("memory_mb", 0)) for b in probe.boxes)
            d["used"] = {"cpus": round(cpus, 3), "memory_mb": mem, "boxes": len(probe.boxes)}
            d["free"] = {"cpus": round(c.cpus - cpus, 3), "memory_mb": c.memory_mb - mem}
            if probe.error:
                problems.append(probe.error)
        if probe.wan is not None:
            health["wan"] = {
                "interface_up": probe.wan.interface_up,
                "peers": [{"host": ps.host, "endpoint": ps.endpoint, "latest_handshake_age_s": ps.handshake_age_s,
                           "fresh": ps.fresh, "rx_bytes": ps.rx_bytes, "tx_bytes": ps.tx_bytes}
                          for ps in probe.wan.peers.values()],
                "problems": list(probe.wan.problems),
            }
            if probe.repaired:
                health["wan"]["repaired"] = probe.repaired
            problems += [f"WireGuard: {m}" for m in probe.wan.problems]
    health["problems"] = problems
    health["healthy"] = not problems and bool(prepared)
    d["health"] = health
    return d
