"""Derivation: every candidate equals the float64 reference through PyTensor; rewrites are
checked structurally; the cost model matches the hand-derived FLOP counts."""

from __future__ import annotations

import random

import pytensor
import pytest

from autotune.derivation import block_sizes, derive, parenthesizations
from autotune.errors import KnobError
from autotune.instances import random_instance
from autotune.lower import lower
from autotune.reference import evaluate_reference, relative_error, tolerance
from autotune.space import knob_space, named_point
from autotune.spec import load_problem, problem_names

SMALL = 24
# PyTensor's default backend; (its pure-Python linker lost accuracy, ~1e-8, on some blocked
# GLS graphs that Numba and a NumPy interpretation of the same program compute to 1e-16)
MODE = "NUMBA"


def _small_dims(p):
    return p.resolve_dims({p.free_dims[0]: SMALL})


def _sample(p, dims, count, seed):
    """Named points plus a seeded random sample of the knob space."""
    space = knob_space(p, dims)
    rng = random.Random(seed)
    out = [named_point(p, n, dims) for n in ("naive", "seed-2x2", "flop-optimal")]
    for _ in range(count):
        out.append({k: rng.choice(v) for k, v in space.items()})
    return out


def _run(p, knobs, dims, inst):
    prog = derive(p, knobs, dims)
    ins, outs = lower(p, prog, dims)
    f = pytensor.function(ins, outs, mode=MODE)
    return prog, f(*[inst[n] for n in p.inputs])


@pytest.mark.parametrize("name", problem_names())
def test_candidates_match_reference(name):
    p = load_problem(name)
    dims = _small_dims(p)
    inst = random_instance(p, dims, seed=3)
    ref = evaluate_reference(p, inst, dims)
    tol = tolerance("float64", ref.condition, max(dims.values()))
    ran = 0
    for knobs in _sample(p, dims, count=3, seed=sum(map(ord, name))):
        try:
            _, res = _run(p, knobs, dims, inst)
        except KnobError as exc:  # a combination empty at this size (e.g. 4 uneven blocks)
            assert "empty" in str(exc)
            continue
        ran += 1
        for out, value in zip(p.outputs, res, strict=True):
            err = relative_error(value, ref.outputs[out])
            assert err <= tol, (name, out, knobs, err, tol)
    assert ran >= 4


def _ops(prog):
    return [prog.steps[i].op for i in prog.live_steps()]


def test_kalman_flop_counts():
    p = load_problem("kalman")
    n, k = 4000, 2000
    dims = {"n": n, "k": k}
    flop_optimal = named_point(p, "flop-optimal", dims)
    best = derive(p, flop_optimal, dims).flops(dims)
    general = derive(p, {**flop_optimal, "symprod": False}, dims).flops(dims)
    naive = derive(p, named_point(p, "naive", dims), dims).flops(dims)
    # B = H*Sigma (2kn^2), S = R + B*H.T, chol(S) (k^3/3), W = inv(L)*B (k^2 n),
    # Sigma - W.T*W (n^2 k); S as a full GEMM (2k^2 n) or one triangle (k^2 n)
    common = 2 * k * n * n + k**3 / 3 + k * k * n + n * n * k
    assert abs(best - (common + k * k * n)) / best < 0.01
    assert abs(general - (common + 2 * k * k * n)) / general < 0.01
    assert 550e9 < naive < 650e9


