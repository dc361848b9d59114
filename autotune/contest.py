"""The final round: the best candidates, the baselines and the stored plan re-timed side by
side, interleaved (A B C GEMM A B C GEMM ...), and a choice that survives noise.

A search trial is timed alone, at whatever moment the machine gave it; the final round times
the contenders in turns, so that drift and background load fall on all of them alike, and
times a GEMM in every round, so that the physical limit uses the rate of the same moments.

The choice is :func:`autotune.stats.choose`: a contender wins on the clock only when it is
*significantly* faster (LAAB's rule: its q75 at most the other's q25); among contenders the
clock cannot separate, the fewest FLOPs win. After ``min_rounds`` rounds the contenders still
undecided are re-timed, round after round, while the remaining budget allows one more round
and at most ``max_rounds`` in all; Ctrl-C decides on what was timed.

Only ``candidate`` entries can win (they are what a plan stores); the other variants --
``pytensor`` (the formula compiled with PyTensor's own rewrites) and ``numpy`` (NumPy as
written) -- are baselines, timed in the same rounds for the run's summary.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .measure import Job, Measurement, TimingPolicy
from .stats import Contender, choose, inconclusive

__all__ = ["Entry", "Contest", "run_final_round", "estimate_round"]


@dataclass
class Entry:
    """A measured candidate or baseline: knobs + target (+ variant) and its measurement."""

    knobs: dict[str, Any]
    target: str
    measurement: Measurement
    name: str = ""
    variant: str = "candidate"

    @property
    def key(self) -> str:
        base = repr((sorted(self.knobs.items()), self.target))
        return base if self.variant == "candidate" else f"{self.variant}:{base}"


@dataclass
class Contest:
    samples: dict[str, list[float]]  # entry key -> final-round samples
    winner: str
    rounds: int = 0
    rates: dict[str, list[float]] = field(default_factory=dict)  # target -> GEMM FLOP/s
    interrupted: bool = False
    decided: bool = True  # False: the budget ran out with contenders still undecided


def _median(e: Entry) -> float:
    return e.measurement.median if e.measurement.samples else math.inf


def estimate_round(entries: Mapping[str, Entry], fallback: float) -> float:
    """Seconds one round of ``entries`` should take: their medians (``fallback`` for an entry
    not timed yet), twice for a contender timed once a turn (its untimed call first)."""
    total = 0.0
    for e in entries.values():
        m = _median(e)
        m = m if math.isfinite(m) else fallback
        total += m * (2 if calls_per_turn(m) == 1 else 1)
    return total


def _contenders(entries: Mapping[str, Entry], samples: Mapping[str, list[float]]) -> list:
    return [Contender(k, tuple(samples[k]), e.measurement.flops)
            for k, e in entries.items() if e.variant == "candidate" and samples.get(k)]


def run_final_round(
    entries: dict[str, Entry],
    measure: Callable[[Job, float], Measurement],
    job_for: Callable[[Entry, TimingPolicy], Job],
    timeout: float | Callable[[], float],
    *,
    gemm: Callable[[str], float] | None = None,
    deadline: float = math.inf,
    clock: Callable[[], float],
    min_rounds: int = 5,
    max_rounds: int = 15,
    interrupted: bool = False,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> Contest:
    """Re-time ``entries`` interleaved and choose; updates ``entries`` in place with the
    measurement of an entry first timed here. ``gemm(target)`` times a GEMM on a target
    (FLOP/s), once per round for every target a candidate runs on. ``timeout``: seconds one
    measurement may take, or a function giving them (what is left of the run's budget)."""
    samples: dict[str, list[float]] = {k: [] for k in entries}
    rates: dict[str, list[float]] = {}
    live = dict(entries)
    rounds = 0
    limit = 1 if interrupted else max_rounds
    fallback = max((m for e in entries.values() if math.isfinite(m := _median(e))),
                   default=1.0)
    decided = True
    try:
        while rounds < limit and live:
            if rounds and clock() + estimate_round(live, fallback) > deadline:
                decided = not inconclusive(_contenders(entries, samples), paired=True)
                break
            _one_round(live, entries, samples, measure, job_for, timeout, first=rounds == 0)
            if gemm is not None:
                for t in sorted({e.target for e in live.values() if e.variant == "candidate"}):
                    rates.setdefault(t, []).append(gemm(t))
            rounds += 1
            if progress:
                progress({"phase": "final", "round": rounds, "of": max(min_rounds, rounds)})
            if rounds >= min_rounds:
                undecided = inconclusive(_contenders(entries, samples), paired=True)
                open_ = {c.key for c in undecided}
                live = {k: e for k, e in live.items() if k in open_}
    except KeyboardInterrupt:  # Ctrl-C in the final round: decide on what was timed
        interrupted = True
    for k, e in entries.items():
        if not samples[k] and e.measurement.ok:  # never re-timed: its search samples
            samples[k] = list(e.measurement.samples)
    candidates = _contenders(entries, samples)
    if not candidates:
        raise ValueError("no candidate was timed successfully")
    winner = choose(candidates, paired=not interrupted).key
    return Contest(samples, winner, rounds, rates, interrupted, decided)


def _one_round(live: dict[str, Entry], entries: dict[str, Entry],
               samples: dict[str, list[float]], measure, job_for, timeout: float,
               first: bool) -> None:
    from .faults import fault

    for k, e in list(live.items()):
        fault("final")
        # the first round warms each contender up (a worker restarted since, or a baseline
        # compiled here for the first time, is warm again after its first, untimed call);
        # a fast contender is called several times in its turn and the turn's median is its
        # sample, so that one preempted call of a few microseconds decides nothing. A
        # contender timed once a turn gets an untimed call first in every round: its sample
        # is then a call after its own, as a plan runs in a loop, not after another
        # contender's (NumPy as written frees 288 MB temporaries in WLS; the call after it
        # ran 1.7-2x slower there, the flop-optimal plan 100 ms against 66 ms, and lost)
        calls = calls_per_turn(e.measurement.median if e.measurement.samples else math.inf)
        warm = first or calls == 1
        policy = TimingPolicy(warmup=1 if warm else 0, min_repeats=calls, max_repeats=calls)
        m = measure(job_for(e, policy), timeout() if callable(timeout) else timeout)
        if m.ok:
            samples[k].append(statistics.median(m.samples))
            if not e.measurement.samples:  # a baseline first measured here
                entries[k] = live[k] = Entry(e.knobs, e.target, m, e.name, e.variant)
        else:
            if not samples[k]:
                entries[k] = Entry(e.knobs, e.target, m, e.name, e.variant)
            live.pop(k)


#: A contender's turn in a round lasts about this long (at most :data:`MAX_CALLS` calls).
TURN_SECONDS = 0.05
MAX_CALLS = 25


def calls_per_turn(median_s: float) -> int:
    """Calls of one contender in one round: one for a computation of 50 ms or more, up to 25
    for a fast one."""
    if not math.isfinite(median_s) or median_s <= 0:
        return 1
    return max(1, min(MAX_CALLS, round(TURN_SECONDS / median_s)))


def median_of(samples: list[float]) -> float:
    return statistics.median(samples) if samples else math.inf
