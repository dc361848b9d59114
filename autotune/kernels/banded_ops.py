"""The product with a banded matrix: :class:`BandMatMul`, one pass over the result, with its
Python, Numba, JAX and PyTorch implementations.

``BandMatMul(lower, upper, side)(a, b)`` is ``band(a) @ b`` (``side='left'``, ``a`` n x n,
``b`` n x m) or ``b @ band(a)`` (``'right'``, ``b`` m x n), where ``band(a)`` keeps the
``lower`` sub- and ``upper`` superdiagonals of ``a`` (the rest is never read). Numba: each
entry of the result is a short dot product over the band, ``2 (lower + upper + 1)`` FLOPs, the
rows of ``b`` and of the result read and written in order (C-ordered), any layout of ``a``.
JAX / PyTorch: the band masked out of ``a``, then their matmul.
"""

from __future__ import annotations

import numpy as np
from pytensor.gradient import grad_not_implemented
from pytensor.graph.op import Op
from pytensor.link.numba.dispatch import basic as numba_basic
from pytensor.link.numba.dispatch.basic import register_funcify_default_op_cache_key

from .backends import on_backend_import
from .blas import like_b_node

__all__ = ["BandMatMul", "band_matmul"]


class BandMatMul(Op):
    """``band(a) @ b`` (``side='left'``) or ``b @ band(a)`` (``'right'``); see the module."""

    __props__ = ("lower", "upper", "side")

    def __init__(self, lower: int, upper: int, side: str = "left"):
        if side not in ("left", "right"):
            raise ValueError(f"BandMatMul: side must be 'left' or 'right', got {side!r}")
        if lower < 0 or upper < 0:
            raise ValueError(f"BandMatMul: bandwidths must be >= 0, got {lower}, {upper}")
        self.lower, self.upper, self.side = int(lower), int(upper), side

    def make_node(self, a, b):
        return like_b_node(self, a, b)

    def infer_shape(self, fgraph, node, shapes):
        return [shapes[1]]

    def perform(self, node, inputs, output_storage):
        a, b = inputs
        band = np.triu(np.tril(a, self.upper), -self.lower)
        out = band @ b if self.side == "left" else b @ band
        output_storage[0][0] = np.ascontiguousarray(out, dtype=node.outputs[0].type.dtype)

    def pullback(self, inputs, outputs, cotangents):
        return [grad_not_implemented(self, i, x, "BandMatMul has no gradient")
                for i, x in enumerate(inputs)]


def band_matmul(a, b, lower: int, upper: int, side: str = "left"):
    """``band(a) @ b`` or ``b @ band(a)`` (a :class:`BandMatMul` node)."""
    return BandMatMul(lower, upper, side)(a, b)


@numba_basic.numba_njit
def _band_left(a, b, lower, upper):
    n, m = b.shape
    out = np.zeros((n, m), dtype=b.dtype)
    for i in range(n):
        for k in range(max(0, i - lower), min(n, i + upper + 1)):
            aik = a[i, k]
            for j in range(m):
                out[i, j] += aik * b[k, j]
    return out


@numba_basic.numba_njit
def _band_right(a, b, lower, upper):
    m, n = b.shape
    width = lower + upper + 1
    # diag[d, j] = a[j + d - upper, j]: the band's diagonals, read once (any layout of a)
    diag = np.zeros((width, n), dtype=b.dtype)
    for d in range(width):
        off = d - upper
        for j in range(max(0, -off), min(n, n - off)):
            diag[d, j] = a[j + off, j]
    out = np.zeros((m, n), dtype=b.dtype)
    for r in range(m):  # rows of b and of the result in order, contiguous inner loops
        for d in range(width):
            off = d - upper
            for j in range(max(0, -off), min(n, n - off)):
                out[r, j] += b[r, j + off] * diag[d, j]
    return out


@register_funcify_default_op_cache_key(BandMatMul)
def numba_funcify_BandMatMul(op, node, **kwargs):
    lower, upper, left = op.lower, op.upper, op.side == "left"

    @numba_basic.numba_njit
    def band_matmul_numba(a, b):
        n = a.shape[0]
        if a.shape[1] != n or (b.shape[0] if left else b.shape[1]) != n:
            raise ValueError("BandMatMul: `a` must be square and fit `b`")
        if left:
            return _band_left(a, b, lower, upper)
        return _band_right(a, b, lower, upper)

    cache_version = 2
    return band_matmul_numba, cache_version


def _impl(op: BandMatMul, tril, triu):
    lower, upper, left = op.lower, op.upper, op.side == "left"

    def band_matmul(a, b):
        band = triu(tril(a, upper), -lower)
        return band @ b if left else b @ band

    return band_matmul


def _register_jax() -> bool:
    try:
        import jax.numpy as jnp
        from pytensor.link.jax.dispatch import jax_funcify
    except ImportError:
        return False
    jax_funcify.register(BandMatMul)(lambda op, **kw: _impl(op, jnp.tril, jnp.triu))
    return True


def _register_pytorch() -> bool:
    try:
        import torch
        from pytensor.link.pytorch.dispatch import pytorch_funcify
    except ImportError:
        return False
    pytorch_funcify.register(BandMatMul)(
        lambda op, **kw: _impl(op, lambda x, k: torch.tril(x, k), lambda x, k: torch.triu(x, k)))
    return True


on_backend_import("jax", _register_jax)
on_backend_import("pytorch", _register_pytorch)
