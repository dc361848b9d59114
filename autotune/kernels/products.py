"""Products: the general product (GEMM/GEMV), the symmetric rank-k update (BLAS SYRK) and the
product known to be symmetric (one triangle of a GEMM). Their PyTensor ops (GeneralProduct,
SymRankK, SymProduct), with their Numba, JAX and PyTorch implementations, are in
:mod:`autotune.kernels.product_ops`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..properties import SYMMETRIC
from .registry import Example, Kernel, register_kernel

__all__: list[str] = []


def _matmul_cost(shapes: Any, shape: tuple[int, int], attrs: Mapping[str, Any]) -> float:
    (m, k), n = shapes[0], shape[1]
    extra = m * n if len(shapes) > 2 else 0  # + beta * C
    return 2.0 * m * k * n + extra


def _lower_matmul(step: Any, args: list[Any], env: Mapping[str, int], dtype: str) -> Any:
    import pytensor.tensor as pt

    from . import product_ops  # (registers the rewrite)

    if len(args) > 2 or step.attr("alpha", 1.0) != 1.0:  # a fused GEMM: alpha A B + beta C
        c = args[2] if len(args) > 2 else None
        return product_ops.general_product(args[0], args[1], c, alpha=step.attr("alpha", 1.0),
                                           beta=step.attr("beta", 0.0))
    # A Dot, so that PyTensor's own rewrites still see a product (rewrites="pytensor"); loading
    # product_ops registers the late Numba rewrite that turns it into a GeneralProduct: one BLAS
    # call with the transpose flags of each operand's layout, where PyTensor's Numba Dot copies
    # a transposed operand.
    return pt.dot(args[0], args[1])


def _ref_matmul(step: Any, x: list[Any]) -> Any:
    out = step.attr("alpha", 1.0) * (x[0] @ x[1])
    if len(x) > 2:
        out = out + step.attr("beta", 0.0) * x[2]
    return out


def _matmul_text(step: Any) -> str:
    alpha = step.attr("alpha", 1.0)
    if len(step.args) > 2:
        return f"matmul ({alpha:+g}, beta {step.attr('beta', 1.0):g})"
    return "matmul" if alpha == 1.0 else f"matmul ({alpha:+g})"


def _syrk_cost(shapes: Any, shape: tuple[int, int], attrs: Mapping[str, Any]) -> float:
    m, n = shape
    k = shapes[0][0]
    extra = m * n if len(shapes) > 1 else 0
    return float(n * n * k + extra)  # n(n+1)k ~ n^2 k: half of a GEMM


def _lower_syrk(step: Any, args: list[Any], env: Mapping[str, int], dtype: str) -> Any:
    from .product_ops import sym_rank_k

    c = args[1] if len(args) > 1 else None
    return sym_rank_k(args[0], c, alpha=step.attr("alpha", 1.0), beta=step.attr("beta", 0.0))


def _ref_syrk(step: Any, x: list[Any]) -> Any:
    out = step.attr("alpha", 1.0) * x[0].T @ x[0]
    if len(x) > 1:
        out = out + step.attr("beta", 0.0) * x[1]
    return out


def _syrk_text(step: Any) -> str:
    if len(step.args) > 1:
        return f"syrk ({step.attr('alpha', 1.0):+g}, beta {step.attr('beta', 1.0):g})"
    return "syrk"


def _symprod_cost(shapes: Any, shape: tuple[int, int], attrs: Mapping[str, Any]) -> float:
    m, n = shape
    k = shapes[0][1]
    extra = m * n if len(shapes) > 2 else 0
    return float(m * (m + 1) * k + extra)  # the lower triangle: half of a GEMM


def _lower_symprod(step: Any, args: list[Any], env: Mapping[str, int], dtype: str) -> Any:
    from .product_ops import sym_product

    c = args[2] if len(args) > 2 else None
    return sym_product(args[0], args[1], c, alpha=step.attr("alpha", 1.0),
                       beta=step.attr("beta", 0.0))


def _ref_symprod(step: Any, x: list[Any]) -> Any:
    out = step.attr("alpha", 1.0) * x[0] @ x[1]
    if len(x) > 2:
        out = out + step.attr("beta", 0.0) * x[2]
    return out


def _symprod_text(step: Any) -> str:
    if len(step.args) > 2:
        return f"symprod ({step.attr('alpha', 1.0):+g}, beta {step.attr('beta', 1.0):g})"
    return "symprod"


#: Operand property of the symmetric product: ``a @ b`` is symmetric (``b = M @ a.T``, M
#: symmetric); the test operands are built so.
SYMMETRIC_PRODUCT = "symmetric_product"

for _k in (
    Kernel("matmul", "general matrix product (GEMM/GEMV): alpha*A@B + beta*C, attrs alpha, "
           "beta (C: an optional third operand)", "alpha*A@B + beta*C", "product",
           _matmul_cost, _lower_matmul, pytensor_op="GeneralProduct",
           reference=_ref_matmul, step_text=_matmul_text,
           examples=(Example(((5, 3), (3, 7)), (5, 7), 2.0 * 5 * 3 * 7),
                     Example(((4, 9), (9, 1)), (4, 1), 2.0 * 4 * 9),
                     Example(((5, 3), (3, 7), (5, 7)), (5, 7), 2.0 * 5 * 3 * 7 + 35,
                             (("alpha", -1.0), ("beta", 1.0))),
                     Example(((5, 3), (3, 7)), (5, 7), 2.0 * 5 * 3 * 7, (("alpha", 2.0),))),
           passes_nan=None),
    Kernel("syrk", "symmetric rank-k update alpha*A.T@A + beta*C (full symmetric result)",
           "alpha*A.T@A + beta*C", "product", _syrk_cost, _lower_syrk,
           pytensor_op="SymRankK", knob="syrk", properties=((), (SYMMETRIC,)),
           reference=_ref_syrk, step_text=_syrk_text,
           examples=(Example(((7, 5),), (5, 5), 5.0 * 5 * 7),
                     Example(((3, 5), (5, 5)), (5, 5), 5.0 * 5 * 3 + 25,
                             (("alpha", -0.75), ("beta", 1.5)))), passes_nan=(0,), lower_read=(1,),
           lower_passes=(1,)),
    Kernel("symprod",
           "product known to be symmetric alpha*A@B + beta*C: one triangle, mirrored",
           "alpha*A@B + beta*C  (A@B symmetric)", "product", _symprod_cost, _lower_symprod,
           pytensor_op="SymProduct", knob="symprod",
           properties=((SYMMETRIC_PRODUCT,), (SYMMETRIC_PRODUCT,), (SYMMETRIC,)),
           reference=_ref_symprod, step_text=_symprod_text,
           examples=(Example(((5, 3), (3, 5)), (5, 5), 5.0 * 6 * 3),
                     Example(((7, 3), (3, 7), (7, 7)), (7, 7), 7.0 * 8 * 3 + 49,
                             (("alpha", 2.0), ("beta", -1.0)))),
           passes_nan=(0, 1), lower_read=(2,), lower_passes=(2,)),
):
    register_kernel(_k)
