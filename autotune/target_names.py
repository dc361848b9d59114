"""Target names: a backend, a device and a thread count, parsed, printed and listed.

A :class:`Target` names one way of running a compiled candidate, e.g. ``numba-t2`` (PyTensor's
Numba backend, BLAS limited to two threads), ``c-t1``, ``jax-cpu-t2``, ``jax-cuda``,
``pytorch-cpu-t2`` or ``pytorch-cuda``: :func:`parse_target` reads the names
(:func:`target_forms` lists the accepted spellings), :meth:`Target.to_json` /
:meth:`Target.from_json` round-trip them, and :func:`list_targets` /
:func:`available_targets` say which of them this machine offers, with the reason when a
backend is unavailable.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .backends import _ALIASES, BACKENDS, DEFAULT_BACKEND, Backend
from .errors import TargetError
from .machine import cpu_threads

__all__ = [
    "Target",
    "TargetInfo",
    "available_targets",
    "check_available",
    "default_target",
    "list_targets",
    "parse_target",
    "target_forms",
]


def target_forms() -> list[str]:
    """The accepted spellings of target names, for help and error messages."""
    forms: list[str] = []
    for b in BACKENDS.values():
        if b.devices == ("cpu",):
            forms += [b.name, f"{b.name}-t<N>"]
        else:
            forms += [b.name, f"{b.name}-cpu", f"{b.name}-cpu-t<N>"]
            forms += [f"{b.name}-{d}" for d in b.devices if d != "cpu"]
    return forms


def _forms_message() -> str:
    return (f"valid forms: {', '.join(target_forms())} "
            f"(N = CPU threads, 1..{cpu_threads()} on this machine; "
            f"a name without -t<N> means all threads)")


def _name(backend: str, device: str, threads: str) -> str:
    """``<backend>-<device>`` off the CPU; on it ``<backend>-t<threads>`` for a backend that
    only runs there, else ``<backend>-cpu-t<threads>``."""
    if device != "cpu":
        return f"{backend}-{device}"
    if BACKENDS[backend].devices == ("cpu",):
        return f"{backend}-t{threads}"
    return f"{backend}-cpu-t{threads}"


@dataclass(frozen=True, order=True)
class Target:
    """A backend, a device and a CPU thread count.  Immutable and hashable.

    CUDA targets carry ``threads == 1`` (normalised) and have no ``-t<N>`` in their name.
    """

    backend: str
    threads: int
    device: str = "cpu"

    def __post_init__(self) -> None:
        backend = _ALIASES.get(self.backend, self.backend)
        device = _ALIASES.get(self.device, self.device)
        if backend not in BACKENDS:
            raise TargetError(f"unknown backend {self.backend!r}; known: {', '.join(BACKENDS)}")
        if device not in BACKENDS[backend].devices:
            raise TargetError(
                f"backend {backend!r} has no device {self.device!r}; "
                f"it runs on: {', '.join(BACKENDS[backend].devices)}"
            )
        threads = self.threads
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise TargetError(f"threads must be a positive integer, got {threads!r}")
        if device != "cpu":
            threads = 1
        object.__setattr__(self, "backend", backend)
        object.__setattr__(self, "device", device)
        object.__setattr__(self, "threads", threads)

    @property
    def name(self) -> str:
        """``numba-t2``, ``c-t1``, ``jax-cpu-t2``, ``jax-cuda``, ``pytorch-cpu-t2``..."""
        return _name(self.backend, self.device, str(self.threads))

    @property
    def spec(self) -> Backend:
        """The registry entry of this target's backend."""
        return BACKENDS[self.backend]

    @property
    def mode(self) -> str:
        """PyTensor mode name used to compile for this target."""
        return BACKENDS[self.backend].mode

    def available(self) -> tuple[bool, str]:
        return BACKENDS[self.backend].available(self.device)

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.backend, "device": self.device, "threads": self.threads}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str) -> Target:
        """Inverse of :meth:`to_json`; a target name string is accepted too."""
        if isinstance(data, str):
            return parse_target(data)
        if not isinstance(data, Mapping):
            raise TargetError(f"a target must be a JSON object or name, got {type(data).__name__}")
        unknown = set(data) - {"backend", "device", "threads", "name"}
        if unknown or "backend" not in data or "threads" not in data:
            raise TargetError(
                "a target object needs 'backend' and 'threads' (and optionally 'device'); "
                f"got keys {sorted(data)}"
            )
        target = cls(backend=data["backend"], threads=data["threads"],
                     device=data.get("device", "cpu"))
        if "name" in data and data["name"] != target.name:
            raise TargetError(f"target name {data['name']!r} does not match {target.name!r}")
        return target

    def __str__(self) -> str:
        return self.name


