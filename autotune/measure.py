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
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .errors import MeasurementError

__all__ = ["Measurement", "Job", "TimingPolicy", "Worker", "RemoteError", "measure_in_process",
           "dgemm_rate"]

STATUSES = ("ok", "inaccurate", "slow", "compile_error", "runtime_error", "timeout", "crashed",
            "interrupted")
VARIANTS = ("candidate", "pytensor", "numpy")


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
    #: what is run: ``candidate`` (the knobs, compiled as chosen), ``pytensor`` (the knobs,
    #: compiled with PyTensor's own kernel-choosing rewrites), ``numpy`` (the formula as
    #: written, evaluated with NumPy; the knobs are ignored)
    variant: str = "candidate"
    #: a candidate whose compiled graph was already measured in this worker (same sizes,
    #: dtype, target) gets that measurement back instead of being timed again
    reuse_graph: bool = False


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
    graph: str = ""  # fingerprint of the compiled graph (autotune.pinned.graph_fingerprint)

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


def _build(problem, job: Job, target):
    """(function, FLOPs, graph fingerprint) of the job's variant, compiled for ``target``."""
    from .derivation import derive
    from .lower import lower
    from .pinned import graph_fingerprint
    from .targets import compile_function

    program = derive(problem, job.knobs, job.dims)
    flops = program.flops(job.dims)
    if job.variant == "numpy":
        from .evaluators import build_numpy

        return build_numpy(problem, job.dims, "inv"), flops, "numpy"
    rewrites = "pytensor" if job.variant == "pytensor" else "chosen"
    inputs, outputs = lower(problem, program, job.dims, dtype=job.dtype)
    fn = compile_function(target, inputs, outputs, rewrites=rewrites)
    return fn, flops, graph_fingerprint(fn)


def _compiled(problem, job: Job, target, args, clock):
    """The cached or freshly compiled function, with its first call's outputs."""
    from .targets import thread_limit

    key = ("compiled", problem.sha256, repr(sorted(job.knobs.items())), job.target,
           tuple(sorted(job.dims.items())), job.dtype, job.variant)
    if key in _STATE:  # compiled and verified earlier in this worker: no extra call
        fn, compile_s, flops, graph = _STATE[key]
        return fn, compile_s, flops, graph, None
    t0 = clock()
    fn, flops, graph = _build(problem, job, target)
    with thread_limit(target):
        first = fn(*args)  # numba/jax compile lazily: the first call compiles
    compile_s = clock() - t0
    compiled = [k for k in _STATE if k[0] == "compiled"]
    for k in compiled[: max(0, len(compiled) - 15)]:
        del _STATE[k]
    _STATE[key] = (fn, compile_s, flops, graph)
    return fn, compile_s, flops, graph, first


def measure_in_process(job: Job, clock: Callable[[], float] = time.perf_counter) -> Measurement:
    """Compile, verify and time one candidate in this process."""
    from .faults import fault
    from .targets import parse_target

    if job.variant not in VARIANTS:
        raise ValueError(f"Job.variant {job.variant!r}; valid: {', '.join(VARIANTS)}")
    problem = _problem(job.problem_source, job.problem_origin)
    target = parse_target(job.target)
    fault("measure")
    try:
        args, ref, tol = _instance(problem, job.dims, job.seed, job.dtype)
        fn, compile_s, flops, graph, first = _compiled(problem, job, target, args, clock)
    except Exception as exc:  # noqa: BLE001 - a failing candidate is a recorded outcome
        return Measurement("compile_error", target.name, message=_short(exc))
    same = ("graph", graph, job.target, tuple(sorted(job.dims.items())), job.dtype, job.seed)
    if job.reuse_graph and same in _STATE:
        earlier: Measurement = _STATE[same]
        return replace(earlier, compile_s=compile_s, message=(
            "same compiled graph as an earlier candidate: measured once"
            + (f"; {earlier.message}" if earlier.message else "")))
    m = _verify_and_time(job, problem, target, fn, args, first, ref, tol, compile_s, flops,
                         clock)
    m = replace(m, graph=graph)
    if m.status in ("ok", "inaccurate", "runtime_error"):
        _STATE[same] = m
    return m


