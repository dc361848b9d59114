"""Re-checking a stored plan on this machine: ``autotune verify PLAN``.

What a user does after moving a plan to another machine or upgrading a library: the plan is
re-derived from its stored problem and knobs, checked against the float64 reference, and
re-timed side by side with its baselines (NumPy as written, the naive translation,
PyTensor's own rewrites, the flop-optimal candidate) and a GEMM, interleaved, in a worker
under the plan's heap policy -- the final round of a tuning run (:mod:`autotune.contest`).

The plan *holds* when it is still accurate, no candidate baseline is significantly faster
than it (LAAB's rule over the paired rounds), and its ratio to the physical limit is a
possible figure. Otherwise the verdict says what to do (re-tune, with the command).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .contest import Entry, run_final_round
from .errors import AutotuneError, PlanError
from .measure import Job, Measurement, TimingPolicy, Worker
from .stats import limit_ratio, significantly_faster
from .units import format_seconds as _t

__all__ = ["Verification", "verify_plan", "write_markdown"]

#: Baselines re-timed next to the plan: name -> (named point, variant).
BASELINES = {
    "numpy": ("naive", "numpy"),
    "naive": ("naive", "candidate"),
    "pytensor": ("naive", "pytensor"),
    "flop-optimal": ("flop-optimal", "candidate"),
}


@dataclass
class Verification:
    path: str
    holds: bool
    reasons: list[str]
    stored_median: float
    median: float
    samples: list[float]
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    gemm_gflops: float | None = None
    limit_ratio: float | None = None
    stored_limit_ratio: float | None = None
    errors: dict[str, float] = field(default_factory=dict)
    machine_differences: list[str] = field(default_factory=list)
    rounds: int = 0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def verify_plan(path: str | Path, repeats: int = 5, timeout: float = 600.0,
                measure: Any = None, dgemm_rate: Any = None,
                derivations: Any = None) -> Verification:
    """Re-time the plan at ``path`` against its baselines on this machine (``repeats``
    interleaved rounds at least). ``measure``/``dgemm_rate``/``derivations`` default to a
    worker process's (a test may inject fakes)."""
    from .api import check_plan
    from .plan import read_plan
    from .targets import check_available

    plan = read_plan(path)
    problem, dims, knobs = check_plan(plan)
    try:
        check_available(plan.target)
    except AutotuneError as exc:
        raise PlanError(f"{path}: the plan's target cannot run here: {exc}") from exc
    if measure is None:
        with Worker(timeout=timeout, heap=plan.heap) as worker:
            return _verify(plan, problem, dims, knobs, repeats, timeout, worker.measure,
                           worker.dgemm_rate, worker)
    return _verify(plan, problem, dims, knobs, repeats, timeout, measure, dgemm_rate,
                   derivations)


def _verify(plan, problem, dims, knobs, repeats, timeout, measure, dgemm_rate,
            derivations) -> Verification:
    from .api import _fingerprint_differences
    from .search import Derivations
    from .targets import machine_fingerprint

    derivations = derivations or Derivations()
    named = derivations.named_points(problem, dims, timeout)
    target = plan.target
    entries = {"plan": Entry(knobs, target, Measurement("ok", target), "plan")}
    for name, (point, variant) in BASELINES.items():
        entries[name] = Entry(named[point], target, Measurement("ok", target), name, variant)
    src = (problem.source, problem.origin)
    seed = int(plan.content.get("accuracy", {}).get("seed", 0))

    def job_for(e: Entry, policy: TimingPolicy) -> Job:
        return Job(*src, dims, e.knobs, e.target, plan.dtype, seed, policy, variant=e.variant)

    def gemm(t: str) -> float:
        try:
            return float(dgemm_rate(max(dims.values()), t, dtype=plan.dtype))
        except AutotuneError:
            return math.nan

    contest = run_final_round(entries, measure, job_for, timeout,
                              gemm=gemm if dgemm_rate else None, clock=time.monotonic,
                              min_rounds=repeats, max_rounds=repeats)
    v = _verdict(plan, entries, contest)
    v.machine_differences = _fingerprint_differences(plan.content.get("machine", {}),
                                                     machine_fingerprint())
    return v


