"""Fusion: peephole rules over a derived :class:`~autotune.program.Program` that fold an
elementwise step into the BLAS call that feeds it, so the result is written once.

A rule looks at one step whose operand is a product used by nothing else, and returns the
fused step that replaces it (or None):

``scale_into_product``  ``c * (A @ B)``        -> GEMM with ``alpha = c``
``negate_product``      ``-(A @ B)``           -> GEMM with ``alpha = -1``
``add_into_product``    ``C + A @ B``          -> GEMM with ``beta = 1`` and ``C``
``sub_into_product``    ``C - A @ B``, ``A @ B - C``  -> GEMM with ``alpha``/``beta`` = -1

A rank-1 ``syrk`` (``v v.T``) feeding a sum is a GEMM too (a general ``C`` may not be
symmetric, and a rank-1 product costs the same either way). The derivation applies them to
candidates that share work (``cse = true``): the formula as written (``naive``) stays a step
per operation.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from .program import Program, Step

__all__ = ["FUSIONS", "Fusion", "fuse"]


@dataclass(frozen=True)
class Fusion:
    name: str
    doc: str
    apply: Callable[[Program, int, Counter[int]], Step | None]


FUSIONS: dict[str, Fusion] = {}


def _register(fn: Callable[[Program, int, Counter[int]], Step | None]) -> None:
    FUSIONS[fn.__name__] = Fusion(fn.__name__, (fn.__doc__ or "").strip(), fn)


def _plain_product(program: Program, i: int, uses: Counter[int]) -> tuple[int, ...] | None:
    """``(A, B)`` when step ``i`` is an unfused product ``A @ B`` read only once."""
    if uses[i] != 1 or i in program.outputs.values():
        return None
    s = program.steps[i]
    if s.op == "matmul" and len(s.args) == 2 and s.attr("alpha", 1.0) == 1.0:
        return s.args
    if (s.op == "syrk" and len(s.args) == 1 and s.attr("alpha", 1.0) == 1.0
            and program.steps[s.args[0]].op == "transpose"
            and program.steps[s.args[0]].shape[0] == "1"):
        x = s.args[0]  # v.T (1 x n): v v.T is the product v @ v.T
        return (program.steps[x].args[0], x)
    return None


def _product(step: Step, ab: tuple[int, ...], c: int | None, alpha: float,
             beta: float) -> Step:
    args = (*ab, c) if c is not None else ab
    attrs: dict[str, float] = {"alpha": alpha}
    if c is not None:
        attrs["beta"] = beta
    return Step("matmul", args, step.shape, tuple(sorted(attrs.items())), step.label)


@_register
def scale_into_product(program: Program, i: int, uses: Counter[int]) -> Step | None:
    """``c * (A @ B)`` -> one GEMM with ``alpha = c``."""
    s = program.steps[i]
    if s.op != "scale" or len(s.args) != 1:
        return None
    ab = _plain_product(program, s.args[0], uses)
    return None if ab is None else _product(s, ab, None, s.attr("coeff", 1.0), 0.0)


@_register
def negate_product(program: Program, i: int, uses: Counter[int]) -> Step | None:
    """``-(A @ B)`` -> one GEMM with ``alpha = -1``."""
    s = program.steps[i]
    if s.op != "neg":
        return None
    ab = _plain_product(program, s.args[0], uses)
    return None if ab is None else _product(s, ab, None, -1.0, 0.0)


@_register
def add_into_product(program: Program, i: int, uses: Counter[int]) -> Step | None:
    """``C + A @ B`` -> one GEMM accumulating into a copy of ``C``."""
    s = program.steps[i]
    if s.op != "add":
        return None
    x, y = s.args
    for prod, other in ((y, x), (x, y)):
        ab = _plain_product(program, prod, uses)
        if ab is not None:
            return _product(s, ab, other, 1.0, 1.0)
    return None


@_register
def sub_into_product(program: Program, i: int, uses: Counter[int]) -> Step | None:
    """``C - A @ B`` (``alpha = -1``) and ``A @ B - C`` (``beta = -1``) -> one GEMM."""
    s = program.steps[i]
    if s.op != "sub":
        return None
    x, y = s.args
    ab = _plain_product(program, y, uses)
    if ab is not None:
        return _product(s, ab, x, -1.0, 1.0)
    ab = _plain_product(program, x, uses)
    if ab is not None:
        return _product(s, ab, y, 1.0, -1.0)
    return None


def _uses(program: Program) -> Counter[int]:
    uses: Counter[int] = Counter()
    for i in program.live_steps():
        uses.update(program.steps[i].args)
    uses.update(program.outputs.values())
    return uses


def fuse(program: Program) -> Program:
    """``program`` with every fusion applied and dead steps dropped: one pass in step order
    (a fused product has ``alpha`` or ``C`` set, so no rule applies to it again). A fused step
    takes the place of the step it replaces; its operands come earlier, so the steps stay in
    order, and the product it absorbed, read by nothing else, is dropped."""
    steps = list(program.steps)
    uses = _uses(program)
    for i in program.live_steps():
        current = Program(tuple(steps), program.inputs, program.outputs, program.sizes,
                          program.meta)
        for rule in FUSIONS.values():
            new = rule.apply(current, i, uses)
            if new is not None:
                steps[i] = new
                break
    return _compact(Program(tuple(steps), program.inputs, program.outputs, program.sizes,
                            program.meta))


def _compact(program: Program) -> Program:
    """Only the steps the outputs need (and the inputs), renumbered in order."""
    live = set(program.live_steps()) | set(program.inputs.values())
    order = sorted(live)
    index = {old: new for new, old in enumerate(order)}
    steps = tuple(
        Step(s.op, tuple(index[a] for a in s.args), s.shape, s.attrs, s.label)
        for s in (program.steps[i] for i in order)
    )
    return Program(steps, {k: index[v] for k, v in program.inputs.items()},
                   {k: index[v] for k, v in program.outputs.items()}, program.sizes,
                   program.meta)
