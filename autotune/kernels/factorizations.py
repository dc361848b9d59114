"""Factorizations and what is done with them: the Cholesky factor, the solve with it, the
general (LU, or Cholesky when ``assume_a='pos'``) solve, the explicit LU inverse and the
Cholesky-based SPD inverse. The SPD inverse's PyTensor op, with its Numba, JAX and PyTorch
implementations, is in :mod:`autotune.kernels.factorization_ops`; the others are PyTensor's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..properties import LOWER, PD, SYMMETRIC
from .registry import Example, Kernel, register_kernel

__all__ = ["solve_operands"]


def solve_operands(shapes: Any, shape: tuple[int, int], attrs: Mapping[str, Any]
                   ) -> tuple[int, int]:
    """``(a, rhs)`` of a solve-like step (operands ``(A, B)``, attr ``side``): the order of the
    square ``A`` and the number of right-hand sides (columns of the result for ``side='left'``,
    rows for ``'right'``)."""
    m, n = shape
    return shapes[0][0], (n if attrs.get("side", "left") == "left" else m)


def _linalg() -> Any:
    try:  # PyTensor >= 2.31 moved the linear algebra into pytensor.tensor.linalg
        from pytensor.tensor import linalg
    except ImportError:  # pragma: no cover - older PyTensor
        from pytensor.tensor import slinalg as linalg
    return linalg


def _cholesky_cost(shapes: Any, shape: tuple[int, int], attrs: Mapping[str, Any]) -> float:
    m = shape[0]
    return m**3 / 3.0


def _cho_solve_cost(shapes: Any, shape: tuple[int, int], attrs: Mapping[str, Any]) -> float:
    a, rhs = solve_operands(shapes, shape, attrs)
    return 2.0 * a * a * rhs


def _solve_cost(shapes: Any, shape: tuple[int, int], attrs: Mapping[str, Any]) -> float:
    a, rhs = solve_operands(shapes, shape, attrs)
    factor = a**3 / 3.0 if attrs.get("assume_a", "gen") == "pos" else 2.0 * a**3 / 3.0
    return factor + 2.0 * a * a * rhs


def _inv_cost(shapes: Any, shape: tuple[int, int], attrs: Mapping[str, Any]) -> float:
    m = shape[0]
    return 2.0 * m**3  # LU factorization + inversion (getrf + getri)


def _spd_inv_cost(shapes: Any, shape: tuple[int, int], attrs: Mapping[str, Any]) -> float:
    m = shape[0]
    return float(m**3)  # Cholesky + inversion from it (potrf n^3/3 + potri 2n^3/3)


def _lower_cholesky(step: Any, args: list[Any], env: Mapping[str, int], dtype: str) -> Any:
    # loading factorization_ops registers the late Numba rewrite to LowerCholesky where the
    # factorization may not overwrite its input (a plain copy, not a transposing one)
    from . import factorization_ops  # noqa: F401  (registers the rewrite)

    return _linalg().cholesky(args[0], lower=True)


def _lower_cho_solve(step: Any, args: list[Any], env: Mapping[str, int], dtype: str) -> Any:
    return _linalg().cho_solve((args[0], True), args[1], b_ndim=2)


def _lower_solve(step: Any, args: list[Any], env: Mapping[str, int], dtype: str) -> Any:
    from . import solve_ops  # noqa: F401  (registers the late rewrite to DenseSolve)

    return _linalg().solve(args[0], args[1], assume_a=step.attr("assume_a", "gen"), b_ndim=2)


def _lower_inv(step: Any, args: list[Any], env: Mapping[str, int], dtype: str) -> Any:
    try:
        from pytensor.tensor.linalg import matrix_inverse
    except ImportError:  # pragma: no cover - older PyTensor
        from pytensor.tensor.nlinalg import matrix_inverse
    return matrix_inverse(args[0])


def _lower_spd_inv(step: Any, args: list[Any], env: Mapping[str, int], dtype: str) -> Any:
    from .factorization_ops import spd_inverse

    return spd_inverse(args[0])


def _ref_cholesky(step: Any, x: list[Any]) -> Any:
    import numpy as np

    return np.linalg.cholesky(x[0])


def _ref_cho_solve(step: Any, x: list[Any]) -> Any:
    import scipy.linalg

    return scipy.linalg.cho_solve((x[0], True), x[1])


def _ref_solve(step: Any, x: list[Any]) -> Any:
    import numpy as np

    return np.linalg.solve(x[0], x[1])


def _ref_inv(step: Any, x: list[Any]) -> Any:
    import numpy as np

    return np.linalg.inv(x[0])


def _solve_text(step: Any) -> str:
    return f"solve ({step.attr('assume_a', 'gen')})"


for _k in (
    Kernel("cholesky", "Cholesky factor L (lower) of an SPD matrix", "L with L @ L.T = A",
           "factor", _cholesky_cost, _lower_cholesky, pytensor_op="Cholesky",
           properties=((SYMMETRIC, PD),), reference=_ref_cholesky,
           examples=(Example(((7, 7),), (7, 7), 7**3 / 3.0),), lower_read=(0,)),
    Kernel("cho_solve", "solve with a Cholesky factor: args (L, B)", "(L @ L.T)^-1 @ B",
           "solve", _cho_solve_cost, _lower_cho_solve, pytensor_op="CholeskySolve",
           properties=((LOWER,), ()), reference=_ref_cho_solve,
           examples=(Example(((5, 5), (5, 3)), (5, 3), 2.0 * 5 * 5 * 3),), passes_nan=(1,)),
    Kernel("solve", "general solve A^-1 B: attrs assume_a ('gen', 'sym', 'pos'), side",
           "A^-1 @ B", "solve", _solve_cost, _lower_solve, pytensor_op="Solve",
           properties=((), ()), reference=_ref_solve, step_text=_solve_text,
           examples=(Example(((5, 5), (5, 3)), (5, 3), 2.0 * 5**3 / 3 + 2.0 * 5 * 5 * 3,
                             (("assume_a", "gen"),)),
                     Example(((5, 5), (5, 3)), (5, 3), 5**3 / 3 + 2.0 * 5 * 5 * 3,
                             (("assume_a", "pos"),), ((SYMMETRIC, PD), ()))), passes_nan=(1,)),
    Kernel("inv", "explicit inverse", "A^-1", "factor", _inv_cost, _lower_inv,
           pytensor_op="MatrixInverse", reference=_ref_inv,
           examples=(Example(((7, 7),), (7, 7), 2.0 * 7**3),)),
    Kernel("spd_inv", "explicit inverse of an SPD matrix by Cholesky (potrf + potri), symmetric",
           "A^-1  (A SPD)", "factor", _spd_inv_cost, _lower_spd_inv, pytensor_op="SPDInverse",
           properties=((SYMMETRIC, PD),), reference=_ref_inv,
           examples=(Example(((7, 7),), (7, 7), 7.0**3),), lower_read=(0,)),
):
    register_kernel(_k)
