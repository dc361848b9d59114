"""The general product lowered to one BLAS call: :class:`GeneralProduct` (``?gemm``/``?gemv``
with the transpose flags of each operand's memory layout) and the late Numba rewrite that turns
a matrix ``Dot`` into it, so that a transposed operand (a view) is never copied; likewise the
triangular solve as one ``?trsm`` (:class:`TriangularSolve`)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

from autotune.kernels import KERNELS
from autotune.kernels.product_ops import GeneralProduct, general_product
from autotune.kernels.triangular_ops import TriangularSolve
from autotune.pinned import kernel_counts, pinned_mode
from autotune.program import Step
from autotune.targets import compile_function

# "NUMBA": the BLAS dispatch; "FAST_COMPILE": the Python linker, so `perform` runs.
MODES = ["NUMBA", "FAST_COMPILE"]
M, K = 5, 4


@pytest.fixture
def rng():
    return np.random.default_rng(20261130)


def _tol(dtype):
    return {"rtol": 2e-5, "atol": 2e-5} if dtype == "float32" else {"rtol": 1e-12, "atol": 1e-12}


def _fn(inputs, out, mode):
    return pytensor.function(inputs, out, mode=pinned_mode(pytensor.compile.mode.get_mode(mode)))


def _store(rng, shape, dtype, order):
    return np.asarray(rng.standard_normal(shape), dtype=dtype, order=order)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("n", [3, 1], ids=["matrix", "vector"])
@pytest.mark.parametrize(("ta", "tb"), list(itertools.product((False, True), repeat=2)))
def test_every_transpose_and_storage_order_against_numpy(mode, dtype, n, ta, tb, rng):
    a = pt.matrix("a", dtype=dtype)
    b = pt.matrix("b", dtype=dtype)
    out = pt.dot(a.T if ta else a, b.T if tb else b)
    fn = _fn([a, b], out, mode)
    if mode == "NUMBA":
        assert kernel_counts(fn)["GeneralProduct"] == 1
        assert kernel_counts(fn)["Dot"] == 0
    for order_a, order_b in itertools.product("CF", repeat=2):
        x = _store(rng, (K, M) if ta else (M, K), dtype, order_a)
        y = _store(rng, (n, K) if tb else (K, n), dtype, order_b)
        got = fn(x, y)
        ref = (x.T if ta else x).astype(np.float64) @ (y.T if tb else y).astype(np.float64)
        assert got.dtype == np.dtype(dtype) and got.shape == (M, n)
        np.testing.assert_allclose(got, ref, **_tol(dtype), err_msg=f"{order_a}{order_b}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_strided_views_and_row_vectors(mode, dtype, rng):
    a = pt.matrix("a", dtype=dtype)
    b = pt.matrix("b", dtype=dtype)
    fn = _fn([a, b], general_product(a, b), mode)
    big_a = _store(rng, (2 * M, 3 * K), dtype, "C")
    big_b = _store(rng, (3 * K, 7), dtype, "F")
    cases = [
        (big_a[::2, ::3], big_b[::3, :]),  # strided both ways: copied
        (big_a[1:M + 1, 2:K + 2], big_b[:K, 1:4]),  # sub-blocks: leading dimensions
        (big_a[::2, :K], big_b[2 : K + 2, 3:4]),  # vector right-hand side of a sub-block
        (big_a[3:4, :K], big_b[:K, :]),  # row vector times a matrix (gemv on b)
        (big_a[3:4, ::3], big_b[::3, 5:6]),  # 1x1 result
        (big_a[::-2, :K], big_b[:K, ::-1]),  # negative strides: copied
    ]
    for x, y in cases:
        ref = x.astype(np.float64) @ y.astype(np.float64)
        np.testing.assert_allclose(fn(x, y), ref, **_tol(dtype))


@pytest.mark.parametrize("mode", MODES)
def test_alpha_beta_c_and_empty_shapes(mode, rng):
    a, b, c = pt.matrix("a"), pt.matrix("b"), pt.matrix("c")
    fn = _fn([a, b, c], general_product(a.T, b, c, alpha=-0.5, beta=2.0), mode)
    x, y, z = rng.standard_normal((K, M)), rng.standard_normal((K, 3)), rng.standard_normal((M, 3))
    np.testing.assert_allclose(fn(x, y, z), -0.5 * x.T @ y + 2.0 * z, rtol=1e-12)
    zv = rng.standard_normal((M, 1))
    np.testing.assert_allclose(fn(x, y[:, :1], zv), -0.5 * x.T @ y[:, :1] + 2.0 * zv, rtol=1e-12)
    # k == 0: beta * c only; beta == 0: c (even NaN) not read
    np.testing.assert_allclose(fn(np.ones((0, M)), np.ones((0, 3)), z), 2.0 * z)
    fn0 = _fn([a, b, c], general_product(a, b, c, beta=0.0), mode)
    nan = np.full((M, 3), np.nan)
    np.testing.assert_allclose(fn0(x.T, y, nan), x.T @ y, rtol=1e-12)
    plain = _fn([a, b], general_product(a, b), mode)
    assert plain(np.ones((0, 4)), np.ones((4, 3))).shape == (0, 3)
    assert plain(np.ones((2, 4)), np.ones((4, 0))).shape == (2, 0)
    np.testing.assert_array_equal(plain(np.ones((2, 0)), np.ones((0, 3))), np.zeros((2, 3)))


def test_shape_mismatch_and_invalid_nodes():
    with pytest.raises(ValueError, match="inner dimensions"):
        general_product(pt.tensor(shape=(2, 3)), pt.tensor(shape=(4, 2)))
    with pytest.raises(TypeError, match="matrix"):
        GeneralProduct()(pt.vector(), pt.matrix())
    with pytest.raises(TypeError, match="complex"):
        general_product(pt.matrix(dtype="complex128"), pt.matrix())
    with pytest.raises(ValueError, match="finite"):
        GeneralProduct(alpha=np.inf)
    assert general_product(pt.matrix(dtype="int32"), pt.matrix(dtype="float32")).dtype == "float64"
    fn = _fn([a := pt.matrix("a"), b := pt.matrix("b")], general_product(a, b), "NUMBA")
    with pytest.raises(ValueError):
        fn(np.ones((2, 3)), np.ones((4, 2)))
    node = general_product(pt.tensor(shape=(2, 3)), pt.tensor(shape=(3, 7)))
    assert node.type.shape == (2, 7)
    text = str(GeneralProduct(alpha=2.0, beta=1.0, has_c=True))
    assert text == "GeneralProduct{2.0 * a @ b + 1.0 * c}"


def test_rewrite_is_numba_only_and_keeps_pytensors_own_rewrites():
    a, b = pt.matrix("a"), pt.matrix("b")
    cvm = pytensor.function([a, b], pt.dot(a.T, b), mode="CVM")
    assert kernel_counts(cvm)["GeneralProduct"] == 0
    # PyTensor's own rewrites still see a Dot: inv(A) @ b becomes a solve before ours runs
    own = pytensor.function([a, b], pt.dot(pt.linalg.inv(a), b), mode="NUMBA")
    assert kernel_counts(own)["MatrixInverse"] == 0
    # integer products stay PyTensor's Dot
    ia, ib = pt.matrix("ia", dtype="int64"), pt.matrix("ib", dtype="int64")
    fn = pytensor.function([ia, ib], pt.dot(ia, ib), mode="NUMBA")
    assert kernel_counts(fn)["GeneralProduct"] == 0
    np.testing.assert_array_equal(fn(np.eye(2, dtype="int64"), np.ones((2, 2), "int64")), 1)


def test_lowered_transposed_product_holds_the_op_and_no_copy_node(rng):
    """A program's ``H.T @ x`` (transpose step, then matmul step) compiles to one
    GeneralProduct fed by the transpose view, nothing else."""
    n = 6
    h = pt.tensor("H", shape=(n, n))
    x = pt.tensor("x", shape=(n, 1))
    ht = KERNELS["transpose"].lower(Step("transpose", (0,), ("n", "n")), [h], {"n": n}, "float64")
    out = KERNELS["matmul"].lower(Step("matmul", (2, 1), ("n", "1")), [ht, x], {"n": n}, "float64")
    fn = compile_function("numba-t1", [h, x], [out])
    nodes = fn.function.maker.fgraph.toposort()
    names = [type(node.op).__name__ for node in nodes]
    assert names.count("GeneralProduct") == 1
    assert set(names) <= {"GeneralProduct", "MatrixTranspose", "DimShuffle"}, names
    (gp,) = [node for node in nodes if isinstance(node.op, GeneralProduct)]
    assert gp.inputs[0].owner is not None and gp.inputs[0].owner.inputs[0] is h
    assert gp.inputs[1] is x
    hv, xv = rng.standard_normal((n, n)), rng.standard_normal((n, 1))
    np.testing.assert_allclose(np.asarray(fn(hv, xv)[0]), hv.T @ xv, rtol=1e-12)


_NO_COPY_SCRIPT = textwrap.dedent(
    """
    import numpy as np, pytensor, pytensor.tensor as pt
    from numba.core.runtime import rtsys
    from autotune.kernels.product_ops import general_product
    n = 1500
    h, x = pt.matrix("h"), pt.matrix("x")
    fn = pytensor.function([h, x], general_product(h.T, x), mode="NUMBA").vm.jit_fn
    H = np.random.default_rng(0).standard_normal((2 * n, 2 * n))
    xs = np.ones((n, 1))
    def allocs(a):
        fn(a, xs)
        before = rtsys.get_allocation_stats().alloc
        fn(a, xs)
        return rtsys.get_allocation_stats().alloc - before
    c = allocs(np.ascontiguousarray(H[:n, :n]))
    f = allocs(np.asfortranarray(H[:n, :n]))
    block = allocs(H[:n, :n])
    strided = allocs(H[::2, ::2])
    print(c, f, block, strided)
    """
)


def test_transposed_operand_is_not_copied():
    """Numba's runtime counts allocations (NUMBA_NRT_STATS): a C-, F-ordered or sub-block
    operand costs the same allocations as each other (the output), a genuinely strided view
    one more (its copy)."""
    env = {**os.environ, "NUMBA_NRT_STATS": "1"}
    res = subprocess.run([sys.executable, "-c", _NO_COPY_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    c, f, block, strided = map(int, res.stdout.split()[-4:])
    assert c == f == block, (c, f, block)
    assert strided == c + 1, (c, strided)


def test_large_transposed_operand_not_copied_by_peak_memory():
    """The same from the process's peak memory: ``H.T @ x`` with a 200 MB ``H`` raises the
    peak resident size by far less than ``H``'s size."""
    script = textwrap.dedent(
        """
        import resource, numpy as np, pytensor, pytensor.tensor as pt
        from autotune.kernels.product_ops import general_product
        h, x = pt.matrix("h"), pt.matrix("x")
        fn = pytensor.function([h, x], general_product(h.T, x), mode="NUMBA")
        fn(np.ones((3, 3)), np.ones((3, 1)))
        n = 5000
        H = np.ones((n, n)); xs = np.ones((n, 1))
        H[:] = 1.0
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = fn(H, xs)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert out[0, 0] == n
        print((after - before) * 1024, H.nbytes)
        """
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    grew, size = map(int, res.stdout.split()[-2:])
    assert grew < size // 10, (grew, size)


@pytest.mark.parametrize("backend", ["JAX", "PYTORCH"])
def test_jax_pytorch_plain_matmul(backend, rng):
    pytest.importorskip("jax" if backend == "JAX" else "torch")
    a, b, c = pt.matrix("a"), pt.matrix("b"), pt.matrix("c")
    fn = pytensor.function([a, b, c], general_product(a.T, b, c, alpha=2.0, beta=-1.0),
                           mode=backend)
    x, y, z = rng.standard_normal((K, M)), rng.standard_normal((K, 3)), rng.standard_normal((M, 3))
    np.testing.assert_allclose(np.asarray(fn(x, y, z)), 2.0 * x.T @ y - z, rtol=1e-10)
    plain = pytensor.function([a, b], general_product(a, b), mode=backend)
    np.testing.assert_allclose(np.asarray(plain(x.T, y)), x.T @ y, rtol=1e-10)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(("lower", "trans", "unit"),
                         list(itertools.product((True, False), (0, 1), (False, True))))
def test_triangular_solve_as_trsm_every_layout(dtype, lower, trans, unit, rng):
    """PyTensor's SolveTriangular runs as one ?trsm in the Numba backend (TriangularSolve), for
    C- and F-ordered operands, matrix and vector right-hand sides, transposed or not."""
    import scipy.linalg
    from pytensor.tensor.linalg import solve_triangular

    a, b = pt.matrix("a", dtype=dtype), pt.matrix("b", dtype=dtype)
    out = solve_triangular(a, b, lower=lower, trans=trans, unit_diagonal=unit, b_ndim=2)
    fn = _fn([a, b], out, "NUMBA")
    counts = kernel_counts(fn)
    assert counts["TriangularSolve"] == 1 and counts["SolveTriangular"] == 0, dict(counts)
    for order_a, order_b, n in itertools.product("CF", "CF", (3, 1)):
        x = _store(rng, (M, M), dtype, order_a) + np.asarray(4 * np.eye(M), dtype=dtype)
        y = _store(rng, (M, n), dtype, order_b)
        ref = scipy.linalg.solve_triangular(x.astype(np.float64), y.astype(np.float64),
                                            lower=lower, trans=trans, unit_diagonal=unit)
        got = fn(x, y)
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_allclose(got, ref, **_tol(dtype), err_msg=f"{order_a}{order_b}{n}")
    # the other triangle is not read; empty right-hand sides
    tri, other = (np.tril, np.triu) if lower else (np.triu, np.tril)
    x = tri(np.ones((M, M))) + 3 * np.eye(M)
    junk = np.where(other(np.ones((M, M)), 1 if lower else -1) == 1, np.nan, x)
    y = np.ones((M, 2))
    ref = scipy.linalg.solve_triangular(x, y, lower=lower, trans=trans, unit_diagonal=unit)
    np.testing.assert_allclose(fn(junk.astype(dtype), y.astype(dtype)), ref, **_tol(dtype))
    assert fn(np.eye(M, dtype=dtype), np.ones((M, 0), dtype=dtype)).shape == (M, 0)


def test_triangular_solve_perform_and_strided_views(rng):
    a, b = pt.matrix("a"), pt.matrix("b")
    big = rng.standard_normal((2 * M, 2 * M)) + 6 * np.eye(2 * M)
    rhs = rng.standard_normal((2 * M, 6))
    for mode in MODES:
        fn = _fn([a, b], TriangularSolve(lower=False)(a, b), mode)
        x, y = big[::2, ::2], rhs[::2, ::3]
        np.testing.assert_allclose(fn(x, y), np.linalg.solve(np.triu(x), y), rtol=1e-10)
        np.testing.assert_allclose(fn(x.T, y), np.linalg.solve(np.triu(x.T), y), rtol=1e-10)
    with pytest.raises(TypeError):
        TriangularSolve()(pt.vector(), pt.matrix())


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("lower", [True, False])
@pytest.mark.parametrize("trans", [0, 1])
def test_triangular_solve_of_a_transposed_rhs_solves_from_the_right(dtype, lower, trans):
    """``tri(L)^-1 @ B.T`` compiles to one trsm from the right on B as it is (a plain copy),
    never a transposing copy of B.T, and equals SciPy's solve."""
    import scipy.linalg as sl
    from pytensor.tensor.linalg import solve_triangular

    from autotune.kernels import triangular_ops  # noqa: F401  (registers the rewrite)
    from autotune.pinned import pinned_mode

    L = pt.matrix("L", shape=(7, 7), dtype=dtype)
    B = pt.matrix("B", shape=(5, 7), dtype=dtype)
    out = solve_triangular(L, B.T, lower=lower, trans=trans, b_ndim=2)
    f = pytensor.function([L, B], out, mode=pinned_mode(pytensor.compile.mode.get_mode("NUMBA")))
    solves = [n.op for n in f.maker.fgraph.toposort()
              if type(n.op).__name__ == "TriangularSolve"]
    assert [op.side for op in solves] == ["right"]
    assert f.maker.fgraph.toposort()[-1].op.__class__.__name__ == "DimShuffle"  # a view
    rng = np.random.default_rng(0)
    g = rng.standard_normal((7, 7))
    l = (np.tril(g) if lower else np.triu(g)) + 5 * np.eye(7)
    b = rng.standard_normal((5, 7))
    ref = sl.solve_triangular(l, b.T, lower=lower, trans=trans)
    tol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(f(l.astype(dtype), b.astype(dtype)), ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("layout", ["C", "F"])
def test_cholesky_of_an_input_copies_it_as_it_is(dtype, layout):
    """A Cholesky that may not overwrite its input (a graph input) is LowerCholesky: a plain
    copy of the lower triangle, LAPACK on its Fortran view; only the lower triangle is read,
    the upper one of the result is zero, and a matrix that is not positive definite gives NaN
    (as PyTensor's numba Cholesky); a temporary is still factored in place by PyTensor's op."""
    from autotune.kernels import factorization_ops  # noqa: F401  (registers the rewrite)
    from autotune.pinned import pinned_mode

    mode = pinned_mode(pytensor.compile.mode.get_mode("NUMBA"))
    m = pt.matrix("M", shape=(9, 9), dtype=dtype)
    f = pytensor.function([m], pt.linalg.cholesky(m, lower=True), mode=mode)
    assert [type(n.op).__name__ for n in f.maker.fgraph.toposort()] == ["LowerCholesky"]
    assert kernel_counts(f)["Cholesky"] == 1
    rng = np.random.default_rng(3)
    g = rng.standard_normal((9, 9))
    a = (g @ g.T / 9 + np.eye(9)).astype(dtype)
    a = np.asfortranarray(a) if layout == "F" else a
    messy = a.copy()
    messy[0, 5] = np.nan  # the strict upper triangle is never read
    ref = np.linalg.cholesky(a.astype(np.float64))
    tol = 1e-12 if dtype == "float64" else 1e-5
    for x in (a, messy):
        got = f(x)
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)
        assert not np.triu(got, 1).any()
    assert np.isnan(f(-a)).all()
    temp = pytensor.function([m], pt.linalg.cholesky(m @ m.T + m.T @ m, lower=True), mode=mode)
    chol = [n.op for n in temp.maker.fgraph.toposort() if "Cholesky" in type(n.op).__name__]
    assert [type(op).__name__ for op in chol] == ["Cholesky"] and chol[0].overwrite_a
