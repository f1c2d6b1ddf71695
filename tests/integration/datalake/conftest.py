"""Fixtures: SeaweedFS instances A, B, C on 127.0.0.1 for the module (see weedlab.py)."""

from __future__ import annotations

import pytest

from weedlab import TIMINGS, AllInOne, Distributed


def _bring_up(cls, name, request):
    inst = cls(name)
    request.addfinalizer(inst.stop)
    try:
        TIMINGS.update({f"{name}.{k}": round(v, 2) for k, v in inst.up().items()})
    except Exception:
        for role in inst.procs:
            print(f"--- {name} {role} output:\n{inst.tail(role)}")
        raise
    return inst


@pytest.fixture(scope="module")
def lake_a(request):
    """A: master + 2 volume servers (replication 001) + filer + s3."""
    return _bring_up(Distributed, "A", request)


@pytest.fixture(scope="module")
def lake_b(request):
    """B: weed server -filer -s3 (the Tower's Construction DataLake)."""
    return _bring_up(AllInOne, "B", request)


@pytest.fixture(scope="module")
def lake_c(request):
    """C: a fresh OverCloud DataLake to restore into (one volume server, replication 000)."""
    inst = Distributed("C", n_volumes=1)
    request.addfinalizer(inst.stop)
    TIMINGS.update({f"C.{k}": round(v, 2) for k, v in inst.up().items()})
    return inst


@pytest.fixture(scope="module", autouse=True)
def _report_timings():
    yield
    if TIMINGS:
        print("\nDataLake measurements:\n" + "\n".join(f"  {k}: {v}" for k, v in sorted(TIMINGS.items())))
