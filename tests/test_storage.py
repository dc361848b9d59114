"""Shared studies (autotune.storage): processes started at the same instant on one fresh
SQLite file or one fresh PostgreSQL database, under CPU load, prepare one study and run
trials with no failure, no lost or duplicated trial and every named point enqueued once.

The PostgreSQL server is started by the test (initdb + pg_ctl on loopback, a free port). It
is skipped where PostgreSQL is not installed, except in CI (``CI`` set), where that fails:
``.ci/run`` installs the server first."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from autotune.errors import AutotuneError
from autotune.storage import is_retryable, open_storage, prepare, retrying, storage_lock

TESTS = Path(__file__).resolve().parent
DIMS = {"n": 60, "k": 30}
PROCESSES = 3
TRIALS_EACH = 6
NAMED = ["flop-optimal", "naive"]  # seed-2x2 is outside the narrowed space


def _problem():
    """The Kalman filter, its space narrowed to what derives in milliseconds."""
    from autotune.spec import parse_problem

    text = TESTS.parent.joinpath("search_spaces", "kalman.toml").read_text()
    text = text[: text.index("[search]")] + """[search]
blocks = { n = [1], k = [1] }
cut = { n = ["even"], k = ["even"] }
order = ["optimal", "left", "right"]
"""
    return parse_problem(text, origin="kalman-storage-test.toml")


def _fake_value(params: dict) -> float:
    """A fast, deterministic 'measurement' of a point."""
    return 1.0 + (sum(map(ord, repr(sorted(params.items())))) % 997) / 1000.0


def _worker_main(url: str, out: str, ident: int, ready: str, go: str, result: str) -> None:
    """One process: wait for the start signal, prepare the study (creating the schema, the
    study and the named points if nobody has yet), then ask/tell TRIALS_EACH trials with the
    fake measurement; write the trials it ran to ``result``."""
    import optuna

    from autotune.search import SearchConfig, prepare_study, space_for, study_name

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    problem = _problem()
    config = SearchConfig(trials=PROCESSES * TRIALS_EACH, targets=("numba-t1",), out=Path(out),
                          storage=url)
    space = space_for(problem, DIMS, config.targets)
    dist = {k: optuna.distributions.CategoricalDistribution(v) for k, v in space.items()}
    Path(ready).touch()
    deadline = time.monotonic() + 120
    while not Path(go).exists():  # the barrier: every process starts at the same instant
        if time.monotonic() > deadline:
            raise SystemExit("no start signal within 120 s")
        time.sleep(0.001)
    study = prepare_study(problem, DIMS, config, space,
                          optuna.samplers.RandomSampler(seed=ident), url,
                          study_name(problem, DIMS, config.dtype, config.heap))
    ran = []
    for _ in range(TRIALS_EACH):
        trial = study.ask(dist)
        trial.set_user_attr("worker", ident)
        value = _fake_value(trial.params)
        study.tell(trial, value)
        ran.append({"number": trial.number, "named": trial.user_attrs.get("named", ""),
                    "value": value})
    Path(result).write_text(json.dumps(ran))


_WORKER = ("import sys; sys.path.insert(0, sys.argv[1]); import test_storage as t; "
           "a = sys.argv[2:]; t._worker_main(a[0], a[1], int(a[2]), a[3], a[4], a[5])")


@pytest.fixture
def cpu_load() -> Iterator[None]:
    """Two busy-loop processes: the machine is loaded while the study is shared."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait(30)


