"""Block partitions of a problem, derived with SymPy's ``blockcut`` and ``block_collapse``.

Given how many blocks each dimension is cut into, every input is cut into blocks
(``blockcut``), each block becoming a symbol that keeps what the derivation needs to know:
diagonal blocks of SPD matrices are SPD, the upper blocks of a symmetric matrix are transposes
of the lower ones, blocks above a lower-triangular diagonal (and off a diagonal matrix's
diagonal) are zero, an identity is cut into identities and zeros. Every inverted
sub-expression becomes a named intermediate (a *let*) so that its properties survive blocking;
the inverse of a 2x2-blocked let goes through Schur complements (registered as SPD when the
matrix is, so blocked plans can still use Cholesky); larger grids are re-blocked as
[first block | the rest] with the rest's Schur complement a named, blocked intermediate.

The result is independent of the concrete sizes (blocks have symbolic sizes ``n_0, n_1, ...``)
and is cached in memory and on disk, written in the formula language and read back with the
safe parser (never ``eval`` or pickle).

Zero blocks (above a triangular diagonal, off a diagonal matrix's diagonal, of an identity) are
dropped: a product with a zero factor is zero, a sum forgets its zero terms, and the blocks of
an intermediate known to be zero there (the inverse or Schur complement of a triangular matrix)
are ``ZeroMatrix`` rather than named blocks. A zero block left as a whole block of a result is
computed as a zero matrix; an inverted zero block raises :class:`DerivationError`.

Bounded work: ``block_collapse`` writes every block of a product of k factors as a sum over
b^(k-1) index paths, so before collapsing, :func:`blocked_size` estimates the size of the
result from the shared nodes and a blocking over :data:`MAX_BLOCK_TERMS` is refused with a
:class:`DerivationError` (a failed candidate) instead of running for hours.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import sympy as sp
from sympy.matrices.expressions import (
    BlockMatrix,
    Identity,
    Inverse,
    MatAdd,
    MatMul,
    MatPow,
    MatrixExpr,
    MatrixSymbol,
    Transpose,
    ZeroMatrix,
    block_collapse,
    blockcut,
)

from .errors import AutotuneError, DerivationError
from .formula import parse_formula
from .inverses import _inverses, inverse_labels  # noqa: F401 - re-exported
from .properties import (
    DIAGONAL,
    IDENTITY,
    INVERTIBLE,
    LOWER,
    PD,
    PSD,
    SYMMETRIC,
    UPPER,
    FactBase,
    canonical,
    split_coeff,
)
from .spec import Problem, _formula_text

__all__ = ["Blocked", "block_problem", "factor_common", "cache_dir", "blocked_size"]

CACHE_VERSION = 8
#: the largest blocked derivation attempted, in block-level terms (:func:`blocked_size`); the
#: shipped problems need at most about 72,000 (EnKF, 4 blocks per dimension, 14 s)
MAX_BLOCK_TERMS = 200_000


@dataclass
class Blocked:
    """A blocked problem: per-output block grids of expressions over block symbols."""

    blocks: dict[str, int]
    size_symbols: dict[str, list[sp.Symbol]]  # dim -> block-size symbols (or [dim symbol])
    slices: dict[sp.Basic, tuple[str, int, int]]  # block symbol -> (input, row blk, col blk)
    lets: list[tuple[sp.Basic, sp.Basic]]  # (let symbol or block symbol, value expression)
    let_labels: dict[sp.Basic, str]  # canonical inverted expression -> solver label
    outputs: dict[str, list[list[sp.Basic]]]  # output -> grid of block expressions
    facts: list[tuple[sp.Basic, tuple[str, ...]]] = field(default_factory=list)
    symmetric_lets: set[str] = field(default_factory=set)


def cache_dir() -> Path:
    root = os.environ.get("AUTOTUNE_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "autotune"


def _sizes(problem: Problem, blocks: dict[str, int]) -> dict[str, list[sp.Symbol]]:
    out: dict[str, list[sp.Symbol]] = {}
    for d, sym in problem.dim_symbols.items():
        b = blocks.get(d, 1)
        out[d] = [sym] if b == 1 else [
            sp.Symbol(f"{d}_{i}", integer=True, positive=True) for i in range(b)
        ]
    return out


def _dim_sizes(size: sp.Basic, sizes: dict[str, list[sp.Symbol]]) -> list[sp.Basic]:
    if isinstance(size, sp.Symbol) and size.name in sizes:
        return list(sizes[size.name])
    return [size]


def _cut(
    name: str,
    sym: MatrixSymbol,
    facts: frozenset[str],
    rows: list[sp.Basic],
    cols: list[sp.Basic],
    fb: FactBase,
    slices: dict[sp.Basic, tuple[str, int, int]],
    registered: list[tuple[sp.Basic, tuple[str, ...]]],
) -> BlockMatrix:
    cut = blockcut(sym, tuple(rows), tuple(cols))  # a BlockMatrix of MatrixSlices
    same_dim = sym.shape[0] == sym.shape[1]
    symbols: dict[tuple[int, int], sp.Basic] = {}
    cells: dict[tuple[int, int], sp.Basic] = {}
    for i, j in _lower_blocks_first(len(rows), len(cols)):
        r, c = rows[i], cols[j]
        diag = same_dim and i == j
        assert cut.blocks[i, j].shape == (r, c)
        if IDENTITY in facts:
            cells[(i, j)] = Identity(r) if diag else ZeroMatrix(r, c)
            continue
        if same_dim and _zero_block(facts, i, j):
            cells[(i, j)] = ZeroMatrix(r, c)
            continue
        if same_dim and SYMMETRIC in facts and i < j:
            cells[(i, j)] = Transpose(symbols[(j, i)])
            continue
        block = MatrixSymbol(f"{name}_{i}_{j}", r, c)
        symbols[(i, j)] = block
        slices[block] = (name, i, j)
        props: set[str] = set()
        if diag:
            props |= {p for p in facts if p in (SYMMETRIC, PD, PSD, LOWER, UPPER, DIAGONAL)}
        fb.declare(block, props)
        registered.append((block, tuple(sorted(props))))
        cells[(i, j)] = block
    grid = [[cells[(i, j)] for j in range(len(cols))] for i in range(len(rows))]
    return BlockMatrix(grid)


def _lower_blocks_first(nrows: int, ncols: int) -> list[tuple[int, int]]:
    """The block positions, those on or below the diagonal first (row by row), then those
    above: the upper blocks of a symmetric matrix are the transposes of the lower ones."""
    return sorted(
        ((i, j) for i in range(nrows) for j in range(ncols)),
        key=lambda ij: (ij[0] < ij[1], ij),
    )


def _as_grid(e: sp.Basic) -> list[list[sp.Basic]]:
    if isinstance(e, BlockMatrix):
        b = e.blocks
        return [[b[i, j] for j in range(b.shape[1])] for i in range(b.shape[0])]
    return [[e]]


def _collapse(e: sp.Basic) -> list[list[sp.Basic]]:
    """``block_collapse`` and return the grid, merging nested 1x1 block matrices."""
    out = block_collapse(e)
    grid = _as_grid(out)
    return [[_unwrap(x) for x in row] for row in grid]


def _unwrap(e: sp.Basic) -> sp.Basic:
    while isinstance(e, BlockMatrix) and e.blocks.shape == (1, 1):
        e = e.blocks[0, 0]
    if isinstance(e, BlockMatrix):
        return e
    if e.args and isinstance(e, MatrixExpr) and not isinstance(e, MatrixSymbol):
        new = [(_unwrap(a) if isinstance(a, MatrixExpr) else a) for a in e.args]
        if new != list(e.args):
            return e.func(*new)
    return e


def factor_common(expr: sp.Basic) -> sp.Basic:
    """Undo the distribution that ``block_collapse`` does: ``A*X + A*Y -> A*(X + Y)`` and
    ``X*B + Y*B -> (X + Y)*B``, recursively, so shared operands are computed once."""
    if isinstance(expr, MatMul):
        c, mats = split_coeff(expr)
        new = [factor_common(m) for m in mats]
        return MatMul(c, *new) if c != 1 else (new[0] if len(new) == 1 else MatMul(*new))
    if isinstance(expr, (Inverse, Transpose)):
        return expr.func(factor_common(expr.arg))
    if not isinstance(expr, MatAdd):
        return expr
    terms = [split_coeff(t) for t in expr.args]
    for side in ("left", "right"):
        groups: dict[sp.Basic, list[int]] = {}
        for idx, (_, mats) in enumerate(terms):
            if len(mats) < 2:
                continue
            key = mats[0] if side == "left" else mats[-1]
            groups.setdefault(key, []).append(idx)
        best = max(groups.values(), key=len, default=[])
        if len(best) < 2:
            continue
        # longest common prefix/suffix of the group
        seqs = [terms[i][1] if side == "left" else terms[i][1][::-1] for i in best]
        common = 0
        while all(len(s) > common + 1 for s in seqs) and all(
            s[common] == seqs[0][common] for s in seqs
        ):
            common += 1
        shared = seqs[0][:common]
        # pull a common sign out: -A*X - A*Y -> -(A*(X + Y)), so the inner sum keeps the
        # form (and the canonical key) it has elsewhere
        sign = -1 if all(terms[i][0].is_number and terms[i][0] < 0 for i in best) else 1
        inner_terms = []
        for i, s in zip(best, seqs, strict=True):
            rest = s[common:] if side == "left" else s[common:][::-1]
            coeff = terms[i][0] * sign
            prod = rest[0] if len(rest) == 1 else MatMul(*rest)
            inner_terms.append(prod if coeff == 1 else MatMul(coeff, prod))
        inner = factor_common(MatAdd(*inner_terms).doit(deep=False))
        factors = list(shared) + [inner] if side == "left" else [inner] + list(shared[::-1])
        grouped = MatMul(*factors) if sign == 1 else MatMul(-1, *factors)
        others = [expr.args[i] for i in range(len(terms)) if i not in best]
        return factor_common(MatAdd(grouped, *others)) if others else grouped
    return MatAdd(*[factor_common(t) for t in expr.args]).doit(deep=False)


def _is_zero(e: sp.Basic) -> bool:
    return isinstance(e, ZeroMatrix)


def drop_zeros(e: sp.Basic) -> sp.Basic:
    """``e`` with its zero blocks dropped: a product with a zero factor is zero, a sum forgets
    its zero terms; an inverted zero block is singular (:class:`DerivationError`)."""
    memo: dict[sp.Basic, sp.Basic] = {}

    def go(x: sp.Basic) -> sp.Basic:
        if x in memo:
            return memo[x]
        out = x
        if isinstance(x, MatrixExpr) and x.args and not isinstance(x, (MatrixSymbol, Identity,
                                                                      ZeroMatrix)):
            args = [go(a) if isinstance(a, MatrixExpr) else a for a in x.args]
            if isinstance(x, MatMul) and any(_is_zero(a) for a in args):
                out = ZeroMatrix(*x.shape)
            elif isinstance(x, MatAdd):
                kept = [a for a in args if not _is_zero(a)]
                out = (ZeroMatrix(*x.shape) if not kept else kept[0] if len(kept) == 1
                       else MatAdd(*kept).doit(deep=False))
            elif isinstance(x, Inverse) and _is_zero(args[0]):
                raise DerivationError("blocking: the inverse of a zero block is singular")
            elif isinstance(x, Transpose) and _is_zero(args[0]):
                out = ZeroMatrix(*x.shape)
            elif isinstance(x, BlockMatrix):
                out = x
            elif args != list(x.args):
                out = x.func(*args)
        memo[x] = out
        return out

    return go(e)


def _zero_block(facts: frozenset[str], i: int, j: int) -> bool:
    """Block (i, j) of a square matrix cut the same way along both sides is zero."""
    return (
        (DIAGONAL in facts and i != j)
        or (LOWER in facts and i < j)
        or (UPPER in facts and i > j)
    )


#: structure an intermediate keeps through inversion and Schur complements
_STRUCTURE = (SYMMETRIC, PD, PSD, INVERTIBLE, LOWER, UPPER, DIAGONAL)


def _diagonal_block_facts(facts: frozenset[str]) -> set[str]:
    """What a diagonal block of a blocked intermediate inherits: definiteness, symmetry and
    triangular structure; invertibility too when the matrix is triangular (its diagonal
    blocks then carry its determinant) or definite."""
    out = {p for p in facts if p in (SYMMETRIC, PD, PSD, LOWER, UPPER, DIAGONAL)}
    if INVERTIBLE in facts and out & {LOWER, UPPER, DIAGONAL}:
        out.add(INVERTIBLE)
    return out


def blocked_size(problem: Problem, blocks: dict[str, int]) -> int:
    """An estimate of the number of block-level terms the blocked derivation writes out:
    per output block, a product of k factors is a sum over the index paths of its inner
    dimensions (b^(k-1) products of k blocks), a sum adds its terms' sizes, an inverse is a
    named intermediate (1) whose own blocks are counted once. Computed on the shared nodes
    (linear in the distinct nodes), as an exact integer however large."""
    nb: dict[sp.Basic, int] = {
        sym: max(1, blocks.get(name, 1)) for name, sym in problem.dim_symbols.items()
    }

    def nblocks(d: sp.Basic) -> int:
        return nb.get(d, 1)

    memo: dict[sp.Basic, int] = {}

    def size(e: sp.Basic) -> int:
        if e in memo:
            return memo[e]
        stack: list[tuple[sp.Basic, bool]] = [(e, False)]
        while stack:  # post-order, each shared node once: children before their parents
            x, ready = stack.pop()
            if x in memo:
                continue
            if not ready:
                stack.append((x, True))
                if not isinstance(x, Inverse):
                    stack.extend(
                        (a, False) for a in x.args if isinstance(a, MatrixExpr) and a not in memo
                    )
                continue
            if isinstance(x, Inverse) or not x.args or isinstance(
                x, (MatrixSymbol, Identity, ZeroMatrix)
            ):
                memo[x] = 1
            elif isinstance(x, (MatMul, MatPow)):
                _, mats = _split_counted(x)
                paths = 1
                for (m, count), (m2, _) in zip(mats, mats[1:] + [(None, 0)], strict=True):
                    inner = nblocks(m.shape[1])
                    paths *= inner ** (count - 1 if m2 is None else count)
                memo[x] = paths * sum(count * memo.get(m, 1) for m, count in mats)
            else:
                memo[x] = 1 + sum(memo.get(a, 1) for a in x.args if isinstance(a, MatrixExpr))
        return memo[e]

    total = 0
    for name in problem.outputs:
        e = problem.expressions[name]
        if not isinstance(e, MatrixExpr):
            continue
        total += size(e) * nblocks(e.shape[0]) * nblocks(e.shape[1])
        for x in _inverses(e):
            b = nblocks(x.shape[0])
            total += size(x) * b * b + b**3  # the let, its Schur complements and inverse
    return total


def _split_counted(e: sp.Basic) -> tuple[sp.Basic, list[tuple[sp.Basic, int]]]:
    """Like :func:`split_coeff`, with integer powers as (base, count) instead of repeated
    factors (a power of 2**40 is counted, not listed)."""
    if isinstance(e, MatPow) and getattr(e.exp, "is_Integer", False):
        k = int(e.exp)
        return sp.Integer(1), [(e.base if k > 0 else Inverse(e.base), abs(k))]
    out: list[tuple[sp.Basic, int]] = []
    coeff: sp.Basic = sp.Integer(1)
    for a in e.args:
        if isinstance(a, (MatMul, MatPow)):
            c, ms = _split_counted(a)
            coeff *= c
            out.extend(ms)
        elif isinstance(a, MatrixExpr):
            out.append((a, 1))
        else:
            coeff *= a
    return coeff, out


def block_problem(problem: Problem, blocks: dict[str, int], fb: FactBase) -> Blocked:
    """Block every input along the blocked dims and collapse the outputs (cached).

    Fresh derivations are written in the formula language and read back, exactly as cached
    ones are, so a plan derives the same program whether or not the cache was warm."""
    key = _cache_key(problem, blocks)
    cached = _MEMORY.get(key)
    if cached is None:
        data = _read(key)
        cached = _deserialize(problem, blocks, fb, data) if data is not None else None
        if cached is None:
            data = _derive_data(problem, blocks, fb)
            _write(key, data)
            cached = _deserialize(problem, blocks, fb, data)
            assert cached is not None
        _MEMORY[key] = cached
    for sym, props in cached.facts:
        if isinstance(sym, MatrixSymbol):
            fb.declare(sym, props)
        else:
            fb.register(sym, props)
    return cached


_MEMORY: dict[str, Blocked] = {}


def _derive_data(problem: Problem, blocks: dict[str, int], fb: FactBase) -> dict:
    """Derive and serialize a blocking, refusing one too large to write out, and turning what
    SymPy cannot do with it into a :class:`DerivationError` (a failed candidate, not a crash)."""
    cut = ", ".join(f"blocks.{d} = {b}" for d, b in sorted(blocks.items()) if b > 1)
    size = blocked_size(problem, blocks)
    if size > MAX_BLOCK_TERMS:
        raise DerivationError(
            f"{cut}: the blocked formulas would have about {size:.3g} block terms, over the "
            f"limit of {MAX_BLOCK_TERMS} (a product of k factors cut into b blocks has b^(k-1) "
            "terms per block); use fewer blocks"
        )
    try:
        return _serialize(_derive(problem, blocks, fb))
    except AutotuneError as exc:
        if isinstance(exc, DerivationError):
            raise
        raise DerivationError(f"{cut}: {exc}") from exc
    except (ValueError, TypeError, ArithmeticError, NotImplementedError, RecursionError) as exc:
        raise DerivationError(
            f"{cut}: SymPy cannot block these formulas ({type(exc).__name__}: {exc})"
        ) from exc


def _derive(
    problem: Problem, blocks: dict[str, int], fb: FactBase, collapse: bool = True
) -> Blocked:
    """Block and collapse; with ``collapse=False`` only the symbols and facts are built (the
    cheap part, used when the collapsed formulas come from the cache)."""
    blocking = _Blocking(problem, blocks, fb, collapse)
    exprs = {o: problem.expressions[o] for o in problem.outputs}
    for x in _all_inverted(exprs.values()):
        blocking.name_inverted(x)
    outputs = blocking.collapse_outputs(exprs) if collapse else {}
    return Blocked(
        blocks=dict(blocks),
        size_symbols=blocking.sizes,
        slices=blocking.slices,
        lets=blocking.lets,
        let_labels=blocking.let_labels,
        outputs=outputs,
        facts=blocking.registered,
        symmetric_lets=blocking.symmetric_lets,
    )


def _all_inverted(exprs: Iterable[sp.Basic]) -> list[sp.Basic]:
    """Every inverted sub-expression of the outputs, once each, in order of appearance."""
    out: list[sp.Basic] = []
    for e in exprs:
        for x in _inverses(e):
            if x not in out:
                out.append(x)
    return out


class _Blocking:
    """The state of one blocked derivation: the inputs cut into blocks, and the named
    intermediates (*lets*) with their facts and solver labels, built up as every inverted
    sub-expression is named and blocked (:meth:`name_inverted`) before the outputs are
    collapsed (:meth:`collapse_outputs`)."""

    def __init__(self, problem: Problem, blocks: dict[str, int], fb: FactBase,
                 collapse: bool) -> None:
        self.fb = fb
        self.collapse = collapse
        self.sizes = _sizes(problem, blocks)
        self.slices: dict[sp.Basic, tuple[str, int, int]] = {}
        self.registered: list[tuple[sp.Basic, tuple[str, ...]]] = []
        self.subs: dict[sp.Basic, sp.Basic] = {}  # input -> its block matrix
        for name, sym in problem.symbols.items():
            if not isinstance(sym, MatrixSymbol):
                continue
            rows = _dim_sizes(sym.shape[0], self.sizes)
            cols = _dim_sizes(sym.shape[1], self.sizes)
            self.subs[sym] = _cut(name, sym, fb.facts(sym), rows, cols, fb, self.slices,
                                  self.registered)
        self.labels = inverse_labels(problem, fb)
        self.lets: list[tuple[sp.Basic, sp.Basic]] = []
        self.let_labels: dict[sp.Basic, str] = {}
        self.let_subs: dict[sp.Basic, sp.Basic] = {}  # Inverse(X) -> Inverse(let block matrix)
        self.symmetric_lets: set[str] = set()

    def block_identity(self, e: sp.Basic) -> sp.Basic:
        """An identity of a blocked dimension as a block matrix of identities and zeros."""
        if isinstance(e, Identity):
            parts = _dim_sizes(e.shape[0], self.sizes)
            if len(parts) > 1:
                return BlockMatrix(
                    [[Identity(r) if i == j else ZeroMatrix(r, c) for j, c in enumerate(parts)]
                     for i, r in enumerate(parts)]
                )
        return e

    def collapsed(self, e: sp.Basic) -> list[list[sp.Basic]]:
        """``e`` over the blocked inputs, collapsed into a grid of factored block formulas."""
        grid = _collapse(_block_inputs(e, self.subs, self.block_identity))
        return [[factor_common(drop_zeros(v)) for v in row] for row in grid]

    def name_inverted(self, x: sp.Basic) -> None:
        """Name the inverted sub-expression ``x`` (a let, blocked like the inputs) and
        record what its inverse becomes: the blocks of the blocked inverse, or the inverse
        of the let."""
        label = self.labels.get(canonical(x, self.fb), "inv")
        facts = self.fb.facts(x)
        value = x.xreplace(self.let_subs)
        rows = _dim_sizes(x.shape[0], self.sizes)
        let = MatrixSymbol(label, x.shape[0], x.shape[1])
        if self.collapse:
            value_grid = self.collapsed(value)
        else:
            value_grid = [[ZeroMatrix(r, c) for c in rows] for r in rows]
        if SYMMETRIC in facts:
            self.symmetric_lets.add(label)
        grid = self.let_grid(label, rows, facts, value_grid)
        self.let_labels[canonical(let, self.fb)] = label
        if len(rows) >= 2:
            inverse = self.blocked_inverse(grid, rows, label, facts, 0)
            if inverse is not None:
                self.let_subs[Inverse(x)] = BlockMatrix(inverse)
        else:
            self.let_subs[Inverse(x)] = Inverse(let)

    def collapse_outputs(self, exprs: dict[str, sp.Basic]) -> dict[str, list[list[sp.Basic]]]:
        """Every output with its inverses replaced, as a grid of block formulas."""
        return {name: self.collapsed(e.xreplace(self.let_subs)) for name, e in exprs.items()}

    def let_grid(self, name: str, rows: list[sp.Basic], facts: frozenset[str],
                 value_grid: list[list[sp.Basic]]) -> list[list[sp.Basic]]:
        """Named blocks for an intermediate (lower blocks and transposes when symmetric)."""
        sym_let = SYMMETRIC in facts
        lsyms: dict[tuple[int, int], sp.Basic] = {}
        cells: dict[tuple[int, int], sp.Basic] = {}
        for i, j in _lower_blocks_first(len(rows), len(rows)):
            r, c = rows[i], rows[j]
            if len(rows) > 1 and _zero_block(facts, i, j):
                cells[(i, j)] = ZeroMatrix(r, c)  # known zero: no block, no let
                continue
            if sym_let and i < j:
                cells[(i, j)] = Transpose(lsyms[(j, i)])
                continue
            b = (MatrixSymbol(name, r, c) if len(rows) == 1
                 else MatrixSymbol(f"{name}_{i}_{j}", r, c))
            props = set(facts) if len(rows) == 1 else (
                _diagonal_block_facts(facts) if i == j else set()
            )
            self.fb.declare(b, props)
            self.registered.append((b, tuple(sorted(props))))
            lsyms[(i, j)] = b
            self.lets.append((b, value_grid[i][j]))
            cells[(i, j)] = b
        return [[cells[(i, j)] for j in range(len(rows))] for i in range(len(rows))]

    def blocked_inverse(self, grid: list[list[sp.Basic]], rows: list[sp.Basic], label: str,
                        facts: frozenset[str], depth: int) -> list[list[sp.Basic]] | None:
        """The blocks of the inverse (None when only the symbols are built): 2x2 through
        SymPy's Schur-complement rule, larger grids by their first block
        (:meth:`inverse_by_first_block`)."""
        if len(grid) == 2:
            return self.inverse_2x2(grid, label, facts)
        return self.inverse_by_first_block(grid, rows, label, facts, depth)

    def inverse_2x2(self, grid: list[list[sp.Basic]], label: str,
                    facts: frozenset[str]) -> list[list[sp.Basic]] | None:
        """A 2x2 grid's inverse by SymPy's rule; both Schur complements (and the blocks they
        invert) are labelled with the let's solver, and SPD when the matrix is."""
        a, bt, d = grid[0][0], grid[1][0], grid[1][1]
        b = grid[0][1]
        for schur, inner in ((d - bt * Inverse(a) * b, a), (a - b * Inverse(d) * bt, d)):
            if PD in facts:
                self.fb.register(schur, {PD})
                self.registered.append((schur, (PD,)))
            self.let_labels[canonical(schur, self.fb)] = label
            self.let_labels[canonical(inner, self.fb)] = label
        if not self.collapse:
            return None
        return [[drop_zeros(e) for e in row] for row in _collapse(Inverse(BlockMatrix(grid)))]

    def inverse_by_first_block(self, grid: list[list[sp.Basic]], rows: list[sp.Basic],
                               label: str, facts: frozenset[str],
                               depth: int) -> list[list[sp.Basic]]:
        """A larger grid re-blocked as [first block | the rest]: the rest's Schur complement
        becomes a named (blocked, SPD when the matrix is) intermediate inverted the same way,
        and the blocks of the inverse become named intermediates too -- the outputs that use
        them stay small expressions (``block_collapse`` of the unnamed formulas grows
        exponentially)."""
        a = grid[0][0]
        brow, bcol = grid[0][1:], [row[0] for row in grid[1:]]
        ainv = Inverse(a)
        self.let_labels[canonical(a, self.fb)] = label
        m = len(grid) - 1
        sc_value = [[factor_common(drop_zeros(grid[i + 1][j + 1] - bcol[i] * ainv * brow[j]))
                     for j in range(m)] for i in range(m)]
        sc_facts = frozenset(p for p in facts if p in _STRUCTURE)
        sc_grid = self.let_grid(f"{label}_s{depth}", rows[1:], sc_facts, sc_value)
        for row in sc_grid:
            for cell in row:
                self.let_labels[canonical(cell, self.fb)] = label
        sc_inv = self.blocked_inverse(sc_grid, rows[1:], label, sc_facts, depth + 1)
        if sc_inv is None:  # symbols only (reading the cache): placeholders for the values
            sc_inv = [[ZeroMatrix(r, c) for c in rows[1:]] for r in rows[1:]]
        out = _inverse_from_schur(ainv, brow, bcol, sc_inv)
        inv_facts = frozenset(p for p in facts if p in _STRUCTURE)
        return self.let_grid(f"{label}_i{depth}", rows, inv_facts,
                             [[factor_common(drop_zeros(e.doit(deep=False))) for e in row]
                              for row in out])


