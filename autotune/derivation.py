"""Derivation: (problem, knobs) -> a :class:`~autotune.program.Program` of kernel calls.

What the builder does, in the order a formula meets it:

* rewrite rules (:mod:`autotune.rules`, unblocked candidates): partial access pushed to the
  operands, and the cheapest of the alternatives the rules offer (distributivity both ways),
  each costed by deriving the whole program (``rewrite`` knob: the cheapest, as written, or
  the r-th cheapest);
* block partitions (:mod:`autotune.blocking`), then, per block expression,
* chains: every matrix product is a chain of factors whose parenthesization is chosen by the
  ``order`` knob: the FLOP-optimal one (dynamic programming, aware of what is already
  computed), left-to-right, right-to-left, or the r-th cheapest of all;
* inverses never become explicit (except with an explicit solver): ``inv(S)*X`` is a solve
  from the left, ``X*inv(S)`` one from the right, with the solver the ``solver.*`` knob picks
  among those the properties allow; the solvers are records of the kernel registry
  (:data:`autotune.kernels.registry.SOLVERS`: how each is offered, costed and emitted), so
  the builder names none. One factorization per matrix is shared by every solve against it;
* a solver may rewrite its chain factor before the chain is ordered: ``cholesky_split``
  writes ``inv(S) = inv(L).T * inv(L)`` so that ``B.T*inv(S)*B`` becomes ``W.T*W`` with
  ``W = inv(L)*B``: a triangular solve and a symmetric rank-k update, and ``W`` is shared by
  every output that needs it (the Kalman filter's two outputs);
* a product with a structured factor calls the kernel its structure allows (from the
  kernel registry's costs): a diagonal factor is a scaling (``diag_mul``), a narrow banded
  one (tridiagonal, bidiagonal, a declared ``bandwidth``) a product diagonal by diagonal
  (``band_mul``), a triangular one TRMM; ``X*X.T`` and ``X.T*X`` are SYRK wherever ``X`` is
  computed once (``(A.T*B).T*(A.T*B)``, ``B.T*A*A.T*B``); scalar coefficients of scalar
  inputs (``(k - 1)``, ``1/(lam + mu)``) are computed once as a ``scalar`` step;
* a positive diagonal ``D`` between mirrored sides (``B.T*D*B``, ``H.T*inv(R)*H``) is split
  into ``D^(1/2) D^(1/2)``: the chain becomes ``X.T*X`` with ``X`` a row scaling of ``B``, a
  rank-k update; a sandwich ``X.T*M*X`` computes ``X`` once (its transpose is a view);
* banded matrices that are inverted are solved in band storage (``band_solve``, the
  ``banded`` solver): their band built from their terms' factors, never formed densely;
* common subexpressions are shared by canonical form, including transposed reuse
  (``H*Sigma`` serves as ``(Sigma*H.T).T`` when Sigma is symmetric), sub-chains that only
  appear after reassociation, and sums computed before inside a larger sum, up to sign
  (``Ps1 - A*P*A.T - Q`` once ``A*P*A.T + Q`` is computed).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any

import numpy as np
import sympy as sp
from sympy.matrices.expressions import (
    Identity,
    Inverse,
    MatAdd,
    MatMul,
    MatPow,
    MatrixExpr,
    MatrixSlice,
    MatrixSymbol,
    Transpose,
    ZeroMatrix,
)

from .blocking import Blocked, block_problem, inverse_labels
from .errors import DerivationError, KnobError
from .formula import MAX_FACTORS, eval_dim
from .fusion import fuse
from .kernels.registry import KERNELS, SOLVERS, Operand, solver_choices, structured_product
from .knobs import normalize_knobs
from .program import Program, Step
from .properties import (
    DIAGONAL,
    INVERTIBLE,
    LOWER,
    PD,
    SYMMETRIC,
    FactBase,
    canonical,
    split_coeff,
)
from .rules import variants
from .spec import Problem

__all__ = ["derive", "block_sizes"]

SHARED_ALWAYS = ("input", "slice", "transpose", "cholesky", "eye", "zeros")
#: the most steps of one program: without ``cse`` every use of a shared sub-expression is
#: computed again, which for definitions used several times grows exponentially
MAX_STEPS = 20_000
#: the most terms of a sum searched for an already computed part (2^k subsets)
MAX_SHARED_TERMS = 6
#: the most factors of one chain the ordering accepts (the parser refuses products of more
#: than ``formula.MAX_FACTORS``; a Cholesky split turns one inverse into two factors)
MAX_CHAIN = 2 * MAX_FACTORS
#: the r-th cheapest parenthesization is searched among all of them up to this many factors
MAX_ENUMERATED = 8


def block_sizes(dim: str, blocks: int, cut: Any) -> dict[str, str]:
    """Formulas for the block sizes ``dim_0 .. dim_{b-1}`` in terms of ``dim``."""
    if blocks == 1:
        return {}
    if cut == "even":
        return {
            f"{dim}_{i}": f"({dim}*{i + 1})//{blocks} - ({dim}*{i})//{blocks}"
            for i in range(blocks)
        }
    frac = Fraction(cut).limit_denominator(1000)
    first = f"({dim}*{frac.numerator})//{frac.denominator}"
    out = {f"{dim}_0": first}
    rest = f"({dim} - {first})"
    b = blocks - 1
    for i in range(1, blocks):
        out[f"{dim}_{i}"] = f"({rest}*{i})//{b} - ({rest}*{i - 1})//{b}"
    return out


def derive(
    problem: Problem, knobs: Mapping[str, Any], dims: Mapping[str, int] | None = None
) -> Program:
    """Derive the program of a candidate (deterministic; cached per problem, knobs and
    dims)."""
    values = problem.resolve_dims(dims)
    knobs = normalize_knobs(problem, knobs, values)
    return _derive_cached(problem, _freeze(knobs), _freeze(values))


def _freeze(d: Mapping[str, Any]) -> tuple:
    return tuple(sorted(d.items()))


@lru_cache(maxsize=256)
def _derive_cached(problem: Problem, knobs_t: tuple, values_t: tuple) -> Program:
    knobs = dict(knobs_t)
    values = dict(values_t)
    fb = problem.facts(values)
    blocks = {d: int(knobs.get(f"blocks.{d}", 1)) for d in problem.dims}
    sizes: dict[str, str] = {}
    for d, b in blocks.items():
        sizes.update(block_sizes(d, b, knobs.get(f"cut.{d}", "even")))
    env = dict(values)
    from .formula import parse_dim_formula

    for name, formula in sizes.items():
        env[name] = parse_dim_formula(formula, f"block size {name}")(env)
        if env[name] < 1:
            raise KnobError(
                f"cut.{name.rsplit('_', 1)[0]}: block {name} would be empty at these sizes "
                f"({', '.join(f'{k}={v}' for k, v in values.items())}); use fewer blocks or "
                "another cut"
            )
    blocked = block_problem(problem, blocks, fb) if any(b > 1 for b in blocks.values()) else None
    for name, v in env.items():
        fb.dims[sp.Symbol(name, integer=True, positive=True)] = v
    fb.clear_caches()
    exprs = _rewritten_outputs(problem, knobs, fb) if blocked is None else None
    builder = _Builder(problem, knobs, fb, blocked, exprs)
    program = builder.build()
    if knobs["cse"]:
        program = fuse(program)
    return Program(
        program.steps,
        program.inputs,
        program.outputs,
        sizes,
        {"knobs": knobs, "blocks": blocks},
    )


def _rewritten_outputs(problem: Problem, knobs: Mapping[str, Any], fb: FactBase
                       ) -> dict[str, sp.Basic]:
    """Each output's expression after the rewrite rules (:mod:`autotune.rules`): as written
    (``rewrite = "as_written"``), or the cheapest of the variants the rules offer (the r-th
    cheapest for ``rewrite = r``), costed by deriving the whole program with the other
    outputs' current choice, so that what an output shares with the others counts. A tie
    keeps the form as written."""
    exprs = {n: problem.expressions[n] for n in problem.outputs}
    choice = knobs.get("rewrite", "cheapest")
    if choice == "as_written":
        return exprs
    rank = 0 if choice == "cheapest" else int(choice)
    dims = {str(d): v for d, v in fb.dims.items()}
    options = _output_variants(problem, fb, dims)
    chosen = {n: opts[0] for n, opts in options.items()}
    for name, opts in options.items():
        if len(opts) == 1:
            continue
        costs: list[tuple[float, int]] = []
        for k, option in enumerate(opts):
            try:
                program = _Builder(problem, knobs, fb, None, {**chosen, name: option}).build()
            except DerivationError:
                continue
            costs.append((program.flops(dims), k))
        if costs:
            costs.sort()
            chosen[name] = opts[costs[min(rank, len(costs) - 1)][1]]
    return chosen


#: (problem, sizes) -> each output's variants (see :func:`_output_variants`)
_VARIANTS: dict[tuple, dict[str, list[sp.Basic]]] = {}
MAX_VARIANT_SETS = 64


def _output_variants(problem: Problem, fb: FactBase, dims: Mapping[str, int]
                     ) -> dict[str, list[sp.Basic]]:
    """Each output's variants (:func:`autotune.rules.variants`), enumerated once per problem
    and sizes: they depend on the formulas and their facts, not on the knobs, and a search
    derives many knob points of one problem (only their costs differ)."""
    key = (problem, tuple(sorted(dims.items())))
    hit = _VARIANTS.get(key)
    if hit is None:
        if len(_VARIANTS) >= MAX_VARIANT_SETS:
            _VARIANTS.clear()
        hit = _VARIANTS[key] = {n: variants(problem.expressions[n], fb)
                                for n in problem.outputs}
    return hit


@dataclass
class _Tree:
    i: int
    j: int
    split: int | None = None
    left: _Tree | None = None
    right: _Tree | None = None


class _ChainModel:
    """What the chain DP asks of a product of ``leaves``: the cost of combining sub-chains
    ``i..s`` and ``s+1..j`` (a solve for an inverse factor, a structured kernel, the symmetric
    product, else GEMM), which sub-chains are already computed (CSE), which are symmetric, and
    which mirror each other (``X.T X``, sandwiches)."""

    def __init__(self, builder: _Builder, leaves: list[sp.Basic]) -> None:
        self.b, self.leaves = builder, leaves
        self.rows = [builder.size(m.shape[0]) for m in leaves]
        self.cols = [builder.size(m.shape[1]) for m in leaves]
        self.virtual = [builder.is_virtual(m) for m in leaves]
        self.structured = [builder.structure(m) for m in leaves]
        self._sym: dict[tuple[int, int], bool] = {}
        self._tr: dict[tuple[int, int, int, int], bool] = {}

    def expr(self, i: int, j: int) -> sp.Basic:
        return self.leaves[i] if i == j else MatMul(*self.leaves[i : j + 1])

    def available(self, i: int, j: int) -> bool:
        if not self.b.cse or i == j:
            return False
        return self.b.lookup(self.expr(i, j)) is not None

    def symmetric(self, i: int, j: int) -> bool:
        """The product of leaves i..j is known symmetric (the symmetric-product kernel
        computes one triangle of it)."""
        if (i, j) not in self._sym:
            self._sym[(i, j)] = (bool(self.b.knobs.get("symprod"))
                                 and self.rows[i] == self.cols[j]
                                 and self.b.structurally_symmetric(self.expr(i, j)))
        return self._sym[(i, j)]

    def combine_cost(self, i: int, s: int, j: int) -> float:
        rows, cols, leaves = self.rows, self.cols, self.leaves
        lv = i == s and self.virtual[i]
        rv = s + 1 == j and self.virtual[j]
        if lv and rv:
            return self.b.solve_cost(leaves[j].arg, cols[j]) + self.b.solve_cost(
                leaves[i].arg, cols[j]
            )
        if lv:
            return self.b.solve_cost(leaves[i].arg, cols[j])
        if rv:
            return self.b.solve_cost(leaves[j].arg, rows[i])
        shapes = ((rows[i], cols[s]), (cols[s], cols[j]))
        if i == s and self.structured[i] is not None:
            return _structured_cost(self.structured[i], shapes, "left")
        if s + 1 == j and self.structured[j] is not None:
            return _structured_cost(self.structured[j], shapes, "right")
        if self.symmetric(i, j):
            return float(rows[i] * (rows[i] + 1) * cols[s])
        return 2.0 * rows[i] * cols[s] * cols[j]

    def mirrored(self, i: int, s: int, j: int) -> bool:
        """The left operand is the transpose of the right one (X.T * X)."""
        if s - i != j - s - 1:
            return False
        return self.b.key(Transpose(self.expr(i, s))) == self.b.key(self.expr(s + 1, j))

    def transposes(self, i: int, t: int, k: int, m: int) -> bool:
        """The sub-chain ``i..t`` is the transpose of ``k..m`` (by canonical form)."""
        if (i, t, k, m) not in self._tr:
            self._tr[(i, t, k, m)] = (
                self.rows[i] == self.cols[m] and self.cols[t] == self.rows[k]
                and self.b.key(Transpose(self.expr(i, t))) == self.b.key(self.expr(k, m)))
        return self._tr[(i, t, k, m)]

    def pair_cost(self, i: int, s: int, j: int) -> float:
        k = self.rows[s + 1]
        return (1.0 if self.b.knobs["syrk"] else 2.0) * self.cols[j] * self.cols[j] * k


class _Builder:
    def __init__(
        self, problem: Problem, knobs: Mapping[str, Any], fb: FactBase, blocked: Blocked | None,
        exprs: Mapping[str, sp.Basic] | None = None,
    ) -> None:
        self.problem = problem
        self.exprs = exprs if exprs is not None else problem.expressions
        self.knobs = knobs
        self.fb = fb
        self.blocked = blocked
        self.cse = bool(knobs["cse"])
        self.steps: list[Step] = []
        self.hashcons: dict[tuple, int] = {}
        self.memo: dict[sp.Basic, int] = {}
        self.bound: dict[sp.Basic, int] = {}
        self.labels: dict[sp.Basic, str] = inverse_labels(problem, fb)
        if blocked is not None:
            self.labels.update(blocked.let_labels)
        self.factors: dict[sp.Basic, MatrixSymbol] = {}
        self.inputs: dict[str, int] = {}
        self.structures: dict[sp.Basic, _Structure | None] = {}
        self._solvers: dict[sp.Basic, str] = {}  # solver by inverted matrix (see kernel)
        #: symbols standing for a power of a positive diagonal input: symbol -> (input, power)
        self.roots: dict[MatrixSymbol, tuple[MatrixSymbol, float]] = {}

    # -- steps ------------------------------------------------------------------------------
    def add(self, op: str, args: tuple[int, ...], shape: tuple[Any, Any], label: str = "",
            **attrs: Any) -> int:
        shp = (str(shape[0]), str(shape[1]))
        attr_t = tuple(sorted(attrs.items()))
        key = (op, args, shp, attr_t)
        share = self.cse or op in SHARED_ALWAYS
        if share and key in self.hashcons:
            return self.hashcons[key]
        if len(self.steps) >= MAX_STEPS:
            raise DerivationError(
                f"the program would have more than {MAX_STEPS} steps"
                + ("" if self.cse else " (cse = false computes every use of a shared "
                   "sub-expression again; use cse = true)")
            )
        self.steps.append(Step(op, args, shp, attr_t, label))
        idx = len(self.steps) - 1
        if share:
            self.hashcons[key] = idx
        return idx

    def shape_of(self, i: int) -> tuple[str, str]:
        return self.steps[i].shape

    def transpose(self, i: int) -> int:
        s = self.steps[i]
        if s.op == "transpose":
            return s.args[0]
        return self.add("transpose", (i,), (s.shape[1], s.shape[0]), f"({s.label}).T")

    def step_size(self, i: int) -> tuple[int, int]:
        """The concrete shape of step ``i``."""
        env = {str(k): v for k, v in self.fb.dims.items()}
        r, c = self.steps[i].shape
        return eval_dim(r, env), eval_dim(c, env)

    def size(self, d: sp.Basic) -> int:
        v = self.fb.size(d)
        if v is None:
            raise DerivationError(f"no concrete size for {d}")
        return v

    # -- top level -------------------------------------------------------------------------
    def build(self) -> Program:
        problem = self.problem
        for name, sym in problem.symbols.items():
            shape = sym.shape if isinstance(sym, MatrixExpr) else (1, 1)
            self.inputs[name] = self.add("input", (), shape, name, name=name)
            self.bound[sym] = self.inputs[name]
        outputs: dict[str, int] = {}
        if self.blocked is None:
            for name in problem.outputs:
                outputs[name] = self.emit(self.exprs[name])
            return Program(tuple(self.steps), self.inputs, outputs)
        b = self.blocked
        for block, (name, i, j) in b.slices.items():
            self.bound[block] = self._slice(name, i, j, block)
        for sym, value in b.lets:
            self.bound[sym] = self.emit(value)
        for name, grid in b.outputs.items():
            outputs[name] = self.assemble(name, grid)
        return Program(tuple(self.steps), self.inputs, outputs)

    def _offsets(self, size: sp.Basic) -> list[tuple[str, str]]:
        b = self.blocked
        assert b is not None
        name = getattr(size, "name", None)
        parts = b.size_symbols.get(name, [size]) if name else [size]
        out = []
        start = "0"
        for p in parts:
            stop = str(p) if start == "0" else f"{start} + {p}"
            out.append((start, stop))
            start = stop
        return out

    def _slice(self, name: str, i: int, j: int, block: MatrixSymbol) -> int:
        sym = self.problem.symbols[name]
        rows = self._offsets(sym.shape[0])[i]
        cols = self._offsets(sym.shape[1])[j]
        return self.add(
            "slice", (self.inputs[name],), block.shape, block.name, rows=rows, cols=cols
        )

    def assemble(self, name: str, grid: list[list[sp.Basic]]) -> int:
        expr = self.problem.expressions[name]
        mirror = bool(self.knobs["mirror"]) and SYMMETRIC in self.fb.facts(expr)
        args: list[int] = []
        cells: list[tuple[tuple[int, bool], ...]] = []
        computed: dict[tuple[int, int], int] = {}
        for i, row in enumerate(grid):
            for j, e in enumerate(row):
                if mirror and i < j:
                    continue
                computed[(i, j)] = self.emit(e)
        for i, row in enumerate(grid):
            cell_row = []
            for j, _ in enumerate(row):
                if (i, j) in computed:
                    step, tr = computed[(i, j)], False
                else:
                    step, tr = computed[(j, i)], True
                if step not in args:
                    args.append(step)
                cell_row.append((args.index(step), tr))
            cells.append(tuple(cell_row))
        if len(grid) == 1 and len(grid[0]) == 1:
            return computed[(0, 0)]
        return self.add("block", tuple(args), expr.shape, name, grid=tuple(cells))

    # -- expressions --------------------------------------------------------------------------
    def key(self, e: sp.Basic) -> sp.Basic:
        return canonical(e, self.fb)

    def lookup(self, e: sp.Basic) -> int | None:
        if not self.cse:
            return None
        k = self.key(e)
        if k in self.memo:
            return self.memo[k]
        if isinstance(e, MatrixExpr):
            kt = self.key(Transpose(e))
            if kt in self.memo:
                return self.transpose(self.memo[kt])
        return None

    def remember(self, e: sp.Basic, step: int) -> int:
        if self.cse:
            self.memo.setdefault(self.key(e), step)
        return step

    def emit(self, e: sp.Basic) -> int:
        if e in self.bound:
            return self.bound[e]
        hit = self.lookup(e)
        if hit is not None:
            return hit
        return self.remember(e, self._emit(e))

    def _emit(self, e: sp.Basic) -> int:
        if isinstance(e, MatrixSymbol):
            raise DerivationError(f"unbound symbol {e} in the derivation")
        if isinstance(e, Identity):
            return self.add("eye", (), e.shape, "I")
        if isinstance(e, ZeroMatrix):
            return self.add("zeros", (), e.shape, "0")
        if isinstance(e, Transpose):
            inner = self.emit(e.arg)
            if SYMMETRIC in self.fb.facts(e.arg):
                return inner
            return self.transpose(inner)
        if isinstance(e, MatrixSlice):
            return self.emit_slice(e)
        if isinstance(e, Inverse):
            if isinstance(e.arg, ZeroMatrix):
                raise DerivationError(f"{_label(e)}: the inverse of a zero block is singular")
            return self.chain([e], _label(e))
        if isinstance(e, MatAdd):
            return self.emit_sum(e)
        if isinstance(e, (MatMul, MatPow)):
            coeff, mats = split_coeff(e)
            step = self.chain(self.leaves(mats), _label(e))
            return self.scale(step, coeff, e)
        raise DerivationError(f"cannot derive {e} ({type(e).__name__})")

    def emit_slice(self, e: MatrixSlice) -> int:
        """A part of a value (a view): rows and columns as dimension formulas."""
        bounds = []
        for (start, stop, step), size in zip((e.rowslice, e.colslice), e.parent.shape,
                                             strict=True):
            if step != 1:
                raise DerivationError(f"{_label(e)}: slices with a step are not supported")
            lo, hi, n = self.size(start), self.size(stop), self.size(size)
            if not 0 <= lo < hi <= n:
                raise DerivationError(f"{_label(e)}: index range {lo}:{hi} is outside "
                                      f"0:{n} at these sizes")
            bounds.append((_dim_text(start), _dim_text(stop)))
        return self.add("slice", (self.emit(e.parent),), e.shape, _label(e),
                        rows=bounds[0], cols=bounds[1], partial=True)

    def scale(self, step: int, coeff: sp.Basic, e: sp.Basic) -> int:
        if coeff == 1:
            return step
        if coeff == -1:
            return self.add("neg", (step,), self.shape_of(step), _label(e))
        number = sp.Integer(1)
        scalars: list[int] = []
        powers: list[int] = []
        for factor in sp.Mul.make_args(coeff):
            base, exp = factor.as_base_exp()
            if factor.is_number:
                number *= factor
            elif isinstance(base, sp.Symbol) and base in self.bound and exp.is_Integer:
                scalars.append(self.bound[base])
                powers.append(int(exp))
            else:  # (k - 1), 1/(lam + mu): computed once, as a scalar step
                scalars.append(self.scalar(factor, e))
                powers.append(1)
        return self.add(
            "scale", (step, *scalars), self.shape_of(step), _label(e),
            coeff=float(number), powers=tuple(powers),
        )

    def scalar(self, x: sp.Basic, e: sp.Basic) -> int:
        """A step computing the scalar expression ``x`` of scalar inputs."""
        operands: list[int] = []

        def tree(y: sp.Basic) -> tuple:
            if y.is_number:
                value = complex(y)
                if value.imag or not np.isfinite(value.real):
                    raise DerivationError(f"scalar {y} in {_label(e)} is not a finite real")
                return ("num", value.real)
            if isinstance(y, sp.Symbol):
                if y not in self.bound:
                    raise DerivationError(f"unknown scalar {y} in {_label(e)}")
                if self.bound[y] not in operands:
                    operands.append(self.bound[y])
                return ("arg", operands.index(self.bound[y]))
            if isinstance(y, sp.Add):
                return ("add", *(tree(a) for a in y.args))
            if isinstance(y, sp.Mul):
                return ("mul", *(tree(a) for a in y.args))
            if isinstance(y, sp.Pow) and y.exp.is_number:
                return ("pow", tree(y.base), float(y.exp))
            raise DerivationError(f"unsupported scalar expression {y} in {_label(e)}; scalars "
                                  "may be added, multiplied, divided and raised to a number")

        t = tree(x)
        return self.add("scalar", tuple(operands), (1, 1), str(x), expr=t)

    def emit_sum(self, e: MatAdd) -> int:
        shared = self.shared_subsum(e)
        if shared is not None:
            return shared
        terms = [split_coeff(t) for t in e.args]
        terms.sort(key=lambda t: 0 if (t[0].is_number and t[0] > 0) else 1)
        acc: int | None = None
        done: sp.Basic | None = None  # the terms summed into acc so far
        for coeff, mats in terms:
            prod = mats[0] if len(mats) == 1 else MatMul(*mats)
            term = prod if coeff == 1 else MatMul(coeff, *mats)
            if acc is None:
                acc = self.scale(self.emit(prod), coeff, e)
                done = term
                continue
            assert done is not None
            if coeff in (1, -1):
                v = self.emit(prod)
                s = self.steps[v]
                # the symmetric kernels read one triangle of the matrix they update: fuse
                # only into a sum that is symmetric so far
                if s.op == "syrk" and len(s.args) == 1 and self.symmetric(done):
                    acc = self.add(
                        "syrk", (s.args[0], acc), self.shape_of(acc), _label(e),
                        alpha=float(coeff) * s.attr("alpha", 1.0), beta=1.0,
                    )
                elif s.op == "symprod" and len(s.args) == 2 and self.symmetric(done):
                    acc = self.add(
                        "symprod", (*s.args, acc), self.shape_of(acc), _label(e),
                        alpha=float(coeff) * s.attr("alpha", 1.0), beta=1.0,
                    )
                elif self._fusable(acc) and self.symmetric(term):
                    # the sum so far is one symmetric kernel call: the new term is its C
                    cur = self.steps[acc]
                    acc = self.add(
                        cur.op, (*cur.args, v), self.shape_of(acc), _label(e),
                        alpha=cur.attr("alpha", 1.0), beta=float(coeff),
                    )
                else:
                    op = "add" if coeff == 1 else "sub"
                    acc = self.add(op, (acc, v), self.shape_of(acc), _label(e))
            else:
                acc = self.add("add", (acc, self.scale(self.emit(prod), coeff, e)),
                               self.shape_of(acc), _label(e))
            done = MatAdd(done, term)
        assert acc is not None
        return acc

    def shared_subsum(self, e: MatAdd) -> int | None:
        """A sum that holds an already computed sum among its terms, up to sign
        (``Ps1 - A*P*A.T - Q`` once ``A*P*A.T + Q`` is computed): the rest added to (or that
        sum subtracted from) it, instead of computing its terms again. Sums of at most
        :data:`MAX_SHARED_TERMS` terms, the largest shared part first. A part is looked up
        only when each of its terms is a term of some computed sum (see :meth:`_term_forms`):
        canonical forms of sums are costly, and blocked derivations meet thousands of sums."""
        terms = list(e.args)
        if not self.cse or not 2 < len(terms) <= MAX_SHARED_TERMS:
            return None
        sums = [k for k in self.memo if isinstance(k, MatAdd)]
        sizes = {len(k.args) for k in sums}
        if not sizes & set(range(2, len(terms))):
            return None
        known = {a for k in sums for a in k.args}
        forms = self._term_forms(terms)

        def maybe(part: tuple[int, ...], sign: int) -> bool:
            if forms is None:
                return True
            at = 0 if sign == 1 else 2
            return any(all(forms[k] is None or forms[k][at + t] in known for k in part)
                       for t in (0, 1))

        for size in range(len(terms) - 1, 1, -1):
            if size not in sizes:
                continue
            for chosen in itertools.combinations(range(len(terms)), size):
                part = [terms[k] for k in chosen]
                for sign in (1, -1):
                    if not maybe(chosen, sign):
                        continue
                    cand = MatAdd(*part) if sign == 1 else MatAdd(*[_neg(t) for t in part])
                    hit = self.lookup(cand)
                    if hit is None:
                        continue
                    rest = [terms[k] for k in range(len(terms)) if k not in chosen]
                    other = self.emit(rest[0] if len(rest) == 1 else MatAdd(*rest))
                    return self.add("add" if sign == 1 else "sub", (other, hit),
                                    self.shape_of(hit), _label(e))
        return None

    def _term_forms(self, terms: list[sp.Basic]
                    ) -> list[tuple[sp.Basic, ...] | None] | None:
        """Per term, the canonical forms a computed sum holding it (as computed, or
        transposed; with either sign) has among its terms: ``(t, t.T, -t, -t.T)``. None for a
        term whose form is itself a sum (a computed sum holds its terms, flattened); None for
        all when two terms have the same form (a sum holding both holds their multiple)."""
        out: list[tuple[sp.Basic, ...] | None] = []
        for t in terms:
            neg = _neg(t)
            forms = (self.key(t), self.key(Transpose(t)), self.key(neg), self.key(Transpose(neg)))
            out.append(None if any(isinstance(f, MatAdd) for f in forms) else forms)
        seen = [f[0] for f in out if f is not None] + [f[2] for f in out if f is not None]
        if len(set(seen)) < len(seen):
            return None
        return out

    def _fusable(self, i: int) -> bool:
        """Step i is a symmetric kernel call without a C term (syrk of A, symprod of A, B)."""
        st = self.steps[i]
        return (st.op == "syrk" and len(st.args) == 1) or (
            st.op == "symprod" and len(st.args) == 2)

    def structurally_symmetric(self, e: sp.Basic) -> bool:
        """A product equal to its own transpose by canonical form (H*Sigma*H.T with Sigma
        symmetric): what the chain kernels may rely on, cheap enough for the DP."""
        return self.key(Transpose(e)) == self.key(e)

    def symmetric(self, e: sp.Basic) -> bool:
        """Known symmetric: structurally (its transpose has the same canonical form, as
        H*Sigma*H.T with Sigma symmetric) or by the fact base."""
        if e.shape[0] != e.shape[1]:
            return False
        if self.key(Transpose(e)) == self.key(e):
            return True
        return SYMMETRIC in self.fb.facts(e)

    # -- kernels for inverses ------------------------------------------------------------------
    def kernel(self, x: sp.Basic) -> str:
        """The solver for inverting ``x``: the knob's choice where valid, else the first
        offered (memoised: the chain DP asks for every inverse factor it costs)."""
        hit = self._solvers.get(x)
        if hit is None:
            hit = self._solvers[x] = self._kernel(x)
        return hit

    def _kernel(self, x: sp.Basic) -> str:
        facts = self.fb.facts(x)
        valid = solver_choices(facts, self.fb.bandwidth(x), self.fb.size(x.shape[0]) or 0)
        label = self.labels.get(self.key(x))
        if label is None and isinstance(x, Transpose):
            label = self.labels.get(self.key(x.arg))
        choice = self.knobs.get(f"solver.{label}") if label else None
        if choice in valid:
            return choice
        if choice == "inverse" or (choice in ("lu",) and INVERTIBLE in facts):
            return choice
        return valid[0]

    def leaves(self, mats: list[sp.Basic]) -> list[sp.Basic]:
        return self.split_roots(self._leaves(mats))

    def split_roots(self, out: list[sp.Basic]) -> list[sp.Basic]:
        """A positive diagonal factor ``D`` (or ``inv(D)`` solved as a diagonal) between two
        sides that are each other's transposes (``B.T D B``, ``H.T inv(R) H``) becomes two
        factors ``D^(1/2)`` (``D^(-1/2)``): the chain is then ``X.T X`` with ``X = D^(1/2) B``
        (a row scaling, ``diag_mul`` with a ``power``), a rank-k update where it was a
        symmetric product -- the expert's ``syrk(B / sqrt(r))``."""
        if len(out) < 3:
            return out
        for p in range(1, len(out) - 1):
            root = self.root_of(out[p])
            if root is None:
                continue
            for k in range(1, min(p, len(out) - 1 - p) + 1):
                left, right = out[p - k : p], out[p + 1 : p + 1 + k]
                if self.key(Transpose(MatMul(*left))) == self.key(MatMul(*right)):
                    h = self.root_symbol(*root)
                    return [*out[:p], h, h, *self.split_roots(out[p + 1 :])]
        return out

    def root_of(self, leaf: sp.Basic) -> tuple[MatrixSymbol, float] | None:
        """``(D, power)`` for a positive diagonal input ``D`` (power 1/2) or its inverse solved
        as a diagonal (-1/2); None for any other factor."""
        power = 0.5
        if isinstance(leaf, Inverse) and self.kernel(leaf.arg) == "diagonal":
            leaf, power = leaf.arg, -0.5
        if not isinstance(leaf, MatrixSymbol) or leaf in self.roots:
            return None
        facts = self.fb.facts(leaf)
        return (leaf, power) if DIAGONAL in facts and PD in facts else None

    def root_symbol(self, d: MatrixSymbol, power: float) -> MatrixSymbol:
        """The diagonal ``D^power`` as a chain factor: a symbol bound to ``D``'s step whose
        products are ``diag_mul`` with that ``power`` (see :meth:`_structure`)."""
        for sym, (base, p) in self.roots.items():
            if base == d and p == power:
                return sym
        sym = MatrixSymbol(f"{d.name}_pow{len(self.roots)}", d.shape[0], d.shape[1])
        self.fb.declare(sym, {DIAGONAL, PD, SYMMETRIC, INVERTIBLE})
        self.bound[sym] = self.emit(d)
        self.roots[sym] = (d, power)
        return sym

    def _leaves(self, mats: list[sp.Basic]) -> list[sp.Basic]:
        out: list[sp.Basic] = []
        for m in mats:
            if isinstance(m, Identity):
                continue
            if isinstance(m, Inverse):
                rewrite = SOLVERS[self.kernel(m.arg)].factors
                if rewrite is not None:  # the solver's own factors (inv(L.T) inv(L), Q.T)
                    out += rewrite(self, m.arg)
                    continue
            out.append(m)
        return out or [Identity(mats[0].shape[0])]

    def cholesky_symbol(self, x: sp.Basic) -> MatrixSymbol:
        key = self.key(x)
        if key not in self.factors:
            lsym = MatrixSymbol(f"L{len(self.factors)}", x.shape[0], x.shape[1])
            self.fb.declare(lsym, {LOWER, INVERTIBLE})
            self.bound[lsym] = self.factor(x)
            self.factors[key] = lsym
            label = self.labels.get(key)
            if label:
                self.labels[self.key(lsym)] = f"chol({label})"
        return self.factors[key]

    def factor(self, x: sp.Basic) -> int:
        a = self.emit(x)
        return self.add("cholesky", (a,), x.shape, f"chol({_label(x)})")

    def is_virtual(self, leaf: sp.Basic) -> bool:
        """An inverse applied as a solve (not formed explicitly)."""
        return isinstance(leaf, Inverse) and not SOLVERS[self.kernel(leaf.arg)].explicit

    def solve_cost(self, x: sp.Basic, nrhs: int) -> float:
        """FLOPs of ``inv(x) * B`` for ``nrhs`` columns of B with the kernel chosen for ``x``:
        the registry's costs of the steps :meth:`solve` emits (a Cholesky factor is shared by
        every solve against the matrix, so it is not counted here)."""
        a = self.size(x.shape[0])
        shapes, shape = ((a, a), (a, nrhs)), (a, nrhs)
        solver = SOLVERS[self.kernel(x)]
        extra = solver.cost_attrs(self, x) if solver.cost_attrs is not None else {}
        return sum(KERNELS[op].cost(shapes, shape, {**attrs, **extra})
                   for op, attrs in solver.steps)

    def solve(self, x: sp.Basic, rhs: int, label: str) -> int:
        """``inv(x) * rhs`` with the solver chosen for ``x`` (its registry record emits it)."""
        return SOLVERS[self.kernel(x)].emit(self, x, rhs, label)

    # -- products with a structured operand ---------------------------------------------------
    def structure(self, leaf: sp.Basic) -> _Structure | None:
        if leaf not in self.structures:
            self.structures[leaf] = self._structure(leaf)
        return self.structures[leaf]

    def _structure(self, leaf: sp.Basic) -> _Structure | None:
        """The product kernel a chain factor's structure allows (an input or its transpose,
        square): the kernel registry decides (:func:`~autotune.kernels.registry.
        structured_product`: a diagonal, a narrow band, a triangle...); None for a dense
        one."""
        if isinstance(leaf, (Inverse, Identity, ZeroMatrix)) or not isinstance(
            leaf, (MatrixSymbol, Transpose)
        ):
            return None
        base, trans = (leaf.arg, True) if isinstance(leaf, Transpose) else (leaf, False)
        if not isinstance(base, MatrixSymbol) or base.shape[0] != base.shape[1]:
            return None
        operand = Operand(frozenset(self.fb.facts(base)), self.fb.bandwidth(leaf),
                          self.size(base.shape[0]), trans)
        found = structured_product(operand)
        if found is None:
            return None
        kernel, attrs = found
        assert kernel.structured is not None
        if base in self.roots:  # D^(1/2), D^(-1/2): a scaling by a power of D's diagonal
            if kernel.name != "diag_mul":
                return None
            base, power = self.roots[base]
            attrs = {**attrs, "power": power}
        return _Structure(kernel.name, base, trans, tuple(sorted(attrs.items())),
                          kernel.structured.transposed)

    def structured_product(self, left: _Structure | None, right: _Structure | None, a: int,
                           b: int, shape: tuple[Any, Any], text: str) -> int:
        """``a @ b`` by the kernel a structured operand (``left`` for ``a``, else ``right``
        for ``b``) allows."""
        st, side, other = (left, "left", b) if left is not None else (right, "right", a)
        assert st is not None
        matrix = self.emit(st.base)
        if st.transposed and st.trans:
            matrix = self.transpose(matrix)
        return self.add(st.kernel, (matrix, other), shape, text, side=side, **dict(st.attrs))

    # -- chains --------------------------------------------------------------------------------
    def chain(self, leaves: list[sp.Basic], label: str) -> int:
        """A product of ``leaves`` in the order the ``order`` knob picks among the DP's
        parenthesizations (costs, shared sub-chains and sandwiches from :class:`_ChainModel`)."""
        n = len(leaves)
        if n > MAX_CHAIN:
            raise DerivationError(
                f"{label}: a chain of {n} factors, over the limit of {MAX_CHAIN}"
            )
        short = self.short_chain(leaves, label)
        if short is not None:
            return short
        model = _ChainModel(self, leaves)
        tree = _ordered(self.knobs["order"], n, model.combine_cost, model.available,
                        (model.mirrored, model.pair_cost, model.transposes)
                        if self.cse else None)
        return self.emit_tree(tree, leaves, model.virtual, label)

    def short_chain(self, leaves: list[sp.Basic], label: str) -> int | None:
        """A chain with a zero factor (zeros) or of one factor (the factor, an inverse's solve
        or explicit-inverse kernel); None for a chain the DP orders."""
        for leaf in leaves:
            if isinstance(leaf, ZeroMatrix) or (
                isinstance(leaf, Inverse) and isinstance(leaf.arg, ZeroMatrix)
            ):
                # a zero factor makes the product zero; an inverted zero block is singular
                if isinstance(leaf, Inverse):
                    raise DerivationError(f"{label}: the inverse of a zero block is singular")
                shape = (leaves[0].shape[0], leaves[-1].shape[1])
                return self.add("zeros", (), shape, "0")
        if len(leaves) != 1:
            return None
        leaf = leaves[0]
        if self.is_virtual(leaf):
            x = leaf.arg
            eye = self.add("eye", (), x.shape, "I")
            return self.solve(x, eye, label)
        if isinstance(leaf, Inverse):  # an explicit-inverse kernel
            op = SOLVERS[self.kernel(leaf.arg)].inverse_op or "inv"
            return self.add(op, (self.emit(leaf.arg),), leaf.shape, _label(leaf))
        return self.emit(leaf)

    def mirror_node(self, t: _Tree, leaves: list[sp.Basic]) -> bool:
        """The left half of node ``t`` is the transpose of its right half (``X.T X``)."""
        assert t.left is not None and t.right is not None
        if not self.cse or t.left.j - t.left.i != t.right.j - t.right.i:
            return False
        left = MatMul(*leaves[t.left.i : t.left.j + 1])
        right = MatMul(*leaves[t.right.i : t.right.j + 1])
        return self.key(Transpose(left)) == self.key(right)

    def emit_tree(self, t: _Tree, leaves: list[sp.Basic], virtual: list[bool], label: str) -> int:
        if t.i == t.j:
            return self.chain([leaves[t.i]], label)
        e = MatMul(*leaves[t.i : t.j + 1])
        hit = self.lookup(e)
        if hit is not None:
            return hit
        assert t.left is not None and t.right is not None
        shape = (leaves[t.i].shape[0], leaves[t.j].shape[1])
        text = _label(e)
        if t.left.i == t.left.j and virtual[t.left.i]:
            rhs = self.emit_tree(t.right, leaves, virtual, label)
            step = self.solve(leaves[t.left.i].arg, rhs, text)
        elif t.right.i == t.right.j and virtual[t.right.i]:
            lhs = self.emit_tree(t.left, leaves, virtual, label)
            x = leaves[t.right.i].arg
            step = self.transpose(self.solve(_transpose(x), self.transpose(lhs), text))
        else:
            if self.mirror_node(t, leaves):
                # X.T X: X (the right half) first, X.T its view -- a scaling or a solve of
                # X's rows rather than of a transposed view's
                b = self.emit_tree(t.right, leaves, virtual, label)
                a = self.emit_tree(t.left, leaves, virtual, label)
            else:
                a = self.emit_tree(t.left, leaves, virtual, label)
                b = self.emit_tree(t.right, leaves, virtual, label)
            sa, sb = self.steps[a], self.steps[b]
            left = self.structure(leaves[t.i]) if t.left.i == t.left.j else None
            right = self.structure(leaves[t.j]) if t.right.i == t.right.j else None
            one_a = self.step_size(a) == (1, 1)
            one_b = self.step_size(b) == (1, 1)
            if one_a or one_b:  # a product with a 1x1 factor is a scaling
                mat, factor = (b, a) if one_a else (a, b)
                step = self.add("scale", (mat, factor), shape, text, coeff=1.0, powers=(1,))
            elif self.knobs["syrk"] and sa.op == "transpose" and sa.args[0] == b:
                step = self.add("syrk", (b,), shape, text, alpha=1.0, beta=0.0)
            elif self.knobs["syrk"] and sb.op == "transpose" and sb.args[0] == a:
                # X @ X.T = (X.T).T @ (X.T): the rank-k update of X.T (a view)
                step = self.add("syrk", (b,), shape, text, alpha=1.0, beta=0.0)
            elif (t.left.i == t.left.j and t.right.i == t.right.j
                  and leaves[t.i] == leaves[t.j] and leaves[t.i] in self.roots):
                # D^p D^p = D^(2p), formed (never the cheapest: a chain scales its operand)
                base, power = self.roots[leaves[t.i]]
                eye = self.add("eye", (), shape, "I")
                step = self.add("diag_mul", (self.emit(base), eye), shape, text, side="left",
                                power=2 * power)
            elif left is not None or right is not None:
                step = self.structured_product(left, right, a, b, shape, text)
            elif (self.knobs.get("symprod") and self.size(shape[0]) == self.size(shape[1])
                  and self.structurally_symmetric(e)):
                step = self.add("symprod", (a, b), shape, text, alpha=1.0, beta=0.0)
            else:
                step = self.add("matmul", (a, b), shape, text)
        return self.remember(e, step)


