"""The comparison's variants: each built as a function of the problem's inputs.

The hand-written ones come from :mod:`autotune.evaluators` (NumPy and JAX as written) and
:mod:`autotune.experts` (SciPy); the PyTensor ones are derived, lowered and compiled from a
named point or a stored plan (:func:`compile_knobs`, :func:`plan_knobs`);
:func:`build_variants` builds the ones a case asks for, recording in the case why a variant
could not be built. :func:`max_relative_error` is the accuracy every variant is checked by.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .comparison_cases import VARIANTS, Case, VariantResult
from .evaluators import Function, build_jax, build_numpy, jax_available
from .experts import expert_function
from .spec import Problem

__all__ = ["build_variants", "compile_knobs", "max_relative_error", "plan_knobs"]


def compile_knobs(problem: Problem, knobs: Mapping[str, Any], dims: Mapping[str, int],
                  target: str, rewrites: str = "chosen") -> Function:
    """Derive the candidate ``knobs`` at ``dims``, lower it and compile it for ``target``
    (e.g. ``numba-t2``); returns the compiled function (``fn(*inputs) -> outputs``; numba
    compiles on the first call). ``rewrites="pytensor"`` lets PyTensor's own rewrites
    re-decide the kernels (:func:`autotune.targets.compile_function`)."""
    from .derivation import derive
    from .lower import lower
    from .targets import compile_function

    program = derive(problem, knobs, dims)
    inputs, outputs = lower(problem, program, problem.resolve_dims(dims))
    return compile_function(target, inputs, outputs, rewrites=rewrites)


def plan_knobs(problem: Problem, dims: Mapping[str, int], folder: str | Path = "results",
               fallback: str = "nearest") -> tuple[dict[str, Any], str | None, str]:
    """The knobs of the stored plan for ``problem`` at ``dims`` (``find_plan``, with the
    nearest sizes as fallback by default), else the ``flop-optimal`` candidate.

    Returns ``(knobs, target name or None, description)``; the description says which (the
    plan's file name, or 'flop-optimal (no plan)'). A plan's knobs that do not apply at
    ``dims`` also fall back to flop-optimal.
    """
    from .api import find_plan
    from .errors import KnobError, PlanError
    from .plan import read_plan
    from .space import named_point, normalize_knobs

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = find_plan(problem.name, problem.resolve_dims(dims), folder=folder,
                             fallback=fallback)
        plan = read_plan(path)
        knobs = normalize_knobs(problem, plan.params, problem.resolve_dims(dims))
        return knobs, plan.target, Path(path).name
    except (PlanError, KnobError, OSError):
        return named_point(problem, "flop-optimal", dims), None, "flop-optimal (no plan)"


def max_relative_error(outputs: Sequence[Any], reference: Mapping[str, np.ndarray],
                       names: Sequence[str], stored: Mapping[str, str] | None = None) -> float:
    """The largest relative Frobenius error over the outputs (inf for a non-finite one);
    ``stored``: the outputs stored as one triangle (``Problem.stored``), compared there."""
    from .reference import relative_error

    stored = stored or {}
    return max(relative_error(np.asarray(o), reference[n], stored.get(n, "full"))
               for n, o in zip(names, outputs, strict=True))


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    return text if len(text) < 200 else text[:200] + "..."


def _log(quiet: bool, msg: str) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def _tuned_plan(problem: Problem, dims: dict[str, int], out: Path, trials: int,
                tune_timeout: float, threads: int, quiet: bool,
                heap: str = "retain") -> tuple[Path | None, str]:
    """The exact-size plan in ``out``; else one tuned now (``trials`` > 0); else None."""
    from .api import find_plan
    from .errors import PlanError

    try:
        return find_plan(problem.name, dims, folder=out), "stored"
    except PlanError:
        pass
    if trials <= 0:
        return None, "none"
    from .runner import run_tuning
    from .search import SearchConfig

    _log(quiet, f"  tuning {problem.name} {dims}: {trials} trials / {tune_timeout:.0f} s")
    config = SearchConfig(trials=trials, timeout=tune_timeout, targets=(f"numba-t{threads}",),
                          out=out, final_round_top=2, heap=heap)
    return run_tuning(problem, dims, config, quiet=True), "tuned now"


def build_variants(problem: Problem, dims: dict[str, int], case: Case, out: Path,
                   trials: int, tune_timeout: float, want: Sequence[str],
                   quiet: bool, heap: str = "retain") -> dict[str, Function]:
    """The functions of the variants ``want`` (keys of :data:`VARIANTS`) for ``problem`` at
    ``dims``; each gets a :class:`VariantResult` in ``case``, which says why a variant was not
    built (and then it is left out of the result)."""
    target = f"numba-t{case.threads}"
    fns: dict[str, Function] = {}
    for key in want:
        res = VariantResult(key, VARIANTS[key])
        case.variants[key] = res
        try:
            if key == "plan":
                fns[key] = _plan_variant(problem, dims, case, out, trials, tune_timeout,
                                         quiet, heap)
                continue
            fn = _variant(problem, dims, key, target, res)
            if fn is not None:
                fns[key] = fn
        except Exception as exc:  # noqa: BLE001 - a variant that cannot be built is reported
            res.message = f"not built: {_short(exc)}"
            fns.pop(key, None)
    return fns


def _variant(problem: Problem, dims: dict[str, int], key: str, target: str,
             res: VariantResult) -> Function | None:
    """Every variant but the plan; None (with ``res.message``) when it cannot run here."""
    from .space import named_point

    if key == "numpy":
        return build_numpy(problem, dims, "inv")
    if key == "solve":
        return build_numpy(problem, dims, "solve")
    if key == "scipy":
        return expert_function(problem)
    if key in ("naive", "seed-2x2"):
        fn = compile_knobs(problem, named_point(problem, key, dims), dims, target)
        res.detail = target
        return fn
    if key == "pytensor":
        fn = compile_knobs(problem, named_point(problem, "naive", dims), dims,
                           target, rewrites="pytensor")
        res.detail = target
        return fn
    if key == "jax":
        if not jax_available():
            res.message = "jax is not installed"
            return None
        fn = build_jax(problem, dims)
        res.detail = "XLA CPU thread pool"
        return fn
    raise AssertionError(f"unknown variant {key!r}")


def _plan_variant(problem: Problem, dims: dict[str, int], case: Case, out: Path, trials: int,
                  tune_timeout: float, quiet: bool, heap: str) -> Function:
    """The tuned plan (stored, tuned now, or the flop-optimal point without either); sets
    the case's plan, target and FLOPs."""
    from .api import load_plan
    from .derivation import derive
    from .space import named_point

    res = case.variants["plan"]
    target = f"numba-t{case.threads}"
    path, how = _tuned_plan(problem, dims, out, trials, tune_timeout, case.threads, quiet, heap)
    if path is None:
        knobs = named_point(problem, "flop-optimal", dims)
        fn = compile_knobs(problem, knobs, dims, target)
        case.plan, case.plan_target = "flop-optimal (no plan, no tuning budget)", target
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tf = load_plan(path, check_finite=False, check_properties=False, heap=heap)
        knobs = tf.plan.params
        # the compiled function itself: the plan's per-call input checks are not part of the
        # computation (NumPy's variants do none either)
        fn = tf.function if tf.target.backend in ("numba", "c") else tf
        case.plan, case.plan_target = f"{Path(path).name} ({how})", tf.target.name
    res.detail = case.plan_target
    case.flops = derive(problem, knobs, dims).flops(dims)
    return fn
