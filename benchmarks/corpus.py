"""The corpus: is autotune's tuned plan, called as a user calls it, as fast as a hand-written
expert, for every problem in ``search_spaces/`` at its default (realistic) size in float64?

Per problem (the five shipped ones, kalman, gls, tikhonov, mmse, enkf, and the application
corpus; :func:`autotune.spec.problem_names`):

1. **Plan**: one of the problem at its default dims in ``--plans`` (default
   ``<out>/corpus-plans``), for the shipped problems also the stored plans in ``results/``
   when their dims are the default ones (:func:`autotune.find_plan`); else one tuned now with
   ``autotune run --problem NAME --dim ... --trials T --timeout S --out PLANS --quiet`` in a
   subprocess (allowed ``S + 300`` s; a failure is a recorded row with the last lines of its
   stderr, and the run goes on). Everything is tuned before anything is timed.
2. **Variants**, on one random instance (:func:`autotune.instances.random_instance`, seed
   ``--seed``): ``plan`` (:func:`autotune.load_plan`, called with the arrays by keyword: as a
   user calls it), ``plan, checks off`` (``check_finite=False, check_properties=False``) and
   ``expert`` (:func:`autotune.experts.expert_function`, the SciPy version a numerical analyst
   writes). Each is called once and checked against the independent float64 reference
   (:mod:`autotune.reference`); one whose relative error is above the tolerance (the largest of
   the plan's stored accuracy tolerance, the tolerance of this instance's conditioning and
   1e-6) is reported as wrong and not timed. That call is also its warm-up (numba compiles
   lazily; the heap grows to its working set).
3. **Timing**: ``--reps`` interleaved rounds, each round every variant once in a new seeded
   random order, ``time.perf_counter`` around the call only; every variant under the same BLAS
   thread count (the plan's target threads, or ``--threads``, which re-targets the plans),
   set with threadpoolctl outside the timed region; the heap policy ``retain``
   (:mod:`autotune.memory`) for all; with one thread the process is pinned to one CPU
   (``--cpu``), as LAAB runs.
4. **Verdicts** (:mod:`autotune.stats`): ratio = median(plan) / median(expert); *slower* by
   LAAB's rule when q75(expert) <= q25(plan) and median(plan) > median(expert); *faster* when
   q75(plan) <= q25(expert) and median(plan) < median(expert). The goal: not significantly
   slower and ratio <= 1.05. The checks cost: median over rounds of (plan - checks off) in the
   same round; its goal: at most 2% of the checks-off median or 20 us, whichever is larger.

Writes ``<out>/CORPUS.md`` and ``<out>/corpus.json`` (every raw sample), after each problem
(an interrupted run keeps what it has). Run from the repository root::

    python -m benchmarks.corpus [--problems gls,wls] [--trials 12] [--timeout 300]
        [--reps 10] [--plans DIR] [--no-tune] [--out results] [--scale F] [--threads T]
"""

from __future__ import annotations

from autotune.targets import configure_environment

configure_environment()  # before numpy's OpenBLAS and PyTensor load

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable, Mapping, Sequence  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from autotune.units import format_seconds as _t  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"
SHIPPED = ("kalman", "gls", "tikhonov", "mmse", "enkf")
DTYPE = "float64"
GOAL_RATIO = 1.05
CHECKS_FRACTION = 0.02
CHECKS_FLOOR_S = 20e-6
MIN_TOLERANCE = 1e-6
#: seconds a tuning subprocess may run beyond its own ``--timeout``
TUNE_GRACE_S = 300.0
#: the timed variants, in table order
VARIANTS = {"plan": "plan (as a user calls it)", "off": "plan, checks off",
            "expert": "SciPy expert"}
#: ops that compute nothing (views, constants): left out of the kernels column
_FREE_OPS = frozenset({"input", "transpose", "slice", "eye", "zeros"})


# -- problems and sizes ------------------------------------------------------------------------


