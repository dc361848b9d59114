"""Problem files: the shipped ones load, resolve, sample and evaluate; the Python API and the
YAML format give the same problem; every mistake is a SpecError that names the place and the
valid choices."""

from __future__ import annotations

import re

import numpy as np
import pytest
import sympy as sp
from sympy.matrices.expressions import MatrixExpr, MatrixSymbol

from autotune.errors import SpecError
from autotune.instances import check_property, random_instance
from autotune.properties import validate_properties
from autotune.reference import evaluate_reference
from autotune.spec import Problem, load_problem, parse_problem, problem_names

SHIPPED = problem_names()
#: the five problems the tool was built around (their plans are in results/)
ORIGINAL = ("kalman", "gls", "tikhonov", "mmse", "enkf")


def test_shipped_problems_are_found():
    assert {"kalman", "gls", "mmse", "tikhonov", "enkf"} <= set(SHIPPED)


def test_shipped_problems_found_from_an_uninstalled_checkout(tmp_path, monkeypatch):
    """``python -m benchmarks.corpus`` in a fresh clone imports autotune from the checkout,
    where ``autotune.search_spaces`` (a package only once installed) does not exist: the
    checkout's ``search_spaces/`` is found instead, from any working directory."""
    from importlib import resources

    import autotune.spec as spec

    def not_installed(package):
        raise ModuleNotFoundError(f"No module named {package!r}")

    monkeypatch.setattr(resources, "files", not_installed)
    monkeypatch.chdir(tmp_path)  # no search_spaces/ here
    assert spec._embedded_dir().name == "search_spaces"
    assert set(problem_names()) == set(SHIPPED)
    assert load_problem("kalman").name == "kalman"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_problem_parses(name):
    p = load_problem(name)
    assert p.name == name
    assert p.outputs and p.inputs
    for out in p.outputs:
        assert isinstance(p.expressions[out], (MatrixExpr, sp.Expr))
    dims = p.resolve_dims()
    assert set(dims) == set(p.dims)
    assert all(isinstance(v, int) and v >= 1 for v in dims.values())
    assert p.sha256 == load_problem(name).sha256
    assert p == load_problem(name)


@pytest.mark.parametrize("name", SHIPPED)
def test_overrides_give_derived_dims(name):
    p = load_problem(name)
    dims = p.resolve_dims({"n": 100})
    assert dims["n"] == 100
    derived = {d: v for d, v in p.dims.items() if isinstance(v, str)}
    if name in ORIGINAL:
        assert derived, "each of the five original problems has a derived dimension"
    for d, formula in derived.items():
        expected = eval(formula.replace("n", "100"), {"__builtins__": {}})  # trusted test text
        assert dims[d] == expected, (d, formula)
    # defaults stay defaults for the dims not overridden
    for d in p.free_dims:
        if d != "n":
            assert dims[d] == p.dims[d]


def test_kalman_dims(kalman):
    assert kalman.resolve_dims() == {"n": 4000, "k": 2000}
    assert kalman.resolve_dims({"n": 100}) == {"n": 100, "k": 50}
    assert kalman.resolve_dims({"n": 100, "k": 7}) == {"n": 100, "k": 7}  # --dim k=7


def test_override_giving_a_zero_dimension(kalman):
    with pytest.raises(SpecError, match=r"dims\.k = 'n // 2' gives 0.*n=1"):
        kalman.resolve_dims({"n": 1})


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"q": 3}, "unknown dimension 'q'; dimensions: n, k"),
        ({"n": 0}, "must be a positive integer, got 0"),
        ({"n": -3}, "must be a positive integer, got -3"),
        ({"n": 2.5}, "must be a positive integer, got 2.5"),
        ({"n": "8"}, "must be a positive integer, got '8'"),
        ({"n": True}, "must be a positive integer, got True"),
    ],
    ids=["unknown", "zero", "negative", "float", "string", "bool"],
)
def test_bad_overrides(kalman, overrides, message):
    with pytest.raises(SpecError) as info:
        kalman.resolve_dims(overrides)
    assert message in str(info.value)


