"""Pictures of plans: the derived computation of a plan drawn as a data-flow DAG.

    autotune show results/plan-kalman-k2000-n4000-float64.json --graph kalman.svg

Nodes are the inputs (by name and shape), the kernel calls of the plan's program at the
plan's sizes (op, shape, GFLOP) and the outputs (by name); edges are data flow. A transpose
is a view, not a kernel: it is drawn as an edge labelled ``T``. Every other live step is a
node, so a picture has one node per non-transpose live step plus one per output.

The layout is computed here (layered: longest-path levels from the inputs, the nodes of a
level ordered by the barycenter of their neighbours, a few sweeps down and up) and drawn
with matplotlib, so nothing beyond pip-installed packages is needed. When Graphviz's ``dot``
binary is installed, ``engine='graphviz'`` (or ``'auto'``) renders with it instead.
The format follows the file suffix: ``.svg``, ``.png`` or ``.pdf``.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .kernels.registry import KERNELS

__all__ = ["FORMATS", "Node", "Edge", "PlanGraph", "plan_graph", "program_graph",
           "layered_layout", "draw_plan", "to_dot"]

FORMATS = (".svg", ".png", ".pdf")
ENGINES = ("auto", "matplotlib", "graphviz")

#: Node fill colour per op family (a kernel's family is in its registry record,
#: :attr:`autotune.kernels.Kernel.family`).
COLORS = {
    "input": "#cfe2f3",
    "output": "#d9ead3",
    "factor": "#f4cccc",  # cholesky, inv
    "solve": "#fff2cc",  # trsolve, cho_solve, solve, diag_solve
    "product": "#e6d5ec",  # matmul, syrk
    "elementwise": "#eeeeee",  # add, sub, neg, scale
    "data": "#ffffff",  # slice, block, eye, zeros
}


@dataclass
class Node:
    id: str
    kind: str  # "input", "kernel" or "output"
    label: str  # the text drawn (lines separated by "\n")
    family: str  # a key of COLORS
    step: int | None = None  # the program step (None for an output node)
    gflop: float = 0.0


@dataclass
class Edge:
    src: str
    dst: str
    label: str = ""  # "T": the value flows transposed


@dataclass
class PlanGraph:
    nodes: list[Node]
    edges: list[Edge]
    title: str = ""
    node_index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.node_index = {n.id: i for i, n in enumerate(self.nodes)}

    def node(self, node_id: str) -> Node:
        return self.nodes[self.node_index[node_id]]


# ---------------------------------------------------------------------------------------------
# Building the graph
# ---------------------------------------------------------------------------------------------


def _load(plan_or_path: Any):
    from .plan import Plan, read_plan

    if isinstance(plan_or_path, Plan):
        return plan_or_path
    if hasattr(plan_or_path, "plan") and isinstance(plan_or_path.plan, Plan):  # TunedFunction
        return plan_or_path.plan
    if isinstance(plan_or_path, (str, Path)):
        return read_plan(plan_or_path)
    raise TypeError(f"draw a Plan, a TunedFunction or a plan file path, not "
                    f"{type(plan_or_path).__name__}")


def _op_text(step: Any) -> str:
    """The kernel text of a step's node: its kernel's label (the kernel registry)."""
    return KERNELS[step.op].step_label(step)


def _fmt_gflop(g: float) -> str:
    flop = g * 1e9
    for scale, unit in ((1e9, "GFLOP"), (1e6, "MFLOP"), (1e3, "kFLOP")):
        if flop >= scale:
            return f"{flop / scale:.3g} {unit}"
    return f"{flop:.0f} FLOP"


def program_graph(program: Any, dims: Mapping[str, int], title: str = "") -> PlanGraph:
    """The data-flow graph of a :class:`~autotune.program.Program` at concrete ``dims``."""
    env = program.concrete_sizes(dims)
    live = program.live_steps()
    input_names = {i: name for name, i in program.inputs.items()}
    steps = program.steps

    def source(i: int) -> tuple[int, bool]:
        """The step whose value flows in, through transposes (and whether transposed)."""
        transposed = False
        while steps[i].op == "transpose":
            i = steps[i].args[0]
            transposed = not transposed
        return i, transposed

    nodes: list[Node] = []
    edges: list[Edge] = []
    for i in live:
        s = steps[i]
        if s.op == "transpose":
            continue
        r, c = program.shape(i, env)
        shape = f"{r}×{c}"
        if s.op == "input":
            name = input_names.get(i, s.attr("name", f"%{i}"))
            nodes.append(Node(f"s{i}", "input", f"{name}\n{shape}", "input", i))
            continue
        gflop = program.step_flops(i, env) / 1e9
        lines = [_op_text(s), shape]
        if gflop > 0:
            lines.append(_fmt_gflop(gflop))
        nodes.append(Node(f"s{i}", "kernel", "\n".join(lines), KERNELS[s.op].family, i,
                          gflop))
        for a in s.args:
            src, tr = source(a)
            edges.append(Edge(f"s{src}", f"s{i}", "T" if tr else ""))
    for name, i in program.outputs.items():
        src, tr = source(i)
        r, c = program.shape(i, env)
        nodes.append(Node(f"out:{name}", "output", f"{name}\n{r}×{c}", "output"))
        edges.append(Edge(f"s{src}", f"out:{name}", "T" if tr else ""))
    return PlanGraph(nodes, edges, title)


def plan_graph(plan_or_path: Any) -> PlanGraph:
    """The data-flow graph of a plan (a :class:`~autotune.plan.Plan`, a plan file or a
    :class:`~autotune.api.TunedFunction`): its program re-derived from the stored problem
    and knobs, at the plan's sizes."""
    from .derivation import derive
    from .spec import parse_problem

    plan = _load(plan_or_path)
    c = plan.content
    problem = parse_problem(c["problem"]["source"], origin=c["problem"]["origin"])
    dims = {k: int(v) for k, v in c["dims"].items()}
    program = derive(problem, c["params"], dims)
    total = program.flops(dims) / 1e9  # GFLOP
    sizes = ", ".join(f"{k}={v}" for k, v in dims.items())
    kernels = sum(1 for i in program.live_steps()
                  if program.steps[i].op not in ("input", "transpose"))
    title = (f"{problem.name} ({sizes}), {c['dtype']}, target {c['target']['name']}: "
             f"{kernels} kernel calls, {_fmt_gflop(total)}")
    return program_graph(program, dims, title)


