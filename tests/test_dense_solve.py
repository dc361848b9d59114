"""The dense solve without transposing copies (autotune.kernels.solve_ops): the compiled graph
holds DenseSolve where a plan's solve was, and its results match the float64 reference for
every layout and size, singular and indefinite matrices included."""

from __future__ import annotations

import numpy as np
import pytensor.tensor as pt
import pytest
from pytensor.tensor.linalg import solve

from autotune.kernels.solve_ops import DenseSolve
from autotune.pinned import kernel_counts
from autotune.reference import relative_error
from autotune.targets import compile_function


def _compiled(assume_a: str, n: int, k: int, dtype: str = "float64", transposed: bool = False):
    A = pt.matrix("A", shape=(n, n), dtype=dtype)
    B = pt.matrix("B", shape=(k, n) if transposed else (n, k), dtype=dtype)
    rhs = B.T if transposed else B
    return compile_function("numba-t1", [A, B], [solve(A, rhs, assume_a=assume_a, b_ndim=2)])


def _ops(fn) -> list:
    return [node.op for node in fn.function.maker.fgraph.toposort()]


def _spd(rng, n):
    m = rng.standard_normal((n, n))
    return m @ m.T + n * np.eye(n)


@pytest.mark.parametrize("assume_a", ["gen", "pos"])
@pytest.mark.parametrize("n, k", [(1, 1), (7, 3), (64, 1), (130, 40)])
def test_dense_solve_matches_the_reference(assume_a, n, k):
    rng = np.random.default_rng(n + k)
    A = _spd(rng, n) if assume_a == "pos" else rng.standard_normal((n, n)) + n * np.eye(n)
    B = rng.standard_normal((n, k))
    fn = _compiled(assume_a, n, k)
    ops = [op for op in _ops(fn) if isinstance(op, DenseSolve)]
    assert len(ops) == 1 and ops[0].assume_a == assume_a
    assert kernel_counts(fn)["Solve"] == 1  # counted as the kernel the program states
    (X,) = fn(A, B)
    assert relative_error(X, np.linalg.solve(A, B)) < 1e-12


@pytest.mark.parametrize("assume_a", ["gen", "pos"])
def test_dense_solve_reads_any_layout(assume_a):
    rng = np.random.default_rng(3)
    n, k = 50, 20
    A = _spd(rng, n) if assume_a == "pos" else rng.standard_normal((n, n)) + n * np.eye(n)
    B = rng.standard_normal((k, n))
    fn = _compiled(assume_a, n, k, transposed=True)
    (X,) = fn(np.asfortranarray(A), B)
    assert relative_error(X, np.linalg.solve(A, B.T)) < 1e-12


def test_a_pivoting_lu_solve_is_right():
    """A matrix that needs row interchanges (zero leading entry) exercises the pivots."""
    rng = np.random.default_rng(4)
    n = 40
    A = rng.standard_normal((n, n))
    A[0, 0] = 0.0
    A = A[rng.permutation(n)]
    B = rng.standard_normal((n, 5))
    (X,) = _compiled("gen", n, 5)(A, B)
    assert relative_error(X, np.linalg.solve(A, B)) < 1e-10


def test_float32():
    rng = np.random.default_rng(5)
    A = (rng.standard_normal((30, 30)) + 30 * np.eye(30)).astype(np.float32)
    B = rng.standard_normal((30, 4)).astype(np.float32)
    (X,) = _compiled("gen", 30, 4, dtype="float32")(A, B)
    assert X.dtype == np.float32
    assert relative_error(X, np.linalg.solve(A.astype(float), B.astype(float))) < 1e-4


def test_the_pos_solve_reads_the_upper_triangle_and_refuses_an_indefinite_matrix():
    rng = np.random.default_rng(6)
    n = 20
    S = _spd(rng, n)
    B = rng.standard_normal((n, 3))
    fn = _compiled("pos", n, 3)
    junk = np.triu(S) + np.tril(np.full((n, n), np.nan), -1)  # the lower triangle unread
    (X,) = fn(junk, B)
    assert relative_error(X, np.linalg.solve(S, B)) < 1e-12
    (Y,) = fn(-S, B)
    assert np.isnan(Y).all()


def test_a_singular_matrix_gives_non_finite_values_not_a_wrong_number():
    n = 6
    A = np.ones((n, n))
    (X,) = _compiled("gen", n, 2)(A, np.ones((n, 2)))
    assert not np.isfinite(X).all()


def test_the_python_implementation_agrees():
    import pytensor

    rng = np.random.default_rng(7)
    a, b = pt.matrix("a"), pt.matrix("b")
    for assume_a in ("gen", "pos"):
        A = _spd(rng, 9)
        B = rng.standard_normal((9, 2))
        fn = pytensor.function([a, b], DenseSolve(assume_a)(a, b), mode="FAST_COMPILE")
        assert relative_error(fn(A, B), np.linalg.solve(A, B)) < 1e-12
    with pytest.raises(ValueError, match="assume_a 'sym'; valid: gen, pos"):
        DenseSolve("sym")
