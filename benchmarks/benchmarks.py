"""asv benchmarks: the tuned plans against the baselines, per problem and size.

Parameters: ``problem`` (every shipped problem) x ``size`` (``small``; Kalman also
``medium``, n = 1000); combinations without a case are skipped (see ``common.CASES``).

What ``time_plan`` times: the stored plan for the problem at these sizes in ``results/``
(:func:`autotune.find_plan` with ``fallback='nearest'``: a plan tuned at other sizes
lends its knobs, re-derived and compiled at these sizes), or, when ``results/`` holds no
plan for the problem, the ``flop-optimal`` candidate (the cost model's choice, no
measurement). ``asv run`` therefore tracks the code path the committed plans exercise,
and the cost model's choice for the others. Every variant runs on the same BLAS thread
count (``AUTOTUNE_BENCH_THREADS``: 1 by default, ``all`` or a number; see ``common.py``).

Instances, references and the plan lookup are built once in ``setup_cache`` (shared by the
classes: they inherit one ``setup_cache``) and compiled functions in ``setup`` (compiled
functions do not pickle).
"""

from __future__ import annotations

from . import common


class _Suite:
    params = [list(common.PROBLEMS), list(common.SIZES)]
    param_names = ["problem", "size"]
    timeout = 300.0

    def setup_cache(self):
        return common.make_cache()

    setup_cache.timeout = 600  # type: ignore[attr-defined]

    def setup(self, cache, problem, size):
        self.case = common.Case(cache, problem, size)

    def teardown(self, cache, problem, size):
        case = getattr(self, "case", None)
        if case is not None:
            case.close()


class Plan(_Suite):
    """The tuned plan (or the flop-optimal candidate where no plan is stored)."""

    def setup(self, cache, problem, size):
        super().setup(cache, problem, size)
        self.fn = self.case.plan()

    def time_plan(self, cache, problem, size):
        self.fn(*self.case.args)

    def peakmem_plan(self, cache, problem, size):
        self.fn(*self.case.args)

    def track_accuracy(self, cache, problem, size):
        """Largest relative Frobenius error of the plan's outputs vs the float64
        reference."""
        return self.case.error(self.fn)

    track_accuracy.unit = "relative error"  # type: ignore[attr-defined]


class Baselines(_Suite):
    """What people write: the direct SymPy→PyTensor translation (the ``naive`` named
    point), the formula in NumPy as written, and a SciPy expert's version."""

    def setup(self, cache, problem, size):
        super().setup(cache, problem, size)
        self.naive = self.case.naive()
        self.numpy = self.case.numpy_as_written()
        self.scipy = self.case.scipy_expert()

    def time_naive(self, cache, problem, size):
        self.naive(*self.case.args)

    def time_numpy_as_written(self, cache, problem, size):
        self.numpy(*self.case.args)

    def time_scipy_expert(self, cache, problem, size):
        self.scipy(*self.case.args)


class Speedup(_Suite):
    """The plan's speedup over the naive translation, timed interleaved in one process
    (a ratio is steadier across machines than either time)."""

    def setup(self, cache, problem, size):
        super().setup(cache, problem, size)
        self.naive = self.case.naive()
        self.plan = self.case.plan()

    def track_speedup_over_naive(self, cache, problem, size):
        return self.case.ratio(self.naive, self.plan)

    track_speedup_over_naive.unit = "ratio"  # type: ignore[attr-defined]