def test_symmetric_product_computes_one_triangle_and_takes_r():
    p = load_problem("kalman")
    dims = {"n": 400, "k": 200}
    prog = derive(p, named_point(p, "flop-optimal", dims), dims)
    steps = [prog.steps[i] for i in prog.live_steps()]
    sym = [s for s in steps if s.op == "symprod"]
    # S = R + H*(Sigma*H.T): one symmetric product with R as its C term, no separate add
    assert len(sym) == 1 and len(sym[0].args) == 3
    assert prog.steps[sym[0].args[2]].op == "input"
    assert sym[0].attr("beta") == 1.0
    assert prog.steps[sym[0].args[1]].op == "matmul"  # Sigma*H.T, shared with the outputs
    off = derive(p, {**named_point(p, "flop-optimal", dims), "symprod": False}, dims)
    assert "symprod" not in _ops(off)
    # without it, R + H*(Sigma*H.T) is one GEMM accumulating into a copy of R
    (chol,) = [s for s in off.steps if s.op == "cholesky"]
    s_step = off.steps[chol.args[0]]
    assert s_step.op == "matmul" and off.steps[s_step.args[2]].label == "R"
    assert s_step.attr("beta") == 1.0 and "add" not in _ops(off)


_SUMS = """
[dims]
n = 12
k = 5
[inputs]
A = {{ shape = ["n", "n"]{a_props} }}
X = {{ shape = ["k", "n"] }}
M = {{ shape = ["k", "k"], properties = ["symmetric"] }}
[outputs]
out = "A - X.T*X"
sym = "X.T*M*X + A"
"""


@pytest.mark.parametrize("symmetric_a", [True, False])
def test_symmetric_kernels_fuse_only_into_symmetric_sums(symmetric_a):
    """syrk/symprod read one triangle of their C term: A joins them only when A is
    symmetric; otherwise the sum stays an explicit add/sub. Both are exact either way."""
    from autotune.spec import parse_problem

    text = _SUMS.format(a_props=', properties = ["symmetric"]' if symmetric_a else "")
    p = parse_problem(text, origin="sums.toml")
    dims = p.resolve_dims({})
    knobs = {**named_point(p, "flop-optimal", dims), "syrk": True, "symprod": True}
    prog = derive(p, knobs, dims)
    out = prog.steps[prog.outputs["out"]]
    sym = prog.steps[prog.outputs["sym"]]
    if symmetric_a:
        assert out.op == "syrk" and len(out.args) == 2 and out.attr("alpha") == -1.0
        assert sym.op == "symprod" and len(sym.args) == 3
    else:
        assert out.op == "sub" and sym.op == "add"
        assert {prog.steps[a].op for a in sym.args} >= {"symprod"}
    inst = random_instance(p, dims, seed=5)
    ref = evaluate_reference(p, inst, dims)
    _, res = _run(p, knobs, dims, inst)
    for name, value in zip(p.outputs, res, strict=True):
        assert relative_error(value, ref.outputs[name]) < 1e-12, name


def test_structure_spd_uses_one_cholesky_and_no_inverse():
    p = load_problem("kalman")
    dims = _small_dims(p)
    for solver in ("cholesky_split", "cholesky"):
        prog = derive(p, {**named_point(p, "flop-optimal", dims), "solver.S": solver}, dims)
        ops = _ops(prog)
        assert ops.count("cholesky") == 1, ops  # one factorization shared by every solve
        assert "inv" not in ops and "solve" not in ops
    naive = derive(p, named_point(p, "naive", dims), dims)
    assert "inv" in _ops(naive) and "cholesky" not in _ops(naive)


def test_split_cholesky_shares_w_and_uses_syrk():
    p = load_problem("kalman")
    dims = {"n": 400, "k": 200}
    prog = derive(p, named_point(p, "flop-optimal", dims), dims)
    ops = _ops(prog)
    # W = inv(L)*H*Sigma once for newSigma, newSigma = Sigma - W.T W as a rank-k update
    assert ops.count("syrk") == 1
    syrk = next(prog.steps[i] for i in prog.live_steps() if prog.steps[i].op == "syrk")
    assert syrk.attr("alpha") == -1.0 and syrk.attr("beta") == 1.0
    assert prog.steps[syrk.args[0]].op == "trsolve"


def test_order_changes_association():
    p = load_problem("kalman")
    dims = {"n": 400, "k": 200}
    base = named_point(p, "flop-optimal", dims)
    left = derive(p, {**base, "order": "left", "cse": False}, dims).flops(dims)
    best = derive(p, {**base, "cse": False}, dims).flops(dims)
    assert best < left


