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
