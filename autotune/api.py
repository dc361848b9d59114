"""Tuned plans in production code: load once, call like a function.

    from autotune import load_plan
    kalman = load_plan("results/plan-kalman-k2000-n4000-float64.json")
    newmu, newSigma = kalman(mu=mu, Sigma=Sigma, H=H, R=R, data=data)

The plan's problem text is re-parsed with the safe parser and the computation re-derived
from the stored knobs (never pickle, never eval), then compiled once for the stored target.
Calls check their inputs (names, shapes, dtypes, finiteness, the properties the plan relies
on) and raise errors naming the input; they are safe from several threads. The checks cost
next to nothing (:mod:`autotune.checks`): outputs are checked for NaN and infinity and the
inputs searched for the culprit only when one is found; before the call, one pass without
temporaries over what no output can vouch for (a symmetric input's two triangles, a
triangular input's zeros, a matrix that is only factorized).

Loading refuses a damaged or foreign plan with a :class:`PlanError` naming the field: the
schema (:mod:`autotune.plan`), then what only the problem can tell (:func:`check_plan`: the
stored problem re-parses and matches, the knobs are in its knob space), then any failure to
re-derive, lower or compile. Knob, kernel or target names from another autotune version are
refused with the command that re-tunes the plan.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import AutotuneError, PlanError
from .plan import Plan, field_path, read_plan, retune_hint

__all__ = ["load_plan", "find_plan", "check_plan", "TunedFunction", "InputError", "PlanWarning"]


class InputError(AutotuneError, ValueError):
    """An array passed to a tuned function is missing, extra, mis-shaped or invalid."""


class PlanWarning(UserWarning):
    """A plan runs here, but was tuned elsewhere (other machine or library versions)."""


#: Plans computing fewer FLOPs skip the BLAS thread limit (see ``TunedFunction._setup_call``).
SMALL_WORK_FLOPS = 1e5
#: Outputs of at most this many elements are checked for finiteness in Python.
SMALL_OUTPUT = 16
_MISSING = object()
#: The call checks' budget: this share of the plan's median call, or CHECK_FLOOR_S seconds,
#: whichever is larger (see ``TunedFunction._property_windows``).
CHECK_SHARE = 0.02
CHECK_FLOOR_S = 20e-6
#: The rate at which the budget is taken to read memory (a conservative single-thread read
#: out of cache on the machines of ``results/CALL_CHECKS.md`` ran at 11-15 GB/s).
CHECK_BYTES_PER_S = 8e9
#: The fewest rows a window of property checks has.
MIN_WINDOW = 1
#: The fewest rows of a block of a windowed symmetry check (see ``checks.symmetry_block``).
MIN_BLOCK = 8
#: What a block's symmetry check costs beyond its elements, per row of the block: the
#: cache lines where its row pieces start and its diagonal elements.
BLOCK_ROW_BYTES = 256
#: The slowest read rate the checks' budget is ever taken at (``TunedFunction._steer``).
MIN_CHECK_RATE = 1e8


class Outputs(tuple):
    """The outputs in declared order; also by name (``out.newSigma`` or ``out['newSigma']``)."""

    _names: tuple[str, ...]

    def __new__(cls, names: Sequence[str], values: Sequence[np.ndarray]) -> Outputs:
        obj = super().__new__(cls, values)
        obj._names = tuple(names)
        return obj

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            try:
                return tuple.__getitem__(self, self._names.index(key))
            except ValueError:
                raise KeyError(f"no output {key!r}; outputs: {', '.join(self._names)}") from None
        return tuple.__getitem__(self, key)

    def __getattr__(self, name: str) -> np.ndarray:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(str(exc)) from None

    def asdict(self) -> dict[str, np.ndarray]:
        return dict(zip(self._names, self, strict=True))


def _fingerprint_differences(stored: Mapping[str, Any], here: Mapping[str, Any]) -> list[str]:
    diffs = []
    if stored.get("cpu_model") != here.get("cpu_model"):
        diffs.append(f"CPU {stored.get('cpu_model')!r} (tuned) vs {here.get('cpu_model')!r}")
    if stored.get("logical_cores") != here.get("logical_cores"):
        diffs.append(f"{stored.get('logical_cores')} cores (tuned) vs {here.get('logical_cores')}")
    sv, hv = stored.get("versions", {}), here.get("versions", {})
    for lib in sorted(set(sv) | set(hv)):
        if lib in sv and lib in hv and sv[lib] != hv[lib]:
            diffs.append(f"{lib} {sv[lib]} (tuned) vs {hv[lib]}")
    return diffs


def _not_finite(name: str) -> str:
    return (f"input {name}: contains NaN or infinity (pass check_finite=False to skip this "
            "check)")


def _thread_count(lib: Any) -> Any:
    """A function returning the thread count of threadpoolctl's library controller ``lib``:
    for OpenBLAS the C function threadpoolctl's ``get_num_threads`` calls (a tenth of the
    time, without its Python layers), else that method."""
    try:
        if lib.internal_api == "openblas":
            name = ("omp_get_max_threads" if lib.threading_layer == "openmp"
                    else "openblas_get_num_threads")
            fn = lib._get_symbol(name)  # with the library's symbol prefix/suffix
            if fn is not None:
                return fn
    except Exception:  # noqa: BLE001 - another threadpoolctl: its public method
        pass
    return lib.get_num_threads


def _describe(exc: BaseException) -> str:
    """An exception for a message: autotune's own by their text, others with their type."""
    text = str(exc) if isinstance(exc, AutotuneError) else f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 600 else text[:597] + "..."


def _is_unknown_name(key: str, value: Any, space: Mapping[str, Any]) -> bool:
    """A knob this version does not have, or a name (kernel, order...) it does not know for
    a knob it has: what a plan of another autotune version holds after a rename."""
    if key not in space:
        return True
    valid = space[key]
    return (isinstance(value, str) and value not in valid
            and any(isinstance(v, str) for v in valid))


