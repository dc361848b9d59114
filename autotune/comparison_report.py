"""The comparison's report: ``BENCHMARKS.md``, ``benchmarks.png`` and the README's row.

Every function reads the results :func:`autotune.compare.compare` returns, or the
``benchmarks.json`` it wrote (or the folder holding it): :func:`write_markdown` writes the
machine, the method and one table per problem and size, :func:`plot` grouped bars on a log
scale, :func:`headline` / :func:`format_headline` the row the README quotes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .comparison_cases import LIMIT, LIMIT_LABEL, VARIANTS, Case, read_cases
from .errors import AutotuneError
from .units import format_seconds as _fmt_time

__all__ = ["format_headline", "headline", "plot", "write_markdown"]


def _fmt_ratio(x: float | None, y: float | None) -> str:
    if x is None or y is None or not y:
        return "-"
    return f"{x / y:.2f}×"


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
    res, cases = read_cases(results)
    lines = ["# Benchmarks: the tuned plan against the usual ways to write it", ""]
    if res.get("quick"):
        lines += ["**Quick run (tiny sizes): a smoke test, not a measurement to quote.**", ""]
    lines += _machine_lines(res)
    lines += _method_lines(res)
    for case in cases:
        lines += _case_lines(case)
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def _method_lines(res: Mapping[str, Any]) -> list[str]:
    """How the variants were measured, and what each of them is."""
    return [
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


def _case_lines(case: Case) -> list[str]:
    """One case's section: the plan, then a row per variant and the physical limit."""
    plan_t = case.time("plan")
    lines = ["", f"## {case.title}", ""]
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
        return lines + [f"| {LIMIT_LABEL} | {case.limit_note} | - | - | - |"]
    lines.append(f"| {LIMIT_LABEL} | {_fmt_time(case.limit_s)} | "
                 f"{_fmt_ratio(case.limit_s, plan_t)} | "
                 f"{'1.00×' if case.limit_s else '-'} | - |")
    return lines


def plot(results: Mapping[str, Any] | str | Path, path: str | Path) -> Path:
    """Grouped bars: time per variant (and the physical limit) per problem and size, on a
    log scale. Written with matplotlib's Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res, cases = read_cases(results)
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
    res, cases = read_cases(results)
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