def select_problems(text: str | None) -> list[str]:
    """The problems to run: ``text`` (comma-separated) or every problem in search_spaces/,
    the shipped five first."""
    from autotune.spec import problem_names

    known = problem_names()
    if not text:
        return [p for p in SHIPPED if p in known] + [p for p in known if p not in SHIPPED]
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in names if p not in known]
    if unknown:
        raise SystemExit(f"--problems: unknown {', '.join(unknown)}; known: {', '.join(known)}")
    return names


def problem_dims(name: str, scale: float = 1.0) -> dict[str, int]:
    """The problem's default dims, every free one times ``scale`` (rounded, at least 1); the
    derived ones follow their formulas."""
    from autotune.spec import load_problem

    problem = load_problem(name)
    base = problem.resolve_dims()
    if scale == 1.0:
        return base
    return problem.resolve_dims({d: max(1, round(base[d] * scale)) for d in problem.free_dims})


def _dims_text(dims: Mapping[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in dims.items())


# -- plans ---------------------------------------------------------------------------------------


def find_existing(name: str, dims: Mapping[str, int], plans: Path,
                  stored: bool = True) -> tuple[Path | None, str]:
    """``(path, where it comes from)`` of a float64 plan of ``name`` at exactly ``dims``:
    in ``plans``, then (shipped problems, unless ``stored`` is false) among the stored plans
    in results/."""

    folders = [(plans, f"found in {plans}")]
    if name in SHIPPED and stored:
        folders.append((RESULTS, "stored in results/"))
    for folder, source in folders:
        path = _find(name, dims, folder)
        if path is not None:
            return path, source
    return None, ""


def _find(name: str, dims: Mapping[str, int], folder: Path) -> Path | None:
    import autotune

    if not folder.is_dir():
        return None
    try:
        return autotune.find_plan(name, dict(dims), folder=folder, dtype=DTYPE)
    except autotune.PlanError:
        return None


def tune_command(name: str, dims: Mapping[str, int], trials: int, timeout: float,
                 plans: Path) -> list[str]:
    """``autotune run`` for ``name`` at ``dims`` (its free dims given explicitly)."""
    from autotune.spec import load_problem

    free = load_problem(name).free_dims
    cmd = [sys.executable, "-m", "autotune.cli", "run", "--problem", name]
    for d in free:
        cmd += ["--dim", f"{d}={dims[d]}"]
    return cmd + ["--dtype", DTYPE, "--trials", str(trials), "--timeout", f"{timeout:g}",
                  "--out", str(plans), "--quiet"]


def _tail(text: str | bytes | None, lines: int = 4, limit: int = 600) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    kept = [ln.strip() for ln in (text or "").splitlines() if ln.strip()][-lines:]
    out = " / ".join(kept)
    return out if len(out) <= limit else "..." + out[-limit:]


def tune(name: str, dims: Mapping[str, int], trials: int, timeout: float,
         plans: Path) -> dict[str, Any]:
    """Tune one problem in a subprocess: ``{"ok", "path", "wall_s", "returncode", "reason",
    "command"}`` (``reason``: why it failed, with the last lines of stderr)."""
    plans.mkdir(parents=True, exist_ok=True)
    cmd = tune_command(name, dims, trials, timeout, plans)
    shown = "autotune " + " ".join(cmd[3:])
    print(f"[corpus] tuning {name}: {shown}", file=sys.stderr, flush=True)
    res: dict[str, Any] = {"ok": False, "path": None, "returncode": None, "reason": "",
                           "command": shown}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                              timeout=timeout + TUNE_GRACE_S)
    except subprocess.TimeoutExpired as exc:
        res["wall_s"] = time.perf_counter() - t0
        tail = _tail(exc.stderr)
        res["reason"] = (f"no answer within {timeout + TUNE_GRACE_S:.0f} s (killed)"
                         + (f": {tail}" if tail else ""))
        return res
    res["wall_s"] = time.perf_counter() - t0
    res["returncode"] = proc.returncode
    if proc.returncode != 0:
        tail = _tail(proc.stderr) or _tail(proc.stdout)
        res["reason"] = f"exit status {proc.returncode}" + (f": {tail}" if tail else "")
        return res
    path = _find(name, dims, plans)
    if path is None:
        res["reason"] = f"exit status 0 but no plan at {_dims_text(dims)} in {plans}"
        return res
    res.update(ok=True, path=str(path))
    return res


