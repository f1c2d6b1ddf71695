"""Load and validate Mistral-v2 "reverse" workflows written in YAML.

Everything that can be wrong with a file is found here, at load time, with
the task and the YAML line in the message: unknown keys, actions and
`requires` targets, cycles (including those made by data flow), bad
retry/timeout values, Jinja syntax errors and `{{ _.x }}` references to
names nobody provides. The engine can then compile without surprises.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import threading

import yaml

from overcloud.workflows import expressions
from overcloud.workflows.errors import WorkflowDefinitionError

if TYPE_CHECKING:
    from overcloud.workflows.actions import ActionRegistry

logger = logging.getLogger(__name__)

__all__ = ["REQUIRED", "RetrySpec", "TaskSpec", "WorkflowSpec", "load_definition", "load_workflow"]

TASK_KEYS = frozenset({"action", "requires", "input", "publish", "retry", "timeout", "description"})
WORKFLOW_KEYS = frozenset({"type", "description", "input", "tasks"})


class _Required:
    """Marker for a workflow input without default."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclasses.dataclass(frozen=True)
class RetrySpec:
    count: int  # retries after the first attempt (Mistral meaning): attempts = count + 1
    delay: float  # seconds between attempts


@dataclasses.dataclass
class TaskSpec:
    name: str
    action: str
    requires: list[str]  # explicit ordering edges (names of other tasks)
    input: dict[str, Any]  # raw values; strings may hold Jinja expressions
    publish: dict[str, Any]  # context name -> expression over task().result / result / _
    retry: RetrySpec | None
    timeout: float | None  # seconds
    line: int  # 1-based YAML line of the task's name
    description: str = ""
    context_refs: frozenset[str] = frozenset()  # `_.x` names read by input + publish


@dataclasses.dataclass
class WorkflowSpec:
    name: str
    description: str
    inputs: dict[str, Any]  # name -> default, or REQUIRED
    tasks: dict[str, TaskSpec]
    source: str | None = None  # file path when loaded from a file

    def providers(self) -> dict[str, str]:
        """Context name -> task publishing it."""
        return {name: t.name for t in self.tasks.values() for name in t.publish}


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _mapping_items(node: yaml.Node, what: str, task: str | None = None) -> list[tuple[str, yaml.Node, int]]:
    if not isinstance(node, yaml.MappingNode):
        raise WorkflowDefinitionError(f"{what} must be a mapping", task=task, line=_line(node))
    items = []
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise WorkflowDefinitionError(f"{what} keys must be strings", task=task, line=_line(key_node))
        items.append((str(key_node.value), value_node, _line(key_node)))
    return items


def _construct(node: yaml.Node) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_workflow(source: str | Path, registry: ActionRegistry | None = None) -> WorkflowSpec:
    """Parse and validate one workflow from a file path or YAML text.

    With a registry, every action must be registered in it; without, action
    names are not checked (so definitions load before the Tower's actions).
    """
    path: str | None = None
    if isinstance(source, Path) or ("\n" not in source and source.endswith((".yaml", ".yml"))):
        path = str(source)
        text = Path(source).read_text(encoding="utf-8")
    else:
        text = source
    # Parsing and validating costs ~7 ms and every submit (and every flow build) loads
    # the definition again: keep the result per text and set of known actions.
    key = (path, text, tuple(registry.names()) if registry is not None else None)
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
    if cached is not None:
        return cached
    spec = _load_text(text, path, registry)
    with _CACHE_LOCK:
        if len(_CACHE) >= 64:
            _CACHE.clear()
        _CACHE[key] = spec
    return spec


_CACHE: dict[tuple, "WorkflowSpec"] = {}
_CACHE_LOCK = threading.Lock()


def _load_text(text: str, path: str | None, registry: ActionRegistry | None) -> WorkflowSpec:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise WorkflowDefinitionError(f"invalid YAML: {exc}", line=mark.line + 1 if mark else None) from exc
    if root is None:
        raise WorkflowDefinitionError("empty workflow file")
    top = _mapping_items(root, "a workflow file")
    version = [(v, ln) for k, v, ln in top if k == "version"]
    if not version or str(_construct(version[0][0])) != "2.0":
        raise WorkflowDefinitionError("missing version '2.0'", line=version[0][1] if version else 1)
    workflows = [(k, v, ln) for k, v, ln in top if k != "version"]
    if len(workflows) != 1:
        raise WorkflowDefinitionError(f"expected exactly one workflow, found {len(workflows)}", line=_line(root))
    name, wf_node, wf_line = workflows[0]
    spec = _parse_workflow(name, wf_node, wf_line, registry)
    spec.source = path
    return spec


