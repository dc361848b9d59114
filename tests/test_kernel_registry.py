"""Tests over the kernel registry (opt_einsum's style): every registered kernel is checked
from its own record, so a kernel added to the registry is covered without a new test.

For each kernel that computes something: its lowering, compiled by the Numba backend (and JAX
when installed) in the pinned mode, computes what its NumPy/SciPy reference says on random
operands honouring its ``properties`` (float64 and float32, small odd sizes); its FLOP count
equals the hand-counted figure of each example; its ``pytensor_op`` is in the pinned compile.
For every kernel: a picture label and family. Unknown names are refused with the valid ones.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

from autotune.errors import CompileError
from autotune.graph import COLORS, _op_text
from autotune.kernels import KERNELS, TRIANGULAR, Example, Kernel, get_kernel, register_kernel
from autotune.kernels.banded import BANDED
from autotune.kernels.products import SYMMETRIC_PRODUCT
from autotune.pinned import PROGRAM_KERNELS, kernel_counts, pinned_mode
from autotune.program import OPS, Program, Step
from autotune.properties import DIAGONAL, LOWER, PD, SYMMETRIC

COMPUTING = [k for k in KERNELS.values() if not k.structural]
CASES = [
    pytest.param(k, j, id=f"{k.name}-{j}") for k in COMPUTING for j in range(len(k.examples))
]
BACKENDS = ["NUMBA"] + (["JAX"] if importlib.util.find_spec("jax") is not None else [])
KNOWN_PROPERTIES = {SYMMETRIC, PD, LOWER, DIAGONAL, TRIANGULAR, SYMMETRIC_PRODUCT, BANDED}


def _step(kernel: Kernel, ex: Example, first_arg: int = 0) -> Step:
    args = tuple(range(first_arg, first_arg + len(ex.args)))
    return Step(kernel.name, args, (str(ex.shape[0]), str(ex.shape[1])), ex.attrs)


def _props(kernel: Kernel, ex: Example, j: int) -> tuple[str, ...]:
    props = kernel.properties if ex.properties is None else ex.properties
    return props[j] if j < len(props) else ()


def _operands(kernel: Kernel, ex: Example, step: Step, rng) -> list[np.ndarray]:
    """float64 operands of the example's shapes with the kernel's operand properties."""
    out: list[np.ndarray] = []
    for j, shape in enumerate(ex.args):
        props = set(_props(kernel, ex, j))
        if not shape:
            out.append(np.asarray(1.0 + rng.random()))
            continue
        g = rng.standard_normal(shape)
        n = shape[0]
        if SYMMETRIC_PRODUCT in props:
            if j == 0:
                x = g
            else:  # b = M @ a.T with M symmetric: a @ b is symmetric
                m = rng.standard_normal((shape[0], shape[0]))
                x = (m + m.T) @ out[0].T
        elif BANDED in props:  # nonzero only in the step's band
            x = np.triu(np.tril(g, int(step.attr("upper", 0))), -int(step.attr("lower", 0)))
        elif PD in props:
            x = g @ g.T / n + np.eye(n)
        elif SYMMETRIC in props:
            x = g + g.T
        elif DIAGONAL in props:
            x = np.diag(1.0 + rng.random(n)) * rng.choice([-1.0, 1.0], n)
        elif LOWER in props or TRIANGULAR in props:
            lower = LOWER in props or bool(step.attr("lower", True))
            x = (np.tril(g, -1) if lower else np.triu(g, 1)) / n + np.diag(1.0 + rng.random(n))
        elif len(shape) == 2 and shape[0] == shape[1]:
            x = g + n * np.eye(n)  # general, well conditioned
        else:
            x = g
        out.append(x)
    return out


def _compile(kernel: Kernel, ex: Example, step: Step, dtype: str, backend: str):
    variables = [pt.tensor(f"x{j}", shape=shape, dtype=dtype) for j, shape in enumerate(ex.args)]
    out = kernel.lower(step, variables, {}, dtype)
    mode = pinned_mode(pytensor.compile.mode.get_mode(backend))
    return pytensor.function(variables, out, mode=mode)


def test_every_kernel_has_a_coherent_record():
    assert set(COMPUTING) and all(isinstance(k, Kernel) for k in KERNELS.values())
    for name, k in KERNELS.items():
        assert k.name == name
        assert isinstance(k.description, str) and k.description
        assert isinstance(k.pattern, str) and k.pattern and "\n" not in k.pattern
        assert isinstance(k.label, str) and k.label.strip()
        assert k.family in COLORS
        for ex in k.examples:
            assert len(ex.args) >= 1 and len(ex.shape) == 2
            for j in range(len(ex.args)):
                assert set(_props(k, ex, j)) <= KNOWN_PROPERTIES, (name, j)


@pytest.mark.parametrize("kernel", list(KERNELS.values()), ids=list(KERNELS))
def test_label_is_a_non_empty_string(kernel):
    assert isinstance(kernel.label, str) and kernel.label.strip()
    for ex in kernel.examples or (Example(((2, 2),), (2, 2), 0.0),):
        step = _step(kernel, ex)
        text = kernel.step_label(step)
        assert isinstance(text, str) and text.strip()
        assert _op_text(step) == text  # what the pictures show


@pytest.mark.parametrize(("kernel", "j"), CASES)
def test_flops_match_the_hand_count(kernel, j):
    ex = kernel.examples[j]
    steps = [Step("input", (), (str(s[0]), str(s[1])) if s else ("1", "1")) for s in ex.args]
    steps.append(_step(kernel, ex))
    program = Program(tuple(steps), {f"x{i}": i for i in range(len(ex.args))},
                      {"out": len(ex.args)})
    assert program.step_flops(len(ex.args), {}) == pytest.approx(ex.flops, rel=1e-12)
    assert program.flops({}) == pytest.approx(ex.flops, rel=1e-12)


@pytest.mark.parametrize(("kernel", "j"), CASES)
def test_cost_of_the_shapes_is_the_hand_count(kernel, j):
    """``cost`` (what a derivation asks before emitting a step) agrees with the example."""
    ex = kernel.examples[j]
    shapes = tuple(s if s else (1, 1) for s in ex.args)
    assert kernel.cost(shapes, ex.shape, dict(ex.attrs)) == pytest.approx(ex.flops, rel=1e-12)


def test_kernel_knobs_are_knob_families():
    from autotune.space import KNOB_FAMILIES

    knobs = {k.knob for k in KERNELS.values() if k.knob}
    assert knobs == {"syrk", "symprod"} and knobs <= set(KNOB_FAMILIES)
    assert all(KERNELS[k].cost is None for k in ("input", "slice", "transpose", "block"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(("kernel", "j"), CASES)
def test_kernel_computes_its_pattern(kernel, j, dtype, backend):
    ex = kernel.examples[j]
    step = _step(kernel, ex)
    rng = np.random.default_rng(sum(map(ord, kernel.name)) + j)
    operands = _operands(kernel, ex, step, rng)
    cast = [x.astype(dtype) for x in operands]
    # the reference sees the very values the kernel sees, in float64
    ref = np.asarray(kernel.reference(step, [x.astype(np.float64) for x in cast]))
    fn = _compile(kernel, ex, step, dtype, backend)
    out = np.asarray(fn(*cast))
    assert out.shape == ex.shape == ref.shape, kernel.pattern
    assert out.dtype == np.dtype(dtype)
    tol = {"rtol": 2e-4, "atol": 2e-4} if dtype == "float32" else {"rtol": 1e-10, "atol": 1e-10}
    np.testing.assert_allclose(out, ref, **tol, err_msg=f"{kernel.name}: {kernel.pattern}")


def _nan_cases(field: str):
    """The examples of the kernels whose ``field`` names a position the example has."""
    def applies(k: Kernel, ex: Example) -> bool:
        value = getattr(k, field)
        return value != () and (field not in ("lower_read", "lower_passes")
                                or min(value) < len(ex.args))

    return [pytest.param(k, j, id=f"{k.name}-{j}") for k in COMPUTING
            for j, ex in enumerate(k.examples) if applies(k, ex)]


@pytest.mark.parametrize(("kernel", "j"), _nan_cases("passes_nan"))
def test_a_nan_where_the_record_says_it_passes_reaches_the_result(kernel, j):
    """``passes_nan`` is what the call checks trust: a NaN in such an argument (its first
    element, inside any structure the kernel reads) makes the compiled kernel's result
    non-finite, so an input only such kernels read needs no scan of its own."""
    ex = kernel.examples[j]
    step = _step(kernel, ex)
    clean = _operands(kernel, ex, step, np.random.default_rng(3))
    fn = _compile(kernel, ex, step, "float64", "NUMBA")
    positions = kernel.nan_positions(step)
    assert positions is None or positions, kernel.name
    for pos in range(len(ex.args)) if positions is None else positions:
        args = [x.copy() for x in clean]
        if args[pos].ndim == 0:
            args[pos] = np.asarray(np.nan)
        else:
            args[pos][0, 0] = np.nan
        assert not np.isfinite(np.asarray(fn(*args))).all(), (kernel.name, pos)


@pytest.mark.parametrize(("kernel", "j"), _nan_cases("lower_read"))
def test_a_nan_in_the_triangle_a_kernel_does_not_read_changes_nothing(kernel, j):
    """``lower_read``: a NaN in the strict upper triangle of such an argument leaves the
    compiled kernel's result as it was (what lets the call checks scan one triangle)."""
    ex = kernel.examples[j]
    step = _step(kernel, ex)
    clean = _operands(kernel, ex, step, np.random.default_rng(4))
    fn = _compile(kernel, ex, step, "float64", "NUMBA")
    want = np.asarray(fn(*[x.copy() for x in clean]))
    for pos in kernel.lower_read:
        args = [x.copy() for x in clean]
        args[pos][0, -1] = np.nan
        np.testing.assert_array_equal(np.asarray(fn(*args)), want, err_msg=kernel.name)


