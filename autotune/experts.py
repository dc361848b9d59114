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


# -- the application corpus (issue 13): one expert per problem file ------------------------


def _diag(a: np.ndarray) -> np.ndarray:
    """The diagonal of a matrix declared diagonal (a view, no copy)."""
    return np.diagonal(a)


def _gram(a: np.ndarray) -> np.ndarray:
    """AᵀA (``np.dot(a.T, a)`` is a symmetric rank-k update in NumPy)."""
    return np.dot(a.T, a)


def _add_diag(a: np.ndarray, d: Any) -> np.ndarray:
    a[np.diag_indices_from(a)] += d
    return a


def _cho(a: np.ndarray) -> tuple[np.ndarray, bool]:
    return sl.cho_factor(a, lower=True, **_CF)


def _cho_solve(c: tuple[np.ndarray, bool], b: np.ndarray) -> np.ndarray:
    return sl.cho_solve(c, b, **_CF)


def expert_wls(v: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """W as a scaling: Xs = W^½X, Cholesky of XsᵀXs (rank-k update), b from XᵀWy."""
    x, w = v["X"], _diag(v["W"])
    xs = x * np.sqrt(w)[:, None]
    return {"b": _cho_solve(_cho(_gram(xs)), x.T @ (w[:, None] * v["y"]))}


def expert_levenberg_marquardt(v: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """JᵀJ by a rank-k update, μD added on the diagonal, Cholesky, two triangular solves."""
    j = v["J"]
    g = _add_diag(_gram(j), float(v["mu"]) * _diag(v["D"]))
    return {"dx": -_cho_solve(_cho(g), j.T @ v["r"])}


def expert_bfgs(v: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """h = Hy (one GEMV), then two rank-1 updates of a copy of H (H symmetric, so yᵀH = hᵀ):
    H+ = H − ρ h sᵀ + s (c s − ρ h)ᵀ with ρ = 1/(yᵀs), c = ρ²yᵀh + ρ: O(n²), no n×n product."""
    h_mat, s, y = v["H"], v["s"][:, 0], v["y"][:, 0]
    h = h_mat @ y
    rho = 1.0 / float(s @ y)
    c = rho * rho * float(y @ h) + rho
    ger = sl.get_blas_funcs("ger", (h_mat,))
    out = np.array(h_mat, order="F")
    out = ger(-rho, h, s, a=out, overwrite_a=1)
    out = ger(1.0, s, c * s - rho * h, a=out, overwrite_a=1)
    return {"Hn": out}


def expert_gp_regression(v: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Rasmussen & Williams Algorithm 2.1: L = chol(K + s²I), V = L⁻¹K*ᵀ shared by both
    outputs: mean = Vᵀ L⁻¹y, cov = K** − VᵀV (rank-k update)."""
    l = _chol(_add_diag(np.array(v["K"]), float(v["s2"])))
    vv = _tri(l, v["Ks"].T)
    return {"mean": vv.T @ _tri(l, v["y"]), "cov": v["Kss"] - _gram(vv)}


def expert_rts_smoother(v: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """AP once, Pp = (AP)Aᵀ + Q, Cholesky of Pp, Gᵀ = Pp⁻¹(AP) (P symmetric), then
    xs = x + G(xs1 − Ax) and Ps = P + G(Ps1 − Pp)Gᵀ."""
    a, p = v["A"], v["P"]
    ap = a @ p
    pp = ap @ a.T + v["Q"]
    gt = _cho_solve(_cho(pp), ap)
    xs = v["x"] + gt.T @ (v["xs1"] - a @ v["x"])
    ps = p + (gt.T @ (v["Ps1"] - pp)) @ gt
    return {"xs": xs, "Ps": ps}


def expert_information_filter(v: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """R diagonal: Hs = R^-½H (a row scaling), Y + HsᵀHs (rank-k update), y + Hᵀ(z/r)."""
    h, r = v["H"], _diag(v["R"])
    hs = h / np.sqrt(r)[:, None]
    return {"Yn": v["Y"] + _gram(hs), "yn": v["yv"] + h.T @ (v["z"] / r[:, None])}


def expert_lqr_riccati(v: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """PB and PA once, S = R + BᵀPB, L = chol(S), W = L⁻¹BᵀPA: K = L⁻ᵀW and
    P+ = Aᵀ(PA) − WᵀW + Q (the gain's factor shared, the subtracted term a rank-k update)."""
    a, b, p = v["A"], v["B"], v["P"]
    pa = p @ a
    bpa = b.T @ pa
    l = _chol(v["R"] + b.T @ (p @ b))
    w = _tri(l, bpa)
    k = sl.solve_triangular(l, w, lower=True, trans="T", **_CF)
    return {"K": k, "Pn": a.T @ pa - _gram(w) + v["Q"]}


def expert_eq_qp(v: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Range-space method with L = chol(G): W = L⁻¹Aᵀ, g = L⁻¹c, the Schur complement
    S = WᵀW (rank-k update), λ = S⁻¹(Wᵀg + b), x = L⁻ᵀ(Wλ − g)."""
    l = _chol(v["G"])
    w = _tri(l, v["A"].T)
    g = _tri(l, v["c"])
    lam = _cho_solve(_cho(_gram(w)), w.T @ g + v["b"])
    x = sl.solve_triangular(l, w @ lam - g, lower=True, trans="T", **_CF)
    return {"lam": lam, "x": x}


def expert_etkf(v: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """R diagonal: Ys = R^-½Y, Pa = ((k−1)I + YsᵀYs)⁻¹ by potrf + potri (k x k), and
    wa = Pa (Yᵀ(d/r))."""
    y, r = v["Y"], _diag(v["R"])
    ys = y / np.sqrt(r)[:, None]
    pa = _spd_inverse(_add_diag(_gram(ys), float(v["km1"])))
    return {"Pa": pa, "wa": pa @ (y.T @ (v["d"] / r[:, None]))}


def expert_cca(v: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Cholesky of both covariances, X = Cxx⁻¹Cxy and Z = Cyy⁻¹Cxyᵀ by solves, M = XZ
    (the cheapest association: the n x n product happens once, at the end)."""
    cxy = v["Cxy"]
    x = _cho_solve(_cho(v["Cxx"]), cxy)
    z = _cho_solve(_cho(v["Cyy"]), cxy.T)
    return {"M": x @ z}


def expert_sygst(v: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """LAPACK's sygst (itype 1, lower): L⁻¹AL⁻ᵀ in n³ flops using the symmetry of A and of
    the result (two triangular solves would take 2n³), the lower triangle mirrored."""
    a, l = v["A"], v["L"]
    sygst = sl.get_lapack_funcs("sygst", (a, l))
    c, info = sygst(a, l, itype=1, lower=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"sygst failed (info={info})")
    return {"C": np.tril(c) + np.tril(c, -1).T}


def _tridiagonals(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sub, main, super) diagonals of a matrix declared tridiagonal."""
    return np.diagonal(t, -1), np.diagonal(t), np.diagonal(t, 1)


def expert_adi_heat(v: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The tridiagonal operator as three diagonals: U(I − rT) as three column scalings
    (O(n²)), then the SPD tridiagonal system (I + rT)V = W for all columns at once with
    LAPACK's banded Cholesky (solveh_banded): O(n²) instead of O(n³)."""
    u, r = v["U"], float(v["r"])
    sub, main, sup = _tridiagonals(v["Dxx"])
    # (UT)[:, j] = U[:, j-1] T[j-1, j] + U[:, j] T[j, j] + U[:, j+1] T[j+1, j]
    ut = u * main[None, :]
    ut[:, 1:] += u[:, :-1] * sup[None, :]
    ut[:, :-1] += u[:, 1:] * sub[None, :]
    w = u - r * ut
    ab = np.zeros((2, u.shape[0]), dtype=u.dtype)
    ab[0, 1:] = r * sup
    ab[1, :] = 1.0 + r * main
    return {"V": sl.solveh_banded(ab, w, lower=False, **_CF)}


def expert_whittaker(v: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Eilers' smoother as a banded problem: W + λDᵀD is pentadiagonal SPD; its three
    upper diagonals come from D's three diagonals in O(n), then a banded Cholesky solve
    (solveh_banded) of W y: O(n) instead of O(n³)."""
    d, w, lam = v["D"], _diag(v["W"]), float(v["lam"])
    m, n = d.shape
    # by column j: D[j, j], D[j-1, j], D[j-2, j] (zero outside the matrix)
    e0, e1, e2 = np.zeros(n), np.zeros(n), np.zeros(n)
    e0[:m], e1[1 : m + 1], e2[2 : m + 2] = np.diagonal(d), np.diagonal(d, 1), np.diagonal(d, 2)
    ab = np.zeros((3, n), dtype=d.dtype)
    ab[2] = w + lam * (e0 * e0 + e1 * e1 + e2 * e2)  # (DᵀD)[j, j]
    ab[1, 1:] = lam * (e0[:-1] * e1[1:] + e1[:-1] * e2[1:])  # (DᵀD)[j, j+1]
    ab[0, 2:] = lam * (e0[:-2] * e2[2:])  # (DᵀD)[j, j+2]
    return {"z": sl.solveh_banded(ab, w[:, None] * v["y"], lower=False, **_CF)}


#: Problem name -> expert implementation ``f(inputs by name) -> outputs by name``.
EXPERTS: dict[str, Callable[[Mapping[str, Any]], dict[str, np.ndarray]]] = {
    "kalman": expert_kalman,
    "gls": expert_gls,
    "tikhonov": expert_tikhonov,
    "mmse": expert_mmse,
    "enkf": expert_enkf,
    "wls": expert_wls,
    "levenberg_marquardt": expert_levenberg_marquardt,
    "bfgs": expert_bfgs,
    "gp_regression": expert_gp_regression,
    "rts_smoother": expert_rts_smoother,
    "information_filter": expert_information_filter,
    "lqr_riccati": expert_lqr_riccati,
    "eq_qp": expert_eq_qp,
    "etkf": expert_etkf,
    "cca": expert_cca,
    "sygst": expert_sygst,
    "adi_heat": expert_adi_heat,
    "whittaker": expert_whittaker,
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
