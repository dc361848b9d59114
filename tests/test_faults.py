"""Never lose work: faults injected at each phase of a run (``AUTOTUNE_FAULT``).

Most cases run :func:`autotune.runner.run_tuning` with an in-process fake worker (the fake,
noiseless measurer of the search tests), so the signal and the phase are exact and the run
takes a second; the real worker's own faults (a death while measuring or timing the GEMM,
an interrupted request, a killed parent) use a real worker on a tiny problem; one real
``autotune run`` is interrupted in its final round (slow).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_search import DIMS, SOURCE, fake_measure, kalman  # noqa: I001

from autotune import runner
from autotune.errors import AutotuneError
from autotune.measure import Job, Measurement, TimingPolicy, Worker
from autotune.plan import read_plan
from autotune.search import Derivations, SearchConfig


class FakeWorker(Derivations):
    """The worker's interface, in process: the fake measurer, a constant GEMM rate."""

    slow_factor: dict[str, float] = {}

    def __init__(self, *args, **kwargs) -> None:
        self.calls = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def measure(self, job: Job, timeout: float | None = None) -> Measurement:
        from autotune.faults import fault

        self.calls += 1
        fault("measure")
        m = fake_measure(job, timeout or 0)
        factor = FakeWorker.slow_factor.get(repr(sorted(job.knobs.items())),
                                            FakeWorker.slow_factor.get("*", 1.0))
        if factor != 1.0 and m.ok:
            m = Measurement(m.status, m.target, tuple(t * factor for t in m.samples),
                            m.compile_s, m.errors, m.tolerance, m.flops)
        return m

    def dgemm_rate(self, n, target, dtype="float64", repeats=3, tries=2):
        return 4e9


@pytest.fixture
def fake_worker(monkeypatch):
    monkeypatch.setattr(runner, "Worker", FakeWorker)
    FakeWorker.slow_factor = {}
    yield FakeWorker


def _config(tmp_path, **kw):
    base = dict(trials=8, timeout=120, targets=("numba-t2", "numba-t1"), out=tmp_path,
                seed=1, low_fidelity=False)
    base.update(kw)
    return SearchConfig(**base)


def _trial_states(tmp_path, config):
    import optuna

    from autotune.search import study_name

    name = study_name(kalman(), kalman().resolve_dims(DIMS), config.dtype, config.heap)
    study = optuna.load_study(study_name=name,
                              storage=f"sqlite:///{(tmp_path / 'autotune.db').resolve()}")
    return [t.state.name for t in study.trials], study


@pytest.mark.parametrize("fault", [
    "trial:sigint@2", "trial:sigterm@2", "trial:sigint@5", "final:sigint@1", "final:sigint@4",
    "final:sigterm@3", "save:sigint", "save:sigterm",
])
def test_a_signal_at_any_phase_leaves_a_plan_and_no_running_trial(tmp_path, fake_worker,
                                                                   monkeypatch, fault):
    # Ctrl-C as in a fresh process: Python's own SIGINT handler (a test run earlier in this
    # process, or a library it imported, may have replaced it)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _signal_at_any_phase(tmp_path, monkeypatch, fault)
    finally:
        signal.signal(signal.SIGINT, previous)


def _signal_at_any_phase(tmp_path, monkeypatch, fault):
    monkeypatch.setenv("AUTOTUNE_FAULT", fault)
    monkeypatch.setattr("autotune.faults._counts", {})
    config = _config(tmp_path)
    path = runner.run_tuning(kalman(), kalman().resolve_dims(DIMS), config, quiet=True)
    plan = read_plan(path)  # a complete, verified plan
    assert plan.content["timing"]["median"] > 0
    states, _ = _trial_states(tmp_path, config)
    assert "RUNNING" not in states
    assert not list(tmp_path.glob(".plan-*.tmp"))
    if fault.startswith("trial"):
        assert plan.content["study"]["interrupted"]


def test_sigterm_behaves_like_ctrl_c_outside_the_loop_too(tmp_path, fake_worker, monkeypatch):
    """The handler is installed for the whole run and restored after it."""
    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setenv("AUTOTUNE_FAULT", "trial:sigterm@1")
    monkeypatch.setattr("autotune.faults._counts", {})
    config = _config(tmp_path)
    with pytest.raises(AutotuneError, match="interrupted before any candidate finished"):
        runner.run_tuning(kalman(), kalman().resolve_dims(DIMS), config, quiet=True)
    assert signal.getsignal(signal.SIGTERM) is before
    assert not list(tmp_path.glob("plan-*.json"))
    states, _ = _trial_states(tmp_path, config)
    assert "RUNNING" not in states and states.count("FAIL") == 1


