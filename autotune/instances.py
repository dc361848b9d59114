"""Seeded random instances that honor the declared properties, and numerical property checks.

Matrices are well conditioned by construction (SPD: ``G G.T / c + I``-like spectra in [1, 5];
triangular: unit-order diagonal with small off-diagonal entries; invertible: ``3 I + G``;
banded: zeros outside the band and a diagonal that dominates its row), so that accuracy checks
measure the algorithm, not an ill-posed instance. A semidefinite input is drawn at half rank
(singular), except where the formula inverts it or a matrix it is part of
(:attr:`autotune.spec.Problem.full_rank_inputs`): there it is drawn positive definite, as the
covariance a user inverts is. A banded semidefinite input is drawn definite (diagonally
dominant) too.

Before anything is allocated, :func:`check_fits` compares :func:`estimate_bytes` (the inputs,
the outputs and the float64 reference, from the shapes) with the memory this machine has
available, and refuses with a :class:`~autotune.errors.ResourceError` naming the sizes, the
largest array and the estimate; :func:`random_instance` calls it first.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import sympy as sp
from sympy.matrices.expressions import (
    Inverse,
    MatMul,
    MatPow,
    MatrixExpr,
    MatrixSymbol,
    Transpose,
)

from .errors import ResourceError
from .properties import (
    DIAGONAL,
    FULL_RANK,
    IDENTITY,
    INVERTIBLE,
    LOWER,
    LOWER_BIDIAGONAL,
    NONZERO,
    ORTHOGONAL,
    PD,
    POSITIVE,
    PSD,
    SYMMETRIC,
    TRIDIAGONAL,
    UPPER,
    UPPER_BIDIAGONAL,
    Band,
    Facts,
    bandwidth_of,
    close_facts,
)
from .spec import Problem

__all__ = [
    "random_matrix",
    "random_instance",
    "check_property",
    "check_bandwidth",
    "instance_seed",
    "MemoryEstimate",
    "memory_estimate",
    "estimate_bytes",
    "check_fits",
    "available_memory",
]


def random_matrix(
    shape: tuple[int, int],
    props: Facts,
    rng: np.random.Generator,
    dtype: str = "float64",
    bandwidth: Band | None = None,
) -> np.ndarray:
    """A random matrix with the given (closed) properties, zero outside ``bandwidth``
    (``(lower, upper)``) and outside the band its properties promise (tridiagonal, ...)."""
    r, c = shape
    band = _band(props, r, c, bandwidth)
    props = _effective(props, band is not None)
    if band is not None and not props & {IDENTITY, ORTHOGONAL, DIAGONAL}:
        plain = bandwidth_of({p for p in props if p in (LOWER, UPPER)}, r, c)
        if band != plain:
            return _banded(r, c, band, props, rng).astype(dtype)
    if IDENTITY in props:
        return np.eye(r, dtype=dtype)
    if ORTHOGONAL in props and DIAGONAL in props:  # the orthogonal diagonal matrices: +-1
        return np.diag(rng.choice([-1.0, 1.0], r)).astype(dtype)
    if ORTHOGONAL in props and SYMMETRIC in props:  # reflections: Q diag(+-1) Q.T
        q, rr = np.linalg.qr(rng.standard_normal((r, r)))
        return ((q * rng.choice([-1.0, 1.0], r)) @ q.T).astype(dtype)
    if DIAGONAL in props:
        mags = rng.uniform(1.0, 2.0, r)
        if PD not in props and PSD not in props:
            mags *= rng.choice([-1.0, 1.0], r)
        elif PSD in props and PD not in props and r > 1:
            mags[rng.integers(r)] = 0.0
        return np.diag(mags).astype(dtype)
    if ORTHOGONAL in props:
        q, rr = np.linalg.qr(rng.standard_normal((r, r)))
        return (q * np.sign(np.diag(rr))).astype(dtype)
    if PD in props:
        g = rng.standard_normal((r, r)) / np.sqrt(r)
        return (g @ g.T + np.eye(r)).astype(dtype)
    if PSD in props:
        g = rng.standard_normal((r, max(1, r // 2))) / np.sqrt(r)
        return (g @ g.T).astype(dtype)
    if SYMMETRIC in props:
        g = rng.standard_normal((r, r)) / np.sqrt(r)
        signs = rng.choice([-3.0, 3.0], r)
        return ((g + g.T) / 2 + np.diag(signs)).astype(dtype)
    if LOWER in props or UPPER in props:
        off = rng.standard_normal((r, r)) / r
        diag = rng.uniform(1.0, 2.0, r) * rng.choice([-1.0, 1.0], r)
        m = np.tril(off, -1) + np.diag(diag)
        return (m if LOWER in props else m.T).astype(dtype)
    if INVERTIBLE in props and r == c:
        return (3.0 * np.eye(r) + rng.standard_normal((r, r)) / np.sqrt(r)).astype(dtype)
    g = rng.standard_normal((r, c)) / np.sqrt(max(r, c))
    if FULL_RANK in props and r == c:
        g += 3.0 * np.eye(r) / np.sqrt(r)
    return g.astype(dtype)


def _band(props: Facts, r: int, c: int, declared: Band | None) -> Band | None:
    band = bandwidth_of(props, r, c)
    if declared is not None:
        lo, up = declared
        if band is not None:
            lo, up = min(lo, band[0]), min(up, band[1])
        band = bandwidth_of((), r, c) if lo >= r - 1 and up >= c - 1 else (lo, up)
    if band is not None and band[0] == 0 and band[1] == 0:
        return (0, 0)
    return band


def _banded(
    r: int, c: int, band: Band, props: Facts, rng: np.random.Generator
) -> np.ndarray:
    """Zeros outside the band, unit-order entries inside, and a diagonal that strictly
    dominates its row (so square ones are invertible and well conditioned, semidefinite
    ones definite, rectangular ones full rank)."""
    lo, up = band
    sym = bool(props & {SYMMETRIC, PSD, PD})
    if sym:
        lo = up = min(lo, up)
    m = rng.standard_normal((r, c)) / (lo + up + 1)
    m = np.triu(np.tril(m, up), -lo)
    if sym:
        m = np.triu(m) + np.triu(m, 1).T
    k = min(r, c)
    idx = np.arange(k)
    m[idx, idx] = 0.0
    rows = np.abs(m).sum(axis=1)[:k]
    if sym:
        rows = np.maximum(rows, np.abs(m).sum(axis=0)[:k])
    mags = rows + rng.uniform(1.0, 2.0, k)
    if not props & {PSD, PD}:
        mags *= rng.choice([-1.0, 1.0], k)
    m[idx, idx] = mags
    return m


def _effective(props: Facts, banded: bool = False) -> Facts:
    """What a combination of declared properties forces (each combination is satisfiable: the
    identity has every property): a symmetric or orthogonal triangular matrix is diagonal, and
    the only orthogonal semidefinite matrix is the identity; an orthogonal banded matrix is
    drawn diagonal (+-1), a symmetric bidiagonal one is diagonal."""
    out = set(props)
    if out & {LOWER, UPPER} and out & {SYMMETRIC, PSD, PD, ORTHOGONAL}:
        out.add(DIAGONAL)
    if banded and ORTHOGONAL in out:
        out.add(DIAGONAL)
    if ORTHOGONAL in out and out & {PSD, PD}:
        out.add(IDENTITY)
    return frozenset(out)


def random_scalar(props: Facts, rng: np.random.Generator) -> float:
    if POSITIVE in props:
        return float(rng.uniform(0.5, 2.0))
    v = float(rng.uniform(0.5, 2.0) * rng.choice([-1.0, 1.0]))
    return v if NONZERO in props or v != 0 else 1.0


def instance_seed(seed: int, name: str) -> np.random.Generator:
    """Each input draws from its own stream, so adding an input changes no other one."""
    import zlib

    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def random_instance(
    problem: Problem, dims: Mapping[str, int] | None = None, seed: int = 0, dtype: str = "float64"
) -> dict[str, np.ndarray | float]:
    """Inputs by name, honoring the declared properties; reproducible for a seed. Refuses
    (:class:`~autotune.errors.ResourceError`, nothing allocated) a problem whose estimated
    memory does not fit in this machine's available memory."""
    values = problem.resolve_dims(dims)
    check_fits(problem, values, dtype)
    out: dict[str, np.ndarray | float] = {}
    full_rank = problem.full_rank_inputs
    for name, spec in problem.inputs.items():
        rng = instance_seed(seed, name)
        facts = problem.declared(name)
        if spec.is_scalar:
            out[name] = random_scalar(facts, rng)
            continue
        if name in full_rank and PD not in facts:
            # inside an inverted matrix: the user's covariance is full rank, so is this one
            facts = close_facts(facts | {PD}, True)
        out[name] = random_matrix(
            problem.shape_of(name, values), facts, rng, dtype, spec.bandwidth  # type: ignore[arg-type]
        )
    return out


