"""One southbound seam (issue 11): components/ and composition/ reach boxes only through the
Southbound and BoxSessions. A cheap check of their source: no import of the Tower, of the local
driver or of the namespace transport; no ``.local`` attribute (the Tower's LocalHost); no
``netns`` in names, and no namespace path or ``ip netns`` command in strings (docstrings and
comments may explain what a local box is)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import overcloud
from overcloud.underclouds import base
from overcloud.underclouds.local import LocalSite
from overcloud.underclouds.local.session import LocalBoxSession

SRC = Path(overcloud.__file__).parent
CHECKED = sorted(p for d in ("components", "composition") for p in (SRC / d).rglob("*.py"))
FORBIDDEN_IMPORTS = ("overcloud.tower", "overcloud.underclouds.local", "overcloud.boxes.netns",
                     "overcloud.boxes.supervision.BoxSupervisor")
NETNS_STRING = re.compile(r"ip\s+(-n\b|netns\b)|/run/netns|/etc/netns|\bsetns\b")


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def leaks(source: str) -> list[str]:
    """What of ``source`` goes around the seam, one line each."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        where = getattr(node, "lineno", "?")
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            names = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            names = []
        for name in names:
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN_IMPORTS) or name == "overcloud" and any(
                    a.name == "tower" for a in getattr(node, "names", [])):
                found.append(f"line {where}: imports {name}")
        if isinstance(node, ast.Attribute) and node.attr == "local":
            found.append(f"line {where}: .local")
        if isinstance(node, ast.Attribute) and "netns" in node.attr.lower():
            found.append(f"line {where}: .{node.attr}")
        if isinstance(node, ast.Name) and "netns" in node.id.lower():
            found.append(f"line {where}: {node.id}")
        if isinstance(node, (ast.FunctionDef, ast.arg)) and "netns" in (getattr(node, "name", None) or node.arg).lower():
            found.append(f"line {where}: defines {getattr(node, 'name', None) or node.arg}")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs \
                and NETNS_STRING.search(node.value):
            found.append(f"line {where}: string {node.value[:60]!r}")
        if isinstance(node, ast.List) and [getattr(e, "value", None) for e in node.elts[:2]] in (["ip", "netns"], ["ip", "-n"]):
            found.append(f"line {where}: argv {[getattr(e, 'value', '?') for e in node.elts]}")
    return found


def test_the_check_finds_what_goes_around_the_seam():
    assert leaks("from overcloud.tower import box_obj")
    assert leaks("from overcloud import tower")
    assert leaks("import overcloud.tower")
    assert leaks("from overcloud.underclouds.local import net")
    assert leaks("from overcloud.boxes.netns import NetnsTransport")
    assert leaks("x = tower.local.supervisor(box)")
    assert leaks("argv = ['ip', 'netns', 'exec', h]")
    assert leaks("argv = 'ip netns exec h'")
    assert leaks("net = f'ns:/run/netns/{h}'")
    assert leaks("def f(netns): pass")
    assert not leaks('"""A local box is a network namespace (ip netns exec runs in it)."""\nx = 1')
    assert not leaks("from overcloud.southbound import Southbound\nsession = sb.session(box)")


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: str(p.relative_to(SRC)))
def test_components_and_composition_reach_boxes_only_through_the_seam(path):
    source = path.read_text()
    found = leaks(source)
    assert not found, f"{path.relative_to(SRC)} goes around the southbound seam:\n" + "\n".join(found)


def test_the_check_sees_every_module():
    names = {str(p.relative_to(SRC)) for p in CHECKED}
    assert {"components/fabric.py", "components/datalake.py", "composition/controller.py",
            "composition/views.py"} <= names


def test_the_local_driver_keeps_the_whole_contract():
    """LocalSite implements every abstract method of the driver, LocalBoxSession every method
    of the BoxSession protocol (and no ``call``: a callable cannot cross SSH)."""
    assert not LocalSite.__abstractmethods__
    wanted = {n for n in dir(base.BoxSession) if not n.startswith("_") and callable(getattr(base.BoxSession, n))}
    assert {"run", "run_module", "put_file", "get_file", "add_program", "remove_programs", "program_states",
            "tcp_check", "connect_tcp", "http", "set_hosts"} <= wanted
    missing = [n for n in wanted if not callable(getattr(LocalBoxSession, n, None))]
    assert not missing, missing
    attributes = set(base.BoxSession.__annotations__) - {"box"}
    assert {"box_dir", "log_dir", "etc_dir", "container_network", "owner_id"} <= attributes
    for name in attributes:  # properties of the class, or set by its __init__
        assert hasattr(LocalBoxSession, name) or f"self.{name} =" in Path(base.__file__).with_name("local").joinpath(
            "session.py").read_text(), name
    assert not hasattr(base.BoxSession, "call") and not hasattr(LocalBoxSession, "call")
