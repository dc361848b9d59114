"""Triangular and diagonal kernels: the triangular solve (PyTensor's ``SolveTriangular``, which
the Numba backend runs as BLAS TRSM: :class:`~autotune.kernels.triangular_ops.TriangularSolve`),
the triangular matrix product (BLAS TRMM, the project's
:class:`~autotune.kernels.triangular_ops.TriangularMatMul`) and the solve with a diagonal
matrix (a row or column scaling)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..properties import DIAGONAL, LOWER, PD, UPPER
from .factorizations import solve_operands
from .registry import TRIANGULAR, Example, Kernel, Operand, StructuredUse, register_kernel

__all__: list[str] = []


def _trsolve_cost(shapes: Any, shape: tuple[int, int], attrs: Mapping[str, Any]) -> float:
    a, rhs = solve_operands(shapes, shape, attrs)
    return float(a * a * rhs)


def _lower_trsolve(step: Any, args: list[Any], env: Mapping[str, int], dtype: str) -> Any:
    try:
        from pytensor.tensor.linalg import solve_triangular
    except ImportError:  # pragma: no cover - older PyTensor
        from pytensor.tensor.slinalg import solve_triangular
    # Loading triangular_ops registers the late Numba rewrite to TriangularSolve (one ?trsm,
    # no transposing copy of b); PyTensor's own rewrites still see a SolveTriangular.
    from . import triangular_ops  # noqa: F401  (registers the rewrite)

    return solve_triangular(args[0], args[1], lower=bool(step.attr("lower", True)),
                            trans=1 if step.attr("trans") else 0, b_ndim=2)


def _ref_trsolve(step: Any, x: list[Any]) -> Any:
    import scipy.linalg

    return scipy.linalg.solve_triangular(x[0], x[1], lower=bool(step.attr("lower", True)),
                                         trans=1 if step.attr("trans") else 0)


def _trsolve_text(step: Any) -> str:
    parts = ["L" if step.attr("lower", True) else "U"]
    if step.attr("trans"):
        parts.append("T")
    return f"trsolve ({', '.join(parts)})"


def _diag_solve_cost(shapes: Any, shape: tuple[int, int], attrs: Mapping[str, Any]) -> float:
    a, rhs = solve_operands(shapes, shape, attrs)
    return float(a * rhs)


def _lower_diag_solve(step: Any, args: list[Any], env: Mapping[str, int], dtype: str) -> Any:
    import pytensor.tensor as pt

    return args[1] / pt.diagonal(args[0])[:, None]


def _ref_diag_solve(step: Any, x: list[Any]) -> Any:
    import numpy as np

    return x[1] / np.diag(x[0])[:, None]


def _diag_mul_cost(shapes: Any, shape: tuple[int, int], attrs: Mapping[str, Any]) -> float:
    m, n = shape
    return float(m * n)  # one multiplication per entry of the result


def _lower_diag_mul(step: Any, args: list[Any], env: Mapping[str, int], dtype: str) -> Any:
    import pytensor.tensor as pt

    d = pt.diagonal(args[0])
    power = float(step.attr("power", 1.0))
    if power == 0.5:
        d = pt.sqrt(d)
    elif power == -0.5:
        d = 1.0 / pt.sqrt(d)
    elif power != 1.0:
        d = d**power
    if step.attr("side", "left") == "left":
        return d[:, None] * args[1]
    return args[1] * d[None, :]


def _ref_diag_mul(step: Any, x: list[Any]) -> Any:
    import numpy as np

    d = np.diag(np.diag(x[0]) ** float(step.attr("power", 1.0)))
    return d @ x[1] if step.attr("side", "left") == "left" else x[1] @ d


def _diag_mul_text(step: Any) -> str:
    power = float(step.attr("power", 1.0))
    side = step.attr("side", "left")
    return f"diag_mul ({side})" if power == 1.0 else f"diag_mul ({side}, D^{power:g})"


def _trmm_cost(shapes: Any, shape: tuple[int, int], attrs: Mapping[str, Any]) -> float:
    a, other = solve_operands(shapes, shape, attrs)
    return float(a * a * other)  # m*m*n for an m x m triangle times m x n: half of a GEMM


def _lower_trmm(step: Any, args: list[Any], env: Mapping[str, int], dtype: str) -> Any:
    from .triangular_ops import trmm

    return trmm(args[0], args[1], lower=bool(step.attr("lower", True)),
                trans=bool(step.attr("trans", False)), side=step.attr("side", "left"),
                alpha=step.attr("alpha", 1.0))


def _ref_trmm(step: Any, x: list[Any]) -> Any:
    import numpy as np

    tri = np.tril(x[0]) if step.attr("lower", True) else np.triu(x[0])
    if step.attr("trans"):
        tri = tri.T
    out = tri @ x[1] if step.attr("side", "left") == "left" else x[1] @ tri
    return step.attr("alpha", 1.0) * out


def _diagonal_factor(f: Operand) -> Mapping[str, Any] | None:
    """A diagonal factor: a scaling."""
    return {} if DIAGONAL in f.facts else None


def _triangular_factor(f: Operand) -> Mapping[str, Any] | None:
    """A triangular factor (one triangle, not both): TRMM, transposed by its flag."""
    lower = LOWER in f.facts
    if lower == (UPPER in f.facts):
        return None
    return {"lower": lower, "trans": f.trans, "alpha": 1.0}


def _trmm_text(step: Any) -> str:
    parts = ["L" if step.attr("lower", True) else "U"]
    if step.attr("trans"):
        parts.append("T")
    if step.attr("side", "left") != "left":
        parts.append("right")
    alpha = step.attr("alpha", 1.0)
    if alpha != 1.0:
        parts.append(f"{alpha:+g}")
    return f"trmm ({', '.join(parts)})"



def _diag_mul_passes(step: Any) -> tuple[int, ...] | None:
    """A scaling reads the declared diagonal and passes a NaN there on (the declared zeros it
    does not read are the property checks'); by a negative power it divides by it (an
    infinity there becomes 0), as a solve does: only its other operand."""
    return (1,) if float(step.attr("power", 1.0)) < 0 else None

for _k in (
    Kernel("trsolve",
           "triangular solve: attrs lower, trans, side ('left': A^-1 B, 'right': B A^-1)",
           "op(A)^-1 @ B  (A triangular, op: A or A.T)", "solve", _trsolve_cost,
           _lower_trsolve, pytensor_op="TriangularSolve", properties=((TRIANGULAR,), ()),
           reference=_ref_trsolve, step_text=_trsolve_text,
           examples=(Example(((5, 5), (5, 3)), (5, 3), 5.0 * 5 * 3, (("lower", True),)),
                     Example(((5, 5), (5, 3)), (5, 3), 5.0 * 5 * 3,
                             (("lower", False), ("trans", True)))), passes_nan=(1,),
           passes_off_diagonal=(0,)),
    Kernel("trmm",
           "triangular matrix product (BLAS TRMM): attrs lower, trans, side ('left': "
           "alpha op(A) B, 'right': alpha B op(A)), alpha",
           "alpha * op(A) @ B  (A triangular, op: A or A.T)", "product", _trmm_cost,
           _lower_trmm, pytensor_op="TriangularMatMul", properties=((TRIANGULAR,), ()),
           reference=_ref_trmm, step_text=_trmm_text,
           structured=StructuredUse(20, _triangular_factor),
           examples=(Example(((5, 5), (5, 3)), (5, 3), 5.0 * 5 * 3, (("lower", True),)),
                     Example(((5, 5), (7, 5)), (7, 5), 5.0 * 5 * 7,
                             (("alpha", -1.5), ("lower", False), ("side", "right"),
                              ("trans", True)))), passes_nan=None),
    Kernel("diag_mul", "product with a diagonal matrix (a row or column scaling): attrs side "
           "('left': D @ B, 'right': B @ D), power (of D: 0.5 and -0.5 split B.T D B and "
           "B.T D^-1 B into a rank-k update)", "D^p @ B  (D diagonal)", "product",
           _diag_mul_cost, _lower_diag_mul, properties=((DIAGONAL,), ()),
           reference=_ref_diag_mul, step_text=_diag_mul_text,
           structured=StructuredUse(0, _diagonal_factor),
           examples=(Example(((5, 5), (5, 3)), (5, 3), 15.0, (("side", "left"),)),
                     Example(((5, 5), (3, 5)), (3, 5), 15.0, (("side", "right"),)),
                     Example(((5, 5), (5, 3)), (5, 3), 15.0, (("power", -0.5), ("side", "left")),
                             ((PD,), ())),
                     Example(((5, 5), (3, 5)), (3, 5), 15.0, (("power", 0.5), ("side", "right")),
                             ((PD,), ()))), passes_nan=_diag_mul_passes),
    Kernel("diag_solve", "solve with a diagonal matrix (scaling): side", "D^-1 @ B",
           "solve", _diag_solve_cost, _lower_diag_solve, properties=((DIAGONAL,), ()),
           reference=_ref_diag_solve,
           examples=(Example(((5, 5), (5, 3)), (5, 3), 5.0 * 3),), passes_nan=(1,)),
):
    register_kernel(_k)
