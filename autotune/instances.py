"""Seeded random instances that honor the declared properties, and numerical property checks.

Matrices are well conditioned by construction (SPD: ``G G.T / c + I``-like spectra in [1, 5];
triangular: unit-order diagonal with small off-diagonal entries; invertible: ``3 I + G``), so
that accuracy checks measure the algorithm, not an ill-posed instance.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .properties import (
    DIAGONAL,
    FULL_RANK,
    IDENTITY,
    INVERTIBLE,
    LOWER,
    NONZERO,
    ORTHOGONAL,
    PD,
    POSITIVE,
    PSD,
    SYMMETRIC,
    UPPER,
    Facts,
)
from .spec import Problem

__all__ = ["random_matrix", "random_instance", "check_property", "instance_seed"]


def random_matrix(
    shape: tuple[int, int], props: Facts, rng: np.random.Generator, dtype: str = "float64"
) -> np.ndarray:
    """A random matrix with the given (closed) properties."""
    r, c = shape
    props = _effective(props)
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


def _effective(props: Facts) -> Facts:
    """What a combination of declared properties forces (each combination is satisfiable: the
    identity has every property): a symmetric or orthogonal triangular matrix is diagonal, and
    the only orthogonal semidefinite matrix is the identity."""
    out = set(props)
    if out & {LOWER, UPPER} and out & {SYMMETRIC, PSD, PD, ORTHOGONAL}:
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
    """Inputs by name, honoring the declared properties; reproducible for a seed."""
    values = problem.resolve_dims(dims)
    out: dict[str, np.ndarray | float] = {}
    for name, spec in problem.inputs.items():
        rng = instance_seed(seed, name)
        facts = problem.declared(name)
        if spec.is_scalar:
            out[name] = random_scalar(facts, rng)
        else:
            out[name] = random_matrix(problem.shape_of(name, values), facts, rng, dtype)
    return out


def check_property(x: np.ndarray, prop: str, rtol: float = 1e-8) -> bool:
    """Does the array numerically have the property? (used to test inference rules)"""
    x = np.asarray(x, dtype=np.float64)
    scale = max(1.0, float(np.abs(x).max()))
    tol = rtol * scale * max(x.shape)
    square = x.ndim == 2 and x.shape[0] == x.shape[1]
    if prop in (SYMMETRIC, PD, PSD, LOWER, UPPER, DIAGONAL, ORTHOGONAL, IDENTITY, INVERTIBLE):
        if not square:
            return False
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
