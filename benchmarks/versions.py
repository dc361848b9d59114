"""The stored plans as two checkouts of autotune derive and compile them, timed side by side.

A plan stores its problem and knobs, and production code re-derives the computation from
them: a change to the derivation changes what a stored plan runs. This script answers "is the
new code at least as fast on the plans we ship?" in one interleaved run::

    git worktree add /tmp/old <commit>
    python -m benchmarks.versions --old /tmp/old [--new .] [--repeats 15] [PLAN ...]

Each checkout runs in its own worker process (``PYTHONPATH`` = the checkout), which loads the
plan with :func:`autotune.load_plan` (checks on, as a user calls it), builds the same seeded
instance and answers ``call`` with the seconds one call took. The driver alternates the two
workers in a seeded random order per round, so drift hits both alike; a worker's first call
(compiling, warming caches) is not timed. The verdict is LAAB's rule
(:func:`autotune.stats.significantly_faster`, paired by round): new faster, old faster, or no
significant difference. Both workers are limited to the plan's thread count by the plan itself.

``--tune PROBLEM:N ...`` asks the stronger question, "does the new code *tune* to plans at least
as fast?": each checkout runs ``autotune run`` on each problem from scratch under the same
budget (``--trials``, ``--timeout``; the two checkouts alternate which goes first), each into
its own folder, and then each side's plan is timed under its own checkout, interleaved as
above::

    python -m benchmarks.versions --old /tmp/old --tune kalman:4000 gls:2000 \
        --trials 16 --timeout 240 --work /tmp/tuned --out results/VERSIONS-TUNED.md
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

WORKER = r"""
import json, sys, time
import numpy as np
from autotune import load_plan
from autotune.instances import random_instance
path = sys.argv[1]
fn = load_plan(path)
inst = random_instance(fn.problem, fn.dims, seed=0)
args = {n: np.asarray(inst[n], dtype=fn.dtype) for n in fn.input_names}
fn(**args)
ops = {}
for i in fn.program.live_steps():
    op = fn.program.steps[i].op
    ops[op] = ops.get(op, 0) + 1
print(json.dumps({"ready": True, "ops": ops}), flush=True)
for line in sys.stdin:
    if line.strip() != "call":
        break
    t0 = time.perf_counter()
    fn(**args)
    print(time.perf_counter() - t0, flush=True)
