"""Compilation targets: which PyTensor backend, on which device, with how many threads.

A :class:`Target` names one way of running a compiled candidate, e.g. ``numba-t2`` (PyTensor's
Numba backend, BLAS limited to two threads), ``c-t1`` (PyTensor's C backend, one BLAS thread),
``jax-cpu-t2``, ``jax-cuda``, ``pytorch-cpu-t2`` or ``pytorch-cuda``.  This module owns

* the names and their parsing (:func:`parse_target`, :meth:`Target.name`, JSON round trip),
* the registry of backends (:data:`BACKENDS`) and what is available on this machine, with the
  human reason when something is not (:func:`list_targets`, :func:`available_targets`),
* compiling a PyTensor graph for a target (:func:`compile_function`),
* the thread limit applied while measuring (:func:`thread_limit`),
* process environment defaults that must be set early (:func:`configure_environment`),
* a description of the machine for stored results (:func:`machine_fingerprint`).

Thread counts
-------------
``numba`` and ``c``: the count is applied to every BLAS library loaded in the process through
threadpoolctl (numpy's and scipy's OpenBLAS copies, which numba's ``@``/``dot`` and LAPACK calls
go through, and the system BLAS the C backend links).  ``pytorch`` on CPU: additionally
``torch.set_num_threads``.  ``jax`` on CPU: XLA sizes its CPU thread pool once, when jax starts,
so the count is only recorded (:attr:`TargetInfo.threads_enforced` is False).  CUDA targets have
no thread count (it is stored as 1 and left out of the name).

Devices
-------
For ``jax`` the compiled function is called inside ``jax.default_device(<device>)``: PyTensor's
JAX linker turns numpy inputs into arrays with ``jnp.array`` (placed on the default device) and
jitted code runs where its uncommitted inputs live, so the context selects CPU or GPU.  Outputs
(jax arrays) are converted with ``np.asarray``, which also waits for the asynchronous dispatch
to finish -- important for timing.  For ``pytorch`` the call runs inside ``torch.device(...)``:
PyTensor's PyTorch linker converts inputs with ``torch.as_tensor`` (which follows the default
device) and already returns ``out.cpu().numpy()``.

The C backend and BLAS
----------------------
PyTensor's C backend links a Fortran-interface BLAS given by ``pytensor.config.blas__ldflags``.
A pip-installed numpy ships OpenBLAS with renamed symbols (``scipy_openblas_dgemm_``...) that
cannot be linked, and PyTensor's automatic search (``default_blas_ldflags`` in
``pytensor/link/c/cmodule.py``) does not accept Debian's ``libopenblas-dev`` alone either (it
wants ``blas``+``cblas``, or ``openblas``+``gfortran``+``gomp`` development libraries, i.e. also
``libgfortran-12-dev``).  So: when ``blas__ldflags`` is empty (and not set by the user) and a
system ``libopenblas.so`` exists, we verify ``-lopenblas`` links and runs with PyTensor's own
``try_blas_flag`` and set it (:func:`c_blas_ldflags`); :func:`configure_environment` does the
same up front through ``PYTENSOR_FLAGS`` when PyTensor is not imported yet, which also avoids
PyTensor's search and its warning.  The ``c`` target is reported unavailable unless a BLAS can
be linked.  Old system OpenBLAS builds (Debian 12: 0.3.21) fall back to the generic
``Prescott`` kernel on newer CPUs (e.g. Sapphire Rapids), 4-5x slower; the ``c`` target's
detail then suggests ``OPENBLAS_CORETYPE`` (not set automatically: a wrong value crashes).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autotune.errors import CompileError, TargetError

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "DEVICES",
    "ENVIRONMENT_DEFAULTS",
    "Backend",
    "CompiledFunction",
    "Target",
    "TargetInfo",
    "available_targets",
    "c_blas_ldflags",
    "check_available",
    "clear_availability_cache",
    "compile_function",
    "configure_environment",
    "cpu_threads",
    "default_target",
    "list_targets",
    "machine_fingerprint",
    "parse_target",
    "target_forms",
    "thread_limit",
]

DEVICES: tuple[str, ...] = ("cpu", "cuda")
DEFAULT_BACKEND = "numba"

_BLAS_WARNING = "PyTensor could not link to a BLAS"

# Directories GNU ld searches by default on common Linux layouts: a libopenblas.so here links
# with a plain ``-lopenblas``.
_SYSTEM_LIB_DIRS: tuple[str, ...] = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib/powerpc64le-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
)


def cpu_threads() -> int:
    """Logical CPUs this process may run on (``sched_getaffinity``, else ``os.cpu_count()``)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, n)


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------

