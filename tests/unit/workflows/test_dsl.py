"""Loading and validating workflow YAML; expressions."""

from __future__ import annotations

import textwrap

import pytest

from overcloud.workflows import expressions
from overcloud.workflows.dsl import REQUIRED, RetrySpec, load_definition, load_workflow
from overcloud.workflows.errors import WorkflowDefinitionError

GOOD = textwrap.dedent(
    """\
    version: '2.0'
    create_overcloud:
      type: reverse
      description: demo
      input: [overcloud_id, plan, {size: small}]
      tasks:
        acquire_boxes:
          action: std.noop
          input: {plan: "{{ _.plan }}", overcloud_id: "{{ _.overcloud_id }}"}
          publish: {boxes: "{{ task().result.plan }}"}
          retry: {count: 2, delay: 5}
          timeout: 300
        overlay_network:
          action: std.echo
          requires: [acquire_boxes]
          input: {output: "{{ _.boxes }}"}
    """
)


def wf(tasks: str, header: str = "version: '2.0'\nwf:\n  type: reverse\n  input: [x]\n  tasks:\n") -> str:
    return header + textwrap.indent(textwrap.dedent(tasks), "    ")


def test_load_good_file_from_text_and_path(tmp_path, registry):
    spec = load_workflow(GOOD, registry)
    assert spec.name == "create_overcloud"
    assert spec.description == "demo"
    assert spec.inputs == {"overcloud_id": REQUIRED, "plan": REQUIRED, "size": "small"}
    acquire = spec.tasks["acquire_boxes"]
    assert acquire.action == "std.noop"
    assert acquire.retry == RetrySpec(count=2, delay=5.0)
    assert acquire.timeout == 300.0
    assert acquire.line == 7
    assert acquire.context_refs == {"plan", "overcloud_id"}
    assert spec.tasks["overlay_network"].requires == ["acquire_boxes"]
    assert spec.tasks["overlay_network"].line == 13
    path = tmp_path / "create_overcloud.yaml"
    path.write_text(GOOD)
    assert load_workflow(path).tasks.keys() == spec.tasks.keys()
    assert load_workflow(str(path)).source == str(path)


def test_shipped_definitions_load_without_registry():
    create = load_definition("create_overcloud")
    assert list(create.tasks) == [
        "validate", "acquire_boxes", "overlay_network", "devops_post",
        "clusters", "datalake", "fabric", "register",
    ]
    assert create.tasks["register"].requires == ["datalake", "fabric"]
    assert create.tasks["datalake"].requires == create.tasks["fabric"].requires == ["clusters"]
    delete = load_definition("delete_overcloud")
    assert delete.tasks["reclaim_datalake"].requires == ["preserve_datalake", "remove_fabric"]
    assert delete.tasks["mark_deleted"].action == "overcloud.mark_deleted"


def test_shipped_definitions_are_checked_against_a_registry(registry):
    with pytest.raises(WorkflowDefinitionError, match="unknown action 'overcloud.validate'"):
        load_definition("create_overcloud", registry)


@pytest.mark.parametrize(
    ("tasks", "task", "line", "fragment"),
    [
        ("a: {action: nope.missing}\n", "a", 6, "unknown action 'nope.missing'"),
        ("a: {action: std.noop}\nb: {action: std.noop, requires: [zz]}\n", "b", 7, "requires unknown task 'zz'"),
        ("a: {action: std.noop, bogus: 1}\n", "a", 6, "unknown task key 'bogus'"),
        ("a: {action: std.noop, retry: {count: -1}}\n", "a", 6, "retry count"),
        ("a: {action: std.noop, retry: {count: 1, delay: x}}\n", "a", 6, "retry delay"),
        ("a: {action: std.noop, retry: 3}\n", "a", 6, "'retry' must be"),
        ("a: {action: std.noop, timeout: 0}\n", "a", 6, "'timeout' must be a positive"),
        ("a: {action: std.noop, timeout: soon}\n", "a", 6, "'timeout' must be a positive"),
        ("a: {action: std.noop}\nb:\n  action: std.noop\n  input: {v: '{{ _.ghost }}'}\n", "b", 7, "'_.ghost' is neither"),
        ("a:\n  action: std.noop\n  input: {v: '{{ _.x + }}'}\n", "a", 8, "Jinja syntax error"),
        ("a: {action: std.noop}\n", None, None, None),
    ],
)
def test_rejections_name_task_and_line(registry, tasks, task, line, fragment):
    if fragment is None:
        load_workflow(wf(tasks), registry)
        return
    with pytest.raises(WorkflowDefinitionError) as info:
        load_workflow(wf(tasks), registry)
    message = str(info.value)
    assert fragment in message
    assert f"task '{task}'" in message and f"line {line}" in message
    assert (info.value.task, info.value.line) == (task, line)
    assert isinstance(info.value, ValueError)


