"""The call checks of tuned functions (autotune/checks.py and TunedFunction's call path):
the one-pass kernels against brute-force NumPy, no O(n^2) temporaries, and every diagnostic
of a call still naming the input although inputs are no longer scanned before the call."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import threading
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autotune import InputError, api, checks, load_plan
from autotune.instances import random_instance
from autotune.plan import _digest
from autotune.reference import evaluate_reference, relative_error
from autotune.space import named_point
from autotune.spec import load_problem, parse_problem, problem_names

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "results" / "example-plan-kalman-n200.json"
EPS = {"float64": float(np.finfo(np.float64).eps), "float32": float(np.finfo(np.float32).eps)}

TRIANGULAR = """
[problem]
name = "trisolve"
[dims]
n = 9
[inputs]
L = { shape = ["n", "n"], properties = ["lower_triangular"] }
U = { shape = ["n", "n"], properties = ["upper_triangular"] }
b = { shape = ["n", 1] }
[outputs]
x = "inv(L)*b + U*b"
"""


# -- plans without tuning: a committed plan's fields around other knobs ----------------------


def make_plan(folder: Path, source: str, origin: str, overrides: dict[str, int],
              knobs: str | dict, dtype: str = "float64", name: str = "plan") -> Path:
    """A valid plan file for ``source`` at ``overrides`` with a named point's knobs (or the
    given ones), on numba-t1; the measurement fields are the template's (never read)."""
    problem = parse_problem(source, origin=origin)
    dims = problem.resolve_dims(overrides)
    if isinstance(knobs, str):
        knobs = named_point(problem, knobs, dims)
    d = json.loads(TEMPLATE.read_text())
    d["problem"] = {"name": problem.name, "source": source, "origin": origin,
                    "inputs": list(problem.inputs), "outputs": list(problem.outputs),
                    "sha256": hashlib.sha256(source.encode()).hexdigest()}
    d["dims"] = dict(dims)
    d["params"] = dict(knobs)
    d["dtype"] = dtype
    d["target"] = {"backend": "numba", "device": "cpu", "name": "numba-t1", "threads": 1}
    d["environment"] = {"heap": "system"}  # leave this process's heap alone
    d["digest"] = _digest(d)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(d))
    return path


def shipped(folder: Path, problem: str, overrides: dict[str, int],
            knobs: str | dict = "flop-optimal", dtype: str = "float64", **kw):
    src = (REPO / "search_spaces" / f"{problem}.toml").read_text()
    path = make_plan(folder, src, f"search_spaces/{problem}.toml", overrides, knobs, dtype,
                     name=f"{problem}-{dtype}-{abs(hash(json.dumps(knobs, sort_keys=True)))}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_plan(path, **kw)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("check-plans")


@pytest.fixture(scope="module", params=["float64", "float32"])
def kalman_fn(request, folder):
    return shipped(folder, "kalman", {"n": 12}, dtype=request.param)


def _instance(fn, seed: int = 5) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in random_instance(fn.problem, fn.dims, seed=seed,
                                                        dtype=fn.dtype).items()}


# -- kernels against brute force ---------------------------------------------------------------


def _layout(a: np.ndarray, how: str) -> np.ndarray:
    """The same values as ``a`` in another memory layout."""
    if how == "C":
        return np.ascontiguousarray(a)
    if how == "F":
        return np.asfortranarray(a)
    if how == "strided":  # a view into a bigger array: neither C nor F contiguous
        big = np.zeros((a.shape[0] + 3, 2 * a.shape[1] + 1), dtype=a.dtype)
        big[1 : a.shape[0] + 1, 1 : 2 * a.shape[1] + 1 : 2] = a
        return big[1 : a.shape[0] + 1, 1 : 2 * a.shape[1] + 1 : 2]
    if how == "offset":  # rows of a wider array: row-strided, inner contiguous
        big = np.zeros((a.shape[0], a.shape[1] + 5), dtype=a.dtype)
        big[:, 2 : a.shape[1] + 2] = a
        return big[:, 2 : a.shape[1] + 2]
    raise ValueError(how)


def _brute_symmetry(a: np.ndarray, eps: float) -> tuple[bool, bool]:
    """(finite, symmetric) by the rule of checks.symmetry, in plain NumPy."""
    a = np.asarray(a, dtype=np.float64)
    fin = np.isfinite(a)
    n = a.shape[0]
    finite = bool(fin.all())
    maxabs = float(np.abs(np.where(fin, a, 0)).max(initial=0))
    both = fin & fin.T
    diff = np.abs(np.where(both, a - np.where(both, a.T, 0), 0))
    maxdiff = float(diff.max(initial=0))
    at = a.T
    agree = (a == at) | (np.isnan(a) & np.isnan(at))
    onesided = bool((~both & ~agree).any())
    return finite, (not onesided) and maxdiff <= 100 * eps * max(1.0, maxabs) * n


LAYOUTS = st.sampled_from(["C", "F", "strided", "offset"])
DTYPES = st.sampled_from(["float64", "float32"])
SPECIALS = st.sampled_from([np.nan, np.inf, -np.inf])


@st.composite
def square(draw, max_n: int = 41):
    n = draw(st.integers(1, max_n))
    dtype = draw(DTYPES)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n))
    kind = draw(st.sampled_from(["symmetric", "asymmetric", "near", "offdiag-big", "tiny"]))
    if kind != "asymmetric":
        a = a + a.T
    eps = EPS[dtype]
    if kind == "near":  # one pair off by a multiple of the tolerance
        i, j = draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1))
        factor = draw(st.sampled_from([0.25, 0.9, 1.1, 4.0]))
        a = a.astype(dtype).astype(np.float64)
        scale = max(1.0, float(np.abs(a).max()))
        a[i, j] += factor * 100 * eps * scale * n
    if kind == "offdiag-big":  # the largest element off the diagonal, the two triangles
        a[0, n - 1] = a[n - 1, 0] = 1e6  # differing by rounding only: the exact pass decides
        a = a + np.triu(np.full((n, n), 3 * eps), 1)
    if kind == "tiny":
        a = a * 1e-30
    a = a.astype(dtype)
    for _ in range(draw(st.integers(0, 2))):
        i, j = draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1))
        a[i, j] = draw(SPECIALS)
        if draw(st.booleans()):
            a[j, i] = a[i, j]
    return _layout(a, draw(LAYOUTS))


