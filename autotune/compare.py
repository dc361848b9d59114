"""The peer comparison: the tuned plan against what people write by hand, in one run.

For each problem and size, every variant is built, checked against the float64 reference
(:func:`autotune.reference.evaluate_reference`) and then timed *side by side*: after one
warm-up call each, the variants are called interleaved (A B C ... A B C ...) for ``repeats``
rounds under one BLAS thread limit (threadpoolctl), and the median is reported. The variants:

``numpy``     "NumPy as written": the SymPy formula evaluated with NumPy, explicit
              ``np.linalg.inv``, products left to right, nothing shared (:func:`build_numpy`)
``solve``     "numpy.linalg.solve": the same, but ``inv(A)*X`` is ``np.linalg.solve(A, X)``
              and products are evaluated right to left
``scipy``     "SciPy expert": a hand-written Cholesky/triangular-solve version per problem
              (:data:`EXPERTS`)
``naive``     "direct SymPy→PyTensor": the ``naive`` named point derived and compiled with
              PyTensor (Numba) as written -- explicit inverses, nothing shared, PyTensor's
              kernel-choosing rewrites excluded (:mod:`autotune.pinned`) -- what the 2013
              SymPy + Theano translation did
``pytensor``  "PyTensor's own rewrites": the same graph with the declared assumptions,
              compiled with PyTensor's default rewrites (they turn the inverses into
              Cholesky or LU solves and share duplicates): what a PyTensor user gets
``seed-2x2``  "2013 2×2 blocked": the ``seed-2x2`` named point
``jax``       "JAX jit as written": the generic evaluator with ``jax.numpy`` under
              ``jax.jit`` (when jax is installed; XLA keeps its own CPU thread pool)
``plan``      "tuned plan": :func:`autotune.find_plan` in ``out``, or one tuned now with a
              small budget (:func:`autotune.runner.run_tuning`)
``limit``     "physical limit": the plan's FLOP count divided by the DGEMM rate measured in
              the same run with the same thread count

:func:`compare` writes ``BENCHMARKS.md`` (machine, date, one table per problem and size),
``benchmarks.json`` (the raw samples) and ``benchmarks.png`` (grouped bars, log scale);
:func:`headline` returns the row the README quotes (Kalman, n = 4000).
Run ``python -m autotune.compare [--quick] [--out DIR]``.

This module runs the comparison (:func:`compare`, one case at a time) and its command line;
the variants are built in :mod:`autotune.comparison_variants`, the records are
:mod:`autotune.comparison_cases` and the report :mod:`autotune.comparison_report`; every
public name of those is importable from here.

The evaluators (:mod:`autotune.evaluators`) and the experts (:mod:`autotune.experts`) are
shared with the asv suite in ``benchmarks/``.
"""

from __future__ import annotations

from .targets import configure_environment

configure_environment()  # before pytensor is imported (PyTensor's BLAS flags, thread pools)

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from collections.abc import Mapping, Sequence  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from .comparison_cases import (  # noqa: E402
    DEFAULT_CASES,
    LIMIT,
    LIMIT_LABEL,
    QUICK_CASES,
    VARIANTS,
    Case,
    VariantResult,
)
from .comparison_report import format_headline, headline, plot, write_markdown  # noqa: E402
from .comparison_timing import measure_case  # noqa: E402
from .comparison_variants import (  # noqa: E402
    _log,
    compile_knobs,
    max_relative_error,
    plan_knobs,
)
from .errors import AutotuneError  # noqa: E402
from .evaluators import build_jax, build_numpy, jax_available  # noqa: E402
from .experts import EXPERTS, expert_function  # noqa: E402
from .spec import Problem, load_problem  # noqa: E402

__all__ = [
    "VARIANTS",
    "LIMIT",
    "LIMIT_LABEL",
    "EXPERTS",
    "DEFAULT_CASES",
    "QUICK_CASES",
    "Case",
    "VariantResult",
    "build_numpy",
    "build_jax",
    "jax_available",
    "expert_function",
    "compile_knobs",
    "plan_knobs",
    "max_relative_error",
    "compare",
    "headline",
    "format_headline",
    "write_markdown",
    "plot",
    "main",
]


