"""Fuzzing the problem parser and the formula parser: whatever the text, the only exception
that may come out is SpecError (with a message), never a crash from the inside."""

from __future__ import annotations

import tomllib
from pathlib import Path

import sympy as sp
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sympy.matrices.expressions import MatrixSymbol

from autotune.errors import SpecError
from autotune.formula import parse_dim_formula, parse_formula
from autotune.spec import parse_problem

KALMAN = (Path(__file__).resolve().parent.parent / "search_spaces" / "kalman.toml").read_text()
FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def _expect_spec_error_or_success(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except SpecError as exc:
        assert str(exc), "a SpecError must say what is wrong"
        return None


# -- (a) mutations of kalman.toml ---------------------------------------------------------

# Characters that matter to TOML, YAML and formulas, plus some that matter to nobody.
CHARS = st.sampled_from(
    list("abcdnkHRS_0123456789 \t\n=\"'[]{},.#+-*/()@:") + ["\u00e9", "\u0661", "\x00", "\\"]
)
SNIPPETS = st.sampled_from(
    [
        "inv(",
        ")",
        "'",
        ".T",
        " + ",
        "*",
        "/",
        "0",
        "-1",
        "2.5",
        "1e999",
        '"',
        "[",
        "]",
        "{",
        "}",
        "=",
        "\n",
        "[search]\n",
        "[dims]\n",
        "[extra]\n",
        "n",
        "k",
        "S",
        "newmu",
        "Sigma",
        "positive_definite",
        "lower",
        '"n"',
        'solver = { S = ["lu"] }\n',
        "blocks = { n = [3] }\n",
        'x = "S"\n',
        'S = "S"\n',
        "true",
        "[[inputs]]\n",
        "\ufeff",
    ]
)


@st.composite
def mutation(draw, text: str) -> str:
    kind = draw(
        st.sampled_from(
            [
                "delete",
                "insert",
                "replace",
                "snippet",
                "swap_lines",
                "drop_section",
                "dup_line",
                "drop_line",
            ]
        )
    )
    lines = text.split("\n")
    if kind == "swap_lines" and len(lines) > 1:
        i = draw(st.integers(0, len(lines) - 1))
        j = draw(st.integers(0, len(lines) - 1))
        lines[i], lines[j] = lines[j], lines[i]
        return "\n".join(lines)
    if kind == "dup_line" and lines:
        i = draw(st.integers(0, len(lines) - 1))
        return "\n".join(lines[: i + 1] + [lines[i]] + lines[i + 1 :])
    if kind == "drop_line" and lines:
        i = draw(st.integers(0, len(lines) - 1))
        return "\n".join(lines[:i] + lines[i + 1 :])
    if kind == "drop_section":
        starts = [i for i, ln in enumerate(lines) if ln.startswith("[")] + [len(lines)]
        if len(starts) > 1:
            s = draw(st.integers(0, len(starts) - 2))
            return "\n".join(lines[: starts[s]] + lines[starts[s + 1] :])
        return text
    if not text:
        return draw(CHARS)
    pos = draw(st.integers(0, len(text)))
    if kind == "delete":
        length = draw(st.integers(1, 8))
        return text[:pos] + text[pos + length :]
    if kind == "insert":
        return text[:pos] + draw(CHARS) + text[pos:]
    if kind == "snippet":
        return text[:pos] + draw(SNIPPETS) + text[pos:]
    return text[:pos] + draw(CHARS) + text[pos + 1 :]  # replace


@st.composite
def mutated_kalman(draw) -> str:
    text = KALMAN
    for _ in range(draw(st.integers(1, 4))):
        text = draw(mutation(text))
    return text


@FUZZ
@given(mutated_kalman())
@example(KALMAN.replace('S = "R + H*Sigma*H.T"', 'S = "R + H*Sigma*H.T*inv(R - R)"'))
@example(KALMAN.replace('S = "R + H*Sigma*H.T"', 'S = "R + H*Sigma*H.T/0.0"'))
@example(KALMAN.replace('S = "R + H*Sigma*H.T"', 'S = "' + "(" * 400 + "R" + ")" * 400 + '"'))
@example(KALMAN.replace('k = "n // 2"', 'k = "' + "1+" * 3000 + '1"'))
@example(KALMAN.replace('k = "n // 2"', 'k = "n // \u0662"'))
@example(KALMAN.replace('newmu = "', 'newmu = "0*'))
@example(KALMAN.replace("[problem]", "[problem]\nname = 3"))
@example(KALMAN.replace('k = "n // 2"', 'k = "' + "9" * 5000 + '"'))
@example(KALMAN.replace('newmu = "', 'newmu = "1e-9999999*'))
def test_mutated_problem_files(text):
    _expect_spec_error_or_success(parse_problem, text, origin="fuzz/kalman.toml")


KALMAN_YAML = yaml.safe_dump(tomllib.loads(KALMAN), sort_keys=False)


@st.composite
def mutated_kalman_yaml(draw) -> str:
    text = KALMAN_YAML
    for _ in range(draw(st.integers(1, 4))):
        text = draw(mutation(text))
    return text


def test_yaml_seed_parses():
    assert parse_problem(KALMAN_YAML, origin="k.yaml").outputs.keys() == {"newmu", "newSigma"}


@FUZZ
@given(mutated_kalman_yaml())
@example(KALMAN_YAML + "\n---\nmore: 1\n")
@example(KALMAN_YAML.replace("n: 4000", "n: .inf"))
@example(KALMAN_YAML.replace("n: 4000", "n: !!binary aGVsbG8="))
@example(KALMAN_YAML.replace("n: 4000", "n: &a [*a]"))
@example(KALMAN_YAML.replace("n: 4000", "? [1, 2]\n  : 3"))
@example("&a [*a, *a]")
@example("!!python/object/apply:os.system ['echo pwned']")
def test_mutated_yaml_problem_files(text):
    _expect_spec_error_or_success(parse_problem, text, origin="fuzz/kalman.yaml")


@FUZZ
@given(mutated_kalman())
def test_mutated_problem_files_as_yaml(text):
    # TOML text read as YAML: mostly nonsense, which must still be reported, not crash
    _expect_spec_error_or_success(parse_problem, text, origin="fuzz/kalman.yaml")


# -- (b) random formulas --------------------------------------------------------------------

n = sp.Symbol("n", integer=True, positive=True)
k = sp.Symbol("k", integer=True, positive=True)
NAMES = {
    "A": MatrixSymbol("A", n, n),
    "B": MatrixSymbol("B", n, n),
    "H": MatrixSymbol("H", k, n),
    "x": MatrixSymbol("x", n, 1),
    "a": sp.Symbol("a", real=True),
}
DIMS = {"n": n, "k": k}
TOKENS = st.sampled_from(
    [
        "A",
        "B",
        "H",
        "x",
        "a",
        "n",
        "k",
        "z",
        "inv",
        "transpose",
        "eye",
        "I",
        "T",
        "__import__",
        "+",
        "-",
        "*",
        "/",
        "//",
        "@",
        "'",
        ".T",
        ".",
        "(",
        ")",
        ",",
        "0",
        "1",
        "2",
        "0.0",
        "2.5",
        ".5",
        "1e999",
        "1e-999",
        "3e",
        " ",
        "\u0661",
        "$",
        "eval",
        "os",
    ]
)
FORMULAS = st.lists(TOKENS, max_size=25).map("".join)


@FUZZ
@given(FORMULAS)
@example("inv(A-A)")
@example("inv(0*A)+A")
@example("a/0.0")
@example("inv(0.0)")
@example("A*1e999")
@example("\u0661*A")
@example("(" * 500 + "A" + ")" * 500)
@example("-" * 3000 + "A")
@example("A" + "'" * 3000)
@example("1e-99999999*A")
@example("a/0e-99999999")
@example("9" * 5000 + "*A")
def test_random_formulas(text):
    e = _expect_spec_error_or_success(parse_formula, text, NAMES, DIMS, "fuzz")
    if e is not None:
        assert isinstance(e, sp.Basic)


FORMULA_PROBLEM = KALMAN.replace('newSigma = "Sigma - Sigma*H.T*inv(S)*H*Sigma"', 'newSigma = "{}"')
assert "{}" in FORMULA_PROBLEM
PROBLEM_TOKENS = st.sampled_from(
    [
        "Sigma",
        "H",
        "R",
        "S",
        "mu",
        "data",
        "n",
        "k",
        "newmu",
        "newSigma",
        "inv",
        "transpose",
        "eye",
        "+",
        "-",
        "*",
        "/",
        "'",
        ".T",
        "(",
        ")",
        "0",
        "1",
        "2",
        "0.5",
        " ",
    ]
)


@FUZZ
@given(st.lists(PROBLEM_TOKENS, max_size=20).map("".join))
@example("inv(S)*inv(S)")
@example("inv(inv(S))")
@example("Sigma - Sigma")
@example("inv(Sigma - Sigma)")
@example("inv(eye(n))")
@example("2")
@example("S'")
def test_random_formulas_in_a_problem(formula):
    text = FORMULA_PROBLEM.replace("{}", formula)
    _expect_spec_error_or_success(parse_problem, text, origin="fuzz/kalman.toml")


DIM_TOKENS = st.sampled_from(
    ["n", "m", "k", "+", "-", "*", "/", "//", "(", ")", "0", "1", "2", "3", "2.5", " ", "$", "**"]
)


@FUZZ
@given(st.lists(DIM_TOKENS, max_size=20).map("".join))
def test_random_dim_formulas(text):
    fn = _expect_spec_error_or_success(parse_dim_formula, text, "dims.k")
    if fn is not None:
        value = _expect_spec_error_or_success(fn, {"n": 12, "m": 5})
        assert value is None or isinstance(value, int)
