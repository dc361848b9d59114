"""Property inference (autotune.properties) checked against numbers.

Every rule is exercised on an expression; the inferred fact set must contain what the rule
promises and nothing it must not promise, and every inferred property must hold numerically on
several seeded random instances. Negative cases also show a numerical counterexample where one
exists, so a rule that fired there would be wrong, not merely cautious.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sympy.matrices.expressions import MatrixSymbol

from autotune.errors import SpecError
from autotune.formula import parse_formula
from autotune.instances import check_property, random_instance
from autotune.properties import (
    DIAGONAL,
    FULL_RANK,
    IDENTITY,
    INVERTIBLE,
    LOWER,
    MATRIX_PROPERTIES,
    ORTHOGONAL,
    PD,
    PSD,
    SYMMETRIC,
    UPPER,
    FactBase,
    close_facts,
    normalize_property,
    validate_properties,
)
from autotune.reference import evaluate_reference
from autotune.spec import parse_problem

N, K = 6, 3  # k < n: H (k x n) is wide, G (n x k) is tall
DIMS = {"n": N, "k": K}
SEEDS = (0, 1, 2, 3)

INPUTS = """
[dims]
n = 6
k = 3

[inputs]
A = { shape = ["n", "n"], properties = ["symmetric"] }
B = { shape = ["n", "n"], properties = ["symmetric"] }
P = { shape = ["n", "n"], properties = ["positive_definite"] }
Q = { shape = ["n", "n"], properties = ["spd"] }
S1 = { shape = ["n", "n"], properties = ["positive_semidefinite"] }
S2 = { shape = ["n", "n"], properties = ["psd"] }
X = { shape = ["n", "n"] }
M = { shape = ["n", "n"], properties = ["invertible"] }
F = { shape = ["n", "n"], properties = ["full_rank"] }
L1 = { shape = ["n", "n"], properties = ["lower_triangular"] }
L2 = { shape = ["n", "n"], properties = ["lower"] }
U1 = { shape = ["n", "n"], properties = ["upper_triangular"] }
U2 = { shape = ["n", "n"], properties = ["upper"] }
L3 = { shape = ["n", "n"], properties = ["lower", "invertible"] }
U3 = { shape = ["n", "n"], properties = ["upper", "nonsingular"] }
D1 = { shape = ["n", "n"], properties = ["diagonal"] }
D2 = { shape = ["n", "n"], properties = ["diagonal"] }
D3 = { shape = ["n", "n"], properties = ["diagonal", "invertible"] }
O1 = { shape = ["n", "n"], properties = ["orthogonal"] }
O2 = { shape = ["n", "n"], properties = ["orthogonal"] }
E = { shape = ["n", "n"], properties = ["identity"] }
H = { shape = ["k", "n"], properties = ["full_rank"] }
G = { shape = ["n", "k"], properties = ["full_rank"] }
Y = { shape = ["k", "n"] }
R = { shape = ["k", "k"], properties = ["positive_definite"] }
Sigma = { shape = ["n", "n"], properties = ["symmetric", "positive_definite"] }
a = { shape = [], properties = ["positive"] }
c = { shape = [], properties = ["nonzero"] }
b = { shape = [] }
"""


def problem_for(formula: str):
    return parse_problem(INPUTS + f'\n[outputs]\ny = "{formula}"\n', origin="props.toml")


def facts_and_values(formula: str, seeds=SEEDS, scalars=None):
    p = problem_for(formula)
    facts = p.facts(DIMS).facts(p.expressions["y"])
    values = []
    for seed in seeds:
        inst = random_instance(p, DIMS, seed=seed)
        inst.update(scalars or {})
        out = evaluate_reference(p, inst, DIMS).outputs["y"]
        assert np.all(np.isfinite(out))
        values.append(out)
    return facts, values


ALL = set(MATRIX_PROPERTIES)

# (id, formula, must be inferred, must NOT be inferred, numerically false on the instances)
CASES = [
    ("kalman-S-is-pd", "R + H*Sigma*H.T", {PD, SYMMETRIC, INVERTIBLE}, set(), set()),
    ("congruence-sym", "Y*A*Y.T", {SYMMETRIC}, {PSD, PD}, {PSD}),
    ("congruence-sym-square", "X*A*X.T", {SYMMETRIC}, {PSD, PD}, {PSD}),
    ("congruence-psd", "Y*S1*Y.T", {PSD, SYMMETRIC}, {PD}, set()),
    ("congruence-pd-wide-outside", "H*P*H.T", {PD}, set(), set()),
    ("congruence-pd-wide-inside", "H.T*R*H", {PSD, SYMMETRIC}, {PD}, {PD}),
    ("congruence-general-x", "X.T*P*X", {PSD, SYMMETRIC}, {PD}, set()),
    ("congruence-invertible-x", "M.T*P*M", {PD, INVERTIBLE}, set(), set()),
    ("congruence-fullrank-x", "F.T*Q*F", {PD}, set(), set()),
    ("lower-times-lower", "L1*L2", {LOWER}, {UPPER, DIAGONAL}, {UPPER}),
    ("upper-times-upper", "U1*U2*U1", {UPPER}, {LOWER}, {LOWER}),
    ("lower-times-upper", "L1*U1", set(), {LOWER, UPPER}, {LOWER, UPPER}),
    ("diag-times-lower", "D1*L1*D2", {LOWER}, {UPPER}, {UPPER}),
    ("lower-transposed", "L1.T", {UPPER}, {LOWER}, {LOWER}),
    ("upper-transposed", "U1'", {LOWER}, {UPPER}, {UPPER}),
    ("product-transposed", "(L1*L2).T", {UPPER}, {LOWER}, {LOWER}),
    ("inv-lower", "inv(L3)", {LOWER, INVERTIBLE}, {UPPER}, {UPPER}),
    # the formula inverts L1, so L1 is invertible (tests/test_inference.py: the rule alone
    # does not say so)
    ("inv-lower-assumed-invertible", "inv(L1)", {LOWER, INVERTIBLE}, {UPPER}, {UPPER}),
    ("inv-upper-product", "inv(U3*U3.T.T)", {UPPER, INVERTIBLE}, {LOWER}, {LOWER}),
    ("scaled-lower", "-2*L3", {LOWER, INVERTIBLE}, {UPPER}, {UPPER}),
    ("triangular-not-invertible", "L1*L2", set(), {INVERTIBLE}, set()),
    ("lower-plus-lower", "L1 + a*L2", {LOWER}, {UPPER}, {UPPER}),
    ("lower-plus-upper", "L1 + U1", set(), {LOWER, UPPER}, {LOWER, UPPER}),
    ("inv-pd", "inv(P)", {PD, INVERTIBLE}, set(), set()),
    ("inv-kalman-S", "inv(R + H*Sigma*H.T)", {PD}, set(), set()),
    ("inv-of-inverted", "inv(M.T*A*M)", {SYMMETRIC, INVERTIBLE}, {PSD, PD}, set()),
    ("psd-plus-psd", "S1 + S2", {PSD, SYMMETRIC}, {PD, INVERTIBLE}, set()),
    ("psd-plus-same-psd", "S1 + 2*S1", {PSD, SYMMETRIC}, {PD, INVERTIBLE}, {PD}),
    ("psd-plus-pd", "S1 + P", {PD}, set(), set()),
    ("pd-plus-pd", "P + Q + Sigma", {PD}, set(), set()),
    ("psd-minus-psd", "S1 - S2", {SYMMETRIC}, {PSD, PD}, {PSD}),
    ("pd-minus-pd", "P - Q", {SYMMETRIC}, {PSD, PD}, set()),
    ("sym-plus-sym", "A + B", {SYMMETRIC}, {PSD}, {PSD}),
    ("sym-plus-general", "A + X", set(), {SYMMETRIC}, {SYMMETRIC}),
    ("positive-scalar-pd", "a*P", {PD, INVERTIBLE}, set(), set()),
    ("positive-number-pd", "2.5*P", {PD}, set(), set()),
    ("divided-by-positive", "P/a", {PD}, set(), set()),
    ("negative-number-pd", "-P", {SYMMETRIC, INVERTIBLE}, {PD, PSD}, {PD, PSD}),
    ("negative-scalar-pd", "-a*P", {SYMMETRIC, INVERTIBLE}, {PD, PSD}, {PD, PSD}),
    ("negative-scaled-psd", "-3*S1", {SYMMETRIC}, {PSD, PD}, {PSD}),
    ("unknown-sign-pd", "b*P", {SYMMETRIC}, {PD, PSD, INVERTIBLE}, set()),
    ("nonzero-scalar-pd", "c*P", {SYMMETRIC, INVERTIBLE}, {PD, PSD}, set()),
    ("identity-plus-psd", "eye(n) + S1", {PD}, set(), set()),
    ("tikhonov", "G.T*G + a*eye(k)", {PD}, set(), set()),
    ("scaled-identity", "a*eye(n)", {DIAGONAL, SYMMETRIC}, {ORTHOGONAL, IDENTITY}, {IDENTITY}),
    (
        "kalman-posterior-cov",
        "Sigma - Sigma*H.T*inv(R + H*Sigma*H.T)*H*Sigma",
        {SYMMETRIC},
        {LOWER},
        {LOWER},
    ),
    ("kalman-gain", "Sigma*H.T*inv(R + H*Sigma*H.T)", {FULL_RANK}, set(), set()),
    (
        "wide-HtH",
        "H.T*H",
        {PSD, SYMMETRIC},
        {PD, INVERTIBLE, FULL_RANK},
        {PD, INVERTIBLE, FULL_RANK},
    ),
    ("tall-GtG", "G.T*G", {PD, INVERTIBLE}, set(), set()),
    ("wide-HHt", "H*H.T", {PD}, set(), set()),
    ("tall-GGt", "G*G.T", {PSD}, {PD, INVERTIBLE}, {PD, INVERTIBLE}),
    ("wide-HtRinvH", "H.T*inv(R)*H", {PSD}, {PD}, {PD}),
    ("gls-normal-matrix", "G.T*inv(P)*G", {PD}, set(), set()),
    ("mmse-precision", "G*inv(R)*G.T + inv(Q)", {PD}, set(), set()),
    ("general-sq", "X*X", set(), {SYMMETRIC, PSD}, {SYMMETRIC}),
    ("symmetric-squared", "A*A", {PSD, SYMMETRIC}, {PD}, set()),
    ("pd-squared", "P*P", {PD}, set(), set()),
    ("pd-times-pd", "P*Q", {INVERTIBLE}, {SYMMETRIC, PD}, {SYMMETRIC}),
    ("diag-times-diag", "D1*D2", {DIAGONAL, SYMMETRIC, LOWER, UPPER}, set(), set()),
    ("diag-plus-diag", "D1 - 2*D2", {DIAGONAL}, set(), set()),
    ("inv-diag", "inv(D3)", {DIAGONAL, INVERTIBLE}, set(), set()),
    ("inv-diag-assumed-invertible", "inv(D1)", {DIAGONAL, INVERTIBLE}, set(), set()),
    ("orth-times-orth", "O1*O2", {ORTHOGONAL, INVERTIBLE}, {SYMMETRIC}, {SYMMETRIC}),
    ("orth-transposed", "O1.T*O2.T*O1", {ORTHOGONAL}, set(), set()),
    ("inv-orth", "inv(O1)", {ORTHOGONAL}, set(), set()),
    ("orth-gram", "O1.T*O1", {PD, SYMMETRIC}, set(), set()),
    ("scaled-orth", "2*O1", {INVERTIBLE}, {ORTHOGONAL}, {ORTHOGONAL}),
    ("identity-atom", "E*P*E", {PD}, set(), set()),
    ("identity-transposed", "E.T", {IDENTITY, ORTHOGONAL, PD}, set(), set()),
    ("invertible-products", "M*inv(Q)*M.T*L3", {INVERTIBLE}, set(), set()),
    ("invertible-transposed", "M.T", {INVERTIBLE, FULL_RANK}, set(), set()),
    ("fullrank-square-invertible", "F", {INVERTIBLE}, set(), set()),
    ("col-full-rank-product", "P*G", {FULL_RANK}, set(), set()),
    ("row-full-rank-product", "H*M", {FULL_RANK}, set(), set()),
    ("wide-times-tall", "H*G", set(), {FULL_RANK, INVERTIBLE}, set()),
    ("general-product", "X*M", set(), {FULL_RANK, INVERTIBLE}, set()),
    ("zero-matrix", "0*X + S1 - S1", {PSD, DIAGONAL}, set(), set()),
]


@pytest.mark.parametrize(
    "formula,expected,forbidden,counter", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_inference_rule(formula, expected, forbidden, counter):
    facts, values = facts_and_values(formula)
    missing = expected - facts
    assert not missing, f"{formula}: expected {sorted(missing)} to be inferred, got {sorted(facts)}"
    wrong = forbidden & facts
    assert not wrong, f"{formula}: must not infer {sorted(wrong)}"
    for v in values:
        for prop in facts:
            assert check_property(v, prop), f"{formula}: inferred {prop} does not hold"
    # the negative cases are really false here (a rule that fired would be unsound)
    for prop in counter:
        assert any(not check_property(v, prop) for v in values), (formula, prop)


def test_negative_scalar_counterexample():
    # b has no sign: b*P is not PD in general, and an instance with b < 0 shows it
    facts, values = facts_and_values("b*P", seeds=(0,), scalars={"b": -1.5})
    assert PD not in facts and PSD not in facts
    assert not check_property(values[0], PSD)


def test_wide_full_rank_gram_is_singular():
    """H.T*H for a wide full-rank H (k < n) has rank k: semidefinite, never definite."""
    facts, values = facts_and_values("H.T*H")
    assert PSD in facts and PD not in facts
    for v in values:
        assert np.linalg.matrix_rank(v) == K
        assert check_property(v, PSD) and not check_property(v, PD)


def test_tall_vs_wide_depends_on_concrete_dims():
    """Without dims the fact base cannot tell wide from tall; the problem's defaults decide."""
    p = problem_for("H.T*H")
    e = p.expressions["y"]
    fb = FactBase()
    for nm in p.inputs:
        fb.declare(p.symbols[nm], p.inputs[nm].properties)
    assert PD not in fb.facts(e)  # unknown sizes: conservative
    assert PSD in fb.facts(e)
    assert PD not in p.facts({"n": 6, "k": 3}).facts(e)  # wide
    assert PD in p.facts({"n": 3, "k": 6}).facts(e)  # tall
    assert PD in p.facts({"n": 4, "k": 4}).facts(e)  # square full rank: invertible


