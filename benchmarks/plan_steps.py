"""A tuned plan against the sum of its own kernels, each as the standalone BLAS / LAPACK call an
expert would make for it (a script, not an asv suite).

For each plan (default: the committed Kalman plans at n = 2000 and n = 4000), the plan is loaded
with :func:`autotune.load_plan` and its program (``TunedFunction.program``) evaluated step by
step in NumPy on a random instance (each kernel's registry ``reference``; inputs, transposes and
slices as views). Every computing step then gets its standalone call on those very operands,
with the transpose flags their layouts allow (a C-ordered operand is the Fortran-ordered view of
its transpose: no copy) and Fortran-ordered copies, made outside the timed region, of what
LAPACK overwrites (f2py copies those once more inside the call, as every SciPy user pays):

* ``matmul``: ``?gemm`` (``?gemv`` for a vector), with alpha, beta and C when the step has them;
* ``syrk``: ``?syrk`` (trans from the operand's layout, beta and C) and the mirror of its
  triangle, a row of its own (an in-place tiled copy, memory-bound: the compiled loop of
  ``autotune.kernels.blas``, as no BLAS has one), counted in the sum since the
  plan's result is the full matrix;
* ``symprod``: two ways, the faster counted: ``?gemmt`` (one triangle of the product, from the
  CBLAS of SciPy's OpenBLAS, when it exports it) plus the mirror, or the full ``?gemm``;
* ``trsolve`` / ``trmm``: ``?trsm`` / ``?trmm`` (side, lower and trans from the step's attributes
  and the operand's layout); ``cholesky``: ``?potrf``; ``cho_solve``: ``?potrs``; ``spd_inv``:
  ``?potrf`` + ``?potri`` and the mirror; ``inv``: ``?getrf`` + ``?getri``; ``solve``:
  ``?posv`` (``assume_a='pos'``), ``?sysv`` (``'sym'``) or ``?gesv``;
* ``add``, ``sub``, ``neg``, ``scale``, ``diag_mul``, ``diag_solve``, ``band_mul``, ``block``,
  ``scalar``: the NumPy expression (memory-bound, labelled so).

The timing is interleaved: each round calls, in a new (seeded random) order, the plan as a user
calls it (checks on), the plan's bare compiled function (``TunedFunction.function`` on the bound
arrays), the SciPy expert of the problem (:data:`autotune.experts.EXPERTS`), one ``?gemm`` of
n x n x n (the GEMM rate of the physical limit, measured in the same rounds) and every step's
call once; all under the same thread limit (the plan's thread count, or 1 with ``--threads 1``,
for which the plan is re-targeted to ``<backend>-t1``), with the plan's heap policy (process-wide,
applied by ``load_plan``) and autotune's ``OPENBLAS_THREAD_TIMEOUT``. Figures are medians over
``--repeats`` rounds after one warm-up round. The goal of the issue "Pay only for the
computation": the plan within 1.05x the sum of its kernels, and significantly faster than the
expert by LAAB's rule (:mod:`autotune.stats`).

Run from the repository root (minutes at n = 4000; nothing else should run meanwhile)::

    python -m benchmarks.plan_steps [PLAN ...] [--repeats 15] [--threads all|1]
        [--out results/PLAN_STEPS.md]
"""

from __future__ import annotations

from autotune.targets import configure_environment

configure_environment()  # before numpy's OpenBLAS loads: OPENBLAS_THREAD_TIMEOUT

import argparse  # noqa: E402
import ctypes  # noqa: E402
import dataclasses  # noqa: E402
import gc  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable, Mapping, Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"
DEFAULT_PLANS = (RESULTS / "plan-kalman-k1000-n2000-float64.json",
                 RESULTS / "plan-kalman-k2000-n4000-float64.json")
OUT = RESULTS / "PLAN_STEPS.md"
GOAL = 1.05
MEMORY_BOUND = "NumPy (memory-bound)"


# -- the standalone calls ----------------------------------------------------------------------


@dataclass
class Call:
    """One standalone call: ``run()`` is what is timed, ``value(run())`` the step's value from
    its raw result (None: a call whose result is not the step's value, e.g. the mirror)."""

    text: str
    kind: str  # BLAS, LAPACK, CBLAS, mirror, NumPy (memory-bound)
    run: Callable[[], Any]
    value: Callable[[Any], np.ndarray] | None = None


@dataclass
class StepCalls:
    """The standalone calls of one step: ``ways`` are alternatives (each a list of calls that
    together compute the step); the sum of the kernels counts the fastest way."""

    index: int
    op: str
    shapes: str
    attrs: str
    ways: list[list[Call]] = field(default_factory=list)


