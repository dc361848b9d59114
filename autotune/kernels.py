"""Custom PyTensor kernels that PyTensor itself does not provide.

:func:`sym_rank_k` builds a :class:`SymRankK` node, the symmetric rank-k update (BLAS ``xSYRK``)::

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

:func:`spd_inverse` builds an :class:`SPDInverse` node, the explicit inverse of a symmetric
positive definite matrix by Cholesky (LAPACK ``xPOTRF`` then ``xPOTRI``)::

    spd_inverse(x) == inv(x)

``x`` is an ``(n, n)`` float matrix that the **caller declares** symmetric positive definite. It
costs about ``n**3`` flops (``n**3 / 3`` for the factorization, ``2 n**3 / 3`` for ``potri``)
against about ``2 n**3`` for the LU-based ``pt.linalg.inv``. Only the **lower triangle** of ``x``
is read (as ``potrf`` with ``uplo='L'``): an ``x`` that is not exactly symmetric behaves as its
lower triangle mirrored, and its strict upper triangle may hold anything (NaN included).
``potri`` computes one triangle of the inverse, mirrored onto the other, so the result is exactly
symmetric; ``x`` is never modified. When ``potrf`` finds that ``x`` is not positive definite
(``info > 0``: a leading minor is not positive) the result depends on the backend:

* Python/C ``perform``: raises :class:`numpy.linalg.LinAlgError` (``scipy.linalg.LinAlgError`` is
  the same class) naming the failing leading minor.
* Numba, JAX and PyTorch: return a matrix filled with NaN, as PyTensor's numba ``Cholesky`` does
  when ``potrf`` fails (compiled code cannot raise a data-dependent error in JAX, and the numba
  result then matches it).

NaN/Inf in the lower triangle are not checked for (OpenBLAS's ``potrf`` does not report them):
they propagate into the result.

Semantics shared by every backend that calls BLAS (Python/C ``perform`` and Numba), for
``SymRankK`` and ``SymProduct``:

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
  into the output. :meth:`SPDInverse.perform` calls ``scipy.linalg.lapack.{s,d}potrf`` and
  ``{s,d}potri`` on a copy of ``x`` in its own memory order (a C-ordered copy is passed as its
  Fortran-ordered transpose with ``lower=0``).
* Numba (``NUMBA``): an njit function calls ``{s,d}syrk`` / ``{s,d}gemm`` from
  ``scipy.linalg.cython_blas`` (and ``{s,d}potrf`` / ``{s,d}potri`` from
  ``scipy.linalg.cython_lapack``) through a function pointer (cached across processes the way
  PyTensor's own LAPACK dispatch does), passing the strides of the inputs as BLAS leading
  dimensions (and transposition flags) so that C-ordered, F-ordered, transposed and
  row/column-sliced inputs are used without a copy; each GEMM block writes into the output.
  ``SPDInverse`` copies the lower triangle of ``x`` (any layout) into the C-ordered output, which
  LAPACK sees as its Fortran-ordered transpose, and factors and inverts its upper triangle there.
* JAX and PyTorch: ``alpha * a.T @ a + beta * c`` / ``alpha * a @ b + beta * c`` with
  ``jax.numpy`` / ``torch`` (plain matmul: all of ``c`` is used, and the result is symmetric only
  up to rounding). ``SPDInverse``: the lower triangle of ``x`` mirrored, then Cholesky
  (``jnp.linalg.cholesky`` + ``jax.scipy.linalg.cho_solve`` of the identity /
  ``torch.linalg.cholesky_ex`` + ``torch.cholesky_inverse``), NaN where the factorization
  fails, and the lower triangle of the result mirrored (exactly symmetric). These are registered
  when PyTensor imports its JAX / PyTorch dispatcher (see the end of this module), so importing
  this module never imports jax or torch, and works when they are not installed.
"""

from __future__ import annotations

import functools
import importlib.abc
import math
import sys

