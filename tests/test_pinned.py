"""The compiled graph is the candidate: structural assertions on pinned compiles.

For every named point of every shipped problem, and a sample of candidates (each kernel of
each inverted matrix, cse on and off), the PyTensor graph compiled for the candidate holds
exactly the kernels its derived program states: its inverses stay inverses, its Cholesky
factors and triangular solves stay what they are, duplicates are not merged. PyTensor's
own rewrites (``rewrites="pytensor"``) re-decide them: a separate baseline.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import small_dims

from autotune.derivation import derive
from autotune.instances import random_instance
from autotune.lower import lower
from autotune.pinned import (
    PROGRAM_KERNELS,
    REQUIRED_EXCLUSIONS,
    excluded_rewrites,
    graph_fingerprint,
    kernel_counts,
    pinned_mode,
    program_kernel_counts,
)
from autotune.reference import evaluate_reference, relative_error
from autotune.space import NAMED_POINTS, knob_space, named_point
from autotune.spec import load_problem, problem_names
from autotune.targets import compile_function

TARGET = "numba-t1"


def _compile(problem, knobs, dims, rewrites="chosen"):
    program = derive(problem, knobs, dims)
    inputs, outputs = lower(problem, program, dims)
    return program, compile_function(TARGET, inputs, outputs, rewrites=rewrites)


def _kernels(counts):
    """The kernel ops among a compiled graph's nodes: every op the registry names."""
    names = set(PROGRAM_KERNELS.values())
    return {k: v for k, v in counts.items() if k in names}


def _candidates():
    """(problem, label, knobs) for the named points and one candidate per kernel choice."""
    out = []
    for name in problem_names():
        problem = load_problem(name)
        dims = problem.resolve_dims(small_dims(problem))
        for point in NAMED_POINTS:
            out.append(pytest.param(name, point, id=f"{name}-{point}"))
        space = knob_space(problem, dims)
        for key in (k for k in space if k.startswith("solver.")):
            for value in space[key]:
                out.append(pytest.param(name, (key, value), id=f"{name}-{key}={value}"))
        out.append(pytest.param(name, ("cse", False), id=f"{name}-cse=False"))
    return out


def _knobs(problem, dims, point):
    if isinstance(point, str):
        return named_point(problem, point, dims)
    key, value = point
    return {**named_point(problem, "flop-optimal", dims), key: value}


@pytest.mark.parametrize(("name", "point"), _candidates())
def test_compiled_graph_holds_the_chosen_kernels(name, point):
    problem = load_problem(name)
    dims = problem.resolve_dims(small_dims(problem))
    program, fn = _compile(problem, _knobs(problem, dims, point), dims)
    expected = dict(program_kernel_counts(program))
    assert _kernels(kernel_counts(fn)) == expected


@pytest.mark.parametrize("name", problem_names())
def test_pinned_naive_point_keeps_explicit_inverses_and_duplicates(name):
    """The formula as written: one explicit inverse per ``inv()`` occurrence, nothing shared
    (the count the derivation states), and it still computes the right numbers."""
    problem = load_problem(name)
    dims = problem.resolve_dims(small_dims(problem))
    program, fn = _compile(problem, named_point(problem, "naive", dims), dims)
    counts = kernel_counts(fn)
    assert counts["MatrixInverse"] == program.ops_used().get("inv", 0) > 0
    assert not {"Cholesky", "CholeskySolve", "Solve", "SolveTriangular",
                "TriangularSolve"} & set(counts)
    values = random_instance(problem, dims, seed=1)
    ref = evaluate_reference(problem, values, dims)
    outs = fn(*[values[n] for n in problem.inputs])
    for out_name, value in zip(problem.outputs, outs, strict=True):
        assert relative_error(np.asarray(value), ref.outputs[out_name]) < 1e-6


def test_pytensor_rewrites_redecide_the_naive_kalman_point():
    """Why pinning exists: PyTensor's own rewrites turn the naive point's inverses into a
    Cholesky and share the duplicated one; the pinned compile keeps two inverses."""
    problem = load_problem("kalman")
    dims = problem.resolve_dims({"n": 12})
    knobs = named_point(problem, "naive", dims)
    _, own = _compile(problem, knobs, dims, rewrites="pytensor")
    _, pinned = _compile(problem, knobs, dims)
    assert kernel_counts(own)["MatrixInverse"] == 0
    assert kernel_counts(own)["Cholesky"] == 1
    assert kernel_counts(pinned)["MatrixInverse"] == 2
    assert graph_fingerprint(own) != graph_fingerprint(pinned)


def test_knob_values_that_differ_compile_to_different_graphs():
    problem = load_problem("kalman")
    dims = problem.resolve_dims({"n": 12})
    base = named_point(problem, "flop-optimal", dims)
    prints = {}
    for solver in knob_space(problem, dims)["solver.S"]:
        _, fn = _compile(problem, {**base, "solver.S": solver}, dims)
        prints[solver] = graph_fingerprint(fn)
    assert len(set(prints.values())) == len(prints), prints
    naive = named_point(problem, "naive", dims)
    _, shared = _compile(problem, {**naive, "cse": True}, dims)
    _, unshared = _compile(problem, naive, dims)
    assert graph_fingerprint(shared) != graph_fingerprint(unshared)


def test_fingerprint_is_stable_across_compiles():
    problem = load_problem("gls")
    dims = problem.resolve_dims(small_dims(problem))
    knobs = named_point(problem, "flop-optimal", dims)
    assert graph_fingerprint(_compile(problem, knobs, dims)[1]) == graph_fingerprint(
        _compile(problem, knobs, dims)[1])


def test_every_required_exclusion_is_registered_and_excluded():
    names = excluded_rewrites()
    assert set(REQUIRED_EXCLUSIONS) <= set(names)
    from pytensor.compile.mode import get_mode

    mode = pinned_mode(get_mode("NUMBA"))
    assert set(REQUIRED_EXCLUSIONS) <= set(mode._optimizer.exclude)
    with pytest.raises(ValueError, match="valid: chosen, pytensor"):
        pinned_mode(get_mode("NUMBA"), "mine")
