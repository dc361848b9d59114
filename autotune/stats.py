"""Deciding on noisy timings: LAAB's significance rule, the choice among contenders, and the
physical limit that no honest figure goes below.

*Significantly faster* is LAAB's rule (HPAC's linear-algebra awareness benchmark): ``a`` is
faster than ``b`` only when the 75th percentile of ``a``'s samples is at most the 25th
percentile of ``b``'s -- their interquartile ranges do not overlap. A difference inside the
noise decides nothing.

:func:`choose` applies it to the final round: the *undominated* contenders are those that no
other contender is significantly faster than; among them the one with the fewest FLOPs wins
(the cost model breaks ties the clock cannot), then the lowest median. While more than one
contender is undominated the search re-times them (:func:`inconclusive`), within the budget.

:func:`limit_ratio` refuses impossible figures: a plan cannot run faster than its FLOPs at
the GEMM rate of the same machine, so a ratio below 1 means the GEMM was timed while other
work ran: a failed measurement, to be re-measured, never reported.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "quartiles",
    "significantly_faster",
    "sign_test",
    "undominated",
    "inconclusive",
    "choose",
    "Contender",
    "limit_ratio",
    "laab_slowdown",
    "laab_loss",
]


def quartiles(samples: Sequence[float]) -> tuple[float, float, float]:
    """(q25, median, q75) of ``samples`` (inclusive method; a single sample is all three)."""
    s = sorted(samples)
    if not s:
        raise ValueError("no samples")
    if len(s) == 1:
        return s[0], s[0], s[0]
    q = statistics.quantiles(s, n=4, method="inclusive")
    return q[0], q[1], q[2]


def significantly_faster(a: Sequence[float], b: Sequence[float], paired: bool = False,
                         alpha: float = 0.05) -> bool:
    """LAAB's rule: ``a`` is faster than ``b`` when q75(a) <= q25(b) and the medians differ.
    Needs at least two samples of each; fewer decide nothing.

    ``paired``: the samples were timed in interleaved rounds (``a[i]`` next to ``b[i]``), and
    ``a`` must also win a one-sided sign test over the rounds at level ``alpha`` (at least
    5 rounds). With a handful of samples the quartiles alone separate by chance too often;
    the rounds' pairing removes the drift they share."""
    if len(a) < 2 or len(b) < 2:
        return False
    qa, qb = quartiles(a), quartiles(b)
    if not (qa[2] <= qb[0] and qa[1] < qb[1]):
        return False
    return not paired or sign_test(a, b) <= alpha


def sign_test(a: Sequence[float], b: Sequence[float]) -> float:
    """One-sided p-value that ``a`` is no faster than ``b`` over paired rounds: the
    probability of at least as many rounds with ``a[i] < b[i]`` under a fair coin."""
    n = min(len(a), len(b))
    wins = sum(1 for x, y in zip(a[:n], b[:n], strict=True) if x < y)
    ties = sum(1 for x, y in zip(a[:n], b[:n], strict=True) if x == y)
    n -= ties
    if n <= 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n


@dataclass(frozen=True)
class Contender:
    key: str
    samples: tuple[float, ...]
    flops: float = 0.0

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("inf")


def undominated(contenders: Sequence[Contender], paired: bool = False) -> list[Contender]:
    """Contenders with samples that no other contender is significantly faster than
    (``paired``: their samples come from the same interleaved rounds)."""
    timed = [c for c in contenders if c.samples]
    return [c for c in timed
            if not any(significantly_faster(o.samples, c.samples, paired)
                       for o in timed if o is not c)]


def inconclusive(contenders: Sequence[Contender], paired: bool = False) -> list[Contender]:
    """The contenders still in the running (undominated) when more than one is: these are
    re-timed; an empty list when the measurement has decided."""
    live = undominated(contenders, paired)
    if len(live) <= 1:
        return []
    # fewer FLOPs break the tie only among equals: if every live contender has the same
    # FLOP count, the clock must decide, so they are re-timed; otherwise too, since a clear
    # difference may still appear with more samples
    return live


def choose(contenders: Sequence[Contender], paired: bool = False) -> Contender:
    """The winner: among the undominated contenders, the fewest FLOPs (unknown FLOPs count
    as the most), then the lowest median."""
    live = undominated(contenders, paired)
    if not live:
        raise ValueError("no contender has samples")
    return min(live, key=lambda c: (c.flops if c.flops > 0 else float("inf"), c.median))


def limit_ratio(median_s: float, flops: float, gemm_flop_rate: float) -> float | None:
    """``median_s`` over the physical limit (``flops`` at ``gemm_flop_rate``), or None when
    there is no limit or when the figure would be impossible (below 1: the GEMM rate was
    measured too low)."""
    if not (median_s > 0 and flops > 0 and gemm_flop_rate > 0):
        return None
    ratio = median_s / (flops / gemm_flop_rate)
    return ratio if ratio >= 1.0 else None


def laab_slowdown(t: Sequence[float], t_plus: Sequence[float]) -> float:
    """LAAB's slowdown of ``t`` against the optimised reference ``t_plus``:
    (median t - median t+) / median t+ when q75(t+) <= q25(t), else 0."""
    qt, qp = quartiles(t), quartiles(t_plus)
    if qp[2] <= qt[0]:
        return (qt[1] - qp[1]) / qp[1]
    return 0.0


def laab_loss(t: Sequence[float], t_plus: Sequence[float], t_minus: Sequence[float]) -> float:
    """LAAB's loss: slowdown(t) / slowdown(t-); 0 when t- is not slower than t+."""
    ref = laab_slowdown(t_minus, t_plus)
    return laab_slowdown(t, t_plus) / ref if ref > 0 else 0.0


def medians(samples: Mapping[str, Sequence[float]]) -> dict[str, float]:
    return {k: statistics.median(v) for k, v in samples.items() if v}
