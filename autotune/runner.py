"""The edges of ``autotune run``: the measuring worker, the progress bar, the plan artifact,
the final table, and the trials report."""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import statistics
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .measure import Worker
from .plan import Plan, read_plan, save_plan
from .search import Entry, SearchConfig, SearchResult, open_storage, study_name, tune
from .spec import Problem
from .units import format_seconds as _fmt

__all__ = ["run_tuning", "build_plan", "describe_plan", "write_report"]


def _entry_json(e: Entry, samples: list[float] | None = None) -> dict[str, Any]:
    m = e.measurement
    s = list(samples) if samples else list(m.samples)
    med = statistics.median(s) if s else None
    iqr = None
    if len(s) >= 2:
        q = statistics.quantiles(s, n=4, method="inclusive")
        iqr = q[2] - q[0]
    return {
        "params": e.knobs, "target": e.target, "status": m.status, "samples": s,
        "median": med, "iqr": iqr, "compile_s": m.compile_s, "errors": m.errors,
        "flops": m.flops, "message": m.message,
    }


def _limit_fields(result: SearchResult) -> dict[str, Any]:
    rate = result.dgemm_flops
    limit = result.fewest_flops / rate if rate and result.fewest_flops else None
    return {
        "fewest_flops": result.fewest_flops or None,
        "dgemm_gflops": rate / 1e9 if rate else None,
        "physical_limit_s": limit,
        "limit_ratio": result.limit_ratio,
    }


def build_plan(problem: Problem, dims: Mapping[str, int], config: SearchConfig,
               result: SearchResult) -> Plan:
    from .targets import machine_fingerprint, parse_target

    best = result.best
    final = result.final.get(best.key) or list(best.measurement.samples)
    timing = _entry_json(best, final)
    timing["search_samples"] = list(best.measurement.samples)
    baselines = {n: {**_entry_json(e, result.final.get(e.key)), "variant": e.variant}
                 for n, e in result.baselines.items()}
    speedups = {
        n: (b["median"] / timing["median"]) if b["median"] and timing["median"] else None
        for n, b in baselines.items()
    }
    runners = sorted(
        (e for k, e in result.entries.items() if k != best.key and e.measurement.ok
         and k in result.final and not e.name),
        key=lambda e: statistics.median(result.final[e.key]) if result.final[e.key] else math.inf,
    )
    storage = result.storage
    if "@" in storage:  # never store a password
        storage = storage.split("://")[0] + "://***@" + storage.split("@", 1)[1]
    limit = _limit_fields(result)
    return Plan.build(
        problem={"name": problem.name, "source": problem.source, "sha256": problem.sha256,
                 "origin": problem.origin, "outputs": list(problem.outputs),
                 "inputs": list(problem.inputs)},
        dims=dict(dims),
        dtype=config.dtype,
        params=best.knobs,
        target={**parse_target(best.target).to_json(), "name": best.target},
        timing=timing,
        baselines=baselines,
        speedups=speedups,
        accuracy={"errors": best.measurement.errors, "tolerance": best.measurement.tolerance,
                  "reference": "float64 NumPy/SciPy with LU solves, same random instance",
                  "seed": config.seed},
        flops=best.measurement.flops,
        **limit,
        limit_note=result.limit_note or None,
        graph_fingerprint=best.measurement.graph or None,
        machine=machine_fingerprint(),
        environment={"heap": config.heap},
        runners_up=[_entry_json(e, result.final.get(e.key)) for e in runners[:5]],
        study={"name": result.study_name, "storage": storage, "trials": result.trials,
               "interrupted": result.interrupted, "final_rounds": result.rounds,
               "decided": result.decided},
    )


def _job_process(problem_source: str, origin: str, dims: dict, config: SearchConfig) -> None:
    """An extra --jobs process: it tunes the same study and leaves the final round to the
    main process; it dies with the main process."""
    from .measure import _die_with_parent
    from .spec import parse_problem

    _die_with_parent()
    problem = parse_problem(problem_source, origin=origin)
    with Worker(timeout=config.candidate_timeout, heap=config.heap) as w:
        try:
            tune(problem, dims, config, w.measure, None, derivations=w, final=False)
        except KeyboardInterrupt:
            pass


