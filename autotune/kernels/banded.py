"""Banded kernels: the product with a banded matrix (tridiagonal, bidiagonal, any declared
``bandwidth``), ``2 (lower + upper + 1)`` FLOPs per entry of the result instead of a GEMM's
``2 n``: the project's :class:`~autotune.kernels.banded_ops.BandMatMul`, one pass over the
result."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .registry import Example, Kernel, Operand, StructuredUse, register_kernel

__all__ = ["BANDED"]

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
                             (("lower", 2), ("side", "right"), ("upper", 0))))),
):
    register_kernel(_k)
