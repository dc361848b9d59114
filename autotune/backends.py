"""The registry of PyTensor backends autotune compiles for, and what this machine offers.

:data:`BACKENDS` holds one :class:`Backend` per PyTensor backend (``numba``, ``c``, ``jax``,
``pytorch``): its PyTensor mode, its devices, whether it compiles lazily and whether a thread
count can be enforced, and a probe that says whether it is available here -- with the human
reason when it is not (:meth:`Backend.available`, cached per process).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .blas_setup import _C_BLAS, _c_blas_kernel_hint, c_blas_ldflags
from .machine import _version

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "DEVICES", "Backend", "clear_availability_cache"]

DEVICES: tuple[str, ...] = ("cpu", "cuda")
DEFAULT_BACKEND = "numba"


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
    #: Whether autotune's symmetric kernels (``SymRankK``, ``SymProduct`` with ``mirror``,
    #: ``SPDInverse``) run as BLAS/LAPACK on one triangle, mirrored, so that their results
    #: are exactly symmetric (the JAX and PyTorch forms compute a full product instead).
    mirrors_exactly: bool = False

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


def _check_numba(device: str) -> tuple[bool, str, str]:
    import numba  # noqa: F401
    from pytensor.link.numba.linker import NumbaLinker  # noqa: F401

    return True, "", f"numba {_version('numba')}"


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
        mirrors_exactly=True, description="PyTensor Numba backend (default)",
        _check=_check_numba,
    ),
    "c": Backend(
        name="c", mode="CVM", devices=("cpu",), lazy_jit=False, threads_enforced=True,
        mirrors_exactly=True,
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
