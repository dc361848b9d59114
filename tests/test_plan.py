"""Plan artifacts: canonical, digest-protected, atomically written."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from pathlib import Path

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


# -- the schema ---------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted(
    [*REPO.glob("results/plan-*.json"), REPO / "results" / "example-plan-kalman-n200.json",
     *REPO.glob("results/gpu-h100/*.json")]
)


def test_the_schema_is_a_packaged_versioned_draft_2020_12_schema():
    from jsonschema import Draft202012Validator

    from autotune.plan import REQUIRED, plan_schema
    from autotune.spec import DTYPES

    schema = plan_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] and schema["title"] and schema["description"]
    assert str(SCHEMA_VERSION) in schema["$id"] and str(SCHEMA_VERSION) in schema["title"]
    assert schema["properties"]["schema_version"]["const"] == SCHEMA_VERSION
    assert schema["required"] == list(REQUIRED)
    assert set(schema["properties"]["dtype"]["enum"]) == set(DTYPES)
    assert schema.get("additionalProperties", True) is True  # newer versions add fields
    assert (REPO / "autotune" / "plan.schema.json").is_file()


@pytest.mark.parametrize("path", SHIPPED, ids=[p.relative_to(REPO).as_posix() for p in SHIPPED])
def test_shipped_plans_validate_against_the_schema(path):
    from autotune.plan import _validator

    content = json.loads(path.read_text())
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in _validator().iter_errors(content)]
    assert errors == []
    read_plan(path)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.relative_to(REPO).as_posix() for p in SHIPPED])
def test_shipped_plans_fit_this_autotune_or_say_to_re_tune(path):
    """A plan of an older autotune (renamed knobs or kernels) loads or says to re-tune."""
    from autotune.api import check_plan

    try:
        check_plan(read_plan(path))
    except PlanError as exc:
        assert "re-tune it with `autotune run --problem" in str(exc)


def test_shipped_plans_were_found():
    assert len(SHIPPED) >= 3 and all(p.is_file() for p in SHIPPED)


def test_a_new_plan_is_checked_against_the_schema():
    with pytest.raises(PlanError, match=r"<new plan>: field 'dims\.n': 0 is less than the minimum"):
        _plan(dims={"n": 0})
    with pytest.raises(PlanError, match=r"<new plan>: field 'target\.name': unknown backend"):
        _plan(target={"name": "tpu-t1"})
    plan = _plan(problem={**_plan().content["problem"], "inputs": ("a", "b")})
    assert plan.content["problem"]["inputs"] == ["a", "b"]  # as a reader will see it


# -- writing ------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002], ids=["022", "077", "002"])
def test_a_plan_file_gets_the_mode_of_any_new_file(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = save_plan(_plan(), tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_stale_temporary_files_of_the_same_plan_are_removed(tmp_path):
    import fcntl

    stale = tmp_path / ".p.json.k3x_9a.tmp"  # left by a write killed a minute ago
    stale.write_text('{"half": ')
    other = tmp_path / ".q.json.k3x_9a.tmp"  # another plan's: not ours to remove
    other.write_text("{}")
    live = tmp_path / ".p.json.busy1234.tmp"  # a write in progress holds its lock
    live.write_text("{}")
    young = tmp_path / ".p.json.new5678.tmp"  # a write just starting (not locked yet)
    young.write_text("")
    minute_ago = time.time() - 60
    for p in (stale, other, live):
        os.utime(p, (minute_ago, minute_ago))
    with open(live, "r+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        path = save_plan(_plan(), tmp_path, name="p.json")
        assert live.exists()
    assert not stale.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["p.json", other.name, live.name, young.name])
    os.utime(young, (minute_ago, minute_ago))
    save_plan(_plan(), tmp_path, name="p.json")  # the lock is gone: now it is stale
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["p.json", other.name])
    read_plan(path)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_the_write_arrives_after_the_rename(tmp_path, monkeypatch, signum):
    import autotune.plan as planmod

    path = save_plan(_plan(), tmp_path, name="p.json")
    new = _plan(flops=20.0)
    seen = []

    def handler(sig, frame):
        # the plan is complete and in place when the signal is handled
        seen.append((sig, read_plan(path).content["flops"],
                     sorted(p.name for p in tmp_path.iterdir())))
        raise KeyboardInterrupt

    real_replace = os.replace

    def replace(src, dst):
        signal.raise_signal(signum)  # arrives mid-write
        real_replace(src, dst)

    previous = signal.signal(signum, handler)
    try:
        monkeypatch.setattr(planmod.os, "replace", replace)
        with pytest.raises(KeyboardInterrupt):
            save_plan(new, tmp_path, name="p.json")
        assert signal.getsignal(signum) is handler  # put back
    finally:
        signal.signal(signum, previous)
    assert seen == [(signum, 20.0, ["p.json"])]


def test_saving_from_another_thread_works(tmp_path):
    import threading

    out = []
    t = threading.Thread(target=lambda: out.append(save_plan(_plan(), tmp_path)))
    t.start()
    t.join()
    assert out and read_plan(out[0]).content["flops"] == 10.0