def load_definition(name: str, registry: ActionRegistry | None = None) -> WorkflowSpec:
    """Load a workflow shipped in `overcloud/workflows/definitions/<name>.yaml`."""
    resource = importlib.resources.files("overcloud.workflows") / "definitions" / f"{name}.yaml"
    if not resource.is_file():
        raise WorkflowDefinitionError(f"no shipped workflow definition named '{name}'")
    spec = load_workflow(resource.read_text(encoding="utf-8"), registry)
    if spec.name != name:
        raise WorkflowDefinitionError(f"definitions/{name}.yaml defines workflow '{spec.name}'")
    return spec


def _parse_workflow(name: str, node: yaml.Node, line: int, registry: ActionRegistry | None) -> WorkflowSpec:
    fields = {k: (v, ln) for k, v, ln in _mapping_items(node, f"workflow '{name}'")}
    for key, (_, ln) in fields.items():
        if key not in WORKFLOW_KEYS:
            raise WorkflowDefinitionError(f"unknown workflow key '{key}' (allowed: {sorted(WORKFLOW_KEYS)})", line=ln)
    wf_type = _construct(fields["type"][0]) if "type" in fields else None
    if wf_type != "reverse":
        raise WorkflowDefinitionError(
            f"workflow '{name}' must have type: reverse (got {wf_type!r})", line=fields.get("type", (None, line))[1]
        )
    inputs = _parse_inputs(fields["input"]) if "input" in fields else {}
    if "tasks" not in fields:
        raise WorkflowDefinitionError(f"workflow '{name}' has no tasks", line=line)
    tasks: dict[str, TaskSpec] = {}
    for task_name, task_node, task_line in _mapping_items(fields["tasks"][0], "tasks"):
        if task_name in tasks:
            raise WorkflowDefinitionError("duplicate task name", task=task_name, line=task_line)
        tasks[task_name] = _parse_task(task_name, task_node, task_line, registry)
    description = _construct(fields["description"][0]) if "description" in fields else ""
    spec = WorkflowSpec(name=name, description=str(description or ""), inputs=inputs, tasks=tasks)
    _check_graph(spec)
    return spec


def _parse_inputs(entry: tuple[yaml.Node, int]) -> dict[str, Any]:
    node, line = entry
    raw = _construct(node)
    if isinstance(raw, dict):
        raw = [{k: v} for k, v in raw.items()]
    if not isinstance(raw, list):
        raise WorkflowDefinitionError("workflow input must be a list of names or {name: default}", line=line)
    inputs: dict[str, Any] = {}
    for item in raw:
        if isinstance(item, str):
            inputs[item] = REQUIRED
        elif isinstance(item, dict) and len(item) == 1:
            inputs.update(item)
        else:
            raise WorkflowDefinitionError(f"bad workflow input entry {item!r}", line=line)
    for key in inputs:
        if not isinstance(key, str) or not key.isidentifier() or key.startswith("__"):
            raise WorkflowDefinitionError(f"bad workflow input name {key!r}", line=line)
    return inputs