@pytest.mark.parametrize("name", SHIPPED)
def test_random_instance_has_declared_properties(name, dims_for):
    p = load_problem(name)
    dims = p.resolve_dims(dims_for(p))
    assert max(dims.values()) <= 60
    for seed in (0, 1, 2):
        inst = random_instance(p, dims, seed=seed)
        assert set(inst) == set(p.inputs)
        for nm, spec in p.inputs.items():
            value = inst[nm]
            if spec.is_scalar:
                assert np.isscalar(value)
                if "positive" in spec.properties:
                    assert value > 0
                continue
            assert value.shape == p.shape_of(nm, dims)
            assert value.dtype == np.float64
            for prop in spec.properties:
                assert check_property(value, prop), (name, nm, prop, seed)


@pytest.mark.parametrize("name", SHIPPED)
def test_reference_outputs_are_finite(name, dims_for):
    p = load_problem(name)
    dims = p.resolve_dims(dims_for(p))
    ref = evaluate_reference(p, random_instance(p, dims, seed=3), dims)
    assert set(ref.outputs) == set(p.outputs)
    for out, value in ref.outputs.items():
        assert value.shape == p.shape_of(out, dims), out
        assert np.all(np.isfinite(value)), out
    assert 1.0 <= ref.condition < 1e4


# -- the YAML format and the Python API give the same problem -------------------------------

KALMAN_YAML = """\
# The Kalman filter measurement update, in YAML.
problem:
  name: kalman
  description: Kalman filter update
dims:
  n: 4000
  k: "n // 2"
inputs:
  mu: {shape: [n, 1], description: prior mean}
  Sigma: {shape: [n, n], properties: [symmetric, positive_definite]}
  H: {shape: [k, n], properties: [full_rank]}
  R: {shape: [k, k], properties: [positive_definite]}
  data: {shape: [k, 1]}
definitions:
  S: "R + H*Sigma*H.T"
outputs:
  newmu: "mu + Sigma*H.T*inv(S)*(H*mu - data)"
  newSigma: "Sigma - Sigma*H.T*inv(S)*H*Sigma"
search:
  blocks: {n: [1, 2, 4], k: [1, 2]}
  order: [optimal, left, right, 1, 2]
  cse: [true, false]
"""


def test_yaml_kalman_equals_toml(kalman):
    y = parse_problem(KALMAN_YAML, origin="kalman.yaml")
    assert y.expressions == kalman.expressions
    assert y.resolve_dims() == kalman.resolve_dims()
    assert {nm: s.properties for nm, s in y.inputs.items()} == {
        nm: s.properties for nm, s in kalman.inputs.items()
    }
    assert {nm: s.shape for nm, s in y.inputs.items()} == {
        nm: s.shape for nm, s in kalman.inputs.items()
    }
    # the format can also be forced
    z = parse_problem(KALMAN_YAML, origin="<string>", fmt="yaml")
    assert z.expressions == kalman.expressions


def test_load_problem_from_yaml_path(tmp_path, kalman):
    f = tmp_path / "kf.yml"
    f.write_text(KALMAN_YAML)
    assert load_problem(f).expressions == kalman.expressions
    assert load_problem(str(f)).origin == str(f)


def _kalman_from_sympy(**kw) -> Problem:
    n, k = sp.symbols("n k", integer=True, positive=True)
    mu = MatrixSymbol("mu", n, 1)
    Sigma = MatrixSymbol("Sigma", n, n)
    H = MatrixSymbol("H", k, n)
    R = MatrixSymbol("R", k, k)
    data = MatrixSymbol("data", k, 1)
    S = R + H * Sigma * H.T
    return Problem.from_sympy(
        {
            "newmu": mu + Sigma * H.T * S.I * (H * mu - data),
            "newSigma": Sigma - Sigma * H.T * S.I * H * Sigma,
        },
        properties={Sigma: ["symmetric", "positive_definite"], H: ["full_rank"], R: ["spd"]},
        dims={n: 4000, k: "n // 2"},
        name="kalman",
        **kw,
    )


