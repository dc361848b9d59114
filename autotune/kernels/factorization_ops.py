"""The SPD inverse: :class:`SPDInverse` (LAPACK ``xPOTRF`` then ``xPOTRI``), with its Python/C,
Numba, JAX and PyTorch implementations.

:func:`spd_inverse` builds an :class:`SPDInverse` node, the explicit inverse of a symmetric
positive definite matrix by Cholesky::

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

Backend dispatch: :meth:`SPDInverse.perform` calls ``scipy.linalg.lapack.{s,d}potrf`` and
``{s,d}potri`` on a copy of ``x`` in its own memory order (a C-ordered copy is passed as its
Fortran-ordered transpose with ``lower=0``). Numba copies the lower triangle of ``x`` (any
layout) into the C-ordered output, which LAPACK (``scipy.linalg.cython_lapack``) sees as its
Fortran-ordered transpose, and factors and inverts its upper triangle there. JAX / PyTorch: the
lower triangle of ``x`` mirrored, then Cholesky (``jnp.linalg.cholesky`` +
``jax.scipy.linalg.cho_solve`` of the identity / ``torch.linalg.cholesky_ex`` +
``torch.cholesky_inverse``), NaN where the factorization fails, and the lower triangle of the
result mirrored (exactly symmetric); registered when PyTensor imports the backend's dispatcher
(:mod:`autotune.kernels.backends`).
"""

from __future__ import annotations

import functools

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
from pytensor.tensor.linalg.decomposition.cholesky import Cholesky
from scipy.linalg import lapack as scipy_lapack

from .backends import on_backend_import
from .blas import (
    _BLAS_PREFIX,
    _FLOAT_DTYPES,
    _INT32_MAX,
    _alloc_square,
    _blas_routine,
    _numba_copy_lower,
    _numba_mirror_lower_to_upper,
    _ptr_to_val,
    _val_to_ptr,
    mirror_lower_to_upper,
)

__all__ = ["LowerCholesky", "SPDInverse", "spd_inverse"]

class SPDInverse(Op):
    """Inverse of a symmetric positive definite matrix by Cholesky (LAPACK ``potrf``, ``potri``).

    The input ``x`` is a square float32 or float64 matrix, of which only the lower triangle is
    read; the output has the same dtype and is exactly symmetric. The caller declares ``x``
    positive definite: when the factorization fails, :meth:`perform` raises
    :class:`numpy.linalg.LinAlgError` and the numba, JAX and PyTorch backends return NaN (see the
    module docstring). Use :func:`spd_inverse` to build nodes: it casts the input to float.
    """

    __props__ = ()
    #: one triangle of the inverse (``potri``), mirrored (see ``Backend.mirrors_exactly``)
    exactly_symmetric = True

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

    cache_version = 2
    return spd_inverse_numba, cache_version



def _register_jax() -> bool:
    try:
        import jax.numpy as jnp
        from pytensor.link.jax.dispatch import jax_funcify
    except ImportError:
        return False

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


on_backend_import("jax", _register_jax)
on_backend_import("pytorch", _register_pytorch)


# --------------------------------------------------------------------------------------------
# Cholesky of a matrix the graph may not overwrite (an input): one plain copy
# --------------------------------------------------------------------------------------------