def _run_together(url: str, tmp: Path) -> list[list[dict]]:
    """PROCESSES workers, started at the same instant; each must exit 0 (its stderr is in
    the failure message otherwise). Returns the trials each ran."""
    go = tmp / "go"
    procs = []
    for i in range(PROCESSES):
        err = open(tmp / f"worker{i}.err", "w+")  # noqa: SIM115 - closed below
        cmd = [sys.executable, "-c", _WORKER, str(TESTS), url, str(tmp), str(i),
               str(tmp / f"ready{i}"), str(go), str(tmp / f"result{i}.json")]
        procs.append((subprocess.Popen(cmd, stdout=err, stderr=subprocess.STDOUT), err))
    try:
        deadline = time.monotonic() + 120
        while not all((tmp / f"ready{i}").exists() for i in range(PROCESSES)):
            dead = [i for i, (p, _) in enumerate(procs) if p.poll() is not None]
            assert not dead, f"worker(s) {dead} died before the start:\n" + _errors(procs)
            assert time.monotonic() < deadline, "workers not ready within 120 s"
            time.sleep(0.01)
        go.touch()
        for p, _ in procs:
            p.wait(300)
        failed = [i for i, (p, _) in enumerate(procs) if p.returncode != 0]
        assert not failed, (f"worker(s) {failed} failed (exit codes "
                            f"{[p.returncode for p, _ in procs]}):\n" + _errors(procs))
    finally:
        for p, err in procs:
            if p.poll() is None:
                p.kill()
                p.wait(30)
            err.close()
    return [json.loads((tmp / f"result{i}.json").read_text()) for i in range(PROCESSES)]


def _errors(procs) -> str:
    out = []
    for i, (_, err) in enumerate(procs):
        err.flush()
        err.seek(0)
        text = err.read().strip()
        if text:
            out.append(f"--- worker {i}:\n{text[-4000:]}")
    return "\n".join(out)


def _check_shared_study(url: str, ran: list[list[dict]]) -> None:
    """No lost, duplicated or extra trial; the named points enqueued and run exactly once;
    nothing left RUNNING or WAITING; every told value stored."""
    import optuna

    from autotune.search import study_name

    problem = _problem()
    name = study_name(problem, DIMS, "float64", "retain")
    storage = open_storage(url)
    assert optuna.study.get_all_study_names(storage) == [name]  # created once
    trials = optuna.load_study(study_name=name, storage=storage).trials
    numbers = [r["number"] for rs in ran for r in rs]
    assert len(numbers) == PROCESSES * TRIALS_EACH
    assert len(set(numbers)) == len(numbers), f"a trial ran twice: {sorted(numbers)}"
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # numbered once each
    assert sorted(numbers) == [t.number for t in trials]  # none lost, none extra
    assert {t.state.name for t in trials} == {"COMPLETE"}  # none RUNNING or WAITING
    by_number = {t.number: t for t in trials}
    for i, rs in enumerate(ran):
        for r in rs:
            t = by_number[r["number"]]
            assert t.user_attrs["worker"] == i and t.value == r["value"]
    assert sorted(t.user_attrs["named"] for t in trials if t.user_attrs.get("named")) == NAMED
    assert sorted(r["named"] for rs in ran for r in rs if r["named"]) == NAMED


@pytest.mark.slow
def test_three_processes_one_sqlite_study(tmp_path, cpu_load):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    ran = _run_together(url, tmp_path)
    _check_shared_study(url, ran)


@pytest.mark.slow
def test_three_processes_one_postgresql_study(postgres_db, tmp_path, cpu_load):
    ran = _run_together(postgres_db, tmp_path)
    _check_shared_study(postgres_db, ran)


# --- the pieces ---------------------------------------------------------------------------


