"""In-place kernels (autotune.kernels.inplace) and donated inputs (``load_plan(donate=...)``):
the compiled graph writes over exactly what it may, the numbers stay right, and errors still
name the input."""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

from autotune import InputError, load_plan
from autotune.kernels.triangular_ops import TriangularMatMul
from autotune.reference import relative_error
from autotune.targets import compile_function

# the plans here are written around a committed plan's measurement fields (another CPU)
pytestmark = pytest.mark.filterwarnings("ignore:.*tuned on another machine")

N = 48
TEXT = f"""
[problem]
name = "trmm_donate"
[dims]
n = {N}
[inputs]
L = {{ shape = ["n", "n"], properties = ["lower_triangular"] }}
B = {{ shape = ["n", "n"] }}
[outputs]
X = "L*B"
"""


def _trmm_nodes(fn) -> list:
    graph = fn.function if hasattr(fn, "function") else fn
    return [n for n in graph.maker.fgraph.toposort() if isinstance(n.op, TriangularMatMul)]


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(7)
    L = np.tril(rng.standard_normal((N, N))) + N * np.eye(N)
    return L, rng.standard_normal((N, N))


def _graph(mutable: bool, intermediate: bool):
    L = pt.matrix("L", shape=(N, N))
    B = pt.matrix("B", shape=(N, N))
    b = (B * 2.0) if intermediate else B
    out = TriangularMatMul()(L, b)
    return compile_function("numba-t1", [L, pytensor.In(B, mutable=mutable)], [out])


@pytest.mark.parametrize("mutable, intermediate, inplace", [
    (False, False, False),  # the caller's array: protected
    (True, False, True),    # a donated input: written over
    (False, True, True),    # an intermediate nothing else reads: written over
], ids=["input", "donated", "intermediate"])
def test_trmm_writes_over_exactly_what_is_free(inputs, mutable, intermediate, inplace):
    L, B = inputs
    fn = _graph(mutable, intermediate)
    (node,) = _trmm_nodes(fn)
    assert node.op.inplace is inplace
    assert bool(getattr(node.op, "destroy_map", {})) is inplace
    b = B.copy()
    (X,) = fn(L, b)
    want = L @ (2 * B if intermediate else B)
    assert relative_error(X, want) < 1e-13
    if not inplace or intermediate:
        assert np.array_equal(b, B)  # the caller's array is intact
    else:
        assert np.shares_memory(X, b)


@pytest.mark.parametrize("order", ["C", "F"])
def test_the_in_place_trmm_is_right_for_either_memory_order(inputs, order):
    L, B = inputs
    fn = _graph(True, False)
    b = np.array(B, order=order)
    (X,) = fn(L, b)
    assert relative_error(X, L @ B) < 1e-13


@pytest.fixture(scope="module")
def plan_path(tmp_path_factory):
    """A plan of the flop-optimal point (TRMM), written without tuning (a tuner may pick the
    plain GEMM at this size)."""
    from test_checks import make_plan

    return make_plan(tmp_path_factory.mktemp("plans"), TEXT, "<trmm_donate>", {},
                     "flop-optimal")


def test_a_plan_loaded_with_donate_writes_over_the_donated_input(plan_path, inputs):
    L, B = inputs
    kept, donated = load_plan(plan_path), load_plan(plan_path, donate=["B"])
    assert kept.overwrites == set() and donated.overwrites == {"B"}
    assert not any(n.op.inplace for n in _trmm_nodes(kept))
    assert all(n.op.inplace for n in _trmm_nodes(donated))
    b = B.copy()
    (X,) = donated(L=L, B=b)
    assert relative_error(X, L @ B) < 1e-13 and np.shares_memory(X, b)
    b = B.copy()
    (X,) = kept(L=L, B=b)
    assert relative_error(X, L @ B) < 1e-13 and np.array_equal(b, B)


def test_a_donated_input_passed_twice_is_copied_first(plan_path, inputs):
    L, _ = inputs
    fn = load_plan(plan_path, donate=["B"])
    same = L.copy()
    (X,) = fn(L=same, B=same)
    assert relative_error(X, L @ L) < 1e-13


def test_errors_still_name_the_input_with_a_donated_one(plan_path, inputs):
    L, B = inputs
    fn = load_plan(plan_path, donate=["B"])
    bad = B.copy()
    bad[3, 4] = np.nan
    with pytest.raises(InputError, match="input B: the result is not finite and the other "
                                         "inputs are; B was donated"):
        fn(L=L, B=bad)
    badL = L.copy()
    badL[9, 2] = np.inf
    with pytest.raises(InputError, match="input L: contains NaN"):
        fn(L=badL, B=B.copy())


@pytest.mark.parametrize("donate", [["C"], ["B", "X"], [3]])
def test_donating_what_is_not_a_matrix_input_names_the_choices(plan_path, donate):
    with pytest.raises(InputError, match=r"donate: .* is not a matrix input of trmm_donate; "
                                         "valid: L, B"):
        load_plan(plan_path, donate=donate)


@pytest.mark.parametrize("mutable, transposed, intermediate, inplace", [
    (False, False, False, False),
    (True, False, False, True),
    (False, False, True, True),
    (True, True, False, True),   # tri(L)^-1 B.T: solved from the right, over B itself
    (False, True, True, True),
], ids=["input", "donated", "intermediate", "donated-transposed", "intermediate-transposed"])
def test_trsm_writes_over_exactly_what_is_free(inputs, mutable, transposed, intermediate,
                                               inplace):
    from pytensor.tensor.linalg import solve_triangular

    from autotune.kernels.triangular_ops import TriangularSolve

    L, B = inputs
    Lv, Bv = pt.matrix("L", shape=(N, N)), pt.matrix("B", shape=(N, N))
    b = Bv * 2.0 if intermediate else Bv
    b = b.T if transposed else b
    fn = compile_function("numba-t1", [Lv, pytensor.In(Bv, mutable=mutable)],
                          [solve_triangular(Lv, b, lower=True)])
    (node,) = [n for n in fn.function.maker.fgraph.toposort()
               if isinstance(n.op, TriangularSolve)]
    assert node.op.inplace is inplace
    rhs = (2 * B if intermediate else B)
    rhs = rhs.T if transposed else rhs
    bb = B.copy()
    (X,) = fn(L, bb)
    assert relative_error(X, np.linalg.solve(L, rhs)) < 1e-13
    assert np.array_equal(bb, B) is not (mutable and inplace)
