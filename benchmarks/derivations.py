"""Is anything lost on the way? Two checkouts of autotune derive the same candidates, side by side.

For each problem, the old checkout's knob space is sampled (seeded: every structural knob
uniform over its values, the target knobs left at their defaults) and both checkouts derive
every sampled point, plus their named points (``naive``, ``seed-2x2``, ``flop-optimal``,
the last found by each checkout's own search). Each checkout runs in its own fresh process
with an empty derivation cache (``AUTOTUNE_CACHE_DIR``), so the times are cold, as a first
``autotune run`` meets them; the two alternate, ``--rounds`` times, and the table keeps each
side's fastest round. Reported per problem:

* the candidates: sampled points the new code derives to no more FLOPs than the old (the same
  candidate or a cheaper equivalent), and the points it refuses or derives to more;
* the flop-optimal point's FLOPs, old and new;
* the seconds to derive the sample and to find the flop-optimal point, old and new;
* the size of each side's knob space (the product of its knobs' value counts).

::

    git worktree add /tmp/old <commit>
    python -m benchmarks.derivations --old /tmp/old [--new .] [--sample 24] \\
        [--problems kalman:4000,gls:2000] [--out results/DERIVATIONS.md]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

SHIPPED = "kalman:4000,enkf:4000,gls:2000,mmse:1000,tikhonov:2000"
TARGET_KNOBS = ("backend", "threads")

WORKER = r"""
import json, sys, time
from autotune.spec import load_problem
from autotune.space import knob_space, flop_optimal, named_point
from autotune import derive  # the function, in the old checkout and the new

req = json.loads(sys.argv[1])
problem = load_problem(req["problem"])
values = problem.resolve_dims({"n": req["n"]})
space = knob_space(problem, values)
out = {"space": {k: [v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
                     for v in vs] for k, vs in space.items()}}
if req.get("space_only"):
    print(json.dumps(out)); sys.exit(0)

def signature(prog):
    ops = {}
    for i in prog.live_steps():
        op = prog.steps[i].op
        ops[op] = ops.get(op, 0) + 1
    return ops

t0 = time.perf_counter()
fo = flop_optimal(problem, values)
out["flop_optimal_s"] = time.perf_counter() - t0
out["flop_optimal_flops"] = derive(problem, fo, values).flops(values)
points = []
t0 = time.perf_counter()
for knobs in req["points"]:
    try:
        prog = derive(problem, knobs, values)
        points.append({"flops": prog.flops(values), "ops": signature(prog)})
    except Exception as exc:  # a point this checkout refuses: reported, not fatal
        points.append({"error": f"{type(exc).__name__}: {str(exc)[:200]}"})
out["sample_s"] = time.perf_counter() - t0
out["points"] = points
named = {}
for name in ("naive", "seed-2x2"):
    try:
        prog = derive(problem, named_point(problem, name, values), values)
        named[name] = prog.flops(values)
    except Exception as exc:
        named[name] = f"{type(exc).__name__}: {str(exc)[:200]}"