@dataclass(frozen=True)
class _Structure:
    """A chain factor's structure as a product kernel uses it: the ``kernel``, the square
    matrix ``base`` the factor is (transposed when ``trans``), the step's attributes, and
    whether the kernel takes the factor as a transposed view (``transposed``)."""

    kernel: str
    base: MatrixSymbol
    trans: bool
    attrs: tuple[tuple[str, Any], ...]
    transposed: bool = False


def _structured_cost(st: _Structure, shapes: tuple[tuple[int, int], ...], side: str) -> float:
    """FLOPs of a product with a structured operand on ``side``, from the kernel registry."""
    (m, _), (_, n) = shapes
    square, other = (shapes[0], shapes[1]) if side == "left" else (shapes[1], shapes[0])
    return KERNELS[st.kernel].cost((square, other), (m, n), {**dict(st.attrs), "side": side})


def _label(e: sp.Basic, limit: int = 80) -> str:
    """A short readable label for a step (SymPy's printer is far too slow for every step)."""
    out: list[str] = []
    size = [0]

    def walk(x: sp.Basic) -> None:
        if size[0] > limit:
            return
        if isinstance(x, (MatrixSymbol, sp.Symbol)):
            text = x.name
        elif isinstance(x, Transpose):
            walk(x.arg)
            text = ".T"
        elif isinstance(x, Inverse):
            out.append("inv(")
            walk(x.arg)
            text = ")"
        elif isinstance(x, (MatMul, MatAdd)):
            sep = "*" if isinstance(x, MatMul) else " + "
            out.append("(")
            for i, a in enumerate(x.args):
                if i:
                    out.append(sep)
                walk(a)
            text = ")"
        elif isinstance(x, MatPow):
            walk(x.base)
            text = f"**{x.exp}"
        elif x.is_number:
            text = str(x)
        else:
            text = type(x).__name__
        out.append(text)
        size[0] += len(text)

    walk(e)
    text = "".join(out)
    return text if size[0] <= limit else text[:limit] + "..."