@pytest.mark.parametrize(("kernel", "j"), _nan_cases("lower_passes"))
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_nan_in_the_triangle_a_kernel_reads_and_passes_reaches_the_result(kernel, j, bad):
    """``lower_passes``: a NaN or an infinity on the diagonal or below it in such an
    argument makes the compiled kernel's result non-finite (what lets an input read only
    there go unscanned: the output shows it)."""
    ex = kernel.examples[j]
    step = _step(kernel, ex)
    clean = _operands(kernel, ex, step, np.random.default_rng(6))
    fn = _compile(kernel, ex, step, "float64", "NUMBA")
    assert set(kernel.lower_passes) <= set(kernel.lower_read)
    for pos in kernel.lower_passes:
        for at in ((0, 0), (-1, 0)):
            args = [x.copy() for x in clean]
            args[pos][at] = bad
            assert not np.isfinite(np.asarray(fn(*args))).all(), (kernel.name, pos, at)


@pytest.mark.parametrize(("kernel", "j"), _nan_cases("passes_off_diagonal"))
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_nan_off_the_diagonal_of_a_triangle_read_reaches_the_result(kernel, j, bad):
    """``passes_off_diagonal``: a NaN or an infinity in the triangle such an argument is
    read in, off its diagonal, makes the result non-finite; an infinity on the diagonal may
    not (a pivot of infinity turns into 0), which is why that diagonal is scanned."""
    ex = kernel.examples[j]
    step = _step(kernel, ex)
    clean = _operands(kernel, ex, step, np.random.default_rng(7))
    fn = _compile(kernel, ex, step, "float64", "NUMBA")
    for pos in kernel.passes_off_diagonal:
        n = ex.args[pos][0]
        at = (n - 1, 0) if step.attr("lower", True) else (0, n - 1)
        args = [x.copy() for x in clean]
        args[pos][at] = bad
        assert not np.isfinite(np.asarray(fn(*args))).all(), (kernel.name, pos, at)
    args = [x.copy() for x in clean]
    args[kernel.passes_off_diagonal[0]][-1, -1] = np.inf
    assert np.isfinite(np.asarray(fn(*args))).all(), "the diagonal would not need a scan"


