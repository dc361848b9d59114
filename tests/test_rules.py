"""Tests over the rewrite-rule registry (:mod:`autotune.rules`) and the kernels a derivation
chooses from structure.

Every registered rule is checked from its own record: it applies to its example (structural:
the expression changes, and stays equal numerically to the formula as written on random
instances against the float64 reference). Then a table of formulas (the LAAB tests' shapes among
them) checks the derived program structurally (the kernels it calls, its FLOPs) and
numerically, compiled with the Numba backend in the pinned mode.
"""

from __future__ import annotations

import numpy as np
import pytensor
import pytest
import sympy as sp

from autotune.derivation import derive
from autotune.errors import SpecError
from autotune.instances import random_instance
from autotune.knobs import default_knobs
from autotune.lower import lower
from autotune.pinned import kernel_counts, pinned_mode
from autotune.reference import evaluate_reference, relative_error, tolerance
from autotune.rules import RULES, normalize, variants
from autotune.spec import parse_problem

N = 12

SQUARES = "ABCH"


def _problem(formula: str, inputs: dict[str, str] | None = None, name: str = "t"):
    decl = {s: '{ shape = ["n", "n"] }' for s in SQUARES}
    decl.update(x='{ shape = ["n", 1] }', y='{ shape = ["n", 1] }')
    decl.update(inputs or {})
    lines = "\n".join(f"{k} = {v}" for k, v in decl.items())
    text = (f'[problem]\nname = "{name}"\n[dims]\nn = {N}\n[inputs]\n{lines}\n'
            f'[outputs]\nX = "{formula}"\n')
    return parse_problem(text, name)


def _check_numbers(p, knobs=None):
    dims = p.resolve_dims({})
    inst = random_instance(p, dims, seed=5)
    ref = evaluate_reference(p, inst, dims)
    prog = derive(p, knobs or default_knobs(p), dims)
    ins, outs = lower(p, prog, dims)
    mode = pinned_mode(pytensor.compile.mode.get_mode("NUMBA"))
    f = pytensor.function(ins, outs, mode=mode, on_unused_input="ignore")
    got = f(*[inst[n] for n in p.inputs])
    tol = tolerance("float64", ref.condition, N)
    for out, value in zip(p.outputs, got, strict=True):
        assert relative_error(value, ref.outputs[out]) <= tol, out
    return prog, f


@pytest.mark.parametrize("rule", list(RULES.values()), ids=list(RULES))
def test_every_rule_applies_to_its_example_and_keeps_the_value(rule):
    p = _problem(rule.example)
    expr = p.expressions["X"]
    fb = p.facts(p.resolve_dims({}))
    sites = [node for node in sp.preorder_traversal(expr) if rule.apply(node, fb)]
    assert sites, f"{rule.name} does not apply to its example {rule.example}"
    if rule.phase == "normalize":
        assert normalize(expr, fb) != expr
    else:
        assert len(variants(expr, fb)) > 1
    # the variants a knob reaches derive to programs that compute the formula as written
    for rank in ("as_written", "cheapest", 1, 2):
        _check_numbers(p, {**default_knobs(p), "rewrite": rank})


