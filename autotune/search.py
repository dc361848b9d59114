"""The search: an Optuna study over the knobs and targets, then an interleaved final round.

* the named points (``naive``, ``seed-2x2``, ``flop-optimal``) are enqueued first;
* TPE by default, exhaustive (grid) when the space is smaller than the budget;
* the cost model prunes what cannot win (predicted time from FLOPs and the best FLOP rate a
  candidate reached on the same target), and a low-fidelity screen (a quarter of the size)
  drops candidates clearly slower than the best;
* a candidate whose compiled graph was already measured (two knob settings that compile to
  one program) is measured once: the worker answers with the earlier measurement;
* failures (derivation or compile errors, inaccurate answers, crashes, timeouts, a dead
  worker) are recorded trials with their reason, never the end of the run;
* ``trials`` is the size of the study: a resumed study counts the trials it has (12 done,
  18 to go), and several processes on one study stop together at that count;
* ``timeout`` bounds the whole run: the search stops early enough to leave the final round
  its time (:mod:`autotune.contest`), which re-times the best few, the baselines and the
  stored plan interleaved and decides by LAAB's significance rule, then fewer FLOPs.

The study lives in an SQLite file under the output folder by default (``--storage`` takes
any Optuna RDB URL, PostgreSQL included), so a run can be resumed and several processes can
tune one study. Measurement is injected (``measure``), and so are the derivations the search
needs (``derivations``: the FLOP count of a candidate, the named points), so the search logic
can be tested with a fake, noiseless backend and a tuning run derives nothing in its main
process: the worker does, under the candidate timeout.
"""

from __future__ import annotations

import itertools
import math
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .contest import Contest, Entry, run_final_round
from .errors import AutotuneError
from .measure import Job, Measurement, TimingPolicy
from .space import NAMED_POINTS, knob_space, named_point
from .spec import Problem
from .stats import limit_ratio

__all__ = ["SearchConfig", "SearchResult", "Entry", "Derivations", "tune", "study_name",
           "space_for", "prepare_study", "open_storage", "BASELINE_VARIANTS"]

TARGET_PARAM = "target"
#: Baselines that are not candidates: timed in the final round next to the named points.
BASELINE_VARIANTS = {"pytensor": "pytensor", "numpy": "numpy"}
#: Trial states and statuses that did not cost the budget.
_FREE = ("duplicate",)


@dataclass
class SearchConfig:
    trials: int = 24  # the study's size: finished trials, counting a resumed study's
    timeout: float = 600.0  # seconds for the whole run, final round included
    targets: Sequence[str] = ("numba",)
    dtype: str = "float64"
    seed: int = 0
    storage: str | None = None  # Optuna storage URL; default: sqlite in out/
    out: Path = Path("results")
    final_round_top: int = 3
    enqueue: bool = True  # enqueue the named points (and, for small spaces, every point)
    final_round_repeats: int = 5  # interleaved rounds at least (budget allowing)
    final_round_max: int = 15  # rounds at most, while the contenders are undecided
    low_fidelity: bool = True
    policy: TimingPolicy = field(default_factory=TimingPolicy)
    candidate_timeout: float = 300.0
    heap: str = "retain"  # the workers' heap policy (autotune.memory), recorded in the plan
    baselines: Sequence[str] = ("pytensor", "numpy")  # variants timed in the final round
    incumbent: Entry | None = None  # the stored plan, re-timed against the new candidates


@dataclass
class SearchResult:
    best: Entry
    final: dict[str, list[float]]  # entry key -> final-round samples
    entries: dict[str, Entry]
    baselines: dict[str, Entry]
    study_name: str
    storage: str
    trials: int
    interrupted: bool = False
    dgemm_flops: float = 0.0  # the GEMM rate on the plan's target (SGEMM for float32)
    fewest_flops: float = 0.0
    limit_ratio: float | None = None
    limit_note: str = ""
    rounds: int = 0
    decided: bool = True
    kept_incumbent: bool = False


class Derivations:
    """The derivations the search asks for, in this process (tests, fakes). A tuning run
    passes the worker's (:class:`autotune.measure.Worker`), with the same two methods."""

    def flops(self, problem: Problem, knobs: Mapping[str, Any], dims: Mapping[str, int],
              timeout: float) -> float:
        from .derivation import derive

        return derive(problem, knobs, dims).flops(dims)

    def named_points(self, problem: Problem, dims: Mapping[str, int],
                     timeout: float) -> dict[str, dict[str, Any]]:
        return {n: named_point(problem, n, dims) for n in NAMED_POINTS}


