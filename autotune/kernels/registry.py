"""The kernel registry: one :class:`Kernel` record per op a :class:`~autotune.program.Program`
step may name, holding every fact about it that the rest of the package reads.

* what it computes: :attr:`Kernel.pattern` (one line, e.g. ``alpha*A.T@A + beta*C``), the
  :attr:`Kernel.properties` it needs of its operands, and :attr:`Kernel.reference`, the same
  computation in NumPy/SciPy (what the registry tests check the lowering against);
* its cost: :attr:`Kernel.cost`, a function of the operand shapes (what a derivation can ask
  before emitting a step), and :meth:`Kernel.flops` of a program's step (read by
  :meth:`Program.step_flops`);
* its lowering to PyTensor: :attr:`Kernel.lower` (read by :mod:`autotune.lower`), and
  :attr:`Kernel.pytensor_op`, the op class a pinned compile holds for it (read by
  :data:`autotune.pinned.PROGRAM_KERNELS`);
* its picture: :attr:`Kernel.label` and :meth:`Kernel.step_label`, :attr:`Kernel.family` (read
  by :mod:`autotune.graph`).

This module is light (no PyTensor, numba or NumPy at import): the records' functions import
what they need when called, so counting a program's FLOPs does not load the compilers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FAMILIES",
    "TRIANGULAR",
    "Cost",
    "Example",
    "Kernel",
    "KERNELS",
    "Operand",
    "PRIMARY",
    "SOLVERS",
    "Solver",
    "StructuredUse",
    "get_kernel",
    "register_kernel",
    "register_solver",
    "solver_choices",
    "structured_product",
]

#: Picture families (graph.py colours nodes by them).
FAMILIES = ("input", "data", "elementwise", "product", "factor", "solve")

#: Operand property "lower or upper triangular, as the step's ``lower`` attribute says".
TRIANGULAR = "triangular"


#: ``cost(operand shapes, result shape, step attributes) -> FLOPs``.
Cost = Callable[[tuple[tuple[int, int], ...], tuple[int, int], Mapping[str, Any]], float]


@dataclass(frozen=True)
class Example:
    """A sample call of a kernel, for the registry tests: concrete operand shapes (a scalar
    operand is ``()``), the step's attributes, its output shape and its hand-counted FLOPs;
    ``properties`` replaces the kernel's operand properties where the attributes change them
    (a solve with ``assume_a='pos'`` needs an SPD matrix)."""

    args: tuple[tuple[int, ...], ...]
    shape: tuple[int, int]
    flops: float
    attrs: tuple[tuple[str, Any], ...] = ()
    properties: tuple[tuple[str, ...], ...] | None = None


@dataclass(frozen=True)
class Operand:
    """A square chain factor as a product kernel may exploit it: its ``facts`` (the closed
    properties of the matrix it reads, before any transpose), its ``band`` ``(lower, upper)``
    as the factor reads it (None: no band narrower than the matrix), its size ``n`` and
    whether the factor is the matrix's transpose (``trans``)."""

    facts: frozenset[str]
    band: tuple[int, int] | None
    n: int
    trans: bool


@dataclass(frozen=True)
class StructuredUse:
    """How a product kernel uses a structured square factor: the derivation offers every
    square chain factor (an input or its transpose) to the kernels that have one, in
    increasing ``rank``, and the first whose ``match`` returns the step's attributes (not
    ``side``, which the product decides) computes every product with that factor.
    ``transposed``: the kernel reads the factor as the chain has it (a transposed view when
    the factor is a transpose) rather than the matrix with a ``trans`` attribute."""

    rank: int
    match: Callable[[Operand], Mapping[str, Any] | None]
    transposed: bool = False


