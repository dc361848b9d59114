"""Deferred JAX / PyTorch dispatch of the project's PyTensor ops.

Importing jax or torch costs seconds, and neither is needed unless a graph is compiled in
``mode="JAX"`` / ``"PYTORCH"`` -- which is exactly when PyTensor's linker imports
``pytensor.link.jax.dispatch`` / ``pytensor.link.pytorch.dispatch``. So a kernel module that
defines an op hands its registration function to :func:`on_backend_import` instead of calling
``jax_funcify.register`` itself:

* if the dispatcher module is already imported, the function runs at once;
* otherwise a post-import hook on ``sys.meta_path`` (:class:`_BackendDispatchHook`, installed
  once, watching only the names in :data:`DISPATCHERS`) runs every function handed in for that
  dispatcher right after the dispatcher module is executed.

Either import order therefore ends with the ops registered. When the backend is not installed
the registration function's own ``import jax`` fails; it returns False and nothing is
registered. This module imports neither jax, torch, numba nor PyTensor.
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Callable

__all__ = ["DISPATCHERS", "on_backend_import"]

#: Backend name -> the PyTensor module whose import means the backend is being compiled for.
DISPATCHERS = {
    "jax": "pytensor.link.jax.dispatch",
    "pytorch": "pytensor.link.pytorch.dispatch",
}

# dispatcher module name -> registration functions handed in so far (in order)
_REGISTRARS: dict[str, list[Callable[[], bool]]] = {m: [] for m in DISPATCHERS.values()}


def on_backend_import(backend: str, register: Callable[[], bool]) -> None:
    """Run ``register`` (which registers ops with the backend's funcify dispatcher and returns
    whether it could) now if the backend's dispatcher is imported, else right after it is."""
    if backend not in DISPATCHERS:
        raise KeyError(f"unknown backend {backend!r}; backends: {', '.join(DISPATCHERS)}")
    module = DISPATCHERS[backend]
    _REGISTRARS[module].append(register)
    _install_hook()
    if module in sys.modules:
        register()


def _run_registrars(module: str) -> None:
    for register in _REGISTRARS.get(module, ()):
        register()


class _RegisterAfterExecLoader(importlib.abc.Loader):
    """Delegates to the real loader, then runs a registration callback on the fresh module."""

    def __init__(self, loader, callback):
        self._loader = loader
        self._callback = callback

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        self._callback()

    def __getattr__(self, name):  # get_filename, get_data, get_resource_reader, ...
        return getattr(self._loader, name)


class _BackendDispatchHook(importlib.abc.MetaPathFinder):
    """Finds the watched dispatcher modules with the other finders and wraps their loader."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _REGISTRARS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _RegisterAfterExecLoader(
                        spec.loader, lambda: _run_registrars(fullname)
                    )
                return spec
        return None


def _install_hook() -> None:
    if not any(isinstance(f, _BackendDispatchHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _BackendDispatchHook())