class LowerCholesky(Op):
    """The lower Cholesky factor ``L`` (``L @ L.T == x``) of an SPD ``x`` of which only the lower
    triangle is read, into a new C-ordered matrix, the strict upper triangle zero; NaN where
    ``potrf`` fails (as PyTensor's numba ``Cholesky``).

    PyTensor's numba ``Cholesky`` without ``overwrite_a`` (its input is a graph input, or used
    elsewhere) copies a C-ordered ``x`` into Fortran order, a transposing copy. Here ``x`` is
    copied as it is (a memcpy for a C-ordered ``x``), and LAPACK sees the copy as its Fortran
    transpose: ``potrf`` of its upper triangle there is the factor of ``x``'s lower triangle. A
    late Numba rewrite (:func:`local_cholesky_of_input`) puts it in place of a lower
    ``Cholesky`` that does not overwrite its input.
    """

    __props__ = ()

    def make_node(self, x):
        x = pt.as_tensor_variable(x)
        if x.type.ndim != 2 or x.type.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"LowerCholesky: a float32/float64 matrix, got {x.type}")
        return Apply(self, [x], [pt.tensor(dtype=x.type.dtype, shape=x.type.shape)])

    def infer_shape(self, fgraph, node, shapes):
        return [shapes[0]]

    def perform(self, node, inputs, output_storage):
        import scipy.linalg

        (x,) = inputs
        try:
            out = scipy.linalg.cholesky(np.tril(x) + np.tril(x, -1).T, lower=True,
                                        check_finite=False)
        except np.linalg.LinAlgError:
            out = np.full_like(x, np.nan)
        output_storage[0][0] = np.ascontiguousarray(out, dtype=node.outputs[0].type.dtype)

    def pullback(self, inputs, outputs, cotangents):
        return [grad_not_implemented(self, 0, inputs[0], "LowerCholesky has no gradient")]


def _lower_cholesky_into(out):
    """``out := chol(out)`` in place (C-contiguous, lower triangle read and written, strict
    upper triangle zeroed); returns LAPACK's ``info``. Numba-only (overloaded)."""
    raise NotImplementedError("_lower_cholesky_into is only callable from numba-compiled code")


@overload(_lower_cholesky_into)
def _lower_cholesky_into_impl(out):
    dtype = str(out.dtype)
    if dtype not in _FLOAT_DTYPES:
        raise numba.TypingError(f"_lower_cholesky_into: unsupported dtype {out.dtype}")
    xpotrf = _numba_xpotr("potrf", dtype)
    int32_max = _INT32_MAX

    def impl(out):
        n = out.shape[0]
        if n == 0:
            return 0
        if n > int32_max:
            raise ValueError("LowerCholesky: dimension too large for 32-bit LAPACK")
        uplo = _val_to_ptr(np.int8(ord("U")))  # the upper triangle of out.T, Fortran's view
        n_ptr = _val_to_ptr(np.int32(n))
        info = _val_to_ptr(np.int32(0))
        xpotrf(uplo, n_ptr, out.ctypes, n_ptr, info)
        for i in range(n - 1):
            out[i, i + 1 :] = 0.0  # C rows: contiguous
        return _ptr_to_val(info)

    return impl


@register_funcify_default_op_cache_key(LowerCholesky)
def numba_funcify_LowerCholesky(op, node, **kwargs):
    @numba_basic.numba_njit
    def lower_cholesky_numba(x):
        n = x.shape[0]
        if x.shape[1] != n:
            raise ValueError("LowerCholesky: `x` must be square")
        out = _alloc_square(n, x)
        _numba_copy_lower(x, out)  # any layout of x; x itself is never written
        if _lower_cholesky_into(out) != 0:
            out[:] = np.nan
        return out

    cache_version = 1
    return lower_cholesky_numba, cache_version


@node_rewriter([Cholesky])
def local_cholesky_of_input(fgraph, node):
    """A lower ``Cholesky`` that may not overwrite its input -> :class:`LowerCholesky`
    (Numba backend): a plain copy instead of a transposing one."""
    op = node.op
    (x,) = node.inputs
    if not op.lower or getattr(op, "overwrite_a", False) or x.type.ndim != 2:
        return None
    if x.type.dtype not in _FLOAT_DTYPES or node.outputs[0].type.dtype != x.type.dtype:
        return None
    new = LowerCholesky()(x)
    if new.type != node.outputs[0].type:
        return None
    copy_stack_trace(node.outputs[0], new)
    return [new]


# After the in-place pass (blockwise_inplace, 50.1) decided which Cholesky may overwrite its
# input, and after the Blockwise wrapper is gone (60): Numba backend only.
optdb.register(
    "autotune_cholesky_of_input",
    in2out(local_cholesky_of_input, name="autotune_cholesky_of_input"),
    "numba",
    position=62,
)