def compare(problems_and_sizes: Sequence[tuple[str | Problem, Mapping[str, int]]] | None = None,
            out: str | Path = "results", trials: int = 10, quick: bool = False,
            tune_timeout: float = 90.0, repeats: int = 3, threads: int | None = None,
            variants: Sequence[str] | None = None, seed: int = 0, dgemm_n: int | None = None,
            quiet: bool = False, heap: str = "retain") -> dict[str, Any]:
    """Measure every variant side by side for each (problem, dims) and write the report.

    ``problems_and_sizes``: pairs of a problem (name or :class:`Problem`) and its dimension
    overrides; default :data:`DEFAULT_CASES` (:data:`QUICK_CASES` with ``quick``).
    ``trials``/``tune_timeout``: the budget of a tuning run for a case without a stored
    plan in ``out`` (``trials=0``: use the flop-optimal candidate instead). ``repeats``
    (at least 3) interleaved rounds after one warm-up; ``threads``: BLAS threads (default:
    every usable core). ``variants``: a subset of :data:`VARIANTS`. ``heap``: the heap policy
    of this process (:mod:`autotune.memory`), the same for every variant and for the tuning
    of a case without a plan.

    Writes ``out/BENCHMARKS.md``, ``out/benchmarks.json`` and ``out/benchmarks.png``;
    returns the results (``{"machine", "date", "threads", "dgemm_gflops", "cases", "paths"}``).
    """
    from .measure import dgemm_rate
    from .memory import check_heap_policy, set_heap_policy
    from .targets import cpu_threads, machine_fingerprint

    configure_environment()
    heap = check_heap_policy(heap)
    heap_applied = set_heap_policy(heap)
    if repeats < 3:
        raise ValueError(f"repeats must be at least 3 (the median of 3 or more), got {repeats}")
    want = list(VARIANTS) if variants is None else list(variants)
    unknown = [v for v in want if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; variants: {', '.join(VARIANTS)}")
    if problems_and_sizes is None:
        problems_and_sizes = QUICK_CASES if quick else DEFAULT_CASES
    threads = threads or cpu_threads()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if dgemm_n is None:
        dgemm_n = 512 if quick else 2000
    _log(quiet, f"DGEMM rate, n={dgemm_n}, {threads} thread(s)")
    rate = dgemm_rate(dgemm_n, f"numba-t{threads}")  # NumPy's BLAS under the thread limit
    cases = []
    for prob, overrides in problems_and_sizes:
        problem = prob if isinstance(prob, Problem) else load_problem(prob)
        cases.append(measure_case(problem, overrides, out, threads, repeats, trials,
                                  tune_timeout, want, rate, seed, quiet, heap, dgemm_n))
    results: dict[str, Any] = {
        "machine": machine_fingerprint(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "threads": threads,
        "repeats": repeats,
        "quick": quick,
        "dgemm_n": dgemm_n,
        "dgemm_gflops": rate / 1e9,
        "heap": heap if heap_applied else "system",
        "cases": [c.to_json() for c in cases],
    }
    json_path = out / "benchmarks.json"
    json_path.write_text(json.dumps(results, indent=1, sort_keys=True, allow_nan=False) + "\n")
    md = write_markdown(results, out / "BENCHMARKS.md")
    png = plot(results, out / "benchmarks.png")
    results["paths"] = {"markdown": str(md), "json": str(json_path), "png": str(png)}
    return results


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _parse_case(text: str) -> tuple[str, dict[str, int]]:
    name, _, rest = text.partition(":")
    dims: dict[str, int] = {}
    for item in filter(None, rest.split(",")):
        k, sep, v = item.partition("=")
        if not sep or not v.strip().isdigit():
            raise argparse.ArgumentTypeError(
                f"--case {text!r}: expected PROBLEM[:DIM=VALUE,...], e.g. kalman:n=1000")
        dims[k.strip()] = int(v)
    return name.strip(), dims


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m autotune.compare",
        description="Measure the tuned plans against NumPy, SciPy, naive PyTensor and JAX, "
        "side by side, and write BENCHMARKS.md and benchmarks.png.")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes (n about 200): a smoke test")
    parser.add_argument("--out", default="results", type=Path,
                        help="folder of the plans and the report (default: results)")
    parser.add_argument("--case", action="append", type=_parse_case, default=None,
                        metavar="PROBLEM[:DIM=V,...]",
                        help="a case to measure (repeatable), e.g. kalman:n=1000")
    parser.add_argument("--trials", type=int, default=10,
                        help="tuning budget when no plan is stored (0: flop-optimal)")
    parser.add_argument("--tune-timeout", type=float, default=90.0,
                        help="seconds of tuning per case without a plan")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (>= 3)")
    parser.add_argument("--threads", type=int, default=None, help="BLAS threads")
    parser.add_argument("--heap", choices=["retain", "system"], default="retain",
                        help="heap policy of the process, for every variant (default: retain)")
    parser.add_argument("--quiet", action="store_true")
    a = parser.parse_args(argv)
    try:
        res = compare(a.case, out=a.out, trials=a.trials, quick=a.quick,
                      tune_timeout=a.tune_timeout, repeats=a.repeats, threads=a.threads,
                      quiet=a.quiet, heap=a.heap)
    except (AutotuneError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for p in res["paths"].values():
        print(p)
    try:
        print(format_headline(headline(res)))
    except AutotuneError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
