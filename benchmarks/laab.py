"""LAAB, the Linear Algebra Awareness Benchmark (HPAC's LAAB-Python), run on autotune.

LAAB asks whether a framework maps a linear-algebra expression, written as on paper, to the
kernels an expert would call. Each test is an expression timed against an optimised reference
t+ (the expert's kernels) and a sub-optimal reference t- (what an unaware framework does);

    slowdown(t, t+) = (median t - median t+) / median t+   when q75(t+) <= q25(t), else 0
    loss(t)         = slowdown(t, t+) / slowdown(t-, t+)    (0 when t- is not slower)

and a test passes at loss <= 0.05 (:func:`autotune.stats.laab_slowdown`, ``laab_loss``: the
definitions of LAAB-Python's README). The published scores (PyTorch 7/17, TensorFlow 6/17,
JAX 6/17) use the 17 tests of LAAB-Python's ``laab_python/src/*/config.json``; two tests of
earlier LAAB versions (diagonal A B, block-diagonal A B) are run too and marked as extra.

Each test is a problem file in ``benchmarks/laab_tests/`` (the file stem is LAAB's experiment name).
This script, per test:

1. tunes it with ``autotune run --problem FILE --n N --dtype float32 --target numba-t1`` (a
   subprocess per test, so a crash is a recorded failure); a file that does not parse is
   reported as "not expressible yet" with the parser's message;
2. loads the plan with :func:`autotune.load_plan` and calls it as a user calls it (keyword
   arguments, checks on);
3. times, in interleaved repetitions (the order shuffled per repetition), the plan call, t+,
   t-, NumPy as written, JAX ``jax.jit`` of the expression as written and PyTorch as written
   (where installed), each after a 300 MB cache scrub, under one BLAS thread (threadpoolctl)
   with the timing process pinned to one CPU (LAAB runs under ``taskset -c 0``);
4. writes ``results/LAAB.md``: loss and pass/fail per test and column, t+'s median, the score
   (passed/17, mean loss) per column, and for each test the kernels of autotune's plan
   next to the expert's.

The references t+ and t- follow LAAB-Python's own (``laab_python/src/jax/v0-cpu/*.py`` and the
C programs in ``laab_python/src/C``), in float32, with the BLAS calls of ``scipy.linalg.blas``
where LAAB calls a BLAS kernel (sgemm, strmm, ssyrk, sgemv). Where LAAB defines t- as a
multiple of t+ (CSE and loop tests: ``ref_negative = 2 * ref_positive`` ...) so does this
script, and where it defines t- as another test's t+ (``R+mm_sgemm``: TRMM, SYRK and the
tridiagonal test against sgemm) t- is an sgemm of the same operands.

Usage::

    python -m benchmarks.laab [--n 2000] [--reps 10] [--tests mm_sgemm,mm_syrk]
                              [--out results/LAAB.md] [--trials N] [--timeout S]
"""

from __future__ import annotations

from autotune.targets import configure_environment

configure_environment()  # before numpy's OpenBLAS loads

import argparse  # noqa: E402
import datetime  # noqa: E402
import importlib.util  # noqa: E402
import inspect  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable, Iterable, Mapping, Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from autotune.units import format_seconds  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
LAAB_DIR = Path(__file__).resolve().parent / "laab_tests"
DTYPE = "float32"  # LAAB: single precision
TARGET = "numba-t1"  # LAAB: one thread
PASS_LOSS = 0.05  # LAAB's cutoff
SCRUB_BYTES = 300 * 1024 * 1024  # LAAB's cache scrub
PUBLISHED = 17
#: LAAB-Python's reporting code (``laab_results.py``) floors t+ samples at this many seconds
LAAB_CODE_DELTA = 0.002

#: the timed columns, in table order: key -> heading
COLUMNS = {"autotune": "autotune (plan as called)", "numpy": "NumPy as written",
           "jax": "JAX jit as written", "pytorch": "PyTorch as written"}

Arrays = Mapping[str, np.ndarray]

#: where this script departs from LAAB-Python (HPAC/LAAB-Python at 4b71e99), and why
FIDELITY = (
    "LAAB-Python's `mm_sgemm.py` scripts time `A@B` although its `config.json` and the "
    "published test say `transpose(A)@B`; this table times AᵀB",
    "LAAB-Python's Python scripts scrub with `_ = bytearray(300*1024*1024); _[:] = b'0'`, "
    "which replaces the buffer by one byte (almost nothing is touched); here 300 MB are "
    "written before every timing, as its C references do (200 MB)",
    "LAAB-Python's README defines the slowdown by medians and q75(t⁺) ≤ q25(t); its "
    "reporting code (`laab_results.py`) uses the minima, q25(t) > q75(t⁺) and t⁺ samples "
    "floored at 2 ms: this table follows the README (`--stats code` follows the code)",
    "Every implementation is called once before the repetitions (JAX compiles then; "
    "LAAB-Python's first repetition includes the compilation)",
)


# -- BLAS calls on C-ordered operands, without copies ------------------------------------------
# scipy.linalg.blas works in column-major order and copies a C-ordered operand; a C-ordered
# array's transpose is column-major, so each call below computes the transposed problem on
# transposed views (LAAB's C references call cblas in row-major order the same way).

def _blas(name: str, *arrays: np.ndarray) -> Any:
    from scipy.linalg.blas import get_blas_funcs

    return get_blas_funcs(name, arrays)


def gemm(a: np.ndarray, b: np.ndarray, ta: bool = False, tb: bool = False, alpha: float = 1.0,
         out: np.ndarray | None = None) -> np.ndarray:
    """``alpha op(a) op(b)`` by one ?gemm (into the C-ordered ``out`` when given)."""
    f = _blas("gemm", a, b)
    if out is None:
        return f(alpha, b.T, a.T, trans_a=int(tb), trans_b=int(ta)).T
    f(alpha, b.T, a.T, beta=0.0, c=out.T, trans_a=int(tb), trans_b=int(ta), overwrite_c=1)
    return out


