"""Running workflows on TaskFlow: parallelism, revert, retry, timeout, events, resume.

Timing is only compared between recorded timestamps (overlap, delays), never
against wall-clock thresholds.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from overcloud.workflows.actions import ActionRegistry
from overcloud.workflows.engine import TaskEvent, WorkflowEngine
from overcloud.workflows.errors import (
    TaskTimeoutError,
    WorkflowDefinitionError,
    WorkflowFailed,
    WorkflowInputError,
)

HEADER = "version: '2.0'\n{name}:\n  type: reverse\n  input: {inputs}\n  tasks:\n"


def write(defs: Path, name: str, tasks: str, inputs: str = "[]") -> None:
    defs.mkdir(exist_ok=True)
    text = HEADER.format(name=name, inputs=inputs) + textwrap.indent(textwrap.dedent(tasks), "    ")
    (defs / f"{name}.yaml").write_text(text)


class Recorder:
    """Test actions that record what happened, thread-safely."""

    def __init__(self, registry: ActionRegistry) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple] = []
        self.spans: dict[str, tuple[float, float]] = {}
        self.starts: dict[str, list[float]] = {}
        self.attempts: dict[str, list[int]] = {}
        self.fail_times: dict[str, int] = {}
        registry.register("t.step", self.step, self.revert)
        registry.register("t.flaky", self.flaky, self.revert)

    def step(self, ctx, seconds=0.0, value=None, fail=False):
        start = time.monotonic()
        with self.lock:
            self.calls.append(("execute", ctx.task))
            self.starts.setdefault(ctx.task, []).append(start)
            self.attempts.setdefault(ctx.task, []).append(ctx.attempt)
        time.sleep(seconds)
        if fail:
            raise RuntimeError(f"{ctx.task} broke")
        with self.lock:
            self.spans[ctx.task] = (start, time.monotonic())
        return {"task": ctx.task, "value": value}

    def flaky(self, ctx, failures=0):
        with self.lock:
            self.starts.setdefault(ctx.task, []).append(time.monotonic())
            self.attempts.setdefault(ctx.task, []).append(ctx.attempt)
            self.calls.append(("execute", ctx.task))
            seen = self.fail_times[ctx.task] = self.fail_times.get(ctx.task, 0) + 1
        if seen <= failures:
            raise RuntimeError(f"attempt {seen} failed")
        return {"attempt": ctx.attempt}

    def revert(self, ctx, result, **inputs):
        with self.lock:
            self.calls.append(("revert", ctx.task, result))

    def reverts(self):
        return [c for c in self.calls if c[0] == "revert"]


@pytest.fixture
def defs(tmp_path):
    return tmp_path / "defs"


@pytest.fixture
def rec(registry):
    return Recorder(registry)


@pytest.fixture
def make_engine(registry, defs):
    made = []

    def make(url=None, services=None):
        engine = WorkflowEngine(url, registry=registry, services=services, definitions_dir=defs)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()


def test_independent_tasks_overlap(make_engine, defs, rec):
    write(defs, "par", """\
        left: {action: t.step, input: {seconds: 0.3}}
        right: {action: t.step, input: {seconds: 0.3}}
        join: {action: t.step, requires: [left, right]}
    """)
    make_engine().run("par", "r1", {})
    (l0, l1), (r0, r1), (j0, _) = rec.spans["left"], rec.spans["right"], rec.spans["join"]
    assert l0 < r1 and r0 < l1, "left and right must have run at the same time"
    assert j0 >= max(l1, r1)


def test_publish_and_input_data_flow(make_engine, defs, rec):
    write(defs, "flow", """\
        first:
          action: t.step
          input: {value: "{{ _.seed }}"}
          publish: {made: "{{ task().result.value }}", also: "n-{{ result.value.n }}"}
        second:
          action: std.echo
          input: {output: {got: "{{ _.made }}", label: "{{ _.also }}"}}
          publish: {echoed: "{{ result }}"}
    """, inputs="[seed, {unused: 7}]")
    out = make_engine().run("flow", "r1", {"seed": {"n": 1}})
    assert out == {
        "seed": {"n": 1}, "unused": 7, "made": {"n": 1}, "also": "n-1",
        "echoed": {"got": {"n": 1}, "label": "n-1"},
    }


def test_failure_reverts_completed_tasks_in_reverse_order(make_engine, defs, rec):
    write(defs, "chain", """\
        a: {action: t.step, input: {value: 1}}
        b: {action: t.step, requires: [a], input: {value: 2}}
        c: {action: t.step, requires: [b], input: {value: 3}}
        boom: {action: t.step, requires: [c], input: {fail: true}}
    """)
    with pytest.raises(WorkflowFailed) as info:
        make_engine().run("chain", "r1", {})
    assert info.value.task == "boom" and "boom broke" in info.value.cause
    assert isinstance(info.value.__cause__, RuntimeError)
    assert rec.reverts() == [
        ("revert", "c", {"task": "c", "value": 3}),
        ("revert", "b", {"task": "b", "value": 2}),
        ("revert", "a", {"task": "a", "value": 1}),
    ]  # and never for boom itself


def test_revert_on_failure_action_is_reverted_with_none(make_engine, defs, registry):
    seen = []
    registry.register("t.half", lambda ctx: 1 / 0, lambda ctx, result: seen.append(result), revert_on_failure=True)
    write(defs, "half", "h: {action: t.half}\n")
    with pytest.raises(WorkflowFailed, match="division by zero"):
        make_engine().run("half", "r1", {})
    assert seen == [None]


def test_revert_errors_are_logged_not_raised(make_engine, defs, registry, rec, caplog):
    def bad_revert(ctx, result):
        raise OSError("revert broke")

    registry.register("t.ok", lambda ctx: "done", bad_revert)
    write(defs, "badrev", """\
        a: {action: t.step}
        b: {action: t.ok, requires: [a]}
        c: {action: t.step, requires: [b], input: {fail: true}}
    """)
    with pytest.raises(WorkflowFailed):
        make_engine().run("badrev", "r1", {})
    assert [c[1] for c in rec.reverts()] == ["a"]
    assert "revert broke" in caplog.text


def test_retry_until_success_with_delay(make_engine, defs, rec):
    write(defs, "retry", "f: {action: t.flaky, input: {failures: 2}, retry: {count: 2, delay: 0.2}}\n")
    events: list[TaskEvent] = []
    make_engine().run("retry", "r1", {}, on_event=events.append)
    assert rec.attempts["f"] == [1, 2, 3]
    starts = rec.starts["f"]
    assert all(later - earlier >= 0.2 for earlier, later in zip(starts, starts[1:]))
    assert [e.state for e in events].count("RETRYING") == 2
    assert events[-1].state == "SUCCESS" and events[-1].result == {"attempt": 3}


def test_retry_exhausted_reverts_whole_flow(make_engine, defs, rec):
    write(defs, "exhaust", """\
        a: {action: t.step, input: {value: 1}}
        f: {action: t.flaky, requires: [a], input: {failures: 5}, retry: {count: 1, delay: 0}}
    """)
    with pytest.raises(WorkflowFailed) as info:
        make_engine().run("exhaust", "r1", {})
    assert info.value.task == "f" and "attempt 2 failed" in info.value.cause
    assert rec.attempts["f"] == [1, 2]
    assert rec.reverts() == [("revert", "a", {"task": "a", "value": 1})]


def test_timeout_fails_the_task(make_engine, defs, rec):
    write(defs, "slow", "s: {action: std.sleep, input: {seconds: 5}, timeout: 0.2}\n")
    with pytest.raises(WorkflowFailed) as info:
        make_engine().run("slow", "r1", {})
    assert info.value.task == "s"
    assert isinstance(info.value.__cause__, TaskTimeoutError)


def test_on_event_sequence_and_broken_callback(make_engine, defs, rec):
    write(defs, "ev", "a: {action: t.step, input: {value: 1}}\nb: {action: t.step, requires: [a], input: {fail: true}}\n")
    events: list[TaskEvent] = []

    def on_event(event):
        events.append(event)
        raise RuntimeError("observer bug")  # must not break the flow

    with pytest.raises(WorkflowFailed):
        make_engine().run("ev", "run-7", {}, on_event=on_event)
    assert all(e.run_id == "run-7" for e in events)
    by_task = {t: [e.state for e in events if e.task == t] for t in ("a", "b")}
    assert by_task["a"] == ["PENDING", "RUNNING", "SUCCESS", "REVERTING", "REVERTED"]
    assert by_task["b"] == ["PENDING", "RUNNING", "FAILURE", "REVERTING", "REVERTED"]
    assert next(e for e in events if e.state == "SUCCESS").result == {"task": "a", "value": 1}
    assert "b broke" in next(e for e in events if e.state == "FAILURE").error


def test_services_reach_actions(make_engine, defs, registry):
    registry.register("t.svc", lambda ctx: ctx.services["name"])
    write(defs, "svc", "s: {action: t.svc, publish: {name: '{{ result }}'}}\n")
    assert make_engine(services={"name": "driver"}).run("svc", "r1", {})["name"] == "driver"


def test_errors_before_anything_runs(make_engine, defs, rec):
    write(defs, "needs", "a: {action: t.step, input: {value: '{{ _.x }}'}}\n", inputs="[x]")
    write(defs, "unknown", "a: {action: nope.nothing}\n")
    engine = make_engine()
    with pytest.raises(WorkflowInputError, match="needs input"):
        engine.run("needs", "r1", {})
    with pytest.raises(WorkflowInputError, match="takes no input"):
        engine.run("needs", "r1", {"x": 1, "y": 2})
    with pytest.raises(WorkflowDefinitionError, match="unknown action"):
        engine.run("unknown", "r1", {})
    assert rec.calls == []


def test_submit_returns_future(make_engine, defs, rec):
    write(defs, "sub", "a: {action: t.step, input: {value: 5}, publish: {v: '{{ result.value }}'}}\n")
    assert make_engine().submit("sub", "r1", {}).result(timeout=30)["v"] == 5


# --- persistence and resume ------------------------------------------------------

CRASHER = """
import os, sys, warnings
warnings.simplefilter("ignore")
from overcloud.workflows.actions import ActionRegistry
from overcloud.workflows.engine import WorkflowEngine
registry = ActionRegistry()
marks = sys.argv[2]
def mark(ctx, **kw):
    with open(marks, "a") as f:
        f.write(ctx.task + "\\n")
    if ctx.task == "second":
        os._exit(9)  # the Tower dies inside the 2nd task
    return {"task": ctx.task}
