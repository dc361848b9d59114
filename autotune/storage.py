"""Study storage that several processes can share from their first instant.

Optuna's :class:`~optuna.storages.RDBStorage` creates its tables on first connect and checks
each row before it writes, which races when processes start together:

* PostgreSQL: two first connects both run ``CREATE TABLE`` for a missing table, and the
  second dies on the catalog's unique index (``UniqueViolation
  "pg_type_typname_nsp_index"``); on SQLite the same race gives "table studies already
  exists" or ``UNIQUE constraint failed: alembic_version.version_num``.
* SQLite: Python's driver opens a transaction only before a write, so Optuna's "read the
  trial, check it is still WAITING, set it RUNNING" is not atomic: two processes can pop the
  same enqueued trial, and the one that finishes second fails with ``UpdateFinishedTrialError``
  (or the late ``RUNNING`` overwrites the other's finished trial).
* Two processes enqueuing the same named points each see none there and both enqueue them.

So here: the schema is created, and a study created or loaded and its points enqueued, under
one lock per database (PostgreSQL: an advisory lock; MySQL: ``GET_LOCK``; SQLite: an
``fcntl`` lock on a file next to the database), points already in the study are not enqueued
again, and SQLite transactions start with ``BEGIN IMMEDIATE`` (the write lock first, so a
read-check-write is atomic and waits for the busy timeout instead of failing). Operations the
database reports as retryable (a serialization failure, a deadlock, "database is locked") are
retried a bounded number of times; then an :class:`~autotune.errors.AutotuneError` says so.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import optuna
import sqlalchemy
from sqlalchemy import event

from .errors import AutotuneError

__all__ = ["open_storage", "prepare", "storage_lock", "is_retryable", "retrying",
           "SQLITE_TIMEOUT", "LOCK_TIMEOUT"]

SQLITE_TIMEOUT = 60.0  # seconds a SQLite statement waits for another process's write lock
LOCK_TIMEOUT = 300.0  # seconds to wait for the storage lock (schema, study creation)
ATTEMPTS = 6  # tries of an operation the database says may be retried

# PostgreSQL SQLSTATEs that mean "run the transaction again": serialization_failure,
# deadlock_detected; MySQL: ER_LOCK_WAIT_TIMEOUT, ER_LOCK_DEADLOCK
_PG_RETRY = {"40001", "40P01"}
_MYSQL_RETRY = {1205, 1213}

T = TypeVar("T")
Point = tuple[Mapping[str, Any], Mapping[str, Any]]  # (params, user_attrs) of an enqueued trial


def _backend(url: str) -> str:
    return sqlalchemy.engine.make_url(url).get_backend_name()


def _sqlite_path(url: str) -> Path | None:
    db = sqlalchemy.engine.make_url(url).database
    if not db or db == ":memory:" or db.startswith("file:"):
        return None  # in memory (one process), or a URI filename: no file lock
    return Path(db).resolve()


# --- the lock -----------------------------------------------------------------------------

_guard = threading.Lock()
_local: dict[str, threading.RLock] = {}  # one per database: threads of this process queue
_depth: dict[str, int] = {}  # how deep this process holds it (the outer holder has the lock)


def _lock_id(url: str) -> str:
    if _backend(url) == "sqlite":
        path = _sqlite_path(url)
        return f"sqlite:{path}" if path else ""
    u = sqlalchemy.engine.make_url(url)
    return f"{u.get_backend_name()}://{u.host}:{u.port}/{u.database}"


@contextlib.contextmanager
def storage_lock(url: str, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the database's autotune lock: one holder across processes and threads; a holder
    may take it again (it is reentrant within a process). Without a lock primitive (SQLite in
    memory, other databases) it only serializes the threads of this process."""
    key = _lock_id(url)
    with _guard:
        local = _local.setdefault(key, threading.RLock())
    if not local.acquire(timeout=timeout):
        raise AutotuneError(f"the storage lock of {_safe(url)} was not free within "
                            f"{timeout:.0f} s (another thread holds it)")
    try:
        if _depth.get(key, 0):
            _depth[key] += 1
            try:
                yield
            finally:
                _depth[key] -= 1
            return
        with _process_lock(url, timeout):
            _depth[key] = 1
            try:
                yield
            finally:
                _depth[key] = 0
    finally:
        local.release()


