"""The solve with a banded matrix formed from its terms: :class:`BandSolve`, with its Python,
Numba, JAX and PyTorch implementations.

``BandSolve(terms, lower, upper, spd)(*operands, b)`` is ``X^-1 @ b`` where
``X = sum_t coeff_t * s_t * F_t1 @ F_t2 @ ...`` has ``lower`` sub- and ``upper``
superdiagonals. Each term is ``(coeff, scalars, factors)``: a number, the indices of scalar
operands multiplied in (0-d or 1 x 1), and the factors ``(index, trans, lower, upper)``: an
operand matrix (transposed when ``trans``) of which only the band ``(lower, upper)`` -- as the
factor reads it -- is read; no factors is the identity. ``X`` is never formed densely: its
band is built diagonal by diagonal in LAPACK's band storage (``ab[upper + i - j, j] = X[i,
j]``), ``O(n w^2)`` for a band of width ``w``, from the diagonals of the factors (a product
of two banded factors is a banded sum over pairs of diagonals), and the system is solved with a
banded Cholesky (``spd``, which needs ``lower == upper``: the project's, a row of every
right-hand side at a time) or LAPACK's banded LU with partial pivoting (``?gbsv``,
:func:`scipy.linalg.solve_banded`): ``O(n w^2 + n w m)`` for ``m`` right-hand sides, where a
dense solve is ``O(n^3)``.

A failed factorization (``spd`` and not positive definite, or singular) gives NaN, as
PyTensor's numba Cholesky does, and so does a NaN or an infinity anywhere in the bands read
(or in a scalar): every element read reaches the output, and the call checks then name the
input. Numba runs the NumPy /
LAPACK implementation in object mode (one switch per call, microseconds); JAX and PyTorch
form the matrix densely from the masked factors and solve it densely (correct, not banded).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numba import njit
from pytensor.gradient import grad_not_implemented
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op

from .backends import on_backend_import

__all__ = ["BandSolve", "band_solve", "band_storage", "dense_from_terms"]

#: a factor of a term: (operand index, transposed, lower, upper as the factor reads it)
Factor = tuple[int, bool, int, int]
#: a term: (number, scalar operand indices, factors)
Term = tuple[float, tuple[int, ...], tuple[Factor, ...]]


def _check_terms(terms: Any) -> tuple[Term, ...]:
    out = []
    for t in terms:
        coeff, scalars, factors = t
        fs = tuple((int(i), bool(tr), int(lo), int(up)) for i, tr, lo, up in factors)
        if any(lo < 0 or up < 0 for _, _, lo, up in fs):
            raise ValueError(f"BandSolve: factor bands must be >= 0, got {fs}")
        out.append((float(coeff), tuple(int(s) for s in scalars), fs))
    if not out:
        raise ValueError("BandSolve: the matrix needs at least one term")
    return tuple(out)


class BandSolve(Op):
    """``X^-1 @ b`` for a banded ``X`` given by its terms; see the module."""

    __props__ = ("terms", "lower", "upper", "spd")

    def __init__(self, terms: Sequence[Term], lower: int, upper: int, spd: bool = False):
        if lower < 0 or upper < 0:
            raise ValueError(f"BandSolve: bandwidths must be >= 0, got {lower}, {upper}")
        if spd and lower != upper:
            raise ValueError("BandSolve: an SPD band is symmetric (lower == upper), got "
                             f"{lower}, {upper}")
        self.terms = _check_terms(terms)
        self.lower, self.upper, self.spd = int(lower), int(upper), bool(spd)

    def make_node(self, *inputs):
        import pytensor.tensor as pt

        xs = [pt.as_tensor_variable(x) for x in inputs]
        if len(xs) < 2:
            raise TypeError("BandSolve: operands and a right-hand side are needed")
        b = xs[-1]
        if b.type.ndim != 2:
            raise TypeError("BandSolve: the right-hand side must be a matrix")
        used = {i for _, sc, fs in self.terms for i in (*sc, *(f[0] for f in fs))}
        if used and max(used) >= len(xs) - 1:
            raise TypeError(f"BandSolve: the terms read operand {max(used)}, but only "
                            f"{len(xs) - 1} operands were given")
        for _, _, fs in self.terms:
            for i, *_ in fs:
                if xs[i].type.ndim != 2:
                    raise TypeError(f"BandSolve: factor operand {i} must be a matrix")
        return Apply(self, xs, [pt.tensor(dtype=b.type.dtype, shape=b.type.shape)])

    def infer_shape(self, fgraph, node, shapes):
        return [shapes[-1]]

    def perform(self, node, inputs, output_storage):
        dtype = node.outputs[0].type.dtype
        output_storage[0][0] = solve_from_terms(self, inputs, dtype)

    def pullback(self, inputs, outputs, cotangents):
        return [grad_not_implemented(self, i, x, "BandSolve has no gradient")
                for i, x in enumerate(inputs)]


def band_solve(operands: Sequence[Any], b: Any, terms: Sequence[Term], lower: int, upper: int,
               spd: bool = False):
    """``X^-1 @ b`` with ``X`` banded, from its terms (a :class:`BandSolve` node)."""
    return BandSolve(terms, lower, upper, spd)(*operands, b)


# -- the band algebra, in LAPACK band storage ---------------------------------------------------


def _diagonals(m: np.ndarray, lower: int, upper: int) -> np.ndarray:
    """The band of the ``r x c`` matrix ``m`` in band storage: ``s[upper - d, j] = m[j - d,
    j]`` for the diagonals ``-lower <= d <= upper`` (zero outside the matrix)."""
    out_dtype = np.result_type(m.dtype, np.float32)
    s = np.zeros((lower + upper + 1, m.shape[1]), dtype=out_dtype)
    _diagonals_into(m, lower, upper, s)
    return s


@njit(cache=True, nogil=True)
def _diagonals_into(m, lower, upper, s):  # pragma: no cover - compiled
    r, c = m.shape
    for j in range(c):  # column by column: each row of m is touched once per diagonal
        for d in range(-lower, upper + 1):
            i = j - d
            if 0 <= i < r:
                s[upper - d, j] = m[i, j]


def _product(sa: np.ndarray, la: int, ua: int, sb: np.ndarray, lb: int, ub: int,
             k: int) -> np.ndarray:
    """Band storage of ``A @ B`` from those of ``A`` (``r x k``, band ``(la, ua)``) and ``B``
    (``k x c``, band ``(lb, ub)``): band ``(la + lb, ua + ub)``, each diagonal a sum over
    pairs of diagonals, ``C[j - d, j] = sum_e A[j - d, j - e] B[j - e, j]``."""
    out = np.zeros((la + lb + ua + ub + 1, sb.shape[1]),
                   dtype=np.result_type(sa.dtype, sb.dtype))
    _product_into(sa, la, ua, sb, lb, ub, k, out)
    return out


@njit(cache=True, nogil=True)
def _product_into(sa, la, ua, sb, lb, ub, k, out):  # pragma: no cover - compiled
    c = sb.shape[1]
    lc, uc = la + lb, ua + ub
    for d in range(-lc, uc + 1):  # each pair of diagonals: one contiguous, vectorized pass
        row = out[uc - d]
        for e in range(max(-lb, d - ua), min(ub, d + la) + 1):
            a = sa[ua - d + e]
            bb = sb[ub - e]
            for j in range(max(e, 0), min(c, k + e)):
                row[j] += a[j - e] * bb[j]


def _read_bands(terms: Sequence[Term], operands: Sequence[Any]
                ) -> dict[int, tuple[np.ndarray, int, int]]:
    """Each factor operand's band, read once (in its own orientation, as wide as its widest
    use): ``index -> (storage, lower, upper)``. The diagonals of a big dense matrix are a
    page apiece: reading them twice (``D.T`` and ``D``) would cost twice."""
    need: dict[int, tuple[int, int]] = {}
    for _, _, factors in terms:
        for i, trans, fl, fu in factors:
            lo, up = (fu, fl) if trans else (fl, fu)
            old = need.get(i, (0, 0))
            need[i] = (max(old[0], lo), max(old[1], up))
    return {i: (_diagonals(np.asarray(operands[i]), lo, up), lo, up)
            for i, (lo, up) in need.items()}


def _factor_band(read: tuple[np.ndarray, int, int], shape: tuple[int, int], trans: bool,
                 fl: int, fu: int) -> np.ndarray:
    """The band storage of a factor (band ``(fl, fu)`` as it reads its operand, transposed
    when ``trans``) from the operand's band as read by :func:`_read_bands`."""
    sb, lo, up = read
    if not trans:
        return sb[up - fu : up + fl + 1]
    r, c = shape  # the operand's; the factor is its c x r transpose
    out = np.zeros((fl + fu + 1, r), dtype=sb.dtype)
    for dp in range(-fl, fu + 1):  # factor[j - dp, j] = operand[j, j - dp]
        j0, j1 = max(0, dp), min(r, c + dp)
        if j1 > j0:
            out[fu - dp, j0:j1] = sb[up + dp, j0 - dp : j1 - dp]
    return out