def test_from_sympy_kalman_equals_toml(kalman):
    p = _kalman_from_sympy()
    for out in kalman.outputs:
        assert p.expressions[out] == kalman.expressions[out]
    assert p.resolve_dims({"n": 10}) == kalman.resolve_dims({"n": 10})
    for nm, spec in kalman.inputs.items():
        assert p.inputs[nm].shape == spec.shape
        assert p.inputs[nm].properties == spec.properties
    # and numerically, through the reference
    dims = {"n": 12, "k": 6}
    inst = random_instance(kalman, dims, seed=5)
    a = evaluate_reference(kalman, inst, dims).outputs
    b = evaluate_reference(p, inst, dims).outputs
    for out in kalman.outputs:
        np.testing.assert_allclose(b[out], a[out], rtol=1e-12, atol=1e-12)
    # the serialized text round-trips
    again = parse_problem(p.source, origin="again.toml")
    assert again.expressions == p.expressions


def test_from_sympy_escapes_strings():
    p = _kalman_from_sympy(description='the "Kalman" filter\\update\nsecond line')
    assert p.description == 'the "Kalman" filter\\update\nsecond line'


def test_from_sympy_scalar_and_identity():
    n, m = sp.symbols("n m", integer=True, positive=True)
    A = MatrixSymbol("A", m, n)
    b = MatrixSymbol("b", m, 1)
    lam = sp.Symbol("lam")
    p = Problem.from_sympy(
        {"x": (A.T * A + lam * sp.Identity(n)).I * A.T * b},
        properties={A: ["full_rank"], lam: ["positive"]},
        dims={n: 20, m: "2 * n"},
        name="tik",
    )
    assert p.inputs["lam"].is_scalar and p.inputs["lam"].properties == ("positive",)
    t = load_problem("tikhonov")
    dims = {"n": 6, "m": 12}
    inst = random_instance(t, dims, seed=1)
    np.testing.assert_allclose(
        evaluate_reference(p, inst, dims).outputs["x"],
        evaluate_reference(t, inst, dims).outputs["x"],
        rtol=1e-12,
    )


def test_from_sympy_errors():
    n = sp.Symbol("n", integer=True, positive=True)
    A = MatrixSymbol("A", n, n)
    with pytest.raises(SpecError, match=r"dimension n of A has no value; pass dims"):
        Problem.from_sympy({"y": A * A})
    B = MatrixSymbol("B", 2 * n, n)
    with pytest.raises(SpecError, match=r"dimension symbol or an integer, got 2\*n"):
        Problem.from_sympy({"y": B.T * B}, dims={n: 3})
    k = sp.Symbol("k", integer=True, positive=True)
    W = MatrixSymbol("W", k, n)
    with pytest.raises(SpecError, match="needs a square matrix"):
        Problem.from_sympy({"y": W.T * W}, properties={W: ["spd"]}, dims={n: 3, k: 2})


# -- bad input: always SpecError, naming the file / field and the valid choices --------------


def _edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


S_LINE = 'S = "R + H*Sigma*H.T"'
H_PROPS = 'properties = ["full_rank"]'
N_LINE = "n = 4000 "
K_LINE = 'k = "n // 2"'
BLOCKS = "blocks = { n = [1, 2, 4], k = [1, 2] }"
CSE = "cse = [true, false]"