# -- memory ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a problem needs at given sizes, before any candidate runs."""

    inputs: int  # the random instance, in the dtype
    outputs: int  # one candidate's outputs, in the dtype
    reference: int  # the float64 reference: every intermediate it keeps, factors, temporaries
    scratch: int  # the largest temporary of making an instance (a Gram matrix and its factor)
    largest: tuple[str, tuple[int, int]]  # the largest single array: (what, shape)

    @property
    def total(self) -> int:
        return self.inputs + self.outputs + self.reference + self.scratch


def _bytes(shape: tuple[int, int], itemsize: int) -> int:
    return shape[0] * shape[1] * itemsize


@lru_cache(maxsize=64)
def _reference_nodes(problem: Problem) -> tuple[tuple[str, tuple[sp.Basic, ...]], ...]:
    """The arrays the reference evaluator keeps, as symbolic shapes: every distinct matrix
    node of the outputs (a DAG walk, linear in the distinct nodes) that is not an input or a
    transpose (a view), the LU factors and right-hand side of every inverted matrix, and the
    largest partial product of every chain."""
    from .properties import split_coeff

    out: list[tuple[str, tuple[sp.Basic, ...]]] = []
    seen: set[sp.Basic] = set()
    stack = [e for e in problem.output_exprs.values() if isinstance(e, MatrixExpr)]
    while stack:
        e = stack.pop()
        if e in seen or not isinstance(e, MatrixExpr):
            continue
        seen.add(e)
        stack.extend(a for a in e.args if isinstance(a, MatrixExpr))
        if isinstance(e, (MatrixSymbol, Transpose)):
            continue
        out.append(("node", (e.shape[0], e.shape[1])))
        if isinstance(e, Inverse):  # LU factors and the identity it solves against
            out.append(("lu", (e.shape[0], e.shape[1])))
            out.append(("eye", (e.shape[0], e.shape[1])))
        elif isinstance(e, (MatMul, MatPow)):
            _, mats = split_coeff(e)
            last = mats[-1].shape[1]
            for m in mats[1:]:  # partial products acc = m_i ... m_k: (rows(m_i), cols(m_k))
                out.append(("partial", (m.shape[0], last)))
    return tuple(out)