def _scalar(x: Any) -> float:
    return float(np.asarray(x).reshape(-1)[0])


def band_storage(terms: Sequence[Term], operands: Sequence[Any], n: int, lower: int,
                 upper: int, dtype: Any) -> np.ndarray:
    """``X``'s band in LAPACK band storage (``lower + upper + 1`` rows, ``n`` columns) from its
    terms; a term whose band exceeds ``(lower, upper)`` is an error (it would be dropped)."""
    ab = np.zeros((lower + upper + 1, n), dtype=dtype)
    bands = _read_bands(terms, operands)
    for coeff, scalars, factors in terms:
        c = coeff
        for s in scalars:
            c *= _scalar(operands[s])
        if not factors:
            ab[upper] += c
            continue
        acc = lo = up = None
        for i, trans, fl, fu in factors:
            m = np.asarray(operands[i])
            s = _factor_band(bands[i], m.shape, trans, fl, fu)
            m = m.T if trans else m
            if acc is None:
                acc, lo, up = s, fl, fu
            else:
                acc = _product(acc, lo, up, s, fl, fu, m.shape[0])
                lo, up = lo + fl, up + fu
        assert acc is not None and lo is not None and up is not None
        for d in range(-lo, up + 1):
            row = acc[up - d]
            if -lower <= d <= upper:
                ab[upper - d] += c * row
            elif np.any(row):
                raise ValueError(f"BandSolve: a term has diagonal {d}, outside the band "
                                 f"({lower}, {upper})")
    return ab


