"""The command line: ``autotune run | show | report | targets | problems``.

Each command reads its input, builds the domain objects, and prints; every user mistake is a
one-line error naming the option and the valid choices (exit code 2), never a traceback.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import click

from .targets import configure_environment

configure_environment()  # before numpy/scipy/pytensor load: OpenBLAS thread pools, BLAS flags

from .errors import AutotuneError  # noqa: E402


def _fail(msg: str) -> None:
    raise click.UsageError(msg)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AutotuneError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="autotune")
def main() -> None:
    """autotune: benchmark-driven tuning of dense matrix computations.

    State the computation in a problem file, and autotune derives equivalent ways to compute
    it (SymPy), compiles each for this machine (PyTensor), checks it against a float64
    reference, times it, searches the space (Optuna), and leaves the fastest correct plan.
    """


def _parse_dims(n: int | None, dim: tuple[str, ...], problem) -> dict[str, int]:
    overrides: dict[str, int] = {}
    if n is not None:
        if "n" not in problem.dims:
            _fail(f"--n: problem {problem.name!r} has no dimension n; dimensions: "
                  f"{', '.join(problem.dims)} (use --dim NAME=VALUE)")
        overrides["n"] = n
    for item in dim:
        name, sep, value = item.partition("=")
        if not sep or not name:
            _fail(f"--dim {item!r}: expected NAME=VALUE, e.g. --dim k=1000")
        try:
            overrides[name.strip()] = int(value)
        except ValueError:
            _fail(f"--dim {item!r}: {value!r} is not an integer")
    return problem.resolve_dims(overrides)


def _default_targets(problem) -> list[str]:
    """Every available target the problem's [search] allows (backend, threads: threads alone
    narrows the numba targets); without a [search] choice: numba at every thread count and
    the other backends at all threads."""
    from .targets import available_targets, cpu_threads

    backends = problem.search.get("backend")
    threads = problem.search.get("threads")
    backends = [backends] if isinstance(backends, str) else backends
    threads = [threads] if isinstance(threads, int) else threads
    out = []
    for t in sorted(available_targets(), key=lambda t: (t.backend != "numba", -t.threads)):
        if backends is not None:
            if t.backend in backends and (threads is None or t.threads in threads):
                out.append(t.name)
            continue
        if threads is not None:
            if t.threads in threads and t.backend == "numba":
                out.append(t.name)
            continue
        if t.backend == "numba" or t.device == "cuda" or t.threads == cpu_threads():
            if t.backend == "pytorch":
                continue  # no Cholesky in PyTensor's PyTorch backend: ask for it explicitly
            out.append(t.name)
    if not out:
        _fail(f"no available target matches [search] backend={backends} threads={threads}; "
              "see 'autotune targets'")
    return out  # the first (numba, all threads) also runs the baselines


@main.command()
@click.option("--problem", "problem_name", default="kalman", show_default=True,
              help="A problem name in search_spaces/ or a path to a .toml/.yaml file.")
@click.option("--n", type=click.IntRange(min=1), default=None,
              help="Size of the dimension n (others follow their formulas).")
@click.option("--dim", multiple=True, metavar="NAME=VALUE", help="Set any dimension.")
@click.option("--trials", type=click.IntRange(min=1), default=24, show_default=True,
              help="Candidates the study measures in all; a resumed study counts the trials "
              "it has (12 done, 12 to go).")
@click.option("--timeout", type=click.FloatRange(min=1), default=600.0, show_default=True,
              help="Seconds for the whole run, final round included.")
@click.option("--target", "targets", multiple=True,
              help="Target to search (repeatable): numba-t2, c-t1, jax-cpu, pytorch-cuda, ...")
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default=None,
              help="Precision (default: the problem's [problem] dtype, else float64).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the sampler and of the random instance.")
@click.option("--storage", default=None,
              help="Optuna storage URL (default: sqlite in --out); e.g. postgresql://...")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes tuning the study together (they share the machine).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              default=Path("results"), show_default=True,
              help="Folder for the plan, the study and the trials table.")
@click.option("--heap", type=click.Choice(["retain", "system"]), default="retain",
              show_default=True,
              help="Heap policy of the measuring process, recorded in the plan: 'retain' "
              "keeps big temporaries' pages between calls; 'system' is the C library's default.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def run(problem_name: str, n: int | None, dim: tuple[str, ...], trials: int, timeout: float,
        targets: tuple[str, ...], dtype: str | None, seed: int, storage: str | None,
        jobs: int, out: Path, heap: str, quiet: bool) -> None:
    """Tune a problem on this machine and store the best plan (default: the Kalman filter)."""
    from .spec import load_problem
    from .targets import check_available, parse_target

    problem = load_problem(problem_name)
    dtype = dtype or problem.dtype
    dims = _parse_dims(n, dim, problem)
    for note in problem.notes:  # what the formulas imply (an inverted matrix is invertible)
        click.echo(f"note: {note}", err=True)
    from .instances import check_fits

    check_fits(problem, dims, dtype)  # before anything is allocated: a clear refusal
    names = list(targets) or _default_targets(problem)
    for t in names:
        check_available(parse_target(t))
    names = [parse_target(t).name for t in names]
    from .search import SearchConfig

    config = SearchConfig(trials=trials, timeout=timeout, targets=names, dtype=dtype, seed=seed,
                          storage=storage, out=out, heap=heap)
    from .runner import run_tuning

    run_tuning(problem, dims, config, jobs=jobs, quiet=quiet)


@main.command()
@click.argument("plan", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the raw artifact.")
@click.option("--graph", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Draw the plan's computation as a DAG (.svg, .png or .pdf).")
def show(plan: Path, as_json: bool, graph: Path | None) -> None:
    """Describe a stored plan."""
    from .plan import read_plan

    p = read_plan(plan)
    if as_json:
        click.echo(json.dumps(p.content, indent=1, sort_keys=True))
        return
    from .runner import describe_plan

    describe_plan(p)
    if graph is not None:
        from .graph import draw_plan

        path = draw_plan(p, graph)
        click.echo(f"graph written to {path}")


@main.command()
@click.option("--problem", "problem_name", default="kalman", show_default=True)
@click.option("--n", type=click.IntRange(min=1), default=None)
@click.option("--dim", multiple=True, metavar="NAME=VALUE")
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default="float64")
@click.option("--storage", default=None)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("results"))
@click.option("--heap", type=click.Choice(["retain", "system"]), default="retain",
              show_default=True, help="The heap policy the study was measured under.")
def report(problem_name: str, n: int | None, dim: tuple[str, ...], dtype: str,
           storage: str | None, out: Path, heap: str) -> None:
    """Save the study's trials as a CSV table and plot its history and parameter importance."""
    from .runner import write_report
    from .spec import load_problem

    problem = load_problem(problem_name)
    dims = _parse_dims(n, dim, problem)
    for path in write_report(problem, dims, dtype, storage, out, heap):
        click.echo(f"wrote {path}")