def gemv(a: np.ndarray, x: np.ndarray, ta: bool = False, alpha: float = 1.0,
         y: np.ndarray | None = None, beta: float = 0.0) -> np.ndarray:
    """``alpha op(a) x + beta y`` by one ?gemv, as an ``n x 1`` column (``y`` updated in
    place when given)."""
    f = _blas("gemv", a, x)
    xv = x.reshape(-1)
    if y is None:
        return f(alpha, a.T, xv, trans=0 if ta else 1).reshape(-1, 1)
    f(alpha, a.T, xv, beta=beta, y=y.reshape(-1), trans=0 if ta else 1, overwrite_y=1)
    return y


def trmm_left_lower(L: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``b := L b`` in place by one ?trmm (LAAB's strmm: row-major, left, lower, no
    transpose): column-major, ``b^T := b^T L^T`` with ``L^T`` upper, from the right."""
    f = _blas("trmm", L, b)
    f(1.0, L.T, b.T, side=1, lower=0, trans_a=0, diag=0, overwrite_b=1)
    return b


def syrk_lower(a: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The lower triangle of ``a a^T`` into ``out`` by one ?syrk (LAAB's ssyrk: row-major,
    lower, no transpose); the upper triangle of ``out`` is left as it was."""
    f = _blas("syrk", a)
    f(1.0, a.T, beta=0.0, c=out.T, trans=1, lower=0, overwrite_c=1)
    return out


# -- references ---------------------------------------------------------------------------

def call_with(fn: Callable[..., Any], values: Mapping[str, Any]) -> Any:
    """``fn`` called with the values its parameters name (by keyword)."""
    names = inspect.signature(fn).parameters
    return fn(**{k: values[k] for k in names})


@dataclass(frozen=True)
class Reference:
    """An implementation timed by LAAB: ``prepare`` (untimed: LAAB's references zero their
    output or build their sparse operand before the clock starts) returns the arguments of
    ``run`` (timed), by name; without ``prepare`` ``run`` takes the inputs by name.
    ``triangle``: the one triangle of the result the kernel computes (``"lower"``);
    ``part``: the part of the result that is the expression's value (LAAB's t- of the
    partial-access tests computes the whole matrix)."""

    run: Callable[..., Any]
    prepare: Callable[..., dict[str, Any]] | None = None
    triangle: str | None = None
    part: Callable[[Any], Any] | None = None

    def prepared(self, inputs: Arrays) -> dict[str, Any]:
        return dict(inputs) if self.prepare is None else call_with(self.prepare, inputs)

    def __call__(self, inputs: Arrays) -> Any:
        return call_with(self.run, self.prepared(inputs))


def _gemv_columns(A: np.ndarray, Bf: np.ndarray, out: np.ndarray) -> np.ndarray:
    """LAAB's t- of GEMM (``sgemv.c``): one ?gemv per column of B, here A^T b_j into the
    column-major ``out`` (B given column-major, so its columns are contiguous)."""
    f = _blas("gemv", A, Bf)
    for j in range(Bf.shape[1]):
        f(1.0, A.T, Bf[:, j], beta=0.0, y=out[:, j], trans=0, overwrite_y=1)
    return out


def _csr(M: np.ndarray) -> Any:
    import scipy.sparse

    return scipy.sparse.csr_array(M)


def _diag_csr_product(D: np.ndarray, B: np.ndarray) -> np.ndarray:
    """LAAB's t+ of the diagonal test (``mp_diag.py``): the diagonal as a CSR matrix
    (built inside the timed call, as LAAB does) times B."""
    import scipy.sparse

    return scipy.sparse.diags([np.diag(D)], offsets=[0], format="csr") @ B


# -- instances ----------------------------------------------------------------------------

def _normal(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


def _square(*names: str) -> Callable[[int, np.random.Generator, Any], dict[str, np.ndarray]]:
    def make(n: int, rng: np.random.Generator, dtype: Any) -> dict[str, np.ndarray]:
        return {k: _normal(rng, (n, n), dtype) for k in names}
    return make


def _with_vectors(squares: Sequence[str], vectors: Sequence[str]
                  ) -> Callable[[int, np.random.Generator, Any], dict[str, np.ndarray]]:
    def make(n: int, rng: np.random.Generator, dtype: Any) -> dict[str, np.ndarray]:
        out = {k: _normal(rng, (n, n), dtype) for k in squares}
        out.update({k: _normal(rng, (n, 1), dtype) for k in vectors})
        return out
    return make


def _trmm_inputs(n: int, rng: np.random.Generator, dtype: Any) -> dict[str, np.ndarray]:
    return {"L": np.tril(_normal(rng, (n, n), dtype)), "B": _normal(rng, (n, n), dtype)}


def _tridiag_inputs(n: int, rng: np.random.Generator, dtype: Any) -> dict[str, np.ndarray]:
    M = _normal(rng, (n, n), dtype)
    return {"Tri": np.triu(np.tril(M, 1), -1), "B": _normal(rng, (n, n), dtype)}


def _diag_inputs(n: int, rng: np.random.Generator, dtype: Any) -> dict[str, np.ndarray]:
    return {"D": np.diag(_normal(rng, (n,), dtype)), "B": _normal(rng, (n, n), dtype)}


def _blocked_inputs(n: int, rng: np.random.Generator, dtype: Any) -> dict[str, np.ndarray]:
    nb = n // 2
    A1, A2 = _normal(rng, (nb, nb), dtype), _normal(rng, (nb, nb), dtype)
    B1, B2 = _normal(rng, (nb, n), dtype), _normal(rng, (nb, n), dtype)
    A = np.zeros((2 * nb, 2 * nb), dtype)
    A[:nb, :nb], A[nb:, nb:] = A1, A2
    return {"A": A, "B": np.concatenate((B1, B2), axis=0), "A1": A1, "A2": A2, "B1": B1,
            "B2": B2}


# -- the tests ----------------------------------------------------------------------------

@dataclass(frozen=True)
class LaabTest:
    """One LAAB test: its problem file ``benchmarks/laab_tests/<key>.toml``, the expression as
    written (one Python function of the inputs by name, valid over NumPy, JAX and PyTorch
    arrays alike), the references, and what an expert computes."""

    key: str  # LAAB's experiment name and the problem file's stem
    title: str
    written: str  # the expression as LAAB writes it
    expert: str  # the kernels of t+, in words
    make_inputs: Callable[[int, np.random.Generator, Any], dict[str, np.ndarray]]
    as_written: Callable[..., Any]
    t_plus: Reference
    t_minus: Reference | None = None
    t_minus_factor: float | None = None  # LAAB: t- = factor * t+ (no t- implementation)
    t_minus_text: str = ""
    extra: bool = False  # not one of the 17 published tests
    label: str = ""  # a note shown with the test (how it is written here)
    plan_post: Callable[[Sequence[np.ndarray]], Any] | None = None  # after the plan call
    #: inputs the plan is loaded to write over (``load_plan(donate=...)``) where LAAB's t+
    #: overwrites them too; like t+'s, they are copied before the clock starts
    donate: tuple[str, ...] = ()

    @property
    def problem_file(self) -> Path:
        return LAAB_DIR / f"{self.key}.toml"


def _loops_plus(A: np.ndarray, B: np.ndarray, v0: np.ndarray, v1: np.ndarray,
                v2: np.ndarray) -> tuple[np.ndarray, ...]:
    tmp = gemm(A, B)
    return tuple(tmp + v * v.T for v in (v0, v1, v2))


def _dist2_plus(A: np.ndarray, H: np.ndarray, x: np.ndarray) -> np.ndarray:
    y = gemv(A, x)
    return gemv(H, gemv(H, x), ta=True, alpha=-1.0, y=y, beta=1.0)


def _mixed_plus(H: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    u, w = gemv(H, y, ta=True), gemv(H, x, ta=True)  # H^T y and (x^T H)^T
    return u * w.T


def _transpose_plus(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    S = gemm(A, B, ta=True)
    return gemm(S, S, ta=True)


TESTS: tuple[LaabTest, ...] = (
    LaabTest(
        "mm_sgemm", "GEMM AᵀB", "transpose(A)@B", "sgemm",
        _square("A", "B"), lambda A, B: A.T @ B,
        Reference(lambda A, B, out: gemm(A, B, ta=True, out=out),
                  prepare=lambda A, B: {"A": A, "B": B, "out": np.zeros_like(A)}),
        t_minus=Reference(_gemv_columns, prepare=lambda A, B: {
            "A": A, "Bf": np.asfortranarray(B), "out": np.zeros_like(A, order="F")}),
        t_minus_text="one sgemv per column of B (LAAB's sgemv.c)"),
    LaabTest(
        "mm_trmm", "TRMM LB (L lower triangular)", "L@B", "strmm",
        _trmm_inputs, lambda L, B: L @ B,
        Reference(trmm_left_lower, prepare=lambda L, B: {"L": L, "b": B.copy()}),
        t_minus=Reference(lambda L, B: gemm(L, B)),
        t_minus_text="sgemm (LAAB: R+mm_sgemm)", donate=("B",),
        label="the plan is loaded with donate=['B']: as t⁺ (strmm), it writes L B over B"),
    LaabTest(
        "mm_syrk", "SYRK AAᵀ", "A@transpose(A)", "ssyrk (one triangle)",
        _square("A"), lambda A: A @ A.T,
        Reference(syrk_lower, prepare=lambda A: {"a": A, "out": np.zeros_like(A)},
                  triangle="lower"),
        t_minus=Reference(lambda A: gemm(A, A, tb=True)),
        t_minus_text="sgemm (LAAB: R+mm_sgemm)",
        label="the output is declared store = 'lower': as t⁺ (ssyrk), one triangle"),
    LaabTest(
        "mm_tridiag", "tridiagonal TB", "T@B", "CSR (banded) product, O(n²)",
        _tridiag_inputs, lambda Tri, B: Tri @ B,
        Reference(lambda S, B: S @ B, prepare=lambda Tri, B: {"S": _csr(Tri), "B": B}),
        t_minus=Reference(lambda Tri, B: gemm(Tri, B)),
        t_minus_text="sgemm (LAAB: R+mm_sgemm)", label="T is named Tri (T is reserved)"),
    LaabTest(
        "cse_addition", "CSE AᵀB + AᵀB", "transpose(A)@B + transpose(A)@B",
        "one sgemm (alpha = 2)",
        _square("A", "B"), lambda A, B: A.T @ B + A.T @ B,
        Reference(lambda A, B: gemm(A, B, ta=True, alpha=2.0)),
        t_minus_factor=2.0, t_minus_text="2 × t+ (LAAB)"),
    LaabTest(
        "cse_matmul_paranthesis", "CSE (AᵀB)ᵀ(AᵀB)",
        "transpose(transpose(A)@B)@(transpose(A)@B)", "S = AᵀB (sgemm), SᵀS (sgemm)",
        _square("A", "B"), lambda A, B: (A.T @ B).T @ (A.T @ B),
        Reference(_transpose_plus), t_minus_factor=1.5, t_minus_text="1.5 × t+ (LAAB)"),
    LaabTest(
        "cse_matmul_no_paranthesis", "CSE (AᵀB)ᵀAᵀB",
        "transpose(transpose(A)@B)@transpose(A)@B", "S = AᵀB (sgemm), SᵀS (sgemm)",
        _square("A", "B"), lambda A, B: (A.T @ B).T @ A.T @ B,
        Reference(_transpose_plus), t_minus_factor=1.5, t_minus_text="1.5 × t+ (LAAB)"),
    LaabTest(
        "cse_suboptimal", "CSE not to apply: AᵀBAᵀBy", "transpose(A)@B@transpose(A)@B@y",
        "4 sgemv, right to left",
        _with_vectors(("A", "B"), ("y",)), lambda A, B, y: A.T @ B @ A.T @ B @ y,
        Reference(lambda A, B, y: gemv(A, gemv(B, gemv(A, gemv(B, y), ta=True)), ta=True)),
        t_minus=Reference(lambda A, B, y: gemv(gemm(gemm(A, B, ta=True),
                                                    gemm(A, B, ta=True)), y)),
        t_minus_text="tmp = AᵀB; (tmp tmp) y"),
    LaabTest(
        "matchain_rtol", "chain HᵀHx", "transpose(H)@H@x", "2 sgemv: Hᵀ(Hx)",
        _with_vectors(("H",), ("x",)), lambda H, x: H.T @ H @ x,
        Reference(lambda H, x: gemv(H, gemv(H, x), ta=True)),
        t_minus=Reference(lambda H, x: gemv(gemm(H, H, ta=True), x)),
        t_minus_text="(HᵀH)x"),
    LaabTest(
        "matchain_ltor", "chain yᵀHᵀH", "transpose(y)@transpose(H)@H", "2 sgemv: (yᵀHᵀ)H",
        _with_vectors(("H",), ("y",)), lambda H, y: y.T @ H.T @ H,
        Reference(lambda H, y: gemv(H, gemv(H, y), ta=True).T),
        t_minus=Reference(lambda H, y: gemv(gemm(H, H, ta=True), y, ta=True).T),
        t_minus_text="yᵀ(HᵀH)"),
    LaabTest(
        "matchain_mixed", "chain HᵀyxᵀH", "transpose(H)@y@transpose(x)@H",
        "2 sgemv and an outer product: (Hᵀy)(xᵀH)",
        _with_vectors(("H",), ("x", "y")), lambda H, x, y: H.T @ y @ x.T @ H,
        Reference(_mixed_plus),
        t_minus=Reference(lambda H, x, y: gemm(gemv(H, y, ta=True) * x.T, H)),
        t_minus_text="((Hᵀy)xᵀ)H"),
    LaabTest(
        "am_distributivity1", "distributivity AB + AC", "A@B + A@C", "one sgemm: A(B + C)",
        _square("A", "B", "C"), lambda A, B, C: A @ B + A @ C,
        Reference(lambda A, B, C: gemm(A, B + C)),
        t_minus=Reference(lambda A, B, C: gemm(A, B) + gemm(A, C)),
        t_minus_text="AB + AC, two sgemm"),
    LaabTest(
        "am_distributivity2", "distributivity (A − HᵀH)x", "(A - transpose(H)@H)@x",
        "3 sgemv: Ax − Hᵀ(Hx)",
        _with_vectors(("A", "H"), ("x",)), lambda A, H, x: (A - H.T @ H) @ x,
        Reference(_dist2_plus),
        t_minus=Reference(lambda A, H, x: gemv(A - gemm(H, H, ta=True), x)),
        t_minus_text="tmp = HᵀH; (A − tmp)x"),
    LaabTest(
        "am_transpose", "transpose law BᵀAAᵀB", "transpose(B)@A@transpose(A)@B",
        "S = AᵀB (sgemm), SᵀS (sgemm)",
        _square("A", "B"), lambda A, B: B.T @ A @ A.T @ B,
        Reference(_transpose_plus),
        t_minus=Reference(lambda A, B: gemm(gemm(gemm(B, A, ta=True), A, tb=True), B)),
        t_minus_text="((BᵀA)Aᵀ)B"),
    LaabTest(
        "cm_loops", "loop-invariant AB + vᵢvᵢᵀ (3 outputs sharing AB)",
        "for i in range(3): A@B + outer(V[i], V[i])", "AB once (sgemm), 3 rank-1 updates",
        _with_vectors(("A", "B"), ("v0", "v1", "v2")),
        lambda A, B, v0, v1, v2: tuple(A @ B + v @ v.T for v in (v0, v1, v2)),
        Reference(_loops_plus), t_minus_factor=3.0, t_minus_text="3 × t+ (LAAB)",
        label="written as three outputs sharing the invariant product AB (no loops)"),
    LaabTest(
        "cm_partial_op_sum", "partial access (A + B)[2,2]", "(A+B)[2,2]",
        "one addition: A[2,2] + B[2,2]",
        _square("A", "B"), lambda A, B: (A + B)[2, 2],
        Reference(lambda A, B: A[2, 2] + B[2, 2]),
        t_minus=Reference(lambda A, B: A + B, part=lambda X: X[2, 2]),
        t_minus_text="A + B in full"),
    LaabTest(
        "cm_partial_op_prod", "partial access (AB)[2,2]", "(A@B)[2,2]",
        "one dot product: A[2,:]·B[:,2]",
        _square("A", "B"), lambda A, B: (A @ B)[2, 2],
        Reference(lambda A, B: np.dot(A[2, :], B[:, 2])),
        t_minus=Reference(lambda A, B: gemm(A, B), part=lambda X: X[2, 2]),
        t_minus_text="AB in full (sgemm)"),
    LaabTest(
        "mp_diag", "diagonal AB (A diagonal)", "A@B", "row scaling (LAAB: CSR product), O(n²)",
        _diag_inputs, lambda D, B: D @ B,
        Reference(_diag_csr_product),
        t_minus=Reference(lambda D, B: gemm(D, B)),
        t_minus_text="sgemm (as TRMM/SYRK/tridiagonal; LAAB's mp_diag had no t-)",
        extra=True, label="A is named D"),
    LaabTest(
        "am_blocked", "block-diagonal AB", "A@B", "2 half-size sgemm: [A₁B₁; A₂B₂]",
        _blocked_inputs, lambda A, B: A @ B,
        Reference(lambda A1, A2, B1, B2: np.concatenate((gemm(A1, B1), gemm(A2, B2)), axis=0)),
        t_minus=Reference(lambda A, B: gemm(A, B)), t_minus_text="AB in full (sgemm)",
        extra=True, plan_post=lambda out: np.concatenate(tuple(out), axis=0),
        label="not expressible as block-diagonal: the problem file states the blocks as "
              "inputs A1, A2, B1, B2; the plan's two outputs are concatenated in the timing"),
)
TEST_KEYS = tuple(t.key for t in TESTS)


def test_by_key(key: str) -> LaabTest:
    for t in TESTS:
        if t.key == key:
            return t
    raise KeyError(f"unknown LAAB test {key!r}; tests: {', '.join(TEST_KEYS)}")


# -- statistics ---------------------------------------------------------------------------

def slowdown(t: Sequence[float], t_plus: Sequence[float], stats: str = "readme") -> float:
    """LAAB's slowdown of ``t`` against ``t_plus``. ``readme``: LAAB-Python's README and the
    issue's definition (medians; :func:`autotune.stats.laab_slowdown`). ``code``: what
    LAAB-Python's ``laab_results.py`` computes (t+ samples floored at 2 ms, significance
    q25(t) > q75(t+) strictly, the difference of the minima)."""
    from autotune.stats import laab_slowdown

    if stats == "readme":
        return laab_slowdown(t, t_plus)
    if stats != "code":
        raise ValueError(f"stats must be 'readme' or 'code', not {stats!r}")
    ref = [max(x, LAAB_CODE_DELTA) for x in t_plus]
    q_t = np.percentile(t, [25, 75])
    q_ref = np.percentile(ref, [25, 75])
    if q_t[0] > q_ref[1]:
        return float((np.min(t) - np.min(ref)) / np.min(ref))
    return 0.0


def loss(t: Sequence[float], t_plus: Sequence[float], t_minus: Sequence[float],
         stats: str = "readme") -> float:
    """LAAB's loss: slowdown(t) / slowdown(t-); 0 when t- is not significantly slower."""
    if stats == "readme":
        from autotune.stats import laab_loss

        return laab_loss(t, t_plus, t_minus)
    ref = slowdown(t_minus, t_plus, stats)
    return slowdown(t, t_plus, stats) / ref if ref > 0 else 0.0


# -- results ------------------------------------------------------------------------------

@dataclass
class TestResult:
    """What one test gave: ``status`` is ``ok`` or why autotune's column has no figure
    (``not expressible yet: ...``, ``tuning failed: ...``); ``samples`` per column and for
    ``t+``/``t-``; ``skipped`` and ``wrong`` name the columns without figures and why."""

    key: str
    title: str
    extra: bool = False
    label: str = ""
    expert: str = ""
    status: str = "ok"
    samples: dict[str, list[float]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    wrong: dict[str, str] = field(default_factory=dict)
    plan_path: str = ""
    plan_ops: dict[str, int] = field(default_factory=dict)
    plan_program: str = ""
    plan_params: dict[str, Any] = field(default_factory=dict)
    t_minus_text: str = ""

    def loss(self, column: str, stats: str = "readme") -> float | None:
        if column in self.wrong or column not in self.samples:
            return None
        tp, tm = self.samples.get("t+"), self.samples.get("t-")
        if not tp or not tm or not self.samples[column]:
            return None
        return loss(self.samples[column], tp, tm, stats)

    def passed(self, column: str, stats: str = "readme") -> bool:
        v = self.loss(column, stats)
        return v is not None and v <= PASS_LOSS


def _median(xs: Sequence[float] | None) -> float | None:
    return statistics.median(xs) if xs else None


def _fmt_time(x: float | None) -> str:
    return format_seconds(x, missing="—")


def _cell(r: TestResult, column: str, stats: str) -> str:
    if column in r.wrong:
        return "wrong ✗"
    if column in r.skipped or column not in r.samples:
        return "—"
    v = r.loss(column, stats)
    if v is None:
        return "—"
    return f"{v:.2f} {'✓' if v <= PASS_LOSS else '✗'}"


def score(results: Iterable[TestResult], column: str, stats: str = "readme"
          ) -> tuple[int, float | None, int]:
    """(passed, mean loss over the measured tests, measured tests) of the published tests."""
    losses = []
    passed = 0
    for r in results:
        if r.extra:
            continue
        v = r.loss(column, stats)
        if v is None:
            continue
        losses.append(v)
        passed += v <= PASS_LOSS
    return passed, (statistics.fmean(losses) if losses else None), len(losses)


def _esc(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_markdown(results: Sequence[TestResult], meta: Mapping[str, Any],
                   stats: str = "readme") -> str:
    """The report: one row per test (losses and pass/fail per column, t+ and t- medians),
    the score per column, the medians, and autotune's kernels against the expert's."""
    columns = [c for c in COLUMNS
               if c == "autotune" or not all(c in r.skipped for r in results)]
    absent = {c: next(r.skipped[c] for r in results if c in r.skipped)
              for c in COLUMNS if c not in columns and results}
    lines = [
        "# LAAB: linear algebra awareness (HPAC's LAAB-Python) on autotune",
        "",
        f"- Date: {meta.get('date', '')}; machine: {meta.get('machine', '')}",
        f"- n = {meta.get('n')}, dtype {meta.get('dtype', DTYPE)}, {meta.get('reps')} "
        f"repetitions per implementation, interleaved (order shuffled per repetition), a "
        f"{SCRUB_BYTES // 2**20} MB cache scrub before each timing; one BLAS thread "
        f"(threadpoolctl), {meta.get('pinning', 'process pinned to one CPU')}",
        "- autotune: `autotune run --problem benchmarks/laab_tests/<test>.toml "
        f"--n {meta.get('n')} "
        f"--dtype float32 --target {TARGET} --trials {meta.get('trials')} --timeout "
        f"{meta.get('timeout')}`, then the plan loaded with `autotune.load_plan` and called "
        "as a user calls it (keyword arguments, checks on)",
        "- Loss = slowdown(t) / slowdown(t⁻), slowdown(t) = (median t − median t⁺) / median "
        "t⁺ when q75(t⁺) ≤ q25(t), else 0; a test passes at loss ≤ 0.05 (LAAB-Python's "
        "README)" + ("" if stats == "readme" else
                     "; **here with LAAB-Python's code instead** (t⁺ floored at 2 ms, "
                     "q25(t) > q75(t⁺), difference of the minima)"),
        "- t⁺ / t⁻: LAAB-Python's references in NumPy/SciPy float32 (scipy.linalg.blas "
        "where LAAB calls sgemm, strmm, ssyrk, sgemv); where LAAB defines t⁻ as a multiple "
        "of t⁺ so does this table",
    ]
    for c, why in absent.items():
        lines.append(f"- {COLUMNS[c]}: not run ({why})")
    lines += [f"- {note}" for note in FIDELITY]
    for note in meta.get("notes", ()):
        lines.append(f"- {note}")
    lines += ["", "## Score (the 17 published tests)", "",
              "| | " + " | ".join(COLUMNS[c] for c in columns) + " |",
              "| --- | " + " | ".join("---:" for _ in columns) + " |"]
    scores = {c: score(results, c, stats) for c in columns}
    published = sum(1 for r in results if not r.extra)
    lines.append("| passed | " + " | ".join(
        f"**{scores[c][0]}/{PUBLISHED}**" for c in columns) + " |")
    lines.append("| mean loss | " + " | ".join(
        ("—" if scores[c][1] is None else f"{scores[c][1]:.2f}")
        + (f" (over {scores[c][2]})" if scores[c][2] != published else "")
        for c in columns) + " |")
    if published != PUBLISHED:
        lines.append("")
        lines.append(f"(this run measured {published} of the {PUBLISHED} published tests)")
    lines += ["", "## Loss per test", "",
              "| test | t⁺ median | t⁻ median | " + " | ".join(COLUMNS[c] for c in columns)
              + " |",
              "| --- | ---: | ---: | " + " | ".join("---:" for _ in columns) + " |"]
    for r in results:
        name = f"{r.title}" + (" *(extra)*" if r.extra else "") + f" `{r.key}`"
        lines.append(f"| {_esc(name)} | {_fmt_time(_median(r.samples.get('t+')))} | "
                     f"{_fmt_time(_median(r.samples.get('t-')))} | "
                     + " | ".join(_cell(r, c, stats) for c in columns) + " |")
    lines += ["", "## Medians", "",
              "| test | " + " | ".join(COLUMNS[c] for c in columns) + " |",
              "| --- | " + " | ".join("---:" for _ in columns) + " |"]
    for r in results:
        lines.append(f"| `{r.key}` | " + " | ".join(
            _fmt_time(None if c in r.wrong else _median(r.samples.get(c))) for c in columns)
            + " |")
    notes = []
    for r in results:
        for c, why in r.skipped.items():
            if c in columns:
                notes.append(f"- `{r.key}`, {COLUMNS[c]}: {_esc(why)}")
        for c, why in r.wrong.items():
            notes.append(f"- `{r.key}`, {COLUMNS[c]}: wrong result: {_esc(why)}")
        if r.label:
            notes.append(f"- `{r.key}`: {_esc(r.label)}")
        if r.t_minus_text:
            notes.append(f"- `{r.key}`: t⁻ = {_esc(r.t_minus_text)}")
    if notes:
        lines += ["", "## Notes", ""] + notes
    lines += ["", "## autotune's plans: kernels against the expert's", "",
              "| test | status | plan's kernels (live program ops) | expert (t⁺) | loss |",
              "| --- | --- | --- | --- | ---: |"]
    for r in results:
        ops = ", ".join(f"{op} × {k}" if k > 1 else op
                        for op, k in sorted(r.plan_ops.items()) if op != "input")
        lines.append(f"| `{r.key}` | {_esc(r.status)} | {_esc(ops) or '—'} | "
                     f"{_esc(r.expert)} | {_cell(r, 'autotune', stats)} |")
    failed = [r for r in results
              if r.plan_program and not r.passed("autotune", stats)]
    if failed:
        lines += ["", "### The failing plans, step by step", ""]
        for r in failed:
            params = ", ".join(f"{k}={v}" for k, v in sorted(r.plan_params.items()))
            lines += [f"`{r.key}` ({_esc(r.title)}; loss {_cell(r, 'autotune', stats)}; "
                      f"expert: {_esc(r.expert)}); knobs: {params or '—'}", "", "```",
                      r.plan_program, "```", ""]
    return "\n".join(lines).rstrip() + "\n"


# -- tuning -------------------------------------------------------------------------------

def parse_status(test: LaabTest) -> tuple[Any, str]:
    """(problem, "ok") or (None, "not expressible yet: <the parser's message>")."""
    from autotune.errors import AutotuneError
    from autotune.spec import load_problem

    try:
        return load_problem(test.problem_file), "ok"
    except AutotuneError as exc:
        return None, f"not expressible yet: {' '.join(str(exc).split())}"


def tune(test: LaabTest, n: int, trials: int, timeout: float, plans: Path,
         heap: str = "retain", quiet: bool = False) -> tuple[Path | None, str]:
    """Tune one test with ``autotune run`` in a subprocess: (plan path, "ok") or
    (None, why)."""
    from autotune.plan import plan_filename

    problem, status = parse_status(test)
    if problem is None:
        return None, status
    dims = problem.resolve_dims({"n": n})
    cmd = [sys.executable, "-m", "autotune.cli", "run", "--problem", str(test.problem_file),
           "--n", str(n), "--dtype", DTYPE, "--target", TARGET, "--trials", str(trials),
           "--timeout", str(timeout), "--out", str(plans), "--heap", heap, "--quiet"]
    if not quiet:
        print(f"[laab] tuning {test.key}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 300,
                              cwd=REPO)
    except subprocess.TimeoutExpired:
        return None, f"tuning failed: no answer within {timeout + 300:.0f} s"
    path = plans / plan_filename(problem.name, dims, DTYPE)
    if proc.returncode != 0:
        tail = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        why = tail[-1] if tail else f"exit status {proc.returncode}"
        return None, f"tuning failed: {why[:300]}"
    if not path.exists():
        return None, f"tuning failed: no plan at {path}"
    return path, "ok"


def load(path: Path, heap: str | None = None, donate: Sequence[str] = ()) -> tuple[Any, str]:
    """The plan as a user loads it (checks on): (TunedFunction, "ok") or (None, why)."""
    import autotune

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", autotune.PlanWarning)
            return autotune.load_plan(path, heap=heap, donate=donate), "ok"
    except Exception as exc:  # noqa: BLE001 - any failure is the test's status
        return None, f"plan does not load: {type(exc).__name__}: {' '.join(str(exc).split())}"


# -- timing -------------------------------------------------------------------------------

@dataclass
class Variant:
    """One timed implementation: ``prepare`` (untimed) returns what ``run`` (timed) takes."""

    name: str
    prepare: Callable[[], Any]
    run: Callable[[Any], Any]


class Scrub:
    """LAAB's cache scrub: 300 MB written before each timing. (LAAB-Python's Python
    scripts write ``_ = bytearray(300*1024*1024); _[:] = b'0'``, which replaces the buffer
    by one byte and touches almost nothing; its C references memset 200 MB. The buffer
    here is allocated once and written in full each time.)"""

    def __init__(self, nbytes: int = SCRUB_BYTES) -> None:
        self.buf = np.empty(nbytes, dtype=np.uint8)
        self.k = 0

    def __call__(self) -> None:
        self.k = (self.k + 1) & 0xFF
        self.buf.fill(self.k)


def _as_numpy(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return tuple(_as_numpy(v) for v in value)
    if hasattr(value, "detach"):  # torch
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _mismatch(got: Any, want: Any, triangle: str | None = None, rtol: float = 1e-3) -> str:
    """Empty when ``got`` matches ``want`` (relative Frobenius error at most ``rtol``)."""
    got, want = _as_numpy(got), _as_numpy(want)
    if isinstance(want, tuple):
        if not isinstance(got, tuple) or len(got) != len(want):
            return f"{len(got) if isinstance(got, tuple) else 1} results, expected {len(want)}"
        for g, w in zip(got, want, strict=True):
            why = _mismatch(g, w, triangle, rtol)
            if why:
                return why
        return ""
    g = np.asarray(got, dtype=np.float64)
    w = np.asarray(want, dtype=np.float64)
    if g.size != w.size:
        return f"shape {g.shape}, expected {w.shape}"
    g, w = g.reshape(w.shape), w
    if triangle is not None:
        keep = np.tril if triangle == "lower" else np.triu
        g, w = keep(g), keep(w)
    scale = max(float(np.linalg.norm(w)), 1e-30)
    err = float(np.linalg.norm(g - w)) / scale
    return "" if err <= rtol else f"relative error {err:.2e}"


def _jax_variant(test: LaabTest, inputs: Arrays) -> Variant:
    import jax

    fn = jax.jit(test.as_written)
    names = list(inspect.signature(test.as_written).parameters)
    args = {k: jax.device_put(inputs[k]) for k in names}
    return Variant("jax", lambda: args,
                   lambda a: jax.block_until_ready(fn(**a)))


def _torch_variant(test: LaabTest, inputs: Arrays) -> Variant:
    import torch

    torch.set_num_threads(1)
    names = list(inspect.signature(test.as_written).parameters)
    args = {k: torch.from_numpy(np.ascontiguousarray(inputs[k])) for k in names}
    return Variant("pytorch", lambda: args, lambda a: test.as_written(**a))


def variants(test: LaabTest, inputs: Arrays, plan: Any | None,
             frameworks: Sequence[str]) -> tuple[list[Variant], dict[str, str]]:
    """The timed implementations of one test (and the columns skipped, with why)."""
    out: list[Variant] = []
    skipped: dict[str, str] = {}
    if plan is not None:
        names = list(plan.input_names)
        plan_args = {k: inputs[k] for k in names}
        post = test.plan_post
        donated = set(test.donate)

        def plan_prepare() -> dict[str, np.ndarray]:
            return {k: (v.copy() if k in donated else v) for k, v in plan_args.items()}

        def call_plan(a: dict[str, np.ndarray]) -> Any:
            res = plan(**a)
            return post(res) if post is not None else (res[0] if len(res) == 1 else tuple(res))

        out.append(Variant("autotune", plan_prepare, call_plan))
    tp, tm = test.t_plus, test.t_minus
    out.append(Variant("t+", lambda: tp.prepared(inputs), lambda a: call_with(tp.run, a)))
    if tm is not None:
        out.append(Variant("t-", lambda: tm.prepared(inputs), lambda a: call_with(tm.run, a)))
    out.append(Variant("numpy", lambda: inputs, lambda a: call_with(test.as_written, a)))
    for fw in frameworks:
        module = {"jax": "jax", "pytorch": "torch"}[fw]
        if importlib.util.find_spec(module) is None:
            skipped[fw] = f"{module} is not installed"
            continue
        try:
            out.append(_jax_variant(test, inputs) if fw == "jax" else
                       _torch_variant(test, inputs))
        except Exception as exc:  # noqa: BLE001
            skipped[fw] = f"{type(exc).__name__}: {exc}"
    return out, skipped


def measure(vs: Sequence[Variant], reps: int, scrub: Callable[[], None],
            seed: int = 0) -> dict[str, list[float]]:
    """``reps`` interleaved rounds: in each, every variant once (order shuffled), each
    timing after a cache scrub; what ``prepare`` returns is made before the clock starts."""
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {v.name: [] for v in vs}
    order = list(vs)
    for _ in range(reps):
        rng.shuffle(order)
        for v in order:
            args = v.prepare()
            scrub()
            t0 = time.perf_counter()
            res = v.run(args)
            dt = time.perf_counter() - t0
            del res, args
            samples[v.name].append(dt)
    return samples


def run_test(test: LaabTest, n: int, reps: int, plan: Any | None, scrub: Callable[[], None],
             frameworks: Sequence[str], seed: int = 0) -> TestResult:
    """Time one test (the plan, when there is one, as loaded)."""
    result = TestResult(test.key, test.title, test.extra, test.label, test.expert,
                        t_minus_text=test.t_minus_text)
    inputs = test.make_inputs(n, np.random.default_rng(seed), np.float32)
    vs, result.skipped = variants(test, inputs, plan, frameworks)
    want = call_with(test.as_written, inputs)
    # a plan whose output is stored as its lower triangle (store = "lower") defines only that
    stored = plan is not None and "lower" in plan.problem.stored.values()
    good = []
    for v in vs:  # one untimed call each: compiles (JAX), warms up, checks the result
        try:
            got = v.run(v.prepare())
        except Exception as exc:  # noqa: BLE001 - a column that fails is reported
            if v.name not in COLUMNS:
                raise
            result.wrong[v.name] = f"failed: {type(exc).__name__}: {exc}"[:300]
            continue
        ref = {"t+": test.t_plus, "t-": test.t_minus}.get(v.name)
        if ref is not None and ref.part is not None:
            got = ref.part(got)
        triangle = ref.triangle if ref is not None else None
        if v.name == "autotune" and stored:
            triangle = "lower"
        why = _mismatch(got, want, triangle)
        if why and v.name in COLUMNS:
            result.wrong[v.name] = why
            continue
        if why:
            raise AssertionError(f"{test.key}: reference {v.name} is wrong: {why}")
        good.append(v)
    result.samples = measure(good, reps, scrub, seed)
    if test.t_minus_factor is not None:
        result.samples["t-"] = [test.t_minus_factor * t for t in result.samples["t+"]]
    return result


# -- the machine --------------------------------------------------------------------------

def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    cpu = value.strip()
                    break
    except OSError:
        pass
    blas = ""
    try:
        from threadpoolctl import threadpool_info

        libs = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        if libs:
            blas = f"{libs[0].get('internal_api')} {libs[0].get('version')} " \
                   f"{libs[0].get('architecture')}"
    except Exception:  # noqa: BLE001
        pass
    return f"{cpu}, {os.cpu_count()} CPUs" + (f", {blas}" if blas else "")


def configure_jax() -> None:
    """JAX on the CPU with one thread for XLA's intra-op (Eigen) work: XLA sizes its thread
    pool when jax starts, so this must run before jax is imported (the CPU pinning does the
    rest)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_cpu_multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def pin(cpu: int | None) -> str:
    """Pin this process (and threads started from now on) to one CPU, as LAAB's
    ``taskset -c 0``; returns the description for the report."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return "process not pinned"
    allowed = sorted(os.sched_getaffinity(0))
    chosen = cpu if cpu in allowed else allowed[0]
    os.sched_setaffinity(0, {chosen})
    return f"process pinned to CPU {chosen}"


# -- the command --------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.laab", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="size (LAAB's default is 3000)")
    ap.add_argument("--reps", type=int, default=10, help="repetitions per implementation")
    ap.add_argument("--tests", default="", help=f"comma-separated, of: {', '.join(TEST_KEYS)}")
    ap.add_argument("--out", type=Path, default=REPO / "results" / "LAAB.md")
    ap.add_argument("--plans", type=Path, default=None,
                    help="folder of the plans and studies (default: laab-plans/ beside --out)")
    ap.add_argument("--trials", type=int, default=24, help="autotune run --trials")
    ap.add_argument("--timeout", type=float, default=600.0, help="autotune run --timeout")
    ap.add_argument("--no-tune", action="store_true",
                    help="use the plans already in --plans instead of tuning")
    ap.add_argument("--frameworks", default="jax,pytorch",
                    help="as-written columns besides NumPy (jax, pytorch)")
    ap.add_argument("--cpu", default="0",
                    help="CPU the timing process is pinned to ('none': not pinned)")
    ap.add_argument("--stats", choices=("readme", "code"), default="readme",
                    help="LAAB-Python's README definitions (default) or its reporting code")
    ap.add_argument("--heap", choices=("retain", "system"), default="retain",
                    help="heap policy of the tuning and of the timing process, the same for "
                    "every implementation (autotune.memory; plans are tuned under 'retain')")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if "jax" in sys.modules:
        print("[laab] jax was imported before the benchmark set its thread count",
              file=sys.stderr)
    configure_jax()

    keys = [k.strip() for k in args.tests.split(",") if k.strip()] or list(TEST_KEYS)
    tests = [test_by_key(k) for k in keys]
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    for f in frameworks:
        if f not in ("jax", "pytorch"):
            ap.error(f"--frameworks: {f!r}; valid: jax, pytorch")
    plans_dir = args.plans or args.out.parent / "laab-plans"
    plans_dir.mkdir(parents=True, exist_ok=True)

    # 1. tune everything first (the timing process is pinned afterwards)
    tuned: dict[str, tuple[Path | None, str]] = {}
    for t in tests:
        if args.no_tune:
            from autotune.plan import plan_filename

            problem, status = parse_status(t)
            if problem is None:
                tuned[t.key] = (None, status)
                continue
            path = plans_dir / plan_filename(problem.name, problem.resolve_dims(
                {"n": args.n}), DTYPE)
            tuned[t.key] = (path, "ok") if path.exists() else (None, f"no plan at {path}")
        else:
            tuned[t.key] = tune(t, args.n, args.trials, args.timeout, plans_dir, args.heap)
        print(f"[laab] {t.key}: {tuned[t.key][1]}", file=sys.stderr, flush=True)

    # 2. time, one test at a time, pinned to one CPU under one BLAS thread
    from threadpoolctl import threadpool_limits

    from autotune.memory import set_heap_policy

    set_heap_policy(args.heap)  # load_plan would set the plan's: every column gets the same
    pinning = pin(None if args.cpu == "none" else int(args.cpu))
    scrub = Scrub()
    results: list[TestResult] = []
    with threadpool_limits(limits=1, user_api="blas"):
        for t in tests:
            path, status = tuned[t.key]
            plan = None
            if path is not None:
                plan, status = load(path, args.heap, t.donate)
            r = run_test(t, args.n, args.reps, plan, scrub, frameworks, args.seed)
            if plan is not None:
                r.plan_path = str(path)
                r.plan_ops = {op: k for op, k in plan.program.ops_used().items()
                              if op != "input"}
                r.plan_program = plan.program.describe(plan.dims)
                r.plan_params = dict(plan.plan.params)
            r.status = status if "autotune" not in r.wrong else f"{status}; wrong result"
            if plan is None:
                r.skipped["autotune"] = status
            results.append(r)
            print(f"[laab] {t.key}: timed; autotune {_cell(r, 'autotune', args.stats)}",
                  file=sys.stderr, flush=True)
            del plan

    meta = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(), "n": args.n, "dtype": DTYPE, "reps": args.reps,
            "trials": args.trials, "timeout": f"{args.timeout:g}", "pinning": pinning,
            "notes": [f"Heap policy `{args.heap}` (autotune.memory) for the tuning and for "
                      "every implementation timed"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(write_markdown(results, meta, args.stats), encoding="utf-8")
    print(args.out)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