def _fview(x: np.ndarray) -> tuple[np.ndarray, bool]:
    """``(f, transposed)``: a Fortran-contiguous array with ``x == (f.T if transposed else
    f)``; a view for a C- or F-contiguous ``x`` (a C-ordered matrix is the Fortran-ordered
    view of its transpose), else a Fortran copy (made here, outside any timing)."""
    if x.flags.f_contiguous:
        return x, False
    if x.flags.c_contiguous:
        return x.T, True
    return np.asfortranarray(x), False


def _fcopy(x: np.ndarray) -> np.ndarray:
    """A Fortran-ordered copy of an operand LAPACK overwrites (made outside the timing; the
    call itself copies it again, as f2py does without ``overwrite_*``)."""
    return np.array(x, order="F", copy=True)


def _full_from_lower(x: np.ndarray) -> np.ndarray:
    return np.tril(x) + np.tril(x, -1).T


_MIRROR: list[Callable[[np.ndarray], Any]] = []


def _mirror_fn() -> Callable[[np.ndarray], Any]:
    """The in-place mirror of a lower triangle onto the upper one: the compiled, L1-tiled
    loop of :mod:`autotune.kernels.blas` (the fastest in-place mirror at hand; it has no
    Python wrapper of its own, so a numba function calls it), else NumPy's tiled
    ``mirror_lower_to_upper``."""
    if not _MIRROR:
        try:
            import numba

            from autotune.kernels.blas import _numba_mirror_lower_to_upper

            @numba.njit(cache=False)
            def mirror(x: np.ndarray) -> None:  # pragma: no cover - compiled
                _numba_mirror_lower_to_upper(x)

        except ImportError:  # pragma: no cover - no numba
            from autotune.kernels import mirror_lower_to_upper as mirror
        _MIRROR.append(mirror)
    return _MIRROR[0]


def _mirror_call(n: int, dtype: str) -> Call:
    """The mirror of an n x n triangle onto the other, in place, on a C-ordered scratch array
    (mirroring is idempotent: every call does the same work)."""
    buf = np.ascontiguousarray(np.random.default_rng(1).standard_normal((n, n)).astype(dtype))
    mirror = _mirror_fn()
    return Call(f"mirror lower -> upper ({n} x {n}, compiled tiled copy)", "mirror",
                lambda: mirror(buf))


def _fn(module: Any, prefix: str, name: str) -> Any:
    return getattr(module, prefix + name)


def _gemm_calls(step: Any, x: Sequence[np.ndarray], p: str) -> list[Call]:
    from scipy.linalg import blas

    a, b = x[0], x[1]
    c = x[2] if len(x) > 2 else None
    alpha = float(step.attr("alpha", 1.0))
    beta = float(step.attr("beta", 0.0)) if c is not None else 0.0
    ab = f"alpha={alpha:g}" + (f", beta={beta:g}, C" if c is not None else "")
    m, n = a.shape[0], b.shape[1]
    if n == 1:  # y = alpha A x + beta y
        gemv = _fn(blas, p, "gemv")
        af, ta = _fview(a)
        xv = np.ascontiguousarray(b[:, 0])
        if c is None:
            run = lambda: gemv(alpha, af, xv, trans=int(ta))  # noqa: E731
        else:
            yv = np.ascontiguousarray(c[:, 0])
            run = lambda: gemv(alpha, af, xv, beta=beta, y=yv, trans=int(ta))  # noqa: E731
        return [Call(f"{p}gemv(trans={int(ta)}, {ab})", "BLAS", run,
                     lambda r: np.asarray(r)[:, None])]
    if m == 1:  # y.T = alpha B.T a.T + beta c.T
        gemv = _fn(blas, p, "gemv")
        bf, tb = _fview(b)
        xv = np.ascontiguousarray(a[0, :])
        trans = int(not tb)
        if c is None:
            run = lambda: gemv(alpha, bf, xv, trans=trans)  # noqa: E731
        else:
            yv = np.ascontiguousarray(c[0, :])
            run = lambda: gemv(alpha, bf, xv, beta=beta, y=yv, trans=trans)  # noqa: E731
        return [Call(f"{p}gemv(trans={trans}, {ab}) (row vector)", "BLAS", run,
                     lambda r: np.asarray(r)[None, :])]
    gemm = _fn(blas, p, "gemm")
    af, ta = _fview(a)
    bf, tb = _fview(b)
    if c is None:
        run = lambda: gemm(alpha, af, bf, trans_a=int(ta), trans_b=int(tb))  # noqa: E731
    else:
        cf = _fcopy(c)
        run = lambda: gemm(alpha, af, bf, beta, cf, trans_a=int(ta),  # noqa: E731
                           trans_b=int(tb))
    return [Call(f"{p}gemm(trans_a={int(ta)}, trans_b={int(tb)}, {ab})", "BLAS", run,
                 lambda r: np.asarray(r))]


