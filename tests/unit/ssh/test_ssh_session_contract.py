"""What components need from a box's session is in the BoxSession protocol, so they never
probe a session for attributes: the DataLake's operations ask ``full_package`` and use
``loopback_relay``, which both kinds of session have."""

from __future__ import annotations

import inspect

from overcloud.components import construction, datalake, fabric
from overcloud.underclouds import base
from overcloud.underclouds.local.session import LocalBoxSession
from overcloud.underclouds.ssh.session import RemoteBoxSession


def test_the_protocol_says_where_our_python_runs_and_both_sessions_answer():
    assert "full_package" in base.BoxSession.__annotations__
    assert callable(getattr(base.BoxSession, "loopback_relay", None))
    assert LocalBoxSession.full_package is True and RemoteBoxSession.full_package is False
    wanted = {n for n in dir(base.BoxSession) if not n.startswith("_") and callable(getattr(base.BoxSession, n))}
    missing = [n for n in sorted(wanted) if not callable(getattr(RemoteBoxSession, n, None))]
    assert not missing, missing
    assert callable(LocalBoxSession.loopback_relay)


def test_the_datalake_does_not_probe_the_session():
    assert "getattr(session" not in inspect.getsource(datalake.box_op)


def test_components_ask_the_protocol_where_our_programs_run_never_probe_for_it():
    """The flow agent's command and the artifact fetch come from ``module_command`` and
    ``stage_artifact``, which both kinds of session implement: a local box runs the Tower's
    Python and fetches from the store itself; a remote one runs the bundle's and gets the
    artifact staged on its host."""
    for source in (inspect.getsource(fabric), inspect.getsource(construction)):
        assert "getattr(session" not in source
    assert callable(getattr(base.BoxSession, "module_command", None))
    assert callable(getattr(base.BoxSession, "stage_artifact", None))
    local = LocalBoxSession.__new__(LocalBoxSession)
    assert local.module_command("overcloud.fabric.flowagent", ["--x"])[1:] == ["-m", "overcloud.fabric.flowagent", "--x"]
    assert local.stage_artifact("/nowhere", "0" * 64) is None
