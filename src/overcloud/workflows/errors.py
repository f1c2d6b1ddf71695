"""Typed errors of the workflow engine.

Every error carries the ids it is about (workflow, run, task, YAML line) as
attributes so callers can record them without parsing messages.
"""

from __future__ import annotations


class WorkflowDefinitionError(ValueError):
    """A workflow file is malformed; raised at load time, before anything runs.

    The message names the task (when there is one) and the YAML line.
    """

    def __init__(self, message: str, *, task: str | None = None, line: int | None = None) -> None:
        where = []
        if task is not None:
            where.append(f"task '{task}'")
        if line is not None:
            where.append(f"line {line}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
        self.task = task
        self.line = line


class WorkflowInputError(ValueError):
    """The caller's inputs do not match the workflow's declared `input`."""


class UnknownActionError(KeyError):
    """No action of that name is registered."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"unknown action '{self.name}'"


class TaskTimeoutError(TimeoutError):
    """A task's action overran its `timeout`.

    The action's thread cannot be killed: it keeps running in the background
    until it returns or notices `ctx.deadline` has passed.
    """

    def __init__(self, task: str, timeout: float) -> None:
        super().__init__(f"task '{task}' timed out after {timeout:g} s")
        self.task = task
        self.timeout = timeout


class ActionError(RuntimeError):
    """What a failed action leaves in the persisted flow: its message and the messages of the
    exceptions it was chained to, as plain text. TaskFlow stores a failure's exception and its
    causes as JSON; an action's own exceptions may carry anything (an HTTP connection, a
    client), which would make the failure itself unstorable."""

    def __init__(self, message: str, kind: str = "") -> None:
        super().__init__(message)
        self.kind = kind

    @classmethod
    def wrap(cls, exc: BaseException) -> "ActionError":
        parts, seen = [], set()
        cur: BaseException | None = exc
        while cur is not None and id(cur) not in seen and len(parts) < 5:
            seen.add(id(cur))
            text = str(cur) or type(cur).__name__
            if not parts or text not in parts[-1]:
                parts.append(text)
            cur = cur.__cause__ or cur.__context__
        return cls(": ".join(parts), type(exc).__name__)


class WorkflowFailed(RuntimeError):
    """A run failed and its completed tasks were reverted.

    `task` is the first task that failed, `cause` the message of its error;
    the original exception is chained as `__cause__` when it is available.
    """

    def __init__(self, run_id: str, task: str | None, cause: str) -> None:
        super().__init__(f"workflow run '{run_id}' failed in task '{task}': {cause}")
        self.run_id = run_id
        self.task = task
        self.cause = cause
