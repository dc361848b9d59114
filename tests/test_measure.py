"""Measuring candidates: verification before timing, and failures as recorded outcomes."""

from __future__ import annotations

import threading
import time

import pytest

from autotune.measure import Job, Measurement, TimingPolicy, Worker, measure_in_process
from autotune.space import named_point
from autotune.spec import load_problem

DIMS = {"n": 40, "k": 20}


@pytest.fixture(scope="module")
def kalman():
    return load_problem("kalman")


def _job(p, name="flop-optimal", **kw):
    return Job(p.source, p.origin, DIMS, named_point(p, name, DIMS), "numba-t1", **kw)


def test_ok_measurement_is_verified_and_timed(kalman):
    m = measure_in_process(_job(kalman, policy=TimingPolicy(min_repeats=3, max_repeats=5)))
    assert m.status == "ok", m.message
    assert 3 <= len(m.samples) <= 5 and m.median > 0 and m.compile_s > 0
    assert set(m.errors) == {"newmu", "newSigma"}
    assert max(m.errors.values()) < m.tolerance < 1e-8
    assert Measurement.from_json(m.to_json()) == m


def test_inaccurate_candidate_is_rejected_with_its_error(kalman, monkeypatch):
    import autotune.reference

    monkeypatch.setattr(autotune.reference, "tolerance", lambda *a: 1e-30)
    m = measure_in_process(_job(kalman, "naive"))
    assert m.status == "inaccurate"
    assert m.samples == ()  # never timed
    assert max(m.errors.values()) > 1e-30 and "tolerance" in m.message


def test_clearly_slower_candidate_stops_early(kalman):
    m = measure_in_process(_job(kalman, "naive", best_so_far=1e-9))
    assert m.status == "slow" and len(m.samples) == 1


def test_invalid_knobs_are_a_recorded_failure(kalman):
    job = Job(kalman.source, kalman.origin, DIMS, {"blocks.n": 7}, "numba-t1")
    m = measure_in_process(job)
    assert m.status == "compile_error" and "blocks.n" in m.message


def test_unavailable_target_is_a_recorded_failure(kalman):
    job = Job(kalman.source, kalman.origin, DIMS, named_point(kalman, "naive", DIMS), "c-t1")
    from autotune.targets import BACKENDS

    if BACKENDS["c"].available()[0]:
        pytest.skip("the C backend is available here")
    m = measure_in_process(job)
    assert m.status == "compile_error" and "c" in m.message.lower()


def test_worker_survives_timeouts_and_crashes(kalman):
    with Worker(timeout=120) as w:
        m = w.measure(_job(kalman), timeout=0.001)
        assert m.status == "timeout"
        ok = w.measure(_job(kalman))  # a fresh worker takes over
        assert ok.status == "ok"
        # kill the worker in the middle of a measurement: a recorded crash, not an exception
        slow = _job(kalman, "naive", policy=TimingPolicy(min_repeats=10**8, max_repeats=10**8,
                                                         max_seconds=60, rel_iqr=0))
        killer = threading.Timer(1.0, lambda: w._proc.kill())
        killer.start()
        t = time.monotonic()
        m = w.measure(slow)
        killer.cancel()
        assert m.status == "crashed" and "died" in m.message
        assert time.monotonic() - t < 60
        assert w.measure(_job(kalman)).status == "ok"


def test_dgemm_rate_is_positive():
    with Worker(timeout=60) as w:
        assert w.dgemm_rate(200, "numba-t1") > 1e8


def test_candidates_that_compile_to_one_graph_are_measured_once(kalman):
    """cut.n does nothing unblocked: both settings compile to one graph, timed once."""
    knobs = named_point(kalman, "flop-optimal", DIMS)
    same = {**knobs, "cut.n": 0.25}
    policy = TimingPolicy(min_repeats=3, max_repeats=3)
    first = measure_in_process(Job(kalman.source, kalman.origin, DIMS, knobs, "numba-t1",
                                   policy=policy, reuse_graph=True, seed=5))
    second = measure_in_process(Job(kalman.source, kalman.origin, DIMS, same, "numba-t1",
                                    policy=policy, reuse_graph=True, seed=5))
    assert first.ok and first.graph
    assert second.graph == first.graph and second.samples == first.samples
    assert "measured once" in second.message
    other = measure_in_process(Job(kalman.source, kalman.origin, DIMS,
                                   {**knobs, "solver.S": "lu"}, "numba-t1", policy=policy,
                                   reuse_graph=True, seed=5))
    assert other.graph != first.graph and "measured once" not in other.message


@pytest.mark.parametrize("variant", ["numpy", "pytensor"])
def test_baseline_variants_are_verified_and_timed(kalman, variant):
    m = measure_in_process(_job(kalman, "naive", variant=variant,
                                policy=TimingPolicy(min_repeats=2, max_repeats=2)))
    assert m.ok, m.message
    assert max(m.errors.values()) < m.tolerance
    assert m.flops > 0