_NAME_RE = re.compile(r"^(?P<backend>[a-z]+)(?:-(?P<device>[a-z]+))?(?:-t(?P<threads>\d+))?$")


def parse_target(text: str | Target) -> Target:
    """Parse a target name (see :func:`target_forms`); a :class:`Target` is returned as is.

    ``numba`` / ``c`` / ``jax`` / ``jax-cpu`` ... without ``-t<N>`` mean all usable threads
    (:func:`cpu_threads`).  Parsing does not check availability (see :func:`check_available`).
    """
    if isinstance(text, Target):
        return text
    if not isinstance(text, str):
        raise TargetError(f"a target name must be a string, got {type(text).__name__}")
    s = text.strip().lower()
    m = _NAME_RE.match(s)
    if not m:
        raise TargetError(f"invalid target {text!r}; {_forms_message()}")
    backend = _ALIASES.get(m["backend"], m["backend"])
    if backend not in BACKENDS:
        raise TargetError(f"unknown backend in target {text!r}; {_forms_message()}")
    device = _ALIASES.get(m["device"] or "cpu", m["device"] or "cpu")
    if device not in BACKENDS[backend].devices:
        raise TargetError(
            f"invalid target {text!r}: backend {backend!r} runs on "
            f"{', '.join(BACKENDS[backend].devices)}; {_forms_message()}"
        )
    if m["threads"] is not None:
        if device != "cpu":
            raise TargetError(f"invalid target {text!r}: {device} targets take no -t<N>; "
                              f"{_forms_message()}")
        threads = int(m["threads"])
        if threads < 1:
            raise TargetError(f"invalid target {text!r}: threads must be >= 1; "
                              f"{_forms_message()}")
    else:
        threads = cpu_threads() if device == "cpu" else 1
    return Target(backend, threads, device)


def default_target() -> Target:
    """``numba`` with all usable threads."""
    return Target(DEFAULT_BACKEND, cpu_threads())


def check_available(target: Target | str) -> Target:
    """Parse ``target`` and raise :class:`TargetError` with the reason if it is unavailable."""
    t = parse_target(target)
    ok, reason = t.available()
    if not ok:
        raise TargetError(f"target {t.name} is not available: {reason}")
    return t


@dataclass(frozen=True)
class TargetInfo:
    """One row of ``autotune targets``: a backend on a device."""

    backend: str
    device: str
    #: CPU thread counts offered (``()`` for CUDA: no thread count applies).
    threads: tuple[int, ...]
    available: bool
    #: Why it is unavailable ("" when available).
    reason: str
    #: What was found when available (versions, BLAS flags).
    detail: str
    mode: str
    description: str
    #: Whether the thread count is enforced (False: recorded only, e.g. jax on CPU).
    threads_enforced: bool

    @property
    def name(self) -> str:
        """Name pattern, e.g. ``numba-t<N>`` or ``jax-cuda``."""
        return _name(self.backend, self.device, "<N>")

    def targets(self, max_threads: int | None = None) -> list[Target]:
        if self.device != "cpu":
            return [Target(self.backend, 1, self.device)]
        return [Target(self.backend, n, self.device)
                for n in self.threads if max_threads is None or n <= max_threads]

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend, "device": self.device, "name": self.name,
            "threads": list(self.threads), "available": self.available, "reason": self.reason,
            "detail": self.detail, "mode": self.mode, "description": self.description,
            "threads_enforced": self.threads_enforced,
        }


def list_targets() -> list[TargetInfo]:
    """Every backend/device pair, available or not (with the reason).  Imports jax/torch
    when installed, to probe them; results are cached per process."""
    n = cpu_threads()
    infos = []
    for b in BACKENDS.values():
        for device in b.devices:
            ok, reason = b.available(device)
            infos.append(TargetInfo(
                backend=b.name, device=device,
                threads=tuple(range(1, n + 1)) if device == "cpu" else (),
                available=ok, reason=reason, detail=b.detail(device) if ok else "",
                mode=b.mode, description=b.description,
                threads_enforced=b.threads_enforced if device == "cpu" else False,
            ))
    return infos


def available_targets(max_threads: int | None = None) -> list[Target]:
    """Every available target: CPU backends with 1..cpu_threads() threads (at most
    ``max_threads``), CUDA targets once.  Order: numba, c, jax, pytorch; cpu before cuda."""
    if max_threads is not None and max_threads < 1:
        raise TargetError(f"max_threads must be >= 1, got {max_threads}")
    out: list[Target] = []
    for info in list_targets():
        if info.available:
            out.extend(info.targets(max_threads))
    return out
