"""The service controller: composes patterns onto READY OverClouds and keeps them running.

``compose`` checks everything that can be checked before anything starts (the pattern, the
names already in use, the images, the placement) and records each Deployment with its
replicas PENDING on their boxes. From then on one controller thread, every ``TICK`` seconds,
drives every replica towards READY and keeps it there:

* a PENDING replica starts once every Service its Deployment names in its environment has a
  ready endpoint (so the broker starts before its clients, in waves);
* a started replica is READY when its readiness probe passes (or, without one, when
  supervisord holds it RUNNING);
* a liveness probe failing ``failureThreshold`` times restarts it; an exit is restarted by
  supervisord at once, and a replica that supervisord gave up on (FATAL) is started again
  after a back-off (2, 4, ... 30 s); every restart is counted;
* a box whose supervisord stops answering for ``BOX_GRACE`` seconds is out of service: its
  replicas' processes are killed by PID and the replicas placed again on other boxes;
* every Service has a virtual IP; in every box, ``/etc/hosts`` names it and an nft table
  sends it to ready replicas (round-robin, the box's own site first), rewritten whenever
  endpoints change (see stitching.py).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import json
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from overcloud import states
from overcloud.composition import images as img
from overcloud.composition import placement as pl
from overcloud.composition import probes, rollout, stitching, views
from overcloud.composition import runtime as rt
from overcloud.composition.pattern import (NODE_PORTS, Deployment, Pattern, PatternError, Probe, deployment_of,
                                          generation_of, templates_of)
from overcloud.southbound import Southbound, box_obj
from overcloud.underclouds.base import UnderCloudError


logger = logging.getLogger(__name__)

TICK = 0.25
BOX_GRACE = 5.0
MAX_BACKOFF = 30.0
PROBE_WAIT = 0.05  # a probe's answer is awaited this long in the tick; a slower one is collected later
PROBE_THREADS = 8
PUBLISHED_INFO = stitching.PUBLISHED_INFO


class ServiceConflict(RuntimeError):
    pass


class ServiceNotFound(LookupError):
    def __init__(self, overcloud_id: str, name: str):
        super().__init__(f"no service {name!r} on OverCloud {overcloud_id}; `GET /overclouds/{overcloud_id}/services` lists them")


class NotComposable(RuntimeError):
    """The OverCloud cannot take services now (not READY)."""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def _pending(a: pl.Assignment, generation: int = 1) -> dict[str, Any]:
    """A new replica's record: placed, not started, of template ``generation``."""
    return {"name": f"{a.deployment}-{a.index}", "index": a.index, "box": a.box, "site": a.site, "state": "PENDING",
            "ready": False, "restarts": 0, "pids": {}, "message": "waiting to start", "generation": generation}


def _template(row, r: dict[str, Any]) -> Deployment:
    """The Deployment (pod template) replica ``r`` runs: during a rolling update, old replicas
    run their own generation's."""
    return deployment_of(row.spec, generation_of(r))[0]


def _shown(r: dict[str, Any]) -> tuple:
    """What of a replica's record the API shows changing (to tell whether a tick changed it)."""
    return r["state"], r["ready"], r["restarts"], r.get("message")


@dataclasses.dataclass
class _Watch:
    """What the controller remembers of one replica between ticks (not stored)."""

    started: float = 0.0
    ready_ok: int = 0
    ready_fail: int = 0
    live_fail: int = 0
    next_probe: float = 0.0
    next_live: float = 0.0
    retry_at: float = 0.0
    backoff: float = 2.0
    pending: dict[str, concurrent.futures.Future] = dataclasses.field(default_factory=dict)  # probes running

    def restart(self, now: float) -> None:
        """Its processes started (again): probes count from here; answers of earlier ones are void."""
        self.started, self.ready_ok, self.ready_fail, self.live_fail = now, 0, 0, 0
        self.pending.clear()