def _check_params(problem: Any, params: Mapping[str, Any], dims: Mapping[str, int],
                  content: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The plan's knobs against the problem's own knob space: a :class:`PlanError` naming
    ``params.<knob>`` for the first one that does not fit."""
    import dataclasses

    from .errors import KnobError
    from .space import TARGET_KNOBS, knob_space, normalize_knobs

    try:
        return normalize_knobs(problem, params, dims)
    except KnobError as exc:  # find the knob, then say which
        first: BaseException = exc
    except Exception as exc:  # noqa: BLE001 - not about one knob
        raise PlanError(f"{where}: field 'params': the problem's knob space cannot be built: "
                        f"{_describe(exc)}; {retune_hint(content)}") from exc
    for key, value in params.items():
        try:
            normalize_knobs(problem, {key: value}, dims)
        except Exception as exc:  # noqa: BLE001
            hint = ""
            if isinstance(exc, KnobError) and key not in TARGET_KNOBS:
                try:
                    space = knob_space(dataclasses.replace(problem, search={}), dims)
                    if _is_unknown_name(key, value, space):
                        hint = f"; {retune_hint(content)}"
                except Exception:  # noqa: BLE001 - the hint is a courtesy
                    pass
            raise PlanError(f"{where}: field {_field('params', key)}: {_describe(exc)}"
                            f"{hint}") from exc
    raise PlanError(f"{where}: field 'params': {_describe(first)}") from first


def _field(*parts: str) -> str:
    return f"'{field_path(parts)}'"


def check_plan(plan: Plan) -> tuple[Any, dict[str, int], dict[str, Any]]:
    """What a schema cannot check: the stored problem re-parses (safe parser) and matches
    the plan's name, inputs, outputs and dimensions, and the knobs are valid for it.

    Returns ``(problem, dims, knobs)`` (knobs with the defaults filled in); raises
    :class:`PlanError` naming the field. :func:`load_plan` and :func:`find_plan` run it."""
    from .spec import parse_problem

    c = plan.content
    where = str(plan.path or "plan")
    stored = c["problem"]
    try:
        problem = parse_problem(stored["source"], origin=stored["origin"])
    except Exception as exc:  # noqa: BLE001 - RecursionError and the like included
        raise PlanError(f"{where}: field 'problem.source': the stored problem does not parse: "
                        f"{_describe(exc)}; {retune_hint(c)}") from exc
    if problem.name != stored["name"]:
        raise PlanError(f"{where}: field 'problem.name': {stored['name']!r}, but the stored "
                        f"problem text is named {problem.name!r}")
    for key, declared in (("inputs", problem.inputs), ("outputs", problem.outputs)):
        if key in stored and list(stored[key]) != list(declared):
            raise PlanError(f"{where}: field 'problem.{key}': {stored[key]} does not match the "
                            f"stored problem text ({', '.join(declared)})")
    dims = dict(c["dims"])
    if set(dims) != set(problem.dims):
        raise PlanError(f"{where}: field 'dims': the plan has dimensions "
                        f"{', '.join(dims) or 'none'}; problem {problem.name!r} has "
                        f"{', '.join(problem.dims)}")
    try:
        resolved = problem.resolve_dims(dims)
    except Exception as exc:  # noqa: BLE001
        raise PlanError(f"{where}: field 'dims': {_describe(exc)}") from exc
    knobs = _check_params(problem, c["params"], resolved, c, where)
    return problem, resolved, knobs


class TunedFunction:
    """A compiled plan. Call with arrays by keyword (input names) or position."""

    def __init__(self, plan: Plan, check_finite: bool = True,
                 check_properties: bool | str = True, heap: str | None = None,
                 donate: Sequence[str] = ()):
        from .derivation import derive
        from .lower import lower
        from .memory import check_heap_policy, set_heap_policy
        from .targets import (
            check_available,
            default_target,
            machine_fingerprint,
            parse_target,
        )

        c = plan.content
        where = str(plan.path or "plan")
        self.plan = plan
        self.check_finite = check_finite
        self.check_properties = check_properties
        self.problem, self.dims, knobs = check_plan(plan)
        diffs = _fingerprint_differences(c.get("machine", {}), machine_fingerprint())
        if diffs:
            warnings.warn(
                f"{where} was tuned on another machine or with other libraries: "
                + "; ".join(diffs) + ". It runs, but may not be the fastest plan here.",
                PlanWarning, stacklevel=3,
            )
        self.dtype = c["dtype"]
        # the heap policy the plan was measured under, process-wide (see autotune.memory)
        self.heap = check_heap_policy(plan.heap if heap is None else heap, "heap")
        if heap is not None or self.heap != "system":  # an old plan leaves the process alone
            set_heap_policy(self.heap)
        try:
            stored = parse_target(c["target"]["name"])
        except AutotuneError as exc:  # read_plan refuses these; a Plan built by hand may not
            raise PlanError(f"{where}: field 'target.name': {exc}") from exc
        try:
            target = check_available(stored)
        except AutotuneError as exc:
            fallback = default_target()
            warnings.warn(f"{where}: target {c['target']['name']} is not available here "
                          f"({exc}); running on {fallback.name}", PlanWarning, stacklevel=3)
            target = fallback
        self.target = target
        try:
            self.program = program = derive(self.problem, knobs, self.dims)
        except Exception as exc:  # noqa: BLE001 - RecursionError and the like included
            raise PlanError(f"{where}: field 'params': the computation cannot be re-derived "
                            f"from the stored knobs: {_describe(exc)}; "
                            f"{retune_hint(c)}") from exc
        try:
            inputs, outputs = lower(self.problem, program, self.dims, dtype=self.dtype)
        except Exception as exc:  # noqa: BLE001
            raise PlanError(f"{where}: field 'params': the derived computation cannot be "
                            f"lowered to PyTensor ({self.dtype}): {_describe(exc)}; "
                            f"{retune_hint(c)}") from exc
        donated = _check_donate(donate, self.problem)
        self._fn = _compiled(target, inputs, outputs, donated, list(self.problem.inputs), where)
        self.input_names = list(self.problem.inputs)
        self.output_names = list(self.problem.outputs)
        #: the donated inputs the compiled plan writes over (``load_plan(donate=...)``)
        self.overwrites = _destroyed_inputs(self._fn, self.input_names) & donated
        #: per output: True where the finiteness check reads its lower triangle only: it is
        #: stored so (``store = "lower"``), or its upper triangle is an exact mirror of it
        exact = _exactly_symmetric_outputs(self._fn) if target.spec.mirrors_exactly \
            else [False] * len(self.output_names)
        self._lower_only = [self.problem.stored.get(n) == "lower" or mirrored
                            for n, mirrored in zip(self.output_names, exact, strict=True)]
        self.shapes = {n: self.problem.shape_of(n, self.dims) for n in self.input_names}
        self._lock = threading.Lock()
        self._facts = {n: self.problem.declared(n) for n in self.input_names}
        #: the call time the property checks' budget is a share of: the plan's stored median
        #: until calls here run faster (then the fastest call seen: see ``__call__``)
        self._call_basis: float | None = None
        #: the rate the budget is taken to read at: CHECK_BYTES_PER_S until the checks here
        #: are measured slower (see ``_steer``), and calls over budget in a row
        self._check_rate = CHECK_BYTES_PER_S
        self._over_budget = 0
        self._setup_call()

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={v}" for k, v in self.dims.items())
        return (f"<TunedFunction {self.problem.name}({', '.join(self.input_names)}) {sizes} "
                f"{self.dtype} on {self.target.name}>")

    # -- the call's checks: set up once ------------------------------------------------------
    @property
    def check_finite(self) -> bool:
        """Whether calls check that inputs and outputs are finite (settable)."""
        return self._check_finite

    @check_finite.setter
    def check_finite(self, value: bool) -> None:
        self._check_finite = bool(value)
        if "_input_checks" in self.__dict__:  # set after loading: decide the checks again
            self._setup_call()

    @property
    def check_properties(self) -> bool | str:
        """Whether calls check the properties the plan relies on (settable): ``True`` (within
        the call-check budget: see :meth:`_property_windows`), ``"full"`` (every element on
        every call) or ``False``."""
        return self._check_properties

    @check_properties.setter
    def check_properties(self, value: bool | str) -> None:
        if isinstance(value, str) and value != "full":
            raise ValueError(f"check_properties: expected True, False or 'full', got {value!r}")
        self._check_properties = value if isinstance(value, str) else bool(value)
        if "_input_checks" in self.__dict__:
            self._setup_call()

    def _setup_call(self) -> None:
        """What each call checks, decided once (see :mod:`autotune.checks`), and the check
        kernels compiled now (or loaded from Numba's cache) rather than on the first call.

        Per matrix input: whether its symmetry is checked (the plan relies on it; the check
        also proves every element finite), whether a triangle must be zero, and whether its
        finiteness needs a pass of its own: only when some element of it reaches no output
        through operations that keep a NaN or an infinity (:func:`~autotune.checks.
        unguarded_inputs`) and the symmetry check does not already cover it. Every other NaN
        or infinity shows in the outputs, which are checked after the call; the input is
        named then (:meth:`_diagnose`)."""
        from . import checks
        from .properties import LOWER, SYMMETRIC, UPPER
        from .targets import _controller, _preload_c_blas, thread_limit

        self._checks = checks
        self._thread_limit = thread_limit
        self._controller = _controller
        self._preload_c_blas = _preload_c_blas
        self._blas_libs: tuple[int, list[Any]] = (-1, [])
        self._eps = float(np.finfo(self.dtype).eps)
        t = self.target
        cpu = t.device == "cpu"
        self._check_threads = max(1, min(int(t.threads), os.cpu_count() or 1)) if cpu else 1
        # the thread limit: none off the CPU; skipped when already in force, unless the
        # backend sets more than BLAS threads (pytorch)
        self._limit = "none" if not cpu else ("full" if t.backend == "pytorch" else "fast")
        try:
            work = self.program.flops(self.dims)
        except Exception:  # noqa: BLE001 - cannot tell: limit as for any plan
            work = math.inf
        if self._limit == "fast" and work < SMALL_WORK_FLOPS:
            # BLAS runs a call this small on one thread whatever its limit: checking the
            # limits (a C call per library) would cost more than the work
            self._limit = "none"
        self._np_dtype = np.dtype(self.dtype)
        self._c_blas = cpu and t.backend == "c"
        matrices = [n for n in self.input_names if self.shapes[n]]
        try:
            unguarded = checks.unguarded_inputs(self.program, self.dims)
        except Exception:  # noqa: BLE001 - cannot tell: scan every input
            unguarded = set(matrices)
        plan: dict[str, tuple[bool, bool, bool, bool]] = {}
        #: inputs with a band narrower than a triangle (tridiagonal, a declared bandwidth):
        #: the zeros outside it are checked as a property (instead of zero triangles)
        self._bands: dict[str, tuple[int, int]] = {}
        for n in matrices:
            facts = self._facts[n]
            lower, upper = LOWER in facts, UPPER in facts
            sym = SYMMETRIC in facts and not (lower and upper)  # diagonal: the zeros suffice
            band = None if lower and upper else self._band_of(n)
            if band is not None:
                self._bands[n] = band
                lower = upper = False
            plan[n] = (sym, lower, upper, n in unguarded)
        self._vouch(plan, unguarded)
        try:
            self._read_triangles = checks.triangle_scans(self.program, unguarded, self.dims)
        except Exception:  # noqa: BLE001 - cannot tell: scan whole
            self._read_triangles = {}
        self._set_windows(plan)
        for n, (sym, lower, upper, unread) in plan.items():
            # a whole symmetry check proves every element finite; a window does not
            covered = bool(self.check_properties) and sym and n not in self._blocks
            plan[n] = (sym, lower, upper, self.check_finite and unread and not covered)
        self._input_checks = plan
        self._set_partial_scans(plan)
        kinds = ["finite"]
        if self.check_properties and self._bands:
            kinds.append("banded")
        if self._triangle_scans:
            kinds.append("triangle_finite")
        if self.check_properties and any(p[0] for p in plan.values()):
            kinds.append("symmetric")
        if self.check_properties and any(p[1] or p[2] for p in plan.values()):
            kinds.append("triangular")
        checks.warm(self.dtype, kinds)

    def _vouch(self, plan: dict[str, tuple[bool, bool, bool, bool]], unguarded: set[str]
               ) -> None:
        """The unguarded inputs whose elements read reach an output but for a part the
        property checks cover (:func:`~autotune.checks.vouched_parts`): the other triangle
        of a symmetric input read in one (the ``c`` of SYRK: no scan), or the diagonal of a
        triangular solve's matrix (a scan of its diagonal, :attr:`_diagonal_only`)."""
        self._diagonal_only: set[str] = set()
        if self.check_properties is False or not unguarded:
            return
        try:
            parts = self._checks.vouched_parts(self.program, self.dims, unguarded)
        except Exception:  # noqa: BLE001 - cannot tell: scan as before
            return
        for n, part in parts.items():
            sym, lower, upper, _ = plan[n]
            triangular = lower != upper and n not in self._bands
            if part == "none" and (sym or triangular):
                plan[n] = (sym, lower, upper, False)
                unguarded.discard(n)
            elif part == "diagonal" and triangular:
                self._diagonal_only.add(n)

    def _set_windows(self, plan: Mapping[str, tuple[bool, bool, bool, bool]]) -> None:
        """The property checks' windows under the budget, and when to size them again."""
        self._windows, self._blocks = self._property_windows(plan)
        # the windows go on from where they were (a new budget does not restart them)
        before = self.__dict__.get("_cursors", {})
        self._cursors = {n: before.get(n, 0) for n in self._windows}
        before = self.__dict__.get("_block_cursors", {})
        self._block_cursors = {n: before.get(n, 0) for n in self._blocks}
        # a call this much faster than the budget's basis sizes the budget again (only the
        # property checks are cut to a budget: without any, nothing to watch)
        budgeted = self.check_properties is True and (
            bool(self._bands) or any(sym or lo or up for sym, lo, up, _ in plan.values()))
        self._resize_below = 0.8 * (self._call_basis or self._stored_median()) \
            if budgeted else 0.0

    def _set_partial_scans(self, plan: Mapping[str, tuple[bool, bool, bool, bool]]) -> None:
        """The inputs whose finiteness scan reads only the part the plan reads, the rest being
        the property checks' (see :meth:`_scan`)."""
        # a diagonal input whose zeros the property checks read: the plan reads only its
        # diagonal (diag_mul, diag_solve), so only the diagonal needs a finiteness pass
        self._diagonal_scans = {n for n, (sym, lower, upper, scan) in plan.items()
                                if scan and self.check_properties
                                and (lower and upper or n in self._diagonal_only)}
        # likewise a banded input: only its band (what band_mul and band_solve read)
        self._band_scans = {n for n, (*_, scan) in plan.items()
                            if scan and n in self._bands and self.check_properties}
        # a symmetric input read in one triangle only (factorized, the c of syrk): that
        # triangle; a NaN in the other breaks its symmetry, which the property checks read
        # (within their budget: in a window of rows per call, as an asymmetry)
        self._triangle_scans = {n: lo for n, lo in self._read_triangles.items()
                                if n in plan and plan[n][3] and plan[n][0]
                                and self.check_properties
                                and n not in self._band_scans}

    def _band_of(self, name: str) -> tuple[int, int] | None:
        """``name``'s band when it is narrower than a triangle on both sides, else None."""
        try:
            band = self.problem.bandwidth(name, self.dims)
        except Exception:  # noqa: BLE001 - cannot tell: no band check
            return None
        rows, cols = self.shapes[name]
        if band is None or band[0] >= rows - 1 or band[1] >= cols - 1:
            return None
        return band

    def _stored_median(self) -> float:
        try:
            return float(self.plan.median)
        except (KeyError, TypeError, ValueError):
            return 0.0

    def _rebudget(self, seconds: float) -> None:
        """Calls here run faster than the call time the checks' budget was sized for (a plan
        tuned on a slower machine, or under other settings): size it for this call."""
        self._call_basis = seconds
        self._setup_call()

    def _property_windows(self, plan: Mapping[str, tuple[bool, bool, bool, bool]]
                          ) -> tuple[dict[str, int], dict[str, int]]:
        """The inputs whose properties each call checks in a window, and its size: ``(rows
        of a zero triangle's or a band's window, rows of a symmetry check's blocks)``.

        The checks' budget is :data:`CHECK_SHARE` of the plan's measured median call, or
        :data:`CHECK_FLOOR_S`, whichever is larger (the goal of the call checks). The outputs'
        finiteness and the finiteness scans of inputs no output vouches for come first and
        are never cut; when the property checks (symmetry: the whole matrix; a zero
        triangle: half of it), read at :data:`CHECK_BYTES_PER_S`, do not fit in what is
        left, each input's properties are checked on a window that does, shared equally:
        a zero triangle or a band on a window of at least :data:`MIN_WINDOW` rows, symmetry
        on one pair of blocks of at least :data:`MIN_BLOCK` rows (``checks.block_pair``: a
        window of whole rows would also read its columns, one cache line per row of the
        matrix). Each window moves on at every call, so consecutive calls cover the whole
        matrix, and a property broken across the matrix (an asymmetric matrix, a full one
        passed as triangular) is caught on the first call. ``check_properties="full"``
        checks every element on every call."""
        if self.check_properties is not True:
            return {}, {}
        try:
            basis = self._call_basis or float(self.plan.median)
        except (KeyError, TypeError, ValueError):
            return {}, {}
        budget = max(CHECK_FLOOR_S, CHECK_SHARE * basis)
        item = np.dtype(self.dtype).itemsize
        try:
            env = self.program.concrete_sizes(self.dims)
            fixed = sum(math.prod(self.program.shape(i, env)) // (2 if lower_only else 1)
                        for i, lower_only in zip(self.program.outputs.values(),
                                                 self._lower_only, strict=True)) * item
        except Exception:  # noqa: BLE001 - cannot tell: no windows
            return {}, {}
        fixed += sum(self._scan_size(n, lo and up or n in self._diagonal_only) * item
                     for n, (sym, lo, up, unread) in plan.items() if unread)
        rows_bytes: dict[str, int] = {}  # what one row of a zero triangle or band reads
        symmetric: list[str] = []
        for n, (sym, lower, upper, _) in plan.items():
            cols = self.shapes[n][1]
            per_row = (lower + upper) * cols // 2 + (cols if n in self._bands else 0)
            if per_row:
                rows_bytes[n] = per_row * item
            if sym:
                symmetric.append(n)
        whole = (sum(b * self.shapes[n][0] for n, b in rows_bytes.items())
                 + sum(2 * self.shapes[n][0] * self.shapes[n][1] * item for n in symmetric))
        left = budget * self._check_rate - fixed
        if whole <= left:
            return {}, {}
        share = max(left, 0.0) / max(len(rows_bytes) + len(symmetric), 1)
        windows: dict[str, int] = {}
        for n, b in rows_bytes.items():
            rows = max(MIN_WINDOW, int(share // b))
            if rows < self.shapes[n][0]:
                windows[n] = rows
        blocks: dict[str, int] = {}
        for n in symmetric:  # 2 b^2 elements and BLOCK_ROW_BYTES a row within the share
            r = BLOCK_ROW_BYTES / (4 * item)
            size = max(MIN_BLOCK, int(math.sqrt(r * r + share / (2 * item)) - r))
            if size < self.shapes[n][0]:
                blocks[n] = size
        return windows, blocks

    def _scan_size(self, name: str, diagonal: bool) -> int:
        """Elements a finiteness scan of ``name`` reads when its structure is checked as a
        property: the diagonal of a diagonal input, the band of a banded one, else all."""
        rows, cols = self.shapes[name]
        if diagonal:
            return min(rows, cols)
        band = self._bands.get(name)
        if band is not None:
            return rows * min(cols, band[0] + band[1] + 1)
        from .properties import SYMMETRIC

        if name in self._read_triangles and SYMMETRIC in self._facts[name]:
            return rows * (rows + 1) // 2
        return rows * cols

    def _block(self, name: str) -> tuple[int, int, int, int] | None:
        """This call's pair of blocks of ``name``'s symmetry check (None: all), moving on."""
        size = self._blocks.get(name)
        if size is None:
            return None
        n = self.shapes[name][0]
        k = self._block_cursors[name] % self._checks.block_pairs(n, size)
        self._block_cursors[name] = k + 1
        return self._checks.block_pair(n, size, k)

    def _window(self, name: str) -> tuple[int, int] | None:
        """This call's rows of ``name``'s zero triangle or band checks (None: all), moving
        the window on."""
        height = self._windows.get(name)
        if height is None:
            return None
        n = self.shapes[name][0]
        r0 = self._cursors[name] % n
        r1 = min(n, r0 + height)
        self._cursors[name] = 0 if r1 >= n else r1
        return r0, r1

    # -- argument checks ------------------------------------------------------------------
    def _bind(self, args: tuple, kwargs: dict) -> list[Any]:
        names = self.input_names
        if not args and len(kwargs) == len(names):
            given = [kwargs.get(n, _MISSING) for n in names]
        elif not kwargs and len(args) == len(names):
            given = list(args)
        else:
            given = None
        if given is None or any(v is _MISSING for v in given):
            return self._bind_slowly(args, kwargs)
        values: list[Any] = []
        for n, v in zip(names, given, strict=True):
            try:
                values.append(self._check(n, v))
            except InputError:
                if self.check_finite:
                    self._raise_first_nonfinite(values)
                raise
        return values

    def _bind_slowly(self, args: tuple, kwargs: dict) -> list[Any]:
        if len(args) > len(self.input_names):
            raise InputError(f"{self.problem.name}: takes {len(self.input_names)} inputs "
                             f"({', '.join(self.input_names)}), got {len(args)} positional")
        bound = dict(zip(self.input_names, args, strict=False))
        for k, v in kwargs.items():
            if k not in self.input_names:
                raise InputError(f"{self.problem.name}: unknown input {k!r}; inputs: "
                                 f"{', '.join(self.input_names)}")
            if k in bound:
                raise InputError(f"{self.problem.name}: input {k!r} given twice")
            bound[k] = v
        missing = [n for n in self.input_names if n not in bound]
        if missing:
            raise InputError(f"{self.problem.name}: missing input(s) {', '.join(missing)}; "
                             f"expected {self._signature()}")
        values: list[Any] = []
        for n in self.input_names:
            try:
                values.append(self._check(n, bound[n]))
            except InputError:
                # the error the inputs' order makes first: a NaN in an earlier input, which
                # only the outputs would have shown
                if self.check_finite:
                    self._raise_first_nonfinite(values)
                raise
        return values

    def _signature(self) -> str:
        return ", ".join(f"{n}{list(s) if s else ' (scalar)'}" for n, s in self.shapes.items())

    def _check(self, name: str, value: Any) -> Any:
        shape = self.shapes[name]
        if value.__class__ is np.ndarray and value.dtype == self._np_dtype and shape \
                and value.shape == shape:
            return self._check_matrix(name, value)
        if not shape:
            if not np.isscalar(value) and np.ndim(value) != 0:
                raise InputError(f"input {name}: expected a scalar, got shape {np.shape(value)}")
            v = float(value)
            if self.check_finite and not math.isfinite(v):
                raise InputError(f"input {name}: not finite ({v})")
            return np.asarray(v, dtype=self.dtype)
        arr = np.asarray(value)
        if arr.shape != shape:
            raise InputError(f"input {name}: expected shape {shape}, got {arr.shape}")
        if arr.dtype.kind not in "fiu" or arr.dtype.kind == "c":
            raise InputError(f"input {name}: expected real floating-point values, got dtype "
                             f"{arr.dtype}")
        if arr.dtype != self.dtype:
            if arr.dtype.kind == "f" and arr.dtype.itemsize > np.dtype(self.dtype).itemsize:
                raise InputError(f"input {name}: dtype {arr.dtype} would lose precision in this "
                                 f"{self.dtype} plan; cast it explicitly")
            arr = arr.astype(self.dtype)
        return self._check_matrix(name, arr)

    def _check_matrix(self, name: str, arr: np.ndarray) -> np.ndarray:
        """The per-call checks of a matrix input of the right shape and dtype."""
        sym, lower, upper, scan = self._input_checks[name]
        if scan and not self._scan(name, arr):
            raise InputError(_not_finite(name))
        if self._check_properties and (sym or lower or upper or name in self._bands):
            self._check_cheap_properties(name, arr)
        return arr

    def _scan(self, name: str, arr: np.ndarray) -> bool:
        """Whether the elements of ``name`` the plan reads are finite: of a diagonal input
        (with its zeros checked as a property) the diagonal, of a banded one its band, of one
        read in one triangle (:func:`~autotune.checks.triangle_scans`) that triangle, else
        every element."""
        if name in self._diagonal_scans:
            return bool(np.isfinite(np.diagonal(arr)).all())
        if name in self._band_scans:
            return self._checks.band_all_finite(arr, self._bands[name])
        lower = self._triangle_scans.get(name)
        if lower is not None:
            return self._checks.triangle_all_finite(arr, lower, self._check_threads)
        return self._checks.all_finite(arr, self._check_threads)

    def _check_cheap_properties(self, name: str, arr: np.ndarray) -> None:
        """One pass per property before the call, no temporaries (:mod:`autotune.checks`):
        symmetry (NaN-aware: a NaN in the triangle the plan does not read is caught here),
        zero triangles (a NaN there is not zero). Definiteness is diagnosed after the call,
        from the factorization's own failure (:meth:`_diagnose`)."""
        sym, lower, upper, _ = self._input_checks[name]
        checks = self._checks
        if sym:
            block = self._block(name)
            verdict = (checks.symmetry(arr, self._eps, self._check_threads,
                                       stop_at_nonfinite=self._check_finite) if block is None
                       else checks.symmetry_block(arr, self._eps, *block))
            if self._check_finite and not verdict.finite:
                raise InputError(_not_finite(name))
            if not verdict.symmetric:
                raise InputError(f"input {name}: the plan relies on it being symmetric, but it "
                                 "is not")
        rows = self._window(name)
        for flag, zero_upper, what in ((lower, True, "lower"), (upper, False, "upper")):
            if flag and not checks.triangle_is_zero(arr, zero_upper, self._check_threads, rows):
                if self.check_finite and not checks.all_finite(arr):
                    raise InputError(_not_finite(name))
                raise InputError(f"input {name}: the plan relies on it being {what} triangular")
        band = self._bands.get(name)
        if band is not None and not checks.band_is_zero(arr, band, rows):
            if self.check_finite and not checks.all_finite(arr):
                raise InputError(_not_finite(name))
            raise InputError(f"input {name}: the plan relies on its band (bandwidth = "
                             f"[{band[0]}, {band[1]}]: {band[0]} sub- and {band[1]} "
                             "superdiagonals), but it has nonzeros outside it")

    def _unaliased(self, values: list[Any]) -> list[Any]:
        """A donated input that shares memory with another input is copied first: the plan
        would otherwise write over what it still reads."""
        for i, name in enumerate(self.input_names):
            if name in self.overwrites and any(
                    j != i and np.may_share_memory(values[i], v) for j, v in enumerate(values)):
                values[i] = values[i].copy()
        return values

    def _raise_first_nonfinite(self, values: Sequence[Any], after: bool = False) -> None:
        """Raise the 'not finite' error of the first of ``values`` (inputs in declared order)
        holding a NaN or an infinity; return if none does. ``after`` a call, an input the
        plan wrote over (donated) holds a result: it is looked at last, and blamed only as
        what it is."""
        late = self.overwrites if after else set()
        for name, arr in zip(self.input_names, values, strict=False):
            if name in late:
                continue
            if self.shapes[name] and not self._checks.all_finite(arr, self._check_threads):
                raise InputError(_not_finite(name))
        for name in sorted(late):
            raise InputError(
                f"input {name}: the result is not finite and the other inputs are; {name} was "
                "donated and the call wrote over it, so whether it held a NaN or an infinity "
                "or the computation overflowed cannot be told (call without donate to find out)")

    def _diagnose(self, values: list[Any], cause: BaseException | None = None) -> None:
        """The outputs are not finite (or the call raised ``cause``): name the input to blame.

        First the first input holding a NaN or an infinity (inputs are not scanned before
        the call: a non-finite value the plan reads shows in the outputs), then the first
        input the plan relies on being positive definite whose Cholesky factorization fails,
        else, for non-finite outputs, the generic message. With a ``cause`` and nothing to
        blame it returns (the caller re-raises ``cause``)."""
        from .properties import PD

        if self.check_finite:
            try:
                self._raise_first_nonfinite(values, after=True)
            except InputError as exc:
                raise exc from cause
        for name, arr in zip(self.input_names, values, strict=True):
            if PD in self._facts[name] and name not in self.overwrites:
                try:
                    np.linalg.cholesky(arr)
                except np.linalg.LinAlgError:
                    raise InputError(
                        f"input {name}: the plan relies on it being positive definite, but it "
                        "is not (Cholesky failed)"
                    ) from cause
        if cause is not None:
            return
        raise InputError(
            f"{self.problem.name}: the result is not finite although the inputs are; a matrix "
            "the plan inverts is singular or not positive definite for these inputs"
        )

    def _outputs_finite(self, out: Sequence[np.ndarray]) -> bool:
        """Whether every output is finite where it is defined (an output stored as its lower
        triangle: there only)."""
        checks = self._checks
        for o, lower_only in zip(out, self._lower_only, strict=True):
            if o.size <= SMALL_OUTPUT:  # a few elements: cheaper in Python than a kernel call
                part = np.tril(o) if lower_only else o
                if not all(map(math.isfinite, part.ravel().tolist())):
                    return False
            elif lower_only and o.ndim == 2:
                if not checks.triangle_all_finite(o, True, self._check_threads):
                    return False
            elif not checks.all_finite(o, self._check_threads):
                return False
        return True

    # -- calling --------------------------------------------------------------------------
    def _limits_in_force(self) -> bool:
        """Whether every loaded BLAS (threadpoolctl's ``user_api="blas"``) already runs with
        the target's thread count: then :func:`~autotune.targets.thread_limit` would set
        nothing and restore nothing. One C call per library; the libraries are those of the
        controller ``thread_limit`` uses, looked up again whenever modules were imported
        since (as that controller is rescanned then: they may have loaded another BLAS)."""
        if self._c_blas:
            self._preload_c_blas()  # as thread_limit does: the C backend's BLAS, loaded, seen
        key, getters = self._blas_libs
        if key != len(sys.modules):
            ctl = self._controller()
            getters = [_thread_count(lib) for lib in ctl.lib_controllers
                       if lib.user_api == "blas"]
            self._blas_libs = (len(sys.modules), getters)
        threads = self.target.threads
        return all(get() == threads for get in getters)

    def _run(self, values: Sequence[Any]) -> Any:
        """The compiled function under the target's thread limit. Setting and restoring the
        limit (threadpoolctl) costs more than a small call; when every BLAS already runs
        with the target's thread count there is nothing to set, and nothing is."""
        if self._limit == "none":
            return self._fn(*values)
        if self._limit == "fast" and self._limits_in_force():
            return self._fn(*values)
        with self._thread_limit(self.target):
            return self._fn(*values)

    def __call__(self, *args: Any, **kwargs: Any) -> Outputs:
        begin = time.perf_counter()
        values = self._bind(args, kwargs)
        if self.overwrites:
            values = self._unaliased(values)
        try:
            with self._lock:
                start = time.perf_counter()
                out = self._run(values)
                took = time.perf_counter() - start
                if took < self._resize_below:
                    self._rebudget(took)
        except Exception as exc:
            # e.g. a factorization that refuses a matrix: blame an input if one is to blame
            if self.check_finite or self.check_properties:
                self._diagnose(values, cause=exc)
            raise
        out = [o if o.__class__ is np.ndarray else np.asarray(o) for o in out]
        if self.check_finite and not self._outputs_finite(out):
            self._diagnose(values)
        if self._resize_below:  # the property checks are budgeted: keep them to it
            self._steer(time.perf_counter() - begin - took, took)
        return Outputs(self.output_names, out)

    def _steer(self, checks_s: float, call_s: float) -> None:
        """Keep the checks to their budget as measured here. Three calls in a row whose
        checks (binding, property windows, the outputs' scan) cost over the budget take
        the read rate down in proportion, aiming under it (0.8x), and size the windows
        again; once every window is at its fewest rows, what is left (the outputs' scan)
        is not cut."""
        budget = max(CHECK_FLOOR_S, CHECK_SHARE * call_s)
        if checks_s <= budget:
            self._over_budget = 0
            return
        self._over_budget += 1
        if self._over_budget < 3:
            return
        self._over_budget = 0
        if (self._windows or self._blocks) \
                and all(h <= MIN_WINDOW for h in self._windows.values()) \
                and all(b <= MIN_BLOCK for b in self._blocks.values()):
            return
        if self._check_rate <= MIN_CHECK_RATE:
            return
        with self._lock:
            self._check_rate = max(MIN_CHECK_RATE,
                                   self._check_rate * max(0.25, 0.8 * budget / checks_s))
            self._call_basis = min(call_s, self._call_basis or call_s)
            self._setup_call()

    @property
    def function(self) -> Any:
        """The compiled PyTensor function (for benchmarks of the call overhead)."""
        return self._fn.function


def load_plan(path: str | Path, check_finite: bool = True,
              check_properties: bool | str = True, heap: str | None = None,
              donate: Sequence[str] = ()) -> TunedFunction:
    """Load, verify and compile a plan; returns a callable.

    A plan that is damaged, foreign, or does not fit this autotune raises :class:`PlanError`
    naming the file and the field (``params.solver.S``, ``problem.source``, ``dims.n``...);
    one whose knob, kernel or target names this version does not know says how to re-tune.

    ``heap``: the process's heap policy (:mod:`autotune.memory`). By default the plan's own
    (``retain`` for plans tuned with it: big temporaries keep their pages between calls, so
    the process keeps the computation's peak working set resident); ``"system"`` leaves the
    C library's default allocator behaviour (slower calls, memory given back after each).
    The policy is process-wide.

    ``check_properties``: ``True`` checks the properties the plan relies on (symmetry, zero
    triangles) within the call checks' budget, 2% of the plan's median call: where reading
    every element would cost more, each call checks a window that moves on at every call (a
    zero triangle or band: some rows; symmetry: a pair of blocks of rows and columns, which
    reads no more than its elements at any size) so that consecutive calls cover the
    matrix; a property broken across the matrix is caught on the first call. ``"full"``
    checks every element on every call; ``False`` none. The outputs' finiteness
    (``check_finite``) is always checked in full.

    ``donate``: inputs the plan may write over, as ``jax.jit(donate_argnums=...)`` or
    SciPy's ``overwrite_b``: after a call their contents are unspecified. A kernel that
    overwrites an operand (``?trmm`` writes ``L B`` over ``B``) then skips the copy it makes
    to keep the caller's array intact; ``TunedFunction.overwrites`` says which donated
    inputs the compiled plan does write over (a donated input no kernel can use is left as it
    was). An output may share a donated input's memory."""
    return TunedFunction(read_plan(path), check_finite, check_properties, heap, donate)


def _compiled(target: Any, inputs: list[Any], outputs: list[Any], donated: set[str],
              names: list[str], where: str) -> Any:
    """The plan's graph compiled for ``target``, the donated inputs mutable."""
    from .targets import compile_function

    if donated:
        import pytensor

        inputs = [pytensor.In(v, mutable=True) if name in donated else v
                  for name, v in zip(names, inputs, strict=True)]
    try:
        return compile_function(target, inputs, outputs)
    except Exception as exc:  # noqa: BLE001
        raise PlanError(f"{where}: field 'target': the computation cannot be compiled for "
                        f"{target.name}: {_describe(exc)}") from exc


def _check_donate(donate: Sequence[str], problem: Any) -> set[str]:
    """The donated input names, checked: matrices of the problem, each named once."""
    if isinstance(donate, str):
        donate = [donate]
    out: set[str] = set()
    for name in donate:
        spec = problem.inputs.get(name) if isinstance(name, str) else None
        if spec is None or spec.is_scalar:
            choices = ", ".join(n for n, s in problem.inputs.items() if not s.is_scalar)
            raise InputError(f"donate: {name!r} is not a matrix input of {problem.name}; "
                             f"valid: {choices}")
        out.add(name)
    return out


def _exactly_symmetric_outputs(fn: Any) -> list[bool]:
    """Per output of the compiled function: whether the op that computes it writes one
    triangle and mirrors it onto the other (``exactly_symmetric``: SYRK, the symmetric
    product, the SPD inverse), seen through copies and transposes. Such an output is finite
    exactly where its lower triangle is (on a backend that runs these ops as BLAS)."""
    from pytensor.compile.ops import DeepCopyOp
    from pytensor.tensor.elemwise import DimShuffle

    out = []
    for v in fn.function.maker.fgraph.outputs:
        node = v.owner
        while node is not None and (
                isinstance(node.op, DeepCopyOp) or (
                    isinstance(node.op, DimShuffle)
                    and tuple(node.op.new_order) in ((1, 0), (0, 1)))):
            node = node.inputs[0].owner
        out.append(node is not None and bool(getattr(node.op, "exactly_symmetric", False)))
    return out


def _destroyed_inputs(fn: Any, names: Sequence[str]) -> set[str]:
    """The inputs (by name) some node of the compiled graph writes over."""
    fgraph = fn.function.maker.fgraph
    position = {v: i for i, v in enumerate(fgraph.inputs)}
    handler = getattr(fgraph, "destroy_handler", None)
    view_of = getattr(handler, "view_i", {})  # a view -> the variable it views
    out: set[str] = set()
    for node in fgraph.apply_nodes:
        for idxs in getattr(node.op, "destroy_map", {}).values():
            for k in idxs:
                v = node.inputs[k]
                while v in view_of:
                    v = view_of[v]
                i = position.get(v)
                if i is not None and i < len(names):
                    out.add(names[i])
    return out


def find_plan(problem: str, dims: Mapping[str, int] | None = None,
              folder: str | Path = "results", dtype: str = "float64",
              fallback: str = "error") -> Path:
    """The best plan for ``problem`` at ``dims`` in ``folder``, preferring this machine.

    ``fallback='nearest'`` returns the plan of the nearest sizes with a warning when none
    matches exactly; ``'error'`` (the default) raises :class:`PlanError`.

    Files that are not valid plans are skipped; so are plans of ``problem`` that
    :func:`check_plan` refuses (their stored problem or knobs no longer fit this autotune),
    and when no plan is left the error says why each was refused.
    """
    from .targets import machine_fingerprint

    if fallback not in ("error", "nearest"):
        raise ValueError(f"fallback must be 'error' or 'nearest', got {fallback!r}")
    folder = Path(folder)
    here = machine_fingerprint().get("cpu_model")
    candidates: list[tuple[Path, Plan]] = []
    refused: list[str] = []
    for path in sorted(folder.glob("*.json")):
        try:
            plan = read_plan(path)
        except PlanError:
            continue
        if plan.problem_name == problem and plan.dtype == dtype:
            try:
                check_plan(plan)
            except PlanError as exc:
                refused.append(str(exc))
                continue
            candidates.append((path, plan))
    why = "".join(f"\n  refused: {r}" for r in refused)
    if not candidates:
        raise PlanError(f"no {dtype} plan for problem {problem!r} in {folder}; tune one with "
                        f"'autotune run --problem {problem}'{why}")
    if dims is None:
        exact = candidates
    else:
        want = dict(dims)
        exact = [(p, pl) for p, pl in candidates
                 if all(pl.dims.get(k) == v for k, v in want.items())]

    def rank(item: tuple[Path, Plan]) -> tuple:
        _, pl = item
        same_machine = pl.content.get("machine", {}).get("cpu_model") == here
        return (not same_machine, pl.median)

    if exact:
        return min(exact, key=rank)[0]
    sizes = ", ".join(sorted({str(pl.dims) for _, pl in candidates}))
    if fallback == "error":
        raise PlanError(f"no plan for {problem!r} at {dict(dims or {})} in {folder}; plans "
                        f"exist for {sizes} (pass fallback='nearest' to use the nearest){why}")

    def distance(item: tuple[Path, Plan]) -> float:
        _, pl = item
        return sum(abs(math.log(pl.dims.get(k, v) / v)) for k, v in (dims or {}).items())

    best = min(candidates, key=lambda it: (distance(it), rank(it)))
    warnings.warn(f"no plan for {problem!r} at {dict(dims or {})}; using the nearest, tuned "
                  f"at {best[1].dims}", PlanWarning, stacklevel=2)
    return best[0]