def new_row(name: str, dims: Mapping[str, int]) -> dict[str, Any]:
    return {"problem": name, "dims": dict(dims), "status": "pending", "reason": "",
            "plan": None, "plan_source": "", "tuning": None, "notes": []}


def obtain_plan(row: dict[str, Any], opts: argparse.Namespace) -> None:
    """Fill in the row's plan: found, tuned now, or the failure with its reason."""
    name, dims = row["problem"], row["dims"]
    path, source = find_existing(name, dims, opts.plans, stored=not opts.no_stored)
    if path is not None:
        row.update(plan=str(path), plan_source=source)
        return
    if opts.no_tune:
        row.update(status="failed", reason=f"no plan at {_dims_text(dims)} in {opts.plans} "
                   "(--no-tune)")
        return
    res = tune(name, dims, opts.trials, opts.timeout, opts.plans)
    row["tuning"] = res
    if res["ok"]:
        row.update(plan=res["path"], plan_source=f"tuned now ({opts.trials} trials, "
                   f"--timeout {opts.timeout:g}, {res['wall_s']:.0f} s)")
    else:
        row.update(status="failed", reason=f"tuning failed: {res['reason']}")
    print(f"[corpus] {name}: {row['plan_source'] or row['reason']}", file=sys.stderr,
          flush=True)


# -- the variants --------------------------------------------------------------------------------


def load(path: Path, checks: bool, threads: int | None) -> tuple[Any, list[str]]:
    """The plan as :func:`autotune.load_plan` loads it (heap ``retain``), with or without its
    checks; with ``threads`` the same plan on ``<backend>-t<threads>`` (its program unchanged).
    Also the warnings loading gave (a plan tuned elsewhere)."""
    from autotune.api import TunedFunction
    from autotune.plan import read_plan

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = read_plan(path)
        if threads is not None:
            content = dict(plan.content)
            target = dict(content["target"])
            target["name"] = re.sub(r"-t\d+$", f"-t{threads}", target["name"])
            target["threads"] = int(threads)
            content["target"] = target
            plan = dataclasses.replace(plan, content=content)
        tf = TunedFunction(plan, check_finite=checks, check_properties=checks, heap="retain")
    return tf, sorted({" ".join(str(w.message).split()) for w in caught})


def build_calls(on: Any, off: Any, x: Mapping[str, Any]) -> dict[str, Callable[[], Any]]:
    """What each variant's call is: the plans with the arrays by keyword, the expert with
    them in declared order. Each returns the outputs in declared order."""
    from autotune.experts import expert_function

    expert = expert_function(on.problem)
    args = [x[n] for n in on.problem.inputs]
    kw = dict(x)
    return {"plan": lambda: on(**kw), "off": lambda: off(**kw), "expert": lambda: expert(*args)}


def check_call(fn: Callable[[], Any], outputs: Sequence[str], ref: Mapping[str, np.ndarray],
               tol: float, stored: Mapping[str, str] | None = None) -> tuple[float, str]:
    """``(relative error, why it is wrong or "")`` of one call of ``fn``."""
    from autotune.reference import relative_error

    try:
        got = fn()
    except Exception as exc:  # noqa: BLE001 - a variant that fails is reported
        return float("inf"), f"failed: {type(exc).__name__}: {' '.join(str(exc).split())}"[:400]
    stored = stored or {}
    err = max(relative_error(np.asarray(o), ref[n], stored.get(n, "full"))
              for n, o in zip(outputs, got, strict=True))
    if err <= tol:
        return err, ""
    return err, f"relative error {err:.1e} above the tolerance {tol:.1e}"