def _inverse_from_schur(ainv: sp.Basic, brow: list[sp.Basic], bcol: list[sp.Basic],
                        sc_inv: list[list[sp.Basic]]) -> list[list[sp.Basic]]:
    """The blocks of [[A, B], [C, D]]^-1 from A^-1 and the inverse S^-1 of the Schur
    complement S = D - C A^-1 B: [[A^-1 + A^-1 B S^-1 C A^-1, -A^-1 B S^-1],
    [-S^-1 C A^-1, S^-1]], with B a row and C a column of blocks."""
    m = len(brow)
    x = [ainv * brow[i] for i in range(m)]  # A^-1 B, a row of blocks
    y = [bcol[j] * ainv for j in range(m)]  # C A^-1, a column of blocks
    top = ainv + MatAdd(*[x[i] * sc_inv[i][j] * y[j] for i in range(m) for j in range(m)])
    out = [[top] + [-MatAdd(*[x[i] * sc_inv[i][j] for i in range(m)]) for j in range(m)]]
    for i in range(m):
        out.append([-MatAdd(*[sc_inv[i][j] * y[j] for j in range(m)])]
                   + [sc_inv[i][j] for j in range(m)])
    return out


def _block_inputs(e: sp.Basic, subs: dict[sp.Basic, sp.Basic], block_identity) -> sp.Basic:
    """Replace every input by its block matrix; wrap unblocked matrices as 1x1 blocks so that
    ``block_collapse`` sees block matrices throughout."""
    def rep(node: sp.Basic) -> sp.Basic:
        if node in subs:
            return subs[node]
        if isinstance(node, Identity):
            return block_identity(node)
        if isinstance(node, BlockMatrix):
            return node
        if isinstance(node, MatrixSymbol):
            return BlockMatrix([[node]])
        if not node.args or not isinstance(node, MatrixExpr):
            return node
        return node.func(*[rep(a) if isinstance(a, MatrixExpr) else a for a in node.args])

    return rep(e)