def _dim_text(x: sp.Basic) -> str:
    """A slice bound as a dimension formula (``0``, ``n``, ``n - 1``)."""
    return str(x)


def _neg(x: sp.Basic) -> sp.Basic:
    """``-x`` as an unevaluated product (SymPy's ``-x`` runs ``doit`` on the whole term: seconds
    for a blocked one); canonical forms treat it as ``-x``."""
    return MatMul(sp.S.NegativeOne, x)


def _transpose(x: sp.Basic) -> sp.Basic:
    return x.arg if isinstance(x, Transpose) else Transpose(x)


def _fold(i: int, j: int, left: bool) -> _Tree:
    if i == j:
        return _Tree(i, j)
    if left:
        return _Tree(i, j, j - 1, _fold(i, j - 1, True), _Tree(j, j))
    return _Tree(i, j, i, _Tree(i, i), _fold(i + 1, j, False))


def _ordered(order: Any, n: int, combine_cost, available, shared) -> _Tree:
    """The parenthesization the ``order`` knob asks for: a fold, the cheapest by the dynamic
    program (``shared``: its ``(mirrored, pair_cost, transposes)``, None without CSE), or the
    r-th cheapest of all."""
    if order == "left":
        return _fold(0, n - 1, left=True)
    if order == "right":
        return _fold(0, n - 1, left=False)
    if order == "optimal" or order == 0 or n > MAX_ENUMERATED:
        mirrored, pair_cost, transposes = shared if shared is not None else (None, None, None)
        return _optimal(n, combine_cost, available, mirrored, pair_cost, transposes)
    trees = sorted(
        _all_trees(0, n - 1),
        key=lambda t: (_tree_cost(t, combine_cost, available), _tree_sig(t)),
    )
    return trees[min(int(order), len(trees) - 1)]