def test_a_rerun_never_replaces_a_better_stored_plan(tmp_path, fake_worker):
    dims = kalman().resolve_dims(DIMS)
    first = runner.run_tuning(kalman(), dims, _config(tmp_path), quiet=True)
    stored = read_plan(first)
    text = first.read_text()
    # everything is now 3x slower except the stored plan's own computation
    FakeWorker.slow_factor = {"*": 3.0, repr(sorted(stored.params.items())): 1.0}
    again = runner.run_tuning(kalman(), dims, _config(tmp_path, trials=14, seed=7), quiet=True)
    assert again == first
    kept = read_plan(first)
    # the stored computation still wins: kept unchanged, or rewritten with the same knobs
    # and target when the new search measured that very candidate too
    assert kept.params == stored.params and kept.target == stored.target
    if first.read_text() != text:
        assert kept.median <= min(b["median"] for n, b in kept.content["baselines"].items()
                                  if b.get("median") and n != "stored")


def test_a_better_new_plan_replaces_the_stored_one(tmp_path, fake_worker):
    dims = kalman().resolve_dims(DIMS)
    first = runner.run_tuning(kalman(), dims, _config(tmp_path), quiet=True)
    stored = read_plan(first)
    FakeWorker.slow_factor = {repr(sorted(stored.params.items())): 3.0}
    runner.run_tuning(kalman(), dims, _config(tmp_path, trials=14, seed=7), quiet=True)
    new = read_plan(first)
    assert new.params != stored.params
    # the stored computation was re-timed side by side and lost
    old_rows = [b for b in new.content["baselines"].values() if b["params"] == stored.params]
    assert old_rows and all(b["median"] > new.median for b in old_rows)


# -- the real worker --------------------------------------------------------------------------

TINY = {"n": 8, "k": 4}


def _job(target: str = "numba-t1", **kw) -> Job:
    from autotune.space import named_point

    p = kalman()
    dims = p.resolve_dims(TINY)
    knobs = named_point(p, "naive", dims)
    base = dict(policy=TimingPolicy(warmup=0, min_repeats=2, max_repeats=2))
    base.update(kw)
    return Job(SOURCE, "kalman-test.toml", dims, knobs, target, **base)