#: Defaults :func:`configure_environment` sets unless the variable is already set.
ENVIRONMENT_DEFAULTS: dict[str, str] = {
    # numpy and scipy each load their own OpenBLAS; idle OpenBLAS threads spin for a long time
    # by default and steal cores from the other copy.  1 = sleep almost at once.
    "OPENBLAS_THREAD_TIMEOUT": "1",
    # Same problem for Intel OpenMP (MKL builds): do not spin after a parallel region.
    "KMP_BLOCKTIME": "0",
    # Honour the thread counts we request instead of letting MKL / OpenMP pick fewer.
    "MKL_DYNAMIC": "FALSE",
    "OMP_DYNAMIC": "FALSE",
}


def _pytensor_rc_sets(key: str) -> bool:
    paths = os.environ.get("PYTENSORRC", os.path.expanduser("~/.pytensorrc"))
    for path in paths.split(os.pathsep):
        try:
            with open(os.path.expanduser(path), encoding="utf-8", errors="replace") as fh:
                text = fh.read()
        except OSError:
            continue
        # .pytensorrc spells it "ldflags" under a [blas] section, or blas__ldflags.
        if key in text or re.search(r"^\s*ldflags\s*=", text, re.MULTILINE):
            return True
    return False


def _system_openblas() -> str | None:
    for d in _SYSTEM_LIB_DIRS:
        path = os.path.join(d, "libopenblas.so")
        if os.path.exists(path):
            return path
    return None


def configure_environment(*, pytensor_blas: bool = True) -> dict[str, str]:
    """Set process-wide defaults for threading libraries; returns the variables it set.

    Call it as early as possible -- ideally before numpy is imported, because OpenBLAS reads
    its variables when it is loaded.  The ``autotune`` CLI calls it first thing, before
    importing anything numeric.  Variables already set by the user are left alone.

    With ``pytensor_blas`` (default) and PyTensor not yet imported, ``blas__ldflags=-lopenblas``
    is appended to ``PYTENSOR_FLAGS`` when a system ``libopenblas.so`` exists and neither
    ``PYTENSOR_FLAGS`` nor a ``.pytensorrc`` sets the BLAS flags.  This enables the C backend
    on Debian/Ubuntu with ``libopenblas-dev`` and skips PyTensor's slow BLAS search.
    """
    changed: dict[str, str] = {}
    for key, value in ENVIRONMENT_DEFAULTS.items():
        if key not in os.environ:
            os.environ[key] = value
            changed[key] = value
    if pytensor_blas and "pytensor" not in sys.modules:
        flags = os.environ.get("PYTENSOR_FLAGS", "")
        if (
            "blas__ldflags" not in flags
            and "blas.ldflags" not in flags
            and not _pytensor_rc_sets("blas__ldflags")
            and _system_openblas() is not None
        ):
            setting = "blas__ldflags=-lopenblas"
            new = f"{flags},{setting}" if flags.strip() else setting
            os.environ["PYTENSOR_FLAGS"] = new
            changed["PYTENSOR_FLAGS"] = new
    return changed


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------

