"""Outputs stored as one triangle (``store = "lower"``): the language, the lowering (the
compiled graph skips the mirror), the numbers (the lower triangle against the float64
reference), and a tuned plan called as a user calls it."""

from __future__ import annotations

import numpy as np
import pytensor
import pytest
import sympy as sp

from autotune import InputError, load_plan, named_point
from autotune.derivation import derive
from autotune.errors import SpecError
from autotune.kernels.product_ops import SymProduct, SymRankK
from autotune.lower import lower
from autotune.reference import relative_error
from autotune.spec import Problem, parse_problem
from autotune.targets import compile_function, parse_target

# the plans here are written around a committed plan's measurement fields (another CPU)
pytestmark = pytest.mark.filterwarnings("ignore:.*tuned on another machine")

TEXT = """
[problem]
name = "stored"
[dims]
n = 40
k = 24
[inputs]
A = {{ shape = ["n", "k"] }}
B = {{ shape = ["n", "n"] }}
[outputs]
{outputs}
"""


def _problem(outputs: str) -> Problem:
    return parse_problem(TEXT.format(outputs=outputs))


def test_the_store_field_is_parsed_and_kept_per_output():
    p = _problem('X = { formula = "A*A.T", store = "lower" }\nY = "A.T*A"\n'
                 'Z = { formula = "B*A" }')
    assert p.outputs == {"X": "A*A.T", "Y": "A.T*A", "Z": "B*A"}
    assert p.stored == {"X": "lower"}


@pytest.mark.parametrize("entry, match", [
    ('X = { formula = "A*A.T", store = "upper" }', r"X\.store: 'upper' is not a storage; "
                                                   "valid: full, lower"),
    ('X = { formula = "B*A*A.T", store = "lower" }', "not known to be symmetric"),
    ('X = { formula = "A*A.T", stored = "lower" }', "unknown field 'stored'; valid: formula"),
    ('X = { store = "lower" }', "missing field 'formula'"),
    ('X = { formula = 3 }', "expected a formula string"),
])
def test_a_bad_store_names_the_output_and_the_choices(entry, match):
    with pytest.raises(SpecError, match=match):
        _problem(entry)


def test_from_sympy_round_trips_the_storage():
    n = sp.Symbol("n")
    A = sp.MatrixSymbol("A", n, n)
    p = Problem.from_sympy({"X": A * A.T, "Y": A.T}, dims={n: 8}, stored={"X": "lower"})
    assert p.stored == {"X": "lower"}
    assert parse_problem(p.source).stored == {"X": "lower"}
    with pytest.raises(SpecError, match="'W' is not an output"):
        Problem.from_sympy({"X": A * A.T}, dims={n: 8}, stored={"W": "lower"})


def _compiled(p: Problem, knobs: dict, target: str = "numba-t1"):
    dims = p.resolve_dims()
    prog = derive(p, {**named_point(p, "flop-optimal", dims), **knobs}, dims)
    inputs, outputs = lower(p, prog, dims)
    return compile_function(parse_target(target), inputs, outputs)


def _ops(fn) -> list:
    graph = fn.function if hasattr(fn, "function") else fn
    return [node.op for node in graph.maker.fgraph.toposort()]


@pytest.mark.parametrize("knobs, op_type", [
    ({"syrk": True, "symprod": False}, SymRankK),
    ({"syrk": False, "symprod": True}, SymProduct),
], ids=["syrk", "symprod"])
def test_a_stored_output_skips_the_mirror_and_its_lower_triangle_is_right(knobs, op_type):
    rng = np.random.default_rng(3)
    A = rng.standard_normal((40, 24))
    want = A @ A.T
    for store, mirror in (("lower", False), ("full", True)):
        p = _problem(f'X = {{ formula = "A*A.T", store = "{store}" }}')
        fn = _compiled(p, knobs)
        ops = [op for op in _ops(fn) if isinstance(op, op_type)]
        assert len(ops) == 1 and ops[0].mirror is mirror
        (X,) = fn(A, np.zeros((40, 40)))[:1]
        assert relative_error(np.tril(X), np.tril(want)) < 1e-14
        if mirror:
            assert relative_error(X, want) < 1e-14


def test_a_symmetric_result_another_output_reads_stays_mirrored():
    p = _problem('X = { formula = "A*A.T", store = "lower" }\nY = "B*X"')
    fn = _compiled(p, {"syrk": True, "symprod": False})
    ops = [op for op in _ops(fn) if isinstance(op, SymRankK)]
    assert ops and all(op.mirror for op in ops)
    rng = np.random.default_rng(4)
    A, B = rng.standard_normal((40, 24)), rng.standard_normal((40, 40))
    X, Y = fn(A, B)
    assert relative_error(Y, B @ (A @ A.T)) < 1e-13


@pytest.mark.parametrize("op", [SymRankK(mirror=False), SymProduct(mirror=False)],
                         ids=["syrk", "symprod"])
def test_the_python_implementation_writes_the_lower_triangle_too(op):
    a = pytensor.tensor.matrix("a")
    rng = np.random.default_rng(5)
    A = rng.standard_normal((7, 5))
    if isinstance(op, SymRankK):
        fn = pytensor.function([a], op(a), mode="FAST_COMPILE")
        want = A.T @ A
    else:
        fn = pytensor.function([a], op(a, a.T), mode="FAST_COMPILE")
        want = A @ A.T
    got = fn(A)
    assert np.allclose(np.tril(got), np.tril(want), rtol=1e-13, atol=1e-13)


@pytest.fixture(scope="module")
def stored_plan(tmp_path_factory):
    """A plan of the flop-optimal point (SYRK), written without tuning: at n = 40 a tuner may
    time a plain GEMM as fast, and these tests are about what a one-triangle kernel returns."""
    from test_checks import make_plan

    source = TEXT.format(outputs='X = { formula = "A*A.T", store = "lower" }')
    return load_plan(make_plan(tmp_path_factory.mktemp("plans"), source, "<stored>", {},
                               "flop-optimal"))


def test_a_stored_plan_returns_the_lower_triangle_and_checks_only_that(stored_plan):
    rng = np.random.default_rng(6)
    A = rng.standard_normal((40, 24))
    (X,) = stored_plan(A=A, B=np.zeros((40, 40)))
    assert relative_error(np.tril(X), np.tril(A @ A.T)) < 1e-13
    # what the plan computes is the lower triangle only: nothing was mirrored
    assert any(isinstance(op, SymRankK | SymProduct) and not op.mirror
               for op in _ops(stored_plan))
    # a NaN the plan reads is still found and named
    bad = A.copy()
    bad[3, 2] = np.nan
    with pytest.raises(InputError, match="input A"):
        stored_plan(A=bad, B=np.zeros((40, 40)))


def test_the_finite_check_of_a_stored_output_reads_its_lower_triangle_only(stored_plan):
    lower = np.tril(np.ones((40, 40)))
    junk = lower + np.triu(np.full((40, 40), np.nan), 1)
    assert stored_plan._outputs_finite([junk])
    lower[5, 1] = np.inf
    assert not stored_plan._outputs_finite([lower])
