"""The named points of a problem's search space: the baselines every run measures.

``naive`` (the formula as written: explicit inverses, left to right, nothing shared),
``seed-2x2`` (the 2013 experiment's halves of every operand) and ``flop-optimal`` (the cost
model's best, found by deriving candidates). The knobs themselves, their valid values and
their validation live in :mod:`autotune.knobs` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import KnobError
from .knobs import *  # noqa: F403 - the knob space, re-exported
from .knobs import NAMED_POINTS, _without_search, default_knobs, knob_space
from .knobs import __all__ as _knob_names

__all__ = [*_knob_names, "named_point", "flop_optimal"]


def named_point(problem, name: str, dims: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The baselines: ``naive`` (formula as written: explicit inverses, left-to-right, nothing
    shared), ``seed-2x2`` (the 2013 post: halves of every operand) and ``flop-optimal``."""
    base = default_knobs(problem, dims)
    if name == "naive":
        out = {k: v for k, v in base.items()}
        for k in out:
            if k.startswith("solver."):
                out[k] = "inverse"
        out.update(order="left", cse=False, syrk=False, symprod=False, mirror=False)
        if "rewrite" in out:
            out["rewrite"] = "as_written"
        return out
    if name == "seed-2x2":
        out = named_point(problem, "naive", dims)
        space = knob_space(_without_search(problem), dims)
        for k in out:
            if k.startswith("blocks.") and 2 in space[k]:
                out[k] = 2
        return out
    if name == "flop-optimal":
        return flop_optimal(problem, dims)
    raise KnobError(f"unknown named point {name!r}; named points: {', '.join(NAMED_POINTS)}")


def flop_optimal(problem, dims: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The cost model's best among unblocked candidates with the optimal order: coordinate
    descent over the kernel of each inverted matrix and the SYRK and symmetric-product
    switches (each candidate is derived and its FLOPs counted), from the default kernels."""
    from .derivation import derive

    values = problem.resolve_dims(dims)
    space = knob_space(_without_search(problem), values)
    keys = [k for k in space if k.startswith("solver.")] + ["syrk", "symprod"]
    best = default_knobs(problem, values)
    best_flops = derive(problem, best, values).flops(values)
    for _ in range(2):  # two sweeps reach a fixed point for the shipped problems
        improved = False
        for key in keys:
            for value in space[key]:
                if value == best[key]:
                    continue
                knobs = {**best, key: value}
                flops = derive(problem, knobs, values).flops(values)
                if flops < best_flops * (1 - 1e-9):
                    best, best_flops, improved = knobs, flops, True
        if not improved:
            break
    return best
