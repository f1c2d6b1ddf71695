"""Mistral-style `{{ ... }}` expressions on Jinja2 (sandboxed).

A string that is exactly one `{{ expr }}` evaluates to the native Python
value (a list stays a list); any other string containing `{{` renders to a
string. Names bound: `_` (workflow inputs + everything published so far),
and, in `publish` only, `result` and `task()` whose `.result` is the task's
action result. Static analysis finds which `_.name` values an expression
reads, so the engine can wire TaskFlow data flow before anything runs.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import SandboxedEnvironment

__all__ = ["ExpressionError", "NO_RESULT", "context_refs", "render"]

_SINGLE = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\{\{|\}\}).)*)\}\}\s*$", re.DOTALL)
_ENV = SandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


class ExpressionError(ValueError):
    """An expression does not parse, reads context dynamically, or fails to evaluate."""


class _NoResult:
    def __repr__(self) -> str:
        return "NO_RESULT"


NO_RESULT: Any = _NoResult()


class _TaskView:
    """What `task()` returns inside publish: the current task's result."""

    def __init__(self, result: Any) -> None:
        self.result = result


def _is_template(value: str) -> bool:
    return "{{" in value or "{%" in value


@functools.lru_cache(maxsize=4096)
def _parse(value: str) -> tuple[nodes.Template, str | None]:
    """Parse once; returns the AST and, for a single `{{ expr }}`, the expression text."""
    match = _SINGLE.match(value)
    try:
        if match:
            expr = match.group("expr")
            return _ENV.parse("{{ " + expr + " }}"), expr
        return _ENV.parse(value), None
    except jinja2.TemplateSyntaxError as exc:
        raise ExpressionError(f"Jinja syntax error in {value!r}: {exc.message}") from exc


@functools.lru_cache(maxsize=4096)
def _compiled_expression(expr: str) -> Any:
    return _ENV.compile_expression(expr, undefined_to_none=False)


@functools.lru_cache(maxsize=4096)
def _compiled_template(value: str) -> jinja2.Template:
    return _ENV.from_string(value)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if _is_template(value) else []
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


def context_refs(value: Any) -> set[str]:
    """Names read as `_.name` / `_['name']` anywhere in `value` (nested dicts/lists)."""
    refs: set[str] = set()
    for text in _strings(value):
        ast, _ = _parse(text)
        bound = set()
        for node in ast.find_all(nodes.Getattr):
            if isinstance(node.node, nodes.Name) and node.node.name == "_":
                refs.add(node.attr)
                bound.add(id(node.node))
        for node in ast.find_all(nodes.Getitem):
            if isinstance(node.node, nodes.Name) and node.node.name == "_" and isinstance(node.arg, nodes.Const):
                refs.add(str(node.arg.value))
                bound.add(id(node.node))
        for node in ast.find_all(nodes.Name):
            if node.name == "_" and id(node) not in bound:
                raise ExpressionError(f"in {text!r}: read the context as _.name, not '_' as a whole")
        unknown = meta.find_undeclared_variables(ast) - {"_", "task", "result"}
        if unknown:
            raise ExpressionError(f"in {text!r}: unknown name(s) {sorted(unknown)}; use _.name for context values")
    return refs


def render(value: Any, context: dict[str, Any], result: Any = NO_RESULT) -> Any:
    """Evaluate every expression in `value` (recursively) against `context`."""
    if isinstance(value, dict):
        return {k: render(v, context, result) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, context, result) for v in value]
    if not isinstance(value, str) or not _is_template(value):
        return value
    names: dict[str, Any] = {"_": context}
    if result is not NO_RESULT:
        names["result"] = result
        names["task"] = lambda *_args: _TaskView(result)
    _, expr = _parse(value)
    try:
        if expr is not None:
            out = _compiled_expression(expr)(**names)
            if isinstance(out, jinja2.Undefined):
                out._fail_with_undefined_error()
            return out
        return _compiled_template(value).render(**names)
    except jinja2.UndefinedError as exc:
        raise ExpressionError(f"in {value!r}: {exc.message}") from exc
    except jinja2.TemplateError as exc:
        raise ExpressionError(f"in {value!r}: {exc}") from exc