_AVAILABILITY: dict[tuple[str, str], tuple[bool, str]] = {}
_DETAIL: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Backend:
    """One PyTensor backend autotune can compile for."""

    name: str
    #: PyTensor predefined mode name (``pytensor.compile.mode.get_mode``).
    mode: str
    devices: tuple[str, ...]
    description: str
    #: The backend compiles on the first call (Numba, ``jax.jit``, ``torch.compile``).
    lazy_jit: bool
    #: Whether :func:`thread_limit` can enforce a CPU thread count for this backend.
    threads_enforced: bool
    _check: Callable[[str], tuple[bool, str, str]] = field(repr=False, compare=False)

    def available(self, device: str = "cpu") -> tuple[bool, str]:
        """``(True, "")`` or ``(False, human reason)``; cached per process."""
        key = (self.name, device)
        if key not in _AVAILABILITY:
            if device not in self.devices:
                result = (False, f"backend {self.name!r} has no device {device!r}", "")
            else:
                try:
                    result = self._check(device)
                except Exception as exc:  # a broken install must not crash `autotune targets`
                    result = (False, f"{self.name} backend failed to load: "
                              f"{type(exc).__name__}: {exc}", "")
            _AVAILABILITY[key] = (bool(result[0]), "" if result[0] else result[1])
            _DETAIL[key] = result[2]
        return _AVAILABILITY[key]

    def detail(self, device: str = "cpu") -> str:
        """Short description of what was found (versions, BLAS flags); empty if unavailable."""
        self.available(device)
        return _DETAIL.get((self.name, device), "")

    def pytensor_mode(self) -> Any:
        """The PyTensor ``Mode`` object for this backend."""
        from pytensor.compile.mode import get_mode

        return get_mode(self.mode)


def clear_availability_cache() -> None:
    """Forget cached availability results (and the resolved C BLAS flags)."""
    _AVAILABILITY.clear()
    _DETAIL.clear()
    _C_BLAS.clear()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _check_numba(device: str) -> tuple[bool, str, str]:
    import numba  # noqa: F401
    from pytensor.link.numba.linker import NumbaLinker  # noqa: F401

    return True, "", f"numba {_version('numba')}"


_C_BLAS: dict[str, Any] = {}


def _blas_ldflags_param() -> Any:
    import pytensor

    return type(pytensor.config).__dict__.get("blas__ldflags")


def c_blas_ldflags() -> str:
    """The BLAS link flags PyTensor's C backend uses, fixing them up when possible.

    Returns ``pytensor.config.blas__ldflags`` after PyTensor's own detection.  If that is empty,
    was not set explicitly by the user (``PYTENSOR_FLAGS`` / ``.pytensorrc``) and a system
    ``libopenblas.so`` links and runs (checked with PyTensor's ``try_blas_flag``), it sets
    ``pytensor.config.blas__ldflags = "-lopenblas"`` and returns that.  Cached.
    """
    if "flags" in _C_BLAS:
        return _C_BLAS["flags"]
    import pytensor

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_BLAS_WARNING)
        flags = pytensor.config.blas__ldflags
    param = _blas_ldflags_param()
    user_set = param is not None and not getattr(param, "is_default", True)
    if not flags and not user_set and pytensor.config.cxx:
        lib = _system_openblas()
        if lib is not None:
            from pytensor.link.c.cmodule import try_blas_flag

            if try_blas_flag(["-lopenblas"]):
                pytensor.config.blas__ldflags = "-lopenblas"
                flags = "-lopenblas"
    _C_BLAS["flags"] = flags
    return flags


def _check_c(device: str) -> tuple[bool, str, str]:
    import pytensor

    if not pytensor.config.cxx:
        return (False, "no C++ compiler for the C backend (pytensor.config.cxx is empty): "
                "apt-get install g++", "")
    flags = c_blas_ldflags()
    if not flags:
        return (False, "no BLAS for the C backend: apt-get install libopenblas-dev "
                "(or set PYTENSOR_FLAGS=blas__ldflags=...)", "")
    return True, "", f"{pytensor.config.cxx}, blas__ldflags={flags!r}{_c_blas_kernel_hint()}"