import numba
import numpy as np
import pytensor.tensor as pt
from numba.core import cgutils, types
from numba.core.extending import get_cython_function_address, intrinsic, overload
from pytensor.gradient import grad_not_implemented
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.link.numba.cache import _call_cached_ptr
from pytensor.link.numba.dispatch import basic as numba_basic
from pytensor.link.numba.dispatch.basic import register_funcify_default_op_cache_key
from pytensor.scalar import upcast
from scipy.linalg import blas as scipy_blas
from scipy.linalg import lapack as scipy_lapack

__all__ = [
    "SPDInverse",
    "SymProduct",
    "SymRankK",
    "mirror_lower_to_upper",
    "spd_inverse",
    "sym_product",
    "sym_product_blocks",
    "sym_rank_k",
]

_FLOAT_DTYPES = ("float32", "float64")
_BLAS_PREFIX = {"float32": "s", "float64": "d"}
_INT32_MAX = 2**31 - 1
# Tile edge of the blocked mirrors: a 64x64 float64 tile is 32 KiB (one L1 data cache).
_NUMBA_MIRROR_BLOCK = 64
# The NumPy mirror pays a Python-level call per tile, so it uses bigger tiles.
_NUMPY_MIRROR_BLOCK = 256
# Numba's allocator (malloc -> fresh mmap, 4 KiB pages faulted in one by one) is much slower than
# NumPy's for big arrays (NumPy asks for transparent huge pages from 4 MiB up): at n=4000 float64
# ~75 ms against ~12 ms on the benchmark machine. Outputs at least this big are allocated by NumPy.
_NUMPY_ALLOC_MIN_BYTES = 4 * 2**20
# Default row blocking of SymProduct (sym_product_blocks). With 2 BLAS threads the Kalman-shaped
# k=2000, n=4000 product (benchmarks/sym_product.py) takes 301 ms as one GEMM, 211 ms in 4 row
# blocks, 202-203 ms in 6 or 8 (ideal: 0.625 / 0.583 / 0.5625 of the GEMM); at k=500, n=1000
# 3-6 blocks (83-167 rows) are best, and blocks thinner than ~128 rows lose more GEMM speed than
# they save flops. Cached numba code keeps these values: bump SymProduct's cache_version.
_SYM_PRODUCT_MIN_BLOCK_ROWS = 128
_SYM_PRODUCT_MAX_BLOCKS = 8


# --------------------------------------------------------------------------------------------
# The Op
# --------------------------------------------------------------------------------------------


