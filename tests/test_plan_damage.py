"""Damaged, foreign and stale plans are refused with a PlanError naming the field.

Each case edits the committed n=200 example plan AND recomputes its digest (and the problem
text's sha256 where the text changes), so that the checks behind the digest are exercised:
the schema, the target registry, the problem's own knob space, re-deriving, lowering and
compiling. No case may raise anything but PlanError.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from autotune import PlanError, find_plan, load_plan
from autotune.api import check_plan
from autotune.plan import _digest, read_plan

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # tuned on another machine

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "results" / "example-plan-kalman-n200.json"
RETUNE = re.escape(
    "this plan was written by an older or newer autotune: re-tune it with "
    "`autotune run --problem kalman --dim k=100 --dim n=200 --dtype float64`"
)


@pytest.fixture(scope="module")
def example() -> dict[str, Any]:
    return json.loads(EXAMPLE.read_text())


def _write(content: dict[str, Any], path: Path) -> Path:
    content = dict(content)
    content["digest"] = _digest(content)
    path.write_text(json.dumps(content))
    return path


def _damaged(example: dict[str, Any], edit: Callable[[dict[str, Any]], Any],
             path: Path) -> Path:
    content = copy.deepcopy(example)
    edit(content)
    return _write(content, path)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set the field at ``a/b/c`` (``/``-separated: knob names contain dots)."""
    *head, last = path.split("/")

    def edit(content: dict[str, Any]) -> None:
        node = content
        for key in head:
            node = node[key]
        node[last] = value

    return edit


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    *head, last = path.split("/")

    def edit(content: dict[str, Any]) -> None:
        node = content
        for key in head:
            node = node[key]
        del node[last]

    return edit


def _source(change: Callable[[str], str]) -> Callable[[dict[str, Any]], None]:
    """Change the stored problem text and its sha256 consistently."""

    def edit(content: dict[str, Any]) -> None:
        text = change(content["problem"]["source"])
        content["problem"]["source"] = text
        content["problem"]["sha256"] = hashlib.sha256(text.encode()).hexdigest()

    return edit


