"""The search logic with a fake, noiseless measurer (no machine needed), and the shared
storages: two workers on one SQLite study, and a real PostgreSQL server."""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from autotune.derivation import derive
from autotune.measure import Job, Measurement
from autotune.search import SearchConfig, study_name, tune

DIMS = {"n": 60, "k": 30}
# the Kalman filter with its space narrowed to what derives in milliseconds (no blocking):
# these tests are about the search, not about derivation
SOURCE = Path(__file__).parents[1].joinpath("search_spaces", "kalman.toml").read_text()
SOURCE = SOURCE[: SOURCE.index("[search]")] + """[search]
blocks = { n = [1], k = [1] }
cut = { n = ["even"], k = ["even"] }
order = ["optimal", "left", "right"]
"""


def kalman():
    from autotune.spec import parse_problem

    return parse_problem(SOURCE, origin="kalman-test.toml")


def fake_measure(job: Job, timeout: float) -> Measurement:
    """Time = FLOPs at 1 GFLOP/s, 2 threads twice as fast; LU solves 'fail to compile'."""
    p = kalman()
    prog = derive(p, job.knobs, job.dims)
    if job.knobs.get("solver.S") == "lu":
        return Measurement("compile_error", job.target, message="fake: no LU here")
    t = prog.flops(job.dims) / 1e9
    if job.target.endswith("t2"):
        t /= 2
    return Measurement("ok", job.target, (t, t * 1.01, t * 0.99), 0.1, {"newmu": 1e-16},
                       1e-12, prog.flops(job.dims))


def _config(tmp_path, **kw):
    base = dict(trials=12, timeout=60, targets=("numba-t2", "numba-t1"), out=tmp_path,
                seed=1, low_fidelity=False)
    base.update(kw)
    return SearchConfig(**base)


def test_named_points_first_and_failures_recorded(tmp_path):
    import optuna

    p = kalman()
    result = tune(p, DIMS, _config(tmp_path), fake_measure)
    study = optuna.load_study(study_name=result.study_name, storage=result.storage)
    named = [t.user_attrs.get("named") for t in study.trials[:3]]
    assert named[:2] == ["naive", "flop-optimal"]  # seed-2x2 is outside this narrowed space
    states = {t.state.name for t in study.trials}
    assert "COMPLETE" in states
    fails = [t for t in study.trials if t.state.name == "FAIL"]
    for t in fails:
        assert t.user_attrs["status"] in ("compile_error", "invalid")
        assert t.user_attrs["message"]
    # the winner is at least as fast as the cost model's best on the fastest target
    best = result.best.measurement.median
    flop_opt = derive(p, result.baselines["flop-optimal"].knobs, DIMS).flops(DIMS) / 1e9 / 2
    assert best <= flop_opt * 1.0001
    assert set(result.baselines) == {"naive", "seed-2x2", "flop-optimal", "numpy", "pytensor"}
    assert result.baselines["numpy"].variant == "numpy"
    assert result.baselines["pytensor"].measurement.ok


def test_cost_model_prunes_hopeless_candidates(tmp_path):
    import optuna

    p = kalman()
    rates = []

    def rate(n, target, dtype="float64"):
        rates.append((n, target, dtype))
        return 4e9

    result = tune(p, DIMS, _config(tmp_path, trials=16), fake_measure, dgemm_rate=rate)
    study = optuna.load_study(study_name=result.study_name, storage=result.storage)
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert any(t.user_attrs["message"].startswith("cost model") for t in pruned)
    for t in pruned:  # the prediction is optimistic: a pruned candidate could not have won
        if t.user_attrs["message"].startswith("cost model"):
            assert t.user_attrs["predicted_s"] > 2 * result.best.measurement.median * 0.999
    # the GEMM rate is timed in every final round, on every target a contender runs on
    assert len(rates) >= result.rounds >= 5
    assert {r[1] for r in rates} <= {"numba-t2", "numba-t1"}
    assert all(r[0] == max(DIMS.values()) and r[2] == "float64" for r in rates)
    assert result.dgemm_flops == 4e9
    assert result.limit_ratio is not None and result.limit_ratio >= 1.0
    assert result.fewest_flops == min(e.measurement.flops for e in result.entries.values()
                                      if e.measurement.ok and e.variant == "candidate")


