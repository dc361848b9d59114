"""The solver registry: every solver (a value of the ``solver.*`` knobs) is one record of
:data:`autotune.kernels.registry.SOLVERS`, and these tests cover each one from its record
alone: offered for its example matrix, derived to the steps it declares (structurally), costed
by them, and numerically right against the float64 reference. A new solver is covered by
registering it; one registered in a test alone is offered, emitted and costed by the
derivation, which names no solver."""

from __future__ import annotations

import pytest

from autotune.derivation import _derive_cached, derive
from autotune.instances import random_instance
from autotune.kernels import KERNELS
from autotune.kernels.registry import SOLVERS, Solver, solver_choices
from autotune.knobs import default_knobs, knob_space
from autotune.lower import lower
from autotune.properties import PD, SYMMETRIC
from autotune.reference import evaluate_reference, relative_error, tolerance
from autotune.spec import parse_problem
from autotune.targets import compile_function

N = 24


def _problem(name: str, fields: str, formula: str = "inv(S) * B"):
    sep = ", " if fields else ""
    return parse_problem(
        f"[problem]\nname = 'solver_{name}'\n[dims]\nn = {N}\n[inputs]\n"
        f"S = {{ shape = ['n', 'n']{sep}{fields} }}\nB = {{ shape = ['n', 3] }}\n"
        f"[outputs]\nX = '{formula}'\n", origin=f"solver_{name}.toml")


def _ops(program) -> list[str]:
    return [program.steps[i].op for i in program.live_steps()]


def _numbers_match(problem, program, dims) -> None:
    inputs, outputs = lower(problem, program, dims)
    fn = compile_function("numba-t1", inputs, outputs)
    inst = random_instance(problem, dims, seed=1)
    ref = evaluate_reference(problem, inst, dims)
    got = fn(*[inst[n] for n in problem.inputs])
    tol = tolerance("float64", ref.condition, N)
    for name, value in zip(problem.outputs, got, strict=True):
        assert relative_error(value, ref.outputs[name]) <= tol, name


@pytest.mark.parametrize("name", list(SOLVERS))
def test_every_solver_is_offered_emitted_costed_and_right(name):
    solver = SOLVERS[name]
    problem = _problem(name, solver.example)
    dims = problem.resolve_dims({})
    space = knob_space(problem, dims)
    (key,) = [k for k in space if k.startswith("solver.")]
    assert name in space[key], f"{name} is not offered for its own example {solver.example!r}"
    program = derive(problem, {**default_knobs(problem, dims), key: name}, dims)
    ops = _ops(program)
    if solver.explicit:
        assert solver.inverse_op in ops and "matmul" in ops
    else:
        for op, _ in solver.steps:  # the kernels it declares are the kernels it emits
            assert op in ops, (op, ops)
        # its cost is what the program's steps of those kernels cost
        declared = {op for op, _ in solver.steps}
        flops = sum(program.step_flops(i, dims) for i in program.live_steps()
                    if program.steps[i].op in declared)
        assert flops > 0
    _numbers_match(problem, program, dims)


@pytest.mark.parametrize("name", [n for n, s in SOLVERS.items() if not s.explicit])
def test_a_solve_from_the_right_uses_the_same_solver(name):
    """``B.T * inv(S)``: the solve of the transposed system, with the same solver."""
    solver = SOLVERS[name]
    problem = _problem(name + "_right", solver.example, "B.T * inv(S)")
    dims = problem.resolve_dims({})
    space = knob_space(problem, dims)
    (key,) = [k for k in space if k.startswith("solver.")]
    program = derive(problem, {**default_knobs(problem, dims), key: name}, dims)
    ops = _ops(program)
    assert all(op in ops for op, _ in solver.steps), ops
    _numbers_match(problem, program, dims)


def test_solver_lists_follow_the_primary_property():
    spd = frozenset({PD, SYMMETRIC})
    assert solver_choices(spd)[0] == "cholesky_split"
    assert solver_choices(spd)[-2:] == ["lu", "inverse"]
    assert "sym" not in solver_choices(spd)  # the primary property decides
    assert solver_choices(spd, (1, 1), 100)[0] == "banded"
    assert "banded" not in solver_choices(spd, (1, 1), 11)  # not narrow at this size
    assert solver_choices(frozenset()) == ["lu", "inverse"]


def test_a_bad_solver_record_is_refused():
    with pytest.raises(ValueError, match="unknown properties"):
        Solver("x", "", {"spd": 0}, (("solve", {}),), lambda b, x, r, lab: r)
    with pytest.raises(ValueError, match="inverse_op"):
        Solver("x", "", {"*": 0}, (), lambda b, x, r, lab: r, explicit=True)


def test_a_solver_registered_in_a_test_is_offered_emitted_and_costed(monkeypatch):
    """Adding a solver is adding a record: here one for symmetric matrices, offered first,
    that solves with the general LU kernel; the knob space offers it, the default point
    takes it, the derivation emits its step (and costs the chain with it), and nothing
    else changes when it is dropped again."""

    def emit(b, x, rhs, label):
        return b.add("solve", (b.emit(x), rhs), b.shape_of(rhs), label, assume_a="gen")

    probe = Solver("lu_for_symmetric", "test", {SYMMETRIC: -5}, (("solve", {"assume_a": "gen"}),),
                   emit, example='properties = ["symmetric"]')
    monkeypatch.setitem(SOLVERS, probe.name, probe)
    problem = _problem("probe", probe.example)
    dims = problem.resolve_dims({})
    _derive_cached.cache_clear()  # derivations are cached per problem and knobs
    space = knob_space(problem, dims)
    (key,) = [k for k in space if k.startswith("solver.")]
    assert space[key][0] == probe.name
    knobs = default_knobs(problem, dims)
    assert knobs[key] == probe.name
    program = derive(problem, knobs, dims)
    (solve,) = [program.steps[i] for i in program.live_steps() if program.steps[i].op == "solve"]
    assert solve.attr("assume_a") == "gen"
    assert program.flops(dims) == pytest.approx(KERNELS["solve"].cost(
        ((N, N), (N, 3)), (N, 3), {"assume_a": "gen"}))
    _numbers_match(problem, program, dims)
    monkeypatch.delitem(SOLVERS, probe.name)
    _derive_cached.cache_clear()
    assert probe.name not in knob_space(problem, dims)[key]
    assert default_knobs(problem, dims)[key] == "sym"
