"""The derived computation: a straight-line program of kernel calls (SSA steps).

A :class:`Program` is what derivation produces and what lowering consumes. Shapes are kept
as dimension formulas (text in the dims of the problem and block-size symbols), so one program
serves every size; :meth:`Program.flops` evaluates the cost model at concrete sizes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .formula import parse_dim_formula

__all__ = ["Step", "Program", "OPS"]

# op name -> (description, number of args)
OPS: dict[str, str] = {
    "input": "a problem input",
    "slice": "a block (view) of a value: attrs rows=(start, stop), cols=(start, stop)",
    "eye": "identity matrix",
    "zeros": "zero matrix",
    "transpose": "transpose (a view)",
    "matmul": "general matrix product (GEMM/GEMV)",
    "syrk": "symmetric rank-k update alpha*A.T@A + beta*C (full symmetric result)",
    "symprod": "product known to be symmetric alpha*A@B + beta*C: one triangle, mirrored",
    "add": "elementwise sum",
    "sub": "elementwise difference",
    "scale": "scalar times matrix: attrs coeff (number) or args[1] (a scalar input)",
    "neg": "negation",
    "cholesky": "Cholesky factor L (lower) of an SPD matrix",
    "trsolve": "triangular solve: attrs lower, trans, side ('left': A^-1 B, 'right': B A^-1)",
    "cho_solve": "solve with a Cholesky factor: args (L, B)",
    "solve": "general solve A^-1 B: attrs assume_a ('gen', 'sym', 'pos'), side",
    "diag_solve": "solve with a diagonal matrix (scaling): side",
    "inv": "explicit inverse",
    "spd_inv": "explicit inverse of an SPD matrix by Cholesky (potrf + potri), symmetric",
    "block": "assemble blocks: attrs grid = [[arg index, transposed?], ...] rows of blocks",
}


@dataclass(frozen=True)
class Step:
    op: str
    args: tuple[int, ...]
    shape: tuple[str, str]  # dimension formulas, e.g. ("n", "k") or ("n_0", "1")
    attrs: tuple[tuple[str, Any], ...] = ()
    label: str = ""  # the (canonical) SymPy expression this step computes, for reading

    def attr(self, key: str, default: Any = None) -> Any:
        for k, v in self.attrs:
            if k == key:
                return v
        return default

    def to_json(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "args": list(self.args),
            "shape": list(self.shape),
            "attrs": {k: v for k, v in self.attrs},
            "label": self.label,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Step:
        attrs = tuple(sorted((k, _tupleize(v)) for k, v in d.get("attrs", {}).items()))
        return cls(d["op"], tuple(d["args"]), tuple(d["shape"]), attrs, d.get("label", ""))


def _tupleize(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_tupleize(x) for x in v)
    return v


@dataclass(frozen=True)
class Program:
    steps: tuple[Step, ...]
    inputs: dict[str, int]  # input name -> step index
    outputs: dict[str, int]  # output name -> step index
    sizes: dict[str, str] = field(default_factory=dict)  # block-size symbol -> formula in dims
    meta: dict[str, Any] = field(default_factory=dict)

    # -- sizes -----------------------------------------------------------------------------
    def concrete_sizes(self, dims: Mapping[str, int]) -> dict[str, int]:
        env = dict(dims)
        for name, formula in self.sizes.items():
            env[name] = parse_dim_formula(formula, f"block size {name}")(env)
        return env

    def shape(self, i: int, env: Mapping[str, int]) -> tuple[int, int]:
        r, c = self.steps[i].shape
        return (_eval(r, env), _eval(c, env))

    # -- cost model ---------------------------------------------------------------------------
    def step_flops(self, i: int, env: Mapping[str, int]) -> float:
        s = self.steps[i]
        m, n = self.shape(i, env)
        op = s.op
        if op in ("input", "slice", "eye", "zeros", "transpose", "block"):
            return 0.0
        if op == "matmul":
            a = self.shape(s.args[0], env)
            return 2.0 * a[0] * a[1] * n
        if op == "syrk":
            k = self.shape(s.args[0], env)[0]
            extra = m * n if len(s.args) > 1 else 0
            return float(n * n * k + extra)  # n(n+1)k ~ n^2 k: half of a GEMM
        if op == "symprod":
            k = self.shape(s.args[0], env)[1]
            extra = m * n if len(s.args) > 2 else 0
            return float(m * (m + 1) * k + extra)  # the lower triangle: half of a GEMM
        if op in ("add", "sub", "scale", "neg"):
            return float(m * n)
        if op == "cholesky":
            return m**3 / 3.0
        if op == "inv":
            return 2.0 * m**3  # LU factorization + inversion (getrf + getri)
        if op == "spd_inv":
            return float(m**3)  # Cholesky + inversion from it (potrf n^3/3 + potri 2n^3/3)
        if op in ("trsolve", "cho_solve", "solve", "diag_solve"):
            a = self.shape(s.args[0], env)[0]
            side = s.attr("side", "left")
            rhs = n if side == "left" else m
            if op == "trsolve":
                return float(a * a * rhs)
            if op == "cho_solve":
                return 2.0 * a * a * rhs
            if op == "diag_solve":
                return float(a * rhs)
            kind = s.attr("assume_a", "gen")
            factor = a**3 / 3.0 if kind == "pos" else 2.0 * a**3 / 3.0
            return factor + 2.0 * a * a * rhs
        raise ValueError(f"unknown op {op!r}")

    def flops(self, dims: Mapping[str, int]) -> float:
        env = self.concrete_sizes(dims)
        return sum(self.step_flops(i, env) for i in self.live_steps())

    def live_steps(self) -> list[int]:
        """Indices of steps that some output depends on, in order."""
        live: set[int] = set()
        stack = list(self.outputs.values())
        while stack:
            i = stack.pop()
            if i in live:
                continue
            live.add(i)
            stack.extend(self.steps[i].args)
        return sorted(live)

    def ops_used(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for i in self.live_steps():
            op = self.steps[i].op
            out[op] = out.get(op, 0) + 1
        return out

    # -- persistence ---------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "steps": [s.to_json() for s in self.steps],
            "inputs": self.inputs,
            "outputs": self.outputs,
            "sizes": self.sizes,
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Program:
        return cls(
            tuple(Step.from_json(s) for s in d["steps"]),
            dict(d["inputs"]),
            dict(d["outputs"]),
            dict(d.get("sizes", {})),
            dict(d.get("meta", {})),
        )

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)

    def describe(self, dims: Mapping[str, int] | None = None) -> str:
        """One line per live step, with FLOPs when ``dims`` is given."""
        env = self.concrete_sizes(dims) if dims else None
        names = {v: k for k, v in {**self.inputs, **self.outputs}.items()}
        lines = []
        for i in self.live_steps():
            s = self.steps[i]
            if s.op == "input":
                continue
            attrs = ", ".join(f"{k}={v}" for k, v in s.attrs if k != "grid")
            fl = f"  {self.step_flops(i, env) / 1e9:9.3f} GF" if env else ""
            out = f" -> {names[i]}" if i in names else ""
            args = ", ".join(f"%{a}" for a in s.args)
            lines.append(f"%{i} = {s.op}({args}{'; ' + attrs if attrs else ''}){fl}{out}")
        return "\n".join(lines)


_DIM_CACHE: dict[str, Any] = {}


def _eval(formula: str, env: Mapping[str, int]) -> int:
    fn = _DIM_CACHE.get(formula)
    if fn is None:
        fn = parse_dim_formula(formula, f"shape {formula!r}")
        _DIM_CACHE[formula] = fn
    return fn(env)
