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


def _host_session(tmp_path):
    """A local box's session whose exec probes run on its host (``on_host``), as Podman's do."""
    from types import SimpleNamespace

    from overcloud.boxes.cgroups import Cgroups
    from overcloud.underclouds.base import FLAVORS, Box
    from overcloud.underclouds.local.session import LocalBoxSession

    host = SimpleNamespace(boxes_dir=tmp_path, cgroups=Cgroups(), tower_id="t")
    return LocalBoxSession(host, Box("0" * 32, "c1", "cluster", "local-a", FLAVORS["small"], "oc-00000000-c1", "10.0.0.2"))


def test_an_exec_probe_that_prints_64_mib_costs_the_tower_little_memory(tmp_path):
    p = Probe(kind="exec", command=["sh", "-c", "head -c 67108864 /dev/zero; echo done >&2"], timeout=30)
    session = _host_session(tmp_path)
    tracemalloc.start()
    try:
        assert probes.run(session, p, lambda cmd: cmd, on_host=True) is True
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 2**20, peak  # all of it captured, as before, was over 64 MiB


def test_run_bounded_keeps_the_head_and_the_exit_code(tmp_path):
    code, head = probes.run_bounded(["sh", "-c", "yes | head -c 1000000; exit 3"], timeout=30)
    assert code == 3 and len(head) == PROBE_OUTPUT_BYTES and head.startswith(b"y\ny\n")
    code, head = probes.run_bounded(["sh", "-c", "echo hello; exec sleep 30"], timeout=0.5)
    assert code is None and head == b"hello\n"  # killed once its time is up
    assert probes.run(_host_session(tmp_path), Probe(kind="exec", command=["false"]), lambda cmd: cmd, on_host=True) is False


def test_listening_ports_reads_listen_rows_only():
    text = ("  sl  local_address rem_address   st tx_queue rx_queue\n"
            "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000\n"
            "   1: 0100007F:1F91 0100007F:9C40 01 00000000:00000000\n"
            "   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 0\n")
    assert probes.parse_listening(text) == {8080, 80}
