"""Helpers of the scripts that compare two checkouts of autotune (:mod:`benchmarks.versions`,
:mod:`benchmarks.derivations`): what each checkout is, as a table's header names it."""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["rev"]


def rev(tree: Path) -> str:
    """The short commit of the checkout at ``tree``, with ``(+ working tree)`` when its tracked
    files differ from that commit."""
    out = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain",
                            "--untracked-files=no"], capture_output=True, text=True)
    return (out.stdout.strip() or "?") + (" (+ working tree)" if dirty.stdout.strip() else "")
