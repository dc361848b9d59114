"""The formula language: grammar, shapes, error messages with positions, dimension formulas,
and that no text can execute code."""

from __future__ import annotations

import builtins

import pytest
import sympy as sp
from sympy.matrices.expressions import Identity, Inverse, MatrixSymbol, ZeroMatrix

from autotune.errors import SpecError
from autotune.formula import formula_names, parse_dim_formula, parse_formula, tokenize

n = sp.Symbol("n", integer=True, positive=True)
k = sp.Symbol("k", integer=True, positive=True)
A = MatrixSymbol("A", n, n)
B = MatrixSymbol("B", n, n)
C = MatrixSymbol("C", n, n)
H = MatrixSymbol("H", k, n)
x = MatrixSymbol("x", n, 1)
a = sp.Symbol("a", real=True)
NAMES = {"A": A, "B": B, "C": C, "H": H, "x": x, "a": a}
DIMS = {"n": n, "k": k}


def parse(text: str) -> sp.Basic:
    return parse_formula(text, NAMES, DIMS, where="test.formula")


# -- the grammar ---------------------------------------------------------------------------

GOOD = [
    ("A+B*C", A + B * C),
    ("(A+B)*C", (A + B) * C),
    ("A*B+C", A * B + C),
    ("A-B-C", A - B - C),
    ("A-(B-C)", A - (B - C)),
    ("-A+B", -A + B),
    ("-A*B", -(A * B)),
    ("- -A", A),
    ("+A", A),
    ("A.T", A.T),
    ("A'", A.T),
    ("H.T*H", H.T * H),
    ("H'*H", H.T * H),
    ("(A*B).T", (A * B).T),
    ("(A*B)'", B.T * A.T),
    ("A.T'", A),
    ("A@B", A * B),
    ("A@B@C", A * B * C),
    ("A/2", A / 2),
    ("A/a", A / a),
    ("A*B/2", A * B / 2),
    ("1/2*A", sp.Rational(1, 2) * A),
    ("2.5*A", sp.Float("2.5") * A),
    ("a*A", a * A),
    ("inv(A)", Inverse(A)),
    ("inv(A*B)", Inverse(A * B)),
    ("inv(a)", 1 / a),
    ("transpose(H)", H.T),
    ("transpose(A*B)", (A * B).T),
    ("eye(n)", Identity(n)),
    ("I(k)", Identity(k)),
    ("A + a*eye(n)", A + a * Identity(n)),
    ("eye(3)", Identity(3)),
    ("x.T*A*x", x.T * A * x),
    ("H*inv(A)*H.T", H * Inverse(A) * H.T),
    ("  A\t+\nB  ", A + B),
]


@pytest.mark.parametrize("text,expected", GOOD, ids=[t for t, _ in GOOD])
def test_grammar(text, expected):
    assert parse(text) == expected


def test_precedence_is_not_left_to_right():
    # a + b*c is a + (b*c), not (a + b)*c
    e = parse("A+B*C")
    assert e == A + B * C
    assert e != (A + B) * C


def test_scalar_formulas():
    assert parse("a*2 + 1") == 2 * a + 1
    assert parse("(a)") == a
    assert parse("a'") == a  # transposing a scalar is a no-op


def test_formula_names():
    assert formula_names("mu + Sigma*H.T*inv(S)*(H*mu - data)") == [
        "mu",
        "Sigma",
        "H",
        "S",
        "data",
    ]
    assert formula_names("eye(n) + inv(A)") == ["n", "A"]


def test_tokenize_positions():
    toks = tokenize("A + B'")
    assert [(t.kind, t.text, t.pos) for t in toks] == [
        ("name", "A", 0),
        ("op", "+", 2),
        ("name", "B", 4),
        ("op", "'", 5),
        ("end", "", 6),
    ]


# -- errors --------------------------------------------------------------------------------

