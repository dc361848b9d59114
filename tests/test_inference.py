"""What a formula implies about its inputs: a matrix the formula inverts is invertible, and an
invertible semidefinite one is positive definite (the reasoning is kept as notes); the random
instances agree (inverted semidefinite inputs are drawn full rank); and the derivation then
uses Cholesky. Also banded inputs, dimension aliases and outputs used by name."""

from __future__ import annotations

import numpy as np
import pytensor
import pytest
import sympy as sp

from autotune.derivation import derive
from autotune.errors import SpecError
from autotune.instances import check_bandwidth, check_property, random_instance
from autotune.inverses import assume_invertible
from autotune.knobs import default_knobs, inverted_matrices, knob_space, solver_choices
from autotune.lower import lower
from autotune.properties import (
    DIAGONAL,
    FULL_RANK,
    INVERTIBLE,
    LOWER,
    LOWER_BIDIAGONAL,
    PD,
    PSD,
    SYMMETRIC,
    TRIDIAGONAL,
    UPPER,
    UPPER_BIDIAGONAL,
    FactBase,
    bandwidth_of,
)
from autotune.reference import evaluate_reference, relative_error, tolerance
from autotune.spec import parse_problem

HEADER = """
[dims]
n = 8
k = 3

[inputs]
C = { shape = ["n", "n"], properties = ["positive_semidefinite"] }
P = { shape = ["n", "n"], properties = ["psd"] }
Q = { shape = ["n", "n"], properties = ["psd"] }
R = { shape = ["k", "k"], properties = ["psd"] }
V = { shape = ["n", "n"], properties = ["psd"] }
H = { shape = ["k", "n"] }
A = { shape = ["n", "n"] }
B = { shape = ["n", "n"] }
Y = { shape = ["n", "n"], properties = ["symmetric"] }
y = { shape = ["n", 1] }
z = { shape = ["k", 1] }
"""


def problem(outputs: str, definitions: str = ""):
    text = HEADER
    if definitions:
        text += "\n[definitions]\n" + definitions + "\n"
    return parse_problem(text + "\n[outputs]\n" + outputs + "\n", origin="infer.toml")


def solvers(p) -> dict[str, list[str]]:
    return {label: solver_choices(f) for label, f in inverted_matrices(p, p.facts()).items()}


# -- structure: the facts and the solver choices --------------------------------------------


def test_psd_inverted_directly_is_pd():
    p = problem('x = "inv(C)*y"')
    fb = p.facts()
    assert PD in fb.facts(p.symbols["C"]) and INVERTIBLE in fb.facts(p.symbols["C"])
    assert PD in p.declared("C")  # the call checks and the instances see it too
    assert solvers(p) == {"inv1": solver_choices(frozenset({PD}))}
    assert solvers(p)["inv1"][0].startswith("cholesky")
    assert p.notes == [
        "C is inverted, so it is taken as positive definite (invertible and positive "
        "semidefinite)"
    ]
    # only what the formula inverts: V is declared semidefinite and stays so
    assert PD not in p.declared("V") and PSD in p.declared("V")


@pytest.mark.parametrize("formula", ["inv(C.T)*y", "inv(2*C)*y", "inv(C*C)*y"])
def test_psd_inverted_through_transpose_scaling_or_square(formula):
    p = problem(f'x = "{formula}"')
    assert PD in p.declared("C"), formula
    # (SymPy writes inv(C*C) as C**-2: no solver knob, but the derivation factorizes C)
    assert "cholesky" in derive(p, default_knobs(p)).ops_used(), formula


def test_sum_of_semidefinite_terms_inverted_is_pd():
    p = problem('x = "inv(P + Q)*y"')
    fb = p.facts()
    s = p.symbols["P"] + p.symbols["Q"]
    assert PD in fb.facts(s)
    # the terms themselves are not known definite (only their sum is invertible) ...
    assert PD not in fb.facts(p.symbols["P"]) and PD not in p.declared("Q")
    # ... but instances draw them at full rank, as a user's covariances are
    assert p.full_rank_inputs == {"P", "Q"}
    assert solvers(p)["inv1"][0] == "cholesky_split"
    assert any("P + Q is inverted, so it is taken as positive definite" in n for n in p.notes)
    assert any("P and Q are inside the inverted P + Q" in n for n in p.notes)


