"""Plans: the self-describing artifact a tuning run leaves in ``results/``.

A plan is canonical JSON (sorted keys, ``schema_version``), written atomically (a temporary
file in the same folder, then a rename), and carries a sha256 digest of its canonical content
so that a truncated, edited or corrupted file is refused. It stores the problem's spec text,
so production code re-derives the computation with the safe parser: never pickle, never eval.

The format is described once, in ``plan.schema.json`` next to this module (JSON Schema draft
2020-12, one schema per ``SCHEMA_VERSION``). Reading a plan checks, in order: that it is an
autotune plan of a schema version this code reads, the schema (errors name the field, e.g.
``field 'dims.n': -3 is less than the minimum of 1``), the digest, the problem text's sha256,
the target name against the backend registry and the heap policy. What needs the problem
itself (the knobs against the problem's knob space, re-deriving) is checked by
:func:`autotune.load_plan` and :func:`autotune.find_plan`.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import importlib.resources
import json
import os
import re
import signal
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import PlanError

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "SCHEMA_VERSION",
    "Plan",
    "canonical_json",
    "field_path",
    "plan_filename",
    "plan_schema",
    "read_plan",
    "retune_command",
    "retune_hint",
    "save_plan",
]

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
        # exactly what a reader gets back: tuples become lists, NaN is refused (ValueError)
        content = json.loads(canonical_json(content))
        content["digest"] = _digest(content)
        _check(content, "<new plan>")
        return cls(content)


def plan_filename(problem: str, dims: Mapping[str, int], dtype: str) -> str:
    sizes = "-".join(f"{k}{v}" for k, v in sorted(dims.items()))
    return f"plan-{problem}-{sizes}-{dtype}.json"


def retune_command(content: Mapping[str, Any]) -> str:
    """The command that tunes a plan like ``content`` again (for messages)."""
    try:
        name = content["problem"]["name"]
        dims = " ".join(f"--dim {k}={v}" for k, v in content["dims"].items())
        return f"autotune run --problem {name} {dims} --dtype {content['dtype']}"
    except (KeyError, TypeError, AttributeError):
        return "autotune run --problem NAME --dim NAME=VALUE ..."


def retune_hint(content: Mapping[str, Any]) -> str:
    """What to do about a plan whose knob, kernel or target names this autotune does not
    know (renamed or added by another version)."""
    return ("this plan was written by an older or newer autotune: re-tune it with "
            f"`{retune_command(content)}`")


# -- writing ------------------------------------------------------------------------------


def _umask() -> int:
    """The process's umask, read without changing it where possible (``os.umask`` sets it,
    which is racy with other threads creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FRESH_S = 5.0  # a temporary file younger than this may belong to a write just starting


