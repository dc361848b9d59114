"""The products: :class:`GeneralProduct` (one BLAS ``xGEMM``/``xGEMV`` call, transposes as
flags), and the symmetric ones, :class:`SymRankK` (BLAS ``xSYRK``) and :class:`SymProduct` (a GEMM
computing one triangle), with their Python/C, Numba, JAX and PyTorch implementations.

:func:`general_product` builds a :class:`GeneralProduct` node, ``alpha * a @ b + beta * c``. The
registry's ``matmul`` lowers to PyTensor's ``Dot`` (so that PyTensor's own rewrites still see a
product); importing this module registers ``autotune_dot_to_general_product``, a late rewrite of
the Numba backend only (tag ``numba``) that turns a float matrix ``Dot`` into a
:class:`GeneralProduct`. PyTensor's Numba ``Dot`` goes through ``np.dot``, which copies a
transposed (Fortran-ordered) operand: ``H.T @ x`` at n = 2000 took 20 ms against 1.3 ms.

:func:`sym_rank_k` builds a :class:`SymRankK` node, the symmetric rank-k update::

    sym_rank_k(a, c=None, alpha=1.0, beta=0.0) == alpha * a.T @ a + beta * c

``a`` is a ``(k, n)`` float matrix and ``c`` an optional ``(n, n)`` symmetric matrix; the result
is the full ``(n, n)`` symmetric matrix (both triangles filled, exactly symmetric).

:func:`sym_product` builds a :class:`SymProduct` node, a matrix product whose result the caller
knows to be symmetric (a GEMM computing one triangle)::

    sym_product(a, b, c=None, alpha=1.0, beta=0.0, blocks=None) == alpha * a @ b + beta * c

``a`` is ``(k, n)``, ``b`` is ``(n, k)`` and ``c`` an optional ``(k, k)`` symmetric matrix. The
**caller guarantees** that ``a @ b`` is symmetric (e.g. ``a = X``, ``b = M @ X.T`` with ``M``
symmetric, as ``H @ (Sigma @ H.T)`` in a Kalman filter); nothing checks it. Only the lower
triangle is computed, by row blocks: block ``[r0, r1)`` is the GEMM
``out[r0:r1, :r1] = alpha * a[r0:r1] @ b[:, :r1] + beta * c[r0:r1, :r1]``, which costs
``(nb + 1) / (2 nb)`` of the full product with ``nb`` equal blocks; ``blocks=None`` picks ``nb``
from ``k`` at run time (:func:`sym_product_blocks`). If ``a @ b`` is not symmetric, the result is
its lower triangle mirrored.

Semantics shared by every backend that calls BLAS (Python/C ``perform`` and Numba):

* Only the **lower triangle** of ``c`` is read (as BLAS ``syrk`` with ``uplo='L'``); its strict
  upper triangle is never referenced, so a ``c`` that is not exactly symmetric behaves as its lower
  triangle mirrored.
* With ``beta == 0`` ``c`` is not referenced at all (NaN/Inf in ``c`` do not propagate), and with
  ``alpha == 0`` neither are ``a`` and ``b``, as in BLAS.
* BLAS computes one triangle (about half the flops of ``a.T @ a``; ``(nb + 1) / (2 nb)`` of
  ``a @ b``); the other is filled by an in-place, cache-blocked mirror, so the result is exactly
  symmetric.

Backend dispatch:

* Python (``FAST_COMPILE``) and C (``CVM``) linkers: :meth:`SymRankK.perform` calls
  ``scipy.linalg.blas.{s,d}syrk``, choosing ``trans`` from the memory order of ``a`` so that
  f2py copies nothing (a C-ordered ``(k, n)`` ``a`` is the Fortran-ordered ``(n, k)`` ``a.T``).
  :meth:`SymProduct.perform` runs one ``np.matmul(..., out=...)`` per row block, written straight
  into the output.
* Numba (``NUMBA``): an njit function calls ``{s,d}syrk`` / ``{s,d}gemm`` from
  ``scipy.linalg.cython_blas`` through a function pointer (see :mod:`autotune.kernels.blas`),
  passing the strides of the inputs as BLAS leading dimensions (and transposition flags) so that
  C-ordered, F-ordered, transposed and row/column-sliced inputs are used without a copy; each
  GEMM block writes into the output.
* JAX and PyTorch: ``alpha * a.T @ a + beta * c`` / ``alpha * a @ b + beta * c`` with
  ``jax.numpy`` / ``torch`` (plain matmul: all of ``c`` is used, and the result is symmetric only
  up to rounding), registered when PyTensor imports the backend's dispatcher
  (:mod:`autotune.kernels.backends`).
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
from pytensor.graph.rewriting.basic import copy_stack_trace, in2out, node_rewriter
from pytensor.link.numba.cache import _call_cached_ptr
from pytensor.link.numba.dispatch import basic as numba_basic
from pytensor.link.numba.dispatch.basic import register_funcify_default_op_cache_key
from pytensor.scalar import upcast
from pytensor.tensor.math import Dot
from scipy.linalg import blas as scipy_blas

from .backends import on_backend_import
from .blas import (
    _BLAS_PREFIX,
    _FLOAT_DTYPES,
    _INT32_MAX,
    _alloc_matrix,
    _alloc_square,
    _blas_routine,
    _numba_copy_lower,
    _numba_gemm_operand,
    _numba_mirror_lower_to_upper,
    _numba_xgemm,
    _numba_xgemv,
    _val_to_ptr,
    mirror_lower_to_upper,
)

__all__ = [
    "GeneralProduct",
    "SymProduct",
    "SymRankK",
    "general_product",
    "sym_product",
    "sym_product_blocks",
    "sym_rank_k",
]

# Default row blocking of SymProduct (sym_product_blocks). With 2 BLAS threads the Kalman-shaped
# k=2000, n=4000 product (benchmarks/sym_product.py) takes 301 ms as one GEMM, 211 ms in 4 row
# blocks, 202-203 ms in 6 or 8 (ideal: 0.625 / 0.583 / 0.5625 of the GEMM); at k=500, n=1000
# 3-6 blocks (83-167 rows) are best, and blocks thinner than ~128 rows lose more GEMM speed than
# they save flops. Cached numba code keeps these values: bump SymProduct's cache_version.
_SYM_PRODUCT_MIN_BLOCK_ROWS = 128
_SYM_PRODUCT_MAX_BLOCKS = 8


class SymRankK(Op):
    """Symmetric rank-k update ``alpha * a.T @ a + beta * c`` (full symmetric ``(n, n)`` result;
    with ``mirror=False`` only its lower triangle is written, the strict upper triangle is left
    unspecified: an output stored as one triangle, ``store = "lower"``).

    Inputs are ``(a,)`` when ``has_c`` is false and ``(a, c)`` otherwise; ``a`` and ``c`` must have
    the same float dtype (float32 or float64), which is also the output dtype. ``alpha`` and
    ``beta`` are fixed when the graph is built. Use :func:`sym_rank_k` to build nodes: it casts the
    inputs to a common float dtype.
    """

    __props__ = ("alpha", "beta", "has_c", "mirror")

    def __init__(self, alpha: float = 1.0, beta: float = 0.0, has_c: bool = False,
                 mirror: bool = True):
        alpha = float(alpha)
        beta = float(beta) if has_c else 0.0
        if not (math.isfinite(alpha) and math.isfinite(beta)):
            raise ValueError(f"alpha and beta must be finite, got alpha={alpha}, beta={beta}")
        self.alpha = alpha
        self.beta = beta
        self.has_c = bool(has_c)
        self.mirror = bool(mirror)

    @property
    def exactly_symmetric(self) -> bool:
        """Whether the result is exactly symmetric on a backend that runs it as BLAS: one
        triangle computed, mirrored (``Backend.mirrors_exactly``)."""
        return self.mirror

    def __str__(self) -> str:
        expr = f"{self.alpha!r} * a.T @ a"
        if self.has_c:
            expr += f" + {self.beta!r} * c"
        if not self.mirror:
            expr += ", lower triangle"
        return f"{type(self).__name__}{{{expr}}}"

    def make_node(self, a, c=None):
        a = pt.as_tensor_variable(a)
        if a.type.ndim != 2:
            raise TypeError(f"SymRankK: `a` must be a matrix, got {a.type.ndim} dimensions")
        if a.type.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"SymRankK: `a` must be float32 or float64, got {a.type.dtype}")
        n_static = a.type.shape[1]
        inputs = [a]
        if self.has_c:
            if c is None:
                raise TypeError("SymRankK(has_c=True) needs the input `c`")
            c = pt.as_tensor_variable(c)
            if c.type.ndim != 2:
                raise TypeError(f"SymRankK: `c` must be a matrix, got {c.type.ndim} dimensions")
            if c.type.dtype != a.type.dtype:
                raise TypeError(
                    f"SymRankK: `c` dtype {c.type.dtype} differs from `a` dtype {a.type.dtype} "
                    "(sym_rank_k() casts both to a common dtype)"
                )
            known = {s for s in (n_static, *c.type.shape) if s is not None}
            if len(known) > 1:
                raise ValueError(
                    f"SymRankK: `a` of static shape {a.type.shape} needs `c` of shape (n, n) "
                    f"with n = a.shape[1], got `c` of static shape {c.type.shape}"
                )
            if n_static is None and known:
                n_static = known.pop()
            inputs.append(c)
        elif c is not None:
            raise TypeError("SymRankK(has_c=False) takes no input `c`")
        out = pt.tensor(dtype=a.type.dtype, shape=(n_static, n_static))
        return Apply(self, inputs, [out])

    def infer_shape(self, fgraph, node, shapes):
        n = shapes[0][1]
        return [(n, n)]

    def perform(self, node, inputs, output_storage):
        a = inputs[0]
        c = inputs[1] if self.has_c else None
        dtype = node.outputs[0].type.dtype
        k, n = a.shape
        if c is not None and c.shape != (n, n):
            raise ValueError(
                f"SymRankK: `a` of shape {a.shape} needs `c` of shape ({n}, {n}), got {c.shape}"
            )

        # Work buffer, a copy of c in its own memory order (a plain memcpy for contiguous c). f2py
        # overwrites a Fortran-contiguous buffer in place, so a C-ordered copy is passed as its
        # transpose, with uplo flipped: the upper triangle of c.T is the lower triangle of c.
        buf = None
        if c is not None and self.beta != 0.0:
            buf = np.array(c, dtype=dtype, order="K", copy=True)
            if not buf.flags.f_contiguous:
                buf = np.ascontiguousarray(buf)
        buf_f = buf if buf is None or buf.flags.f_contiguous else buf.T
        lower = int(buf is None or buf.flags.f_contiguous)

        if k == 0 or n == 0:
            if buf is None:
                out = np.zeros((n, n), dtype=dtype, order="F")
            else:
                buf *= self.beta
                out = buf
        else:
            syrk = getattr(scipy_blas, _BLAS_PREFIX[dtype] + "syrk")
            # f2py copies any input that is not Fortran-contiguous. A C-contiguous (k, n) `a` is
            # the Fortran-contiguous (n, k) `a.T`, for which trans=0 gives a.T @ (a.T).T.
            if a.flags.f_contiguous:
                a_f, trans = a, 1
            elif a.flags.c_contiguous:
                a_f, trans = a.T, 0
            else:
                a_f, trans = np.ascontiguousarray(a).T, 0
            if buf is None:
                out = syrk(self.alpha, a_f, trans=trans, lower=1)
            else:
                res = syrk(
                    self.alpha,
                    a_f,
                    beta=self.beta,
                    c=buf_f,
                    trans=trans,
                    lower=lower,
                    overwrite_c=1,
                )
                if res is not buf_f:  # f2py copied after all: keep its result
                    buf_f[...] = res
                out = buf
        # The lower triangle of `out` (in its own indexing) holds the result.
        if not self.mirror:
            output_storage[0][0] = out
            return
        mirror_lower_to_upper(out)
        # `out` is exactly symmetric, so its transpose is the same matrix, C-contiguous.
        output_storage[0][0] = out.T if out.flags.f_contiguous else out

    def pullback(self, inputs, outputs, cotangents):
        return [
            grad_not_implemented(self, i, inp, "SymRankK has no gradient implemented")
            for i, inp in enumerate(inputs)
        ]


def sym_rank_k(a, c=None, alpha: float = 1.0, beta: float = 0.0):
    """Return ``alpha * a.T @ a + beta * c`` as a full symmetric ``(n, n)`` PyTensor variable.

    ``a`` is a ``(k, n)`` matrix and ``c`` an optional ``(n, n)`` symmetric matrix, of which only
    the lower triangle is read (and with ``beta == 0`` none of it). ``alpha`` and ``beta`` are
    Python floats fixed at graph-build time; ``beta`` is ignored when ``c`` is None.

    Inputs are cast to their common dtype; integer/bool inputs become float (float32 or float64 by
    NumPy-like upcasting with float32), float16 becomes float32, complex is rejected.
    """
    a = pt.as_tensor_variable(a)
    if c is not None:
        c = pt.as_tensor_variable(c)
        dtype = upcast(a.type.dtype, c.type.dtype)
    else:
        dtype = a.type.dtype
    if dtype not in _FLOAT_DTYPES:
        if dtype.startswith("complex"):
            raise TypeError(f"sym_rank_k: complex inputs are not supported (got {dtype})")
        dtype = upcast(dtype, "float32")
    a = pt.cast(a, dtype)
    if c is None:
        return SymRankK(alpha=alpha, has_c=False)(a)
    return SymRankK(alpha=alpha, beta=beta, has_c=True)(a, pt.cast(c, dtype))


class SymProduct(Op):
    """Matrix product known to be symmetric: ``alpha * a @ b + beta * c``, lower triangle computed.

    Inputs are ``(a, b)`` when ``has_c`` is false and ``(a, b, c)`` otherwise, with ``a`` of shape
    ``(k, n)``, ``b`` of shape ``(n, k)`` and ``c`` of shape ``(k, k)``, all of the same float dtype
    (float32 or float64), which is also the output dtype. The caller guarantees that ``a @ b`` is
    symmetric; only the lower triangle is computed (by ``blocks`` row blocks, ``None``: chosen from
    ``k`` at run time by :func:`sym_product_blocks`) and mirrored onto the upper one. ``alpha`` and
    ``beta`` are fixed when the graph is built. Use :func:`sym_product` to build nodes: it casts
    the inputs to a common float dtype.
    """

    __props__ = ("alpha", "beta", "has_c", "blocks", "mirror")

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 0.0,
        has_c: bool = False,
        blocks: int | None = None,
        mirror: bool = True,
    ):
        alpha = float(alpha)
        beta = float(beta) if has_c else 0.0
        if not (math.isfinite(alpha) and math.isfinite(beta)):
            raise ValueError(f"alpha and beta must be finite, got alpha={alpha}, beta={beta}")
        if blocks is not None:
            if isinstance(blocks, bool) or not isinstance(blocks, (int, np.integer)):
                raise TypeError(f"SymProduct: `blocks` must be None or an int, got {blocks!r}")
            if not 1 <= blocks <= _INT32_MAX:
                raise ValueError(f"SymProduct: `blocks` must be None or >= 1, got {blocks}")
            blocks = int(blocks)
        self.alpha = alpha
        self.beta = beta
        self.has_c = bool(has_c)
        self.blocks = blocks
        self.mirror = bool(mirror)

    @property
    def exactly_symmetric(self) -> bool:
        """Whether the result is exactly symmetric on a backend that runs it as BLAS: one
        triangle computed, mirrored (``Backend.mirrors_exactly``)."""
        return self.mirror

    def __str__(self) -> str:
        expr = f"{self.alpha!r} * a @ b"
        if self.has_c:
            expr += f" + {self.beta!r} * c"
        if self.blocks is not None:
            expr += f", blocks={self.blocks}"
        if not self.mirror:
            expr += ", lower triangle"
        return f"{type(self).__name__}{{{expr}}}"

    def make_node(self, a, b, c=None):
        name = type(self).__name__
        a = pt.as_tensor_variable(a)
        b = pt.as_tensor_variable(b)
        for label, x in (("a", a), ("b", b)):
            if x.type.ndim != 2:
                raise TypeError(f"{name}: `{label}` must be a matrix, got {x.type.ndim} dimensions")
            if x.type.dtype not in _FLOAT_DTYPES:
                raise TypeError(f"{name}: `{label}` must be float32 or float64, got {x.type.dtype}")
        if b.type.dtype != a.type.dtype:
            raise TypeError(
                f"{name}: `b` dtype {b.type.dtype} differs from `a` dtype {a.type.dtype} "
                "(sym_product() casts all inputs to a common dtype)"
            )
        inputs = [a, b]
        # Static lengths of the `k` dimension and of the inner `n` dimension.
        k_known = [a.type.shape[0], b.type.shape[1]]
        n_known = {s for s in (a.type.shape[1], b.type.shape[0]) if s is not None}
        if self.has_c:
            if c is None:
                raise TypeError(f"{name}(has_c=True) needs the input `c`")
            c = pt.as_tensor_variable(c)
            if c.type.ndim != 2:
                raise TypeError(f"{name}: `c` must be a matrix, got {c.type.ndim} dimensions")
            if c.type.dtype != a.type.dtype:
                raise TypeError(
                    f"{name}: `c` dtype {c.type.dtype} differs from `a` dtype {a.type.dtype} "
                    "(sym_product() casts all inputs to a common dtype)"
                )
            k_known += list(c.type.shape)
            inputs.append(c)
        elif c is not None:
            raise TypeError(f"{name}(has_c=False) takes no input `c`")
        k_set = {s for s in k_known if s is not None}
        if len(k_set) > 1 or len(n_known) > 1:
            shapes = f"`a` {a.type.shape}, `b` {b.type.shape}"
            if self.has_c:
                shapes += f", `c` {c.type.shape}"
            raise ValueError(
                f"{name}: needs `a` of shape (k, n), `b` of shape (n, k)"
                + (" and `c` of shape (k, k)" if self.has_c else "")
                + f"; got static shapes {shapes}"
            )
        k_static = k_set.pop() if k_set else None
        out = pt.tensor(dtype=a.type.dtype, shape=(k_static, k_static))
        return Apply(self, inputs, [out])

    def infer_shape(self, fgraph, node, shapes):
        k = shapes[0][0]
        return [(k, k)]

    def perform(self, node, inputs, output_storage):
        a, b = inputs[0], inputs[1]
        c = inputs[2] if self.has_c else None
        dtype = node.outputs[0].type.dtype
        k, n = a.shape
        if b.shape != (n, k):
            raise ValueError(
                f"SymProduct: `a` of shape {a.shape} needs `b` of shape ({n}, {k}), got {b.shape}"
            )
        if c is not None and c.shape != (k, k):
            raise ValueError(
                f"SymProduct: `a` of shape {a.shape} needs `c` of shape ({k}, {k}), got {c.shape}"
            )
        use_c = c is not None and self.beta != 0.0
        use_ab = self.alpha != 0.0 and n > 0  # alpha == 0: a and b not referenced, as in BLAS
        out = np.empty((k, k), dtype=dtype)
        bounds = _block_bounds(k, _n_blocks(self.blocks, k))
        for r0, r1 in zip(bounds[:-1], bounds[1:], strict=True):
            blk = out[r0:r1, :r1]
            if use_ab:
                # numpy's matmul hands the strided (row-major) `out` view straight to GEMM.
                np.matmul(a[r0:r1], b[:, :r1], out=blk)
                if self.alpha != 1.0:
                    blk *= self.alpha
            else:
                blk.fill(0)
            if use_c:
                # Only the lower triangle of c: the strict lower blocks, then the diagonal block's
                # lower triangle (np.tril selects, so the strict upper entries do not enter).
                blk[:, :r0] += self.beta * c[r0:r1, :r0]
                blk[:, r0:] += self.beta * np.tril(c[r0:r1, r0:r1])
        # The lower triangle holds the result; the computed upper entries of the diagonal blocks
        # are overwritten too, so the result is exactly symmetric.
        output_storage[0][0] = mirror_lower_to_upper(out) if self.mirror else out

    def pullback(self, inputs, outputs, cotangents):
        return [
            grad_not_implemented(self, i, inp, "SymProduct has no gradient implemented")
            for i, inp in enumerate(inputs)
        ]


def sym_product(a, b, c=None, alpha: float = 1.0, beta: float = 0.0, blocks: int | None = None):
    """Return ``alpha * a @ b + beta * c`` for a product ``a @ b`` the caller knows is symmetric.

    ``a`` is ``(k, n)``, ``b`` is ``(n, k)`` and ``c`` an optional ``(k, k)`` symmetric matrix, of
    which only the lower triangle is read (and with ``beta == 0`` none of it). Nothing checks that
    ``a @ b`` is symmetric: only its lower triangle is computed, in ``blocks`` row blocks (``None``:
    :func:`sym_product_blocks` of ``k``, at run time), and mirrored, so the result is exactly
    symmetric. ``alpha`` and ``beta`` are Python floats fixed at graph-build time; ``beta`` is
    ignored when ``c`` is None.

    Inputs are cast to their common dtype; integer/bool inputs become float (float32 or float64 by
    NumPy-like upcasting with float32), float16 becomes float32, complex is rejected.
    """
    a = pt.as_tensor_variable(a)
    b = pt.as_tensor_variable(b)
    if c is not None:
        c = pt.as_tensor_variable(c)
    dtypes = [x.type.dtype for x in (a, b, c) if x is not None]
    dtype = upcast(*dtypes)
    if dtype not in _FLOAT_DTYPES:
        if dtype.startswith("complex"):
            raise TypeError(f"sym_product: complex inputs are not supported (got {dtype})")
        dtype = upcast(dtype, "float32")
    a = pt.cast(a, dtype)
    b = pt.cast(b, dtype)
    if c is None:
        return SymProduct(alpha=alpha, has_c=False, blocks=blocks)(a, b)
    return SymProduct(alpha=alpha, beta=beta, has_c=True, blocks=blocks)(a, b, pt.cast(c, dtype))


def sym_product_blocks(k: int) -> int:
    """The number of row blocks :class:`SymProduct` uses for a ``(k, k)`` result by default.

    ``min(8, k // 128)``, at least 1: rows per block stay at least 128 (thinner GEMMs run slower
    per flop), and at most 8 blocks are used (each more saves less: ``(nb + 1) / (2 nb)`` of the
    full product). So k < 256 is one GEMM, k = 500 three blocks, k >= 1024 eight.
    """
    return max(1, min(_SYM_PRODUCT_MAX_BLOCKS, k // _SYM_PRODUCT_MIN_BLOCK_ROWS))


def _n_blocks(blocks: int | None, k: int) -> int:
    """The number of row blocks actually used: ``blocks`` (default rule if None), at most ``k``."""
    nb = sym_product_blocks(k) if blocks is None else blocks
    return max(1, min(nb, k))


def _block_bounds(k: int, nb: int) -> list[int]:
    """Row-block boundaries ``[0, r1, ..., k]`` of ``nb`` near-equal blocks."""
    return [(i * k) // nb for i in range(nb + 1)]



@functools.cache
def _numba_xsyrk(dtype: str):
    """An njit function calling ``{s,d}syrk`` (Fortran argument list), see :func:`_blas_routine`."""
    # UPLO TRANS N K ALPHA A LDA BETA C LDC
    get_syrk_pointer, syrk_type, unique_name = _blas_routine("syrk", dtype, "cciiffiffi")

    @numba_basic.numba_njit
    def xsyrk(UPLO, TRANS, N, K, ALPHA, A, LDA, BETA, C, LDC):
        fn = _call_cached_ptr(
            get_ptr_func=get_syrk_pointer,
            func_type_ref=syrk_type,
            unique_func_name_lit=unique_name,
        )
        fn(UPLO, TRANS, N, K, ALPHA, A, LDA, BETA, C, LDC)

    return xsyrk



def _syrk_full(a, out, alpha, beta, mirror):
    """``out := alpha * a.T @ a + beta * out`` (lower triangle of out read), full symmetric result
    (only the lower triangle when ``mirror`` is false).

    Numba-only (overloaded); ``out`` must be C-contiguous ``(n, n)`` of ``a``'s dtype.
    """
    raise NotImplementedError("_syrk_full is only callable from numba-compiled code")


@overload(_syrk_full)
def _syrk_full_impl(a, out, alpha, beta, mirror):
    dtype = str(a.dtype)
    if dtype not in _FLOAT_DTYPES or str(out.dtype) != dtype:
        raise numba.TypingError(f"_syrk_full: unsupported dtypes {a.dtype}, {out.dtype}")
    xsyrk = _numba_xsyrk(dtype)
    scalar = np.float32 if dtype == "float32" else np.float64
    int32_max = _INT32_MAX

    def impl(a, out, alpha, beta, mirror):
        # `out` (C-contiguous) is out.T to Fortran; uplo='U' on out.T is the lower triangle of
        # `out`. The product is symmetric, so whether BLAS sees out or out.T does not matter.
        k, n = a.shape
        if n == 0:
            return
        if k > int32_max or n > int32_max:
            raise ValueError("SymRankK: dimension too large for 32-bit BLAS")
        isz = a.itemsize
        s0, s1 = a.strides
        if k == 0:
            a_use = a
            trans = ord("N")
            lda = n
        elif (s1 == isz or n == 1) and (
            k == 1 or (s0 % isz == 0 and s0 // isz >= n and s0 // isz <= int32_max)
        ):
            # Rows of `a` are contiguous: Fortran sees the (n, k) matrix a.T, leading dim s0.
            a_use = a
            trans = ord("N")
            lda = n if k == 1 else s0 // isz
        elif (s0 == isz or k == 1) and (
            n == 1 or (s1 % isz == 0 and s1 // isz >= k and s1 // isz <= int32_max)
        ):
            # Columns of `a` are contiguous: Fortran sees the (k, n) matrix a, leading dim s1.
            a_use = a
            trans = ord("T")
            lda = k if n == 1 else s1 // isz
        else:
            a_use = np.ascontiguousarray(a)
            trans = ord("N")
            lda = n
        xsyrk(
            _val_to_ptr(np.int8(ord("U"))),
            _val_to_ptr(np.int8(trans)),
            _val_to_ptr(np.int32(n)),
            _val_to_ptr(np.int32(k)),
            _val_to_ptr(scalar(alpha)),
            a_use.ctypes,
            _val_to_ptr(np.int32(max(lda, 1))),
            _val_to_ptr(scalar(beta)),
            out.ctypes,
            _val_to_ptr(np.int32(n)),
        )
        if mirror:
            _numba_mirror_lower_to_upper(out)

    return impl


@register_funcify_default_op_cache_key(SymRankK)
def numba_funcify_SymRankK(op, node, **kwargs):
    # The per-node function is a thin wrapper: the BLAS call, stride logic and mirror live in
    # the overloads above, which numba compiles once per dtype/layout, not once per node.
    alpha = op.alpha
    beta = op.beta
    use_c = op.has_c and op.beta != 0.0
    mirror = op.mirror

    if op.has_c:

        @numba_basic.numba_njit
        def sym_rank_k_numba(a, c):
            n = a.shape[1]
            if c.shape[0] != n or c.shape[1] != n:
                raise ValueError("SymRankK: `c` must have shape (n, n) with n = a.shape[1]")
            out = _alloc_square(n, a)
            if use_c:
                out[:] = c
                _syrk_full(a, out, alpha, beta, mirror)
            else:
                _syrk_full(a, out, alpha, 0.0, mirror)
            return out

    else:

        @numba_basic.numba_njit
        def sym_rank_k_numba(a):
            out = _alloc_square(a.shape[1], a)
            _syrk_full(a, out, alpha, 0.0, mirror)
            return out

    cache_version = 6
    return sym_rank_k_numba, cache_version



@numba_basic.numba_njit
def _numba_n_blocks(blocks, k):
    """:func:`_n_blocks` for numba; ``blocks <= 0`` means the default rule."""
    if blocks > 0:
        nb = blocks
    else:
        nb = max(1, min(_SYM_PRODUCT_MAX_BLOCKS, k // _SYM_PRODUCT_MIN_BLOCK_ROWS))
    return max(1, min(nb, k))



def _sym_gemm_lower(a, b, out, alpha, beta, nb, mirror):
    """Lower triangle of ``out := alpha * a @ b + beta * out`` by ``nb`` row-block GEMMs, then the
    mirror onto the upper triangle (the strict upper triangle of ``out`` is not read).

    Numba-only (overloaded); ``out`` must be C-contiguous ``(k, k)`` of ``a``'s dtype, ``a`` is
    ``(k, n)`` and ``b`` ``(n, k)``, ``1 <= nb <= k``.
    """
    raise NotImplementedError("_sym_gemm_lower is only callable from numba-compiled code")


@overload(_sym_gemm_lower)
def _sym_gemm_lower_impl(a, b, out, alpha, beta, nb, mirror):
    dtype = str(a.dtype)
    if dtype not in _FLOAT_DTYPES or str(b.dtype) != dtype or str(out.dtype) != dtype:
        raise numba.TypingError(
            f"_sym_gemm_lower: unsupported dtypes {a.dtype}, {b.dtype}, {out.dtype}"
        )
    xgemm = _numba_xgemm(dtype)
    scalar = np.float32 if dtype == "float32" else np.float64
    int32_max = _INT32_MAX

    def impl(a, b, out, alpha, beta, nb, mirror):
        k, n = a.shape
        if k == 0:
            return
        if k > int32_max or n > int32_max:
            raise ValueError("SymProduct: dimension too large for 32-bit BLAS")
        if n == 0 or alpha == 0.0:
            # a and b are not referenced (as in BLAS): lower triangle := beta * lower triangle.
            for i in range(k):
                for j in range(i + 1):
                    out[i, j] = out[i, j] * beta if beta != 0.0 else 0.0
        else:
            # `out` (C-contiguous) is out.T to Fortran, leading dimension k. Row block [r0, r1)
            # of `out`, columns [0, r1), is the Fortran (r1, r1 - r0) block at out[r0:] equal to
            # b[:, :r1].T @ a[r0:r1].T: BLAS A is b (Fortran sees b.T when b's rows are
            # contiguous: TRANSA='N', else b: 'T'), BLAS B is a from row r0 (likewise).
            a_use, a_rows, lda = _numba_gemm_operand(a)
            b_use, b_rows, ldb = _numba_gemm_operand(b)
            trans_a = np.int8(ord("N") if b_rows else ord("T"))
            trans_b = np.int8(ord("N") if a_rows else ord("T"))
            for i in range(nb):
                r0 = (i * k) // nb
                r1 = ((i + 1) * k) // nb
                xgemm(
                    _val_to_ptr(trans_a),
                    _val_to_ptr(trans_b),
                    _val_to_ptr(np.int32(r1)),
                    _val_to_ptr(np.int32(r1 - r0)),
                    _val_to_ptr(np.int32(n)),
                    _val_to_ptr(scalar(alpha)),
                    b_use.ctypes,
                    _val_to_ptr(np.int32(ldb)),
                    a_use[r0:].ctypes,
                    _val_to_ptr(np.int32(lda)),
                    _val_to_ptr(scalar(beta)),
                    out[r0:].ctypes,
                    _val_to_ptr(np.int32(k)),
                )
        if mirror:
            _numba_mirror_lower_to_upper(out)

    return impl


@register_funcify_default_op_cache_key(SymProduct)
def numba_funcify_SymProduct(op, node, **kwargs):
    # As for SymRankK: the per-node function is a thin wrapper around the overloads above.
    alpha = op.alpha
    beta = op.beta
    use_c = op.has_c and op.beta != 0.0
    blocks = 0 if op.blocks is None else op.blocks  # 0: the default rule, at run time
    mirror = op.mirror

    if op.has_c:

        @numba_basic.numba_njit
        def sym_product_numba(a, b, c):
            k, n = a.shape
            if b.shape[0] != n or b.shape[1] != k:
                raise ValueError("SymProduct: `b` must have shape (n, k) for `a` of shape (k, n)")
            if c.shape[0] != k or c.shape[1] != k:
                raise ValueError("SymProduct: `c` must have shape (k, k) with k = a.shape[0]")
            out = _alloc_square(k, a)
            nb = _numba_n_blocks(blocks, k)
            if use_c:
                _numba_copy_lower(c, out)
                _sym_gemm_lower(a, b, out, alpha, beta, nb, mirror)
            else:
                _sym_gemm_lower(a, b, out, alpha, 0.0, nb, mirror)
            return out

    else:

        @numba_basic.numba_njit
        def sym_product_numba(a, b):
            k, n = a.shape
            if b.shape[0] != n or b.shape[1] != k:
                raise ValueError("SymProduct: `b` must have shape (n, k) for `a` of shape (k, n)")
            out = _alloc_square(k, a)
            _sym_gemm_lower(a, b, out, alpha, 0.0, _numba_n_blocks(blocks, k), mirror)
            return out

    cache_version = 4
    return sym_product_numba, cache_version



class GeneralProduct(Op):
    """General matrix product ``alpha * a @ b + beta * c`` by one BLAS call, no operand copied.

    Inputs are ``(a, b)`` when ``has_c`` is false and ``(a, b, c)`` otherwise, with ``a`` of shape
    ``(m, k)``, ``b`` of shape ``(k, n)`` and ``c`` of shape ``(m, n)``, all of the same float
    dtype (float32 or float64), which is also the output dtype (a C-ordered ``(m, n)`` matrix).
    ``alpha`` and ``beta`` are fixed when the graph is built; with ``beta == 0`` ``c`` is not read.
    Use :func:`general_product` to build nodes: it casts the inputs to a common float dtype.

    The Numba implementation calls ``{s,d}gemm`` (``{s,d}gemv`` when ``n == 1`` or ``m == 1``)
    with each operand's transpose flag and leading dimension read from its strides, so C-ordered,
    F-ordered and transposed operands (``A.T`` of a C-ordered ``A`` is a Fortran-ordered view)
    are used in place; only strides BLAS cannot express (e.g. ``x[::2, ::2]``) are copied.
    """

    __props__ = ("alpha", "beta", "has_c")

    def __init__(self, alpha: float = 1.0, beta: float = 0.0, has_c: bool = False):
        alpha = float(alpha)
        beta = float(beta) if has_c else 0.0
        if not (math.isfinite(alpha) and math.isfinite(beta)):
            raise ValueError(f"alpha and beta must be finite, got alpha={alpha}, beta={beta}")
        self.alpha = alpha
        self.beta = beta
        self.has_c = bool(has_c)

    def __str__(self) -> str:
        expr = "a @ b" if self.alpha == 1.0 else f"{self.alpha!r} * a @ b"
        if self.has_c:
            expr += f" + {self.beta!r} * c"
        return f"{type(self).__name__}{{{expr}}}"

    def make_node(self, a, b, c=None):
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
                            f"{a.type.dtype} (general_product() casts to a common dtype)")
        ka, kb = a.type.shape[1], b.type.shape[0]
        if ka is not None and kb is not None and ka != kb:
            raise ValueError(f"{name}: inner dimensions differ: a {a.type.shape}, b {b.type.shape}")
        m, n = a.type.shape[0], b.type.shape[1]
        inputs = [a, b]
        if self.has_c:
            if c is None:
                raise TypeError(f"{name}(has_c=True) needs the input `c`")
            c = pt.as_tensor_variable(c)
            if c.type.ndim != 2 or c.type.dtype != a.type.dtype:
                raise TypeError(f"{name}: `c` must be a {a.type.dtype} matrix, got {c.type}")
            shape = []
            for s, t in zip((m, n), c.type.shape, strict=True):
                if s is not None and t is not None and s != t:
                    raise ValueError(f"{name}: `c` of static shape {c.type.shape} does not match "
                                     f"the product's ({m}, {n})")
                shape.append(s if s is not None else t)
            m, n = shape
            inputs.append(c)
        elif c is not None:
            raise TypeError(f"{name}(has_c=False) takes no input `c`")
        return Apply(self, inputs, [pt.tensor(dtype=a.type.dtype, shape=(m, n))])

    def infer_shape(self, fgraph, node, shapes):
        return [(shapes[0][0], shapes[1][1])]

    def perform(self, node, inputs, output_storage):
        a, b = inputs[0], inputs[1]
        dtype = node.outputs[0].type.dtype
        if a.shape[1] != b.shape[0]:
            raise ValueError(f"GeneralProduct: shapes {a.shape} and {b.shape} do not align")
        out = np.empty((a.shape[0], b.shape[1]), dtype=dtype)
        if self.alpha == 0.0 or a.shape[1] == 0:
            out.fill(0)
        else:
            # NumPy's matmul passes C-, F-ordered and transposed operands to BLAS with flags.
            np.matmul(a, b, out=out)
            if self.alpha != 1.0:
                out *= self.alpha
        if self.has_c and self.beta != 0.0:
            c = inputs[2]
            if c.shape != out.shape:
                raise ValueError(f"GeneralProduct: `c` of shape {c.shape}, needs {out.shape}")
            out += self.beta * c
        output_storage[0][0] = out

    def pullback(self, inputs, outputs, cotangents):
        return [
            grad_not_implemented(self, i, inp, "GeneralProduct has no gradient implemented")
            for i, inp in enumerate(inputs)
        ]


def general_product(a, b, c=None, alpha: float = 1.0, beta: float = 0.0):
    """Return ``alpha * a @ b + beta * c`` (a :class:`GeneralProduct` node): ``a`` ``(m, k)``,
    ``b`` ``(k, n)``, ``c`` an optional ``(m, n)`` matrix. Inputs are cast to their common float
    dtype (integers to float, float16 to float32; complex is rejected)."""
    xs = [pt.as_tensor_variable(x) for x in (a, b, c) if x is not None]
    dtype = upcast(*(x.type.dtype for x in xs))
    if dtype not in _FLOAT_DTYPES:
        if dtype.startswith("complex"):
            raise TypeError(f"general_product: complex inputs are not supported (got {dtype})")
        dtype = upcast(dtype, "float32")
    xs = [pt.cast(x, dtype) for x in xs]
    return GeneralProduct(alpha=alpha, beta=beta, has_c=c is not None)(*xs)


@numba_basic.numba_njit
def _numba_vector_operand(x, along_rows):
    """``(x_use, inc)``: the vector ``x[:, 0]`` (``along_rows``) or ``x[0, :]`` as BLAS sees it
    without a copy (a positive increment); other strides give a contiguous copy."""
    isz = x.itemsize
    if along_rows:
        length = x.shape[0]
        s = x.strides[0]
    else:
        length = x.shape[1]
        s = x.strides[1]
    if length == 1:
        return x, 1
    if s > 0 and s % isz == 0 and s // isz <= _INT32_MAX:
        return x, s // isz
    return np.ascontiguousarray(x), (1 if along_rows else x.shape[0])


def _gemm_into(a, b, out, alpha, beta):
    """``out := alpha * a @ b + beta * out`` by one BLAS call (numba-only, overloaded); ``out``
    is C-contiguous ``(m, n)`` of ``a``'s dtype, with ``beta == 0`` it is not read."""
    raise NotImplementedError("_gemm_into is only callable from numba-compiled code")