@pytest.mark.parametrize("recovers", [True, False], ids=["re-measured", "never-fixed"])
def test_no_impossible_limit_figure(tmp_path, recovers):
    """A GEMM timed while other work ran puts the limit above the plan's own time: the rate
    is re-measured, and a figure below the limit is never reported."""
    p = kalman()
    calls = []

    def rate(n, target, dtype="float64"):
        calls.append(target)
        if recovers and len(calls) > 20:  # the re-measurements after the final round
            return 4e9
        return 1e8  # far too slow: every plan would beat its own limit

    result = tune(p, DIMS, _config(tmp_path, trials=6), fake_measure, dgemm_rate=rate)
    if recovers and len(calls) > 20:
        assert result.limit_ratio is not None and result.limit_ratio >= 1.0
    else:
        assert result.limit_ratio is None
        assert "not reported" in result.limit_note


def test_float32_uses_the_sgemm_rate(tmp_path):
    p = kalman()
    seen = set()

    def rate(n, target, dtype="float64"):
        seen.add(dtype)
        return 4e9

    tune(p, DIMS, _config(tmp_path, trials=4, dtype="float32"), fake_measure, dgemm_rate=rate)
    assert seen == {"float32"}


def test_resume_counts_the_trials_the_study_has(tmp_path):
    """--trials is the study's size: a resumed run measures only what is missing."""
    import optuna

    p = kalman()
    first = tune(p, DIMS, _config(tmp_path, trials=5), fake_measure)
    n1 = len(_measured(optuna.load_study(study_name=first.study_name,
                                         storage=first.storage).trials))
    assert n1 == 5
    again = tune(p, DIMS, _config(tmp_path, trials=5), fake_measure)
    study = optuna.load_study(study_name=again.study_name, storage=again.storage)
    assert len(_measured(study.trials)) == 5  # 5 done, 0 to go
    more = tune(p, DIMS, _config(tmp_path, trials=8), fake_measure)
    study = optuna.load_study(study_name=more.study_name, storage=more.storage)
    assert len(_measured(study.trials)) == 8  # 5 done, 3 to go
    assert more.best.measurement.median <= first.best.measurement.median
    assert not [t for t in study.trials if t.state.name == "RUNNING"]


def _measured(trials):
    """Trials the budget paid for (proposals of already measured points are answered from the
    study and marked 'duplicate')."""
    return [t for t in trials if t.user_attrs.get("status") != "duplicate"]


@pytest.mark.parametrize("phase", ["search", "final round"])
def test_interrupt_still_returns_best(tmp_path, phase):
    """Ctrl-C during the search or during the final round: the best measured so far."""
    p = kalman()
    calls = {"n": 0, "final": 0}

    def interrupting(job, timeout):
        calls["n"] += 1
        final = job.policy.max_repeats == 1
        calls["final"] += final
        if (phase == "search" and calls["n"] == 3) or (phase != "search" and
                                                       calls["final"] == 2):
            raise KeyboardInterrupt
        return fake_measure(job, timeout)

    import optuna

    result = tune(p, DIMS, _config(tmp_path), interrupting)
    assert result.interrupted
    assert result.best.measurement.ok
    # every measured contender kept samples: re-timed ones or, after the interrupt, its
    # search ones (a baseline first timed in an interrupted final round may have none)
    assert all(result.final[k] for k in result.final if result.entries[k].measurement.samples)
    # the choice: no contender is significantly faster than the winner
    from autotune.stats import significantly_faster

    won = result.final[result.best.key]
    assert not any(significantly_faster(v, won) for k, v in result.final.items()
                   if v and result.entries[k].variant == "candidate")
    # the trial in flight when Ctrl-C came is recorded as interrupted, never left RUNNING
    study = optuna.load_study(study_name=result.study_name, storage=result.storage)
    assert not [t for t in study.trials if t.state.name == "RUNNING"]
    if phase == "search":
        assert [t.user_attrs.get("status") for t in study.trials].count("interrupted") == 1


# the kernels for an SPD matrix, each with a made-up time
TIMES = {"cholesky_split": 1.0, "cholesky": 2.0, "solve_pos": 3.0, "cholesky_inverse": 3.5,
         "lu": 4.0, "inverse": 5.0}


