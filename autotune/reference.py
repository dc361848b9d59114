"""The float64 reference: straightforward NumPy/SciPy over the SymPy expression, with solves
(LU, never explicit inverses), evaluated right to left. It shares nothing with derivation and
lowering, so every candidate is checked against an independent answer.

It also estimates the conditioning of every inverted matrix (LAPACK ``gecon`` on the LU
factors): the accuracy tolerance of a problem instance scales with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg as sl
import sympy as sp
from sympy.matrices.expressions import (
    Identity,
    Inverse,
    MatAdd,
    MatMul,
    MatPow,
    MatrixSlice,
    MatrixSymbol,
    Transpose,
    ZeroMatrix,
)

from .errors import AutotuneError
from .spec import Problem

__all__ = ["Reference", "evaluate_reference", "relative_error", "tolerance"]


@dataclass
class Reference:
    outputs: dict[str, np.ndarray]
    condition: float = 1.0  # largest estimated 1-norm condition number of an inverted matrix
    conditions: dict[str, float] = field(default_factory=dict)


class _Evaluator:
    def __init__(self, values: Mapping[str, object], dims: Mapping[sp.Symbol, int]) -> None:
        self.values = values
        self.dims = dims
        self.memo: dict[sp.Basic, np.ndarray] = {}
        self.lu: dict[sp.Basic, tuple] = {}
        self.conditions: dict[str, float] = {}

    def size(self, d: sp.Basic) -> int:
        return int(d) if isinstance(d, int) else int(d.subs(self.dims))

    def scalar(self, e: sp.Basic) -> float:
        subs = {sp.Symbol(k, real=True): v for k, v in self.values.items() if np.isscalar(v)}
        return float(e.subs(subs))

    def ev(self, e: sp.Basic) -> np.ndarray:
        if e in self.memo:
            return self.memo[e]
        out = self._ev(e)
        self.memo[e] = out
        return out

    def _ev(self, e: sp.Basic) -> np.ndarray:
        if isinstance(e, MatrixSymbol):
            return np.asarray(self.values[e.name], dtype=np.float64)
        if isinstance(e, Identity):
            return np.eye(self.size(e.shape[0]))
        if isinstance(e, ZeroMatrix):
            return np.zeros((self.size(e.shape[0]), self.size(e.shape[1])))
        if isinstance(e, Transpose):
            return self.ev(e.arg).T
        if isinstance(e, Inverse):
            return self.solve(e.arg, np.eye(self.size(e.shape[0])))
        if isinstance(e, MatrixSlice):  # the whole matrix, then the part read
            (r0, r1, _), (c0, c1, _) = e.rowslice, e.colslice
            return self.ev(e.parent)[self.size(r0) : self.size(r1), self.size(c0) : self.size(c1)]
        if isinstance(e, MatAdd):
            return sum(self.ev(t) for t in e.args)
        if isinstance(e, (MatMul, MatPow)):
            from .properties import split_coeff

            coeff, mats = split_coeff(e)
            acc: np.ndarray | None = None
            for m in reversed(mats):
                if isinstance(m, Inverse):
                    rhs = acc if acc is not None else np.eye(self.size(m.shape[1]))
                    acc = self.solve(m.arg, rhs)
                else:
                    v = self.ev(m)
                    acc = v if acc is None else v @ acc
            assert acc is not None
            c = coeff if coeff.is_number else self.scalar(coeff)
            return float(c) * acc if c != 1 else acc
        if e.is_number or isinstance(e, sp.Expr):
            return np.asarray(self.scalar(e))
        raise AutotuneError(f"reference: cannot evaluate {type(e).__name__}")

    def solve(self, a: sp.Basic, rhs: np.ndarray) -> np.ndarray:
        if a not in self.lu:
            m = self.ev(a)
            lu, piv = sl.lu_factor(m, check_finite=False)
            anorm = np.abs(m).sum(axis=0).max()
            rcond, _ = sl.lapack.dgecon(lu, anorm, norm="1")
            name = _name(a, len(self.conditions) + 1)
            self.conditions[name] = float(np.inf if rcond == 0 else 1.0 / rcond)
            self.lu[a] = (lu, piv)
        return sl.lu_solve(self.lu[a], rhs, check_finite=False)


def _name(e: sp.Basic, number: int, limit: int = 200) -> str:
    """SymPy's text of ``e`` when it is small; a shared sub-expression is printed once per use,
    so a large one (nested definitions) is named by its size instead of printed in full."""
    from .formula import tree_size

    size = tree_size(e)
    if size <= limit:
        return str(e)
    return f"<inverted matrix {number}: {type(e).__name__} of {size} nodes>"


def evaluate_reference(
    problem: Problem, values: Mapping[str, object], dims: Mapping[str, int] | None = None
) -> Reference:
    """Evaluate every output in float64."""
    resolved = problem.resolve_dims(dims)
    ev = _Evaluator(values, {problem.dim_symbols[d]: v for d, v in resolved.items()})
    outputs = {name: np.array(ev.ev(problem.expressions[name])) for name in problem.outputs}
    cond = max(ev.conditions.values(), default=1.0)
    return Reference(outputs, cond, dict(ev.conditions))


def relative_error(x: np.ndarray, ref: np.ndarray, store: str = "full") -> float:
    """Relative Frobenius-norm error; inf for non-finite results. ``store="lower"``: only the
    lower triangles count (an output stored as one triangle leaves the other unspecified)."""
    x = np.asarray(x, dtype=np.float64)
    if store == "lower" and x.shape == ref.shape:
        x, ref = np.tril(x), np.tril(ref)
    if x.shape != ref.shape or not np.all(np.isfinite(x)):
        return float("inf")
    denom = np.linalg.norm(ref)
    diff = np.linalg.norm(x - ref)
    return float(diff / denom) if denom > 0 else float(diff)


def tolerance(dtype: str, condition: float, size: int) -> float:
    """Accepted relative error: unit roundoff x conditioning x a modest growth in the size
    (sqrt), with a safety factor of 100."""
    eps = float(np.finfo(dtype).eps)
    return min(0.5, 100.0 * eps * max(1.0, condition) * np.sqrt(max(1, size)))