def test_innovation_covariance_with_semidefinite_noise():
    p = problem('x = "P*H.T*inv(S)*z"', definitions='S = "H*P*H.T + R"')
    labels = solvers(p)
    assert list(labels) == ["S"] and labels["S"][0] == "cholesky_split"
    assert any(n.startswith("S is inverted, so it is taken as positive definite") for n in p.notes)
    assert p.full_rank_inputs == {"P", "R"}


def test_general_matrix_inverted_is_invertible_only():
    p = problem('x = "inv(A)*y + inv(Y)*y + inv(A*B)*y"')
    for nm in "AB":
        f = p.declared(nm)
        assert INVERTIBLE in f and FULL_RANK in f and SYMMETRIC not in f, nm
    assert SYMMETRIC in p.declared("Y") and PD not in p.declared("Y")
    assert solvers(p) == {"inv1": ["lu", "inverse"], "inv2": ["sym", "lu", "inverse"],
                          "inv3": ["lu", "inverse"]}
    assert "A is inverted, so it is taken as invertible" in p.notes
    # (the parser writes inv(A*B) as inv(B)*inv(A)); a product kept whole: its square factors
    a, b = sp.MatrixSymbol("A", 4, 4), sp.MatrixSymbol("B", 4, 4)
    fb = FactBase()
    fb.declare(a, [])
    fb.declare(b, [PSD])
    inference = assume_invertible([sp.Inverse(sp.MatMul(a, b, evaluate=False))], fb)
    assert INVERTIBLE in fb.facts(a) and PD in fb.facts(b)
    assert inference.notes[1:] == [
        "A must be invertible for A*B to be inverted, so it is taken as invertible",
        "B must be invertible for A*B to be inverted, so it is taken as positive definite "
        "(invertible and positive semidefinite)",
    ]
    assert set(inference.atoms) == {a, b}


def test_nothing_registered_when_already_known():
    p = problem('x = "inv(H*H.T + eye(k))*z"')  # definite as written
    assert p.notes == [] and p.full_rank_inputs == set()


def test_the_rule_alone_does_not_assume():
    """The fact base's own rules stay conservative: the assumption is the problem's, made
    because the formula inverts the matrix."""
    c = sp.MatrixSymbol("C", 4, 4)
    fb = FactBase()
    fb.declare(c, [PSD])
    assert PD not in fb.facts(c) and INVERTIBLE not in fb.facts(sp.Inverse(c))