BAD = [
    # (text, substring of the message, 0-based position of the caret)
    ("A $ B", "unexpected character '$'", 2),
    ("A + B;", "unexpected character ';'", 5),
    ("A*(B+C", "expected ')'", 6),
    ("(A+B))", "unexpected ')'", 5),
    ("A+B)", "unexpected ')'", 3),
    ("A/B", "division by a matrix", 1),
    ("A/(B*C)", "division by a matrix", 1),
    ("A/0", "division by zero", 1),
    ("A/0.0", "division by zero", 1),
    ("A/(1-1)", "division by zero", 1),
    ("A+", "found end of formula", 2),
    ("A*", "found end of formula", 2),
    ("A-", "found end of formula", 2),
    ("A*+", "found end of formula", 3),
    ("*A", "expected a name, number or '('", 0),
    ("A B", "unexpected 'B'", 2),
    ("", "empty formula", 0),
    ("   ", "empty formula", 0),
    ("Z + A", "unknown symbol 'Z'", 0),
    ("A + Sigma", "unknown symbol 'Sigma'", 4),
    ("A+H", "shapes do not conform for '+'/'-'", 1),
    ("A*H", "shapes do not conform for '*'", 1),
    ("H*A + A", "shapes do not conform", 4),
    ("A + 1", "cannot add a matrix and a scalar", 2),
    ("inv(H)", "inv() needs a square matrix", 4),
    ("inv(A-A)", "inv() of a zero matrix", 4),
    ("inv(0)", "inv() of zero", 4),
    ("eye(0)", "eye() takes a dimension name or a positive integer", 4),
    ("eye(m)", "eye() takes a dimension name or a positive integer", 4),
    ("eye(A)", "eye() takes a dimension name or a positive integer", 4),
    ("foo(A)", "unknown function 'foo'", 0),
    ("inv", "inv is a function", 0),
    ("A.T()", "unexpected '('", 3),
    ("A..T", "unexpected character '.'", 1),
    ("A.t", "unexpected character '.'", 1),
    ("A*1e999", "out of range for float64", 2),
    ("A*1e-400", "out of range for float64", 2),  # would silently become 0 in float64
    ("A*1e-99999999", "out of range for float64", 2),  # SymPy would take minutes to parse it
    ("9" * 5000 + "*A", "out of range for float64", 0),  # over int()'s 4300-digit limit
    ("a/0e-99999999", "division by zero", 1),
    ("\u0661*A", "unexpected character", 0),  # an Arabic-Indic digit is not a number here
    ("(" * 150 + "A" + ")" * 150, "nested too deeply", None),
    ("*".join(["A"] * 65), "a product of 65 matrix factors, over the limit of 64", 127),
    ("*".join(["A", "B"] * 40), "a product of 65 matrix factors", 127),
    ("(A*B)" + "*(A*B)" * 69, "a product of 65 matrix factors", 383),  # (A*B)**65
    ("A + " * 30000 + "A", "formula of 120001 characters, over the limit of 100000", None),
    ("A*B" + " + C - C" * 5000, "formula too costly to build", None),
    ("-" * 2000 + "A", "nested too deeply", None),
]


@pytest.mark.parametrize("text,message,pos", BAD, ids=[repr(t[:20]) for t, _, _ in BAD])
def test_errors_name_the_place(text, message, pos):
    with pytest.raises(SpecError) as info:
        parse(text)
    msg = str(info.value)
    assert msg.startswith("test.formula: ")
    assert message in msg
    if pos is not None:
        assert f"at position {pos + 1}" in msg
        lines = msg.splitlines()
        if len(text) <= 120:
            assert lines[-2] == "    " + text  # the formula, then a caret under the culprit
            assert lines[-1] == "    " + " " * pos + "^"
        else:  # a long formula is shown as a window around the culprit
            shown, col = lines[-2][4:], lines[-1].index("^") - 4
            assert len(shown) <= 126 and shown[col] == text[pos]


def test_unknown_symbol_lists_known_names_and_suggests():
    with pytest.raises(SpecError) as info:
        parse("AA + B")
    msg = str(info.value)
    assert "unknown symbol 'AA'" in msg
    assert "known names: A, B, C, H, a, x" in msg
    assert "did you mean A" in msg


def test_shape_errors_show_both_shapes():
    with pytest.raises(SpecError) as info:
        parse("A + H")
    assert "nxn" in str(info.value) and "kxn" in str(info.value)
    with pytest.raises(SpecError) as info:
        parse("H * H")
    assert "kxn" in str(info.value)


def test_not_a_string():
    with pytest.raises(SpecError, match="expected a formula string"):
        parse_formula(42, NAMES)  # type: ignore[arg-type]


def test_number_literals():
    assert parse("1e308*A") == sp.Float(1e308) * A
    assert parse("0.1*A") == sp.Float("0.1") * A
    assert parse("1.*A") == sp.Float(1.0) * A
    assert parse("007*A") == 7 * A
    assert parse("0e-99999999*A") == ZeroMatrix(n, n)
    big = "9" * 300
    assert parse(big + "*a") == sp.Integer(int(big)) * a


def test_zero_matrix_results_are_allowed_but_not_inverted():
    assert isinstance(parse("A - A"), ZeroMatrix)
    with pytest.raises(SpecError, match="zero matrix"):
        parse("inv(0*A) + A")


# -- safety: the text is never executed ----------------------------------------------------

