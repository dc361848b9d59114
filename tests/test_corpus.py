"""The corpus benchmark (``benchmarks/corpus.py``): its verdicts on synthetic samples, the
report writer, the tuning subprocess's failures, a run that goes on past a failed problem,
and one real run of a tiny problem from tuning to the report (10-25 s, most of it tuning)."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import corpus  # noqa: E402

MS = 1e-3


def _around(median: float, spread: float = 0.01, n: int = 11) -> list[float]:
    """``n`` samples evenly spread over ``median * (1 +- spread)`` (median exactly ``median``,
    q25 and q75 at about half the spread)."""
    return [median * (1 + spread * (2 * i / (n - 1) - 1)) for i in range(n)]


# -- the speed verdict -----------------------------------------------------------------------


def test_speed_faster() -> None:
    v = corpus.speed_verdict(_around(8 * MS), _around(10 * MS))
    assert v["verdict"] == "faster"
    assert v["ratio"] == pytest.approx(0.8)
    assert v["goal_met"]


def test_speed_slower() -> None:
    v = corpus.speed_verdict(_around(12 * MS), _around(10 * MS))
    assert v["verdict"] == "slower"
    assert v["laab_slowdown"] == pytest.approx(0.2)
    assert not v["goal_met"]


def test_speed_no_difference_with_overlapping_quartiles() -> None:
    v = corpus.speed_verdict(_around(10.2 * MS, 0.1), _around(10 * MS, 0.1))
    assert v["verdict"] == "no difference"
    assert v["goal_met"]


def test_goal_at_ratio_104_not_significantly_slower() -> None:
    plan, expert = _around(10.4 * MS, 0.2), _around(10 * MS, 0.2)
    v = corpus.speed_verdict(plan, expert)
    assert v["ratio"] == pytest.approx(1.04)
    assert v["verdict"] == "no difference"
    assert v["goal_met"]


def test_goal_not_met_at_ratio_106_even_without_significance() -> None:
    v = corpus.speed_verdict(_around(10.6 * MS, 0.2), _around(10 * MS, 0.2))
    assert v["ratio"] == pytest.approx(1.06)
    assert v["verdict"] == "no difference"
    assert not v["goal_met"]


def test_goal_not_met_when_significantly_slower_within_105() -> None:
    v = corpus.speed_verdict(_around(10.3 * MS, 0.001), _around(10 * MS, 0.001))
    assert v["ratio"] == pytest.approx(1.03)
    assert v["verdict"] == "slower"
    assert not v["goal_met"]


# -- the checks verdict ----------------------------------------------------------------------


def _paired(off_median: float, cost: float, n: int = 9) -> tuple[list[float], list[float]]:
    off = _around(off_median, 0.05, n)
    return [o + cost for o in off], off


@pytest.mark.parametrize(("off_median", "cost", "met"), [
    (10 * MS, 0.19 * MS, True),  # 2% of 10 ms = 0.2 ms
    (10 * MS, 0.21 * MS, False),
    (0.5 * MS, 19e-6, True),  # 2% of 0.5 ms = 10 us: the 20 us floor decides
    (0.5 * MS, 21e-6, False),
])
def test_checks_goal_at_the_boundary(off_median: float, cost: float, met: bool) -> None:
    on, off = _paired(off_median, cost)
    v = corpus.checks_verdict(on, off)
    assert v["cost_s"] == pytest.approx(cost)
    assert v["allowed_s"] == pytest.approx(max(0.02 * off_median, 20e-6))
    assert v["goal_met"] is met


def test_checks_cost_is_paired_by_round() -> None:
    off = [1.0, 2.0, 3.0, 4.0, 5.0]
    on = [o + 0.1 for o in off]
    on[0] += 5.0  # one disturbed round: the medians of on and off move 1 s apart
    assert statistics.median(on) - statistics.median(off) == pytest.approx(1.1)
    assert corpus.checks_verdict(on, off)["cost_s"] == pytest.approx(0.1)


# -- the report ------------------------------------------------------------------------------


def _meta() -> dict[str, Any]:
    return {"date": "2026-01-01 00:00 UTC", "cpu": "Test CPU", "cores": 2, "usable_cores": 2,
            "blas": ["openblas 0.3 (lib.so)"], "threads": "each plan's", "reps": 5,
            "tuning": "tuned now", "args": "--reps 5", "load": "0.00"}


def _timed_row(name: str, plan_ms: float, expert_ms: float, cost_ms: float) -> dict[str, Any]:
    row = corpus.new_row(name, {"n": 100, "m": 50})
    row.update(plan=f"/x/plan-{name}.json", plan_source="tuned now", target="numba-t2",
               threads=2, pinning="not pinned", tolerance=1e-6, kernels=["cholesky", "matmul"],
               errors={"plan": 1e-15, "off": 1e-15, "expert": 2e-15}, wrong={})
    off = _around(plan_ms * MS, 0.01)
    row["samples"] = {"plan": [o + cost_ms * MS for o in off], "off": off,
                      "expert": _around(expert_ms * MS, 0.01)}
    corpus.summarize(row)
    return row


def test_markdown_rows_failures_and_score() -> None:
    good = _timed_row("gls", 8.0, 10.0, 0.01)
    slow = _timed_row("wls", 20.0, 10.0, 1.0)
    failed = corpus.new_row("cca", {"n": 3000, "q": 1500})
    failed.update(status="failed", reason="tuning failed: exit status 1: boom | here")
    text = corpus.write_markdown([good, slow, failed], _meta())
    lines = text.splitlines()
    row = {ln.split("|")[1].strip(): ln for ln in lines if ln.startswith("| ")
           and ln.split("|")[1].strip() in ("gls", "wls", "cca")}
    assert "faster" in row["gls"] and "✓" in row["gls"] and "8.0" in row["gls"]
    assert "0.801" in row["gls"] and "cholesky, matmul" in row["gls"]
    assert "slower" in row["wls"] and "2.100" in row["wls"] and "✗" in row["wls"]
    assert "**failed**: tuning failed: exit status 1: boom \\| here" in row["cca"]
    assert "**Score: goals met 1/3**" in text
    assert "checks goal met 1/3" in text  # wls: 1 ms of 20 ms is 5%
    assert "Test CPU" in text and "openblas 0.3" in text
    assert "  - failed: tuning failed: exit status 1: boom" in text  # the notes


def test_markdown_wrong_result() -> None:
    row = _timed_row("gls", 8.0, 10.0, 0.01)
    row["samples"] = {"expert": row["samples"]["expert"]}
    row["wrong"] = {"plan": "relative error 1.0e-02 above the tolerance 1.0e-06",
                    "off": "relative error 1.0e-02 above the tolerance 1.0e-06"}
    corpus.summarize(row)
    text = corpus.write_markdown([row], _meta())
    assert row["status"] == "wrong" and row["speed"] is None
    assert "**wrong result**" in text and "relative error 1.0e-02" in text
    assert "**Score: goals met 0/1**" in text


def test_outputs_round_trip(tmp_path: Path) -> None:
    rows = [_timed_row("gls", 8.0, 10.0, 0.01)]
    corpus.write_outputs(rows, _meta(), tmp_path)
    data = json.loads((tmp_path / "corpus.json").read_text())
    assert data["problems"][0]["samples"]["plan"] == rows[0]["samples"]["plan"]
    assert (tmp_path / "CORPUS.md").read_text().startswith("# The corpus")


# -- sizes and tuning ------------------------------------------------------------------------


def test_scaled_dims_follow_their_formulas() -> None:
    assert corpus.problem_dims("gls") == {"n": 4000, "m": 500}
    assert corpus.problem_dims("gls", 0.015) == {"n": 60, "m": 7}
    assert corpus.problem_dims("enkf", 0.1) == {"n": 400, "N": 20, "m": 100}
    assert corpus.select_problems("")[:5] == list(corpus.SHIPPED)
    assert len(corpus.select_problems(None)) == 18
    with pytest.raises(SystemExit, match="unknown nope"):
        corpus.select_problems("gls,nope")


def test_tune_command() -> None:
    cmd = corpus.tune_command("enkf", {"n": 400, "N": 20, "m": 100}, 3, 60.0, Path("/p"))
    text = " ".join(cmd)
    assert "-m autotune.cli run --problem enkf" in text
    assert "--dim n=400 --dim N=20" in text and "--dim m=" not in text
    assert "--trials 3 --timeout 60 --out /p --quiet" in text


def _fake_command(code: str):
    def command(*args: Any) -> list[str]:
        return [sys.executable, "-c", code]

    return command


def test_tune_failure_records_stderr(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(corpus, "tune_command", _fake_command(
        "import sys; print('noise'); sys.stderr.write('one\\ntwo: the reason\\n'); sys.exit(3)"))
    res = corpus.tune("gls", {"n": 60, "m": 7}, 2, 60.0, tmp_path)
    assert not res["ok"] and res["path"] is None
    assert res["returncode"] == 3
    assert res["reason"].startswith("exit status 3") and "two: the reason" in res["reason"]
    assert res["wall_s"] >= 0


def test_tune_without_plan_is_a_failure(monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    monkeypatch.setattr(corpus, "tune_command", _fake_command("pass"))
    res = corpus.tune("gls", {"n": 60, "m": 7}, 2, 60.0, tmp_path)
    assert not res["ok"] and res["returncode"] == 0 and "no plan" in res["reason"]


def test_tune_timeout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(corpus, "tune_command", _fake_command(
        "import sys, time; sys.stderr.write('started\\n'); sys.stderr.flush(); time.sleep(30)"))
    monkeypatch.setattr(corpus, "TUNE_GRACE_S", 0.0)
    res = corpus.tune("gls", {"n": 60, "m": 7}, 2, 1.5, tmp_path)
    assert not res["ok"] and res["returncode"] is None
    assert "no answer within 2 s" in res["reason"]
    assert res["wall_s"] < 20


def test_failed_tuning_is_a_row_and_the_run_goes_on(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    tuned: list[str] = []

    def fake_tune(name: str, dims: Any, trials: int, timeout: float,
                  plans: Path) -> dict[str, Any]:
        tuned.append(name)
        if name == "gls":
            return {"ok": False, "path": None, "wall_s": 1.0, "returncode": 1,
                    "reason": "exit status 1: MemoryError", "command": "autotune run ..."}
        return {"ok": True, "path": str(plans / "fake.json"), "wall_s": 2.0,
                "returncode": 0, "reason": "", "command": "autotune run ..."}

    def fake_measure(row: dict[str, Any], opts: Any, allowed: set[int]) -> None:
        assert row["problem"] == "wls" and row["plan"].endswith("fake.json")
        row.update(_timed_row("wls", 9.0, 10.0, 0.01))

    monkeypatch.setattr(corpus, "tune", fake_tune)
    monkeypatch.setattr(corpus, "measure_problem", fake_measure)
    assert corpus.main(["--problems", "gls,wls", "--scale", "0.01", "--out", str(tmp_path),
                        "--reps", "2"]) == 0
    assert tuned == ["gls", "wls"]
    text = (tmp_path / "CORPUS.md").read_text()
    assert "**failed**: tuning failed: exit status 1: MemoryError" in text
    assert "**Score: goals met 1/2**" in text
    data = json.loads((tmp_path / "corpus.json").read_text())
    assert [r["status"] for r in data["problems"]] == ["failed", "timed"]
    assert data["problems"][0]["tuning"]["returncode"] == 1
    assert (tmp_path / "corpus-plans").is_dir()


def test_no_tune_without_plan(tmp_path: Path) -> None:
    assert corpus.main(["--problems", "wls", "--scale", "0.01", "--no-tune",
                        "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "corpus.json").read_text())
    row = data["problems"][0]
    assert row["status"] == "failed" and "--no-tune" in row["reason"]


# -- one real run ----------------------------------------------------------------------------


def test_smoke_run_tunes_checks_and_times(tmp_path: Path) -> None:
    """gls at n = 60: tuned in a subprocess, loaded, checked against the reference, timed."""
    out = tmp_path / "out"
    assert corpus.main(["--problems", "gls", "--scale", "0.015", "--trials", "2",
                        "--timeout", "60", "--reps", "2", "--out", str(out)]) == 0
    assert list((out / "corpus-plans").glob("plan-gls-m7-n60-float64.json"))
    data = json.loads((out / "corpus.json").read_text())
    row = data["problems"][0]
    assert row["status"] == "timed", row["reason"]
    assert row["dims"] == {"n": 60, "m": 7}
    assert row["tuning"]["ok"] and row["tuning"]["returncode"] == 0
    assert set(row["errors"]) == {"plan", "off", "expert"}
    assert all(0 <= e <= row["tolerance"] for e in row["errors"].values())
    assert all(len(v) == 2 and min(v) > 0 for v in row["samples"].values())
    assert row["kernels"] and row["speed"]["ratio"] > 0
    text = (out / "CORPUS.md").read_text()
    table = [ln for ln in text.splitlines() if ln.startswith("| gls |")]
    assert len(table) == 1 and "µs" in table[0] and "**failed**" not in table[0]