def _syrk_calls(step: Any, x: Sequence[np.ndarray], p: str) -> list[Call]:
    from scipy.linalg import blas

    syrk = _fn(blas, p, "syrk")
    a = x[0]
    c = x[1] if len(x) > 1 else None
    alpha = float(step.attr("alpha", 1.0))
    beta = float(step.attr("beta", 0.0)) if c is not None else 0.0
    af, ta = _fview(a)
    trans = int(not ta)  # a.T @ a: trans=1 on a itself, trans=0 on the memory of a.T
    if c is None:
        run = lambda: syrk(alpha, af, trans=trans, lower=1)  # noqa: E731
    else:
        cf = _fcopy(c)
        run = lambda: syrk(alpha, af, beta, cf, trans=trans, lower=1)  # noqa: E731
    ab = f"alpha={alpha:g}" + (f", beta={beta:g}, C" if c is not None else "")
    n = a.shape[1]
    return [Call(f"{p}syrk(trans={trans}, lower=1, {ab})", "BLAS", run,
                 lambda r: _full_from_lower(np.asarray(r))),
            _mirror_call(n, str(a.dtype))]


_CBLAS_ROW_MAJOR, _CBLAS_NO_TRANS, _CBLAS_TRANS, _CBLAS_LOWER = 101, 111, 112, 122


