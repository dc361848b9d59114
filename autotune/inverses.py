"""The matrices a formula inverts, and their solver labels (pure expression traversal).

:func:`inverse_labels` names every distinct inverted sub-expression of a problem: the name
of the definition (else the output) it equals, else ``inv1``, ``inv2``, ... The knob space
(one ``solver.*`` knob per label), the derivation and the blocking read it; it depends on
nothing but the property inference, so the problem parser can validate a ``[search]`` table
without an import cycle.

:func:`assume_invertible` draws the conclusions an expert draws from an inverse: the inverted
matrix is invertible (and so are the square factors of an inverted product), and an invertible
semidefinite matrix is positive definite. :meth:`autotune.spec.Problem.facts` applies it to
every problem; :attr:`autotune.spec.Problem.notes` keeps the reasoning.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sympy as sp
from sympy.matrices.expressions import Inverse, MatMul, MatPow, MatrixSymbol, Transpose

from .properties import INVERTIBLE, PD, PSD, FactBase, Facts, canonical, split_coeff

__all__ = ["inverse_labels", "inverted", "Inference", "assume_invertible"]


def _inverses(e: sp.Basic, powers: bool = False) -> list[sp.Basic]:
    """Inverted sub-expressions, innermost first (in the order of a post-order traversal of
    the written-out tree, visiting every shared node once: linear in the distinct nodes);
    with ``powers``, also the bases of negative integer powers (SymPy writes ``inv(C*C)`` as
    ``C**-2``)."""
    out: list[sp.Basic] = []
    found: set[sp.Basic] = set()
    seen: set[sp.Basic] = set()
    stack: list[tuple[sp.Basic, bool]] = [(e, False)]
    while stack:
        node, ready = stack.pop()
        if ready:
            arg = None
            if isinstance(node, Inverse):
                arg = node.arg
            elif (powers and isinstance(node, MatPow) and node.exp.is_Integer
                  and node.exp < 0):
                arg = node.base
            if arg is not None and arg not in found:
                found.add(arg)
                out.append(arg)
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
    (else of the output) it equals, else ``inv1``, ``inv2``, ... in order of appearance."""
    by_expr = {canonical(problem.expressions[d], fb): d for d in problem.definitions}
    for o in problem.outputs:
        by_expr.setdefault(canonical(problem.expressions[o], fb), o)
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


# -- what inverting a matrix says about it -------------------------------------------------


@dataclass
class Inference:
    """What the formulas' inverses imply (:func:`assume_invertible`).

    ``notes``: the reasoning, one sentence per conclusion, for the user ("C is inverted, so it
    is taken as positive definite"); ``atoms``: the closed facts of each input that gained
    some; ``full_rank``: the semidefinite inputs that appear inside an inverted matrix
    (random instances draw them at full rank, well conditioned, as a covariance a user
    inverts is)."""

    notes: list[str] = field(default_factory=list)
    atoms: dict[sp.Basic, Facts] = field(default_factory=dict)
    full_rank: set[sp.Basic] = field(default_factory=set)


def _must_be_invertible(x: sp.Basic) -> list[sp.Basic]:
    """``x`` and what must be invertible for ``x`` to be: the argument of a transpose or of an
    inverse, and every factor of a product of square matrices."""
    out = [x]
    if isinstance(x, (Transpose, Inverse)):
        out += _must_be_invertible(x.arg)
    elif isinstance(x, (MatMul, MatPow)):
        _, mats = split_coeff(x)
        if len(mats) == 1 or all(m.shape[0] == m.shape[1] for m in mats):
            for m in mats:
                out += _must_be_invertible(m)
    return out


def _matrix_atoms(e: sp.Basic) -> set[MatrixSymbol]:
    """The matrix symbols of ``e``, each shared node visited once."""
    from .formula import nodes

    return {x for x in nodes(e) if isinstance(x, MatrixSymbol)}


def _text(e: sp.Basic, names: Mapping[sp.Basic, str], fb: FactBase) -> str:
    """The name of ``e`` (a definition's) or its text; a large expression (a DAG of shared
    definitions, whose text is exponentially long) is named by its size."""
    from .formula import tree_size

    name = names.get(canonical(e, fb))
    if name:
        return name
    size = tree_size(e)
    return str(e) if size <= 200 else f"a {type(e).__name__} of {size} nodes"


def assume_invertible(
    exprs: Iterable[sp.Basic], fb: FactBase, names: Mapping[sp.Basic, str] | None = None
) -> Inference:
    """A matrix the formula inverts is invertible, and an invertible semidefinite matrix is
    positive definite: record that in ``fb`` (an inverted input is re-declared with
    ``invertible`` added, an inverted sub-expression registered as invertible; the closure
    adds ``positive_definite`` where it was semidefinite) for every inverse in ``exprs``,
    innermost first. Nothing is registered where the facts already say it. ``names`` (by
    canonical form) name sub-expressions in the notes (definitions and outputs); others are
    printed by SymPy."""
    names = {} if names is None else names
    out = Inference()
    declared = {a: f for a, f in fb.atoms.items()}
    seen: set[sp.Basic] = set()
    for e in exprs:
        for x in _inverses(e, powers=True):
            key = canonical(x, fb)
            if key in seen:
                continue
            seen.add(key)
            for part in _must_be_invertible(x):
                before = fb.facts(part)
                if INVERTIBLE in before:
                    continue
                if isinstance(canonical(part, fb), MatrixSymbol):  # C, or C.T of a symmetric C
                    part = canonical(part, fb)
                    before = fb.facts(part)
                if isinstance(part, MatrixSymbol):
                    fb.declare(part, set(fb.atoms.get(part, ())) | {INVERTIBLE},
                               fb.bands.get(part))
                else:
                    fb.register(part, {INVERTIBLE})
                after = fb.facts(part)
                what = _text(part, names, fb)
                how = "is inverted" if part is x else (
                    f"must be invertible for {_text(x, names, fb)} to be inverted")
                if PD in after and PSD in before:
                    out.notes.append(f"{what} {how}, so it is taken as positive definite "
                                     "(invertible and positive semidefinite)")
                else:
                    out.notes.append(f"{what} {how}, so it is taken as invertible")
            psd = sorted((a for a in _matrix_atoms(x)
                          if PSD in declared.get(a, ()) and PD not in fb.atoms.get(a, ())
                          and a not in out.full_rank), key=str)
            if psd and not (len(psd) == 1 and psd[0] == x):
                out.notes.append(
                    f"{' and '.join(map(str, psd))} {'is' if len(psd) == 1 else 'are'} inside "
                    f"the inverted {_text(x, names, fb)}: random instances draw "
                    f"{'it' if len(psd) == 1 else 'them'} at full rank")
            out.full_rank.update(psd)
    for a, f in fb.atoms.items():
        gained = f - declared.get(a, frozenset())
        if gained:
            out.atoms[a] = f
    return out