def test_sqlite_transactions_take_the_write_lock_first(tmp_path):
    """The cause of the SQLite flake: Python's driver began a transaction only before the
    UPDATE, so 'read the trial, check it is WAITING, set it RUNNING' was not atomic and two
    processes could pop one enqueued trial. Every transaction now begins IMMEDIATE."""
    import optuna
    from sqlalchemy import event

    study = prepare(f"sqlite:///{tmp_path / 'db.sqlite'}", "s", points=[({"x": 1}, {})])
    backend = study._storage._backend
    statements: list[str] = []
    backend.engine.dispose()

    @event.listens_for(backend.engine, "connect")
    def _trace(dbapi_connection, record):
        dbapi_connection.set_trace_callback(lambda s: statements.append(s.split()[0].upper()))

    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))[0]
    running = optuna.trial.TrialState.RUNNING
    statements.clear()
    assert backend.set_trial_state_values(waiting._trial_id, running)
    assert statements[:3] == ["BEGIN", "SELECT", "UPDATE"], statements
    # a second process (another engine on the file) cannot pop it again
    other = open_storage(f"sqlite:///{tmp_path / 'db.sqlite'}")
    assert not other.set_trial_state_values(waiting._trial_id, running)


def test_prepare_enqueues_each_point_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    points = [({"x": 1}, {"named": "a"}), ({"x": 2}, {}), ({"x": 2}, {})]
    prepare(url, "s", points=points)
    # again, and a named point under other params (a space that changed): still once
    study = prepare(url, "s", points=[*points, ({"x": 3}, {"named": "a"})])
    trials = study.get_trials()
    assert [t.system_attrs["fixed_params"] for t in trials] == [{"x": 1}, {"x": 2}]
    assert [t.user_attrs.get("named") for t in trials] == ["a", None]
    # a measured point counts as there
    import optuna

    dist = {"x": optuna.distributions.CategoricalDistribution([1, 2, 3, 4])}
    study.add_trial(optuna.trial.create_trial(params={"x": 4}, distributions=dist, value=1.0))
    study = prepare(url, "s", points=[({"x": 4}, {})])
    assert len(study.get_trials()) == 3


def _locked_sqlite() -> sqlite3.OperationalError:
    return sqlite3.OperationalError("database is locked")


def test_retry_only_what_the_database_calls_retryable():
    import optuna
    import sqlalchemy

    def wrapped(orig: BaseException) -> Exception:
        try:
            try:
                raise sqlalchemy.exc.OperationalError("COMMIT", {}, orig)
            except sqlalchemy.exc.OperationalError as e:
                raise optuna.exceptions.StorageInternalError("commit failed") from e
        except optuna.exceptions.StorageInternalError as outer:
            return outer

    class PGError(Exception):
        pgcode = "40001"

    assert is_retryable(wrapped(_locked_sqlite()))
    assert is_retryable(wrapped(PGError()))
    assert not is_retryable(wrapped(sqlite3.OperationalError("no such table: trials")))
    assert not is_retryable(ValueError("database is locked"))  # only the database's word

    calls = []

    def twice_locked():
        calls.append(1)
        if len(calls) <= 2:
            raise wrapped(_locked_sqlite())
        return "ok"

    assert retrying("x", twice_locked) == "ok" and len(calls) == 3

    def bad():
        calls.append(1)
        raise wrapped(sqlite3.OperationalError("no such table: trials"))

    calls.clear()
    with pytest.raises(optuna.exceptions.StorageInternalError):
        retrying("x", bad)
    assert len(calls) == 1  # not retried

    def always():
        raise wrapped(_locked_sqlite())

    with pytest.raises(AutotuneError, match="gave up after 3 attempts"):
        retrying("preparing", always, attempts=3)


