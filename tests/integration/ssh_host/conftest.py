"""The host side as a remote host runs it, on this machine: the bundle built from the venv,
installed by hostprep into a temporary host root, run by Debian's /usr/bin/python3 with an
empty environment and no venv (the runner below stands in for the SSH transport's ``run``)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from hostslab import hosts_lab  # noqa: F401 - the session fixture (simulated remote hosts)

from overcloud.underclouds.ssh import bundle, hostprep

CLEAN_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


class LocalRunner:
    """``run(argv, input=None)`` on this machine, as a host would run it over SSH: no
    environment from the test process (no PYTHONPATH, no VIRTUAL_ENV), in an empty dir."""

    def __init__(self, cwd: Path, prefix: list[str] | None = None):
        self.cwd = cwd
        self.prefix = list(prefix or [])
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str], input: bytes | None = None, timeout: float = 120):
        self.calls.append(list(argv))
        return subprocess.run([*self.prefix, *argv], input=input, capture_output=True, env=dict(CLEAN_ENV),
                              cwd=self.cwd, timeout=timeout)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> bundle.Artifact:
    t0 = time.perf_counter()
    art = bundle.host_bundle(tmp_path_factory.mktemp("bundle-cache"))
    print(f"\nhost bundle: build {time.perf_counter() - t0:.3f}s, {art.path.stat().st_size / 1e6:.2f} MB")
    return art


@pytest.fixture(scope="module")
def make_runner():
    """LocalRunner(cwd, prefix) for tests that wrap commands (a private mount namespace):
    handed out as a fixture, since ``import conftest`` may find another directory's conftest."""
    return LocalRunner


@pytest.fixture(scope="module")
def runner(tmp_path_factory) -> LocalRunner:
    return LocalRunner(tmp_path_factory.mktemp("cwd"))


def run_agent(runner: LocalRunner, installed: str, op: str, req: dict | bytes | None = None,
              timeout: float = 120) -> tuple[int, dict, str]:
    """One agent op: (exit status, its JSON answer, its stderr)."""
    data = req if isinstance(req, bytes) else json.dumps(req or {}).encode()
    r = runner(hostprep.agent_command(installed, op), input=data, timeout=timeout)
    out = r.stdout.decode()
    try:
        answer = json.loads(out)
    except ValueError:
        raise AssertionError(f"agent {op} did not answer JSON (exit {r.returncode}): {out[-500:]} {r.stderr.decode()[-2000:]}")
    return r.returncode, answer, r.stderr.decode()


@pytest.fixture(scope="module")
def agent():
    """run_agent(runner, installed path, op, request) for the tests."""
    return run_agent
