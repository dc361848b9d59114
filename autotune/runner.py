"""The edges of ``autotune run``: the measuring worker, the progress bar, the plan artifact,
the final table, and the trials report."""

from __future__ import annotations

import math
import multiprocessing as mp
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .measure import Worker
from .plan import Plan, read_plan, save_plan
from .search import Entry, SearchConfig, SearchResult, open_storage, study_name, tune
from .spec import Problem

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


def build_plan(problem: Problem, dims: Mapping[str, int], config: SearchConfig,
               result: SearchResult) -> Plan:
    from .reference import tolerance  # noqa: F401 - documents where the tolerance comes from
    from .targets import machine_fingerprint, parse_target

    best = result.best
    final = result.final.get(best.key) or list(best.measurement.samples)
    timing = _entry_json(best, final)
    timing["search_samples"] = list(best.measurement.samples)
    baselines = {n: _entry_json(e, result.final.get(e.key)) for n, e in result.baselines.items()}
    speedups = {
        n: (b["median"] / timing["median"]) if b["median"] and timing["median"] else None
        for n, b in baselines.items()
    }
    flops = best.measurement.flops
    # the limit counts the fewest FLOPs measured for any candidate (the flop-optimal point
    # among them), not the plan's own: a plan with spare FLOPs does not lower its bar
    fewest = min([flops] + [e.measurement.flops for e in result.entries.values()
                            if e.measurement.ok and e.measurement.flops] +
                 [e.measurement.flops for e in result.baselines.values()
                  if e.measurement.ok and e.measurement.flops]) if flops else flops
    limit = fewest / result.dgemm_flops if result.dgemm_flops and fewest else None
    runners = sorted(
        (e for k, e in result.entries.items() if k != best.key and e.measurement.ok
         and k in result.final),
        key=lambda e: statistics.median(result.final[e.key]) if result.final[e.key] else math.inf,
    )
    storage = result.storage
    if "@" in storage:  # never store a password
        storage = storage.split("://")[0] + "://***@" + storage.split("@", 1)[1]
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
        flops=flops,
        fewest_flops=fewest,
        dgemm_gflops=result.dgemm_flops / 1e9 if result.dgemm_flops else None,
        physical_limit_s=limit,
        limit_ratio=(timing["median"] / limit) if limit and timing["median"] else None,
        machine=machine_fingerprint(),
        environment={"heap": config.heap},
        runners_up=[_entry_json(e, result.final.get(e.key)) for e in runners[:5]],
        study={"name": result.study_name, "storage": storage, "trials": result.trials,
               "interrupted": result.interrupted},
    )


def _job_process(problem_source: str, origin: str, dims: dict, config: SearchConfig) -> None:
    """An extra --jobs process: it tunes the same study and leaves the final round to the
    main process."""
    from .spec import parse_problem

    problem = parse_problem(problem_source, origin=origin)
    config.final_round_top = 0
    with Worker(timeout=config.candidate_timeout, heap=config.heap) as w:
        try:
            tune(problem, dims, config, w.measure, None)
        except Exception:  # noqa: BLE001 - the main process reports
            pass


def run_tuning(problem: Problem, dims: Mapping[str, int], config: SearchConfig,
               jobs: int = 1, quiet: bool = False) -> Path:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    dims = dict(dims)
    extra: list[mp.Process] = []
    if jobs > 1:
        from .search import prepare_study

        prepare_study(problem, dims, config)  # the named points are enqueued once, here
        ctx = mp.get_context("spawn")
        for i in range(jobs - 1):
            cfg = SearchConfig(**{**config.__dict__, "seed": config.seed + i + 1,
                                  "trials": max(1, config.trials // jobs), "enqueue": False})
            proc = ctx.Process(target=_job_process,
                               args=(problem.source, problem.origin, dims, cfg))
            proc.start()
            extra.append(proc)
        config.trials = max(1, config.trials - (jobs - 1) * max(1, config.trials // jobs))
    console.print(
        f"[bold]autotune[/bold] {problem.name} "
        + " ".join(f"{k}={v}" for k, v in dims.items())
        + f" {config.dtype}; targets: {', '.join(config.targets)}; "
        f"budget {config.trials} trials / {config.timeout:.0f} s"
    )
    progress = Progress(TextColumn("{task.description}"), BarColumn(),
                        TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                        TextColumn("{task.fields[status]}"), console=console, disable=quiet)
    task = progress.add_task("search", total=config.trials, status="")

    def on_progress(ev: dict[str, Any]) -> None:
        left = max(0.0, ev["timeout"] - ev["elapsed"])
        best = ev["best"]
        best_s = f"{best:.3f} s" if math.isfinite(best) else "-"
        name = f" [{ev['named']}]" if ev.get("named") else ""
        progress.update(task, completed=ev["trial"],
                        status=f"best {best_s} | last {ev['state']}{name} | {left:.0f} s left")

    with Worker(timeout=config.candidate_timeout, heap=config.heap) as worker, progress:
        try:
            result = tune(problem, dims, config, worker.measure, worker.dgemm_rate, on_progress)
        finally:
            for proc in extra:
                proc.join()
    plan = build_plan(problem, dims, config, result)
    path = save_plan(plan, config.out)
    _write_trials(config, result.study_name, result.storage)
    _print_summary(plan, path, console)
    return path


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


def _print_summary(plan: Plan, path: Path, console, written: bool = True) -> None:
    from rich.table import Table

    c = plan.content
    table = Table(title=f"{c['problem']['name']} "
                  + " ".join(f"{k}={v}" for k, v in c["dims"].items()))
    for col in ("computation", "target", "median", "IQR", "speedup of plan", "max rel. error"):
        table.add_column(col)

    def row(name: str, e: Mapping[str, Any], speed: float | None) -> None:
        errs = e.get("errors") or {}
        err = f"{max(errs.values()):.1e}" if errs else "-"
        table.add_row(name, str(e.get("target")), _fmt(e.get("median")), _fmt(e.get("iqr")),
                      f"{speed:.2f}x" if speed else "-", err)

    for n, b in c["baselines"].items():
        row(n, b, c["speedups"].get(n))
    row("[bold]plan[/bold]", {**c["timing"], "target": c["target"]["name"]}, None)
    console.print(table)
    if c.get("physical_limit_s"):
        from .graph import _fmt_gflop

        fewest = c.get("fewest_flops") or c["flops"]
        also = (f" (fewest of any candidate {_fmt_gflop(fewest / 1e9)})"
                if fewest < c["flops"] else "")
        console.print(
            f"{_fmt_gflop(c['flops'] / 1e9)}{also}; physical limit "
            f"{_fmt(c['physical_limit_s'])} at "
            f"{c['dgemm_gflops']:.0f} GFLOP/s DGEMM; the plan runs at "
            f"{c['limit_ratio']:.2f}x the limit"
        )
    if written:
        console.print(f"plan written to [bold]{path}[/bold]")
        print(path)


def _fmt(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.3f} s"


def describe_plan(plan: Plan) -> None:
    from rich.console import Console

    from .derive import derive
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
