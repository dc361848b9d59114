"""Measuring one candidate: compile, verify against the float64 reference, time.

Candidates run in a worker process, so one that crashes, hangs or exhausts memory is a
recorded outcome, never the end of the run. The worker keeps the random instance and the
reference of each (problem, sizes, seed) in memory, so they are computed once per run.

A :class:`Measurement` is an immutable record: status, accuracy, compile time apart from
run time, and the raw samples (median and IQR derived from them), as pyperf keeps them.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import MeasurementError

__all__ = ["Measurement", "Job", "TimingPolicy", "Worker", "measure_in_process"]

STATUSES = ("ok", "inaccurate", "slow", "compile_error", "runtime_error", "timeout", "crashed")


@dataclass(frozen=True)
class TimingPolicy:
    warmup: int = 1
    min_repeats: int = 3
    max_repeats: int = 10
    max_seconds: float = 20.0  # stop repeating after this much timed work
    rel_iqr: float = 0.05  # "stable": IQR / median below this
    slow_factor: float = 2.0  # stop early when clearly slower than the best so far


@dataclass(frozen=True)
class Job:
    problem_source: str
    problem_origin: str
    dims: dict[str, int]
    knobs: dict[str, Any]
    target: str
    dtype: str = "float64"
    seed: int = 0
    policy: TimingPolicy = field(default_factory=TimingPolicy)
    best_so_far: float | None = None  # seconds, for early stopping
    verify: bool = True


@dataclass(frozen=True)
class Measurement:
    status: str
    target: str
    samples: tuple[float, ...] = ()
    compile_s: float = 0.0
    errors: dict[str, float] = field(default_factory=dict)
    tolerance: float = 0.0
    flops: float = 0.0
    message: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("inf")

    @property
    def iqr(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        q = statistics.quantiles(self.samples, n=4, method="inclusive")
        return q[2] - q[0]

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["samples"] = list(self.samples)
        d["median"] = self.median if self.samples else None
        d["iqr"] = self.iqr
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Measurement:
        keys = {f for f in cls.__dataclass_fields__}
        kw = {k: v for k, v in d.items() if k in keys}
        kw["samples"] = tuple(kw.get("samples", ()))
        return cls(**kw)


# -- in the worker -------------------------------------------------------------------------

_STATE: dict[tuple, Any] = {}


def _problem(source: str, origin: str):
    from .spec import parse_problem

    key = ("problem", source, origin)
    if key not in _STATE:
        _STATE[key] = parse_problem(source, origin=origin)
    return _STATE[key]


def _instance(problem, dims: Mapping[str, int], seed: int, dtype: str):
    """(inputs in the dtype, reference, tolerance), computed once per (problem, dims, seed)."""
    import numpy as np

    from .instances import random_instance
    from .reference import evaluate_reference, tolerance

    key = ("instance", problem.sha256, tuple(sorted(dims.items())), seed)
    if key not in _STATE:
        for k in [k for k in _STATE if k[0] == "instance"]:
            del _STATE[k]  # keep one instance in memory: they can be large
        values = random_instance(problem, dims, seed=seed)
        ref = evaluate_reference(problem, values, dims)
        _STATE[key] = (values, ref)
    values, ref = _STATE[key]
    args = [
        np.asarray(values[n], dtype=dtype) if not np.isscalar(values[n]) else values[n]
        for n in problem.inputs
    ]
    tol = tolerance(dtype, ref.condition, max(dims.values()))
    return args, ref, tol


def measure_in_process(job: Job, clock: Callable[[], float] = time.perf_counter) -> Measurement:
    """Compile, verify and time one candidate in this process."""
    from .derive import derive
    from .errors import AutotuneError
    from .lower import lower
    from .reference import relative_error
    from .targets import compile_function, parse_target, thread_limit

    problem = _problem(job.problem_source, job.problem_origin)
    target = parse_target(job.target)
    key = ("compiled", problem.sha256, repr(sorted(job.knobs.items())), job.target,
           tuple(sorted(job.dims.items())), job.dtype)
    try:
        program = derive(problem, job.knobs, job.dims)
        flops = program.flops(job.dims)
        args, ref, tol = _instance(problem, job.dims, job.seed, job.dtype)
        if key in _STATE:
            fn, compile_s = _STATE[key]
            with thread_limit(target):
                first = fn(*args)
        else:
            t0 = clock()
            inputs, outputs = lower(problem, program, job.dims, dtype=job.dtype)
            fn = compile_function(target, inputs, outputs)
            with thread_limit(target):
                first = fn(*args)  # numba/jax compile lazily: the first call compiles
            compile_s = clock() - t0
            compiled = [k for k in _STATE if k[0] == "compiled"]
            for k in compiled[: max(0, len(compiled) - 15)]:
                del _STATE[k]
            _STATE[key] = (fn, compile_s)
    except AutotuneError as exc:
        return Measurement("compile_error", target.name, message=_short(exc))
    except Exception as exc:  # noqa: BLE001 - a failing candidate is a recorded outcome
        return Measurement("compile_error", target.name, message=_short(exc))
    errors = {}
    if job.verify:
        for name, value in zip(problem.outputs, first, strict=True):
            errors[name] = relative_error(value, ref.outputs[name])
        if any(e > tol for e in errors.values()):
            return Measurement(
                "inaccurate", target.name, (), compile_s, errors, tol, flops,
                f"relative error {max(errors.values()):.2e} > tolerance {tol:.1e}",
            )
    policy = job.policy
    samples: list[float] = []
    status = "ok"
    try:
        with thread_limit(target):
            for _ in range(policy.warmup):
                fn(*args)
            total = 0.0
            while len(samples) < policy.max_repeats:
                t = clock()
                fn(*args)
                dt = clock() - t
                samples.append(dt)
                total += dt
                if job.best_so_far and dt > policy.slow_factor * job.best_so_far:
                    status = "slow"
                    break
                if len(samples) >= max(2, policy.min_repeats):
                    med = statistics.median(samples)
                    q = statistics.quantiles(samples, n=4, method="inclusive")
                    if (q[2] - q[0]) <= policy.rel_iqr * med or total > policy.max_seconds:
                        break
    except Exception as exc:  # noqa: BLE001
        return Measurement("runtime_error", target.name, tuple(samples), compile_s, errors, tol,
                           flops, _short(exc))
    return Measurement(status, target.name, tuple(samples), compile_s, errors, tol, flops)


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) < 600 else text[:600] + "..."


def dgemm_rate(n: int, target: str = "numba", repeats: int = 3) -> float:
    """FLOP/s of a float64 n x n matrix product through ``target`` (best of ``repeats``): the
    practical peak that defines the physical limit. For CPU targets the product is NumPy's
    (the same BLAS) under the target's thread limit; for others it is a PyTensor ``dot``
    compiled for the target and called like a plan (host arrays in, host arrays out)."""
    import numpy as np

    from .targets import compile_function, parse_target, thread_limit

    t = parse_target(target)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n))
    b = rng.standard_normal((n, n))
    if t.device == "cpu" and t.backend in ("numba", "c"):
        fn = np.matmul
    else:
        import pytensor.tensor as pt

        x = pt.matrix("a", shape=(n, n), dtype="float64")
        y = pt.matrix("b", shape=(n, n), dtype="float64")
        fn = compile_function(t, [x, y], pt.dot(x, y))
    with thread_limit(t):
        fn(a, b)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(a, b)
            best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def _worker_main(conn, heap: str = "system") -> None:  # pragma: no cover - in the child
    import signal

    from .memory import set_heap_policy

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    set_heap_policy(heap)  # before anything big is allocated
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        try:
            if isinstance(msg, Job):
                result: Any = measure_in_process(msg)
            else:
                result = dgemm_rate(*msg)
        except Exception:  # noqa: BLE001
            target = msg.target if isinstance(msg, Job) else "dgemm"
            result = Measurement("crashed", target, message=traceback.format_exc()[-600:])
        conn.send(result)


# -- in the parent -------------------------------------------------------------------------


class Worker:
    """A persistent child process that measures jobs; killed and restarted after a timeout
    or a crash. Use as a context manager. ``heap``: the heap policy of the child process
    (:mod:`autotune.memory`), under which every candidate is measured."""

    def __init__(self, timeout: float = 600.0, env: Mapping[str, str] | None = None,
                 heap: str = "system") -> None:
        from .memory import check_heap_policy

        self.timeout = timeout
        self.env = dict(env or {})
        self.heap = check_heap_policy(heap)
        self._proc: mp.Process | None = None
        self._conn = None

    def _start(self) -> None:
        from .targets import configure_environment

        configure_environment()
        old = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            ctx = mp.get_context("spawn")
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child, self.heap), daemon=True)
            proc.start()
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        child.close()
        self._proc, self._conn = proc, parent

    def stop(self) -> None:
        if self._proc is not None:
            try:
                if self._proc.is_alive() and self._conn is not None:
                    self._conn.send(None)
                    self._proc.join(2)
            except (OSError, BrokenPipeError):
                pass
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()
        self._proc = self._conn = None

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def dgemm_rate(self, n: int, target: str) -> float:
        """The DGEMM rate measured in the worker (the process that times candidates)."""
        if self._proc is None or not self._proc.is_alive():
            self._start()
        assert self._conn is not None
        self._conn.send((n, target))
        if not self._conn.poll(self.timeout):
            raise MeasurementError("the DGEMM measurement did not finish")
        result = self._conn.recv()
        if isinstance(result, Measurement):
            raise MeasurementError(f"the DGEMM measurement failed: {result.message}")
        return float(result)

    def measure(self, job: Job, timeout: float | None = None) -> Measurement:
        if self._proc is None or not self._proc.is_alive():
            self._start()
        assert self._conn is not None and self._proc is not None
        limit = self.timeout if timeout is None else timeout
        try:
            self._conn.send(job)
            if not self._conn.poll(limit):
                self._proc.kill()
                self._proc.join()
                self._proc = self._conn = None
                return Measurement("timeout", job.target, message=f"no result within {limit:.0f} s")
            return self._conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError, OSError):
            code = self._proc.exitcode if self._proc is not None else None
            if self._proc is not None:
                self._proc.join(1)
                code = self._proc.exitcode
            self._proc = self._conn = None
            return Measurement(
                "crashed", job.target,
                message=f"the worker died (exit code {code}; out of memory or a crash)",
            )


def require_ok(m: Measurement) -> Measurement:
    if not m.ok:
        raise MeasurementError(f"{m.status}: {m.message}")
    return m
