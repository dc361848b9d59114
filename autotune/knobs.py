"""The knobs of a search space and their valid values for a problem (the named points that
every run measures are in :mod:`autotune.space`).

A candidate is a flat, JSON-serializable dict of knob values::

    {"blocks.n": 2, "cut.n": "even", "order": "optimal", "cse": True,
     "solver.S": "cholesky_split", "syrk": True, "symprod": True, "mirror": True}

(the target - backend and threads - is chosen next to it, see :mod:`autotune.targets`).
A problem's ``[search]`` table narrows the ranges::

    [search]
    blocks = { n = [1, 2, 4], k = [1, 2] }
    cut = { n = ["even", 0.25] }
    order = ["optimal", "left", "right", 1, 2]
    cse = [true, false]
    solver = { S = ["cholesky_split", "cholesky", "lu"] }
    syrk = [true, false]
    symprod = [true, false]
    mirror = [true, false]
    backend = ["numba", "c"]
    threads = [1, 2]

A value that does not apply (4 blocks of a 3-row dimension, Cholesky of a matrix that is not
SPD) is rejected here, when the space is defined, with the valid choices.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from sympy.matrices.expressions import MatrixSlice

from .errors import KnobError, SpecError
from .formula import nodes
from .kernels.registry import SOLVERS, solver_choices
from .properties import FactBase
from .rules import REWRITE_CHOICES, rewrites_apply

__all__ = [
    "KNOB_FAMILIES",
    "NAMED_POINTS",
    "solver_choices",
    "inverted_matrices",
    "knob_space",
    "validate_search",
    "normalize_knobs",
    "default_knobs",
    "structural_key",
    "TARGET_KNOBS",
    "BACKEND_NAMES",
    "ALL_SOLVERS",
]

KNOB_FAMILIES = {
    "blocks": "blocks per dimension: 1 (unblocked), 2, 3 or 4",
    "cut": "where the cuts fall per dimension: 'even' or the first block's fraction (0..1)",
    "order": "chain parenthesization: 'optimal', 'left', 'right', or r (r-th cheapest)",
    "cse": "share common subexpressions (true/false)",
    "solver": "kernel per inverted matrix (by definition name or inv1, inv2, ...)",
    "syrk": "compute X.T*X with the symmetric rank-k kernel (true/false)",
    "symprod": "compute a product known to be symmetric (X*M*X.T) one triangle at a time "
               "(true/false)",
    "mirror": "compute only the lower blocks of symmetric results and mirror them",
    "rewrite": "the rewrite rules' variant of each output: 'cheapest' by FLOPs, 'as_written', "
               "or r (the r-th cheapest); offered where a rule applies",
    "backend": "PyTensor backend: numba, c, jax, pytorch",
    "threads": "BLAS threads",
}
TARGET_KNOBS = ("backend", "threads")
BACKEND_NAMES = ("numba", "c", "jax", "pytorch")
MAX_BLOCKS = 4
ORDER_FIXED = ("optimal", "left", "right")
MAX_ORDER_RANK = 13

#: every solver's name (the values a ``solver.*`` knob may take, for a matrix that allows it):
#: the records live in the kernel registry (:data:`autotune.kernels.registry.SOLVERS`)
ALL_SOLVERS = sorted(SOLVERS)

NAMED_POINTS = ("naive", "seed-2x2", "flop-optimal")


def inverted_matrices(problem, fb: FactBase | None = None) -> dict[str, frozenset[str]]:
    """Solver label -> facts of the inverted matrix."""
    return {label: facts for label, (facts, _, _) in _inverted(problem, fb).items()}


def _inverted(problem, fb: FactBase | None = None
              ) -> dict[str, tuple[frozenset[str], tuple[int, int] | None, int]]:
    """Solver label -> (facts, band, size) of the inverted matrix (size 0: unknown)."""
    from .inverses import _inverses, inverse_labels
    from .properties import canonical

    fb = fb or problem.facts()
    labels = inverse_labels(problem, fb)
    out: dict[str, tuple[frozenset[str], tuple[int, int] | None, int]] = {}
    for name in problem.outputs:
        for x in _inverses(problem.expressions[name]):
            n = fb.size(x.shape[0]) or 0  # unknown here: no banded solve offered
            out[labels[canonical(x, fb)]] = (fb.facts(x), fb.bandwidth(x), n)
    return out


def knob_space(problem, dims: Mapping[str, int] | None = None) -> dict[str, list[Any]]:
    """Every structural knob and its valid values (the problem's [search] table narrows them)."""
    values = problem.resolve_dims(dims)
    fb = problem.facts(values)
    space: dict[str, list[Any]] = {}
    # a partial access (X[i, j]) reads a part of an unblocked value: such formulas are not
    # partitioned into blocks
    whole = not any(isinstance(x, MatrixSlice) for o in problem.outputs
                    for x in nodes(problem.expressions[o]))
    for d in problem.dims:
        most = MAX_BLOCKS if whole else 1
        space[f"blocks.{d}"] = [b for b in range(1, most + 1) if b <= values[d]]
        space[f"cut.{d}"] = ["even", 0.25, 0.75]
    space["order"] = [*ORDER_FIXED, 1, 2, 3]
    space["cse"] = [True, False]
    for label, (facts, band, n) in _inverted(problem, fb).items():
        space[f"solver.{label}"] = solver_choices(facts, band, n)
    space["syrk"] = [True, False]
    space["symprod"] = [True, False]
    space["mirror"] = [True, False]
    if rewrites_apply(problem, fb):
        space["rewrite"] = list(REWRITE_CHOICES)
    search = problem.search
    for key, allowed in _flatten_search(search, problem.origin).items():
        if key in TARGET_KNOBS:
            continue
        space[key] = allowed
    return space


def _flatten_search(search: Mapping[str, Any], origin: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for family, value in search.items():
        if family not in KNOB_FAMILIES:
            close = difflib.get_close_matches(family, list(KNOB_FAMILIES), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise SpecError(
                f"{origin}: [search]: unknown knob {family!r}{hint}; knobs: "
                f"{', '.join(KNOB_FAMILIES)}"
            )
        if family in ("blocks", "cut", "solver"):
            if not isinstance(value, dict):
                raise SpecError(
                    f"{origin}: [search].{family}: expected a table such as "
                    f"{family} = {{ n = [...] }} ({KNOB_FAMILIES[family]})"
                )
            for sub, vals in value.items():
                out[f"{family}.{sub}"] = _as_list(vals, f"{origin}: [search].{family}.{sub}")
        else:
            out[family] = _as_list(value, f"{origin}: [search].{family}")
    return out


def _as_list(v: Any, where: str) -> list[Any]:
    vals = v if isinstance(v, list) else [v]
    if not vals:
        raise SpecError(f"{where}: an empty list leaves nothing to search")
    return vals


def validate_search(problem) -> None:
    """Check the problem's [search] table against what applies to the problem."""
    flat = _flatten_search(problem.search, problem.origin)
    full = knob_space(_without_search(problem))
    for key, vals in flat.items():
        where = f"{problem.origin}: [search].{key}"
        if key == "backend":
            for v in vals:
                if v not in BACKEND_NAMES:
                    raise SpecError(
                        f"{where}: unknown backend {v!r}; backends: {list(BACKEND_NAMES)}"
                    )
            continue
        if key == "threads":
            for v in vals:
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise SpecError(f"{where}: threads must be positive integers, got {v!r}")
            continue
        if key not in full:
            family, _, sub = key.partition(".")
            if family in ("blocks", "cut"):
                raise SpecError(
                    f"{where}: unknown dimension {sub!r}; dimensions: {', '.join(problem.dims)}"
                )
            if family == "solver":
                labels = [k.partition(".")[2] for k in full if k.startswith("solver.")]
                raise SpecError(
                    f"{where}: no inverted matrix is labelled {sub!r}; inverted matrices: "
                    f"{', '.join(labels) or '(none: the problem inverts nothing)'}"
                )
            raise SpecError(f"{where}: unknown knob")
        for v in vals:
            try:
                _check_value(key, v, full[key])
            except KnobError as exc:
                raise SpecError(f"{where}: {exc}") from exc


def _without_search(problem):
    import dataclasses

    return dataclasses.replace(problem, search={})


def _check_value(key: str, value: Any, valid: list[Any]) -> None:
    family = key.partition(".")[0]
    if family == "cut":
        if value == "even":
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise KnobError(f"{key} = {value!r}: a cut is 'even' or a fraction strictly in (0, 1)")
        return
    if family == "order":
        if value in ORDER_FIXED:
            return
        if isinstance(value, bool) or not isinstance(value, int) or not (
            0 <= value <= MAX_ORDER_RANK
        ):
            raise KnobError(
                f"order = {value!r}: valid values are 'optimal', 'left', 'right' or an integer "
                f"rank 0..{MAX_ORDER_RANK} (the r-th cheapest parenthesization)"
            )
        return
    if family in ("cse", "syrk", "symprod", "mirror"):
        if not isinstance(value, bool):
            raise KnobError(f"{key} = {value!r}: must be true or false")
        return
    if family == "blocks" and (isinstance(value, bool) or not isinstance(value, int)):
        raise KnobError(f"{key} = {value!r}: a block count is an integer; valid: {valid}")
    if family == "solver" and not isinstance(value, str):
        raise KnobError(f"{key} = {value!r}: a kernel name is a string; valid: {valid}")
    if value not in valid:
        if family == "blocks":
            raise KnobError(
                f"{key} = {value!r} does not apply: valid block counts here are {valid} "
                "(at most the dimension's size)"
            )
        if family == "solver":
            raise KnobError(
                f"{key} = {value!r} does not apply to this matrix (its properties do not allow "
                f"it); valid kernels: {valid}"
            )
        raise KnobError(f"{key} = {value!r}; valid values: {valid}")


def default_knobs(problem, dims: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The best-guess candidate: unblocked, FLOP-optimal order, shared subexpressions, the
    best kernel for each inverted matrix. ``symprod`` defaults to false: plans stored before
    the knob existed must derive the computation they were measured with."""
    space = knob_space(_without_search(problem), dims)
    out: dict[str, Any] = {}
    for key, vals in space.items():
        family = key.partition(".")[0]
        defaults = {"blocks": 1, "cut": "even", "order": "optimal", "cse": True,
                    "syrk": True, "symprod": False, "mirror": True, "rewrite": "cheapest"}
        out[key] = defaults.get(family, vals[0])
    return out


def normalize_knobs(
    problem, knobs: Mapping[str, Any], dims: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """Fill defaults and validate every value; unknown knobs are errors."""
    full = knob_space(_without_search(problem), dims)
    out = default_knobs(problem, dims)
    for key, value in knobs.items():
        if key in TARGET_KNOBS:
            continue
        if key not in full:
            close = difflib.get_close_matches(key, list(full), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise KnobError(f"unknown knob {key!r}{hint}; knobs: {', '.join(full)}")
        _check_value(key, value, full[key])
        out[key] = value
    return out


def structural_key(knobs: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, v) for k, v in knobs.items() if k not in TARGET_KNOBS))