def test_sympy_ask_is_not_used(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("sympy.ask called")

    monkeypatch.setattr(sp, "ask", refuse)
    monkeypatch.setattr(sp.assumptions, "ask", refuse)
    p = problem('x = "inv(P + Q)*y + inv(C)*y"')
    derive(p, default_knobs(p))
    assert PD in p.declared("C")


# -- numbers: the instances agree -----------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_instances_of_upgraded_inputs_are_definite(seed):
    p = problem('x = "inv(C)*y + inv(P + Q)*y + P*H.T*inv(H*P*H.T + R)*z + V*y"')
    inst = random_instance(p, seed=seed)
    for nm in "CPQR":
        x = inst[nm]
        np.linalg.cholesky(x)  # raises if not definite
        assert np.linalg.eigvalsh(x).min() > 0.1, nm
        assert np.linalg.cond(x) < 100, nm
    # V is not inverted: still a genuinely semidefinite (singular) instance
    assert check_property(inst["V"], PSD) and not check_property(inst["V"], PD)
    ref = evaluate_reference(p, inst, p.resolve_dims())
    assert np.all(np.isfinite(ref.outputs["x"])) and ref.condition < 1e4


def test_default_program_uses_cholesky_and_is_accurate():
    p = problem('x = "inv(C)*y"\nw = "inv(P + Q)*y"')
    prog = derive(p, default_knobs(p))
    ops = prog.ops_used()
    assert "cholesky" in ops or "cho_solve" in ops, ops
    assert not {"lu", "lu_solve", "inverse", "sym_solve", "solve"} & set(ops), ops
    dims = p.resolve_dims()
    inst = random_instance(p, dims, seed=5)
    ref = evaluate_reference(p, inst, dims)
    ins, outs = lower(p, prog, dims)
    f = pytensor.function(ins, outs, mode="FAST_COMPILE", on_unused_input="ignore")
    res = f(*[inst[n] for n in p.inputs])
    tol = tolerance("float64", ref.condition, max(dims.values()))
    for name, value in zip(p.outputs, res, strict=True):
        assert relative_error(value, ref.outputs[name]) <= tol, name


# -- banded matrices ------------------------------------------------------------------------

BANDED = """
[dims]
n = 9
m = 5

[inputs]
Tr = { shape = ["n", "n"], properties = ["tridiagonal"] }
L = { shape = ["n", "n"], properties = ["lower_bidiagonal"] }
U = { shape = ["n", "n"], properties = ["upper_bidiagonal"] }
W = { shape = ["n", "n"], bandwidth = [2, 1] }
Z = { shape = ["n", "n"], bandwidth = [3, 3], properties = ["positive_definite"] }
K = { shape = ["n", "n"], bandwidth = [2, 0] }
D = { shape = ["n", "n"], bandwidth = [0, 0] }
G = { shape = ["n", "m"], bandwidth = [1, 2] }
F = { shape = ["n", "n"], properties = ["lower_triangular"] }
X = { shape = ["n", "n"] }

[outputs]
y = "Tr + L + U + W + Z + K + D + F + X + G*G.T"
"""


@pytest.fixture(scope="module")
def banded():
    return parse_problem(BANDED, origin="banded.toml")


def test_banded_properties_close():
    p = parse_problem(BANDED, origin="banded.toml")
    assert {LOWER, TRIDIAGONAL} <= p.declared("L")
    assert {UPPER, TRIDIAGONAL} <= p.declared("U")
    assert LOWER in p.declared("K") and UPPER not in p.declared("K")
    assert DIAGONAL in p.declared("D")
    assert TRIDIAGONAL not in p.declared("W")
    assert not p.declared("G")  # rectangular: a band, no square-only property


def test_bandwidth_api(banded):
    fb = banded.facts()
    s = banded.symbols
    assert fb.bandwidth(s["Tr"]) == (1, 1)
    assert fb.bandwidth(s["L"]) == (1, 0) and fb.bandwidth(s["U"]) == (0, 1)
    assert fb.bandwidth(s["W"]) == (2, 1) and fb.bandwidth(s["W"].T) == (1, 2)
    assert fb.bandwidth(s["L"].T) == (0, 1)
    assert fb.bandwidth(s["D"]) == (0, 0)
    assert fb.bandwidth(s["F"]) == (8, 0) and fb.bandwidth(s["F"].T) == (0, 8)
    assert fb.bandwidth(s["X"]) is None  # full
    assert fb.bandwidth(s["G"]) == (1, 2) and fb.bandwidth(s["G"].T) == (2, 1)
    assert fb.bandwidth(2 * s["Tr"]) == (1, 1)
    assert fb.bandwidth(s["Tr"] + s["W"]) == (2, 1)
    assert fb.bandwidth(s["Tr"] * s["W"]) == (3, 2)
    assert fb.bandwidth(s["Tr"] + s["X"]) is None
    assert banded.bandwidth("Z") == (3, 3)
    assert banded.bandwidth("F", {"n": 4}) == (3, 0)  # clamped to the concrete size
    # without sizes, a triangular matrix's band is not known; a declared one is
    bare = FactBase()
    f = sp.MatrixSymbol("F", sp.Symbol("n"), sp.Symbol("n"))
    bare.declare(f, [LOWER])
    assert bare.bandwidth(f) is None
    bare.declare(f, [], (1, 0))
    assert bare.bandwidth(f) == (1, 0) and LOWER_BIDIAGONAL in bare.facts(f)
    assert bandwidth_of({UPPER_BIDIAGONAL}, 5, 5) == (0, 1)
    assert bandwidth_of({UPPER}, 5, 5) == (0, 4)
    assert bandwidth_of(set(), 5, 5) is None


def test_banded_inference_rules(banded):
    fb = banded.facts()
    s = banded.symbols
    assert TRIDIAGONAL in fb.facts(s["Tr"] + 2 * s["L"])
    assert TRIDIAGONAL in fb.facts(s["D"] * s["Tr"] * s["D"])  # scaled rows and columns
    assert UPPER_BIDIAGONAL in fb.facts(s["L"].T)
    assert TRIDIAGONAL not in fb.facts(s["Tr"] * s["Tr"])
    assert LOWER_BIDIAGONAL not in fb.facts(sp.Inverse(s["L"]))  # its inverse fills in


@pytest.mark.parametrize("seed", range(3))
def test_banded_instances(banded, seed):
    inst = random_instance(banded, seed=seed)
    for nm in banded.inputs:
        band = banded.bandwidth(nm)
        if band is not None:
            assert check_bandwidth(inst[nm], band), nm
        for prop in banded.declared(nm):
            assert check_property(inst[nm], prop), (nm, prop)
    assert not check_bandwidth(inst["W"], (1, 1))  # the band is used, not just zeros
    assert check_property(inst["Z"], PD) and np.linalg.cond(inst["Z"]) < 100
    assert check_property(inst["Tr"], INVERTIBLE) and np.linalg.cond(inst["Tr"]) < 100
    assert np.linalg.matrix_rank(inst["G"]) == 5


# -- dimension aliases -------------------------------------------------------------------------

ALIAS = """
[dims]
n = 6
m = "n"
p = "(m)"
k = "m // 2"

[inputs]
A = { shape = ["n", "m"] }
B = { shape = ["n", "m"], properties = ["positive_definite"] }
E = { shape = ["p", "k"] }

[outputs]
y = "A + B"
w = "inv(A + B)*E + eye(m)*E"
"""


def test_alias_is_the_same_dimension():
    p = parse_problem(ALIAS, origin="alias.toml")
    assert p.aliases == {"m": "n", "p": "n"}
    assert list(p.dims) == ["n", "k"]
    assert p.resolve_dims() == {"n": 6, "k": 3}
    assert p.resolve_dims({"n": 10}) == {"n": 10, "k": 5}
    assert p.symbols["A"].shape == (p.dim_symbols["n"], p.dim_symbols["n"])
    assert p.shape_of("w", {"n": 10, "k": 5}) == (10, 5)
    assert "blocks.m" not in knob_space(p) and "blocks.n" in knob_space(p)
    prog = derive(p, default_knobs(p))
    dims = p.resolve_dims()
    inst = random_instance(p, dims, seed=0)
    ref = evaluate_reference(p, inst, dims)
    ins, outs = lower(p, prog, dims)
    res = pytensor.function(ins, outs, mode="FAST_COMPILE")(*[inst[n] for n in p.inputs])
    for name, value in zip(p.outputs, res, strict=True):
        assert relative_error(value, ref.outputs[name]) < 1e-10, name


def test_setting_an_alias_is_an_error():
    p = parse_problem(ALIAS, origin="alias.toml")
    with pytest.raises(SpecError, match=r"alias.toml: dimension m is another name for n .*set n "
                       "instead"):
        p.resolve_dims({"m": 4})


def test_alias_cycle():
    with pytest.raises(SpecError, match=r"dims: cyclic definition a -> b -> a"):
        parse_problem('[dims]\na = "b"\nb = "a"\n[inputs]\nX = { shape = ["a", "b"] }\n'
                      '[outputs]\ny = "X"\n', origin="c.toml")


# -- outputs by name -----------------------------------------------------------------------------


def test_output_uses_output_by_name():
    p = problem('S = "A*B"\nS2 = "S + C"\nU = "S.T*y"')
    a, b, c = (p.symbols[n] for n in "ABC")
    assert p.expressions["S2"] == a * b + c
    prog = derive(p, default_knobs(p))
    assert prog.ops_used().get("matmul", 0) + prog.ops_used().get("gemm", 0) >= 1
    # the shared product is computed once with cse on
    assert sum(1 for s in prog.steps if s.op in ("matmul", "gemm") and len(s.args) == 2
               and all(prog.steps[i].op == "input" for i in s.args)) <= 2


def test_inverted_output_is_the_solver_label():
    p = problem('S = "H*P*H.T + R"\nK = "P*H.T*inv(S)"')
    assert list(solvers(p)) == ["S"]