@contextlib.contextmanager
def tiled(on: bool):
    """The tile-by-tile symmetry pass (big arrays) for arrays of any size."""
    saved = checks.TILED_MIN_BYTES
    checks.TILED_MIN_BYTES = 0 if on else saved
    try:
        yield
    finally:
        checks.TILED_MIN_BYTES = saved


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=square(max_n=75), by_tiles=st.booleans())
def test_symmetry_matches_brute_force(a, by_tiles):
    eps = EPS[a.dtype.name]
    finite, symmetric = _brute_symmetry(a, eps)
    with tiled(by_tiles):
        verdict = checks.symmetry(a, eps)
        stopped = checks.symmetry(a, eps, stop_at_nonfinite=True)
    assert verdict.finite == finite
    assert verdict.symmetric == symmetric
    assert stopped.finite == finite
    if finite:
        assert stopped.symmetric == symmetric


def _block_brute(a: np.ndarray, eps: float, i0: int, i1: int, j0: int, j1: int
                 ) -> tuple[bool, bool]:
    """(finite, symmetric) of the pairs (a_ij, a_ji), i in i0 .. i1, j in j0 .. j1, j < i
    (ranges taken the other way round when j0 > i0), and the diagonal of both ranges, by
    the rule of checks.symmetry with max |a| over what the block reads, in NumPy."""
    a = np.asarray(a, dtype=np.float64)
    n = a.shape[0]
    if j0 > i0:
        i0, i1, j0, j1 = j0, j1, i0, i1
    pairs = np.zeros((n, n), bool)
    pairs[i0:i1, j0:j1] = True
    pairs &= np.tril(np.ones((n, n), bool), -1)
    seen = pairs | pairs.T
    for lo, hi in ((i0, i1), (j0, j1)):
        seen[np.arange(lo, hi), np.arange(lo, hi)] = True
    fin = np.isfinite(a)
    finite = bool(fin[seen].all())
    maxabs = float(np.abs(np.where(fin & seen, a, 0)).max(initial=0))
    both = fin & fin.T & seen
    maxdiff = float(np.abs(np.where(both, a - np.where(both, a.T, 0), 0)).max(initial=0))
    at = a.T
    agree = (a == at) | (np.isnan(a) & np.isnan(at))
    onesided = bool((seen & ~(fin & fin.T) & ~agree & ~np.eye(n, dtype=bool)).any())
    return finite, (not onesided) and maxdiff <= 100 * eps * max(1.0, maxabs) * n


@settings(max_examples=200, deadline=None)
@given(a=square(max_n=40), data=st.data())
def test_a_block_of_the_symmetry_check_matches_brute_force(a, data):
    """The pairs of a block of rows against a block of columns only: what they hold (and
    the two blocks' diagonal elements) decides, nothing else; the whole matrix as one
    block is the whole check."""
    n = a.shape[0]
    i0 = data.draw(st.integers(0, n - 1))
    i1 = data.draw(st.integers(i0 + 1, n))
    j0 = data.draw(st.integers(0, n - 1))
    j1 = data.draw(st.integers(j0 + 1, n))
    eps = EPS[a.dtype.name]
    c = np.ascontiguousarray(a)
    verdict = checks.symmetry_block(a, eps, i0, i1, j0, j1)
    if a.flags.c_contiguous or not a.flags.f_contiguous:
        assert (verdict.finite, verdict.symmetric) == _block_brute(c, eps, i0, i1, j0, j1)
    else:  # an F-ordered array: the pairs are read through its transpose (the same pairs)
        assert (verdict.finite, verdict.symmetric) == _block_brute(c.T, eps, i0, i1, j0, j1)
    whole = checks.symmetry_block(a, eps, 0, n, 0, n)
    assert (whole.finite, whole.symmetric) == _brute_symmetry(a, eps)


@pytest.mark.parametrize(("n", "size"), [(1, 1), (7, 3), (40, 8), (41, 8), (100, 100)])
def test_the_block_pairs_cover_every_pair_once(n, size):
    """A rotation over ``block_pairs`` calls reads every pair (i, j < i) exactly once, and
    the next call starts the rotation again."""
    count = np.zeros((n, n), int)
    total = checks.block_pairs(n, size)
    for k in range(total):
        i0, i1, j0, j1 = checks.block_pair(n, size, k)
        assert i1 - i0 <= size and j1 - j0 <= size and j0 <= i0
        block = np.zeros((n, n), int)
        block[i0:i1, j0:j1] = 1
        count += np.tril(block, -1)
    assert (count == np.tril(np.ones((n, n), int), -1)).all()
    assert checks.block_pair(n, size, total) == checks.block_pair(n, size, 0)


def test_a_window_of_rows_of_a_zero_triangle():
    a = np.tril(np.ones((20, 20)))
    a[3, 15] = 1.0  # above the diagonal, in row 3
    assert not checks.triangle_is_zero(a, True)
    assert checks.triangle_is_zero(a, True, rows=(4, 20))
    assert not checks.triangle_is_zero(a, True, rows=(0, 4))
    assert not checks.triangle_is_zero(a, True, rows=(3, 4))
    f = np.asfortranarray(a)  # F-ordered: rows of the C-ordered transpose, columns of a
    assert not checks.triangle_is_zero(f, True, rows=(15, 16))
    assert checks.triangle_is_zero(f, True, rows=(0, 15))