@overload(_gemm_into)
def _gemm_into_impl(a, b, out, alpha, beta):
    dtype = str(a.dtype)
    if dtype not in _FLOAT_DTYPES or str(b.dtype) != dtype or str(out.dtype) != dtype:
        raise numba.TypingError(f"_gemm_into: unsupported dtypes {a.dtype}, {b.dtype}, {out.dtype}")
    xgemm = _numba_xgemm(dtype)
    xgemv = _numba_xgemv(dtype)
    scalar = np.float32 if dtype == "float32" else np.float64
    int32_max = _INT32_MAX
    op_n = np.int8(ord("N"))
    op_t = np.int8(ord("T"))

    def impl(a, b, out, alpha, beta):
        m, k = a.shape
        n = b.shape[1]
        if m == 0 or n == 0:
            return
        if m > int32_max or n > int32_max or k > int32_max:
            raise ValueError("GeneralProduct: dimension too large for 32-bit BLAS")
        if k == 0 or alpha == 0.0:
            # a and b are not referenced (as in BLAS): out := beta * out.
            for i in range(m):
                for j in range(n):
                    out[i, j] = out[i, j] * beta if beta != 0.0 else 0.0
            return
        if n == 1:
            # out[:, 0] := alpha * a @ b[:, 0] + beta * out[:, 0]
            a_use, a_rows, lda = _numba_gemm_operand(a)
            x_use, incx = _numba_vector_operand(b, True)
            if a_rows:  # Fortran sees the (k, m) matrix a.T: y = (a.T).T x
                trans, rows, cols = op_t, k, m
            else:  # Fortran sees the (m, k) matrix a
                trans, rows, cols = op_n, m, k
            xgemv(_val_to_ptr(trans), _val_to_ptr(np.int32(rows)), _val_to_ptr(np.int32(cols)),
                  _val_to_ptr(scalar(alpha)), a_use.ctypes, _val_to_ptr(np.int32(lda)),
                  x_use.ctypes, _val_to_ptr(np.int32(incx)), _val_to_ptr(scalar(beta)),
                  out.ctypes, _val_to_ptr(np.int32(1)))
        elif m == 1:
            # out[0, :] := alpha * b.T @ a[0, :] + beta * out[0, :]
            b_use, b_rows, ldb = _numba_gemm_operand(b)
            x_use, incx = _numba_vector_operand(a, False)
            if b_rows:  # Fortran sees the (n, k) matrix b.T
                trans, rows, cols = op_n, n, k
            else:  # Fortran sees the (k, n) matrix b
                trans, rows, cols = op_t, k, n
            xgemv(_val_to_ptr(trans), _val_to_ptr(np.int32(rows)), _val_to_ptr(np.int32(cols)),
                  _val_to_ptr(scalar(alpha)), b_use.ctypes, _val_to_ptr(np.int32(ldb)),
                  x_use.ctypes, _val_to_ptr(np.int32(incx)), _val_to_ptr(scalar(beta)),
                  out.ctypes, _val_to_ptr(np.int32(1)))
        else:
            # The C-ordered `out` is the Fortran (n, m) matrix out.T = b.T @ a.T: BLAS A is b
            # (Fortran sees b.T when b's rows are contiguous: 'N', else b: 'T'), BLAS B is a.
            a_use, a_rows, lda = _numba_gemm_operand(a)
            b_use, b_rows, ldb = _numba_gemm_operand(b)
            xgemm(_val_to_ptr(op_n if b_rows else op_t), _val_to_ptr(op_n if a_rows else op_t),
                  _val_to_ptr(np.int32(n)), _val_to_ptr(np.int32(m)), _val_to_ptr(np.int32(k)),
                  _val_to_ptr(scalar(alpha)), b_use.ctypes, _val_to_ptr(np.int32(ldb)),
                  a_use.ctypes, _val_to_ptr(np.int32(lda)), _val_to_ptr(scalar(beta)),
                  out.ctypes, _val_to_ptr(np.int32(n)))

    return impl