@njit(cache=True, nogil=True)
def _band_cholesky(ab, u):  # pragma: no cover - compiled
    """The banded Cholesky factor ``L`` (``A = L L^T``) of the SPD matrix whose upper band is
    ``ab`` (``ab[u + i - j, j] = A[i, j]``, ``i <= j``), compactly: ``lc[i, d] = L[i, i - d]``
    for ``d = 0 .. u``; ``ok`` False when ``A`` is not positive definite."""
    n = ab.shape[1]
    lc = np.zeros((n, u + 1), dtype=ab.dtype)
    for j in range(n):
        s = ab[u, j]
        for d in range(1, min(u, j) + 1):
            s -= lc[j, d] * lc[j, d]
        if not s > 0:  # also NaN
            return lc, False
        djj = np.sqrt(s)
        lc[j, 0] = djj
        for i in range(j + 1, min(n, j + u + 1)):
            v = ab[u + j - i, i]  # A[j, i] = A[i, j]
            # sum over k < j of L[i, k] L[j, k], k >= i - u
            for k in range(max(0, i - u), j):
                v -= lc[i, i - k] * lc[j, j - k]
            lc[i, i - j] = v / djj
    return lc, True


@njit(cache=True, nogil=True)
def _band_cho_solve_rows(lc, b):  # pragma: no cover - compiled
    """``(L L^T)^-1 b`` from :func:`_band_cholesky`'s ``lc``, a row of ``b`` at a time (every
    right-hand side at once: the rows of a C-ordered ``b`` and of the result are read and
    written in order, two passes over them)."""
    n, m = b.shape
    u = lc.shape[1] - 1
    x = np.empty((n, m), dtype=b.dtype)
    if m == 1:  # one right-hand side: scalars, no row views
        for i in range(n):
            v = b[i, 0]
            for d in range(1, min(u, i) + 1):
                v -= lc[i, d] * x[i - d, 0]
            x[i, 0] = v / lc[i, 0]
        for i in range(n - 1, -1, -1):
            v = x[i, 0]
            for d in range(1, min(u, n - 1 - i) + 1):
                v -= lc[i + d, d] * x[i + d, 0]
            x[i, 0] = v / lc[i, 0]
        return x
    for i in range(n):  # L y = b
        row = x[i]
        row[:] = b[i]
        for d in range(1, min(u, i) + 1):
            c = lc[i, d]
            prev = x[i - d]
            for j in range(m):
                row[j] -= c * prev[j]
        inv = 1.0 / lc[i, 0]
        for j in range(m):
            row[j] *= inv
    for i in range(n - 1, -1, -1):  # L^T x = y
        row = x[i]
        for d in range(1, min(u, n - 1 - i) + 1):
            c = lc[i + d, d]
            nxt = x[i + d]
            for j in range(m):
                row[j] -= c * nxt[j]
        inv = 1.0 / lc[i, 0]
        for j in range(m):
            row[j] *= inv
    return x