# (id, old, new, substrings of the message)
BAD_EDITS = [
    (
        "unknown-symbol",
        S_LINE,
        'S = "R + H*Sigmma*H.T"',
        [
            "definitions.S",
            "unknown symbol 'Sigmma'",
            "known names: H, R, Sigma, data, mu",
            "did you mean Sigma",
            "^",
        ],
    ),
    (
        "unknown-symbol-output",
        'newSigma = "Sigma - ',
        'newSigma = "Q - ',
        ["outputs.newSigma", "unknown symbol 'Q'", "known names"],
    ),
    (
        "unknown-property",
        H_PROPS,
        'properties = ["fullrank_ish"]',
        [
            "inputs.H.properties",
            "unknown property 'fullrank_ish'",
            "valid properties:",
            "positive_definite",
            "full_rank",
            "did you mean full_rank",
        ],
    ),
    (
        "pd-non-square",
        H_PROPS,
        'properties = ["positive_definite"]',
        [
            "inputs.H.properties",
            "'positive_definite' needs a square matrix",
            "kxn",
            "properties of a non-square matrix: full_rank",
        ],
    ),
    (
        "scalar-property-on-matrix",
        H_PROPS,
        'properties = ["positive"]',
        ["inputs.H.properties", "'positive' is for scalars", "matrix properties:"],
    ),
    (
        "shapes-add",
        S_LINE,
        'S = "R + H*Sigma"',
        ["definitions.S", "shapes do not conform", "kxk", "kxn"],
    ),
    (
        "shapes-mul",
        S_LINE,
        'S = "R + H*H.T*Sigma"',
        ["definitions.S", "shapes do not conform for '*'", "kxk", "nxn"],
    ),
    ("cyclic", S_LINE, 'S = "R + H*Sigma*H.T + T2"\nT2 = "S"', ["cyclic definition S -> T2 -> S"]),
    ("self-cyclic", S_LINE, 'S = "R + S"', ["definitions.S", "cyclic definition S -> S"]),
    (
        "outputs-cyclic",
        "[outputs]",
        '[outputs]\nA1 = "B1 + R"\nB1 = "A1*R"',
        ["outputs.A1", "cyclic definition A1 -> B1 -> A1", "outputs A1, B1 use each other"],
    ),
    (
        "output-self",
        'newmu = "mu + ',
        'newmu = "newmu + mu + ',
        ["outputs.newmu", "cyclic definition newmu -> newmu", "output newmu uses itself"],
    ),
    (
        "bandwidth-not-a-pair",
        H_PROPS,
        'properties = ["full_rank"], bandwidth = [1]',
        ["inputs.H.bandwidth", "expected [lower, upper]", "[1]"],
    ),
    (
        "bandwidth-negative",
        H_PROPS,
        'properties = ["full_rank"], bandwidth = [1, -1]',
        ["inputs.H.bandwidth", "two non-negative integers"],
    ),
    (
        "bandwidth-too-wide",
        H_PROPS,
        'properties = ["full_rank"], bandwidth = [2000, 0]',
        ["inputs.H.bandwidth", "lower bandwidth 2000", "1999 subdiagonals", "2000x4000"],
    ),
    (
        "bandwidth-vs-property",
        'R = { shape = ["k", "k"], properties = ["positive_definite"]',
        'R = { shape = ["k", "k"], properties = ["lower_triangular"], bandwidth = [1, 1]',
        ["inputs.R.bandwidth", "'lower_triangular'", "at most [any, 0]"],
    ),
    (
        "bandwidth-symmetric",
        'R = { shape = ["k", "k"], properties = ["positive_definite"]',
        'R = { shape = ["k", "k"], properties = ["positive_definite"], bandwidth = [2, 1]',
        ["inputs.R.bandwidth", "symmetric", "use [2, 2]"],
    ),
    (
        "bandwidth-scalar",
        'data = { shape = ["k", 1]',
        'data = { shape = [], bandwidth = [0, 0]',
        ["inputs.data.bandwidth", "a scalar has no bandwidth"],
    ),
    ("dim-zero", N_LINE, "n = 0 ", ["dims.n", "positive integer, got 0"]),
    ("dim-negative", N_LINE, "n = -3 ", ["dims.n", "positive integer, got -3"]),
    ("dim-float", N_LINE, "n = 2.5 ", ["dims.n", "positive integer or a formula", "2.5"]),
    ("dim-bool", N_LINE, "n = true ", ["dims.n", "positive integer or a formula"]),
    ("dim-array", N_LINE, "n = [4] ", ["dims.n", "positive integer or a formula"]),
    ("dim-div-zero", K_LINE, 'k = "n/0"', ["dims.k", "division by zero", "^"]),
    ("dim-not-integer", K_LINE, 'k = "n/3"', ["dims.k", "4000 / 3 is not an integer", "//"]),
    ("dim-gives-zero", K_LINE, 'k = "n - n"', ["dims.k", "gives 0", "positive integer"]),
    ("dim-gives-negative", K_LINE, 'k = "1 - n"', ["dims.k", "gives -3999"]),
    ("dim-syntax", K_LINE, 'k = "n //"', ["dims.k", "found end of formula"]),
    (
        "dim-unknown",
        K_LINE,
        'k = "m // 2"',
        ["dims.k", "unknown dimension 'm'", "dimensions: n, k"],
    ),
    ("dim-cycle", K_LINE, 'k = "j"\nj = "k"', ["dims", "cyclic definition k -> j -> k"]),
    ("dim-self", K_LINE, 'k = "k + 1"', ["cyclic definition k -> k"]),
    ("invalid-toml", "[inputs]", "[inputs", ["not valid TOML"]),
    ("invalid-toml-dup", "[inputs]", "[inputs]\nmu = 1", ["not valid TOML"]),
    (
        "unknown-table",
        "[outputs]",
        "[extra]\nx = 1\n\n[outputs]",
        [
            "unknown table 'extra'",
            "valid tables: problem, dims, inputs, definitions, outputs, search",
        ],
    ),
    (
        "unknown-problem-field",
        "[problem]",
        "[problem]\nauthor = 'x'",
        ["[problem]: unknown field 'author'", "valid: name, description, dtype"],
    ),
    (
        "bad-dtype",
        "[problem]",
        "[problem]\ndtype = 'float16'",
        ["dtype 'float16' is not supported", "float64"],
    ),
    (
        "unknown-input-field",
        'description = "prior mean"',
        'descr = "prior mean"',
        [
            "inputs.mu",
            "unknown field 'descr'",
            "valid fields: shape, properties, bandwidth, description",
        ],
    ),
    (
        "missing-shape",
        'mu = { shape = ["n", 1], ',
        "mu = { ",
        ["inputs.mu", "missing field 'shape'"],
    ),
    (
        "unknown-shape-dim",
        'mu = { shape = ["n", 1]',
        'mu = { shape = ["nn", 1]',
        ["inputs.mu.shape", "unknown dimension 'nn'", "did you mean n", "dimensions: n, k"],
    ),
    (
        "bad-shape",
        'mu = { shape = ["n", 1]',
        'mu = { shape = ["n", 1, 1]',
        ["inputs.mu.shape", "expected [rows, cols]"],
    ),
    (
        "zero-shape",
        'mu = { shape = ["n", 1]',
        'mu = { shape = ["n", 0]',
        ["inputs.mu.shape", "sizes must be positive"],
    ),
    (
        "reserved-name",
        "data = {",
        "inv = {",
        ["inputs.inv", "reserved", "reserved names: I, T, eye, inv, transpose"],
    ),
    (
        "reserved-name-T",
        "data = {",
        "T = {",
        ["inputs.T", "'T' is reserved", "reserved names: I, T, eye, inv, transpose"],
    ),
    (
        "name-with-slash",
        'name = "kalman"',
        'name = "runs/kalman"',
        ["[problem].name", "'runs/kalman'", "the character '/' is not allowed"],
    ),
    (
        "name-too-long",
        'name = "kalman"',
        'name = "' + "k" * 241 + '"',
        ["[problem].name", "241 characters", "at most 100"],
    ),
    (
        "name-with-spaces-and-colon",
        'name = "kalman"',
        'name = "kalman: v2"',
        ["[problem].name", "the characters ' ' ':' are not allowed"],
    ),
    (
        "product-too-long",
        S_LINE,
        'S = "R + H*Sigma*H.T"\nP = "' + "*".join(["Sigma"] * 65) + '"',
        ["definitions.P", "a product of 65 matrix factors, over the limit of 64"],
    ),
    ("input-is-dim", "data = {", "n = {", ["inputs.n", "already a dimension"]),
    ("definition-is-input", S_LINE, 'S = "R + H*Sigma*H.T"\nmu = "mu"', ["'mu' is defined twice"]),
    (
        "unknown-knob",
        CSE,
        CSE + "\nfoo = [1]",
        ["[search]: unknown knob 'foo'", "knobs: blocks, cut, order, cse, solver"],
    ),
    (
        "misspelled-knob",
        CSE,
        CSE + "\nblock = { n = [2] }",
        ["unknown knob 'block'", "did you mean blocks"],
    ),
    (
        "solver-not-applicable",
        CSE,
        CSE + '\nsolver = { S = ["triangular"] }',
        ["[search].solver.S", "'triangular' does not apply", "valid kernels:", "cholesky"],
    ),
    (
        "solver-unknown-label",
        CSE,
        CSE + '\nsolver = { Q = ["lu"] }',
        ["[search].solver.Q", "no inverted matrix is labelled 'Q'", "inverted matrices: S"],
    ),
    (
        "blocks-5",
        BLOCKS,
        "blocks = { n = [5] }",
        [
            "[search].blocks.n",
            "blocks.n = 5 does not apply",
            "valid block counts here are [1, 2, 3, 4]",
        ],
    ),
    (
        "blocks-unknown-dim",
        BLOCKS,
        "blocks = { q = [2] }",
        ["[search].blocks.q", "unknown dimension 'q'", "dimensions: n, k"],
    ),
    ("blocks-not-table", BLOCKS, "blocks = [2]", ["[search].blocks", "expected a table"]),
    (
        "cut-out-of-range",
        'k = ["even"] }',
        'k = ["even", 1.5] }',
        ["[search].cut.k", "strictly in (0, 1)"],
    ),
    (
        "order-bad",
        'order = ["optimal"',
        'order = ["best"',
        ["[search].order", "'optimal', 'left', 'right'"],
    ),
    ("cse-not-bool", CSE, "cse = [1]", ["[search].cse", "must be true or false"]),
    ("empty-knob", CSE, "cse = []", ["[search].cse", "empty list"]),
    ("bad-backend", CSE, CSE + '\nbackend = ["fortran"]', ["unknown backend 'fortran'", "numba"]),
]