# formula, extra inputs, kernels the derived program must call (op: count), its FLOPs at N,
# kernels it must not call
CASES = {
    "gemm_AtB": ("A.T*B", {}, {"matmul": 1}, 2 * N**3, ()),
    "trmm_LB": ("L*B", {"L": '{ shape = ["n", "n"], properties = ["lower_triangular"] }'},
                {"trmm": 1}, N**3, ("matmul",)),
    "trmm_BUt": ("B*U.T", {"U": '{ shape = ["n", "n"], properties = ["upper_triangular"] }'},
                 {"trmm": 1}, N**3, ("matmul",)),
    "syrk_AAt": ("A*A.T", {}, {"syrk": 1}, N**3, ("matmul",)),
    "syrk_AtA": ("A.T*A", {}, {"syrk": 1}, N**3, ("matmul",)),
    "cse_sum": ("A.T*B + A.T*B", {}, {"matmul": 1}, 2 * N**3, ("scale",)),  # alpha = 2
    "cse_gram": ("(A.T*B).T*(A.T*B)", {}, {"matmul": 1, "syrk": 1}, 3 * N**3, ()),
    "cse_gram_flat": ("(A.T*B).T*A.T*B", {}, {"matmul": 1, "syrk": 1}, 3 * N**3, ()),
    "no_cse_vec": ("A.T*B*A.T*B*x", {}, {"matmul": 4}, 8 * N * N, ()),
    "chain_HtHx": ("H.T*H*x", {}, {"matmul": 2}, 4 * N * N, ()),
    "chain_ytHtH": ("y.T*H.T*H", {}, {"matmul": 2}, 4 * N * N, ()),
    "chain_outer": ("H.T*y*x.T*H", {}, {"matmul": 3}, 6 * N * N, ()),
    "distribute_factor": ("A*B + A*C", {}, {"matmul": 1, "add": 1}, 2 * N**3 + N * N, ()),
    "distribute_expand": ("(A - H.T*H)*x", {}, {"matmul": 3}, 6 * N * N + N,
                          ("syrk", "sub")),  # A x - H.T (H x): the last GEMV has beta
    "transpose_law": ("B.T*A*A.T*B", {}, {"matmul": 1, "syrk": 1}, 3 * N**3, ()),
    "entry_of_sum": ("(A + B)[2, 2]", {}, {"add": 1, "slice": 2}, 1, ("matmul",)),
    "entry_of_product": ("(A*B)[2, 3]", {}, {"matmul": 1}, 2 * N, ()),
    "row_of_product": ("(A*B)[1, :]", {}, {"matmul": 1}, 2 * N * N, ()),
    "column_of_chain": ("(A*B*C)[:, 4]", {}, {"matmul": 2}, 4 * N * N, ()),
    "diagonal_scaling": ("D*B", {"D": '{ shape = ["n", "n"], properties = ["diagonal"] }'},
                         {"diag_mul": 1}, N * N, ("matmul",)),
    "diagonal_right": ("B*D", {"D": '{ shape = ["n", "n"], properties = ["diagonal"] }'},
                       {"diag_mul": 1}, N * N, ("matmul",)),
    "identity_minus": ("(eye(n) - A*B)*x", {}, {"matmul": 2}, 4 * N * N + N,
                       ("eye", "sub")),
    "rank_one_update": ("A*B + x*x.T", {}, {"matmul": 2}, 2 * N**3 + 3 * N * N,
                        ("syrk", "add")),  # the outer product accumulates into A B
    "tridiagonal": ("Tr*B", {"Tr": '{ shape = ["n", "n"], properties = ["tridiagonal"] }'},
                    {"band_mul": 1}, 2 * 3 * N * N, ("matmul", "trmm")),
    "bidiagonal_right": ("B*Lb.T",
                         {"Lb": '{ shape = ["n", "n"], properties = ["lower_bidiagonal"] }'},
                         {"band_mul": 1}, 2 * 2 * N * N, ("matmul", "trmm")),
    "declared_band": ("Wd*x", {"Wd": '{ shape = ["n", "n"], bandwidth = [2, 1] }'},
                      {"band_mul": 1}, 2 * 4 * N, ("matmul",)),
    "scalar_sum": ("(k - 1)*A*x", {"k": "{ shape = [] }"}, {"scalar": 1, "scale": 1},
                   2 * N * N + N + 1, ()),
    "scalar_ratio": ("(lam + k)/(k - 1)*A", {"k": "{ shape = [] }",
                                            "lam": '{ shape = [], properties = ["positive"] }'},
                     {"scalar": 2, "scale": 1}, None, ("matmul",)),
    "shifted_inverse": ("inv(P + lam*eye(n))*x",
                        {"P": '{ shape = ["n", "n"], properties = ["positive_semidefinite"] }',
                         "lam": '{ shape = [], properties = ["positive"] }'},
                        {"cholesky": 1}, None, ("inv", "solve")),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_derived_program_uses_the_expert_kernels(case):
    formula, extra, want, flops, banned = CASES[case]
    p = _problem(formula, extra)
    prog, f = _check_numbers(p)
    ops = prog.ops_used()
    for op, count in want.items():
        assert ops.get(op, 0) == count, (ops, want)
    for op in banned:
        assert op not in ops, ops
    if flops is not None:
        assert prog.flops(p.resolve_dims({})) == flops
    # what is compiled is what was derived
    compiled = kernel_counts(f)
    for op in ("trmm", "syrk", "matmul"):
        if op in want:
            assert compiled, compiled


def test_as_written_keeps_the_formula():
    p = _problem("(A - H.T*H)*x")
    prog = derive(p, {**default_knobs(p), "rewrite": "as_written"})
    assert prog.flops(p.resolve_dims({})) > 2 * N**3 / 2  # H.T*H formed


def test_partial_access_syntax_errors_name_the_problem():
    for bad, match in [("A[2]", "expected ','"), ("A[x, 1]", "dimension name"),
                       ("A[3:1, 0]", "empty index range"), ("(A*x)[0, 0][0, 0]", None)]:
        if match is None:
            p = _problem(bad)  # an index of an index is an index
            assert p.expressions["X"].shape == (1, 1)
            continue
        with pytest.raises(SpecError, match=match):
            _problem(bad)


def test_index_outside_the_matrix_is_a_clear_error():
    """Refused at load at the default sizes; at other sizes, when the candidate is derived."""
    from autotune.errors import DerivationError

    with pytest.raises(SpecError, match="index range 20:21 is outside"):
        _problem("(A*B)[20, 0]")
    p = _problem("(A*B)[10, 0]")  # fine at n = 12
    with pytest.raises(DerivationError, match="outside"):
        derive(p, default_knobs(p, {"n": 8}), {"n": 8})


def test_variants_are_bounded():
    # a product of many sums has exponentially many expansions: the enumeration stops
    p = _problem("(A + B)*(A + C)*(B + C)*(A + H)*(B + H)*x")
    fb = p.facts(p.resolve_dims({}))
    got = variants(p.expressions["X"], fb)
    assert 1 < len(got) <= 16
    _check_numbers(p)
    assert np.isfinite(derive(p, default_knobs(p)).flops({"n": N}))


def _product_shapes(f) -> list[tuple]:
    """The operand shapes of every product node in a compiled function's graph."""
    out = []
    for node in f.maker.fgraph.toposort():
        if type(node.op).__name__ in ("GeneralProduct", "Dot", "Dot22", "Gemm", "Gemv", "Ger"):
            out.append(tuple(tuple(v.type.shape) for v in node.inputs[:2]))
    return out


def test_partial_access_compiles_what_was_chosen():
    """As written, ``(A*B)[2, 3]`` multiplies the whole matrices (PyTensor's own slice lifts are
    excluded from the pinned compile); the rewritten candidate multiplies a row by a column."""
    p = _problem("(A*B)[2, 3]")
    _, full = _check_numbers(p, {**default_knobs(p), "rewrite": "as_written"})
    _, part = _check_numbers(p)
    assert _product_shapes(full) == [((N, N), (N, N))]
    assert _product_shapes(part) == [((1, N), (N, 1))]


def test_a_shared_product_is_not_fused_into_one_of_its_uses():
    """LAAB's loop-invariant test as three outputs: A*B once, each rank-1 update a GEMM
    accumulating into (a copy of) it; the naive point keeps a step per operation."""
    text = ('[problem]\nname = "loops"\n[dims]\nn = 12\n[inputs]\nA = { shape = ["n", "n"] }\n'
            'B = { shape = ["n", "n"] }\nv0 = { shape = ["n", 1] }\nv1 = { shape = ["n", 1] }\n'
            '[outputs]\nX0 = "A*B + v0*v0.T"\nX1 = "A*B + v1*v1.T"\n')
    p = parse_problem(text, "loops")
    prog, _ = _check_numbers(p)
    live = [prog.steps[i] for i in prog.live_steps()]
    plain = [s for s in live if s.op == "matmul" and len(s.args) == 2]
    fused = [s for s in live if s.op == "matmul" and len(s.args) == 3]
    assert len(plain) == 1 and len(fused) == 2  # A*B, then v v.T + A*B twice
    assert all(s.args[2] == prog.steps.index(plain[0]) for s in fused)
    from autotune.space import named_point

    naive = derive(p, named_point(p, "naive"))
    assert not [s for s in naive.steps if s.op == "matmul" and len(s.args) == 3]


def _low_rank_problem(inputs: str, formula: str):
    text = (f'[problem]\nname = "lr"\n[dims]\nn = 40\nk = 3\n[inputs]\n{inputs}\n'
            f'[outputs]\nX = "{formula}"\n')
    return parse_problem(text, "lr")


def _solved_sizes(prog, dims) -> list[int]:
    """The order of every matrix a program factors or solves against (not the triangular and
    diagonal ones, which cost nothing to 'factor')."""
    env = prog.concrete_sizes(dims)
    return sorted(prog.shape(s.args[0], env)[0] for s in (prog.steps[i] for i in
                  prog.live_steps()) if s.op in ("solve", "cholesky", "inv", "spd_inv"))


def test_push_through_inverts_the_small_matrix():
    p = _low_rank_problem('A = { shape = ["n", "k"] }\nB = { shape = ["k", "n"] }\n'
                          'x = { shape = ["k", 1] }', "inv(eye(n) + A*B)*A*x")
    dims = p.resolve_dims({})
    as_written = derive(p, {**default_knobs(p), "rewrite": "as_written"})
    assert _solved_sizes(as_written, dims) == [40]
    prog, _ = _check_numbers(p)
    assert _solved_sizes(prog, dims) == [3]  # A*inv(I + B*A)*x
    assert prog.flops(dims) < as_written.flops(dims) / 10


def test_woodbury_turns_a_large_inverse_into_a_small_one():
    p = _low_rank_problem('D = { shape = ["n", "n"], properties = ["diagonal", '
                          '"positive_definite"] }\nU = { shape = ["n", "k"] }\n'
                          'x = { shape = ["n", 1] }', "inv(D + U*U.T)*x")
    dims = p.resolve_dims({})
    as_written = derive(p, {**default_knobs(p), "rewrite": "as_written"})
    assert _solved_sizes(as_written, dims) == [40]
    prog, _ = _check_numbers(p)
    assert _solved_sizes(prog, dims) == [3] and "diag_solve" in prog.ops_used()


@pytest.mark.parametrize("condition", [1e2, 1e6, 1e10])
def test_woodbury_accuracy_follows_the_conditioning(condition):
    """The rewritten candidate on instances of controlled conditioning: its error against
    the float64 reference stays within the gate's tolerance for that conditioning (the gate
    then rejects what rounding spoils, never a correct candidate)."""
    p = _low_rank_problem('D = { shape = ["n", "n"], properties = ["diagonal", '
                          '"positive_definite"] }\nU = { shape = ["n", "k"] }\n'
                          'x = { shape = ["n", 1] }', "inv(D + U*U.T)*x")
    dims = p.resolve_dims({})
    rng = np.random.default_rng(7)
    inst = {"D": np.diag(np.geomspace(1.0, 1.0 / condition, 40)),
            "U": rng.standard_normal((40, 3)), "x": rng.standard_normal((40, 1))}
    ref = evaluate_reference(p, inst, dims)
    prog = derive(p, default_knobs(p))
    ins, outs = lower(p, prog, dims)
    mode = pinned_mode(pytensor.compile.mode.get_mode("NUMBA"))
    got = pytensor.function(ins, outs, mode=mode)(*[inst[n] for n in p.inputs])
    err = relative_error(got[0], ref.outputs["X"])
    assert ref.condition >= condition / 10
    assert err <= tolerance("float64", ref.condition, 40), (err, ref.condition)


def test_woodbury_of_a_scaled_identity_plus_low_rank():
    """``inv(c*I + Y*Y.T)`` (a scalar coefficient in the easy part): the Woodbury variant
    builds, derives and computes the formula (it once failed to build inside SymPy)."""
    p = _low_rank_problem('Y = { shape = ["n", "k"] }\nc = { shape = [], properties = '
                          '["positive"] }\nx = { shape = ["n", 1] }', "inv(c*eye(n) + Y*Y.T)*x")
    fb = p.facts(p.resolve_dims({}))
    assert len(variants(p.expressions["X"], fb)) > 1
    prog, _ = _check_numbers(p)
    assert _solved_sizes(prog, p.resolve_dims({})) == [3]