def _check_jax(device: str) -> tuple[bool, str, str]:
    if importlib.util.find_spec("jax") is None:
        return False, "jax is not installed: pip install 'autotune[jax]'", ""
    import jax
    import pytensor.link.jax.dispatch  # noqa: F401  (registers conversions, enables x64)

    if device == "cuda":
        try:
            gpus = jax.devices("gpu")
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return (False, f"no CUDA device for jax ({first}); needs an NVIDIA GPU and a "
                    "CUDA jaxlib: pip install 'jax[cuda12]' (or 'jax[cuda13]')", "")
        if not gpus:
            return False, "no CUDA device for jax (jax.devices('gpu') is empty)", ""
        return True, "", f"jax {jax.__version__}, {gpus[0].device_kind}"
    jax.devices("cpu")
    return True, "", f"jax {jax.__version__}"


def _cxx_compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def _check_pytorch(device: str) -> tuple[bool, str, str]:
    if importlib.util.find_spec("torch") is None:
        return False, "torch is not installed: pip install 'autotune[torch]'", ""
    import pytensor.link.pytorch.dispatch  # noqa: F401
    import torch

    if device == "cuda":
        if not torch.cuda.is_available():
            built = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only"
            return (False, f"no CUDA device (torch.cuda.is_available() is False; torch "
                    f"{torch.__version__} is built for {built})", "")
        return True, "", f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}"
    if _cxx_compiler() is None:
        return (False, "torch.compile's CPU backend needs a C++ compiler: apt-get install g++",
                "")
    return True, "", f"torch {torch.__version__}"


#: The backends autotune knows, in display order; ``numba`` is the default.
BACKENDS: dict[str, Backend] = {
    "numba": Backend(
        name="numba", mode="NUMBA", devices=("cpu",), lazy_jit=True, threads_enforced=True,
        description="PyTensor Numba backend (default)", _check=_check_numba,
    ),
    "c": Backend(
        name="c", mode="CVM", devices=("cpu",), lazy_jit=False, threads_enforced=True,
        description="PyTensor C backend (FAST_RUN rewrites, cvm linker, system BLAS)",
        _check=_check_c,
    ),
    "jax": Backend(
        name="jax", mode="JAX", devices=("cpu", "cuda"), lazy_jit=True, threads_enforced=False,
        description="PyTensor JAX backend (jax.jit / XLA)", _check=_check_jax,
    ),
    "pytorch": Backend(
        name="pytorch", mode="PYTORCH", devices=("cpu", "cuda"), lazy_jit=True,
        threads_enforced=True, description="PyTensor PyTorch backend (torch.compile)",
        _check=_check_pytorch,
    ),
}

_ALIASES = {"torch": "pytorch", "cvm": "c", "gpu": "cuda"}


# --------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------


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
        if self.device != "cpu":
            return f"{self.backend}-{self.device}"
        if BACKENDS[self.backend].devices == ("cpu",):
            return f"{self.backend}-t{self.threads}"
        return f"{self.backend}-cpu-t{self.threads}"

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
        if self.device != "cpu":
            return f"{self.backend}-{self.device}"
        if BACKENDS[self.backend].devices == ("cpu",):
            return f"{self.backend}-t<N>"
        return f"{self.backend}-cpu-t<N>"

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


# --------------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------------


def _preload_c_blas() -> list[str]:
    """Load the BLAS the C backend links (the ``-l...blas...``/``-l...mkl...`` libraries of
    :func:`c_blas_ldflags`), so threadpoolctl can limit it even when a limit is entered before
    the first C module is imported.  The dynamic loader later matches the modules' dependency
    by SONAME, so the library is not loaded twice.  Returns the real paths loaded."""
    if "preloaded" in _C_BLAS:
        return _C_BLAS["preloaded"]
    flags = (_C_BLAS.get("flags") or "").split()
    if not flags:
        return []
    import ctypes

    loaded: list[str] = []
    dirs = [f[2:] for f in flags if f.startswith("-L")] + list(_SYSTEM_LIB_DIRS)
    for lib in (f[2:] for f in flags if f.startswith("-l")):
        if "blas" not in lib and "mkl" not in lib:
            continue
        for d in dirs:
            path = os.path.join(d, f"lib{lib}.so")
            if os.path.exists(path):
                real = os.path.realpath(path)
                with contextlib.suppress(OSError):
                    ctypes.CDLL(real)
                    loaded.append(real)
                break
    _C_BLAS["preloaded"] = loaded
    return loaded