def timed_rounds(calls: Mapping[str, Callable[[], Any]], reps: int,
                seed: int = 0) -> dict[str, list[float]]:
    """``reps`` interleaved rounds: each round every call once, in a new seeded random order;
    ``perf_counter`` around the call only (its result is dropped after the clock stops)."""
    shuffle = random.Random(seed).shuffle
    samples: dict[str, list[float]] = {k: [] for k in calls}
    order = list(calls.items())
    for _ in range(reps):
        shuffle(order)
        for key, fn in order:
            t0 = time.perf_counter()
            res = fn()
            dt = time.perf_counter() - t0
            del res
            samples[key].append(dt)
    return samples


def pin(threads: int, cpu: int | None, allowed: set[int]) -> str:
    """One thread: this process pinned to one CPU (LAAB's ``taskset -c 0``); more: every CPU it
    was allowed at the start. Returns the description."""
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned"
    if threads == 1 and cpu is not None:
        chosen = cpu if cpu in allowed else min(allowed)
        os.sched_setaffinity(0, {chosen})
        return f"pinned to CPU {chosen}"
    os.sched_setaffinity(0, allowed)
    return f"not pinned ({len(allowed)} CPUs allowed)"


# -- one problem ---------------------------------------------------------------------------------


def measure_problem(row: dict[str, Any], opts: argparse.Namespace, allowed: set[int]) -> None:
    """Load, check and time one problem's variants; the row gets samples and verdicts."""
    from threadpoolctl import threadpool_limits

    from autotune.instances import random_instance
    from autotune.reference import evaluate_reference, tolerance

    on, notes = load(Path(row["plan"]), True, opts.threads)
    off, _ = load(Path(row["plan"]), False, opts.threads)
    row["notes"] += [f"loading: {n}" for n in notes]
    threads = int(on.target.threads)
    row.update(target=on.target.name, threads=threads, pinning=pin(threads, opts.cpu, allowed),
               kernels=[op for op in on.program.ops_used() if op not in _FREE_OPS])
    x = random_instance(on.problem, on.dims, seed=opts.seed, dtype=DTYPE)
    x = {k: (np.asarray(v) if np.ndim(v) else v) for k, v in x.items()}
    ref = evaluate_reference(on.problem, x, on.dims)
    stored = float(on.plan.content.get("accuracy", {}).get("tolerance", 0.0))
    here = tolerance(DTYPE, ref.condition, max(on.dims.values()))
    row["tolerance"] = tol = max(stored, here, MIN_TOLERANCE)
    calls = build_calls(on, off, x)
    outputs = list(on.problem.outputs)
    row["errors"], row["wrong"] = {}, {}
    with threadpool_limits(limits=threads, user_api="blas"):
        for key in list(calls):  # the check call is each variant's warm-up
            err, why = check_call(calls[key], outputs, ref.outputs, tol, on.problem.stored)
            row["errors"][key] = err
            if why:
                row["wrong"][key] = why
                del calls[key]
        with threadpool_limits(limits=threads, user_api="blas"):  # a BLAS the calls loaded
            t0 = time.perf_counter()
            row["samples"] = timed_rounds(calls, opts.reps, opts.seed)
            row["timing_wall_s"] = time.perf_counter() - t0
    summarize(row)


def summarize(row: dict[str, Any]) -> None:
    """Medians, quartiles and the verdicts of a timed row."""
    from autotune.stats import quartiles

    s = row["samples"]
    row["medians_s"] = {k: statistics.median(v) for k, v in s.items()}
    row["quartiles_s"] = {k: quartiles(v) for k, v in s.items()}
    row["speed"] = speed_verdict(s["plan"], s["expert"]) if {"plan", "expert"} <= set(s) \
        else None
    row["checks"] = checks_verdict(s["plan"], s["off"]) if {"plan", "off"} <= set(s) else None
    wrong = row.get("wrong", {})
    row["status"] = "wrong" if wrong else "timed"
    if wrong:
        row["reason"] = "; ".join(f"{VARIANTS[k]}: {v}" for k, v in wrong.items())