def test_sympy_ask_disagrees_for_wide_h():
    """SymPy's own assumption system claims H.T*H is positive definite for any full-rank H,
    including a wide one (k < n), where H.T*H is singular. That is why autotune infers its own
    facts."""
    H = MatrixSymbol("H", 2, 3)
    sympy_says = sp.ask(sp.Q.positive_definite(H.T * H), sp.Q.fullrank(H))
    assert sympy_says is True  # SymPy 1.14: wrong for a 2x3 H
    k, n = sp.symbols("k n", integer=True, positive=True)
    Hs = MatrixSymbol("H", k, n)
    assert sp.ask(sp.Q.positive_definite(Hs.T * Hs), sp.Q.fullrank(Hs)) is True
    # ours: semidefinite only, and the numbers agree with us
    fb = FactBase(dims={})
    fb.declare(H, ["full_rank"])
    assert PD not in fb.facts(H.T * H) and PSD in fb.facts(H.T * H)
    h = np.random.default_rng(0).standard_normal((2, 3))
    assert not check_property(h.T @ h, PD)


# -- the closure and validation ------------------------------------------------------------


def test_closure():
    assert close_facts({PD}, True) == {PD, PSD, SYMMETRIC, INVERTIBLE, FULL_RANK}
    assert close_facts({IDENTITY}, True) >= {DIAGONAL, ORTHOGONAL, PD, LOWER, UPPER, SYMMETRIC}
    assert close_facts({LOWER, UPPER}, True) >= {DIAGONAL, SYMMETRIC}
    assert close_facts({FULL_RANK}, True) == {FULL_RANK, INVERTIBLE}
    assert close_facts({FULL_RANK}, False) == {FULL_RANK}
    assert close_facts({PSD, INVERTIBLE}, True) >= {PD}
    assert close_facts({ORTHOGONAL}, True) == {ORTHOGONAL, INVERTIBLE, FULL_RANK}


