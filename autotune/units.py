"""How figures are written in tables and messages: one formatter for durations, shared by the
reports (:mod:`autotune.comparison_report`, :mod:`autotune.runner`, :mod:`autotune.verify`)
and the benchmark scripts, so a duration reads the same everywhere."""

from __future__ import annotations

import math

__all__ = ["format_seconds"]


def format_seconds(x: float | None, missing: str = "-") -> str:
    """A duration in seconds as ``812.4 µs``, ``3.25 ms`` or ``1.176 s`` (three or four
    significant figures, the unit chosen by size; negative differences keep their sign);
    ``missing`` for None or a non-finite value."""
    if x is None or not math.isfinite(x):
        return missing
    a = abs(x)
    if a >= 1.0:
        return f"{x:.3f} s"
    if a >= 1e-3:
        return f"{x * 1e3:.2f} ms"
    return f"{x * 1e6:.1f} µs"