# -- verdicts ------------------------------------------------------------------------------------


def speed_verdict(plan: Sequence[float], expert: Sequence[float]) -> dict[str, Any]:
    """The plan against the expert: ratio of medians, LAAB's verdict, the 1.05x goal."""
    from autotune.stats import laab_slowdown, quartiles, significantly_faster

    qp, qe = quartiles(plan), quartiles(expert)
    ratio = qp[1] / qe[1]
    slowdown = laab_slowdown(plan, expert)  # > 0: q75(expert) <= q25(plan), median above
    slower = slowdown > 0
    faster = significantly_faster(plan, expert)
    verdict = "faster" if faster else ("slower" if slower else "no difference")
    return {"ratio": ratio, "verdict": verdict, "laab_slowdown": slowdown,
            "goal_met": (not slower) and ratio <= GOAL_RATIO}


def checks_verdict(on: Sequence[float], off: Sequence[float]) -> dict[str, Any]:
    """The checks' cost: median of the paired (checks on - checks off) differences, against
    2% of the checks-off median or 20 us, whichever is larger."""
    cost = statistics.median([a - b for a, b in zip(on, off, strict=True)])
    off_median = statistics.median(off)
    allowed = max(CHECKS_FRACTION * off_median, CHECKS_FLOOR_S)
    return {"cost_s": cost, "fraction": cost / off_median if off_median > 0 else None,
            "allowed_s": allowed, "goal_met": cost <= allowed}


# -- report --------------------------------------------------------------------------------------


def _mark(ok: bool | None) -> str:
    return "-" if ok is None else ("✓" if ok else "✗")