def _cblas_gemmt(p: str) -> Any | None:
    """``cblas_?gemmt`` of the OpenBLAS SciPy's BLAS calls (32-bit integers), or None."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover
        return None
    for info in threadpool_info():
        path = info.get("filepath", "")
        if info.get("internal_api") != "openblas" or "scipy.libs" not in path:
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in (f"scipy_cblas_{p}gemmt", f"cblas_{p}gemmt"):
            fn = getattr(lib, name, None)
            if fn is not None:
                scalar = ctypes.c_double if p == "d" else ctypes.c_float
                i, ptr = ctypes.c_int, ctypes.c_void_p
                fn.argtypes = [i, i, i, i, i, i, scalar, ptr, i, ptr, i, scalar, ptr, i]
                fn.restype = None
                return fn
    return None


def _row_major(x: np.ndarray) -> tuple[np.ndarray, int, int]:
    """``(memory, trans, ld)`` of ``x`` for a row-major CBLAS call, without a copy when ``x``
    is C- or F-contiguous."""
    if x.flags.c_contiguous:
        return x, _CBLAS_NO_TRANS, max(1, x.shape[1])
    if x.flags.f_contiguous:
        return x.T, _CBLAS_TRANS, max(1, x.shape[0])
    y = np.ascontiguousarray(x)
    return y, _CBLAS_NO_TRANS, max(1, y.shape[1])


def _symprod_ways(step: Any, x: Sequence[np.ndarray], p: str) -> list[list[Call]]:
    a, b = x[0], x[1]
    c = x[2] if len(x) > 2 else None
    alpha = float(step.attr("alpha", 1.0))
    beta = float(step.attr("beta", 0.0)) if c is not None else 0.0
    k, n = a.shape
    full = _gemm_calls(step, x, p)
    full[0].text += " (full product)"
    ways = [full]
    gemmt = _cblas_gemmt(p)
    if gemmt is not None:
        am, ta, lda = _row_major(a)
        bm, tb, ldb = _row_major(b)
        cc = np.ascontiguousarray(c) if c is not None else None
        dtype = a.dtype

        def run() -> np.ndarray:
            out = cc.copy() if cc is not None else np.empty((k, k), dtype=dtype)
            gemmt(_CBLAS_ROW_MAJOR, _CBLAS_LOWER, ta, tb, k, n, alpha, am.ctypes.data, lda,
                  bm.ctypes.data, ldb, beta, out.ctypes.data, k)
            return out

        ab = f"alpha={alpha:g}" + (f", beta={beta:g}, C copied" if c is not None else "")
        ways.insert(0, [Call(f"cblas_{p}gemmt(row-major, lower, {ab})", "CBLAS", run,
                             _full_from_lower), _mirror_call(k, str(dtype))])
    return ways


def _tri_calls(step: Any, x: Sequence[np.ndarray], p: str, name: str) -> list[Call]:
    from scipy.linalg import blas

    fn = _fn(blas, p, name)
    af, ta = _fview(x[0])
    bf = _fcopy(x[1])
    lower = bool(step.attr("lower", True)) ^ ta  # the memory of A.T: the other triangle
    trans = bool(step.attr("trans", False)) ^ ta
    side = int(step.attr("side", "left") == "right")
    alpha = float(step.attr("alpha", 1.0)) if name == "trmm" else 1.0

    def run() -> Any:
        return fn(alpha, af, bf, side=side, lower=int(lower), trans_a=int(trans))

    extra = f", alpha={alpha:g}" if alpha != 1.0 else ""
    return [Call(f"{p}{name}(side={side}, lower={int(lower)}, trans_a={int(trans)}{extra})",
                 "BLAS", run, lambda r: np.asarray(r))]


def _lapack_calls(step: Any, x: Sequence[np.ndarray], p: str) -> list[Call]:
    from scipy.linalg import lapack

    op = step.op
    if op == "cholesky":
        potrf = _fn(lapack, p, "potrf")
        sf = _fcopy(x[0])
        return [Call(f"{p}potrf(lower=1)", "LAPACK", lambda: potrf(sf, lower=1),
                     lambda r: r[0])]
    if op == "cho_solve":
        potrs = _fn(lapack, p, "potrs")
        lf, tl = _fview(x[0])  # a C-ordered L is the Fortran upper factor L.T
        bf = _fcopy(x[1])
        lower = int(not tl)
        return [Call(f"{p}potrs(lower={lower})", "LAPACK", lambda: potrs(lf, bf, lower=lower),
                     lambda r: r[0])]
    if op == "solve":
        af, bf = _fcopy(x[0]), _fcopy(x[1])
        kind = step.attr("assume_a", "gen")
        if kind == "pos":
            posv = _fn(lapack, p, "posv")
            return [Call(f"{p}posv(lower=1)", "LAPACK", lambda: posv(af, bf, lower=1),
                         lambda r: r[1])]
        if kind == "sym":
            sysv = _fn(lapack, p, "sysv")
            return [Call(f"{p}sysv(lower=1)", "LAPACK", lambda: sysv(af, bf, lower=1),
                         lambda r: r[2])]
        gesv = _fn(lapack, p, "gesv")
        return [Call(f"{p}gesv", "LAPACK", lambda: gesv(af, bf), lambda r: r[2])]
    if op == "spd_inv":
        potrf, potri = _fn(lapack, p, "potrf"), _fn(lapack, p, "potri")
        sf = _fcopy(x[0])
        return [Call(f"{p}potrf(lower=1) + {p}potri(lower=1)", "LAPACK",
                     lambda: potri(potrf(sf, lower=1)[0], lower=1),
                     lambda r: _full_from_lower(r[0])),
                _mirror_call(x[0].shape[0], str(x[0].dtype))]
    if op == "inv":
        getrf, getri = _fn(lapack, p, "getrf"), _fn(lapack, p, "getri")
        af = _fcopy(x[0])
        lwork = int(_fn(lapack, p, "getri_lwork")(af.shape[0])[0])

        def run() -> Any:
            lu, piv, _ = getrf(af)
            return getri(lu, piv, lwork=lwork)

        return [Call(f"{p}getrf + {p}getri", "LAPACK", run, lambda r: r[0])]
    raise ValueError(f"no LAPACK call for {op!r}")


def _band(step: Any, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The banded product in NumPy, diagonal by diagonal (what an expert writes without a
    banded BLAS): one scaled, shifted row block of ``b`` per diagonal of the band."""
    lower, upper = int(step.attr("lower", 0)), int(step.attr("upper", 0))
    right = step.attr("side", "left") == "right"
    if right:  # B @ A = (A.T @ B.T).T: views
        a, b, lower, upper = a.T, b.T, upper, lower
    n = a.shape[0]
    out = np.zeros((n, b.shape[1]), dtype=b.dtype)
    for d in range(-lower, upper + 1):
        if abs(d) >= n:
            continue
        v = np.diagonal(a, offset=d)[:, None]  # a[i, i + d]
        if d >= 0:
            out[: n - d] += v * b[d:]
        else:
            out[-d:] += v * b[: n + d]
    return out.T if right else out


def _block(step: Any, x: Sequence[np.ndarray]) -> np.ndarray:
    return np.block([[x[i].T if tr else x[i] for i, tr in row] for row in step.attr("grid")])