def _c_blas_kernel_hint() -> str:
    """A hint when the C backend's OpenBLAS fell back to the generic ``Prescott`` kernel.

    Old OpenBLAS builds (Debian 12 ships 0.3.21) do not recognise newer CPUs (e.g. Sapphire
    Rapids) and run 4-5x slower; ``OPENBLAS_CORETYPE`` set before start-up fixes that.
    """
    paths = set(_preload_c_blas())
    if not paths:
        return ""
    from threadpoolctl import threadpool_info

    infos = [i for i in threadpool_info() if i.get("internal_api") == "openblas"]
    mine = [i for i in infos if os.path.realpath(i.get("filepath", "")) in paths]
    others = {i.get("architecture") for i in infos if i not in mine} - {None, "Prescott"}
    if any(i.get("architecture") == "Prescott" for i in mine) and others:
        arch = sorted(others)[0]
        return (f"; its OpenBLAS {mine[0].get('version')} uses the slow generic 'Prescott' "
                f"kernel on this CPU: export OPENBLAS_CORETYPE={arch} (numpy's choice)")
    return ""


_CONTROLLER: dict[str, Any] = {}


def _controller() -> Any:
    """A cached ``ThreadpoolController`` (scanning the loaded libraries costs about a
    millisecond, too much for every call of a tuned function); rescanned whenever new modules
    were imported since, as they may have loaded another BLAS."""
    from threadpoolctl import ThreadpoolController

    key = len(sys.modules)
    if _CONTROLLER.get("key") != key:
        _CONTROLLER["ctl"] = ThreadpoolController()
        _CONTROLLER["key"] = len(sys.modules)
    return _CONTROLLER["ctl"]


@contextlib.contextmanager
def thread_limit(target: Target | str) -> Iterator[Target]:
    """Limit the threads the computation may use while inside the block.

    CPU targets: ``threadpoolctl.threadpool_limits(limits=target.threads, user_api="blas")``
    on every loaded BLAS; for ``pytorch`` also ``torch.set_num_threads`` (restored after); for
    ``jax`` the count cannot be changed after start-up and is only recorded.  CUDA targets:
    nothing is limited.  Yields the parsed target.
    """
    t = parse_target(target)
    if t.device != "cpu":
        yield t
        return
    if t.backend == "c":
        _preload_c_blas()
    torch = None
    if t.backend == "pytorch" and importlib.util.find_spec("torch") is not None:
        torch = importlib.import_module("torch")
    previous = torch.get_num_threads() if torch is not None else None
    with _controller().limit(limits=t.threads, user_api="blas"):
        if torch is not None:
            torch.set_num_threads(t.threads)
        try:
            yield t
        finally:
            if torch is not None:
                torch.set_num_threads(previous)


# --------------------------------------------------------------------------------------------
# Compiling
# --------------------------------------------------------------------------------------------


def _device_context(t: Target) -> Callable[[], contextlib.AbstractContextManager[Any]] | None:
    """A factory of the context in which calls run, or None when none is needed."""
    if t.backend == "jax":
        import jax

        if t.device == "cuda":
            dev = jax.devices("gpu")[0]
        else:
            if all(d.platform == "cpu" for d in jax.devices()):
                return None  # the default device already is the CPU
            dev = jax.devices("cpu")[0]
        return functools.partial(jax.default_device, dev)
    if t.backend == "pytorch" and t.device == "cuda":
        import torch

        dev = torch.device("cuda")
        return lambda: dev
    return None


def _to_numpy(out: Any) -> Any:
    import numpy as np

    if isinstance(out, list | tuple):
        return type(out)(np.asarray(o) for o in out)
    return np.asarray(out)