"""


class Worker:
    def __init__(self, tree: Path, plan: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(tree), "OPENBLAS_THREAD_TIMEOUT": "12"}
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, plan], cwd=tree, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            raise RuntimeError(f"the worker in {tree} failed to load {plan}")
        self.ops: dict[str, int] = json.loads(line)["ops"]

    def call(self) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("call\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(30)


def compare(old: Path, new: Path, plan: str, repeats: int, seed: int,
            new_plan: str | None = None) -> dict[str, Any]:
    """Time ``plan`` under both checkouts (or ``new_plan`` under the new one), interleaved."""
    from autotune.stats import quartiles, significantly_faster

    workers = {"old": Worker(old, plan), "new": Worker(new, new_plan or plan)}
    times: dict[str, list[float]] = {"old": [], "new": []}
    rng = random.Random(seed)
    try:
        for _ in range(repeats):
            order = list(workers)
            rng.shuffle(order)
            for name in order:
                times[name].append(workers[name].call())
    finally:
        for w in workers.values():
            w.close()
    if significantly_faster(times["new"], times["old"], paired=True):
        verdict = "new faster"
    elif significantly_faster(times["old"], times["new"], paired=True):
        verdict = "old faster"
    else:
        verdict = "no significant difference"
    med = {k: quartiles(v)[1] for k, v in times.items()}
    return {"plan": Path(plan).name, "old_s": med["old"], "new_s": med["new"],
            "ratio": med["new"] / med["old"], "verdict": verdict,
            "old_ops": workers["old"].ops, "new_ops": workers["new"].ops}


def tune(tree: Path, problem: str, n: str, out: Path, trials: int, timeout: float) -> str:
    """``autotune run`` from scratch in ``tree``; the path of the plan it stored and its seconds."""
    import time

    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(tree), "OPENBLAS_THREAD_TIMEOUT": "12"}
    cmd = [sys.executable, "-c", "from autotune.cli import main; main()", "run", "--problem",
           problem, "--n", n, "--trials", str(trials), "--timeout", str(timeout),
           "--out", str(out), "--quiet"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t0
    plans = sorted(out.glob(f"plan-{problem}-*.json"), key=lambda q: q.stat().st_mtime)
    if done.returncode != 0 or not plans:
        raise RuntimeError(f"tuning {problem} in {tree} failed:\n{done.stderr[-2000:]}")
    print(f"tuned {problem} n={n} in {tree} ({took:.0f} s): {plans[-1].name}", flush=True)
    return str(plans[-1])


def tuned_rows(a: argparse.Namespace) -> list[dict[str, Any]]:
    """Each problem tuned by both checkouts (alternating who goes first), then timed."""
    old, new = a.old.resolve(), a.new.resolve()
    pairs = []
    for i, item in enumerate(a.tune):
        problem, _, n = item.partition(":")
        sides = [("old", old), ("new", new)]
        plans = {}
        for side, tree in sides if i % 2 == 0 else sides[::-1]:
            plans[side] = tune(tree, problem, n, a.work / side / problem, a.trials, a.timeout)
        pairs.append((f"{problem} n={n}", plans))
    rows = []
    for label, plans in pairs:
        row = compare(old, new, plans["old"], a.repeats, a.seed, new_plan=plans["new"])
        row["plan"] = label
        print(f"{label}: old {row['old_s']:.4f} s, new {row['new_s']:.4f} s "
              f"({row['ratio']:.3f}), {row['verdict']}", flush=True)
        rows.append(row)
    return rows


def write(rows: list[dict[str, Any]], old: Path, new: Path, repeats: int, path: Path,
          tuned: str = "") -> None:
    import time

    from autotune.machine import cpu_model

    from .checkouts import rev

    cpu = cpu_model()
    title = ("Plans tuned from scratch by the old and the new code" if tuned
             else "Stored plans: old and new code side by side")
    lines = [
        f"# {title}",
        "",
        f"{time.strftime('%Y-%m-%d')}, {cpu}, {os.cpu_count()} cores; old = {rev(old)}, "
        f"new = {rev(new)}; {tuned}median of {repeats} interleaved calls per "
        "side, each plan called as a user calls it (checks on) under the code that tuned it; "
        "verdict by LAAB's rule, paired.",
        "",
        "| plan | old (s) | new (s) | new / old | verdict | kernels changed |",
        "|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        changed = sorted(set(r["old_ops"].items()) ^ set(r["new_ops"].items()))
        diff = ", ".join(f"{op}: {r['old_ops'].get(op, 0)} -> {r['new_ops'].get(op, 0)}"
                         for op in dict.fromkeys(op for op, _ in changed)) or "none"
        lines.append(f"| {r['plan']} | {r['old_s']:.4f} | {r['new_s']:.4f} | {r['ratio']:.3f} "
                     f"| {r['verdict']} | {diff} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("plans", nargs="*", help="plan files (default: results/plan-*.json)")
    ap.add_argument("--old", type=Path, required=True, help="the old checkout (a worktree)")
    ap.add_argument("--new", type=Path, default=ROOT, help="the new checkout (default: here)")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None,
                    help="markdown table (default: results/VERSIONS.md, with --tune "
                         "results/VERSIONS-TUNED.md)")
    ap.add_argument("--tune", nargs="+", metavar="PROBLEM:N",
                    help="tune these problems from scratch in both checkouts, then time them")
    ap.add_argument("--trials", type=int, default=16, help="--trials of each tuning run")
    ap.add_argument("--timeout", type=float, default=240.0, help="--timeout of each tuning run")
    ap.add_argument("--work", type=Path, default=Path("/tmp/autotune-versions"),
                    help="folder for the tuned plans and studies (old/, new/)")
    a = ap.parse_args(argv)
    if a.tune:
        out = a.out or ROOT / "results" / "VERSIONS-TUNED.md"
        rows = tuned_rows(a)
        write(rows, a.old.resolve(), a.new.resolve(), a.repeats, out,
              tuned=f"each tuned with --trials {a.trials} --timeout {a.timeout:g}; ")
        print(f"wrote {out}")
        return
    a.out = a.out or ROOT / "results" / "VERSIONS.md"
    plans = a.plans or sorted(glob.glob(str(ROOT / "results" / "plan-*.json")))
    rows = []
    for plan in plans:
        row = compare(a.old.resolve(), a.new.resolve(), str(Path(plan).resolve()), a.repeats,
                      a.seed)
        print(f"{row['plan']}: old {row['old_s']:.4f} s, new {row['new_s']:.4f} s "
              f"({row['ratio']:.3f}), {row['verdict']}", flush=True)
        rows.append(row)
    write(rows, a.old.resolve(), a.new.resolve(), a.repeats, a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
