"""The dense solve ``A^-1 B`` (LU, or Cholesky for a positive definite ``A``) without the
transposing copies.

PyTensor's Numba ``Solve`` copies a C-ordered ``A`` and ``B`` into Fortran order (two
transposing copies) for LAPACK ``?gesv`` / ``?posv``: at n = 2000 its step ran 1.15x
(``gen``) and 1.23x (``pos``) the LAPACK call (results/KERNEL_STEPS.md). :class:`DenseSolve`
factors a plain copy of ``A``, which LAPACK sees as ``A^T``, and solves the C-ordered copy of
``B`` (``B^T`` to LAPACK) from the right with two ``?trsm``:

* ``gen``: ``?getrf`` of ``A^T = P L U``, so ``A = U^T L^T P^T`` and ``A^-1 B = P L^-T U^-T B``:
  in the C-ordered copy, the lower triangle of the factor holds ``U^T`` and its strict upper
  triangle the unit ``L^T``; two triangular solves, then the row interchanges in reverse order.
* ``pos``: ``?potrf`` (``uplo='L'`` to LAPACK: the upper triangle of ``A`` read, as PyTensor's
  ``Solve(assume_a='pos')`` reads it) gives ``A = R^T R`` with ``R`` upper in the C-ordered
  factor; ``A^-1 B = R^-1 R^-T B``. A matrix that is not positive definite gives NaN, as
  PyTensor's Numba Cholesky does.

A late Numba rewrite (:func:`local_solve_to_dense_solve`, beside the triangular solve's) puts it
in place of ``Solve`` for matrix right-hand sides; the pinned-compile checks count it as
``Solve`` (:data:`autotune.pinned.SAME_KERNEL`). Python / C backends: SciPy.
"""

from __future__ import annotations

import functools

import numpy as np
from pytensor.compile.mode import optdb
from pytensor.gradient import grad_not_implemented
from pytensor.graph.op import Op
from pytensor.graph.rewriting.basic import in2out, node_rewriter
from pytensor.link.numba.cache import _call_cached_ptr
from pytensor.link.numba.dispatch import basic as numba_basic
from pytensor.link.numba.dispatch.basic import register_funcify_default_op_cache_key
from pytensor.tensor.linalg.solvers.general import Solve

from .blas import (
    _FLOAT_DTYPES,
    _INT32_MAX,
    _blas_routine,
    _ptr_to_val,
    _val_to_ptr,
    like_b_node,
    replacing,
    solve_of_matrices,
)
from .factorization_ops import _numba_xpotr
from .triangular_ops import _trsm_inplace

__all__ = ["DenseSolve", "local_solve_to_dense_solve"]

ASSUME = ("gen", "pos")


class DenseSolve(Op):
    """``A^-1 @ B`` for a square ``A`` (``assume_a='gen'``: LU with partial pivoting;
    ``'pos'``: Cholesky of the upper triangle) and a matrix ``B``, one float dtype."""

    __props__ = ("assume_a",)

    def __init__(self, assume_a: str = "gen"):
        if assume_a not in ASSUME:
            raise ValueError(f"DenseSolve: assume_a {assume_a!r}; valid: {', '.join(ASSUME)}")
        self.assume_a = assume_a

    def make_node(self, a, b):
        return like_b_node(self, a, b)

    def infer_shape(self, fgraph, node, shapes):
        return [shapes[1]]

    def perform(self, node, inputs, output_storage):
        import scipy.linalg

        a, b = inputs
        x = scipy.linalg.solve(a, b, assume_a=self.assume_a, lower=False, check_finite=False)
        output_storage[0][0] = np.ascontiguousarray(x, dtype=node.outputs[0].type.dtype)

    def pullback(self, inputs, outputs, cotangents):
        return [grad_not_implemented(self, i, inp, "DenseSolve has no gradient implemented")
                for i, inp in enumerate(inputs)]


@functools.cache
def _numba_xgetrf(dtype: str):
    """An njit function calling LAPACK ``{s,d}getrf`` (M N A LDA IPIV INFO)."""
    get_pointer, fn_type, unique_name = _blas_routine(
        "getrf", dtype, "iifiii", module="scipy.linalg.cython_lapack")

    @numba_basic.numba_njit
    def xgetrf(M, N, A, LDA, IPIV, INFO):
        fn = _call_cached_ptr(get_ptr_func=get_pointer, func_type_ref=fn_type,
                              unique_func_name_lit=unique_name)
        fn(M, N, A, LDA, IPIV, INFO)

    return xgetrf


