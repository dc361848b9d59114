"""Compiling a PyTensor graph for a target: :func:`compile_function` and its result.

Devices
-------
For ``jax`` the compiled function is called inside ``jax.default_device(<device>)``: PyTensor's
JAX linker turns numpy inputs into arrays with ``jnp.array`` (placed on the default device) and
jitted code runs where its uncommitted inputs live, so the context selects CPU or GPU.  Outputs
(jax arrays) are converted with ``np.asarray``, which also waits for the asynchronous dispatch
to finish -- important for timing.  For ``pytorch`` the call runs inside ``torch.device(...)``:
PyTensor's PyTorch linker converts inputs with ``torch.as_tensor`` (which follows the default
device) and already returns ``out.cpu().numpy()``.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .blas_setup import _BLAS_WARNING, c_blas_ldflags
from .errors import CompileError
from .target_names import Target, check_available
from .threads import thread_limit

__all__ = ["CompiledFunction", "compile_function"]

_NDARRAY = np.ndarray


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

    __slots__ = ("target", "function", "_context", "_convert", "_warm", "_direct")

    def __init__(self, target: Target, function: Any,
                 context: Callable[[], contextlib.AbstractContextManager[Any]] | None,
                 convert: bool) -> None:
        self.target = target
        #: The underlying ``pytensor.compile.function.types.Function``.
        self.function = function
        self._context = context
        self._convert = convert
        self._warm = not target.spec.lazy_jit
        self._direct: _Direct | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        direct = self._direct
        if direct is not None and not kwargs:
            out = direct(args)
            if out is not None:
                return out
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
        if self._context is None and not self._convert:
            self._direct = _Direct.of(self.function)
        return out

    def __repr__(self) -> str:
        return f"CompiledFunction(target={self.target.name!r})"


class _Direct:
    """The jitted function of a compiled Numba graph, called without PyTensor's ``Function``
    around it: ``Function.__call__`` fills the input containers, runs the thunk (which calls
    the jitted function with the containers' values) and reads the output containers, which
    after a cache scrub costs about 0.3 ms -- more than small computations (LAAB's
    partial-access tests). Used only where this is exactly what the thunk does: every input of
    the thunk is an input container of the function, in order, nothing is updated, and each
    argument is an ndarray of the dtype and rank its input was compiled for (anything else
    goes through ``Function``, which converts or refuses it)."""

    __slots__ = ("jit", "kinds")

    def __init__(self, jit: Callable[..., Any], kinds: tuple[tuple[Any, int], ...]) -> None:
        self.jit = jit
        self.kinds = kinds

    @classmethod
    def of(cls, function: Any) -> _Direct | None:
        vm = getattr(function, "vm", None)
        jit = getattr(vm, "jit_fn", None)
        storage = getattr(function, "input_storage", None)
        if jit is None or storage is None or getattr(function, "_has_updates", True):
            return None
        ins = getattr(vm, "inputs", None)
        outs = getattr(vm, "outputs", None)
        if (ins is None or outs is None or len(ins) != len(storage)
                or any(a is not c.storage for a, c in zip(ins, storage, strict=True))
                or len(outs) != len(function.output_storage)
                or function.unpack_single or function.return_none):
            return None
        try:
            kinds = tuple((np.dtype(i.variable.type.dtype), i.variable.type.ndim)
                          for i in function.maker.inputs)
        except (AttributeError, TypeError):
            return None
        return cls(jit, kinds) if len(kinds) == len(storage) else None

    def __call__(self, args: tuple) -> list[Any] | None:
        """The outputs, or None when ``args`` must go through ``Function``."""
        kinds = self.kinds
        if len(args) != len(kinds):
            return None
        for a, (dtype, ndim) in zip(args, kinds, strict=True):
            if a.__class__ is not _NDARRAY or a.dtype != dtype or a.ndim != ndim:
                return None
        return list(self.jit(*args))


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