def _incumbent(problem: Problem, dims: Mapping[str, int], config: SearchConfig,
               console) -> Entry | None:
    """The stored plan a new run could replace, as a contender of the final round (it is
    replaced only by a plan at least as good, timed side by side); None when there is none,
    or when it cannot run here (another problem text, a target not offered, old knobs)."""
    from .errors import AutotuneError
    from .measure import Measurement
    from .plan import plan_filename
    from .space import normalize_knobs

    path = config.out / plan_filename(problem.name, dims, config.dtype)
    if not path.exists():
        return None
    try:
        plan = read_plan(path)
        if plan.content["problem"]["sha256"] != problem.sha256 or plan.target not in \
                config.targets or plan.heap != config.heap:
            console.print(f"the stored plan {path} was tuned for another problem text, target "
                          "or heap policy: the new plan replaces it")
            return None
        knobs = normalize_knobs(problem, plan.params, dims)
    except AutotuneError as exc:
        console.print(f"the stored plan {path} cannot be re-timed ({exc}): the new plan "
                      "replaces it")
        return None
    return Entry(knobs, plan.target, Measurement("ok", plan.target), "stored")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C: the run decides on what was timed and keeps its plan."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _start_jobs(problem: Problem, dims: dict, config: SearchConfig,
               jobs: int) -> list[mp.Process]:
    """The extra processes of ``--jobs``: each joins the study (preparing it is safe from any
    number of processes at once, :mod:`autotune.storage`) and searches until the study has
    its trials; the main process enqueues the named points and runs the final round."""
    ctx = mp.get_context("spawn")
    extra = []
    for i in range(jobs - 1):
        cfg = SearchConfig(**{**config.__dict__, "seed": config.seed + i + 1, "enqueue": False,
                              "incumbent": None})
        proc = ctx.Process(target=_job_process, args=(problem.source, problem.origin, dims, cfg))
        proc.start()
        extra.append(proc)
    return extra


def run_tuning(problem: Problem, dims: Mapping[str, int], config: SearchConfig,
               jobs: int = 1, quiet: bool = False) -> Path:
    from rich.console import Console

    from .faults import fault
    from .plan import plan_filename

    console = Console(stderr=True)
    dims = dict(dims)
    console.print(
        f"[bold]autotune[/bold] {problem.name} "
        + " ".join(f"{k}={v}" for k, v in dims.items())
        + f" {config.dtype}; targets: {', '.join(config.targets)}; "
        f"budget {config.trials} trials / {config.timeout:.0f} s (final round included)"
    )
    config.incumbent = _incumbent(problem, dims, config, console)
    extra: list[mp.Process] = []
    with _sigterm_as_interrupt(), Worker(timeout=config.candidate_timeout,
                                         heap=config.heap) as worker:
        try:
            if jobs > 1:
                extra = _start_jobs(problem, dims, config, jobs)
            with _progress(console, config, quiet) as on_progress:
                result = tune(problem, dims, config, worker.measure, worker.dgemm_rate,
                              on_progress, derivations=worker)
        finally:
            for proc in extra:
                proc.join(5)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
        assert result is not None
        path = config.out / plan_filename(problem.name, dims, config.dtype)
        plan = build_plan(problem, dims, config, result)
        with _deferred_signals() as caught:  # what was decided is written, whatever comes
            if not result.kept_incumbent:
                fault("save")
                path = save_plan(plan, config.out)
        if caught:
            console.print(f"interrupted ({', '.join(caught)}) while the plan was being written: "
                          "it was written first")
    _write_trials(config, result.study_name, result.storage)
    if result.kept_incumbent:  # this run's figures, and the file left as it was
        _print_summary(plan, path, console, written=False)
        console.print(f"the stored plan {path} was timed against the new candidates in the "
                      "same rounds and is still the best: kept unchanged")
        print(path)
    else:
        _print_summary(read_plan(path), path, console)
    return path


@contextlib.contextmanager
def _deferred_signals() -> Iterator[list[str]]:
    """SIGINT and SIGTERM are noted, not acted on, inside the block (the main thread only)."""
    import signal
    import threading

    caught: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def note(signum: int, frame: Any) -> None:
        caught.append(signal.Signals(signum).name)

    old = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _progress(console, config: SearchConfig, quiet: bool) -> Iterator[Any]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(),
                        TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                        TextColumn("{task.fields[status]}"), console=console, disable=quiet)
    task = progress.add_task("search", total=config.trials, status="")
    final = progress.add_task("final round", total=config.final_round_repeats, status="",
                              visible=False)

    def on_progress(ev: dict[str, Any]) -> None:
        phase = ev.get("phase")
        if phase == "start":
            left = max(0, ev["of"] - ev["done"])
            progress.update(task, completed=ev["done"],
                            status=f"{ev['done']} done, {left} to go")
        elif phase == "search":
            best = ev["best"]
            best_s = f"{best:.3f} s" if math.isfinite(best) else "-"
            name = f" [{ev['named']}]" if ev.get("named") else ""
            progress.update(task, completed=ev["trial"],
                            status=f"best {best_s} | last {ev['state']}{name} | "
                                   f"{max(0.0, ev['left']):.0f} s left")
        elif phase == "final":
            progress.update(final, visible=True, completed=ev["round"], total=ev["of"],
                            status="interleaved re-timing")

    with progress:
        yield on_progress


def _write_trials(config: SearchConfig, name: str, storage: str) -> Path | None:
    import optuna

    try:
        study = optuna.load_study(study_name=name, storage=open_storage(storage))
        df = study.trials_dataframe()
    except Exception:  # noqa: BLE001 - the table is a convenience; the plan is written
        return None
    path = config.out / f"trials-{name}.csv"
    df.to_csv(path, index=False)
    return path


