"""Python that must run in a box's network, as a module of our own package.

A Python callable cannot cross SSH, so what the Tower must do from inside a box (the
DataLake's archive copy, its bucket and restore, the S3 round trip from a cluster box) is an
operation of a module run with :meth:`BoxSession.run_module
<overcloud.underclouds.base.BoxSession.run_module>`: ``python -m <module> <op>``, its
arguments as JSON on stdin (keys travel there, never in argv), its result as JSON on stdout.

The answer has the host side's one shape (as the ssh agent's): ``{"ok": true, "result": ...}``,
or, for an operation that raises, ``{"ok": false, "error": {"kind", "type", "module",
"message"}}``; the caller raises it again (:func:`call`): the same class when it is one of ours (or a builtin
exception), with the same message, so the Tower's errors read as they did when the code ran
in-process.
"""

from __future__ import annotations

import builtins
import importlib
import json
import sys
from collections.abc import Callable
from typing import Any

OK, FAILED = 0, 3


def main(ops: dict[str, Callable[[dict[str, Any]], Any]], argv: list[str] | None = None) -> int:
    """The box side: run ``ops[argv[0]]`` on the JSON of stdin, print its result."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ops:
        print(json.dumps({"ok": False, "error": {"kind": "input", "type": "ValueError", "module": "builtins",
                                                 "message": f"unknown operation {argv[:1]}; have {', '.join(sorted(ops))}"}}))
        return FAILED
    try:
        args = json.loads(sys.stdin.read() or "{}")
        result = ops[argv[0]](args)
    except Exception as exc:  # noqa: BLE001 - handed to the Tower, which raises it again
        print(json.dumps({"ok": False, "error": {"kind": "failed", "type": type(exc).__name__,
                                                 "module": type(exc).__module__, "message": str(exc)}}))
        return FAILED
    sys.stdout.write(json.dumps({"ok": True, "result": result}, default=str))
    return OK


class BoxModuleError(RuntimeError):
    """An operation failed in a box with an exception that is not one of ours."""


def _exception(err: dict[str, Any]) -> Exception:
    name, module, message = str(err.get("type", "")), str(err.get("module", "")), str(err.get("message", ""))
    cls: Any = None
    if module == "builtins":
        cls = getattr(builtins, name, None)
    elif module.startswith("overcloud.") and name.isidentifier():
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            cls = None
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            exc = cls.__new__(cls)
            Exception.__init__(exc, message)
            return exc
        except TypeError:
            pass
    # the same name, so messages that show the class (``ConnectError``) read as before
    return type(name if name.isidentifier() else "BoxModuleError", (BoxModuleError,), {})(message)


def call(session, module: str, op: str, args: dict[str, Any], *, timeout: float = 60) -> Any:
    """The Tower side: ``op`` of ``module`` in the box of ``session``; its result, or its
    exception raised again."""
    done = session.run_module(module, [op], input=json.dumps(args), timeout=timeout, check=False)
    try:
        answer = json.loads(done.stdout.decode() or "null")
    except ValueError:
        answer = None
    if isinstance(answer, dict) and answer.get("ok") is True and "result" in answer and done.returncode == OK:
        return answer["result"]
    if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
        raise _exception(answer["error"])
    what = "timed out" if done.returncode is None else f"exited {done.returncode}"
    err = done.stderr.decode("utf-8", "replace").strip()[-1000:]
    raise BoxModuleError(f"{module} {op} in box {session.box.name} {what}" + (f": {err}" if err else ""))