def _remove_stale_temporaries(folder: Path, name: str) -> None:
    """Remove ``.{name}.XXXX.tmp`` files left by writes of the same plan that were killed
    (SIGKILL, power loss). A write in progress holds an exclusive ``flock`` on its file from
    right after creating it, and files younger than a few seconds are left alone, so a
    concurrent writer's temporary file is never taken for a stale one."""
    now = time.time()
    ours = re.compile(rf"\.{re.escape(name)}\.[a-z0-9_]+\.tmp")  # tempfile.mkstemp's names
    for tmp in folder.glob(f".{glob.escape(name)}.*.tmp"):
        if not ours.fullmatch(tmp.name):
            continue
        try:
            if now - tmp.lstat().st_mtime < _FRESH_S:
                continue
            fd = os.open(tmp, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # a live writer holds it
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        finally:
            os.close(fd)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block is over, then deliver them.

    Python handlers run in the main thread whichever thread the kernel picks for a signal,
    so blocking the signals with ``pthread_sigmask`` in the main thread alone is not enough
    while other threads (BLAS, Numba) run: the handlers are swapped for one that only
    records the signal instead, and the recorded signals are raised again, under the
    original handlers, after the block. Only the main thread can install handlers; in other
    threads (where no Python handler runs anyway) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def record(signum: int, frame: Any) -> None:
        pending.append(signum)

    previous: dict[int, Any] = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                handler = signal.getsignal(sig)
                if handler is None:  # installed outside Python: cannot be put back
                    continue
                signal.signal(sig, record)
            except (ValueError, OSError):  # e.g. a subinterpreter: leave it
                continue
            previous[sig] = handler
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(pending):
            signal.raise_signal(sig)


def save_plan(plan: Plan, folder: str | Path, name: str | None = None) -> Path:
    """Write atomically; an existing plan of the same name is replaced only by a complete,
    verified file (a crash mid-write leaves the old one intact).

    The file gets the mode of any new file (``0o666`` less the umask). Temporary files of
    the same plan left by killed writes are removed first; SIGINT and SIGTERM arriving
    during the write are delivered after the rename, so Ctrl-C never leaves a half-state.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    c = plan.content
    path = folder / (name or plan_filename(c["problem"]["name"], c["dims"], c["dtype"]))
    text = json.dumps(c, sort_keys=True, indent=1, allow_nan=False) + "\n"
    _remove_stale_temporaries(folder, path.name)
    with _signals_deferred():
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "w") as fh:
                if fcntl is not None:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # "in progress": see above
                os.fchmod(fh.fileno(), 0o666 & ~_umask())  # mkstemp makes it 0600
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
                read_plan(tmp)  # verify what was written before it replaces anything
                os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_folder(folder)
    return path


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- checking -----------------------------------------------------------------------------

_TYPE_WORDS = {
    "object": "a JSON object", "array": "a JSON array", "string": "a string",
    "integer": "an integer", "number": "a number", "boolean": "true or false", "null": "null",
}
_MAX_SHOWN = 200  # characters of a value quoted in a message


@functools.cache
def plan_schema() -> dict[str, Any]:
    """The JSON Schema of plan files (``autotune/plan.schema.json``)."""
    text = importlib.resources.files(__package__).joinpath("plan.schema.json").read_text()
    return json.loads(text)


@functools.cache
def _validator() -> Any:
    from jsonschema import Draft202012Validator
    from jsonschema.validators import extend

    schema = plan_schema()
    Draft202012Validator.check_schema(schema)
    # JSON integers only: 4.0 is a float in Python, and a float size or count breaks loading
    types = Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, x: isinstance(x, int) and not isinstance(x, bool))
    return extend(Draft202012Validator, type_checker=types)(schema)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def field_path(parts: Any) -> str:
    """``dims.n``, ``params.solver.S``, ``runners_up[0].median`` (JSON path of a field)."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _schema_message(error: Any) -> str:
    path = list(error.absolute_path)
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        names = ", ".join(f"'{field_path([*path, k])}'" for k in missing)
        return f"field {names} is missing" if len(missing) == 1 else f"fields {names} are missing"
    where = f"field '{field_path(path)}'" if path else "the plan"
    if error.validator == "type":
        wanted = error.validator_value
        wanted = [wanted] if isinstance(wanted, str) else list(wanted)
        words = [_TYPE_WORDS.get(t, t) for t in wanted]
        words = " or ".join([", ".join(words[:-1]), words[-1]] if len(words) > 2 else words)
        return f"{where} must be {words}, got {_shown(error.instance)}"
    if error.validator in ("enum", "const"):
        valid = error.validator_value
        valid = ", ".join(map(repr, valid)) if error.validator == "enum" else repr(valid)
        return f"{where}: {_shown(error.instance)} is not one of: {valid}"
    if error.validator == "pattern" and isinstance(error.schema, dict) \
            and error.schema.get("description"):
        return (f"{where}: {_shown(error.instance)} is not valid here: "
                f"{error.schema['description']}")
    message = error.message
    if len(message) > 2 * _MAX_SHOWN:
        message = message[: 2 * _MAX_SHOWN - 3] + "..."
    return f"{where}: {message}"


def _check_schema(content: dict[str, Any], where: str) -> None:
    from jsonschema.exceptions import best_match

    errors = list(_validator().iter_errors(content))
    if not errors:
        return
    best = best_match(errors)
    others = {field_path(e.absolute_path) for e in errors} - {field_path(best.absolute_path)}
    more = f" (and {len(others)} more field{'s' if len(others) > 1 else ''})" if others else ""
    raise PlanError(f"{where}: {_schema_message(best)}{more}")


def _check_target(content: dict[str, Any], where: str) -> None:
    from .errors import TargetError
    from .targets import BACKENDS, parse_target

    target = content["target"]
    backends = ", ".join(BACKENDS)
    backend = target.get("backend")
    if backend is not None and backend not in BACKENDS:
        raise PlanError(f"{where}: field 'target.backend': unknown backend {backend!r}; valid "
                        f"backends: {backends}; {retune_hint(content)}")
    try:
        parsed = parse_target(target["name"])
    except TargetError as exc:
        raise PlanError(f"{where}: field 'target.name': {exc} (valid backends: {backends}); "
                        f"{retune_hint(content)}") from exc
    for key in ("backend", "device"):
        if key in target and target[key] != getattr(parsed, key):
            raise PlanError(f"{where}: field 'target.{key}': {target[key]!r} does not match "
                            f"the target name {target['name']!r} ({getattr(parsed, key)})")


def _check(content: Any, where: str) -> None:
    if not isinstance(content, dict):
        raise PlanError(f"{where}: not a plan (a JSON object is expected)")
    if content.get("kind") != KIND:
        raise PlanError(f"{where}: not an autotune plan (kind is {_shown(content.get('kind'))})")
    version = content.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise PlanError(f"{where}: field 'schema_version' is missing or not an integer")
    if version > SCHEMA_VERSION:
        raise PlanError(
            f"{where}: written with plan schema {version}, newer than this autotune reads "
            f"({SCHEMA_VERSION}); upgrade autotune"
        )
    if version < 1:
        raise PlanError(f"{where}: field 'schema_version': {version} is not a plan schema "
                        "version (they start at 1): the file was not written by autotune")
    missing = [k for k in REQUIRED if k not in content]
    if missing:
        names = ", ".join(f"'{k}'" for k in missing)
        raise PlanError(f"{where}: incomplete plan: field{'s' if len(missing) > 1 else ''} "
                        f"{names} {'are' if len(missing) > 1 else 'is'} missing")
    try:
        _check_schema(content, where)
        digest = _digest(content)
    except RecursionError as exc:
        raise PlanError(f"{where}: a value is nested too deeply to be a plan") from exc
    if content["digest"] != digest:
        raise PlanError(
            f"{where}: the digest does not match the content: the file was edited or corrupted"
        )
    src = content["problem"]["source"]
    if hashlib.sha256(src.encode()).hexdigest() != content["problem"]["sha256"]:
        raise PlanError(f"{where}: field 'problem.source': the stored problem text does not "
                        "match its sha256")
    _check_target(content, where)
    env = content.get("environment", {})
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
    except RecursionError as exc:
        raise PlanError(f"{p}: not a plan: the JSON is nested too deeply") from exc
    except ValueError as exc:
        raise PlanError(f"{p}: not valid JSON (truncated or corrupted?): {exc}") from exc
    _check(content, str(p))
    return Plan(content, p)