class CompiledFunction:
    """A compiled PyTensor function bound to a target; call it with numpy arrays.

    Outputs are numpy arrays (device results are copied back, which also synchronises).
    Backends that compile lazily (numba, jax, pytorch) compile on the first call; an
    exception raised then -- other than a bad argument -- becomes :class:`CompileError`.
    Calls are not thread-limited: wrap them in :func:`thread_limit`.
    """

    __slots__ = ("target", "function", "_context", "_convert", "_warm")

    def __init__(self, target: Target, function: Any,
                 context: Callable[[], contextlib.AbstractContextManager[Any]] | None,
                 convert: bool) -> None:
        self.target = target
        #: The underlying ``pytensor.compile.function.types.Function``.
        self.function = function
        self._context = context
        self._convert = convert
        self._warm = not target.spec.lazy_jit

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self._warm:
            return self._first_call(args, kwargs)
        if self._context is None:
            out = self.function(*args, **kwargs)
        else:
            with self._context():
                out = self.function(*args, **kwargs)
        return _to_numpy(out) if self._convert else out

    def _check_arguments(self, args: tuple, kwargs: dict) -> None:
        """Raise the error PyTensor would raise for bad arguments, before compiling."""
        inputs = [i for i in self.function.maker.inputs if not i.implicit]
        if kwargs or len(args) != len(inputs):
            return  # leave keyword / count handling to PyTensor, errors stay TypeErrors
        for inp, arg in zip(inputs, args, strict=True):
            inp.variable.type.filter(arg, strict=inp.strict, allow_downcast=inp.allow_downcast)

    def _first_call(self, args: tuple, kwargs: dict) -> Any:
        self._check_arguments(args, kwargs)  # bad inputs: the original TypeError/ValueError
        try:
            if self._context is None:
                out = self.function(*args, **kwargs)
            else:
                with self._context():
                    out = self.function(*args, **kwargs)
            out = _to_numpy(out) if self._convert else out
        except Exception as exc:
            raise CompileError(
                f"cannot compile for target {self.target.name}: the {self.target.backend} "
                f"backend failed on the first call (lazy JIT): {type(exc).__name__}: "
                f"{_first_line(exc)}"
            ) from exc
        self._warm = True
        return out

    def __repr__(self) -> str:
        return f"CompiledFunction(target={self.target.name!r})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def compile_function(
    target: Target | str,
    inputs: Sequence[Any],
    outputs: Any,
    *,
    example_inputs: Sequence[Any] | None = None,
    rewrites: str = "chosen",
    **kw: Any,
) -> CompiledFunction:
    """``pytensor.function(inputs, outputs, mode=<the target's mode>, **kw)`` for ``target``.

    ``rewrites="chosen"`` (default) compiles what the graph states: PyTensor's
    kernel-choosing and merge rewrites are excluded (:mod:`autotune.pinned`), so a candidate's
    inverses, solves and factorizations are the ones its derivation chose.
    ``rewrites="pytensor"`` lets PyTensor's own rewrites decide (a peer baseline).

    Raises :class:`TargetError` when the target is unknown or unavailable here, and
    :class:`CompileError` (with the target name) when PyTensor cannot lower or compile the
    graph -- e.g. a Cholesky under ``pytorch``, which PyTensor's PyTorch backend lacks.  With
    ``example_inputs`` the function is called once (under :func:`thread_limit`) so lazy
    backends compile now and their failures surface here as :class:`CompileError`.
    """
    if "mode" in kw:
        raise TypeError("compile_function() chooses the PyTensor mode from the target; "
                        "do not pass mode=")
    t = check_available(target)
    if t.backend == "c":
        c_blas_ldflags()
    import pytensor

    try:
        from .pinned import pinned_mode

        mode = pinned_mode(t.spec.pytensor_mode(), rewrites)
        # an input the derivation never reads (a blocked identity: its blocks are identities
        # and zeros) is still an argument of the plan
        kw.setdefault("on_unused_input", "ignore")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_BLAS_WARNING)
            fn = pytensor.function(inputs, outputs, mode=mode, **kw)
    except Exception as exc:
        raise CompileError(
            f"cannot compile for target {t.name}: {type(exc).__name__}: {_first_line(exc)}"
        ) from exc
    compiled = CompiledFunction(t, fn, _device_context(t), convert=t.backend == "jax")
    if example_inputs is not None:
        with thread_limit(t):
            compiled(*example_inputs)
    return compiled


