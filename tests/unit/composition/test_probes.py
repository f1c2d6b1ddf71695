"""The probe pool: a probe that hangs holds up neither the others nor the Tower's exit."""

from __future__ import annotations

import threading

import pytest

from overcloud.composition import probes


def test_a_hanging_probe_does_not_hold_up_the_others():
    pool = probes.Pool(2)
    release = threading.Event()
    hanging = pool.submit(lambda: release.wait(30))
    assert pool.submit(lambda: "answered").result(timeout=10) == "answered"
    assert not hanging.done()
    release.set()
    assert hanging.result(timeout=10) is True
    assert all(t.daemon for t in threading.enumerate() if t.name.startswith("probe-"))


def test_a_probe_that_raises_hands_the_error_to_its_reader():
    fut = probes.Pool(1).submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        fut.result(timeout=10)


# -- an exec probe's output is the workload's to choose: the Tower keeps a bounded part ----------
import tracemalloc  # noqa: E402

from overcloud.composition.pattern import Probe  # noqa: E402
from overcloud.limits import PROBE_OUTPUT_BYTES  # noqa: E402


def test_an_exec_probe_that_prints_64_mib_costs_the_tower_little_memory():
    p = Probe(kind="exec", command=["sh", "-c", "head -c 67108864 /dev/zero; echo done >&2"], timeout=30)
    tracemalloc.start()
    try:
        assert probes.run(None, p, lambda cmd: cmd) is True
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 2**20, peak  # all of it captured, as before, was over 64 MiB


def test_run_bounded_keeps_the_head_and_the_exit_code():
    code, head = probes.run_bounded(["sh", "-c", "yes | head -c 1000000; exit 3"], timeout=30)
    assert code == 3 and len(head) == PROBE_OUTPUT_BYTES and head.startswith(b"y\ny\n")
    code, head = probes.run_bounded(["sh", "-c", "echo hello; exec sleep 30"], timeout=0.5)
    assert code is None and head == b"hello\n"  # killed once its time is up
    assert probes.run(None, Probe(kind="exec", command=["false"]), lambda cmd: cmd) is False