@contextlib.contextmanager
def _process_lock(url: str, timeout: float) -> Iterator[None]:
    backend = _backend(url)
    if backend == "sqlite":
        path = _sqlite_path(url)
        if path is None:
            yield
            return
        with _file_lock(path.with_name(path.name + ".lock"), timeout):
            yield
    elif backend == "postgresql":
        with _pg_lock(url, timeout):
            yield
    elif backend in ("mysql", "mariadb"):
        with _mysql_lock(url, timeout):
            yield
    else:
        yield


@contextlib.contextmanager
def _file_lock(path: Path, timeout: float) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        # a read-only folder: the database there can only be read (SQLite writes its
        # journal next to it), and readers need no lock
        yield
        return
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise AutotuneError(
                        f"the storage lock {path} was held by another process for more than "
                        f"{timeout:.0f} s") from None
                time.sleep(0.02 + 0.03 * random.random())
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# the advisory-lock key (a signed 64-bit number, the same in every process)
_LOCK_KEY = int.from_bytes(hashlib.blake2b(b"autotune.storage", digest_size=8).digest(), "big",
                           signed=True)


def _connect_for_lock(url: str) -> tuple[Any, Any]:
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        return engine, engine.connect()
    except sqlalchemy.exc.OperationalError as exc:
        engine.dispose()
        raise AutotuneError(f"cannot connect to the study storage {_safe(url)}: "
                            f"{_first_line(exc)}") from exc


@contextlib.contextmanager
def _pg_lock(url: str, timeout: float) -> Iterator[None]:
    engine, conn = _connect_for_lock(url)
    try:
        # the advisory lock is the session's: this connection is held (in autocommit, so
        # it never sits in an open transaction) until the lock is released
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.exec_driver_sql(f"SET lock_timeout = {int(timeout * 1000)}")
        try:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": _LOCK_KEY})
        except sqlalchemy.exc.OperationalError as exc:
            if getattr(exc.orig, "pgcode", None) == "55P03":  # lock_not_available
                raise AutotuneError(f"the storage lock of {_safe(url)} was held by another "
                                    f"process for more than {timeout:.0f} s") from exc
            raise
        try:
            yield
        finally:
            with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_KEY})
    finally:
        conn.close()
        engine.dispose()


@contextlib.contextmanager
def _mysql_lock(url: str, timeout: float) -> Iterator[None]:
    engine, conn = _connect_for_lock(url)
    try:
        got = conn.execute(sqlalchemy.text("SELECT GET_LOCK('autotune.storage', :t)"),
                           {"t": int(timeout)}).scalar()
        if got != 1:
            raise AutotuneError(f"the storage lock of {_safe(url)} was held by another "
                                f"process for more than {timeout:.0f} s")
        try:
            yield
        finally:
            with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
                conn.execute(sqlalchemy.text("SELECT RELEASE_LOCK('autotune.storage')"))
    finally:
        conn.close()
        engine.dispose()


# --- retries ------------------------------------------------------------------------------


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__, getattr(e, "orig", None)]


def is_retryable(exc: BaseException) -> bool:
    """Whether the database said the failed operation may simply be run again: SQLite's
    "database is locked" (busy), PostgreSQL's serialization failure or deadlock, MySQL's lock
    wait timeout or deadlock. Optuna wraps these (``StorageInternalError``); the cause chain
    is searched."""
    for e in _chain(exc):
        if isinstance(e, sqlite3.OperationalError):
            msg = str(e).lower()
            if "locked" in msg or "busy" in msg:
                return True
        if getattr(e, "pgcode", None) in _PG_RETRY:
            return True
        args = getattr(e, "args", ())
        if type(e).__module__.startswith(("pymysql", "MySQLdb")) and args and \
                args[0] in _MYSQL_RETRY:
            return True
    return False


