"""benchmarks/plan_steps.py: every step's standalone BLAS/LAPACK call computes that step's
value (so the sum of the kernels is the sum of the right kernels), and the report is written
from timings."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import plan_steps as ps

REPO = Path(__file__).resolve().parent.parent
KALMAN = REPO / "results" / "plan-kalman-k1000-n2000-float64.json"


def _close(got: Any, want: Any, rtol: float) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


def _check_calls(program: Any, dims: dict[str, int], inputs: dict[str, Any],
                 dtype: str, rtol: float) -> list[ps.StepCalls]:
    values = ps.step_values(program, dims, inputs, dtype)
    calls = ps.program_calls(program, dims, values, dtype)
    for sc in calls:
        for way in sc.ways:
            valued = [c for c in way if c.value is not None]
            assert len(valued) == 1, (sc.op, [c.text for c in way])
            for call in way:
                raw = call.run()
                if call.value is not None:
                    got = call.value(raw)
                    assert np.asarray(got).dtype == np.dtype(dtype), call.text
                    _close(got, values[sc.index], rtol)
    return calls


@pytest.fixture(scope="module")
def tiny_kalman(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed Kalman plan (its knobs) at n = 40, k = 20."""
    from autotune.plan import _digest

    data = json.loads(KALMAN.read_text())
    data["dims"] = {"n": 40, "k": 20}
    data["digest"] = _digest(data)
    path = tmp_path_factory.mktemp("plans") / "plan-kalman-k20-n40-float64.json"
    path.write_text(json.dumps(data))
    return path


def test_kalman_steps_compute_the_steps_values(tiny_kalman: Path) -> None:
    from autotune import load_plan
    from autotune.instances import random_instance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tf = load_plan(tiny_kalman)
    x = random_instance(tf.problem, tf.dims, seed=3, dtype=tf.dtype)
    calls = _check_calls(tf.program, tf.dims, x, tf.dtype, 1e-8)
    ops = [sc.op for sc in calls]
    assert ops.count("trsolve") == 3 and {"matmul", "symprod", "cholesky", "syrk"} <= set(ops)
    texts = [c.text for sc in calls for way in sc.ways for c in way]
    assert any(t.startswith("dsyrk") for t in texts)
    assert any(t.startswith("dpotrf") for t in texts)
    assert any(t.startswith("dgemv") for t in texts)
    # the plan's outputs are the values computed step by step
    values = ps.step_values(tf.program, tf.dims, x, tf.dtype)
    out = tf(**x)
    for name, i in tf.program.outputs.items():
        _close(out[name], values[i], 1e-8)


def _program(steps: list[tuple], inputs: list[str], outputs: dict[str, int]) -> Any:
    from autotune.program import Program, Step

    built = []
    for i, (op, args, shape, attrs) in enumerate(steps):
        if op == "input":
            attrs = {"name": inputs[i]}
        built.append(Step(op, tuple(args), tuple(str(s) for s in shape),
                          tuple(sorted(attrs.items()))))
    return Program(tuple(built), {n: i for i, n in enumerate(inputs)}, outputs)


def _other_ops(n: int = 12, m: int = 5) -> tuple[Any, dict[str, np.ndarray]]:
    """A program through every other kernel, on operands of each layout."""
    rng = np.random.default_rng(7)
    g = rng.standard_normal((n, n))
    spd = g @ g.T / n + np.eye(n)
    inputs = {
        "S": spd,                                        # SPD, C-ordered
        "L": np.linalg.cholesky(spd),                    # lower, C-ordered
        "U": np.asfortranarray(np.triu(rng.standard_normal((n, n)) + 3 * np.eye(n))),
        "B": rng.standard_normal((n, m)),
        "C": np.asfortranarray(rng.standard_normal((n, m))),
        "A": rng.standard_normal((n, n)) + n * np.eye(n),
        "D": np.diag(rng.uniform(1, 2, n)),
        "T": np.triu(np.tril(rng.standard_normal((n, n)), 1), -1),  # tridiagonal
        "r": rng.standard_normal((1, n)),
        "s": np.asarray(1.5),
    }
    names = list(inputs)
    sq, nm = (n, n), (n, m)
    steps: list[tuple] = [("input", (), np.shape(inputs[k]) or (1, 1), {}) for k in names]
    ix = {k: i for i, k in enumerate(names)}

    def add(op: str, args: tuple, shape: tuple, **attrs: Any) -> int:
        steps.append((op, args, shape, attrs))
        return len(steps) - 1

    S, L, U, B, C, A, D, T, r, s = (ix[k] for k in names)
    bt = add("transpose", (B,), (m, n))
    out = [
        add("trsolve", (L, B), nm, lower=True, trans=True),
        add("trsolve", (U, C), nm, lower=False, trans=False),
        add("trmm", (L, B), nm, lower=True, trans=False, alpha=-2.0),
        add("trmm", (U, bt), (m, n), lower=False, trans=True, side="right"),
        add("cho_solve", (L, C), nm),
        add("solve", (S, B), nm, assume_a="pos"),
        add("solve", (A, C), nm, assume_a="gen"),
        add("solve", (S, C), nm, assume_a="sym"),
        add("spd_inv", (S,), sq),
        add("inv", (A,), sq),
        add("add", (B, C), nm),
        add("sub", (B, C), nm),
        add("neg", (B,), nm),
        add("scale", (B, s), nm, coeff=-2.0, powers=(2,)),
        add("diag_mul", (D, B), nm, side="left"),
        add("diag_mul", (D, bt), (m, n), side="right"),
        add("diag_solve", (D, C), nm),
        add("band_mul", (T, B), nm, lower=1, upper=1, side="left"),
        add("band_mul", (T, bt), (m, n), lower=1, upper=1, side="right"),
        add("matmul", (r, A), (1, n)),
        add("matmul", (bt, A, bt), (m, n), alpha=2.0, beta=-1.0),
        add("syrk", (B,), (m, m)),
        add("syrk", (bt, S), sq, alpha=-1.0, beta=0.5),
        add("symprod", (bt, B), (m, m)),
        # one row of blocks: (argument position, transposed?) per block
        add("block", (B, C), (n, 2 * m), grid=(((0, False), (1, False)),)),
    ]
    return _program(steps, names, {f"o{j}": i for j, i in enumerate(out)}), inputs


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-8), ("float32", 2e-4)])
def test_every_other_kernel_computes_the_steps_value(dtype: str, rtol: float) -> None:
    program, inputs = _other_ops()
    x = {k: (v.astype(dtype) if v.ndim else v) for k, v in inputs.items()}
    calls = _check_calls(program, {}, x, dtype, rtol)
    prefix = "d" if dtype == "float64" else "s"
    texts = [c.text for sc in calls for way in sc.ways for c in way]
    for name in ("trsm", "trmm", "potrs", "posv", "gesv", "sysv", "potri", "getri", "gemm",
                 "syrk"):
        assert any(t.startswith(prefix + name) or f" {prefix}{name}" in t for t in texts), name
    kinds = {sc.op: {c.kind for way in sc.ways for c in way} for sc in calls}
    for op in ("add", "sub", "neg", "scale", "diag_mul", "diag_solve", "band_mul", "block"):
        assert kinds[op] == {ps.MEMORY_BOUND}, op
    assert "mirror" in kinds["syrk"] and "mirror" in kinds["spd_inv"]


