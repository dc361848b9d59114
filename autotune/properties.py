"""Matrix properties: names, implications, validation, and inference for sub-expressions.

Properties drive kernel choice (Cholesky for SPD, triangular solves, scaling for diagonal), so
they are inferred by the project's own rules rather than by SymPy's ``ask``, which claims
``H.T*H`` is positive definite for a wide full-rank ``H`` (it is only semidefinite). Every rule
here is checked numerically on random instances by the tests.

Conventions: ``positive_definite`` and ``positive_semidefinite`` include symmetry (SPD, SPSD);
``full_rank`` means rank = min(rows, cols); for a square matrix it is ``invertible``.

Band structure: a matrix has bandwidth ``(lower, upper)`` when every entry more than ``lower``
below or ``upper`` above the main diagonal is zero. ``tridiagonal`` is (1, 1),
``lower_bidiagonal`` (1, 0) (and lower triangular), ``upper_bidiagonal`` (0, 1) (and upper
triangular), ``diagonal`` (0, 0). An input may declare any band (``bandwidth = [l, u]`` in its
problem file); :meth:`FactBase.bandwidth` gives the band of inputs, their transposes, scalar
multiples, sums and products (see there for ``None``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import sympy as sp
from sympy.matrices.expressions import (
    Identity,
    Inverse,
    MatAdd,
    MatMul,
    MatPow,
    MatrixExpr,
    MatrixSymbol,
    Transpose,
    ZeroMatrix,
)

from .errors import SpecError

SYMMETRIC = "symmetric"
PD = "positive_definite"
PSD = "positive_semidefinite"
FULL_RANK = "full_rank"
INVERTIBLE = "invertible"
LOWER = "lower_triangular"
UPPER = "upper_triangular"
DIAGONAL = "diagonal"
ORTHOGONAL = "orthogonal"
IDENTITY = "identity"
POSITIVE = "positive"
NONZERO = "nonzero"
TRIDIAGONAL = "tridiagonal"
LOWER_BIDIAGONAL = "lower_bidiagonal"
UPPER_BIDIAGONAL = "upper_bidiagonal"

MATRIX_PROPERTIES = (
    SYMMETRIC,
    PD,
    PSD,
    FULL_RANK,
    INVERTIBLE,
    LOWER,
    UPPER,
    DIAGONAL,
    ORTHOGONAL,
    IDENTITY,
    TRIDIAGONAL,
    LOWER_BIDIAGONAL,
    UPPER_BIDIAGONAL,
)
SCALAR_PROPERTIES = (POSITIVE, NONZERO)
SQUARE_ONLY = frozenset(
    {
        SYMMETRIC,
        PD,
        PSD,
        INVERTIBLE,
        LOWER,
        UPPER,
        DIAGONAL,
        ORTHOGONAL,
        IDENTITY,
        TRIDIAGONAL,
        LOWER_BIDIAGONAL,
        UPPER_BIDIAGONAL,
    }
)
#: the band structure a property promises, (lower, upper); None: as wide as the matrix
BANDED = {
    DIAGONAL: (0, 0),
    TRIDIAGONAL: (1, 1),
    LOWER_BIDIAGONAL: (1, 0),
    UPPER_BIDIAGONAL: (0, 1),
    LOWER: (None, 0),
    UPPER: (0, None),
}

ALIASES = {
    "spd": PD,
    "pd": PD,
    "positive definite": PD,
    "psd": PSD,
    "positive semidefinite": PSD,
    "full rank": FULL_RANK,
    "nonsingular": INVERTIBLE,
    "lower": LOWER,
    "upper": UPPER,
    "lower triangular": LOWER,
    "upper triangular": UPPER,
    "tridiag": TRIDIAGONAL,
    "lower bidiagonal": LOWER_BIDIAGONAL,
    "upper bidiagonal": UPPER_BIDIAGONAL,
}

_IMPLIES = {
    IDENTITY: {DIAGONAL, ORTHOGONAL, PD},
    DIAGONAL: {SYMMETRIC, LOWER, UPPER, LOWER_BIDIAGONAL, UPPER_BIDIAGONAL},
    LOWER_BIDIAGONAL: {LOWER, TRIDIAGONAL},
    UPPER_BIDIAGONAL: {UPPER, TRIDIAGONAL},
    PD: {SYMMETRIC, PSD, INVERTIBLE},
    PSD: {SYMMETRIC},
    ORTHOGONAL: {INVERTIBLE},
    INVERTIBLE: {FULL_RANK},
    POSITIVE: {NONZERO},
}

Facts = frozenset[str]


def normalize_property(name: str, where: str) -> str:
    """Map a user-written property name (or alias) to its canonical name."""
    if not isinstance(name, str):
        raise SpecError(f"{where}: a property must be a string, got {name!r}")
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key.replace("_", " "), ALIASES.get(key, key))
    if key not in MATRIX_PROPERTIES and key not in SCALAR_PROPERTIES:
        import difflib

        choices = list(MATRIX_PROPERTIES + SCALAR_PROPERTIES)
        close = difflib.get_close_matches(key, choices + list(ALIASES), n=2)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise SpecError(
            f"{where}: unknown property {name!r}{hint}; valid properties: {', '.join(choices)}"
        )
    return key


def close_facts(props: Iterable[str], square: bool) -> Facts:
    """Close a property set under the implications (``PD`` implies symmetric, ...)."""
    out = set(props)
    changed = True
    while changed:
        changed = False
        for p in list(out):
            for q in _IMPLIES.get(p, ()):
                if q not in out:
                    out.add(q)
                    changed = True
        if LOWER in out and UPPER in out and DIAGONAL not in out:
            out.add(DIAGONAL)
            changed = True
        if TRIDIAGONAL in out and LOWER in out and LOWER_BIDIAGONAL not in out:
            out.add(LOWER_BIDIAGONAL)
            changed = True
        if TRIDIAGONAL in out and UPPER in out and UPPER_BIDIAGONAL not in out:
            out.add(UPPER_BIDIAGONAL)
            changed = True
        if square and FULL_RANK in out and INVERTIBLE not in out:
            out.add(INVERTIBLE)
            changed = True
        if PSD in out and INVERTIBLE in out and PD not in out:
            out.add(PD)
            changed = True
    return frozenset(out)


def validate_properties(
    props: Iterable[str], shape: tuple[sp.Basic, sp.Basic] | None, where: str
) -> Facts:
    """Check that declared properties can hold for the shape; return the closed set."""
    props = [normalize_property(p, where) for p in props]
    if shape is None:  # scalar
        bad = [p for p in props if p not in SCALAR_PROPERTIES]
        if bad:
            raise SpecError(
                f"{where}: property {bad[0]!r} is for matrices, but this input is a scalar; "
                f"scalar properties: {', '.join(SCALAR_PROPERTIES)}"
            )
        return close_facts(props, square=False)
    bad = [p for p in props if p in SCALAR_PROPERTIES]
    if bad:
        raise SpecError(
            f"{where}: property {bad[0]!r} is for scalars; matrix properties: "
            f"{', '.join(MATRIX_PROPERTIES)}"
        )
    square = shape[0] == shape[1]
    if not square:
        bad = [p for p in props if p in SQUARE_ONLY]
        if bad:
            raise SpecError(
                f"{where}: property {bad[0]!r} needs a square matrix, but the shape is "
                f"{shape[0]}x{shape[1]}; properties of a non-square matrix: "
                f"{', '.join(p for p in MATRIX_PROPERTIES if p not in SQUARE_ONLY)}"
            )
    return close_facts(props, square)


# -- band structure ------------------------------------------------------------------------

#: a band (lower, upper): the numbers of sub- and superdiagonals that may be nonzero
Band = tuple[int, int]
#: a band while it is worked out: None is "as wide as the matrix" on that side
_RawBand = tuple[int | None, int | None]


def _raw_band(facts: Iterable[str]) -> _RawBand:
    lo: int | None = None
    up: int | None = None
    for p in facts:
        pl, pu = BANDED.get(p, (None, None))
        if pl is not None:
            lo = pl if lo is None else min(lo, pl)
        if pu is not None:
            up = pu if up is None else min(up, pu)
    return lo, up


def _clamp(band: _RawBand, rows: int | None, cols: int | None) -> Band | None:
    """The band within a ``rows x cols`` matrix; None when it spans the whole matrix or a
    side is unbounded and the size on that side is not known."""
    lo, up = band
    if lo is None and rows is not None:
        lo = rows - 1
    if up is None and cols is not None:
        up = cols - 1
    if lo is None or up is None:
        return None
    if rows is not None:
        lo = min(lo, rows - 1)
    if cols is not None:
        up = min(up, cols - 1)
    if rows is not None and cols is not None and lo >= rows - 1 and up >= cols - 1:
        return None
    return (lo, up)


def bandwidth_of(
    facts: Iterable[str], rows: int | None = None, cols: int | None = None
) -> Band | None:
    """The band that properties promise for a ``rows x cols`` matrix: ``diagonal`` (0, 0),
    ``tridiagonal`` (1, 1), ``lower_bidiagonal`` (1, 0), ``upper_bidiagonal`` (0, 1),
    ``lower_triangular`` (rows - 1, 0), ``upper_triangular`` (0, cols - 1), the narrowest
    where several hold. None when they promise nothing narrower than the whole matrix (a
    full matrix, or a triangular one of unknown size)."""
    return _clamp(_raw_band(facts), rows, cols)


def band_properties(band: Band, square: bool) -> set[str]:
    """The properties a declared band gives a square matrix ([0, 0] is diagonal, [l, 0] lower
    triangular, [1, 1] tridiagonal, ...); none for a non-square one."""
    lo, up = band
    if not square:
        return set()
    out: set[str] = set()
    if up == 0:
        out.add(LOWER)
    if lo == 0:
        out.add(UPPER)
    if lo <= 1 and up <= 1:
        out.add(TRIDIAGONAL)
    return out


def validate_bandwidth(
    value: object, shape: tuple[int | None, int | None] | None, props: Iterable[str], where: str
) -> Band:
    """Check a declared ``bandwidth = [lower, upper]`` (``where`` names the field) against the
    shape (sizes where known: ``None`` for a dimension without a value) and the declared
    (closed) properties; return it as a tuple."""
    if shape is None:
        raise SpecError(f"{where}: a scalar has no bandwidth; remove the field")
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in value)
    ):
        raise SpecError(
            f"{where}: expected [lower, upper], two non-negative integers (the numbers of "
            f"sub- and superdiagonals that may be nonzero: diagonal = [0, 0], tridiagonal = "
            f"[1, 1], lower bidiagonal = [1, 0]), got {value!r}"
        )
    lo, up = int(value[0]), int(value[1])
    rows, cols = shape
    for side, n, size, what in ((lo, "lower", rows, "sub"), (up, "upper", cols, "super")):
        if size is not None and side > max(size - 1, 0):
            raise SpecError(
                f"{where}: the {n} bandwidth {side} is more than the {max(size - 1, 0)} "
                f"{what}diagonals of a {rows}x{cols} matrix; at most "
                f"[{max((rows or 1) - 1, 0)}, {max((cols or 1) - 1, 0)}]"
            )
    props = set(props)
    for p in sorted(props):
        pl, pu = BANDED.get(p, (None, None))
        if (pl is not None and lo > pl) or (pu is not None and up > pu):
            allowed = f"[{'any' if pl is None else pl}, {'any' if pu is None else pu}]"
            raise SpecError(
                f"{where}: [{lo}, {up}] is wider than the input's property {p!r} allows "
                f"(at most {allowed}); narrow the band or drop the property"
            )
    if SYMMETRIC in props and lo != up:
        raise SpecError(
            f"{where}: [{lo}, {up}]: a symmetric matrix has as many sub- as superdiagonals; "
            f"use [{max(lo, up)}, {max(lo, up)}]"
        )
    return lo, up


# -- inference ---------------------------------------------------------------------------


@dataclass
class FactBase:
    """What is known: declared facts of atoms, plus facts registered for sub-expressions
    (diagonal blocks of SPD matrices, Schur complements) by the derivation, and concrete dims
    used to decide which side of a rectangular matrix is the short one."""

    atoms: dict[sp.Basic, Facts] = field(default_factory=dict)
    extra: dict[sp.Basic, Facts] = field(default_factory=dict)
    dims: dict[sp.Symbol, int] = field(default_factory=dict)
    #: declared bands of atoms (``bandwidth = [l, u]``), on top of what properties promise
    bands: dict[sp.Basic, Band] = field(default_factory=dict)
    _cache: dict[sp.Basic, Facts] = field(default_factory=dict, repr=False)
    #: canonical forms by expression: shared sub-expressions (a DAG) are canonicalised once
    _canon: dict[sp.Basic, sp.Basic] = field(default_factory=dict, repr=False)
    _band_cache: dict[sp.Basic, _RawBand] = field(default_factory=dict, repr=False)
    #: concrete sizes by dimension expression (``subs`` is slow; derivations ask thousands)
    _sizes: dict[sp.Basic, int | None] = field(default_factory=dict, repr=False)

    def declare(
        self, atom: sp.Basic, props: Iterable[str], bandwidth: Band | None = None
    ) -> None:
        """Declare an atom's properties (closed here) and, optionally, its band (which adds
        the properties it implies: [0, 0] diagonal, [l, 0] lower triangular, ...)."""
        props = set(props)
        if bandwidth is not None:
            self.bands[atom] = (int(bandwidth[0]), int(bandwidth[1]))
            props |= band_properties(self.bands[atom], _is_square(atom))
        else:
            self.bands.pop(atom, None)
        self.atoms[atom] = close_facts(props, _is_square(atom))
        self.clear_caches()

    def register(self, expr: sp.Basic, props: Iterable[str]) -> None:
        key = canonical(expr, self)
        self.extra[key] = close_facts(set(props) | self.extra.get(key, set()), _is_square(expr))
        self.clear_caches()

    def clear_caches(self) -> None:
        """Forget inferred facts and canonical forms (after a declaration or new dims)."""
        self._cache.clear()
        self._canon.clear()
        self._band_cache.clear()
        self._sizes.clear()

    def size(self, d: sp.Basic) -> int | None:
        """The concrete size of a dimension expression at :attr:`dims` (None: unknown);
        memoised until :meth:`clear_caches` (which a change of dims must call)."""
        if d in self._sizes:
            return self._sizes[d]
        try:
            v = d.subs(self.dims) if self.dims else d
            out = int(v) if v.is_number else None
        except (TypeError, ValueError):
            out = None
        self._sizes[d] = out
        return out

    def facts(self, expr: sp.Basic) -> Facts:
        hit = self._cache.get(expr)
        if hit is None:
            hit = _infer(expr, self)
            self._cache[expr] = hit
        return hit

    def has(self, expr: sp.Basic, prop: str) -> bool:
        return prop in self.facts(expr)

    def bandwidth(self, expr: sp.Basic) -> Band | None:
        """The band of a matrix expression: ``(lower, upper)``, the numbers of sub- and
        superdiagonals that may be nonzero (every entry ``(i, j)`` with ``i - j > lower`` or
        ``j - i > upper`` is zero).

        Known for inputs (their declared ``bandwidth`` and what their properties promise:
        diagonal (0, 0), tridiagonal (1, 1), lower bidiagonal (1, 0), upper bidiagonal (0, 1),
        lower triangular (rows - 1, 0), upper triangular (0, cols - 1)), their transposes
        (lower and upper swapped), nonzero scalar multiples, sums (the widest band of the
        terms) and products (the bands added up), and for any expression whose inferred
        properties promise one. Clamped to the concrete shape.

        ``None`` means no band narrower than the whole matrix is known: a full matrix (a
        matrix whose band spans all of it is reported as ``None``, so a caller may take any
        tuple as "exploit the band"), or a triangular one whose size is not known to this
        fact base (``dims``). Not for scalars."""
        if not isinstance(expr, MatrixExpr):
            raise TypeError(f"bandwidth of a scalar: {expr}")
        rows, cols = self.size(expr.shape[0]), self.size(expr.shape[1])
        return _clamp(self._band(expr), rows, cols)

    def _band(self, expr: sp.Basic) -> _RawBand:
        hit = self._band_cache.get(expr)
        if hit is not None:
            return hit
        lo, up = _raw_band(self.facts(expr))
        sl: int | None = None
        su: int | None = None
        if isinstance(expr, (Identity, ZeroMatrix)):
            sl, su = 0, 0
        elif isinstance(expr, MatrixSymbol):
            sl, su = self.bands.get(expr, (None, None))
        elif isinstance(expr, Transpose):
            su, sl = self._band(expr.arg)
        elif isinstance(expr, MatAdd):
            bands = [self._band(t) for t in expr.args]
            sl = None if any(b[0] is None for b in bands) else max(b[0] for b in bands)  # type: ignore[type-var]
            su = None if any(b[1] is None for b in bands) else max(b[1] for b in bands)  # type: ignore[type-var]
        elif isinstance(expr, (MatMul, MatPow)) and not (
            # an inverse (a MatPow of exponent -1) has no band of its own to add up
            isinstance(expr, MatPow) and not (expr.exp.is_Integer and expr.exp > 0)
        ):
            _, mats = split_coeff(expr)
            bands = [self._band(m) for m in mats]
            if all(b[0] is not None for b in bands):
                sl = sum(b[0] for b in bands)  # type: ignore[misc]
            if all(b[1] is not None for b in bands):
                su = sum(b[1] for b in bands)  # type: ignore[misc]
        out = (_narrower(lo, sl), _narrower(up, su))
        self._band_cache[expr] = out
        return out


def _narrower(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def _is_square(e: sp.Basic) -> bool:
    return isinstance(e, MatrixExpr) and e.shape[0] == e.shape[1]


def is_symmetric_atom(e: sp.Basic, fb: FactBase) -> bool:
    return isinstance(e, MatrixSymbol) and SYMMETRIC in fb.atoms.get(e, frozenset())


def canonical(expr: sp.Basic, fb: FactBase) -> sp.Basic:
    """A canonical form for structural comparison: transposes pushed to the leaves and dropped
    on symmetric atoms, so ``(H*Sigma).T`` and ``Sigma*H.T`` compare equal when Sigma is
    symmetric. Memoised on the fact base: a sub-expression shared by several others (a
    definition used twice) is canonicalised once, so the work is linear in the distinct
    nodes."""
    memo = fb._canon
    hit = memo.get(expr)
    if hit is None:
        hit = _canonical(expr, fb)
        # Keep one object per value: the expression itself when it is already canonical, else
        # the first equal canonical form built (by any fact base). Comparing two equal but
        # distinct copies of a DAG walks it as a tree (SymPy compares structurally, and its
        # caches compare keys), so equal forms must be the same object. The comparisons here
        # are cheap: the operands' arguments already are those shared objects.
        if hit is not expr:
            if hit == expr:
                hit = expr
            else:
                if len(_INTERN) > MAX_INTERNED:
                    _INTERN.clear()
                hit = _INTERN.setdefault(hit, hit)
        memo[expr] = hit
    return hit


#: canonical forms by value, shared by every fact base (see :func:`canonical`)
_INTERN: dict[sp.Basic, sp.Basic] = {}
MAX_INTERNED = 200_000


def _canonical(expr: sp.Basic, fb: FactBase) -> sp.Basic:
    if isinstance(expr, Transpose):
        arg = expr.arg
        if isinstance(arg, MatMul):
            coeff, mats = split_coeff(arg)
            return canonical(
                _mul(coeff, [Transpose(m) for m in reversed(mats)]), fb
            )
        if isinstance(arg, MatAdd):
            return _madd([canonical(Transpose(t), fb) for t in arg.args])
        if isinstance(arg, Transpose):
            return canonical(arg.arg, fb)
        if isinstance(arg, Inverse):
            return Inverse(canonical(Transpose(arg.arg), fb))
        if isinstance(arg, (Identity, ZeroMatrix)):
            return arg.T
        inner = canonical(arg, fb)
        if fb.has(inner, SYMMETRIC):
            return inner
        return Transpose(inner)
    if isinstance(expr, MatMul):
        coeff, mats = split_coeff(expr)
        return _mul(coeff, [canonical(m, fb) for m in mats])
    if isinstance(expr, MatAdd):
        return _madd([canonical(t, fb) for t in expr.args])
    if isinstance(expr, Inverse):
        return Inverse(canonical(expr.arg, fb))
    if isinstance(expr, MatPow):
        return MatPow(canonical(expr.base, fb), expr.exp)
    return expr


def _madd(terms: list[sp.Basic]) -> sp.Basic:
    return MatAdd(*terms).doit(deep=False)


def _mul(coeff: sp.Basic, mats: list[sp.Basic]) -> sp.Basic:
    flat: list[sp.Basic] = []
    for m in mats:
        if isinstance(m, MatMul):
            c, ms = split_coeff(m)
            coeff = coeff * c
            flat.extend(ms)
        else:
            flat.append(m)
    if not flat:
        raise ValueError("empty product")
    if coeff == 1 and len(flat) == 1:
        return flat[0]
    return MatMul(coeff, *flat) if coeff != 1 else MatMul(*flat)


def split_coeff(expr: sp.Basic) -> tuple[sp.Basic, list[sp.Basic]]:
    """Split a product into its scalar coefficient and its matrix factors (``MatPow`` with an
    integer exponent expanded into repeated factors, negative exponents into inverses)."""
    if isinstance(expr, MatMul):
        coeff = sp.Integer(1)
        mats: list[sp.Basic] = []
        for a in expr.args:
            if isinstance(a, MatrixExpr):
                c, ms = split_coeff(a)
                coeff *= c
                mats.extend(ms)
            else:
                coeff *= a
        return coeff, mats
    if isinstance(expr, MatPow) and expr.exp.is_Integer:
        e = int(expr.exp)
        base = expr.base if e > 0 else Inverse(expr.base)
        return sp.Integer(1), [base] * abs(e)
    return sp.Integer(1), [expr]


def _scalar_sign(c: sp.Basic, fb: FactBase) -> int:
    """+1 for a known-positive scalar, -1 for known-negative, 0 unknown."""
    if c.is_number:
        return 1 if c > 0 else (-1 if c < 0 else 0)
    if isinstance(c, sp.Symbol):
        return 1 if POSITIVE in fb.atoms.get(c, frozenset()) else 0
    if isinstance(c, (sp.Mul, sp.Pow)):
        sign = 1
        parts = c.args if isinstance(c, sp.Mul) else [c.args[0]]
        for p in parts:
            s = _scalar_sign(p, fb)
            if s == 0:
                return 0
            sign *= s
        return sign
    if isinstance(c, sp.Add):  # a sum of terms of one known sign has that sign
        signs = {_scalar_sign(t, fb) for t in c.args}
        return signs.pop() if len(signs) == 1 else 0
    return 0


def _scalar_nonzero(c: sp.Basic, fb: FactBase) -> bool:
    if c.is_number:
        return c != 0
    if isinstance(c, sp.Symbol):
        return NONZERO in fb.atoms.get(c, frozenset())
    if isinstance(c, (sp.Mul, sp.Pow)):
        parts = c.args if isinstance(c, sp.Mul) else [c.args[0]]
        return all(_scalar_nonzero(p, fb) for p in parts)
    if isinstance(c, sp.Add):
        return _scalar_sign(c, fb) != 0
    return False


def _full_rank_side(e: sp.Basic, fb: FactBase, columns: bool) -> bool:
    """rank(e) = number of columns (``columns``) or of rows: full rank on the short side, or a
    nonzero multiple of a product whose factors all have it."""
    r, c = fb.size(e.shape[0]), fb.size(e.shape[1])
    if FULL_RANK in fb.facts(e) and r is not None and c is not None and (
        c <= r if columns else r <= c
    ):
        return True
    if isinstance(e, MatMul):
        coeff, mats = split_coeff(e)
        return _scalar_nonzero(coeff, fb) and all(_full_rank_side(m, fb, columns) for m in mats)
    return False


def col_full_rank(e: sp.Basic, fb: FactBase) -> bool:
    """rank(e) = number of columns."""
    return _full_rank_side(e, fb, columns=True)


def row_full_rank(e: sp.Basic, fb: FactBase) -> bool:
    """rank(e) = number of rows."""
    return _full_rank_side(e, fb, columns=False)


def _product(mats: list[sp.Basic]) -> sp.Basic:
    return mats[0] if len(mats) == 1 else MatMul(*mats)


def _infer(expr: sp.Basic, fb: FactBase) -> Facts:
    if not isinstance(expr, MatrixExpr):
        if isinstance(expr, sp.Symbol):
            return fb.atoms.get(expr, frozenset())
        props: set[str] = set()
        if _scalar_nonzero(expr, fb):
            props.add(NONZERO)
        if _scalar_sign(expr, fb) > 0:
            props.add(POSITIVE)
        return frozenset(props)
    square = _is_square(expr)
    if isinstance(expr, Identity):
        return close_facts({IDENTITY}, True)
    if isinstance(expr, ZeroMatrix):
        return close_facts({DIAGONAL, PSD} if square else set(), square)
    key = canonical(expr, fb) if fb.extra else None
    extra = fb.extra.get(key, frozenset()) if key is not None else frozenset()
    if isinstance(expr, MatrixSymbol):
        return fb.atoms.get(expr, frozenset()) | extra
    if isinstance(expr, Transpose):
        f = fb.facts(expr.arg)
        swap = {LOWER: UPPER, UPPER: LOWER, LOWER_BIDIAGONAL: UPPER_BIDIAGONAL,
                UPPER_BIDIAGONAL: LOWER_BIDIAGONAL}
        out = {swap.get(p, p) for p in f}
        return close_facts(out | extra, square)
    if isinstance(expr, Inverse):
        f = fb.facts(expr.arg)
        if INVERTIBLE not in f:
            return close_facts(extra, square)
        keep = {SYMMETRIC, PD, LOWER, UPPER, DIAGONAL, ORTHOGONAL, IDENTITY}
        return close_facts({p for p in f if p in keep} | {INVERTIBLE} | extra, square)
    if isinstance(expr, MatPow) and not expr.exp.is_Integer:
        return close_facts(extra, square)
    if isinstance(expr, MatAdd):
        return close_facts(_infer_sum(expr, fb) | extra, square)
    if isinstance(expr, (MatMul, MatPow)):
        return close_facts(_infer_product(expr, fb) | extra, square)
    return close_facts(extra, square)


_BAND_PROPS = (TRIDIAGONAL, LOWER_BIDIAGONAL, UPPER_BIDIAGONAL)


def _infer_sum(expr: MatAdd, fb: FactBase) -> set[str]:
    terms = []
    for t in expr.args:
        coeff, mats = split_coeff(t)
        m = _product(mats)
        terms.append((coeff, m, fb.facts(m)))
    out: set[str] = set()
    for p in (SYMMETRIC, LOWER, UPPER, DIAGONAL, *_BAND_PROPS):
        if all(p in f for _, _, f in terms):
            out.add(p)
    if all(PSD in f and _scalar_sign(c, fb) > 0 for c, _, f in terms):
        out.add(PSD)
        if any(PD in f for _, _, f in terms):
            out.add(PD)
    return out


def _infer_product(expr: sp.Basic, fb: FactBase) -> set[str]:
    coeff, mats = split_coeff(expr)
    mats = [m for m in mats if not isinstance(m, Identity)]
    square = _is_square(expr)
    if not mats:
        return {IDENTITY} if coeff == 1 else {DIAGONAL}
    sign = _scalar_sign(coeff, fb)
    nonzero = _scalar_nonzero(coeff, fb)
    if len(mats) == 1:
        f = set(fb.facts(mats[0]))
        if coeff == 1:
            return f
        keep = {SYMMETRIC, LOWER, UPPER, DIAGONAL, *_BAND_PROPS}
        out = {p for p in f if p in keep}
        if nonzero and FULL_RANK in f:
            out.add(FULL_RANK)
        if sign > 0 and PSD in f:
            out.add(PSD)
        if sign > 0 and PD in f:
            out.add(PD)
        return out
    fs = [fb.facts(m) for m in mats]
    out = set()
    for p in (LOWER, UPPER, DIAGONAL):
        if all(p in f for f in fs):
            out.add(p)
    # a banded matrix scaled by diagonal ones (rows, columns) keeps its band
    banded = [f for f in fs if DIAGONAL not in f]
    if len(banded) == 1:
        out |= {p for p in banded[0] if p in _BAND_PROPS}
    if coeff == 1 and all(ORTHOGONAL in f for f in fs):
        out.add(ORTHOGONAL)
    if nonzero and square and all(INVERTIBLE in f for f in fs):
        out.add(INVERTIBLE)
    # Congruence X.T * M * X (or X.T * X): symmetric, and semidefinite/definite when M is.
    m = len(mats)
    half = m // 2
    left, right = mats[:half], mats[m - half :]
    if half and canonical(Transpose(_product(left)), fb) == canonical(_product(right), fb):
        x = _product(right)
        if m % 2 == 0:
            middle_f: Facts = close_facts({PD}, True)  # X.T X: as if the middle were I
        else:
            middle_f = fs[half]
        if SYMMETRIC in middle_f:
            out.add(SYMMETRIC)
        if PSD in middle_f and sign > 0:
            out.add(PSD)
            if PD in middle_f and col_full_rank(x, fb):
                out.add(PD)
    elif all(DIAGONAL in f for f in fs):
        out.add(SYMMETRIC)
    if nonzero and (
        all(col_full_rank(x, fb) for x in mats) or all(row_full_rank(x, fb) for x in mats)
    ):
        out.add(FULL_RANK)
    return out
