"""Custom PyTensor kernels that PyTensor itself does not provide.

:func:`sym_rank_k` builds a :class:`SymRankK` node, the symmetric rank-k update (BLAS ``xSYRK``)::

    sym_rank_k(a, c=None, alpha=1.0, beta=0.0) == alpha * a.T @ a + beta * c

``a`` is a ``(k, n)`` float matrix and ``c`` an optional ``(n, n)`` symmetric matrix; the result
is the full ``(n, n)`` symmetric matrix (both triangles filled, exactly symmetric).

Semantics shared by every backend that calls BLAS (Python/C ``perform`` and Numba):

* Only the **lower triangle** of ``c`` is read (as BLAS ``syrk`` with ``uplo='L'``); its strict
  upper triangle is never referenced, so a ``c`` that is not exactly symmetric behaves as its lower
  triangle mirrored.
* With ``beta == 0`` ``c`` is not referenced at all (NaN/Inf in ``c`` do not propagate), as in BLAS.
* BLAS computes one triangle (about half the flops of ``a.T @ a``); the other is filled by an
  in-place, cache-blocked mirror.

Backend dispatch:

* Python (``FAST_COMPILE``) and C (``CVM``) linkers: :meth:`SymRankK.perform` calls
  ``scipy.linalg.blas.{s,d}syrk``, choosing ``trans`` from the memory order of ``a`` so that
  f2py copies nothing (a C-ordered ``(k, n)`` ``a`` is the Fortran-ordered ``(n, k)`` ``a.T``).
* Numba (``NUMBA``): an njit function calls ``{s,d}syrk`` from ``scipy.linalg.cython_blas``
  through a function pointer (cached across processes the way PyTensor's own LAPACK dispatch
  does), passing the strides of ``a`` as the BLAS leading dimension so that C-ordered,
  F-ordered and row/column-sliced inputs are used without a copy.
* JAX and PyTorch: ``alpha * a.T @ a + beta * c`` with ``jax.numpy`` / ``torch`` (plain matmul:
  all of ``c`` is used, and the result is symmetric only up to rounding). These are registered
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

__all__ = ["SymRankK", "mirror_lower_to_upper", "sym_rank_k"]

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


@functools.cache
def _numba_xsyrk(dtype: str):
    """An njit function calling ``scipy.linalg.cython_blas.{s,d}syrk`` (Fortran argument list).

    Like PyTensor's ``_LAPACK`` helpers, the function pointer is fetched in object mode on the
    first call and kept in a module global by ``_call_cached_ptr``, so the compiled code holds no
    process-specific address and can be cached on disk by numba. (``_call_cached_ptr`` is a
    private PyTensor helper, present in PyTensor 3.0.x.)
    """
    name = _BLAS_PREFIX[dtype] + "syrk"
    float_p = types.CPointer(numba.from_dtype(np.dtype(dtype)))
    char_p = types.CPointer(types.int8)
    int_p = types.CPointer(types.int32)
    unique_name = f"autotune.scipy.blas.{name}"

    @numba_basic.numba_njit
    def get_syrk_pointer():
        with numba.objmode(ptr=types.intp):
            ptr = get_cython_function_address("scipy.linalg.cython_blas", name)
        return ptr

    syrk_type = types.FunctionType(
        types.void(
            char_p,  # UPLO
            char_p,  # TRANS
            int_p,  # N
            int_p,  # K
            float_p,  # ALPHA
            float_p,  # A
            int_p,  # LDA
            float_p,  # BETA
            float_p,  # C
            int_p,  # LDC
        )
    )

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

    cache_version = 3
    return sym_rank_k_numba, cache_version


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


def _register_jax() -> bool:
    try:
        import jax.numpy as jnp
        from pytensor.link.jax.dispatch import jax_funcify
    except ImportError:
        return False

    @jax_funcify.register(SymRankK)
    def jax_funcify_SymRankK(op, **kwargs):
        return _matmul_impl(op, jnp.matmul)

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