@register_funcify_default_op_cache_key(GeneralProduct)
def numba_funcify_GeneralProduct(op, node, **kwargs):
    alpha = op.alpha
    beta = op.beta
    use_c = op.has_c and op.beta != 0.0

    if op.has_c:

        @numba_basic.numba_njit
        def general_product_numba(a, b, c):
            m, k = a.shape
            n = b.shape[1]
            if b.shape[0] != k:
                raise ValueError("GeneralProduct: `b` must have shape (k, n) for `a` (m, k)")
            if c.shape[0] != m or c.shape[1] != n:
                raise ValueError("GeneralProduct: `c` must have shape (m, n)")
            out = _alloc_matrix(m, n, a)
            if use_c:
                out[:] = c
                _gemm_into(a, b, out, alpha, beta)
            else:
                _gemm_into(a, b, out, alpha, 0.0)
            return out

    else:

        @numba_basic.numba_njit
        def general_product_numba(a, b):
            m, k = a.shape
            if b.shape[0] != k:
                raise ValueError("GeneralProduct: `b` must have shape (k, n) for `a` (m, k)")
            out = _alloc_matrix(m, b.shape[1], a)
            _gemm_into(a, b, out, alpha, 0.0)
            return out

    cache_version = 1
    return general_product_numba, cache_version