def test_line_of_a_bad_key_inside_a_block_task(registry):
    text = wf("a:\n  action: std.noop\n  requires: []\n  timeout: -5\n")
    with pytest.raises(WorkflowDefinitionError, match=r"task 'a', line 9"):
        load_workflow(text, registry)


def test_cycle_names_its_tasks(registry):
    tasks = "a: {action: std.noop, requires: [c]}\nb: {action: std.noop, requires: [a]}\nc: {action: std.noop, requires: [b]}\n"
    with pytest.raises(WorkflowDefinitionError, match="cycle") as info:
        load_workflow(wf(tasks), registry)
    assert all(name in str(info.value) for name in ("a", "b", "c"))
    assert "line" in str(info.value)


def test_cycle_through_data_flow_is_found(registry):
    tasks = (
        "a:\n  action: std.noop\n  input: {v: '{{ _.bv }}'}\n  publish: {av: '{{ result }}'}\n"
        "b:\n  action: std.noop\n  requires: [a]\n  publish: {bv: '{{ result }}'}\n"
    )
    with pytest.raises(WorkflowDefinitionError, match="cycle"):
        load_workflow(wf(tasks), registry)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("version: '1.0'\nwf: {type: reverse, tasks: {a: {action: std.noop}}}\n", "version '2.0'"),
        ("wf: {type: reverse, tasks: {a: {action: std.noop}}}\n", "version '2.0'"),
        ("version: '2.0'\nwf: {type: direct, tasks: {a: {action: std.noop}}}\n", "type: reverse"),
        ("version: '2.0'\nwf: {tasks: {a: {action: std.noop}}}\n", "type: reverse"),
        ("version: '2.0'\nw1: {type: reverse, tasks: {}}\nw2: {type: reverse, tasks: {}}\n", "exactly one workflow"),
        ("version: '2.0'\nwf: {type: reverse, outputs: 1, tasks: {a: {action: std.noop}}}\n", "unknown workflow key"),
        ("version: '2.0'\nwf: [1, 2\n", "invalid YAML"),
    ],
)
def test_workflow_level_rejections(registry, text, fragment):
    with pytest.raises(WorkflowDefinitionError, match="line") as info:
        load_workflow(text, registry)
    assert fragment in str(info.value)


def test_publishing_the_same_name_twice_is_rejected(registry):
    tasks = "a: {action: std.noop, publish: {v: '{{ result }}'}}\nb: {action: std.noop, publish: {v: '{{ result }}'}}\n"
    with pytest.raises(WorkflowDefinitionError, match="already published by task 'a'"):
        load_workflow(wf(tasks), registry)


def test_unknown_actions_are_not_checked_without_registry():
    assert load_workflow(wf("a: {action: any.thing}\n")).tasks["a"].action == "any.thing"


# --- expressions ---------------------------------------------------------------


def test_single_expression_gives_native_value():
    context = {"plan": {"sites": [1, 2]}, "n": 3}
    assert expressions.render("{{ _.plan }}", context) == {"sites": [1, 2]}
    assert expressions.render("  {{ _.n + 1 }} ", context) == 4
    assert expressions.render("{{ _.plan.sites }}", context) == [1, 2]
    assert expressions.render("{{ _['n'] }}", context) == 3


def test_interpolation_renders_a_string_and_nested_values_recurse():
    context = {"id": "oc1", "n": 3}
    value = {"name": "box-{{ _.id }}-{{ _.n }}", "list": ["{{ _.n }}", 7, {"deep": "{{ _.id }}"}], "plain": "x"}
    assert expressions.render(value, context) == {
        "name": "box-oc1-3", "list": [3, 7, {"deep": "oc1"}], "plain": "x",
    }


def test_publish_sees_task_result_and_result():
    out = expressions.render(
        {"a": "{{ task().result.boxes }}", "b": "{{ result.boxes | length }}", "c": "{{ _.id }}"},
        {"id": "oc1"},
        result={"boxes": ["b1", "b2"]},
    )
    assert out == {"a": ["b1", "b2"], "b": 2, "c": "oc1"}


def test_missing_value_at_run_time_is_an_error():
    with pytest.raises(expressions.ExpressionError, match="ghost"):
        expressions.render("{{ _.ghost }}", {})


def test_context_refs_rejects_dynamic_context_use():
    assert expressions.context_refs({"a": ["{{ _.x }}", "{{ _['y'] }}-{{ _.z.w }}"]}) == {"x", "y", "z"}
    with pytest.raises(expressions.ExpressionError):
        expressions.context_refs("{{ _ }}")
    with pytest.raises(expressions.ExpressionError, match="unknown name"):
        expressions.context_refs("{{ plan }}")
