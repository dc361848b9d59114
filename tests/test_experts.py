"""The hand-written SciPy experts (:mod:`autotune.experts`) compute what the problem says:
each matches the float64 reference on random instances at small sizes, and every shipped
problem has one."""

from __future__ import annotations

import pytest

from autotune.experts import EXPERTS, expert_function
from autotune.instances import random_instance
from autotune.reference import evaluate_reference, relative_error, tolerance
from autotune.spec import load_problem, problem_names


def test_every_shipped_problem_has_an_expert():
    assert set(problem_names()) <= set(EXPERTS)


@pytest.mark.parametrize("name", sorted(EXPERTS))
@pytest.mark.parametrize("size", [8, 24])
def test_expert_matches_reference(name, size):
    p = load_problem(name)
    dims = p.resolve_dims({p.free_dims[0]: size})
    inst = random_instance(p, dims, seed=5)
    ref = evaluate_reference(p, inst, dims)
    tol = tolerance("float64", ref.condition, max(dims.values()))
    fn = expert_function(p)
    outs = fn(*[inst[n] for n in p.inputs])
    for out, value in zip(p.outputs, outs, strict=True):
        assert value.shape == p.shape_of(out, dims), (name, out)
        err = relative_error(value, ref.outputs[out])
        assert err <= tol, (name, out, err, tol)
