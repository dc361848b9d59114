"""A safe parser for the formula language of search spaces.

The grammar accepts only what matrix formulas on paper need, and builds SymPy matrix
expressions directly (never ``eval``, ``sympify`` of raw text, or pickle)::

    expr    := term (('+' | '-') term)*
    term    := unary (('*' | '@' | '/') unary)*       # '/' only by a scalar
    unary   := '-' unary | postfix
    postfix := atom ('.T' | "'")*
    atom    := NUMBER | NAME | NAME '(' args ')' | '(' expr ')'

Functions: ``inv(X)``, ``transpose(X)``, ``eye(d)`` / ``I(d)`` (identity of dimension ``d``).

Dimension formulas (``k = "n // 2"``) use the same tokenizer and a smaller integer grammar
(``+ - * / // ( )``, integers and dimension names), see :func:`parse_dim_formula`.

Bounded work: SymPy builds every sum and product by walking the whole *written-out* tree of its
operands (``doit``), so a definition used twice in the next one, and so on, costs twice as
much per level. The parser therefore refuses, with the field and the figures, a formula
longer than :data:`MAX_LENGTH` characters, a formula whose written-out tree (definitions copied
wherever they are used) would exceed :data:`MAX_NODES` nodes or whose operations would walk
more than :data:`MAX_WORK` nodes in all, and a product of more than :data:`MAX_FACTORS` matrix
factors (the chain ordering is O(k^3) in the factors). The sizes are
counted on the shared nodes (a DAG), in time linear in the number of distinct nodes.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import sympy as sp
from sympy.matrices.expressions import MatrixExpr, MatrixSlice, ZeroMatrix

from .errors import SpecError

__all__ = [
    "Token",
    "tokenize",
    "parse_formula",
    "parse_dim_formula",
    "formula_names",
    "tree_size",
    "nodes",
    "chain_length",
    "MAX_NODES",
    "MAX_FACTORS",
    "MAX_LENGTH",
    "MAX_WORK",
]

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<number>\d+\.\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|\d+(?:[eE][+-]?\d+)?)
  | (?P<dotT>\.T\b)
  | (?P<name>[A-Za-z_][A-Za-z_0-9]*)
  | (?P<op>//|[-+*/@(),'\[\]:])
""",
    re.VERBOSE | re.ASCII,  # ASCII: no Unicode digits (int('\u0661') == 1) or spaces
)

FUNCTIONS = ("inv", "transpose", "eye", "I")
MAX_DEPTH = 100  # nested parentheses / unary minus / calls: keeps clear of Python's recursion limit
#: the most characters of one formula (the longest shipped formula has about 40)
MAX_LENGTH = 100_000
#: the most nodes of a formula written out as a tree, definitions copied wherever they are used
#: (the largest shipped output has about 60): SymPy's construction walks that tree
MAX_NODES = 5_000
#: the most nodes SymPy may walk building one formula, summed over its operations (about 15 us
#: each: 1.5 s; a shipped formula needs a few hundred)
MAX_WORK = 100_000
#: the most matrix factors of one product (chain), powers counted as repeated factors
MAX_FACTORS = 64


@dataclass(frozen=True)
class Token:
    kind: str  # "number", "name", "op", "dotT", "end"
    text: str
    pos: int


#: formulas longer than this are shown as a window around the error
ECHO = 120


def _error(where: str, text: str, pos: int, message: str) -> SpecError:
    shown, at = _window(text, pos)
    caret = " " * at + "^"
    return SpecError(f"{where}: {message} at position {pos + 1}\n    {shown}\n    {caret}")


