"""What OverClouds that are no longer live left on ssh hosts, swept once those hosts answer.

A create that FAILED (or a delete that could not finish) while a host did not answer leaves that
host's boxes behind: its revert could not reach them. The ssh driver records, before any make-box,
which hosts each OverCloud touched (``<state>/ssh/touched/<id>.json``); this sweeper, in a thread
of its own, looks at those records at ``serve`` and then every ``interval`` seconds. For every
record whose OverCloud is not live (see :func:`why_sweepable`), each host it names that answers
is swept of that OverCloud's resources and struck from the record (the record goes when no host
is left, with its overlay lease); the log and an OverCloud event (kind ``leftovers``) say what was
removed. A host that does not answer is tried again next interval (one attempt per host per
interval, hosts in parallel); nothing here blocks the API or the health watch. Only this Tower's
records and, on the hosts, only what carries this Tower's id are ever touched.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from overcloud import states
from overcloud.repository import NotFound
from overcloud.underclouds.base import TaggedResource

logger = logging.getLogger(__name__)

DELETE_WORKFLOW = "delete_overcloud"  # tower.DELETE (not imported: tower imports this module)
LEFTOVERS_EVENT = "leftovers"


def why_sweepable(repo: Any, overcloud_id: str) -> str | None:
    """Why what ``overcloud_id`` left on the hosts may be swept (its status, or ``unknown``), or
    None when it must stay: the OverCloud is CREATING, READY, DEGRADED or DELETING (its own
    workflow owns its boxes), or FAILED in a delete that stopped before its DataLake was preserved
    (the user retries that delete, or deletes with ``preserve=false``: the data is theirs)."""
    try:
        row = repo.get(overcloud_id)
    except NotFound:
        return "unknown"
    if row.status == states.DELETED:
        return states.DELETED
    if row.status != states.FAILED:
        return None
    deleting = {t.task: t.state for t in repo.tasks(overcloud_id, DELETE_WORKFLOW)}
    if deleting and deleting.get("preserve_datalake") != "SUCCESS":
        return None
    return states.FAILED


class LeftoverSweeper:
    """Sweeps the ssh hosts of OverClouds that are no longer live (see the module's doc)."""

    def __init__(self, world: Any, repo: Any, *, interval: float, closing: threading.Event):
        self.world = world  # the SSHUnderCloud
        self.repo = repo
        self.interval = interval
        self._closing = closing
        self._silent: dict[str, str] = {}  # host -> why it did not answer (logged once, until it answers)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ssh-leftovers", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closing.is_set():
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - the next interval tries again
                if not self._closing.is_set():
                    logger.exception("sweeping leftovers on the ssh hosts failed")
            if self._closing.wait(self.interval):
                return

    def pending(self) -> dict[str, tuple[str, set[str]]]:
        """Records that may be swept: OverCloud id -> (why, hosts the record names)."""
        out = {}
        for oc, hosts in self.world.touched_hosts().items():
            why = why_sweepable(self.repo, oc)
            if why is not None and hosts:
                out[oc] = (why, hosts)
        return out

    def run_once(self) -> list[TaggedResource]:
        """One pass: every host named by a sweepable record tried once (in parallel); returns
        what was removed."""
        from overcloud.underclouds.base import parallel

        pending = self.pending()
        by_host: dict[str, set[str]] = {}
        for oc, (_, hosts) in pending.items():
            for name in hosts:
                if name in self.world.hosts:
                    by_host.setdefault(name, set()).add(oc)
                elif self._silent.get(name) != "not configured":
                    self._silent[name] = "not configured"
                    logger.warning("leftovers of OverCloud %s on ssh host %s cannot be swept: the host is no "
                                   "longer in this Tower's sites", oc, name)
        if not by_host:
            return []

        def one(name: str) -> tuple[list[TaggedResource], dict[str, str]]:
            # again, right before: a DELETE may have started meanwhile (its own workflow then owns it)
            why = {oc: w for oc in by_host[name] if (w := why_sweepable(self.repo, oc)) is not None}
            if not why:
                return [], {}
            return self.world.sweep_host(name, set(why)), why

        removed_all: list[TaggedResource] = []
        for name, answer, err in parallel(one, sorted(by_host), name="leftovers"):
            if err is not None:
                reason = f"{err.__class__.__name__}: {err}"[:300]
                if name not in self._silent:  # once until it answers again
                    self._silent[name] = reason
                    logger.info("leftovers of %s on ssh host %s: not swept yet, the host does not answer "
                                "(tried again every %.0f s): %s", ", ".join(sorted(by_host[name])), name,
                                self.interval, reason)
                continue
            self._silent.pop(name, None)
            removed, why = answer
            removed_all += removed
            for oc in sorted(why):
                mine = [r.name for r in removed if r.overcloud_id == oc]
                clean = not self.world.touched(oc)
                if not mine and not clean:
                    continue
                logger.info("swept leftovers of %s OverCloud %s from ssh host %s (it answers again): %s%s",
                            why[oc], oc, name, ", ".join(mine) or "nothing was left there",
                            "; nothing of it is left on any host" if clean else "")
                if why[oc] != "unknown":
                    try:
                        self.repo.add_event(oc, LEFTOVERS_EVENT, {"host": name, "removed": mine, "clean": clean})
                    except Exception:  # noqa: BLE001 - the log says it already
                        logger.exception("could not record the leftovers event of %s", oc)
        return removed_all