@numba_basic.numba_njit
def _operands(a, b):
    """``(n, out, fac)``: the sizes checked, ``out`` a C-ordered copy of ``b`` (solved in
    place) and ``fac`` one of ``a`` (factored in place)."""
    n = a.shape[0]
    if a.shape[1] != n or b.shape[0] != n:
        raise ValueError("DenseSolve: `a` must be square and fit `b`")
    if n > _INT32_MAX:
        raise ValueError("DenseSolve: dimension too large for 32-bit LAPACK")
    out = np.empty(b.shape, dtype=b.dtype)
    out[:] = b
    fac = np.empty((n, n), dtype=a.dtype)
    fac[:] = a
    return n, out, fac


@register_funcify_default_op_cache_key(DenseSolve)
def numba_funcify_DenseSolve(op, node, **kwargs):
    dtype = node.outputs[0].type.dtype
    if dtype not in _FLOAT_DTYPES:  # pragma: no cover - make_node refuses it
        raise TypeError(f"DenseSolve: unsupported dtype {dtype}")
    if op.assume_a == "gen":
        xgetrf = _numba_xgetrf(dtype)

        @numba_basic.numba_njit
        def dense_solve_gen(a, b):
            n, out, fac = _operands(a, b)
            if n == 0:
                return out
            piv = np.empty(n, dtype=np.int32)
            n_ptr = _val_to_ptr(np.int32(n))
            info = _val_to_ptr(np.int32(0))
            xgetrf(n_ptr, n_ptr, fac.ctypes, n_ptr, piv.ctypes, info)
            if _ptr_to_val(info) < 0:  # pragma: no cover - an argument error is a bug here
                raise ValueError("DenseSolve: LAPACK getrf argument error")
            _trsm_inplace(fac, out, True, False, True)   # U^-T: the factor's lower triangle
            _trsm_inplace(fac, out, False, True, True)   # L^-T: its unit upper triangle
            for i in range(n - 1, -1, -1):               # P: the interchanges, last first
                p = piv[i] - 1
                if p != i:
                    for j in range(out.shape[1]):
                        t = out[i, j]
                        out[i, j] = out[p, j]
                        out[p, j] = t
            return out

        return dense_solve_gen, 2

    xpotrf = _numba_xpotr("potrf", dtype)

    @numba_basic.numba_njit
    def dense_solve_pos(a, b):
        n, out, fac = _operands(a, b)
        if n == 0:
            return out
        n_ptr = _val_to_ptr(np.int32(n))
        info = _val_to_ptr(np.int32(0))
        # 'L' to LAPACK is the upper triangle here: A = R^T R, R upper in `fac`
        xpotrf(_val_to_ptr(np.int8(ord("L"))), n_ptr, fac.ctypes, n_ptr, info)
        if _ptr_to_val(info) != 0:
            out[:] = np.nan  # not positive definite: NaN, as PyTensor's Numba Cholesky
            return out
        _trsm_inplace(fac.T, out, True, False, True)  # R^-T: the lower triangle of fac.T
        _trsm_inplace(fac, out, False, False, True)   # R^-1
        return out

    return dense_solve_pos, 2


@node_rewriter([Solve])
def local_solve_to_dense_solve(fgraph, node):
    """``Solve`` of a matrix right-hand side (``gen``, or ``pos`` reading the upper triangle)
    -> :class:`DenseSolve` (Numba)."""
    op = node.op
    if not solve_of_matrices(node) or op.assume_a not in ASSUME:
        return None
    if op.assume_a == "pos" and op.lower:
        return None
    return replacing(node.outputs[0], DenseSolve(op.assume_a)(*node.inputs))


optdb.register(
    "autotune_solve_to_dense_solve",
    in2out(local_solve_to_dense_solve, name="autotune_solve_to_dense_solve"),
    "numba",
    position=61,  # after local_useless_unbatched_blockwise (60) unwraps the Blockwise
)