@pytest.mark.parametrize(
    "name,canonical",
    [
        ("SPD", PD),
        ("positive definite", PD),
        ("positive-definite", PD),
        ("psd", PSD),
        ("Lower", LOWER),
        ("upper triangular", UPPER),
        ("nonsingular", INVERTIBLE),
        ("full rank", FULL_RANK),
        ("diagonal", DIAGONAL),
    ],
)
def test_aliases(name, canonical):
    assert normalize_property(name, "x") == canonical


def test_validate_properties_errors():
    n, k = sp.symbols("n k")
    with pytest.raises(SpecError, match="unknown property 'blue'.*valid properties: symmetric"):
        validate_properties(["blue"], (n, n), "x")
    with pytest.raises(SpecError, match="needs a square matrix"):
        validate_properties(["symmetric"], (k, n), "x")
    with pytest.raises(SpecError, match="is for matrices"):
        validate_properties(["symmetric"], None, "x")
    with pytest.raises(SpecError, match="is for scalars"):
        validate_properties(["positive"], (n, n), "x")
    with pytest.raises(SpecError, match="must be a string"):
        validate_properties([3], (n, n), "x")


# -- random expressions: every inferred property holds numerically ------------------------

_BASE = problem_for("P")
_FB = _BASE.facts(DIMS)
_INSTANCES = [random_instance(_BASE, DIMS, seed=s) for s in (11, 12)]
SQUARE_ATOMS = ["A", "P", "Q", "S1", "X", "M", "L1", "U1", "D1", "O1", "E", "Sigma"]