def memory_estimate(
    problem: Problem, dims: Mapping[str, int] | None = None, dtype: str = "float64"
) -> MemoryEstimate:
    """Estimate, from the shapes alone (nothing is allocated), the memory of tuning a problem at
    these sizes: the inputs and outputs in ``dtype`` and the float64 reference."""
    values = problem.resolve_dims(dims)
    itemsize = np.dtype(dtype).itemsize
    subs = {problem.dim_symbols[d]: v for d, v in values.items()}

    def size(d: sp.Basic) -> int:
        if isinstance(d, int):
            return d
        if isinstance(d, sp.Symbol) and d in subs:
            return subs[d]
        return int(d.subs(subs))  # a SymPy shape expression, never text

    largest: tuple[str, tuple[int, int]] = ("", (0, 0))

    def note(what: str, shape: tuple[int, int]) -> None:
        nonlocal largest
        if shape[0] * shape[1] > largest[1][0] * largest[1][1]:
            largest = (what, shape)

    inputs = 0
    as_float64 = 0  # the reference reads the inputs in float64: a copy unless they are
    scratch = 0
    for name, spec in problem.inputs.items():
        if spec.is_scalar:
            continue
        shape = problem.shape_of(name, values)
        note(f"input {name}", shape)  # type: ignore[arg-type]
        inputs += _bytes(shape, itemsize)  # type: ignore[arg-type]
        if itemsize != 8:
            as_float64 += _bytes(shape, 8)  # type: ignore[arg-type]
        # making it: a Gram matrix G G.T from G, or a QR factorization (float64)
        scratch = max(scratch, 3 * _bytes(shape, 8))  # type: ignore[arg-type]
    outputs = 0
    ref_outputs = 0
    for name in problem.outputs:
        shape = problem.shape_of(name, values)
        if not shape:
            continue
        note(f"output {name}", shape)  # type: ignore[arg-type]
        outputs += _bytes(shape, itemsize)  # type: ignore[arg-type]
        ref_outputs += _bytes(shape, 8)  # type: ignore[arg-type]
    kept = 0
    partial = 0
    for kind, sym_shape in _reference_nodes(problem):
        shape = (size(sym_shape[0]), size(sym_shape[1]))
        if kind == "partial":  # transient: only the largest one counts
            partial = max(partial, _bytes(shape, 8))
            continue
        note(f"reference {kind}", shape)
        kept += _bytes(shape, 8)
    return MemoryEstimate(
        inputs=inputs,
        outputs=outputs,
        reference=as_float64 + kept + partial + ref_outputs,
        scratch=scratch,
        largest=largest,
    )


