"""Bounded work on any input: every pathological problem gets a clear error naming the field
(and the limit or the valid choices) within seconds, or tunes; nothing hangs, memory stays
within an estimate.

The guards against exponential behaviour assert on counts that grow linearly (distinct nodes,
canonical forms computed, steps) where they can, and on generous wall-clock bounds otherwise:
the inputs here would take minutes to hours (or never finish) if any stage walked the
written-out tree instead of the shared nodes.
"""

from __future__ import annotations

import importlib
import time
import tracemalloc

import numpy as np
import pytensor
import pytest
import sympy as sp
from sympy.matrices.expressions import Identity, Inverse, MatAdd, MatMul

from autotune import blocking, properties
from autotune.blocking import _inverses, blocked_size
from autotune.derivation import derive, parenthesizations
from autotune.errors import AutotuneError, DerivationError, ResourceError, SpecError
from autotune.formula import (
    MAX_FACTORS,
    MAX_LENGTH,
    MAX_NODES,
    MAX_WORK,
    chain_length,
    tree_size,
)
from autotune.instances import (
    available_memory,
    check_fits,
    estimate_bytes,
    memory_estimate,
    random_instance,
)
from autotune.lower import lower
from autotune.properties import FactBase, canonical
from autotune.reference import evaluate_reference, relative_error, tolerance
from autotune.spec import _PARSED, RESERVED, Problem, load_problem, parse_problem

derive_mod = importlib.import_module("autotune.derivation")

#: what any refusal here must take at most (the slowest, the 16-level nested definitions, is
#: refused in about a second; unbounded, it would take hours)
QUICK = 30.0


def nested(levels: int, first: str, step: str, n: int = 8) -> str:
    """``D1 = first``, ``D<i> = step`` with ``P`` standing for ``D<i-1>``, output ``X =
    D<levels>``."""
    lines = [
        f'[problem]\nname = "nested"\n[dims]\nn = {n}\n[inputs]',
        'A = { shape = ["n", "n"] }',
        'B = { shape = ["n", "n"] }',
        "[definitions]",
        f'D1 = "{first}"',
    ]
    for i in range(2, levels + 1):
        lines.append(f'D{i} = "{step.replace("P", f"D{i - 1}")}"')
    lines.append(f'[outputs]\nX = "D{levels}"')
    return "\n".join(lines) + "\n"


def chain(factors: int, n: int = 8) -> str:
    product = "*".join("A" if i % 2 == 0 else "B" for i in range(factors))
    return (
        f'[problem]\nname = "chain"\n[dims]\nn = {n}\n[inputs]\nA = {{ shape = ["n", "n"] }}\n'
        f'B = {{ shape = ["n", "n"] }}\n[outputs]\nX = "{product}"\n'
        "[search]\nblocks = { n = [1, 2] }\n"
    )


def _problem_text(name: str = "p", inputs: str = 'A = { shape = [2, 2] }', out: str = "A",
                  dims: str = "") -> str:
    return (f'[problem]\nname = "{name}"\n[dims]\n{dims}\n[inputs]\n{inputs}\n'
            f'[outputs]\nX = "{out}"\n')


def _memory(problem_text: str):
    def run():
        return random_instance(parse_problem(problem_text, origin="big.toml"))

    return run


