"""Seeded random instances: reproducible, honoring every property, well conditioned."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from autotune.instances import check_property, random_instance, random_matrix
from autotune.properties import (
    FULL_RANK,
    INVERTIBLE,
    MATRIX_PROPERTIES,
    PD,
    PSD,
    close_facts,
)
from autotune.spec import parse_problem

N = 7


def one_property_problem():
    """A tiny problem with one n x n input per matrix property, plus wide/tall full-rank ones
    and scalars."""
    lines = ["[dims]", f"n = {N}", "k = 3", "", "[inputs]"]
    for prop in MATRIX_PROPERTIES:
        lines.append(f'{prop} = {{ shape = ["n", "n"], properties = ["{prop}"] }}')
    lines += [
        'wide = { shape = ["k", "n"], properties = ["full_rank"] }',
        'tall = { shape = ["n", "k"], properties = ["full_rank"] }',
        'plain = { shape = ["n", "k"] }',
        'vec = { shape = ["n"] }',
        'pos = { shape = [], properties = ["positive"] }',
        'nz = { shape = [], properties = ["nonzero"] }',
        "s = { shape = [] }",
        "",
        "[outputs]",
        f'y = "{" + ".join(MATRIX_PROPERTIES)}"',
    ]
    return parse_problem("\n".join(lines) + "\n", origin="one_property.toml")


@pytest.fixture(scope="module")
def problem():
    return one_property_problem()


def test_reproducible_for_a_seed(kalman):
    dims = {"n": 12}
    a = random_instance(kalman, dims, seed=7)
    b = random_instance(kalman, dims, seed=7)
    assert a.keys() == b.keys()
    for nm in a:
        np.testing.assert_array_equal(a[nm], b[nm])


def test_different_for_another_seed(kalman):
    dims = {"n": 12}
    a = random_instance(kalman, dims, seed=7)
    b = random_instance(kalman, dims, seed=8)
    for nm in a:
        assert not np.array_equal(a[nm], b[nm]), nm


def test_inputs_draw_from_independent_streams(kalman):
    """Adding an input to a problem changes no other input's values."""
    text = kalman.source.replace("[definitions]", 'extra = { shape = ["n", "n"] }\n\n[definitions]')
    bigger = parse_problem(text, origin="bigger.toml")
    a = random_instance(kalman, {"n": 12}, seed=3)
    b = random_instance(bigger, {"n": 12}, seed=3)
    assert set(b) == set(a) | {"extra"}
    for nm in a:
        np.testing.assert_array_equal(a[nm], b[nm])


def test_float32_instances(kalman):
    inst = random_instance(kalman, {"n": 12}, seed=0, dtype="float32")
    assert all(v.dtype == np.float32 for v in inst.values())
    np.testing.assert_allclose(
        inst["Sigma"], random_instance(kalman, {"n": 12}, seed=0)["Sigma"], rtol=1e-6
    )


@pytest.mark.parametrize("prop", MATRIX_PROPERTIES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_property_holds(problem, prop, seed):
    inst = random_instance(problem, seed=seed)
    x = inst[prop]
    assert x.shape == (N, N)
    for p in problem.declared(prop):  # the declared property and everything it implies
        assert check_property(x, p), (prop, p)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shapes_and_scalars(problem, seed):
    inst = random_instance(problem, seed=seed)
    assert inst["wide"].shape == (3, N) and check_property(inst["wide"], FULL_RANK)
    assert inst["tall"].shape == (N, 3) and check_property(inst["tall"], FULL_RANK)
    assert inst["plain"].shape == (N, 3)
    assert inst["vec"].shape == (N, 1)
    assert isinstance(inst["pos"], float) and inst["pos"] > 0
    assert isinstance(inst["nz"], float) and inst["nz"] != 0
    assert isinstance(inst["s"], float)


def test_positive_semidefinite_is_singular_but_not_definite(problem):
    for seed in range(3):
        x = random_instance(problem, seed=seed)["positive_semidefinite"]
        assert check_property(x, PSD) and not check_property(x, PD)
        assert not check_property(x, INVERTIBLE)


@pytest.mark.parametrize("n", [1, 2, 5, 20, 60])
@pytest.mark.parametrize("seed", range(5))
def test_spd_instances_are_well_conditioned(n, seed):
    rng = np.random.default_rng(seed)
    x = random_matrix((n, n), close_facts({PD}, True), rng)
    assert check_property(x, PD)
    assert np.linalg.cond(x) < 100


@pytest.mark.parametrize(
    "prop",
    ["invertible", "lower_triangular", "upper_triangular", "diagonal", "orthogonal", "symmetric"],
)
def test_invertible_kinds_are_well_conditioned(prop):
    for seed in range(3):
        x = random_matrix((40, 40), close_facts({prop}, True), np.random.default_rng(seed))
        assert np.linalg.cond(x) < 1e3, prop


def test_shipped_spd_inputs_are_well_conditioned(kalman):
    inst = random_instance(kalman, {"n": 60}, seed=0)
    assert np.linalg.cond(inst["Sigma"]) < 100
    assert np.linalg.cond(inst["R"]) < 100


def test_check_property_rejects():
    rng = np.random.default_rng(0)
    g = rng.standard_normal((5, 5))
    assert not check_property(g, "symmetric")
    assert not check_property(g, "lower_triangular")
    assert not check_property(g, "orthogonal")
    assert not check_property(g, "positive_semidefinite")
    assert not check_property(rng.standard_normal((3, 5)), "symmetric")  # not square
    assert not check_property(np.zeros((4, 4)), "full_rank")
    assert not check_property(-np.eye(3), "positive_definite")
    assert check_property(np.eye(3), "identity")
    with pytest.raises(ValueError, match="unknown property"):
        check_property(np.eye(3), "purple")


COMBOS = [c for r in (2, 3) for c in itertools.combinations(MATRIX_PROPERTIES, r)]


@pytest.mark.parametrize("n", [1, 2, 5])
def test_property_combinations_hold(n):
    """Every combination is satisfiable (the identity has all properties), and the instance
    honors all of it: symmetric+lower is diagonal, orthogonal+diagonal is +-1, orthogonal+PSD
    is the identity, orthogonal+symmetric is a reflection."""
    failures = []
    for combo in COMBOS:
        facts = close_facts(combo, True)
        for seed in range(2):
            x = random_matrix((n, n), facts, np.random.default_rng(seed))
            failures += [(combo, p) for p in facts if not check_property(x, p)]
    assert not failures


def test_property_combinations_in_a_problem():
    p = parse_problem(
        "[dims]\nn = 5\n[inputs]\n"
        'A = { shape = ["n", "n"], properties = ["symmetric", "lower"] }\n'
        'B = { shape = ["n", "n"], properties = ["orthogonal", "symmetric"] }\n'
        'C = { shape = ["n", "n"], properties = ["orthogonal", "upper"] }\n'
        '[outputs]\ny = "A + B + C"\n',
        origin="combo.toml",
    )
    inst = random_instance(p, seed=0)
    for nm in "ABC":
        for prop in p.declared(nm):
            assert check_property(inst[nm], prop), (nm, prop)
    assert not check_property(inst["B"], "diagonal")  # a genuine reflection, not just +-1