class SymRankK(Op):
    """Symmetric rank-k update ``alpha * a.T @ a + beta * c`` (full symmetric ``(n, n)`` result).

    Inputs are ``(a,)`` when ``has_c`` is false and ``(a, c)`` otherwise; ``a`` and ``c`` must have
    the same float dtype (float32 or float64), which is also the output dtype. ``alpha`` and
    ``beta`` are fixed when the graph is built. Use :func:`sym_rank_k` to build nodes: it casts the
    inputs to a common float dtype.
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
        expr = f"{self.alpha!r} * a.T @ a"
        if self.has_c:
            expr += f" + {self.beta!r} * c"
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

    __props__ = ("alpha", "beta", "has_c", "blocks")

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 0.0,
        has_c: bool = False,
        blocks: int | None = None,
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

    def __str__(self) -> str:
        expr = f"{self.alpha!r} * a @ b"
        if self.has_c:
            expr += f" + {self.beta!r} * c"
        if self.blocks is not None:
            expr += f", blocks={self.blocks}"
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
        output_storage[0][0] = mirror_lower_to_upper(out)

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


class SPDInverse(Op):
    """Inverse of a symmetric positive definite matrix by Cholesky (LAPACK ``potrf``, ``potri``).

    The input ``x`` is a square float32 or float64 matrix, of which only the lower triangle is
    read; the output has the same dtype and is exactly symmetric. The caller declares ``x``
    positive definite: when the factorization fails, :meth:`perform` raises
    :class:`numpy.linalg.LinAlgError` and the numba, JAX and PyTorch backends return NaN (see the
    module docstring). Use :func:`spd_inverse` to build nodes: it casts the input to float.
    """

    __props__ = ()

    def make_node(self, x):
        name = type(self).__name__
        x = pt.as_tensor_variable(x)
        if x.type.ndim != 2:
            raise TypeError(f"{name}: `x` must be a matrix, got {x.type.ndim} dimensions")
        if x.type.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name}: `x` must be float32 or float64, got {x.type.dtype}")
        known = {s for s in x.type.shape if s is not None}
        if len(known) > 1:
            raise ValueError(f"{name}: `x` must be square, got static shape {x.type.shape}")
        n_static = known.pop() if known else None
        out = pt.tensor(dtype=x.type.dtype, shape=(n_static, n_static))
        return Apply(self, [x], [out])

    def infer_shape(self, fgraph, node, shapes):
        n = shapes[0][0]
        return [(n, n)]

    def perform(self, node, inputs, output_storage):
        (x,) = inputs
        dtype = node.outputs[0].type.dtype
        if x.shape[0] != x.shape[1]:
            raise ValueError(f"SPDInverse: `x` must be square, got shape {x.shape}")
        # Work buffer, a copy of x in its own memory order (a plain memcpy for contiguous x).
        # f2py works in place on a Fortran-contiguous buffer, so a C-ordered copy is passed as its
        # transpose, with uplo flipped: the upper triangle of buf.T is the lower triangle of x.
        buf = np.array(x, dtype=dtype, order="K", copy=True)
        if not buf.flags.f_contiguous:
            buf = np.ascontiguousarray(buf)
        lower = int(buf.flags.f_contiguous)
        buf_f = buf if lower else buf.T
        if buf.size:
            prefix = _BLAS_PREFIX[dtype]
            potrf = getattr(scipy_lapack, prefix + "potrf")
            potri = getattr(scipy_lapack, prefix + "potri")
            fac, info = potrf(buf_f, lower=lower, clean=0, overwrite_a=1)
            if info == 0:
                inv, info = potri(fac, lower=lower, overwrite_c=1)
            else:
                inv = fac
            if info > 0:
                raise np.linalg.LinAlgError(
                    f"SPDInverse: the matrix is not positive definite (LAPACK {prefix}potrf: "
                    f"the leading minor of order {info} is not positive)"
                )
            if info < 0:  # pragma: no cover - an argument error is a bug here
                raise ValueError(f"SPDInverse: LAPACK {prefix}potrf/potri info={info}")
            if inv is not buf_f:  # f2py copied after all: keep its result
                buf_f[...] = inv
        # The lower triangle of `buf` (in its own indexing) holds the result.
        mirror_lower_to_upper(buf)
        # `buf` is exactly symmetric, so its transpose is the same matrix, C-contiguous.
        output_storage[0][0] = buf.T if buf.flags.f_contiguous else buf

    def pullback(self, inputs, outputs, cotangents):
        return [
            grad_not_implemented(self, i, inp, "SPDInverse has no gradient implemented")
            for i, inp in enumerate(inputs)
        ]


def spd_inverse(x):
    """Return the inverse of the symmetric positive definite matrix ``x`` (exactly symmetric).

    ``x`` is an ``(n, n)`` matrix that the caller declares symmetric positive definite; only its
    lower triangle is read. About half the flops of ``pt.linalg.inv`` (Cholesky instead of LU).
    If ``x`` is not positive definite the Python/C backends raise
    :class:`numpy.linalg.LinAlgError` and the numba, JAX and PyTorch backends return NaN.

    The input is cast to float: integer/bool inputs become float (float32 or float64 by NumPy-like
    upcasting with float32), float16 becomes float32, complex is rejected.
    """
    x = pt.as_tensor_variable(x)
    dtype = x.type.dtype
    if dtype not in _FLOAT_DTYPES:
        if dtype.startswith("complex"):
            raise TypeError(f"spd_inverse: complex inputs are not supported (got {dtype})")
        dtype = upcast(dtype, "float32")
    return SPDInverse()(pt.cast(x, dtype))


def mirror_lower_to_upper(x: np.ndarray, block: int = _NUMPY_MIRROR_BLOCK) -> np.ndarray:
    """Copy the strict lower triangle of the square array ``x`` onto its upper one, in place.

    Works tile by tile (``block`` x ``block`` transposed copies), so no full-size temporary is
    allocated; only the diagonal tiles need a ``block`` x ``block`` scratch copy. Returns ``x``.
    """
    if x.ndim != 2 or x.shape[0] != x.shape[1]:
        raise ValueError(f"mirror_lower_to_upper needs a square matrix, got shape {x.shape}")
    n = x.shape[0]
    mask = None
    for i0 in range(0, n, block):
        i1 = min(i0 + block, n)
        for j0 in range(0, i0, block):
            # Off-diagonal tile: the tiles do not overlap, no temporary.
            x[j0 : j0 + block, i0:i1] = x[i0:i1, j0 : j0 + block].T
        if mask is None:
            mask = np.triu(np.ones((block, block), dtype=bool), 1)
        m = i1 - i0
        d = x[i0:i1, i0:i1]
        np.copyto(d, d.T.copy(), where=mask[:m, :m])
    return x


# --------------------------------------------------------------------------------------------
# Numba dispatch
# --------------------------------------------------------------------------------------------


@intrinsic
def _val_to_ptr(typingctx, val):
    """Spill a scalar to a stack slot and return a pointer to it (BLAS takes all by reference)."""

    def codegen(context, builder, signature, args):
        return cgutils.alloca_once_value(builder, args[0])

    return types.CPointer(val)(val), codegen


@intrinsic
def _ptr_to_val(typingctx, ptr):
    """Load the scalar a pointer from :func:`_val_to_ptr` points to (e.g. LAPACK's ``INFO``)."""

    def codegen(context, builder, signature, args):
        return builder.load(args[0])

    return ptr.dtype(ptr), codegen


def _blas_routine(routine: str, dtype: str, args: str, module: str = "scipy.linalg.cython_blas"):
    """``(getter, function type, unique name)`` of ``<module>.<prefix><routine>`` (by default
    ``scipy.linalg.cython_blas``; ``scipy.linalg.cython_lapack`` for LAPACK) for
    ``_call_cached_ptr``; ``args`` spells the Fortran argument list, one letter per argument:
    ``c`` char*, ``i`` int*, ``f`` float* of ``dtype``. The unique name is
    ``autotune.scipy.blas.<name>`` / ``autotune.scipy.lapack.<name>``.

    Like PyTensor's ``_LAPACK`` helpers, the function pointer is fetched in object mode on the
    first call and kept in a module global by ``_call_cached_ptr``, so the compiled code holds no
    process-specific address and can be cached on disk by numba. (``_call_cached_ptr`` is a
    private PyTensor helper, present in PyTensor 3.0.x.)
    """
    name = _BLAS_PREFIX[dtype] + routine
    pointer = {
        "c": types.CPointer(types.int8),
        "i": types.CPointer(types.int32),
        "f": types.CPointer(numba.from_dtype(np.dtype(dtype))),
    }

    @numba_basic.numba_njit
    def get_pointer():
        with numba.objmode(ptr=types.intp):
            ptr = get_cython_function_address(module, name)
        return ptr

    library = module.rsplit(".", 1)[-1].removeprefix("cython_")
    fn_type = types.FunctionType(types.void(*(pointer[a] for a in args)))
    return get_pointer, fn_type, f"autotune.scipy.{library}.{name}"


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


@numba_basic.numba_njit
def _numba_mirror_lower_to_upper(x):
    """In-place ``x[j, i] = x[i, j]`` for ``i > j``, in L1-sized tiles (x is C-contiguous)."""
    n = x.shape[0]
    bs = _NUMBA_MIRROR_BLOCK
    for i0 in range(0, n, bs):
        i1 = min(i0 + bs, n)
        for j0 in range(0, i1, bs):
            for i in range(i0, i1):
                for j in range(j0, min(j0 + bs, i)):
                    x[j, i] = x[i, j]


def _alloc_square(n, like):
    """An uninitialised C-ordered ``(n, n)`` array of ``like``'s dtype (numba-only, overloaded)."""
    return np.empty((n, n), dtype=like.dtype)


@overload(_alloc_square)
def _alloc_square_impl(n, like):
    np_dtype = np.dtype(str(like.dtype))
    out_type = types.Array(like.dtype, 2, "C")
    numpy_alloc_min = _NUMPY_ALLOC_MIN_BYTES // np_dtype.itemsize

    def impl(n, like):
        if n * n >= numpy_alloc_min:
            with numba.objmode(out=out_type):
                out = np.empty((n, n), dtype=np_dtype)
        else:
            out = np.empty((n, n), dtype=np_dtype)
        return out

    return impl


def _syrk_full(a, out, alpha, beta):
    """``out := alpha * a.T @ a + beta * out`` (lower triangle of out read), full symmetric result.

    Numba-only (overloaded); ``out`` must be C-contiguous ``(n, n)`` of ``a``'s dtype.
    """
    raise NotImplementedError("_syrk_full is only callable from numba-compiled code")


@overload(_syrk_full)
def _syrk_full_impl(a, out, alpha, beta):
    dtype = str(a.dtype)
    if dtype not in _FLOAT_DTYPES or str(out.dtype) != dtype:
        raise numba.TypingError(f"_syrk_full: unsupported dtypes {a.dtype}, {out.dtype}")
    xsyrk = _numba_xsyrk(dtype)
    scalar = np.float32 if dtype == "float32" else np.float64
    int32_max = _INT32_MAX

    def impl(a, out, alpha, beta):
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
        _numba_mirror_lower_to_upper(out)

    return impl


@register_funcify_default_op_cache_key(SymRankK)
def numba_funcify_SymRankK(op, node, **kwargs):
    # The per-node function is a thin wrapper: the BLAS call, stride logic and mirror live in
    # the overloads above, which numba compiles once per dtype/layout, not once per node.
    alpha = op.alpha
    beta = op.beta
    use_c = op.has_c and op.beta != 0.0

    if op.has_c:

        @numba_basic.numba_njit
        def sym_rank_k_numba(a, c):
            n = a.shape[1]
            if c.shape[0] != n or c.shape[1] != n:
                raise ValueError("SymRankK: `c` must have shape (n, n) with n = a.shape[1]")
            out = _alloc_square(n, a)
            if use_c:
                out[:] = c
                _syrk_full(a, out, alpha, beta)
            else:
                _syrk_full(a, out, alpha, 0.0)
            return out

    else:

        @numba_basic.numba_njit
        def sym_rank_k_numba(a):
            out = _alloc_square(a.shape[1], a)
            _syrk_full(a, out, alpha, 0.0)
            return out

    cache_version = 4
    return sym_rank_k_numba, cache_version


@functools.cache
def _numba_xgemm(dtype: str):
    """An njit function calling ``{s,d}gemm`` (Fortran argument list), see :func:`_blas_routine`."""
    # TRANSA TRANSB M N K ALPHA A LDA B LDB BETA C LDC
    get_gemm_pointer, gemm_type, unique_name = _blas_routine("gemm", dtype, "cciiiffififfi")

    @numba_basic.numba_njit
    def xgemm(TRANSA, TRANSB, M, N, K, ALPHA, A, LDA, B, LDB, BETA, C, LDC):
        fn = _call_cached_ptr(
            get_ptr_func=get_gemm_pointer,
            func_type_ref=gemm_type,
            unique_func_name_lit=unique_name,
        )
        fn(TRANSA, TRANSB, M, N, K, ALPHA, A, LDA, B, LDB, BETA, C, LDC)

    return xgemm


@numba_basic.numba_njit
def _numba_gemm_operand(x):
    """``(x_use, rows, ld)``: how BLAS sees the non-empty ``(p, q)`` matrix ``x`` without a copy.

    ``rows``: the rows of ``x_use`` are contiguous, so Fortran sees the ``(q, p)`` matrix ``x.T``
    with leading dimension ``ld``; otherwise its columns are, and Fortran sees ``x`` itself.
    Strides BLAS cannot take (negative, zero, not a multiple of the item size, overlapping) give a
    C-contiguous copy. Size-1 dimensions accept any stride.
    """
    p, q = x.shape
    isz = x.itemsize
    s0, s1 = x.strides
    int32_max = _INT32_MAX
    if (s1 == isz or q == 1) and (
        p == 1 or (s0 % isz == 0 and s0 // isz >= q and s0 // isz <= int32_max)
    ):
        x_use = x
        rows = True
        ld = q if p == 1 else s0 // isz
    elif (s0 == isz or p == 1) and (
        q == 1 or (s1 % isz == 0 and s1 // isz >= p and s1 // isz <= int32_max)
    ):
        x_use = x
        rows = False
        ld = p if q == 1 else s1 // isz
    else:
        x_use = np.ascontiguousarray(x)
        rows = True
        ld = q
    return x_use, rows, max(ld, 1)


@numba_basic.numba_njit
def _numba_n_blocks(blocks, k):
    """:func:`_n_blocks` for numba; ``blocks <= 0`` means the default rule."""
    if blocks > 0:
        nb = blocks
    else:
        nb = max(1, min(_SYM_PRODUCT_MAX_BLOCKS, k // _SYM_PRODUCT_MIN_BLOCK_ROWS))
    return max(1, min(nb, k))


@numba_basic.numba_njit
def _numba_copy_lower(c, out):
    """``out[i, j] = c[i, j]`` for ``j <= i`` in L1-sized tiles (any layout of ``c``)."""
    k = out.shape[0]
    bs = _NUMBA_MIRROR_BLOCK
    for i0 in range(0, k, bs):
        i1 = min(i0 + bs, k)
        for j0 in range(0, i1, bs):
            for i in range(i0, i1):
                for j in range(j0, min(j0 + bs, i + 1)):
                    out[i, j] = c[i, j]


def _sym_gemm_lower(a, b, out, alpha, beta, nb):
    """Lower triangle of ``out := alpha * a @ b + beta * out`` by ``nb`` row-block GEMMs, then the
    mirror onto the upper triangle (the strict upper triangle of ``out`` is not read).

    Numba-only (overloaded); ``out`` must be C-contiguous ``(k, k)`` of ``a``'s dtype, ``a`` is
    ``(k, n)`` and ``b`` ``(n, k)``, ``1 <= nb <= k``.
    """
    raise NotImplementedError("_sym_gemm_lower is only callable from numba-compiled code")


@overload(_sym_gemm_lower)
def _sym_gemm_lower_impl(a, b, out, alpha, beta, nb):
    dtype = str(a.dtype)
    if dtype not in _FLOAT_DTYPES or str(b.dtype) != dtype or str(out.dtype) != dtype:
        raise numba.TypingError(
            f"_sym_gemm_lower: unsupported dtypes {a.dtype}, {b.dtype}, {out.dtype}"
        )
    xgemm = _numba_xgemm(dtype)
    scalar = np.float32 if dtype == "float32" else np.float64
    int32_max = _INT32_MAX

    def impl(a, b, out, alpha, beta, nb):
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
        _numba_mirror_lower_to_upper(out)

    return impl


@register_funcify_default_op_cache_key(SymProduct)
def numba_funcify_SymProduct(op, node, **kwargs):
    # As for SymRankK: the per-node function is a thin wrapper around the overloads above.
    alpha = op.alpha
    beta = op.beta
    use_c = op.has_c and op.beta != 0.0
    blocks = 0 if op.blocks is None else op.blocks  # 0: the default rule, at run time

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
                _sym_gemm_lower(a, b, out, alpha, beta, nb)
            else:
                _sym_gemm_lower(a, b, out, alpha, 0.0, nb)
            return out

    else:

        @numba_basic.numba_njit
        def sym_product_numba(a, b):
            k, n = a.shape
            if b.shape[0] != n or b.shape[1] != k:
                raise ValueError("SymProduct: `b` must have shape (n, k) for `a` of shape (k, n)")
            out = _alloc_square(k, a)
            _sym_gemm_lower(a, b, out, alpha, 0.0, _numba_n_blocks(blocks, k))
            return out

    cache_version = 2
    return sym_product_numba, cache_version


@functools.cache
def _numba_xpotr(routine: str, dtype: str):
    """An njit function calling LAPACK ``{s,d}potrf`` or ``{s,d}potri`` (same argument list)."""
    # UPLO N A LDA INFO
    get_pointer, fn_type, unique_name = _blas_routine(
        routine, dtype, "cifii", module="scipy.linalg.cython_lapack"
    )

    @numba_basic.numba_njit
    def xpotr(UPLO, N, A, LDA, INFO):
        fn = _call_cached_ptr(
            get_ptr_func=get_pointer,
            func_type_ref=fn_type,
            unique_func_name_lit=unique_name,
        )
        fn(UPLO, N, A, LDA, INFO)

    return xpotr


def _spd_inverse_lower(out):
    """``out := inv(out)`` in place for an SPD ``out`` of which only the lower triangle is read,
    then the mirror onto the upper triangle. Returns LAPACK's ``info``: if positive (not positive
    definite) ``out`` holds garbage.

    Numba-only (overloaded); ``out`` must be C-contiguous ``(n, n)`` float32/float64.
    """
    raise NotImplementedError("_spd_inverse_lower is only callable from numba-compiled code")


@overload(_spd_inverse_lower)
def _spd_inverse_lower_impl(out):
    dtype = str(out.dtype)
    if dtype not in _FLOAT_DTYPES:
        raise numba.TypingError(f"_spd_inverse_lower: unsupported dtype {out.dtype}")
    xpotrf = _numba_xpotr("potrf", dtype)
    xpotri = _numba_xpotr("potri", dtype)
    int32_max = _INT32_MAX

    def impl(out):
        # `out` (C-contiguous) is out.T to Fortran: its lower triangle is the upper one there.
        n = out.shape[0]
        if n == 0:
            return 0
        if n > int32_max:
            raise ValueError("SPDInverse: dimension too large for 32-bit LAPACK")
        uplo = _val_to_ptr(np.int8(ord("U")))
        n_ptr = _val_to_ptr(np.int32(n))
        info = _val_to_ptr(np.int32(0))
        xpotrf(uplo, n_ptr, out.ctypes, n_ptr, info)
        if _ptr_to_val(info) != 0:
            return _ptr_to_val(info)
        xpotri(uplo, n_ptr, out.ctypes, n_ptr, info)
        if _ptr_to_val(info) != 0:
            return _ptr_to_val(info)
        _numba_mirror_lower_to_upper(out)
        return 0

    return impl


@register_funcify_default_op_cache_key(SPDInverse)
def numba_funcify_SPDInverse(op, node, **kwargs):
    @numba_basic.numba_njit
    def spd_inverse_numba(x):
        n = x.shape[0]
        if x.shape[1] != n:
            raise ValueError("SPDInverse: `x` must be square")
        out = _alloc_square(n, x)
        _numba_copy_lower(x, out)  # any layout of x; x itself is never written
        if _spd_inverse_lower(out) != 0:
            # Not positive definite: NaN, as PyTensor's numba Cholesky when potrf fails.
            out[:] = np.nan
        return out

    cache_version = 1
    return spd_inverse_numba, cache_version


# --------------------------------------------------------------------------------------------
# JAX / PyTorch dispatch (registered when PyTensor loads the backend's dispatcher)
# --------------------------------------------------------------------------------------------
#
# Importing jax or torch costs seconds, and neither is needed unless a graph is compiled in
# mode="JAX" / "PYTORCH" -- which is exactly when PyTensor's linker imports
# `pytensor.link.{jax,pytorch}.dispatch`. So registration is deferred to that moment: if the
# dispatcher module is already imported it happens now, otherwise a post-import hook on
# `sys.meta_path` (watching only those two module names) runs it right after the module is
# executed. When the backend is not installed the dispatcher import fails as usual and nothing
# is registered; importing this module never imports jax or torch.


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


def _register_jax() -> bool:
    try:
        import jax.numpy as jnp
        from pytensor.link.jax.dispatch import jax_funcify
    except ImportError:
        return False

    @jax_funcify.register(SymRankK)
    def jax_funcify_SymRankK(op, **kwargs):
        return _matmul_impl(op, jnp.matmul)

    @jax_funcify.register(SymProduct)
    def jax_funcify_SymProduct(op, **kwargs):
        return _sym_product_matmul_impl(op, jnp.matmul)

    @jax_funcify.register(SPDInverse)
    def jax_funcify_SPDInverse(op, **kwargs):
        from jax.scipy.linalg import cho_solve

        def spd_inverse(x):
            sym = jnp.tril(x) + jnp.tril(x, -1).T  # only the lower triangle is read
            chol = jnp.linalg.cholesky(sym)  # NaN when not positive definite
            inv = cho_solve((chol, True), jnp.eye(x.shape[0], dtype=x.dtype))
            return jnp.tril(inv) + jnp.tril(inv, -1).T

        return spd_inverse

    return True


def _register_pytorch() -> bool:
    try:
        import torch
        from pytensor.link.pytorch.dispatch import pytorch_funcify
    except ImportError:
        return False

    @pytorch_funcify.register(SymRankK)
    def pytorch_funcify_SymRankK(op, **kwargs):
        return _matmul_impl(op, torch.matmul)

    @pytorch_funcify.register(SymProduct)
    def pytorch_funcify_SymProduct(op, **kwargs):
        return _sym_product_matmul_impl(op, torch.matmul)

    @pytorch_funcify.register(SPDInverse)
    def pytorch_funcify_SPDInverse(op, **kwargs):
        def spd_inverse(x):
            sym = torch.tril(x) + torch.tril(x, -1).mT  # only the lower triangle is read
            chol, info = torch.linalg.cholesky_ex(sym)
            ok = info == 0
            # A failed factorization is replaced by the identity so that cholesky_inverse
            # never sees a singular factor; its result is then NaN.
            chol = torch.where(ok, chol, torch.eye(x.shape[0], dtype=x.dtype, device=x.device))
            inv = torch.cholesky_inverse(chol)
            inv = torch.tril(inv) + torch.tril(inv, -1).mT
            return torch.where(ok, inv, torch.full_like(inv, float("nan")))

        return spd_inverse

    return True


_BACKEND_REGISTRARS = {
    "pytensor.link.jax.dispatch": _register_jax,
    "pytensor.link.pytorch.dispatch": _register_pytorch,
}


class _RegisterAfterExecLoader(importlib.abc.Loader):
    """Delegates to the real loader, then runs a registration callback on the fresh module."""

    def __init__(self, loader, callback):
        self._loader = loader
        self._callback = callback

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        self._callback()

    def __getattr__(self, name):  # get_filename, get_data, get_resource_reader, ...
        return getattr(self._loader, name)


class _BackendDispatchHook(importlib.abc.MetaPathFinder):
    """Finds the watched dispatcher modules with the other finders and wraps their loader."""

    def find_spec(self, fullname, path, target=None):
        callback = _BACKEND_REGISTRARS.get(fullname)
        if callback is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _RegisterAfterExecLoader(spec.loader, callback)
                return spec
        return None


def _install_backend_dispatch() -> None:
    for module_name, register in _BACKEND_REGISTRARS.items():
        if module_name in sys.modules:
            register()
    if not any(isinstance(f, _BackendDispatchHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _BackendDispatchHook())


_install_backend_dispatch()
