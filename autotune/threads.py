"""Thread limits applied while a compiled candidate runs.

Thread counts
-------------
``numba`` and ``c``: the count is applied to every BLAS library loaded in the process through
threadpoolctl (numpy's and scipy's OpenBLAS copies, which numba's ``@``/``dot`` and LAPACK calls
go through, and the system BLAS the C backend links).  ``pytorch`` on CPU: additionally
``torch.set_num_threads``.  ``jax`` on CPU: XLA sizes its CPU thread pool once, when jax starts,
so the count is only recorded (:attr:`TargetInfo.threads_enforced` is False).  CUDA targets have
no thread count (it is stored as 1 and left out of the name).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
from collections.abc import Iterator
from typing import Any

from .blas_setup import _preload_c_blas
from .target_names import Target, parse_target

__all__ = ["thread_limit"]


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
