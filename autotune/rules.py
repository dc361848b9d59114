"""Rewrite rules: small named functions over SymPy matrix expressions, registered in phases.

A :class:`Rule` looks at one node of an expression and returns the equivalent expressions it
offers for that node (none when it does not apply). Rules come in two phases:

``normalize``
    rewrites that never cost more, applied everywhere until nothing changes: partial access
    pushed to the operands (``(A*B)[i, j]`` reads one row of A and one column of B, ``(A +
    B)[i, j]`` one entry of each), full slices dropped (a slice of a slice is merged by
    SymPy, identity factors of a product by :func:`product`).
``alternative``
    rewrites that may or may not pay: distributivity both ways (``(A - H.T*H)*x`` ->
    ``A*x - H.T*(H*x)``; ``A*B + A*C`` -> ``A*(B + C)``), the push-through identity
    (``inv(I + U*V)*U`` -> ``U*inv(I + V*U)``) and the Woodbury identity (the inverse of an
    easy matrix plus a low-rank term through a small inverse). :func:`variants` applies them
    anywhere in an expression, breadth first and bounded, and the derivation keeps the
    cheapest by its own cost model (the FLOPs of the program each variant derives to, other
    outputs included, so that sharing across outputs counts) or the r-th cheapest (the
    ``rewrite`` knob).

Why this design: SymPy's strategies (``exhaust``, ``branch``) and an e-graph (egglog) were
the candidates. An e-graph never loses an alternative to rule order but blows up under
associativity, and the chain order is already a dynamic program in :mod:`autotune.derivation`;
the alternatives here are few per formula (a product of a sum, terms sharing a factor), so a
bounded breadth-first enumeration of whole expressions, each costed by deriving it, finds
the same optimum for the formulas we meet and keeps each rule a ~10-line pure function that
the tests check structurally and numerically (tests/test_rules.py, parametrized over
:data:`RULES`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import sympy as sp
from sympy.matrices.exceptions import ShapeError
from sympy.matrices.expressions import (
    Identity,
    Inverse,
    MatAdd,
    MatMul,
    MatrixExpr,
    MatrixSlice,
    Transpose,
    ZeroMatrix,
)

from .formula import tree_size
from .properties import FactBase, canonical, split_coeff

__all__ = [
    "MAX_VARIANTS",
    "PHASES",
    "REWRITE_CHOICES",
    "RULES",
    "Rule",
    "normalize",
    "register_rule",
    "rewrites_apply",
    "variants",
]

PHASES = ("normalize", "alternative")
#: values of the ``rewrite`` knob: the cheapest variant, the formula as written, the r-th
REWRITE_CHOICES = ("cheapest", "as_written", 1, 2)
#: the most distinct variants of one expression :func:`variants` returns (the original first)
MAX_VARIANTS = 16
#: formulas larger than this (written out as a tree) get no alternatives: each variant is
#: costed by deriving the whole program (the shipped formulas have at most about 60 nodes)
MAX_REWRITE_NODES = 1000
#: normalizing passes over one expression before giving up (each pass is a full walk)
MAX_PASSES = 50

RuleFn = Callable[[sp.Basic, FactBase], list[sp.Basic]]


@dataclass(frozen=True)
class Rule:
    """One rewrite: ``apply(node, facts)`` returns the expressions equal to ``node`` that the
    rule offers (``[]``: it does not apply). ``example`` is a formula it applies to, over the
    square inputs A, B, C, H and the vectors x, y of size n (the registry tests derive it)."""

    name: str
    phase: str
    doc: str
    apply: RuleFn
    example: str


RULES: dict[str, Rule] = {}


def register_rule(name: str, phase: str, example: str) -> Callable[[RuleFn], RuleFn]:
    """Decorator: register ``fn`` as the rule ``name`` of ``phase`` (its docstring is the
    rule's description)."""
    if phase not in PHASES:
        raise ValueError(f"rule {name!r}: phase {phase!r} is not one of {', '.join(PHASES)}")

    def wrap(fn: RuleFn) -> RuleFn:
        if name in RULES:
            raise ValueError(f"rule {name!r} is already registered")
        RULES[name] = Rule(name, phase, (fn.__doc__ or "").strip(), fn, example)
        return fn

    return wrap


# -- building expressions ----------------------------------------------------------------------


def product(coeff: sp.Basic, mats: list[sp.Basic]) -> sp.Basic:
    """``coeff * mats[0] * mats[1] * ...``, flattened, identity factors dropped."""
    flat: list[sp.Basic] = []
    for m in mats:
        if not isinstance(m, MatrixExpr):  # a scalar factor (a MatMul's coefficient)
            coeff = coeff * m
            continue
        c, ms = split_coeff(m)
        coeff = coeff * c
        flat.extend(x for x in ms if not isinstance(x, Identity))
    if not flat:
        first = next(m for m in mats if isinstance(m, MatrixExpr))
        flat = [Identity(first.shape[0])]
    if any(isinstance(x, ZeroMatrix) for x in flat):
        return ZeroMatrix(flat[0].shape[0], flat[-1].shape[1])
    if coeff == 1:
        return flat[0] if len(flat) == 1 else MatMul(*flat)
    return MatMul(coeff, *flat)


def total(terms: list[sp.Basic]) -> sp.Basic:
    """The sum of ``terms``, zero terms dropped."""
    kept = [t for t in terms if not isinstance(t, ZeroMatrix)]
    if not kept:
        return terms[0]
    return kept[0] if len(kept) == 1 else MatAdd(*kept).doit(deep=False)


def rebuild(node: sp.Basic, args: list[sp.Basic]) -> sp.Basic:
    """``node`` with new arguments (flattening products and sums)."""
    if isinstance(node, MatMul):
        return product(sp.Integer(1), args)
    if isinstance(node, MatAdd):
        return total(args)
    if isinstance(node, MatrixSlice):
        return _slice(args[0], node.rowslice, node.colslice)
    return node.func(*args)


def _slice(parent: sp.Basic, rows: tuple, cols: tuple) -> sp.Basic:
    return MatrixSlice(parent, rows, cols)


def _children(node: sp.Basic) -> list[int]:
    """Indices of the matrix arguments of ``node`` that rules may rewrite."""
    if isinstance(node, MatrixSlice):
        return [0]
    if isinstance(node, (MatMul, MatAdd, Transpose, Inverse)):
        return [i for i, a in enumerate(node.args) if isinstance(a, MatrixExpr)]
    return []


# -- normalizing rules: partial access -------------------------------------------------------


def _full(sl: tuple, size: sp.Basic) -> bool:
    start, stop, step = sl
    return start == 0 and sp.simplify(stop - size) == 0 and step == 1


def _all(size: sp.Basic) -> tuple:
    return (sp.Integer(0), size, sp.Integer(1))


@register_rule("full_slice", "normalize", "A[:, :]")
def full_slice(node: sp.Basic, fb: FactBase) -> list[sp.Basic]:
    """``X[:, :]`` is ``X``."""
    if isinstance(node, MatrixSlice):
        p = node.parent
        if _full(node.rowslice, p.shape[0]) and _full(node.colslice, p.shape[1]):
            return [p]
    return []


@register_rule("slice_of_sum", "normalize", "(A + B)[2, 2]")
def slice_of_sum(node: sp.Basic, fb: FactBase) -> list[sp.Basic]:
    """``(A + B)[r, c]`` is ``A[r, c] + B[r, c]``: only the entries read are added."""
    if isinstance(node, MatrixSlice) and isinstance(node.parent, MatAdd):
        r, c = node.rowslice, node.colslice
        terms = []
        for t in node.parent.args:
            coeff, mats = split_coeff(t)
            base = mats[0] if len(mats) == 1 else MatMul(*mats)
            terms.append(product(coeff, [_slice(base, r, c)]))
        return [total(terms)]
    return []


@register_rule("slice_of_product", "normalize", "(A*B)[2, 2]")
def slice_of_product(node: sp.Basic, fb: FactBase) -> list[sp.Basic]:
    """``(A*B*C)[r, c]`` is ``A[r, :] * B * C[:, c]``: the chain then starts from a row and
    ends in a column (its order is still chosen by the dynamic program)."""
    if isinstance(node, MatrixSlice) and isinstance(node.parent, MatMul):
        coeff, mats = split_coeff(node.parent)
        if len(mats) < 2:
            return []
        first = _slice(mats[0], node.rowslice, _all(mats[0].shape[1]))
        last = _slice(mats[-1], _all(mats[-1].shape[0]), node.colslice)
        return [product(coeff, [first, *mats[1:-1], last])]
    return []


@register_rule("slice_of_transpose", "normalize", "A.T[1, :]")
def slice_of_transpose(node: sp.Basic, fb: FactBase) -> list[sp.Basic]:
    """``X.T[r, c]`` is ``X[c, r].T``."""
    if isinstance(node, MatrixSlice) and isinstance(node.parent, Transpose):
        return [Transpose(_slice(node.parent.arg, node.colslice, node.rowslice))]
    return []


# -- alternatives: distributivity --------------------------------------------------------------


@register_rule("distribute", "alternative", "(A - H.T*H)*x")
def distribute(node: sp.Basic, fb: FactBase) -> list[sp.Basic]:
    """``X*(A + B)*Y`` -> ``X*A*Y + X*B*Y``, one alternative per sum factor: a matrix-vector
    product through a sum of products (``(A - H.T*H)*x`` -> ``A*x - H.T*(H*x)``) never forms
    the sum; ``(I - X*Y)*Z`` -> ``Z - X*(Y*Z)`` never forms ``I - X*Y``."""
    if not isinstance(node, MatMul):
        return []
    coeff, mats = split_coeff(node)
    out = []
    for f, m in enumerate(mats):
        if isinstance(m, MatAdd):
            terms = [product(coeff, [*mats[:f], t, *mats[f + 1 :]]) for t in m.args]
            out.append(total(terms))
    return out


@register_rule("factor_out", "alternative", "A*B + A*C")
def factor_out(node: sp.Basic, fb: FactBase) -> list[sp.Basic]:
    """``A*B + A*C`` -> ``A*(B + C)`` and ``B*A + C*A`` -> ``(B + C)*A``: one product
    instead of two, for every factor shared by two or more terms on the left or the right."""
    if not isinstance(node, MatAdd):
        return []
    split = [split_coeff(t) for t in node.args]
    out = []
    for side in (0, -1):
        groups: dict[sp.Basic, list[int]] = {}
        for k, (_, mats) in enumerate(split):
            if len(mats) > 1:
                groups.setdefault(canonical(mats[side], fb), []).append(k)
        for members in groups.values():
            if len(members) < 2:
                continue
            shared = split[members[0]][1][side]
            rests = [product(split[k][0], split[k][1][1:] if side == 0 else split[k][1][:-1])
                     for k in members]
            inner = total(rests)
            grouped = product(sp.Integer(1), [shared, inner] if side == 0 else [inner, shared])
            others = [node.args[k] for k in range(len(split)) if k not in members]
            out.append(total([grouped, *others]))
    return out


# -- alternatives: inverse identities ----------------------------------------------------------


def _identity_plus(x: sp.Basic) -> tuple[sp.Basic, list[sp.Basic]] | None:
    """``(coeff, [U, ..., V])`` when ``x`` is ``I + coeff*U*...*V``."""
    if not isinstance(x, MatAdd) or len(x.args) != 2:
        return None
    ident = [t for t in x.args if isinstance(t, Identity)]
    if len(ident) != 1:
        return None
    other = x.args[1] if x.args[0] is ident[0] else x.args[0]
    coeff, mats = split_coeff(other)
    return (coeff, mats) if len(mats) >= 2 else None


@register_rule("push_through", "alternative", "inv(eye(n) + A*B)*A")
def push_through(node: sp.Basic, fb: FactBase) -> list[sp.Basic]:
    """``inv(I + c*U*V)*U`` -> ``U*inv(I + c*V*U)``: the inverse moves to the other side of
    the factor it meets, where the matrix inverted is ``V*U`` (small when U is tall)."""
    if not isinstance(node, MatMul):
        return []
    coeff, mats = split_coeff(node)
    out = []
    for f in range(len(mats) - 1):
        if not isinstance(mats[f], Inverse):
            continue
        parts = _identity_plus(mats[f].arg)
        if parts is None:
            continue
        c, uv = parts
        for p in range(1, len(uv)):
            u, v = uv[:p], uv[p:]
            after = mats[f + 1 : f + 1 + p]
            if len(after) < p or any(canonical(a, fb) != canonical(b, fb)
                                     for a, b in zip(after, u, strict=True)):
                continue
            inner = v + u
            small = Inverse(total([Identity(inner[0].shape[0]), product(c, inner)]))
            out.append(product(coeff, [*mats[:f], *u, small, *mats[f + 1 + p :]]))
    return out


@register_rule("woodbury", "alternative", "inv(A*A.T + x*x.T)*y")
def woodbury(node: sp.Basic, fb: FactBase) -> list[sp.Basic]:
    """The Woodbury identity: ``inv(A + U*V)`` -> ``inv(A) - inv(A)*U*inv(I + V*inv(A)*U)*
    V*inv(A)``, for a low-rank term ``U*V`` (inner dimension smaller than the matrix) of an
    inverted sum: one inverse of the easy part A (diagonal, triangular, factored once) and one
    of a small matrix instead of a large one. Rounding: verified like every candidate."""
    if not isinstance(node, Inverse) or not isinstance(node.arg, MatAdd):
        return []
    out = []
    terms = list(node.arg.args)
    n = fb.size(node.shape[0])
    for t, term in enumerate(terms):
        coeff, mats = split_coeff(term)
        if len(mats) < 2 or n is None:
            continue
        rest = terms[:t] + terms[t + 1 :]
        a = total(rest)
        if isinstance(a, ZeroMatrix):
            continue
        # the narrowest split U = mats[:p], V = mats[p:]
        widths = [(fb.size(mats[p].shape[0]), p) for p in range(1, len(mats))]
        known = [(w, p) for w, p in widths if w is not None]
        if not known:
            continue
        width, p = min(known)
        if width >= n:
            continue
        u, v = mats[:p], mats[p:]
        inv_a = a if isinstance(a, Identity) else Inverse(a)
        small = Inverse(total([Identity(u[-1].shape[1]),
                               product(coeff, [*v, inv_a, *u])]))
        correction = product(-coeff, [inv_a, *u, small, *v, inv_a])
        out.append(total([inv_a, correction]))
    return out


# -- applying rules ------------------------------------------------------------------------------


def _rewrite_once(expr: sp.Basic, rules: list[Rule], fb: FactBase,
                  memo: dict[sp.Basic, sp.Basic]) -> sp.Basic:
    """One bottom-up pass: every node's arguments first, then the first rule that applies."""
    hit = memo.get(expr)
    if hit is not None:
        return hit
    node = expr
    kids = _children(node)
    if kids:
        args = list(node.args)
        changed = False
        for i in kids:
            new = _rewrite_once(args[i], rules, fb, memo)
            if new is not args[i]:
                args[i] = new
                changed = True
        if changed:
            node = rebuild(node, args)
    for rule in rules:
        got = _offers(rule, node, fb)
        if got:
            node = got[0]
            break
    memo[expr] = node
    return node


def _offers(rule: Rule, node: sp.Basic, fb: FactBase) -> list[sp.Basic]:
    """What ``rule`` offers for ``node``; a rule that fails on an expression it did not
    foresee offers nothing (the formula as written stays a candidate)."""
    try:
        return rule.apply(node, fb)
    except (TypeError, ValueError, ShapeError):
        return []


def normalize(expr: sp.Basic, fb: FactBase) -> sp.Basic:
    """``expr`` with every normalizing rule applied until nothing changes."""
    rules = [r for r in RULES.values() if r.phase == "normalize"]
    for _ in range(MAX_PASSES):
        new = _rewrite_once(expr, rules, fb, {})
        if new == expr:
            return expr
        expr = new
    return expr


def _sites(expr: sp.Basic, path: tuple[int, ...] = ()) -> Iterator[tuple[tuple[int, ...],
                                                                          sp.Basic]]:
    """Every (path, node) of ``expr``'s rewritable nodes, the root first."""
    yield path, expr
    for i in _children(expr):
        yield from _sites(expr.args[i], (*path, i))


def _replace(expr: sp.Basic, path: tuple[int, ...], new: sp.Basic) -> sp.Basic:
    if not path:
        return new
    args = list(expr.args)
    args[path[0]] = _replace(args[path[0]], path[1:], new)
    return rebuild(expr, args)


def variants(expr: sp.Basic, fb: FactBase, limit: int = MAX_VARIANTS,
             max_sites: int = 200) -> list[sp.Basic]:
    """``expr`` (normalized) and up to ``limit - 1`` distinct equivalent expressions the
    alternative rules reach from it, breadth first (fewest rewrites first). Each expression
    is visited at no more than ``max_sites`` nodes, so a huge formula stays cheap."""
    rules = [r for r in RULES.values() if r.phase == "alternative"]
    start = normalize(expr, fb)
    if tree_size(start) > MAX_REWRITE_NODES:  # each variant is costed by a derivation
        return [start]
    seen = {canonical(start, fb)}
    out = [start]
    queue = [start]
    while queue and len(out) < limit:
        current = queue.pop(0)
        for n_site, (path, node) in enumerate(_sites(current)):
            if n_site >= max_sites or len(out) >= limit:
                break
            for rule in rules:
                for alt in _offers(rule, node, fb):
                    try:
                        new = normalize(_replace(current, path, alt), fb)
                    except (TypeError, ValueError, ShapeError):
                        continue  # an alternative SymPy cannot build is no alternative
                    key = canonical(new, fb)
                    if key in seen:
                        continue
                    seen.add(key)
                    out.append(new)
                    queue.append(new)
                    if len(out) >= limit:
                        return out
    return out


def rewrites_apply(problem, fb: FactBase) -> bool:
    """Some rule changes one of ``problem``'s outputs (so the ``rewrite`` knob matters);
    cached per problem and sizes."""
    key = (problem, tuple(sorted((str(k), v) for k, v in fb.dims.items())))
    hit = _APPLY_CACHE.get(key)
    if hit is None:
        hit = _APPLY_CACHE[key] = _rewrites_apply(problem, fb)
        if len(_APPLY_CACHE) > 256:
            _APPLY_CACHE.pop(next(iter(_APPLY_CACHE)))
    return hit


_APPLY_CACHE: dict[tuple, bool] = {}


def _rewrites_apply(problem, fb: FactBase) -> bool:
    for name in problem.outputs:
        expr = problem.expressions[name]
        if normalize(expr, fb) != expr or len(variants(expr, fb, limit=2)) > 1:
            return True
    return False