@pytest.mark.parametrize(
    "old,new,messages", [c[1:] for c in BAD_EDITS], ids=[c[0] for c in BAD_EDITS]
)
def test_bad_problem_files(kalman_text, old, new, messages):
    text = _edit(kalman_text, old, new)
    with pytest.raises(SpecError) as info:
        parse_problem(text, origin="bad/kalman.toml")
    assert type(info.value) is SpecError
    msg = str(info.value)
    assert msg.startswith("bad/kalman.toml: "), msg
    for m in messages:
        assert m in msg, f"{m!r} not in {msg!r}"


def test_missing_outputs(kalman_text):
    text = kalman_text.split("[outputs]")[0]
    with pytest.raises(SpecError, match=r"k\.toml: \[outputs\] is empty; give at least one output"):
        parse_problem(text, origin="k.toml")


def test_missing_inputs():
    with pytest.raises(SpecError, match=r"\[inputs\] is empty"):
        parse_problem('[outputs]\nx = "1"\n', origin="k.toml")


@pytest.mark.parametrize(
    "text,message",
    [
        ("a: [1\n", "not valid YAML"),
        ("inputs:\n  A: {shape: [2, 2]\n", "not valid YAML"),
        ("- 1\n- 2\n", "expected a table (mapping), got list"),
        ("inputs: 3\n", "[inputs]: expected a table"),
        ("outputs: {y: 'A'}\ninputs: {A: {shape: [2, 2]}}\nwhat: 1\n", "unknown table 'what'"),
        (
            "inputs: {A: {shape: [2, 2]}}\noutputs: {y: 3}\n",
            "[outputs].y: expected a formula string",
        ),
        ("inputs: {A: {shape: [2, 2]}}\noutputs: {y: A*A, 3: A}\n", "is not a valid name"),
        (
            "problem: {name: 2020-01-01}\ninputs: {A: {shape: [2, 2]}}\noutputs: {y: A}\n",
            "name must be a non-empty string",
        ),
    ],
    ids=[
        "unclosed",
        "unclosed-nested",
        "list",
        "inputs-int",
        "unknown-table",
        "formula-int",
        "int-name",
        "date-name",
    ],
)
def test_bad_yaml(text, message):
    with pytest.raises(SpecError) as info:
        parse_problem(text, origin="bad.yaml")
    assert type(info.value) is SpecError
    assert str(info.value).startswith("bad.yaml")
    assert message in str(info.value)