def _memory_calls(step: Any, x: Sequence[np.ndarray]) -> list[Call]:
    from autotune.kernels import KERNELS

    op = step.op
    ops = list(x)
    if op == "add":
        a, b = ops
        return [Call("A + B", MEMORY_BOUND, lambda: a + b, np.asarray)]
    if op == "sub":
        a, b = ops
        return [Call("A - B", MEMORY_BOUND, lambda: a - b, np.asarray)]
    if op == "neg":
        a = ops[0]
        return [Call("-A", MEMORY_BOUND, lambda: -a, np.asarray)]
    if op == "diag_mul":
        d, b = ops
        if step.attr("side", "left") == "left":
            return [Call("diag(D)[:, None] * B", MEMORY_BOUND,
                         lambda: np.diagonal(d)[:, None] * b, np.asarray)]
        return [Call("B * diag(D)[None, :]", MEMORY_BOUND,
                     lambda: b * np.diagonal(d)[None, :], np.asarray)]
    if op == "diag_solve":
        d, b = ops
        return [Call("B / diag(D)[:, None]", MEMORY_BOUND,
                     lambda: b / np.diagonal(d)[:, None], np.asarray)]
    if op == "band_mul":
        a, b = ops
        return [Call("diagonal by diagonal (NumPy)", MEMORY_BOUND, lambda: _band(step, a, b),
                     np.asarray)]
    if op == "block":
        return [Call("np.block (assembly copy)", MEMORY_BOUND, lambda: _block(step, ops),
                     np.asarray)]
    ref = KERNELS[op].reference  # scale, scalar: the registry's NumPy expression
    assert ref is not None
    return [Call(f"NumPy {KERNELS[op].pattern}", MEMORY_BOUND, lambda: ref(step, ops),
                 np.asarray)]


def step_calls(step: Any, index: int, x: Sequence[np.ndarray], dtype: str) -> StepCalls:
    """The standalone calls of ``step`` on its operand values ``x``."""
    p = "d" if np.dtype(dtype) == np.float64 else "s"
    op = step.op
    if op == "matmul":
        ways = [_gemm_calls(step, x, p)]
    elif op == "syrk":
        ways = [_syrk_calls(step, x, p)]
    elif op == "symprod":
        ways = _symprod_ways(step, x, p)
    elif op in ("trsolve", "trmm"):
        ways = [_tri_calls(step, x, p, "trsm" if op == "trsolve" else "trmm")]
    elif op in ("cholesky", "cho_solve", "solve", "spd_inv", "inv"):
        ways = [_lapack_calls(step, x, p)]
    else:
        ways = [_memory_calls(step, x)]
    shapes = " · ".join("x".join(str(s) for s in np.shape(v)) or "scalar" for v in x)
    attrs = ", ".join(f"{k}={v}" for k, v in step.attrs) or "-"
    return StepCalls(index, op, shapes, attrs, ways)


# -- the program's values ----------------------------------------------------------------------


def step_values(program: Any, dims: Mapping[str, int], inputs: Mapping[str, Any],
                dtype: str) -> dict[int, Any]:
    """Every live step's value, computed in NumPy (the registry's references; inputs,
    transposes and slices as views)."""
    from autotune.kernels import KERNELS
    from autotune.kernels.registry import dim

    env = program.concrete_sizes(dims)
    names = {i: n for n, i in program.inputs.items()}
    values: dict[int, Any] = {}
    for i in program.live_steps():
        step = program.steps[i]
        x = [values[j] for j in step.args]
        op = step.op
        if op == "input":
            v = inputs[step.attr("name", names.get(i))]
            values[i] = np.asarray(v, dtype=dtype) if np.ndim(v) == 0 else v
        elif op == "transpose":
            values[i] = x[0].T
        elif op == "slice":
            (r0, r1), (c0, c1) = step.attr("rows"), step.attr("cols")
            values[i] = x[0][dim(r0, env):dim(r1, env), dim(c0, env):dim(c1, env)]
        elif op == "eye":
            values[i] = np.eye(program.shape(i, env)[0], dtype=dtype)
        elif op == "zeros":
            values[i] = np.zeros(program.shape(i, env), dtype=dtype)
        elif op == "block":
            values[i] = _block(step, x)
        else:
            ref = KERNELS[op].reference
            if ref is None:
                raise ValueError(f"step {i}: op {op!r} has no NumPy reference")
            values[i] = np.asarray(ref(step, x), dtype=dtype)
    return values


#: Ops that compute nothing of their own (views and constants): no row.
_FREE = frozenset({"input", "transpose", "slice", "eye", "zeros"})


def program_calls(program: Any, dims: Mapping[str, int], values: Mapping[int, Any],
                  dtype: str) -> list[StepCalls]:
    """The standalone calls of every live computing step of ``program``."""
    out = []
    for i in program.live_steps():
        step = program.steps[i]
        if step.op in _FREE:
            continue
        out.append(step_calls(step, i, [values[j] for j in step.args], dtype))
    return out


