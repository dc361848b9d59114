"""One case of the comparison measured: its variants checked, then timed side by side.

:func:`measure_case` builds the variants of one problem at one size
(:mod:`autotune.comparison_variants`), calls each once on a random instance and checks it
against the float64 reference, then times them interleaved (A B C ... DGEMM A B C ...
DGEMM) under one BLAS thread limit, and sets the physical limit: the fewest FLOPs of any
candidate at the DGEMM rate of the case's own rounds (re-measured when it is disturbed).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .comparison_cases import Case
from .comparison_variants import _log, _short, build_variants, max_relative_error
from .evaluators import Function
from .spec import Problem

__all__ = ["measure_case"]


def measure_case(problem: Problem, overrides: Mapping[str, int], out: Path, threads: int,
              repeats: int, trials: int, tune_timeout: float, want: Sequence[str],
              rate: float, seed: int, quiet: bool, heap: str = "retain",
              dgemm_n: int = 2000) -> Case:
    """One problem at one size: build the variants, check them against the reference, time
    them side by side with a DGEMM and set the physical limit."""
    from .instances import random_instance
    from .reference import evaluate_reference, tolerance

    dims = problem.resolve_dims(overrides)
    case = Case(problem.name, dims, threads)
    _log(quiet, f"{case.title}: building")
    values = random_instance(problem, dims, seed=seed)
    args = [values[n] for n in problem.inputs]
    ref = evaluate_reference(problem, values, dims)
    case.tolerance = tolerance("float64", ref.condition, max(dims.values()))
    fns = build_variants(problem, dims, case, out, trials, tune_timeout, want, quiet, heap)
    case.min_flops = _min_flops(problem, dims)
    _time_side_by_side(case, fns, args, ref.outputs, list(problem.outputs), problem.stored,
                       repeats, seed,
                       dgemm_n, quiet)
    _set_limit(case, rate, dgemm_n, threads)
    return case


def _min_flops(problem: Problem, dims: dict[str, int]) -> float | None:
    """The fewest FLOPs any candidate needs (the flop-optimal point): the limit counts these,
    not the plan's own; None when it cannot be derived (the plan's FLOPs then stand in)."""
    try:
        from .derivation import derive
        from .space import named_point

        return derive(problem, named_point(problem, "flop-optimal", dims), dims).flops(dims)
    except Exception:  # noqa: BLE001 - then the plan's FLOPs stand in
        return None


def _time_side_by_side(case: Case, fns: dict[str, Function], args: list[Any],
                       reference: Mapping[str, np.ndarray], names: list[str],
                       stored: Mapping[str, str], repeats: int, seed: int, dgemm_n: int,
                       quiet: bool) -> None:
    """Under the case's BLAS thread limit: one checked warm-up call per variant, then
    ``repeats`` interleaved rounds of every variant and a DGEMM."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(seed)
    gemm = [rng.standard_normal((dgemm_n, dgemm_n)), rng.standard_normal((dgemm_n, dgemm_n))]
    gemm.append(np.empty_like(gemm[0]))
    jax_args = None
    if "jax" in fns:
        import jax

        jax_args = [jax.device_put(np.asarray(a)) for a in args]
    with threadpool_limits(limits=case.threads, user_api="blas"):
        _warm_up_and_check(case, fns, args, jax_args, reference, names, stored)
        _log(quiet, f"{case.title}: timing {', '.join(fns)} ({repeats} rounds)")
        _timed_rounds(case, fns, args, jax_args, repeats, gemm)


def _warm_up_and_check(case: Case, fns: dict[str, Function], args: list[Any],
                       jax_args: list[Any] | None, reference: Mapping[str, np.ndarray],
                       names: list[str], stored: Mapping[str, str]) -> None:
    """Call each variant once (compiling the lazy backends) and check its accuracy; a
    variant that fails is dropped from ``fns`` with the reason in its result."""
    for key in list(fns):
        res = case.variants[key]
        outs = None
        try:
            outs = fns[key](*(jax_args if key == "jax" else args))
            res.error = max_relative_error(outs, reference, names, stored)
            res.ok = True
            if not res.error <= case.tolerance:
                res.message = (f"relative error {res.error:.1e} above the tolerance "
                               f"{case.tolerance:.1e}")
        except Exception as exc:  # noqa: BLE001
            res.message = f"failed: {_short(exc)}"
            del fns[key]
        del outs


def _timed_rounds(case: Case, fns: dict[str, Function], args: list[Any],
                  jax_args: list[Any] | None, repeats: int, gemm: list[np.ndarray]) -> None:
    """``repeats`` interleaved rounds: A B C ... DGEMM A B C ... DGEMM (after one DGEMM
    warm-up); a variant that fails is dropped, its samples with it."""
    ga, gb, gc = gemm
    np.matmul(ga, gb, out=gc)
    for _ in range(repeats):  # interleaved: A B C ... DGEMM A B C ... DGEMM
        t0 = time.perf_counter()
        np.matmul(ga, gb, out=gc)
        case.dgemm_samples.append(time.perf_counter() - t0)
        for key, fn in list(fns.items()):
            a = jax_args if key == "jax" else args
            try:
                t0 = time.perf_counter()
                fn(*a)
                case.variants[key].samples.append(time.perf_counter() - t0)
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory: reported
                res = case.variants[key]
                res.ok, res.samples = False, []
                res.message = f"failed: {_short(exc)}"
                del fns[key]


def _set_limit(case: Case, rate: float, dgemm_n: int, threads: int) -> None:
    """The physical limit: the fewest FLOPs at the DGEMM rate of the case's own rounds."""
    if case.dgemm_samples:  # the rate of this case's own rounds (the machine drifts):
        # the least disturbed of them, the practical peak
        rate = 2.0 * dgemm_n**3 / min(case.dgemm_samples)
    flops = min(f for f in (case.flops, case.min_flops) if f) if case.flops else None
    rate = _possible_rate(case, flops, rate, dgemm_n, threads)
    case.dgemm_gflops = rate / 1e9 if rate > 0 else None
    if flops and rate > 0:
        case.limit_s = flops / rate


def _possible_rate(case: Case, flops: float | None, rate: float, dgemm_n: int,
                   threads: int) -> float:
    """The DGEMM rate, re-measured (twice at most) when it puts the limit above the plan's
    own time -- a GEMM timed while other work ran; 0 (no limit reported, with a note) when
    it still does."""
    from .measure import dgemm_rate
    from .stats import limit_ratio

    plan_t = case.time("plan")
    if not (flops and rate > 0 and plan_t):
        return rate
    for _ in range(2):
        if limit_ratio(plan_t, flops, rate) is not None:
            return rate
        rate = max(rate, dgemm_rate(dgemm_n, f"numba-t{threads}", repeats=5))
    if limit_ratio(plan_t, flops, rate) is not None:
        return rate
    case.limit_note = (f"the DGEMM rate measured ({rate / 1e9:.1f} GFLOP/s) puts the limit "
                       "above the plan's own time: a disturbed measurement, not reported")
    return 0.0