def _verdict(plan, entries, contest) -> Verification:
    c = plan.content
    m = entries["plan"].measurement
    samples = contest.samples.get("plan", [])
    reasons: list[str] = []
    if not m.ok or not samples:
        reasons.append(f"the plan does not run correctly here: {m.status}: {m.message}")
    median = statistics.median(samples) if samples else math.inf
    baselines = {}
    for name in BASELINES:
        e, s = entries[name], contest.samples.get(name, [])
        med = statistics.median(s) if s else None
        stored = c.get("baselines", {}).get(name, {}).get("median")
        faster = bool(s and samples and significantly_faster(s, samples, paired=True))
        baselines[name] = {"median": med, "stored_median": stored, "status": e.measurement.status,
                           "speedup": med / median if med and samples else None,
                           "significantly_faster_than_plan": faster}
        if faster and e.variant == "candidate":
            reasons.append(f"the {name} baseline is now significantly faster than the plan "
                           f"({med:.4g} s against {median:.4g} s): re-tune it")
    rates = [r for r in contest.rates.get(plan.target, []) if math.isfinite(r)]
    rate = max(rates, default=0.0)
    fewest = min(f for f in (c.get("fewest_flops"), c.get("flops"), m.flops) if f) \
        if any((c.get("fewest_flops"), c.get("flops"), m.flops)) else 0.0
    ratio = limit_ratio(median, fewest, rate) if samples else None
    if samples and rate and fewest and ratio is None:
        reasons.append("the GEMM timing put the physical limit above the plan's own time "
                       "(a disturbed measurement): run verify again on a quiet machine")
    return Verification(
        str(plan.path), not reasons, reasons, float(c["timing"]["median"]), median,
        list(samples), baselines, rate / 1e9 if rate else None, ratio, c.get("limit_ratio"),
        dict(m.errors), [], contest.rounds)


def write_markdown(results: list[Verification], path: str | Path) -> Path:
    """The verifications as one markdown table per plan (figures measured side by side)."""
    from datetime import UTC, datetime

    from .targets import machine_fingerprint

    m = machine_fingerprint()
    lines = ["# Stored plans re-checked on this machine (`autotune verify`)", "",
             f"{datetime.now(UTC).isoformat(timespec='seconds')}; CPU: {m.get('cpu_model')}, "
             f"{m.get('usable_cores')} usable cores. Each plan was re-derived from its stored "
             "problem and knobs, checked against the float64 reference, and timed in "
             "interleaved rounds with its baselines and a GEMM, under its heap policy.", ""]
    for v in results:
        verdict = "holds" if v.holds else "does not hold: " + "; ".join(v.reasons)
        limit = f"{v.limit_ratio:.2f}×" if v.limit_ratio else "-"
        stored = f"{v.stored_limit_ratio:.2f}×" if v.stored_limit_ratio else "-"
        lines += [f"## {Path(v.path).name}: {verdict}", "",
                  f"{v.rounds} rounds; × the physical limit now {limit} (stored {stored}); "
                  f"GEMM {v.gemm_gflops or 0:.1f} GFLOP/s in these rounds.", "",
                  "| computation | now | stored | plan's speedup now |",
                  "| --- | ---: | ---: | ---: |"]
        for name, b in v.baselines.items():
            speed = f"{b['speedup']:.2f}×" if b.get("speedup") else b.get("status", "-")
            lines.append(f"| {name} | {_t(b.get('median'))} | {_t(b.get('stored_median'))} | "
                         f"{speed} |")
        lines += [f"| **plan** | {_t(v.median)} | {_t(v.stored_median)} | |", ""]
        for d in v.machine_differences:
            lines.append(f"- tuned elsewhere: {d}")
    out = Path(path)
    out.write_text("\n".join(lines) + "\n")
    return out