# ---------------------------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------------------------


def layered_layout(graph: PlanGraph, sweeps: int = 4) -> dict[str, tuple[int, float]]:
    """Node id -> (level, position within the level).

    Levels are longest paths from the sources (inputs at level 0; every other node one below
    its deepest parent). Within a level the nodes are ordered by the barycenter of their
    parents' positions, then (upward sweep) of their children's, ``sweeps`` times; the
    positions are centred on 0.
    """
    parents: dict[str, list[str]] = {n.id: [] for n in graph.nodes}
    children: dict[str, list[str]] = {n.id: [] for n in graph.nodes}
    for e in graph.edges:
        parents[e.dst].append(e.src)
        children[e.src].append(e.dst)
    level: dict[str, int] = {}
    order = [n.id for n in graph.nodes]  # program order is topological; outputs come last
    for nid in order:
        ps = parents[nid]
        level[nid] = 1 + max((level[p] for p in ps), default=-1) if ps else 0
    levels: dict[int, list[str]] = {}
    for nid in order:
        levels.setdefault(level[nid], []).append(nid)
    pos: dict[str, float] = {}

    def place(lv: int) -> None:
        row = levels[lv]
        for k, nid in enumerate(row):
            pos[nid] = k - (len(row) - 1) / 2

    for lv in sorted(levels):
        place(lv)

    def sweep(lvls: list[int], neighbours: dict[str, list[str]]) -> None:
        for lv in lvls:
            row = levels[lv]
            keyed = []
            for k, nid in enumerate(row):
                ns = [pos[m] for m in neighbours[nid] if m in pos]
                keyed.append((sum(ns) / len(ns) if ns else pos[nid], k, nid))
            keyed.sort()
            levels[lv] = [nid for _, _, nid in keyed]
            place(lv)

    ordered = sorted(levels)
    for _ in range(sweeps):
        sweep(ordered[1:], parents)
        sweep(ordered[-2::-1], children)
    sweep(ordered[1:], parents)
    return {nid: (level[nid], pos[nid]) for nid in pos}


# ---------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------

_NODE_W, _NODE_H = 1.7, 0.62  # inches (data units are inches)
_DX, _DY = 2.0, 1.25
_MAX_PIXELS = 8000  # PNG: largest side


