"""The search: an Optuna study over the knobs and targets, then an interleaved final round.

* the named points (``naive``, ``seed-2x2``, ``flop-optimal``) are enqueued first;
* TPE by default, exhaustive (grid) when the space is smaller than the budget;
* the cost model prunes what cannot win (predicted time from FLOPs and the best FLOP rate a
  candidate reached on the same target), and a low-fidelity screen (a quarter of the size)
  drops candidates clearly slower than the best;
* failures (compile errors, inaccurate answers, crashes, timeouts) are recorded trials with
  their reason, never the end of the run;
* a final round re-times the best few and the baselines interleaved (A B C A B C ...) before
  choosing, so the winner is not a lucky sample.

The study lives in an SQLite file under the output folder by default (``--storage`` takes
any Optuna RDB URL, PostgreSQL included), so a run can be resumed and several processes can
tune one study. Measurement is injected (``measure``), so the search logic can be tested
with a fake, noiseless backend.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import AutotuneError
from .measure import Job, Measurement, TimingPolicy
from .space import NAMED_POINTS, knob_space, named_point
from .spec import Problem

__all__ = ["SearchConfig", "SearchResult", "tune", "study_name", "space_for"]

TARGET_PARAM = "target"


@dataclass
class SearchConfig:
    trials: int = 24
    timeout: float = 600.0  # seconds for the search phase
    targets: Sequence[str] = ("numba",)
    dtype: str = "float64"
    seed: int = 0
    storage: str | None = None  # Optuna storage URL; default: sqlite in out/
    out: Path = Path("results")
    final_round_top: int = 3
    enqueue: bool = True  # enqueue the named points (and, for small spaces, every point)
    final_round_repeats: int = 3
    low_fidelity: bool = True
    policy: TimingPolicy = field(default_factory=TimingPolicy)
    candidate_timeout: float = 300.0
    heap: str = "retain"  # the workers' heap policy (autotune.memory), recorded in the plan


@dataclass
class Entry:
    """A measured candidate: knobs + target and its measurement at the full size."""

    knobs: dict[str, Any]
    target: str
    measurement: Measurement
    name: str = ""

    @property
    def key(self) -> str:
        return repr((sorted(self.knobs.items()), self.target))


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
    dgemm_flops: float = 0.0


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


def tune(
    problem: Problem,
    dims: Mapping[str, int],
    config: SearchConfig,
    measure: Callable[[Job, float], Measurement],
    dgemm_rate: Callable[[int, str], float] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> SearchResult:
    """Run the study and the final round; return the result (the caller writes the plan)."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dims = dict(dims)
    space = space_for(problem, dims, config.targets)
    name = study_name(problem, dims, config.dtype, config.heap)
    storage = config.storage or f"sqlite:///{(config.out / 'autotune.db').resolve()}"
    config.out.mkdir(parents=True, exist_ok=True)
    total = _space_size(space)
    exhaustive = total <= config.trials
    if exhaustive:  # every point is enqueued below; the sampler is never asked
        sampler: optuna.samplers.BaseSampler = optuna.samplers.RandomSampler(seed=config.seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=config.seed)
    study = prepare_study(problem, dims, config, space, sampler, storage, name)
    default_target = config.targets[0]
    baselines_knobs = {n: named_point(problem, n, dims) for n in NAMED_POINTS}

    low = _low_dims(problem, dims) if config.low_fidelity else None
    entries: dict[str, Entry] = {}
    low_best = math.inf
    best = math.inf
    # the cost model, calibrated per target: the best FLOP rate a candidate reached there
    rates: dict[str, float] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        best = min(best, t.value)
        _restore(t, entries)
    for e in entries.values():
        _calibrate(rates, e)
    start = clock()
    interrupted = False
    done = 0
    repeats = 0  # consecutive proposals of points already measured
    seen = {_params_key(t.params): t.value
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    # points pruned or failed in this run: a sampler's repeat of one is answered with the
    # same state instead of being judged again (the sampler's repeats of a small space
    # would otherwise spend the whole budget re-pruning the same points)
    settled: dict[str, Any] = {}
    try:
        while done < config.trials and clock() - start < config.timeout:
            trial = study.ask({k: optuna.distributions.CategoricalDistribution(v)
                               for k, v in space.items()})
            knobs = {k: v for k, v in trial.params.items() if k != TARGET_PARAM}
            target = trial.params[TARGET_PARAM]
            named = trial.user_attrs.get("named", "")
            pkey = _params_key(trial.params)
            if not named and (pkey in seen or pkey in settled):
                # the sampler proposed a point already measured (or pruned, or failed): tell
                # it the known outcome instead of spending the budget on it again
                trial.set_user_attr("status", "duplicate")
                if pkey in seen:
                    study.tell(trial, seen[pkey])
                else:
                    study.tell(trial, state=settled[pkey])
                repeats += 1
                if repeats >= 50:
                    break  # the sampler keeps returning to measured points: the space is done
                continue
            repeats = 0
            done += 1
            full_knobs = {**baselines_knobs["flop-optimal"], **knobs}
            if named:
                full_knobs = {**baselines_knobs[named], **knobs}
            state, value, info = _evaluate(
                problem, dims, low, full_knobs, target, config, measure, rates.get(target, 0.0),
                best, low_best, exempt=bool(named),
            )
            for k, v in info.items():
                trial.set_user_attr(k, v)
            if named:
                trial.set_user_attr("named", named)
            if "low_median" in info and info.get("low_status") == "ok":
                low_best = min(low_best, info["low_median"])
            if state == "ok":
                best = min(best, value)
                seen[pkey] = value
                study.tell(trial, value)
                m = Measurement.from_json(info["measurement"])
                e = Entry(full_knobs, target, m, named or "")
                entries[e.key] = e
                _calibrate(rates, e)
            elif state == "pruned":
                settled[pkey] = TrialState.PRUNED
                study.tell(trial, state=TrialState.PRUNED)
            else:
                settled[pkey] = TrialState.FAIL
                study.tell(trial, state=TrialState.FAIL)
            if progress:
                progress({"trial": done, "of": config.trials, "best": best, "state": state,
                          "elapsed": clock() - start, "timeout": config.timeout,
                          "named": named, "info": info})
    except KeyboardInterrupt:
        interrupted = True
    if not entries:
        raise AutotuneError(
            "no candidate finished successfully; see the trials table (autotune report) for "
            "the reasons"
        )
    final, baselines, interrupted = _final_round(problem, dims, entries, baselines_knobs,
                                                 default_target, config, measure, interrupted)
    best_key = min(
        (k for k in final if entries[k].measurement.ok),
        key=lambda k: statistics.median(final[k]) if final[k] else math.inf,
    )
    best_entry = entries[best_key]
    rate = dgemm_rate(max(dims.values()), best_entry.target) if dgemm_rate else 0.0
    return SearchResult(best_entry, final, entries, baselines, name, storage,
                        len(study.trials), interrupted, rate)


def _params_key(params: Mapping[str, Any]) -> str:
    return repr(sorted(params.items()))


def _calibrate(rates: dict[str, float], e: Entry) -> None:
    m = e.measurement
    if m.ok and m.samples and m.flops:
        rates[e.target] = max(rates.get(e.target, 0.0), m.flops / m.median)


def prepare_study(problem: Problem, dims: Mapping[str, int], config: SearchConfig,
                  space: Mapping[str, list] | None = None, sampler: Any = None,
                  storage: str | None = None, name: str | None = None):
    """Create (or load) the study and enqueue the named points once. With several processes,
    one prepares the study and the others join it with ``enqueue=False``."""
    import optuna

    space = space or space_for(problem, dims, config.targets)
    name = name or study_name(problem, dims, config.dtype, config.heap)
    storage = storage or config.storage or f"sqlite:///{(config.out / 'autotune.db').resolve()}"
    study = optuna.create_study(study_name=name, storage=open_storage(storage),
                                sampler=sampler, direction="minimize", load_if_exists=True)
    if not config.enqueue:
        return study
    for n in NAMED_POINTS:
        knobs = named_point(problem, n, dims)
        if any(k in space and v not in space[k] for k, v in knobs.items()):
            continue  # outside the searched space: measured in the final round only
        params = {k: v for k, v in knobs.items() if k in space}
        params[TARGET_PARAM] = config.targets[0]
        study.enqueue_trial(params, user_attrs={"named": n}, skip_if_exists=True)
    if _space_size(space) <= config.trials:
        keys = list(space)
        for combo in itertools.product(*(space[k] for k in keys)):
            study.enqueue_trial(dict(zip(keys, combo, strict=True)), skip_if_exists=True)
    return study


def open_storage(url: str) -> Any:
    """Optuna storage for ``url``. SQLite gets a 60 s busy timeout (the driver's default is
    5 s): processes sharing one study file wait for each other's writes instead of failing
    with 'database is locked' on a loaded machine."""
    if url.startswith("sqlite:"):
        import optuna

        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return url


def _restore(t: Any, entries: dict[str, Entry]) -> None:
    """Rebuild an entry from a finished trial of an earlier (resumed) run."""
    m = t.user_attrs.get("measurement")
    knobs = t.user_attrs.get("knobs")
    if not m or knobs is None:
        return
    e = Entry(dict(knobs), t.params[TARGET_PARAM], Measurement.from_json(m),
              t.user_attrs.get("named", ""))
    entries[e.key] = e


def _evaluate(problem, dims, low, knobs, target, config, measure, rate, best, low_best,
              exempt: bool) -> tuple[str, float, dict[str, Any]]:
    from .derive import derive
    from .errors import KnobError

    info: dict[str, Any] = {"knobs": knobs}
    try:
        flops = derive(problem, knobs, dims).flops(dims)
    except KnobError as exc:
        info.update(status="invalid", message=str(exc))
        return "fail", math.inf, info
    info["flops"] = flops
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
                                         max_seconds=5.0)), config.candidate_timeout)
        info.update(low_status=m_low.status, low_median=m_low.median if m_low.samples else None)
        if m_low.status not in ("ok", "slow"):
            info.update(status=m_low.status, message=m_low.message, errors=m_low.errors)
            return "fail", math.inf, info
        if not exempt and math.isfinite(low_best) and m_low.median > 1.5 * low_best:
            info.update(status="pruned", message="low-fidelity screen: clearly slower")
            return "pruned", math.inf, info
    m = measure(Job(*src, dims, knobs, target, config.dtype, config.seed, config.policy,
                    best if math.isfinite(best) and not exempt else None),
                config.candidate_timeout)
    info.update(status=m.status, message=m.message, measurement=m.to_json())
    if m.status == "ok":
        return "ok", m.median, info
    if m.status == "slow":
        return "pruned", math.inf, info
    return "fail", math.inf, info