# -- timing ------------------------------------------------------------------------------------


def _retarget(path: Path, threads: str) -> Any:
    """The plan as ``load_plan`` loads it; with ``threads='1'`` the same plan on
    ``<backend>-t1`` (its program unchanged)."""
    from autotune import load_plan
    from autotune.api import TunedFunction
    from autotune.plan import read_plan

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a plan tuned on another machine: a PlanWarning
        if threads == "all":
            return load_plan(path)
        plan = read_plan(path)
        content = dict(plan.content)
        target = dict(content["target"])
        target["name"] = re.sub(r"-t\d+$", f"-t{threads}", target["name"])
        target["threads"] = int(threads)
        content["target"] = target
        return TunedFunction(dataclasses.replace(plan, content=content))


def _timed(fn: Callable[[], Any]) -> Callable[[], float]:
    def run() -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    return run


def measure(path: Path, repeats: int, threads: str, seed: int = 0) -> dict[str, Any]:
    """Time one plan against its kernels, the expert and a GEMM, interleaved."""
    from scipy.linalg import blas

    from autotune.experts import EXPERTS
    from autotune.instances import random_instance
    from autotune.targets import thread_limit

    tf = _retarget(path, threads)
    dtype = tf.dtype
    x = random_instance(tf.problem, tf.dims, seed=seed, dtype=dtype)
    x = {k: (np.asarray(v) if np.ndim(v) else v) for k, v in x.items()}
    program = tf.program
    values = step_values(program, tf.dims, x, dtype)
    calls = program_calls(program, tf.dims, values, dtype)
    args = tf._bind((), x)  # the bound arrays, as a call binds them
    bare_fn = tf.function
    n = int(tf.dims["n"]) if "n" in tf.dims else int(max(tf.dims.values()))
    p = "d" if np.dtype(dtype) == np.float64 else "s"
    rng = np.random.default_rng(seed + 1)
    ga = np.asfortranarray(rng.standard_normal((n, n)).astype(dtype))
    gb = np.asfortranarray(rng.standard_normal((n, n)).astype(dtype))
    gemm = _fn(blas, p, "gemm")

    variants: dict[str, Callable[[], float]] = {
        "plan": _timed(lambda: tf(**x)),
        "bare": _timed(lambda: bare_fn(*args)),
        "gemm": _timed(lambda: gemm(1.0, ga, gb)),
    }
    expert = EXPERTS.get(tf.problem.name)
    if expert is not None:
        variants["expert"] = _timed(lambda: expert(x))
    for sc in calls:
        for w, way in enumerate(sc.ways):
            for c, call in enumerate(way):
                variants[call_key(sc, w, c)] = _timed(call.run)
    times: dict[str, list[float]] = {k: [] for k in variants}
    order = list(variants.items())
    shuffle = random.Random(seed).shuffle
    with thread_limit(tf.target):  # the same limit for all; the plan finds it in force
        for _, run in order:  # warm-up: numba compiles lazily, pages get faulted in
            run()
        t0 = time.perf_counter()
        for _ in range(repeats):
            shuffle(order)
            for key, run in order:
                times[key].append(run())
        wall = time.perf_counter() - t0
    info = {
        "plan": str(path.resolve().relative_to(REPO)) if path.resolve().is_relative_to(REPO)
        else str(path),
        "problem": tf.problem.name, "dims": dict(tf.dims), "dtype": dtype,
        "target": tf.target.name, "heap": tf.heap, "repeats": repeats, "wall_s": wall,
    }
    return summarize(info, program, calls, times, float(program.flops(tf.dims)), n)


def call_key(sc: StepCalls, way: int, call: int) -> str:
    """The timing key of call ``call`` of way ``way`` of step ``sc``."""
    return f"s{sc.index}.{way}.{call}"


