"""Compilation targets: which PyTensor backend, on which device, with how many threads.

A :class:`Target` names one way of running a compiled candidate, e.g. ``numba-t2`` (PyTensor's
Numba backend, BLAS limited to two threads), ``c-t1`` (PyTensor's C backend, one BLAS thread),
``jax-cpu-t2``, ``jax-cuda``, ``pytorch-cpu-t2`` or ``pytorch-cuda``.  This module is the one
place to import them from; each job lives in a module of its own:

* :mod:`autotune.target_names` -- the names and their parsing (:func:`parse_target`,
  :meth:`Target.name`, JSON round trip) and what this machine offers (:func:`list_targets`,
  :func:`available_targets`),
* :mod:`autotune.backends` -- the registry of backends (:data:`BACKENDS`) and their
  availability, with the human reason when something is not available,
* :mod:`autotune.compiling` -- compiling a PyTensor graph for a target
  (:func:`compile_function`),
* :mod:`autotune.threads` -- the thread limit applied while measuring (:func:`thread_limit`),
* :mod:`autotune.blas_setup` -- process environment defaults that must be set early
  (:func:`configure_environment`) and the C backend's BLAS (:func:`c_blas_ldflags`),
* :mod:`autotune.machine` -- the usable cores (:func:`cpu_threads`) and a description of the
  machine for stored results (:func:`machine_fingerprint`).

Importing this module loads neither numpy nor PyTensor.
"""

from __future__ import annotations

from .backends import BACKENDS, DEFAULT_BACKEND, DEVICES, Backend, clear_availability_cache
from .blas_setup import ENVIRONMENT_DEFAULTS, c_blas_ldflags, configure_environment
from .blas_setup import _preload_c_blas as _preload_c_blas
from .blas_setup import _system_openblas as _system_openblas
from .compiling import CompiledFunction, compile_function
from .machine import cpu_threads, machine_fingerprint
from .target_names import (
    Target,
    TargetInfo,
    available_targets,
    check_available,
    default_target,
    list_targets,
    parse_target,
    target_forms,
)
from .threads import _controller as _controller
from .threads import thread_limit

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