def _final_round(problem, dims, entries, baselines_knobs, default_target, config, measure,
                 interrupted: bool):
    """Re-time the best few and the baselines, interleaved."""
    ranked = sorted((e for e in entries.values() if e.measurement.ok),
                    key=lambda e: e.measurement.median)
    top = ranked[: config.final_round_top]
    baselines: dict[str, Entry] = {}
    for n, knobs in baselines_knobs.items():
        e = Entry(knobs, default_target, Measurement("ok", default_target), n)
        existing = entries.get(e.key)
        baselines[n] = existing or e
        entries.setdefault(e.key, baselines[n])
    contenders = {e.key: e for e in itertools.chain(top, baselines.values())}
    samples: dict[str, list[float]] = {k: [] for k in contenders}
    repeats = 1 if interrupted else config.final_round_repeats
    one = TimingPolicy(warmup=0, min_repeats=1, max_repeats=1)
    src = (problem.source, problem.origin)
    try:
        _interleave(contenders, samples, entries, baselines, repeats, one, src, dims, config,
                    measure)
    except KeyboardInterrupt:  # Ctrl-C in the final round: decide on what was timed
        interrupted = True
    for k, e in contenders.items():
        if not samples[k] and e.measurement.ok:  # never re-timed: its search samples
            samples[k] = list(e.measurement.samples)
    return samples, baselines, interrupted


def _interleave(contenders, samples, entries, baselines, repeats, one, src, dims, config,
                measure) -> None:
    for r in range(repeats):
        for k, e in contenders.items():
            policy = TimingPolicy(warmup=1, min_repeats=1, max_repeats=1) if r == 0 else one
            m = measure(Job(*src, dims, e.knobs, e.target, config.dtype, config.seed, policy),
                        config.candidate_timeout)
            if m.ok:
                samples[k].extend(m.samples)
                if not e.measurement.samples:  # a baseline first measured here
                    entries[k] = contenders[k] = Entry(e.knobs, e.target, m, e.name)
                    if e.name:
                        baselines[e.name] = entries[k]
            elif not samples[k]:
                entries[k] = contenders[k] = Entry(e.knobs, e.target, m, e.name)
                if e.name:
                    baselines[e.name] = entries[k]
