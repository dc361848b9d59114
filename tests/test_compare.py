"""The peer comparison: the generic evaluators and the SciPy experts against the float64
reference on every shipped problem, and one tiny end-to-end comparison."""

from __future__ import annotations

import json
import re
import statistics

import numpy as np
import pytest
import sympy as sp

from autotune import compare as cmp
from autotune.errors import AutotuneError
from autotune.instances import random_instance
from autotune.reference import evaluate_reference, tolerance
from autotune.spec import Problem, load_problem

SHIPPED = ("kalman", "gls", "tikhonov", "mmse", "enkf")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def instances():
    """problem name -> (problem, dims, inputs in declared order, reference, tolerance)."""
    from conftest import small_dims

    out = {}
    for name in SHIPPED:
        problem = load_problem(name)
        dims = problem.resolve_dims(small_dims(problem))
        values = random_instance(problem, dims, seed=3)
        ref = evaluate_reference(problem, values, dims)
        tol = tolerance("float64", ref.condition, max(dims.values()))
        out[name] = (problem, dims, [values[n] for n in problem.inputs], ref, tol)
    return out


def _check(fn, case) -> float:
    problem, _, args, ref, tol = case
    outs = fn(*args)
    assert len(outs) == len(problem.outputs)
    for name, o in zip(problem.outputs, outs, strict=True):
        assert np.shape(o) == ref.outputs[name].shape, name
    err = cmp.max_relative_error(outs, ref.outputs, list(problem.outputs))
    assert err <= tol, f"relative error {err:.2e} > {tol:.1e}"
    return err


@pytest.mark.parametrize("style", ["inv", "solve"])
@pytest.mark.parametrize("name", SHIPPED)
def test_numpy_evaluators_match_the_reference(instances, name, style):
    problem, dims, *_ = instances[name]
    _check(cmp.build_numpy(problem, dims, style), instances[name])


@pytest.mark.parametrize("name", SHIPPED)
def test_every_scipy_expert_matches_the_reference(instances, name):
    problem, *_ = instances[name]
    _check(cmp.expert_function(problem), instances[name])


def test_every_shipped_problem_has_an_expert():
    assert set(SHIPPED) <= set(cmp.EXPERTS)
    n = sp.Symbol("n", integer=True, positive=True)
    a = sp.MatrixSymbol("A", n, n)
    other = Problem.from_sympy({"y": a.T * a}, dims={n: 3}, name="other")
    with pytest.raises(KeyError, match="no SciPy expert"):
        cmp.expert_function(other)
    # the generic evaluators take any problem
    x = np.arange(9.0).reshape(3, 3)
    (y,) = cmp.build_numpy(other, {"n": 3})(x)
    np.testing.assert_allclose(y, x.T @ x)


@pytest.mark.skipif(not cmp.jax_available(), reason="jax is not installed")
@pytest.mark.parametrize("name", SHIPPED)
def test_jax_evaluator_matches_the_reference(instances, name):
    problem, dims, *_ = instances[name]
    _check(cmp.build_jax(problem, dims), instances[name])


def test_as_written_inverts_explicitly_and_solve_variant_does_not(instances, monkeypatch):
    problem, dims, args, *_ = instances["kalman"]
    calls = {"inv": 0, "solve": 0}
    inv, solve = np.linalg.inv, np.linalg.solve

    def counting_inv(a):
        calls["inv"] += 1
        return inv(a)

    def counting_solve(a, b):
        calls["solve"] += 1
        return solve(a, b)

    monkeypatch.setattr(np.linalg, "inv", counting_inv)
    monkeypatch.setattr(np.linalg, "solve", counting_solve)
    cmp.build_numpy(problem, dims, "inv")(*args)
    # nothing shared: S = R + H Sigma H' is inverted once per output
    assert calls == {"inv": 2, "solve": 0}
    calls.update(inv=0, solve=0)
    cmp.build_numpy(problem, dims, "solve")(*args)
    assert calls == {"inv": 0, "solve": 2}


def test_bad_arguments():
    with pytest.raises(ValueError, match="style"):
        cmp.build_numpy(load_problem("kalman"), {"n": 4}, "qr")
    with pytest.raises(ValueError, match="unknown variant"):
        cmp.compare([("kalman", {"n": 8})], variants=["numpy", "fortran"])
    with pytest.raises(ValueError, match="at least 3"):
        cmp.compare([("kalman", {"n": 8})], repeats=2)