BAD = [
    # (id, the call, error class, substrings of the message's first line)
    (
        "nested-definitions-16-levels",
        lambda: parse_problem(nested(16, "A + B", "A*P + P*B"), origin="nest.toml"),
        SpecError,
        ["nest.toml: definitions.D", "formula too large", f"limit of {MAX_NODES}"],
    ),
    (
        "squared-definitions-16-levels",  # (A*B)**32768: a chain of 32768 factors
        lambda: parse_problem(nested(16, "A*B", "P*P"), origin="sq.toml"),
        SpecError,
        ["sq.toml: definitions.D8", "product of 128 matrix factors", f"limit of {MAX_FACTORS}"],
    ),
    (
        "product-of-5000-factors",
        lambda: parse_problem(chain(5000), origin="chain.toml"),
        SpecError,
        ["chain.toml: outputs.X", f"{MAX_FACTORS + 1} matrix factors", f"limit of {MAX_FACTORS}"],
    ),
    (
        "formula-too-long",
        lambda: parse_problem(_problem_text(out="A + " * 30000 + "A"), origin="long.toml"),
        SpecError,
        ["long.toml: outputs.X", "120001 characters", f"limit of {MAX_LENGTH}"],
    ),
    (
        "formula-too-costly",  # each '+ D6' or '- D6' walks D6's written-out tree again
        lambda: parse_problem(
            nested(6, "A + B", "A*P + P*B").replace('X = "D6"', 'X = "D6' + " + D6 - D6" * 200
                                                   + '"'),
            origin="costly.toml",
        ),
        SpecError,
        ["costly.toml: outputs.X", "too costly to build", f"limit of {MAX_WORK}"],
    ),
    (
        "blocked-60-factor-chain",
        lambda: derive(parse_problem(chain(60)), {"blocks.n": 2}),
        DerivationError,
        ["blocks.n = 2", "block terms", "limit of", "use fewer blocks"],
    ),
    (
        "dims-formula-n-times-a-million",
        _memory(_problem_text(
            inputs='A = { shape = ["k", "n"] }\nb = { shape = ["k", 1] }',
            out="A.T*b", dims='n = 1000\nk = "n*1000000"',
        )),
        ResourceError,
        ["big.toml", "n=1000, k=1000000000", "input A", "1000000000x1000", "available"],
    ),
    (
        "n-a-billion",
        _memory(_problem_text(
            inputs='A = { shape = ["n", "n"] }\nb = { shape = ["n", 1] }', out="A*b",
            dims="n = 1000000000",
        )),
        ResourceError,
        ["big.toml", "n=1000000000", "input A", "1000000000x1000000000", "available"],
    ),
    (
        "name-with-slash",
        lambda: parse_problem(_problem_text(name="a/b"), origin="p.toml"),
        SpecError,
        ["p.toml: [problem].name", "'a/b'", "'/'", "letters, digits"],
    ),
    (
        "name-of-300-characters",
        lambda: parse_problem(_problem_text(name="x" * 300), origin="p.toml"),
        SpecError,
        ["p.toml: [problem].name", "300 characters", "at most 100"],
    ),
    (
        "name-starting-with-dot",
        lambda: parse_problem(_problem_text(name=".hidden"), origin="p.toml"),
        SpecError,
        ["p.toml: [problem].name", "must not start with '.' or '-'"],
    ),
    (
        "input-named-T",
        lambda: parse_problem(_problem_text(inputs='T = { shape = [2, 2] }', out="T"),
                              origin="p.toml"),
        SpecError,
        ["p.toml: inputs.T", "'T' is reserved", *sorted(RESERVED)],
    ),
    (
        "definition-named-I",
        lambda: parse_problem(_problem_text() + '[definitions]\nI = "A"\n', origin="p.toml"),
        SpecError,
        ["p.toml: [definitions].I", "reserved", *sorted(RESERVED)],
    ),
]


