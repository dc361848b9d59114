"""Structural and elementwise ops: inputs, views, constants, block assembly (no FLOPs), and
the elementwise sum, difference, negation and scaling (one FLOP per entry)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .registry import Example, Kernel, dim, out_shape, register_kernel

__all__: list[str] = []


_free = None  # a view, a constant or an assembly: no FLOPs


def _per_entry(shapes: Any, shape: tuple[int, int], attrs: Mapping[str, Any]) -> float:
    m, n = shape
    return float(m * n)


def _no_lowering(step: Any, args: list[Any], env: Mapping[str, int], dtype: str) -> Any:
    from ..errors import CompileError

    raise CompileError("an input is bound to a variable, never lowered")


def _lower_slice(step: Any, args: list[Any], env: Mapping[str, int], dtype: str) -> Any:
    (r0, r1), (c0, c1) = step.attr("rows"), step.attr("cols")
    return args[0][dim(r0, env) : dim(r1, env), dim(c0, env) : dim(c1, env)]


def _lower_eye(step: Any, args: list[Any], env: Mapping[str, int], dtype: str) -> Any:
    import pytensor.tensor as pt

    return pt.eye(out_shape(step, env)[0], dtype=dtype)


def _lower_zeros(step: Any, args: list[Any], env: Mapping[str, int], dtype: str) -> Any:
    import pytensor.tensor as pt

    return pt.zeros(out_shape(step, env), dtype=dtype)


def _lower_block(step: Any, args: list[Any], env: Mapping[str, int], dtype: str) -> Any:
    import pytensor.tensor as pt

    rows = []
    for row in step.attr("grid"):
        cells = [args[idx].T if tr else args[idx] for idx, tr in row]
        rows.append(cells[0] if len(cells) == 1 else pt.concatenate(cells, axis=1))
    return rows[0] if len(rows) == 1 else pt.concatenate(rows, axis=0)


def _lower_scale(step: Any, args: list[Any], env: Mapping[str, int], dtype: str) -> Any:
    import pytensor.tensor as pt

    out = args[0] * pt.constant(step.attr("coeff", 1.0), dtype=dtype)
    for scalar, power in zip(args[1:], step.attr("powers", ()), strict=True):
        out = out * scalar**power
    return out


def _ref_scale(step: Any, x: list[Any]) -> Any:
    out = x[0] * step.attr("coeff", 1.0)
    for scalar, power in zip(x[1:], step.attr("powers", ()), strict=True):
        out = out * scalar**power
    return out


def _scale_text(step: Any) -> str:
    coeff = step.attr("coeff", 1.0)
    return f"scale ({coeff:g})" if len(step.args) == 1 else "scale"


def _operations(tree: Any) -> int:
    if tree[0] in ("num", "arg"):
        return 0
    if tree[0] == "pow":
        return 1 + _operations(tree[1])
    return len(tree) - 2 + sum(_operations(t) for t in tree[1:])


def _scalar_cost(shapes: Any, shape: tuple[int, int], attrs: Mapping[str, Any]) -> float:
    return float(_operations(attrs["expr"]))  # one FLOP per operation: negligible


def _eval_tree(tree: Any, args: list[Any], num: Any, power: Any) -> Any:
    """A scalar expression tree: ``("num", v)``, ``("arg", i)`` (the i-th operand),
    ``("add", t, ...)``, ``("mul", t, ...)``, ``("pow", t, exponent)``."""
    kind = tree[0]
    if kind == "num":
        return num(tree[1])
    if kind == "arg":
        return args[tree[1]]
    if kind == "pow":
        return power(_eval_tree(tree[1], args, num, power), tree[2])
    parts = [_eval_tree(t, args, num, power) for t in tree[1:]]
    out = parts[0]
    for x in parts[1:]:
        out = out + x if kind == "add" else out * x
    return out


def _lower_scalar(step: Any, args: list[Any], env: Mapping[str, int], dtype: str) -> Any:
    import pytensor.tensor as pt

    def power(base: Any, exponent: float) -> Any:
        return base ** pt.constant(exponent, dtype=dtype)

    value = _eval_tree(step.attr("expr"), args, lambda v: pt.constant(v, dtype=dtype), power)
    return pt.cast(value, dtype).dimshuffle("x", "x")  # a 1x1 matrix, as the step's shape


def _ref_scalar(step: Any, x: list[Any]) -> Any:
    import numpy as np

    value = _eval_tree(step.attr("expr"), [np.asarray(a) for a in x], float, lambda b, e: b**e)
    return np.reshape(value, (1, 1))


for _k in (
    Kernel("input", "a problem input", "A", "input", _free, _no_lowering, structural=True),
    Kernel("slice", "a block (view) of a value: attrs rows=(start, stop), cols=(start, stop)",
           "A[r0:r1, c0:c1]", "data", _free, _lower_slice, structural=True),
    Kernel("eye", "identity matrix", "I", "data", _free, _lower_eye, structural=True),
    Kernel("zeros", "zero matrix", "0", "data", _free, _lower_zeros, structural=True),
    Kernel("transpose", "transpose (a view)", "A.T", "data", _free,
           lambda step, a, env, dtype: a[0].T, label="T", structural=True, passes_nan=None),
    Kernel("add", "elementwise sum", "A + B", "elementwise", _per_entry,
           lambda step, a, env, dtype: a[0] + a[1],
           reference=lambda step, x: x[0] + x[1],
           examples=(Example(((5, 3), (5, 3)), (5, 3), 15.0),), passes_nan=None),
    Kernel("sub", "elementwise difference", "A - B", "elementwise", _per_entry,
           lambda step, a, env, dtype: a[0] - a[1],
           reference=lambda step, x: x[0] - x[1],
           examples=(Example(((5, 3), (5, 3)), (5, 3), 15.0),), passes_nan=None),
    Kernel("neg", "negation", "-A", "elementwise", _per_entry,
           lambda step, a, env, dtype: -a[0],
           reference=lambda step, x: -x[0],
           examples=(Example(((3, 7),), (3, 7), 21.0),), passes_nan=None),
    Kernel("scale", "scalar times matrix: attrs coeff (number) or args[1] (a scalar input)",
           "coeff * A * s1**p1 * ...", "elementwise", _per_entry, _lower_scale,
           reference=_ref_scale, step_text=_scale_text,
           examples=(Example(((5, 3),), (5, 3), 15.0, (("coeff", -2.5),)),
                     Example(((3, 5), ()), (3, 5), 15.0, (("coeff", 2.0), ("powers", (2,))))),
           passes_nan=(0,)),  # the scalars are checked exactly
    Kernel("scalar", "a scalar computed from scalar inputs: attrs expr (a tree of num, arg, "
           "add, mul, pow)", "(k - 1) / (lam + 1)", "elementwise", _scalar_cost,
           _lower_scalar, reference=_ref_scalar, label="scalar",
           examples=(Example(((), ()), (1, 1), 3.0,
                             (("expr", ("mul", ("add", ("arg", 0), ("num", -1.0)),
                                        ("pow", ("arg", 1), -1.0))),)),)),
    Kernel("block", "assemble blocks: attrs grid = [[arg index, transposed?], ...] rows of blocks",
           "[[A, B], [C, D]]", "data", _free, _lower_block, structural=True, passes_nan=None),
):
    register_kernel(_k)