@node_rewriter([Dot])
def local_dot_to_general_product(fgraph, node):
    """``Dot`` of two float matrices of one dtype -> :class:`GeneralProduct` (Numba backend)."""
    a, b = node.inputs
    out = node.outputs[0]
    if a.type.ndim != 2 or b.type.ndim != 2:
        return None
    if not (a.type.dtype == b.type.dtype == out.type.dtype and out.type.dtype in _FLOAT_DTYPES):
        return None
    new = GeneralProduct()(a, b)
    if new.type != out.type:  # Dot knew a static length the operands do not say
        return None
    copy_stack_trace(out, new)
    return [new]


# Late (after PyTensor's own canonicalize/specialize passes, which may still rewrite the Dot:
# an inverse times a matrix into a solve under rewrites="pytensor"), Numba backend only: the
# tag "numba" is in the NUMBA mode's query and not in CVM's, JAX's or PyTorch's.
optdb.register(
    "autotune_dot_to_general_product",
    in2out(local_dot_to_general_product, name="autotune_dot_to_general_product"),
    "numba",
    position=40,
)


def _general_product_matmul_impl(op: GeneralProduct, matmul):
    """The GeneralProduct op as ``alpha * a @ b + beta * c`` with a backend's ``matmul`` (its
    compiler handles the transposes)."""
    alpha, beta = op.alpha, op.beta
    if op.has_c and beta != 0.0:

        def general_product(a, b, c):
            return alpha * matmul(a, b) + beta * c

    elif op.has_c:

        def general_product(a, b, c):
            return alpha * matmul(a, b)

    elif alpha == 1.0:

        def general_product(a, b):
            return matmul(a, b)

    else:

        def general_product(a, b):
            return alpha * matmul(a, b)

    return general_product