def _draw_matplotlib(graph: PlanGraph, path: Path, fmt: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection, PatchCollection, PolyCollection
    from matplotlib.patches import FancyBboxPatch

    layout = layered_layout(graph)
    n_levels = 1 + max((lv for lv, _ in layout.values()), default=0)
    width = max((sum(1 for lv2, _ in layout.values() if lv2 == lv) for lv in range(n_levels)),
                default=1)
    xy = {nid: (p * _DX, -lv * _DY) for nid, (lv, p) in layout.items()}
    fig_w = max(4.0, width * _DX + 0.6)
    fig_h = max(2.5, n_levels * _DY + 0.9)
    font = 6.5
    with matplotlib.rc_context({"svg.fonttype": "none", "pdf.fonttype": 42}):
        fig = plt.figure(figsize=(fig_w, fig_h))
        ax = fig.add_axes((0, 0, 1, 1 - 0.6 / fig_h))
        top = _NODE_H / 2 + 0.15  # one data unit is one inch in both directions
        ax.set_xlim(-fig_w / 2, fig_w / 2)
        ax.set_ylim(top - (fig_h - 0.6), top)
        ax.axis("off")
        # edges: straight segments from the bottom of the parent to the top of the child,
        # with an arrow head at the child; a repeated edge (X.T*X) is offset sideways
        segs, heads, seen = [], [], {}
        labels = []
        for e in graph.edges:
            k = seen.get((e.src, e.dst), 0)
            seen[(e.src, e.dst)] = k + 1
            off = 0.18 * k * (1 if k % 2 else -1)
            (x0, y0), (x1, y1) = xy[e.src], xy[e.dst]
            a = (x0 + off, y0 - _NODE_H / 2)
            b = (x1 + off, y1 + _NODE_H / 2)
            segs.append((a, b))
            dx, dy = b[0] - a[0], b[1] - a[1]
            norm = max(1e-9, (dx * dx + dy * dy) ** 0.5)
            ux, uy = dx / norm, dy / norm
            s = 0.09
            heads.append([b, (b[0] - s * ux - 0.45 * s * uy, b[1] - s * uy + 0.45 * s * ux),
                          (b[0] - s * ux + 0.45 * s * uy, b[1] - s * uy - 0.45 * s * ux)])
            if e.label:  # next to the arrow head: which operand flows transposed
                d = min(0.3, 0.5 * norm)
                labels.append((b[0] - d * ux, b[1] - d * uy, e.label))
        ax.add_collection(LineCollection(segs, colors="#555555", linewidths=0.6, zorder=1))
        ax.add_collection(PolyCollection(heads, facecolors="#555555", edgecolors="none",
                                         zorder=1))
        for x, y, text in labels:
            ax.text(x, y, text, fontsize=font, ha="center", va="center", color="#a61c00",
                    fontweight="bold", zorder=3,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none"})
        patches, colors = [], []
        for n in graph.nodes:
            x, y = xy[n.id]
            patches.append(FancyBboxPatch((x - _NODE_W / 2, y - _NODE_H / 2), _NODE_W, _NODE_H,
                                          boxstyle="round,pad=0,rounding_size=0.08"))
            colors.append(COLORS[n.family])
        ax.add_collection(PatchCollection(patches, facecolors=colors, edgecolors="#333333",
                                          linewidths=0.7, zorder=2))
        for n in graph.nodes:
            x, y = xy[n.id]
            weight = "bold" if n.kind != "kernel" else "normal"
            ax.text(x, y, n.label, fontsize=font, ha="center", va="center", zorder=4,
                    fontweight=weight, linespacing=1.1, gid=f"node-{n.id}")
        if graph.title:
            fig.suptitle(graph.title, fontsize=9, y=1 - 0.25 / fig_h, va="center")
        dpi = 100
        if fmt == "png":
            dpi = max(20, min(100, int(_MAX_PIXELS / max(fig_w, fig_h))))
        fig.savefig(path, format=fmt, dpi=dpi)
        plt.close(fig)


def to_dot(graph: PlanGraph) -> str:
    """The graph in Graphviz's DOT language (via the ``graphviz`` package)."""
    import graphviz

    g = graphviz.Digraph("plan", graph_attr={"rankdir": "TB", "label": graph.title,
                                             "labelloc": "t", "fontsize": "11"},
                         node_attr={"shape": "box", "style": "rounded,filled",
                                    "fontsize": "9", "fontname": "Helvetica"},
                         edge_attr={"fontsize": "8", "fontcolor": "#a61c00"})
    for n in graph.nodes:
        g.node(n.id.replace(":", "_"), n.label, fillcolor=COLORS[n.family],
               penwidth="1.5" if n.kind != "kernel" else "0.8")
    for e in graph.edges:
        g.edge(e.src.replace(":", "_"), e.dst.replace(":", "_"), label=e.label or None)
    return g.source


def _draw_graphviz(graph: PlanGraph, path: Path, fmt: str) -> None:
    import graphviz

    src = graphviz.Source(to_dot(graph))
    data = src.pipe(format=fmt)
    path.write_bytes(data)


def draw_plan(plan_or_path: Any, path: str | Path, engine: str = "auto") -> Path:
    """Draw the plan's computation as a DAG into ``path``; the format follows the suffix
    (``.svg``, ``.png`` or ``.pdf``). ``engine``: ``'matplotlib'`` (the layered layout of
    :func:`layered_layout`), ``'graphviz'`` (needs the ``dot`` binary) or ``'auto'``
    (Graphviz when ``dot`` is installed, else matplotlib). Returns the path written."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{path}: cannot draw a plan as {suffix or 'a file without a suffix'!r}"
                         f"; use one of {', '.join(FORMATS)}")
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; engines: {', '.join(ENGINES)}")
    graph = plan_graph(plan_or_path)
    has_dot = shutil.which("dot") is not None
    if engine == "graphviz" and not has_dot:
        raise ValueError("engine='graphviz' needs Graphviz's dot binary (apt-get install "
                         "graphviz); engine='matplotlib' needs nothing else")
    path.parent.mkdir(parents=True, exist_ok=True)
    if engine == "graphviz" or (engine == "auto" and has_dot):
        _draw_graphviz(graph, path, suffix[1:])
    else:
        _draw_matplotlib(graph, path, suffix[1:])
    return path