def _optimal(n: int, combine_cost, available, mirrored=None, pair_cost=None,
             transposes=None) -> _Tree:
    """The cheapest parenthesization of a chain of ``n`` factors (dynamic programming over
    sub-chains), aware of what is already computed (``available``: free), of ``X.T * X``
    (``mirrored``: X once, then ``pair_cost``, a rank-k update) and of sandwiches
    ``X.T * M * X`` / ``X * M * X.T`` (``transposes(i, t, k, l)``: the sub-chain ``i..t`` is
    the transpose of ``k..l``): X is computed once and its transpose is a view, so the
    sandwich costs X, one product with M and the last product (a symmetric one where the
    chain is symmetric) -- the expert's ``G.T (W G)``."""
    # (i, j) -> (cost, split s, sandwich split t of the side that holds X.T, or None)
    best: dict[tuple[int, int], tuple[float, int | None, int | None]] = {}
    for length in range(1, n + 1):
        for i in range(0, n - length + 1):
            j = i + length - 1
            if i == j or available(i, j):
                best[(i, j)] = (0.0, None, None)
                continue
            cands = []
            for s in range(i, j):
                if mirrored is not None and mirrored(i, s, j):
                    # X.T * X: X is computed once, the product is a rank-k update
                    c = best[(s + 1, j)][0] + pair_cost(i, s, j)
                else:
                    c = best[(i, s)][0] + best[(s + 1, j)][0] + combine_cost(i, s, j)
                cands.append((c, s, None))
                if transposes is None:
                    continue
                # (X.T M) X: the left part i..s is X.T (i..t, free once X = s+1..j is) times M
                t = i + (j - s) - 1
                if i <= t < s and transposes(i, t, s + 1, j):
                    c = (best[(s + 1, j)][0] + best[(t + 1, s)][0] + combine_cost(i, t, s)
                         + combine_cost(i, s, j))
                    cands.append((c, s, t))
                # X (M X.T): the right part s+1..j is M (s+1..t-1) times X.T (t..j)
                t = j - (s - i)
                if s + 1 < t <= j and transposes(i, s, t, j):
                    c = (best[(i, s)][0] + best[(s + 1, t - 1)][0] + combine_cost(s + 1, t - 1, j)
                         + combine_cost(i, s, j))
                    cands.append((c, s, t))
            best[(i, j)] = min(cands, key=lambda x: (x[0], x[1], -1 if x[2] is None else x[2]))

    def build(i: int, j: int) -> _Tree:
        _, s, t = best[(i, j)]
        if i == j or s is None:
            if i == j:
                return _Tree(i, j)
            # available as a whole: split arbitrarily, emit_tree finds it in the memo
            return _Tree(i, j, i, build(i, i), _fold(i + 1, j, True))
        if t is not None and t <= s:  # (X.T M) X: the left part split where X.T ends
            return _Tree(i, j, s, _Tree(i, s, t, build(i, t), build(t + 1, s)), build(s + 1, j))
        if t is not None:  # X (M X.T): the right part split where X.T begins
            return _Tree(i, j, s, build(i, s), _Tree(s + 1, j, t - 1, build(s + 1, t - 1),
                                                     build(t, j)))
        return _Tree(i, j, s, build(i, s), build(s + 1, j))

    return build(0, n - 1)