@settings(max_examples=200, deadline=None)
@given(a=square(), how=LAYOUTS)
def test_all_finite_and_triangles_match_numpy(a, how):
    assert checks.all_finite(a) == bool(np.isfinite(a).all())
    for upper, part in ((True, np.triu), (False, np.tril)):
        k = 1 if upper else -1
        assert checks.triangle_is_zero(a, upper) == bool((part(a, k) == 0).all())
        lower_only = _layout(np.tril(np.asarray(a)) if upper else np.triu(np.asarray(a)), how)
        assert checks.triangle_is_zero(lower_only, upper)
        # the finiteness of one triangle, the diagonal included (2 threads: split rows)
        for threads in (1, 2):
            assert checks.triangle_all_finite(a, not upper, threads) == bool(
                np.isfinite(part(np.asarray(a))).all()), (upper, threads)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_common_inputs_take_one_pass(dtype):
    """Exactly symmetric matrices, and positive definite ones whose triangles differ by
    rounding (a covariance updated by GEMMs), are decided by the one-pass bound; one pair off
    by a bit more than the tolerance is caught, a bit less passes (the exact pass)."""
    n = 97
    rng = np.random.default_rng(4)
    g = rng.standard_normal((n, n))
    spd = (g @ g.T + n * np.eye(n)).astype(dtype)
    eps = EPS[dtype]
    assert checks.symmetry(spd, eps) == (True, True, False)
    h = rng.standard_normal((5, n)).astype(dtype)  # a Kalman update: symmetric in theory
    gain = spd @ h.T @ np.linalg.inv(h @ spd @ h.T + np.eye(5, dtype=dtype))
    updated = spd - gain @ (h @ spd)
    assert not np.array_equal(updated, updated.T)
    assert checks.symmetry(updated, eps) == (True, True, False)
    tol = 100 * eps * float(np.abs(spd).max()) * n
    for factor, symmetric in ((0.9, True), (1.1, False)):
        a = spd.astype(np.float64)
        a[7, 3] += factor * tol
        a = a.astype(dtype)
        assert checks.symmetry(a, eps) == (True, symmetric, True)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_split_over_threads_agrees(dtype):
    """Arrays of PARALLEL_MIN elements and more are checked by several threads: the same
    verdicts, wherever the fault lies."""
    n = 601
    assert n * n >= checks.PARALLEL_MIN
    rng = np.random.default_rng(1)
    base = rng.standard_normal((n, n))
    base = (base + base.T).astype(dtype)
    eps = EPS[dtype]
    assert checks.symmetry(base, eps, threads=2) == (True, True, False)
    assert checks.all_finite(base, threads=3)
    for i, j in ((0, 1), (n - 1, 0), (300, 299), (n - 1, n - 2), (0, n - 1)):
        for value in (np.nan, np.inf, base[i, j] + 1):
            a = base.copy()
            a[i, j] = value
            expect = checks.symmetry(a, eps, threads=1)
            assert checks.symmetry(a, eps, threads=2) == expect
            with tiled(True):
                assert checks.symmetry(a, eps, threads=2) == expect
                assert checks.symmetry(a, eps, threads=1) == expect
            assert checks.all_finite(a, threads=2) == bool(np.isfinite(a).all())
            lower = np.tril(a)
            lower[min(i, j), max(i, j)] = value
            expect = bool((np.triu(lower, 1) == 0).all())
            assert checks.triangle_is_zero(lower, True, threads=2) == expect


def test_the_happy_path_allocates_no_quadratic_temporary():
    """A 1000 x 1000 float64 input is 8 MB: the checks allocate a few hundred bytes."""
    n = 1000
    rng = np.random.default_rng(2)
    a = rng.standard_normal((n, n))
    a = a + a.T
    lower = np.tril(a)
    eps = EPS["float64"]
    for threads in (1, 2):  # warm (threads, futures)
        checks.symmetry(a, eps, threads)
        checks.all_finite(a, threads)
        checks.triangle_is_zero(lower, True, threads)
    for threads in (1, 2):
        for view in (a, a.T, a[:, :]):
            tracemalloc.start()
            assert checks.symmetry(view, eps, threads).symmetric
            assert checks.all_finite(view, threads)
            assert checks.triangle_is_zero(lower, True, threads)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert peak < 64_000, peak
    # the Numba kernels themselves never allocate: NumPy's allocations are traced above,
    # Numba's are not, so read the compiled code (of an uncached copy: Numba cannot show
    # the code it loaded from its cache)
    from numba import njit

    for kernel, args in (
        (checks._finite_flat, (a.reshape(-1), 0, 10, 0.0)),
        (checks._finite_rows, (a, 0, 10, 0.0)),
        (checks._sym_pass, (a, 0, 16, 0.0)),
        (checks._sym_pass_tiled, (a, 0, 64, 0.0)),
        (checks._strict_triangle_abs, (a, True, 0, 10, 0.0)),
        (checks._sym_exact, (a, False)),
    ):
        copy = njit(nogil=True, fastmath=kernel.targetoptions.get("fastmath", False))(
            kernel.py_func)
        copy(*args)
        for ir in copy.inspect_llvm().values():
            assert "NRT_MemInfo_alloc" not in ir, kernel