class ServiceController:
    """Reaches boxes only through ``sb`` (their BoxSessions); ``closing`` ends its loop."""

    def __init__(self, sb: Southbound, closing: threading.Event):
        self.sb = sb
        self._closing = closing
        self.repo = sb.records
        self.images = img.Images(sb.settings.state_dir)
        self.root = Path(sb.settings.state_dir) / "services"
        self._lock = threading.RLock()
        self._watch: dict[tuple[str, str], _Watch] = {}
        self._down_since: dict[tuple[str, str], float] = {}  # (overcloud, box) -> first silent tick
        self._out: dict[str, set[str]] = {}  # overcloud -> boxes out of service
        self._stitched: dict[str, tuple] = {}  # box handle -> (hosts, nft table, VIP names) last written
        self._scraped: dict[str, list] = {}  # overcloud -> workload targets last given to Prometheus
        self._confs: dict[str, tuple[str, str, bool]] = {}  # box dir -> what podman needs of its host
        self._packages_ok: set[tuple[str, str]] = set()  # (box dir, image) whose packages its host has
        self._retry_at: dict[tuple[str, str], float] = {}  # (overcloud, service) -> next rollout placement try
        self._seen: set[str] = set()  # OverClouds stitched since this Tower started
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        # probes run here, so that one hanging for its timeoutSeconds does not hold up the tick
        self._probes = probes.Pool(PROBE_THREADS)

    # -- lifecycle --------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="service-controller", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._closing.wait(TICK):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the controller never stops
                logger.exception("service controller tick failed")

    def close(self, timeout: float = 5.0) -> None:
        """Wait for the loop to end (the Tower sets its closing event first): no tick is left
        half-done writing hosts files or records."""
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # -- compose ------------------------------------------------------------------
    def site_labels(self) -> dict[str, dict[str, str]]:
        return {s.name: dict(s.labels) for s in self.sb.settings.sites}

    def _nodes(self, oc_row, exclude: str | None = None) -> list[pl.Node]:
        """Cluster boxes with what is used on them: requests of placed replicas, and every TCP
        port listening in the box now (OverCloud's own programs among them)."""
        listening = {}
        for b in oc_row.boxes:
            if b.role == "cluster" and b.name not in self._out.get(oc_row.id, set()):
                try:
                    listening[b.name] = probes.listening_ports(self.sb.session(b))
                except Exception:  # noqa: BLE001 - a box that does not answer lists no ports
                    listening[b.name] = set()
        nodes = pl.nodes_from_boxes(oc_row.boxes, self.site_labels(), self._out.get(oc_row.id, set()), listening)
        by_name = {n.name: n for n in nodes}
        for row in self.repo.services(oc_row.id):
            for r in row.replicas:
                n = by_name.get(r["box"])
                if n is None:
                    continue
                d = _template(row, r)
                if row.name == exclude:
                    n.ports -= pl.ports_of(d)  # its own replicas' ports are free for it again
                    continue
                n.used_cpu += d.cpu_request
                n.used_memory += d.memory_request
                n.ports |= pl.ports_of(d)
        return nodes

    def _ready_overcloud(self, overcloud_id: str):
        oc = self.repo.get(overcloud_id)
        if oc.status not in states.UP:
            raise NotComposable(f"OverCloud {overcloud_id} is {oc.status}; services are composed onto a READY OverCloud")
        return oc

    def compose(self, overcloud_id: str, pattern: Pattern, *, runtime: str | None = None, dry_run: bool = False) -> dict[str, Any]:
        """Create every Deployment of the pattern; one already composed is a conflict."""
        return self._apply(overcloud_id, pattern, runtime=runtime, dry_run=dry_run, update=False)

    def apply(self, overcloud_id: str, pattern: Pattern, *, runtime: str | None = None, dry_run: bool = False) -> dict[str, Any]:
        """``kubectl apply``: create the Deployments that are new, roll out the ones whose pod
        template changed (one new replica ready before an old one stops), scale the ones whose
        replica count changed, update the Services of the rest. Deployments composed earlier
        and not in the pattern are left alone. Everything is checked before anything changes."""
        return self._apply(overcloud_id, pattern, runtime=runtime, dry_run=dry_run, update=True)

    def _apply(self, overcloud_id: str, pattern: Pattern, *, runtime: str | None, dry_run: bool,
               update: bool) -> dict[str, Any]:
        oc = self._ready_overcloud(overcloud_id)
        try:
            runtime = rt.choose(runtime)
        except RuntimeError as exc:
            raise PatternError("request", "runtime", str(exc)) from None
        with self._lock:
            existing = {r.name: r for r in self.repo.services(overcloud_id)}
            current = {d.name: existing[d.name] for d in pattern.deployments if d.name in existing}
            if current and not update:
                name = next(iter(current))
                raise ServiceConflict(f"Deployment/{name}: a service named {name!r} already runs on this OverCloud; "
                                      f"delete it first (DELETE /overclouds/{overcloud_id}/services/{name}), or "
                                      f"apply the pattern (PUT /overclouds/{overcloud_id}/services) to update it")
            served_elsewhere = {s["name"]: r.name for r in existing.values() if r.name not in current for s in r.spec["services"]}
            for s in pattern.services:
                if s.name in served_elsewhere:
                    raise ServiceConflict(f"Service/{s.name}: the name {s.name!r} is already served on this OverCloud "
                                          f"(by Deployment {served_elsewhere[s.name]})")
            vips = {s["name"]: s["vip"] for r in current.values() for s in r.spec["services"] if s.get("vip")}
            fresh = [sv.name for sv in pattern.services if sv.name not in vips]
            vips.update(zip(fresh, stitching.next_vips(
                [sv.get("vip") for r in existing.values() for sv in r.spec["services"]], len(fresh))))
            _node_ports(pattern, existing, current)
            specs = {d.name: {"deployment": rollout.comparable(dataclasses.asdict(d)),
                              "services": rollout.comparable([{**dataclasses.asdict(s), "vip": vips[s.name]}
                                                              for s in pattern.services_of(d)]),
                              "depends_on": pattern.depends_on(d)} for d in pattern.deployments}
            old = {name: row.spec for name, row in current.items()}
            actions = {d.name: rollout.action(old.get(d.name), specs[d.name]) for d in pattern.deployments}
            runtimes = {d.name: current[d.name].runtime if d.name in current else runtime for d in pattern.deployments}
            self._check_images([(d, runtimes[d.name]) for d in pattern.deployments if actions[d.name] in ("create", "update")])
            created = [d for d in pattern.deployments if actions[d.name] == "create"]
            nodes = self._nodes(oc)
            scaled = {d.name: self._plan_scale(oc, current[d.name], d.replicas, nodes)
                      for d in pattern.deployments if actions[d.name] == "scale" and not rollout.rolling(old[d.name])}
            plan = pl.place(dataclasses.replace(pattern, deployments=created), nodes) if created else []
            rollouts = {}
            for d in pattern.deployments:
                if actions[d.name] == "update":  # the new template must fit once the old replicas are gone
                    rollouts[d.name] = pl.place_replicas(d, self._nodes(oc, exclude=d.name), range(d.replicas))
            boxes = {b.name: b for b in oc.boxes}
            result = {
                "overcloud_ID": overcloud_id, "runtime": runtime, "dry_run": dry_run,
                "start_order": [[n for n in wave if actions[n] == "create"] for wave in pattern.start_order()],
                "placement": [{"replica": f"{a.deployment}-{a.index}", "deployment": a.deployment, "box": a.box,
                               "site": a.site, "address": boxes[a.box].overlay_address} for a in
                              sorted(plan, key=lambda a: (a.deployment, a.index))],
                "services": [{"name": s.name, "ports": [p.port for p in s.ports], "vip": vips[s.name], "type": s.type,
                              **({"node_ports": [p.node_port for p in s.ports]} if s.type == "NodePort" else {}),
                              "deployments": [d.name for d in pattern.deployments if s.selects(d)]} for s in pattern.services],
            }
            result["start_order"] = [wave for wave in result["start_order"] if wave]
            if update:
                result["actions"] = {name: {"action": a, **rollout.action_detail(a, old.get(name), specs[name], rollouts.get(name))}
                                     for name, a in actions.items()}
                result["untouched"] = sorted(set(existing) - set(actions))
            if not dry_run:
                result["pattern_id"] = self._commit(overcloud_id, pattern, runtime, created, plan, specs, actions, current,
                                                    scaled, update)
        if not dry_run:
            refs = sorted({c.image for d in pattern.deployments for c in d.containers if runtimes[d.name] == "podman"
                           and actions[d.name] in ("create", "update")})
            if refs:
                threading.Thread(target=self._publish_images, args=(refs,), name="publish-images", daemon=True).start()
        return result

    def _check_images(self, wanted: list[tuple[Deployment, str]]) -> None:
        """Every image a started replica will need is built for its runtime (Podman images lost
        from the store are restored first, their tars checked against the digests recorded at
        build); else a PatternError naming the container."""
        for runtime in {r for _, r in wanted}:
            ds = [d for d, r in wanted if r == runtime]
            used = {c.image for d in ds for c in d.containers}
            refused = self._restore_images(used) if runtime == "podman" else {}
            missing = {m.split(" ", 1)[0]: m for m in self.images.missing(used, runtime)}
            for d in ds:
                for i, c in enumerate(d.containers):
                    if c.image in refused:
                        raise PatternError(f"Deployment/{d.name}", f"spec.template.spec.containers[{i}].image",
                                           refused[c.image])
                    if runtime == "process" and c.security.capabilities_add:
                        raise PatternError(f"Deployment/{d.name}",
                                           f"spec.template.spec.containers[{i}].securityContext.capabilities.add",
                                           "the process runtime runs every workload without capabilities (in a user "
                                           "namespace that does not own the box's network); use the podman runtime")
                    if c.image in missing:
                        raise PatternError(f"Deployment/{d.name}", f"spec.template.spec.containers[{i}].image",
                                           f"image {missing[c.image]} is not built; run `overcloud images build "
                                           f"PATTERN_DIR --runtime {runtime}`")

    def _commit(self, overcloud_id: str, pattern: Pattern, runtime: str, created: list[Deployment],
                plan: list[pl.Assignment], specs: dict[str, dict[str, Any]], actions: dict[str, str],
                current: dict[str, Any], scaled: dict[str, tuple], update: bool) -> str:
        """Write what ``_apply`` decided (it checked everything first)."""
        pattern_id = uuid.uuid4().hex
        now = dt.datetime.now(dt.timezone.utc)
        rows = []
        for d in created:
            replicas = [_pending(a) for a in sorted(plan, key=lambda a: a.index) if a.deployment == d.name]
            rows.append({"overcloud_id": overcloud_id, "name": d.name, "pattern_id": pattern_id, "runtime": runtime,
                         "status": "STARTING" if replicas else "READY", "message": None, "spec": specs[d.name],
                         "replicas": replicas, "created_at": now, "updated_at": now,
                         "ready_at": None if replicas else now})
        if rows:
            self.repo.add_services(rows)
        for name, action in actions.items():
            row = current.get(name)
            if action == "update":
                self._start_rollout(overcloud_id, row, specs[name])
            elif action in ("scale", "services"):
                if name in scaled:
                    self._commit_scale(overcloud_id, row, *scaled[name])
                self.repo.update_service(overcloud_id, name, spec={**specs[name], **rollout.rollout_state(row.spec)})
        self.repo.add_event(overcloud_id, "services", {
            **({"applied": {n: a for n, a in actions.items() if a != "unchanged"}} if update else
               {"composed": [d.name for d in pattern.deployments]}),
            "pattern_id": pattern_id, "runtime": runtime})
        if update:
            self._stitch(overcloud_id)
            self._rescrape(self.repo.get(overcloud_id))
        return pattern_id

    def _start_rollout(self, overcloud_id: str, row, spec: dict[str, Any]) -> None:
        """Record the new template as the next generation; the loop replaces the replicas one by
        one (see ``_roll``). Templates of generations that still have replicas are kept."""
        new = rollout.started(row.spec, row.replicas, spec)
        self.repo.update_service(overcloud_id, row.name, spec=new, status="UPDATING", message=None)
        self.repo.add_event(overcloud_id, "service", {"name": row.name, "rollout": new["generation"]})

    def _store(self):
        from overcloud.components.construction import ARTIFACTS

        try:
            return self.sb.construction_datalake(timeout=30).client(), ARTIFACTS
        except Exception as exc:  # noqa: BLE001 - no store: images stay cached on this host only
            logger.warning("image cache: no Construction DataLake (%s)", exc)
            return None, ARTIFACTS

    def _restore_images(self, refs: set[str]) -> dict[str, str]:
        """Images this host built that Podman's store lost come back from the local tar or the
        Construction DataLake before compose checks them. Returns the refused ones (a tar that
        is not the one built), with why."""
        built = {i["image"] for i in self.images.list()}
        lost = [m.split(" ", 1)[0] for m in self.images.missing(refs & built, "podman")]
        if not lost:
            return {}
        client, bucket = self._store()
        refused = {}
        for ref in lost:
            try:
                self.images.restore(ref, client, bucket, progress=lambda m: logger.info("%s", m))
            except img.ImageError as exc:
                logger.warning("image %s: %s", ref, exc)
                refused[ref] = str(exc)
        return refused

    def _publish_images(self, refs: list[str]) -> None:
        """The images a pattern uses go into the Construction DataLake once (their cache)."""
        client, bucket = self._store()
        if client is None:
            return
        for ref in refs:
            try:
                if self.images.publish(ref, client, bucket):
                    logger.info("image %s cached in the Construction DataLake", ref)
            except Exception as exc:  # noqa: BLE001 - the cache is best effort; compose does not depend on it
                logger.warning("caching image %s: %s", ref, exc)

    def wait_ready(self, overcloud_id: str, names: list[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = [self.repo.service(overcloud_id, n) for n in names]
            if all(r is not None and r.status == "READY" for r in rows):
                with self._lock:  # the tick that made them READY has stitched (and published) them too
                    return True
            if any(r is None or r.status == "FAILED" for r in rows):
                return False
            with self._changed:
                self._changed.wait(min(0.2, max(0.0, deadline - time.monotonic())))
        return False

    # -- scale ---------------------------------------------------------------------
    def scale(self, overcloud_id: str, name: str, replicas: int) -> dict[str, Any]:
        """Set a Deployment's replica count: new replicas are placed by the same rules (refused
        with PlacementError when they do not fit; nothing changes then), surplus ones — the
        highest numbered — are stopped and removed. Hosts files follow as readiness changes.
        During a rolling update the count is recorded and the rollout reaches it."""
        oc = self._ready_overcloud(overcloud_id)
        with self._lock:
            row = self.repo.service(overcloud_id, name)
            if row is None:
                raise ServiceNotFound(overcloud_id, name)
            spec = dict(row.spec)
            spec["deployment"] = {**spec["deployment"], "replicas": replicas}
            if rollout.rolling(row.spec):
                self.repo.update_service(overcloud_id, name, spec=spec)
                self.repo.add_event(overcloud_id, "service", {"name": name, "scaled": replicas, "during": "rollout"})
                return {"name": name, "replicas": replicas, "rolling": True}
            kept, added, surplus = self._plan_scale(oc, row, replicas, self._nodes(oc))
            changed = self._commit_scale(overcloud_id, row, kept, added, surplus)
            self.repo.update_service(overcloud_id, name, spec=spec)
        return {"name": name, "replicas": replicas, "added" if added else "removed": changed}

    def _plan_scale(self, oc, row, replicas: int, nodes: list[pl.Node]) -> tuple[list, list, list]:
        """(replicas kept, new ones placed, surplus ones to stop) for ``replicas`` wanted; new
        ones are charged to ``nodes``, where its own replicas are already counted (``_nodes``).
        PlacementError when they do not fit."""
        d, _ = deployment_of(row.spec)
        current = sorted((dict(r) for r in row.replicas), key=lambda r: r["index"])
        if replicas <= len(current):
            return current[:replicas], [], current[replicas:]
        existing = [pl.Assignment(d.name, r["index"], r["box"], r["site"]) for r in current]
        start = max((r["index"] for r in current), default=-1) + 1
        d.replicas = replicas
        added = pl.place_replicas(d, nodes, range(start, start + replicas - len(current)), existing=existing)
        return current, [_pending(a, generation_of(row.spec)) for a in added], []

    def _commit_scale(self, overcloud_id: str, row, kept: list, added: list, surplus: list) -> list[str]:
        changed = self._stop_replicas(overcloud_id, row, surplus)
        for r in surplus:
            self._watch.pop((overcloud_id, r["name"]), None)
        replicas = kept + added
        self.repo.update_service(overcloud_id, row.name, replicas=replicas, status=_status(replicas, "STARTING"))
        self.repo.add_event(overcloud_id, "service", {"name": row.name, "scaled": len(replicas)})
        self._stitch(overcloud_id)
        self._rescrape(self.repo.get(overcloud_id))
        return [f"{r['name']}@{r['box']}" for r in added] or changed

    # -- remove --------------------------------------------------------------------
    def remove(self, overcloud_id: str, name: str) -> dict[str, Any]:
        with self._lock:
            row = self.repo.service(overcloud_id, name)
            if row is None:
                raise ServiceNotFound(overcloud_id, name)
            removed = self._stop_replicas(overcloud_id, row, row.replicas)
            self.repo.delete_service(overcloud_id, name)
            self._retry_at.pop((overcloud_id, name), None)
            for r in row.replicas:
                self._watch.pop((overcloud_id, r["name"]), None)
            self.repo.add_event(overcloud_id, "services", {"removed": name})
            self._stitch(overcloud_id)
            self._rescrape(self.repo.get(overcloud_id))
        return {"name": name, "removed": removed}

    def remove_all(self, overcloud_id: str) -> list[str]:
        """Every service of the OverCloud (the first step of its delete)."""
        names = []
        for row in self.repo.services(overcloud_id):
            try:
                self.remove(overcloud_id, row.name)
                names.append(row.name)
            except ServiceNotFound:
                continue
        self._out.pop(overcloud_id, None)
        return names

    def _stop_replicas(self, overcloud_id: str, row, replicas: list[dict[str, Any]]) -> list[str]:
        """Programs first (so supervisord restarts nothing), then containers (``podman rm -f -t 0``:
        a Python PID 1 ignores SIGTERM, a graceful stop would wait out podman's 10 s), then
        leftover processes by PID, logs and work dirs."""
        oc = self.repo.get(overcloud_id)
        boxes = {b.name: b for b in oc.boxes}
        removed = []
        for r in replicas:
            box = boxes.get(r["box"])
            programs = [rt.program_name(r["name"], c.name) for c in _template(row, r).containers]
            if box is not None:
                session = self.sb.session(box)
                try:
                    if session.supervisor_running():
                        session.remove_programs(programs, timeout=5.0)
                except Exception as exc:  # noqa: BLE001 - the processes are killed below anyway
                    logger.warning("removing %s from %s: %s", r["name"], box.name, exc)
                try:
                    session.forget_programs(programs)
                    self._kill_pids(session, r)
                    if row.runtime == "podman":
                        self._podman_rm(session, [rt.container_name(overcloud_id, r["name"], c.name)
                                                  for c in _template(row, r).containers])
                    session.run(["rm", "-rf", "--", str(self._workdir(session, r["name"]))], on_host=True, check=False)
                except Exception as exc:  # noqa: BLE001 - its box (or host) may be gone; its release removes the rest
                    logger.warning("cleaning %s up on %s: %s", r["name"], box.name, exc)
            removed.append(f"{r['name']}@{r['box']}")
        return removed

    def _podman_rm(self, session, names: list[str]) -> None:
        """Remove containers with the box's host's Podman."""
        if names:
            session.run(["podman", "rm", "-f", "-t", "0", "--ignore", *names], env=self._podman_env(session),
                        on_host=True, check=False, timeout=120)

    def _podman_env(self, session) -> dict[str, str]:
        """The environment of podman commands on the box's host: its own containers.conf there."""
        return {"PATH": rt.PATH, "HOME": "/root", "CONTAINERS_CONF": self._containers_conf(session)}

    def _check_packages(self, session, ref: str) -> None:
        """The process runtime runs an image's command from its box's host's /usr: the image's
        Debian packages must be installed there (checked once per box and image; a host of an
        ssh site is not the Tower's machine, where ``images build`` installed them)."""
        key = (session.box_dir, ref)
        if key in self._packages_ok:
            return
        wanted = self.images.process_packages(ref)
        if wanted:
            r = session.run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Abbrev}\n", *wanted], on_host=True,
                            check=False, timeout=30)
            ok = {line.split()[0] for line in r.stdout.decode().splitlines() if line.split()[1:2] == ["ii"]}
            missing = [p for p in wanted if p not in ok]
            if missing:
                raise RuntimeError(f"image {ref} needs Debian packages its box's host lacks: {' '.join(missing)} "
                                   f"(`apt-get install {' '.join(missing)}` there, or use the podman runtime)")
        self._packages_ok.add(key)

    def _containers_conf(self, session) -> str:
        return self._podman_host(session)[0]

    def _podman_host(self, session) -> tuple[str, str, bool]:
        """What podman launches need of the box's host, found once per box: our containers.conf
        written there, the script remounting the host's cgroup hierarchies (from its own mount
        table), and whether its /etc/subuid and /etc/subgid have ``containers`` ranges (user
        namespaces)."""
        key = session.box_dir
        if key not in self._confs:
            session.put_file("replicas/containers.conf", rt.CONTAINERS_CONF, 0o644)
            probe = session.run(["sh", "-c", 'cat /proc/self/mountinfo; echo "--subids--"; '
                                 'grep -q "^containers:" /etc/subuid && grep -q "^containers:" /etc/subgid && echo yes'],
                                on_host=True, check=False, timeout=30).stdout.decode()
            mounts, _, subids = probe.partition("--subids--")
            self._confs[key] = (str(Path(session.box_dir) / "replicas" / "containers.conf"),
                                rt.cgroup_mount_script(text=mounts), subids.strip() == "yes")
        return self._confs[key]

    @staticmethod
    def _kill_pids(session, replica: dict[str, Any]) -> None:
        """Kill the processes this replica ran (recorded by PID), on the box's host, while they
        are still the box's (a PID reused by anything else is left alone)."""
        pids = [int(pid) for pid, _ in (replica.get("pids") or {}).values() if pid]
        if pids:
            session.kill_processes(pids)

    # -- the loop ------------------------------------------------------------------
    def tick(self) -> None:
        for overcloud_id in {row.overcloud_id for row in self.repo.services()}:
            with self._lock:
                try:
                    self._tick_overcloud(overcloud_id)
                except Exception:  # noqa: BLE001 - one OverCloud's trouble does not stop the others
                    logger.exception("services of %s", overcloud_id)

    def _tick_overcloud(self, overcloud_id: str) -> None:
        oc = self.repo.get(overcloud_id)
        if oc.status not in states.UP:
            return
        rows = self.repo.services(overcloud_id)
        boxes = {b.name: b for b in oc.boxes}
        infos: dict[str, dict[str, dict[str, Any]] | None] = {}
        now = time.monotonic()
        for name in {r["box"] for row in rows for r in row.replicas}:
            box = boxes.get(name)
            try:
                procs = self.sb.session(box).process_info()
                infos[name] = {p["name"]: p for p in procs}
                self._down_since.pop((overcloud_id, name), None)
                if name in self._out.get(overcloud_id, set()):
                    self._out[overcloud_id].discard(name)
                    self.repo.add_event(overcloud_id, "services", {"box_back_in_service": name})
            except Exception:  # noqa: BLE001 - a silent supervisord
                infos[name] = None
                first = self._down_since.setdefault((overcloud_id, name), now)
                if now - first >= BOX_GRACE and name not in self._out.get(overcloud_id, set()):
                    self._out.setdefault(overcloud_id, set()).add(name)
                    self.repo.add_event(overcloud_id, "services", {"box_out_of_service": name,
                                                                   "reason": "its supervisord does not answer"})
        endpoints = stitching.services(rows, boxes)
        changed_any = overcloud_id not in self._seen  # a restarted Tower writes hosts and targets once
        self._seen.add(overcloud_id)
        to_stop: list[tuple[Any, list[dict[str, Any]]]] = []
        for row in rows:
            replicas = [dict(r) for r in row.replicas]
            templates = templates_of(row.spec, replicas)
            changed = False
            for r in replicas:
                d = templates[generation_of(r)]
                if r["box"] in self._out.get(overcloud_id, set()):
                    changed |= self._replace(oc, row, d, r, replicas)
                    continue
                info = infos.get(r["box"])
                if info is None:
                    continue
                changed |= self._drive(oc, row, d, r, info, endpoints, boxes[r["box"]])
            fields: dict[str, Any] = {}
            if row.spec.get("templates") is not None:  # a rollout: one step per tick
                step, stop, spec, message = self._roll(oc, row, replicas)
                changed |= step
                if stop:
                    to_stop.append((row, stop))
                if spec is not None:
                    fields["spec"] = spec
                if message != row.message:
                    fields["message"] = message
            status = _status(replicas, row.status, rolling=rollout.rolling(fields.get("spec", row.spec)))
            if changed or fields or status != row.status:
                fields.update(replicas=replicas, status=status)
                if status == "READY" and row.ready_at is None:
                    fields["ready_at"] = dt.datetime.now(dt.timezone.utc)
                self.repo.update_service(overcloud_id, row.name, **fields)
                if status != row.status:
                    self.repo.add_event(overcloud_id, "service", {"name": row.name, "status": status})
                changed_any = True
        if changed_any:
            self._stitch(overcloud_id)  # replicas being stopped leave the Service's endpoints first
            for row, stop in to_stop:
                self._stop_replicas(overcloud_id, row, stop)
                for r in stop:
                    self._watch.pop((overcloud_id, r["name"]), None)
            self._rescrape(oc)
            with self._changed:
                self._changed.notify_all()

    def _roll(self, oc, row, replicas: list[dict[str, Any]]) -> tuple[bool, list[dict[str, Any]], dict | None, str | None]:
        """One step of a rolling update (see rollout.step), at most one replica started or
        stopped per tick. Returns (whether ``replicas`` changed, replicas to stop, the spec to
        store when the rollout is done, the row's message)."""
        key, gen = (oc.id, row.name), generation_of(row.spec)
        d_new, _ = deployment_of(row.spec)

        def place(index: int, new: list[dict[str, Any]]) -> pl.Assignment | None:
            if time.monotonic() < self._retry_at.get(key, 0.0):
                return None
            # _nodes counts every replica with its own generation's requests and ports
            return pl.place_replicas(d_new, self._nodes(oc), [index],
                                     existing=[pl.Assignment(row.name, r["index"], r["box"], r["site"]) for r in new])[0]

        s = rollout.step(row.spec, replicas, place)
        if s.hold:
            return False, [], None, row.message
        if s.retry:  # e.g. the port of a replica stopped a moment ago is still open
            self._retry_at[key] = time.monotonic() + 1.0
        if s.done:
            self.repo.add_event(oc.id, "service", {"name": row.name, "rolled_out": gen})
            return False, [], rollout.finished(row.spec), None
        if s.stop is not None:
            replicas.remove(s.stop)
            return True, [s.stop], None, s.message
        if s.start is not None:
            replicas.append(_pending(s.start, gen))
            return True, [], None, s.message
        return False, [], None, s.message

    def _drive(self, oc, row, d: Deployment, r: dict[str, Any], info: dict[str, dict[str, Any]],
               endpoints: dict[str, list[dict[str, Any]]], box) -> bool:
        """One replica, one tick. Returns whether its record changed."""
        key = (oc.id, r["name"])
        w = self._watch.setdefault(key, _Watch())
        now = time.monotonic()
        before = _shown(r)
        programs = [rt.program_name(r["name"], c.name) for c in d.containers]
        present = [info.get(p) for p in programs]
        if r["state"] == "PENDING" or any(p is None for p in present):
            waiting = [s for s in row.spec.get("depends_on", []) if not (endpoints.get(s) or {}).get("endpoints")]
            if waiting:
                r["message"] = f"waiting for {', '.join(waiting)} to have a ready endpoint"
                return before != _shown(r)
            if r["state"] != "PENDING" and any(p is None for p in present):
                r["restarts"] += 1  # its programs vanished (the box's supervisord was restarted)
            try:
                self._launch(oc, row, d, r, endpoints, box)
            except Exception as exc:  # noqa: BLE001 - its box's host may not answer, or lack something: tried again
                logger.warning("starting %s on %s: %s", r["name"], box.name, exc)
                r.update(state="PENDING", ready=False, message=f"could not start on {box.name}: {exc}"[:600])
                return before != _shown(r)
            w.restart(now)
            r.update(state="STARTING", ready=False, message=f"started on {box.name} ({row.runtime})", started_at=_now())
            return True
        states_ = [p["statename"] for p in present]
        # PIDs are the box's host's (a remote one's too): recorded with supervisord's start time
        pids = {c.name: [p["pid"], p.get("start") if p["pid"] else None] for c, p in zip(d.containers, present)}
        old = r.get("pids") or {}
        for cname, (pid, _) in pids.items():
            was = (old.get(cname) or [0])[0]
            if pid and was and pid != was:
                r["restarts"] += 1  # supervisord started it again after an exit: not ready until probed again
                r.update(state="STARTING", ready=False, message=f"{cname} restarted after an exit")
                w.restart(now)
        r["pids"] = {k: v for k, v in pids.items() if v[0]} or old
        if any(s == "FATAL" for s in states_):
            if w.retry_at == 0.0:
                w.retry_at = now + w.backoff
                r.update(state="BACKOFF", ready=False, message=f"exited repeatedly; starting again in {w.backoff:.0f} s")
            elif now >= w.retry_at:
                session = self.sb.session(box)
                for p, s in zip(programs, states_):
                    if s == "FATAL":
                        try:
                            session.start_program(p, False)
                        except Exception:  # noqa: BLE001 - tried again after the next back-off
                            pass
                r["restarts"] += 1
                w.backoff = min(MAX_BACKOFF, w.backoff * 2)
                w.retry_at = 0.0
                w.restart(now)
            return before != _shown(r)
        if all(s in ("RUNNING", "STARTING") for s in states_):
            # a readiness probe may pass before supervisord's startsecs have run out: probing
            # STARTING replicas too saves a second per start wave
            self._probe(oc, row, d, r, w, box, now, running=all(s == "RUNNING" for s in states_))
            if r["ready"] and now - w.started > 60:
                w.backoff = 2.0  # a minute of health resets the back-off
        else:
            r.update(state="STARTING" if any(s in ("STARTING", "BACKOFF") for s in states_) else "STOPPED", ready=False,
                     message=", ".join(f"{c.name} {s}" for c, s in zip(d.containers, states_)))
        return before != _shown(r)

    def _probe(self, oc, row, d: Deployment, r: dict[str, Any], w: _Watch, box, now: float, running: bool) -> None:
        readiness = [c.readiness for c in d.containers if c.readiness]
        liveness = [(c, c.liveness) for c in d.containers if c.liveness] if running else []
        if not readiness:
            if running:  # without a probe, ready once supervisord has held it up for startsecs
                r.update(state="READY", ready=True, message="running")
            else:
                r.update(state="STARTING", ready=False, message="starting")
        elif now >= w.next_probe and now - w.started >= max(p.initial_delay for p in readiness):
            self._readiness(oc, row, d, r, w, box, now, readiness)
        for c, p in liveness:
            if now < w.next_live or now - w.started < p.initial_delay:
                continue
            alive = self._check(w, f"live:{c.name}", lambda c=c, p=p: self._run_probe(oc, row, r, box, c, p))
            if alive is None:
                continue
            w.next_live = now + p.period
            if alive:
                w.live_fail = 0
                continue
            w.live_fail += 1
            if w.live_fail >= p.failure_threshold:
                session = self.sb.session(box)
                name = rt.program_name(r["name"], c.name)
                try:
                    session.stop_program(name, True)
                    session.start_program(name, False)
                except Exception as exc:  # noqa: BLE001 - seen again next tick
                    logger.warning("restarting %s: %s", name, exc)
                r["restarts"] += 1
                r.update(state="STARTING", ready=False, message=f"liveness probe failed {w.live_fail} times; restarted")
                self.repo.add_event(oc.id, "service", {"name": row.name, "replica": r["name"], "restarted": "liveness"})
                w.restart(time.monotonic())
                r["pids"] = {}

    def _readiness(self, oc, row, d: Deployment, r: dict[str, Any], w: _Watch, box, now: float,
                   readiness: list[Probe]) -> None:
        ok = self._check(w, "ready", lambda: all(self._run_probe(oc, row, r, box, c, c.readiness)
                                                 for c in d.containers if c.readiness))
        if ok is None:
            return  # still running: looked at again next tick
        # until first ready, probe every tick: a replica is READY as soon as it answers
        w.next_probe = now + (min(p.period for p in readiness) if r["ready"] else TICK)
        if ok:
            w.ready_ok, w.ready_fail = w.ready_ok + 1, 0
            if w.ready_ok >= max(p.success_threshold for p in readiness):
                r.update(state="READY", ready=True, message="readiness probe passes")
        else:
            w.ready_fail, w.ready_ok = w.ready_fail + 1, 0
            if not r["ready"]:
                r.update(state="STARTING", message="readiness probe does not pass yet")
            elif w.ready_fail >= max(p.failure_threshold for p in readiness):
                r.update(state="NOT_READY", ready=False, message="readiness probe fails")

    def _check(self, w: _Watch, key: str, probe) -> bool | None:
        """A probe's answer, or None while it runs. It runs in the probe pool: a quick one answers
        within PROBE_WAIT, in this tick; a slow one (up to its timeoutSeconds) is collected on a
        later tick, while the controller goes on with everything else."""
        fut = w.pending.get(key)
        if fut is None:
            fut = w.pending[key] = self._probes.submit(probe)
            concurrent.futures.wait([fut], timeout=PROBE_WAIT)
        if not fut.done():
            return None
        del w.pending[key]
        try:
            return bool(fut.result())
        except Exception as exc:  # noqa: BLE001 - a probe that cannot run fails
            logger.warning("probe %s: %s", key, exc)
            return False

    def _run_probe(self, oc, row, r: dict[str, Any], box, c, p: Probe) -> bool:
        session = self.sb.session(box)
        if row.runtime == "podman":  # the container engine is the box's host's
            return probes.run(session, p, lambda cmd: ["podman", "exec", rt.container_name(oc.id, r["name"], c.name), *cmd],
                              self._podman_env(session), on_host=True)
        # in a sandbox like the container's: its uid, environment, /work and /tmp (not its processes)
        script = self._workdir(session, r["name"]) / f"{c.name}.sh"
        return probes.run(session, p, lambda cmd: rt.process_command(script, cmd))

    # -- launching -------------------------------------------------------------------
    @staticmethod
    def _workdir(session, replica: str) -> Path:
        """A replica's launch files, on its box's host: under the box's own dir (0700, root's),
        so they go with the box."""
        return Path(session.box_dir) / "replicas" / replica

    def _env(self, oc, row, d: Deployment, r: dict[str, Any], c, endpoints, box) -> dict[str, str]:
        env = stitching.service_env(endpoints)
        env.update({"OVERCLOUD_ID": oc.id, "OVERCLOUD_BOX": box.name, "OVERCLOUD_SITE": box.site,
                    "OVERCLOUD_REPLICA": r["name"], "HOSTNAME": r["name"]})
        from overcloud.components.datalake import client_credentials

        try:
            creds = client_credentials(self.sb, oc.id)
        except LookupError:
            creds = None
        if creds:
            env.update({"OVERCLOUD_S3_ENDPOINT": creds["s3_endpoint"], "AWS_ACCESS_KEY_ID": creds["access_key"],
                        "AWS_SECRET_ACCESS_KEY": creds["secret_key"], "AWS_DEFAULT_REGION": creds["region"],
                        "OVERCLOUD_S3_BUCKET": (creds.get("buckets") or ["data"])[0]})
        env.update(dict(c.env))  # the pattern's own values win
        return env

    def _launch(self, oc, row, d: Deployment, r: dict[str, Any], endpoints, box) -> None:
        """Write each container's launch files on the box's host (through its session) and add
        it to the box's supervisord. The image's code (process) or the image itself (podman) is
        put on the box's host first when it lacks it."""
        session = self.sb.session(box)
        workdir = self._workdir(session, r["name"])
        etc_dir = Path(session.etc_dir)
        files = SessionFiles(session)
        for c in d.containers:
            env = self._env(oc, row, d, r, c, endpoints, box)
            if row.runtime == "podman":
                ref = self.images.run_ref(c.image)
                session.ensure_image(ref, self.images.podman_env())
                # containers join the box's network and nest under the box's limits
                conf, cgroups, subids = self._podman_host(session)
                launch = rt.podman_launch(overcloud_id=oc.id, replica=r["name"], c=c, env=env, workdir=workdir,
                                          network=session.container_network, image_ref=ref,
                                          hosts_file=etc_dir / "hosts", cgroup_parent=session.container_cgroup_parent,
                                          containers_conf=Path(conf), tower_id=session.owner_id,
                                          userns=rt.podman_userns() and subids, files=files, cgroup_script=cgroups)
            else:
                self._check_packages(session, c.image)
                app = session.stage_dir(self.images.process_dir(c.image) / "src")
                launch = rt.process_launch(overcloud_id=oc.id, replica=r["name"], c=c, env=env, workdir=workdir,
                                           app_dir=Path(app), etc_dir=etc_dir, etc=self.images.process_etc(c.image),
                                           files=files)
            files.flush()
            session.add_program(launch.program, launch.command, directory=launch.directory, startsecs=1, startretries=3,
                            stopsignal=launch.stopsignal)

    # -- re-placement ------------------------------------------------------------------
    def _replace(self, oc, row, d: Deployment, r: dict[str, Any], replicas: list[dict[str, Any]]) -> bool:
        """Move a replica off a box that is out of service."""
        old = next((b for b in oc.boxes if b.name == r["box"]), None)
        if old is not None:
            try:
                session = self.sb.session(old)
                self._kill_pids(session, r)
                if row.runtime == "podman":
                    self._podman_rm(session, [rt.container_name(oc.id, r["name"], c.name) for c in d.containers])
            except Exception as exc:  # noqa: BLE001 - its host may not answer either; its release removes the rest
                logger.warning("stopping %s on %s: %s", r["name"], old.name, exc)
        nodes = self._nodes(oc, exclude=row.name)
        others = [pl.Assignment(d.name, x["index"], x["box"], x["site"]) for x in replicas
                  if x is not r and x["box"] not in self._out.get(oc.id, set())]
        pl.charge(nodes, d, others)
        try:
            [a] = pl.place_replicas(d, nodes, [r["index"]], existing=others)
        except pl.PlacementError as exc:
            msg = f"cannot move off {r['box']}: {exc.reason}"
            changed = r.get("message") != msg
            r.update(state="UNPLACED", ready=False, message=msg)
            return changed
        self.repo.add_event(oc.id, "service", {"name": row.name, "replica": r["name"], "moved": {"from": r["box"], "to": a.box}})
        self._watch.pop((oc.id, r["name"]), None)
        r.update(box=a.box, site=a.site, state="PENDING", ready=False, pids={},
                 message=f"moved from {r['box']} (out of service) to {a.box}")
        r["restarts"] += 1
        return True

    # -- stitching ------------------------------------------------------------------------
    def _stitch(self, overcloud_id: str) -> None:
        """Every box: /etc/hosts (box names, Service VIPs), the nft table that sends each VIP to
        ready replicas, and the Fabric's names for VIPs (flows to a Service show its name)."""
        from overcloud.components.post import hosts_entries

        oc = self.repo.get(overcloud_id)
        boxes = {b.name: b for b in oc.boxes}
        if any(not b.overlay_address for b in boxes.values()):
            return
        base = hosts_entries([box_obj(b) for b in oc.boxes], {b.name: b.overlay_address for b in oc.boxes})
        svcs = stitching.services(self.repo.services(overcloud_id), boxes)
        vip_names = {s["vip"]: f"svc/{name}" for name, s in svcs.items() if s["vip"]}
        published = dict((oc.info or {}).get(PUBLISHED_INFO) or {})
        before = dict(published)
        for b in oc.boxes:
            want = (stitching.hosts(base, svcs), stitching.nat_script(svcs, b.site, b), vip_names)
            if self._stitched.get(b.handle) == want:
                continue
            try:
                session = self.sb.session(b)
                session.set_hosts(want[0])
                session.set_service_table(want[1], stitching.VIP_CIDR)
                _name_vips(session, vip_names)
                self._publish(session, b, svcs, published)
                self._stitched[b.handle] = want
            except (OSError, RuntimeError, UnderCloudError) as exc:
                logger.warning("stitching %s: %s", b.name, exc)
        if published != before:
            self.repo.update_info(overcloud_id, **{PUBLISHED_INFO: published})

    @staticmethod
    def _publish(session, b, svcs: dict[str, Any], published: dict[str, Any]) -> None:
        """Make the NodePorts the box publishes (its service table rewrites them on its site
        address) reachable from where the user is, through its session: nothing more for a local
        box, the box's host's address for a remote one. ``published`` (box name -> address, or
        ``{"problem": ...}`` when the host's port is another box's) is kept in the OverCloud's
        info for the URLs."""
        ports = [p["node_port"] for p in stitching.publications(svcs, b)]
        if not ports and b.name not in published:
            return
        try:
            address = session.publish(ports, "nodeport")
        except UnderCloudError as exc:
            logger.warning("publishing NodePorts of %s: %s", b.name, exc)
            published[b.name] = {"problem": str(exc)}
            return
        if ports:
            published[b.name] = address
        else:
            published.pop(b.name, None)

    def scrape_targets(self, overcloud_id: str) -> list[dict[str, Any]]:
        oc = self.repo.get(overcloud_id)
        return stitching.scrape_targets(self.repo.services(overcloud_id), {b.name: b for b in oc.boxes})

    def _rescrape(self, oc) -> None:
        """Regenerate the OverCloud's Prometheus config (and reload it) when the scraped
        workloads changed: replicas became ready, moved, or went away."""
        if not (oc.info or {}).get("fabric") or oc.status not in states.UP:
            return
        targets = self.scrape_targets(oc.id)
        if self._scraped.get(oc.id, []) == targets:
            return
        from overcloud.components import fabric

        try:
            fabric.apply_config(self.sb, oc.id, [box_obj(b) for b in oc.boxes], {b.name: b.overlay_address for b in oc.boxes})
            self._scraped[oc.id] = targets
        except Exception as exc:  # noqa: BLE001 - tried again on the next change
            logger.warning("Prometheus config of %s: %s", oc.id, exc)

    # -- views -----------------------------------------------------------------------------
    def describe(self, overcloud_id: str, row, *, logs: int = 0) -> dict[str, Any]:
        oc = self.repo.get(overcloud_id)
        return views.describe(self.sb, oc, row, self.repo.services(overcloud_id), logs=logs)

    def workloads_by_box(self, overcloud_id: str) -> dict[str, list[dict[str, Any]]]:
        return views.workloads_by_box(self.repo.services(overcloud_id))


