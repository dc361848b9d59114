"""The matrices a formula inverts, and their solver labels (pure expression traversal).

:func:`inverse_labels` names every distinct inverted sub-expression of a problem: the name
of the definition it equals, else ``inv1``, ``inv2``, ... The knob space (one ``solver.*``
knob per label), the derivation and the blocking read it; it depends on nothing but the
property inference, so the problem parser can validate a ``[search]`` table without an
import cycle.
"""

from __future__ import annotations

from typing import Any

import sympy as sp
from sympy.matrices.expressions import Inverse

from .properties import FactBase, canonical

__all__ = ["inverse_labels", "inverted"]


def _inverses(e: sp.Basic) -> list[sp.Basic]:
    """Inverted sub-expressions, innermost first (in the order of a post-order traversal of
    the written-out tree, visiting every shared node once: linear in the distinct nodes)."""
    out: list[sp.Basic] = []
    found: set[sp.Basic] = set()
    seen: set[sp.Basic] = set()
    stack: list[tuple[sp.Basic, bool]] = [(e, False)]
    while stack:
        node, ready = stack.pop()
        if ready:
            if isinstance(node, Inverse) and node.arg not in found:
                found.add(node.arg)
                out.append(node.arg)
            continue
        if node in seen:
            continue
        seen.add(node)
        stack.append((node, True))
        stack.extend((a, False) for a in reversed(node.args) if a not in seen)
    return out


inverted = _inverses


def inverse_labels(problem: Any, fb: FactBase) -> dict[sp.Basic, str]:
    """A solver label for every distinct inverted sub-expression: the name of the definition
    it equals, else ``inv1``, ``inv2``, ... in order of appearance."""
    by_expr = {canonical(problem.expressions[d], fb): d for d in problem.definitions}
    labels: dict[sp.Basic, str] = {}
    count = 0
    for name in problem.outputs:
        for x in _inverses(problem.expressions[name]):
            key = canonical(x, fb)
            if key in labels:
                continue
            if key in by_expr:
                labels[key] = by_expr[key]
            else:
                count += 1
                labels[key] = f"inv{count}"
    return labels