def solve_from_terms(op: BandSolve, inputs: Sequence[Any], dtype: Any) -> np.ndarray:
    """What :class:`BandSolve` computes, with NumPy, Numba and LAPACK (NaN when it fails).

    SPD: the project's banded Cholesky and a solve a row at a time over every right-hand side
    (LAPACK's ``?pbtrs`` solves one column at a time, strided through a C-ordered ``b``: 6x
    slower for an n x n right-hand side at n = 4000); general: ``?gbsv``."""
    import scipy.linalg

    b = np.asarray(inputs[-1])
    n = b.shape[0]
    ab = band_storage(op.terms, inputs[:-1], n, op.lower, op.upper, dtype)
    if not np.isfinite(ab).all():
        # a NaN or an infinity in a band read (or a scalar): the solve could hide it (an
        # infinite pivot divides to 0); NaN says so, and the call checks name the input
        return np.full(b.shape, np.nan, dtype=dtype)
    try:
        if op.spd:
            lc, ok = _band_cholesky(ab[: op.upper + 1], op.upper)
            if not ok:
                raise np.linalg.LinAlgError("not positive definite")
            out = _band_cho_solve_rows(lc, np.ascontiguousarray(b, dtype=dtype))
        else:
            out = scipy.linalg.solve_banded((op.lower, op.upper), ab, b, overwrite_ab=True,
                                            check_finite=False)
    except (np.linalg.LinAlgError, ValueError):
        out = np.full(b.shape, np.nan)
    return np.ascontiguousarray(out, dtype=dtype)


def dense_from_terms(terms: Sequence[Term], operands: Sequence[Any], n: int, xp: Any,
                     eye: Any, tril: Any, triu: Any, transpose: Any) -> Any:
    """``X`` formed densely from its terms with the array module ``xp`` (JAX, PyTorch, NumPy):
    each factor's band masked out, then the products."""
    total = None
    for coeff, scalars, factors in terms:
        c = coeff
        for s in scalars:
            c = c * operands[s].reshape(-1)[0]
        if not factors:
            term = eye(n, operands[-1]) * c
        else:
            term = None
            for i, trans, fl, fu in factors:
                m = transpose(operands[i]) if trans else operands[i]
                m = triu(tril(m, fu), -fl)
                term = m if term is None else term @ m
            term = term * c
        total = term if total is None else total + term
    return total


# -- numba: the NumPy / LAPACK implementation in object mode -------------------------------------


def _register_numba() -> None:
    import numba
    from pytensor.link.numba.dispatch import basic as numba_basic
    from pytensor.link.numba.dispatch.basic import get_numba_type, numba_funcify

    @numba_funcify.register(BandSolve)
    def numba_funcify_BandSolve(op, node, **kwargs):
        out_type = get_numba_type(node.outputs[0].type)
        dtype = node.outputs[0].type.dtype

        def py_solve(inputs):
            return solve_from_terms(op, inputs, dtype)

        @numba_basic.numba_njit
        def band_solve_numba(*inputs):
            with numba.objmode(out=out_type):
                out = py_solve(inputs)
            return out

        return band_solve_numba


_register_numba()


def _register_jax() -> bool:
    try:
        import jax.numpy as jnp
        from pytensor.link.jax.dispatch import jax_funcify
    except ImportError:
        return False

    @jax_funcify.register(BandSolve)
    def jax_funcify_BandSolve(op, **kwargs):
        def band_solve_jax(*inputs):
            b = inputs[-1]
            x = dense_from_terms(op.terms, inputs, b.shape[0], jnp,
                                 lambda n, like: jnp.eye(n, dtype=like.dtype), jnp.tril,
                                 jnp.triu, lambda m: m.T)
            return jnp.linalg.solve(x, b)

        return band_solve_jax

    return True


def _register_pytorch() -> bool:
    try:
        import torch
        from pytensor.link.pytorch.dispatch import pytorch_funcify
    except ImportError:
        return False

    @pytorch_funcify.register(BandSolve)
    def pytorch_funcify_BandSolve(op, **kwargs):
        def band_solve_torch(*inputs):
            b = inputs[-1]
            x = dense_from_terms(
                op.terms, inputs, b.shape[0], torch,
                lambda n, like: torch.eye(n, dtype=like.dtype, device=like.device),
                lambda m, k: torch.tril(m, k), lambda m, k: torch.triu(m, k), lambda m: m.mT)
            return torch.linalg.solve(x, b)

        return band_solve_torch

    return True


on_backend_import("jax", _register_jax)
on_backend_import("pytorch", _register_pytorch)
