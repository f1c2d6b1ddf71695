"""Compile a WorkflowSpec into a TaskFlow graph flow.

Each YAML task becomes one `ActionTask` named as in the YAML. Its TaskFlow
`requires` are the context names its expressions read (`_.x`) plus three
transient names the engine injects (registry, services, run id); it
`provides` its publish names, so TaskFlow links producers to consumers by
itself. Explicit `requires:` become `flow.link` edges. A task with `retry`
sits alone in a linear subflow under a `DelayedRetry` that reverts the
whole flow once its attempts are spent.

`build_flow` is the module-level factory TaskFlow stores in the flow detail,
so a fresh process can rebuild the same flow to resume it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from taskflow import retry as tf_retry
from taskflow import task as tf_task
from taskflow.patterns import graph_flow, linear_flow
from taskflow.types import failure as tf_failure

from overcloud.workflows import expressions
from overcloud.workflows.actions import ActionContext
from overcloud.workflows.dsl import TaskSpec, WorkflowSpec, load_definition, load_workflow
from overcloud.workflows.errors import ActionError, TaskTimeoutError

logger = logging.getLogger(__name__)

__all__ = ["ActionTask", "DelayedRetry", "build_flow", "compile_workflow"]

# Names injected transiently (never persisted) into every engine's storage.
REGISTRY = "__overcloud_registry__"
SERVICES = "__overcloud_services__"
RUN_ID = "__overcloud_run_id__"
RESULT_KEY = "__action_result__"  # where an ActionTask keeps the raw action result
TRANSIENT = (REGISTRY, SERVICES, RUN_ID)


def attempt_name(task: str) -> str:
    return f"__overcloud_attempt__{task}"


def retry_name(task: str) -> str:
    return f"{task}.retry"


class DelayedRetry(tf_retry.Retry):
    """Retry one task `count` more times, then revert the whole flow.

    Its result is the 1-based attempt number, which the task reads as
    `ctx.attempt`. The delay itself is slept in the task's worker thread
    (retry atoms run on the engine's own thread, where sleeping would stall
    every other branch).
    """

    def __init__(self, task: str, count: int) -> None:
        super().__init__(name=retry_name(task), provides=attempt_name(task))
        self.count = count

    def execute(self, history: Any, *args: Any, **kwargs: Any) -> int:
        return len(history) + 1

    def revert(self, history: Any, *args: Any, **kwargs: Any) -> None:
        """Nothing to undo: deciding is all a retry does."""

    def on_failure(self, history: Any, *args: Any, **kwargs: Any) -> Any:
        if len(history) <= self.count:
            return tf_retry.RETRY
        return tf_retry.REVERT_ALL


class ActionTask(tf_task.Task):
    """Runs one registered action with rendered inputs; publishes its results."""

    def __init__(self, spec: TaskSpec) -> None:
        requires = [*sorted(spec.context_refs), *TRANSIENT]
        if spec.retry is not None:
            requires.append(attempt_name(spec.name))
        super().__init__(name=spec.name, provides=set(spec.publish) or None, requires=requires)
        self.spec = spec

    def _context(self, kwargs: dict[str, Any]) -> tuple[Any, ActionContext, dict[str, Any]]:
        registry = kwargs.pop(REGISTRY)
        ctx = ActionContext(
            run_id=kwargs.pop(RUN_ID),
            task=self.spec.name,
            services=kwargs.pop(SERVICES),
            deadline=None,
            attempt=int(kwargs.pop(attempt_name(self.spec.name), 1) or 1),
        )
        return registry.get(self.spec.action), ctx, kwargs

    def execute(self, **kwargs: Any) -> dict[str, Any]:
        action, ctx, context = self._context(kwargs)
        inputs = expressions.render(self.spec.input, context)
        retry = self.spec.retry
        if retry is not None and ctx.attempt > 1 and retry.delay > 0:
            time.sleep(retry.delay)
        try:
            if self.spec.timeout is None:
                raw = action.execute(ctx, **inputs)
            else:
                ctx.deadline = time.monotonic() + self.spec.timeout
                raw = _call_with_timeout(self.spec.name, self.spec.timeout, action.execute, ctx, inputs)
        except (TaskTimeoutError, ActionError):
            raise
        except Exception as exc:
            logger.warning("task %s (action %s) failed", self.spec.name, self.spec.action, exc_info=True)
            raise ActionError.wrap(exc) from None
        published = expressions.render(self.spec.publish, context, result=raw) if self.spec.publish else {}
        return {RESULT_KEY: raw, **published}

    def revert(self, result: Any = None, flow_failures: Any = None, **kwargs: Any) -> None:
        run_id = kwargs.get(RUN_ID)
        try:
            action, ctx, context = self._context(kwargs)
            failed = isinstance(result, tf_failure.Failure)
            if result is None or (failed and not action.revert_on_failure) or action.revert is None:
                return  # its execute never succeeded (or never ran): nothing of ours to undo
            raw = None if failed else result.get(RESULT_KEY)
            inputs = expressions.render(self.spec.input, context)
            action.revert(ctx, raw, **inputs)
        except Exception:
            logger.exception("revert of task %s (action %s, run %s) failed", self.spec.name, self.spec.action, run_id)


def _call_with_timeout(task: str, timeout: float, fn: Any, ctx: ActionContext, inputs: dict[str, Any]) -> Any:
    """Run `fn` in a helper thread; give up waiting after `timeout` seconds.

    The helper thread cannot be killed: an action that ignores ctx.deadline
    keeps running (and its result is dropped) after TaskTimeoutError.
    """
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            outcome["value"] = fn(ctx, **inputs)
        except BaseException as exc:  # handed over to the waiting thread
            outcome["error"] = exc
        finally:
            done.set()

    thread = threading.Thread(target=target, name=f"action-{ctx.run_id}-{task}", daemon=True)
    thread.start()
    if not done.wait(timeout):
        logger.warning("task %s of run %s overran its %.3g s timeout; its thread is abandoned", task, ctx.run_id, timeout)
        raise TaskTimeoutError(task, timeout)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def compile_workflow(spec: WorkflowSpec) -> graph_flow.Flow:
    """Turn a validated spec into a TaskFlow graph flow named after the workflow."""
    flow = graph_flow.Flow(spec.name)
    nodes: dict[str, Any] = {}
    for task_spec in spec.tasks.values():
        atom = ActionTask(task_spec)
        if task_spec.retry is not None:
            sub = linear_flow.Flow(f"{task_spec.name}.flow", retry=DelayedRetry(task_spec.name, task_spec.retry.count))
            sub.add(atom)
            nodes[task_spec.name] = sub
        else:
            nodes[task_spec.name] = atom
    flow.add(*nodes.values())
    for task_spec in spec.tasks.values():
        for dep in task_spec.requires:
            flow.link(nodes[dep], nodes[task_spec.name])
    return flow


def build_flow(workflow: str, source: str | None = None) -> graph_flow.Flow:
    """Flow factory stored in every flow detail (must stay importable by this name)."""
    spec = load_workflow(source) if source else load_definition(workflow)
    if spec.name != workflow:
        raise ValueError(f"{source} now defines workflow '{spec.name}', not '{workflow}'")
    return compile_workflow(spec)
