"""The dense solvers: how a matrix the formula inverts is applied, one
:class:`~autotune.kernels.registry.Solver` record each (the values of the ``solver.*`` knobs).

Offered by the matrix's primary property, best first:

* positive definite: ``cholesky_split`` (``inv(S) = inv(L.T) inv(L)``: two triangular solves,
  and ``B.T inv(S) B`` becomes ``W.T W``), ``cholesky`` (one factorization shared by every
  solve against the matrix), ``solve_pos`` (LAPACK ``?posv``), ``cholesky_inverse`` (the
  explicit SPD inverse);
* symmetric: ``sym`` (``?sysv``); diagonal: ``diagonal``; triangular: ``triangular``
  (``?trsm``); orthogonal: ``transpose``;
* any invertible matrix: ``lu`` and, last, the explicit ``inverse``.

The banded solver lives with the banded kernels (:mod:`autotune.kernels.banded`). The
derivation asks :func:`~autotune.kernels.registry.solver_choices` for the list and calls the
chosen record's ``emit``; it names no solver.
"""

from __future__ import annotations

from typing import Any

from sympy.matrices.expressions import Inverse, Transpose

from ..properties import DIAGONAL, LOWER, ORTHOGONAL, PD, SYMMETRIC, UPPER
from . import factorizations, products, structural, triangular  # noqa: F401  (the kernels called)
from .registry import Solver, register_solver

__all__: list[str] = []


_PD = 'properties = ["positive_definite"]'


def _base(x: Any) -> Any:
    """The matrix itself when ``x`` is its transpose (a symmetric matrix's factor serves both)."""
    return x.arg if isinstance(x, Transpose) else x


def _triangular(b: Any, x: Any, rhs: int, label: str) -> int:
    shape = b.shape_of(rhs)
    if isinstance(x, Transpose):
        lower = LOWER in b.fb.facts(x.arg)
        return b.add("trsolve", (b.emit(x.arg), rhs), shape, label, lower=lower, trans=True)
    facts = b.fb.facts(x)
    lower = LOWER in facts and UPPER not in facts or DIAGONAL in facts
    return b.add("trsolve", (b.emit(x), rhs), shape, label, lower=lower, trans=False)


def _diagonal(b: Any, x: Any, rhs: int, label: str) -> int:
    return b.add("diag_solve", (b.emit(x), rhs), b.shape_of(rhs), label)


def _cholesky(b: Any, x: Any, rhs: int, label: str) -> int:
    return b.add("cho_solve", (b.factor(_base(x)), rhs), b.shape_of(rhs), label)


def _split_factors(b: Any, x: Any) -> list[Any]:
    lsym = b.cholesky_symbol(x)
    return [Inverse(Transpose(lsym)), Inverse(lsym)]


def _cholesky_split(b: Any, x: Any, rhs: int, label: str) -> int:
    lsym = b.cholesky_symbol(_base(x))
    return b.solve(Transpose(lsym), b.solve(lsym, rhs, label), label)


def _general(assume: str):
    def emit(b: Any, x: Any, rhs: int, label: str) -> int:
        return b.add("solve", (b.emit(x), rhs), b.shape_of(rhs), label, assume_a=assume)

    return emit


def _by_transpose(b: Any, x: Any, rhs: int, label: str) -> int:
    return b.add("matmul", (b.emit(Transpose(x)), rhs), b.shape_of(rhs), label)


def _explicit(b: Any, x: Any, rhs: int, label: str) -> int:
    return b.add("matmul", (b.emit(Inverse(x)), rhs), b.shape_of(rhs), label)


register_solver(Solver(
    "cholesky_split", "inv(S) = inv(L.T) inv(L): two triangular solves; B.T inv(S) B = W.T W",
    {PD: 0}, (("trsolve", {}), ("trsolve", {"trans": True})), _cholesky_split,
    factors=_split_factors, example=_PD))
register_solver(Solver(
    "cholesky", "one Cholesky factor shared by every solve against the matrix",
    {PD: 1}, (("cho_solve", {}),), _cholesky, example=_PD))
register_solver(Solver(
    "solve_pos", "LAPACK ?posv (factor and solve in one call)",
    {PD: 2}, (("solve", {"assume_a": "pos"}),), _general("pos"), example=_PD))
register_solver(Solver(
    "cholesky_inverse", "the explicit inverse through Cholesky (?potri), then a product",
    {PD: 3}, (), _explicit, explicit=True, inverse_op="spd_inv", example=_PD))
register_solver(Solver(
    "sym", "LAPACK ?sysv (symmetric indefinite)",
    {SYMMETRIC: 0}, (("solve", {"assume_a": "sym"}),), _general("sym"),
    example='properties = ["symmetric"]'))
register_solver(Solver(
    "diagonal", "a scaling by the reciprocal diagonal",
    {DIAGONAL: 0}, (("diag_solve", {}),), _diagonal, example='properties = ["diagonal"]'))
register_solver(Solver(
    "triangular", "one triangular solve (?trsm)",
    {LOWER: 0, UPPER: 0}, (("trsolve", {}),), _triangular,
    example='properties = ["upper_triangular"]'))
register_solver(Solver(
    "transpose", "inv(Q) = Q.T: a product",
    {ORTHOGONAL: 0}, (("matmul", {}),), _by_transpose,
    factors=lambda b, x: [Transpose(x)], example='properties = ["orthogonal"]'))
register_solver(Solver(
    "lu", "LU with partial pivoting (?gesv)",
    {"*": 90}, (("solve", {"assume_a": "gen"}),), _general("gen")))
register_solver(Solver(
    "inverse", "the explicit inverse (LU, ?getri), then a product",
    {"*": 99}, (), _explicit, explicit=True, inverse_op="inv"))