def test_a_call_allocates_no_quadratic_temporary():
    """The whole call path of the committed example plan (n = 200: an n^2 float64 array is
    320 kB) around the compiled function: binding, checks before and after."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fn = load_plan(TEMPLATE)
    x = random_instance(fn.problem, fn.dims, seed=1)
    out = fn(**x)
    values = fn._bind((), x)
    tracemalloc.start()
    values = fn._bind((), x)
    assert fn._outputs_finite(list(out))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 32_000, peak
    assert all(v is x[n] for v, n in zip(values, fn.input_names, strict=True))


def test_kernels_are_compiled_when_a_plan_is_loaded(kalman_fn):
    """load_plan compiled every kernel a call of this plan needs, for C-ordered, Fortran-
    ordered, strided and read-only arrays: checking a call's inputs and outputs compiles
    nothing."""
    kernels = (checks._finite_flat, checks._finite_rows, checks._sym_pass,
               checks._sym_pass_tiled, checks._sym_exact)
    counts = {k: len(k.signatures) for k in kernels}
    x = _instance(kalman_fn)
    out = kalman_fn(**x)
    for layout in ("C", "F", "strided", "offset", "read-only"):
        if layout == "read-only":  # e.g. np.asarray of a JAX array
            y = {k: v.copy() for k, v in x.items()}
            for v in y.values():
                v.flags.writeable = False
            outs = [o.copy() for o in out]
            for o in outs:
                o.flags.writeable = False
        else:
            y = {k: _layout(v, layout) for k, v in x.items()}
            outs = [_layout(o, layout) for o in out]
        kalman_fn._bind((), y)
        assert kalman_fn._outputs_finite(outs)
    x["Sigma"][0, 1] += 1
    with pytest.raises(InputError, match="symmetric"):
        kalman_fn(**x)
    assert {k: len(k.signatures) for k in kernels} == counts


# -- which inputs the outputs vouch for ------------------------------------------------------


def test_unguarded_inputs_of_the_shipped_problems():
    from autotune.derivation import derive

    expect = {  # matrices only factorized or inverted, or read in one triangle
        ("kalman", "flop-optimal"): {"R"},
        ("kalman", "seed-2x2"): {"R", "Sigma"},  # Sigma's upper right block is never read
        ("gls", "flop-optimal"): {"M"},
        ("mmse", "flop-optimal"): {"N", "C"},
        ("enkf", "flop-optimal"): {"R"},
        ("tikhonov", "flop-optimal"): {"lam"},  # a scalar: checked exactly anyway
    }
    small = {"kalman": {"n": 12}, "gls": {"n": 40}, "mmse": {"n": 10}, "enkf": {"n": 24, "N": 7},
             "tikhonov": {"n": 10}}
    for (name, point), want in expect.items():
        p = load_problem(name)
        dims = p.resolve_dims(small[name])
        prog = derive(p, named_point(p, point, dims), dims)
        assert checks.unguarded_inputs(prog, dims) == want, (name, point)


def test_an_input_the_program_does_not_read_is_unguarded():
    """PyTensor refuses to compile a graph with an unused input, but the analysis does not
    count on it: an input no live step reads, or reads only through a factorization, is
    unguarded; one read through a slice is guarded only where the slices cover it."""
    from autotune.program import Program, Step

    steps = (
        Step("input", (), ("n", "n")),  # 0: A
        Step("input", (), ("n", "n")),  # 1: B (unread)
        Step("input", (), ("n", "n")),  # 2: C (factorized only)
        Step("cholesky", (2,), ("n", "n")),  # 3
        Step("trsolve", (3, 0), ("n", "n"), (("lower", True),)),  # 4: inv(L) A
        Step("input", (), ("n", "n")),  # 5: D, half of it read
        Step("slice", (5,), ("n", "2"), (("rows", ("0", "n")), ("cols", ("0", "2")))),  # 6
        Step("transpose", (6,), ("2", "n")),  # 7
        Step("matmul", (7, 4), ("2", "n")),  # 8
    )
    prog = Program(steps, {"A": 0, "B": 1, "C": 2, "D": 5}, {"X": 8, "Y": 4})
    assert checks.unguarded_inputs(prog, {"n": 4}) == {"B", "C", "D"}
    assert checks.unguarded_inputs(prog, {"n": 2}) == {"B", "C"}  # the slice is all of D


# -- every diagnostic names the input ---------------------------------------------------------


def _nan_message(name: str) -> str:
    return rf"input {name}: contains NaN or infinity \(pass check_finite=False"


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_non_finite_value_in_each_kalman_input_is_named(kalman_fn, value):
    x = _instance(kalman_fn)
    for name in kalman_fn.input_names:
        for idx in ((0, 0), (-1, -1), (1, 0), (0, -1)):
            y = dict(x)
            y[name] = x[name].copy()
            y[name][idx] = value
            with pytest.raises(InputError, match=_nan_message(name)):
                kalman_fn(**y)


def test_a_nan_in_the_upper_triangle_only_is_named(kalman_fn):
    """A NaN where a plan that reads one triangle does not look: Sigma's and R's upper
    triangles (R only reaches a Cholesky factorization of S = R + H Sigma H.T)."""
    x = _instance(kalman_fn)
    for name in ("Sigma", "R"):
        y = dict(x)
        y[name] = x[name].copy()
        y[name][0, -1] = np.nan
        with pytest.raises(InputError, match=_nan_message(name)):
            kalman_fn(**y)


def test_unread_nan_with_finiteness_checks_off_is_an_asymmetry(folder):
    fn = shipped(folder, "kalman", {"n": 12}, check_finite=False)
    x = _instance(fn)
    x["R"][0, -1] = np.nan  # the lower triangle holds a number: the triangles differ
    with pytest.raises(InputError, match="input R: the plan relies on it being symmetric"):
        fn(**x)
    x = _instance(fn)
    x["R"][0, -1] = x["R"][-1, 0] = np.nan  # both: symmetric, and NaN was allowed
    fn(**x)


def test_unread_nan_with_property_checks_off_is_still_named(folder):
    fn = shipped(folder, "kalman", {"n": 12}, check_properties=False)
    x = _instance(fn)
    x["R"][0, -1] = np.nan
    with pytest.raises(InputError, match=_nan_message("R")):
        fn(**x)
    x = _instance(fn)
    x["R"][2, 2] = np.inf  # a pivot of infinity: Cholesky turns it into finite outputs
    with pytest.raises(InputError, match=_nan_message("R")):
        fn(**x)


def test_asymmetric_sigma_is_named_and_rounding_is_not(kalman_fn):
    x = _instance(kalman_fn)
    eps = EPS[kalman_fn.dtype]
    n = x["Sigma"].shape[0]
    y = dict(x)
    y["Sigma"] = x["Sigma"].copy()
    y["Sigma"][3, 1] += 1e-3
    with pytest.raises(InputError, match="input Sigma: the plan relies on it being symmetric"):
        kalman_fn(**y)
    # differences of rounding size (the old tolerance: 100 eps n max|Sigma|) pass
    scale = float(np.abs(x["Sigma"]).max())
    y["Sigma"] = x["Sigma"] + np.triu(np.full((n, n), 10 * eps * scale, dtype=kalman_fn.dtype), 1)
    kalman_fn(**y)


def test_a_non_positive_definite_r_is_named(kalman_fn):
    x = _instance(kalman_fn)
    x["R"] = -x["R"] - 10 * np.eye(len(x["R"]), dtype=kalman_fn.dtype)
    with pytest.raises(InputError, match=r"input R: the plan relies on it being positive "
                                         r"definite, but it is not \(Cholesky failed\)"):
        kalman_fn(**x)


def test_a_factorization_that_raises_is_diagnosed(folder):
    """A backend whose Cholesky raises (rather than returning NaN) is diagnosed alike, the
    original error kept as the cause; with nothing to blame it propagates unchanged."""
    fn = shipped(folder, "kalman", {"n": 12})
    real = fn._fn

    class Raising:
        def __call__(self, *values):
            raise np.linalg.LinAlgError("Matrix is not positive definite")

    x = _instance(fn)
    bad = dict(x)
    bad["R"] = -x["R"]
    try:
        fn._fn = Raising()
        with pytest.raises(InputError, match="input R: .*positive definite") as info:
            fn(**bad)
        assert isinstance(info.value.__cause__, np.linalg.LinAlgError)
        with pytest.raises(np.linalg.LinAlgError):
            fn(**x)
    finally:
        fn._fn = real


def test_triangular_inputs(folder):
    path = make_plan(folder, TRIANGULAR, "trisolve.toml", {}, "flop-optimal", name="tri")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fn = load_plan(path)
        loose = load_plan(path, check_finite=False)
    x = _instance(fn)
    ref = evaluate_reference(fn.problem, x, fn.dims).outputs["x"]
    for layout in ("C", "F", "strided"):
        out = fn(**{k: _layout(v, layout) for k, v in x.items()})
        assert relative_error(out.x, ref) < 1e-12
    for name, idx, what in (("L", (0, 3), "lower"), ("U", (3, 0), "upper")):
        for layout in ("C", "F"):
            y = dict(x)
            y[name] = x[name].copy()
            y[name][idx] = 1.0
            y[name] = _layout(y[name], layout)
            with pytest.raises(InputError, match=f"input {name}: the plan relies on it being "
                                                 f"{what} triangular"):
                fn(**y)
            y[name] = _layout(np.where(np.arange(81).reshape(9, 9) == idx[0] * 9 + idx[1],
                                       np.nan, x[name]), layout)
            with pytest.raises(InputError, match=_nan_message(name)):
                fn(**y)
            with pytest.raises(InputError, match=f"input {name}: the plan relies on it"):
                loose(**y)
    y = dict(x)
    y["L"] = x["L"].copy()
    y["L"][4, 4] = np.inf  # x_4 = b_4 / inf = 0: finite outputs, so L is scanned
    with pytest.raises(InputError, match=_nan_message("L")):
        fn(**y)


def test_errors_come_in_the_inputs_order(kalman_fn):
    """A NaN in an earlier input is named before a later input's failed property (as when
    every input was scanned before the call)."""
    x = _instance(kalman_fn)
    x["mu"][2, 0] = np.nan
    x["Sigma"][0, 1] += 1.0
    with pytest.raises(InputError, match=_nan_message("mu")):
        kalman_fn(**x)
    x = _instance(kalman_fn)
    x["Sigma"][0, 1] += 1.0
    x["data"][0, 0] = np.nan
    with pytest.raises(InputError, match="input Sigma: the plan relies on it being symmetric"):
        kalman_fn(**x)


def test_checks_off_let_nan_through(folder):
    fn = shipped(folder, "kalman", {"n": 12}, check_finite=False, check_properties=False)
    x = _instance(fn)
    x["Sigma"][0, 1] = np.nan
    out = fn(**x)
    assert not np.isfinite(out.newSigma).all()


def test_huge_finite_outputs_are_not_mistaken_for_overflow():
    """The output check is exact: sums of huge finite values do not overflow it."""
    a = np.full((50, 50), np.finfo(np.float64).max)
    assert checks.all_finite(a)
    with np.errstate(over="ignore"):
        assert not math.isfinite(float(np.add.reduce(a, axis=None)))
    a[3, 4] = np.inf
    assert not checks.all_finite(a)


#: the five original problems are probed at every element, unblocked and 2 x 2 blocked; the
#: corpus problems at a seeded sample of elements of the unblocked plan (CI time)
ORIGINAL = ("kalman", "gls", "tikhonov", "mmse", "enkf")
NAN_CASES = [(p, point) for p in problem_names() for point in ("flop-optimal", "seed-2x2")
             if p in ORIGINAL or point == "flop-optimal"]
SAMPLED = 12


@pytest.mark.parametrize(("problem", "point"), NAN_CASES)
def test_every_non_finite_element_of_every_input_is_named(folder, dims_for, problem, point):
    """A NaN, +inf or -inf at each element of each input of each shipped problem (small
    sizes; unblocked and 2 x 2 blocked plans): the error names that input."""
    import random

    p = load_problem(problem)
    fn = shipped(folder, problem, dims_for(p), point)
    x = _instance(fn, seed=3)
    fn(**x)
    rng = random.Random(problem)
    for name in fn.input_names:
        if not fn.shapes[name]:
            continue
        where = list(np.ndindex(*fn.shapes[name]))
        if problem not in ORIGINAL and len(where) > SAMPLED:
            where = rng.sample(where, SAMPLED)
        for idx in where:
            for value in (np.nan, np.inf, -np.inf):
                y = dict(x)
                y[name] = x[name].copy()
                y[name][idx] = value
                with pytest.raises(InputError, match=_nan_message(name)):
                    fn(**y)


# -- the thread limit --------------------------------------------------------------------------


def _blas_counts() -> set[int]:
    from threadpoolctl import threadpool_info

    return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


def test_the_thread_limit_is_in_force_during_every_call(folder, monkeypatch):
    """Inside the compiled function every BLAS runs with the target's threads, whether the
    limit had to be set (threadpoolctl) or was already in force (nothing set)."""
    from threadpoolctl import threadpool_limits

    fn = shipped(folder, "kalman", {"n": 40})  # numba-t1
    assert fn.program.flops(fn.dims) >= api.SMALL_WORK_FLOPS and fn._limit == "fast"
    x = _instance(fn)
    real = fn._fn
    seen: list[set[int]] = []
    entered: list[int] = []

    def spy(*values):
        seen.append(_blas_counts())
        return real(*values)

    original = fn._thread_limit

    def counting(target):
        entered.append(1)
        return original(target)

    fn._fn = spy
    fn._thread_limit = counting
    try:
        with threadpool_limits(limits=2, user_api="blas"):
            fn(**x)
            assert _blas_counts() == {2}  # restored after the call
        assert seen[-1] == {1} and len(entered) == 1
        with threadpool_limits(limits=1, user_api="blas"):
            fn(**x)
        assert seen[-1] == {1} and len(entered) == 1  # in force already: nothing set
    finally:
        fn._fn = real
        fn._thread_limit = original


def _windowed_kalman(folder, n: int = 100, **kw):
    fn = shipped(folder, "kalman", {"n": n}, **kw)  # the template's median call: 0.8 ms
    fn._resize_below = 0.0  # the budget stays the stored median's (rebudgeting: test_api)
    return fn, _instance(fn)


def test_property_checks_over_budget_move_a_window_over_the_matrix(folder):
    """Where reading every element would exceed the budget (2% of the median call), each
    call checks symmetry on one pair of blocks that moves on: an asymmetry confined to one
    pair is caught when the rotation reaches its block pair, not before, and within one
    rotation (``checks.block_pairs`` calls)."""
    fn, x = _windowed_kalman(folder)
    assert "Sigma" in fn._blocks and fn._windows == {}
    size = fn._blocks["Sigma"]
    n = fn.shapes["Sigma"][0]
    assert api.MIN_BLOCK <= size < n
    total = checks.block_pairs(n, size)
    at = next(k for k in range(total)  # the call whose block pair holds the pair (70, 60)
              if _holds(checks.block_pair(n, size, k), 70, 60))
    bad = dict(x)
    bad["Sigma"] = x["Sigma"].copy()
    bad["Sigma"][70, 60] += 1.0
    for _ in range(at):
        fn(**bad)  # block pairs before it: the asymmetry is not read
    with pytest.raises(InputError, match="Sigma: the plan relies on it being symmetric"):
        fn(**bad)
    # a matrix asymmetric all over is caught on the first call, wherever the window is
    fn2, _ = _windowed_kalman(folder)
    worse = dict(x)
    worse["Sigma"] = x["Sigma"] + np.triu(np.ones_like(x["Sigma"]), 1)
    with pytest.raises(InputError, match="Sigma: the plan relies on it being symmetric"):
        fn2(**worse)


def _holds(block: tuple[int, int, int, int], i: int, j: int) -> bool:
    i0, i1, j0, j1 = block
    return (i0 <= i < i1 and j0 <= j < j1) or (i0 <= j < i1 and j0 <= i < j1)


def test_full_property_checks_read_everything_on_every_call(folder):
    fn, x = _windowed_kalman(folder, check_properties="full")
    assert fn._windows == {} and fn._blocks == {}
    bad = dict(x)
    bad["Sigma"] = x["Sigma"].copy()
    bad["Sigma"][70, 60] += 1.0
    with pytest.raises(InputError, match="Sigma: the plan relies on it being symmetric"):
        fn(**bad)
    with pytest.raises(ValueError, match="check_properties: expected True, False or 'full'"):
        fn.check_properties = "sometimes"


def test_a_windowed_symmetric_input_is_scanned_for_nan_where_no_output_vouches(folder):
    """A whole symmetry check proves every element finite, a window does not: an input no
    output vouches for (R is factorized) is then scanned for NaN in full, and a NaN anywhere
    in it is named on the first call."""
    fn, x = _windowed_kalman(folder)
    fn._check_rate = api.MIN_CHECK_RATE  # reading is slow here: R windowed too
    fn._setup_call()
    assert "R" in fn._blocks and fn._input_checks["R"][3]
    bad = dict(x)
    bad["R"] = x["R"].copy()
    bad["R"][40, 45] = bad["R"][45, 40] = np.inf
    with pytest.raises(InputError, match="input R: contains NaN or infinity"):
        fn(**bad)


DIAG_SOLVE = """
[problem]
name = "diag_probe"
[dims]
n = 30
[inputs]
D = { shape = ["n", "n"], properties = ["diagonal", "positive_definite"] }
B = { shape = ["n", "n"] }
[outputs]
X = "inv(D)*B"
"""


def test_a_diagonal_input_is_scanned_on_its_diagonal_and_its_zeros_as_a_property(folder):
    """The plan reads only D's diagonal (diag_solve): a NaN there is named (an
    infinite pivot could vanish in the solve, so the diagonal is scanned); the declared zeros
    are the property checks' (a NaN there is not zero, and is named as not finite)."""
    path = make_plan(folder, DIAG_SOLVE, "diag_probe.toml", {}, "flop-optimal", name="diag")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fn = load_plan(path)
    ops = {s.op for s in fn.program.steps}
    assert "diag_solve" in ops
    assert fn._diagonal_scans == {"D"} and fn._input_checks["D"][3]
    x = _instance(fn)
    got = fn(**x)
    d = np.diag(np.diag(x["D"]))
    np.testing.assert_allclose(got.X, np.linalg.solve(d, x["B"]), rtol=1e-12)
    for where in ((4, 4), (4, 7)):
        bad = dict(x)
        bad["D"] = x["D"].copy()
        bad["D"][where] = np.inf
        with pytest.raises(InputError, match="input D: contains NaN or infinity"):
            fn(**bad)
    fn.check_properties = False
    assert fn._diagonal_scans == set()  # nothing checks the zeros: scan all of D


