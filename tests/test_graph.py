"""Pictures of plans: the layered layout drawn with matplotlib (the path needing no
Graphviz binary), the node and edge semantics, the formats and their errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from autotune.derivation import derive
from autotune.graph import (
    FORMATS,
    draw_plan,
    layered_layout,
    plan_graph,
    program_graph,
    to_dot,
)
from autotune.plan import read_plan
from autotune.space import named_point
from autotune.spec import load_problem, parse_problem

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "results" / "example-plan-kalman-n200.json"
MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".pdf": b"%PDF"}


@pytest.fixture(scope="module")
def example_program():
    plan = read_plan(EXAMPLE)
    c = plan.content
    problem = parse_problem(c["problem"]["source"], origin=c["problem"]["origin"])
    return derive(problem, c["params"], c["dims"]), c["dims"]


def _expected_nodes(program) -> int:
    live = program.live_steps()
    return sum(1 for i in live if program.steps[i].op != "transpose") + len(program.outputs)


@pytest.mark.parametrize("suffix", FORMATS)
def test_draws_the_example_plan(tmp_path, suffix, example_program):
    path = draw_plan(EXAMPLE, tmp_path / f"plan{suffix}", engine="matplotlib")
    assert path == tmp_path / f"plan{suffix}"
    data = path.read_bytes()
    assert len(data) > 1000
    if suffix == ".svg":
        text = data.decode()
        assert "<svg" in text
        # every node's text is an element with its own id: count what was drawn
        assert text.count('id="node-') == _expected_nodes(example_program[0])
        assert "newSigma" in text and "Sigma" in text
    else:
        assert data.startswith(MAGIC[suffix])


def test_node_count_is_live_steps_without_transposes_plus_outputs(example_program):
    program, dims = example_program
    g = plan_graph(EXAMPLE)
    assert len(g.nodes) == _expected_nodes(program)
    kinds = [n.kind for n in g.nodes]
    assert kinds.count("output") == 2 and kinds.count("input") == 5
    ids = {n.id for n in g.nodes}
    assert all(e.src in ids and e.dst in ids for e in g.edges)
    # transposes became edge labels
    n_transposes = sum(1 for i in program.live_steps() if program.steps[i].op == "transpose")
    assert n_transposes > 0 and any(e.label == "T" for e in g.edges)
    assert "kalman" in g.title and "numba-t2" in g.title
    # kernel labels: op, shape, FLOPs at the plan's sizes
    # the kernel applied to S (k = 100): its inverse or its Cholesky factor, whole or blocks
    s_node = next(n for n in g.nodes if n.label.startswith(("inv", "cholesky")))
    assert s_node.label.split("\n")[1] in ("100×100", "50×50")
    assert s_node.label.endswith("FLOP") and s_node.gflop > 0


def test_layout_levels_follow_the_data_flow():
    problem = load_problem("kalman")
    dims = {"n": 12, "k": 6}
    program = derive(problem, named_point(problem, "flop-optimal", dims), dims)
    g = program_graph(program, dims)
    layout = layered_layout(g)
    assert set(layout) == {n.id for n in g.nodes}
    for e in g.edges:
        assert layout[e.src][0] < layout[e.dst][0], e
    for n in g.nodes:
        if n.kind == "input":
            assert layout[n.id][0] == 0
    by_level: dict[int, list[float]] = {}
    for level, pos in layout.values():
        by_level.setdefault(level, []).append(pos)
    for positions in by_level.values():
        assert len(set(positions)) == len(positions)  # no two nodes on one spot
    # the Cholesky-split candidate: a factorization, triangular solves and a rank-k update
    ops = {n.label.split("\n")[0].split(" ")[0] for n in g.nodes if n.kind == "kernel"}
    assert {"cholesky", "trsolve", "syrk"} <= ops


def test_accepts_a_plan_object(tmp_path):
    path = draw_plan(read_plan(EXAMPLE), str(tmp_path / "sub" / "p.svg"), engine="matplotlib")
    assert path.exists() and path.parent.name == "sub"


def test_bad_suffix_and_engine(tmp_path):
    with pytest.raises(ValueError, match=r"\.svg, \.png, \.pdf"):
        draw_plan(EXAMPLE, tmp_path / "plan.jpg")
    with pytest.raises(ValueError, match=r"\.svg, \.png, \.pdf"):
        draw_plan(EXAMPLE, tmp_path / "plan")
    with pytest.raises(ValueError, match="engine"):
        draw_plan(EXAMPLE, tmp_path / "plan.svg", engine="tikz")
    with pytest.raises(TypeError):
        draw_plan(42, tmp_path / "plan.svg")
    assert not list(tmp_path.iterdir())


def test_dot_source(example_program):
    g = plan_graph(EXAMPLE)
    src = to_dot(g)
    assert src.startswith("digraph")
    assert src.count("fillcolor=") == len(g.nodes)


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot binary is not installed")
def test_graphviz_engine(tmp_path):
    path = draw_plan(EXAMPLE, tmp_path / "plan.svg", engine="graphviz")
    assert "<svg" in path.read_text()


def test_cli_show_graph(tmp_path):
    from click.testing import CliRunner

    from autotune.cli import main

    out = tmp_path / "plan.svg"
    result = CliRunner().invoke(main, ["show", str(EXAMPLE), "--graph", str(out)])
    assert result.exit_code == 0, result.output
    assert str(out) in result.output and "<svg" in out.read_text()
