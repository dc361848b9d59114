"""The heap policy: whether big temporaries keep their pages between calls.

A tuned computation allocates its intermediates on every call (PyTensor's Numba backend
allocates each result afresh). glibc serves blocks above ``M_MMAP_THRESHOLD`` (at most 32 MiB)
with a fresh ``mmap`` and gives them back with ``munmap`` when freed, so every call of a
Kalman update at n=4000 faults about 300 MB of pages back in: measured on the 2-core benchmark
machine, ~32 000 page faults and 0.1-0.4 s of system time per 1.6 s call, and run-to-run
spread of 1.57-2.15 s. With the heap **retained** (blocks come from the heap and stay there
when freed) the same call makes no page fault and takes 1.47-1.51 s.

Policies:

``retain``
    ``mallopt(M_MMAP_MAX, 0)`` (no mmap'd blocks: everything comes from the heap) and
    ``mallopt(M_TRIM_THRESHOLD, 1 GiB)`` (freed memory at the top of the heap is not handed
    back below 1 GiB). The process keeps its peak working set resident: the workspace of
    the computation is reused by the next call, as a hand-written kernel with preallocated
    buffers would. Memory handed out before the change is unaffected.
``system``
    The C library's own behaviour. Setting it after ``retain`` restores glibc's default
    limits (mmap for big blocks, 128 KiB trim threshold) and trims the heap.

The policy is process-wide (it is the C library's allocator) and only exists on glibc
(Linux); elsewhere :func:`set_heap_policy` changes nothing and says so by returning False.
The tuner's worker processes measure every candidate under one policy (``SearchConfig.heap``,
``autotune run --heap``), the plan records it, :func:`autotune.load_plan` applies the plan's
policy in the production process (``heap="system"`` to opt out), and
``python -m autotune.compare`` applies it to every variant alike.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform
import threading

from .errors import KnobError

__all__ = ["HEAP_POLICIES", "DEFAULT_HEAP_POLICY", "set_heap_policy", "heap_policy",
           "check_heap_policy"]

HEAP_POLICIES: dict[str, str] = {
    "retain": "big temporaries come from the heap and keep their pages between calls "
              "(glibc mallopt: M_MMAP_MAX=0, M_TRIM_THRESHOLD=1 GiB)",
    "system": "the C library's default allocator behaviour (fresh mmap per big block)",
}
DEFAULT_HEAP_POLICY = "retain"

# glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_RETAIN_TRIM = 2**30
_GLIBC_DEFAULT_MMAP_MAX = 65536
_GLIBC_DEFAULT_TRIM = 128 * 1024
_GLIBC_DEFAULT_MMAP_THRESHOLD = 128 * 1024

_lock = threading.Lock()
_current = "system"


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.mallopt.restype = ctypes.c_int
        libc.malloc_trim.argtypes = (ctypes.c_size_t,)
        libc.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def check_heap_policy(policy: str, what: str = "heap policy") -> str:
    """``policy`` if it is one of :data:`HEAP_POLICIES`, else a :class:`KnobError` naming
    ``what`` and the valid choices."""
    if policy not in HEAP_POLICIES:
        raise KnobError(f"{what} {policy!r} is not one of: {', '.join(HEAP_POLICIES)}")
    return policy


def set_heap_policy(policy: str) -> bool:
    """Apply ``policy`` to this process; True when the allocator was configured (glibc),
    False where the platform has no such control (nothing changes then)."""
    global _current
    check_heap_policy(policy)
    libc = _libc()
    if libc is None:
        return False
    with _lock:
        if policy == "retain":
            ok = libc.mallopt(_M_MMAP_MAX, 0) == 1
            ok = libc.mallopt(_M_TRIM_THRESHOLD, _RETAIN_TRIM) == 1 and ok
        else:
            ok = libc.mallopt(_M_MMAP_MAX, _GLIBC_DEFAULT_MMAP_MAX) == 1
            ok = libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_DEFAULT_MMAP_THRESHOLD) == 1 and ok
            ok = libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_DEFAULT_TRIM) == 1 and ok
            libc.malloc_trim(0)
        if ok:
            _current = policy
    return ok


def heap_policy() -> str:
    """The policy this module last applied in this process (``system`` when none was)."""
    return _current