@dataclass(frozen=True)
class Kernel:
    """Everything the package knows about one program op.

    ``cost(shapes, shape, attrs)`` is its FLOP count for operands of the concrete ``shapes``, a
    result of ``shape`` and the step attributes ``attrs`` (None: free, a view or a constant);
    ``lower(step, args, env, dtype)`` builds its PyTensor variable from the variables of its
    arguments. ``properties`` holds, per operand, the property names (those of
    :mod:`autotune.properties`, or :data:`TRIANGULAR`) the kernel relies on; ``reference(step,
    operands)`` computes ``pattern`` with NumPy/SciPy (None for structural ops, which are not
    computations of their own). ``knob``: the boolean knob that lets the derivation use the
    kernel, if any. ``structured``: for a product kernel that exploits a structured factor,
    how the derivation chooses it (:class:`StructuredUse`).

    What the call checks read (:mod:`autotune.checks`): ``passes_nan``, the argument positions
    a NaN or infinity of which reaches the result (None: every argument; ``()``: none, the
    conservative default; or a function of the step giving either), so that an input only
    such kernels read is vouched for by the output check; ``lower_read``, the argument
    positions of which the kernel reads only the lower triangle (a factorization, the ``c``
    of a symmetric update); ``lower_passes``, those of ``lower_read`` whose lower triangle
    passes a NaN or an infinity on (the ``c`` of a symmetric update: the other triangle is
    the symmetry checks'); ``passes_off_diagonal``, the positions of a triangular operand
    whose triangle read passes one on except on its diagonal, where an infinity can turn
    into 0 (a triangular solve's matrix: only its diagonal needs a scan)."""

    def nan_positions(self, step: Any) -> tuple[int, ...] | None:
        """The argument positions of ``step`` whose non-finite elements reach its result
        (None: all of them)."""
        return self.passes_nan(step) if callable(self.passes_nan) else self.passes_nan

    name: str
    description: str
    pattern: str
    family: str
    cost: Cost | None
    lower: Callable[[Any, list[Any], Mapping[str, int], str], Any]
    label: str = ""
    pytensor_op: str | None = None
    properties: tuple[tuple[str, ...], ...] = ()
    structural: bool = False
    reference: Callable[[Any, list[Any]], Any] | None = None
    examples: tuple[Example, ...] = ()
    step_text: Callable[[Any], str] | None = field(default=None, repr=False)
    knob: str | None = None
    structured: StructuredUse | None = None
    passes_nan: tuple[int, ...] | None | Callable[[Any], tuple[int, ...] | None] = ()
    lower_read: tuple[int, ...] = ()
    lower_passes: tuple[int, ...] = ()
    passes_off_diagonal: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.name)
        if self.family not in FAMILIES:
            raise ValueError(f"kernel {self.name!r}: family {self.family!r} is not one of "
                             f"{', '.join(FAMILIES)}")
        if not self.structural and (self.reference is None or not self.examples):
            raise ValueError(f"kernel {self.name!r} computes something: it needs a NumPy "
                             "reference and at least one example")

    def flops(self, program: Any, i: int, env: Mapping[str, int]) -> float:
        """The FLOPs of step ``i`` of ``program`` at the concrete sizes ``env``."""
        if self.cost is None:
            return 0.0
        step = program.steps[i]
        shapes = tuple(program.shape(j, env) for j in step.args)
        return self.cost(shapes, program.shape(i, env), dict(step.attrs))

    def step_label(self, step: Any) -> str:
        """The text a picture shows for ``step`` (the label, with the step's attributes where
        they matter)."""
        return self.step_text(step) if self.step_text is not None else self.label