def test_minimal_problem_and_integer_shapes():
    p = parse_problem(
        '[inputs]\nA = { shape = [3, 3], properties = ["spd"] }\n[outputs]\ny = "inv(A)*A.T"\n',
        origin="<string>",
    )
    assert p.name == "problem"
    assert p.shape_of("y", p.resolve_dims()) == (3, 3)


def test_unknown_problem_name_lists_problems():
    with pytest.raises(SpecError) as info:
        load_problem("kalmann")
    msg = str(info.value)
    assert "unknown problem 'kalmann'" in msg
    assert "did you mean kalman" in msg
    for name in SHIPPED:
        assert name in msg
    with pytest.raises(SpecError, match="no such problem file"):
        load_problem("does/not/exist.toml")


def test_every_error_is_a_spec_error_subclass_of_value_error():
    with pytest.raises(ValueError):
        load_problem("nope")


def test_messages_have_no_python_reprs_of_internal_objects(kalman_text):
    text = _edit(kalman_text, S_LINE, 'S = "R + H*Sigmma*H.T"')
    with pytest.raises(SpecError) as info:
        parse_problem(text, origin="x.toml")
    assert not re.search(r"<[a-z_.]+ object at 0x", str(info.value))


def test_deep_definition_chains_are_reported_not_crashed():
    n = 300  # over the recursion limit of a naive recursive inliner
    defs = "\n".join(f'd{i} = "d{i + 1} + A"' for i in range(n))
    text = (
        f'[inputs]\nA = {{ shape = [3, 3] }}\n[definitions]\n{defs}\nd{n} = "A"\n'
        '[outputs]\ny = "d0"\n'
    )
    with pytest.raises(SpecError, match=r"definitions refer to each other more than \d+ deep"):
        parse_problem(text, origin="deep.toml")
    dims = "\n".join(f'n{i} = "n{i + 1} + 1"' for i in range(n))
    text = (
        f'[dims]\n{dims}\nn{n} = 3\n[inputs]\nA = {{ shape = ["n0", "n0"] }}\n[outputs]\ny = "A"\n'
    )
    with pytest.raises(SpecError, match=r"derived dimensions refer to each other more than"):
        parse_problem(text, origin="deep.toml")