# -- cache -------------------------------------------------------------------------------


def _cache_key(problem: Problem, blocks: dict[str, int]) -> str:
    spec = json.dumps(
        {"v": CACHE_VERSION, "sympy": sp.__version__, "problem": problem.sha256,
         "blocks": sorted(blocks.items())},
        sort_keys=True,
    )
    return hashlib.sha256(spec.encode()).hexdigest()[:24]


#: a whole zero block in the cache (the formula language has no zero matrix)
ZERO = "0"


def _cell_text(e: sp.Basic) -> str:
    return ZERO if isinstance(e, ZeroMatrix) else _formula_text(e)


def _serialize(b: Blocked) -> dict:
    return {
        "blocks": b.blocks,
        "lets": [[sym.name, _cell_text(v)] for sym, v in b.lets],
        "outputs": {
            o: [[_cell_text(x) for x in row] for row in grid] for o, grid in b.outputs.items()
        },
    }


def _read(key: str) -> dict | None:
    path = cache_dir() / "derivations" / f"{key}.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None  # a damaged entry is re-derived


def _write(key: str, data: dict) -> None:
    try:
        d = cache_dir() / "derivations"
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(data, sort_keys=True))
        os.replace(tmp, d / f"{key}.json")
    except OSError:
        pass  # a cache that cannot be written only makes the next run slower


