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
