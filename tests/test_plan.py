"""Plan artifacts: canonical, digest-protected, atomically written."""

from __future__ import annotations

import json

import pytest

from autotune.errors import PlanError
from autotune.plan import SCHEMA_VERSION, Plan, canonical_json, read_plan, save_plan


def _plan(**over):
    import hashlib

    src = "[dims]\nn = 4\n"
    fields = dict(
        problem={"name": "p", "source": src, "sha256": hashlib.sha256(src.encode()).hexdigest(),
                 "origin": "p.toml"},
        dims={"n": 4}, dtype="float64", params={"order": "optimal"},
        target={"backend": "numba", "device": "cpu", "threads": 1, "name": "numba-t1"},
        timing={"samples": [0.1, 0.2], "median": 0.15}, baselines={}, speedups={},
        accuracy={"errors": {"x": 1e-16}}, flops=10.0, machine={"cpu": "x"},
    )
    fields.update(over)
    return Plan.build(**fields)


def test_round_trip(tmp_path):
    plan = _plan()
    path = save_plan(plan, tmp_path)
    again = read_plan(path)
    assert again.content == plan.content
    assert again.content["schema_version"] == SCHEMA_VERSION
    # canonical: the file's JSON is sorted and the digest covers everything else
    data = json.loads(path.read_text())
    assert list(data) == sorted(data)
    assert canonical_json(data) == canonical_json(plan.content)


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda t: t[: len(t) // 2], "not valid JSON"),
        (lambda t: t.replace('"median": 0.15', '"median": 0.01'), "digest"),
        (lambda t: t.replace(f'"schema_version": {SCHEMA_VERSION}', '"schema_version": 99'),
         "newer"),
        (lambda t: t.replace('"kind": "autotune-plan"', '"kind": "other"'), "not an autotune"),
        (lambda t: "[]", "not a plan"),
        (lambda t: "\x00\x01garbage", "not valid JSON"),
    ],
    ids=["truncated", "edited", "newer-schema", "wrong-kind", "not-object", "garbage"],
)
def test_damaged_plans_are_refused(tmp_path, damage, match):
    path = save_plan(_plan(), tmp_path)
    path.write_text(damage(path.read_text()))
    with pytest.raises(PlanError, match=match):
        read_plan(path)


def test_missing_plan_file(tmp_path):
    with pytest.raises(PlanError, match="no such plan"):
        read_plan(tmp_path / "nope.json")


def test_failed_write_keeps_the_old_plan(tmp_path, monkeypatch):
    path = save_plan(_plan(), tmp_path, name="p.json")
    before = path.read_text()
    import autotune.plan as planmod

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(planmod.os, "replace", boom)
    with pytest.raises(OSError):
        save_plan(_plan(flops=20.0), tmp_path, name="p.json")
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]  # no temporary file left


def test_non_finite_numbers_are_not_written(tmp_path):
    with pytest.raises(ValueError):
        _plan(flops=float("nan"))