def _deserialize(problem: Problem, blocks: dict[str, int], fb: FactBase, data: dict):
    """Rebuild the symbols deterministically (cheap) and parse the formulas back with the
    safe parser."""
    try:
        skeleton = _derive_symbols(problem, blocks, fb)
        env: dict[str, sp.Basic] = {s.name: s for s in skeleton.slices}
        for s, _ in skeleton.lets:
            env[s.name] = s
        for name, sym in problem.symbols.items():
            env.setdefault(name, sym)
        dims = {s.name: s for syms in skeleton.size_symbols.values() for s in syms}
        dims.update(problem.dim_symbols)
        def cell(text: str, rows: sp.Basic, cols: sp.Basic) -> sp.Basic:
            if text == ZERO:
                return ZeroMatrix(rows, cols)
            return parse_formula(text, env, dims, "cache", limits=False)

        lets = [(env[n], cell(v, *env[n].shape)) for n, v in data["lets"]]
        outputs = {}
        for o in problem.outputs:  # in the problem's order (the file's keys are sorted)
            shape = problem.expressions[o].shape
            rows = _dim_sizes(shape[0], skeleton.size_symbols)
            cols = _dim_sizes(shape[1], skeleton.size_symbols)
            outputs[o] = [
                [cell(x, rows[i], cols[j]) for j, x in enumerate(row)]
                for i, row in enumerate(data["outputs"][o])
            ]
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    skeleton.lets = lets
    skeleton.outputs = outputs
    return skeleton


def _derive_symbols(problem: Problem, blocks: dict[str, int], fb: FactBase) -> Blocked:
    return _derive(problem, blocks, fb, collapse=False)
