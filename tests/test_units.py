"""One formatter for durations, used by every report and benchmark table."""

from __future__ import annotations

import math

import pytest

from autotune.units import format_seconds


@pytest.mark.parametrize(("x", "text"), [
    (1.1764, "1.176 s"), (0.41579, "415.79 ms"), (0.0048, "4.80 ms"),
    (0.000858, "858.0 µs"), (-0.00352, "-3.52 ms"), (-2e-5, "-20.0 µs"), (0.0, "0.0 µs"),
])
def test_durations_pick_their_unit_by_size(x, text):
    assert format_seconds(x) == text


@pytest.mark.parametrize("x", [None, math.nan, math.inf])
def test_missing_values(x):
    assert format_seconds(x) == "-"
    assert format_seconds(x, missing="—") == "—"


def test_reports_and_benchmarks_share_it():
    import benchmarks.call_checks
    import benchmarks.corpus
    from autotune import comparison_report, runner, verify

    assert benchmarks.corpus._t is benchmarks.call_checks._t is format_seconds
    assert comparison_report._fmt_time is runner._fmt is verify._t is format_seconds
