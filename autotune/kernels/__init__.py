"""The kernels: one registry record per op a derived program may call, and the PyTensor ops
PyTensor itself lacks.

:data:`KERNELS` maps each program op name to its :class:`Kernel` record (what it computes, its
FLOP cost, its lowering, the PyTensor op a pinned compile holds, its picture label): see
:mod:`autotune.kernels.registry`. The FLOP model (:meth:`autotune.program.Program.step_flops`),
the lowering (:mod:`autotune.lower`), the pinned-compile checks (:mod:`autotune.pinned`) and the
pictures (:mod:`autotune.graph`) read it. One module per family registers its records:

* :mod:`~autotune.kernels.structural`: inputs, views, constants, blocks, elementwise ops;
* :mod:`~autotune.kernels.products`: GEMM, SYRK, the symmetric product;
* :mod:`~autotune.kernels.factorizations`: Cholesky, its solve, the general solve, the LU
  inverse, the SPD inverse;
* :mod:`~autotune.kernels.triangular`: the triangular and diagonal kernels;
* :mod:`~autotune.kernels.banded`: the product with a banded matrix, the banded solve and
  its solver;
* :mod:`~autotune.kernels.solvers`: the dense solvers (the values of the ``solver.*`` knobs:
  Cholesky split, Cholesky, LU, ...), each a :class:`~autotune.kernels.registry.Solver` record
  of how it is offered, costed and emitted.

Adding a kernel is adding a record (and, when PyTensor has no op for it, the op) to its family
module: the registry tests (tests/test_kernel_registry.py) then check it against NumPy, its FLOP
count against its examples and its pinned compile. A product kernel that exploits a structured
factor (diagonal, banded, triangular...) says which in its record (``structured``, a
:class:`~autotune.kernels.registry.StructuredUse`): the derivation offers it every square chain
factor and emits it where it matches, without naming it.

The record modules are light: importing this package loads neither numba nor PyTensor. The
project's own ops are defined in :mod:`~autotune.kernels.product_ops` (:class:`SymRankK`,
:class:`SymProduct`) and :mod:`~autotune.kernels.factorization_ops` (:class:`SPDInverse`),
loaded on first use (a lowering, or an attribute of this package such as
``autotune.kernels.sym_rank_k``). Importing them registers their Numba dispatch at once and their
JAX / PyTorch dispatch when PyTensor loads that backend (:mod:`~autotune.kernels.backends`, a
post-import hook on ``sys.meta_path``), so jax and torch are never imported unless used.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import (  # noqa: F401  (registers)
    banded,
    factorizations,
    products,
    solvers,
    structural,
    triangular,
)
from .registry import KERNELS, TRIANGULAR, Example, Kernel, get_kernel, register_kernel

# public name -> the module that defines it (imported on first access: numba, PyTensor)
_LAZY = {
    "SymRankK": "product_ops",
    "SymProduct": "product_ops",
    "sym_rank_k": "product_ops",
    "sym_product": "product_ops",
    "sym_product_blocks": "product_ops",
    "SPDInverse": "factorization_ops",
    "spd_inverse": "factorization_ops",
    "mirror_lower_to_upper": "blas",
}

__all__ = [
    "KERNELS",
    "TRIANGULAR",
    "Example",
    "Kernel",
    "get_kernel",
    "register_kernel",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