def test_cse_shares_products_across_outputs():
    p = load_problem("kalman")
    dims = {"n": 400, "k": 200}
    base = {**named_point(p, "flop-optimal", dims), "solver.S": "cholesky"}
    shared = derive(p, base, dims)
    unshared = derive(p, {**base, "cse": False}, dims)
    assert shared.flops(dims) < unshared.flops(dims)
    assert _ops(shared).count("matmul") < _ops(unshared).count("matmul")


def test_blocked_symmetric_output_mirrors_lower_blocks():
    p = load_problem("kalman")
    dims = {"n": 400, "k": 200}
    base = {**named_point(p, "flop-optimal", dims), "blocks.n": 2, "syrk": False, "cse": False}
    mirrored = derive(p, {**base, "mirror": True}, dims)
    full = derive(p, {**base, "mirror": False}, dims)
    assert mirrored.flops(dims) < full.flops(dims)
    block = mirrored.steps[mirrored.outputs["newSigma"]]
    assert block.op == "block"
    assert any(tr for row in block.attr("grid") for _, tr in row)


@pytest.mark.parametrize(
    "name, knobs",
    [("kalman", {"blocks.k": 3}), ("kalman", {"blocks.k": 4, "blocks.n": 2}),
     ("kalman", {"blocks.k": 3, "solver.S": "lu", "cut.k": 0.25}), ("mmse", {"blocks.n": 3}),
     ("gls", {"blocks.m": 3})],
    ids=["k3", "k4-n2", "k3-lu-uneven", "mmse-n3", "gls-m3"],
)
def test_inverted_matrices_reblocked_beyond_2x2(name, knobs):
    """3 and 4 blocks of an inverted matrix: [first | rest] with the rest's Schur complement
    a named blocked intermediate; SPD is kept, so Cholesky still serves the blocks."""
    p = load_problem(name)
    dims = _small_dims(p)
    inst = random_instance(p, dims, seed=5)
    ref = evaluate_reference(p, inst, dims)
    full = {**named_point(p, "flop-optimal", dims), **knobs}
    prog, res = _run(p, full, dims, inst)
    for out, value in zip(p.outputs, res, strict=True):
        assert relative_error(value, ref.outputs[out]) <= tolerance(
            "float64", ref.condition, max(dims.values())
        )
    if full.get("solver.S") == "cholesky_split":
        assert "cholesky" in _ops(prog) and "inv" not in _ops(prog)


def test_parenthesizations_are_catalan():
    assert [len(parenthesizations(n)) for n in range(1, 7)] == [1, 1, 2, 5, 14, 42]


def test_order_rank_visits_distinct_parenthesizations():
    p = load_problem("kalman")
    dims = {"n": 400, "k": 200}
    base = {**named_point(p, "flop-optimal", dims), "cse": False}
    flops = [derive(p, {**base, "order": r}, dims).flops(dims) for r in range(4)]
    assert flops == sorted(flops)
    assert flops[0] < flops[-1]


def test_block_sizes_cover_the_dimension():
    from autotune.formula import parse_dim_formula

    for blocks, cut in [(2, "even"), (3, "even"), (4, 0.25), (2, 0.75)]:
        sizes = block_sizes("n", blocks, cut)
        vals = [parse_dim_formula(f, "t")({"n": 1001}) for f in sizes.values()]
        assert sum(vals) == 1001 and min(vals) >= 1


@pytest.mark.parametrize(
    "knobs, match",
    [
        ({"blocks.n": 5}, "valid block counts"),
        ({"blocks.k": 5}, "valid block counts"),
        ({"blocks.k": True}, "integer"),
        ({"solver.S": "triangular"}, "valid kernels"),
        ({"order": "sideways"}, "order"),
        ({"cut.n": 1.5}, "fraction"),
        ({"nonsense": 1}, "unknown knob"),
    ],
)
def test_knobs_that_do_not_apply_are_rejected(knobs, match):
    p = load_problem("kalman")
    with pytest.raises(KnobError, match=match):
        derive(p, knobs, {"n": 40})


