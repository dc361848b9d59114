"""Lowering: a :class:`~autotune.program.Program` -> a PyTensor graph.

The lowering honors the derived parenthesization (one PyTensor node per step), passes static
shapes, maps the declared properties of the inputs to ``pytensor.assumptions.assume`` so that
PyTensor's own rewrites can fire too, and emits the chosen kernels: each step is lowered by
its kernel's record in the registry (:data:`autotune.kernels.KERNELS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytensor.tensor as pt

from .errors import CompileError
from .kernels import KERNELS
from .program import Program
from .properties import DIAGONAL, LOWER, ORTHOGONAL, PD, SYMMETRIC, UPPER
from .spec import Problem

__all__ = ["lower"]

_ASSUME = {
    SYMMETRIC: "symmetric",
    PD: "positive_definite",
    LOWER: "lower_triangular",
    UPPER: "upper_triangular",
    DIAGONAL: "diagonal",
    ORTHOGONAL: "orthogonal",
}


def _assume(x: Any, facts: frozenset[str]) -> Any:
    kwargs = {name: True for prop, name in _ASSUME.items() if prop in facts}
    if not kwargs:
        return x
    try:
        from pytensor.assumptions import assume
    except ImportError:  # older PyTensor: no assumption system
        return x
    return assume(x, **kwargs)


def lower(
    problem: Problem,
    program: Program,
    dims: Mapping[str, int],
    dtype: str = "float64",
    assumptions: bool = True,
) -> tuple[list[Any], list[Any]]:
    """Build the PyTensor graph: returns (input variables in declared order, outputs in
    declared order)."""
    env = program.concrete_sizes(dims)
    values: dict[int, Any] = {}
    inputs: list[Any] = []
    for name, idx in program.inputs.items():
        spec = problem.inputs[name]
        if spec.is_scalar:
            var = pt.scalar(name, dtype=dtype)
        else:
            var = pt.tensor(name, shape=program.shape(idx, env), dtype=dtype)
        inputs.append(var)
        facts = problem.declared(name)
        values[idx] = _assume(var, facts) if assumptions and not spec.is_scalar else var
    try:
        for i in program.live_steps():
            if i in values:
                continue
            values[i] = _lower_step(program, i, values, env, dtype)
    except CompileError:
        raise
    except Exception as exc:  # a bug in lowering, reported with the step
        raise CompileError(f"lowering step %{i} ({program.steps[i].op}) failed: {exc}") from exc
    outputs = [values[program.outputs[name]] for name in problem.outputs]
    if problem.stored:
        outputs = _one_triangle_outputs(problem, program, outputs)
    return inputs, outputs


def _one_triangle_outputs(problem: Problem, program: Program, outputs: list[Any]) -> list[Any]:
    """Outputs stored as their lower triangle (``store = "lower"``): a kernel that computes
    one triangle and mirrors it (SYRK, the symmetric product) skips the mirror, when nothing
    else reads its result."""
    used = [j for i in program.live_steps() for j in program.steps[i].args]
    used += list(program.outputs.values())
    out = list(outputs)
    for k, name in enumerate(problem.outputs):
        var = out[k]
        node = var.owner
        if problem.stored.get(name) != "lower" or node is None:
            continue
        if used.count(program.outputs[name]) != 1 or not getattr(node.op, "mirror", False):
            continue
        props = node.op._props_dict() | {"mirror": False}
        out[k] = type(node.op)(**props)(*node.inputs)
    return out


def _lower_step(program: Program, i: int, v: dict[int, Any], env: Mapping[str, int], dtype: str):
    """Step ``i`` as a PyTensor variable: its kernel's lowering (the kernel registry)."""
    s = program.steps[i]
    try:
        kernel = KERNELS[s.op]
    except KeyError:
        raise CompileError(f"no lowering for op {s.op!r}") from None
    return kernel.lower(s, [v[j] for j in s.args], env, dtype)