class _Registry(Mapping[str, Kernel]):
    """Kernel name -> :class:`Kernel`, in registration order (read-only view)."""

    def __init__(self) -> None:
        self._kernels: dict[str, Kernel] = {}

    def __getitem__(self, name: str) -> Kernel:
        try:
            return self._kernels[name]
        except KeyError:
            raise KeyError(f"unknown kernel {name!r}; kernels: "
                           f"{', '.join(sorted(self._kernels))}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._kernels)

    def __len__(self) -> int:
        return len(self._kernels)

    def __repr__(self) -> str:
        return f"KERNELS({', '.join(self._kernels)})"


#: Every registered kernel, by name.
KERNELS = _Registry()


def register_kernel(kernel: Kernel, replace: bool = False) -> Kernel:
    """Add ``kernel`` to :data:`KERNELS`; a second kernel of the same name is an error unless
    ``replace``. Returns the kernel."""
    if kernel.name in KERNELS._kernels and not replace:
        raise ValueError(f"kernel {kernel.name!r} is already registered")
    KERNELS._kernels[kernel.name] = kernel
    return kernel


def get_kernel(name: str) -> Kernel:
    """The kernel named ``name``; a KeyError lists the valid names."""
    return KERNELS[name]


# -- solvers: how a matrix the formula inverts is applied ---------------------------------------

#: The property that decides which solvers a matrix is offered, in this order of precedence
#: (property names of :mod:`autotune.properties`; ``general`` when none holds): a diagonal
#: positive definite matrix is offered the diagonal solve, not Cholesky.
PRIMARY = ("diagonal", "positive_definite", "lower_triangular", "upper_triangular",
           "orthogonal", "symmetric", "general")

#: ``emit(builder, x, rhs, label) -> step``: the steps of ``inv(x) * rhs`` added to a
#: derivation's builder (:class:`autotune.derivation._Builder`: ``add``, ``emit``, ``factor``,
#: ``solve``, ``shape_of``, ``fb`` ...), the step of the result returned.
Emit = Callable[[Any, Any, int, str], int]


@dataclass(frozen=True)
class Solver:
    """One value of a ``solver.*`` knob: how ``inv(x)`` is applied.

    ``ranks`` maps a :data:`PRIMARY` property (or ``"*"``: any) to the solver's place in the
    list a matrix with that primary property is offered (lowest first: the first is the
    default); ``when(operand)`` may refuse it for a given matrix (a banded solve needs a narrow
    band). ``steps`` names the registry kernels one solve calls, with their attributes, for the
    cost model (``cost_attrs(builder, x)`` adds attributes only the matrix knows, such as its
    band). ``emit`` adds the solve to a derivation. ``factors(builder, x)``, where given,
    rewrites the chain factor ``inv(x)`` into other factors before the chain is ordered
    (``inv(S) = inv(L.T) inv(L)``, ``inv(Q) = Q.T``). An ``explicit`` solver forms the inverse
    (the ``inverse_op`` step) and multiplies by it. ``example``: the fields of an ``n x n``
    input (TOML, as in ``[inputs]``) the solver is offered for, which the registry tests
    invert with it."""

    name: str
    description: str
    ranks: Mapping[str, int]
    steps: tuple[tuple[str, Mapping[str, Any]], ...]
    emit: Emit
    when: Callable[[Operand], bool] | None = None
    factors: Callable[[Any, Any], list[Any]] | None = None
    cost_attrs: Callable[[Any, Any], Mapping[str, Any]] | None = None
    explicit: bool = False
    inverse_op: str | None = None
    example: str = ""

    def __post_init__(self) -> None:
        unknown = set(self.ranks) - set(PRIMARY) - {"*"}
        if unknown:
            raise ValueError(f"solver {self.name!r}: ranks for unknown properties "
                             f"{sorted(unknown)}; valid: {', '.join(PRIMARY)}, *")
        if self.explicit != (self.inverse_op is not None):
            raise ValueError(f"solver {self.name!r}: an explicit solver names its inverse_op "
                             "(and only it)")

    def rank(self, operand: Operand) -> int | None:
        """Where the solver stands in ``operand``'s list (None: not offered)."""
        primary = next((p for p in PRIMARY[:-1] if p in operand.facts), "general")
        rank = self.ranks.get(primary, self.ranks.get("*"))
        if rank is None or (self.when is not None and not self.when(operand)):
            return None
        return rank


#: Every registered solver, by name, in registration order.
SOLVERS: dict[str, Solver] = {}


def register_solver(solver: Solver, replace: bool = False) -> Solver:
    """Add ``solver`` to :data:`SOLVERS`; a second one of the same name is an error unless
    ``replace``; its steps must name registered kernels."""
    if solver.name in SOLVERS and not replace:
        raise ValueError(f"solver {solver.name!r} is already registered")
    for op, _ in solver.steps:
        if op not in KERNELS:
            raise ValueError(f"solver {solver.name!r}: step {op!r} is not a registered kernel")
    SOLVERS[solver.name] = solver
    return solver


def solver_choices(facts: frozenset[str], band: tuple[int, int] | None = None,
                   n: int = 0) -> list[str]:
    """The solvers offered for inverting an ``n x n`` matrix with these closed properties and
    band, best first (the first is the default)."""
    operand = Operand(frozenset(facts), band, n, False)
    ranked = [(r, i, s.name) for i, s in enumerate(SOLVERS.values())
              if (r := s.rank(operand)) is not None]
    return [name for _, _, name in sorted(ranked)]


# -- helpers shared by the family modules ------------------------------------------------------


def dim(formula: str, env: Mapping[str, int]) -> int:
    """A dimension formula of a step evaluated at ``env``."""
    from ..formula import eval_dim

    return eval_dim(formula, env)


def out_shape(step: Any, env: Mapping[str, int]) -> tuple[int, int]:
    """A step's output shape at ``env``."""
    return dim(step.shape[0], env), dim(step.shape[1], env)


def structured_product(operand: Operand) -> tuple[Kernel, Mapping[str, Any]] | None:
    """The product kernel for a chain factor ``operand`` and its step attributes (``side``
    apart): the first kernel by :attr:`StructuredUse.rank` whose ``match`` accepts it; None
    for a dense factor (GEMM)."""
    users = sorted((k for k in KERNELS.values() if k.structured is not None),
                   key=lambda k: (k.structured.rank, k.name))  # type: ignore[union-attr]
    for kernel in users:
        attrs = kernel.structured.match(operand)  # type: ignore[union-attr]
        if attrs is not None:
            return kernel, attrs
    return None
