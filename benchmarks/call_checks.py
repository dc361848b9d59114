"""What a tuned function's call checks cost, and what its call wrapper costs (a script).

For every problem in ``search_spaces/`` at a small size and at the sizes of the committed
plans (``results/plan-*.json``, ``results/corpus-plans/plan-*.json``), the plan is loaded
and timed, interleaved (one call of each variant per round, ``A B C D E C A E B D ...``: the
machine's drift hits all alike, and each round takes them in a new (seeded random) order,
so that none always runs after the same one, whose data it would find in the caches):

* **bare**: the compiled PyTensor function (``TunedFunction.function``) of the checks-off
  plan, called with the prepared arrays under the plan's thread limit (entered outside the
  timed region);
* **checks off**: ``load_plan(path, check_finite=False, check_properties=False)``, called
  with the arrays by keyword (names, shapes and dtypes are still checked);
* **checks on**: ``load_plan(path)``, as a user calls it;
* **checks alone**: the checks-on plan's argument binding plus its output check, less the
  checks-off plan's binding (timed in the same rounds): the checks' own cost, isolated from
  the noise of the call they wrap;
* **checks alone, 1 thread**: the same with the checks in the calling thread only (the
  plan's threads share big arrays' checks otherwise);
* **before** (with ``--baseline-api FILE``): the checks-on plan of another version of
  ``autotune/api.py``, e.g. the one before these checks: ``git show 0f0b645^:autotune/api.py
  > /tmp/api_before.py``.

*checks cost* is the median over rounds of (checks on - checks off) in the same round, and
*wrapper* the median of (checks off - bare). The goal of the issue "Pay only for the
computation": the checks cost at most 2% of the call or 20 us, whichever is larger; the
verdict uses the isolated cost (the paired difference of two calls of milliseconds or
seconds carries more noise than the checks cost).

Small sizes: the committed example plan (``results/example-plan-kalman-n200.json``) for
Kalman; for every other problem a small plan tuned now (``autotune run --problem NAME --n
100 --trials 3 --timeout 120 --quiet``; ``--plans-dir`` keeps them for the next run).

Run from the repository root (about 5 minutes on 2 cores; ``--quick``: small sizes only)::

    python benchmarks/call_checks.py [--quick] [--out results] [--plans-dir DIR]

Writes ``CALL_CHECKS.md`` and ``call_checks.json`` in ``--out``.
"""

from __future__ import annotations

from autotune.targets import configure_environment

configure_environment()  # before numpy's OpenBLAS and PyTensor load

import argparse  # noqa: E402
import gc  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from autotune.units import format_seconds as _t  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"
EXAMPLE = RESULTS / "example-plan-kalman-n200.json"
SMALL_N = 100
GOAL_FRACTION = 0.02
GOAL_FLOOR_S = 20e-6


# -- plans -------------------------------------------------------------------------------------


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("kind") == "autotune-plan" else None


