"""Banded kernels: the product with a banded matrix (tridiagonal, bidiagonal, any declared
``bandwidth``), computed diagonal by diagonal: one scaled, shifted copy of the other operand
per nonzero diagonal, ``2 (lower + upper + 1)`` FLOPs per entry of the result instead of a
GEMM's ``2 n``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .registry import Example, Kernel, register_kernel

__all__ = ["BANDED"]

#: Operand property "banded, with the step's ``lower`` sub- and ``upper`` superdiagonals".
BANDED = "banded"


def _band_mul_cost(shapes: Any, shape: tuple[int, int], attrs: Mapping[str, Any]) -> float:
    m, n = shape
    width = int(attrs.get("lower", 0)) + int(attrs.get("upper", 0)) + 1
    return 2.0 * width * m * n


def band_product(a: Any, b: Any, n: int, lower: int, upper: int, zeros: Any, inc: Any,
                 diagonal: Any) -> Any:
    """``a @ b`` for an n x n ``a`` with ``lower`` sub- and ``upper`` superdiagonals: row i
    of the result is ``sum_d a[i, i + d] * b[i + d, :]`` over the band's offsets d. The array
    functions are passed in (PyTensor's for the lowering, NumPy's for the reference)."""
    out = zeros
    for d in range(-lower, upper + 1):
        if abs(d) >= n:
            continue
        v = diagonal(a, d)[:, None]  # a[i, i + d] for the rows i that have it
        if d >= 0:
            out = inc(out, slice(0, n - d), v * b[d:, :])
        else:
            out = inc(out, slice(-d, n), v * b[: n + d, :])
    return out


def _lower_band_mul(step: Any, args: list[Any], env: Mapping[str, int], dtype: str) -> Any:
    import pytensor.tensor as pt

    a, b = args
    lower, upper = int(step.attr("lower", 0)), int(step.attr("upper", 0))
    if step.attr("side", "left") == "right":  # B @ A = (A.T @ B.T).T: views, no copies
        a, b, lower, upper = a.T, b.T, upper, lower
    shape = (a.type.shape[0], b.type.shape[1])
    if shape[0] is None or shape[1] is None:
        from ..errors import CompileError

        raise CompileError("band_mul needs operands of static shape")
    zeros = pt.zeros(shape, dtype=dtype)
    out = band_product(a, b, int(shape[0]), lower, upper, zeros,
                       lambda o, rows, x: pt.inc_subtensor(o[rows], x),
                       lambda m, d: pt.diagonal(m, offset=d))
    return out.T if step.attr("side", "left") == "right" else out


def _ref_band_mul(step: Any, x: list[Any]) -> Any:
    import numpy as np

    lower, upper = int(step.attr("lower", 0)), int(step.attr("upper", 0))
    a = np.triu(np.tril(x[0], upper), -lower)  # only the band is read
    return a @ x[1] if step.attr("side", "left") == "left" else x[1] @ a


def _band_text(step: Any) -> str:
    return f"band_mul ({step.attr('lower', 0)}, {step.attr('upper', 0)})"


for _k in (
    Kernel("band_mul",
           "product with a banded matrix: attrs lower, upper (its sub- and superdiagonals), "
           "side ('left': A @ B, 'right': B @ A)",
           "A @ B  (A banded)", "product", _band_mul_cost, _lower_band_mul,
           properties=((BANDED,), ()), reference=_ref_band_mul, step_text=_band_text,
           examples=(Example(((6, 6), (6, 4)), (6, 4), 2.0 * 3 * 6 * 4,
                             (("lower", 1), ("side", "left"), ("upper", 1))),
                     Example(((6, 6), (3, 6)), (3, 6), 2.0 * 3 * 3 * 6,
                             (("lower", 2), ("side", "right"), ("upper", 0))))),
):
    register_kernel(_k)
