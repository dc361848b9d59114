"""Fault injection for the reliability tests: ``AUTOTUNE_FAULT`` names where to fail.

The variable holds ``PHASE:ACTION`` or ``PHASE:ACTION@N`` items separated by commas. When the
run reaches ``PHASE`` for the N-th time (default 1) in a process, ACTION happens there:

``sigint`` / ``sigterm``  the process sends itself the signal (what Ctrl-C or ``kill`` do)
``die``                   the process exits at once with status 137 (as if SIGKILLed)
``raise``                 a RuntimeError is raised at that point
``stall``                 the process sleeps there (up to an hour), as a hung kernel would:
                          a test can then act on a run that is certainly mid-phase

With ``AUTOTUNE_FAULT_ONCE`` naming a file, an action happens once across every process of
the run (the first to create the file acts): a restarted worker does not fail again.

Phases: ``trial`` (main process, before a search trial is measured), ``measure`` (worker,
while a candidate is measured), ``dgemm`` (worker, while the GEMM rate is timed), ``final``
(main process, before each final-round measurement), ``save`` (main process, while the plan
is written). A worker reads the variable when it starts, so a test sets it before the run.
Unset (always, outside tests), :func:`fault` costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import time

__all__ = ["PHASES", "ACTIONS", "fault"]

PHASES = ("trial", "measure", "dgemm", "final", "save")
ACTIONS = ("sigint", "sigterm", "die", "raise", "stall")

_counts: dict[str, int] = {}


def _plan() -> dict[str, tuple[str, int]]:
    text = os.environ.get("AUTOTUNE_FAULT", "").strip()
    out: dict[str, tuple[str, int]] = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        phase, _, rest = item.partition(":")
        action, _, nth = rest.partition("@")
        if phase not in PHASES or action not in ACTIONS:
            raise ValueError(f"AUTOTUNE_FAULT item {item!r}: phases {PHASES}, actions {ACTIONS}")
        out[phase] = (action, int(nth) if nth else 1)
    return out


def fault(phase: str) -> None:
    """Act on ``AUTOTUNE_FAULT`` for ``phase`` (see the module docstring)."""
    if "AUTOTUNE_FAULT" not in os.environ:
        return
    spec = _plan().get(phase)
    if spec is None:
        return
    _counts[phase] = _counts.get(phase, 0) + 1
    action, nth = spec
    if _counts[phase] != nth:
        return
    once = os.environ.get("AUTOTUNE_FAULT_ONCE")
    if once:
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    if action == "die":
        os._exit(137)
    if action == "raise":
        raise RuntimeError(f"injected fault in phase {phase!r}")
    if action == "stall":
        time.sleep(3600.0)
        return
    os.kill(os.getpid(), signal.SIGINT if action == "sigint" else signal.SIGTERM)