def _parse_task(name: str, node: yaml.Node, line: int, registry: ActionRegistry | None) -> TaskSpec:
    fields: dict[str, tuple[Any, int]] = {}
    for key, value_node, ln in _mapping_items(node, "a task", task=name):
        if key not in TASK_KEYS:
            raise WorkflowDefinitionError(f"unknown task key '{key}' (allowed: {sorted(TASK_KEYS)})", task=name, line=ln)
        fields[key] = (_construct(value_node), ln)

    def fail(message: str, key: str | None = None) -> WorkflowDefinitionError:
        return WorkflowDefinitionError(message, task=name, line=fields[key][1] if key in fields else line)

    action = fields.get("action", (None, line))[0]
    if not isinstance(action, str) or not action:
        raise fail("task needs an 'action' name", "action")
    if registry is not None and action not in registry:
        raise fail(f"unknown action '{action}'", "action")
    requires = fields.get("requires", ([], line))[0]
    if isinstance(requires, str):
        requires = [requires]
    if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
        raise fail("'requires' must be a task name or a list of task names", "requires")
    task_input = fields.get("input", ({}, line))[0] or {}
    if not isinstance(task_input, dict) or not all(isinstance(k, str) for k in task_input):
        raise fail("'input' must be a mapping of names to values", "input")
    publish = fields.get("publish", ({}, line))[0] or {}
    if not isinstance(publish, dict):
        raise fail("'publish' must be a mapping of names to expressions", "publish")
    for key in publish:
        if not isinstance(key, str) or not key.isidentifier() or key.startswith("__"):
            raise fail(f"bad publish name {key!r}", "publish")
    retry = _parse_retry(fields["retry"][0], fail) if "retry" in fields else None
    timeout = fields.get("timeout", (None, line))[0]
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise fail(f"'timeout' must be a positive number of seconds, not {timeout!r}", "timeout")
    refs: set[str] = set()
    for key in ("input", "publish"):
        try:
            refs |= expressions.context_refs(fields.get(key, ({}, line))[0] or {})
        except expressions.ExpressionError as exc:
            raise fail(str(exc), key) from exc
    return TaskSpec(
        name=name,
        action=action,
        requires=list(dict.fromkeys(requires)),
        input=task_input,
        publish=publish,
        retry=retry,
        timeout=float(timeout) if timeout is not None else None,
        line=line,
        description=str(fields.get("description", ("", line))[0] or ""),
        context_refs=frozenset(refs),
    )


def _parse_retry(raw: Any, fail: Any) -> RetrySpec:
    if not isinstance(raw, dict) or set(raw) - {"count", "delay"} or "count" not in raw:
        raise fail(f"'retry' must be {{count: N, delay: seconds}}, not {raw!r}", "retry")
    count, delay = raw["count"], raw.get("delay", 0)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise fail(f"retry count must be a non-negative integer, not {count!r}", "retry")
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or delay < 0:
        raise fail(f"retry delay must be a non-negative number of seconds, not {delay!r}", "retry")
    return RetrySpec(count=count, delay=float(delay))


def _check_graph(spec: WorkflowSpec) -> None:
    """Check references and that explicit plus data-flow edges form no cycle."""
    providers: dict[str, str] = {}
    for task in spec.tasks.values():
        for name in task.publish:
            if name in spec.inputs:
                raise WorkflowDefinitionError(f"publishes '{name}', which is a workflow input", task=task.name, line=task.line)
            if name in providers:
                raise WorkflowDefinitionError(
                    f"publishes '{name}', already published by task '{providers[name]}'", task=task.name, line=task.line
                )
            providers[name] = task.name
    edges: dict[str, set[str]] = {name: set() for name in spec.tasks}  # task -> tasks it waits for
    for task in spec.tasks.values():
        for dep in task.requires:
            if dep not in spec.tasks:
                raise WorkflowDefinitionError(f"requires unknown task '{dep}'", task=task.name, line=task.line)
            edges[task.name].add(dep)
        for ref in sorted(task.context_refs):
            if ref in spec.inputs:
                continue
            if ref not in providers:
                raise WorkflowDefinitionError(
                    f"'_.{ref}' is neither a workflow input nor published by any task", task=task.name, line=task.line
                )
            edges[task.name].add(providers[ref])
    cycle = _find_cycle(edges)
    if cycle:
        first = spec.tasks[cycle[0]]
        raise WorkflowDefinitionError(f"cycle: {' -> '.join(cycle + [cycle[0]])}", task=first.name, line=first.line)


def _find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(edges, white)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        color[node] = grey
        stack.append(node)
        for nxt in sorted(edges[node]):
            if color[nxt] == grey:
                return stack[stack.index(nxt):]
            if color[nxt] == white:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        color[node] = black
        return None

    for start in edges:
        if color[start] == white:
            found = visit(start)
            if found:
                return list(reversed(found))
    return None
