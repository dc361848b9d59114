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

The evaluators here are shared with the asv suite in ``benchmarks/``.
"""

from __future__ import annotations

from .targets import configure_environment

configure_environment()  # before pytensor is imported (PyTensor's BLAS flags, thread pools)

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Mapping, Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from .errors import AutotuneError  # noqa: E402
from .evaluators import Function, build_jax, build_numpy, jax_available  # noqa: E402
from .experts import EXPERTS, expert_function  # noqa: E402
from .spec import Problem, load_problem  # noqa: E402

__all__ = [
    "VARIANTS",
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

#: Variant key -> the name shown in tables and plots (in the order they are timed).
VARIANTS: dict[str, str] = {
    "numpy": "NumPy as written",
    "solve": "numpy.linalg.solve",
    "scipy": "SciPy expert",
    "naive": "direct SymPy→PyTensor",
    "pytensor": "PyTensor's own rewrites",
    "seed-2x2": "2013 2×2 blocked",
    "jax": "JAX jit as written",
    "plan": "tuned plan",
}
LIMIT = "limit"
LIMIT_LABEL = "physical limit"

#: The comparison's cases: (problem, free-dimension overrides). Kalman at three sizes, every
#: other shipped problem at one realistic size (GLS a bit below its default so that the
#: whole comparison stays within about ten minutes on two cores).
DEFAULT_CASES: tuple[tuple[str, dict[str, int]], ...] = (
    ("kalman", {"n": 1000}),
    ("kalman", {"n": 2000}),
    ("kalman", {"n": 4000}),
    ("gls", {"n": 2000}),
    ("tikhonov", {"n": 2000}),
    ("mmse", {"n": 1000}),
    ("enkf", {"n": 4000, "N": 200}),
)
#: ``--quick``: tiny sizes, for tests and smoke runs.
QUICK_CASES: tuple[tuple[str, dict[str, int]], ...] = (
    ("kalman", {"n": 200}),
    ("gls", {"n": 200}),
    ("tikhonov", {"n": 200}),
    ("mmse", {"n": 100}),
    ("enkf", {"n": 200, "N": 20}),
)



# ---------------------------------------------------------------------------------------------
# PyTensor candidates and plans
# ---------------------------------------------------------------------------------------------


def compile_knobs(problem: Problem, knobs: Mapping[str, Any], dims: Mapping[str, int],
                  target: str, rewrites: str = "chosen") -> Function:
    """Derive the candidate ``knobs`` at ``dims``, lower it and compile it for ``target``
    (e.g. ``numba-t2``); returns the compiled function (``fn(*inputs) -> outputs``; numba
    compiles on the first call). ``rewrites="pytensor"`` lets PyTensor's own rewrites
    re-decide the kernels (:func:`autotune.targets.compile_function`)."""
    from .derive import derive
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
                       names: Sequence[str]) -> float:
    """The largest relative Frobenius error over the outputs (inf for a non-finite one)."""
    from .reference import relative_error

    return max(relative_error(np.asarray(o), reference[n])
               for n, o in zip(names, outputs, strict=True))


# ---------------------------------------------------------------------------------------------
# The comparison
# ---------------------------------------------------------------------------------------------


@dataclass
class VariantResult:
    key: str
    label: str
    samples: list[float] = field(default_factory=list)
    error: float | None = None
    ok: bool = False
    message: str = ""
    detail: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "label": self.label, "samples": self.samples,
                "median": self.median, "error": _finite(self.error), "ok": self.ok,
                "message": self.message, "detail": self.detail}


@dataclass
class Case:
    problem: str
    dims: dict[str, int]
    threads: int
    variants: dict[str, VariantResult] = field(default_factory=dict)
    tolerance: float = 0.0
    flops: float | None = None
    limit_s: float | None = None
    plan: str = ""
    plan_target: str = ""
    min_flops: float | None = None  # the fewest FLOPs of any candidate (flop-optimal point)
    dgemm_samples: list[float] = field(default_factory=list)  # interleaved with the variants
    dgemm_gflops: float | None = None
    limit_note: str = ""

    @property
    def title(self) -> str:
        return f"{self.problem} " + ", ".join(f"{k}={v}" for k, v in self.dims.items())

    def time(self, key: str) -> float | None:
        if key == LIMIT:
            return self.limit_s
        v = self.variants.get(key)
        return v.median if v is not None and v.ok else None

    def to_json(self) -> dict[str, Any]:
        return {"problem": self.problem, "dims": self.dims, "threads": self.threads,
                "tolerance": self.tolerance, "flops": self.flops, "limit_s": self.limit_s,
                "plan": self.plan, "plan_target": self.plan_target,
                "min_flops": self.min_flops, "dgemm_samples": self.dgemm_samples,
                "dgemm_gflops": self.dgemm_gflops, "limit_note": self.limit_note,
                "variants": {k: v.to_json() for k, v in self.variants.items()}}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Case:
        case = cls(d["problem"], dict(d["dims"]), int(d["threads"]),
                   tolerance=d.get("tolerance", 0.0), flops=d.get("flops"),
                   limit_s=d.get("limit_s"), plan=d.get("plan", ""),
                   plan_target=d.get("plan_target", ""), min_flops=d.get("min_flops"),
                   dgemm_samples=list(d.get("dgemm_samples", [])),
                   dgemm_gflops=d.get("dgemm_gflops"), limit_note=d.get("limit_note", ""))
        for k, v in d.get("variants", {}).items():
            case.variants[k] = VariantResult(
                k, v["label"], list(v["samples"]), v.get("error"), v["ok"],
                v.get("message", ""), v.get("detail", ""))
        return case


def _finite(x: float | None) -> float | None:
    return x if x is None or math.isfinite(x) else None


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


def _build_variants(problem: Problem, dims: dict[str, int], case: Case, out: Path,
                    trials: int, tune_timeout: float, want: Sequence[str],
                    quiet: bool, heap: str = "retain") -> dict[str, Function]:
    from .api import load_plan
    from .derive import derive
    from .space import named_point

    target = f"numba-t{case.threads}"
    fns: dict[str, Function] = {}
    for key in want:
        res = VariantResult(key, VARIANTS[key])
        case.variants[key] = res
        try:
            if key == "numpy":
                fns[key] = build_numpy(problem, dims, "inv")
            elif key == "solve":
                fns[key] = build_numpy(problem, dims, "solve")
            elif key == "scipy":
                fns[key] = expert_function(problem)
            elif key in ("naive", "seed-2x2"):
                fns[key] = compile_knobs(problem, named_point(problem, key, dims), dims, target)
                res.detail = target
            elif key == "pytensor":
                fns[key] = compile_knobs(problem, named_point(problem, "naive", dims), dims,
                                         target, rewrites="pytensor")
                res.detail = target
            elif key == "jax":
                if not jax_available():
                    res.message = "jax is not installed"
                    continue
                fns[key] = build_jax(problem, dims)
                res.detail = "XLA CPU thread pool"
            elif key == "plan":
                path, how = _tuned_plan(problem, dims, out, trials, tune_timeout,
                                        case.threads, quiet, heap)
                if path is None:
                    knobs = named_point(problem, "flop-optimal", dims)
                    fns[key] = compile_knobs(problem, knobs, dims, target)
                    case.plan, case.plan_target = "flop-optimal (no plan, no tuning budget)", target
                else:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        tf = load_plan(path, check_finite=False, check_properties=False,
                                       heap=heap)
                    knobs = tf.plan.params
                    # the compiled function itself: the plan's per-call input checks are not
                    # part of the computation (NumPy's variants do none either)
                    raw = tf.function if tf.target.backend in ("numba", "c") else tf
                    fns[key] = raw
                    case.plan, case.plan_target = f"{Path(path).name} ({how})", tf.target.name
                res.detail = case.plan_target
                case.flops = derive(problem, knobs, dims).flops(dims)
        except Exception as exc:  # noqa: BLE001 - a variant that cannot be built is reported
            res.message = f"not built: {_short(exc)}"
            fns.pop(key, None)
    return fns


def _run_case(problem: Problem, overrides: Mapping[str, int], out: Path, threads: int,
              repeats: int, trials: int, tune_timeout: float, want: Sequence[str],
              rate: float, seed: int, quiet: bool, heap: str = "retain",
              dgemm_n: int = 2000) -> Case:
    from threadpoolctl import threadpool_limits

    from .instances import random_instance
    from .reference import evaluate_reference, tolerance

    dims = problem.resolve_dims(overrides)
    case = Case(problem.name, dims, threads)
    _log(quiet, f"{case.title}: building")
    values = random_instance(problem, dims, seed=seed)
    args = [values[n] for n in problem.inputs]
    ref = evaluate_reference(problem, values, dims)
    case.tolerance = tolerance("float64", ref.condition, max(dims.values()))
    fns = _build_variants(problem, dims, case, out, trials, tune_timeout, want, quiet, heap)
    names = list(problem.outputs)
    try:  # the limit counts the fewest FLOPs any candidate needs, not the plan's own
        from .derive import derive
        from .space import named_point

        case.min_flops = derive(problem, named_point(problem, "flop-optimal", dims),
                                dims).flops(dims)
    except Exception:  # noqa: BLE001 - then the plan's FLOPs stand in
        case.min_flops = None
    rng = np.random.default_rng(seed)
    ga, gb = rng.standard_normal((dgemm_n, dgemm_n)), rng.standard_normal((dgemm_n, dgemm_n))
    gc = np.empty_like(ga)
    jax_args = None
    if "jax" in fns:
        import jax

        jax_args = [jax.device_put(np.asarray(a)) for a in args]
    with threadpool_limits(limits=threads, user_api="blas"):
        # warm-up (compiles the lazy backends) and the accuracy check
        for key in list(fns):
            res = case.variants[key]
            outs = None
            try:
                outs = fns[key](*(jax_args if key == "jax" else args))
                res.error = max_relative_error(outs, ref.outputs, names)
                res.ok = True
                if not res.error <= case.tolerance:
                    res.message = (f"relative error {res.error:.1e} above the tolerance "
                                   f"{case.tolerance:.1e}")
            except Exception as exc:  # noqa: BLE001
                res.message = f"failed: {_short(exc)}"
                del fns[key]
            del outs
        _log(quiet, f"{case.title}: timing {', '.join(fns)} ({repeats} rounds)")
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
    if case.dgemm_samples:  # the rate of this case's own rounds (the machine drifts):
        # the least disturbed of them, the practical peak
        rate = 2.0 * dgemm_n**3 / min(case.dgemm_samples)
    flops = min(f for f in (case.flops, case.min_flops) if f) if case.flops else None
    rate = _possible_rate(case, flops, rate, dgemm_n, threads)
    case.dgemm_gflops = rate / 1e9 if rate > 0 else None
    if flops and rate > 0:
        case.limit_s = flops / rate
    return case


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
        cases.append(_run_case(problem, overrides, out, threads, repeats, trials, tune_timeout,
                               want, rate, seed, quiet, heap, dgemm_n))
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
# Reports
# ---------------------------------------------------------------------------------------------


def _fmt_time(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    if x < 1e-3:
        return f"{x * 1e6:.0f} µs"
    if x < 1:
        return f"{x * 1e3:.1f} ms"
    return f"{x:.2f} s"


def _fmt_ratio(x: float | None, y: float | None) -> str:
    if x is None or y is None or not y:
        return "-"
    return f"{x / y:.2f}×"


def _cases(results: Mapping[str, Any] | str | Path) -> tuple[dict[str, Any], list[Case]]:
    if isinstance(results, (str, Path)):
        p = Path(results)
        if p.is_dir():
            p = p / "benchmarks.json"
        try:
            results = json.loads(p.read_text())
        except FileNotFoundError:
            raise AutotuneError(f"{p}: no comparison results; run 'python -m "
                                "autotune.compare' first") from None
    assert isinstance(results, Mapping)
    return dict(results), [Case.from_json(c) for c in results["cases"]]


def _machine_lines(results: Mapping[str, Any]) -> list[str]:
    m = results.get("machine", {})
    blas = ", ".join(
        f"{b.get('internal_api')} {b.get('version')}"
        + (f" ({b['architecture']})" if b.get("architecture") else "")
        for b in m.get("blas", [])
    ) or "-"
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items() if v)
    return [
        f"- CPU: {m.get('cpu_model', '?')} ({m.get('logical_cores', '?')} logical cores, "
        f"{m.get('usable_cores', '?')} usable); {m.get('platform', '')}",
        f"- BLAS: {blas}",
        f"- Software: {versions}",
        f"- Threads: {results['threads']} BLAS thread(s) for every variant (threadpoolctl); "
        "JAX uses XLA's own CPU thread pool",
        f"- DGEMM: {results['dgemm_gflops']:.1f} GFLOP/s at the start (float64, n = "
        f"{results['dgemm_n']}, same thread count); each case also times it in its own "
        "rounds, and its limit uses that rate",
        f"- Memory: heap policy `{results.get('heap', 'system')}` for every variant ("
        + ("big temporaries keep their pages between calls; see `autotune/memory.py`"
           if results.get("heap") == "retain" else "the C library's default") + ")",
        f"- Date: {results['date']}",
    ]


def write_markdown(results: Mapping[str, Any] | str | Path, path: str | Path) -> Path:
    """``BENCHMARKS.md``: the machine, the method, and one table per problem and size."""
    res, cases = _cases(results)
    lines = ["# Benchmarks: the tuned plan against the usual ways to write it", ""]
    if res.get("quick"):
        lines += ["**Quick run (tiny sizes): a smoke test, not a measurement to quote.**", ""]
    lines += _machine_lines(res)
    lines += [
        "",
        "Every variant runs on the same random instance and is checked against an "
        "independent float64 reference (NumPy/SciPy with LU solves, right to left). Times "
        f"are the median of {res.get('repeats', 3)} calls after one warm-up call, measured "
        "interleaved (A B C ... DGEMM A B C ... DGEMM) in one process. *× plan* is the time "
        "over the tuned plan's; *× limit* over the physical limit: the fewest FLOPs of any "
        "candidate autotune derives (its `flop-optimal` point, or the plan's if fewer) at the "
        "DGEMM rate measured in the same rounds. Regenerate with `python -m autotune.compare`.",
        "",
        "| variant | what it is |",
        "| --- | --- |",
        "| NumPy as written | the formula in NumPy: `np.linalg.inv`, products left to right, "
        "nothing shared |",
        "| numpy.linalg.solve | the same with `inv(A) @ X` as `np.linalg.solve(A, X)`, right "
        "to left |",
        "| SciPy expert | hand-written: Cholesky, triangular solves, rank-k updates, shared "
        "factors |",
        "| direct SymPy→PyTensor | the `naive` named point compiled with PyTensor/Numba as "
        "written: explicit inverses, nothing shared, PyTensor's kernel-choosing rewrites "
        "excluded (the 2013 SymPy + Theano translation) |",
        "| PyTensor's own rewrites | the same graph with the declared assumptions, compiled "
        "with PyTensor's default rewrites (inverses become Cholesky/LU solves, duplicates "
        "merged): what a PyTensor user gets |",
        "| 2013 2×2 blocked | the `seed-2x2` named point: halves of every operand |",
        "| JAX jit as written | the formula in `jax.numpy` under `jax.jit` |",
        "| tuned plan | the plan autotune found (`results/plan-*.json`) |",
        "| physical limit | the fewest FLOPs at the DGEMM rate of the same rounds |",
    ]
    for case in cases:
        plan_t = case.time("plan")
        lines += ["", f"## {case.title}", ""]
        if case.plan:
            flops = f"; {case.flops / 1e9:.2f} GFLOP" if case.flops else ""
            if case.min_flops:
                flops += f" (fewest of any candidate: {case.min_flops / 1e9:.2f} GFLOP)"
            rate = (f"; DGEMM {case.dgemm_gflops:.1f} GFLOP/s in these rounds"
                    if case.dgemm_gflops else "")
            lines += [f"Plan: {case.plan}, target {case.plan_target}{flops}{rate}; accuracy "
                      f"tolerance {case.tolerance:.1e}.", ""]
        lines += ["| variant | time | × plan | × limit | rel. error |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for key, v in case.variants.items():
            t = case.time(key)
            if t is None:
                lines.append(f"| {v.label} | {v.message or 'failed'} | - | - | - |")
                continue
            err = "-" if v.error is None else f"{v.error:.1e}"
            if v.message:
                err += f" ({v.message})"
            name = f"**{v.label}**" if key == "plan" else v.label
            lines.append(f"| {name} | {_fmt_time(t)} | {_fmt_ratio(t, plan_t)} | "
                         f"{_fmt_ratio(t, case.limit_s)} | {err} |")
        if case.limit_note:
            lines += [f"| {LIMIT_LABEL} | {case.limit_note} | - | - | - |"]
            continue
        lines.append(f"| {LIMIT_LABEL} | {_fmt_time(case.limit_s)} | "
                     f"{_fmt_ratio(case.limit_s, plan_t)} | "
                     f"{'1.00×' if case.limit_s else '-'} | - |")
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def plot(results: Mapping[str, Any] | str | Path, path: str | Path) -> Path:
    """Grouped bars: time per variant (and the physical limit) per problem and size, on a
    log scale. Written with matplotlib's Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res, cases = _cases(results)
    keys = [k for k in VARIANTS if any(c.time(k) for c in cases)]
    if any(c.limit_s for c in cases):
        keys.append(LIMIT)
    width = 0.8 / max(1, len(keys))
    fig, ax = plt.subplots(figsize=(max(7.5, 1.4 * len(cases) + 4.0), 4.8))
    colors = plt.get_cmap("tab10")
    for j, key in enumerate(keys):
        xs, ys = [], []
        for i, c in enumerate(cases):
            t = c.time(key)
            if t:
                xs.append(i + (j - (len(keys) - 1) / 2) * width)
                ys.append(t)
        label = LIMIT_LABEL if key == LIMIT else VARIANTS[key]
        style = {"hatch": "//", "edgecolor": "black", "fill": False} if key == LIMIT else {
            "color": colors(j % 10)}
        ax.bar(xs, ys, width, label=label, **style)
    ax.set_yscale("log")
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([c.title.replace(" ", "\n", 1) for c in cases], fontsize=8)
    ax.set_ylabel("time per call (s, log scale)")
    threads = res.get("threads")
    cpu = res.get("machine", {}).get("cpu_model", "")
    ax.set_title(f"autotune: the plan vs the usual ways ({threads} thread(s), {cpu})",
                 fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


HEADLINE_KEYS = ("numpy", "naive", "scipy", "plan", LIMIT)


def headline(results: Mapping[str, Any] | str | Path = "results", problem: str = "kalman",
             dims: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The row the README quotes: NumPy as written, direct SymPy→PyTensor, SciPy expert,
    the plan and the physical limit for Kalman n = 4000 (by default; the largest Kalman
    case when n = 4000 was not measured). ``results``: the dict :func:`compare` returns, or
    its ``benchmarks.json`` (or the folder holding it)."""
    res, cases = _cases(results)
    want = dict(dims or {"n": 4000})
    mine = [c for c in cases if c.problem == problem]
    if not mine:
        raise AutotuneError(f"no {problem} case in the comparison results")
    exact = [c for c in mine if all(c.dims.get(k) == v for k, v in want.items())]
    case = exact[0] if exact else max(mine, key=lambda c: max(c.dims.values()))
    times = {k: case.time(k) for k in HEADLINE_KEYS}
    plan_t = times["plan"]
    return {
        "problem": case.problem, "dims": case.dims, "threads": case.threads,
        "cpu_model": res.get("machine", {}).get("cpu_model"),
        "times": times,
        "labels": {k: (LIMIT_LABEL if k == LIMIT else VARIANTS[k]) for k in HEADLINE_KEYS},
        "speedup_of_plan": {k: (t / plan_t if t and plan_t else None)
                            for k, t in times.items() if k != "plan"},
    }


def format_headline(row: Mapping[str, Any]) -> str:
    """One Markdown table (header + row) of :func:`headline`, for the README."""
    labels, times = row["labels"], row["times"]
    sizes = ", ".join(f"{k} = {v}" for k, v in row["dims"].items())
    head = "| " + " | ".join([f"{row['problem']} ({sizes})", *labels.values()]) + " |"
    sep = "| --- |" + " ---: |" * len(labels)
    cells = []
    for k in labels:
        t = times[k]
        s = row["speedup_of_plan"].get(k)
        cells.append(_fmt_time(t) + (f" ({s:.1f}×)" if s and k != LIMIT else ""))
    body = f"| {row['threads']} thread(s), {row.get('cpu_model') or '?'} | " + " | ".join(
        cells) + " |"
    return "\n".join([head, sep, body])


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