# --------------------------------------------------------------------------------------------
# Machine fingerprint
# --------------------------------------------------------------------------------------------

_FINGERPRINT_PACKAGES = ("numpy", "scipy", "sympy", "pytensor", "numba", "optuna")
_OPTIONAL_PACKAGES = ("jax", "jaxlib", "torch")
_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "OPENBLAS_THREAD_TIMEOUT", "KMP_BLOCKTIME", "MKL_DYNAMIC", "OMP_DYNAMIC",
               "NUMBA_NUM_THREADS", "XLA_FLAGS", "PYTENSOR_FLAGS")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                names = ("model name", "Model", "cpu model", "Processor")
                if key.strip() in names and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _gpu_names() -> list[str]:
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            res = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10, check=False)
            if res.returncode == 0:
                names = [n.strip() for n in res.stdout.splitlines() if n.strip()]
                if names:
                    return names
        except (OSError, subprocess.SubprocessError):
            pass
    torch = sys.modules.get("torch")  # only if already imported: importing it is slow
    if torch is not None:
        with contextlib.suppress(Exception):
            if torch.cuda.is_available():
                return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    jax = sys.modules.get("jax")
    if jax is not None:
        with contextlib.suppress(Exception):
            return [d.device_kind for d in jax.devices("gpu")]
    return []


def machine_fingerprint() -> dict[str, Any]:
    """A JSON-serialisable description of this machine and software stack.

    Keys: ``cpu_model``, ``logical_cores`` (``os.cpu_count()``), ``usable_cores``
    (affinity), ``machine``, ``system``, ``platform``, ``blas`` (the BLAS libraries
    threadpoolctl sees after numpy and scipy.linalg are imported -- plus the C backend's
    BLAS once one of its modules is loaded -- each with ``internal_api``, ``version``,
    ``filepath`` (basename), ``num_threads`` and, where known, ``architecture`` and
    ``threading_layer``), ``versions`` (python, numpy, scipy, sympy, pytensor, numba, optuna,
    and jax/jaxlib/torch if installed; None for a missing required package),
    ``hostname_sha256`` (first 16 hex digits of the SHA-256 of the host name -- never the
    raw name), ``gpu`` (first GPU name or None), ``gpus`` and ``thread_env`` (threading
    variables that are set).
    """
    import numpy  # noqa: F401
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_info

    blas = []
    for info in threadpool_info():
        if info.get("user_api") != "blas":
            continue
        entry = {
            "internal_api": info.get("internal_api"),
            "version": info.get("version"),
            "filepath": os.path.basename(info.get("filepath") or ""),
            "num_threads": info.get("num_threads"),
        }
        for extra in ("architecture", "threading_layer"):
            if info.get(extra) is not None:
                entry[extra] = info[extra]
        blas.append(entry)
    blas.sort(key=lambda e: (e["filepath"], str(e["version"])))

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _FINGERPRINT_PACKAGES:
        versions[name] = _version(name)
    for name in _OPTIONAL_PACKAGES:
        v = _version(name)
        if v is not None:
            versions[name] = v

    gpus = _gpu_names()
    fp = {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count() or 1,
        "usable_cores": cpu_threads(),
        "machine": platform.machine(),
        "system": platform.system(),
        "platform": platform.platform(),
        "blas": blas,
        "versions": versions,
        "hostname_sha256": hashlib.sha256(socket.gethostname().encode()).hexdigest()[:16],
        "gpu": gpus[0] if gpus else None,
        "gpus": gpus,
        "thread_env": {k: os.environ[k] for k in _THREAD_ENV if k in os.environ},
    }
    json.dumps(fp)  # guarantee: serialisable
    return fp