class SessionFiles(rt.Files):
    """A launch's files on the box's host, through its session: the directories in one command
    (made when the first file is written, or at :meth:`flush`), each file one ``put_file``."""

    def __init__(self, session):
        self.session = session
        self.base = Path(session.box_dir)
        self._dirs: list[tuple[str, str]] = []

    def mkdir(self, path: Path, owner: int | None = None) -> None:
        Path(path).relative_to(self.base)  # under the box's dir, or ValueError
        self._dirs.append((str(path), "" if owner is None else f"{int(owner)}:{int(owner)}"))

    def flush(self) -> None:
        if not self._dirs:
            return
        script = ('while [ $# -gt 0 ]; do mkdir -p -m 700 -- "$1" && chmod 700 -- "$1" && '
                  '{ [ -z "$2" ] || chown -h -- "$2" "$1"; } || exit 1; shift 2; done')
        args = [x for pair in self._dirs for x in pair]
        self._dirs = []
        self.session.run(["sh", "-c", script, "sh", *args], on_host=True, timeout=30)

    def write(self, path: Path, text: str, mode: int = 0o600) -> None:
        self.flush()
        self.session.put_file(str(Path(path).relative_to(self.base)), text, mode)


def _node_ports(pattern: Pattern, existing: dict[str, Any], current: dict[str, Any]) -> None:
    """Give every port of the pattern's NodePort Services its nodePort: the one asked for, else
    the one it had (a re-apply keeps it), else the lowest free one. A nodePort is one Service's
    in an OverCloud (each box publishes on its own site address): one that another composed
    Service holds is a PatternError naming the field."""
    lo, hi = NODE_PORTS
    mine = {s.name for s in pattern.services}
    held = {p["node_port"]: s["name"] for r in existing.values() for s in r.spec["services"]
            for p in s["ports"] if p.get("node_port") and s["name"] not in mine}
    had = {(s["name"], p["port"]): p["node_port"] for r in current.values() for s in r.spec["services"]
           for p in s["ports"] if p.get("node_port")}
    for s in pattern.services:
        for j, p in enumerate(s.ports):
            if s.type == "NodePort" and p.node_port in held:
                raise PatternError(f"Service/{s.name}", f"spec.ports[{j}].nodePort",
                                   f"{p.node_port} is already published by Service/{held[p.node_port]} on this "
                                   f"OverCloud; leave nodePort out to get a free one")
    asked = {p.node_port for s in pattern.services for p in s.ports if p.node_port}
    for s in pattern.services:
        if s.type != "NodePort":
            continue
        for p in s.ports:
            if p.node_port:
                continue
            old = had.get((s.name, p.port))
            if old and old not in held and old not in asked:
                p.node_port = old
            else:
                p.node_port = next((n for n in range(lo, hi + 1) if n not in held and n not in asked), None)
                if p.node_port is None:
                    raise PatternError(f"Service/{s.name}", "spec.type", f"every nodePort from {lo} to {hi} is taken")
            asked.add(p.node_port)


def _status(replicas: list[dict[str, Any]], current: str, rolling: bool = False) -> str:
    if rolling:
        return "UPDATING"
    if not replicas:
        return "READY"
    if all(r["ready"] for r in replicas):
        return "READY"
    if current in ("READY", "DEGRADED"):
        return "DEGRADED"
    return "STARTING"


def _name_vips(session, vip_names: dict[str, str]) -> None:
    """Add the Service VIPs to the box's Fabric names file (the flow agent re-reads it)."""
    from overcloud.components.fabric import NAMES_FILE

    try:
        names = {ip: n for ip, n in json.loads(session.get_file(NAMES_FILE)).items() if not str(n).startswith("svc/")}
    except FileNotFoundError:
        return
    except ValueError:
        return
    names.update(vip_names)
    session.put_file(NAMES_FILE, json.dumps(names))
