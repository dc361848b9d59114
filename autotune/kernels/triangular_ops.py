"""The triangular matrix product (BLAS ``xTRMM``): :class:`TriangularMatMul`, with its
Python/C, Numba, JAX and PyTorch implementations; and the triangular solve as one BLAS ``xTRSM``
in the Numba backend: :class:`TriangularSolve`, which a late Numba-only rewrite puts in place of
PyTensor's ``SolveTriangular`` (whose Numba implementation copies a C-ordered right-hand side
into Fortran order: 1.16-1.30x ``dtrsm`` at n = 2000 in benchmarks/kernel_steps.py).

:func:`trmm` builds a :class:`TriangularMatMul` node::

    trmm(a, b, lower=True, trans=False, side="left", alpha=1.0)
        == alpha * op(tri(a)) @ b      (side="left")
        == alpha * b @ op(tri(a))      (side="right")

``a`` is a square ``(m, m)`` float matrix of which only the triangle ``lower`` names is read
(diagonal included: the other triangle may hold anything, NaN included), ``tri(a)`` is that
triangle with zeros elsewhere and ``op`` is the transpose when ``trans``. ``b`` is ``(m, n)``
for ``side="left"`` and ``(n, m)`` for ``"right"``; the result has ``b``'s shape and dtype.
It costs ``m * m * n`` flops, half of the general product. With ``alpha == 0`` neither ``a``
nor ``b`` is referenced by the Python/C and Numba backends, as in BLAS.

Backend dispatch:

* Python (``FAST_COMPILE``) and C (``CVM``) linkers: :meth:`TriangularMatMul.perform` takes the
  triangle with ``np.tril`` / ``np.triu`` and multiplies with ``np.matmul``.
* Numba (``NUMBA``): an njit function copies ``b`` into the C-ordered output and calls
  ``{s,d}trmm`` from ``scipy.linalg.cython_blas`` on it in place (the output is its Fortran
  transpose to BLAS, so the side flips), passing the strides of ``a`` as its leading dimension
  (C-ordered, F-ordered, transposed and sliced ``a`` are used without a copy).
* JAX and PyTorch: ``tril`` / ``triu`` and a matmul, registered when PyTensor imports the
  backend's dispatcher (:mod:`autotune.kernels.backends`).
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np
import pytensor.tensor as pt
from numba.core.extending import overload
from pytensor.compile.mode import optdb
from pytensor.gradient import grad_not_implemented
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.graph.rewriting.basic import in2out, node_rewriter
from pytensor.link.numba.cache import _call_cached_ptr
from pytensor.link.numba.dispatch import basic as numba_basic
from pytensor.link.numba.dispatch.basic import register_funcify_default_op_cache_key
from pytensor.scalar import upcast
from pytensor.tensor.elemwise import DimShuffle
from pytensor.tensor.linalg.solvers.triangular import SolveTriangular

from .backends import on_backend_import
from .blas import (
    _FLOAT_DTYPES,
    _INT32_MAX,
    _blas_routine,
    _numba_gemm_operand,
    _val_to_ptr,
    like_b_node,
    replacing,
    solve_of_matrices,
)
from .inplace import Overwrites

__all__ = ["TriangularMatMul", "TriangularSolve", "trmm"]

SIDES = ("left", "right")


class TriangularMatMul(Overwrites, Op):
    """``alpha * op(tri(a)) @ b`` (``side='left'``) or ``alpha * b @ op(tri(a))`` (``'right'``),
    ``tri(a)`` the ``lower`` (else upper) triangle of the square ``a``, ``op`` the transpose when
    ``trans``. Inputs ``(a, b)`` of the same float dtype (float32 or float64), also the output
    dtype. Use :func:`trmm` to build nodes: it casts the inputs to a common float dtype."""

    __props__ = ("lower", "trans", "side", "alpha", "inplace")

    def __init__(self, lower: bool = True, trans: bool = False, side: str = "left",
                 alpha: float = 1.0, inplace: bool = False):
        if side not in SIDES:
            raise ValueError(f"TriangularMatMul: side must be 'left' or 'right', got {side!r}")
        alpha = float(alpha)
        if not math.isfinite(alpha):
            raise ValueError(f"TriangularMatMul: alpha must be finite, got {alpha}")
        self.lower = bool(lower)
        self.trans = bool(trans)
        self.side = side
        self.alpha = alpha
        #: the result overwrites ``b`` (a donated input: ``load_plan(..., donate=...)``)
        self.inplace = bool(inplace)
        if self.inplace:
            self.destroy_map = {0: [1]}

    #: the input whose memory the in-place form writes its result into
    overwrites = 1

    def in_place(self) -> TriangularMatMul:
        """The same product written over ``b`` (:mod:`autotune.kernels.inplace`)."""
        return type(self)(self.lower, self.trans, self.side, self.alpha, inplace=True)

    def __str__(self) -> str:
        tri = "tril(a)" if self.lower else "triu(a)"
        if self.trans:
            tri += ".T"
        expr = f"{tri} @ b" if self.side == "left" else f"b @ {tri}"
        where = ", in place of b" if self.inplace else ""
        return f"{type(self).__name__}{{{self.alpha!r} * {expr}{where}}}"

    def make_node(self, a, b):
        name = type(self).__name__
        a = pt.as_tensor_variable(a)
        b = pt.as_tensor_variable(b)
        for label, x in (("a", a), ("b", b)):
            if x.type.ndim != 2:
                raise TypeError(f"{name}: `{label}` must be a matrix, got {x.type.ndim} dimensions")
            if x.type.dtype not in _FLOAT_DTYPES:
                raise TypeError(f"{name}: `{label}` must be float32 or float64, got {x.type.dtype}")
        if b.type.dtype != a.type.dtype:
            raise TypeError(f"{name}: `b` dtype {b.type.dtype} differs from `a` dtype "
                            f"{a.type.dtype} (trmm() casts both to a common dtype)")
        inner = b.type.shape[0] if self.side == "left" else b.type.shape[1]
        known = {s for s in (*a.type.shape, inner) if s is not None}
        if len(known) > 1:
            want = "(m, n)" if self.side == "left" else "(n, m)"
            raise ValueError(f"{name}: needs a square `a` of shape (m, m) and `b` of shape "
                             f"{want} (side={self.side!r}); got static shapes {a.type.shape}, "
                             f"{b.type.shape}")
        m = known.pop() if known else None
        shape = (m, b.type.shape[1]) if self.side == "left" else (b.type.shape[0], m)
        return Apply(self, [a, b], [pt.tensor(dtype=a.type.dtype, shape=shape)])

    def infer_shape(self, fgraph, node, shapes):
        return [shapes[1]]

    def perform(self, node, inputs, output_storage):
        a, b = inputs
        dtype = node.outputs[0].type.dtype
        m = a.shape[0]
        inner = b.shape[0] if self.side == "left" else b.shape[1]
        if a.shape != (m, m) or inner != m:
            raise ValueError(f"TriangularMatMul: `a` of shape {a.shape} and `b` of shape "
                             f"{b.shape} do not fit (side={self.side!r})")
        if self.alpha == 0.0:  # neither a nor b is referenced, as in BLAS
            output_storage[0][0] = np.zeros(b.shape, dtype=dtype)
            return
        tri = np.tril(a) if self.lower else np.triu(a)
        if self.trans:
            tri = tri.T
        out = tri @ b if self.side == "left" else b @ tri
        if self.alpha != 1.0:
            out *= self.alpha
        if self.inplace and b.dtype == dtype and b.flags.writeable:
            b[...] = out
            output_storage[0][0] = b
            return
        output_storage[0][0] = np.asarray(out, dtype=dtype)

    def pullback(self, inputs, outputs, cotangents):
        return [
            grad_not_implemented(self, i, inp, "TriangularMatMul has no gradient implemented")
            for i, inp in enumerate(inputs)
        ]


def trmm(a, b, lower: bool = True, trans: bool = False, side: str = "left",
         alpha: float = 1.0):
    """Return ``alpha * op(tri(a)) @ b`` (``side='left'``) or ``alpha * b @ op(tri(a))``
    (``'right'``), reading only the ``lower`` (else upper) triangle of the square ``a``; ``op``
    transposes when ``trans``. Inputs are cast to their common float dtype (integers to float,
    float16 to float32; complex is rejected)."""
    a = pt.as_tensor_variable(a)
    b = pt.as_tensor_variable(b)
    dtype = upcast(a.type.dtype, b.type.dtype)
    if dtype not in _FLOAT_DTYPES:
        if dtype.startswith("complex"):
            raise TypeError(f"trmm: complex inputs are not supported (got {dtype})")
        dtype = upcast(dtype, "float32")
    op = TriangularMatMul(lower=lower, trans=trans, side=side, alpha=alpha)
    return op(pt.cast(a, dtype), pt.cast(b, dtype))


# --------------------------------------------------------------------------------------------
# Numba dispatch
# --------------------------------------------------------------------------------------------


@functools.cache
def _numba_xtrmm(dtype: str):
    """An njit function calling ``{s,d}trmm`` (Fortran argument list), see
    :func:`~autotune.kernels.blas._blas_routine`."""
    # SIDE UPLO TRANSA DIAG M N ALPHA A LDA B LDB
    get_pointer, fn_type, unique_name = _blas_routine("trmm", dtype, "cccciiffifi")

    @numba_basic.numba_njit
    def xtrmm(SIDE, UPLO, TRANSA, DIAG, M, N, ALPHA, A, LDA, B, LDB):
        fn = _call_cached_ptr(
            get_ptr_func=get_pointer,
            func_type_ref=fn_type,
            unique_func_name_lit=unique_name,
        )
        fn(SIDE, UPLO, TRANSA, DIAG, M, N, ALPHA, A, LDA, B, LDB)

    return xtrmm


def _trmm_inplace(a, out, lower, trans, left, alpha):
    """``out := alpha * op(tri(a)) @ out`` (``left``) or ``alpha * out @ op(tri(a))``.

    Numba-only (overloaded); ``out`` must be C-contiguous, of ``a``'s dtype.
    """
    raise NotImplementedError("_trmm_inplace is only callable from numba-compiled code")


@overload(_trmm_inplace)
def _trmm_inplace_impl(a, out, lower, trans, left, alpha):
    dtype = str(a.dtype)
    if dtype not in _FLOAT_DTYPES or str(out.dtype) != dtype:
        raise numba.TypingError(f"_trmm_inplace: unsupported dtypes {a.dtype}, {out.dtype}")
    xtrmm = _numba_xtrmm(dtype)
    scalar = np.float32 if dtype == "float32" else np.float64
    int32_max = _INT32_MAX

    def impl(a, out, lower, trans, left, alpha):
        p, q = out.shape
        if p == 0 or q == 0:
            return
        if p > int32_max or q > int32_max:
            raise ValueError("TriangularMatMul: dimension too large for 32-bit BLAS")
        # `out` (C-contiguous, (p, q)) is the Fortran (q, p) matrix out.T, leading dimension q:
        # out = op(A) @ out is out.T := out.T @ op(A).T, BLAS side 'R' (and 'L' for the right
        # side). BLAS sees `a` as a.T when its rows are contiguous, else as `a` itself, so
        # op(A).T is that matrix itself ('N') exactly when (rows) != trans, and its stored
        # triangle is the other one when it sees a.T.
        a_use, a_rows, lda = _numba_gemm_operand(a)
        side = np.int8(ord("R") if left else ord("L"))
        uplo = np.int8(ord("L") if lower != a_rows else ord("U"))
        transa = np.int8(ord("N") if a_rows != trans else ord("T"))
        xtrmm(
            _val_to_ptr(side),
            _val_to_ptr(uplo),
            _val_to_ptr(transa),
            _val_to_ptr(np.int8(ord("N"))),
            _val_to_ptr(np.int32(q)),
            _val_to_ptr(np.int32(p)),
            _val_to_ptr(scalar(alpha)),
            a_use.ctypes,
            _val_to_ptr(np.int32(lda)),
            out.ctypes,
            _val_to_ptr(np.int32(q)),
        )

    return impl


@register_funcify_default_op_cache_key(TriangularMatMul)
def numba_funcify_TriangularMatMul(op, node, **kwargs):
    lower, trans, left, alpha = op.lower, op.trans, op.side == "left", op.alpha
    if op.inplace:
        return _numba_trmm_in_place(lower, trans, left, alpha), 1

    @numba_basic.numba_njit
    def trmm_numba(a, b):
        m = a.shape[0]
        if a.shape[1] != m or (b.shape[0] if left else b.shape[1]) != m:
            raise ValueError("TriangularMatMul: `a` must be square and fit `b`")
        out = np.empty(b.shape, dtype=b.dtype)
        if alpha == 0.0:  # b is not referenced, as in BLAS
            out[:] = 0.0
        else:
            out[:] = b
        _trmm_inplace(a, out, lower, trans, left, alpha)
        return out

    cache_version = 1
    return trmm_numba, cache_version


def _numba_trmm_in_place(lower: bool, trans: bool, left: bool, alpha: float):
    """The in-place TRMM: the result is written over ``b`` (no copy when ``b`` is
    C-contiguous, as a donated input is; otherwise through a contiguous copy)."""

    @numba_basic.numba_njit
    def trmm_numba_inplace(a, b):
        m = a.shape[0]
        if a.shape[1] != m or (b.shape[0] if left else b.shape[1]) != m:
            raise ValueError("TriangularMatMul: `a` must be square and fit `b`")
        if alpha == 0.0:  # b is not referenced, as in BLAS
            b[:] = 0.0
        elif b.flags.c_contiguous:
            _trmm_inplace(a, b, lower, trans, left, alpha)
        else:
            tmp = np.ascontiguousarray(b)
            _trmm_inplace(a, tmp, lower, trans, left, alpha)
            b[:] = tmp
        return b

    return trmm_numba_inplace


# --------------------------------------------------------------------------------------------
# The triangular solve (BLAS ``xTRSM``)
# --------------------------------------------------------------------------------------------


class TriangularSolve(Overwrites, Op):
    """``tri(a)^-1 @ b``: PyTensor's ``SolveTriangular`` (``b_ndim=2``) by one BLAS ``?trsm``.

    ``a`` is square ``(m, m)`` of which only the ``lower`` (else upper) triangle is read (unit
    diagonal when ``unit_diagonal``), ``b`` is ``(m, n)``; both of one float dtype, the output's.
    A late Numba rewrite (:func:`local_solve_triangular_to_trsm`) puts it in place of
    ``SolveTriangular``, whose Numba implementation copies a C-ordered ``b`` into Fortran order
    (a transposing copy) for LAPACK ``?trtrs``. Here ``b`` is copied into the C-ordered output
    (a plain copy for a C-ordered ``b``, as a program's values are) and ``?trsm`` solves in
    place, the side flipped. A transposed ``a`` (``solve_triangular(..., trans=1)`` puts ``a.T``
    in the graph) is a view passed with the transpose flag. A singular ``a`` gives inf/NaN
    entries (no check, as in BLAS).
    """

    __props__ = ("lower", "unit_diagonal", "side", "inplace")

    def __init__(self, lower: bool = True, unit_diagonal: bool = False, side: str = "left",
                 inplace: bool = False):
        if side not in SIDES:
            raise ValueError(f"TriangularSolve: side must be 'left' or 'right', got {side!r}")
        self.lower = bool(lower)
        self.unit_diagonal = bool(unit_diagonal)
        self.side = side
        #: the solution overwrites ``b`` (free to destroy: :mod:`autotune.kernels.inplace`)
        self.inplace = bool(inplace)
        if self.inplace:
            self.destroy_map = {0: [1]}

    overwrites = 1

    def in_place(self) -> TriangularSolve:
        """The same solve written over ``b``."""
        return type(self)(self.lower, self.unit_diagonal, self.side, inplace=True)

    def __str__(self) -> str:
        where = ", in place of b" if self.inplace else ""
        return (f"{type(self).__name__}{{lower={self.lower}, unit_diagonal="
                f"{self.unit_diagonal}, side={self.side}{where}}}")

    def make_node(self, a, b):
        return like_b_node(self, a, b)

    def infer_shape(self, fgraph, node, shapes):
        return [shapes[1]]

    def perform(self, node, inputs, output_storage):
        import scipy.linalg

        a, b = inputs
        if self.side == "right":  # b @ tri(a)^-1 = (tri(a)^-T @ b.T).T
            x = scipy.linalg.solve_triangular(a, b.T, lower=self.lower, trans=1,
                                              unit_diagonal=self.unit_diagonal).T
        else:
            x = scipy.linalg.solve_triangular(a, b, lower=self.lower,
                                              unit_diagonal=self.unit_diagonal)
        dtype = node.outputs[0].type.dtype
        if self.inplace and b.dtype == dtype and b.flags.writeable:
            b[...] = x
            output_storage[0][0] = b
            return
        output_storage[0][0] = np.ascontiguousarray(x, dtype=dtype)

    def pullback(self, inputs, outputs, cotangents):
        return [grad_not_implemented(self, i, inp, "TriangularSolve has no gradient")
                for i, inp in enumerate(inputs)]


@functools.cache
def _numba_xtrsm(dtype: str):
    """An njit function calling ``{s,d}trsm`` (the argument list of ``?trmm``)."""
    get_pointer, fn_type, unique_name = _blas_routine("trsm", dtype, "cccciiffifi")

    @numba_basic.numba_njit
    def xtrsm(SIDE, UPLO, TRANSA, DIAG, M, N, ALPHA, A, LDA, B, LDB):
        fn = _call_cached_ptr(
            get_ptr_func=get_pointer,
            func_type_ref=fn_type,
            unique_func_name_lit=unique_name,
        )
        fn(SIDE, UPLO, TRANSA, DIAG, M, N, ALPHA, A, LDA, B, LDB)

    return xtrsm


def _trsm_inplace(a, out, lower, unit, left):
    """``out := tri(a)^-1 @ out`` (``left``) or ``out @ tri(a)^-1`` (numba-only, overloaded);
    ``out`` C-contiguous."""
    raise NotImplementedError("_trsm_inplace is only callable from numba-compiled code")


@overload(_trsm_inplace)
def _trsm_inplace_impl(a, out, lower, unit, left):
    dtype = str(a.dtype)
    if dtype not in _FLOAT_DTYPES or str(out.dtype) != dtype:
        raise numba.TypingError(f"_trsm_inplace: unsupported dtypes {a.dtype}, {out.dtype}")
    xtrsm = _numba_xtrsm(dtype)
    int32_max = _INT32_MAX
    one = np.float32(1.0) if dtype == "float32" else np.float64(1.0)

    def impl(a, out, lower, unit, left):
        p, q = out.shape
        if p == 0 or q == 0:
            return
        if p > int32_max or q > int32_max:
            raise ValueError("TriangularSolve: dimension too large for 32-bit BLAS")
        # BLAS sees `a` as a.T when its rows are contiguous (the other triangle, transposed).
        a_use, a_rows, lda = _numba_gemm_operand(a)
        uplo = np.int8(ord("L") if lower != a_rows else ord("U"))
        diag = np.int8(ord("U") if unit else ord("N"))
        # The C-ordered `out` is the Fortran (q, p) out.T := out.T @ A^-T: side 'R', and A^T
        # is the matrix BLAS sees itself ('N') when it sees a.T. For out @ A^-1 (right side)
        # out.T := A^-T @ out.T: the same A^T, BLAS side 'L'.
        side = np.int8(ord("R") if left else ord("L"))
        transa = np.int8(ord("N") if a_rows else ord("T"))
        rows, cols, ldb = q, p, q
        xtrsm(_val_to_ptr(side), _val_to_ptr(uplo), _val_to_ptr(transa), _val_to_ptr(diag),
              _val_to_ptr(np.int32(rows)), _val_to_ptr(np.int32(cols)), _val_to_ptr(one),
              a_use.ctypes, _val_to_ptr(np.int32(lda)), out.ctypes,
              _val_to_ptr(np.int32(max(ldb, 1))))

    return impl


@register_funcify_default_op_cache_key(TriangularSolve)
def numba_funcify_TriangularSolve(op, node, **kwargs):
    lower, unit, left = op.lower, op.unit_diagonal, op.side == "left"
    if op.inplace:
        return _numba_trsm_in_place(lower, unit, left), 1

    @numba_basic.numba_njit
    def trsm_numba(a, b):
        m = a.shape[0]
        if a.shape[1] != m or (b.shape[0] if left else b.shape[1]) != m:
            raise ValueError("TriangularSolve: `a` must be square and fit `b`")
        out = np.empty(b.shape, dtype=b.dtype)
        out[:] = b
        _trsm_inplace(a, out, lower, unit, left)
        return out

    cache_version = 2
    return trsm_numba, cache_version


def _numba_trsm_in_place(lower: bool, unit: bool, left: bool):
    """The in-place TRSM: the solution is written over ``b`` (through a contiguous copy when
    ``b`` is not C-contiguous)."""

    @numba_basic.numba_njit
    def trsm_numba_inplace(a, b):
        m = a.shape[0]
        if a.shape[1] != m or (b.shape[0] if left else b.shape[1]) != m:
            raise ValueError("TriangularSolve: `a` must be square and fit `b`")
        if b.flags.c_contiguous:
            _trsm_inplace(a, b, lower, unit, left)
        else:
            tmp = np.ascontiguousarray(b)
            _trsm_inplace(a, tmp, lower, unit, left)
            b[:] = tmp
        return b

    return trsm_numba_inplace


@node_rewriter([SolveTriangular])
def local_solve_triangular_to_trsm(fgraph, node):
    """``SolveTriangular`` of a matrix right-hand side -> :class:`TriangularSolve` (Numba)."""
    if not solve_of_matrices(node):
        return None
    a, b = node.inputs
    lower, unit = node.op.lower, node.op.unit_diagonal
    # PyTensor's in-place pass has already decided whether b is free to write over
    inplace = bool(getattr(node.op, "destroy_map", None))
    if b.owner is not None and isinstance(b.owner.op, DimShuffle) \
            and b.owner.op.new_order == (1, 0):
        # tri(a)^-1 @ B.T = (B @ tri(a)^-T).T: B (C-ordered, as a program's values are) is
        # copied as it is and solved from the right, where copying B.T would transpose it
        new = TriangularSolve(lower=not lower, unit_diagonal=unit, side="right",
                              inplace=inplace)(a.T, b.owner.inputs[0]).T
    else:
        new = TriangularSolve(lower=lower, unit_diagonal=unit, inplace=inplace)(a, b)
    return replacing(node.outputs[0], new)


optdb.register(
    "autotune_solve_triangular_to_trsm",
    in2out(local_solve_triangular_to_trsm, name="autotune_solve_triangular_to_trsm"),
    "numba",
    position=61,  # after local_useless_unbatched_blockwise (60) unwraps the Blockwise
)


# --------------------------------------------------------------------------------------------
# JAX / PyTorch dispatch
# --------------------------------------------------------------------------------------------


def _trmm_impl(op: TriangularMatMul, tril, triu, transpose):
    lower, trans, left, alpha = op.lower, op.trans, op.side == "left", op.alpha

    def trmm(a, b):
        tri = tril(a) if lower else triu(a)
        if trans:
            tri = transpose(tri)
        return alpha * (tri @ b if left else b @ tri)

    return trmm


def _register_jax() -> bool:
    try:
        import jax.numpy as jnp
        from pytensor.link.jax.dispatch import jax_funcify
    except ImportError:
        return False

    @jax_funcify.register(TriangularMatMul)
    def jax_funcify_TriangularMatMul(op, **kwargs):
        return _trmm_impl(op, jnp.tril, jnp.triu, lambda x: x.T)

    return True


def _register_pytorch() -> bool:
    try:
        import torch
        from pytensor.link.pytorch.dispatch import pytorch_funcify
    except ImportError:
        return False

    @pytorch_funcify.register(TriangularMatMul)
    def pytorch_funcify_TriangularMatMul(op, **kwargs):
        return _trmm_impl(op, torch.tril, torch.triu, lambda x: x.mT)

    return True


on_backend_import("jax", _register_jax)
on_backend_import("pytorch", _register_pytorch)