@st.composite
def square_exprs(draw, depth=0):
    """(formula text, evaluator) pairs for random n x n expressions."""
    if depth >= 3 or draw(st.integers(0, 3)) == 0:
        kind = draw(st.sampled_from(["atom", "atom", "atom", "wide", "tall", "eye"]))
        if kind == "atom":
            nm = draw(st.sampled_from(SQUARE_ATOMS))
            return nm, lambda v, nm=nm: v[nm]
        if kind == "wide":
            mid = draw(st.sampled_from(["", "R*", "inv(R)*"]))
            return f"(H.T*{mid}H)", lambda v, mid=mid: v["H"].T @ _mid(v, mid) @ v["H"]
        if kind == "tall":
            return "(G*G.T)", lambda v: v["G"] @ v["G"].T
        return "eye(n)", lambda v: np.eye(N)
    op = draw(st.sampled_from(["+", "-", "*", "T", "inv", "scale", "cong"]))
    t1, f1 = draw(square_exprs(depth + 1))
    if op in "+-*":
        t2, f2 = draw(square_exprs(depth + 1))
        fn = {"+": np.add, "-": np.subtract, "*": np.matmul}[op]
        return f"({t1} {op} {t2})", lambda v: fn(f1(v), f2(v))
    if op == "T":
        return f"{t1}.T", lambda v: f1(v).T
    if op == "inv":
        return f"inv({t1})", lambda v: _inv(f1(v))
    if op == "cong":
        t2, f2 = draw(square_exprs(depth + 1))
        return f"({t2}.T*{t1}*{t2})", lambda v: f2(v).T @ f1(v) @ f2(v)
    s = draw(st.sampled_from(["2", "-1", "a", "b", "c", "0.5"]))
    return f"{s}*{t1}", lambda v: _scalar(v, s) * f1(v)


def _inv(m):
    if not np.all(np.isfinite(m)) or np.linalg.cond(m) > 1e8:  # undefined (or meaningless)
        raise np.linalg.LinAlgError("singular")
    return np.linalg.inv(m)


def _mid(v, mid):
    return {"": np.eye(K), "R*": v["R"], "inv(R)*": np.linalg.inv(v["R"])}[mid]


def _scalar(v, s):
    return v[s] if s in v else float(s)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(square_exprs())
def test_random_expressions_are_inferred_soundly(case):
    text, fn = case
    try:
        e = parse_formula(text, _BASE.symbols, _BASE.dim_symbols)
    except SpecError:  # e.g. inv((A - A)): a zero matrix
        assume(False)
    facts = _FB.facts(e)
    for inst in _INSTANCES:
        with np.errstate(all="ignore"):
            try:
                value = fn(inst)
            except np.linalg.LinAlgError:
                assume(False)
        assume(np.all(np.isfinite(value)) and np.abs(value).max() < 1e6)
        if INVERTIBLE in facts or PD in facts:
            assert np.linalg.cond(value) < 1e10, (text, sorted(facts))
        for prop in facts:
            assert check_property(value, prop), (text, prop, sorted(facts))