def summarize(info: Mapping[str, Any], program: Any, calls: Sequence[StepCalls],
              times: Mapping[str, Sequence[float]], flops: float, gemm_n: int
              ) -> dict[str, Any]:
    """One plan's result from its samples (``times``: ``plan``, ``bare``, ``gemm``, maybe
    ``expert``, and every call by :func:`call_key`): medians, each step's counted way, the sum
    of the kernels, LAAB's verdict plan vs expert and the physical limit."""
    from autotune.stats import limit_ratio, quartiles, significantly_faster

    med = {k: statistics.median(v) for k, v in times.items()}
    steps = []
    total = 0.0
    for sc in calls:
        way_s = [sum(med[call_key(sc, w, c)] for c in range(len(way)))
                 for w, way in enumerate(sc.ways)]
        best = min(range(len(way_s)), key=way_s.__getitem__)
        total += way_s[best]
        rows = []
        for w, way in enumerate(sc.ways):
            for c, call in enumerate(way):
                rows.append({"call": call.text, "kind": call.kind, "way": w,
                             "counted": w == best, "median_s": med[call_key(sc, w, c)]})
        steps.append({"index": sc.index, "op": sc.op, "shapes": sc.shapes, "attrs": sc.attrs,
                      "label": program.steps[sc.index].label, "calls": rows,
                      "step_s": way_s[best]})
    rate = 2.0 * gemm_n**3 / med["gemm"]
    verdict = None
    if "expert" in times:
        if significantly_faster(times["plan"], times["expert"], paired=True):
            verdict = "significantly faster"
        elif significantly_faster(times["expert"], times["plan"], paired=True):
            verdict = "significantly slower"
        else:
            verdict = "not significantly different"
    return {
        **info,
        "steps": steps, "sum_s": total, "median_s": med,
        "quartiles_s": {k: quartiles(v) for k, v in times.items()
                        if k in ("plan", "bare", "expert", "gemm")},
        "flops": flops, "gemm_n": gemm_n, "gemm_flop_rate": rate,
        "limit_s": flops / rate, "limit_ratio": limit_ratio(med["plan"], flops, rate),
        "verdict": verdict,
    }


# -- report ------------------------------------------------------------------------------------


def _ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e3:.3f}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.3f}" if a is not None and b else "-"


def summary_lines(r: Mapping[str, Any]) -> list[str]:
    """The summary of one plan, as ``label: value`` lines (also printed)."""
    m = r["median_s"]
    total = r["sum_s"]
    lim = r["limit_ratio"]
    out = [
        f"plan (checks on)      {_ms(m['plan'])} ms",
        f"bare compiled plan    {_ms(m['bare'])} ms",
        f"sum of its kernels    {_ms(total)} ms",
        f"plan / sum            {_ratio(m['plan'], total)}  (goal <= {GOAL:.2f})",
        f"bare / sum            {_ratio(m['bare'], total)}",
    ]
    if "expert" in m:
        out += [f"SciPy expert          {_ms(m['expert'])} ms",
                f"plan / expert         {_ratio(m['plan'], m['expert'])}  "
                f"(LAAB: {r['verdict']})"]
    out += [f"GEMM {r['gemm_n']}^3           {_ms(m['gemm'])} ms "
            f"({r['gemm_flop_rate'] / 1e9:.1f} GFLOP/s)",
            f"physical limit        {_ms(r['limit_s'])} ms ({r['flops'] / 1e9:.3f} GFLOP at "
            "the GEMM rate)",
            "plan / limit          " + (f"{lim:.3f}" if lim is not None
                                        else "n/a (below 1: GEMM timed too slow)")]
    return out


def table_lines(r: Mapping[str, Any]) -> list[str]:
    """The markdown table of one plan: a row per standalone call, then the summary."""
    dims = ", ".join(f"{k}={v}" for k, v in r["dims"].items())
    total = r["sum_s"]
    lines = [
        f"## {r['problem']} ({dims}, {r['dtype']}) — `{r['plan']}`",
        "",
        f"Target {r['target']}, heap policy {r['heap']}, {r['repeats']} interleaved rounds "
        f"({r['wall_s']:.1f} s).",
        "",
        "| step | op | operand shapes | attrs | standalone call | kind | median (ms) "
        "| share of sum |",
        "|---:|---|---|---|---|---|---:|---:|",
    ]
    for s in r["steps"]:
        several = len({c["way"] for c in s["calls"]}) > 1
        for c in s["calls"]:
            share = (f"{100.0 * c['median_s'] / total:.1f}%" if c["counted"] and total
                     else "not counted (slower way)")
            text = f"`{c['call']}`" + (f" (way {c['way'] + 1})" if several else "")
            lines.append(f"| {s['index']} | {s['op']} | {s['shapes']} | {s['attrs']} | {text} "
                         f"| {c['kind']} | {_ms(c['median_s'])} | {share} |")
    m = r["median_s"]
    lim = r["limit_ratio"]
    lines += [
        "",
        "| summary | median (ms) | ratio |",
        "|---|---:|---:|",
        f"| sum of the kernels (the faster way of each step) | {_ms(total)} | 1.000 |",
        f"| plan, as a user calls it (checks on) | {_ms(m['plan'])} | "
        f"{_ratio(m['plan'], total)} (goal ≤ {GOAL:.2f}) |",
        f"| plan, bare compiled function | {_ms(m['bare'])} | {_ratio(m['bare'], total)} |",
    ]
    if "expert" in m:
        lines.append(f"| SciPy expert | {_ms(m['expert'])} | {_ratio(m['expert'], total)} "
                     f"(plan / expert {_ratio(m['plan'], m['expert'])}: "
                     f"{r['verdict']} by LAAB's rule) |")
    lines += [
        f"| GEMM {r['gemm_n']} x {r['gemm_n']} x {r['gemm_n']} "
        f"({r['gemm_flop_rate'] / 1e9:.1f} GFLOP/s) | {_ms(m['gemm'])} | |",
        f"| physical limit ({r['flops'] / 1e9:.3f} GFLOP at that rate) | {_ms(r['limit_s'])} "
        "| plan / limit " + (f"{lim:.3f}" if lim is not None else "n/a (GEMM disturbed)")
        + " |",
        "",
    ]
    return lines


