"""The derived computation: a straight-line program of kernel calls (SSA steps).

A :class:`Program` is what derivation produces and what lowering consumes. Shapes are kept
as dimension formulas (text in the dims of the problem and block-size symbols), so one program
serves every size; :meth:`Program.flops` evaluates the cost model at concrete sizes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .formula import eval_dim, parse_dim_formula
from .kernels.registry import KERNELS

__all__ = ["Step", "Program", "OPS"]



class _OpsView(Mapping[str, str]):
    """Op name -> description: a read-only view of the kernel registry
    (:data:`autotune.kernels.KERNELS`), which holds every fact about an op."""

    def __getitem__(self, name: str) -> str:
        return KERNELS[name].description

    def __iter__(self) -> Iterator[str]:
        return iter(KERNELS)

    def __len__(self) -> int:
        return len(KERNELS)


#: Op name -> description, for every op a step may name (a view of the kernel registry).
OPS: Mapping[str, str] = _OpsView()


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
        """The FLOPs of step ``i`` at the concrete sizes ``env`` (its kernel's cost model)."""
        op = self.steps[i].op
        try:
            kernel = KERNELS[op]
        except KeyError:
            raise ValueError(f"unknown op {op!r}") from None
        return kernel.flops(self, i, env)

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


_eval = eval_dim  # a step's dimension formula at concrete sizes