def test_moderate_definition_chains_are_fine():
    defs = "\n".join(f'd{i} = "d{i + 1} + A"' for i in range(20))
    p = parse_problem(
        f'[inputs]\nA = {{ shape = [3, 3] }}\n[definitions]\n{defs}\nd20 = "A"\n'
        '[outputs]\ny = "d0"\n',
        origin="chain.toml",
    )
    assert p.expressions["y"] == 21 * p.symbols["A"]


def test_from_sympy_refuses_text_instead_of_expressions():
    import sympy as sp

    from autotune.errors import SpecError
    from autotune.spec import Problem

    n = sp.Symbol("n", integer=True, positive=True)
    a = sp.MatrixSymbol("A", n, n)
    with pytest.raises(SpecError, match="must be a SymPy matrix expression"):
        Problem.from_sympy({"x": "__import__('os').system('true')"}, dims={n: 4})
    p = Problem.from_sympy({"x": a.T * a}, {a: ["invertible"]}, dims={n: 4})
    assert p.shape_of("x", p.resolve_dims()) == (4, 4)


@pytest.mark.parametrize("name", ORIGINAL)
def test_shipped_problems_need_no_inference(name):
    """Every matrix the five original problems invert is definite as declared: the inference
    adds nothing, so their derivations and stored plans are unchanged (the corpus problems
    rely on it by design: covariances declared semidefinite and inverted)."""
    p = load_problem(name)
    assert p.notes == [] and p.full_rank_inputs == set() and p.aliases == {}
    for nm, spec in p.inputs.items():
        shape = None if spec.is_scalar else p.symbols[nm].shape
        assert p.declared(nm) == validate_properties(spec.properties, shape, nm)