def machine_meta(repeats: int, threads: str, argv: Sequence[str]) -> dict[str, Any]:
    import scipy.linalg  # noqa: F401 - its BLAS (the kernels') loaded, so that it is listed
    from threadpoolctl import threadpool_info

    from autotune.machine import cpu_model

    blas = sorted({f"{i.get('internal_api')} {i.get('version')} {i.get('architecture', '')} "
                   f"({Path(i.get('filepath', '')).name})".replace("  ", " ")
                   for i in threadpool_info() if i.get("user_api") == "blas"})
    return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu_model(),
            "cores": os.cpu_count(), "blas": blas, "repeats": repeats, "threads": threads,
            "load": " ".join(f"{v:.2f}" for v in os.getloadavg()),
            "args": " ".join(argv)}


def write_report(results: Sequence[Mapping[str, Any]], meta: Mapping[str, Any],
                 path: Path) -> None:
    lines = [
        "# Plans against the sum of their own kernels",
        "",
        f"- Date: {meta['date']}; load average {meta['load']} at the start",
        f"- CPU: {meta['cpu']}, {meta['cores']} logical cores",
        f"- BLAS: {'; '.join(meta['blas'])}",
        f"- Threads: {meta['threads']}; median of {meta['repeats']} interleaved rounds "
        "(one call of each per round, in a seeded random order, after a warm-up round)",
        f"- Regenerate: `python -m benchmarks.plan_steps {meta['args']}`".rstrip() + "",
        "",
        "Each computing step of the plan's program is timed as the standalone SciPy "
        "`blas`/`lapack` call an expert makes for it on the same operands (transpose flags "
        "from the operands' layouts, no copies but the one f2py makes of what LAPACK "
        "overwrites; Fortran-ordered operands prepared outside the timing). A symmetric "
        "result's mirror is its own row (an in-place tiled copy, the compiled loop of "
        "`autotune.kernels.blas`: no BLAS has one), counted in the sum since the plan's result "
        "is the full matrix. Where a step has two ways (`symprod`: `?gemmt` + mirror, or the "
        "full `?gemm`), the sum counts the faster. Elementwise steps are NumPy expressions "
        "(memory-bound). "
        f"The goal: the plan within {GOAL:.2f}x the sum of its kernels, and significantly "
        "faster than the expert by LAAB's rule (q75 of the plan at most q25 of the expert, "
        "and a sign test over the paired rounds).",
        "",
    ]
    for r in results:
        lines += table_lines(r)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plans", nargs="*", type=Path,
                        help="plan files (default: the Kalman plans at n = 2000 and 4000)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", choices=("all", "1"), default="all",
                        help="all: the plan's own thread count (all cores); 1: one thread")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    opts = parser.parse_args(argv)
    plans = opts.plans or list(DEFAULT_PLANS)
    meta = machine_meta(opts.repeats, opts.threads,
                        list(argv) if argv is not None else sys.argv[1:])
    results = []
    for path in plans:
        print(f"{path}:", flush=True)
        r = measure(path, opts.repeats, opts.threads, opts.seed)
        for s in r["steps"]:
            for c in s["calls"]:
                mark = "" if c["counted"] else "  (slower way, not counted)"
                print(f"  step {s['index']:3d} {s['op']:10s} {c['call']:60s} "
                      f"{_ms(c['median_s']):>10s} ms{mark}", flush=True)
        for line in summary_lines(r):
            print("  " + line, flush=True)
        results.append(r)
        gc.collect()  # the plan's arrays and compiled function, before the next plan's
        write_report(results, meta, opts.out)  # so far: an interrupted run keeps its plans
    print(f"wrote {opts.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
