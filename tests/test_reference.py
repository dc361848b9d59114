"""The float64 reference against direct NumPy evaluations with explicit inverses, and the
accuracy measures (relative_error, tolerance)."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.linalg import inv

from autotune.instances import random_instance
from autotune.reference import evaluate_reference, relative_error, tolerance
from autotune.spec import load_problem, parse_problem

RTOL = 1e-10


def _direct(name, v):
    if name == "kalman":
        S = v["R"] + v["H"] @ v["Sigma"] @ v["H"].T
        K = v["Sigma"] @ v["H"].T @ inv(S)
        return {
            "newmu": v["mu"] + K @ (v["H"] @ v["mu"] - v["data"]),
            "newSigma": v["Sigma"] - K @ v["H"] @ v["Sigma"],
        }
    if name == "gls":
        Mi = inv(v["M"])
        X = v["X"]
        return {"b": inv(X.T @ Mi @ X) @ X.T @ Mi @ v["y"]}
    if name == "mmse":
        Ni = inv(v["N"])
        H = v["H"]
        P = H.T @ Ni @ H + inv(v["C"])
        return {"x": inv(P) @ H.T @ Ni @ v["y"], "cov": inv(P)}
    if name == "tikhonov":
        A = v["A"]
        return {"x": inv(A.T @ A + v["lam"] * np.eye(A.shape[1])) @ A.T @ v["b"]}
    if name == "enkf":
        X, H = v["X"], v["H"]
        HX = H @ X
        return {"Xa": X + X @ HX.T @ inv(HX @ HX.T + v["R"]) @ (v["D"] - HX)}
    raise KeyError(name)


CASES = [
    ("kalman", {"n": 12}),
    ("kalman", {"n": 9, "k": 5}),
    ("kalman", {"n": 40}),
    ("gls", {"n": 40}),
    ("gls", {"n": 24, "m": 7}),
    ("mmse", {"n": 10}),
    ("tikhonov", {"n": 10}),
    ("enkf", {"n": 24, "N": 7}),
]


@pytest.mark.parametrize(
    "name,dims", CASES, ids=[f"{n}-{'-'.join(map(str, d.values()))}" for n, d in CASES]
)
@pytest.mark.parametrize("seed", [0, 1])
def test_reference_equals_direct_numpy(name, dims, seed):
    p = load_problem(name)
    resolved = p.resolve_dims(dims)
    inst = random_instance(p, resolved, seed=seed)
    ref = evaluate_reference(p, inst, resolved)
    direct = _direct(name, inst)
    assert set(ref.outputs) == set(direct)
    for out, want in direct.items():
        got = ref.outputs[out]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * np.abs(want).max())
        assert relative_error(got, want) < RTOL


def test_reference_reports_conditioning(kalman):
    dims = {"n": 12, "k": 6}
    inst = random_instance(kalman, dims, seed=0)
    ref = evaluate_reference(kalman, inst, dims)
    S = inst["R"] + inst["H"] @ inst["Sigma"] @ inst["H"].T
    true_cond = np.linalg.cond(S, 1)
    assert len(ref.conditions) == 1
    assert ref.condition == max(ref.conditions.values())
    assert true_cond / 10 <= ref.condition <= true_cond * 10  # gecon is an estimate
    # an ill-conditioned instance is reported as such
    bad = dict(inst)
    w, V = np.linalg.eigh(inst["R"])
    bad["R"] = V @ np.diag(np.geomspace(1e-9, 1.0, len(w))) @ V.T
    bad["H"] = inst["H"] * 1e-6
    assert evaluate_reference(kalman, bad, dims).condition > 1e6


def test_reference_scalar_and_identity():
    p = parse_problem(
        '[dims]\nn = 4\n[inputs]\nA = { shape = ["n", "n"], properties = ["spd"] }\n'
        'a = { shape = [], properties = ["positive"] }\n'
        '[outputs]\ny = "inv(A + a*eye(n))*A/2 - A.T"\ns = "(a*a + 1)*A"\n',
        origin="t.toml",
    )
    inst = random_instance(p, seed=4)
    ref = evaluate_reference(p, inst)
    A, a = inst["A"], inst["a"]
    np.testing.assert_allclose(ref.outputs["y"], inv(A + a * np.eye(4)) @ A / 2 - A.T, rtol=RTOL)
    np.testing.assert_allclose(ref.outputs["s"], (a * a + 1) * A, rtol=1e-14)


def test_relative_error():
    ref = np.array([[3.0, 4.0]])
    assert relative_error(ref, ref) == 0.0
    assert relative_error(ref * (1 + 1e-8), ref) == pytest.approx(1e-8, rel=1e-6)
    assert relative_error(np.array([[3.0, 4.0 + 5.0]]), ref) == pytest.approx(1.0)
    assert relative_error(np.array([[np.nan, 4.0]]), ref) == float("inf")
    assert relative_error(np.array([[np.inf, 4.0]]), ref) == float("inf")
    assert relative_error(np.array([[-np.inf, 4.0]]), ref) == float("inf")
    assert relative_error(np.array([3.0, 4.0]), ref) == float("inf")  # wrong shape
    assert relative_error(np.zeros((1, 2)), np.zeros((1, 2))) == 0.0
    assert relative_error(np.full((1, 2), 1e-3), np.zeros((1, 2))) == pytest.approx(
        np.sqrt(2) * 1e-3
    )
    assert relative_error([[3.0, 4.0]], ref) == 0.0  # lists are accepted
    assert relative_error(ref.astype(np.float32), ref) < 1e-6


def test_tolerance_grows_with_condition_number():
    tols = [tolerance("float64", c, 1000) for c in (1.0, 10.0, 1e3, 1e6)]
    assert tols == sorted(tols) and len(set(tols)) == len(tols)
    assert tols[1] == pytest.approx(10 * tols[0])
    assert tolerance("float64", 0.1, 1000) == tols[0]  # condition below 1 counts as 1
    assert tolerance("float64", 1e30, 1000) == 0.5  # capped
    assert tolerance("float64", np.inf, 1000) == 0.5


def test_tolerance_grows_with_size_and_precision():
    assert tolerance("float64", 10.0, 100) < tolerance("float64", 10.0, 10_000)
    assert tolerance("float64", 10.0, 100) == pytest.approx(
        100 * np.finfo(np.float64).eps * 10 * 10
    )
    assert tolerance("float32", 10.0, 100) > 1e7 * tolerance("float64", 10.0, 100)
    assert tolerance("float64", 1.0, 0) == tolerance("float64", 1.0, 1)


def test_accurate_enough_candidate_passes(kalman):
    """The intended use: a float32 evaluation of a well-conditioned instance is within
    tolerance; a wrong answer is not."""
    dims = {"n": 20}
    inst = random_instance(kalman, dims, seed=2)
    ref = evaluate_reference(kalman, inst, dims)
    inst32 = {k: np.asarray(v, dtype=np.float32) for k, v in inst.items()}
    got = _direct("kalman", inst32)
    for out, value in got.items():
        tol = tolerance("float32", ref.condition, 20)
        assert relative_error(value, ref.outputs[out]) < tol
        assert relative_error(value * 1.1, ref.outputs[out]) > tol