def test_a_banded_plan_checks_the_band_and_the_zeros_outside_it(folder):
    """Whittaker's plan solves in band storage (band_solve) and reads only the bands of D and
    W: a NaN or an infinity inside D's band makes the output NaN, and D is named; a nonzero
    outside it breaks the declared bandwidth and is named as such (a NaN there as not
    finite); the right-hand side's NaN shows in the output."""
    src = (REPO / "search_spaces" / "whittaker.toml").read_text()
    path = make_plan(folder, src, "search_spaces/whittaker.toml", {"n": 40},
                     {**named_point(load_problem("whittaker"), "flop-optimal",
                                    load_problem("whittaker").resolve_dims({"n": 40})),
                      "solver.inv1": "banded"}, name="whittaker-band")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fn = load_plan(path)
    assert "band_solve" in {s.op for s in fn.program.steps}
    # every element band_solve reads reaches z (a non-finite band gives NaN), W's diagonal
    # through W y too: no input needs a scan of its own, D's zeros are a property
    assert checks.unguarded_inputs(fn.program, fn.dims) == set()
    assert fn._bands == {"D": (0, 2)} and fn._band_scans == set()
    x = _instance(fn)
    got = fn(**x)
    d, w = x["D"], x["W"]
    want = np.linalg.solve(w + x["lam"] * d.T @ d, w @ x["y"])
    np.testing.assert_allclose(got.z, want, rtol=1e-9)
    for where in ((3, 5), (3, 3), (3, 9)):  # in the band, on its edge, outside it
        for value in (np.nan, np.inf, -np.inf):
            bad = dict(x, D=x["D"].copy())
            bad["D"][where] = value
            with pytest.raises(InputError, match="input D: contains NaN or infinity"):
                fn(**bad)
    bad = dict(x, lam=np.float64(np.inf))
    with pytest.raises(InputError, match="input lam"):
        fn(**bad)
    bad = dict(x, D=x["D"].copy())
    bad["D"][7, 1] = 0.5  # below the band
    with pytest.raises(InputError, match=r"input D: the plan relies on its band \(bandwidth "
                                         r"= \[0, 2\]"):
        fn(**bad)
    bad = dict(x, y=x["y"].copy())
    bad["y"][4, 0] = np.inf
    with pytest.raises(InputError, match="input y: contains NaN or infinity"):
        fn(**bad)