def test_exhaustive_for_small_spaces(tmp_path):
    from autotune.spec import parse_problem

    q = parse_problem(
        """
[dims]
n = 8
[inputs]
A = { shape = ["n", "n"], properties = ["positive_definite"] }
b = { shape = ["n", 1] }
[outputs]
x = "inv(A)*b"
[search]
blocks = { n = [1] }
cut = { n = ["even"] }
order = ["optimal"]
cse = [true]
syrk = [true]
symprod = [false]
mirror = [true]
""",
        origin="small.toml",
    )

    calls = []

    def measure(job, timeout):
        if job.policy.max_repeats > 1:  # the search phase (the final round takes 1 sample)
            calls.append(job.knobs["solver.inv1"])
        t = TIMES[job.knobs["solver.inv1"]]
        return Measurement("ok", job.target, (t,), 0.0, {}, 1.0, 1.0)

    result = tune(q, {"n": 8}, _config(tmp_path, trials=20, targets=("numba-t1",)), measure)
    import optuna

    study = optuna.load_study(study_name=result.study_name, storage=result.storage)
    seen = {t.params["solver.inv1"] for t in study.trials}
    assert seen == set(TIMES)
    assert result.best.knobs["solver.inv1"] == "cholesky_split"
    # with the space exhausted, the sampler's repeats are answered from the study, not
    # measured again (the named points are measured once more each, on purpose)
    assert len(calls) <= len(TIMES) + 2
    dup = [t for t in study.trials if t.user_attrs.get("status") == "duplicate"]
    assert dup and all(t.value == TIMES[t.params["solver.inv1"]] for t in dup
                       if t.state.name == "COMPLETE")
    # a repeat of a pruned point is answered as pruned, without spending the budget
    pruned = {t.params["solver.inv1"] for t in study.trials
              if t.state.name == "PRUNED" and t.user_attrs.get("status") != "duplicate"}
    for t in dup:
        if t.params["solver.inv1"] in pruned:
            assert t.state.name == "PRUNED"
    measured = [t for t in study.trials if t.user_attrs.get("status") != "duplicate"]
    assert len({t.params["solver.inv1"] for t in measured}) == len(measured)


def _worker(storage: str, out: str, seed: int) -> None:
    p = kalman()
    tune(p, DIMS, SearchConfig(trials=8, timeout=600, targets=("numba-t1",), out=Path(out),
                               seed=seed, storage=storage, low_fidelity=False,
                               final_round_top=0, enqueue=False), fake_measure, final=False)


