"""Shared set-up of the asv suite: the cases, the cached instances and the compiled
variants. The evaluators themselves live in :mod:`autotune.compare` (the peer comparison
uses the same ones).

Sizes are small enough that ``asv run --python=same --quick`` finishes in a few minutes on
two cores. ``AUTOTUNE_BENCH_THREADS`` sets the BLAS thread count of every variant: ``1`` by
default (regression tracking needs steady numbers more than peak speed: on small VMs a
multi-threaded OpenBLAS call can stall 8-16 ms waking its threads), ``all`` for every usable
core, or a number. ``AUTOTUNE_BENCH_HEAP`` sets the heap policy of the benchmark process
(:mod:`autotune.memory`), the same for every variant: ``retain`` by default, as plans are
tuned and loaded, or ``system``.
"""

from __future__ import annotations

from autotune.targets import configure_environment

configure_environment()  # before numpy's OpenBLAS and PyTensor load

import os  # noqa: E402

from autotune.memory import set_heap_policy  # noqa: E402

set_heap_policy(os.environ.get("AUTOTUNE_BENCH_HEAP", "retain").strip().lower())

import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"

#: every shipped problem (search_spaces/): the five the tool was built around first
PROBLEMS = ("kalman", "gls", "tikhonov", "mmse", "enkf", "adi_heat", "bfgs", "cca", "eq_qp",
            "etkf", "gp_regression", "information_filter", "levenberg_marquardt",
            "lqr_riccati", "rts_smoother", "sygst", "whittaker", "wls")
SIZES = ("small", "medium")

#: (problem, size) -> free-dimension overrides; a missing pair is skipped (asv shows n/a).
CASES: dict[tuple[str, str], dict[str, int]] = {
    ("kalman", "small"): {"n": 200},  # k = 100
    ("kalman", "medium"): {"n": 1000},  # k = 500
    ("gls", "small"): {"n": 400},  # m = 50
    ("tikhonov", "small"): {"n": 200},  # m = 400
    ("mmse", "small"): {"n": 200},  # m = 400
    ("enkf", "small"): {"n": 400, "N": 50},  # m = 100
    # the application corpus: n = 200 (their other dimensions follow n)
    **{(p, "small"): {"n": 200} for p in PROBLEMS[5:]},
}
SEED = 0


def threads() -> int:
    from autotune.targets import cpu_threads

    value = os.environ.get("AUTOTUNE_BENCH_THREADS", "1").strip().lower()
    if value in ("all", "", "0"):
        return cpu_threads()
    return max(1, min(int(value), cpu_threads()))


def case_key(problem: str, size: str) -> str:
    return f"{problem}/{size}"


def make_cache() -> dict[str, dict[str, Any]]:
    """Everything expensive that pickles: per case the resolved dims, the random instance
    (inputs in declared order), the float64 reference outputs, and the knobs of the plan to
    time (see :func:`autotune.compare.plan_knobs`)."""
    from autotune.compare import plan_knobs
    from autotune.instances import random_instance
    from autotune.reference import evaluate_reference
    from autotune.spec import load_problem

    cache: dict[str, dict[str, Any]] = {}
    for (name, size), overrides in CASES.items():
        problem = load_problem(name)
        dims = problem.resolve_dims(overrides)
        values = random_instance(problem, dims, seed=SEED)
        ref = evaluate_reference(problem, values, dims)
        knobs, target, description = plan_knobs(problem, dims, RESULTS, fallback="nearest")
        cache[case_key(name, size)] = {
            "problem": name,
            "dims": dims,
            "args": [values[n] for n in problem.inputs],
            "reference": ref.outputs,
            "plan_knobs": knobs,
            "plan_target": target,
            "plan": description,
        }
    return cache


def bench_target(plan_target: str | None = None) -> str:
    """The target every PyTensor variant is compiled for: the plan's backend (numba by
    default) with the suite's thread count, so that all variants use the same threads."""
    from autotune.targets import Target, check_available, parse_target

    n = threads()
    if plan_target:
        try:
            t = parse_target(plan_target)
            return check_available(Target(t.backend, n, t.device)).name
        except Exception:  # noqa: BLE001 - unavailable here: numba
            pass
    return f"numba-t{n}"


class Case:
    """One (problem, size) in a benchmark process: the cached arrays and compiled variants."""

    def __init__(self, cache: dict[str, dict[str, Any]], problem: str, size: str) -> None:
        key = case_key(problem, size)
        if key not in cache:
            raise NotImplementedError(f"no {size} case for {problem}")  # asv: skipped
        from threadpoolctl import threadpool_limits

        from autotune.spec import load_problem

        entry = cache[key]
        self.entry = entry
        self.problem = load_problem(entry["problem"])
        self.dims = entry["dims"]
        self.args = entry["args"]
        self.reference = entry["reference"]
        self.outputs = list(self.problem.outputs)
        self._limits = [threadpool_limits(limits=threads(), user_api="blas")]

    def close(self) -> None:
        for limits in reversed(self._limits):
            limits.restore_original_limits()
        self._limits.clear()

    def warm(self, fn):
        """Call once (numba compiles on the first call), then limit the threads again: a
        BLAS the call loaded (PyTensor's C backend) is limited too."""
        from threadpoolctl import threadpool_limits

        fn(*self.args)
        self._limits.append(threadpool_limits(limits=threads(), user_api="blas"))
        return fn

    def plan(self):
        """The plan's knobs compiled at this case's sizes: the stored plan of these sizes
        (or of the nearest sizes: its knobs, re-derived here), else the flop-optimal
        candidate."""
        from autotune.compare import compile_knobs

        e = self.entry
        return self.warm(compile_knobs(self.problem, e["plan_knobs"], self.dims,
                                       bench_target(e["plan_target"])))

    def naive(self):
        from autotune.compare import compile_knobs
        from autotune.space import named_point

        knobs = named_point(self.problem, "naive", self.dims)
        return self.warm(compile_knobs(self.problem, knobs, self.dims, bench_target()))

    def numpy_as_written(self):
        from autotune.compare import build_numpy

        return self.warm(build_numpy(self.problem, self.dims, "inv"))

    def scipy_expert(self):
        from autotune.compare import expert_function

        return self.warm(expert_function(self.problem))

    def error(self, fn) -> float:
        from autotune.compare import max_relative_error

        return max_relative_error(fn(*self.args), self.reference, self.outputs,
                                  self.problem.stored)

    def ratio(self, slow, fast, rounds: int = 5) -> float:
        """median(slow) / median(fast), timed interleaved in this process."""
        a, b = [], []
        for _ in range(rounds):
            t = time.perf_counter()
            slow(*self.args)
            a.append(time.perf_counter() - t)
            t = time.perf_counter()
            fast(*self.args)
            b.append(time.perf_counter() - t)
        return statistics.median(a) / statistics.median(b)