def test_storage_lock_excludes_other_processes(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    code = ("import sys; from autotune.storage import storage_lock\n"
            "try:\n"
            "    with storage_lock(sys.argv[1], timeout=0.3):\n"
            "        print('got it')\n"
            "except Exception as e:\n"
            "    print(type(e).__name__)\n")
    with storage_lock(url), storage_lock(url):  # reentrant in this process
        held = subprocess.run([sys.executable, "-c", code, url], capture_output=True,
                              text=True, timeout=120)
    free = subprocess.run([sys.executable, "-c", code, url], capture_output=True, text=True,
                          timeout=120)
    assert held.stdout.strip() == "AutotuneError", held.stderr
    assert free.stdout.strip() == "got it", free.stderr
    # threads of one process queue on it too
    order = []

    def second():
        with storage_lock(url):
            order.append("second")

    with storage_lock(url):
        th = threading.Thread(target=second)
        th.start()
        time.sleep(0.2)
        order.append("first")
    th.join(10)
    assert order == ["first", "second"]


# --- a PostgreSQL server for the tests ----------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unavailable(why: str) -> None:
    """Skip outside CI; in CI, where .ci/run installs the server, fail."""
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL is required in CI: {why}", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL server on 127.0.0.1 and a free port, for this module; yields
    the URL of its server (no database)."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        _unavailable("psycopg2 is not installed (pip install psycopg2-binary)")
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                  key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                  else 0)
    initdb = bins[-1] if bins else shutil.which("initdb")
    if initdb is None:
        _unavailable("no PostgreSQL server (initdb) here: apt-get install postgresql")
    bindir = Path(initdb).parent
    user = None
    if os.geteuid() == 0:  # the server refuses to run as root: run it as 'postgres'
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root and there is no 'postgres' user to run the server")
    base = Path(tempfile.mkdtemp(prefix="autotune-pg-"))
    data, sock = base / "data", base / "sock"
    data.mkdir()
    sock.mkdir()
    if user is not None:
        for d in (base, data, sock):
            os.chown(d, user.pw_uid, user.pw_gid)

    def as_user(cmd: list[str]) -> list[str]:
        return cmd if user is None else ["runuser", "-u", "postgres", "--", *cmd]

    port = _free_port()
    started = False
    try:
        try:
            subprocess.run(as_user([str(bindir / "initdb"), "-D", str(data), "-A", "trust",
                                    "-U", "autotune", "--no-sync"]),
                           check=True, capture_output=True, text=True, timeout=180)
            subprocess.run(as_user([str(bindir / "pg_ctl"), "-D", str(data), "-w", "-t", "120",
                                    "-l", str(base / "log"), "-o",
                                    f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 "
                                    "-c fsync=off", "start"]),
                           check=True, capture_output=True, text=True, timeout=180)
            started = True
        except (subprocess.SubprocessError, OSError) as exc:
            detail = getattr(exc, "stderr", "") or ""
            log = base / "log"
            if log.exists():
                detail += log.read_text()[-2000:]
            _unavailable(f"could not start a PostgreSQL server: {exc}\n{detail}")
        yield f"postgresql+psycopg2://autotune@127.0.0.1:{port}"
    finally:
        if started:
            subprocess.run(as_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                                    "stop"]), capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_db(postgres_server: str) -> str:
    """A fresh, empty database on the test server: its URL."""
    import psycopg2

    name = f"autotune_{uuid.uuid4().hex[:12]}"
    port = int(postgres_server.rsplit(":", 1)[1])
    conn = psycopg2.connect(host="127.0.0.1", port=port, user="autotune", dbname="postgres")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name}")
    finally:
        conn.close()
    return f"{postgres_server}/{name}"


def test_postgresql_schema_and_lock(postgres_db):
    """open_storage on a fresh database creates the schema (under the advisory lock), and
    the lock excludes another session while held."""
    import optuna

    storage = open_storage(postgres_db)
    assert optuna.study.get_all_study_names(storage) == []
    code = ("import sys; from autotune.storage import storage_lock\n"
            "try:\n"
            "    with storage_lock(sys.argv[1], timeout=0.5):\n"
            "        print('got it')\n"
            "except Exception as e:\n"
            "    print(type(e).__name__)\n")
    with storage_lock(postgres_db):
        held = subprocess.run([sys.executable, "-c", code, postgres_db], capture_output=True,
                              text=True, timeout=120)
    assert held.stdout.strip() == "AutotuneError", held.stderr
    free = subprocess.run([sys.executable, "-c", code, postgres_db], capture_output=True,
                          text=True, timeout=120)
    assert free.stdout.strip() == "got it", free.stderr