EVIL = [
    "__import__('os')",
    "__import__('os').system('echo pwned')",
    "eval('1')",
    'eval("1")',
    "exec('import os')",
    "open('/etc/passwd')",
    "A.__class__",
    "A.__class__.__mro__",
    "().__class__.__bases__[0].__subclasses__()",
    "lambda: 0",
    "[x for x in ()]",
    "getattr(A, 'T')",
    "globals()",
    "A if a else B",
    "A; import os",
    "sympify('A')",
    "Symbol('z')",
    "A**2",
    "A[0, 0, 0]",
    "{'a': 1}",
    "`A`",
    "A # comment",
]


@pytest.mark.parametrize("text", EVIL, ids=range(len(EVIL)))
def test_nothing_executes(text, monkeypatch):
    calls = []

    def spy(name):
        def f(*args, **kwargs):
            calls.append((name, args))
            raise AssertionError(f"{name} called while parsing formula text")

        return f

    # sympify / parse_expr of raw text, eval, exec and compile would all run the text
    import sympy.parsing.sympy_parser as sympy_parser

    monkeypatch.setattr(sp, "sympify", spy("sympify"))
    monkeypatch.setattr(sympy_parser, "parse_expr", spy("parse_expr"))
    for name in ("eval", "exec"):
        monkeypatch.setattr(builtins, name, spy(name))
    try:
        with pytest.raises(SpecError):
            parse(text)
        with pytest.raises(SpecError):
            parse_dim_formula(text, "dims.k")({"n": 3, "k": 2})
    finally:
        monkeypatch.undo()
    assert not calls


def test_no_side_effects(tmp_path):
    marker = tmp_path / "pwned"
    for text in (
        f"__import__('os').system('touch {marker}')",
        f"open('{marker}', 'w')",
        f"exec(\"open('{marker}', 'w')\")",
    ):
        with pytest.raises(SpecError):
            parse(text)
        with pytest.raises(SpecError):
            parse_formula(text, {}, {}, "x")
    assert not marker.exists()


# -- dimension formulas --------------------------------------------------------------------

DIM_GOOD = [
    ("n", {"n": 7}, 7),
    ("n // 2", {"n": 4000}, 2000),
    ("n // 2", {"n": 7}, 3),
    ("2*n + 1", {"n": 10}, 21),
    ("2 * n", {"n": 1000}, 2000),
    ("(n - 1) // 3", {"n": 10}, 3),
    ("n / 4", {"n": 4000}, 1000),
    ("n - m + 1", {"n": 10, "m": 4}, 7),
    ("-(1 - n)", {"n": 5}, 4),
    ("-n // 2 + n", {"n": 7}, 3),  # unary minus binds tighter, as in Python: -7 // 2 == -4
    ("n * (m + 2) // 3", {"n": 4, "m": 1}, 4),
    ("12", {}, 12),
]


@pytest.mark.parametrize("text,dims,value", DIM_GOOD, ids=[t for t, _, _ in DIM_GOOD])
def test_dim_formula(text, dims, value):
    fn = parse_dim_formula(text, "dims.k")
    assert fn(dims) == value


def test_dim_formula_names():
    assert parse_dim_formula("n - m + 1", "dims.k").names == ["n", "m"]


DIM_BAD_SYNTAX = [
    ("n +", "found end of formula"),
    ("(n", "expected ')'"),
    ("n)", "unexpected ')'"),
    ("2.5 * n", "expected an integer"),
    ("n ** 2", "expected an integer"),
    ("n $ 2", "unexpected character"),
    ("", "found end of formula"),
    ("inv(n)", "unexpected '('"),
    ("(" * 2000 + "n" + ")" * 2000, "nested too deeply"),
    ("9" * 5000, "too large for a dimension"),
    ("\u0663", "unexpected character"),
]


@pytest.mark.parametrize(
    "text,message", DIM_BAD_SYNTAX, ids=[repr(t[:12]) for t, _ in DIM_BAD_SYNTAX]
)
def test_dim_formula_syntax_errors(text, message):
    with pytest.raises(SpecError) as info:
        parse_dim_formula(text, "dims.k")
    assert str(info.value).startswith("dims.k: ")
    assert message in str(info.value)


DIM_BAD_VALUE = [
    ("n / 3", {"n": 4000}, "not an integer; use '//'"),
    ("n / 0", {"n": 4}, "division by zero"),
    ("n // (n - n)", {"n": 4}, "division by zero"),
    ("m + 1", {"n": 4}, "unknown dimension 'm'"),
    ("1+" * 3000 + "1", {}, "too long"),
]


@pytest.mark.parametrize(
    "text,dims,message", DIM_BAD_VALUE, ids=[t[:12] for t, _, _ in DIM_BAD_VALUE]
)
def test_dim_formula_value_errors(text, dims, message):
    fn = parse_dim_formula(text, "dims.k")
    with pytest.raises(SpecError) as info:
        fn(dims)
    assert message in str(info.value)