@pytest.mark.slow
def test_quick_comparison_writes_every_row_and_a_plot(tmp_path, capsys):
    """Kalman n=64 end to end: a tuning run with a tiny budget, every variant measured
    interleaved and checked, BENCHMARKS.md / benchmarks.json / benchmarks.png written."""
    res = cmp.compare([("kalman", {"n": 64})], out=tmp_path, trials=3, tune_timeout=30,
                      quick=True, quiet=True, dgemm_n=256)
    md = (tmp_path / "BENCHMARKS.md").read_text()
    assert (tmp_path / "benchmarks.png").read_bytes()[:8] == PNG_MAGIC
    assert "AMD" in md or "Intel" in md or "CPU:" in md
    assert "## kalman n=64, k=32" in md
    timed = re.compile(r"^\| \**(?P<label>[^|*]+?)\** \| \d+(\.\d+)? (µs|ms|s) \|")
    rows = {m["label"] for m in map(timed.match, md.splitlines()) if m}
    for label in [*cmp.VARIANTS.values(), cmp.LIMIT_LABEL]:
        if label == cmp.VARIANTS["jax"] and not cmp.jax_available():
            continue
        assert label in rows, f"no timed row for {label!r} in\n{md}"
    (case,) = res["cases"]
    assert case["plan"].endswith("(tuned now)")
    for key, v in case["variants"].items():
        if key == "jax" and not cmp.jax_available():
            assert not v["ok"] and v.get("message"), v  # a row that says why, not a crash
            continue
        assert v["ok"] and len(v["samples"]) == 3, (key, v)
        assert v["error"] <= case["tolerance"], (key, v)
    assert case["limit_s"] and case["flops"]
    # the limit: the fewest FLOPs of any candidate at the DGEMM rate of the case's own rounds
    assert len(case["dgemm_samples"]) == 3
    # the least disturbed round's rate (or a re-measured one, never lower)
    rate = 2.0 * 256**3 / min(case["dgemm_samples"])
    assert case["dgemm_gflops"] * 1e9 >= rate * (1 - 1e-9)
    fewest = min(case["flops"], case["min_flops"])
    assert case["limit_s"] == pytest.approx(fewest / (case["dgemm_gflops"] * 1e9))
    # never an impossible figure: the plan is not faster than its limit
    plan_median = statistics.median(case["variants"]["plan"]["samples"])
    assert plan_median >= case["limit_s"]
    from autotune.derivation import derive
    from autotune.space import named_point

    kalman = load_problem("kalman")
    assert case["min_flops"] == pytest.approx(
        derive(kalman, named_point(kalman, "flop-optimal", case["dims"]), case["dims"])
        .flops(case["dims"]))
    assert res["heap"] in ("retain", "system") and "heap policy" in md
    saved = json.loads((tmp_path / "benchmarks.json").read_text())
    assert saved["cases"][0]["dims"] == {"n": 64, "k": 32}
    row = cmp.headline(tmp_path)  # from the folder's benchmarks.json
    assert row["dims"] == {"n": 64, "k": 32}  # n = 4000 absent: the largest Kalman case
    assert set(row["times"]) == {"numpy", "naive", "scipy", "plan", "limit"}
    assert all(t and t > 0 for t in row["times"].values())
    table = cmp.format_headline(row)
    assert table.count("\n") == 2 and "SciPy expert" in table and "physical limit" in table


@pytest.mark.slow
def test_command_line_without_a_tuning_budget_uses_flop_optimal(tmp_path, capsys):
    code = cmp.main(["--quick", "--out", str(tmp_path), "--case", "tikhonov:n=24",
                     "--trials", "0", "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert str(tmp_path / "BENCHMARKS.md") in printed
    md = (tmp_path / "BENCHMARKS.md").read_text()
    assert "flop-optimal (no plan" in md and "## tikhonov n=24, m=48" in md
    with pytest.raises(AutotuneError, match="no kalman case"):
        cmp.headline(tmp_path)
    with pytest.raises(SystemExit) as exc:  # a malformed --case is a usage error
        cmp.main(["--case", "kalman:n=x"])
    assert exc.value.code == 2