def test_four_blocks_of_a_three_row_dimension_rejected():
    p = load_problem("kalman")
    with pytest.raises(KnobError, match="valid block counts"):
        derive(p, {"blocks.n": 4}, {"n": 3, "k": 1})


def test_cholesky_rejected_for_non_spd_matrix():
    p = load_problem("tikhonov")  # inv(A.T*A + lam*I): SPD, fine
    derive(p, {"solver.inv1": "cholesky"}, {"n": 20})
    from autotune.spec import parse_problem

    q = parse_problem(
        """
[dims]
n = 10
[inputs]
A = { shape = ["n", "n"], properties = ["invertible"] }
b = { shape = ["n", 1] }
[outputs]
x = "inv(A)*b"
"""
    )
    with pytest.raises(KnobError, match="valid kernels"):
        derive(q, {"solver.inv1": "cholesky"})


@pytest.mark.parametrize("blocks", [{"blocks.n": 2}, {"blocks.k": 3, "blocks.n": 2}],
                         ids=["n2", "k3-n2"])
def test_blocked_derivation_is_cached_on_disk(tmp_path, monkeypatch, blocks):
    from autotune import blocking

    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path))
    p = load_problem("kalman")
    blocking._MEMORY.clear()
    from autotune.derivation import _derive_cached

    _derive_cached.cache_clear()
    dims = {"n": 40, "k": 20}
    knobs = {**named_point(p, "flop-optimal", dims), **blocks}
    first = derive(p, knobs, dims)
    files = list((tmp_path / "derivations").glob("*.json"))
    assert len(files) == 1
    blocking._MEMORY.clear()
    _derive_cached.cache_clear()
    again = derive(p, knobs, dims)  # parsed back from the cache file
    assert again.dumps() == first.dumps()
    # a damaged cache entry is re-derived, not trusted
    files[0].write_text("{broken")
    blocking._MEMORY.clear()
    _derive_cached.cache_clear()
    assert derive(p, knobs, dims).dumps() == first.dumps()


def test_explicit_inverse_of_an_spd_matrix_uses_cholesky():
    """MMSE needs cov = inv(P) itself and inv(C) inside a sum: both are formed explicitly.
    For these SPD matrices the cost model picks the Cholesky-based inverse (n^3 instead of
    LU's 2n^3), and the result matches the reference."""
    p = load_problem("mmse")
    dims = _small_dims(p)
    best = named_point(p, "flop-optimal", dims)
    prog = derive(p, best, dims)
    ops = _ops(prog)
    assert ops.count("spd_inv") == 2 and "inv" not in ops, ops
    lu = {**best, **{k: "inverse" for k, v in best.items() if v == "cholesky_inverse"}}
    assert derive(p, lu, dims).flops(dims) > prog.flops(dims)
    inst = random_instance(p, dims, seed=7)
    ref = evaluate_reference(p, inst, dims)
    tol = tolerance("float64", ref.condition, max(dims.values()))
    _, res = _run(p, best, dims, inst)
    for name, value in zip(p.outputs, res, strict=True):
        assert relative_error(value, ref.outputs[name]) <= tol, name


def test_every_solver_is_costed_from_the_kernel_registry():
    """The chain ordering costs a solve with the registry's costs of the kernels it emits:
    every solver a knob may name (except the explicit inverses, which are products) has its
    steps, and they name registered kernels; an explicit one names its inverse kernel."""
    from autotune.kernels import KERNELS
    from autotune.kernels.registry import SOLVERS
    from autotune.knobs import ALL_SOLVERS

    assert set(ALL_SOLVERS) == set(SOLVERS)
    for solver in SOLVERS.values():
        if solver.explicit:
            assert not solver.steps and solver.inverse_op in KERNELS
        else:
            assert solver.steps and all(op in KERNELS for op, _ in solver.steps)


