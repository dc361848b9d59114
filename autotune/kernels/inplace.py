"""In-place kernels: an op whose BLAS call overwrites one operand (``?trmm`` writes ``op(A) B``
over ``B``) copies that operand into a fresh output first, unless the operand is free to be
destroyed. PyTensor decides which values are free (:func:`pytensor.graph.destroyhandler.
inplace_candidates`): an intermediate result nothing else reads, or a function input compiled
as mutable -- an input the caller *donated* (``load_plan(..., donate=["B"])``). This module's
rewrite, in PyTensor's ``inplace`` phase, turns such an op into its in-place form there; a
function input the caller did not donate is protected by PyTensor and never destroyed.

An op takes part by subclassing :class:`Overwrites`: ``overwrites`` names the input whose
memory can hold the output, and ``in_place()`` returns the op's in-place form (whose
``destroy_map`` is ``{0: [overwrites]}``).
"""

from __future__ import annotations

from typing import Any

from pytensor.compile.mode import optdb
from pytensor.graph.destroyhandler import inplace_candidates
from pytensor.tensor.rewriting.elemwise import InplaceGraphOptimizer

__all__ = ["Overwrites", "InplaceKernels"]


class Overwrites:
    """Mixin of an op that can write its (single) output over input ``overwrites``."""

    overwrites: int = 0

    def in_place(self) -> Any:  # pragma: no cover - each op defines it
        raise NotImplementedError


class InplaceKernels(InplaceGraphOptimizer):
    """Every :class:`Overwrites` op whose overwritable input is free to destroy -> its
    in-place form."""

    op = Overwrites

    def filter_candidate_pairs(self, fgraph, node, protected_inputs):
        i = node.op.overwrites
        inp, out = node.inputs[i], node.outputs[0]
        if inp.type.dtype != out.type.dtype or inp.type.ndim != out.type.ndim:
            return []
        if not inplace_candidates(fgraph, [inp], protected_inputs=protected_inputs):
            return []
        return [((0, out), (i, inp))]

    def create_inplace_node(self, node, inplace_pattern):
        return node.op.in_place().make_node(*node.inputs)


optdb.register(
    "autotune_kernels_inplace",
    InplaceKernels(),
    "fast_run",
    "inplace",
    position=50.2,  # beside PyTensor's own in-place passes (Blockwise: 50.1)
)
