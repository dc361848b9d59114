"""What is compiled is what was chosen: PyTensor modes that keep the derivation's kernels.

PyTensor's default rewrites re-decide the linear algebra a graph states. With assumptions, an
explicit inverse compiles to a Cholesky and a CholeskySolve (``inv_to_solve``,
``psd_solve_to_chol_solve``); without them to LU + Solve; two triangular solves with the same
factor become one CholeskySolve (``paired_triangular_solves_to_cho_solve``); and the merge
pass shares duplicate subgraphs, so a candidate derived with ``cse=False`` computes its
repeated products once anyway. Knob values then measure the same program, and a baseline's
FLOP count describes a computation that never runs.

So a candidate is compiled in a *pinned* mode (:func:`pinned_mode`): every rewrite PyTensor
defines in ``pytensor.tensor.rewriting.linalg`` (the rewrites that choose kernels), plus the
merge passes, are excluded. The derivation has already chosen the kernels and decided what
to share; PyTensor's other rewrites (elementwise fusion, in-place destruction, BLAS calls
for products) still apply. The set is read from PyTensor's rewrite database when the mode is
first built, so a kernel-choosing rewrite a later PyTensor adds is excluded too; the names
the project relies on are listed in :data:`REQUIRED_EXCLUSIONS` and checked to exist, so a
rename in PyTensor fails loudly instead of silently compiling something else.

``rewrites="pytensor"`` keeps PyTensor's own choices: the peer row "PyTensor with the
declared assumptions and its own rewrites" in the comparison.

:func:`graph_fingerprint` names a compiled graph (two candidates with the same fingerprint
are one program and are measured once); :func:`kernel_counts` counts its kernels, for the
structural tests and for the plan record.
"""

from __future__ import annotations

import functools
import hashlib
from collections import Counter
from typing import Any

from .kernels.registry import KERNELS

__all__ = [
    "REWRITE_MODES",
    "REQUIRED_EXCLUSIONS",
    "MERGE_PASSES",
    "OTHER_KERNEL_CHOICES",
    "PARTIAL_EVALUATION",
    "PROGRAM_KERNELS",
    "excluded_rewrites",
    "pinned_mode",
    "graph_fingerprint",
    "kernel_counts",
    "program_kernel_counts",
]

#: ``chosen``: compile what the derivation chose; ``pytensor``: PyTensor's own rewrites.
REWRITE_MODES = ("chosen", "pytensor")

#: Rewrites known to replace the derivation's kernels (PyTensor 2.3x / 3.x names).
REQUIRED_EXCLUSIONS = (
    "inv_to_solve",
    "psd_solve_to_chol_solve",
    "generic_solve_to_structured_form",
    "generic_solve_to_solve_triangular",
    "reuse_decomposition_multiple_solves",
    "paired_triangular_solves_to_cho_solve",
)

#: Rewrites that evaluate only the part of a value a slice reads (``(A @ B)[i, j]`` ->
#: ``A[i] @ B[:, j]``): partial access is the derivation's choice (the rules
#: ``slice_of_product``, ``slice_of_sum``), so the formula as written computes it all.
PARTIAL_EVALUATION = ("local_subtensor_of_dot", "local_subtensor_of_batch_dims")

#: Kernel choices PyTensor makes outside its linear-algebra package: a product with a
#: diagonal operand (by assumption) or a 1x1 one becomes an elementwise scaling. The
#: derivation makes these choices itself (``diag_mul``, ``scale``).
OTHER_KERNEL_CHOICES = ("dot_diag_to_elemwise", "local_dot_to_mul")

#: The merge passes (PyTensor's common-subexpression elimination).
MERGE_PASSES = ("merge1", "merge1.1", "merge1.2", "merge2", "merge3", "MergeOptimizer")

_LINALG_REWRITES = "pytensor.tensor.rewriting.linalg"

#: Program op -> the PyTensor op class that computes it in a pinned compile: each kernel's
#: :attr:`~autotune.kernels.Kernel.pytensor_op` in the kernel registry. Products (``matmul``)
#: have none: the backends' BLAS passes turn ``Dot`` into ``Gemm``/``Dot22``.
PROGRAM_KERNELS: dict[str, str] = {
    name: k.pytensor_op for name, k in KERNELS.items() if k.pytensor_op is not None
}


def _rewriter_module(obj: Any) -> str:
    for attr in ("fn", "transform"):
        f = getattr(obj, attr, None)
        if f is not None and getattr(f, "__module__", None):
            return str(f.__module__)
    return type(obj).__module__


