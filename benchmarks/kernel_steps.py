"""Each registry kernel as a compiled one-step program against the BLAS / LAPACK call it stands
for (a script, not an asv suite).

For every kernel of :data:`autotune.kernels.KERNELS` with a BLAS/LAPACK counterpart (``matmul``
as ``?gemm`` and ``?gemv`` with every transpose combination, ``syrk``, ``symprod`` against the
full ``?gemm``, ``trsolve`` / ``trsm``, ``trmm``, ``cholesky`` / ``potrf``, ``cho_solve`` /
``potrs``, ``spd_inv`` / ``potrf + potri``, ``inv`` / ``getrf + getri``, ``solve`` / ``gesv``
and ``posv``), the step is lowered by its registry record (a transposed operand by the
``transpose`` record: a view), compiled with :func:`autotune.targets.compile_function` for
``numba-t1`` and ``numba-t<all cores>``, and called on C-ordered operands, as a program's inputs
are. The reference is the ``scipy.linalg.blas`` / ``scipy.linalg.lapack`` call with the same
transposes on Fortran-ordered copies of the same operands (so that f2py copies nothing but what
LAPACK overwrites), under the same thread limit. Calls are interleaved (step, reference, step,
...), each figure is a median over ``--repeats`` rounds, and the ratio is step / reference.

Run from the repository root (default n = 2000, a few minutes; ``--quick``: n = 500)::

    OPENBLAS_THREAD_TIMEOUT=12 python benchmarks/kernel_steps.py [--quick] [--n N]

writes ``results/KERNEL_STEPS.md``. On a shared machine the figures are noisy: compare them
between runs, not to a tolerance.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

LIMIT = 1.10
OUT = Path(__file__).resolve().parent.parent / "results" / "KERNEL_STEPS.md"


@dataclass(frozen=True)
class Case:
    """One kernel step: ``kernel`` with ``attrs`` on operands of ``shapes`` (``transposed[j]``:
    operand ``j`` enters through a transpose step, its stored array being ``shapes[j]``
    reversed), ``operands(rng, n)`` the C-ordered operands, ``reference(*fortran operands)`` the
    BLAS/LAPACK call."""

    kernel: str
    what: str
    call: str
    shapes: Callable[[int], tuple[tuple[int, int], ...]]
    shape: Callable[[int], tuple[int, int]]
    reference: Callable[..., Any]
    attrs: tuple[tuple[str, Any], ...] = ()
    transposed: tuple[bool, ...] = ()
    kind: str = "general"  # operand kind: general, spd, lower (a Cholesky factor)


def _cases() -> list[Case]:
    from scipy.linalg import blas, lapack

    sq = lambda n: (n, n)  # noqa: E731
    vec = lambda n: (n, 1)  # noqa: E731
    out: list[Case] = []
    for ta in (False, True):
        for tb in (False, True):
            a = "A.T" if ta else "A"
            b = "B.T" if tb else "B"
            out.append(Case(
                "matmul", f"{a} @ {b} (n x n)", f"dgemm(trans_a={int(ta)}, trans_b={int(tb)})",
                lambda n: ((n, n), (n, n)), sq,
                lambda x, y, ta=ta, tb=tb: blas.dgemm(1.0, x, y, trans_a=int(ta),
                                                      trans_b=int(tb)),
                transposed=(ta, tb)))
        a = "A.T" if ta else "A"
        out.append(Case(
            "matmul", f"{a} @ x (n x 1)", f"dgemv(trans={int(ta)})",
            lambda n: ((n, n), (n, 1)), vec,
            lambda x, y, ta=ta: blas.dgemv(1.0, x, y[:, 0], trans=int(ta)),
            transposed=(ta, False)))
    out += [
        Case("syrk", "A.T @ A (n x n)", "dsyrk(trans=1)", lambda n: ((n, n),), sq,
             lambda x: blas.dsyrk(1.0, x, trans=1, lower=1)),
        Case("symprod", "A @ B, lower triangle (n x n)", "dgemm (full)",
             lambda n: ((n, n), (n, n)), sq, lambda x, y: blas.dgemm(1.0, x, y)),
        Case("trsolve", "L^-1 B", "dtrsm(lower=1)", lambda n: ((n, n), (n, n)), sq,
             lambda x, y: blas.dtrsm(1.0, x, y, lower=1), attrs=(("lower", True),),
             kind="lower"),
        Case("trsolve", "L^-T B", "dtrsm(lower=1, trans_a=1)", lambda n: ((n, n), (n, n)), sq,
             lambda x, y: blas.dtrsm(1.0, x, y, lower=1, trans_a=1),
             attrs=(("lower", True), ("trans", True)), kind="lower"),
        Case("trmm", "L @ B", "dtrmm(lower=1)", lambda n: ((n, n), (n, n)), sq,
             lambda x, y: blas.dtrmm(1.0, x, y, lower=1), attrs=(("lower", True),),
             kind="lower"),
        Case("trmm", "L.T @ B", "dtrmm(lower=1, trans_a=1)", lambda n: ((n, n), (n, n)), sq,
             lambda x, y: blas.dtrmm(1.0, x, y, lower=1, trans_a=1),
             attrs=(("lower", True), ("trans", True)), kind="lower"),
        Case("cholesky", "chol(S)", "dpotrf(lower=1)", lambda n: ((n, n),), sq,
             lambda x: lapack.dpotrf(x, lower=1), kind="spd"),
        Case("cho_solve", "(L L.T)^-1 B", "dpotrs(lower=1)", lambda n: ((n, n), (n, n)), sq,
             lambda x, y: lapack.dpotrs(x, y, lower=1), kind="lower"),
        Case("spd_inv", "S^-1", "dpotrf + dpotri", lambda n: ((n, n),), sq,
             lambda x: lapack.dpotri(lapack.dpotrf(x, lower=1)[0], lower=1), kind="spd"),
        Case("inv", "A^-1", "dgetrf + dgetri", lambda n: ((n, n),), sq, _getri),
        Case("solve", "A^-1 B (gen)", "dgesv", lambda n: ((n, n), (n, n)), sq,
             lambda x, y: lapack.dgesv(x, y)),
        Case("solve", "S^-1 B (pos)", "dposv(lower=1)", lambda n: ((n, n), (n, n)), sq,
             lambda x, y: lapack.dposv(x, y, lower=1), attrs=(("assume_a", "pos"),),
             kind="spd"),
    ]
    return out


def _getri(x: np.ndarray) -> Any:
    from scipy.linalg import lapack

    lu, piv, _ = lapack.dgetrf(x)
    lwork = int(lapack.dgetri_lwork(x.shape[0])[0])
    return lapack.dgetri(lu, piv, lwork=lwork)


def _operands(case: Case, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """C-ordered operands as stored (a transposed operand is stored as its transpose)."""
    out = []
    for j, (r, c) in enumerate(case.shapes(n)):
        g = rng.standard_normal((r, c))
        if j == 0 and case.kind == "spd":
            g = g @ g.T / r + np.eye(r)
        elif j == 0 and case.kind == "lower":
            g = np.linalg.cholesky(g @ g.T / r + np.eye(r))
        if j < len(case.transposed) and case.transposed[j]:
            g = np.ascontiguousarray(g.T)
        out.append(np.ascontiguousarray(g))
    return out


def _compile(case: Case, n: int, target: str) -> Any:
    import pytensor.tensor as pt

    from autotune.kernels import KERNELS
    from autotune.program import Step
    from autotune.targets import compile_function

    variables, args = [], []
    for j, (r, c) in enumerate(case.shapes(n)):
        t = j < len(case.transposed) and case.transposed[j]
        v = pt.tensor(f"x{j}", shape=(c, r) if t else (r, c), dtype="float64")
        variables.append(v)
        args.append(KERNELS["transpose"].lower(Step("transpose", (j,), (str(r), str(c))),
                                               [v], {}, "float64") if t else v)
    m, k = case.shape(n)
    step = Step(case.kernel, tuple(range(len(args))), (str(m), str(k)), case.attrs)
    out = KERNELS[case.kernel].lower(step, args, {}, "float64")
    return compile_function(target, variables, [out])


def _time(f: Callable[..., Any], *args: Any) -> float:
    t0 = time.perf_counter()
    f(*args)
    return time.perf_counter() - t0


def run(n: int, repeats: int, targets: list[str],
        kernels: set[str] | None = None) -> list[dict[str, Any]]:
    from autotune.targets import thread_limit

    rng = np.random.default_rng(0)
    rows = []
    for case in _cases():
        if kernels is not None and case.kernel not in kernels:
            continue
        ops = _operands(case, n, rng)
        # the reference sees the same matrices in Fortran order, the transposes as flags
        fops = [np.asfortranarray(x.T if j < len(case.transposed) and case.transposed[j] else x)
                for j, x in enumerate(ops)]
        for target in targets:
            fn = _compile(case, n, target)
            with thread_limit(target):
                got = np.asarray(fn(*ops)[0])
                step_t, ref_t = [], []
                case.reference(*fops)
                for _ in range(repeats):
                    step_t.append(_time(fn, *ops))
                    ref_t.append(_time(case.reference, *fops))
            s, r = statistics.median(step_t), statistics.median(ref_t)
            rows.append({"kernel": case.kernel, "what": case.what, "call": case.call,
                         "target": target, "step_ms": 1e3 * s, "ref_ms": 1e3 * r,
                         "ratio": s / r, "shape": got.shape})
            row = rows[-1]
            print(f"{case.kernel:10s} {case.what:30s} {target:9s} step {row['step_ms']:9.3f} ms"
                  f"  {case.call:28s} {row['ref_ms']:9.3f} ms  ratio {row['ratio']:.2f}",
                  flush=True)
    return rows


def write(rows: list[dict[str, Any]], n: int, repeats: int, path: Path) -> None:
    lines = [
        "# Kernel steps against BLAS / LAPACK",
        "",
        f"Written by `benchmarks/kernel_steps.py` at n = {n}, float64, median of {repeats} "
        f"interleaved rounds; {platform.machine()}, {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Each autotune step is the "
        "kernel's registry lowering compiled alone (C-ordered operands, a transposed operand as a "
        "transpose view); the reference is the `scipy.linalg.blas`/`lapack` call with the same "
        "transposes on Fortran-ordered operands. Both run under the heap policy `retain`, as "
        "tuned plans do (`autotune/memory.py`: a fresh result reuses freed pages instead of "
        "faulting new ones in). Ratio: step / reference; the goal is "
        f"<= {LIMIT:.2f}.",
        "",
        "| kernel | shapes / transposes | target | autotune step (ms) | BLAS call | BLAS (ms) "
        f"| ratio | within {LIMIT:.2f}x? |",
        "|---|---|---|---:|---|---:|---:|:---:|",
    ]
    for r in rows:
        ok = "yes" if r["ratio"] <= LIMIT else "**no**"
        lines.append(f"| {r['kernel']} | {r['what']} | {r['target']} | {r['step_ms']:.3f} | "
                     f"`{r['call']}` | {r['ref_ms']:.3f} | {r['ratio']:.2f} | {ok} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 500")
    parser.add_argument("--n", type=int, default=None, help="matrix order (default 2000)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", default=None,
                        help="comma-separated thread counts (default: 1 and all cores)")
    parser.add_argument("--kernels", default=None,
                        help="comma-separated kernel names (default: all with a counterpart)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    from autotune.memory import set_heap_policy

    set_heap_policy("retain")  # as load_plan does for a tuned plan
    n = args.n or (500 if args.quick else 2000)
    repeats = args.repeats or (15 if n <= 500 else 5)
    cores = os.cpu_count() or 1
    counts = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, cores})
    kernels = set(args.kernels.split(",")) if args.kernels else None
    rows = run(n, repeats, [f"numba-t{t}" for t in counts], kernels)
    write(rows, n, repeats, args.out)


if __name__ == "__main__":
    main()
