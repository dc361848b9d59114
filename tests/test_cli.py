"""The command line, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from autotune.cli import main


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "autotune.cli", *args], capture_output=True,
                          text=True, timeout=600, cwd=cwd)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    r = _cli("run", "--n", "48", "--trials", "4", "--timeout", "120", "--target", "numba-t1",
             "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r


def test_run_writes_a_plan_and_a_trials_table(small_run):
    out, r = small_run
    plans = list(out.glob("plan-kalman-*.json"))
    assert len(plans) == 1
    plan = json.loads(plans[0].read_text())
    for key in ("schema_version", "params", "target", "timing", "baselines", "speedups",
                "accuracy", "flops", "machine", "runners_up", "digest"):
        assert key in plan
    assert plan["dims"] == {"n": 48, "k": 24}
    assert set(plan["baselines"]) == {"naive", "seed-2x2", "flop-optimal", "numpy", "pytensor"}
    assert all(e < plan["accuracy"]["tolerance"] for e in plan["accuracy"]["errors"].values())
    assert plan["timing"]["median"] > 0 and len(plan["timing"]["samples"]) >= 1
    assert list(out.glob("trials-*.csv"))
    assert "plan written to" in r.stderr


def test_show_and_json(small_run):
    out, _ = small_run
    plan = next(out.glob("plan-*.json"))
    r = _cli("show", str(plan))
    assert r.returncode == 0, r.stderr
    assert "computation" in r.stdout and "naive" in r.stdout
    r = _cli("show", str(plan), "--json")
    assert json.loads(r.stdout)["kind"] == "autotune-plan"


def test_report_writes_csv_and_plots(small_run):
    out, _ = small_run
    r = _cli("report", "--n", "48", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert list(out.glob("history-*.png"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--n", "0"], "--n"),
        (["run", "--dim", "k"], "NAME=VALUE"),
        (["run", "--dim", "q=3"], "unknown dimension 'q'"),
        (["run", "--problem", "nope"], "unknown problem 'nope'"),
        (["run", "--target", "bogus"], "valid"),
        (["run", "--dtype", "float16"], "float16"),
        (["run", "--problem", "gls", "--n", "10", "--dim", "m=0"], "positive integer"),
        (["show", "missing.json"], "no such plan"),
        (["report", "--n", "12345"], "no study"),
        (["run", "--n", "1000000000"], "more than the"),  # refused before any allocation
        (["verify", "missing.json"], "no such plan"),
    ],
)
def test_bad_input_is_a_clear_error(args, message, tmp_path):
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path)]
                           if args[0] not in ("show", "verify") else args)
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert "Traceback" not in r.output


def test_verify_a_fresh_plan(small_run):
    """verify re-times the plan against its baselines here and says it holds (exit 0), or
    why not (exit 1); --json carries the figures."""
    out, _ = small_run
    plan = next(out.glob("plan-*.json"))
    r = _cli("verify", str(plan), "--repeats", "3", "--json")
    assert r.returncode in (0, 1), r.stderr[-3000:]
    v = json.loads(r.stdout)
    assert v["holds"] == (r.returncode == 0)
    assert v["rounds"] == 3 and len(v["samples"]) == 3
    assert set(v["baselines"]) == {"numpy", "naive", "pytensor", "flop-optimal"}
    assert all(b["median"] for b in v["baselines"].values())
    assert v["limit_ratio"] is None or v["limit_ratio"] >= 1.0
    md = out / "VERIFY.md"
    r = _cli("verify", str(plan), "--repeats", "3", "--markdown", str(md))
    assert r.returncode in (0, 1) and "| **plan** |" in md.read_text()


def test_targets_and_problems():
    r = CliRunner().invoke(main, ["targets"])
    assert r.exit_code == 0 and "numba" in r.output
    # install hints survive the console markup: 'autotune[torch]' is printed whole
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        assert "autotune[torch]" in r.output
    r = CliRunner().invoke(main, ["problems"])
    assert r.exit_code == 0 and "kalman" in r.output and "gls" in r.output