SANDWICH = """
[problem]
name = "sandwich"
[dims]
n = 30
k = 4
[inputs]
Y = { shape = ["n", "k"] }
A = { shape = ["n", "n"] }
W = { shape = ["n", "n"], properties = ["symmetric"] }
[outputs]
Z = "Y.T*A*W*A.T*Y"
"""


def test_a_sandwich_computes_its_shared_factor_once():
    """Y.T A W A.T Y: G = A.T Y once (its transpose Y.T A is a view), then G.T (W G): three
    products where the chain read as written costs more, checked structurally and against
    the reference."""
    from autotune.spec import parse_problem

    p = parse_problem(SANDWICH)
    dims = p.resolve_dims()
    knobs = named_point(p, "flop-optimal", dims)
    inst = random_instance(p, dims, seed=2)
    prog, (z,) = _run(p, knobs, dims, inst)
    products = [prog.steps[i] for i in prog.live_steps()
                if prog.steps[i].op in ("matmul", "symprod", "syrk")]
    assert len(products) == 3, [s.label for s in products]
    n, k = dims["n"], dims["k"]
    # A.T Y and W G (2 n^2 k each), G.T (W G) (2 n k^2, or half of it by symprod)
    assert prog.flops(dims) <= 2 * (2 * n * n * k) + 2 * n * k * k
    ref = evaluate_reference(p, inst, dims)
    assert relative_error(z, ref.outputs["Z"]) <= tolerance("float64", ref.condition, n)


def test_rts_shares_its_gain_and_its_predicted_covariance():
    """The RTS smoother's Ps = P + G (Ps1 - Pp) G.T with G = P A.T inv(Pp): one solve with n
    right-hand sides (G.T = inv(Pp) A P, G its view), Ps1 - Pp from the computed Pp (the sum
    A P A.T + Q is not computed twice): fewer FLOPs than the SciPy expert's ~82.7 GFLOP."""
    p = load_problem("rts_smoother")
    dims = p.resolve_dims()
    prog = derive(p, {**named_point(p, "flop-optimal", dims), "solver.Pp": "cholesky"}, dims)
    live = [prog.steps[i] for i in prog.live_steps()]
    n = dims["n"]
    wide = [i for i in prog.live_steps()
            if prog.steps[i].op == "cho_solve" and prog.shape(i, dims)[1] == n]
    assert len(wide) == 1
    assert sum(s.op == "cholesky" for s in live) == 1
    assert sum(s.op in ("symprod", "syrk") and s.args[0] == prog.inputs["A"] for s in live) == 1
    assert prog.flops(dims) < 70e9


def test_a_positive_diagonal_between_mirrored_sides_splits_into_square_roots():
    """H.T inv(R) H with R diagonal: X = R^(-1/2) H (one row scaling of H, not of a
    transposed view) and a rank-k update, as the expert's syrk(H / sqrt(r)); every
    parenthesization (D^p D^p formed where one asks for it) still matches the reference."""
    p = load_problem("information_filter")
    big = p.resolve_dims()
    prog = derive(p, named_point(p, "flop-optimal", big), big)
    live = [prog.steps[i] for i in prog.live_steps()]
    scale = [s for s in live if s.op == "diag_mul" and s.attr("power") == -0.5]
    assert len(scale) == 1 and scale[0].args[1] == prog.inputs["H"]
    assert scale[0].attr("side") == "left"
    assert any(s.op == "syrk" and s.args[0] == prog.steps.index(scale[0]) for s in live)
    assert not any(s.op == "symprod" for s in live)
    dims = _small_dims(p)
    inst = random_instance(p, dims, seed=4)
    ref = evaluate_reference(p, inst, dims)
    tol = tolerance("float64", ref.condition, max(dims.values()))
    base = named_point(p, "flop-optimal", dims)
    for order in ("optimal", "left", "right", 1, 2, 3, 4, 5):
        _, res = _run(p, {**base, "order": order}, dims, inst)
        for out, value in zip(p.outputs, res, strict=True):
            assert relative_error(value, ref.outputs[out]) <= tol, (order, out)
