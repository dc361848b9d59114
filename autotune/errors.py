"""The exception hierarchy: one base class, one subclass per pipeline stage."""

from __future__ import annotations


class AutotuneError(Exception):
    """Base class of every error autotune raises on purpose."""


class SpecError(AutotuneError, ValueError):
    """A problem specification (file, formula, field or Python object) is invalid."""


class DerivationError(AutotuneError):
    """A candidate cannot be derived from the problem with the given knobs."""


class KnobError(DerivationError, ValueError):
    """A knob value does not exist or does not apply to the problem."""


class CompileError(AutotuneError):
    """A candidate could not be lowered or compiled for a target."""


class TargetError(AutotuneError, ValueError):
    """An unknown or unavailable device target."""


class MeasurementError(AutotuneError):
    """A measurement could not be made."""


class PlanError(AutotuneError):
    """A stored plan is invalid, corrupted, from a newer schema, or misused."""


class ResourceError(AutotuneError):
    """A problem needs more than this machine has (memory for its sizes)."""