@main.command()
@click.argument("plans", nargs=-1, required=True, type=click.Path(dir_okay=False,
                                                                   path_type=Path))
@click.option("--repeats", type=click.IntRange(min=3), default=5, show_default=True,
              help="Interleaved rounds of the plan, its baselines and a GEMM.")
@click.option("--timeout", type=click.FloatRange(min=1), default=600.0, show_default=True,
              help="Seconds one measurement may take.")
@click.option("--json", "as_json", is_flag=True, help="Print the verifications as JSON.")
@click.option("--markdown", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the verifications as a markdown table to this file.")
def verify(plans: tuple[Path, ...], repeats: int, timeout: float, as_json: bool,
           markdown: Path | None) -> None:
    """Re-time stored plans against their baselines and the physical limit on this machine,
    side by side, and say whether each still holds (exit code 1 when one does not)."""
    from .verify import verify_plan, write_markdown

    results = [verify_plan(p, repeats=repeats, timeout=timeout) for p in plans]
    if as_json:
        data = [v.to_json() for v in results]
        click.echo(json.dumps(data[0] if len(data) == 1 else data, indent=1, sort_keys=True,
                              default=str))
    else:
        for v in results:
            _print_verification(v)
    if markdown is not None:
        click.echo(f"wrote {write_markdown(results, markdown)}", err=True)
    sys.exit(0 if all(v.holds for v in results) else 1)


def _print_verification(v: Any) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    table = Table(title=f"verify {escape(v.path)} ({v.rounds} interleaved rounds)")
    for col in ("computation", "median now", "stored", "plan's speedup now", "significant"):
        table.add_column(col)
    from .runner import BASELINE_LABELS

    for name, b in v.baselines.items():
        table.add_row(escape(BASELINE_LABELS.get(name, name)), _fmt_s(b["median"] or math.inf),
                      _fmt_s(b["stored_median"] or math.inf),
                      f"{b['speedup']:.2f}x" if b["speedup"] else escape(b["status"]),
                      "faster than the plan" if b["significantly_faster_than_plan"] else "")
    table.add_row("[bold]plan[/bold]", _fmt_s(v.median), _fmt_s(v.stored_median), "", "")
    console.print(table)
    if v.limit_ratio:
        stored = f" (stored: {v.stored_limit_ratio:.2f}x)" if v.stored_limit_ratio else ""
        console.print(f"{v.limit_ratio:.2f}x the physical limit at {v.gemm_gflops:.0f} GFLOP/s "
                      f"GEMM timed in the same rounds{stored}")
    for d in v.machine_differences:
        console.print(f"tuned elsewhere: {escape(d)}")
    if v.holds:
        console.print("[bold green]the plan holds[/bold green] on this machine")
    for r in v.reasons:
        console.print(f"[bold red]does not hold:[/bold red] {escape(r)}")


@main.command()
def targets() -> None:
    """List the targets this machine offers, and why the others are missing."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from .targets import list_targets

    table = Table(title="targets")
    for col in ("target", "available", "threads", "reason / detail"):
        table.add_column(col)
    for info in list_targets():
        threads = ", ".join(str(t) for t in info.threads) or "-"
        # escape: the reasons name extras such as 'autotune[jax]', which is console markup
        table.add_row(escape(info.name), "yes" if info.available else "no", threads,
                      escape(info.reason if not info.available else (info.detail or "")))
    Console().print(table)


@main.command("compare", context_settings={"ignore_unknown_options": True,
                                           "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def compare_cmd(args: tuple[str, ...]) -> None:
    """Measure the plans against NumPy, SciPy, naive PyTensor and JAX; writes
    results/BENCHMARKS.md (options: see autotune compare --help)."""
    from .compare import main as compare_main

    sys.exit(compare_main(list(args)))


@main.command()
def problems() -> None:
    """List the problems shipped in search_spaces/."""
    from .spec import load_problem, problem_names

    for name in problem_names():
        p = load_problem(name)
        click.echo(f"{name:10s} {p.description}")


def _fmt_s(x: float) -> str:
    if not math.isfinite(x):
        return "-"
    if x < 1e-3:
        return f"{x * 1e6:.0f} µs"
    return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.3f} s"


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
