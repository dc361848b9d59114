"""Tuned plans in production code: load once, call like a function.

    from autotune import load_plan
    kalman = load_plan("results/plan-kalman-k2000-n4000-float64.json")
    newmu, newSigma = kalman(mu=mu, Sigma=Sigma, H=H, R=R, data=data)

The plan's problem text is re-parsed with the safe parser and the computation re-derived
from the stored knobs (never pickle, never eval), then compiled once for the stored target.
Calls check their inputs (names, shapes, dtypes, finiteness, the properties the plan relies
on) and raise errors naming the input; they are safe from several threads.

Loading refuses a damaged or foreign plan with a :class:`PlanError` naming the field: the
schema (:mod:`autotune.plan`), then what only the problem can tell (:func:`check_plan`: the
stored problem re-parses and matches, the knobs are in its knob space), then any failure to
re-derive, lower or compile. Knob, kernel or target names from another autotune version are
refused with the command that re-tunes the plan.
"""

from __future__ import annotations

import math
import threading
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


def _asymmetry(a: np.ndarray, tile: int = 128) -> float:
    """max |a - a.T|, tile by tile (cache-resident: 4x faster than a - a.T at n = 1000)."""
    n = a.shape[0]
    worst = 0.0
    for i in range(0, n, tile):
        for j in range(0, i + 1, tile):
            d = float(np.abs(a[i : i + tile, j : j + tile] - a[j : j + tile, i : i + tile].T).max())
            worst = max(worst, d)
    return worst


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

    def __init__(self, plan: Plan, check_finite: bool = True, check_properties: bool = True,
                 heap: str | None = None):
        from .derive import derive
        from .lower import lower
        from .memory import check_heap_policy, set_heap_policy
        from .targets import (
            check_available,
            compile_function,
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
        try:
            self._fn = compile_function(target, inputs, outputs)
        except Exception as exc:  # noqa: BLE001
            raise PlanError(f"{where}: field 'target': the computation cannot be compiled for "
                            f"{target.name}: {_describe(exc)}") from exc
        self.input_names = list(self.problem.inputs)
        self.output_names = list(self.problem.outputs)
        self.shapes = {n: self.problem.shape_of(n, self.dims) for n in self.input_names}
        self._lock = threading.Lock()
        self._facts = {n: self.problem.declared(n) for n in self.input_names}

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={v}" for k, v in self.dims.items())
        return (f"<TunedFunction {self.problem.name}({', '.join(self.input_names)}) {sizes} "
                f"{self.dtype} on {self.target.name}>")

    # -- argument checks ------------------------------------------------------------------
    def _bind(self, args: tuple, kwargs: dict) -> list[Any]:
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
        return [self._check(n, bound[n]) for n in self.input_names]

    def _signature(self) -> str:
        return ", ".join(f"{n}{list(s) if s else ' (scalar)'}" for n, s in self.shapes.items())

    def _check(self, name: str, value: Any) -> Any:
        shape = self.shapes[name]
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
        if self.check_finite and not np.isfinite(arr).all():
            raise InputError(f"input {name}: contains NaN or infinity (pass check_finite=False "
                             "to skip this check)")
        if self.check_properties:
            self._check_cheap_properties(name, arr)
        return arr

    def _check_cheap_properties(self, name: str, arr: np.ndarray) -> None:
        """O(n^2) checks before the call; definiteness is diagnosed after (it costs n^3)."""
        from .properties import LOWER, SYMMETRIC, UPPER

        facts = self._facts[name]
        scale = max(1.0, float(np.abs(arr).max()))
        tol = 100 * np.finfo(self.dtype).eps * scale
        if SYMMETRIC in facts and _asymmetry(arr) > tol * arr.shape[0]:
            raise InputError(f"input {name}: the plan relies on it being symmetric, but it is "
                             "not")
        if LOWER in facts and np.abs(np.triu(arr, 1)).max(initial=0) > 0:
            raise InputError(f"input {name}: the plan relies on it being lower triangular")
        if UPPER in facts and np.abs(np.tril(arr, -1)).max(initial=0) > 0:
            raise InputError(f"input {name}: the plan relies on it being upper triangular")

    def _diagnose(self, values: list[Any]) -> None:
        """Non-finite outputs from finite inputs: find the input that breaks a property."""
        from .properties import PD

        for name, arr in zip(self.input_names, values, strict=True):
            if PD in self._facts[name]:
                try:
                    np.linalg.cholesky(arr)
                except np.linalg.LinAlgError:
                    raise InputError(
                        f"input {name}: the plan relies on it being positive definite, but it "
                        "is not (Cholesky failed)"
                    ) from None
        raise InputError(
            f"{self.problem.name}: the result is not finite although the inputs are; a matrix "
            "the plan inverts is singular or not positive definite for these inputs"
        )

    # -- calling --------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Outputs:
        from .targets import thread_limit

        values = self._bind(args, kwargs)
        with self._lock, thread_limit(self.target):
            out = self._fn(*values)
        out = [np.asarray(o) for o in out]
        if self.check_finite and not all(np.isfinite(o).all() for o in out):
            self._diagnose(values)
        return Outputs(self.output_names, out)

    @property
    def function(self) -> Any:
        """The compiled PyTensor function (for benchmarks of the call overhead)."""
        return self._fn.function


def load_plan(path: str | Path, check_finite: bool = True,
              check_properties: bool = True, heap: str | None = None) -> TunedFunction:
    """Load, verify and compile a plan; returns a callable.

    A plan that is damaged, foreign, or does not fit this autotune raises :class:`PlanError`
    naming the file and the field (``params.solver.S``, ``problem.source``, ``dims.n``...);
    one whose knob, kernel or target names this version does not know says how to re-tune.

    ``heap``: the process's heap policy (:mod:`autotune.memory`). By default the plan's own
    (``retain`` for plans tuned with it: big temporaries keep their pages between calls, so
    the process keeps the computation's peak working set resident); ``"system"`` leaves the
    C library's default allocator behaviour (slower calls, memory given back after each).
    The policy is process-wide."""
    return TunedFunction(read_plan(path), check_finite, check_properties, heap)


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
