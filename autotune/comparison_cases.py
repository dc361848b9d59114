"""The comparison's records: which variants are compared, on which cases, and what was measured.

:data:`VARIANTS` names the variants in the order they are timed; :data:`DEFAULT_CASES` and
:data:`QUICK_CASES` are the (problem, sizes) pairs :func:`autotune.compare.compare` measures by
default. A :class:`Case` holds one problem at one size: a :class:`VariantResult` per variant
(raw samples, accuracy, why it failed), the FLOP counts and the physical limit; both round-trip
through ``benchmarks.json`` (:func:`read_cases`).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import AutotuneError

__all__ = [
    "DEFAULT_CASES",
    "LIMIT",
    "LIMIT_LABEL",
    "QUICK_CASES",
    "VARIANTS",
    "Case",
    "VariantResult",
    "read_cases",
]

#: Variant key -> the name shown in tables and plots (in the order they are timed).
VARIANTS: dict[str, str] = {
    "numpy": "NumPy as written",
    "solve": "numpy.linalg.solve",
    "scipy": "SciPy expert",
    "naive": "direct SymPy→PyTensor",
    "pytensor": "PyTensor's own rewrites",
    "seed-2x2": "2013 2×2 blocked",
    "jax": "JAX jit as written",
    "plan": "tuned plan",
}
LIMIT = "limit"
LIMIT_LABEL = "physical limit"

#: The comparison's cases: (problem, free-dimension overrides). Kalman at three sizes, every
#: other shipped problem at one realistic size (GLS a bit below its default so that the
#: whole comparison stays within about ten minutes on two cores).
DEFAULT_CASES: tuple[tuple[str, dict[str, int]], ...] = (
    ("kalman", {"n": 1000}),
    ("kalman", {"n": 2000}),
    ("kalman", {"n": 4000}),
    ("gls", {"n": 2000}),
    ("tikhonov", {"n": 2000}),
    ("mmse", {"n": 1000}),
    ("enkf", {"n": 4000, "N": 200}),
)
#: ``--quick``: tiny sizes, for tests and smoke runs.
QUICK_CASES: tuple[tuple[str, dict[str, int]], ...] = (
    ("kalman", {"n": 200}),
    ("gls", {"n": 200}),
    ("tikhonov", {"n": 200}),
    ("mmse", {"n": 100}),
    ("enkf", {"n": 200, "N": 20}),
)


@dataclass
class VariantResult:
    key: str
    label: str
    samples: list[float] = field(default_factory=list)
    error: float | None = None
    ok: bool = False
    message: str = ""
    detail: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "label": self.label, "samples": self.samples,
                "median": self.median, "error": _finite(self.error), "ok": self.ok,
                "message": self.message, "detail": self.detail}


@dataclass
class Case:
    problem: str
    dims: dict[str, int]
    threads: int
    variants: dict[str, VariantResult] = field(default_factory=dict)
    tolerance: float = 0.0
    flops: float | None = None
    limit_s: float | None = None
    plan: str = ""
    plan_target: str = ""
    min_flops: float | None = None  # the fewest FLOPs of any candidate (flop-optimal point)
    dgemm_samples: list[float] = field(default_factory=list)  # interleaved with the variants
    dgemm_gflops: float | None = None
    limit_note: str = ""

    @property
    def title(self) -> str:
        return f"{self.problem} " + ", ".join(f"{k}={v}" for k, v in self.dims.items())

    def time(self, key: str) -> float | None:
        if key == LIMIT:
            return self.limit_s
        v = self.variants.get(key)
        return v.median if v is not None and v.ok else None

    def to_json(self) -> dict[str, Any]:
        return {"problem": self.problem, "dims": self.dims, "threads": self.threads,
                "tolerance": self.tolerance, "flops": self.flops, "limit_s": self.limit_s,
                "plan": self.plan, "plan_target": self.plan_target,
                "min_flops": self.min_flops, "dgemm_samples": self.dgemm_samples,
                "dgemm_gflops": self.dgemm_gflops, "limit_note": self.limit_note,
                "variants": {k: v.to_json() for k, v in self.variants.items()}}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Case:
        case = cls(d["problem"], dict(d["dims"]), int(d["threads"]),
                   tolerance=d.get("tolerance", 0.0), flops=d.get("flops"),
                   limit_s=d.get("limit_s"), plan=d.get("plan", ""),
                   plan_target=d.get("plan_target", ""), min_flops=d.get("min_flops"),
                   dgemm_samples=list(d.get("dgemm_samples", [])),
                   dgemm_gflops=d.get("dgemm_gflops"), limit_note=d.get("limit_note", ""))
        for k, v in d.get("variants", {}).items():
            case.variants[k] = VariantResult(
                k, v["label"], list(v["samples"]), v.get("error"), v["ok"],
                v.get("message", ""), v.get("detail", ""))
        return case


def _finite(x: float | None) -> float | None:
    return x if x is None or math.isfinite(x) else None


def read_cases(results: Mapping[str, Any] | str | Path) -> tuple[dict[str, Any], list[Case]]:
    """The results and their cases: the dict :func:`autotune.compare.compare` returns, or its
    ``benchmarks.json`` (or the folder holding it)."""
    if isinstance(results, (str, Path)):
        p = Path(results)
        if p.is_dir():
            p = p / "benchmarks.json"
        try:
            results = json.loads(p.read_text())
        except FileNotFoundError:
            raise AutotuneError(f"{p}: no comparison results; run 'python -m "
                                "autotune.compare' first") from None
    assert isinstance(results, Mapping)
    return dict(results), [Case.from_json(c) for c in results["cases"]]
