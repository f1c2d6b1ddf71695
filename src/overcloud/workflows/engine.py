"""Run, resume and forget workflow runs on TaskFlow.

One `WorkflowEngine` per Tower. It owns one futurist thread pool shared by
every run (an engine-owned pool costs ~1 s at shutdown), one runner pool for
`submit`, and one TaskFlow persistence backend. Every run is one TaskFlow
logbook named after its run_id holding one flow detail; the flow is rebuilt
from the module-level factory `overcloud.workflows.flows.build_flow`, so a
fresh process can resume a run the previous Tower left unfinished.

The `services` object (drivers, repository hooks — not serialisable) and the
action registry reach actions through TaskFlow *transient* injection, on
first run and on resume alike; they are never written to the database.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import futurist
from taskflow import engines, states
from taskflow.persistence import models
from taskflow.types import failure as tf_failure
from taskflow.types import notifier as tf_notifier

from overcloud.workflows import actions, flows
from overcloud.workflows.dsl import REQUIRED, WorkflowSpec, load_definition, load_workflow
from overcloud.workflows.errors import WorkflowFailed, WorkflowInputError
from overcloud.workflows.persistence import open_backend

logger = logging.getLogger(__name__)

__all__ = ["TaskEvent", "WorkflowEngine"]

FINAL_STATES = frozenset({states.SUCCESS, states.REVERTED, states.FAILURE})


@dataclasses.dataclass
class TaskEvent:
    """One task transition, as seen by `on_event`."""

    run_id: str
    task: str  # task name in the YAML
    state: str  # PENDING RUNNING SUCCESS FAILURE RETRYING REVERTING REVERTED (REVERT_FAILURE)
    at: float  # time.time() when the engine reported it
    error: str | None = None  # on FAILURE: the error message
    result: Any = None  # on SUCCESS: the action's result


class _Tracker:
    """Forwards atom transitions to `on_event` and remembers which task failed first."""

    def __init__(self, run_id: str, tasks: set[str], on_event: Callable[[TaskEvent], None] | None) -> None:
        self.run_id = run_id
        self.tasks = tasks
        self.on_event = on_event
        self.outcome: dict[str, tuple[float, str, Any]] = {}  # task -> (at, SUCCESS|FAILURE, failure)
        self._lock = threading.Lock()

    def __call__(self, state: str, details: dict[str, Any]) -> None:
        task = details.get("task_name")
        if task is None and state == states.RETRYING:  # a retry atom decided to try its task again
            task = str(details.get("retry_name", "")).removesuffix(".retry")
        if task not in self.tasks or state == states.IGNORE:
            return
        event = TaskEvent(self.run_id, task, state, time.time())
        result = details.get("result")
        if state == states.FAILURE and isinstance(result, tf_failure.Failure):
            event.error = result.exception_str
        elif state == states.SUCCESS and isinstance(result, dict):
            event.result = result.get(flows.RESULT_KEY)
        if state in (states.SUCCESS, states.FAILURE):
            with self._lock:
                self.outcome[task] = (time.monotonic(), state, result)
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                logger.exception("on_event callback failed for %s %s of run %s", task, state, self.run_id)

    def first_failure(self) -> tuple[str | None, Any]:
        with self._lock:
            failed = [(at, task, res) for task, (at, state, res) in self.outcome.items() if state == states.FAILURE]
        if not failed:
            return None, None
        _, task, res = min(failed, key=lambda item: item[0])
        return task, res


class WorkflowEngine:
    """Runs YAML workflows; thread-safe; one instance per Tower process."""

    def __init__(
        self,
        persistence_url: str | None,
        registry: actions.ActionRegistry = actions.registry,
        services: Any = None,
        max_workers: int = 16,
        definitions_dir: Path | None = None,
    ) -> None:
        self._registry = registry
        self._services = services
        self._definitions_dir = Path(definitions_dir) if definitions_dir else None
        self._backend = open_backend(persistence_url)
        self._executor = futurist.ThreadPoolExecutor(max_workers=max_workers)
        self._runner = concurrent.futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="overcloud-wf")
        self._active: set[str] = set()
        self._lock = threading.Lock()
        self._closed = False

    # --- definitions -------------------------------------------------------------

    def _source(self, name: str) -> str | None:
        if self._definitions_dir is not None:
            path = self._definitions_dir / f"{name}.yaml"
            if path.is_file():
                return str(path)
        return None  # a definition shipped in the package

    def load(self, name: str) -> WorkflowSpec:
        """Load workflow `name` (definitions_dir first, then shipped) and check its actions."""
        source = self._source(name)
        spec = load_workflow(source, self._registry) if source else load_definition(name, self._registry)
        if spec.name != name:
            raise WorkflowInputError(f"{source} defines workflow '{spec.name}', not '{name}'")
        return spec

    @staticmethod
    def _inputs(spec: WorkflowSpec, inputs: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(inputs) - set(spec.inputs))
        if unknown:
            raise WorkflowInputError(f"workflow '{spec.name}' takes no input(s) {unknown}")
        values = {k: v for k, v in spec.inputs.items() if v is not REQUIRED}
        values.update(inputs)
        missing = sorted(k for k in spec.inputs if k not in values)
        if missing:
            raise WorkflowInputError(f"workflow '{spec.name}' needs input(s) {missing}")
        try:
            json.dumps(values)
        except (TypeError, ValueError) as exc:
            raise WorkflowInputError(f"inputs of workflow '{spec.name}' must be JSON-serialisable: {exc}") from exc
        return values

    # --- persisted runs ----------------------------------------------------------

    def _details(self) -> list[tuple[models.LogBook, models.FlowDetail]]:
        with contextlib.closing(self._backend.get_connection()) as conn:
            found = []
            for book in conn.get_logbooks(lazy=True):
                for fd in conn.get_flows_for_book(book.uuid, lazy=True):
                    found.append((book, fd))
            return found

    def _unfinished_detail(self, run_id: str) -> tuple[models.LogBook, models.FlowDetail] | None:
        for book, fd in self._details():
            if book.name == run_id and fd.state not in FINAL_STATES:
                return book, fd
        return None

    def unfinished(self) -> list[str]:
        """Run ids whose flow is not final (SUCCESS, REVERTED, FAILURE) in the backend.

        Includes runs this process is executing right now; at Tower start it
        is exactly the runs the previous process left behind.
        """
        return sorted({book.name for book, fd in self._details() if fd.state not in FINAL_STATES})

    def _claim(self, run_id: str, *, resuming: bool = False) -> None:
        if self._closed:
            raise RuntimeError("workflow engine is closed")
        with self._lock:
            if run_id in self._active:
                raise ValueError(f"workflow run '{run_id}' is already running")
            if not resuming and self._unfinished_detail(run_id) is not None:
                raise ValueError(f"workflow run '{run_id}' is unfinished; resume or forget it first")
            self._active.add(run_id)

    def _release(self, run_id: str) -> None:
        with self._lock:
            self._active.discard(run_id)

    # --- running -----------------------------------------------------------------

    def run(
        self, workflow: str, run_id: str, inputs: dict[str, Any], on_event: Callable[[TaskEvent], None] | None = None
    ) -> dict[str, Any]:
        """Run to the end; returns inputs + published values, or raises WorkflowFailed after reverting.

        Definition and input errors (ValueError subclasses) are raised before
        anything is persisted or run.
        """
        spec, values = self._prepare(workflow, run_id, inputs)
        try:
            return self._run_new(spec, run_id, values, on_event)
        finally:
            self._release(run_id)

    def submit(
        self, workflow: str, run_id: str, inputs: dict[str, Any], on_event: Callable[[TaskEvent], None] | None = None
    ) -> concurrent.futures.Future:
        """Like `run`, on the runner pool; definition/input/run_id errors raise here, at once."""
        spec, values = self._prepare(workflow, run_id, inputs)

        def job() -> dict[str, Any]:
            try:
                return self._run_new(spec, run_id, values, on_event)
            finally:
                self._release(run_id)

        try:
            return self._runner.submit(job)
        except BaseException:
            self._release(run_id)
            raise

    def _prepare(self, workflow: str, run_id: str, inputs: dict[str, Any]) -> tuple[WorkflowSpec, dict[str, Any]]:
        if not run_id or not isinstance(run_id, str):
            raise ValueError("run_id must be a non-empty string")
        spec = self.load(workflow)
        values = self._inputs(spec, dict(inputs))
        self._claim(run_id)
        return spec, values

    def _run_new(
        self, spec: WorkflowSpec, run_id: str, values: dict[str, Any], on_event: Callable[[TaskEvent], None] | None
    ) -> dict[str, Any]:
        book = models.LogBook(run_id)
        book.meta = {"run_id": run_id, "workflow": spec.name}
        engine = engines.load_from_factory(
            flows.build_flow,
            factory_kwargs={"workflow": spec.name, "source": self._source(spec.name)},
            store=values,
            backend=self._backend,
            book=book,
            engine="parallel",
            executor=self._executor,
        )
        return self._drive(engine, run_id, set(spec.tasks), on_event)

    def resume(self, run_id: str, on_event: Callable[[TaskEvent], None] | None = None) -> dict[str, Any]:
        """Continue an unfinished run from its persisted state.

        SUCCESS tasks are skipped, the task that was RUNNING runs again from
        the start. A failure reverts the run and raises WorkflowFailed.
        """
        self._claim(run_id, resuming=True)
        try:
            found = self._unfinished_detail(run_id)
            if found is None:
                raise ValueError(f"no unfinished workflow run '{run_id}'")
            with contextlib.closing(self._backend.get_connection()) as conn:
                detail = conn.get_flow_details(found[1].uuid)
            try:
                engine = engines.load_from_detail(
                    detail, backend=self._backend, engine="parallel", executor=self._executor
                )
            except Exception as exc:
                raise WorkflowFailed(run_id, None, f"cannot rebuild the flow to resume: {exc}") from exc
            return self._drive(engine, run_id, None, on_event)
        finally:
            self._release(run_id)

    def _drive(
        self, engine: Any, run_id: str, tasks: set[str] | None, on_event: Callable[[TaskEvent], None] | None
    ) -> dict[str, Any]:
        new = tasks is not None
        engine.storage.inject(
            {flows.REGISTRY: self._registry, flows.SERVICES: self._services, flows.RUN_ID: run_id}, transient=True
        )
        if tasks is None:  # resume: the YAML tasks are the ActionTasks of the rebuilt flow
            tasks = _task_names(engine)
        tracker = _Tracker(run_id, tasks, on_event)
        if new:  # announce the whole task list once, so a UI can draw it before anything runs
            for task in sorted(tasks):
                tracker(states.PENDING, {"task_name": task})
        engine.atom_notifier.register(tf_notifier.Notifier.ANY, tracker)
        logger.info("workflow run %s: starting (%d tasks)", run_id, len(tasks))
        try:
            engine.run()
        except Exception as exc:
            task, res = tracker.first_failure()
            original = res.exception if isinstance(res, tf_failure.Failure) and res.exception is not None else exc
            cause = res.exception_str if isinstance(res, tf_failure.Failure) else str(exc)
            logger.warning("workflow run %s failed in task %s: %s (reverted)", run_id, task, cause)
            raise WorkflowFailed(run_id, task, cause) from original
        finally:
            engine.atom_notifier.deregister(tf_notifier.Notifier.ANY, tracker)
        logger.info("workflow run %s: SUCCESS", run_id)
        return {k: v for k, v in engine.storage.fetch_all().items() if not k.startswith("__overcloud")}

    def forget(self, run_id: str) -> None:
        """Drop every finished persisted run with this id (idempotent); unfinished ones are kept."""
        with self._lock:
            if run_id in self._active:
                raise ValueError(f"workflow run '{run_id}' is running")
            pending = [b for b, fd in self._details() if b.name == run_id and fd.state not in FINAL_STATES]
            if pending:
                raise ValueError(f"workflow run '{run_id}' is unfinished; resume it first")
            books = {b.uuid for b, _ in self._details() if b.name == run_id}
            with contextlib.closing(self._backend.get_connection()) as conn:
                for uuid in books:
                    conn.destroy_logbook(uuid)

    def close(self) -> None:
        """Wait for submitted runs, then release the pools and the backend.

        Call it after blocking `run`/`resume` calls have returned. The task
        pool is shut down without joining its idle workers (they poll for
        work once a second; joining them would add ~1 s to every close).
        """
        self._closed = True
        self._runner.shutdown(wait=True)
        self._executor.shutdown(wait=False)
        self._backend.close()


def _task_names(engine: Any) -> set[str]:
    engine.compile()
    return {
        atom.name for atom in engine.compilation.execution_graph.nodes if isinstance(atom, flows.ActionTask)
    }
