"""Tuned plans in production code: every error path, with real plan files made by a small
tuning run."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from autotune import InputError, PlanError, PlanWarning, find_plan, load_plan
from autotune.instances import random_instance
from autotune.reference import evaluate_reference, relative_error
from autotune.search import SearchConfig
from autotune.spec import load_problem


@pytest.fixture(scope="module")
def plan_path(tmp_path_factory) -> Path:
    from autotune.runner import run_tuning

    out = tmp_path_factory.mktemp("plans")
    problem = load_problem("kalman")
    config = SearchConfig(trials=3, timeout=60, targets=("numba-t1",), out=out,
                          low_fidelity=False, final_round_repeats=1)
    return run_tuning(problem, problem.resolve_dims({"n": 32}), config, quiet=True)


@pytest.fixture(scope="module")
def fn(plan_path):
    return load_plan(plan_path)


@pytest.fixture(scope="module")
def inst(fn):
    return random_instance(fn.problem, fn.dims, seed=11)


def test_call_by_keyword_and_position_matches_reference(fn, inst):
    ref = evaluate_reference(fn.problem, inst, fn.dims)
    out = fn(**inst)
    pos = fn(*[inst[n] for n in fn.input_names])
    for name in fn.output_names:
        assert relative_error(out[name], ref.outputs[name]) < 1e-12
        assert np.array_equal(out[name], pos[name])
    newmu, newSigma = out  # declared order
    assert newSigma is out.newSigma and out.asdict().keys() == {"newmu", "newSigma"}


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda d: d.pop("H"), "missing input"),
        (lambda d: d.update(extra=np.ones(3)), "unknown input 'extra'"),
        (lambda d: d.update(H=np.ones((3, 3))), r"input H: expected shape \(16, 32\)"),
        (lambda d: d.update(H=d["H"].astype(complex)), "real floating-point"),
        (lambda d: d.update(H=np.where(d["H"] > 0, np.nan, d["H"])), "NaN"),
        (lambda d: d.update(Sigma=d["Sigma"] + np.triu(np.ones_like(d["Sigma"]), 1)),
         "Sigma: the plan relies on it being symmetric"),
        (lambda d: d.update(R=-d["R"] - 10 * np.eye(len(d["R"]))), "positive definite"),
    ],
    ids=["missing", "extra", "shape", "dtype", "nan", "not-symmetric", "not-pd"],
)
def test_bad_calls_name_the_input(fn, inst, change, match):
    args = {k: np.array(v) for k, v in inst.items()}
    change(args)
    with pytest.raises(InputError, match=match):
        fn(**args)


def test_finite_check_can_be_switched_off(plan_path, inst):
    fast = load_plan(plan_path, check_finite=False, check_properties=False)
    args = dict(inst)
    args["data"] = np.full_like(inst["data"], np.nan)
    out = fast(**args)  # no check: NaN flows through (the caller asked for speed)
    assert np.isnan(out.newmu).any()


def test_float32_inputs_are_accepted_and_float128_refused(fn, inst):
    args = dict(inst)
    args["mu"] = inst["mu"].astype(np.float32)
    fn(**args)
    if hasattr(np, "float128"):
        args["mu"] = inst["mu"].astype(np.float128)
        with pytest.raises(InputError, match="lose precision"):
            fn(**args)


def test_concurrent_calls_from_threads(fn, inst):
    expected = fn(**inst)
    results, errors = [], []

    def work(seed):
        try:
            for _ in range(5):
                results.append(fn(**inst))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 20
    assert all(np.array_equal(r.newSigma, expected.newSigma) for r in results)


def _rewrite(src: Path, dst: Path, edit) -> Path:
    from autotune.plan import _digest

    data = json.loads(src.read_text())
    edit(data)
    data["digest"] = _digest(data)
    dst.write_text(json.dumps(data))
    return dst


def test_plan_from_another_machine_runs_with_a_warning(plan_path, tmp_path, inst):
    def edit(d):
        d["machine"]["cpu_model"] = "Imaginary CPU 9000"
        d["machine"]["versions"]["numpy"] = "0.0.1"

    other = _rewrite(plan_path, tmp_path / "other.json", edit)
    with pytest.warns(PlanWarning, match="Imaginary CPU 9000.*numpy 0.0.1"):
        f = load_plan(other)
    f(**inst)


def test_plan_for_an_unavailable_target_falls_back_with_a_warning(plan_path, tmp_path, inst):
    def edit(d):
        d["target"] = {"backend": "jax", "device": "cuda", "threads": 1, "name": "jax-cuda"}

    other = _rewrite(plan_path, tmp_path / "gpu.json", edit)
    with pytest.warns(PlanWarning, match="jax-cuda is not available"):
        f = load_plan(other)
    f(**inst)


@pytest.mark.parametrize(
    "damage, match",
    [(lambda t: t[:100], "not valid JSON"),
     (lambda t: t.replace('"n": 32', '"n": 33'), "digest")],
    ids=["truncated", "edited"],
)
def test_damaged_plan_files_are_refused(plan_path, tmp_path, damage, match):
    bad = tmp_path / "bad.json"
    bad.write_text(damage(plan_path.read_text()))
    with pytest.raises(PlanError, match=match):
        load_plan(bad)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d["params"].update({"solver.S": "qr"}),
         r"field 'params\.solver\.S': solver\.S = 'qr'.*written by an older or newer autotune: "
         r"re-tune it with `autotune run --problem kalman --dim k=16 --dim n=32 --dtype float64`"),
        (lambda d: d["params"].update({"blocks.z": 2}), r"field 'params\.blocks\.z': unknown knob"),
        (lambda d: d["target"].update(backend="tpu"),
         r"field 'target\.backend': unknown backend 'tpu'; valid backends: numba, c, jax"),
        (lambda d: d.update(dtype="float16"), r"field 'dtype': 'float16' is not one of"),
        (lambda d: d.update(schema_version=0), r"field 'schema_version': 0"),
        (lambda d: d["dims"].update(n="32"), r"field 'dims\.n' must be an integer"),
        (lambda d: d.update(params=[]), r"field 'params' must be a JSON object"),
    ],
    ids=["kernel", "knob", "backend", "dtype", "schema-0", "dims-type", "params-list"],
)
def test_plans_with_a_valid_digest_are_still_checked(plan_path, tmp_path, edit, match):
    bad = _rewrite(plan_path, tmp_path / "bad.json", edit)
    with pytest.raises(PlanError, match=match):
        load_plan(bad)


def test_a_freshly_tuned_plan_fits_the_schema(plan_path):
    from autotune.plan import _validator

    assert list(_validator().iter_errors(json.loads(plan_path.read_text()))) == []


def test_find_plan_exact_nearest_and_missing(plan_path):
    folder = plan_path.parent
    assert find_plan("kalman", {"n": 32}, folder) == plan_path
    with pytest.raises(PlanError, match="fallback='nearest'"):
        find_plan("kalman", {"n": 50}, folder)
    with pytest.warns(PlanWarning, match="nearest"):
        assert find_plan("kalman", {"n": 50}, folder, fallback="nearest") == plan_path
    with pytest.raises(PlanError, match="no float64 plan for problem 'gls'"):
        find_plan("gls", {"n": 50}, folder)


def test_fresh_process_loads_the_committed_example_plan():
    root = Path(__file__).parents[1]
    example = root / "results" / "example-plan-kalman-n200.json"
    code = (
        "import warnings, numpy as np, autotune\n"
        "from autotune.instances import random_instance\n"
        "warnings.simplefilter('ignore')\n"
        f"f = autotune.load_plan({str(example)!r})\n"
        "x = random_instance(f.problem, f.dims, seed=1)\n"
        "out = f(**x)\n"
        "print(out.newSigma.shape, bool(np.isfinite(out.newSigma).all()))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "(200, 200) True"
    _ = warnings


def test_switching_the_checks_after_loading(plan_path, inst):
    f = load_plan(plan_path)
    args = {k: np.array(v) for k, v in inst.items()}
    args["R"][0, -1] = np.nan  # a triangle that a Cholesky factorization of S does not read
    f.check_properties = False  # no symmetry pass: R is scanned for NaN instead
    with pytest.raises(InputError, match="input R: contains NaN"):
        f(**args)
    f.check_finite = False
    f(**args)  # neither check: the caller asked for speed
    f.check_properties = True
    with pytest.raises(InputError, match="input R: the plan relies on it being symmetric"):
        f(**args)


def test_the_happy_path_scans_no_input(plan_path, inst, monkeypatch):
    """No input is scanned for NaN before the call (the outputs are checked after it, and
    inputs searched only when one is not finite); the symmetric inputs get one symmetry
    pass, which proves them finite too (on a freshly loaded plan: calls made here may cut
    the checks to windows, see test_the_property_checks_budget_follows_the_calls_made_here)."""
    fn = load_plan(plan_path)
    from autotune import checks

    finite, symmetric, lower = [], [], []
    real_finite, real_symmetry = checks.all_finite, checks.symmetry
    real_triangle = checks.triangle_all_finite

    def counting_finite(a, threads=1):
        finite.append(a.shape)
        return real_finite(a, threads)

    def counting_triangle(a, is_lower, threads=1):
        lower.append((a.shape, is_lower))
        return real_triangle(a, is_lower, threads)

    def counting_symmetry(a, *args, **kwargs):
        symmetric.append(a.shape)
        return real_symmetry(a, *args, **kwargs)

    monkeypatch.setattr(checks, "all_finite", counting_finite)
    monkeypatch.setattr(checks, "symmetry", counting_symmetry)
    monkeypatch.setattr(checks, "triangle_all_finite", counting_triangle)
    fn(**inst)
    # the outputs only: newSigma, an exact mirror of its lower triangle, in that triangle
    shapes = {o: fn.problem.shape_of(o, fn.dims) for o in fn.output_names}
    assert fn._lower_only == [False, True]
    assert finite == [shapes["newmu"]] and lower == [(shapes["newSigma"], True)]
    assert symmetric == [fn.shapes["Sigma"], fn.shapes["R"]]


def test_checks_over_their_budget_three_calls_in_a_row_read_less(plan_path, monkeypatch):
    """The read rate the windows are sized at follows the checks measured here: three calls
    in a row whose checks cost more than the budget take it down (aiming under), the windows
    shrink; a call within the budget restarts the count; at the fewest rows nothing more
    is cut."""
    from autotune import api

    fn = load_plan(plan_path)
    monkeypatch.setattr(api, "CHECK_FLOOR_S", 0.0)
    call = 1e-3
    budget = api.CHECK_SHARE * call
    fn._check_rate = rate = 1e9  # windows from the start (20 kB a call)
    fn._rebudget(call)
    before = dict(fn._blocks)
    assert before and all(b > api.MIN_BLOCK for b in before.values())
    fn._steer(2 * budget, call)
    fn._steer(2 * budget, call)
    fn._steer(0.5 * budget, call)  # within: the count starts again
    fn._steer(2 * budget, call)
    fn._steer(2 * budget, call)
    assert fn._check_rate == rate
    fn._steer(2 * budget, call)
    assert fn._check_rate == pytest.approx(rate * 0.8 / 2)
    assert all(fn._blocks[n] < before[n] for n in before)
    for _ in range(60):  # down to the fewest rows (or the slowest rate), then no further
        fn._steer(100 * budget, call)
    assert all(b == api.MIN_BLOCK for b in fn._blocks.values()) \
        or fn._check_rate == api.MIN_CHECK_RATE
    rate = fn._check_rate
    for _ in range(3):
        fn._steer(100 * budget, call)
    assert fn._check_rate == rate


def test_the_property_checks_budget_follows_the_calls_made_here(plan_path, inst, monkeypatch):
    """The budget is a share of the call time: the stored median until calls here run
    faster (a plan tuned on a slower machine), then the fastest call seen."""
    from autotune import api, checks

    fn = load_plan(plan_path)
    monkeypatch.setattr(api, "CHECK_FLOOR_S", 0.0)
    fn._check_rate = 1e6  # reading is slow: windows needed
    fn._rebudget(100.0)  # as if the plan had been measured at 100 s a call
    assert fn._windows == fn._blocks == {} and fn._resize_below == pytest.approx(80.0)
    ref = evaluate_reference(fn.problem, inst, fn.dims)
    out = fn(**inst)  # a real call is far faster: the budget shrinks to it
    assert fn._call_basis is not None and fn._call_basis < 1.0
    assert fn._blocks and all(b >= api.MIN_BLOCK for b in fn._blocks.values())
    assert fn._resize_below == pytest.approx(0.8 * fn._call_basis)
    assert relative_error(out["newSigma"], ref.outputs["newSigma"]) < 1e-12
    # windows move on at every call: an asymmetry anywhere is found within a few calls
    bad = {k: np.array(v) for k, v in inst.items()}
    bad["Sigma"][-1, 0] += 1.0
    with pytest.raises(InputError, match="Sigma: the plan relies on it being symmetric"):
        for _ in range(4 * checks.block_pairs(len(bad["Sigma"]), api.MIN_BLOCK)):
            fn(**bad)