def retrying(what: str, fn: Callable[[], T], attempts: int = ATTEMPTS) -> T:
    """``fn()``, run again (after a short random backoff) while it fails with an error the
    database calls retryable; ``fn`` must be idempotent. After ``attempts`` tries, an
    AutotuneError names ``what`` and the database's last word."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if not is_retryable(exc):
                raise
            if i == attempts - 1:
                raise AutotuneError(
                    f"{what}: the database kept asking to retry ({_first_line(exc)}); gave up "
                    f"after {attempts} attempts") from exc
            time.sleep(min(2.0, 0.05 * 2 ** i) * (0.5 + random.random()))
    raise AssertionError("unreachable")


# --- the storage --------------------------------------------------------------------------


def _begin_immediate(engine: Any) -> None:
    """SQLite transactions take the write lock at BEGIN: a read-check-write (popping a
    WAITING trial, numbering a new one) is atomic across processes, and a writer waits for
    the busy timeout at BEGIN instead of failing when it upgrades a read lock."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # the driver begins nothing implicitly

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections made before the hooks (the schema check) are dropped


class SQLiteStorage(optuna.storages.RDBStorage):
    """RDBStorage whose SQLite transactions begin with ``BEGIN IMMEDIATE``."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        _begin_immediate(self.engine)

    def __setstate__(self, state: dict[Any, Any]) -> None:
        with storage_lock(state["url"]):
            super().__setstate__(state)
        _begin_immediate(self.engine)


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The Optuna storage for ``url`` (any RDB URL), its tables created (or checked) under the
    database's lock, so processes that connect first together do not race on the schema.
    SQLite waits up to 60 s for another process's write (the driver's default is 5 s) and
    begins every transaction with ``BEGIN IMMEDIATE``."""
    if _backend(url) == "sqlite":
        path = _sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

        def make() -> optuna.storages.RDBStorage:
            return SQLiteStorage(url, engine_kwargs={"connect_args": {"timeout": SQLITE_TIMEOUT}})
    else:

        def make() -> optuna.storages.RDBStorage:
            return optuna.storages.RDBStorage(url)

    with storage_lock(url):
        try:
            return retrying(f"opening the study storage {_safe(url)}", make)
        except sqlalchemy.exc.OperationalError as exc:
            raise AutotuneError(f"cannot open the study storage {_safe(url)}: "
                                f"{_first_line(exc)}") from exc


def _key(params: Mapping[str, Any]) -> str:
    return repr(sorted(params.items()))


def prepare(url: str, name: str, *, sampler: Any = None, direction: str = "minimize",
            points: Iterable[Point] = ()) -> optuna.Study:
    """Create study ``name`` in ``url``, or load it, and enqueue each of ``points`` (params and
    user attributes) that the study does not have yet, all under the database's lock: any
    number of processes may call this at once, and the study and each point exist once.
    A point is there already when a trial has its params (enqueued or measured), or, for a
    point with a ``named`` user attribute, a trial has that name."""
    points = [(dict(p), dict(a)) for p, a in points]
    with storage_lock(url):
        storage = open_storage(url)

        def run() -> optuna.Study:
            study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                        direction=direction, load_if_exists=True)
            if not points:
                return study
            have: set[str] = set()
            named: set[str] = set()
            for t in study.get_trials(deepcopy=False):
                have.add(_key(t.system_attrs.get("fixed_params", t.params)))
                if t.user_attrs.get("named"):
                    named.add(t.user_attrs["named"])
            for params, attrs in points:
                k = _key(params)
                if k in have or (attrs.get("named") and attrs["named"] in named):
                    continue
                study.enqueue_trial(params, user_attrs=attrs or None)
                have.add(k)
                if attrs.get("named"):
                    named.add(attrs["named"])
            return study

        # idempotent: a retry finds the study and the points a failed attempt left
        return retrying(f"preparing the study {name!r} in {_safe(url)}", run)


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a message helper never fails
        return "<storage>"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