def test_layout_flags_need_no_copies() -> None:
    a = np.ones((4, 3))
    f, t = ps._fview(a)
    assert t and f.flags.f_contiguous and np.shares_memory(f, a)
    f, t = ps._fview(a.T)
    assert not t and np.shares_memory(f, a)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_mirror_mirrors(dtype: str) -> None:
    x = np.random.default_rng(2).standard_normal((150, 150)).astype(dtype)
    want = np.tril(x) + np.tril(x, -1).T
    ps._mirror_fn()(x)
    assert np.array_equal(x, want)


def _fake(program: Any, calls: list[ps.StepCalls]) -> dict[str, Any]:
    rounds = 6  # a paired sign test decides from 5 rounds on
    times: dict[str, list[float]] = {"plan": [1.0, 1.1, 1.2] * 2, "bare": [0.9, 1.0, 1.1] * 2,
                                     "gemm": [0.5] * rounds, "expert": [2.0, 2.1, 2.2] * 2}
    for sc in calls:
        for w, way in enumerate(sc.ways):
            for c in range(len(way)):
                times[ps.call_key(sc, w, c)] = [0.1 * (w + 1)] * rounds
    info = {"plan": "results/plan-x.json", "problem": "kalman", "dims": {"n": 40, "k": 20},
            "dtype": "float64", "target": "numba-t2", "heap": "retain", "repeats": 3,
            "wall_s": 1.0}
    return ps.summarize(info, program, calls, times, flops=1e9, gemm_n=1000)


def test_report_from_fake_timings(tiny_kalman: Path, tmp_path: Path) -> None:
    from autotune import load_plan
    from autotune.instances import random_instance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tf = load_plan(tiny_kalman)
    x = random_instance(tf.problem, tf.dims, seed=0, dtype=tf.dtype)
    values = ps.step_values(tf.program, tf.dims, x, tf.dtype)
    calls = ps.program_calls(tf.program, tf.dims, values, tf.dtype)
    r = _fake(tf.program, calls)
    # each step counts its fastest way: 0.1 s per call of the first way
    want = sum(0.1 * len(sc.ways[0]) if len(sc.ways) == 1 else
               min(0.1 * len(sc.ways[0]), 0.2 * len(sc.ways[1])) for sc in calls)
    assert r["sum_s"] == pytest.approx(want)
    assert r["verdict"] == "significantly faster"
    assert r["gemm_flop_rate"] == pytest.approx(2e9 / 0.5)
    assert r["limit_ratio"] == pytest.approx(1.1 / (1e9 / 4e9))
    meta = {"date": "2026-11-30 00:00 UTC", "cpu": "test CPU", "cores": 2, "blas": ["b"],
            "repeats": 3, "threads": "all", "load": "0.00", "args": ""}
    out = tmp_path / "PLAN_STEPS.md"
    ps.write_report([r], meta, out)
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "`" in line]
    n_calls = sum(len(way) for sc in calls for way in sc.ways)
    assert len(rows) == n_calls
    assert "test CPU" in text
    assert ("not counted (slower way)" in text) == any(len(sc.ways) > 1 for sc in calls)
    assert f"| {1.1e3:.3f} | {1.1 / want:.3f} (goal" in text
    assert "significantly faster by LAAB's rule" in text
    lines = ps.summary_lines(r)
    assert any(line.startswith("plan / sum") for line in lines)
