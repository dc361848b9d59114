"""autotune: benchmark-driven autotuning of dense matrix computations.

State a computation (a problem file or SymPy objects); autotune derives equivalent ways to
compute it, compiles and verifies each, measures, searches, and stores the best plan.
"""

from __future__ import annotations

# first, before numpy or scipy load their OpenBLAS copies: thread-pool settings and BLAS flags
from .blas_setup import configure_environment as _configure_environment

_configure_environment()

from .api import InputError, PlanWarning, TunedFunction, find_plan, load_plan
from .derivation import derive
from .errors import (
    AutotuneError,
    CompileError,
    DerivationError,
    KnobError,
    MeasurementError,
    PlanError,
    ResourceError,
    SpecError,
    TargetError,
)
from .instances import check_fits, estimate_bytes
from .plan import Plan, read_plan
from .space import knob_space, named_point
from .spec import Problem, load_problem, parse_problem

__version__ = "0.1.0"

__all__ = [
    "AutotuneError",
    "CompileError",
    "DerivationError",
    "InputError",
    "KnobError",
    "MeasurementError",
    "Plan",
    "PlanError",
    "PlanWarning",
    "Problem",
    "ResourceError",
    "SpecError",
    "TargetError",
    "TunedFunction",
    "check_fits",
    "derive",
    "estimate_bytes",
    "find_plan",
    "knob_space",
    "load_plan",
    "load_problem",
    "named_point",
    "parse_problem",
    "read_plan",
]