DAMAGE = [
    # dims
    ("dims-string", _set("dims/n", "big"), r"field 'dims\.n' must be an integer, got 'big'"),
    ("dims-negative", _set("dims/n", -3), r"field 'dims\.n': -3 is less than the minimum of 1"),
    ("dims-float", _set("dims/n", 200.5), r"field 'dims\.n' must be an integer, got 200\.5"),
    ("dims-integral-float", _set("dims/n", 200.0), r"field 'dims\.n' must be an integer"),
    ("dims-bool", _set("dims/k", True), r"field 'dims\.k' must be an integer, got True"),
    ("dims-list", _set("dims", [200, 100]), r"field 'dims' must be a JSON object"),
    ("dims-huge", _set("dims/n", 10**30), r"field 'dims\.n': 1000000000000000000000000000000 is "
     r"greater than the maximum of 2147483647"),
    ("dims-unknown-name", _set("dims/zz", 3),
     r"field 'dims': the plan has dimensions k, n, zz; problem 'kalman' has n, k"),
    ("dims-one-missing", _delete("dims/k"), r"field 'dims': the plan has dimensions n;"),
    # dtype
    ("dtype-int", _set("dtype", 64), r"field 'dtype': 64 is not one of: 'float64', 'float32'"),
    ("dtype-unknown", _set("dtype", "float16"), r"field 'dtype': 'float16' is not one of"),
    # params
    ("params-list", _set("params", ["solver.S", "lu"]), r"field 'params' must be a JSON object"),
    ("params-nested", _set("params/order", [["optimal"]]),
     r"field 'params\.order' must be a string, a number or true or false"),
    ("params-null", _set("params/cse", None), r"field 'params\.cse' must be"),
    ("params-kernel-unknown", _set("params/solver.S", "qr"),
     r"field 'params\.solver\.S': solver\.S = 'qr' does not apply.*" + RETUNE),
    ("params-kernel-not-string", _set("params/solver.S", 3),
     r"field 'params\.solver\.S': solver\.S = 3: a kernel name is a string"),
    ("params-knob-unknown", _set("params/solver.Q", "lu"),
     r"field 'params\.solver\.Q': unknown knob 'solver\.Q'.*" + RETUNE),
    ("params-knob-renamed", _set("params/blocking.n", 2),
     r"field 'params\.blocking\.n': unknown knob.*" + RETUNE),
    ("params-blocks-string", _set("params/blocks.n", "two"),
     r"field 'params\.blocks\.n': blocks\.n = 'two': a block count is an integer"),
    ("params-blocks-too-many", _set("params/blocks.n", 7),
     r"field 'params\.blocks\.n': blocks\.n = 7 does not apply"),
    ("params-order-unknown", _set("params/order", "middle"),
     r"field 'params\.order': order = 'middle'.*" + RETUNE),
    ("params-switch-not-bool", _set("params/syrk", 1),
     r"field 'params\.syrk': syrk = 1: must be true or false"),
    # target
    ("target-string", _set("target", "numba-t2"), r"field 'target' must be a JSON object"),
    ("target-unknown-backend", _set("target/backend", "tpu"),
     r"field 'target\.backend': unknown backend 'tpu'; valid backends: numba, c, jax, pytorch"),
    ("target-unknown-name", _set("target/name", "tpu-t2"),
     r"field 'target\.name': unknown backend in target 'tpu-t2'.*valid backends: numba, c, jax"),
    ("target-name-int", _set("target/name", 2), r"field 'target\.name' must be a string, got 2"),
    ("target-name-missing", _delete("target/name"), r"field 'target\.name' is missing"),
    ("target-threads-zero", _set("target/threads", 0),
     r"field 'target\.threads': 0 is less than the minimum of 1"),
    ("target-backend-mismatch", _set("target/backend", "c"),
     r"field 'target\.backend': 'c' does not match the target name 'numba-t2'"),
    # problem
    ("problem-string", _set("problem", "kalman"), r"field 'problem' must be a JSON object"),
    ("problem-source-missing", _delete("problem/source"), r"field 'problem\.source' is missing"),
    ("problem-origin-missing", _delete("problem/origin"), r"field 'problem\.origin' is missing"),
    ("problem-source-int", _set("problem/source", 5),
     r"field 'problem\.source' must be a string, got 5"),
    ("problem-origin-int", _set("problem/origin", 5), r"field 'problem\.origin' must be a string"),
    ("problem-sha256-wrong", _set("problem/sha256", "0" * 64),
     r"field 'problem\.source': the stored problem text does not match its sha256"),
    ("problem-source-unparsable", _source(lambda s: s.replace("[problem]", "[problem", 1)),
     r"field 'problem\.source': the stored problem does not parse: .*not valid TOML.*" + RETUNE),
    ("problem-source-deep-formula",
     _source(lambda s: s.replace('newmu = "', 'newmu = "' + "(" * 5000, 1)
             .replace('(H*mu - data)"', '(H*mu - data)' + ")" * 5000 + '"', 1)),
     r"field 'problem\.source': the stored problem does not parse: .*nested too deeply"),
    ("problem-outputs-mismatch", _source(lambda s: s.replace("newSigma", "newS")),
     r"field 'problem\.outputs': \['newmu', 'newSigma'\] does not match the stored problem"),
    ("problem-name-mismatch", _set("problem/name", "gls"),
     r"field 'problem\.name': 'gls', but the stored problem text is named 'kalman'"),
    ("problem-name-path", _set("problem/name", "../../etc/kalman"),
     r"field 'problem\.name': '\.\./\.\./etc/kalman' is not valid here: .*no path separators"),
    # version, kind, completeness
    ("schema-version-0", _set("schema_version", 0),
     r"field 'schema_version': 0 is not a plan schema version"),
    ("schema-version-99", _set("schema_version", 99), r"plan schema 99, newer.*upgrade autotune"),
    ("schema-version-bool", _set("schema_version", True),
     r"field 'schema_version' is missing or not an integer"),
    ("schema-version-string", _set("schema_version", "1"),
     r"field 'schema_version' is missing or not an integer"),
    ("missing-fields", lambda c: (c.pop("dims"), c.pop("params")),
     r"incomplete plan: fields 'dims', 'params' are missing"),
    # measurements and the rest
    ("timing-list", _set("timing", []), r"field 'timing' must be a JSON object"),
    ("timing-median-missing", _delete("timing/median"), r"field 'timing\.median' is missing"),
    ("timing-median-string", _set("timing/median", "fast"),
     r"field 'timing\.median' must be a number, got 'fast'"),
    ("speedups-string", _set("speedups/naive", "1.5x"),
     r"field 'speedups\.naive' must be a number or null"),
    ("runners-up-negative", lambda c: c["runners_up"][0].update(median=-1.0),
     r"field 'runners_up\[0\]\.median': -1\.0 is less than the minimum of 0"),
    ("machine-list", _set("machine", []), r"field 'machine' must be a JSON object"),
    ("machine-versions-list", _set("machine/versions", ["numpy"]),
     r"field 'machine\.versions' must be a JSON object"),
    ("environment-string", _set("environment", "retain"),
     r"field 'environment' must be a JSON object"),
    ("environment-heap-unknown", _set("environment/heap", "lots"),
     r"environment\.heap 'lots' is not one of: retain, system"),
]