def test_a_worker_that_dies_is_a_recorded_failure_and_restarts(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOTUNE_FAULT", "measure:die")
    monkeypatch.setenv("AUTOTUNE_FAULT_ONCE", str(tmp_path / "once"))
    with Worker(timeout=120) as w:
        first = w.measure(_job())
        assert first.status == "crashed" and "exit code 137" in first.message
        second = w.measure(_job())
        assert second.ok, second.message
        assert w.restarts == 1


def test_a_worker_that_dies_timing_the_gemm_is_retried(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOTUNE_FAULT", "dgemm:die")
    monkeypatch.setenv("AUTOTUNE_FAULT_ONCE", str(tmp_path / "once"))
    with Worker(timeout=120) as w:
        assert w.dgemm_rate(64, "numba-t1") > 0
        assert w.restarts == 1


def test_an_interrupted_request_leaves_no_stale_reply(tmp_path):
    """Ctrl-C while the worker measures: the worker is replaced, and the next request gets
    its own answer, never the abandoned one's."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        with Worker(timeout=120) as w:
            w.measure(_job())  # start the worker, compile once
            slow = _job(policy=TimingPolicy(warmup=0, min_repeats=200000, max_repeats=200000,
                                            max_seconds=30.0, rel_iqr=0.0))
            signal.setitimer(signal.ITIMER_REAL, 0.5)
            with pytest.raises(KeyboardInterrupt):
                w.measure(slow)
            m = w.measure(_job(target="numba-t2"))
            assert m.ok and m.target == "numba-t2" and len(m.samples) == 2
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_workers_die_with_a_killed_parent(tmp_path):
    script = textwrap.dedent("""
        import sys, time
        from autotune.measure import Worker
        w = Worker(timeout=60)
        w._start()
        print(w.pid, flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        child = int(proc.stdout.readline())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _alive(child):
            time.sleep(0.1)
        assert not _alive(child), "the worker outlived its killed parent"
    finally:
        if proc.poll() is None:
            proc.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["final:sigint@2", "measure:die@3"])
def test_a_real_run_survives_faults(tmp_path, fault):
    """``autotune run`` end to end: Ctrl-C in the final round, or a worker killed during a
    measurement: a plan is written all the same, and no process is left behind."""
    problem = tmp_path / "kalman.toml"
    problem.write_text(SOURCE)
    env = {**os.environ, "AUTOTUNE_FAULT": fault,
           "AUTOTUNE_FAULT_ONCE": str(tmp_path / "once")}
    out = subprocess.run(
        [sys.executable, "-m", "autotune.cli", "run", "--problem", str(problem), "--n", "40",
         "--trials", "6", "--timeout", "300", "--target", "numba-t1", "--out",
         str(tmp_path / "res"), "--quiet"], env=env, capture_output=True, text=True,
        timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    plans = list((tmp_path / "res").glob("plan-*.json"))
    assert len(plans) == 1
    content = json.loads(plans[0].read_text())
    assert content["timing"]["median"] > 0
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert not leftover.stdout.strip(), leftover.stdout


def test_a_killed_runs_trial_is_failed_on_resume(tmp_path, monkeypatch):
    """A run killed with SIGKILL leaves its trial RUNNING; the next run records it as failed
    (its process is gone) before it goes on."""
    import socket

    import optuna

    from autotune.search import fail_stale_trials, open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 'a.db'}")
    study = optuna.create_study(study_name="s", storage=storage)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for pid in (dead.pid, os.getpid()):
        t = study.ask()
        t.set_user_attr("pid", pid)
        t.set_user_attr("host", socket.gethostname())
    other = study.ask()
    other.set_user_attr("pid", 1)
    other.set_user_attr("host", "another-machine")  # recent: may still be running there
    study.ask()  # asked, its process not recorded yet (or killed in between): recent
    assert fail_stale_trials(study, 300.0) == [0]
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "RUNNING", "RUNNING", "RUNNING"]
    monkeypatch.setattr("autotune.search.STALE_UNCLAIMED_S", -1.0)
    assert fail_stale_trials(study, 300.0) == [3]  # never claimed, and old enough
    assert study.trials[0].user_attrs["status"] == "stale"


@pytest.mark.slow
def test_sigkill_of_a_real_run_then_resume(tmp_path):
    """kill -9 of ``autotune run`` mid-search: no worker survives it, and the resumed run
    leaves no RUNNING trial and writes a plan."""
    import optuna

    problem = tmp_path / "kalman.toml"
    problem.write_text(SOURCE)
    args = [sys.executable, "-m", "autotune.cli", "run", "--problem", str(problem), "--n",
            "40", "--trials", "6", "--timeout", "300", "--target", "numba-t1", "--out",
            str(tmp_path / "res"), "--quiet"]
    mark = f"AUTOTUNE_TEST_MARK={tmp_path}"
    # the worker hangs in its second measurement, so the kill certainly lands mid-search
    env = {**os.environ, "AUTOTUNE_TEST_MARK": str(tmp_path), "AUTOTUNE_FAULT": "measure:stall@2",
           "AUTOTUNE_FAULT_ONCE": str(tmp_path / "stalled")}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    db = tmp_path / "res" / "autotune.db"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (tmp_path / "stalled").exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before the stall: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.2)
    assert (tmp_path / "stalled").exists(), "the worker never reached its second measurement"
    before = _marked(mark)
    assert proc.pid in before and len(before) >= 2, "the run and its worker should be running"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    deadline = time.monotonic() + 10
    while _marked(mark) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _marked(mark), "a worker outlived the killed run"
    resumed = {k: v for k, v in os.environ.items() if not k.startswith("AUTOTUNE_FAULT")}
    out = subprocess.run(args, capture_output=True, text=True, timeout=600, env=resumed)
    assert out.returncode == 0, out.stderr[-2000:]
    (name,) = optuna.get_all_study_names(f"sqlite:///{db}")
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    assert not [t for t in study.trials if t.state.name == "RUNNING"]
    assert list((tmp_path / "res").glob("plan-*.json"))


def _marked(mark: str) -> list[int]:
    """Live processes whose environment holds ``mark`` (the run's and its children's)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or not _alive(int(d.name)):
            continue
        try:
            if mark.encode() in (d / "environ").read_bytes().split(b"\0"):
                found.append(int(d.name))
        except OSError:
            continue
    return found