def _verify_and_time(job, problem, target, fn, args, first, ref, tol, compile_s, flops,
                     clock) -> Measurement:
    from .reference import relative_error
    from .targets import thread_limit

    verified = ("verified", id(fn), job.seed, tuple(sorted(job.dims.items())))
    if first is None and verified not in _STATE:
        with thread_limit(target):
            first = fn(*args)
    if first is not None:
        _STATE[verified] = {name: relative_error(value, ref.outputs[name],
                                                 problem.stored.get(name, "full"))
                            for name, value in zip(problem.outputs, first, strict=True)}
    # else: the same compiled function on the same instance was checked already
    errors: dict[str, float] = dict(_STATE[verified]) if job.verify else {}
    if job.verify:
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


def dgemm_rate(n: int, target: str = "numba", repeats: int = 3,
               dtype: str = "float64") -> float:
    """FLOP/s of an n x n matrix product (DGEMM, or SGEMM for ``float32``) through ``target``
    (best of ``repeats``): the practical peak that defines the physical limit. For CPU
    targets the product is NumPy's (the same BLAS) under the target's thread limit; for
    others it is a PyTensor ``dot`` compiled for the target and called like a plan (host
    arrays in, host arrays out)."""
    import numpy as np

    from .faults import fault
    from .targets import compile_function, parse_target, thread_limit

    t = parse_target(target)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    if t.device == "cpu" and t.backend in ("numba", "c"):
        fn = np.matmul
    else:
        import pytensor.tensor as pt

        x = pt.matrix("a", shape=(n, n), dtype=dtype)
        y = pt.matrix("b", shape=(n, n), dtype=dtype)
        fn = compile_function(t, [x, y], pt.dot(x, y))
    fault("dgemm")
    with thread_limit(t):
        fn(a, b)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(a, b)
            best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def _die_with_parent() -> None:  # pragma: no cover - in the child
    """Linux: the kernel sends this process SIGKILL when its parent dies (however it dies),
    so a killed run leaves no orphan worker."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _worker_main(conn, heap: str = "system", parent: int = 0) -> None:  # pragma: no cover
    import signal

    from .memory import set_heap_policy

    _die_with_parent()
    if parent and os.getppid() != parent:
        return  # the parent died before prctl took effect
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    set_heap_policy(heap)  # before anything big is allocated
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        rid, body = msg
        try:
            result: Any = _handle(body)
        except Exception as exc:  # noqa: BLE001
            if isinstance(body, Job):
                result = Measurement("crashed", body.target,
                                     message=traceback.format_exc()[-600:])
            else:
                result = RemoteError(type(exc).__name__, str(exc)[:600])
        conn.send((rid, result))


@dataclass(frozen=True)
class RemoteError:
    """An exception raised by a worker request other than a measurement."""

    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


def _handle(body: Any) -> Any:
    """One worker request: a :class:`Job`, or ("gemm", n, target, repeats, dtype), ("flops",
    source, origin, knobs, dims) or ("named", source, origin, dims)."""
    if isinstance(body, Job):
        return measure_in_process(body)
    kind, *args = body
    if kind == "gemm":
        return dgemm_rate(*args)
    if kind == "flops":
        from .derivation import derive

        source, origin, knobs, dims = args
        return derive(_problem(source, origin), knobs, dims).flops(dims)
    if kind == "named":
        from .space import NAMED_POINTS, named_point

        source, origin, dims = args
        problem = _problem(source, origin)
        return {n: named_point(problem, n, dims) for n in NAMED_POINTS}
    raise ValueError(f"unknown worker request {kind!r}")


# -- in the parent -------------------------------------------------------------------------


class Worker:
    """A persistent child process that measures jobs; killed and restarted after a timeout,
    a crash or an interrupt. Use as a context manager. ``heap``: the heap policy of the
    child process (:mod:`autotune.memory`), under which every candidate is measured.

    Every request carries an id and the reply must carry the same: a reply left in the pipe
    by an interrupted request is never taken for the answer to a later one. A request
    interrupted in the parent (Ctrl-C, SIGTERM) kills the child before the interrupt goes
    on, so the next request starts from a clean worker. The child dies with the parent
    (``PR_SET_PDEATHSIG``), so no worker outlives a killed run.
    """

    def __init__(self, timeout: float = 600.0, env: Mapping[str, str] | None = None,
                 heap: str = "system") -> None:
        from .memory import check_heap_policy

        self.timeout = timeout
        self.env = dict(env or {})
        self.heap = check_heap_policy(heap)
        self._proc: mp.Process | None = None
        self._conn = None
        self._rid = 0
        self.restarts = 0

    def _start(self) -> None:
        from .targets import configure_environment

        configure_environment()
        old = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            ctx = mp.get_context("spawn")
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child, self.heap, os.getpid()),
                               daemon=True)
            proc.start()
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        child.close()
        self._proc, self._conn = proc, parent

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def kill(self) -> None:
        """Kill the child now (it is restarted by the next request)."""
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join()
            self.restarts += 1
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None

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
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _request(self, body: Any, limit: float) -> tuple[str, Any]:
        """Send one request and wait for its own reply: ("ok", result), ("timeout", None) or
        ("died", exit code). An interrupt while waiting kills the child and propagates."""
        if self._proc is None or not self._proc.is_alive():
            self._start()
        assert self._conn is not None and self._proc is not None
        self._rid += 1
        rid = self._rid
        deadline = time.monotonic() + limit
        try:
            self._conn.send((rid, body))
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not self._conn.poll(left):
                    self.kill()
                    return "timeout", None
                got, result = self._conn.recv()
                if got == rid:
                    return "ok", result
                # a stale reply of an earlier, abandoned request: drop it
        except (EOFError, BrokenPipeError, ConnectionResetError, OSError):
            proc = self._proc
            code = None
            if proc is not None:
                proc.join(1)
                code = proc.exitcode
            self.kill()
            return "died", code
        except BaseException:  # KeyboardInterrupt, SystemExit: the reply would go stale
            self.kill()
            raise

    def dgemm_rate(self, n: int, target: str, dtype: str = "float64", repeats: int = 3,
                   tries: int = 2) -> float:
        """The GEMM rate measured in the worker (the process that times candidates); a worker
        that dies while timing it is restarted and the measurement retried."""
        why = ""
        for _ in range(tries):
            state, result = self._request(("gemm", n, target, repeats, dtype), self.timeout)
            if state == "ok" and not isinstance(result, RemoteError):
                return float(result)
            why = str(result) if state == "ok" else self._why(state, result, self.timeout)
        raise MeasurementError(f"the GEMM rate measurement failed: {why}")

    @staticmethod
    def _why(state: str, result: Any, limit: float) -> str:
        if state == "timeout":
            return f"no result within {limit:.0f} s"
        return f"the worker died (exit code {result}; out of memory or a crash)"

    def _derivation(self, body: tuple, timeout: float, what: str) -> Any:
        from .errors import DerivationError

        state, result = self._request(body, timeout)
        if state == "ok" and not isinstance(result, RemoteError):
            return result
        why = str(result) if state == "ok" else self._why(state, result, timeout)
        raise DerivationError(f"{what}: {why}")

    def flops(self, problem: Any, knobs: Mapping[str, Any], dims: Mapping[str, int],
              timeout: float) -> float:
        """The candidate's FLOP count, derived in the worker (bounded by ``timeout``)."""
        return float(self._derivation(
            ("flops", problem.source, problem.origin, dict(knobs), dict(dims)), timeout,
            "deriving the candidate failed"))

    def named_points(self, problem: Any, dims: Mapping[str, int],
                     timeout: float) -> dict[str, dict[str, Any]]:
        """The named points' knobs (``flop-optimal`` derives candidates), in the worker."""
        return dict(self._derivation(("named", problem.source, problem.origin, dict(dims)),
                                     timeout, "deriving the named points failed"))

    def measure(self, job: Job, timeout: float | None = None) -> Measurement:
        limit = self.timeout if timeout is None else timeout
        state, result = self._request(job, limit)
        if state == "ok":
            return result
        if state == "timeout":
            return Measurement("timeout", job.target, message=f"no result within {limit:.0f} s")
        return Measurement(
            "crashed", job.target,
            message=f"the worker died (exit code {result}; out of memory or a crash)",
        )


def require_ok(m: Measurement) -> Measurement:
    if not m.ok:
        raise MeasurementError(f"{m.status}: {m.message}")
    return m
