"""The Tower: one object that owns the repository, the workflow engine and the UnderCloud drivers.

The API calls the Tower; workflow actions reach the Tower through ``ctx.services``.
Creating and deleting an OverCloud are workflows that run in the background;
the Tower records every task transition in the repository (the Horizon view and
the event stream) and turns the workflow's outcome into the OverCloud's status.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import queue
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from overcloud import states
from overcloud.components.construction import ConstructionDataLake
from overcloud.components.datalake import NoDataLake  # noqa: F401 - the API imports it from here
from overcloud.config import Settings, tower_identity
from overcloud.files import restrict
from overcloud.identity.secrets import SecretBox, load_key
from overcloud.metrics import TowerMetrics
from overcloud.plan import CreatePlan
from overcloud.repository import InvalidTransition, NotFound, Repository
from overcloud.southbound import Southbound, box_dict, box_obj  # noqa: F401 - box_obj: for scripts and benches
from overcloud.underclouds.base import TaggedResource, UnderCloudDriver, UnderCloudError
from overcloud.workflows import actions as wf_actions
from overcloud.workflows.engine import TaskEvent, WorkflowEngine

logger = logging.getLogger(__name__)

CREATE, DELETE = "create_overcloud", "delete_overcloud"


class QuotaExceeded(RuntimeError):
    pass


class NoFabric(LookupError):
    def __init__(self, overcloud_id: str, status: str):
        super().__init__(f"OverCloud {overcloud_id} has no Visible Fabric to ask now ({status}; it has one once READY)")
        self.overcloud_id = overcloud_id


class ArchiveNotFound(LookupError):
    def __init__(self, archive_id: str):
        super().__init__(f"no preserved DataLake {archive_id!r}; `GET /datalake/archives` lists them")
        self.archive_id = archive_id


class Tower:
    def __init__(self, settings: Settings, *, metrics: TowerMetrics | None = None):
        import overcloud.components  # noqa: F401  (registers the actions)

        self.settings = settings
        settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        restrict(settings.state_dir)
        self.repo = Repository(settings.db_url)
        self.secrets = SecretBox(load_key(settings.state_dir, settings.secret_key))
        # this Tower's identity on the host: everything it makes carries it (see LocalHost)
        self.id = tower_identity(settings.state_dir)
        self.construction: ConstructionDataLake | None = None
        self._closing = threading.Event()
        self.metrics = metrics or TowerMetrics()
        self.drivers: dict[str, UnderCloudDriver] = {}
        self.local = None  # the LocalHost when any local site is configured
        self.ssh = None  # the SSHUnderCloud (the ssh world) when any ssh or cloud site is configured
        self.clouds: dict[str, Any] = {}  # name -> CloudSite (kinds openstack, aws)
        self.engine: WorkflowEngine | None = None
        self._lock = threading.Lock()
        self._runs: dict[str, threading.Event] = {}  # run_id -> set once its outcome is recorded
        self._started: dict[str, float] = {}
        self._resumer = ThreadPoolExecutor(max_workers=4, thread_name_prefix="resume")
        # task transitions are recorded by one writer thread, off the engine's critical path
        self._events: queue.Queue = queue.Queue()
        self._writer = threading.Thread(target=self._write_events, name="task-events", daemon=True)
        self._writer.start()
        from overcloud.composition.controller import ServiceController

        # what actions and the service controller get: never the Tower itself
        self.southbound = Southbound(drivers=self.drivers, records=self.repo, settings=settings, secrets=self.secrets,
                                     construction_datalake=self.construction_datalake)
        self.services = ServiceController(self.southbound, self._closing)
        self.southbound.services = self.services

    # -- lifecycle --------------------------------------------------------
    def start(self, *, resume: bool = True) -> None:
        self.repo.upgrade()
        restrict(self.settings.state_dir)  # the databases exist now
        self._make_drivers()
        self._guard_ranges()
        self._start_clouds()
        self.engine = WorkflowEngine(
            self.settings.workflow_db_url, registry=wf_actions.registry, services=self.southbound, max_workers=self.settings.workers
        )
        if self.construction is not None:
            self._start_construction()  # returns at once: it works in threads of its own
        if resume:
            self.resume_unfinished()
        self._health = threading.Thread(target=self._watch_health, name="fabric-health", daemon=True)
        self._health.start()
        if self.ssh is not None:  # what no-longer-live OverClouds left on silent hosts, once they answer
            from overcloud.leftovers import LeftoverSweeper

            self.leftovers = LeftoverSweeper(self.ssh, self.repo, closing=self._closing,
                                             interval=max(5.0, self.settings.fabric_scrape_interval))
            self.leftovers.start()
        if self.local is not None:
            self.services.start()

    def _guard_ranges(self) -> None:
        """Unreachable routes here for the overlay and the ssh sites' box subnets: a packet
        to them from this machine's root namespace fails at once instead of leaving by the
        default route (see underclouds/local/unreachable.py). Needs CAP_NET_ADMIN: a Tower
        without it (ssh sites only, not root) says so and goes on."""
        from overcloud.underclouds.local import unreachable

        cidrs = [self.settings.overlay_cidr]
        if self.ssh is not None:
            cidrs += [h.config.box_cidr for h in self.ssh.hosts.values() if h.config.box_cidr]
        cidrs += [c.config.box_pool for c in self.clouds.values()]  # their hosts' box subnets come from these
        try:
            self._guarded = unreachable.install(cidrs, self.settings.state_dir, self.id)
        except (OSError, subprocess.SubprocessError) as exc:
            logger.warning("could not add unreachable routes for %s: %s", ", ".join(cidrs), exc)

    def _underlay_problems(self, row) -> tuple[dict[str, str], bool]:
        """(problems, whether a host is unreachable) of the UnderClouds under one OverCloud's
        boxes, from what their drivers last observed (one probe per host and interval, shared
        by every OverCloud: see _watch_health)."""
        boxes = [box_obj(b) for b in row.boxes]
        problems: dict[str, str] = {}
        seen = set()
        for b in boxes:
            driver = self.drivers.get(b.site)
            if driver is None or id(driver.overlay_domain) in seen:
                continue
            seen.add(id(driver.overlay_domain))
            problems.update(driver.underlay_problems(boxes))
        return problems, any(v.startswith("unreachable") for v in problems.values())

    def _watch_health(self) -> None:
        """Every scrape interval: READY ↔ DEGRADED from what the Fabric sees (see fabric_health)
        and what the UnderClouds see under the OverCloud (an ssh host unreachable, WireGuard
        down between its sites)."""
        from overcloud.components import fabric

        interval = self.settings.fabric_scrape_interval
        while not self._closing.wait(interval):
            rows = [row for row in self.repo.list() if row.status in states.UP and (row.info or {}).get("fabric")]
            if self.ssh is not None:  # one probe per host of these OverClouds, shared by all of them
                hosts = set()
                for row in rows:
                    for b in row.boxes:
                        if b.site in self.ssh.site_names:
                            with contextlib.suppress(UnderCloudError):
                                hosts.add(self.ssh.host_of(box_obj(b)).name)
                if hosts:
                    self.ssh.health.refresh(sorted(hosts), max_age=interval / 2, wait=min(interval, 3.0))
            for row in rows:
                try:
                    problems, unreachable = self._underlay_problems(row)
                    if not unreachable:  # else the box sessions would wait on a host that does not answer
                        problems = {**fabric.health(self.southbound, row), **problems}
                except Exception:  # noqa: BLE001 - one OverCloud's trouble never stops the loop
                    logger.exception("health check of %s failed", row.id)
                    continue
                try:
                    if problems and row.status == states.READY:
                        self.repo.update_info(row.id, degraded=problems)
                        self.repo.set_status(row.id, states.DEGRADED, expect={states.READY})
                        self.repo.add_event(row.id, "health", {"degraded": problems})
                    elif problems and row.status == states.DEGRADED and problems != (row.info or {}).get("degraded"):
                        # still DEGRADED, for other reasons now (a host back, its boxes gone): say
                        # which; an event when what is degraded changes, not its wording
                        before = set((row.info or {}).get("degraded") or {})
                        self.repo.update_info(row.id, degraded=problems)
                        if set(problems) != before:
                            self.repo.add_event(row.id, "health", {"degraded": problems})
                    elif not problems and row.status == states.DEGRADED:
                        self.repo.update_info(row.id, degraded={})
                        self.repo.set_status(row.id, states.READY, expect={states.DEGRADED})
                        self.repo.add_event(row.id, "health", {"recovered": True})
                except (InvalidTransition, NotFound):
                    continue  # a delete started meanwhile

    def _start_construction(self) -> None:
        """Start the Construction DataLake and publish the artifacts boxes fetch, at serve and
        in the background (issue 11, cold start): the API answers meanwhile, and a create that
        comes earlier waits only for what it still needs (the store's ports in
        construction_datalake, one artifact in the host's cache in ``program``, the running
        store only to talk to it), or fails with the reason. See docs/datalake.md."""
        from overcloud.datalake import seaweed

        cdl = self.construction
        try:
            artifacts = [seaweed.weed_binary()]
        except FileNotFoundError as exc:  # the DataLake task says so again, to the user
            logger.error("the Construction DataLake has nothing to publish: %s", exc)
            artifacts = []
        # boxes reach nothing on the host but this store's S3 port (issue 10)
        cdl.start_background(artifacts, when_running=lambda: self.local.allow_host_services([(cdl.bind_ip, cdl.s3_port)]))

    def construction_datalake(self, timeout: float = 60.0) -> ConstructionDataLake:
        """The Construction DataLake as soon as URLs to it can be made (its ports are chosen,
        a moment after serve), so a create right after serve starts its boxes' programs while
        the store is still starting; its client(), credentials() and filer_auth() wait until it
        runs. Raises UnderCloudError (ConstructionError) saying why when it did not start."""
        if self.construction is None:
            raise UnderCloudError("no Construction DataLake: this Tower has no local site to run it on")
        self.construction.wait_addressable(timeout)
        return self.construction

    def _make_drivers(self) -> None:
        local_sites = [s for s in self.settings.sites if s.kind == "local"]
        if local_sites:
            from overcloud.underclouds.local import LocalHost, LocalSiteConfig

            LocalHost.check_privileges()
            self.local = LocalHost(
                self.settings.state_dir / "local",
                sites=[LocalSiteConfig(name=s.name, bridge=s.bridge, cidr=s.cidr) for s in local_sites],
                overlay_cidr=self.settings.overlay_cidr,
                max_boxes=self.settings.max_boxes,
                tower_id=self.id,
            )
            self.local.ensure_sites()
            self.drivers.update(self.local.sites)
            self.construction = ConstructionDataLake(
                self.settings.state_dir, bind_ip=self.local.gateways[local_sites[0].name],
                bridges=self.local.bridges, secrets=self.secrets,
            )
        ssh_sites = [s for s in self.settings.sites if s.kind == "ssh"]
        cloud_sites = [s for s in self.settings.sites if s.kind in ("openstack", "aws")]
        if ssh_sites or cloud_sites:  # the ssh world: its hosts are the ssh sites' and the cloud sites' servers
            from overcloud.underclouds.ssh.driver import SSHUnderCloud

            configs = {c.name: c for c in self.settings.ssh_site_configs()} if ssh_sites else {}
            missing = [s.name for s in ssh_sites if s.name not in configs]
            if missing:
                raise UnderCloudError(f"ssh sites {', '.join(missing)} have no hosts: define them in "
                                      "OVERCLOUD_SITES_FILE or OVERCLOUD_SITES")
            self.ssh = SSHUnderCloud(
                [configs[s.name] for s in ssh_sites], state_dir=self.settings.state_dir / "ssh", tower_id=self.id,
                seal=self.secrets.seal, unseal=self.secrets.open, overlay_cidr=self.settings.overlay_cidr,
                max_boxes=self.settings.max_boxes, bundle_cache=self.settings.state_dir / "host-bundle",
            )
            self.drivers.update(self.ssh.sites)
            if ssh_sites:
                # hosts checked, bundle installed, bridges and WAN up before the first create needs them
                threading.Thread(target=self._prepare_ssh, name="ssh-prepare", daemon=True).start()
        if cloud_sites:
            self._make_clouds(cloud_sites)
        for site in self.settings.sites:
            if site.kind not in ("local", "ssh", "openstack", "aws"):
                raise UnderCloudError(f"site {site.name}: there is no {site.kind} UnderCloud driver "
                                      "(kinds: local, ssh, openstack, aws)")

    def _make_clouds(self, cloud_sites) -> None:
        """Sites of kinds openstack and aws: a CloudSite each, with its kind's provider, in the ssh
        world. A provider that cannot even be loaded (its SDK missing) makes its site unavailable
        with the reason; the other sites work."""
        from overcloud.underclouds.cloud.site import CloudSite, provider_class
        from overcloud.underclouds.cloud.userdata import client_key

        configs = {c.name: c for c in self.settings.cloud_site_configs()}
        missing = [s.name for s in cloud_sites if s.name not in configs]
        if missing:
            raise UnderCloudError(f"cloud sites {', '.join(missing)} are not defined: define them in "
                                  "OVERCLOUD_SITES_FILE or OVERCLOUD_SITES (kind, image, flavors, network, ...)")
        key_path, public = client_key(self.settings.state_dir / "cloud")
        for s in cloud_sites:
            config = configs[s.name]
            provider = provider_class(config.kind)(config, self.id)
            self.clouds[s.name] = CloudSite(self.ssh, config, provider, client_key=key_path, client_public=public,
                                            peers=lambda: list(self.clouds.values()))
        self.drivers.update(self.clouds)

    def _start_clouds(self, wait: float = 20.0) -> None:
        """Each cloud site checked (authentication, endpoint) in a thread of its own, and its
        servers of live OverClouds added back as hosts (after a restart, kill -9 too). A site that
        fails is marked unavailable with the reason (GET /underclouds shows it; a create on it is a
        503 naming it). Waits up to ``wait`` s so that resumed workflows find their hosts; a slow
        cloud goes on in the background (its acquire and release wait for it)."""
        threads = [threading.Thread(target=c.start, args=(self.repo.live_ids,), name=f"cloud-start-{n}", daemon=True)
                   for n, c in self.clouds.items()]
        for t in threads:
            t.start()
        deadline = time.monotonic() + wait
        for c in self.clouds.values():
            c.started.wait(max(0.0, deadline - time.monotonic()))

    def _prepare_ssh(self) -> None:
        # and weed into each host's artifact cache as soon as the host is prepared: the first
        # create's DataLake task then finds it there instead of pushing ~150 MB per host
        artifacts = []
        try:
            from overcloud.datalake import seaweed

            weed = seaweed.weed_binary()
            artifacts.append((weed, seaweed.weed_sha256(weed)))
        except OSError as exc:  # no weed here: the DataLake says so when a create needs it
            logger.warning("not staging weed on the ssh hosts: %s", exc)
        try:
            self.ssh.prepare(artifacts)
        except Exception as exc:  # noqa: BLE001 - the first acquire tries again and fails with the reason
            logger.error("preparing the ssh hosts failed (the first create on them tries again): %s", exc)

    def close(self) -> None:
        self._closing.set()
        self._resumer.shutdown(wait=False, cancel_futures=True)
        self.services.close()
        if getattr(self, "_guarded", None):
            from overcloud.underclouds.local import unreachable

            try:
                unreachable.release(self.settings.state_dir, self.id)
            except (OSError, subprocess.SubprocessError) as exc:
                logger.warning("could not remove unreachable routes: %s", exc)
        for c in self.clouds.values():
            with contextlib.suppress(Exception):
                c.provider.close()
        if self.ssh is not None:
            self.ssh.close()
        if self.engine is not None:
            self.engine.close()
        self._events.put(None)
        self._writer.join(timeout=10)
        self.repo.close()

    def site_kinds(self) -> dict[str, str]:
        return {s.name: s.kind for s in self.settings.sites}

    def underclouds(self, wait: float = 2.0) -> list[dict[str, Any]]:
        """Every site, its hosts or bridge, capacity and health (``GET /underclouds``). A host
        that does not answer is unhealthy with the reason after at most ``wait`` s; probes are
        shared with the health watch and at most a few seconds old."""
        from overcloud.underclouds.base import parallel

        labels = {s.name: dict(s.labels) for s in self.settings.sites}
        max_age = max(2.0, self.settings.fabric_scrape_interval)
        out = []
        for driver, desc, err in parallel(lambda d: d.describe(max_age=max_age, wait=wait), list(self.drivers.values()),
                                          name="describe"):
            if err is not None:
                desc = {"name": driver.name, "kind": driver.kind, "healthy": False,
                        "problems": [f"cannot describe the site: {err.__class__.__name__}: {err}"[:500]]}
            desc.setdefault("labels", labels.get(driver.name, {}))
            out.append(desc)
        return out

    # -- create -----------------------------------------------------------
    def create(self, plan: CreatePlan, tenant_id: str) -> str:
        """Record the OverCloud and start its create workflow; returns its id at once."""
        restore = plan.datalake.get("restore_from")
        if restore:
            self.archive(restore, tenant_id)  # unknown or another tenant's: ArchiveNotFound
        if plan.datalake_enabled and self.construction is not None:
            self.construction.refuse_if_failed()  # its store did not start: 503 with the reason, now
        self._check_clouds(plan)  # an unavailable cloud site: 503 naming it; its quota: 429 with the numbers
        with self._lock:  # quota check and insert as one step, so 20 parallel creates cannot overshoot
            wanted = plan.clusters + 1
            used = self.repo.count_boxes() + self._pending_boxes()
            if used + wanted > self.settings.max_boxes:
                raise QuotaExceeded(
                    f"this OverCloud needs {wanted} boxes but only {max(0, self.settings.max_boxes - used)} of "
                    f"{self.settings.max_boxes} are free; delete an OverCloud or raise OVERCLOUD_MAX_BOXES"
                )
            overcloud_id = uuid.uuid4().hex
            tasks = {name: t.action for name, t in self.engine.load(CREATE).tasks.items()}
            self.repo.create_overcloud(overcloud_id, plan.name, tenant_id, plan.to_dict(), workflow=(CREATE, tasks))
        self._submit(overcloud_id, CREATE, {"overcloud_id": overcloud_id, "plan": plan.to_dict()}, seeded=True)
        return overcloud_id

    def _check_clouds(self, plan: CreatePlan) -> None:
        """The plan's cloud sites, before anything is recorded or made: each available (else
        CloudUnavailable, naming the site and why) and with quota for its servers (else
        CloudQuotaExceeded with the numbers), asked in parallel."""
        if not self.clouds:
            return
        from overcloud.underclouds.base import parallel

        wanted: dict[str, list[str]] = {}
        for spec in plan.box_specs("0" * 32):
            if spec["site"] in self.clouds:
                wanted.setdefault(spec["site"], []).append(spec["flavor"]["name"])
        for _, _, err in parallel(lambda item: self.clouds[item[0]].check_create(item[1]), sorted(wanted.items()),
                                  name="cloud-check"):
            if err is not None:
                raise err

    def _pending_boxes(self) -> int:
        """Boxes planned by CREATING OverClouds whose acquire has not saved them yet."""
        total = 0
        for row in self.repo.list():
            if row.status == states.CREATING and not row.boxes:
                total += CreatePlan.from_dict(row.spec).clusters + 1
        return total

    # -- delete -----------------------------------------------------------
    def delete(self, overcloud_id: str, *, preserve: bool = True) -> str:
        """Start deleting; returns the status after the call. Idempotent while DELETING.

        ``preserve=False`` deletes without copying the DataLake into the Construction DataLake:
        the way out for an OverCloud whose Post is gone (its delete FAILED at preserve)."""
        row = self.repo.get(overcloud_id)
        if row.status in (states.DELETING, states.DELETED):
            return row.status
        try:
            self.repo.set_status(overcloud_id, states.DELETING, expect=states.DELETABLE)
        except InvalidTransition:
            row = self.repo.get(overcloud_id)
            if row.status in (states.DELETING, states.DELETED):
                return row.status
            raise
        self._submit_delete(overcloud_id, preserve=preserve)
        return states.DELETING

    def _submit_delete(self, overcloud_id: str, *, preserve: bool = True) -> None:
        boxes = [box_dict(b) for b in self.repo.get(overcloud_id).boxes]
        self.repo.set_boxes_state(overcloud_id, states.BOX_DELETING)
        self._submit(overcloud_id, DELETE, {"overcloud_id": overcloud_id, "boxes": boxes, "preserve": preserve})

    # -- running workflows ------------------------------------------------
    def _submit(self, overcloud_id: str, workflow: str, inputs: dict[str, Any], seeded: bool = False) -> None:
        assert self.engine is not None, "Tower.start() first"
        if not seeded:
            spec = self.engine.load(workflow)
            self.repo.seed_tasks(overcloud_id, workflow, {name: t.action for name, t in spec.tasks.items()})
        run_id = f"{overcloud_id}:{workflow}"
        self._started[run_id] = time.monotonic()
        done = threading.Event()
        self._runs[run_id] = done
        try:
            future = self.engine.submit(workflow, run_id, inputs, on_event=self._on_event)
        except BaseException:
            self._runs.pop(run_id, None)
            raise
        future.add_done_callback(lambda f: self._finished(overcloud_id, workflow, run_id, f, done))

    def _on_event(self, ev: TaskEvent) -> None:
        """Called in engine threads: hand the event to the writer, never wait for the database."""
        self._events.put(ev)

    def _write_events(self) -> None:
        while True:
            ev = self._events.get()
            try:
                if ev is None:
                    return
                self._record(ev)
            except Exception:  # noqa: BLE001 - one bad event must not stop the writer
                logger.exception("could not record %s of %s", getattr(ev, "state", "?"), getattr(ev, "task", "?"))
            finally:
                self._events.task_done()

    def _record(self, ev: TaskEvent) -> None:
        overcloud_id, workflow = ev.run_id.split(":", 1)
        at = dt.datetime.fromtimestamp(ev.at, dt.timezone.utc)
        output = ev.result if isinstance(ev.result, dict) and ev.state == "SUCCESS" else None
        if output is not None:
            output = _summary(output)
        self.repo.record_task(overcloud_id, workflow, ev.task, ev.state, at=at, error=ev.error, output=output)
        if ev.state in ("SUCCESS", "FAILURE"):
            self.metrics.observe_task(workflow, ev.task, ev.state, self._task_duration(overcloud_id, workflow, ev.task, at))

    def _task_duration(self, overcloud_id: str, workflow: str, task: str, end: dt.datetime) -> float | None:
        for row in self.repo.tasks(overcloud_id, workflow):
            if row.task == task and row.started_at is not None:
                start = row.started_at if row.started_at.tzinfo else row.started_at.replace(tzinfo=dt.timezone.utc)
                return max(0.0, (end - start).total_seconds())
        return None

    def _finished(self, overcloud_id: str, workflow: str, run_id: str, future, done: threading.Event) -> None:
        try:
            self._events.join()  # every transition of this run is in the repository first
            self._settle(overcloud_id, workflow, run_id, future)
            if self.engine is not None:
                # the repository keeps the history; the engine keeps only runs in flight
                self.engine.forget(run_id)
        except Exception:  # noqa: BLE001
            logger.exception("settling workflow %s failed", run_id)
        finally:
            self._runs.pop(run_id, None)
            done.set()

    def _settle(self, overcloud_id: str, workflow: str, run_id: str, future) -> None:
        elapsed = time.monotonic() - self._started.pop(run_id, time.monotonic())
        exc = future.exception()
        outcome = "success" if exc is None else "failure"
        self.metrics.observe_workflow(workflow, outcome, elapsed)
        if exc is None:
            return  # the workflow's last task set READY / DELETED itself
        task = getattr(exc, "task", None)
        cause = getattr(exc, "cause", None) or str(exc)
        logger.warning("workflow %s of OverCloud %s failed in task %s: %s", workflow, overcloud_id, task, cause)
        try:
            self.repo.set_status(overcloud_id, states.FAILED, error_task=task, error=str(cause))
        except (InvalidTransition, NotFound) as err:
            logger.error("could not mark OverCloud %s FAILED: %s", overcloud_id, err)

    def is_running(self, overcloud_id: str) -> bool:
        return any(r.startswith(overcloud_id + ":") for r in list(self._runs))

    def wait(self, overcloud_id: str, timeout: float = 300.0) -> None:
        """Block until no workflow of this OverCloud is running (used by ``?wait=true``)."""
        deadline = time.monotonic() + timeout
        for run_id, done in list(self._runs.items()):
            if run_id.startswith(overcloud_id + ":"):
                done.wait(timeout=max(0.0, deadline - time.monotonic()))

    def resume_unfinished(self) -> list[str]:
        """After a restart: resume (or revert) every unfinished workflow, and settle records
        whose workflow never started or already ended."""
        assert self.engine is not None
        resumed = []
        unfinished = set(self.engine.unfinished())
        for run_id in unfinished:
            overcloud_id, workflow = run_id.split(":", 1)
            try:
                self.repo.get(overcloud_id)
            except NotFound:
                logger.warning("forgetting workflow %s of unknown OverCloud", run_id)
                self.engine.forget(run_id)
                continue
            logger.info("resuming workflow %s", run_id)
            self._started[run_id] = time.monotonic()
            done = threading.Event()
            self._runs[run_id] = done
            future = self._resumer.submit(self.engine.resume, run_id, self._on_event)
            future.add_done_callback(lambda f, o=overcloud_id, w=workflow, r=run_id, d=done: self._finished(o, w, r, f, d))
            resumed.append(run_id)
        for row in self.repo.list():
            if row.status == states.CREATING and f"{row.id}:{CREATE}" not in unfinished:
                # the Tower died before the create workflow was persisted, or after it ended
                # without its outcome being recorded: clean up whatever exists and say so
                self._release_tagged(row.id)
                self.repo.set_status(row.id, states.FAILED, error_task="tower", error="the Tower stopped before this create finished; nothing was left behind")
            elif row.status == states.DELETING and f"{row.id}:{DELETE}" not in unfinished:
                self.engine.forget(f"{row.id}:{DELETE}")
                self._submit_delete(row.id)
                resumed.append(f"{row.id}:{DELETE}")
        return resumed

    # -- DataLake ----------------------------------------------------------
    def datalake_credentials(self, overcloud_id: str) -> dict[str, Any]:
        from overcloud.components import datalake

        return datalake.client_credentials(self.southbound, overcloud_id)

    def datalake_status(self, overcloud_id: str) -> dict[str, Any] | None:
        """The DataLake of the detail: what deploy recorded, plus live capacity from its master."""
        from overcloud.datalake import seaweed

        row = self.repo.get(overcloud_id)
        info = dict((row.info or {}).get("datalake") or {})
        if not info:
            return None
        post = next((b for b in row.boxes if b.role == "post"), None)
        if row.status in states.UP and post is not None and post.site in self.drivers:
            try:
                with self.southbound.session(post).http_client(timeout=1.0) as http:  # the master answers the Post only
                    info["capacity"] = seaweed.cluster_status(info["master"], timeout=1.0, http=http)
            except Exception as exc:  # noqa: BLE001 - the detail still answers
                info["capacity"] = {"error": f"capacity unavailable: {exc}"}
        return info

    def archives(self, tenant_id: str | None) -> list[dict[str, Any]]:
        from overcloud.datalake import seaweed

        cdl = self.construction_datalake()
        found = seaweed.list_archives(cdl.client())
        return [a for a in found if tenant_id is None or a.get("owner") == tenant_id]


    def archive(self, archive_id: str, tenant_id: str | None, *, complete: bool = True) -> dict[str, Any]:
        """A preserved DataLake the caller may see; ``complete=False`` also finds an archive
        whose preserve was interrupted (to purge it)."""
        for a in self.archives(tenant_id):
            if a.get("archive_id") == archive_id and (a.get("complete") or not complete):
                return a
        raise ArchiveNotFound(archive_id)

    def purge_archive(self, archive_id: str, tenant_id: str | None) -> None:
        from overcloud.datalake import seaweed

        self.archive(archive_id, tenant_id, complete=False)
        seaweed.purge_archive(self.construction_datalake().client(), archive_id)

    # -- Fabric -------------------------------------------------------------
    def _fabric(self, overcloud_id: str):
        from overcloud.components import fabric

        row = self.repo.get(overcloud_id)
        info = (row.info or {}).get("fabric")
        post = next((b for b in row.boxes if b.role == "post"), None)
        if not info or post is None or row.status not in states.UP:
            raise NoFabric(overcloud_id, row.status)
        return fabric, row, info, self.southbound.session(post)

    def metrics_query(self, overcloud_id: str, query: str, start: float | None = None, end: float | None = None,
                      step: float | None = None, time_: float | None = None) -> dict[str, Any]:
        """PromQL against the OverCloud's own Prometheus (instant, or range with start/end/step)."""
        from overcloud.fabric import prometheus as prom

        _, _, info, session = self._fabric(overcloud_id)
        url = info["prometheus"]
        if start is not None or end is not None or step is not None:
            if None in (start, end, step):
                raise prom.PromQLError(400, "a range query needs start, end and step")
            prom.check_range_points(start, end, step)
            with session.http_client(timeout=60.0) as http:
                return prom.query_range(url, query, start, end, step, http=http)
        with session.http_client(timeout=60.0) as http:
            return prom.query(url, query, time_, http=http)

    def topology(self, overcloud_id: str) -> dict[str, Any]:
        fabric, row, info, session = self._fabric(overcloud_id)
        return fabric.topology(self.southbound, row, info, session)

    # -- leftovers --------------------------------------------------------
    def orphans(self) -> list[TaggedResource]:
        """Resources tagged with an OverCloud id the repository does not know as live."""
        live = self.repo.live_ids()
        return [r for r in self.southbound.list_tagged() if r.overcloud_id not in live]

    def sweep(self) -> list[TaggedResource]:
        orphans = self.orphans()
        if orphans:
            return self.southbound.sweep({r.overcloud_id for r in orphans})
        return []

    def _release_tagged(self, overcloud_id: str) -> None:
        if self.southbound.list_tagged(overcloud_id):
            self.southbound.sweep({overcloud_id})


def _summary(result: dict[str, Any], limit: int = 4000) -> dict[str, Any]:
    """A task's output for the Horizon view: its own ``message`` and small fields, bounded."""
    import json

    text = json.dumps(result, default=str)
    if len(text) <= limit:
        return result
    return {"message": result.get("message", ""), "truncated": True}