#: How the run summary names each baseline (the order of its rows).
BASELINE_LABELS = {
    "numpy": "NumPy as written",
    "naive": "naive (as written, PyTensor)",
    "pytensor": "PyTensor's own rewrites",
    "seed-2x2": "seed-2x2 (2013 halves)",
    "flop-optimal": "flop-optimal",
    "stored": "stored plan",
}


def _print_summary(plan: Plan, path: Path, console, written: bool = True) -> None:
    from rich.markup import escape
    from rich.table import Table

    c = plan.content
    table = Table(title=f"{c['problem']['name']} "
                  + " ".join(f"{k}={v}" for k, v in c["dims"].items()))
    for col in ("computation", "target", "median", "IQR", "plan's speedup", "max rel. error"):
        table.add_column(col)

    def row(name: str, e: Mapping[str, Any], speed: float | None) -> None:
        errs = e.get("errors") or {}
        err = f"{max(errs.values()):.1e}" if errs else "-"
        status = e.get("status", "ok")
        median = _fmt(e.get("median")) if status == "ok" else escape(str(status))
        table.add_row(name, str(e.get("target")), median, _fmt(e.get("iqr")),
                      f"{speed:.2f}x" if speed else "-", err)

    baselines = c["baselines"]
    for n in sorted(baselines, key=lambda n: list(BASELINE_LABELS).index(n)
                    if n in BASELINE_LABELS else len(BASELINE_LABELS)):
        row(escape(BASELINE_LABELS.get(n, n)), baselines[n], c["speedups"].get(n))
    row("[bold]plan[/bold]", {**c["timing"], "target": c["target"]["name"]}, None)
    console.print(table)
    _print_limit(c, console)
    if written:
        console.print(f"plan written to [bold]{escape(str(path))}[/bold]")
        print(path)


def _print_limit(c: Mapping[str, Any], console) -> None:
    from .graph import _fmt_gflop

    fewest = c.get("fewest_flops") or c["flops"]
    also = (f" (fewest of any candidate {_fmt_gflop(fewest / 1e9)})"
            if fewest and fewest < c["flops"] else "")
    gemm = "SGEMM" if c.get("dtype") == "float32" else "DGEMM"
    if c.get("limit_ratio"):
        console.print(
            f"{_fmt_gflop(c['flops'] / 1e9)}{also}; physical limit "
            f"{_fmt(c['physical_limit_s'])} at {c['dgemm_gflops']:.0f} GFLOP/s {gemm} timed "
            f"in the same rounds; the plan runs at {c['limit_ratio']:.2f}x the limit"
        )
    elif c.get("limit_note"):
        console.print(f"{_fmt_gflop(c['flops'] / 1e9)}{also}; {c['limit_note']}")


def describe_plan(plan: Plan) -> None:
    from rich.console import Console

    from .derivation import derive
    from .spec import parse_problem

    c = plan.content
    console = Console()
    console.print(f"[bold]{c['problem']['name']}[/bold] plan, created {c['created']}")
    console.print("dims: " + ", ".join(f"{k}={v}" for k, v in c["dims"].items())
                  + f"; dtype {c['dtype']}; target {c['target']['name']}")
    console.print("params: " + ", ".join(f"{k}={v}" for k, v in sorted(c["params"].items())))
    _print_summary(plan, plan.path or Path("-"), console, written=False)
    problem = parse_problem(c["problem"]["source"], origin=c["problem"]["origin"])
    program = derive(problem, c["params"], c["dims"])
    console.print("[bold]computation[/bold] (one line per kernel call):")
    console.print(program.describe(c["dims"]), markup=False, highlight=False)


def write_report(problem: Problem, dims: Mapping[str, int], dtype: str, storage: str | None,
                 out: Path, heap: str = "retain") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    from .errors import AutotuneError

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = study_name(problem, dims, dtype, heap)
    storage = storage or f"sqlite:///{(out / 'autotune.db').resolve()}"
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(storage))
    except KeyError as exc:
        raise AutotuneError(
            f"no study {name!r} in {storage}: run 'autotune run' for this problem and sizes "
            "first"
        ) from exc
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    csv = out / f"trials-{name}.csv"
    study.trials_dataframe().to_csv(csv, index=False)
    paths.append(csv)
    import warnings

    def save(ax, path: Path) -> None:
        ax.figure.tight_layout()
        ax.figure.savefig(path, dpi=110)
        plt.close(ax.figure)
        paths.append(path)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        save(ovm.plot_optimization_history(study), out / f"history-{name}.png")
        complete = [t for t in study.trials if t.state.name == "COMPLETE"]
        if len(complete) >= 2 and any(len(d.choices) > 1 for t in complete[:1]
                                      for d in t.distributions.values()):
            try:
                save(ovm.plot_param_importances(study), out / f"importance-{name}.png")
            except (RuntimeError, ValueError):
                pass  # importance needs variation among finished trials
    return paths


def load_latest_plan(folder: Path) -> Plan:
    plans = sorted(folder.glob("plan-*.json"), key=lambda p: p.stat().st_mtime)
    return read_plan(plans[-1])
