"""Lowering: a :class:`~autotune.program.Program` -> a PyTensor graph.

The lowering honors the derived parenthesization (one PyTensor node per step), passes static
shapes, maps the declared properties of the inputs to ``pytensor.assumptions.assume`` so that
PyTensor's own rewrites can fire too, and emits the chosen kernels (Cholesky, triangular
solves, the project's SYRK op).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytensor.tensor as pt

try:  # PyTensor >= 2.31 moved the linear algebra into pytensor.tensor.linalg
    from pytensor.tensor import linalg as slinalg

    nlinalg = slinalg
except ImportError:  # pragma: no cover - older PyTensor
    from pytensor.tensor import nlinalg, slinalg

from .errors import CompileError
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
    return inputs, outputs


def _lower_step(program: Program, i: int, v: dict[int, Any], env: Mapping[str, int], dtype: str):
    s = program.steps[i]
    a = [v[j] for j in s.args]
    op = s.op
    if op == "slice":
        from .program import _eval

        (r0, r1), (c0, c1) = s.attr("rows"), s.attr("cols")
        return a[0][_eval(r0, env) : _eval(r1, env), _eval(c0, env) : _eval(c1, env)]
    if op == "eye":
        return pt.eye(program.shape(i, env)[0], dtype=dtype)
    if op == "zeros":
        return pt.zeros(program.shape(i, env), dtype=dtype)
    if op == "transpose":
        return a[0].T
    if op == "matmul":
        return pt.dot(a[0], a[1])
    if op == "syrk":
        from .kernels import sym_rank_k

        c = a[1] if len(a) > 1 else None
        return sym_rank_k(a[0], c, alpha=s.attr("alpha", 1.0), beta=s.attr("beta", 0.0))
    if op == "symprod":
        from .kernels import sym_product

        c = a[2] if len(a) > 2 else None
        return sym_product(a[0], a[1], c, alpha=s.attr("alpha", 1.0), beta=s.attr("beta", 0.0))
    if op == "add":
        return a[0] + a[1]
    if op == "sub":
        return a[0] - a[1]
    if op == "neg":
        return -a[0]
    if op == "scale":
        out = a[0] * pt.constant(s.attr("coeff", 1.0), dtype=dtype)
        for scalar, power in zip(a[1:], s.attr("powers", ()), strict=True):
            out = out * scalar**power
        return out
    if op == "cholesky":
        return slinalg.cholesky(a[0], lower=True)
    if op == "trsolve":
        return slinalg.solve_triangular(
            a[0], a[1], lower=bool(s.attr("lower", True)), trans=1 if s.attr("trans") else 0,
            b_ndim=2,
        )
    if op == "cho_solve":
        return slinalg.cho_solve((a[0], True), a[1], b_ndim=2)
    if op == "solve":
        return slinalg.solve(a[0], a[1], assume_a=s.attr("assume_a", "gen"), b_ndim=2)
    if op == "diag_solve":
        return a[1] / pt.diagonal(a[0])[:, None]
    if op == "spd_inv":
        from .kernels import spd_inverse

        return spd_inverse(a[0])
    if op == "inv":
        return nlinalg.matrix_inverse(a[0])
    if op == "block":
        grid = s.attr("grid")
        rows = []
        for row in grid:
            cells = [a[idx].T if tr else a[idx] for idx, tr in row]
            rows.append(cells[0] if len(cells) == 1 else pt.concatenate(cells, axis=1))
        return rows[0] if len(rows) == 1 else pt.concatenate(rows, axis=0)
    raise CompileError(f"no lowering for op {op!r}")
