"""Hand-written expert versions of the shipped problems: what a numerical analyst writes
with SciPy (Cholesky, triangular solves, rank-k updates, shared factors, no inverses). The
comparison (:mod:`autotune.compare`) and the asv suite time them next to the plans.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import scipy.linalg as sl

from .evaluators import Function
from .spec import Problem

__all__ = ["EXPERTS", "expert_function"]



_CF = {"check_finite": False}


def _chol(a: np.ndarray) -> np.ndarray:
    return sl.cholesky(a, lower=True, **_CF)


def _tri(l: np.ndarray, b: np.ndarray) -> np.ndarray:
    return sl.solve_triangular(l, b, lower=True, **_CF)


def _spd_inverse(a: np.ndarray) -> np.ndarray:
    """Inverse of an SPD matrix with LAPACK potrf + potri (the lower triangle), mirrored."""
    c, info = sl.lapack.dpotrf(a, lower=1, clean=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"dpotrf failed (info={info}): not positive definite")
    inv, info = sl.lapack.dpotri(c, lower=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"dpotri failed (info={info})")
    return np.tril(inv) + np.tril(inv, -1).T


def expert_kalman(v: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """B = H Σ, S = R + B Hᵀ, L = chol(S), W = L⁻¹B: newmu = mu + Wᵀ L⁻¹(H mu − data),
    newSigma = Σ − WᵀW (``np.dot(W.T, W)`` is a symmetric rank-k update in NumPy)."""
    sigma, h, mu = v["Sigma"], v["H"], v["mu"]
    b = h @ sigma
    s = v["R"] + b @ h.T
    l = _chol(s)
    w = _tri(l, b)
    newmu = mu + w.T @ _tri(l, h @ mu - v["data"])
    newsigma = sigma - np.dot(w.T, w)
    return {"newmu": newmu, "newSigma": newsigma}


def expert_gls(v: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Whitening with the Cholesky factor of M (A = L⁻¹X, c = L⁻¹y), then the Cholesky
    factor of XᵀM⁻¹X = AᵀA: b = (AᵀA)⁻¹ Aᵀc."""
    l = _chol(v["M"])
    a = _tri(l, v["X"])
    c = _tri(l, v["y"])
    g = np.dot(a.T, a)
    return {"b": sl.cho_solve((_chol(g), True), a.T @ c, **_CF)}


def expert_tikhonov(v: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Cholesky of AᵀA + λI (the Gram matrix by a rank-k update, λ added on the
    diagonal), then two triangular solves."""
    a = v["A"]
    g = np.dot(a.T, a)
    g[np.diag_indices_from(g)] += float(v["lam"])
    return {"x": sl.cho_solve((_chol(g), True), a.T @ v["b"], **_CF)}


def expert_mmse(v: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Whitening with chol(N) (A = L⁻¹H, z = L⁻¹y), C⁻¹ and P⁻¹ by potrf + potri,
    P = AᵀA + C⁻¹: cov = P⁻¹, x = cov Aᵀz."""
    ln = _chol(v["N"])
    a = _tri(ln, v["H"])
    z = _tri(ln, v["y"])
    p = np.dot(a.T, a) + _spd_inverse(v["C"])
    cov = _spd_inverse(p)
    return {"x": cov @ (a.T @ z), "cov": cov}


def expert_enkf(v: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Y = H X (m x N), S = Y Yᵀ + R by a rank-k update, Cholesky of S, and the update as
    X + X (Yᵀ S⁻¹(D − Y)): small N x N products instead of n x n ones."""
    x = v["X"]
    y = v["H"] @ x
    s = np.dot(y, y.T) + v["R"]
    z = sl.cho_solve((_chol(s), True), v["D"] - y, **_CF)
    return {"Xa": x + x @ (y.T @ z)}


#: Problem name -> expert implementation ``f(inputs by name) -> outputs by name``.
EXPERTS: dict[str, Callable[[Mapping[str, Any]], dict[str, np.ndarray]]] = {
    "kalman": expert_kalman,
    "gls": expert_gls,
    "tikhonov": expert_tikhonov,
    "mmse": expert_mmse,
    "enkf": expert_enkf,
}


def expert_function(problem: Problem) -> Function:
    """The SciPy expert of ``problem`` as ``fn(*inputs) -> outputs`` (declared orders);
    :class:`KeyError` when there is none for this problem name."""
    try:
        expert = EXPERTS[problem.name]
    except KeyError:
        raise KeyError(f"no SciPy expert for problem {problem.name!r}; experts: "
                       f"{', '.join(EXPERTS)}") from None
    names, outs = list(problem.inputs), list(problem.outputs)

    def run(*args: Any) -> tuple[Any, ...]:
        result = expert(dict(zip(names, args, strict=True)))
        return tuple(result[o] for o in outs)

    return run