registry.register("t.mark", mark)
WorkflowEngine(sys.argv[1], registry=registry, definitions_dir=sys.argv[3]).run("crash", "oc1:create", {})
"""


@pytest.fixture
def crashed_run(tmp_path, defs):
    write(defs, "crash", """\
        first: {action: t.mark, publish: {one: "{{ result.task }}"}}
        second: {action: t.mark, requires: [first], input: {got: "{{ _.one }}"}}
        third: {action: t.mark, requires: [second]}
    """)
    url = f"sqlite:///{tmp_path / 'taskflow.db'}"
    marks = tmp_path / "marks"
    proc = subprocess.run([sys.executable, "-c", CRASHER, url, str(marks), str(defs)], timeout=120)
    assert proc.returncode == 9
    assert marks.read_text().split() == ["first", "second"]
    return url


def test_resume_after_kill_skips_done_tasks(crashed_run, make_engine, registry):
    ran = []
    registry.register("t.mark", lambda ctx, **kw: ran.append((ctx.task, kw)) or {"task": ctx.task})
    engine = make_engine(crashed_run)
    assert engine.unfinished() == ["oc1:create"]
    with pytest.raises(ValueError, match="unfinished"):
        engine.run("crash", "oc1:create", {})
    out = engine.resume("oc1:create")
    assert ran == [("second", {"got": "first"}), ("third", {})]
    assert out["one"] == "first"
    assert engine.unfinished() == []
    engine.forget("oc1:create")
    assert engine.run("crash", "oc1:create", {})["one"] == "first"  # the id is free again


def test_failing_resume_reverts(crashed_run, make_engine, registry):
    reverted = []

    def mark(ctx, **kw):
        if ctx.task == "second":
            raise RuntimeError("still broken")
        return {"task": ctx.task}

    registry.register("t.mark", mark, lambda ctx, result, **kw: reverted.append((ctx.task, result)))
    engine = make_engine(crashed_run)
    with pytest.raises(WorkflowFailed) as info:
        engine.resume("oc1:create")
    assert info.value.task == "second" and info.value.run_id == "oc1:create"
    assert reverted == [("first", {"task": "first"})]  # its result came from the database
    assert engine.unfinished() == []
