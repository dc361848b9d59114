"""Process set-up for the BLAS libraries: environment defaults and the C backend's BLAS.

* :func:`configure_environment` sets the threading libraries' variables (and, when it can,
  PyTensor's BLAS flags) before numpy or PyTensor are loaded;
* :func:`c_blas_ldflags` resolves the BLAS the C backend links, fixing it up when possible;
* ``_preload_c_blas`` loads that BLAS early so thread limits reach it, and
  ``_c_blas_kernel_hint`` tells when it runs a slow generic kernel.

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
import os
import re
import sys
import warnings
from typing import Any

__all__ = ["ENVIRONMENT_DEFAULTS", "c_blas_ldflags", "configure_environment"]

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


#: Defaults :func:`configure_environment` sets unless the variable is already set.
ENVIRONMENT_DEFAULTS: dict[str, str] = {
    # numpy and scipy each load their own OpenBLAS; idle OpenBLAS threads spin for 2^28 cycles
    # by default and steal cores from the other copy. 2^12 cycles stops that fight and still
    # keeps the threads awake between the many small calls of a factorization: on the 2-core
    # Xeon of results/ (plans and SciPy experts, medians of 30 interleaved calls) 12 against 1
    # ran ETKF n=4000 in 18.8 against 22.4 ms, EnKF 36.0 against 39.5, Kalman n=2000 143.8-148.0
    # against 152.0-152.2 (16 ran like 12; both copies set alike in each run).
    "OPENBLAS_THREAD_TIMEOUT": "12",
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