def _matmul_impl(op: SymRankK, matmul):
    """The SYRK op as ``alpha * a.T @ a + beta * c`` with a backend's ``matmul`` (JAX and
    PyTorch have no SYRK; their compilers decide)."""
    alpha, beta = op.alpha, op.beta
    if op.has_c and beta != 0.0:

        def sym_rank_k(a, c):
            return alpha * matmul(a.T, a) + beta * c

    elif op.has_c:

        def sym_rank_k(a, c):
            return alpha * matmul(a.T, a)

    else:

        def sym_rank_k(a):
            return alpha * matmul(a.T, a)

    return sym_rank_k


def _sym_product_matmul_impl(op: SymProduct, matmul):
    """The SymProduct op as ``alpha * a @ b + beta * c`` with a backend's ``matmul``."""
    alpha, beta = op.alpha, op.beta
    if op.has_c and beta != 0.0:

        def sym_product(a, b, c):
            return alpha * matmul(a, b) + beta * c

    elif op.has_c:

        def sym_product(a, b, c):
            return alpha * matmul(a, b)

    else:

        def sym_product(a, b):
            return alpha * matmul(a, b)

    return sym_product



#: Each op's implementation over a backend's ``matmul`` (JAX and PyTorch alike).
_MATMUL_IMPLS = {
    SymRankK: lambda op, mm: _matmul_impl(op, mm),
    SymProduct: lambda op, mm: _sym_product_matmul_impl(op, mm),
    GeneralProduct: lambda op, mm: _general_product_matmul_impl(op, mm),
}


def _register(dispatcher, matmul) -> None:
    """Register every op of :data:`_MATMUL_IMPLS` with a backend's dispatcher."""
    for cls, impl in _MATMUL_IMPLS.items():
        def funcify(op, _impl=impl, **kwargs):
            return _impl(op, matmul)

        dispatcher.register(cls)(funcify)


def _register_jax() -> bool:
    try:
        import jax.numpy as jnp
        from pytensor.link.jax.dispatch import jax_funcify
    except ImportError:
        return False
    _register(jax_funcify, jnp.matmul)
    return True


def _register_pytorch() -> bool:
    try:
        import torch
        from pytensor.link.pytorch.dispatch import pytorch_funcify
    except ImportError:
        return False
    _register(pytorch_funcify, torch.matmul)
    return True


on_backend_import("jax", _register_jax)
on_backend_import("pytorch", _register_pytorch)