def estimate_bytes(
    problem: Problem, dims: Mapping[str, int] | None = None, dtype: str = "float64"
) -> int:
    """Bytes a problem needs at these sizes (inputs, outputs, the float64 reference): see
    :func:`memory_estimate`."""
    return memory_estimate(problem, dims, dtype).total


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation on this machine: ``MemAvailable`` of
    ``/proc/meminfo`` (Linux), else the free physical pages (``os.sysconf``); None when
    neither can be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"  # pragma: no cover


def check_fits(
    problem: Problem,
    dims: Mapping[str, int] | None = None,
    dtype: str = "float64",
    available: int | None = None,
) -> MemoryEstimate:
    """Refuse (:class:`~autotune.errors.ResourceError`) a problem whose estimated memory at
    these sizes exceeds the memory available on this machine (``available`` bytes, by default
    :func:`available_memory`); return the estimate. Call it before anything is allocated."""
    values = problem.resolve_dims(dims)
    est = memory_estimate(problem, values, dtype)
    avail = available_memory() if available is None else available
    if avail is not None and est.total > avail:
        sizes = ", ".join(f"{d}={v}" for d, v in values.items())
        what, shape = est.largest
        raise ResourceError(
            f"{problem.origin}: problem {problem.name!r} at {sizes} needs about "
            f"{_human(est.total)} in {dtype} (inputs {_human(est.inputs)}, outputs "
            f"{_human(est.outputs)}, float64 reference {_human(est.reference)}; the largest "
            f"array, {what}, is {shape[0]}x{shape[1]}), more than the {_human(avail)} of "
            "memory available on this machine; use smaller sizes"
        )
    return est


def check_property(x: np.ndarray, prop: str, rtol: float = 1e-8) -> bool:
    """Does the array numerically have the property? (used to test inference rules)"""
    x = np.asarray(x, dtype=np.float64)
    scale = max(1.0, float(np.abs(x).max()))
    tol = rtol * scale * max(x.shape)
    square = x.ndim == 2 and x.shape[0] == x.shape[1]
    if prop in (SYMMETRIC, PD, PSD, LOWER, UPPER, DIAGONAL, ORTHOGONAL, IDENTITY, INVERTIBLE,
                TRIDIAGONAL, LOWER_BIDIAGONAL, UPPER_BIDIAGONAL):
        if not square:
            return False
    bands = {TRIDIAGONAL: (1, 1), LOWER_BIDIAGONAL: (1, 0), UPPER_BIDIAGONAL: (0, 1)}
    if prop in bands:
        return check_bandwidth(x, bands[prop], rtol)
    if prop == SYMMETRIC:
        return bool(np.abs(x - x.T).max() <= tol)
    if prop == LOWER:
        return bool(np.abs(np.triu(x, 1)).max(initial=0) <= tol)
    if prop == UPPER:
        return bool(np.abs(np.tril(x, -1)).max(initial=0) <= tol)
    if prop == DIAGONAL:
        return bool(np.abs(x - np.diag(np.diag(x))).max() <= tol)
    if prop == IDENTITY:
        return bool(np.abs(x - np.eye(len(x))).max() <= tol)
    if prop == ORTHOGONAL:
        return bool(np.abs(x.T @ x - np.eye(len(x))).max() <= tol)
    if prop in (PD, PSD):
        if np.abs(x - x.T).max() > tol:
            return False
        w = np.linalg.eigvalsh((x + x.T) / 2)
        lim = 1e-9 * max(1.0, float(np.abs(w).max()))
        return bool(w.min() > lim) if prop == PD else bool(w.min() >= -lim)
    if prop in (INVERTIBLE, FULL_RANK):
        s = np.linalg.svd(x, compute_uv=False)
        return bool(s.min() > 1e-9 * s.max()) if s.size else False
    raise ValueError(f"unknown property {prop!r}")


def check_bandwidth(x: np.ndarray, band: Band, rtol: float = 1e-8) -> bool:
    """Is every entry outside the band ``(lower, upper)`` (numerically) zero?"""
    x = np.asarray(x, dtype=np.float64)
    lo, up = band
    tol = rtol * max(1.0, float(np.abs(x).max(initial=0))) * max(x.shape)
    outside = np.tril(x, -lo - 1) + np.triu(x, up + 1)
    return bool(np.abs(outside).max(initial=0) <= tol)
