"""Tests of autotune.targets: names, registry, compiling per target, thread limits, fingerprint.

Targets that are not available here (no jax/torch installed, no system BLAS for the C backend,
no CUDA device) are skipped with the reason the registry gives.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from autotune import targets as T
from autotune.errors import AutotuneError, CompileError, TargetError
from autotune.targets import Target, parse_target

# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------

CANONICAL = ["numba-t1", "numba-t2", "c-t1", "c-t16", "jax-cpu-t2", "jax-cuda",
             "pytorch-cpu-t2", "pytorch-cuda"]


@pytest.mark.parametrize("name", CANONICAL)
def test_canonical_names_round_trip(name):
    t = parse_target(name)
    assert t.name == name
    assert str(t) == name
    assert parse_target(t.name) == t
    data = t.to_json()
    assert json.loads(json.dumps(data)) == data
    assert set(data) == {"backend", "device", "threads"}
    assert Target.from_json(data) == t
    assert Target.from_json(name) == t
    assert hash(Target.from_json(data)) == hash(t)


def test_parse_fields_and_defaults():
    n = T.cpu_threads()
    assert parse_target("numba-t2") == Target("numba", 2)
    assert parse_target("c-t1") == Target("c", 1, "cpu")
    assert parse_target("jax-cuda") == Target("jax", 1, "cuda")
    assert parse_target("pytorch-cpu-t2") == Target("pytorch", 2, "cpu")
    # no -t<N>: all usable threads
    assert parse_target("numba") == Target("numba", n)
    assert parse_target("jax") == parse_target("jax-cpu") == Target("jax", n)
    # tolerant spelling and aliases
    assert parse_target("  NUMBA-T3 ") == Target("numba", 3)
    assert parse_target("torch-cpu-t1") == Target("pytorch", 1)
    assert parse_target("jax-gpu") == Target("jax", 1, "cuda")
    assert parse_target("jax-t2") == Target("jax", 2)  # device defaults to cpu
    assert parse_target(Target("c", 2)) == Target("c", 2)
    assert T.default_target() == Target("numba", n)
    assert T.default_target().mode == "NUMBA"


def test_cuda_targets_normalise_threads():
    assert Target("pytorch", 8, "cuda") == Target("pytorch", 1, "cuda")
    assert Target("pytorch", 8, "cuda").name == "pytorch-cuda"


def test_target_is_frozen():
    t = Target("numba", 1)
    with pytest.raises(AttributeError):
        t.threads = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    "bad",
    ["", "foo", "foo-t2", "numba-t0", "numba-tx", "numba-2", "numba-cuda", "c-cuda",
     "jax-cuda-t2", "jax-tpu", "pytorch-cpu-t-1", "numba t2", "-t2"],
)
def test_bad_names_list_the_valid_forms(bad):
    with pytest.raises(TargetError) as info:
        parse_target(bad)
    msg = str(info.value)
    assert repr(bad) in msg
    assert "valid forms" in msg
    for form in T.target_forms():
        assert form in msg
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, AutotuneError)


def test_target_forms_cover_every_backend():
    forms = T.target_forms()
    for backend in T.BACKENDS:
        assert backend in forms
    assert "numba-t<N>" in forms and "jax-cuda" in forms and "pytorch-cpu-t<N>" in forms


@pytest.mark.parametrize(
    "kwargs",
    [dict(backend="nope", threads=1), dict(backend="numba", threads=0),
     dict(backend="numba", threads=True), dict(backend="numba", threads=1.5),
     dict(backend="numba", threads=1, device="cuda"), dict(backend="jax", threads=1, device="tpu")],
)
def test_invalid_target_fields(kwargs):
    with pytest.raises(TargetError):
        Target(**kwargs)


@pytest.mark.parametrize(
    "data",
    [{"backend": "numba"}, {"threads": 1}, {"backend": "numba", "threads": 1, "extra": 1},
     {"backend": "numba", "threads": 1, "name": "c-t1"}, ["numba", 1], 3],
)
def test_from_json_rejects_bad_data(data):
    with pytest.raises(TargetError):
        Target.from_json(data)


def test_from_json_accepts_name_field():
    assert Target.from_json({"backend": "c", "threads": 2, "name": "c-t2"}) == Target("c", 2)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


def test_registry_modes():
    assert T.DEFAULT_BACKEND == "numba"
    assert {b: spec.mode for b, spec in T.BACKENDS.items()} == {
        "numba": "NUMBA", "c": "CVM", "jax": "JAX", "pytorch": "PYTORCH"}
    assert T.BACKENDS["jax"].devices == ("cpu", "cuda")
    assert T.BACKENDS["numba"].devices == ("cpu",)


def test_list_targets_reports_every_backend_with_reasons():
    infos = T.list_targets()
    pairs = {(i.backend, i.device) for i in infos}
    assert pairs == {(b, d) for b, spec in T.BACKENDS.items() for d in spec.devices}
    numba = next(i for i in infos if i.backend == "numba")
    assert numba.available and numba.reason == ""
    n = T.cpu_threads()
    for info in infos:
        json.dumps(info.to_json())
        assert info.threads == (tuple(range(1, n + 1)) if info.device == "cpu" else ())
        if info.available:
            assert info.reason == ""
        else:
            assert info.reason.strip(), f"{info.name} is unavailable without a reason"
        assert T.BACKENDS[info.backend].available(info.device) == (info.available, info.reason)


def test_unavailable_reasons_are_actionable():
    for info in T.list_targets():
        if info.available:
            continue
        if info.backend == "jax" and importlib.util.find_spec("jax") is None:
            assert "pip install 'autotune[jax]'" in info.reason
        if info.backend == "pytorch" and importlib.util.find_spec("torch") is None:
            assert "pip install 'autotune[torch]'" in info.reason
        if info.device == "cuda":
            assert "CUDA" in info.reason or "not installed" in info.reason
        if info.backend == "c":
            assert "apt-get install" in info.reason


def test_available_targets():
    targets = T.available_targets()
    names = [t.name for t in targets]
    assert "numba-t1" in names
    assert names[0] == "numba-t1"  # numba (the default) first
    assert len(set(names)) == len(names)
    for t in targets:
        assert t.available() == (True, "")
        if t.device == "cpu":
            assert 1 <= t.threads <= T.cpu_threads()
    one = T.available_targets(max_threads=1)
    assert all(t.threads == 1 for t in one)
    assert "numba-t1" in [t.name for t in one]
    with pytest.raises(TargetError):
        T.available_targets(max_threads=0)


def test_check_available_raises_for_unavailable_target():
    unavailable = [i for i in T.list_targets() if not i.available]
    if not unavailable:
        pytest.skip("every target is available on this machine")
    info = unavailable[0]
    target = Target(info.backend, 1, info.device)
    with pytest.raises(TargetError, match=target.name):
        T.check_available(target)
    with pytest.raises(TargetError, match="not available"):
        T.compile_function(target, [], [])


# --------------------------------------------------------------------------------------------
# Compiling and running
# --------------------------------------------------------------------------------------------


def _skip_unless_available(name: str) -> Target:
    t = parse_target(name)
    ok, reason = t.available()
    if not ok:
        pytest.skip(f"{t.name} unavailable: {reason}")
    return t


def _problem():
    rng = np.random.default_rng(42)
    a = rng.standard_normal((6, 5))
    b = rng.standard_normal((5, 3))
    return a, b


def _graph(with_cholesky: bool):
    import pytensor.tensor as pt
    from pytensor.tensor.linalg import cho_solve, cholesky

    A = pt.dmatrix("A")
    B = pt.dmatrix("B")
    C = A @ B  # (6, 3)
    if not with_cholesky:
        return [A, B], C
    S = A @ A.T + 6.0 * pt.eye(6)  # symmetric positive definite
    L = cholesky(S, lower=True)
    return [A, B], [C, cho_solve((L, True), C)]


# One thread keeps these quick; the thread limit itself is tested below.
RUN_TARGETS = ["numba-t1", "c-t1", "jax-cpu-t1", "pytorch-cpu-t1", "jax-cuda", "pytorch-cuda"]


@pytest.mark.parametrize("name", RUN_TARGETS)
def test_compile_and_run_matches_numpy(name):
    t = _skip_unless_available(name)
    a, b = _problem()
    c_ref = a @ b
    s = a @ a.T + 6.0 * np.eye(6)
    x_ref = np.linalg.solve(s, c_ref)
    if t.backend == "pytorch":  # PyTensor's PyTorch backend has no Cholesky: product only
        inputs, outputs = _graph(with_cholesky=False)
        fn = T.compile_function(t, inputs, outputs)
        with T.thread_limit(t):
            c = fn(a, b)
        assert isinstance(c, np.ndarray) and c.dtype == np.float64
        np.testing.assert_allclose(c, c_ref, rtol=1e-12, atol=1e-12)
        return
    inputs, outputs = _graph(with_cholesky=True)
    fn = T.compile_function(t, inputs, outputs)
    assert fn.target == t
    with T.thread_limit(t):
        c, x = fn(a, b)
        c2, x2 = fn(a, b)  # second (warm) call
    for arr in (c, x, c2, x2):
        assert isinstance(arr, np.ndarray) and arr.dtype == np.float64
    np.testing.assert_allclose(c, c_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(x, x_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(x2, x_ref, rtol=1e-10, atol=1e-12)


def test_compile_accepts_names_and_pytensor_kwargs():
    import pytensor.tensor as pt

    x = pt.dvector("x")
    fn = T.compile_function("numba-t1", [x], 2 * x, name="double", on_unused_input="raise")
    np.testing.assert_array_equal(fn(np.arange(3.0)), [0.0, 2.0, 4.0])
    assert "numba-t1" in repr(fn)
    with pytest.raises(TypeError, match="mode"):
        T.compile_function("numba-t1", [x], x, mode="FAST_COMPILE")
    with pytest.raises(TargetError):
        T.compile_function("no-such-backend", [x], x)


def test_bad_arguments_are_not_compile_errors():
    import pytensor.tensor as pt

    x = pt.dmatrix("x")
    fn = T.compile_function("numba-t1", [x], x + 1)
    with pytest.raises(TypeError):
        fn(np.ones(3))  # wrong number of dimensions, before the lazy compile
    np.testing.assert_array_equal(fn(np.zeros((1, 1))), [[1.0]])


def test_compile_errors_are_wrapped_with_target_name():
    import pytensor.tensor as pt

    x = pt.dvector("x")
    y = pt.dvector("y")
    with pytest.raises(CompileError, match="numba-t1"):
        # y is not an input: PyTensor refuses the graph
        T.compile_function("numba-t1", [x], x + y)


def test_pytorch_cholesky_is_a_compile_error():
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed: pip install 'autotune[torch]'")
    t = _skip_unless_available("pytorch-cpu-t1")
    inputs, outputs = _graph(with_cholesky=True)
    with pytest.raises(CompileError, match="pytorch-cpu-t1") as info:
        T.compile_function(t, inputs, outputs, example_inputs=_problem())
    assert "Cholesky" in str(info.value)


def test_example_inputs_warm_up_lazy_backends():
    import pytensor.tensor as pt

    x = pt.dvector("x")
    fn = T.compile_function("numba-t1", [x], x.sum(), example_inputs=[np.ones(4)])
    assert fn._warm
    assert float(fn(np.ones(4))) == 4.0


def test_a_warm_numba_function_calls_its_jitted_graph_directly():
    """After the first call a Numba function skips PyTensor's ``Function`` (its cold-call
    overhead exceeds small computations) and calls the jitted graph: same results; arguments
    of another dtype or rank, and keyword arguments, still go through ``Function``."""
    import pytensor.tensor as pt

    a = pt.matrix("a", dtype="float32")
    b = pt.matrix("b", dtype="float32")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    y = np.ones((2, 3), np.float32)
    fn2 = T.compile_function("numba-t1", [a, b], [a @ b.T, a + b])
    want = [x @ y.T, x + y]
    assert fn2._direct is None  # not before the lazy compile
    got0 = fn2(x, y)
    assert fn2._direct is not None and fn2._direct.jit is fn2.function.vm.jit_fn
    calls: list[int] = []
    real = fn2._direct.jit
    fn2._direct.jit = lambda *v: calls.append(1) or real(*v)
    got = fn2(x, y)
    assert calls == [1]
    for g0, g, w in zip(got0, got, want, strict=True):
        np.testing.assert_array_equal(g0, w)
        np.testing.assert_array_equal(g, w)
    with pytest.raises(TypeError):  # float64 into float32: Function refuses the downcast
        fn2(x.astype(np.float64), y)
    with pytest.raises(TypeError):  # a vector for a matrix
        fn2(np.ones(3, np.float32), y)
    got = fn2(a=x, b=y)  # by keyword: through Function
    assert calls == [1]
    np.testing.assert_array_equal(got[1], x + y)


# --------------------------------------------------------------------------------------------
# Threads and environment
# --------------------------------------------------------------------------------------------


def _blas_threads() -> dict[str, int]:
    from threadpoolctl import threadpool_info

    return {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


def test_thread_limit_changes_threadpoolctl_num_threads():
    import scipy.linalg  # noqa: F401  (load scipy's OpenBLAS as well as numpy's)
    from threadpoolctl import threadpool_limits

    before = _blas_threads()
    assert before, "threadpoolctl sees no BLAS"
    # make the outside state distinguishable from the limit even on a 1-core machine
    with threadpool_limits(limits=2, user_api="blas"):
        outside = _blas_threads()
        with T.thread_limit(Target("numba", 1)) as t:
            assert t == Target("numba", 1)
            inside = _blas_threads()
        assert _blas_threads() == outside
    assert all(n == 1 for n in inside.values()), inside
    assert any(n != 1 for n in outside.values()), outside
    assert _blas_threads() == before
    with T.thread_limit("numba-t2"):
        assert all(n == 2 for n in _blas_threads().values())
    assert _blas_threads() == before


def test_thread_limit_covers_the_c_backend_blas():
    _skip_unless_available("c-t1")
    with T.thread_limit("c-t1"):
        inside = _blas_threads()
    assert all(n == 1 for n in inside.values()), inside
    ldflags = T.c_blas_ldflags()
    if "-lopenblas" in ldflags.split():  # the system OpenBLAS is loaded and limited too
        assert any(os.path.basename(p).startswith("libopenblas") for p in inside), inside


def test_thread_limit_sets_torch_threads():
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed: pip install 'autotune[torch]'")
    import torch

    before = torch.get_num_threads()
    with T.thread_limit("pytorch-cpu-t1"):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_thread_limit_is_a_no_op_for_cuda_targets():
    before = _blas_threads()
    with T.thread_limit("jax-cuda") as t:
        assert t.device == "cuda"
        assert _blas_threads() == before


def test_configure_environment_sets_defaults_and_respects_user(monkeypatch):
    for key in T.ENVIRONMENT_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("KMP_BLOCKTIME", "200")
    monkeypatch.setenv("PYTENSOR_FLAGS", os.environ.get("PYTENSOR_FLAGS", ""))
    changed = T.configure_environment()
    assert os.environ["OPENBLAS_THREAD_TIMEOUT"] == "12"
    assert changed["OPENBLAS_THREAD_TIMEOUT"] == "12"
    assert os.environ["KMP_BLOCKTIME"] == "200" and "KMP_BLOCKTIME" not in changed
    assert "PYTENSOR_FLAGS" not in changed  # pytensor is already imported here
    assert T.configure_environment() == {}  # idempotent


def test_configure_environment_runs_before_numpy(tmp_path):
    """In a fresh interpreter: importing autotune.targets pulls in no numpy/pytensor, and the
    BLAS flag is added to PYTENSOR_FLAGS exactly when a system libopenblas.so exists."""
    code = (
        "import sys, os\n"
        "import autotune\n"
        "pre = {m for m in ('numpy', 'pytensor') if m in sys.modules}\n"
        "import autotune.targets as T\n"
        "post = {m for m in ('numpy', 'pytensor') if m in sys.modules}\n"
        "assert post <= pre, post - pre\n"
        "T.configure_environment()\n"
        "print(os.environ['OPENBLAS_THREAD_TIMEOUT'], os.environ.get('PYTENSOR_FLAGS', ''))\n"
        "print(T._system_openblas() is not None)\n"
    )
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_THREAD_TIMEOUT", "PYTENSOR_FLAGS", "PYTENSORRC")}
    env["PYTENSORRC"] = str(tmp_path / "none.rc")
    root = os.path.dirname(os.path.dirname(os.path.abspath(T.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    first, second = res.stdout.splitlines()
    timeout, flags = first.split(" ", 1) if " " in first else (first, "")
    assert timeout == "12"
    assert ("blas__ldflags=-lopenblas" in flags) == (second == "True")


def test_the_thread_settings_are_in_place_before_numpy_loads_its_openblas():
    """``import autotune`` sets OPENBLAS_THREAD_TIMEOUT before anything imports numpy: numpy's
    OpenBLAS reads it once, when loaded (were it loaded first, its threads would spin at the
    default 2^28 cycles against scipy's copy)."""
    code = (
        "import os, sys\n"
        "seen = []\n"
        "class Spy:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'numpy' and not seen:\n"
        "            seen.append(os.environ.get('OPENBLAS_THREAD_TIMEOUT'))\n"
        "        return None\n"
        "sys.meta_path.insert(0, Spy())\n"
        "import autotune\n"
        "print(seen[0])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(T.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [T.ENVIRONMENT_DEFAULTS["OPENBLAS_THREAD_TIMEOUT"]]


# --------------------------------------------------------------------------------------------
# Fingerprint
# --------------------------------------------------------------------------------------------


def test_machine_fingerprint():
    fp = T.machine_fingerprint()
    for key in ("cpu_model", "logical_cores", "usable_cores", "blas", "versions",
                "hostname_sha256", "gpu", "gpus", "platform"):
        assert key in fp
    assert json.loads(json.dumps(fp)) == fp
    assert isinstance(fp["cpu_model"], str) and fp["cpu_model"]
    assert fp["logical_cores"] == os.cpu_count()
    for pkg in ("python", "numpy", "scipy", "sympy", "pytensor", "numba", "optuna"):
        assert pkg in fp["versions"]
    assert fp["versions"]["numpy"] == np.__version__
    for opt in ("jax", "torch"):
        assert (opt in fp["versions"]) == (importlib.util.find_spec(opt) is not None)
    assert fp["blas"], "numpy's BLAS must be visible"
    for lib in fp["blas"]:
        assert {"internal_api", "version", "filepath", "num_threads"} <= set(lib)
        assert "/" not in lib["filepath"]
    hostname = socket.gethostname()
    assert hostname not in json.dumps(fp) or len(hostname) < 4
    assert len(fp["hostname_sha256"]) == 16
    int(fp["hostname_sha256"], 16)
    assert fp["gpu"] is None or isinstance(fp["gpu"], str)


@pytest.mark.skipif(not os.environ.get("CI"), reason="CI installs the JAX CPU extra")
def test_ci_runs_the_jax_target():
    """CI installs jax with the test extras: the JAX tests must run there, not skip."""
    t = T.parse_target("jax-cpu-t1")
    assert t.available()[0], t.available()[1]


def test_a_shipped_problem_compiles_pinned_for_jax_and_matches_the_reference():
    """The JAX target on a real candidate: the flop-optimal Kalman point, pinned kernels,
    against the float64 reference."""
    t = _skip_unless_available("jax-cpu-t1")
    from autotune.derivation import derive
    from autotune.instances import random_instance
    from autotune.lower import lower
    from autotune.reference import evaluate_reference, relative_error
    from autotune.space import named_point
    from autotune.spec import load_problem

    p = load_problem("kalman")
    dims = p.resolve_dims({"n": 16})
    program = derive(p, named_point(p, "flop-optimal", dims), dims)
    fn = T.compile_function(t, *lower(p, program, dims))
    values = random_instance(p, dims, seed=2)
    ref = evaluate_reference(p, values, dims)
    with T.thread_limit(t):
        outs = fn(*[values[n] for n in p.inputs])
    for name, out in zip(p.outputs, outs, strict=True):
        assert relative_error(np.asarray(out), ref.outputs[name]) < 1e-10