def study_name(problem: Problem, dims: Mapping[str, int], dtype: str,
               heap: str = "system") -> str:
    """The study of one problem text, sizes, dtype and heap policy: trials measured under
    another heap policy are another measurement environment, so they are another study."""
    sizes = "-".join(f"{k}{v}" for k, v in sorted(dims.items()))
    suffix = "" if heap == "system" else f"-{heap}"
    return f"{problem.name}-{problem.sha256[:10]}-{sizes}-{dtype}{suffix}"


def space_for(problem: Problem, dims: Mapping[str, int], targets: Sequence[str]) -> dict:
    """The categorical choices of every knob, plus the target."""
    space = {k: list(v) for k, v in knob_space(problem, dims).items()}
    space[TARGET_PARAM] = list(targets)
    return space


def _space_size(space: Mapping[str, list]) -> int:
    return math.prod(len(v) for v in space.values())


def _low_dims(problem: Problem, dims: Mapping[str, int]) -> dict[str, int] | None:
    free = problem.free_dims
    if not free:
        return None
    scaled = {d: max(8, dims[d] // 4) for d in free if d in dims}
    low = problem.resolve_dims(scaled)
    return low if max(low.values()) < max(dims.values()) else None


@dataclass
class _State:
    """What the search loop knows: measured entries, the best time, the calibrated rates."""

    entries: dict[str, Entry] = field(default_factory=dict)
    best: float = math.inf
    low_best: float = math.inf
    rates: dict[str, float] = field(default_factory=dict)
    seen: dict[str, float] = field(default_factory=dict)
    settled: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False
    trial_seconds: list[float] = field(default_factory=list)  # wall time of measured trials
    deadline: float = math.inf
    clock: Callable[[], float] = time.monotonic

    def timeout(self, limit: float) -> float:
        """A measurement's time limit: the candidate timeout, or what is left of the run's
        budget (at least 10 s), whichever is shorter."""
        return min(limit, max(10.0, self.deadline - self.clock()))


def tune(
    problem: Problem,
    dims: Mapping[str, int],
    config: SearchConfig,
    measure: Callable[[Job, float], Measurement],
    dgemm_rate: Callable[..., float] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    derivations: Derivations | None = None,
    final: bool = True,
) -> SearchResult | None:
    """Run the study and the final round; return the result (the caller writes the plan).

    ``dgemm_rate(n, target, dtype=...)`` times a GEMM (FLOP/s) for the physical limit.
    ``final=False``: the search only (an extra process of ``--jobs``), returns None."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    derivations = derivations or Derivations()
    dims = dict(dims)
    start = clock()
    deadline = start + config.timeout
    space = space_for(problem, dims, config.targets)
    name = study_name(problem, dims, config.dtype, config.heap)
    storage = config.storage or f"sqlite:///{(config.out / 'autotune.db').resolve()}"
    config.out.mkdir(parents=True, exist_ok=True)
    exhaustive = _space_size(space) <= config.trials
    sampler: optuna.samplers.BaseSampler = (
        optuna.samplers.RandomSampler(seed=config.seed) if exhaustive
        else optuna.samplers.TPESampler(seed=config.seed))
    baselines_knobs = _named_points(problem, dims, config, derivations)
    study = prepare_study(problem, dims, config, space, sampler, storage, name,
                          named=baselines_knobs)
    fail_stale_trials(study, config.candidate_timeout)
    state = _resume(study)
    state.deadline, state.clock = deadline, clock
    _search(problem, dims, config, study, space, baselines_knobs, state, measure, derivations,
            progress, clock, deadline)
    if not final:
        return None
    if not any(e.measurement.ok for e in state.entries.values()):
        if state.interrupted:
            raise AutotuneError("interrupted before any candidate finished: no plan was "
                                "written (a stored plan is left as it was)")
        raise AutotuneError(_no_candidate_message(study))
    contenders = _contenders(state.entries, baselines_knobs, config)
    contest = _final(problem, dims, config, contenders, state, measure, dgemm_rate, progress,
                     clock, deadline)
    return _result(problem, dims, config, study, storage, name, state, contenders, contest,
                   dgemm_rate)


def prepare_study(problem: Problem, dims: Mapping[str, int], config: SearchConfig,
                  space: Mapping[str, list] | None = None, sampler: Any = None,
                  storage: str | None = None, name: str | None = None,
                  named: Mapping[str, Mapping[str, Any]] | None = None):
    """Create (or load) the study and enqueue the named points (and, for a space no larger
    than the budget, every point) once. Any number of processes may call this at the same
    instant (``autotune run --jobs``, several ``--storage`` runs): the schema, the study and
    each point are created once, under the database's lock (``autotune.storage``)."""
    from .storage import prepare

    space = space or space_for(problem, dims, config.targets)
    name = name or study_name(problem, dims, config.dtype, config.heap)
    storage = storage or config.storage or f"sqlite:///{(config.out / 'autotune.db').resolve()}"
    points: list[tuple[dict[str, Any], dict[str, Any]]] = []
    if config.enqueue:
        for n in NAMED_POINTS:
            # the named points as derived by the caller (a run derives them in its worker)
            knobs = dict(named[n]) if named and n in named else named_point(problem, n, dims)
            if any(k in space and v not in space[k] for k, v in knobs.items()):
                continue  # outside the searched space: measured in the final round only
            params = {k: v for k, v in knobs.items() if k in space}
            params[TARGET_PARAM] = config.targets[0]
            points.append((params, {"named": n}))
        if _space_size(space) <= config.trials:
            keys = list(space)
            points += [(dict(zip(keys, combo, strict=True)), {})
                       for combo in itertools.product(*(space[k] for k in keys))]
    return prepare(storage, name, sampler=sampler, direction="minimize", points=points)


def open_storage(url: str) -> Any:
    """Optuna storage for ``url`` (any RDB URL), its schema created under the database's lock
    (processes connecting first together do not race on it); SQLite waits 60 s for another
    process's write and begins each transaction with the write lock (``autotune.storage``)."""
    from .storage import open_storage as _open

    return _open(url)




#: A RUNNING trial that never recorded its process is taken as stale after this long.
STALE_UNCLAIMED_S = 120.0


def fail_stale_trials(study: Any, candidate_timeout: float) -> list[int]:
    """Record as failed the RUNNING trials whose process is gone: on this host, a process
    id that no longer runs; elsewhere, a trial older than a candidate's timeout twice over
    plus an hour. Returns their numbers. (A killed run leaves its trial RUNNING.)"""
    import datetime
    import socket

    from optuna.trial import TrialState

    host = socket.gethostname()
    now = datetime.datetime.now()
    stale = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid, where = t.user_attrs.get("pid"), t.user_attrs.get("host")
        age = (now - (t.datetime_start or now)).total_seconds()
        if where == host and isinstance(pid, int):
            gone = not _pid_alive(pid)
        elif where is None:
            # killed between asking for the trial and recording its process, which a live
            # process does at once (a database lock waits 60 s at most)
            gone = age > STALE_UNCLAIMED_S
        else:
            gone = age > 2 * candidate_timeout + 3600
        if gone:
            study._storage.set_trial_user_attr(t._trial_id, "status", "stale")
            study._storage.set_trial_user_attr(t._trial_id, "message",
                                               "its process died before it finished")
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            stale.append(t.number)
    return stale


def _pid_alive(pid: int) -> bool:
    import os

    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _named_points(problem, dims, config, derivations) -> dict[str, dict[str, Any]]:
    """The named points, derived by ``derivations`` (the worker, in a run). Should that fail
    (a derivation error, or no answer within the candidate timeout), the points that need
    no derivation stand, and ``flop-optimal`` is the default candidate."""
    from .space import default_knobs

    try:
        return derivations.named_points(problem, dims,
                                        min(config.candidate_timeout, config.timeout))
    except AutotuneError:
        return {"naive": named_point(problem, "naive", dims),
                "seed-2x2": named_point(problem, "seed-2x2", dims),
                "flop-optimal": default_knobs(problem, dims)}


def _params_key(params: Mapping[str, Any]) -> str:
    return repr(sorted(params.items()))


def _calibrate(rates: dict[str, float], e: Entry) -> None:
    m = e.measurement
    if m.ok and m.samples and m.flops:
        rates[e.target] = max(rates.get(e.target, 0.0), m.flops / m.median)


def count_done(study: Any) -> int:
    """Trials of the study that cost the budget: finished or running, not the duplicates
    answered from the study."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
    return sum(1 for t in study.get_trials(deepcopy=False, states=states)
               if t.user_attrs.get("status") not in _FREE)


def _resume(study: Any) -> _State:
    """What the study already knows (a resumed run, or other processes' trials)."""
    from optuna.trial import TrialState

    st = _State()
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        st.best = min(st.best, t.value)
        st.seen[_params_key(t.params)] = t.value
        _restore(t, st.entries)
    for e in st.entries.values():
        _calibrate(st.rates, e)
    return st


def _reserve(st: _State, config: SearchConfig) -> float:
    """Seconds to keep for the final round: its minimum rounds (plus the warm-up) over the
    contenders it will time -- the best few as measured; a named point or baseline not
    measured yet at a likely time (``flop-optimal`` and the stored plan at the best time,
    the variants of the formula as written at ``naive``'s, ``seed-2x2`` at the slowest) --
    their compiles, a GEMM per round, and one more search trial of the mean length so far
    (a trial is not cut short)."""
    ok = sorted((e for e in st.entries.values() if e.measurement.ok and e.measurement.samples),
                key=lambda e: e.measurement.median)
    if not ok:
        return 0.0
    best, slowest = ok[0].measurement.median, ok[-1].measurement.median
    named = {e.name: e.measurement.median for e in ok if e.name}
    naive = named.get("naive", slowest)
    top = ok[: config.final_round_top]
    est = [e.measurement.median for e in top]
    guess = {"naive": naive, "seed-2x2": slowest, "flop-optimal": best}
    est += [named.get(n, guess[n]) for n in NAMED_POINTS if n not in {e.name for e in top}]
    est += [naive] * len(config.baselines)
    est += [best] if config.incumbent is not None else []
    compile_s = max(e.measurement.compile_s for e in ok)
    trial = sum(st.trial_seconds) / len(st.trial_seconds) if st.trial_seconds else 0.0
    return ((config.final_round_repeats + 1) * (sum(est) + best) + len(est) * compile_s
            + trial)


def _search(problem, dims, config, study, space, baselines_knobs, st: _State, measure,
            derivations, progress, clock, deadline) -> None:
    import optuna
    from optuna.trial import TrialState

    low = _low_dims(problem, dims) if config.low_fidelity else None
    dist = {k: optuna.distributions.CategoricalDistribution(v) for k, v in space.items()}
    repeats = 0  # consecutive proposals of points already measured
    if progress:
        progress({"phase": "start", "done": count_done(study), "of": config.trials})
    while repeats < 50:  # the sampler keeps returning to measured points: the space is done
        done = count_done(study)
        if done >= config.trials or clock() + _reserve(st, config) >= deadline:
            break
        trial = None
        began = clock()
        try:
            trial = study.ask(dist)
            trial.set_user_attr("pid", os.getpid())
            trial.set_user_attr("host", socket.gethostname())
            measured = _trial(trial, problem, dims, low, config, study, baselines_knobs, st,
                              measure, derivations)
            if measured:
                st.trial_seconds.append(clock() - began)
        except KeyboardInterrupt:
            st.interrupted = True
            if trial is not None:  # the trial in flight is recorded, never left RUNNING
                trial.set_user_attr("status", "interrupted")
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            break
        repeats = 0 if measured else repeats + 1
        if progress and measured:
            progress({"phase": "search", "trial": count_done(study), "of": config.trials,
                      "best": st.best, "state": trial.user_attrs.get("status", ""),
                      "left": deadline - clock(), "named": trial.user_attrs.get("named", ""),
                      "info": dict(trial.user_attrs)})


def _trial(trial, problem, dims, low, config, study, baselines_knobs, st: _State, measure,
           derivations) -> bool:
    """Evaluate one proposed trial and tell the study; False for a duplicate proposal."""
    from optuna.trial import TrialState

    from .faults import fault

    knobs = {k: v for k, v in trial.params.items() if k != TARGET_PARAM}
    target = trial.params[TARGET_PARAM]
    named = trial.user_attrs.get("named", "")
    pkey = _params_key(trial.params)
    if not named and (pkey in st.seen or pkey in st.settled):
        # the sampler proposed a point already measured (or pruned, or failed): tell it the
        # known outcome instead of spending the budget on it again
        trial.set_user_attr("status", "duplicate")
        if pkey in st.seen:
            study.tell(trial, st.seen[pkey], skip_if_finished=True)
        else:
            study.tell(trial, state=st.settled[pkey], skip_if_finished=True)
        return False
    fault("trial")
    full = {**baselines_knobs[named or "flop-optimal"], **knobs}
    state, value, info = _evaluate(problem, dims, low, full, target, config, measure,
                                   derivations, st, exempt=bool(named))
    for k, v in info.items():
        trial.set_user_attr(k, v)
    if named:
        trial.set_user_attr("named", named)
    if "low_median" in info and info.get("low_status") == "ok":
        st.low_best = min(st.low_best, info["low_median"])
    if state == "ok":
        st.best = min(st.best, value)
        st.seen[pkey] = value
        study.tell(trial, value, skip_if_finished=True)
        e = Entry(full, target, Measurement.from_json(info["measurement"]), named or "")
        st.entries[e.key] = e
        _calibrate(st.rates, e)
    else:
        st.settled[pkey] = TrialState.PRUNED if state == "pruned" else TrialState.FAIL
        study.tell(trial, state=st.settled[pkey], skip_if_finished=True)
    return True


def _restore(t: Any, entries: dict[str, Entry]) -> None:
    """Rebuild an entry from a finished trial of an earlier (resumed) run."""
    m = t.user_attrs.get("measurement")
    knobs = t.user_attrs.get("knobs")
    if not m or knobs is None:
        return
    e = Entry(dict(knobs), t.params[TARGET_PARAM], Measurement.from_json(m),
              t.user_attrs.get("named", ""))
    entries[e.key] = e


def _evaluate(problem, dims, low, knobs, target, config, measure, derivations, st: _State,
              exempt: bool) -> tuple[str, float, dict[str, Any]]:
    info: dict[str, Any] = {"knobs": knobs}
    try:
        flops = derivations.flops(problem, knobs, dims, st.timeout(config.candidate_timeout))
    except Exception as exc:  # noqa: BLE001 - a candidate that cannot be derived is recorded
        from .errors import KnobError

        status = "invalid" if isinstance(exc, KnobError) else "derivation_error"
        info.update(status=status, message=f"{type(exc).__name__}: {exc}"[:600])
        return "fail", math.inf, info
    info["flops"] = flops
    best, rate = st.best, st.rates.get(target, 0.0)
    if rate and not exempt and math.isfinite(best):
        # the fastest this target ever ran, applied to this candidate's FLOPs: an optimistic
        # prediction, so only candidates that cannot win are dropped
        predicted = flops / rate
        info["predicted_s"] = predicted
        if predicted > 2.0 * best:
            info.update(status="pruned", message="cost model: cannot beat the best")
            return "pruned", math.inf, info
    src = (problem.source, problem.origin)
    if low is not None:
        m_low = measure(Job(*src, low, knobs, target, config.dtype, config.seed,
                            TimingPolicy(warmup=1, min_repeats=3, max_repeats=5,
                                         max_seconds=5.0), reuse_graph=True),
                        st.timeout(config.candidate_timeout))
        info.update(low_status=m_low.status, low_median=m_low.median if m_low.samples else None)
        if m_low.status not in ("ok", "slow"):
            info.update(status=m_low.status, message=m_low.message, errors=m_low.errors)
            return "fail", math.inf, info
        if not exempt and math.isfinite(st.low_best) and m_low.median > 1.5 * st.low_best:
            info.update(status="pruned", message="low-fidelity screen: clearly slower")
            return "pruned", math.inf, info
    m = measure(Job(*src, dims, knobs, target, config.dtype, config.seed, config.policy,
                    best if math.isfinite(best) and not exempt else None, reuse_graph=True),
                st.timeout(config.candidate_timeout))
    info.update(status=m.status, message=m.message, measurement=m.to_json())
    if m.graph:
        info["graph"] = m.graph
    if m.status == "ok":
        return "ok", m.median, info
    if m.status == "slow":
        return "pruned", math.inf, info
    return "fail", math.inf, info


def _no_candidate_message(study: Any) -> str:
    """'no candidate finished successfully' with the reasons: counts by status and the first
    message of each."""
    counts: dict[str, int] = {}
    first: dict[str, str] = {}
    for t in study.get_trials(deepcopy=False):
        status = t.user_attrs.get("status")
        if not status or status in _FREE:
            continue
        counts[status] = counts.get(status, 0) + 1
        first.setdefault(status, str(t.user_attrs.get("message", "")).splitlines()[0][:200]
                         if t.user_attrs.get("message") else "")
    if not counts:
        return ("no candidate finished successfully: no trial was measured (the budget ended "
                "first; raise --timeout or --trials)")
    parts = [f"{n} {s}" + (f" (first: {first[s]})" if first[s] else "")
             for s, n in sorted(counts.items(), key=lambda kv: -kv[1])]
    return "no candidate finished successfully: " + "; ".join(parts)


def _contenders(entries: dict[str, Entry], baselines_knobs: Mapping[str, dict[str, Any]],
                config: SearchConfig) -> dict[str, Entry]:
    """The final round's field: the best few candidates, the named points, the baseline
    variants and the stored plan (an entry measured in the search keeps its measurement)."""
    target = config.targets[0]
    ranked = sorted((e for e in entries.values() if e.measurement.ok
                     and e.variant == "candidate"), key=lambda e: e.measurement.median)
    out = {e.key: e for e in ranked[: config.final_round_top]}
    fresh = [Entry(knobs, target, Measurement("ok", target), n)
             for n, knobs in baselines_knobs.items()]
    fresh += [Entry(baselines_knobs["naive"], target, Measurement("ok", target), v, v)
              for v in config.baselines]
    if config.incumbent is not None:
        fresh.append(config.incumbent)
    for e in fresh:
        existing = entries.get(e.key)
        out[e.key] = existing if existing is not None else e
        if existing is not None and not existing.name:
            existing.name = e.name
    return out


def _final(problem, dims, config, contenders, st: _State, measure, dgemm_rate, progress,
           clock, deadline) -> Contest:
    from .errors import MeasurementError

    src = (problem.source, problem.origin)
    n = max(dims.values())

    def job_for(e: Entry, policy: TimingPolicy) -> Job:
        return Job(*src, dims, e.knobs, e.target, config.dtype, config.seed, policy,
                   variant=e.variant)

    def gemm(target: str) -> float:
        try:
            return float(dgemm_rate(n, target, dtype=config.dtype))
        except (MeasurementError, AutotuneError):
            return math.nan  # a failed GEMM timing: this round has no rate

    return run_final_round(
        contenders, measure, job_for, lambda: st.timeout(config.candidate_timeout),
        gemm=gemm if dgemm_rate else None, deadline=deadline, clock=clock,
        min_rounds=config.final_round_repeats, max_rounds=config.final_round_max,
        interrupted=st.interrupted, progress=progress)


def _result(problem, dims, config, study, storage, name, st: _State, contenders,
            contest: Contest, dgemm_rate) -> SearchResult:
    import statistics

    entries = dict(st.entries)
    entries.update(contenders)
    best = contenders[contest.winner]
    baselines = {e.name: e for e in contenders.values() if e.name}
    fewest = min((e.measurement.flops for e in entries.values()
                  if e.measurement.ok and e.measurement.flops and e.variant == "candidate"),
                 default=0.0)
    rates = [r for r in contest.rates.get(best.target, []) if math.isfinite(r)]
    rate = max(rates, default=0.0)
    median = statistics.median(contest.samples[contest.winner])
    ratio = limit_ratio(median, fewest, rate)
    note = ""
    if ratio is None and rate and fewest and dgemm_rate:
        # a limit above the plan's own time is impossible: the GEMM was timed while other
        # work ran. Re-measure it (twice at most) before giving up on the figure.
        for _ in range(2):
            try:
                rate = max(rate, float(dgemm_rate(max(dims.values()), best.target,
                                                  dtype=config.dtype)))
            except AutotuneError:
                continue
            ratio = limit_ratio(median, fewest, rate)
            if ratio is not None:
                break
        if ratio is None:
            note = (f"the GEMM rate measured ({rate / 1e9:.1f} GFLOP/s) puts the physical "
                    "limit above the plan's own time: a disturbed measurement, not reported")
    kept = (config.incumbent is not None and contest.winner == config.incumbent.key
            and config.incumbent.key not in st.entries)
    return SearchResult(best, contest.samples, entries, baselines, name, storage,
                        len(study.trials), st.interrupted or contest.interrupted,
                        rate, fewest, ratio, note, contest.rounds, contest.decided, kept)
