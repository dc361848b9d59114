"""Tests of autotune.kernels: the SymRankK (BLAS syrk), SymProduct (one-triangle GEMM) and
SPDInverse (LAPACK potrf + potri) Ops on every PyTensor backend."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

import autotune.kernels
from autotune.kernels import (
    SPDInverse,
    SymProduct,
    SymRankK,
    mirror_lower_to_upper,
    spd_inverse,
    sym_product,
    sym_product_blocks,
    sym_rank_k,
)

# (k, n): k > n, k < n, square, tiny, single row / column, empty.
SHAPES = [(7, 4), (3, 5), (6, 6), (1, 1), (1, 5), (5, 1), (40, 25), (0, 3), (3, 0)]
ALPHA, BETA = -0.75, 1.5
# "FAST_COMPILE": Python linker, so `perform` runs; "NUMBA": the numba dispatch.
MODES = ["NUMBA", "FAST_COMPILE"]


def _tol(dtype):
    return {"rtol": 1e-5, "atol": 1e-4} if dtype == "float32" else {"rtol": 1e-12, "atol": 1e-11}


def _rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def _sym(rng, n, dtype):
    c = rng.standard_normal((n, n))
    return (c + c.T).astype(dtype)


def _reference(a, c=None, alpha=1.0, beta=0.0):
    a64 = np.asarray(a, dtype=np.float64)
    out = alpha * a64.T @ a64
    if c is not None:
        out = out + beta * np.asarray(c, dtype=np.float64)
    return out


def _check(out, ref, dtype):
    assert out.dtype == np.dtype(dtype)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, **_tol(dtype))
    assert np.array_equal(out, out.T), "result is not exactly symmetric"


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


@pytest.fixture(autouse=True)
def _no_objmode_fallback():
    # The numba dispatch must be used, never PyTensor's object-mode fallback (which warns).
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*object mode.*", category=UserWarning)
        yield


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_against_numpy(mode, dtype, rng):
    a = pt.matrix("a", dtype=dtype)
    c = pt.matrix("c", dtype=dtype)
    outs = [
        sym_rank_k(a),
        sym_rank_k(a, alpha=ALPHA),
        sym_rank_k(a, c, alpha=ALPHA, beta=BETA),
        sym_rank_k(a, c, beta=1.0),
    ]
    f = pytensor.function([a, c], outs, mode=mode)
    for k, n in SHAPES:
        av, cv = _rand(rng, (k, n), dtype), _sym(rng, n, dtype)
        cv_before = cv.copy()
        out1, out2, out3, out4 = f(av, cv)
        _check(out1, _reference(av), dtype)
        _check(out2, _reference(av, alpha=ALPHA), dtype)
        _check(out3, _reference(av, cv, ALPHA, BETA), dtype)
        _check(out4, _reference(av, cv, 1.0, 1.0), dtype)
        np.testing.assert_array_equal(cv, cv_before)  # c is not overwritten


# Strided views of a (9, 8) C-ordered matrix: rows contiguous with a leading dimension larger than
# n, columns contiguous (F order), columns contiguous with a larger leading dimension, neither.
VIEWS = {
    "rows": lambda v: v[::2],
    "cols": lambda v: v[:, ::2],
    "transposed": lambda v: v.T,
    "transposed_rows": lambda v: v.T[::3],
    "transposed_cols": lambda v: v.T[:, 1:5],
    "reversed": lambda v: v[::-1, ::-1],
}


@pytest.mark.parametrize("mode", MODES)
def test_non_contiguous_graph_views(mode, rng):
    """`a` is a view built in the graph (Subtensor / transpose), so the Op sees strided arrays."""
    x = pt.matrix("x")
    xv = rng.standard_normal((9, 8))
    cs = {name: pt.matrix(f"c_{name}") for name in VIEWS}
    cvs = {name: _sym(rng, view(xv).shape[1], "float64") for name, view in VIEWS.items()}
    outs = [sym_rank_k(view(x), cs[name], alpha=ALPHA, beta=BETA) for name, view in VIEWS.items()]
    f = pytensor.function([x, *cs.values()], outs, mode=mode)  # one compile for all views
    for (name, view), out in zip(VIEWS.items(), f(xv, *cvs.values()), strict=True):
        ref = _reference(view(xv), cvs[name], ALPHA, BETA)
        np.testing.assert_allclose(out, ref, **_tol("float64"), err_msg=name)
        assert np.array_equal(out, out.T), name


@pytest.mark.parametrize("mode", MODES)
def test_non_contiguous_input_arrays(mode, rng):
    """Strided / F-ordered NumPy arrays passed straight in as `a` and `c` (one compile)."""
    xv = rng.standard_normal((9, 8))
    a_values = [xv[::2], xv[:, ::3], xv.T, xv[1:4, 2:9], np.asfortranarray(xv), xv[::-1]]
    big = _sym(rng, 16, "float64")
    c_values = [np.asfortranarray(_sym(rng, 8, "float64")), big[::2, ::2]]
    a_vars = [pt.matrix(f"a{i}") for i in range(len(a_values))]
    c_vars = [pt.matrix(f"c{i}") for i in range(len(c_values))]
    outs = [sym_rank_k(av, alpha=ALPHA) for av in a_vars]
    outs += [sym_rank_k(a_vars[0], cv, alpha=ALPHA, beta=BETA) for cv in c_vars]
    f = pytensor.function(a_vars + c_vars, outs, mode=mode)
    results = f(*a_values, *c_values)
    refs = [_reference(av, alpha=ALPHA) for av in a_values]
    refs += [_reference(a_values[0], cv, ALPHA, BETA) for cv in c_values]
    for i, (out, ref) in enumerate(zip(results, refs, strict=True)):
        np.testing.assert_allclose(out, ref, **_tol("float64"), err_msg=f"output {i}")
        assert np.array_equal(out, out.T), f"output {i}"


def test_large_output(rng):
    """Outputs of 4 MiB and more are allocated by NumPy from object mode in the numba kernel."""
    dtypes = ("float64", "float32")
    a = {dt: pt.matrix(f"a_{dt}", dtype=dt) for dt in dtypes}
    c = {dt: pt.matrix(f"c_{dt}", dtype=dt) for dt in dtypes}
    outs = [sym_rank_k(a[dt], c[dt], alpha=ALPHA, beta=BETA) for dt in dtypes]
    f = pytensor.function([*a.values(), *c.values()], outs, mode="NUMBA")
    av = {dt: _rand(rng, (3, 1100), dt) for dt in dtypes}
    cv = {dt: _sym(rng, 1100, dt) for dt in dtypes}
    for dt, out in zip(dtypes, f(*av.values(), *cv.values()), strict=True):
        _check(out, _reference(av[dt], cv[dt], ALPHA, BETA), dt)
        assert out.flags.c_contiguous and out.flags.writeable


@pytest.mark.parametrize("mode", MODES)
def test_reads_only_lower_triangle_of_c(mode, rng):
    a = pt.matrix("a")
    c = pt.matrix("c")
    f = pytensor.function([a, c], sym_rank_k(a, c, alpha=ALPHA, beta=BETA), mode=mode)
    av = rng.standard_normal((4, 6))
    lower = np.tril(rng.standard_normal((6, 6)))
    c_sym = lower + np.tril(lower, -1).T
    for cv in (lower.copy(), np.asfortranarray(lower)):
        cv[np.triu_indices(6, 1)] = np.nan
        _check(f(av, cv), _reference(av, c_sym, ALPHA, BETA), "float64")


@pytest.mark.parametrize("mode", MODES)
def test_zero_alpha_beta(mode, rng):
    a = pt.matrix("a")
    c = pt.matrix("c")
    c_nan = pt.matrix("c_nan")
    outs = [
        sym_rank_k(a, c_nan, alpha=2.0, beta=0.0),
        sym_rank_k(a, c, alpha=0.0, beta=2.0),
        sym_rank_k(a, alpha=0.0),
    ]
    f = pytensor.function([a, c, c_nan], outs, mode=mode)
    av, cv = rng.standard_normal((5, 3)), _sym(rng, 3, "float64")
    out1, out2, out3 = f(av, cv, np.full((3, 3), np.nan))
    # beta == 0: c is not referenced at all (NaN does not propagate), as in BLAS
    _check(out1, _reference(av, alpha=2.0), "float64")
    _check(out2, 2.0 * cv, "float64")
    _check(out3, np.zeros((3, 3)), "float64")


def test_numba_dispatch_registered():
    from pytensor.link.numba.dispatch.basic import numba_funcify, numba_funcify_and_cache_key

    assert numba_funcify.dispatch(SymRankK) is not numba_funcify.dispatch(object)
    a = pt.matrix("a")
    node = sym_rank_k(a, a.T @ a, beta=2.0).owner
    _, key = numba_funcify_and_cache_key(node.op, node=node)
    assert key is not None  # cacheable on disk by PyTensor's numba cache


def test_cvm_linker(rng):
    """The C linker (no C code for this Op) also runs `perform`."""
    a = pt.matrix("a")
    c = pt.matrix("c")
    f = pytensor.function([a, c], sym_rank_k(a, c, alpha=ALPHA, beta=BETA), mode="CVM")
    av, cv = rng.standard_normal((6, 4)), _sym(rng, 4, "float64")
    _check(f(av, cv), _reference(av, cv, ALPHA, BETA), "float64")


def test_static_shapes_and_dtypes():
    out = sym_rank_k(pt.tensor("a", shape=(3, 5), dtype="float32"))
    assert out.type.shape == (5, 5) and out.type.dtype == "float32"
    out = sym_rank_k(pt.matrix("a"), pt.tensor("c", shape=(4, None)))
    assert out.type.shape == (4, 4)
    assert sym_rank_k(pt.matrix("a")).type.shape == (None, None)
    # dtype promotion by the helper: a float32 + c float64 -> float64; ints -> float
    out = sym_rank_k(pt.matrix("a", dtype="float32"), pt.matrix("c", dtype="float64"))
    assert out.type.dtype == "float64"
    assert sym_rank_k(pt.matrix("a", dtype="int8")).type.dtype == "float32"
    assert sym_rank_k(pt.matrix("a", dtype="int64")).type.dtype == "float64"


def test_infer_shape_does_not_compute():
    a = pt.matrix("a")
    f = pytensor.function([a], sym_rank_k(a).shape, mode="NUMBA")
    assert not any(isinstance(n.op, SymRankK) for n in f.maker.fgraph.toposort())
    assert tuple(f(np.zeros((2, 7)))) == (7, 7)


def test_invalid_inputs():
    with pytest.raises(TypeError, match="matrix"):
        sym_rank_k(pt.vector("a"))
    with pytest.raises(TypeError, match="complex"):
        sym_rank_k(pt.matrix("a", dtype="complex128"))
    with pytest.raises(TypeError, match="dtype"):
        SymRankK(beta=1.0, has_c=True)(pt.matrix(dtype="float32"), pt.matrix(dtype="float64"))
    with pytest.raises(TypeError):
        SymRankK(has_c=True)(pt.matrix())
    with pytest.raises(ValueError, match="static shape"):
        sym_rank_k(pt.tensor(shape=(2, 3)), pt.tensor(shape=(4, 4)), beta=1.0)
    with pytest.raises(ValueError, match="finite"):
        SymRankK(alpha=float("nan"))


@pytest.mark.parametrize("mode", MODES)
def test_runtime_shape_mismatch(mode):
    a = pt.matrix("a")
    c = pt.matrix("c")
    f = pytensor.function([a, c], sym_rank_k(a, c, beta=1.0), mode=mode)
    with pytest.raises(ValueError):
        f(np.ones((2, 3)), np.ones((4, 4)))


def test_props_and_str():
    assert SymRankK(2.0, 1.0, True) == SymRankK(alpha=2, beta=1, has_c=True)
    assert hash(SymRankK(2.0)) == hash(SymRankK(2.0, beta=5.0))  # beta ignored without c
    assert SymRankK(2.0) != SymRankK(3.0)
    assert str(SymRankK(2.0, 0.5, True)) == "SymRankK{2.0 * a.T @ a + 0.5 * c}"
    assert str(SymRankK()) == "SymRankK{1.0 * a.T @ a}"


def test_grad_not_implemented():
    a = pt.matrix("a")
    with pytest.raises(Exception, match="SymRankK"):
        pytensor.grad(sym_rank_k(a).sum(), a)


@pytest.mark.parametrize("n", [0, 1, 5, 255, 256, 257, 600])
@pytest.mark.parametrize("order", ["C", "F"])
def test_mirror_lower_to_upper(n, order, rng):
    x = np.asarray(rng.standard_normal((n, n)), order=order)
    expected = np.tril(x) + np.tril(x, -1).T
    assert mirror_lower_to_upper(x) is x
    np.testing.assert_array_equal(x, expected)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_jax(dtype, rng):
    pytest.importorskip("jax")
    a = pt.matrix("a", dtype=dtype)
    c = pt.matrix("c", dtype=dtype)
    f = pytensor.function(
        [a, c], [sym_rank_k(a, c, alpha=ALPHA, beta=BETA), sym_rank_k(a)], mode="JAX"
    )
    av, cv = _rand(rng, (7, 4), dtype), _sym(rng, 4, dtype)
    out1, out2 = (np.asarray(o) for o in f(av, cv))
    assert out1.dtype == np.dtype(dtype) and out2.dtype == np.dtype(dtype)
    np.testing.assert_allclose(out1, _reference(av, cv, ALPHA, BETA), **_tol(dtype))
    np.testing.assert_allclose(out2, _reference(av), **_tol(dtype))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_pytorch(dtype, rng):
    pytest.importorskip("torch")
    a = pt.matrix("a", dtype=dtype)
    c = pt.matrix("c", dtype=dtype)
    f = pytensor.function(
        [a, c], [sym_rank_k(a, c, alpha=ALPHA, beta=BETA), sym_rank_k(a)], mode="PYTORCH"
    )
    av, cv = _rand(rng, (7, 4), dtype), _sym(rng, 4, dtype)
    out1, out2 = (np.asarray(o) for o in f(av, cv))
    assert out1.dtype == np.dtype(dtype) and out2.dtype == np.dtype(dtype)
    np.testing.assert_allclose(out1, _reference(av, cv, ALPHA, BETA), **_tol(dtype))
    np.testing.assert_allclose(out2, _reference(av), **_tol(dtype))


# --------------------------------------------------------------------------------------------
# SymProduct
# --------------------------------------------------------------------------------------------

# (k, n): k > n, k < n, square, tiny, single row / column, empty, k not divisible by the blocks.
SP_SHAPES = [(7, 5), (5, 7), (6, 6), (1, 1), (1, 4), (4, 1), (40, 25), (13, 3), (0, 3), (3, 0)]
# None: the default rule; 16 > k for every shape above (clipped to k blocks of one row).
SP_BLOCKS = [None, 1, 2, 3, 5, 16]


def _sym_pair(rng, k, n, dtype):
    """``(a, b)`` with ``a @ b`` symmetric by construction: ``a = X``, ``b = M @ X.T``, M symmetric.

    Built in float64 and cast, so in float32 ``a @ b`` is symmetric up to rounding only."""
    x = rng.standard_normal((k, n))
    g = rng.standard_normal((n, n))
    m = (g + g.T) / (2.0 * np.sqrt(max(n, 1)))
    return x.astype(dtype), (m @ x.T).astype(dtype)


def _sp_reference(a, b, c=None, alpha=1.0, beta=0.0):
    """Independent float64 reference ``alpha * a @ b + beta * c`` (every entry computed)."""
    out = alpha * (np.asarray(a, dtype=np.float64) @ np.asarray(b, dtype=np.float64))
    if c is not None:
        out = out + beta * np.asarray(c, dtype=np.float64)
    return out


def _lower_mirrored(x):
    return np.tril(x) + np.tril(x, -1).T


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_sym_product_against_numpy(mode, dtype, rng):
    a = pt.matrix("a", dtype=dtype)
    b = pt.matrix("b", dtype=dtype)
    c = pt.matrix("c", dtype=dtype)
    outs = []
    for nb in SP_BLOCKS:
        outs += [
            sym_product(a, b, blocks=nb),
            sym_product(a, b, c, alpha=ALPHA, beta=BETA, blocks=nb),
        ]
    outs += [sym_product(a, b, alpha=ALPHA), sym_product(a, b, c, beta=1.0)]
    f = pytensor.function([a, b, c], outs, mode=mode)
    for k, n in SP_SHAPES:
        av, bv = _sym_pair(rng, k, n, dtype)
        cv = _sym(rng, k, dtype)
        inputs_before = [x.copy() for x in (av, bv, cv)]
        results = f(av, bv, cv)
        refs = []
        for _ in SP_BLOCKS:
            refs += [_sp_reference(av, bv), _sp_reference(av, bv, cv, ALPHA, BETA)]
        refs += [_sp_reference(av, bv, alpha=ALPHA), _sp_reference(av, bv, cv, 1.0, 1.0)]
        for i, (out, ref) in enumerate(zip(results, refs, strict=True)):
            try:
                _check(out, ref, dtype)
            except AssertionError as err:
                raise AssertionError(f"(k, n) = {(k, n)}, output {i}: {err}") from None
        for x, before in zip((av, bv, cv), inputs_before, strict=True):
            np.testing.assert_array_equal(x, before)  # inputs are not overwritten


def _embed(shape, like, order="C"):
    return np.full(shape, np.nan, dtype=like.dtype, order=order)


def _layout_rows(x):  # rows contiguous, leading dimension 2 * q
    base = _embed((x.shape[0], 2 * x.shape[1] + 1), x)
    base[:, 1 : x.shape[1] + 1] = x
    return base[:, 1 : x.shape[1] + 1]


def _layout_strided_rows(x):  # every other row: rows contiguous, leading dimension 2 * q
    base = _embed((2 * x.shape[0], x.shape[1]), x)
    base[::2] = x
    return base[::2]


def _layout_cols_ld(x):  # columns contiguous with a leading dimension larger than p
    base = _embed((x.shape[0] + 3, x.shape[1] + 2), x, order="F")
    base[2 : x.shape[0] + 2, 1 : x.shape[1] + 1] = x
    return base[2 : x.shape[0] + 2, 1 : x.shape[1] + 1]


def _layout_strided_cols(x):  # neither rows nor columns contiguous: BLAS needs a copy
    base = _embed((x.shape[0], 2 * x.shape[1]), x)
    base[:, ::2] = x
    return base[:, ::2]


def _layout_reversed(x):  # negative strides: BLAS needs a copy
    return np.ascontiguousarray(x[::-1, ::-1])[::-1, ::-1]


# Array layouts with the same values: how each reaches BLAS is in the comments of the helpers.
LAYOUTS = {
    "C": np.ascontiguousarray,
    "F": np.asfortranarray,
    "transposed_F": lambda x: np.ascontiguousarray(x.T).T,  # F-contiguous view
    "transposed_C": lambda x: np.asfortranarray(x.T).T,  # C-contiguous view
    "rows_ld": _layout_rows,
    "strided_rows": _layout_strided_rows,
    "cols_ld": _layout_cols_ld,
    "strided_cols": _layout_strided_cols,
    "reversed": _layout_reversed,
}
LAYOUT_PAIRS = sorted({(name, "C") for name in LAYOUTS} | {("C", name) for name in LAYOUTS})
LAYOUT_PAIRS += [(name, name) for name in LAYOUTS if name != "C"]


@pytest.mark.parametrize("mode", MODES)
def test_sym_product_input_layouts(mode, rng):
    """C-/F-ordered, transposed, sliced and reversed arrays passed straight in as `a`, `b`, `c`;
    NaN around every slice: only the view itself may be read."""
    a = pt.matrix("a")
    b = pt.matrix("b")
    c = pt.matrix("c")
    outs = [
        sym_product(a, b, blocks=3),
        sym_product(a, b, c, alpha=ALPHA, beta=BETA, blocks=2),
        sym_product(a, b, c, alpha=ALPHA, beta=BETA, blocks=1),
    ]
    f = pytensor.function([a, b, c], outs, mode=mode)
    for k, n in [(7, 5), (5, 8)]:
        av, bv = _sym_pair(rng, k, n, "float64")
        cv = _sym(rng, k, "float64")
        refs = [
            _sp_reference(av, bv),
            _sp_reference(av, bv, cv, ALPHA, BETA),
            _sp_reference(av, bv, cv, ALPHA, BETA),
        ]
        for la, lb in LAYOUT_PAIRS:
            a_in, b_in, c_in = LAYOUTS[la](av), LAYOUTS[lb](bv), LAYOUTS[la](cv)
            assert np.array_equal(a_in, av) and np.array_equal(b_in, bv)
            for i, (out, ref) in enumerate(zip(f(a_in, b_in, c_in), refs, strict=True)):
                err_msg = f"(k, n) = {(k, n)}, layouts a={la}, b={lb}, output {i}"
                np.testing.assert_allclose(out, ref, **_tol("float64"), err_msg=err_msg)
                assert np.array_equal(out, out.T), err_msg


# Views built in the graph (Subtensor / transpose): (base array from the value, the view).
GRAPH_VIEWS = {
    "transposed": (lambda x: np.ascontiguousarray(x.T), lambda t: t.T),
    "rows": (lambda x: np.repeat(x, 2, axis=0), lambda t: t[::2]),
    "cols": (lambda x: np.repeat(x, 2, axis=1), lambda t: t[:, ::2]),
    "sub": (lambda x: np.pad(x, ((1, 2), (2, 3))), lambda t: t[1:-2, 2:-3]),
    "transposed_sub": (lambda x: np.pad(x.T, ((2, 1), (1, 1))), lambda t: t[2:-1, 1:-1].T),
    "reversed": (lambda x: np.ascontiguousarray(x[::-1, ::-1]), lambda t: t[::-1, ::-1]),
}


@pytest.mark.parametrize("mode", MODES)
def test_sym_product_graph_views(mode, rng):
    """`a` and `b` are views built in the graph, so the Op sees strided / transposed arrays."""
    k, n = 9, 6
    av, bv = _sym_pair(rng, k, n, "float64")
    cv = _sym(rng, k, "float64")
    c = pt.matrix("c")
    xs = {name: (pt.matrix(f"x_{name}"), pt.matrix(f"y_{name}")) for name in GRAPH_VIEWS}
    outs = [
        sym_product(view(x), view(y), c, alpha=ALPHA, beta=BETA, blocks=2)
        for (x, y), (_, view) in zip(xs.values(), GRAPH_VIEWS.values(), strict=True)
    ]
    f = pytensor.function([c, *(v for pair in xs.values() for v in pair)], outs, mode=mode)
    values = [v for base, _ in GRAPH_VIEWS.values() for v in (base(av), base(bv))]
    ref = _sp_reference(av, bv, cv, ALPHA, BETA)
    for name, out in zip(GRAPH_VIEWS, f(cv, *values), strict=True):
        np.testing.assert_allclose(out, ref, **_tol("float64"), err_msg=name)
        assert np.array_equal(out, out.T), name


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_sym_product_computes_lower_triangle(mode, dtype, rng):
    """With a non-symmetric `a @ b` the result is its lower triangle mirrored: the blocks cover
    exactly the lower triangle, and the mirror copies it up (not the other way round)."""
    a = pt.matrix("a", dtype=dtype)
    b = pt.matrix("b", dtype=dtype)
    c = pt.matrix("c", dtype=dtype)
    blocks = [None, 1, 2, 3, 4, 7]
    outs = [sym_product(a, b, c, alpha=ALPHA, beta=BETA, blocks=nb) for nb in blocks]
    f = pytensor.function([a, b, c], outs, mode=mode)
    for k, n in [(11, 6), (4, 9), (1, 3)]:
        av, bv = _rand(rng, (k, n), dtype), _rand(rng, (n, k), dtype)
        cv = _rand(rng, (k, k), dtype)  # not symmetric either: its lower triangle is used
        ref = _lower_mirrored(_sp_reference(av, bv, cv, ALPHA, BETA))
        for layout in ("C", "F", "strided_cols"):
            args = [LAYOUTS[layout](x) for x in (av, bv, cv)]
            for nb, out in zip(blocks, f(*args), strict=True):
                err_msg = f"(k, n) = {(k, n)}, layout {layout}, blocks={nb}"
                np.testing.assert_allclose(out, ref, **_tol(dtype), err_msg=err_msg)
                assert np.array_equal(out, out.T), err_msg


@pytest.mark.parametrize("mode", MODES)
def test_sym_product_reads_only_lower_triangle_of_c(mode, rng):
    a = pt.matrix("a")
    b = pt.matrix("b")
    c = pt.matrix("c")
    outs = [sym_product(a, b, c, alpha=ALPHA, beta=BETA, blocks=nb) for nb in (None, 1, 3)]
    f = pytensor.function([a, b, c], outs, mode=mode)
    av, bv = _sym_pair(rng, 8, 5, "float64")
    lower = np.tril(rng.standard_normal((8, 8)))
    ref = _sp_reference(av, bv, _lower_mirrored(lower), ALPHA, BETA)
    for cv in (lower.copy(), np.asfortranarray(lower), _layout_strided_cols(lower)):
        cv[np.triu_indices(8, 1)] = np.nan
        for out in f(av, bv, cv):
            _check(out, ref, "float64")


@pytest.mark.parametrize("mode", MODES)
def test_sym_product_zero_alpha_beta(mode, rng):
    a = pt.matrix("a")
    b = pt.matrix("b")
    c = pt.matrix("c")
    outs = [
        sym_product(a, b, c, alpha=2.0, beta=0.0, blocks=2),  # c not referenced
        sym_product(a, b, c, alpha=0.0, beta=2.0, blocks=2),  # a and b not referenced
        sym_product(a, b, alpha=0.0),
    ]
    f = pytensor.function([a, b, c], outs, mode=mode)
    av, bv = _sym_pair(rng, 5, 3, "float64")
    cv = _sym(rng, 5, "float64")
    nan5 = np.full((5, 5), np.nan)
    out1, _, _ = f(av, bv, nan5)
    _check(out1, _sp_reference(av, bv, alpha=2.0), "float64")
    _, out2, out3 = f(np.full((5, 3), np.nan), np.full((3, 5), np.nan), cv)
    _check(out2, 2.0 * cv, "float64")
    _check(out3, np.zeros((5, 5)), "float64")


def test_sym_product_large_output(rng):
    """Outputs of 4 MiB and more are allocated by NumPy in the numba kernel; default blocks."""
    dtypes = ("float64", "float32")
    k = 1100
    assert sym_product_blocks(k) > 1
    a = {dt: pt.matrix(f"a_{dt}", dtype=dt) for dt in dtypes}
    b = {dt: pt.matrix(f"b_{dt}", dtype=dt) for dt in dtypes}
    c = {dt: pt.matrix(f"c_{dt}", dtype=dt) for dt in dtypes}
    outs = [sym_product(a[dt], b[dt], c[dt], alpha=ALPHA, beta=BETA) for dt in dtypes]
    f = pytensor.function([*a.values(), *b.values(), *c.values()], outs, mode="NUMBA")
    pairs = {dt: _sym_pair(rng, k, 4, dt) for dt in dtypes}
    cv = {dt: _sym(rng, k, dt) for dt in dtypes}
    args = [pairs[dt][0] for dt in dtypes] + [pairs[dt][1] for dt in dtypes] + list(cv.values())
    for dt, out in zip(dtypes, f(*args), strict=True):
        _check(out, _sp_reference(*pairs[dt], cv[dt], ALPHA, BETA), dt)
        assert out.flags.c_contiguous and out.flags.writeable


def test_sym_product_blocks_rule():
    assert sym_product_blocks(0) == 1
    assert sym_product_blocks(1) == 1
    counts = [sym_product_blocks(k) for k in range(0, 20001, 50)]
    assert all(1 <= nb <= 8 for nb in counts)
    assert counts == sorted(counts)  # more rows never means fewer blocks
    assert sym_product_blocks(2000) > 1  # the Kalman filter's size (see benchmarks/)


def test_sym_product_blocks_rule_same_in_numba():
    import numba

    from autotune.kernels.product_ops import _n_blocks, _numba_n_blocks

    n_blocks = numba.njit(lambda blocks, k: _numba_n_blocks(blocks, k))
    for k in [0, 1, 2, 5, 127, 128, 255, 256, 500, 1000, 1023, 1024, 2000, 5000]:
        assert n_blocks(0, k) == _n_blocks(None, k), k  # 0: the default rule in numba
        for nb in (1, 3, 8, 100):
            assert n_blocks(nb, k) == _n_blocks(nb, k), (k, nb)


def test_sym_product_numba_dispatch_registered():
    from pytensor.link.numba.dispatch.basic import numba_funcify, numba_funcify_and_cache_key

    assert numba_funcify.dispatch(SymProduct) is not numba_funcify.dispatch(object)
    a = pt.matrix("a")
    node = sym_product(a, a.T, a @ a.T, beta=2.0, blocks=3).owner
    _, key = numba_funcify_and_cache_key(node.op, node=node)
    assert key is not None  # cacheable on disk by PyTensor's numba cache
    other = sym_product(a, a.T, a @ a.T, beta=2.0, blocks=4).owner
    assert numba_funcify_and_cache_key(other.op, node=other)[1] != key


def test_sym_product_cvm_linker(rng):
    """The C linker (no C code for this Op) also runs `perform`."""
    a = pt.matrix("a")
    b = pt.matrix("b")
    c = pt.matrix("c")
    f = pytensor.function(
        [a, b, c], sym_product(a, b, c, alpha=ALPHA, beta=BETA, blocks=2), mode="CVM"
    )
    av, bv = _sym_pair(rng, 6, 4, "float64")
    cv = _sym(rng, 6, "float64")
    _check(f(av, bv, cv), _sp_reference(av, bv, cv, ALPHA, BETA), "float64")


def test_sym_product_static_shapes_and_dtypes():
    out = sym_product(pt.tensor("a", shape=(3, 5), dtype="float32"), pt.matrix(dtype="float32"))
    assert out.type.shape == (3, 3) and out.type.dtype == "float32"
    out = sym_product(pt.matrix("a"), pt.tensor("b", shape=(None, 4)))
    assert out.type.shape == (4, 4)
    out = sym_product(pt.matrix("a"), pt.matrix("b"), pt.tensor("c", shape=(None, 6)), beta=1.0)
    assert out.type.shape == (6, 6)
    assert sym_product(pt.matrix("a"), pt.matrix("b")).type.shape == (None, None)
    # dtype promotion by the helper: float32 with float64 -> float64; ints -> float
    f32, f64 = pt.matrix(dtype="float32"), pt.matrix(dtype="float64")
    assert sym_product(f32, f64).type.dtype == "float64"
    assert sym_product(f32, f32, f64).type.dtype == "float64"
    assert sym_product(f32, f32, f32).type.dtype == "float32"
    assert sym_product(pt.matrix(dtype="int8"), pt.matrix(dtype="int8")).type.dtype == "float32"
    assert sym_product(pt.matrix(dtype="int64"), f32).type.dtype == "float64"


def test_sym_product_infer_shape_does_not_compute():
    a = pt.matrix("a")
    b = pt.matrix("b")
    f = pytensor.function([a, b], sym_product(a, b).shape, mode="NUMBA")
    assert not any(isinstance(n.op, SymProduct) for n in f.maker.fgraph.toposort())
    assert tuple(f(np.zeros((7, 2)), np.zeros((2, 7)))) == (7, 7)


def test_sym_product_invalid_inputs():
    m, v = pt.matrix, pt.vector
    with pytest.raises(TypeError, match="`a` must be a matrix"):
        sym_product(v("a"), m("b"))
    with pytest.raises(TypeError, match="`b` must be a matrix"):
        sym_product(m("a"), v("b"))
    with pytest.raises(TypeError, match="`c` must be a matrix"):
        sym_product(m("a"), m("b"), v("c"), beta=1.0)
    with pytest.raises(TypeError, match="complex"):
        sym_product(m("a", dtype="complex128"), m("b"))
    with pytest.raises(TypeError, match="dtype"):
        SymProduct()(m(dtype="float32"), m(dtype="float64"))
    with pytest.raises(TypeError, match="dtype"):
        SymProduct(beta=1.0, has_c=True)(m(), m(), m(dtype="float32"))
    with pytest.raises(TypeError, match="float32 or float64"):
        SymProduct()(m(dtype="int64"), m(dtype="int64"))
    with pytest.raises(TypeError, match="needs the input `c`"):
        SymProduct(has_c=True)(m(), m())
    with pytest.raises(TypeError, match="takes no input `c`"):
        SymProduct()(m(), m(), m())
    shape = pt.tensor
    with pytest.raises(ValueError, match="static shapes"):  # inner dimensions differ
        sym_product(shape(shape=(2, 3)), shape(shape=(4, 2)))
    with pytest.raises(ValueError, match="static shapes"):  # b is (n, k') with k' != k
        sym_product(shape(shape=(2, 3)), shape(shape=(3, 5)))
    with pytest.raises(ValueError, match="static shapes"):
        sym_product(shape(shape=(2, 3)), m(), shape(shape=(2, 4)), beta=1.0)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="blocks"):
            sym_product(m(), m(), blocks=bad)
    for bad in (1.5, True, "2"):
        with pytest.raises(TypeError, match="blocks"):
            sym_product(m(), m(), blocks=bad)
    with pytest.raises(ValueError, match="finite"):
        SymProduct(alpha=float("inf"))


@pytest.mark.parametrize("mode", MODES)
def test_sym_product_runtime_shape_mismatch(mode):
    a = pt.matrix("a")
    b = pt.matrix("b")
    c = pt.matrix("c")
    f = pytensor.function([a, b], sym_product(a, b), mode=mode)
    for bv in (np.ones((4, 2)), np.ones((3, 3)), np.ones((2, 3))):
        with pytest.raises(ValueError):
            f(np.ones((2, 3)), bv)
    g = pytensor.function([a, b, c], sym_product(a, b, c, beta=1.0), mode=mode)
    with pytest.raises(ValueError):
        g(np.ones((2, 3)), np.ones((3, 2)), np.ones((3, 3)))


def test_sym_product_props_and_str():
    assert SymProduct(2.0, 1.0, True, 3) == SymProduct(alpha=2, beta=1, has_c=True, blocks=3)
    assert hash(SymProduct(2.0)) == hash(SymProduct(2.0, beta=5.0))  # beta ignored without c
    assert SymProduct(2.0) != SymProduct(3.0)
    assert SymProduct(blocks=2) != SymProduct(blocks=3) != SymProduct()
    assert SymProduct(blocks=np.int64(2)).blocks == 2
    assert str(SymProduct(2.0, 0.5, True)) == "SymProduct{2.0 * a @ b + 0.5 * c}"
    assert str(SymProduct(blocks=4)) == "SymProduct{1.0 * a @ b, blocks=4}"


def test_sym_product_grad_not_implemented():
    a = pt.matrix("a")
    with pytest.raises(Exception, match="SymProduct"):
        pytensor.grad(sym_product(a, a.T).sum(), a)


@pytest.mark.parametrize("backend", ["JAX", "PYTORCH"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_sym_product_jax_pytorch(backend, dtype, rng):
    pytest.importorskip({"JAX": "jax", "PYTORCH": "torch"}[backend])
    a = pt.matrix("a", dtype=dtype)
    b = pt.matrix("b", dtype=dtype)
    c = pt.matrix("c", dtype=dtype)
    outs = [
        sym_product(a, b, c, alpha=ALPHA, beta=BETA),
        sym_product(a, b, c, alpha=ALPHA, beta=0.0),
        sym_product(a, b, blocks=2),
    ]
    f = pytensor.function([a, b, c], outs, mode=backend)
    av, bv = _sym_pair(rng, 7, 4, dtype)
    cv = _sym(rng, 7, dtype)
    refs = [
        _sp_reference(av, bv, cv, ALPHA, BETA),
        _sp_reference(av, bv, alpha=ALPHA),
        _sp_reference(av, bv),
    ]
    for out, ref in zip(f(av, bv, cv), refs, strict=True):
        out = np.asarray(out)
        assert out.dtype == np.dtype(dtype)
        np.testing.assert_allclose(out, ref, **_tol(dtype))


def _run_python(code):
    root = Path(autotune.kernels.__file__).resolve().parents[2]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_import_does_not_load_jax_or_torch():
    _run_python(
        "import sys, autotune.kernels\n"
        "assert 'jax' not in sys.modules and 'torch' not in sys.modules, 'eager backend import'\n"
    )


@pytest.mark.parametrize(
    ("backend", "dispatcher", "funcify"),
    [
        ("jax", "pytensor.link.jax.dispatch", "jax_funcify"),
        ("torch", "pytensor.link.pytorch.dispatch", "pytorch_funcify"),
    ],
)
def test_backend_registration_either_import_order(backend, dispatcher, funcify):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    ops = ("SymRankK", "SymProduct", "SPDInverse")
    check = "".join(f"assert k.{op} in d.{funcify}.registry\n" for op in ops)
    # dispatcher first: registered at import of autotune.kernels
    _run_python(f"import {dispatcher} as d\nimport autotune.kernels as k\n{check}")
    # autotune.kernels first: registered by the post-import hook
    _run_python(f"import autotune.kernels as k\nimport {dispatcher} as d\n{check}")


# --------------------------------------------------------------------------------------------
# SPDInverse
# --------------------------------------------------------------------------------------------

SPD_SIZES = [0, 1, 2, 7, 64, 300]


def _spd(rng, n, dtype):
    """A random SPD matrix with eigenvalues in about [0.5, 4.5] (condition number below ~10)."""
    g = rng.standard_normal((n, n))
    return (g @ g.T / max(n, 1) + 0.5 * np.eye(n)).astype(dtype)


def _inv_reference(x):
    """Independent float64 reference: LU-based ``np.linalg.inv`` of the float64 values."""
    x64 = np.asarray(x, dtype=np.float64)
    return np.linalg.inv(x64) if x64.size else np.zeros_like(x64)


def _check_inv(out, ref, dtype, err_msg=""):
    out = np.asarray(out)
    assert out.dtype == np.dtype(dtype), err_msg
    assert out.shape == ref.shape, err_msg
    scale = float(np.abs(ref).max()) if ref.size else 1.0
    rtol, atol = (1e-4, 1e-5 * scale) if dtype == "float32" else (1e-10, 1e-12 * scale)
    np.testing.assert_allclose(out, ref, rtol=rtol, atol=atol, err_msg=err_msg)
    assert np.array_equal(out, out.T), f"result is not exactly symmetric {err_msg}"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_spd_inverse_against_numpy(mode, dtype, rng):
    """Every size and input layout (C, F, transposed and sliced views with NaN around them)."""
    x = pt.matrix("x", dtype=dtype)
    f = pytensor.function([x], spd_inverse(x), mode=mode)
    for n in SPD_SIZES:
        xv = _spd(rng, n, dtype)
        ref = _inv_reference(xv)
        for layout, make in LAYOUTS.items():
            x_in = make(xv)
            assert np.array_equal(x_in, xv)
            before = x_in.copy(order="K")
            out = f(x_in)
            _check_inv(out, ref, dtype, err_msg=f"n={n}, layout {layout}")
            assert out.flags.c_contiguous and out.flags.writeable
            np.testing.assert_array_equal(x_in, before)  # the input is not modified


@pytest.mark.parametrize("mode", MODES)
def test_spd_inverse_graph_views(mode, rng):
    """`x` is a view built in the graph (Subtensor / transpose), so the Op sees strided arrays."""
    xv = _spd(rng, 9, "float64")
    xs = {name: pt.matrix(f"x_{name}") for name in GRAPH_VIEWS}
    outs = [spd_inverse(view(xs[name])) for name, (_, view) in GRAPH_VIEWS.items()]
    f = pytensor.function(list(xs.values()), outs, mode=mode)
    ref = _inv_reference(xv)
    for name, out in zip(
        GRAPH_VIEWS, f(*(base(xv) for base, _ in GRAPH_VIEWS.values())), strict=True
    ):
        _check_inv(out, ref, "float64", err_msg=name)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_spd_inverse_reads_only_lower_triangle(mode, dtype, rng):
    """The strict upper triangle is NaN (and the lower one alone defines the matrix): only the
    lower triangle may be read, in every layout."""
    x = pt.matrix("x", dtype=dtype)
    f = pytensor.function([x], spd_inverse(x), mode=mode)
    for n in (1, 5, 70):
        lower = np.tril(_spd(rng, n, dtype) + np.tril(_rand(rng, (n, n), dtype), -1) / n)
        ref = _inv_reference(_lower_mirrored(lower))
        x_nan = lower.copy()
        x_nan[np.triu_indices(n, 1)] = np.nan
        for layout, make in LAYOUTS.items():
            _check_inv(f(make(x_nan)), ref, dtype, err_msg=f"n={n}, layout {layout}")


def _not_positive_definite(n):
    """Symmetric matrices that are not positive definite, each failing in potrf."""
    indefinite = np.eye(n)
    indefinite[n - 1, n - 1] = -1.0  # one negative eigenvalue, last pivot fails
    bad = {"-I": -np.eye(n), "indefinite": indefinite, "zero": np.zeros((n, n))}
    if n > 1:  # a symmetric permutation: eigenvalues +1 and -1, the first pivot is 0
        bad["swap"] = np.eye(n)[::-1].copy()
    return bad


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_spd_inverse_not_positive_definite_python(dtype, rng):
    """Python/C linkers: numpy.linalg.LinAlgError (scipy's LinAlgError is the same class)."""
    import scipy.linalg

    assert scipy.linalg.LinAlgError is np.linalg.LinAlgError
    x = pt.matrix("x", dtype=dtype)
    for mode in ("FAST_COMPILE", "CVM"):
        f = pytensor.function([x], spd_inverse(x), mode=mode)
        for name, bad in _not_positive_definite(6).items():
            for layout in ("C", "F"):
                x_in = LAYOUTS[layout](bad.astype(dtype))
                before = x_in.copy()
                with pytest.raises(np.linalg.LinAlgError, match="not positive definite"):
                    f(x_in)
                np.testing.assert_array_equal(x_in, before, err_msg=f"{mode} {name} {layout}")
        xv = _spd(rng, 6, dtype)  # still works afterwards
        _check_inv(f(xv), _inv_reference(xv), dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_spd_inverse_not_positive_definite_numba(dtype, rng):
    """Numba: a NaN-filled result, as PyTensor's numba Cholesky when potrf fails."""
    x = pt.matrix("x", dtype=dtype)
    f = pytensor.function([x], spd_inverse(x), mode="NUMBA")
    for n in (1, 6, 100):
        for name, bad in _not_positive_definite(n).items():
            for layout in ("C", "F"):
                x_in = LAYOUTS[layout](bad.astype(dtype))
                before = x_in.copy()
                out = f(x_in)
                err_msg = f"n={n}, {name}, layout {layout}"
                assert out.shape == (n, n) and out.dtype == np.dtype(dtype), err_msg
                assert np.isnan(out).all(), err_msg
                np.testing.assert_array_equal(x_in, before, err_msg=err_msg)
    xv = _spd(rng, 6, dtype)  # still works afterwards
    _check_inv(f(xv), _inv_reference(xv), dtype)


def test_spd_inverse_large_output(rng):
    """Outputs of 4 MiB and more are allocated by NumPy in the numba kernel."""
    dtypes = ("float64", "float32")
    xs = {dt: pt.matrix(f"x_{dt}", dtype=dt) for dt in dtypes}
    f = pytensor.function(list(xs.values()), [spd_inverse(x) for x in xs.values()], mode="NUMBA")
    xv = {dt: _spd(rng, 1100, dt) for dt in dtypes}
    for dt, out in zip(dtypes, f(*xv.values()), strict=True):
        _check_inv(out, _inv_reference(xv[dt]), dt)
        assert out.flags.c_contiguous and out.flags.writeable


@pytest.mark.parametrize("backend", ["JAX", "PYTORCH"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_spd_inverse_jax_pytorch(backend, dtype, rng):
    pytest.importorskip({"JAX": "jax", "PYTORCH": "torch"}[backend])
    x = pt.matrix("x", dtype=dtype)
    f = pytensor.function([x], spd_inverse(x), mode=backend)
    xv = _spd(rng, 7, dtype)
    _check_inv(f(xv), _inv_reference(xv), dtype)
    x_nan = xv.copy()
    x_nan[np.triu_indices(7, 1)] = np.nan  # only the lower triangle is read
    _check_inv(f(x_nan), _inv_reference(xv), dtype)
    for name, bad in _not_positive_definite(7).items():
        out = np.asarray(f(bad.astype(dtype)))
        assert out.dtype == np.dtype(dtype) and np.isnan(out).all(), name


def test_spd_inverse_invalid_inputs():
    with pytest.raises(TypeError, match="`x` must be a matrix"):
        spd_inverse(pt.vector("x"))
    with pytest.raises(TypeError, match="`x` must be a matrix, got 3 dimensions"):
        spd_inverse(pt.tensor3("x"))
    with pytest.raises(TypeError, match="float32 or float64, got int64"):
        SPDInverse()(pt.matrix("x", dtype="int64"))
    with pytest.raises(TypeError, match="complex"):
        spd_inverse(pt.matrix("x", dtype="complex128"))
    with pytest.raises(ValueError, match="must be square, got static shape"):
        spd_inverse(pt.tensor("x", shape=(2, 3)))


@pytest.mark.parametrize("mode", MODES)
def test_spd_inverse_runtime_not_square(mode):
    x = pt.matrix("x")
    f = pytensor.function([x], spd_inverse(x), mode=mode)
    for shape in [(2, 3), (3, 2), (0, 2)]:
        with pytest.raises(ValueError, match="square"):
            f(np.ones(shape))


def test_spd_inverse_static_shapes_and_dtypes():
    out = spd_inverse(pt.tensor("x", shape=(3, None), dtype="float32"))
    assert out.type.shape == (3, 3) and out.type.dtype == "float32"
    assert spd_inverse(pt.tensor("x", shape=(None, 4))).type.shape == (4, 4)
    assert spd_inverse(pt.matrix("x")).type.shape == (None, None)
    # the builder casts integer inputs to float, as sym_rank_k does
    assert spd_inverse(pt.matrix("x", dtype="int8")).type.dtype == "float32"
    assert spd_inverse(pt.matrix("x", dtype="int64")).type.dtype == "float64"
    x = pt.matrix("x", dtype="int64")
    f = pytensor.function([x], spd_inverse(x), mode="NUMBA")
    _check_inv(f(np.array([[2, 1], [1, 2]])), np.array([[2.0, -1.0], [-1.0, 2.0]]) / 3, "float64")


def test_spd_inverse_infer_shape_does_not_compute():
    x = pt.matrix("x")
    f = pytensor.function([x], spd_inverse(x).shape, mode="NUMBA")
    assert not any(isinstance(n.op, SPDInverse) for n in f.maker.fgraph.toposort())
    assert tuple(f(np.zeros((5, 5)))) == (5, 5)


def test_spd_inverse_numba_dispatch_registered():
    from pytensor.link.numba.dispatch.basic import numba_funcify, numba_funcify_and_cache_key

    from autotune.kernels.blas import _blas_routine

    assert numba_funcify.dispatch(SPDInverse) is not numba_funcify.dispatch(object)
    node = spd_inverse(pt.matrix("x")).owner
    _, key = numba_funcify_and_cache_key(node.op, node=node)
    assert key is not None  # cacheable on disk by PyTensor's numba cache
    # LAPACK routines get their own unique names; the BLAS ones keep theirs.
    lapack = "scipy.linalg.cython_lapack"
    assert _blas_routine("potrf", "float64", "cifii", lapack)[2] == "autotune.scipy.lapack.dpotrf"
    assert _blas_routine("potri", "float32", "cifii", lapack)[2] == "autotune.scipy.lapack.spotri"
    assert _blas_routine("syrk", "float64", "cciiffiffi")[2] == "autotune.scipy.blas.dsyrk"


def test_spd_inverse_props_and_grad():
    assert SPDInverse() == SPDInverse() and hash(SPDInverse()) == hash(SPDInverse())
    assert str(SPDInverse()) == "SPDInverse"
    x = pt.matrix("x")
    with pytest.raises(Exception, match="SPDInverse"):
        pytensor.grad(spd_inverse(x).sum(), x)


# --------------------------------------------------------------------------------------------
# TriangularMatMul (BLAS trmm)
# --------------------------------------------------------------------------------------------

TRMM_VARIANTS = [
    (lower, trans, side) for lower in (True, False) for trans in (False, True)
    for side in ("left", "right")
]


def _trmm_operands(rng, m, n, side, lower, dtype):
    """A triangular `a` with NaN in its unread triangle, and a `b` that fits ``side``."""
    a = rng.standard_normal((m, m))
    unread = np.triu(np.ones((m, m), bool), 1) if lower else np.tril(np.ones((m, m), bool), -1)
    a[unread] = np.nan
    b = rng.standard_normal((m, n) if side == "left" else (n, m))
    return a.astype(dtype), b.astype(dtype)


def _trmm_reference(a, b, lower, trans, side, alpha=1.0):
    a64 = np.nan_to_num(np.asarray(a, dtype=np.float64))
    tri = np.tril(a64) if lower else np.triu(a64)
    if trans:
        tri = tri.T
    b64 = np.asarray(b, dtype=np.float64)
    return alpha * (tri @ b64 if side == "left" else b64 @ tri)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(("lower", "trans", "side"), TRMM_VARIANTS)
def test_trmm_against_numpy(lower, trans, side, dtype, mode, rng):
    from autotune.kernels.triangular_ops import trmm

    a = pt.matrix("a", dtype=dtype)
    b = pt.matrix("b", dtype=dtype)
    outs = [trmm(a, b, lower=lower, trans=trans, side=side),
            trmm(a, b, lower=lower, trans=trans, side=side, alpha=ALPHA)]
    f = pytensor.function([a, b], outs, mode=mode)
    for m, n in [(5, 3), (1, 4), (6, 1), (7, 7), (0, 3), (3, 0)]:
        av, bv = _trmm_operands(rng, m, n, side, lower, dtype)
        a_before, b_before = av.copy(), bv.copy()
        for out, alpha in zip(f(av, bv), (1.0, ALPHA), strict=True):
            assert out.dtype == np.dtype(dtype) and out.shape == bv.shape
            np.testing.assert_allclose(out, _trmm_reference(av, bv, lower, trans, side, alpha),
                                       **_tol(dtype), err_msg=f"(m, n) = {(m, n)}")
        np.testing.assert_array_equal(av, a_before)  # inputs are not overwritten
        np.testing.assert_array_equal(bv, b_before)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("lower", "trans", "side"), TRMM_VARIANTS)
def test_trmm_input_layouts(lower, trans, side, mode, rng):
    """C-/F-ordered, transposed, sliced and reversed `a` and `b`, NaN around every slice."""
    from autotune.kernels.triangular_ops import trmm

    a = pt.matrix("a")
    b = pt.matrix("b")
    f = pytensor.function([a, b], trmm(a, b, lower=lower, trans=trans, side=side, alpha=ALPHA),
                          mode=mode)
    av, bv = _trmm_operands(rng, 6, 4, side, lower, "float64")
    ref = _trmm_reference(av, bv, lower, trans, side, ALPHA)
    for la, lb in LAYOUT_PAIRS:
        a_in, b_in = LAYOUTS[la](av), LAYOUTS[lb](bv)
        np.testing.assert_allclose(f(a_in, b_in), ref, **_tol("float64"),
                                   err_msg=f"layouts a={la}, b={lb}")


@pytest.mark.parametrize("mode", MODES)
def test_trmm_alpha_zero_references_nothing(mode):
    from autotune.kernels.triangular_ops import trmm

    a = pt.matrix("a")
    b = pt.matrix("b")
    f = pytensor.function([a, b], trmm(a, b, alpha=0.0), mode=mode)
    out = f(np.full((3, 3), np.nan), np.full((3, 2), np.inf))
    np.testing.assert_array_equal(out, np.zeros((3, 2)))


def test_trmm_nodes_shapes_and_casts():
    from autotune.kernels.triangular_ops import TriangularMatMul, trmm

    assert trmm(pt.tensor("a", shape=(None, 4)), pt.matrix("b")).type.shape == (4, None)
    out = trmm(pt.matrix("a"), pt.tensor("b", shape=(3, 4)), side="right")
    assert out.type.shape == (3, 4)
    assert trmm(pt.matrix("a", dtype="int8"), pt.matrix("b", dtype="int8")).type.dtype == "float32"
    assert trmm(pt.matrix("a", dtype="int64"), pt.matrix("b")).type.dtype == "float64"
    with pytest.raises(ValueError, match="square"):
        trmm(pt.tensor("a", shape=(3, 4)), pt.matrix("b"))
    with pytest.raises(ValueError, match="side='right'"):
        trmm(pt.tensor("a", shape=(3, 3)), pt.tensor("b", shape=(3, 4)), side="right")
    with pytest.raises(ValueError, match="side"):
        TriangularMatMul(side="up")
    with pytest.raises(ValueError, match="finite"):
        TriangularMatMul(alpha=np.inf)
    with pytest.raises(TypeError, match="complex"):
        trmm(pt.matrix("a", dtype="complex128"), pt.matrix("b"))
    assert str(TriangularMatMul(lower=False, trans=True, side="right", alpha=2.0)) == (
        "TriangularMatMul{2.0 * b @ triu(a).T}"
    )
    x = pt.matrix("x")
    with pytest.raises(Exception, match="TriangularMatMul"):
        pytensor.grad(trmm(x, x).sum(), x)


def test_trmm_numba_dispatch_registered():
    from pytensor.link.numba.dispatch.basic import numba_funcify, numba_funcify_and_cache_key

    from autotune.kernels.blas import _blas_routine
    from autotune.kernels.triangular_ops import TriangularMatMul, trmm

    assert numba_funcify.dispatch(TriangularMatMul) is not numba_funcify.dispatch(object)
    node = trmm(pt.matrix("a"), pt.matrix("b")).owner
    _, key = numba_funcify_and_cache_key(node.op, node=node)
    assert key is not None  # cacheable on disk by PyTensor's numba cache
    assert _blas_routine("trmm", "float64", "cccciiffifi")[2] == "autotune.scipy.blas.dtrmm"


@pytest.mark.parametrize("backend", ["JAX", "PYTORCH"])
@pytest.mark.parametrize(("lower", "trans", "side"), TRMM_VARIANTS)
def test_trmm_jax_pytorch(backend, lower, trans, side, rng):
    pytest.importorskip({"JAX": "jax", "PYTORCH": "torch"}[backend])
    from autotune.kernels.triangular_ops import trmm

    a = pt.matrix("a")
    b = pt.matrix("b")
    f = pytensor.function([a, b], trmm(a, b, lower=lower, trans=trans, side=side, alpha=ALPHA),
                          mode=backend)
    av, bv = _trmm_operands(rng, 5, 3, side, lower, "float64")
    av = np.where(np.isnan(av), 7.0, av)  # the unread triangle: any finite value
    np.testing.assert_allclose(np.asarray(f(av, bv)),
                               _trmm_reference(np.tril(av) if lower else np.triu(av), bv,
                                               lower, trans, side, ALPHA), **_tol("float64"))


@pytest.mark.parametrize(
    ("backend", "dispatcher", "funcify"),
    [
        ("jax", "pytensor.link.jax.dispatch", "jax_funcify"),
        ("torch", "pytensor.link.pytorch.dispatch", "pytorch_funcify"),
    ],
)
def test_trmm_backend_registration_either_import_order(backend, dispatcher, funcify):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    check = f"assert t.TriangularMatMul in d.{funcify}.registry\n"
    module = "autotune.kernels.triangular_ops"
    _run_python(f"import {dispatcher} as d\nimport {module} as t\n{check}")
    _run_python(f"import {module} as t\nimport {dispatcher} as d\n{check}")
