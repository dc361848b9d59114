"""The asv suite (``asv.conf.json``, ``benchmarks/``) is valid: ``asv check`` passes, and
one small case of each benchmark class runs in this process."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(importlib.util.find_spec("asv") is None,
                                reason="asv is not installed (pip install asv)")


def test_asv_check():
    res = subprocess.run([sys.executable, "-m", "asv", "check", "--python=same"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "No problems found" in out, out


@pytest.fixture(scope="module")
def suite():
    sys.path.insert(0, str(REPO))
    try:
        from benchmarks import benchmarks, common
    finally:
        sys.path.remove(str(REPO))
    return benchmarks, common


def test_cases_cover_every_shipped_problem(suite):
    _, common = suite
    assert {p for p, _ in common.CASES} == set(common.PROBLEMS)
    assert set(common.PROBLEMS) == {p.stem for p in (REPO / "search_spaces").glob("*.toml")}


def test_one_case_of_each_class_runs(suite, monkeypatch):
    benchmarks, common = suite
    monkeypatch.setattr(common, "CASES", {("tikhonov", "small"): {"n": 24}})
    cache = benchmarks.Plan().setup_cache()
    import pickle

    cache = pickle.loads(pickle.dumps(cache))  # asv stores it on disk
    args = (cache, "tikhonov", "small")
    plan = benchmarks.Plan()
    plan.setup(*args)
    plan.time_plan(*args)
    plan.peakmem_plan(*args)
    assert plan.track_accuracy(*args) < 1e-10
    plan.teardown(*args)
    base = benchmarks.Baselines()
    base.setup(*args)
    for name in ("time_naive", "time_numpy_as_written", "time_scipy_expert"):
        getattr(base, name)(*args)
    base.teardown(*args)
    speed = benchmarks.Speedup()
    speed.setup(*args)
    assert speed.track_speedup_over_naive(*args) > 0
    speed.teardown(*args)
    assert benchmarks.Speedup.track_speedup_over_naive.unit == "ratio"
    with pytest.raises(NotImplementedError):  # asv reports a skipped combination as n/a
        benchmarks.Plan().setup(cache, "gls", "medium")