def tune_small(problem: str, folder: Path, n: int = SMALL_N) -> Path:
    """A small plan of ``problem`` in ``folder``: the one there, else tuned now."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(folder.glob(f"plan-{problem}-*.json")):
        data = _read(path)
        if data and data["problem"]["name"] == problem and data["dims"].get("n") == n:
            return path
    cmd = [sys.executable, "-m", "autotune.cli", "run", "--problem", problem, "--n", str(n),
           "--trials", "3", "--timeout", "120", "--out", str(folder), "--quiet"]
    print(f"  tuning a small {problem} plan: {' '.join(cmd[3:])}", flush=True)
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[3:])} failed:\n{run.stderr[-3000:]}")
    for path in sorted(folder.glob(f"plan-{problem}-*.json")):
        data = _read(path)
        if data and data["problem"]["name"] == problem and data["dims"].get("n") == n:
            return path
    raise RuntimeError(f"autotune run wrote no {problem} plan in {folder}")


def cases(quick: bool, plans_dir: Path) -> list[tuple[str, Path, str]]:
    """``(problem, plan path, where the plan comes from)``, small sizes first."""
    from autotune.spec import problem_names

    committed: dict[str, list[tuple[float, Path]]] = {}
    # the committed plans: the shipped ones in results/, every problem's in results/corpus-plans
    for path in sorted([*RESULTS.glob("plan-*.json"), *RESULTS.glob("corpus-plans/plan-*.json")]):
        data = _read(path)
        if data:
            size = float(max(data["dims"].values()))
            committed.setdefault(data["problem"]["name"], []).append((size, path))
    out: list[tuple[str, Path, str]] = []
    for name in problem_names():
        if name == "kalman" and EXAMPLE.exists():
            out.append((name, EXAMPLE, "committed example"))
        else:
            out.append((name, tune_small(name, plans_dir), f"tuned now (n={SMALL_N}, 3 trials)"))
    if not quick:
        for name in problem_names():
            for _, path in sorted(committed.get(name, [])):
                out.append((name, path, "committed"))
    return out


def load_before(path: Path) -> Any:
    """``autotune/api.py`` of another version, as module ``autotune._api_before``."""
    spec = importlib.util.spec_from_file_location("autotune._api_before", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# -- timing ------------------------------------------------------------------------------------


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], statistics.median(xs), q[2]


def _timer(fn: Callable[[], Any]) -> Callable[[], float]:
    def run() -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    return run


def measure_case(problem: str, path: Path, source: str, budget: float, max_rounds: int,
                 before: Any | None) -> dict[str, Any]:
    import numpy as np

    from autotune import load_plan
    from autotune.instances import random_instance
    from autotune.targets import thread_limit

    t_load = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # plans tuned on another machine: a PlanWarning
        on = load_plan(path)
        off = load_plan(path, check_finite=False, check_properties=False)
        old = before.load_plan(path) if before is not None else None
    load_s = time.perf_counter() - t_load
    x = random_instance(on.problem, on.dims, seed=0, dtype=on.dtype)
    x = {k: np.asarray(v) for k, v in x.items()}
    args = off._bind((), x)  # the prepared arrays (already in the plan's dtype: no copy)
    bare_fn = off.function
    target = off.target

    def bare() -> float:
        with thread_limit(target):
            t0 = time.perf_counter()
            bare_fn(*args)
            return time.perf_counter() - t0

    out = list(on(**x))  # warm: numba compiles lazily on the first call
    off(**x)
    bare()
    if old is not None:
        old(**x)

    def checks_on() -> None:
        on._bind((), x)
        on._outputs_finite(out)

    threads = on._check_threads

    def checks_on_1t() -> None:  # the same checks in this thread alone
        on._check_threads = 1
        try:
            checks_on()
        finally:
            on._check_threads = threads

    variants: dict[str, Callable[[], float]] = {
        "bare": bare,
        "off": _timer(lambda: off(**x)),
        "on": _timer(lambda: on(**x)),
        "checks_on": _timer(checks_on),
        "bind_off": _timer(lambda: off._bind((), x)),
    }
    if threads > 1:
        variants["checks_on_1t"] = _timer(checks_on_1t)
    if old is not None:
        variants["before"] = _timer(lambda: old(**x))
    one = sum(variants[k]() for k in ("bare", "off", "on"))  # one round's calls
    if old is not None:
        one += variants["before"]()
    rounds = int(max(5, min(max_rounds, budget / max(one, 1e-9))))
    times: dict[str, list[float]] = {k: [] for k in variants}
    t_start = time.perf_counter()
    order = list(variants.items())
    shuffle = random.Random(0).shuffle
    for _ in range(rounds):  # one call of each per round, in a new order each round: no
        shuffle(order)  # variant always runs after the same one (whose data it would find
        for key, run in order:  # in the caches)
            times[key].append(run())
    wall = time.perf_counter() - t_start
    med = {k: statistics.median(v) for k, v in times.items()}
    paired = [a - b for a, b in zip(times["on"], times["off"], strict=True)]
    wrapper = [a - b for a, b in zip(times["off"], times["bare"], strict=True)]
    alone = [a - b for a, b in zip(times["checks_on"], times["bind_off"], strict=True)]
    q_paired, q_wrapper, q_alone = _quartiles(paired), _quartiles(wrapper), _quartiles(alone)
    extra: dict[str, Any] = {}
    if "checks_on_1t" in times:
        extra["checks_alone_1t_s"] = _quartiles(
            [a - b for a, b in zip(times["checks_on_1t"], times["bind_off"], strict=True)])
    if "before" in times:
        extra["before_checks_cost_s"] = _quartiles(
            [a - b for a, b in zip(times["before"], times["off"], strict=True)])
    call = med["off"]
    goal = max(GOAL_FRACTION * call, GOAL_FLOOR_S)
    row: dict[str, Any] = {
        "problem": problem,
        "plan": str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name,
        "plan_source": source,
        "plan_path": str(path.resolve()),
        "dims": dict(on.dims),
        "dtype": on.dtype,
        "target": on.target.name,
        "rounds": rounds,
        "timing_wall_s": wall,
        "load_s": load_s,
        "median_s": med,
        "quartiles_s": {k: _quartiles(v) for k, v in times.items()},
        "checks_cost_paired_s": q_paired,
        "wrapper_overhead_s": q_wrapper,
        "checks_alone_s": q_alone,
        "goal_s": goal,
        "goal_met": q_alone[1] <= goal,
        "goal_met_paired": q_paired[1] <= goal,
        "checks_read_bytes": _bytes_read(on, x, out),
        "checks_scan": sorted(n for n, c in on._input_checks.items() if c[3]),
        "checks_symmetric": sorted(n for n, c in on._input_checks.items() if c[0]),
        "check_threads": on._check_threads,
        **extra,
    }
    return row


def _bytes_read(tf: Any, x: dict[str, Any], out: list[Any]) -> int:
    """What one call's checks read: every output (the lower triangle of one stored or
    mirrored so), each input's finiteness scan (whole, a triangle, a band or the diagonal),
    its symmetry check (whole, or this call's pair of blocks) and its zero triangles or
    band (whole, or this call's window of rows)."""
    total = sum(int(o.nbytes) // (2 if lower_only else 1)
                for o, lower_only in zip(out, tf._lower_only, strict=True))
    for name, (sym, lower, upper, scan) in tf._input_checks.items():
        arr = x[name]
        rows, cols = arr.shape
        item = arr.itemsize
        if scan:
            size = tf._scan_size(name, name in tf._diagonal_scans)
            if name in tf._triangle_scans:
                size = rows * (rows + 1) // 2
            total += size * item
        if not tf.check_properties:
            continue
        if sym:
            b = tf._blocks.get(name)
            total += (2 * b * b if b else rows * cols) * item
        height = tf._windows.get(name, rows)
        if lower or upper:
            total += height * (cols // 2) * (int(lower) + int(upper)) * item
        if name in tf._bands:
            total += height * cols * item
    return total


def wrapper_pieces(plan: Path, rounds: int = 2000) -> dict[str, float]:
    """Per-call costs of the thread limit: threadpoolctl's (enter and leave) and the check
    that it is in force already (what a call does first)."""
    from autotune import load_plan
    from autotune.targets import thread_limit

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tf = load_plan(plan, check_finite=False, check_properties=False)
    t = tf.target

    def limit() -> None:
        with thread_limit(t):
            pass

    def in_force() -> None:
        tf._limits_in_force()

    out = {}
    for key, fn in (("thread_limit", limit), ("in_force_check", in_force)):
        fn()
        ts = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        out[key] = statistics.median(ts)
    return out


# -- report ------------------------------------------------------------------------------------


def _pct(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.2f}%" if whole > 0 else "n/a"


def _rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / seconds / 1e9:.1f} GB/s" if seconds > 0 else "n/a"


def _dims(d: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items())


def write_report(rows: list[dict[str, Any]], meta: dict[str, Any], out: Path) -> None:
    lines = [
        "# Call checks: what a tuned function's checks and wrapper cost",
        "",
        f"- Date: {meta['date']}",
        f"- CPU: {meta['cpu']} ({meta['cores']} logical cores); load average "
        f"{meta['load_before']} before, {meta['load_after']} after",
        f"- BLAS threads by default: {meta['blas_threads']}; software: {meta['software']}",
        f"- Regenerate with `python benchmarks/call_checks.py{meta['args']}`",
        "",
        "**Preliminary figures**: short interleaved runs on a machine shared with other "
        "work (see the load averages); the medians of whole calls carry that noise, the "
        "isolated checks much less.",
        "",
        "Interleaved rounds (one call of each variant per round, each round in a new random "
        "order). *bare*: the compiled "
        "PyTensor function under the plan's thread limit; *checks off*: "
        "`load_plan(path, check_finite=False, check_properties=False)`; *checks on*: "
        "`load_plan(path)`. *checks cost* is the median of (on - off) within a round; "
        "*checks alone* the checks timed by themselves (the checks-on binding and output "
        "check, less the checks-off binding), which decides the goal: at most 2% of the "
        "call (checks off) or 20 µs, whichever is larger. *wrapper* is the median of "
        "(checks off - bare): binding, names, shapes, dtypes, the lock, the thread limit. "
        "*before* (with `--baseline-api`): the checks-on plan of the previous `api.py` "
        "(every input scanned with `np.isfinite`, tiled NumPy symmetry check, threadpoolctl "
        "on every call), and its checks cost, the median of (before - checks off).",
        "",
    ]
    has_before = any("before" in r["median_s"] for r in rows)
    head = ("| problem | sizes | plan | rounds | bare | checks off | checks on | checks cost | % "
            "| checks alone | % | wrapper | goal "
            + ("| before: checks on | before: checks cost | % |" if has_before else "|"))
    lines.append(head)
    cols = head.count("|") - 1
    lines.append("| " + " | ".join(["---"] * 3 + ["---:"] * (cols - 4) + ["---"]) + " |")
    for r in rows:
        m = r["median_s"]
        call = m["off"]
        cells = [r["problem"], _dims(r["dims"]), f"{Path(r['plan']).name} ({r['plan_source']})",
                 str(r["rounds"]), _t(m["bare"]), _t(call), _t(m["on"])]
        paired, alone = r["checks_cost_paired_s"][1], r["checks_alone_s"][1]
        cells += [_t(paired), _pct(paired, call), _t(alone), _pct(alone, call),
                  _t(r["wrapper_overhead_s"][1]),
                  ("met" if r["goal_met"] else "**not met**") + f" (≤ {_t(r['goal_s'])})"]
        if has_before:
            cost = r.get("before_checks_cost_s", [0.0, 0.0, 0.0])[1]
            cells += [_t(m["before"]), _t(cost), _pct(cost, call)] if "before" in m else [""] * 3
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Interquartile ranges (over rounds) of the paired differences and the isolated "
        "checks, and what each plan checks before the call:",
        "",
        "| problem | sizes | checks cost IQR | checks alone IQR | checks alone, 1 thread "
        "(median, IQR) | wrapper IQR | symmetry checked | scanned for NaN | check threads "
        "| checks read | at | the goal needs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        def iqr(q: list[float]) -> str:
            return f"{_t(q[0])} .. {_t(q[2])}"

        one = r.get("checks_alone_1t_s")
        one_text = f"{_t(one[1])} ({iqr(one)})" if one else "-"
        lines.append(
            f"| {r['problem']} | {_dims(r['dims'])} | {iqr(r['checks_cost_paired_s'])} | "
            f"{iqr(r['checks_alone_s'])} | {one_text} | {iqr(r['wrapper_overhead_s'])} | "
            f"{', '.join(r['checks_symmetric']) or '-'} | {', '.join(r['checks_scan']) or '-'} "
            f"| {r['check_threads']} | {r['checks_read_bytes'] / 1e6:.2f} MB | "
            f"{_rate(r['checks_read_bytes'], r['checks_alone_s'][1])} | "
            f"{_rate(r['checks_read_bytes'], r['goal_s'])} |")
    lines += [
        "",
        "*checks read*: the bytes a call's checks go through (each symmetric input whole, "
        "as the plan relies on its two triangles agreeing; every output; an input no output "
        "vouches for), once each; *at*: the rate of the isolated checks; *the goal needs*: "
        "the rate at which those bytes must be read to stay within the goal. Compare it with "
        "what the machine streams from memory (a single-thread read of an array out of cache "
        "ran at about 15-20 GB/s where these figures come from).",
    ]
    pieces = meta.get("wrapper_pieces")
    if pieces:
        lines += [
            "",
            "The thread limit, per call (median of 2000): threadpoolctl's limit entered and "
            f"left {_t(pieces['thread_limit'])}; the check that every BLAS already runs with "
            f"the target's threads (then nothing is set) {_t(pieces['in_force_check'])}.",
        ]
    lines.append("")
    (out / "CALL_CHECKS.md").write_text("\n".join(lines))
    (out / "call_checks.json").write_text(json.dumps({"meta": meta, "cases": rows}, indent=1)
                                          + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="folder of CALL_CHECKS.md and call_checks.json (default results/)")
    parser.add_argument("--plans-dir", type=Path, default=None,
                        help="keep the small tuned plans here (default: a temporary folder)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds of timed rounds per case (default 4, --quick 2)")
    parser.add_argument("--max-rounds", type=int, default=300)
    parser.add_argument("--baseline-api", type=Path, default=None,
                        help="another version's autotune/api.py, timed as 'before'")
    parser.add_argument("--problem", action="append", default=None,
                        help="only these problems (repeatable)")
    parser.add_argument("--rewrite", action="store_true",
                        help="only write CALL_CHECKS.md again from --out's call_checks.json")
    opts = parser.parse_args(argv)
    if opts.rewrite:
        saved = json.loads((opts.out / "call_checks.json").read_text())
        write_report(saved["cases"], saved["meta"], opts.out)
        return 0
    budget = opts.budget if opts.budget is not None else (2.0 if opts.quick else 4.0)

    import numpy as np  # noqa: F401 - after configure_environment
    from threadpoolctl import threadpool_info

    from autotune.targets import machine_fingerprint

    before = load_before(opts.baseline_api) if opts.baseline_api else None
    fp = machine_fingerprint()
    meta: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": fp.get("cpu_model"),
        "cores": fp.get("logical_cores"),
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "blas_threads": sorted({i["num_threads"] for i in threadpool_info()
                                if i["user_api"] == "blas"}),
        "software": ", ".join(f"{k} {v}" for k, v in fp.get("versions", {}).items() if v),
        "args": "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
        "preliminary": True,
    }
    opts.out.mkdir(parents=True, exist_ok=True)
    tmp = None
    plans_dir = opts.plans_dir
    if plans_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="call-checks-")
        plans_dir = Path(tmp.name)
    t0 = time.perf_counter()
    rows = []
    try:
        todo = cases(opts.quick, plans_dir)
        if opts.problem:
            todo = [c for c in todo if c[0] in opts.problem]
        for problem, path, source in todo:
            print(f"{problem}: {path.name}", flush=True)
            row = measure_case(problem, path, source, budget, opts.max_rounds, before)
            gc.collect()  # the case's plans and arrays
            m = row["median_s"]
            print(f"  off {_t(m['off'])}, on {_t(m['on'])}, bare {_t(m['bare'])}; checks "
                  f"{_t(row['checks_cost_paired_s'][1])} paired, "
                  f"{_t(row['checks_alone_s'][1])} alone; wrapper "
                  f"{_t(row['wrapper_overhead_s'][1])}; {row['rounds']} rounds", flush=True)
            rows.append(row)
            meta["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
            write_report(rows, meta, opts.out)  # so far: an interrupted run keeps its rows
        meta["wrapper_pieces"] = wrapper_pieces(Path(rows[0]["plan_path"]) if rows else EXAMPLE)
    finally:
        if tmp is not None:
            tmp.cleanup()
    meta["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    meta["total_s"] = time.perf_counter() - t0
    write_report(rows, meta, opts.out)
    print(f"wrote {opts.out / 'CALL_CHECKS.md'} and {opts.out / 'call_checks.json'} "
          f"in {meta['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