@pytest.mark.parametrize("edit, match", [d[1:] for d in DAMAGE], ids=[d[0] for d in DAMAGE])
def test_damaged_plans_are_refused_naming_the_field(example, tmp_path, edit, match):
    path = _damaged(example, edit, tmp_path / "plan.json")
    with pytest.raises(PlanError, match=match) as info:
        load_plan(path, heap="system")
    assert str(info.value).startswith(f"{path}: ")


def test_a_malformed_digest_is_named(example, tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({**example, "digest": "xyz"}))
    with pytest.raises(PlanError, match=r"field 'digest': 'xyz' does not match '\^\[0-9a-f\]"):
        load_plan(path, heap="system")


def test_the_cases_cover_every_required_field_kind():
    ids = {d[0].split("-")[0] for d in DAMAGE}
    assert {"dims", "dtype", "params", "target", "problem", "schema", "missing"} <= ids


@pytest.mark.parametrize("depth", [sys.getrecursionlimit() - 20, 100_000],
                         ids=["near-limit", "far-beyond"])
def test_deeply_nested_json_is_refused_not_a_recursion_error(example, tmp_path, depth):
    text = json.dumps(example)
    nested = "[" * depth + "]" * depth
    path = tmp_path / "deep.json"
    path.write_text(text[:-1] + f', "zz": {nested}}}')
    with pytest.raises(PlanError, match="nested too deeply|digest"):
        load_plan(path)


def test_unknown_additional_fields_load(example, tmp_path):
    """Newer versions add optional fields: a plan with extra ones still loads."""

    def edit(c):
        c["verification"] = {"status": "ok", "checks": [1, 2]}
        c["graph_fingerprint"] = "abc"
        c["baselines"]["numpy"] = {"median": 0.01, "samples": [0.01], "target": None}
        c["target"]["extra"] = 1

    fn = load_plan(_damaged(example, edit, tmp_path / "plan.json"), heap="system")
    assert fn.problem.name == "kalman" and fn.dims == {"n": 200, "k": 100}


@pytest.mark.parametrize(
    "stage, exc, match",
    [
        ("autotune.derivation.derive", AttributeError("'Mul' object has no attribute 'blocks'"),
         r"field 'params': the computation cannot be re-derived.*AttributeError: 'Mul'.*"
         + RETUNE),
        ("autotune.derivation.derive", RecursionError("maximum recursion depth exceeded"),
         r"field 'params': the computation cannot be re-derived.*RecursionError"),
        ("autotune.derivation.derive", KeyError("inv1"),
         r"field 'params': the computation cannot be re-derived.*KeyError: 'inv1'"),
        ("autotune.lower.lower", TypeError("Invalid dtype: 64"),
         r"field 'params': the derived computation cannot be lowered.*TypeError: Invalid dtype"),
        ("autotune.targets.compile_function", ValueError("no BLAS"),
         r"field 'target': the computation cannot be compiled for numba-t\d+: ValueError"),
    ],
    ids=["derive-attribute", "derive-recursion", "derive-key", "lower-type", "compile-value"],
)
def test_errors_re_deriving_a_stored_plan_become_plan_errors(monkeypatch, stage, exc, match):
    module, name = stage.rsplit(".", 1)

    def boom(*args, **kwargs):
        raise exc

    # patch the module attribute the stage is looked up by
    monkeypatch.setattr(importlib.import_module(module), name, boom)
    with pytest.raises(PlanError, match=match) as info:
        load_plan(EXAMPLE, heap="system")
    assert info.value.__cause__ is exc


def test_the_committed_example_plan_loads_and_runs():
    from autotune.instances import random_instance

    fn = load_plan(EXAMPLE, heap="system")
    out = fn(**random_instance(fn.problem, fn.dims, seed=1))
    assert out.newSigma.shape == (200, 200)


def test_find_plan_skips_a_refused_plan_and_says_why(example, tmp_path):
    good = _write(example, tmp_path / "good.json")
    _damaged(example, lambda c: (c["params"].update({"solver.S": "qr"}),
                                 c["dims"].update(n=300, k=150)), tmp_path / "stale.json")
    assert find_plan("kalman", {"n": 200}, tmp_path) == good
    with pytest.raises(PlanError, match=r"refused: .*stale\.json: field 'params\.solver\.S'"):
        find_plan("kalman", {"n": 300}, tmp_path)
    good.unlink()
    with pytest.raises(PlanError, match=r"no float64 plan.*\n  refused: .*re-tune it with"):
        find_plan("kalman", {"n": 300}, tmp_path)


def test_check_plan_returns_the_problem_dims_and_full_knobs(example, tmp_path):
    plan = read_plan(_write(example, tmp_path / "plan.json"))
    problem, dims, knobs = check_plan(plan)
    assert problem.name == "kalman" and dims == {"n": 200, "k": 100}
    assert knobs["solver.S"] == "cholesky_split" and set(plan.params) <= set(knobs)