@pytest.mark.parametrize("call,cls,parts", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_inputs_get_a_clear_error_quickly(call, cls, parts):
    start = time.perf_counter()
    with pytest.raises(AutotuneError) as info:
        call()
    elapsed = time.perf_counter() - start
    assert isinstance(info.value, cls), info.value
    first = str(info.value).splitlines()[0]
    for part in parts:
        assert part in first, f"{part!r} not in {first!r}"
    assert elapsed < QUICK, elapsed


def test_reserved_names_are_all_listed():
    assert {"inv", "transpose", "eye", "I", "T"} == RESERVED


@pytest.mark.parametrize("name", ["kalman-v2.1", "a_b", "A1", "x" * 100, "_private"])
def test_valid_problem_names(name):
    assert parse_problem(_problem_text(name=name)).name == name


@pytest.mark.parametrize(
    "origin,expected",
    [("dir/my problem.toml", "my_problem"), ("a/-x.yaml", "p-x"), ("<string>", "problem")],
)
def test_default_name_from_the_file_is_made_valid(origin, expected):
    text = 'inputs:\n  A: {shape: [2, 2]}\noutputs:\n  X: A\n'
    assert parse_problem(text, origin=origin, fmt="yaml").name == expected


# -- nested definitions: shared sub-expressions stay shared ------------------------------------


def test_the_literal_nested_example_parses_and_derives():
    """The issue's example: D1 = A + A, D2 = D1*D1, D3 = D2 + D2, ... D16, X = D16."""
    start = time.perf_counter()
    lines = ['[problem]\nname = "n16"\n[dims]\nn = 8\n[inputs]\nA = { shape = ["n", "n"] }',
             "[definitions]", 'D1 = "A + A"']
    for i in range(2, 17):
        op = "*" if i % 2 == 0 else " + "
        lines.append(f'D{i} = "D{i - 1}{op}D{i - 1}"')
    lines.append('[outputs]\nX = "D16"')
    p = parse_problem("\n".join(lines) + "\n")
    program = derive(p, {})
    assert len(program.steps) < 40  # about one step per level, not 2**16
    assert time.perf_counter() - start < 10.0


def _dag(levels: int, a: sp.Basic, b: sp.Basic) -> sp.Basic:
    """D_i = A*D_(i-1) + D_(i-1)*B, built with SymPy's constructors (no tree walk): a DAG of
    3 nodes per level whose written-out tree doubles at every level."""
    d = a
    for _ in range(levels):
        d = MatAdd(MatMul(a, d), MatMul(d, b))
    return d


def test_sizes_are_counted_on_the_shared_nodes():
    n = sp.Symbol("n", integer=True, positive=True)
    a, b = sp.MatrixSymbol("A", n, n), sp.MatrixSymbol("B", n, n)
    d = _dag(60, a, b)
    # tree(D_i) = 3 + 2 tree(D_(i-1)) + 2 tree(A): about 2**62 nodes, counted exactly
    assert tree_size(d) > 2**62
    assert chain_length(MatMul(a, d, b)) == 3
    assert _inverses(MatMul(Inverse(d), b)) == [d]


def test_canonical_forms_are_computed_once_per_distinct_node(monkeypatch):
    n = sp.Symbol("n", integer=True, positive=True)
    a, b = sp.MatrixSymbol("A", n, n), sp.MatrixSymbol("B", n, n)
    calls = []
    original = properties._canonical
    monkeypatch.setattr(properties, "_canonical", lambda e, fb: calls.append(e) or original(e, fb))
    counts = []
    for levels in (20, 40):
        calls.clear()
        fb = FactBase()
        fb.declare(a, {"symmetric"})
        canonical(sp.Transpose(_dag(levels, a, b)), fb)
        counts.append(len(calls))
    # linear in the levels (the tree has 2**40 nodes): twice the levels, about twice the calls
    assert counts[1] <= 2 * counts[0] + 10, counts


def test_a_deep_dag_derives_and_evaluates_in_linear_time(monkeypatch):
    """40 levels (a written-out tree of 10**13 nodes) through every stage after the parser:
    property inference, canonical forms, the derivation, the reference, the estimates."""
    p = parse_problem(
        '[problem]\nname = "dag"\n[dims]\nn = 6\n[inputs]\nA = { shape = ["n", "n"] }\n'
        'B = { shape = ["n", "n"] }\n[outputs]\nX = "A*B"\nY = "inv(A)*B"\n'
    )
    a, b = p.symbols["A"], p.symbols["B"]
    d = _dag(40, a, b)
    eye = Identity(p.dim_symbols["n"])
    exprs = {"X": MatMul(Inverse(MatAdd(d, eye)), d), "Y": MatMul(Inverse(d), b)}
    # the parser refuses formulas this large; inject the DAG where the parse would be kept
    monkeypatch.setitem(_PARSED, p._formula_key(), exprs)
    p.__dict__.pop("expressions", None)
    start = time.perf_counter()
    program = derive(p, {})
    assert len(program.steps) < 10 * 40  # a few steps per level
    inst = random_instance(p, seed=0)
    ref = evaluate_reference(p, inst)
    assert set(ref.outputs) == {"X", "Y"} and len(ref.conditions) == 2
    assert memory_estimate(p).total > 0 and blocked_size(p, {"n": 2}) > 10**20
    assert time.perf_counter() - start < 10.0
    # blocking it is refused before SymPy expands anything
    with pytest.raises(DerivationError, match="block terms"):
        derive(p, {"blocks.n": 2})
    # without shared sub-expressions the program would be a tree: refused at MAX_STEPS
    monkeypatch.setattr(derive_mod, "MAX_STEPS", 500)
    with pytest.raises(DerivationError, match=r"more than 500 steps.*cse = true"):
        derive(p, {"cse": False})


def test_nested_definitions_parse_in_time_linear_in_the_tree(monkeypatch):
    """Below the limit, parsing grows with the written-out tree (SymPy builds every sum and
    product by walking it), and each later stage with the distinct nodes."""
    calls = []
    original = properties._canonical
    monkeypatch.setattr(properties, "_canonical", lambda e, fb: calls.append(e) or original(e, fb))
    counts: dict[str, list[int]] = {"as_written": [], "cheapest": []}
    for rewrite, found in counts.items():
        for levels in (4, 6):
            calls.clear()
            p = parse_problem(nested(levels, "A + B", "A*P + P*B", n=5 + levels))
            derive(p, {"rewrite": rewrite})
            found.append(len(calls))
    # two more levels quadruple the tree; the canonical forms grow by a few per level, and the
    # rewrite rules' variants (at most rules.MAX_VARIANTS, each a few new nodes per level) add
    # a bounded number per level: both well below the tree's growth
    assert counts["as_written"][1] < 1.6 * counts["as_written"][0], counts
    assert counts["cheapest"][1] < 2.5 * counts["cheapest"][0], counts


# -- chains ------------------------------------------------------------------------------------


def test_the_longest_chain_allowed_derives_quickly_in_small_memory():
    p = parse_problem(chain(MAX_FACTORS))
    tracemalloc.start()
    start = time.perf_counter()
    try:
        for order in ("optimal", "left"):
            program = derive(p, {"order": order})
            assert sum(s.op == "matmul" for s in program.steps) == MAX_FACTORS - 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < QUICK
    assert peak < 100e6, peak


def test_parenthesizations_refuse_exponential_enumeration():
    assert len(parenthesizations(10)) == 4862
    with pytest.raises(DerivationError, match="Catalan"):
        parenthesizations(30)


# -- memory --------------------------------------------------------------------------------------


def test_memory_estimate_matches_the_instance_and_bounds_the_reference():
    p = load_problem("kalman")
    dims = p.resolve_dims({"n": 200})
    est = memory_estimate(p, dims)
    tracemalloc.start()
    try:
        inst = random_instance(p, dims, seed=0)
        evaluate_reference(p, inst, dims)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert est.inputs == sum(v.nbytes for v in inst.values() if isinstance(v, np.ndarray))
    assert peak <= est.total <= 4 * peak, (peak, est)
    assert estimate_bytes(p, dims) == est.total
    assert memory_estimate(p, dims, "float32").inputs == est.inputs // 2


def test_nothing_is_allocated_when_it_cannot_fit(monkeypatch):
    p = load_problem("kalman")
    monkeypatch.setattr("autotune.instances.available_memory", lambda: 10**6)
    tracemalloc.start()
    try:
        with pytest.raises(ResourceError) as info:
            random_instance(p, {"n": 1000})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    msg = str(info.value)
    assert "n=1000, k=500" in msg and "977 KiB of memory available" in msg, msg
    assert peak < 10**6  # not one 1000x1000 matrix (8 MB) was allocated


def test_check_fits_returns_the_estimate():
    p = load_problem("kalman")
    est = check_fits(p, {"n": 100}, available=10**12)
    assert est.total == estimate_bytes(p, {"n": 100})
    with pytest.raises(ResourceError, match=r"kalman.toml: problem 'kalman' at n=100, k=50"):
        check_fits(p, {"n": 100}, available=1000)
    avail = available_memory()
    assert avail is None or avail > 0


# -- zero and identity blocks --------------------------------------------------------------------

STRUCTURED = """
[problem]
name = "structured"
[dims]
n = 9
[inputs]
L = { shape = ["n", "n"], properties = ["lower_triangular", "invertible"] }
U = { shape = ["n", "n"], properties = ["upper_triangular"] }
E = { shape = ["n", "n"], properties = ["identity"] }
G = { shape = ["n", "n"], properties = ["diagonal", "invertible"] }
B = { shape = ["n", "n"] }
[outputs]
X = "L"
Y = "inv(L)*B"
Z = "L*B + U"
W = "inv(L)"
V = "E*B + E"
Q = "inv(G)*B + G"
[search]
blocks = { n = [1, 2, 3] }
"""


@pytest.mark.parametrize("blocks", [2, 3])
def test_zero_and_identity_blocks_are_dropped_and_compute_the_right_values(
    blocks, tmp_path, monkeypatch
):
    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(blocking, "_MEMORY", {})
    p = parse_problem(STRUCTURED)
    program = derive(p, {"blocks.n": blocks})
    ops = [s.op for s in program.steps]
    assert "zeros" in ops  # the zero blocks of the outputs L and inv(L)
    assert "trsolve" in ops and "solve" not in ops  # triangular blocks stay triangular
    # read back from the disk cache: the same program
    blocking._MEMORY.clear()
    derive_mod._derive_cached.cache_clear()
    assert derive(p, {"blocks.n": blocks}).steps == program.steps
    dims = p.resolve_dims()
    inst = random_instance(p, dims, seed=2)
    ref = evaluate_reference(p, inst, dims)
    ins, outs = lower(p, program, dims)
    # the identity input E is never read: its blocks are identities and zeros
    f = pytensor.function(ins, outs, mode="FAST_COMPILE", on_unused_input="ignore")
    values = f(*[inst[n] for n in p.inputs])
    tol = tolerance("float64", ref.condition, 9)
    for name, value in zip(p.outputs, values, strict=True):
        assert relative_error(value, ref.outputs[name]) <= tol, name


def test_an_inverted_zero_block_is_a_derivation_error():
    from autotune.blocking import drop_zeros

    z = sp.ZeroMatrix(3, 3)
    a = sp.MatrixSymbol("A", 3, 3)
    assert drop_zeros(MatAdd(a, MatMul(a, z))) == a
    assert drop_zeros(MatMul(a, z, a)) == z
    with pytest.raises(DerivationError, match="zero block is singular"):
        drop_zeros(MatMul(Inverse(MatAdd(z, MatMul(a, z))), a))


def test_from_sympy_refuses_a_dag_too_large_to_write_out():
    n = sp.Symbol("n", integer=True, positive=True)
    a, b = sp.MatrixSymbol("A", n, n), sp.MatrixSymbol("B", n, n)
    start = time.perf_counter()
    with pytest.raises(SpecError, match=r"from_sympy: output 'X' written out .* nodes"):
        Problem.from_sympy({"X": _dag(30, a, b)}, dims={n: 4})
    assert time.perf_counter() - start < QUICK