def _esc(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table_row(r: Mapping[str, Any]) -> str:
    """One problem's table row (a failure: its reason in the verdict column)."""
    m = r.get("medians_s", {})
    speed, checks = r.get("speed"), r.get("checks")
    if r["status"] == "failed":
        reason = r["reason"] if len(r["reason"]) <= 160 else r["reason"][:157] + "..."
        cells = ["-"] * 4 + [f"**failed**: {_esc(reason)}", "✗", "-", "-"]
    else:
        verdict = speed["verdict"] if speed else "**wrong result** (see notes)"
        cost = (f"{checks['cost_s'] * 1e3:.3f} ms ({100 * checks['fraction']:.1f}%)"
                if checks and checks["fraction"] is not None else "-")
        cells = [", ".join(r.get("kernels", [])), _t(m.get("plan")), _t(m.get("expert")),
                 f"{speed['ratio']:.3f}" if speed else "-", verdict,
                 _mark(bool(speed and speed["goal_met"])), cost,
                 _mark(checks["goal_met"] if checks else None)]
    return "| " + " | ".join([r["problem"], _dims_text(r["dims"])] + cells) + " |"


def score(rows: Sequence[Mapping[str, Any]]) -> tuple[int, int, int]:
    """``(speed goals met, checks goals met, problems)``."""
    speed = sum(1 for r in rows if r.get("speed") and r["speed"]["goal_met"]
                and r["status"] == "timed")
    checks = sum(1 for r in rows if r.get("checks") and r["checks"]["goal_met"])
    return speed, checks, len(rows)


def note_lines(r: Mapping[str, Any]) -> list[str]:
    """The notes of one problem: where its plan comes from, failures, wrong results."""
    out = [f"- **{r['problem']}** ({_dims_text(r['dims'])}): "
           + (f"plan `{Path(r['plan']).name}`, {r['plan_source']}" if r.get("plan")
              else "no plan")]
    if r.get("target"):
        out.append(f"  - target {r['target']}, {r['threads']} BLAS thread(s), "
                   f"{r.get('pinning', '')}; tolerance {r['tolerance']:.1e}; errors "
                   + ", ".join(f"{k} {v:.1e}" for k, v in r.get("errors", {}).items()))
    if r["status"] in ("failed", "wrong"):
        out.append(f"  - {r['status']}: {_esc(r['reason'])}")
    tuning = r.get("tuning")
    if tuning:
        out.append(f"  - tuning: `{tuning['command']}`, {tuning.get('wall_s', 0):.0f} s, exit "
                   f"status {tuning['returncode']}")
    out += [f"  - {_esc(n)}" for n in r.get("notes", [])]
    return out


def write_markdown(rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> str:
    met, checks, total = score(rows)
    lines = [
        "# The corpus: tuned plans against hand-written experts",
        "",
        f"- Date: {meta['date']}; load average {meta.get('load', '?')} at the start",
        f"- Machine: {meta['cpu']}, {meta['cores']} logical cores ({meta['usable_cores']} "
        "usable)",
        f"- BLAS: {'; '.join(meta['blas'])}",
        f"- Threads: {meta['threads']}; heap policy `retain`; {meta['reps']} interleaved "
        "rounds (each variant once per round, in a seeded random order, after one untimed "
        "call that checks its result against the float64 reference)",
        f"- Plans: {meta['tuning']}",
        f"- Regenerate: `{' '.join(['python -m benchmarks.corpus', meta['args']]).strip()}`",
        "",
        "*plan*: `autotune.load_plan(path)` called with the arrays by keyword, as a user calls "
        "it; *expert*: `autotune.experts.expert_function` (SciPy: Cholesky, triangular solves, "
        "no inverses). *verdict* by LAAB's rule: slower when q75(expert) ≤ q25(plan), faster "
        f"when q75(plan) ≤ q25(expert). Goal: not slower and plan/expert ≤ {GOAL_RATIO:.2f}. "
        "*checks cost*: median over rounds of (plan − plan with checks off); goal: ≤ 2% of "
        "the checks-off median or ≤ 20 µs, whichever is larger.",
        "",
        "| problem | dims | plan's kernels | plan median | expert median | plan/expert "
        f"| verdict | ≤{GOAL_RATIO:.2f}× goal | checks cost | checks goal |",
        "| --- | --- | --- | ---: | ---: | ---: | --- | :-: | ---: | :-: |",
    ]
    lines += [table_row(r) for r in rows]
    lines += ["", f"**Score: goals met {met}/{total}** (plan ≤ {GOAL_RATIO:.2f}× the expert "
              f"and not significantly slower); checks goal met {checks}/{total}.", "",
              "## Notes", ""]
    for r in rows:
        lines += note_lines(r)
    return "\n".join(lines) + "\n"


def write_outputs(rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any],
                  out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "CORPUS.md").write_text(write_markdown(rows, meta), encoding="utf-8")
    data = {"meta": dict(meta), "problems": list(rows)}
    (out / "corpus.json").write_text(json.dumps(data, indent=1, default=str) + "\n",
                                     encoding="utf-8")


def progress(r: Mapping[str, Any]) -> str:
    """One line on a finished problem, for the terminal."""
    if r["status"] == "failed" or not r.get("medians_s"):
        return f"{r['status']}: {r['reason']}"
    m, speed, checks = r["medians_s"], r.get("speed"), r.get("checks")
    text = f"plan {_t(m.get('plan'))}, expert {_t(m.get('expert'))}"
    if speed:
        text += f", ratio {speed['ratio']:.3f} ({speed['verdict']})"
    if checks:
        text += f", checks {_t(checks['cost_s'])}"
    return text + (f"; wrong: {r['reason']}" if r["status"] == "wrong" else "")


def machine_meta(opts: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    from autotune.machine import machine_fingerprint

    fp = machine_fingerprint()
    blas = sorted({f"{b.get('internal_api')} {b.get('version')} {b.get('architecture', '')} "
                   f"({b.get('filepath')})".replace("  ", " ") for b in fp["blas"]})
    how = ("the plans found in the plans folder only (--no-tune)" if opts.no_tune else
           f"found in {opts.plans} (or results/ for the shipped five, at their default dims), "
           f"else tuned now: `autotune run --trials {opts.trials} --timeout {opts.timeout:g}`")
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "cpu": fp["cpu_model"],
        "cores": fp["logical_cores"], "usable_cores": fp["usable_cores"], "blas": blas,
        "versions": fp["versions"], "load": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "threads": (f"{opts.threads} for every variant (--threads; plans re-targeted)"
                    if opts.threads else "each plan's target threads, for every variant"),
        "reps": opts.reps, "trials": opts.trials, "timeout": opts.timeout,
        "scale": opts.scale, "seed": opts.seed, "dtype": DTYPE, "heap": "retain",
        "tuning": how, "args": " ".join(argv),
    }


# -- the command ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.corpus",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--problems", default="", help="comma-separated subset (default: all)")
    ap.add_argument("--trials", type=int, default=12, help="autotune run --trials")
    ap.add_argument("--timeout", type=float, default=300.0, help="autotune run --timeout (s)")
    ap.add_argument("--plans", type=Path, default=None,
                    help="folder of the plans (default: <out>/corpus-plans)")
    ap.add_argument("--reps", type=int, default=10, help="interleaved timed rounds")
    ap.add_argument("--no-tune", action="store_true", help="only the plans already there")
    ap.add_argument("--no-stored", action="store_true",
                    help="ignore the stored plans in results/ (tune the shipped problems too)")
    ap.add_argument("--out", type=Path, default=RESULTS,
                    help="folder of CORPUS.md and corpus.json (default: results/)")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply every free default dim by this (a quick run)")
    ap.add_argument("--threads", type=int, default=None,
                    help="BLAS threads for every variant (default: each plan's target's)")
    ap.add_argument("--cpu", default="0",
                    help="CPU a one-thread timing is pinned to ('none': not pinned)")
    ap.add_argument("--seed", type=int, default=0, help="random instance and round order")
    opts = ap.parse_args(argv)
    if opts.reps < 1 or opts.trials < 1 or opts.scale <= 0 or (opts.threads or 1) < 1:
        ap.error("--reps, --trials, --threads and --scale must be positive")
    opts.cpu = None if opts.cpu == "none" else int(opts.cpu)
    opts.plans = (opts.plans or opts.out / "corpus-plans").resolve()
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    from autotune.memory import set_heap_policy

    opts = parse_args(argv)
    args = list(argv) if argv is not None else sys.argv[1:]
    names = select_problems(opts.problems)
    opts.plans.mkdir(parents=True, exist_ok=True)
    meta = machine_meta(opts, args)
    rows = [new_row(n, problem_dims(n, opts.scale)) for n in names]
    t0 = time.perf_counter()
    for row in rows:  # 1. every plan first (tuning uses the whole machine)
        obtain_plan(row, opts)
    set_heap_policy("retain")  # load_plan would set the plan's: every variant gets the same
    allowed = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set()
    try:
        for row in rows:  # 2. time, one problem at a time
            if row["plan"] is not None:
                try:
                    measure_problem(row, opts, allowed)
                except Exception as exc:  # noqa: BLE001 - a recorded row; the run goes on
                    row.update(status="failed", reason=f"measurement failed: "
                               f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:600])
                gc.collect()  # the problem's plans and arrays
            print(f"[corpus] {row['problem']}: {progress(row)}", file=sys.stderr, flush=True)
            write_outputs(rows, meta, opts.out)  # so far: an interrupted run keeps its rows
    finally:
        if allowed:
            os.sched_setaffinity(0, allowed)
    meta["total_s"] = time.perf_counter() - t0
    write_outputs(rows, meta, opts.out)
    met, checks, total = score(rows)
    print(f"[corpus] goals met {met}/{total}, checks goal {checks}/{total}; wrote "
          f"{opts.out / 'CORPUS.md'} and {opts.out / 'corpus.json'} in {meta['total_s']:.0f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