def _two_workers(storage: str, out: Path) -> list:
    import optuna

    from autotune.search import prepare_study

    prepare_study(kalman(), DIMS, SearchConfig(trials=4, targets=("numba-t1",), out=out,
                                               storage=storage))
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(storage, str(out), s)) for s in (1, 2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(600)
        assert proc.exitcode == 0, f"a worker failed (exit code {proc.exitcode})"
    p = kalman()
    study = optuna.load_study(study_name=study_name(p, DIMS, "float64", "retain"),
                              storage=storage)
    return study.trials


def test_two_workers_share_one_sqlite_study(tmp_path):
    """Two processes tune one fresh SQLite study through ``tune`` (the search only, as the
    extra processes of ``--jobs`` do), started at the same instant, each enqueuing the named
    points: both exit 0 (a failure shows the worker's output), the study has the budget's
    trials, each numbered once, the named points enqueued and run once, none left RUNNING.

    Its old flake ('a worker failed (exit code 1)'): both workers popped the same enqueued
    named point (SQLite's driver began the transaction after Optuna's WAITING check), and
    the second to finish it died with UpdateFinishedTrialError. See autotune.storage."""
    import sys
    import textwrap

    import optuna

    from autotune.search import open_storage

    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    code = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        sys.path.insert(0, sys.argv[1])
        from test_search import DIMS, fake_measure, kalman
        from autotune.search import SearchConfig, tune
        storage, out, seed = sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
        p = kalman()
        (out / f"ready{seed}").touch()
        deadline = time.monotonic() + 120
        while not (out / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.001)
        config = SearchConfig(trials=8, timeout=600, targets=("numba-t1",), out=out,
                              seed=seed, storage=storage, low_fidelity=False,
                              final_round_top=0)
        tune(p, DIMS, config, fake_measure, final=False)
    """)
    procs = []
    for seed in (1, 2):
        log = (tmp_path / f"worker{seed}.log").open("w")
        procs.append((subprocess.Popen([sys.executable, "-c", code, str(Path(__file__).parent),
                                        storage, str(tmp_path), str(seed)],
                                       stdout=log, stderr=subprocess.STDOUT), log))
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"ready{s}").exists() for s in (1, 2)):
            if time.monotonic() > deadline or any(p.poll() is not None for p, _ in procs):
                break
            time.sleep(0.01)
        (tmp_path / "go").touch()  # both start now
        for p, _ in procs:
            p.wait(600)
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
                p.wait(30)
            log.close()
    for seed, (p, _) in zip((1, 2), procs, strict=True):
        out = (tmp_path / f"worker{seed}.log").read_text()[-6000:]
        assert p.returncode == 0, f"worker {seed} failed (exit code {p.returncode}):\n{out}"
    study = optuna.load_study(study_name=study_name(kalman(), DIMS, "float64", "retain"),
                              storage=open_storage(storage))
    trials = study.trials
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # each numbered once
    assert not [t.number for t in trials if t.state.name in ("RUNNING", "WAITING")]
    # --trials is the study's size; each worker counts before it asks, so the last two
    # asks may cross: one trial over at most
    assert 8 <= len(_measured(trials)) <= 9
    named = [t.user_attrs.get("named") for t in trials if t.user_attrs.get("named")]
    assert sorted(named) == ["flop-optimal", "naive"]  # enqueued once, run once


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _skip_or_fail(why: str) -> None:
    """CI must run the PostgreSQL tests (.ci/run installs the server): fail there."""
    if os.environ.get("CI"):
        pytest.fail(f"CI: {why}")
    pytest.skip(why)


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server on loopback, started by the test."""
    pytest.importorskip("psycopg2", reason="psycopg2 is needed for PostgreSQL storage")
    bindir = None
    for cand in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (cand / "initdb").exists():
            bindir = cand
            break
    if bindir is None:
        _skip_or_fail("no PostgreSQL server binaries (apt-get install postgresql)")
    user = None
    if os.geteuid() == 0:  # postgres refuses to run as root
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server")
    data = Path(tempfile.mkdtemp(prefix="autotune-pg-"))
    sock = Path(tempfile.mkdtemp(prefix="autotune-pgsock-"))
    if user is not None:
        os.chown(data, user.pw_uid, user.pw_gid)
        os.chown(sock, user.pw_uid, user.pw_gid)

    def as_user(cmd):
        if user is None:
            return cmd
        return ["runuser", "-u", "postgres", "--", *cmd]

    port = _free_port()
    try:
        subprocess.run(as_user([str(bindir / "initdb"), "-D", str(data), "-A", "trust",
                                "-U", "autotune"]), check=True, capture_output=True, timeout=120)
        subprocess.run(as_user([str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l",
                                str(data / "log"), "-o",
                                f"-p {port} -k {sock} -c listen_addresses=127.0.0.1", "start"]),
                       check=True, capture_output=True, timeout=120)
    except (subprocess.SubprocessError, OSError) as exc:
        shutil.rmtree(data, ignore_errors=True)
        _skip_or_fail(f"could not start a PostgreSQL server: {exc}")
    try:
        yield f"postgresql+psycopg2://autotune@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(as_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                                "stop"]), capture_output=True, timeout=60)
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(sock, ignore_errors=True)


def test_two_workers_share_one_postgresql_study(postgres_url, tmp_path):
    trials = _measured(_two_workers(postgres_url, tmp_path))
    # --trials is the study's size (8): each worker counts before it asks, so the last two
    # asks may cross: one trial over at most
    assert 8 <= len(trials) <= 9
    assert all(t.state.name in ("COMPLETE", "FAIL", "PRUNED") for t in trials)
    assert any(math.isfinite(t.value) for t in trials if t.value is not None)
    _ = time


def test_study_is_per_heap_policy():
    """Trials measured under another heap policy are another environment: another study."""
    p = kalman()
    names = {study_name(p, DIMS, "float64", h) for h in ("retain", "system")}
    assert len(names) == 2
    assert study_name(p, DIMS, "float64") == study_name(p, DIMS, "float64", "system")
    assert SearchConfig().heap == "retain"


def test_the_budget_bounds_the_whole_run(tmp_path):
    """--timeout covers the final round too: the search leaves it its time, and no
    measurement may run past what is left of the budget (10 s at least)."""
    p = kalman()
    now = [0.0]
    limits = []

    def clock():
        return now[0]

    def slow(job, timeout):
        limits.append((timeout, now[0]))
        now[0] += 2.0  # every measurement takes 2 s of the budget
        return fake_measure(job, timeout)

    config = _config(tmp_path, trials=200, timeout=120, candidate_timeout=300)
    result = tune(p, DIMS, config, slow, clock=clock)
    assert result.rounds >= 1
    for timeout, at in limits:
        assert timeout <= max(10.0, 120 - at) + 1e-9
    # the search stopped early enough for the final round to finish near the budget
    assert now[0] <= 120 + 2.0 * len(result.final)