@functools.cache
def excluded_rewrites() -> tuple[str, ...]:
    """Names of every rewrite PyTensor registers from its linear-algebra rewriting package
    and the :data:`PARTIAL_EVALUATION` rewrites (these and :data:`REQUIRED_EXCLUSIONS`
    checked to be registered)."""
    from pytensor.compile.mode import optdb
    from pytensor.graph.rewriting.db import RewriteDatabase

    seen: set[int] = set()
    names: set[str] = set()

    def walk(db: Any) -> None:
        for objs in db.__db__.values():
            for obj in objs:
                if id(obj) in seen:
                    continue
                seen.add(id(obj))
                if isinstance(obj, RewriteDatabase):
                    walk(obj)
                else:
                    name = getattr(obj, "name", None) or getattr(obj, "__name__", None)
                    if name and (_rewriter_module(obj).startswith(_LINALG_REWRITES)
                                 or name in PARTIAL_EVALUATION
                                 or name in OTHER_KERNEL_CHOICES):
                        names.add(str(name))

    walk(optdb)
    missing = [n for n in (*REQUIRED_EXCLUSIONS, *PARTIAL_EVALUATION, *OTHER_KERNEL_CHOICES)
               if n not in names]
    if missing:  # pragma: no cover - depends on the PyTensor version
        raise RuntimeError(
            f"PyTensor no longer registers the rewrites {missing}: "
            "autotune cannot pin the compiled kernels; update autotune.pinned"
        )
    return tuple(sorted(names))


def pinned_mode(mode: Any, rewrites: str = "chosen") -> Any:
    """``mode`` without the kernel-choosing and merge rewrites (``rewrites="chosen"``), or
    unchanged (``"pytensor"``)."""
    if rewrites not in REWRITE_MODES:
        raise ValueError(f"rewrites={rewrites!r}; valid: {', '.join(REWRITE_MODES)}")
    if rewrites == "pytensor":
        return mode
    return mode.excluding(*excluded_rewrites(), *MERGE_PASSES)


def _fgraph(fn: Any) -> Any:
    f = getattr(fn, "function", fn)  # a CompiledFunction or a PyTensor Function
    return f.maker.fgraph


def kernel_counts(fn: Any) -> Counter[str]:
    """Op class name -> number of nodes in the compiled graph of ``fn`` (an op the project's
    late rewrites put in place of PyTensor's, for the same kernel, counted under PyTensor's
    name: :data:`SAME_KERNEL`)."""
    return Counter(SAME_KERNEL.get(n, n)
                   for n in (type(node.op).__name__ for node in _fgraph(fn).toposort()))


#: The project's op -> the PyTensor op whose kernel it computes in its place (a late Numba
#: rewrite chooses it by memory layout, not by kernel).
SAME_KERNEL = {"LowerCholesky": "Cholesky", "DenseSolve": "Solve"}


def program_kernel_counts(program: Any) -> Counter[str]:
    """The kernels a :class:`~autotune.program.Program` states, as PyTensor op class names
    (what :func:`kernel_counts` of its pinned compile must hold)."""
    out: Counter[str] = Counter()
    for i in program.live_steps():
        kernel = KERNELS.get(program.steps[i].op)
        name = kernel.pytensor_op if kernel is not None else None
        if name:
            out[name] += 1
    return out


def graph_fingerprint(fn: Any) -> str:
    """A digest of the compiled graph: its nodes in topological order, each op with its
    parameters, the positions of its inputs and the types of its outputs. Two compiles with
    the same fingerprint run the same program."""
    fgraph = _fgraph(fn)
    ids: dict[Any, str] = {}
    for i, v in enumerate(fgraph.inputs):
        ids[v] = f"i{i}:{v.type}"
    lines = []
    for k, node in enumerate(fgraph.toposort()):
        args = []
        for v in node.inputs:
            if v not in ids:  # a constant
                data = getattr(v, "data", None)
                ids[v] = f"c:{v.type}:{hashlib.sha256(repr(data).encode()).hexdigest()[:12]}"
            args.append(ids[v])
        for j, out in enumerate(node.outputs):
            ids[out] = f"n{k}.{j}"
        props = getattr(node.op, "_props_dict", None)
        params = repr(sorted(props().items())) if callable(props) else str(node.op)
        lines.append(f"{type(node.op).__name__}{params}({','.join(args)})->"
                     + ",".join(str(o.type) for o in node.outputs))
    lines.append("out:" + ",".join(ids.get(o, "?") for o in fgraph.outputs))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
