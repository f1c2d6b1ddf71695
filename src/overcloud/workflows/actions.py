"""Action registry: the only things a workflow task can call.

An action is a pair of plain functions. `execute(ctx, **inputs)` does one
thing and returns a JSON-serialisable value (it is persisted); `revert(ctx,
result, **inputs)` undoes exactly what that execute did. The engine promises:

* revert is called only for a task whose execute succeeded, with its result;
  never after the task's own execute failed — unless the action was
  registered with ``revert_on_failure=True``, then revert also runs with
  ``result=None`` after a failed execute (to clean up half-made resources);
* revert errors are logged, never raised: one bad revert does not stop the
  others;
* a task that was RUNNING when the process died runs again from the start
  on resume, so every execute must be idempotent.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from overcloud.workflows.errors import TaskTimeoutError, UnknownActionError

if TYPE_CHECKING:
    from overcloud.southbound import Southbound

logger = logging.getLogger(__name__)

__all__ = ["Action", "ActionContext", "ActionRegistry", "registry"]


@dataclasses.dataclass
class ActionContext:
    """What an action knows about the call it is serving."""

    run_id: str  # the workflow run, as given by the caller of WorkflowEngine.run
    task: str  # the task name in the YAML
    #: what the Tower injects: the Southbound (drivers by site, box sessions, records, settings),
    #: never the Tower itself; the engine passes it through untouched (its own tests pass anything)
    services: Southbound
    deadline: float | None  # time.monotonic() deadline from `timeout`, for cooperative actions
    attempt: int  # 1-based retry attempt

    def remaining(self) -> float | None:
        """Seconds left before the deadline (never negative), or None without timeout."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())


@dataclasses.dataclass(frozen=True)
class Action:
    """A registered action: its name, execute, optional revert and revert policy."""

    name: str
    execute: Callable[..., Any]
    revert: Callable[..., None] | None = None
    revert_on_failure: bool = False  # also revert (result=None) after own execute failed


class ActionRegistry:
    """Name → Action, filled at import time by the modules that own the actions.

    Thread-safe. A fresh registry already holds the ``std.*`` built-ins unless
    ``builtins=False``.
    """

    def __init__(self, builtins: bool = True) -> None:
        self._actions: dict[str, Action] = {}
        self._lock = threading.Lock()
        if builtins:
            _register_builtins(self)

    def register(
        self,
        name: str,
        execute: Callable[..., Any],
        revert: Callable[..., None] | None = None,
        *,
        revert_on_failure: bool = False,
    ) -> None:
        """Add or replace an action (replacing is logged: it is usually a mistake)."""
        if not name or not isinstance(name, str):
            raise ValueError("an action needs a non-empty string name")
        with self._lock:
            old = self._actions.get(name)
            adding_revert = old is not None and old.execute is execute and old.revert is None and revert is not None
            if old is not None and not adding_revert:
                logger.warning("action %s registered again; the new one wins", name)
            self._actions[name] = Action(name, execute, revert, revert_on_failure)

    def action(self, name: str, *, revert_on_failure: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator registering `execute`; the result's `.revert` decorator registers the revert."""

        def decorate(execute: Callable[..., Any]) -> Callable[..., Any]:
            self.register(name, execute, revert_on_failure=revert_on_failure)

            def revert_decorator(revert: Callable[..., None]) -> Callable[..., None]:
                self.register(name, execute, revert, revert_on_failure=revert_on_failure)
                return revert

            execute.revert = revert_decorator  # type: ignore[attr-defined]
            return execute

        return decorate

    def get(self, name: str) -> Action:
        with self._lock:
            try:
                return self._actions[name]
            except KeyError:
                raise UnknownActionError(name) from None

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._actions

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._actions)


# --- built-ins: useful in tests and for operators sketching workflows -------------


def _noop(ctx: ActionContext, **inputs: Any) -> dict[str, Any]:
    """Return the inputs unchanged."""
    return dict(inputs)


def _echo(ctx: ActionContext, output: Any = None, **_: Any) -> Any:
    """Return the `output` input."""
    return output


def _fail(ctx: ActionContext, message: str = "std.fail", **_: Any) -> None:
    """Always fail with `message`."""
    raise RuntimeError(message)


def _sleep(ctx: ActionContext, seconds: float = 0.0, **_: Any) -> dict[str, float]:
    """Sleep `seconds`, stopping with TaskTimeoutError once ctx.deadline has passed."""
    end = time.monotonic() + float(seconds)
    while True:
        now = time.monotonic()
        if ctx.deadline is not None and now >= ctx.deadline and now < end:
            raise TaskTimeoutError(ctx.task, float(seconds))
        left = end - now
        if left <= 0:
            return {"slept": float(seconds)}
        if ctx.deadline is not None:
            left = min(left, max(ctx.deadline - now, 0.0))
        time.sleep(min(left, 0.05))


def _register_builtins(reg: ActionRegistry) -> None:
    reg.register("std.noop", _noop)
    reg.register("std.echo", _echo)
    reg.register("std.fail", _fail)
    reg.register("std.sleep", _sleep)


registry = ActionRegistry()
"""The default registry the Tower fills with the real actions."""