@pytest.mark.parametrize(
    "kernel", [k for k in COMPUTING if k.pytensor_op], ids=lambda k: k.name
)
def test_pinned_compile_holds_the_kernels_op(kernel):
    ex = kernel.examples[0]
    step = _step(kernel, ex)
    fn = _compile(kernel, ex, step, "float64", "NUMBA")
    assert kernel_counts(fn)[kernel.pytensor_op] == 1
    assert PROGRAM_KERNELS[kernel.name] == kernel.pytensor_op


def test_program_kernels_and_ops_are_views_of_the_registry():
    assert {n: k.pytensor_op for n, k in KERNELS.items() if k.pytensor_op} == PROGRAM_KERNELS
    assert set(OPS) == set(KERNELS)
    assert all(OPS[n] == k.description for n, k in KERNELS.items())


def test_unknown_names_are_refused_with_the_valid_ones():
    with pytest.raises(KeyError, match="unknown kernel 'gemmm'.*matmul.*syrk"):
        get_kernel("gemmm")
    with pytest.raises(KeyError, match="matmul"):
        KERNELS["gemmm"]
    with pytest.raises(KeyError, match="matmul"):
        OPS["gemmm"]
    assert KERNELS.get("gemmm") is None and "gemmm" not in KERNELS
    program = Program((Step("input", (), ("2", "2")), Step("gemmm", (0,), ("2", "2"))),
                      {"a": 0}, {"out": 1})
    with pytest.raises(ValueError, match="unknown op 'gemmm'"):
        program.step_flops(1, {})
    from autotune.lower import _lower_step

    with pytest.raises(CompileError, match="no lowering for op 'gemmm'"):
        _lower_step(program, 1, {0: pt.matrix("a")}, {}, "float64")


