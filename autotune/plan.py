"""Plans: the self-describing artifact a tuning run leaves in ``results/``.

A plan is canonical JSON (sorted keys, ``schema_version``), written atomically (a temporary
file in the same folder, then a rename), and carries a sha256 digest of its canonical content
so that a truncated, edited or corrupted file is refused. It stores the problem's spec text,
so production code re-derives the computation with the safe parser: never pickle, never eval.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import PlanError

__all__ = ["SCHEMA_VERSION", "Plan", "canonical_json", "save_plan", "read_plan", "plan_filename"]

SCHEMA_VERSION = 1
KIND = "autotune-plan"
REQUIRED = (
    "schema_version", "kind", "problem", "dims", "dtype", "params", "target", "timing",
    "baselines", "speedups", "accuracy", "flops", "machine", "created", "digest",
)


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _digest(content: Mapping[str, Any]) -> str:
    body = {k: v for k, v in content.items() if k != "digest"}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


@dataclass(frozen=True)
class Plan:
    """A stored plan (the parsed, verified JSON content)."""

    content: dict[str, Any]
    path: Path | None = None

    @property
    def problem_source(self) -> str:
        return self.content["problem"]["source"]

    @property
    def problem_name(self) -> str:
        return self.content["problem"]["name"]

    @property
    def dims(self) -> dict[str, int]:
        return dict(self.content["dims"])

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.content["params"])

    @property
    def target(self) -> str:
        return self.content["target"]["name"]

    @property
    def dtype(self) -> str:
        return self.content["dtype"]

    @property
    def heap(self) -> str:
        """The heap policy the plan was measured under (``system`` for plans that predate
        the setting); see :mod:`autotune.memory`."""
        return str(self.content.get("environment", {}).get("heap", "system"))

    @property
    def median(self) -> float:
        return float(self.content["timing"]["median"])

    def to_json(self) -> dict[str, Any]:
        return dict(self.content)

    @classmethod
    def build(cls, **fields: Any) -> Plan:
        content: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "kind": KIND,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        content.update(fields)
        content["digest"] = _digest(content)
        _check(content, "<new plan>")
        return cls(content)


def plan_filename(problem: str, dims: Mapping[str, int], dtype: str) -> str:
    sizes = "-".join(f"{k}{v}" for k, v in sorted(dims.items()))
    return f"plan-{problem}-{sizes}-{dtype}.json"


def save_plan(plan: Plan, folder: str | Path, name: str | None = None) -> Path:
    """Write atomically; an existing plan of the same name is replaced only by a complete,
    verified file (a crash mid-write leaves the old one intact)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    c = plan.content
    path = folder / (name or plan_filename(c["problem"]["name"], c["dims"], c["dtype"]))
    text = json.dumps(c, sort_keys=True, indent=1, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        read_plan(tmp)  # verify what was written before it replaces anything
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _check(content: Any, where: str) -> None:
    if not isinstance(content, dict):
        raise PlanError(f"{where}: not a plan (a JSON object is expected)")
    if content.get("kind") != KIND:
        raise PlanError(f"{where}: not an autotune plan (kind is {content.get('kind')!r})")
    version = content.get("schema_version")
    if not isinstance(version, int):
        raise PlanError(f"{where}: schema_version is missing or not an integer")
    if version > SCHEMA_VERSION:
        raise PlanError(
            f"{where}: written with plan schema {version}, newer than this autotune reads "
            f"({SCHEMA_VERSION}); upgrade autotune"
        )
    missing = [k for k in REQUIRED if k not in content]
    if missing:
        raise PlanError(f"{where}: incomplete plan, missing {', '.join(missing)}")
    if content["digest"] != _digest(content):
        raise PlanError(
            f"{where}: the digest does not match the content: the file was edited or corrupted"
        )
    src = content["problem"].get("source", "")
    if hashlib.sha256(src.encode()).hexdigest() != content["problem"].get("sha256"):
        raise PlanError(f"{where}: the stored problem text does not match its sha256")
    env = content.get("environment", {})
    if not isinstance(env, dict):
        raise PlanError(f"{where}: 'environment' must be a JSON object")
    from .memory import HEAP_POLICIES

    if env.get("heap", "system") not in HEAP_POLICIES:
        raise PlanError(f"{where}: environment.heap {env.get('heap')!r} is not one of: "
                        f"{', '.join(HEAP_POLICIES)}")


def read_plan(path: str | Path) -> Plan:
    """Read and verify a plan file; raises :class:`PlanError` saying why it is refused."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError as exc:
        raise PlanError(f"{p}: no such plan file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanError(f"{p}: cannot read: {exc}") from exc
    try:
        content = json.loads(text)
    except ValueError as exc:
        raise PlanError(f"{p}: not valid JSON (truncated or corrupted?): {exc}") from exc
    _check(content, str(p))
    return Plan(content, p)
