"""Shared machinery of the project's BLAS/LAPACK-calling ops (imports numba and PyTensor).

* Calling ``scipy.linalg.cython_blas`` / ``cython_lapack`` routines from numba-compiled code
  through a function pointer (:func:`_blas_routine`, cached across processes the way PyTensor's
  own LAPACK dispatch is), with scalars passed by reference (:func:`_val_to_ptr`).
* How BLAS sees a strided matrix without a copy (:func:`_numba_gemm_operand`).
* The in-place, cache-blocked mirror of a lower triangle onto the upper one
  (:func:`mirror_lower_to_upper` for NumPy, :func:`_numba_mirror_lower_to_upper` for numba),
  and :func:`_alloc_square`, which lets NumPy allocate big outputs.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from numba.core import cgutils, types
from numba.core.extending import get_cython_function_address, intrinsic, overload
from pytensor.link.numba.cache import _call_cached_ptr
from pytensor.link.numba.dispatch import basic as numba_basic

__all__ = ["mirror_lower_to_upper"]

_FLOAT_DTYPES = ("float32", "float64")
_BLAS_PREFIX = {"float32": "s", "float64": "d"}
_INT32_MAX = 2**31 - 1
# Tile edge of the blocked mirrors: a 64x64 float64 tile is 32 KiB (one L1 data cache).
_NUMBA_MIRROR_BLOCK = 32
# The NumPy mirror pays a Python-level call per tile, so it uses bigger tiles.
_NUMPY_MIRROR_BLOCK = 256
# Numba's allocator (malloc -> fresh mmap, 4 KiB pages faulted in one by one) is much slower than
# NumPy's for big arrays (NumPy asks for transparent huge pages from 4 MiB up): at n=4000 float64
# ~75 ms against ~12 ms on the benchmark machine. Outputs at least this big are allocated by NumPy.
_NUMPY_ALLOC_MIN_BYTES = 4 * 2**20


def like_b_node(op, a, b):
    """The node of an op of two float matrices ``a``, ``b`` of one dtype whose result has
    ``b``'s type (a triangular solve, a banded product); errors name the op."""
    import pytensor.tensor as pt
    from pytensor.graph.basic import Apply

    name = type(op).__name__
    a, b = pt.as_tensor_variable(a), pt.as_tensor_variable(b)
    if a.type.ndim != 2 or b.type.ndim != 2:
        raise TypeError(f"{name}: `a` and `b` must be matrices")
    if a.type.dtype not in _FLOAT_DTYPES or b.type.dtype != a.type.dtype:
        raise TypeError(f"{name}: float32/float64 operands of one dtype, got "
                        f"{a.type.dtype}, {b.type.dtype}")
    return Apply(op, [a, b], [pt.tensor(dtype=b.type.dtype, shape=b.type.shape)])


def solve_of_matrices(node) -> bool:
    """Whether a PyTensor solve ``node`` (``Solve``, ``SolveTriangular``) has a matrix
    right-hand side and one float dtype throughout: what the late rewrites to the project's
    copy-free solves (``DenseSolve``, ``TriangularSolve``) take."""
    a, b = node.inputs
    out = node.outputs[0]
    return (node.op.b_ndim == 2 and a.type.ndim == 2 and b.type.ndim == 2
            and a.type.dtype == b.type.dtype == out.type.dtype
            and out.type.dtype in _FLOAT_DTYPES)


def replacing(out, new):
    """``[new]`` in place of ``out`` when its type is the same (its stack trace kept), else
    None: the end of a late rewrite."""
    from pytensor.graph.rewriting.basic import copy_stack_trace

    if new.type != out.type:
        return None
    copy_stack_trace(out, new)
    return [new]


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



@numba_basic.numba_njit
def _numba_mirror_lower_to_upper(x):
    """In-place ``x[j, i] = x[i, j]`` for ``i > j``, in L1-sized tiles (x is C-contiguous),
    each tile's writes along the rows of the upper triangle (contiguous), its reads down the
    columns of the lower one (1.5x faster at n = 4000 than writing down the columns)."""
    n = x.shape[0]
    bs = _NUMBA_MIRROR_BLOCK
    for j0 in range(0, n, bs):  # the rows written
        j1 = min(j0 + bs, n)
        for i0 in range(j0, n, bs):  # the rows read (below the diagonal)
            i1 = min(i0 + bs, n)
            for j in range(j0, j1):
                for i in range(max(i0, j + 1), i1):
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



@functools.cache
def _numba_xgemv(dtype: str):
    """An njit function calling ``{s,d}gemv`` (Fortran argument list), see :func:`_blas_routine`."""
    # TRANS M N ALPHA A LDA X INCX BETA Y INCY
    get_gemv_pointer, gemv_type, unique_name = _blas_routine("gemv", dtype, "ciiffififfi")

    @numba_basic.numba_njit
    def xgemv(TRANS, M, N, ALPHA, A, LDA, X, INCX, BETA, Y, INCY):
        fn = _call_cached_ptr(
            get_ptr_func=get_gemv_pointer,
            func_type_ref=gemv_type,
            unique_func_name_lit=unique_name,
        )
        fn(TRANS, M, N, ALPHA, A, LDA, X, INCX, BETA, Y, INCY)

    return xgemv


def _alloc_matrix(m, n, like):
    """An uninitialised C-ordered ``(m, n)`` array of ``like``'s dtype (numba-only, overloaded);
    big ones are allocated by NumPy, as in :func:`_alloc_square`."""
    return np.empty((m, n), dtype=like.dtype)


@overload(_alloc_matrix)
def _alloc_matrix_impl(m, n, like):
    np_dtype = np.dtype(str(like.dtype))
    out_type = types.Array(like.dtype, 2, "C")
    numpy_alloc_min = _NUMPY_ALLOC_MIN_BYTES // np_dtype.itemsize

    def impl(m, n, like):
        if m * n >= numpy_alloc_min:
            with numba.objmode(out=out_type):
                out = np.empty((m, n), dtype=np_dtype)
        else:
            out = np.empty((m, n), dtype=np_dtype)
        return out

    return impl