def test_a_plan_of_little_work_leaves_the_thread_limit_alone(folder):
    """Under SMALL_WORK_FLOPS BLAS runs on one thread anyway: the call neither sets nor
    checks the limit (a C call per library, more than the work), and computes the same."""
    fn = shipped(folder, "kalman", {"n": 4})
    assert fn.program.flops(fn.dims) < api.SMALL_WORK_FLOPS and fn._limit == "none"
    x = _instance(fn)
    entered: list[int] = []
    original = fn._thread_limit
    fn._thread_limit = lambda target: entered.append(1) or original(target)
    fn._limits_in_force = lambda: entered.append(2) or True
    try:
        got = fn(**x)
    finally:
        fn._thread_limit = original
        del fn._limits_in_force
    assert entered == []
    want = fn.function(*[x[n] for n in fn.input_names])
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_concurrent_calls_with_big_inputs_use_the_check_threads(folder):
    """Inputs over PARALLEL_MIN elements are checked by the plan's threads together; calls
    from several threads at once still get every verdict right."""
    source = (REPO / "search_spaces" / "gls.toml").read_text()
    path = make_plan(folder, source, "search_spaces/gls.toml", {"n": 520}, "flop-optimal",
                     name="gls-520")
    data = json.loads(path.read_text())
    data["target"] = {"backend": "numba", "device": "cpu", "name": "numba-t2", "threads": 2}
    data["digest"] = _digest(data)
    path.write_text(json.dumps(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fn = load_plan(path)
    assert fn._check_threads == min(2, os.cpu_count() or 1)
    x = _instance(fn)
    bad = dict(x)
    bad["M"] = x["M"].copy()
    bad["M"][500, 1] = np.nan  # in the triangle the factorization reads
    errors: list[str] = []

    def work(i):
        for _ in range(3):
            try:
                fn(**(bad if i % 2 else x))
                if i % 2:
                    errors.append("no error")
            except InputError as exc:
                if not (i % 2 and str(exc).startswith("input M: contains NaN")):
                    errors.append(str(exc))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_a_partial_access_leaves_the_unread_part_unchecked():
    """``(A + B)[2, 2]`` reads one entry of A and of B: a NaN elsewhere changes no output (the
    formula says so), so neither input is scanned; the formula as written slices a computed
    sum, which the analysis does not follow (conservative): both inputs are scanned there."""
    from autotune.derivation import derive
    from autotune.knobs import default_knobs
    from autotune.spec import parse_problem

    p = parse_problem('[problem]\nname = "part"\n[dims]\nn = 6\n[inputs]\n'
                      'A = { shape = ["n", "n"] }\nB = { shape = ["n", "n"] }\n'
                      '[outputs]\nX = "(A + B)[2, 2]"\n', "part")
    dims = p.resolve_dims({})
    part = derive(p, default_knobs(p), dims)
    assert [s.attr("partial") for s in part.steps if s.op == "slice"] == [True, True]
    assert checks.unguarded_inputs(part, dims) == set()
    whole = derive(p, {**default_knobs(p), "rewrite": "as_written"}, dims)
    assert checks.unguarded_inputs(whole, dims) == {"A", "B"}


def test_a_symmetric_input_read_in_one_triangle_is_scanned_there_only(folder):
    """Kalman's R only reaches S = H Sigma H.T + R as the c of the symmetric product, which
    reads its lower triangle: where the property checks take R's symmetry in a window (the
    budget), the finiteness scan reads that triangle alone; a NaN there is named; a NaN in
    the other triangle is an asymmetry, caught when the window passes it."""
    fn = shipped(folder, "kalman", {"n": 400})
    assert checks.triangle_scans(fn.program, {"R"}, fn.dims) == {"R": True}
    fn._blocks["R"] = 16  # as a budget too small for R would leave it
    fn._block_cursors["R"] = 0
    fn._input_checks["R"] = (True, False, False, True)
    fn._triangle_scans = {"R": True}
    x = _instance(fn)
    bad = dict(x, R=x["R"].copy())
    bad["R"][150, 3] = np.nan  # lower triangle, outside the first window
    with pytest.raises(InputError, match=_nan_message("R")):
        fn(**bad)
    bad = dict(x, R=x["R"].copy())
    bad["R"][3, 150] = np.nan  # upper: not read; the block pair (rows 144..159, 0..15)
    fn._block_cursors["R"] = next(k for k in range(checks.block_pairs(400, 16))
                                  if checks.block_pair(400, 16, k) == (144, 160, 0, 16))
    with pytest.raises(InputError, match="input R"):
        fn(**bad)
    fn._block_cursors["R"] = 0  # a block pair away from row 3 and column 150: not seen
    out = fn(**bad)
    assert all(np.isfinite(v).all() for v in out)


def test_triangle_scans_follow_transposes_and_refuse_mixed_reads():
    from autotune.program import Program, Step

    steps = (Step("input", (), ("4", "4"), (("name", "A"),)),
             Step("transpose", (0,), ("4", "4")),
             Step("cholesky", (1,), ("4", "4")),
             Step("input", (), ("4", "4"), (("name", "B"),)),
             Step("cholesky", (3,), ("4", "4")),
             Step("matmul", (3, 4), ("4", "4")))
    prog = Program(steps, {"A": 0, "B": 3}, {"L": 2, "M": 5})
    # A is factorized through its transpose: its upper triangle is read; B is also multiplied
    assert checks.triangle_scans(prog, {"A", "B"}, {}) == {"A": False}


def test_triangle_scans_follow_elementwise_results():
    """K + s I factorized reads K's lower triangle only (the GP's K): element (i, j) of an
    elementwise result is of element (i, j); a sum that is also an output reads K whole."""
    from autotune.program import Program, Step

    steps = (Step("input", (), ("4", "4"), (("name", "K"),)),
             Step("eye", (), ("4", "4")),
             Step("add", (0, 1), ("4", "4")),
             Step("cholesky", (2,), ("4", "4")))
    assert checks.triangle_scans(Program(steps, {"K": 0}, {"L": 3}), {"K"}, {}) == {"K": True}
    both = Program(steps, {"K": 0}, {"L": 3, "S": 2})
    assert checks.triangle_scans(both, {"K"}, {}) == {}


def test_a_negative_power_of_a_diagonal_does_not_vouch_for_it():
    """H.T inv(R) H as the rank-k update of R^-1/2 H: an infinity on R's diagonal becomes a
    zero row (1/sqrt(inf)), as in a solve, so R is scanned (its diagonal) and +inf is named."""
    from autotune.derivation import derive

    p = load_problem("information_filter")
    dims = p.resolve_dims({"n": 16})
    prog = derive(p, named_point(p, "flop-optimal", dims), dims)
    assert any(s.op == "diag_mul" and s.attr("power") == -0.5 for s in prog.steps)
    assert "R" in checks.unguarded_inputs(prog, dims)


def test_exactly_symmetric_outputs_are_seen_in_the_compiled_graph():
    """SYRK and the SPD inverse mirror one triangle onto the other: their results, through a
    transpose or an output copy, are exactly symmetric; a mirror switched off or a plain
    product is not."""
    import pytensor
    import pytensor.tensor as pt

    from autotune.api import _exactly_symmetric_outputs
    from autotune.kernels.factorization_ops import spd_inverse
    from autotune.kernels.product_ops import SymRankK, sym_rank_k

    a = pt.matrix("a")
    outs = [sym_rank_k(a), sym_rank_k(a).T, spd_inverse(a), a.T @ a,
            SymRankK(mirror=False)(a), a]
    fn = pytensor.function([a], outs, mode="NUMBA")
    assert _exactly_symmetric_outputs(type("F", (), {"function": fn})) == [
        True, True, True, False, False, False]


def test_a_mirrored_output_is_checked_in_its_lower_triangle(folder):
    """Kalman's newSigma comes out of the symmetric product, mirrored: its upper triangle is
    a copy of the lower one, so the finiteness check reads the lower triangle (half the
    elements), and a NaN there is still found and blamed on the input it came from."""
    fn = shipped(folder, "kalman", {"n": 60})
    exact = dict(zip(fn.output_names, fn._lower_only, strict=True))
    assert exact == {"newmu": False, "newSigma": True}
    x = _instance(fn)
    out = [np.array(o) for o in fn(**x)]
    assert fn._outputs_finite(out)
    sigma = fn.output_names.index("newSigma")
    out[sigma][0, 5] = np.nan  # upper: never differs from its mirror in a real result
    assert fn._outputs_finite(out)
    out[sigma][5, 0] = np.nan
    assert not fn._outputs_finite(out)
    bad = dict(x, H=x["H"].copy())
    bad["H"][3, 4] = np.nan
    with pytest.raises(InputError, match=_nan_message("H")):
        fn(**bad)


def test_a_triangular_solves_matrix_is_scanned_on_its_diagonal_only(folder):
    """SYGST's L is read only by triangular solves, whose results reach the output C: a NaN
    or an infinity off the diagonal shows in C, an infinity on the diagonal may turn into 0.
    So the call scans L's diagonal alone (n elements, not n^2), and its zero triangle is the
    property checks'; a non-finite L is named wherever it is."""
    fn = shipped(folder, "sygst", {"n": 40})
    assert {fn.program.steps[i].op for i in fn.program.live_steps()} >= {"trsolve"}
    assert fn._input_checks["L"][3] and fn._diagonal_scans == {"L"}
    x = _instance(fn)
    fn(**x)
    for at, bad in (((7, 7), np.inf), ((7, 7), np.nan), ((30, 2), np.inf), ((30, 2), np.nan)):
        worse = dict(x, L=x["L"].copy())
        worse["L"][at] = bad
        with pytest.raises(InputError, match=_nan_message("L")):
            fn(**worse)


def test_the_c_of_a_rank_k_update_needs_no_scan(folder):
    """The information filter's Y is the c of SYRK (Yn = Y + H.T inv(R) H): its lower
    triangle passes a NaN on to Yn, the upper is the symmetry check's. No scan of Y before
    the call, and a NaN anywhere in it is still named."""
    fn = shipped(folder, "information_filter", {"n": 50, "m": 20})
    assert "syrk" in {fn.program.steps[i].op for i in fn.program.live_steps()}
    assert fn._input_checks["Y"][0] and not fn._input_checks["Y"][3]
    x = _instance(fn)
    fn(**x)
    for at in ((30, 4), (4, 30), (9, 9)):
        worse = dict(x, Y=x["Y"].copy())
        worse["Y"][at] = np.nan
        with pytest.raises(InputError, match="input Y"):
            fn(**worse)