def _window(text: str, pos: int) -> tuple[str, int]:
    """The formula as shown under an error message, and the caret's column in it: a long
    formula is cut to :data:`ECHO` characters around the position, marked with ``...``."""
    if len(text) <= ECHO:
        return text, pos
    start = max(0, min(pos - ECHO // 2, len(text) - ECHO))
    shown = text[start : start + ECHO]
    at = pos - start
    if start > 0:
        shown, at = "..." + shown, at + 3
    if start + ECHO < len(text):
        shown += "..."
    return shown, at


def tokenize(text: str, where: str = "formula") -> list[Token]:
    """Split ``text`` into tokens, raising :class:`SpecError` on any unexpected character."""
    if not isinstance(text, str):
        raise SpecError(f"{where}: expected a formula string, got {type(text).__name__}")
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise _error(where, text, pos, f"unexpected character {text[pos]!r}")
        kind = m.lastgroup or ""
        if kind != "ws":
            tokens.append(Token(kind, m.group(), pos))
        pos = m.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    listed = ", ".join(sorted(choices)) if choices else "(none)"
    return f"known names: {listed}{hint}"


def _shape_str(e: sp.Basic) -> str:
    if isinstance(e, MatrixExpr):
        return f"{e.shape[0]}x{e.shape[1]}"
    return "scalar"


def tree_size(e: sp.Basic, memo: dict[sp.Basic, int] | None = None) -> int:
    """Nodes of ``e`` written out as a tree (every shared sub-expression counted once per use),
    computed on the shared nodes: time linear in the number of *distinct* nodes."""
    memo = {} if memo is None else memo
    if e in memo:
        return memo[e]
    stack: list[tuple[sp.Basic, bool]] = [(e, False)]
    while stack:
        node, ready = stack.pop()
        if node in memo:
            continue
        if ready:
            memo[node] = 1 + sum(memo[a] for a in node.args)
            continue
        stack.append((node, True))
        stack.extend((a, False) for a in node.args if a not in memo)
    return memo[e]


def nodes(e: sp.Basic) -> list[sp.Basic]:
    """The distinct nodes of ``e``, each shared node once (a DAG of shared definitions walked
    as a tree is exponentially long; SymPy's ``atoms``, ``has`` and ``preorder_traversal``
    walk it so)."""
    out: list[sp.Basic] = []
    seen: set[int] = set()
    stack = [e]
    while stack:
        x = stack.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        out.append(x)
        if isinstance(x, sp.Basic):
            stack.extend(x.args)
    return out


def chain_length(e: sp.Basic) -> int:
    """The number of matrix factors the derivation's chain ordering sees in the product ``e``
    (integer powers count as repeated factors, as :func:`autotune.properties.split_coeff`
    expands them); 1 for anything that is not a product."""
    from sympy.matrices.expressions import MatMul, MatPow

    if isinstance(e, MatPow):
        exp = e.exp
        return abs(int(exp)) if getattr(exp, "is_Integer", False) else 1
    if isinstance(e, MatMul):
        return sum(chain_length(a) for a in e.args if isinstance(a, MatrixExpr))
    return 1


class _Parser:
    def __init__(
        self,
        text: str,
        names: Mapping[str, sp.Basic],
        dims: Mapping[str, sp.Symbol],
        where: str,
    ) -> None:
        self.text = text
        self.names = names
        self.dims = dims
        self.where = where
        self.tokens = tokenize(text, where)
        self.i = 0
        self.depth = 0
        self.sizes: dict[sp.Basic, int] = {}
        self.limits = True
        self.work = 0  # nodes SymPy walks building the formula so far (see check_size)

    # -- token helpers -------------------------------------------------------------------
    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def advance(self) -> Token:
        t = self.tokens[self.i]
        self.i += 1
        return t

    def expect(self, text: str) -> Token:
        if self.tok.text != text:
            found = "end of formula" if self.tok.kind == "end" else repr(self.tok.text)
            raise self.err(self.tok.pos, f"expected {text!r}, found {found}")
        return self.advance()

    def err(self, pos: int, message: str) -> SpecError:
        return _error(self.where, self.text, pos, message)

    def check_size(self, pos: int, *operands: sp.Basic) -> None:
        """Refuse, before SymPy walks them, operands whose written-out tree is too large."""
        if not self.limits:
            return
        total = 1 + sum(tree_size(o, self.sizes) for o in operands)
        if total > MAX_NODES:
            raise self.err(
                pos,
                f"formula too large: written out, each definition copied wherever it is used, "
                f"it has at least {total} nodes, over the limit of {MAX_NODES} (definitions that "
                "each use the previous one twice double at every level)",
            )
        self.work += total
        if self.work > MAX_WORK:
            raise self.err(
                pos,
                f"formula too costly to build: its operations walk {self.work} nodes of their "
                f"operands written out (each definition copied wherever it is used), over the "
                f"limit of {MAX_WORK}; split it into [definitions]",
            )

    def check_chain(self, pos: int, e: sp.Basic) -> sp.Basic:
        if not self.limits:
            return e
        factors = chain_length(e)
        if factors > MAX_FACTORS:
            raise self.err(
                pos,
                f"a product of {factors} matrix factors, over the limit of {MAX_FACTORS} "
                "(the chain ordering is cubic in the number of factors); split it into "
                "definitions",
            )
        return e

    # -- grammar ---------------------------------------------------------------------------
    def parse(self) -> sp.Basic:
        if self.tok.kind == "end":
            raise self.err(0, "empty formula")
        e = self.expr()
        if self.tok.kind != "end":
            raise self.err(self.tok.pos, f"unexpected {self.tok.text!r}")
        return e

    def expr(self) -> sp.Basic:
        start = self.tok.pos
        e = self.term()
        while self.tok.text in ("+", "-"):
            op = self.advance()
            rhs = self.term()
            if op.text == "-":
                self.check_size(op.pos, rhs)
                rhs = -rhs
            e = self.add(e, rhs, start, op.pos)
        return e

    def term(self) -> sp.Basic:
        start = self.tok.pos
        e = self.unary()
        while self.tok.text in ("*", "@", "/"):
            op = self.advance()
            rhs = self.unary()
            if op.text == "/":
                if isinstance(rhs, MatrixExpr):
                    raise self.err(
                        op.pos, "division by a matrix is not allowed; write inv(X) instead"
                    )
                if rhs.is_zero:  # also 0.0: SymPy's Float(0.0) == 0 is False
                    raise self.err(op.pos, "division by zero")
                self.check_size(op.pos, e, rhs)
                e = self.check_chain(op.pos, e / rhs)
            else:
                e = self.mul(e, rhs, start, op.pos)
        return e

    def unary(self) -> sp.Basic:
        # Every recursion of the grammar (parentheses, calls, unary signs) passes here.
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.err(
                self.tok.pos, f"formula nested too deeply (more than {MAX_DEPTH} levels)"
            )
        try:
            if self.tok.text == "-":
                pos = self.advance().pos
                operand = self.unary()
                self.check_size(pos, operand)
                return -operand
            if self.tok.text == "+":
                self.advance()
                return self.unary()
            return self.postfix()
        finally:
            self.depth -= 1

    def postfix(self) -> sp.Basic:
        e = self.atom()
        while self.tok.kind == "dotT" or self.tok.text in ("'", "["):
            if self.tok.text == "[":
                e = self.index(e)
                continue
            pos = self.advance().pos
            if isinstance(e, MatrixExpr):
                self.check_size(pos, e)
                e = e.T
        return e

    def index(self, e: sp.Basic) -> sp.Basic:
        """``X[i, j]`` (an entry, as a 1x1 matrix), ``X[i, :]`` (a row), ``X[:, j]`` (a
        column), ``X[a:b, c:d]`` (a block): 0-based, stop excluded, bounds are non-negative
        integers or dimension names."""
        pos = self.expect("[").pos
        if not isinstance(e, MatrixExpr):
            raise self.err(pos, "only a matrix can be indexed (X[i, j], X[i, :], X[:, j])")
        rows = self.index_range(e.shape[0])
        self.expect(",")
        cols = self.index_range(e.shape[1])
        self.expect("]")
        self.check_size(pos, e)
        for (start, stop, _), size in zip((rows, cols), e.shape, strict=True):
            if (stop.is_Integer and size.is_Integer and stop > size) or (
                    start.is_Integer and size.is_Integer and start >= size):
                raise self.err(pos, f"index range {start}:{stop} is outside 0:{size}")
        # built directly: SymPy's constructor compares the bounds symbolically (its relational
        # machinery runs code of its own); they are checked here and at derivation instead
        return sp.Basic.__new__(MatrixSlice, e, sp.Tuple(*rows), sp.Tuple(*cols))

    def index_range(self, size: sp.Basic) -> tuple[sp.Basic, sp.Basic, sp.Basic]:
        start = self.index_bound(sp.Integer(0))
        if self.tok.text != ":":
            if self.tok.text not in (",", "]"):
                raise self.err(self.tok.pos, "expected ',', ':' or ']' in an index")
            return (start, start + 1, sp.Integer(1))
        self.advance()
        stop = self.index_bound(size)
        if stop.is_Integer and start.is_Integer and stop <= start:
            raise self.err(self.tok.pos, f"empty index range {start}:{stop}")
        return (start, stop, sp.Integer(1))

    def index_bound(self, default: sp.Basic) -> sp.Basic:
        t = self.tok
        if t.kind == "number" and re.fullmatch(r"\d+", t.text) and len(t.text) <= 12:
            self.advance()
            return sp.Integer(int(t.text))
        if t.kind == "name" and t.text in self.dims:
            self.advance()
            return self.dims[t.text]
        if t.text in (":", ",", "]"):
            return default
        raise self.err(t.pos, "an index is a non-negative integer, a dimension name or ':'"
                       f"; dimensions: {', '.join(self.dims) or '(none)'}")

    def atom(self) -> sp.Basic:
        t = self.tok
        if t.kind == "number":
            self.advance()
            return self.number(t)
        if t.text == "(":
            self.advance()
            e = self.expr()
            self.expect(")")
            return e
        if t.kind == "name":
            self.advance()
            if self.tok.text == "(":
                return self.call(t)
            if t.text in self.names:
                return self.names[t.text]
            if t.text in FUNCTIONS:
                raise self.err(t.pos, f"{t.text} is a function: write {t.text}(...)")
            raise self.err(
                t.pos, f"unknown symbol {t.text!r}; {_suggest(t.text, list(self.names))}"
            )
        found = "end of formula" if t.kind == "end" else repr(t.text)
        raise self.err(t.pos, f"expected a name, number or '(', found {found}")

    def number(self, t: Token) -> sp.Basic:
        # A coefficient of a float64 computation must be a float64 number. Checking with
        # Python's float() first also keeps SymPy from parsing a literal like 1e-99999999,
        # which takes minutes, and int() from literals over its 4300-digit limit.
        mantissa = re.split(r"[eE]", t.text)[0]
        if re.fullmatch(r"\d+", t.text) and len(t.text.lstrip("0")) <= 300:
            return sp.Integer(int(t.text))
        value = float(t.text)
        if not math.isfinite(value) or (value == 0.0 and mantissa.strip("0.")):
            raise self.err(t.pos, f"number {_short(t.text)} is out of range for float64")
        return sp.Float(value)

    def call(self, fn: Token) -> sp.Basic:
        self.expect("(")
        if fn.text in ("eye", "I"):
            arg = self.tok
            if arg.kind == "name" and arg.text in self.dims:
                self.advance()
                size: sp.Basic = self.dims[arg.text]
            elif arg.kind == "number" and re.fullmatch(r"[1-9]\d*", arg.text):
                self.advance()
                size = sp.Integer(int(arg.text))
            else:
                raise self.err(
                    arg.pos,
                    f"{fn.text}() takes a dimension name or a positive integer; "
                    f"dimensions: {', '.join(self.dims) or '(none)'}",
                )
            self.expect(")")
            return sp.Identity(size)
        if fn.text not in ("inv", "transpose"):
            raise self.err(
                fn.pos,
                f"unknown function {fn.text!r}; functions: inv(X), transpose(X), eye(dim)",
            )
        arg_pos = self.tok.pos
        arg = self.expr()
        self.expect(")")
        if fn.text == "transpose":
            if isinstance(arg, MatrixExpr):
                self.check_size(arg_pos, arg)
                return arg.T
            return arg
        if not isinstance(arg, MatrixExpr):
            if arg.is_zero:
                raise self.err(arg_pos, "inv() of zero")
            return 1 / arg
        if isinstance(arg, ZeroMatrix):
            raise self.err(arg_pos, "inv() of a zero matrix")
        if arg.shape[0] != arg.shape[1]:
            raise self.err(
                arg_pos, f"inv() needs a square matrix, got shape {_shape_str(arg)}"
            )
        return sp.Inverse(arg)

    # -- shape-checked constructors ----------------------------------------------------------
    def add(self, a: sp.Basic, b: sp.Basic, start: int, pos: int) -> sp.Basic:
        am, bm = isinstance(a, MatrixExpr), isinstance(b, MatrixExpr)
        if am != bm:
            raise self.err(
                pos,
                f"cannot add a matrix and a scalar in {self.text[start:]!r} "
                f"(shapes {_shape_str(a)} and {_shape_str(b)}); write alpha*eye(n) for a "
                "scaled identity",
            )
        if am and a.shape != b.shape:
            raise self.err(
                pos,
                f"shapes do not conform for '+'/'-': {_short(a)} is {_shape_str(a)} but "
                f"{_short(b)} is {_shape_str(b)}",
            )
        self.check_size(pos, a, b)
        return a + b

    def mul(self, a: sp.Basic, b: sp.Basic, start: int, pos: int) -> sp.Basic:
        if isinstance(a, MatrixExpr) and isinstance(b, MatrixExpr):
            if a.shape[1] != b.shape[0]:
                raise self.err(
                    pos,
                    f"shapes do not conform for '*': {_short(a)} is {_shape_str(a)} and "
                    f"{_short(b)} is {_shape_str(b)}",
                )
        self.check_size(pos, a, b)
        return self.check_chain(pos, a * b)


def _short(e: sp.Basic, limit: int = 40) -> str:
    s = str(e)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def parse_formula(
    text: str,
    names: Mapping[str, sp.Basic],
    dims: Mapping[str, sp.Symbol] | None = None,
    where: str = "formula",
    limits: bool = True,
) -> sp.Basic:
    """Parse ``text`` into a SymPy (matrix) expression over ``names``.

    ``names`` maps identifiers to SymPy objects (``MatrixSymbol``, scalar ``Symbol`` or
    already-parsed definitions). Raises :class:`SpecError` naming ``where`` and the position.
    ``limits=False`` lifts :data:`MAX_LENGTH`, :data:`MAX_NODES`, :data:`MAX_WORK` and
    :data:`MAX_FACTORS`, for text autotune wrote itself under its own bound (the blocked
    formulas of its cache).
    """
    if limits and isinstance(text, str) and len(text) > MAX_LENGTH:
        raise SpecError(
            f"{where}: formula of {len(text)} characters, over the limit of {MAX_LENGTH}; "
            "split it into [definitions]"
        )
    parser = _Parser(text, names, dims or {}, where)
    parser.limits = limits
    try:
        return parser.parse()
    except SpecError:
        raise
    except (ValueError, TypeError, ArithmeticError, RecursionError) as exc:
        # SymPy refusing to build an expression (a singular inverse, a shape it rejects):
        # still a mistake in the formula, reported as one.
        pos = parser.tok.pos if parser.i < len(parser.tokens) else len(text)
        raise parser.err(pos, f"cannot build the expression ({type(exc).__name__}: {exc})") from exc


def formula_names(text: str, where: str = "formula") -> list[str]:
    """The identifiers a formula references (function names excluded), in order."""
    toks = tokenize(text, where)
    out: list[str] = []
    for i, t in enumerate(toks):
        if t.kind != "name":
            continue
        if toks[i + 1].text == "(" and t.text in FUNCTIONS:
            continue
        if t.text not in out:
            out.append(t.text)
    return out


# -- dimension formulas ------------------------------------------------------------------


_DimNode = Callable[[Mapping[str, int]], Fraction]


class _DimParser:
    """Recursive descent over a dimension formula's tokens into a closure of the dims:
    ``expr := term (('+'|'-') term)*``, ``term := atom (('*'|'/'|'//') atom)*``,
    ``atom := integer | name | '(' expr ')' | '-' atom``."""

    def __init__(self, text: str, where: str) -> None:
        self.text, self.where = text, where
        self.toks = tokenize(text, where)
        self.i = 0

    def peek(self) -> Token:
        return self.toks[self.i]

    def take(self) -> Token:
        self.i += 1
        return self.toks[self.i - 1]

    def error(self, pos: int, message: str) -> SpecError:
        return _error(self.where, self.text, pos, message)

    def expr(self) -> _DimNode:
        node = self.term()
        while self.peek().text in ("+", "-"):
            op = self.take().text
            rhs = self.term()
            node = (lambda a, b: lambda d: a(d) + b(d))(node, rhs) if op == "+" else (
                lambda a, b: lambda d: a(d) - b(d)
            )(node, rhs)
        return node

    def term(self) -> _DimNode:
        node = self.atom()
        while self.peek().text in ("*", "/", "//"):
            tok = self.take()
            node = self.binop(tok, node, self.atom())
        return node

    def binop(self, tok: Token, a: _DimNode, b: _DimNode) -> _DimNode:
        def f(d: Mapping[str, int]) -> Fraction:
            x, y = a(d), b(d)
            if tok.text == "*":
                return x * y
            if y == 0:
                raise self.error(tok.pos, "division by zero")
            if tok.text == "//":
                return Fraction(x // y)
            if (x / y).denominator != 1:
                raise self.error(tok.pos, f"{x} / {y} is not an integer; use '//' to round down")
            return x / y

        return f

    def name(self, t: Token) -> _DimNode:
        name = t.text

        def look(d: Mapping[str, int]) -> Fraction:
            if name not in d:
                raise self.error(t.pos, f"unknown dimension {name!r}; {_suggest(name, list(d))}")
            return Fraction(d[name])

        return look

    def atom(self) -> _DimNode:
        t = self.take()
        if t.kind == "number" and re.fullmatch(r"\d+", t.text):
            if len(t.text) > 100:
                raise self.error(t.pos, "number too large for a dimension")
            v = Fraction(int(t.text))
            return lambda d: v
        if t.kind == "name":
            return self.name(t)
        if t.text == "(":
            node = self.expr()
            if self.take().text != ")":
                raise self.error(self.toks[self.i - 1].pos, "expected ')'")
            return node
        if t.text == "-":
            inner = self.atom()
            return lambda d: -inner(d)
        found = "end of formula" if t.kind == "end" else repr(t.text)
        raise self.error(t.pos, f"expected an integer, a dimension or '(', found {found}")


def parse_dim_formula(text: str, where: str) -> Callable[[Mapping[str, int]], int]:
    """Compile an integer dimension formula such as ``"n // 2"`` into a function of the dims.

    ``/`` must divide exactly, ``//`` floors. The result must be a positive integer.
    """
    parser = _DimParser(text, where)
    try:
        root = parser.expr()
    except RecursionError:
        raise SpecError(f"{where}: {text!r} is nested too deeply") from None
    if parser.peek().kind != "end":
        raise parser.error(parser.peek().pos, f"unexpected {parser.peek().text!r}")

    def evaluate(dims: Mapping[str, int]) -> int:
        try:
            value = root(dims)
        except RecursionError:
            raise SpecError(f"{where}: {text!r} is too long to evaluate") from None
        if value.denominator != 1:
            raise SpecError(f"{where}: {text!r} gives {value}, not an integer")
        return int(value)

    evaluate.names = [t.text for t in parser.toks if t.kind == "name"]  # type: ignore[attr-defined]
    return evaluate


_DIM_CACHE: dict[str, Any] = {}


def eval_dim(formula: str, env: Mapping[str, int]) -> int:
    """A dimension formula (``"n // 2"``, ``"n_0"``) evaluated at ``env``; each formula is
    parsed once."""
    fn = _DIM_CACHE.get(formula)
    if fn is None:
        fn = parse_dim_formula(formula, f"shape {formula!r}")
        _DIM_CACHE[formula] = fn
    return fn(env)