out["named"] = named
print(json.dumps(out))
"""


def run_worker(tree: Path, request: dict[str, Any]) -> dict[str, Any]:
    """The worker in ``tree`` (its own process, an empty derivation cache)."""
    with tempfile.TemporaryDirectory(prefix="autotune-deriv-") as cache:
        env = {**os.environ, "PYTHONPATH": str(tree), "AUTOTUNE_CACHE_DIR": cache,
               "OPENBLAS_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-c", WORKER, json.dumps(request)], cwd=tree,
                              env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the worker in {tree} failed on {request['problem']}:\n"
                           f"{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def sample_points(space: dict[str, list[Any]], k: int, seed: int) -> list[dict[str, Any]]:
    """``k`` distinct knob points, each structural knob uniform over its values."""
    rng = random.Random(seed)
    keys = [key for key in sorted(space) if key not in TARGET_KNOBS]
    seen, points = set(), []
    for _ in range(50 * k):
        point = {key: rng.choice(space[key]) for key in keys}
        sig = json.dumps(point, sort_keys=True)
        if sig not in seen:
            seen.add(sig)
            points.append(point)
        if len(points) == k:
            break
    return points


def space_size(space: dict[str, list[Any]]) -> int:
    size = 1
    for key, values in space.items():
        if key not in TARGET_KNOBS:
            size *= max(1, len(values))
    return size


def compare(old: Path, new: Path, problem: str, n: int, k: int, rounds: int,
            seed: int) -> dict[str, Any]:
    space = run_worker(old, {"problem": problem, "n": n, "space_only": True})["space"]
    points = sample_points(space, k, seed)
    request = {"problem": problem, "n": n, "points": points}
    runs: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
    for r in range(rounds):
        for side in (("old", "new") if r % 2 == 0 else ("new", "old")):
            runs[side].append(run_worker(old if side == "old" else new, request))
    res = {side: runs[side][0] for side in runs}
    kept = cheaper = worse = refused = 0
    worse_points = []
    for p, a, b in zip(points, res["old"]["points"], res["new"]["points"], strict=True):
        if "error" in a:
            continue  # the old code refused it too: nothing to keep
        if "error" in b:
            refused += 1
            worse_points.append((p, a, b))
        elif b["flops"] <= a["flops"] * (1 + 1e-9):
            kept += 1
            cheaper += b["flops"] < a["flops"] * (1 - 1e-9)
        else:
            worse += 1
            worse_points.append((p, a, b))
    old_ok = sum("error" not in a for a in res["old"]["points"])
    return {
        "problem": f"{problem} n={n}", "sampled": len(points), "old_ok": old_ok,
        "kept": kept, "cheaper": cheaper, "worse": worse, "refused": refused,
        "worse_points": worse_points[:5],
        "fo_old": res["old"]["flop_optimal_flops"], "fo_new": res["new"]["flop_optimal_flops"],
        "sample_s": {s: min(r["sample_s"] for r in runs[s]) for s in runs},
        "fo_s": {s: min(r["flop_optimal_s"] for r in runs[s]) for s in runs},
        "space_old": space_size(space), "space_new": space_size(res["new"]["space"]),
        "named": {s: res[s]["named"] for s in res},
    }


def _gflop(v: Any) -> str:
    return f"{v / 1e9:.3f}" if isinstance(v, float | int) else str(v)


def write(rows: list[dict[str, Any]], old: Path, new: Path, k: int, rounds: int,
          path: Path) -> None:
    import time

    from autotune.machine import cpu_model

    from .checkouts import rev

    cpu = cpu_model()
    lines = [
        "# Derivations: old and new code side by side",
        "",
        f"{time.strftime('%Y-%m-%d')}, {cpu}, {os.cpu_count()} cores; old = {rev(old)}, "
        f"new = {rev(new)}. {k} points sampled (seeded) from the old knob "
        "space, derived by both, each checkout in a fresh process with an empty derivation "
        f"cache; times are the faster of {rounds} alternating rounds "
        "(`python -m benchmarks.derivations`).",
        "",
        "| problem | knob space old → new | sampled points kept (of which cheaper) | "
        "worse / refused | flop-optimal GFLOP old → new | derive sample old → new (s) | "
        "find flop-optimal old → new (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['problem']} | {r['space_old']:,} → {r['space_new']:,} "
            f"| {r['kept']}/{r['old_ok']} ({r['cheaper']}) | {r['worse']} / {r['refused']} "
            f"| {r['fo_old'] / 1e9:.3f} → {r['fo_new'] / 1e9:.3f} "
            f"| {r['sample_s']['old']:.1f} → {r['sample_s']['new']:.1f} "
            f"| {r['fo_s']['old']:.1f} → {r['fo_s']['new']:.1f} |")
    worse = [(r["problem"], p) for r in rows for p in r["worse_points"]]
    if worse:
        lines += ["", "## Points the new code derives to more FLOPs or refuses", ""]
        for problem, (point, a, b) in worse:
            lines.append(f"- {problem}: `{json.dumps(point, sort_keys=True)}`: old "
                         f"{a.get('flops', a.get('error'))}, new {b.get('flops', b.get('error'))}")
    lines += ["", "Named points (GFLOP, old → new):", ""]
    for r in rows:
        parts = []
        for name in r["named"]["old"]:
            a, b = r["named"]["old"][name], r["named"]["new"].get(name)
            parts.append(f"{name} {_gflop(a)} → {_gflop(b)}")
        lines.append(f"- {r['problem']}: " + "; ".join(parts))
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", type=Path, required=True, help="the old checkout (a worktree)")
    ap.add_argument("--new", type=Path, default=ROOT, help="the new checkout (default: here)")
    ap.add_argument("--problems", default=SHIPPED, help="PROBLEM:N,... (default: the shipped five)")
    ap.add_argument("--sample", type=int, default=24, help="points sampled per problem")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per problem")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "DERIVATIONS.md")
    a = ap.parse_args(argv)
    rows = []
    for item in a.problems.split(","):
        problem, _, n = item.partition(":")
        row = compare(a.old.resolve(), a.new.resolve(), problem, int(n), a.sample, a.rounds,
                      a.seed)
        print(f"{row['problem']}: kept {row['kept']}/{row['old_ok']} ({row['cheaper']} cheaper),"
              f" worse {row['worse']}, refused {row['refused']}; flop-optimal "
              f"{row['fo_old'] / 1e9:.3f} -> {row['fo_new'] / 1e9:.3f} GFLOP; sample "
              f"{row['sample_s']['old']:.1f} -> {row['sample_s']['new']:.1f} s; search "
              f"{row['fo_s']['old']:.1f} -> {row['fo_s']['new']:.1f} s", flush=True)
        rows.append(row)
    write(rows, a.old.resolve(), a.new.resolve(), a.sample, a.rounds, a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