def _all_trees(i: int, j: int) -> list[_Tree]:
    if i == j:
        return [_Tree(i, j)]
    out = []
    for s in range(i, j):
        for left, right in itertools.product(_all_trees(i, s), _all_trees(s + 1, j)):
            out.append(_Tree(i, j, s, left, right))
    return out


def _tree_cost(t: _Tree, combine_cost, available) -> float:
    if t.i == t.j or available(t.i, t.j):
        return 0.0
    assert t.left is not None and t.right is not None and t.split is not None
    return (
        _tree_cost(t.left, combine_cost, available)
        + _tree_cost(t.right, combine_cost, available)
        + combine_cost(t.i, t.split, t.j)
    )


def _tree_sig(t: _Tree) -> str:
    if t.i == t.j:
        return str(t.i)
    assert t.left is not None and t.right is not None
    return f"({_tree_sig(t.left)} {_tree_sig(t.right)})"


def parenthesizations(n: int) -> list[str]:
    """Every parenthesization of an n-factor chain, as strings (Catalan(n-1) of them; at most
    ``MAX_ENUMERATED + 2`` factors: Catalan numbers grow exponentially)."""
    if n > MAX_ENUMERATED + 2:
        raise DerivationError(
            f"{n} factors have Catalan({n - 1}) parenthesizations; they are enumerated for at "
            f"most {MAX_ENUMERATED + 2} factors"
        )
    return [_tree_sig(t) for t in _all_trees(0, n - 1)]