def test_registration_rules():
    matmul = get_kernel("matmul")
    with pytest.raises(ValueError, match="already registered"):
        register_kernel(matmul)
    assert register_kernel(matmul, replace=True) is matmul
    with pytest.raises(ValueError, match="needs a NumPy reference"):
        Kernel("foo", "d", "A", "product", matmul.cost, matmul.lower)
    with pytest.raises(ValueError, match="family"):
        Kernel("foo", "d", "A", "colour", matmul.cost, matmul.lower, structural=True)


def test_a_registered_kernel_is_covered(monkeypatch):
    """A kernel registered anywhere joins KERNELS, hence every parametrization above (which is
    collected from KERNELS) and the views read by program, pinned and graph."""
    twice = Kernel("twice", "two times a matrix", "2*A", "elementwise",
                   lambda shapes, shape, attrs: float(shape[0] * shape[1]),
                   lambda step, a, env, dtype: a[0] * 2, label="2x",
                   reference=lambda step, x: 2 * x[0],
                   examples=(Example(((3, 5),), (3, 5), 15.0),))
    monkeypatch.setitem(KERNELS._kernels, "twice", twice)
    assert "twice" in OPS and get_kernel("twice") is twice
    test_flops_match_the_hand_count(twice, 0)
    test_kernel_computes_its_pattern(twice, 0, "float64", "NUMBA")


def test_a_registered_structured_kernel_is_chosen_by_the_derivation(monkeypatch):
    """A product kernel that exploits a structure is one record: registered with a
    ``structured`` use, the derivation offers it every square factor and emits it where it
    matches (here a symmetric factor, which no shipped kernel takes), costing it by its own
    cost; nothing in the derivation names it."""
    from autotune.derivation import _derive_cached, derive
    from autotune.kernels.registry import StructuredUse
    from autotune.space import named_point
    from autotune.spec import parse_problem

    def halves(shapes, shape, attrs):
        return float(shape[0] * shape[1] * shapes[0][0])  # half of a GEMM

    symm = Kernel("symm_test", "symmetric times general", "S @ B  (S symmetric)", "product",
                  halves, lambda step, a, env, dtype: a[0] @ a[1],
                  reference=lambda step, x: x[0] @ x[1],
                  examples=(Example(((3, 3), (3, 2)), (3, 2), 18.0),),
                  structured=StructuredUse(
                      5, lambda f: {"uplo": "L"} if SYMMETRIC in f.facts else None))
    monkeypatch.setitem(KERNELS._kernels, "symm_test", symm)
    problem = parse_problem(
        "[problem]\nname = 'symm_probe'\n[dims]\nn = 40\n[inputs]\n"
        "S = { shape = ['n', 'n'], properties = ['symmetric'] }\n"
        "B = { shape = ['n', 'n'] }\n[outputs]\nX = 'B*S*B'\n", origin="symm_probe.toml")
    dims = problem.resolve_dims({})
    _derive_cached.cache_clear()  # derivations are cached per problem and knobs
    program = derive(problem, named_point(problem, "flop-optimal", dims), dims)
    used = [s for s in program.steps if s.op == "symm_test"]
    assert len(used) == 1 and used[0].attr("uplo") == "L"
    assert used[0].attr("side") in ("left", "right")
    n = 40
    assert program.flops(dims) == pytest.approx(n * n * n + 2.0 * n * n * n)
    monkeypatch.delitem(KERNELS._kernels, "symm_test")
    _derive_cached.cache_clear()
    dense = derive(problem, named_point(problem, "flop-optimal", dims), dims)
    assert not any(s.op == "symm_test" for s in dense.steps)
    assert dense.flops(dims) == pytest.approx(4.0 * n * n * n)


def test_importing_the_registry_loads_no_compiler():
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ,
               PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    code = (
        "import sys, autotune.kernels, autotune.program, autotune.graph\n"
        "loaded = {'numba', 'pytensor', 'jax', 'torch'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
        "from autotune.kernels import KERNELS\n"
        "assert 'syrk' in KERNELS\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
