"""Banded kernels: the product with a banded matrix (tridiagonal, bidiagonal, any declared
``bandwidth``), ``2 (lower + upper + 1)`` FLOPs per entry of the result instead of a GEMM's
``2 n``: the project's :class:`~autotune.kernels.banded_ops.BandMatMul`, one pass over the
result; and the solve with a banded matrix given by its terms (``W + lam D.T D``, ``I + r T``),
built in band storage and factorized by LAPACK's banded Cholesky or LU
(:class:`~autotune.kernels.band_solve_ops.BandSolve`): ``O(n w^2)`` instead of ``O(n^3)``. The
latter is also the ``banded`` solver (a value of the ``solver.*`` knobs), offered first for a
matrix with a narrow band: the whole solver is this module's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..properties import DIAGONAL, PD, SYMMETRIC, split_coeff
from .registry import (
    Example,
    Kernel,
    Operand,
    Solver,
    StructuredUse,
    register_kernel,
    register_solver,
)

__all__ = ["BANDED", "band_attrs", "band_solve_cost", "band_terms", "emit_band_solve",
           "narrow_band"]

#: Operand property "banded, with the step's ``lower`` sub- and ``upper`` superdiagonals".
BANDED = "banded"


def _band_mul_cost(shapes: Any, shape: tuple[int, int], attrs: Mapping[str, Any]) -> float:
    m, n = shape
    width = int(attrs.get("lower", 0)) + int(attrs.get("upper", 0)) + 1
    return 2.0 * width * m * n


def _lower_band_mul(step: Any, args: list[Any], env: Mapping[str, int], dtype: str) -> Any:
    from .banded_ops import band_matmul

    return band_matmul(args[0], args[1], int(step.attr("lower", 0)), int(step.attr("upper", 0)),
                       step.attr("side", "left"))


def _ref_band_mul(step: Any, x: list[Any]) -> Any:
    import numpy as np

    lower, upper = int(step.attr("lower", 0)), int(step.attr("upper", 0))
    a = np.triu(np.tril(x[0], upper), -lower)  # only the band is read
    return a @ x[1] if step.attr("side", "left") == "left" else x[1] @ a


def _banded_factor(f: Operand) -> Mapping[str, Any] | None:
    """A factor with a narrow band (under half a triangle's work: ``lower + upper + 1 <
    n / 2``), as the chain reads it (a transpose swaps the band)."""
    if f.band is None or sum(f.band) + 1 >= f.n / 2:
        return None
    return {"lower": f.band[0], "upper": f.band[1]}


def _band_text(step: Any) -> str:
    return f"band_mul ({step.attr('lower', 0)}, {step.attr('upper', 0)})"


def _width(lower: int, upper: int) -> int:
    return int(lower) + int(upper) + 1


def band_solve_cost(shapes: Any, shape: tuple[int, int], attrs: Mapping[str, Any]) -> float:
    """FLOPs of a banded solve: forming the band from the terms (each product of two banded
    factors ``2 n w_a w_b``), the factorization (banded Cholesky ``n u^2``, banded LU
    ``2 n l (l + u)``) and the solve (``2 n w`` per right-hand side, ``w = 2u + 1`` for
    Cholesky, ``2l + u + 1`` with LU's fill-in)."""
    n, nrhs = shape
    lower, upper = int(attrs.get("lower", 0)), int(attrs.get("upper", 0))
    form = 0.0
    for _, _, factors in attrs.get("terms", ()):
        lo = up = None
        for _, _, fl, fu in factors:
            if lo is not None:
                form += 2.0 * n * _width(lo, up) * _width(fl, fu)
                lo, up = lo + fl, up + fu
            else:
                lo, up = fl, fu
    if attrs.get("spd", False):
        return form + n * upper * upper + 2.0 * n * (2 * upper + 1) * nrhs
    return form + 2.0 * n * lower * (lower + upper) + 2.0 * n * (2 * lower + upper + 1) * nrhs


def _lower_band_solve(step: Any, args: list[Any], env: Mapping[str, int], dtype: str) -> Any:
    from .band_solve_ops import band_solve

    return band_solve(args[:-1], args[-1], step.attr("terms"), int(step.attr("lower", 0)),
                      int(step.attr("upper", 0)), bool(step.attr("spd", False)))


def _ref_band_solve(step: Any, x: list[Any]) -> Any:
    import numpy as np

    from .band_solve_ops import dense_from_terms

    b = x[-1]
    a = dense_from_terms(step.attr("terms"), x, b.shape[0], np,
                         lambda n, like: np.eye(n), np.tril, np.triu, np.transpose)
    return np.linalg.solve(a, b)


def _band_solve_text(step: Any) -> str:
    kind = "Cholesky" if step.attr("spd", False) else "LU"
    return f"band_solve ({step.attr('lower', 0)}, {step.attr('upper', 0)}; {kind})"


_WHITTAKER = ((1.0, (), ((0, False, 0, 0),)), (1.0, (1,), ((2, True, 2, 0), (2, False, 0, 2))))
_SHIFTED = ((1.0, (), ()), (0.5, (0,), ((1, True, 1, 1),)))

for _k in (
    Kernel("band_mul",
           "product with a banded matrix: attrs lower, upper (its sub- and superdiagonals), "
           "side ('left': A @ B, 'right': B @ A)",
           "A @ B  (A banded)", "product", _band_mul_cost, _lower_band_mul,
           pytensor_op="BandMatMul", properties=((BANDED,), ()), reference=_ref_band_mul,
           step_text=_band_text,
           structured=StructuredUse(10, _banded_factor, transposed=True),
           examples=(Example(((6, 6), (6, 4)), (6, 4), 2.0 * 3 * 6 * 4,
                             (("lower", 1), ("side", "left"), ("upper", 1))),
                     Example(((6, 6), (3, 6)), (3, 6), 2.0 * 3 * 3 * 6,
                             (("lower", 2), ("side", "right"), ("upper", 0)))), passes_nan=None),
    Kernel("band_solve",
           "solve with a banded matrix given by its terms: attrs terms ((coeff, scalar args, "
           "factors (arg, trans, lower, upper)) per term), lower, upper, spd; args (operands..., "
           "B)", "(sum_t c_t F_t1 @ F_t2 ...)^-1 @ B  (banded)", "solve", band_solve_cost,
           _lower_band_solve, pytensor_op="BandSolve", properties=((BANDED,), ()),
           reference=_ref_band_solve, step_text=_band_solve_text,
           examples=(
               Example(((6, 6), (6, 3)), (6, 3),
                       2.0 * 6 * 1 * 2 + 2.0 * 6 * 4 * 3,
                       (("lower", 1), ("spd", False), ("terms", ((1.0, (), ((0, False, 1, 1),)),)),
                        ("upper", 1)), ((), ())),
               Example(((6, 6), (), (4, 6), (6, 2)), (6, 2),
                       2.0 * 6 * 3 * 3 + 6 * 2 * 2 + 2.0 * 6 * 5 * 2,
                       (("lower", 2), ("spd", True), ("terms", _WHITTAKER), ("upper", 2)),
                       ((PD,), (), (BANDED,), ())),
               Example(((), (6, 6), (6, 3)), (6, 3),
                       2.0 * 6 * 1 * 2 + 2.0 * 6 * 4 * 3,
                       (("lower", 1), ("spd", False), ("terms", _SHIFTED), ("upper", 1)),
                       ((), (), ()))), passes_nan=None),
):
    register_kernel(_k)


# -- the banded solver -------------------------------------------------------------------------


def narrow_band(band: tuple[int, int] | None, n: int) -> bool:
    """A band worth a banded solve for an ``n x n`` matrix: under a quarter of it wide."""
    return band is not None and 4 * (band[0] + band[1] + 1) <= n


def _offered(operand: Operand) -> bool:
    """Offered first for a matrix with a narrow band, except a diagonal one (its own solve is
    cheaper still)."""
    return narrow_band(operand.band, operand.n) and DIAGONAL not in operand.facts


def band_terms(b: Any, x: Any) -> list[tuple[Any, list[tuple[Any, bool]]]]:
    """``x`` as a sum of terms ``coeff * F1 * F2 ...``, each factor ``(matrix, trans)``: an
    input (``trans``: read transposed) or any other banded sub-expression (computed as it is,
    its band read); identity factors dropped (no factors: the identity). A factor without a
    known band makes ``x`` one dense factor. ``b`` is the derivation's builder."""
    import sympy as sp
    from sympy.matrices.expressions import Identity, MatAdd, MatrixSymbol, Transpose

    if isinstance(x, Transpose):
        x = x.doit()
    out = []
    for term in (x.args if isinstance(x, MatAdd) else (x,)):
        coeff, mats = split_coeff(term)
        factors: list[tuple[Any, bool]] = []
        for m in mats:
            if isinstance(m, Identity):
                continue
            if b.fb.bandwidth(m) is None:
                return [(sp.Integer(1), [(x, False)])]
            if isinstance(m, Transpose) and isinstance(m.arg, MatrixSymbol):
                factors.append((m.arg, True))
            else:
                factors.append((m, False))
        out.append((coeff, factors))
    return out


def _factor_band(b: Any, m: Any, trans: bool) -> tuple[int, int]:
    from sympy.matrices.expressions import Transpose

    band = b.fb.bandwidth(Transpose(m) if trans else m)
    if band is None:  # the band spans the matrix (a dense fallback factor)
        return b.size(m.shape[1 if trans else 0]) - 1, b.size(m.shape[0 if trans else 1]) - 1
    return band


def _band_spd(b: Any, x: Any, band: tuple[int, int]) -> bool:
    facts = b.fb.facts(x)
    return PD in facts and SYMMETRIC in facts and band[0] == band[1]


def band_attrs(b: Any, x: Any) -> dict[str, Any]:
    """The ``band_solve`` attributes of ``x`` for the cost model (operand indices are
    placeholders: only the bands count)."""
    band = b.fb.bandwidth(x)
    assert band is not None
    terms = tuple(
        (1.0, (), tuple((0, t, *_factor_band(b, m, t)) for m, t in factors))
        for _, factors in band_terms(b, x))
    return {"lower": band[0], "upper": band[1], "spd": _band_spd(b, x, band), "terms": terms}


def emit_band_solve(b: Any, x: Any, rhs: int, label: str) -> int:
    """``inv(x) * rhs`` for a narrow-banded ``x``: one ``band_solve`` step reading the bands
    of ``x``'s factors (never ``x`` formed densely when its factors are inputs)."""
    import sympy as sp

    band = b.fb.bandwidth(x)
    assert band is not None
    operands: list[int] = []

    def arg(step: int) -> int:
        if step not in operands:
            operands.append(step)
        return operands.index(step)

    terms = []
    for coeff, factors in band_terms(b, x):
        number = sp.Integer(1)
        scalars: list[int] = []
        for c in sp.Mul.make_args(coeff):
            if c.is_number:
                number *= c
            elif isinstance(c, sp.Symbol) and c in b.bound:
                scalars.append(arg(b.bound[c]))
            else:  # (k - 1), 1/lam: computed once, as a scalar step
                scalars.append(arg(b.scalar(c, x)))
        fs = tuple((arg(b.emit(m)), t, *_factor_band(b, m, t)) for m, t in factors)
        terms.append((float(number), tuple(scalars), fs))
    return b.add("band_solve", (*operands, rhs), b.shape_of(rhs), label, terms=tuple(terms),
                 lower=band[0], upper=band[1], spd=_band_spd(b, x, band))


register_solver(Solver(
    "banded", "the band built in LAPACK band storage from the matrix's terms, factorized by a "
    "banded Cholesky (SPD) or LU (?gbsv)", {"*": -1}, (("band_solve", {}),), emit_band_solve,
    when=_offered, cost_attrs=band_attrs, example='properties = ["tridiagonal"]'))
