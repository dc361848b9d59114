"""Loading benchmark for tuned plans (prints a table).

Measures, for a plan file:
* the first load + first call in a fresh process with cold caches (PyTensor's and
  autotune's compile caches pointed at an empty folder),
* the same in a fresh process with warm caches (what a second production process pays),
* the per-call overhead of ``TunedFunction.__call__`` (argument checks, thread limit, lock)
  against calling the compiled PyTensor function directly, interleaved, at the plan's size.

    python benchmarks/loading.py [PLAN] [--n 1000]

Without PLAN it tunes a small Kalman plan at the requested n first (results/ is left alone:
the plan goes to a temporary folder).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import time, sys
t0 = time.perf_counter()
import autotune
from autotune.instances import random_instance
t1 = time.perf_counter()
f = autotune.load_plan(sys.argv[1])
t2 = time.perf_counter()
x = random_instance(f.problem, f.dims, seed=0)
t3 = time.perf_counter()
f(**x)
t4 = time.perf_counter()
f(**x)
t5 = time.perf_counter()
print(f"{t1-t0:.3f} {t2-t1:.3f} {t4-t3:.3f} {t5-t4:.3f}")
"""


def fresh_process(plan: Path, env: dict[str, str]) -> list[float]:
    r = subprocess.run([sys.executable, "-c", CHILD, str(plan)], capture_output=True, text=True,
                       env=env, check=True)
    return [float(x) for x in r.stdout.split()]


def overhead(plan: Path, rounds: int = 30) -> tuple[float, float]:
    import autotune
    from autotune.instances import random_instance
    from autotune.targets import thread_limit

    f = autotune.load_plan(plan)
    x = random_instance(f.problem, f.dims, seed=0)
    args = [x[n] for n in f.input_names]
    raw = f.function
    f(**x)
    raw(*args)
    wrapped, direct = [], []
    with thread_limit(f.target):
        for _ in range(rounds):  # interleaved: A B A B ...
            t = time.perf_counter()
            raw(*args)
            direct.append(time.perf_counter() - t)
            t = time.perf_counter()
            f.__call__(**x)
            wrapped.append(time.perf_counter() - t)
    return statistics.median(wrapped), statistics.median(direct)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("plan", nargs="?", type=Path)
    ap.add_argument("--n", type=int, default=1000)
    a = ap.parse_args()
    from autotune.targets import configure_environment

    configure_environment()
    plan = a.plan
    if plan is None:
        from autotune.runner import run_tuning
        from autotune.search import SearchConfig
        from autotune.spec import load_problem

        p = load_problem("kalman")
        out = Path(tempfile.mkdtemp(prefix="autotune-load-"))
        plan = run_tuning(p, p.resolve_dims({"n": a.n}),
                          SearchConfig(trials=4, timeout=120, out=out, low_fidelity=False),
                          quiet=True)
    cold = tempfile.mkdtemp(prefix="autotune-cold-")
    env_cold = {**os.environ, "PYTENSOR_FLAGS": f"compiledir={cold}/pytensor",
                "AUTOTUNE_CACHE_DIR": f"{cold}/autotune", "NUMBA_CACHE_DIR": f"{cold}/numba"}
    c = fresh_process(plan, env_cold)
    w = fresh_process(plan, dict(os.environ))
    wrapped, direct = overhead(plan)
    print(f"plan: {plan}")
    print(f"{'':34s}{'import':>9s}{'load':>9s}{'1st call':>10s}{'2nd call':>10s}")
    print(f"{'fresh process, cold caches':34s}" + "".join(f"{v:9.3f}s" for v in c))
    print(f"{'fresh process, warm caches':34s}" + "".join(f"{v:9.3f}s" for v in w))
    print(f"per call: TunedFunction {wrapped * 1e3:.2f} ms, compiled function {direct * 1e3:.2f}"
          f" ms, overhead {100 * (wrapped / direct - 1):+.1f}%")


if __name__ == "__main__":
    main()
