"""Tests of autotune.kernels: the SymRankK (BLAS syrk) Op on every PyTensor backend."""

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
from autotune.kernels import SymRankK, mirror_lower_to_upper, sym_rank_k

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


def _run_python(code):
    root = Path(autotune.kernels.__file__).resolve().parents[1]
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
    check = f"assert k.SymRankK in d.{funcify}.registry\n"
    # dispatcher first: registered at import of autotune.kernels
    _run_python(f"import {dispatcher} as d\nimport autotune.kernels as k\n{check}")
    # autotune.kernels first: registered by the post-import hook
    _run_python(f"import autotune.kernels as k\nimport {dispatcher} as d\n{check}")
