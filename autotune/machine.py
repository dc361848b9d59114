"""The machine: its usable cores and the fingerprint stored with every result.

:func:`cpu_threads` is the number of logical CPUs this process may run on (the default thread
count of a target); :func:`machine_fingerprint` describes the CPU, the BLAS libraries, the
package versions and the GPUs, for stored plans and comparisons.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from typing import Any

__all__ = ["cpu_model", "cpu_threads", "machine_fingerprint"]


def cpu_threads() -> int:
    """Logical CPUs this process may run on (``sched_getaffinity``, else ``os.cpu_count()``)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, n)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


_FINGERPRINT_PACKAGES = ("numpy", "scipy", "sympy", "pytensor", "numba", "optuna")
_OPTIONAL_PACKAGES = ("jax", "jaxlib", "torch")
_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "OPENBLAS_THREAD_TIMEOUT", "KMP_BLOCKTIME", "MKL_DYNAMIC", "OMP_DYNAMIC",
               "NUMBA_NUM_THREADS", "XLA_FLAGS", "PYTENSOR_FLAGS")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo, else what platform says)."""
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
        "cpu_model": cpu_model(),
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
