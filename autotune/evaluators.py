"""The formula evaluated directly with an array library: "NumPy as written".

:func:`build_numpy` turns a problem's SymPy outputs into a closure over arrays, exactly as
written (``style="inv"``: explicit ``np.linalg.inv``, products left to right, nothing
shared; ``style="solve"``: ``np.linalg.solve``, right to left); :func:`build_jax` does the
same over ``jax.numpy`` under ``jax.jit``. The measuring worker times the NumPy one as a
baseline of every run, and the comparison (:mod:`autotune.compare`) and the asv suite time
them next to the plans.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import sympy as sp
from sympy.matrices.expressions import (
    Identity,
    Inverse,
    MatAdd,
    MatMul,
    MatPow,
    MatrixSymbol,
    Transpose,
    ZeroMatrix,
)

from .errors import AutotuneError
from .properties import split_coeff
from .spec import Problem

__all__ = ["Function", "build_numpy", "build_jax", "jax_available"]

Function = Callable[..., tuple[Any, ...]]




def _summed(fs: list[Callable[[dict], Any]]) -> Callable[[dict], Any]:
    """The evaluator of a sum of terms (scalars or matrices), left to right."""

    def add(env: dict) -> Any:
        out = fs[0](env)
        for f in fs[1:]:
            out = out + f(env)
        return out

    return add


class _Builder:
    """Turns the SymPy expression tree into nested closures once, so that a call does only
    array work (no SymPy in the timed path). Nothing is shared: every occurrence of a
    subexpression is computed again, as a formula typed in directly would be."""

    def __init__(self, problem: Problem, dims: Mapping[str, int] | None, style: str,
                 xp: Any, inv: Callable, solve: Callable) -> None:
        if style not in ("inv", "solve"):
            raise ValueError(f"style must be 'inv' or 'solve', got {style!r}")
        values = problem.resolve_dims(dims)
        self.sizes = {problem.dim_symbols[d]: v for d, v in values.items()}
        self.style = style
        self.xp = xp
        self.inv = inv
        self.solve = solve

    def size(self, s: Any) -> int:
        return int(s) if isinstance(s, int) else int(s.subs(self.sizes))

    def scalar(self, e: sp.Basic) -> Callable[[dict], Any]:
        if e.is_Number:
            c = float(e)
            return lambda env: c
        if isinstance(e, sp.Symbol):
            name = e.name
            return lambda env: env[name]
        if isinstance(e, sp.Mul):
            fs = [self.scalar(a) for a in e.args]

            def mul(env: dict) -> Any:
                out = fs[0](env)
                for f in fs[1:]:
                    out = out * f(env)
                return out

            return mul
        if isinstance(e, sp.Add):
            return _summed([self.scalar(a) for a in e.args])
        if isinstance(e, sp.Pow):
            base, exp = self.scalar(e.base), self.scalar(e.exp)
            return lambda env: base(env) ** exp(env)
        raise AutotuneError(f"the generic evaluator cannot evaluate the scalar {e}")

    def matrix(self, e: sp.Basic) -> Callable[[dict], Any]:
        xp = self.xp
        if isinstance(e, MatrixSymbol):
            name = e.name
            return lambda env: env[name]
        if isinstance(e, Identity):
            n = self.size(e.shape[0])
            return lambda env: xp.eye(n)
        if isinstance(e, ZeroMatrix):
            shape = (self.size(e.shape[0]), self.size(e.shape[1]))
            return lambda env: xp.zeros(shape)
        if isinstance(e, Transpose):
            f = self.matrix(e.arg)
            return lambda env: f(env).T
        if isinstance(e, Inverse):  # (before MatPow: Inverse is a MatPow)
            f = self.matrix(e.arg)
            inv = self.inv
            return lambda env: inv(f(env))
        if isinstance(e, MatAdd):
            return _summed([self.matrix(a) for a in e.args])
        if isinstance(e, (MatMul, MatPow)):
            coeff, mats = split_coeff(e)
            prod = self.product(mats) if mats else None
            if prod is None:
                raise AutotuneError(f"the generic evaluator cannot evaluate {e}")
            if coeff == 1:
                return prod
            c = self.scalar(coeff)
            return lambda env: c(env) * prod(env)
        raise AutotuneError(
            f"the generic evaluator cannot evaluate {e} ({type(e).__name__})"
        )

    def product(self, mats: list[sp.Basic]) -> Callable[[dict], Any]:
        if self.style == "inv":  # as written: explicit inverses, left to right
            fs = [self.matrix(m) for m in mats]

            def left_to_right(env: dict) -> Any:
                out = fs[0](env)
                for f in fs[1:]:
                    out = out @ f(env)
                return out

            return left_to_right
        # right to left; inv(A) * X becomes solve(A, X)
        steps: list[tuple[bool, Callable[[dict], Any]]] = []
        for m in reversed(mats):
            if isinstance(m, Inverse):
                steps.append((True, self.matrix(m.arg)))
            else:
                steps.append((False, self.matrix(m)))
        inv, solve = self.inv, self.solve

        def right_to_left(env: dict) -> Any:
            out = None
            for is_inverse, f in steps:
                if out is None:
                    out = inv(f(env)) if is_inverse else f(env)
                elif is_inverse:
                    out = solve(f(env), out)
                else:
                    out = f(env) @ out
            return out

        return right_to_left


def _evaluator(problem: Problem, dims: Mapping[str, int] | None, style: str, xp: Any,
               inv: Callable, solve: Callable) -> Function:
    b = _Builder(problem, dims, style, xp, inv, solve)
    names = list(problem.inputs)
    outs = [b.matrix(problem.expressions[o]) for o in problem.outputs]

    def evaluate(*args: Any) -> tuple[Any, ...]:
        env = dict(zip(names, args, strict=True))
        return tuple(f(env) for f in outs)

    return evaluate


def build_numpy(problem: Problem, dims: Mapping[str, int] | None = None,
                style: str = "inv") -> Function:
    """The formula evaluated with NumPy, ``fn(*inputs) -> outputs`` (declared orders).

    ``style='inv'``: "NumPy as written": explicit ``np.linalg.inv``, products left to right.
    ``style='solve'``: ``inv(A)*X`` as ``np.linalg.solve(A, X)``, products right to left.
    Either way nothing is shared between or within outputs.
    """
    return _evaluator(problem, dims, style, np, np.linalg.inv, np.linalg.solve)


def jax_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("jax") is not None


def build_jax(problem: Problem, dims: Mapping[str, int] | None = None,
              style: str = "inv") -> Function:
    """"JAX jit as written": the generic evaluator over ``jax.numpy`` (``jnp.linalg.inv``),
    under ``jax.jit`` in float64. The returned function takes NumPy or JAX arrays, waits for
    the result (``block_until_ready``) and returns JAX arrays."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    jitted = jax.jit(_evaluator(problem, dims, style, jnp, jnp.linalg.inv, jnp.linalg.solve))

    def run(*args: Any) -> tuple[Any, ...]:
        return jax.block_until_ready(jitted(*args))

    run.jitted = jitted  # type: ignore[attr-defined]
    return run
