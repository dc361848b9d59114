"""The banded solve: a matrix with a narrow band that a formula inverts is solved in band
storage (``band_solve``), built from its terms' factors, never formed densely nor factorized
as a dense matrix. Checked structurally (the derived program, the compiled graph) and
numerically against the float64 reference (SPD Cholesky, general LU, a solve from the right,
a factor that is itself a sum)."""

from __future__ import annotations

import numpy as np
import pytensor
import pytest

from autotune.derivation import derive
from autotune.instances import random_instance
from autotune.kernels.banded import narrow_band
from autotune.knobs import knob_space
from autotune.lower import lower
from autotune.pinned import kernel_counts
from autotune.reference import evaluate_reference, relative_error, tolerance
from autotune.space import named_point
from autotune.spec import load_problem, parse_problem
from autotune.targets import compile_function

DENSE_SOLVES = {"cholesky", "trsolve", "solve", "cho_solve", "inv", "spd_inv", "syrk", "matmul"}


def _ops(program):
    return [program.steps[i].op for i in program.live_steps()]


def _check(problem, dims, knobs, seed=0):
    program = derive(problem, knobs, dims)
    inputs, outputs = lower(problem, program, dims)
    fn = compile_function("numba-t1", inputs, outputs)
    inst = random_instance(problem, dims, seed=seed)
    ref = evaluate_reference(problem, inst, dims)
    got = fn(*[inst[n] for n in problem.inputs])
    tol = tolerance("float64", ref.condition, max(dims.values()))
    for name, value in zip(problem.outputs, got, strict=True):
        assert relative_error(value, ref.outputs[name]) <= tol, name
    return program, fn


@pytest.mark.parametrize("name", ["whittaker", "adi_heat"])
def test_shipped_banded_problems_solve_in_band_storage_at_full_size(name):
    """At the default n = 4000: the banded solver is offered first, and its program reads the
    inputs' bands directly (no dense D'D, no dense factorization): FLOPs fall from O(n^3)."""
    p = load_problem(name)
    dims = p.resolve_dims()
    space = knob_space(p, dims)
    assert space["solver.inv1"][0] == "banded"
    best = named_point(p, "flop-optimal", dims)
    assert best["solver.inv1"] == "banded"
    program = derive(p, best, dims)
    ops = _ops(program)
    assert ops.count("band_solve") == 1 and not DENSE_SOLVES & set(ops)
    step = next(program.steps[i] for i in program.live_steps()
                if program.steps[i].op == "band_solve")
    # every factor of the matrix is an input read in place
    factors = {program.steps[step.args[i]].op for _, _, fs in step.attr("terms")
               for i, *_ in fs}
    assert factors == {"input"}
    assert step.attr("spd") is True
    dense = derive(p, {**best, "solver.inv1": "cholesky_split"}, dims)
    assert program.flops(dims) * 100 < dense.flops(dims)


def test_whittaker_band_solve_matches_the_reference_and_compiles_to_the_band_op():
    p = load_problem("whittaker")
    dims = p.resolve_dims({"n": 60})
    program, fn = _check(p, dims, {**named_point(p, "flop-optimal", dims),
                                   "solver.inv1": "banded"})
    counts = kernel_counts(fn)
    assert counts.get("BandSolve") == 1
    assert not {"Cholesky", "SolveTriangular", "Solve", "CholeskySolve"} & set(counts)


GENERAL = """
[problem]
name = "banded_general"
[dims]
n = 40
[inputs]
A = { shape = ["n", "n"], bandwidth = [1, 2] }
S = { shape = ["n", "n"], properties = ["tridiagonal"] }
G = { shape = ["n", "n"], properties = ["diagonal", "positive_definite"] }
B = { shape = ["n", 3] }
C = { shape = [3, "n"] }
r = { shape = [] }
[outputs]
X = "inv(eye(n) + r*A.T)*B"
Y = "C*inv(eye(n) + r*A)"
Z = "inv(3*eye(n) + (S + A)*S + inv(G)*S)*B"
"""


def test_general_right_side_and_computed_factors():
    """LU for a nonsymmetric band, a solve from the right (the transposed terms), and a factor
    that is computed (inv(G), diagonal), then read as a band."""
    p = parse_problem(GENERAL)
    dims = p.resolve_dims()
    space = knob_space(p, dims)
    labels = [k for k in space if k.startswith("solver.") and space[k][0] == "banded"]
    # inv(G) is diagonal: its own solve, no banded one
    assert len(labels) == 3 and sum(k.startswith("solver.") for k in space) == 4
    knobs = {**named_point(p, "flop-optimal", dims), **{k: "banded" for k in labels}}
    program, _ = _check(p, dims, knobs, seed=1)
    steps = [program.steps[i] for i in program.live_steps()
             if program.steps[i].op == "band_solve"]
    assert len(steps) == 3 and not any(s.attr("spd") for s in steps)
    # X and Y both solve with I + r A.T (Y from the right: the transposed terms), Z with a band
    # of (1 + 1, 2 + 1) from (S + A) S
    assert sorted((s.attr("lower"), s.attr("upper")) for s in steps) == [(2, 1), (2, 1), (2, 3)]
    factors = [program.steps[s.args[i]].op for s in steps for _, _, fs in s.attr("terms")
               for i, *_ in fs]
    assert set(factors) - {"input"}  # inv(G), computed, then read as a band


def test_a_failed_band_factorization_is_nan_not_a_wrong_number():
    from autotune.kernels.band_solve_ops import BandSolve

    a = pytensor.tensor.matrix("a")
    b = pytensor.tensor.matrix("b")
    terms = ((1.0, (), ((0, False, 1, 1),)),)
    spd = pytensor.function([a, b], BandSolve(terms, 1, 1, spd=True)(a, b))
    lu = pytensor.function([a, b], BandSolve(terms, 1, 1, spd=False)(a, b))
    indefinite = np.diag([1.0, -1.0, 2.0, 3.0])
    rhs = np.ones((4, 2))
    assert np.isnan(spd(indefinite, rhs)).all()
    np.testing.assert_allclose(lu(indefinite, rhs), np.linalg.solve(indefinite, rhs))
    assert np.isnan(lu(np.zeros((4, 4)), rhs)).all()


def test_narrow_band_rule():
    assert narrow_band((2, 2), 20) and not narrow_band((2, 2), 19)
    assert not narrow_band(None, 4000)
