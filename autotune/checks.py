"""The checks of a tuned function's call, at (nearly) no cost: one pass, no temporaries.

:class:`autotune.api.TunedFunction` no longer scans every input before a call. A NaN or an
infinity that the computation reads reaches an output (IEEE arithmetic keeps it: ``nan * 0``
is NaN, ``inf * 0`` is NaN, ``inf + x`` is infinite), so the call checks its *outputs* and
only then, when one is not finite, looks for the input to blame. What this leaves to check
before the call is what an output cannot show:

* the parts of an input that the plan does not read: a symmetric input of which a
  factorization or a rank-k update reads one triangle, the zero triangle of a triangular
  input, and any input whose every element does not reach an output through operations that
  keep a NaN or an infinity (see :func:`unguarded_inputs`: a matrix that is factorized or
  inverted can turn an infinity into a finite number, ``1 / inf = 0``);
* the properties the plan relies on: symmetry (the plan reads one triangle, or reuses a
  product transposed) and the zero triangles.

The kernels below do that in one pass over the array, without temporaries. They are Numba
functions (``nogil``, cached on disk), compiled when a plan is loaded (:func:`warm`) rather
than on the first call, and split over the plan's threads when the array is big
(:data:`PARALLEL_MIN` elements).

* :func:`all_finite`: ``sum(x * 0)`` is ``0`` exactly when every ``x`` is finite (a plain
  sum of huge finite values could overflow; this one cannot);
* :func:`symmetry`: the symmetry check of :class:`~autotune.api.TunedFunction`, ``max |a -
  a.T| <= 100 eps n max(1, max |a|)`` with ``eps`` the plan's dtype's, decided in one pass
  for the common case: the largest sum of squared differences over a micro-tile of ``4 x 1``
  pairs (or an edge chunk of at most 32 pairs) bounds every difference, and ``max |a_ii|``
  bounds ``max |a|`` from below, so ``sqrt(largest sum) <= 0.5 * 100 eps n max(1, max
  |a_ii|)`` proves that the check passes (and that every element is finite). When the bound
  proves nothing (a NaN, an infinity, an asymmetric matrix, or a symmetric one whose largest
  element lies off the diagonal and whose triangles differ by more than the bound), an exact
  pass decides, NaN-aware: a pair with a NaN on one side differs. Big arrays are read tile
  by tile (:data:`TILED_MIN_BYTES`);
* :func:`triangle_is_zero`: ``sum |x|`` over the strict triangle is ``0`` exactly when every
  element there is ``0`` (a NaN makes it NaN).

Fortran-ordered arrays are checked through their (C-ordered) transpose; other strided
views are read in place (Numba's strided loops), never copied.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
from numba import njit

from .kernels.registry import KERNELS

__all__ = [
    "PARALLEL_MIN",
    "Symmetry",
    "all_finite",
    "symmetry",
    "block_pair",
    "block_pairs",
    "symmetry_block",
    "triangle_is_zero",
    "unguarded_inputs",
    "vouched_parts",
    "warm",
]

#: Sums may be reordered (vectorized), but NaN and infinity keep their meaning: no ``nnan``,
#: ``ninf`` or ``nsz``, which would let LLVM fold ``x * 0`` to ``0``.
_FASTMATH = {"reassoc", "contract"}
_MR = 4  # rows of a micro-tile of the symmetry pass (4 x 1 was the fastest of 16 shapes)
_MC = 1  # columns of a micro-tile
_CHUNK = 32  # pairs of one sum in the scalar edges of the symmetry pass
_TILE = 128  # tiles of the symmetry pass for big arrays (a multiple of _MR)
#: Arrays of at least this many bytes (twice the L2 cache of the machines these were timed
#: on: they do not stay in cache between calls) are checked tile by tile
#: (:func:`_sym_pass_tiled`).
TILED_MIN_BYTES = 4 << 20
#: Arrays of at least this many elements are checked by the plan's threads together (below
#: it, handing work to a thread costs more than it saves).
PARALLEL_MIN = 1 << 18


# -- kernels ----------------------------------------------------------------------------------


# Loops index views from 0: Numba then knows the index is not negative (no wrap-around
# test), and LLVM vectorizes the sums (4x faster than ``range(start, stop)``).


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _finite_flat(a, start, stop, zero):  # pragma: no cover - compiled
    """``sum(a[start:stop] * 0)`` for a 1-d array: 0 exactly when all are finite."""
    acc = zero
    b = a[start:stop]
    for i in range(b.shape[0]):
        acc += b[i] * zero
    return acc


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _finite_rows(a, r0, r1, zero):  # pragma: no cover - compiled
    """``sum(a[r0:r1] * 0)`` for a 2-d array of any layout."""
    acc = zero
    b = a[r0:r1]
    for i in range(b.shape[0]):
        row = b[i]
        for j in range(row.shape[0]):
            acc += row[j] * zero
    return acc


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _finite_triangle(a, lower, r0, r1, zero):  # pragma: no cover - compiled
    """``sum(x * 0)`` over the lower (``lower``) or upper triangle, diagonal included, of rows
    ``r0 .. r1`` of a square array: 0 exactly when every element there is finite."""
    acc = zero
    n = a.shape[1]
    for i in range(r0, r1):
        row = a[i, 0 : min(i + 1, n)] if lower else a[i, i:n]
        for j in range(row.shape[0]):
            acc += row[j] * zero
    return acc


@njit(cache=True, nogil=True, fastmath=_FASTMATH, inline="always")
def _diagonal_fold(a, r0, r1, dmax, dacc, zero):  # pragma: no cover - compiled
    """``(largest finite |a_ii|, sum(a_ii * 0))`` over ``i`` in ``r0 .. r1``, folded into
    ``(dmax, dacc)`` (``dacc`` is 0 exactly when every ``a_ii`` read is finite)."""
    for i in range(r0, r1):
        x = a[i, i]
        dacc += x * zero
        ax = abs(np.float64(x))
        if ax > dmax and ax < np.inf:
            dmax = ax
    return dmax, dacc


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _sym_pass(a, r0, r1, zero):  # pragma: no cover - compiled
    """Over the pairs ``(i, j < i)`` of rows ``r0 .. r1`` of a square array: ``(largest sum of
    (a_ij - a_ji)^2 over one micro-tile or edge chunk, total sum, largest finite |a_ii|,
    sum(a_ii * 0))``.

    Every squared difference is at most the largest sum; the total is finite exactly when
    every pair is (an infinity or a NaN on either side makes the difference so)."""
    tmax = zero
    total = zero
    i0 = r0
    while i0 + _MR <= r1:
        nc = i0 - i0 % _MC
        for j0 in range(0, nc, _MC):
            t = zero
            for r in range(_MR):
                for c in range(_MC):
                    d = a[i0 + r, j0 + c] - a[j0 + c, i0 + r]
                    t += d * d
            total += t
            if t > tmax:
                tmax = t
        for r in range(_MR):  # the columns left of the micro-tiles and the band's triangle
            i = i0 + r
            t = zero
            for j in range(nc, i):
                d = a[i, j] - a[j, i]
                t += d * d
            total += t
            if t > tmax:
                tmax = t
        i0 += _MR
    for i in range(i0, r1):  # rows left over
        for j0 in range(0, i, _CHUNK):
            t = zero
            for j in range(j0, min(j0 + _CHUNK, i)):
                d = a[i, j] - a[j, i]
                t += d * d
            total += t
            if t > tmax:
                tmax = t
    dmax, dacc = _diagonal_fold(a, r0, r1, 0.0, zero, zero)  # the diagonal of rows r0 .. r1
    return tmax, total, dmax, dacc


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _sym_pass_tiled(a, r0, r1, zero):  # pragma: no cover - compiled
    """:func:`_sym_pass` tile by tile (``_TILE`` x ``_TILE`` blocks of pairs), for arrays that
    do not stay in cache between calls. Each tile first touches one element per cache line of
    its two blocks, row by row: independent loads that the processor overlaps, where the
    pairs' own reads (one block column-wise) would wait for memory a line at a time. From
    memory 15-40% faster than :func:`_sym_pass` at n = 1000-4000 (float64), from cache
    slower (hence :data:`TILED_MIN_BYTES`)."""
    tmax = zero
    total = zero
    touched = zero
    for bi in range(r0, r1, _TILE):
        ie = min(bi + _TILE, r1)
        for bj in range(0, bi, _TILE):
            je = min(bj + _TILE, bi)
            for j in range(bj, je):  # the block a[bj:je, bi:ie], row by row
                seg = a[j, bi:ie]
                for c in range(0, seg.shape[0], 8):
                    touched += seg[c]
            for i in range(bi, ie):  # and a[bi:ie, bj:je]
                seg = a[i, bj:je]
                for c in range(0, seg.shape[0], 8):
                    touched += seg[c]
            i0 = bi
            while i0 + _MR <= ie:
                for j in range(bj, je):
                    t = zero
                    for r in range(_MR):
                        d = a[i0 + r, j] - a[j, i0 + r]
                        t += d * d
                    total += t
                    if t > tmax:
                        tmax = t
                i0 += _MR
            for i in range(i0, ie):  # rows left over, in chunks
                for j0 in range(bj, je, _CHUNK):
                    t = zero
                    for j in range(j0, min(j0 + _CHUNK, je)):
                        d = a[i, j] - a[j, i]
                        t += d * d
                    total += t
                    if t > tmax:
                        tmax = t
        for i in range(bi, ie):  # the tile on the diagonal, in chunks
            for j0 in range(bi, i, _CHUNK):
                t = zero
                for j in range(j0, min(j0 + _CHUNK, i)):
                    d = a[i, j] - a[j, i]
                    t += d * d
                total += t
                if t > tmax:
                    tmax = t
    total += touched * zero  # keeps the touches (a NaN there is in the pairs too)
    dmax, dacc = _diagonal_fold(a, r0, r1, 0.0, zero, zero)  # the diagonal of rows r0 .. r1
    return tmax, total, dmax, dacc


@njit(cache=True, nogil=True)
def _diagonal_range_max(a, r0, r1, maxabs, nonfinite):  # pragma: no cover - compiled
    """:func:`_diagonal_max` over ``a_ii``, ``i`` in ``r0 .. r1``, folded into ``(maxabs,
    nonfinite)``."""
    for i in range(r0, r1):
        x = np.float64(a[i, i])
        if math.isfinite(x):
            if abs(x) > maxabs:
                maxabs = abs(x)
        else:
            nonfinite = True
    return maxabs, nonfinite


@njit(cache=True, nogil=True, inline="always")
def _diagonal_max(a):  # pragma: no cover - compiled
    """``(max finite |a_ii|, any a_ii not finite)``."""
    return _diagonal_range_max(a, 0, a.shape[0], 0.0, False)


@njit(cache=True, nogil=True, inline="always")
def _pair(x, y, maxdiff, maxabs, onesided):  # pragma: no cover - compiled
    """One pair ``(a_ij, a_ji)`` of the exact passes: ``(maxdiff, maxabs, not finite,
    onesided)`` updated. A pair with a non-finite side agrees only when both sides are equal
    (``inf, inf``) or both NaN."""
    fx = math.isfinite(x)
    fy = math.isfinite(y)
    if fx and abs(x) > maxabs:
        maxabs = abs(x)
    if fy and abs(y) > maxabs:
        maxabs = abs(y)
    if fx and fy:
        d = abs(x - y)
        if not (d <= maxdiff):
            maxdiff = d
        return maxdiff, maxabs, False, onesided
    if not (x == y or (x != x and y != y)):
        onesided = True
    return maxdiff, maxabs, True, onesided


@njit(cache=True, nogil=True)
def _sym_exact(a, stop_at_nonfinite):  # pragma: no cover - compiled
    """The exact symmetry pass: ``(max |a_ij - a_ji| over finite pairs, max |a_ij| over finite
    elements, any element not finite, some pair differs through a NaN or an infinity)``
    (:func:`_pair`). With ``stop_at_nonfinite`` it returns at the first non-finite element."""
    n = a.shape[0]
    maxdiff = 0.0
    onesided = False
    maxabs, nonfinite = _diagonal_max(a)
    if nonfinite and stop_at_nonfinite:
        return maxdiff, maxabs, nonfinite, onesided
    tile = 64
    for bi in range(0, n, tile):
        for bj in range(0, bi + 1, tile):
            for i in range(bi, min(bi + tile, n)):
                for j in range(bj, min(bj + tile, i)):
                    maxdiff, maxabs, bad, onesided = _pair(
                        np.float64(a[i, j]), np.float64(a[j, i]), maxdiff, maxabs, onesided)
                    if bad:
                        nonfinite = True
                        if stop_at_nonfinite:
                            return maxdiff, maxabs, nonfinite, onesided
    return maxdiff, maxabs, nonfinite, onesided


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _strict_triangle_abs(a, upper, r0, r1, zero):  # pragma: no cover - compiled
    """``sum |a_ij|`` over the strict upper (``j > i``) or lower (``j < i``) triangle, rows
    ``r0 .. r1``: 0 exactly when every element there is 0."""
    acc = zero
    n = a.shape[1]
    for i in range(r0, r1):
        seg = a[i, i + 1 : n] if upper else a[i, 0 : min(i, n)]
        for j in range(seg.shape[0]):
            acc += abs(seg[j])
    return acc


@njit(cache=True, nogil=True)
def _outside_band_abs(a, lower, upper, r0, r1, zero):  # pragma: no cover - compiled
    """``sum |a_ij|`` outside the band (``i - j > lower`` or ``j - i > upper``), rows
    ``r0 .. r1``: 0 exactly when every element there is 0 (a NaN is not)."""
    acc = zero
    n = a.shape[1]
    for i in range(r0, r1):
        left = a[i, 0 : min(max(i - lower, 0), n)]
        for j in range(left.shape[0]):
            acc += abs(left[j])
        right = a[i, min(max(i + upper + 1, 0), n) : n]
        for j in range(right.shape[0]):
            acc += abs(right[j])
    return acc


@njit(cache=True, nogil=True)
def _band_finite(a, lower, upper):  # pragma: no cover - compiled
    """Whether every element inside the band ``(lower, upper)`` is finite."""
    n = a.shape[1]
    for i in range(a.shape[0]):
        for j in range(max(i - lower, 0), min(i + upper + 1, n)):
            if not np.isfinite(a[i, j]):
                return False
    return True


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _sym_block_pass(a, i0, i1, j0, j1, zero):  # pragma: no cover - compiled
    """:func:`_sym_pass` over the pairs ``(a_ij, a_ji)``, ``i`` in ``i0 .. i1``, ``j`` in ``j0
    .. j1``, ``j < i`` (``j0 <= i0``), and the diagonal elements of both ranges: ``(largest
    sum of squared differences over one micro-tile or edge chunk, total sum, largest finite
    |a_ii|, sum(a_ii * 0))``. As in :func:`_sym_pass_tiled`, one element per cache line of
    both blocks is touched first, row by row (independent loads the processor overlaps)."""
    tmax = zero
    total = zero
    touched = zero
    for i in range(i0, i1):
        seg = a[i, j0:j1]
        for c in range(0, seg.shape[0], 8):
            touched += seg[c]
    for j in range(j0, j1):
        seg = a[j, i0:i1]
        for c in range(0, seg.shape[0], 8):
            touched += seg[c]
    i = i0
    while i + _MR <= i1:
        inner = min(j1, i)  # every row of the micro-tile pairs with these columns
        for j in range(j0, inner):
            t = zero
            for r in range(_MR):
                d = a[i + r, j] - a[j, i + r]
                t += d * d
            total += t
            if t > tmax:
                tmax = t
        for r in range(1, _MR):  # where the blocks meet: row i + r's columns i .. i + r
            t = zero
            for j in range(max(j0, inner), min(j1, i + r)):
                d = a[i + r, j] - a[j, i + r]
                t += d * d
            total += t
            if t > tmax:
                tmax = t
        i += _MR
    for k in range(i, i1):  # rows left over, in chunks
        end = min(j1, k)
        for c0 in range(j0, end, _CHUNK):
            t = zero
            for j in range(c0, min(c0 + _CHUNK, end)):
                d = a[k, j] - a[j, k]
                t += d * d
            total += t
            if t > tmax:
                tmax = t
    total += touched * zero  # keeps the touches (a NaN there is in the pairs too)
    dmax, dacc = _diagonal_fold(a, i0, i1, 0.0, zero, zero)
    dmax, dacc = _diagonal_fold(a, j0, j1, dmax, dacc, zero)
    return tmax, total, dmax, dacc


@njit(cache=True, nogil=True)
def _sym_block(a, i0, i1, j0, j1):  # pragma: no cover - compiled
    """:func:`_sym_exact` over the pairs ``(a_ij, a_ji)``, ``i`` in ``i0 .. i1`` and ``j`` in
    ``j0 .. j1`` (``j < i`` where the ranges meet), and the diagonal elements of both ranges
    (for ``max |a|``): ``2 (i1 - i0) (j1 - j0)`` elements in as many rows' contiguous pieces,
    whatever ``n`` (a window of whole rows and columns would touch one cache line per row of
    the matrix)."""
    maxdiff = 0.0
    onesided = False
    maxabs, nonfinite = _diagonal_range_max(a, i0, i1, 0.0, False)
    maxabs, nonfinite = _diagonal_range_max(a, j0, j1, maxabs, nonfinite)
    for i in range(i0, i1):
        for j in range(j0, min(j1, i)):
            maxdiff, maxabs, bad, onesided = _pair(
                np.float64(a[i, j]), np.float64(a[j, i]), maxdiff, maxabs, onesided)
            nonfinite = nonfinite or bad
    return maxdiff, maxabs, nonfinite, onesided


# -- threads ----------------------------------------------------------------------------------

_POOL_LOCK = threading.Lock()
_POOL: dict[str, Any] = {"executor": None, "pid": None}


def _executor() -> ThreadPoolExecutor:
    """A process-wide pool of worker threads (made again in a forked child, whose copy of the
    parent's pool has no threads)."""
    pid = os.getpid()
    ex = _POOL["executor"]
    if ex is None or _POOL["pid"] != pid:
        with _POOL_LOCK:
            if _POOL["executor"] is None or _POOL["pid"] != pid:
                workers = max(1, min(15, (os.cpu_count() or 2) - 1))
                _POOL["executor"] = ThreadPoolExecutor(workers, "autotune-checks")
                _POOL["pid"] = pid
            ex = _POOL["executor"]
    return ex


def _run(kernel: Callable[..., Any], parts: Sequence[tuple[Any, ...]]) -> list[Any]:
    """``kernel(*args)`` for every part: the first in this thread, the others in the pool."""
    if len(parts) == 1:
        return [kernel(*parts[0])]
    try:
        ex = _executor()
        futures = [ex.submit(kernel, *args) for args in parts[1:]]
    except RuntimeError:  # the interpreter is shutting down: no new threads
        return [kernel(*args) for args in parts]
    first = kernel(*parts[0])
    return [first] + [f.result() for f in futures]


def _bounds(n: int, parts: int, weight: str, align: int = 1) -> list[tuple[int, int]]:
    """Row ranges of about equal work: ``weight`` ``"flat"`` (every row alike), ``"lower"``
    (row ``i`` holds ``i`` pairs) or ``"upper"`` (``n - i``)."""
    parts = max(1, min(parts, n // max(align, 1) or 1))
    cuts = [0]
    for k in range(1, parts):
        f = k / parts
        if weight == "lower":
            x = n * math.sqrt(f)
        elif weight == "upper":
            x = n * (1.0 - math.sqrt(1.0 - f))
        else:
            x = n * f
        c = int(round(x / align)) * align
        if cuts[-1] < c < n:
            cuts.append(c)
    cuts.append(n)
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def _parts(size: int, threads: int) -> int:
    return threads if threads > 1 and size >= PARALLEL_MIN else 1


# -- checks -----------------------------------------------------------------------------------


def _c_view(a: np.ndarray) -> tuple[np.ndarray, bool]:
    """``(a, False)`` or, for a Fortran-ordered ``a``, ``(a.T, True)`` (C-ordered, no copy)."""
    if not a.flags.c_contiguous and a.flags.f_contiguous:
        return a.T, True
    return a, False


def all_finite(a: np.ndarray, threads: int = 1) -> bool:
    """Whether every element of ``a`` (a float32/float64 array) is finite: one pass, no
    temporary; split over ``threads`` threads when ``a`` is big."""
    if a.ndim == 0:
        return math.isfinite(float(a))
    zero = a.dtype.type(0)
    c = a.flags.c_contiguous
    if c or a.flags.f_contiguous:
        flat = a.reshape(-1) if c else a.T.reshape(-1)  # a view: the elements in memory order
        n = flat.shape[0]
        if threads == 1 or n < PARALLEL_MIN:
            return _finite_flat(flat, 0, n, zero) == 0
        parts = [(flat, s, e, zero) for s, e in _bounds(n, threads, "flat")]
        return all(acc == 0 for acc in _run(_finite_flat, parts))
    if a.ndim == 2:
        a, _ = _c_view(a)
        parts = [(a, s, e, zero) for s, e in _bounds(a.shape[0], _parts(a.size, threads), "flat")]
        return all(acc == 0 for acc in _run(_finite_rows, parts))
    return bool(np.isfinite(a).all())  # pragma: no cover - inputs and outputs are 2-d


def triangle_all_finite(a: np.ndarray, lower: bool, threads: int = 1) -> bool:
    """Whether every element of the lower (``lower``) or upper triangle of the square array
    ``a``, its diagonal included, is finite: half a pass, no temporary."""
    return _triangle_pass(_finite_triangle, a, not lower, threads, kernel_upper=False)


def _triangle_pass(kernel: Callable[..., Any], a: np.ndarray, upper: bool, threads: int,
                   rows: tuple[int, int] | None = None, kernel_upper: bool = True) -> bool:
    """``kernel(a, flag, r0, r1, zero) == 0`` over the upper (``upper``) or lower triangle of
    the square ``a``'s C-ordered view (an F-ordered array's triangles swap), split over
    ``threads`` by the triangle's work, or on ``rows`` only. ``flag`` is "upper" for a
    kernel that takes ``upper`` (``kernel_upper``), else "lower"."""
    n = a.shape[0]
    if n == 0:
        return True
    a, transposed = _c_view(a)
    if transposed:  # the upper triangle of a is the lower one of a.T
        upper = not upper
    zero = a.dtype.type(0)
    flag = upper if kernel_upper else not upper
    if rows is not None:
        r0, r1 = max(0, rows[0]), min(n, rows[1])
        return r0 >= r1 or kernel(a, flag, r0, r1, zero) == 0
    bounds = _bounds(n, _parts(a.size // 2, threads), "upper" if upper else "lower")
    return all(acc == 0 for acc in _run(kernel, [(a, flag, s, e, zero) for s, e in bounds]))


class Symmetry(NamedTuple):
    """The verdict of :func:`symmetry`."""

    finite: bool  #: every element is finite
    symmetric: bool  #: the two triangles agree within the tolerance (NaN-aware)
    exact_pass: bool  #: the exact (slower) pass decided


_SYMMETRIC = Symmetry(True, True, False)


def symmetry(a: np.ndarray, eps: float, threads: int = 1,
             stop_at_nonfinite: bool = False) -> Symmetry:
    """Whether the square array ``a`` is finite and symmetric: ``max |a - a.T| <= 100 eps n
    max(1, max |a|)`` (the rule of :class:`~autotune.api.TunedFunction` since its first
    version), with a pair that differs through a NaN (NaN against a number) counted as
    asymmetric. One pass when the bound proves the answer, else an exact pass.

    With ``stop_at_nonfinite`` the exact pass returns at the first non-finite element, and
    ``symmetric`` is then meaningless (the caller reports the non-finite value)."""
    n = a.shape[0]
    if n == 0:
        return _SYMMETRIC
    if not a.flags.c_contiguous and a.flags.f_contiguous:
        a = a.T  # C-ordered: symmetry is the same for a.T
    zero = a.dtype.type(0)
    kernel = _sym_pass_tiled if a.nbytes >= TILED_MIN_BYTES else _sym_pass
    if threads == 1 or a.size < PARALLEL_MIN:
        tmax, total, diag_max, diag_acc = kernel(a, 0, n, zero)
    else:
        tmax = total = diag_acc = zero
        diag_max = 0.0
        parts = [(a, s, e, zero) for s, e in _bounds(n, threads, "lower", _TILE)]
        for t, s, dm, da in _run(kernel, parts):
            tmax = max(tmax, t)
            total += s
            diag_max = max(diag_max, dm)
            diag_acc += da
    if math.isfinite(total) and diag_acc == 0:
        bound = 50.0 * eps * n * max(1.0, diag_max)  # half the tolerance's lower bound
        if tmax <= bound * bound:
            return _SYMMETRIC
    maxdiff, maxabs, nonfinite, onesided = _sym_exact(a, stop_at_nonfinite)
    tol = 100.0 * eps * max(1.0, maxabs) * n
    return Symmetry(not nonfinite, not onesided and maxdiff <= tol, True)


def block_pairs(n: int, size: int) -> int:
    """How many block pairs :func:`block_pair` numbers for an ``n x n`` matrix in blocks of
    ``size`` rows: a rotation over that many calls reads every pair once."""
    m = -(-n // max(1, size))
    return m * (m + 1) // 2


def block_pair(n: int, size: int, k: int) -> tuple[int, int, int, int]:
    """The ``k``-th (modulo :func:`block_pairs`) pair of blocks ``(I, J)``, ``J <= I``, of an
    ``n x n`` matrix cut in blocks of ``size`` rows, as the rows ``(i0, i1)`` of ``I`` and
    ``(j0, j1)`` of ``J``: block rows in order, each from its first block to the diagonal."""
    size = max(1, size)
    k %= block_pairs(n, size)
    bi = (math.isqrt(8 * k + 1) - 1) // 2
    bj = k - bi * (bi + 1) // 2
    return bi * size, min(n, (bi + 1) * size), bj * size, min(n, (bj + 1) * size)


def symmetry_block(a: np.ndarray, eps: float, i0: int, i1: int, j0: int, j1: int
                   ) -> Symmetry:
    """:func:`symmetry` over the pairs ``(a_ij, a_ji)`` with ``i`` in ``i0 .. i1`` and ``j``
    in ``j0 .. j1`` only (``j < i`` where the ranges meet): the rule with ``max |a|`` over the
    elements read and the diagonal elements of both ranges, so that a pair is judged against
    ``a_ii`` and ``a_jj``, what its rounding scales with in a covariance. A rotation over the
    :func:`block_pair` blocks covers the matrix over calls (:class:`autotune.api.
    TunedFunction` with a property budget); a block reads ``2 (i1 - i0) (j1 - j0)`` elements
    in contiguous pieces, at any ``n``. For an F-ordered array the pairs are read through its
    transpose (the same pairs)."""
    n = a.shape[0]
    i0, i1, j0, j1 = max(0, i0), min(n, i1), max(0, j0), min(n, j1)
    if n == 0 or i0 >= i1 or j0 >= j1:
        return _SYMMETRIC
    if not a.flags.c_contiguous and a.flags.f_contiguous:
        a = a.T
    if j0 > i0:  # the pairs are the same either way round; the kernels want j <= i
        i0, i1, j0, j1 = j0, j1, i0, i1
    tmax, total, diag_max, diag_acc = _sym_block_pass(a, i0, i1, j0, j1, a.dtype.type(0))
    if math.isfinite(total) and diag_acc == 0:  # as in symmetry: the bound may decide
        bound = 50.0 * eps * n * max(1.0, diag_max)
        if tmax <= bound * bound:
            return _SYMMETRIC
    maxdiff, maxabs, nonfinite, onesided = _sym_block(a, i0, i1, j0, j1)
    tol = 100.0 * eps * max(1.0, maxabs) * n
    return Symmetry(not nonfinite, not onesided and maxdiff <= tol, True)


def triangle_is_zero(a: np.ndarray, upper: bool, threads: int = 1,
                     rows: tuple[int, int] | None = None) -> bool:
    """Whether every element of the strict upper (``upper``) or lower triangle of the square
    array ``a`` is exactly zero (a NaN there is not). ``rows``: only the rows ``(r0, r1)``
    of the array's C-ordered view (of an F-ordered array, its columns)."""
    return _triangle_pass(_strict_triangle_abs, a, upper, threads, rows)


def band_is_zero(a: np.ndarray, band: tuple[int, int],
                 rows: tuple[int, int] | None = None) -> bool:
    """Whether every element of the matrix ``a`` outside its band ``(lower, upper)`` (sub- and
    superdiagonals) is exactly zero (a NaN there is not). ``rows``: only the rows ``(r0, r1)``
    of the array's C-ordered view (of an F-ordered array, its columns)."""
    a, transposed = _c_view(a)
    lower, upper = (band[1], band[0]) if transposed else band
    r0, r1 = (0, a.shape[0]) if rows is None else (max(0, rows[0]), min(a.shape[0], rows[1]))
    return r0 >= r1 or _outside_band_abs(a, lower, upper, r0, r1, a.dtype.type(0)) == 0


def band_all_finite(a: np.ndarray, band: tuple[int, int]) -> bool:
    """Whether every element of the matrix ``a`` inside its band ``(lower, upper)`` is finite:
    ``O(rows (lower + upper + 1))`` reads, what a banded kernel reads of it."""
    a, transposed = _c_view(a)
    lower, upper = (band[1], band[0]) if transposed else band
    return bool(_band_finite(a, lower, upper))


# -- warming ----------------------------------------------------------------------------------

_WARM_LOCK = threading.Lock()
_WARMED: set[tuple[str, str]] = set()


def warm(dtype: str | np.dtype, kinds: Iterable[str] = ("finite", "symmetric", "triangular"),
         ) -> None:
    """Compile (or load from Numba's disk cache) the kernels of ``kinds`` for ``dtype``, for
    C-ordered, strided and read-only C-ordered arrays (NumPy views of JAX arrays, read-only
    memory maps), so that no call pays a JIT compile."""
    dt = np.dtype(dtype)
    todo = [k for k in kinds if (dt.name, k) not in _WARMED]
    if not todo:
        return
    with _WARM_LOCK:
        base = np.eye(8, dtype=dt)
        strided = base[::2, ::2]  # neither C nor F: Numba's "A" layout
        frozen = base.copy()
        frozen.flags.writeable = False
        zero = dt.type(0)
        for kind in todo:
            if (dt.name, kind) in _WARMED:
                continue
            for arr in (base, strided, frozen):
                n = arr.shape[0]
                if kind == "finite":
                    all_finite(arr)
                elif kind == "symmetric":
                    _sym_pass(arr, 0, n, zero)
                    _sym_pass_tiled(arr, 0, n, zero)
                    _sym_exact(arr, False)
                    _sym_block(arr, 0, n, 0, n)
                    _sym_block_pass(arr, 0, n, 0, n, zero)
                elif kind == "triangular":
                    _strict_triangle_abs(arr, True, 0, n, zero)
                elif kind == "triangle_finite":
                    _finite_triangle(arr, True, 0, n, zero)
                    _finite_triangle(arr, False, 0, n, zero)
                elif kind == "banded":
                    _outside_band_abs(arr, 1, 1, 0, n, zero)
                    _band_finite(arr, 1, 1)
            _WARMED.add((dt.name, kind))


# -- which inputs an output cannot vouch for --------------------------------------------------
#
# What each op passes on is its kernel record's (``Kernel.passes_nan``, ``Kernel.lower_read``):
# the argument positions through which a NaN or an infinity anywhere in the argument reaches
# the result (a product row or column, a sum's element, a solve's right-hand side), and those
# of which only the lower triangle is read. A matrix that is factorized, inverted or solved
# with passes nothing (a pivot of infinity turns into 0), nor does an unknown op.


def _consumers(program: Any, live: Iterable[int]) -> dict[int, list[tuple[int, int]]]:
    """Step -> the live steps that read it, each with the argument position it is read at."""
    out: dict[int, list[tuple[int, int]]] = {}
    for i in live:
        for pos, j in enumerate(program.steps[i].args):
            out.setdefault(j, []).append((i, pos))
    return out


def triangle_scans(program: Any, names: Iterable[str], dims: Mapping[str, int]
                   ) -> dict[str, bool]:
    """Of the inputs ``names`` (those :func:`unguarded_inputs` found), the ones the program
    reads in one triangle only -- every use of the input, of its transpose, or of an
    elementwise result of it (``K + s I``), is by an op that reads only the lower triangle
    in that position (``Kernel.lower_read``), and none is an output -- mapped
    to whether that triangle is the input's lower one. Their finiteness scan reads that
    triangle (half the elements); a NaN in the other changes no output (and breaks the
    symmetry the property checks read)."""
    steps = program.steps
    live = program.live_steps()
    consumers = _consumers(program, live)
    outputs = set(program.outputs.values())
    env = program.concrete_sizes(dims)
    out: dict[str, bool] = {}
    for name in names:
        idx = program.inputs.get(name)
        if idx is None or program.shape(idx, env) in ((1, 1), ()):
            continue  # a scalar has no triangles
        sides: set[bool] = set()
        todo = [(idx, True)]
        ok = True
        while todo and ok:
            step, lower = todo.pop()
            ok = step not in outputs  # an output is read whole
            for c, pos in consumers.get(step, ()) if ok else ():
                op = steps[c].op
                if op == "transpose":
                    todo.append((c, not lower))
                elif op in KERNELS and KERNELS[op].family == "elementwise" \
                        and program.shape(c, env) == program.shape(step, env):
                    todo.append((c, lower))  # element (i, j) of the result is of (i, j)
                elif op in KERNELS and pos in KERNELS[op].lower_read:
                    sides.add(lower)
                else:
                    ok = False
                    break
        if ok and len(sides) == 1:
            out[name] = sides.pop()
    return out


def vouched_parts(program: Any, dims: Mapping[str, int], names: Iterable[str]
                  ) -> dict[str, str]:
    """Of the inputs ``names`` (those :func:`unguarded_inputs` found), the ones whose every
    element the program reads reaches an output except in a known part, mapped to that
    part: ``"none"`` (each use, of the input or its transpose, passes every element it
    reads on, a one-triangle read included: the ``c`` of a symmetric update,
    ``Kernel.lower_passes``) or ``"diagonal"`` (some use is a triangular solve's matrix,
    whose diagonal can turn an infinity into 0: ``Kernel.passes_off_diagonal``). What such
    a use leaves unread (the other triangle of a symmetric or triangular input) is the
    property checks': with them, the input needs no finiteness scan, or one of its
    diagonal."""
    live = program.live_steps()
    consumers = _consumers(program, live)
    reach = _reaches_output(program, live, consumers, set(program.outputs.values()))
    steps = program.steps
    out: dict[str, str] = {}
    for name in names:
        idx = program.inputs.get(name)
        if idx is None:
            continue
        part, todo = "none", [idx]
        while todo and part:
            for c, pos in consumers.get(todo.pop(), ()):
                step = steps[c]
                if step.op == "transpose":
                    todo.append(c)
                    continue
                kernel = KERNELS.get(step.op)
                if kernel is None or not reach.get(c, False):
                    part = ""
                    break
                passes = kernel.nan_positions(step)
                if passes is None or pos in passes or pos in kernel.lower_passes:
                    continue
                if pos in kernel.passes_off_diagonal:
                    part = "diagonal"
                    continue
                part = ""
                break
        if part:
            out[name] = part
    return out


def _propagating(step: Any) -> tuple[int, ...] | None:
    """The argument positions of ``step`` that pass a NaN or an infinity on (its kernel's
    ``nan_positions``; an unknown op passes nothing)."""
    return KERNELS[step.op].nan_positions(step) if step.op in KERNELS else ()


def _covers(rects: list[tuple[int, int, int, int]], rows: int, cols: int) -> bool:
    """Whether the rectangles ``(r0, r1, c0, c1)`` cover ``[0, rows) x [0, cols)``."""
    if rows == 0 or cols == 0:
        return True
    rs = sorted({0, rows, *(r for q in rects for r in q[:2] if 0 <= r <= rows)})
    cs = sorted({0, cols, *(c for q in rects for c in q[2:] if 0 <= c <= cols)})
    for r0, r1 in zip(rs[:-1], rs[1:], strict=True):
        for c0, c1 in zip(cs[:-1], cs[1:], strict=True):
            if not any(q[0] <= r0 and r1 <= q[1] and q[2] <= c0 and c1 <= q[3] for q in rects):
                return False
    return True


_View = tuple[str, int, int, int, int, bool]


def _input_views(program: Any, live: list[int], env: Mapping[str, int]
                 ) -> tuple[dict[int, _View], set[int]]:
    """The steps that are views of an input: step -> (input name, rows, cols, transposed) in
    the input's coordinates; and the views through a partial access (a slice marked
    ``partial``)."""
    steps = program.steps
    by_step = {idx: name for name, idx in program.inputs.items()}
    views: dict[int, _View] = {}
    partial: set[int] = set()  # views through a partial access (a slice marked ``partial``)
    for i in live:
        s = steps[i]
        if s.op == "input" and i in by_step:
            r, c = program.shape(i, env)
            views[i] = (by_step[i], 0, r, 0, c, False)
        elif s.op == "transpose" and s.args[0] in views:
            name, r0, r1, c0, c1, t = views[s.args[0]]
            views[i] = (name, r0, r1, c0, c1, not t)
            if s.args[0] in partial:
                partial.add(i)
        elif s.op == "slice" and s.args[0] in views:
            from .formula import eval_dim

            if s.attr("partial") or s.args[0] in partial:
                partial.add(i)
            name, r0, r1, c0, c1, t = views[s.args[0]]
            (a0, a1), (b0, b1) = s.attr("rows"), s.attr("cols")
            a0, a1, b0, b1 = (eval_dim(x, env) for x in (a0, a1, b0, b1))
            if t:  # the view's rows are the input's columns
                views[i] = (name, r0 + b0, r0 + b1, c0 + a0, c0 + a1, t)
            else:
                views[i] = (name, r0 + a0, r0 + a1, c0 + b0, c0 + b1, t)
    return views, partial


def _reaches_output(program: Any, live: list[int], consumers: Mapping[int, list[tuple[int, int]]],
                    outputs: set[int]) -> dict[int, bool]:
    """Step -> whether a non-finite element of it reaches an output through kernels that
    pass one on (a slice's region is counted by the views, else conservative)."""
    steps = program.steps
    reach: dict[int, bool] = {}
    for i in reversed(live):
        ok = i in outputs
        for c, pos in consumers.get(i, ()):
            if ok:
                break
            if steps[c].op == "slice":
                continue  # a region of i: counted for views below, else conservative
            allowed = _propagating(steps[c])
            last = pos - len(steps[c].args)  # the position counted from the end
            if (allowed is None or pos in allowed or last in allowed) and reach.get(c, False):
                ok = True
        reach[i] = ok
    return reach


def unguarded_inputs(program: Any, dims: Mapping[str, int]) -> set[str]:
    """Inputs of ``program`` (a :class:`~autotune.program.Program`) some element of which may
    be NaN or infinite while every output is finite: the elements the program reads that reach
    no output through kernels that pass one on (``Kernel.passes_nan``: not the part of a
    symmetric input only one triangle of which is read, nor a matrix only factorized or
    inverted), and an input
    the program does not read at all. The part of an input that a partial access leaves
    unread (``(A + B)[2, 2]`` reads one entry of each: slices marked ``partial``) changes no
    output, as the formula says: it is not checked. Blocks (unmarked slices) are parts of an
    input the formula reads whole. The call checks these inputs itself (their properties' checks
    may already do so).

    The analysis is at the level of blocks: a slice of an input is a region of it; a slice
    of a computed value passes nothing (conservative)."""
    env = program.concrete_sizes(dims)
    steps = program.steps
    live = program.live_steps()
    consumers = _consumers(program, live)
    views, partial = _input_views(program, live, env)
    outputs = set(program.outputs.values())
    reach = _reaches_output(program, live, consumers, outputs)
    regions: dict[str, list[tuple[int, int, int, int]]] = {}
    read: dict[str, list[tuple[int, int, int, int]] | None] = {}
    for i, (name, r0, r1, c0, c1, _) in views.items():
        if reach.get(i, False):
            regions.setdefault(name, []).append((r0, r1, c0, c1))
        if i in outputs or any(steps[c].op != "slice" for c, _ in consumers.get(i, ())):
            if i in partial and read.get(name, []) is not None:
                read.setdefault(name, []).append((r0, r1, c0, c1))  # type: ignore[union-attr]
            else:
                read[name] = None  # read whole (blocks of it are still all of it)
    unguarded = set()
    for name, idx in program.inputs.items():
        r, c = program.shape(idx, env)
        if r * c == 0:
            continue
        # the parts of an input the program reads (a partial access reads a part: the rest
        # changes no output, as the formula says); an input read nowhere is checked whole
        wanted = read.get(name) or [(0, r, 0, c)]  # None (whole) or unread: all of it
        if not all(_covers(_clip(regions.get(name, []), q), q[1] - q[0], q[3] - q[2])
                   for q in wanted):
            unguarded.add(name)
    return unguarded


def _clip(rects: list[tuple[int, int, int, int]], box: tuple[int, int, int, int]
          ) -> list[tuple[int, int, int, int]]:
    """``rects`` in the coordinates of ``box`` (each cut to it)."""
    r0, r1, c0, c1 = box
    out = []
    for a0, a1, b0, b1 in rects:
        q = (max(a0, r0) - r0, min(a1, r1) - r0, max(b0, c0) - c0, min(b1, c1) - c0)
        if q[0] < q[1] and q[2] < q[3]:
            out.append(q)
    return out