def test_bandwidth_and_alias_parse():
    p = parse_problem(
        '[dims]\nn = 5\nm = "n"\n[inputs]\n'
        'B = { shape = ["n", "m"], bandwidth = [1, 0], properties = ["invertible"] }\n'
        'v = { shape = ["m"] }\n[outputs]\ny = "B*v"\n',
        origin="band.toml",
    )
    assert p.inputs["B"].bandwidth == (1, 0)
    assert p.inputs["B"].shape == ("n", "m")  # as written
    assert {"lower_bidiagonal", "lower_triangular", "invertible"} <= p.declared("B")
    assert p.bandwidth("B") == (1, 0) and p.bandwidth("B", {"n": 1}) is None
    assert p.shape_of("y", {"n": 7}) == (7, 1)


def _tiny(dims: str, inputs: str, outputs: str):
    return parse_problem(f'[problem]\nname = "t"\n[dims]\n{dims}\n[inputs]\n{inputs}\n'
                         f"[outputs]\n{outputs}\n", "t.toml")


def test_load_refuses_a_scalar_output_and_an_index_outside_the_matrix():
    with pytest.raises(SpecError, match=r"outputs.y: a scalar expression"):
        _tiny("n = 4", "s = { shape = [] }\nt = { shape = [] }", 'y = "s*t"')
    with pytest.raises(SpecError, match=r"outputs.X: index range 7:8 is outside the 6"):
        _tiny("n = 6", 'A = { shape = ["n", "n"] }', 'X = "A[7, 1]"')
    assert _tiny("n = 6", 'A = { shape = ["n", "n"] }', 'X = "(A*A)[5, :]"')


def test_a_dims_cycle_through_an_alias_names_it():
    with pytest.raises(SpecError, match=r"cyclic definition k -> k \(n is another name for k\)"):
        _tiny('n = "k"\nk = "n + 1"', 'A = { shape = ["n", "n"] }', 'X = "A"')


def test_a_sum_of_positive_scalars_shifts_a_semidefinite_matrix_to_definite():
    from autotune.properties import PD

    p = _tiny("n = 5", 'C = { shape = ["n", "n"], properties = ["positive_semidefinite"] }\n'
              'lam = { shape = [], properties = ["positive"] }\n'
              'mu = { shape = [], properties = ["positive"] }',
              'X = "C + (lam + mu)*eye(n)"')
    assert PD in p.facts().facts(p.expressions["X"])
