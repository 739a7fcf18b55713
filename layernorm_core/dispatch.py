"""Engine resolution: ``backend=`` argument > ``using(...)`` > ``use(...)`` > LAYERNORM_BACKEND > auto by array type.

Also the one place where arrays cross frameworks, when the engine in force is not the framework that owns x.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from types import ModuleType
from typing import Any

from layernorm_core.dtypes import FLOAT_DTYPES, dtype_name
from layernorm_core.errors import (
    BackendError,
    DeviceError,
    DTypeError,
    LayerNormError,
    type_name,
    uncomputed_dtype_error,
)
from layernorm_core.foreign import dlpack_device_type
from layernorm_core.registry import registry

AUTO = "auto"
ENV_VARIABLE = "LAYERNORM_BACKEND"

_scoped: ContextVar[str | None] = ContextVar("layernorm_backend", default=None)
"""The name of the innermost using() block open here (`_open_blocks`' last), for the calls to read."""
_open_blocks: ContextVar[tuple[tuple[str, object], ...]] = ContextVar("layernorm_backend_blocks", default=())
"""The using() blocks open here, outermost first: (name, a key of its own), each a tuple of its own. A block that
closes removes its own entry, wherever it is: generators suspended in blocks (which share their caller's context)
close them out of order, and a reset to the value before each block would then reopen a closed one for good."""
_scopes_entered = False
"""Whether a using() block was ever entered in this process: until then the hot path does not read the ContextVar.
Never reset: a context copied inside a block (an asyncio task, ``contextvars.copy_context``) keeps that block
after it closes, so no count of open blocks can tell when the ContextVar is unset everywhere."""
_process_default: str | None = None if os.environ.get(ENV_VARIABLE, AUTO) in ("", AUTO) else os.environ[ENV_VARIABLE]
"""Set by `use`; starts as LAYERNORM_BACKEND (None for unset, empty or "auto"; a name is checked on first use)."""
_environment_default = _process_default
"""LAYERNORM_BACKEND's name, the very string: `_engine` tells by identity that a name in force came from it."""
_thread_scope = threading.local()
"""``name``, where set: this thread's innermost using() block, for code that torch.compile traces. Dynamo cannot
read a ContextVar; it reads a thread-local's attributes and guards them in each calling thread, so a compiled
function is traced again in a block of another name. asyncio tasks of one thread share it: while their blocks
interleave, it holds the block in force in the task that last entered or left one. A thread running a copied
context (``asyncio.to_thread``) starts without it: compiled code there dispatches by array type."""


def use(name: str) -> None:
    """Set the process-wide engine, replacing LAYERNORM_BACKEND; ``"auto"`` restores dispatch by array type.

    The name is checked, and the backend loaded, at once; a name in LAYERNORM_BACKEND is checked only at the first
    call that uses it.

    Raises:
        BackendError: ``name`` is not a string, or names a backend that is unknown, not installed (the message
            gives the pip extra) or fails to load.

    Example:
        >>> import layernorm
        >>> layernorm.use("numpy")
        >>> layernorm.current_backend()
        'numpy'
        >>> layernorm.use("auto")

    """
    global _process_default
    _process_default = _checked_name(name)


@contextmanager
def using(name: str) -> Iterator[str]:
    """Use engine ``name`` inside the block; isolated per thread and per asyncio task (a ContextVar).

    Code compiled by torch.compile follows the block of the thread that calls it (traced again for each name).
    ``"auto"`` restores dispatch by array type inside the block. The name is checked, and the backend loaded, on
    entering the block, before its body runs.

    Raises:
        BackendError: as `use`: ``name`` is not a string, or names a backend that is unknown, not installed or
            fails to load.

    Example:
        >>> import layernorm
        >>> with layernorm.using("numpy"):
        ...     layernorm.current_backend()
        'numpy'

    """
    global _scopes_entered
    scope = _checked_name(name) or AUTO
    block = (scope, object())  # told from the other blocks by identity
    _open_blocks.set((*_open_blocks.get(), block))
    _scoped.set(scope)
    _thread_scope.name = scope
    _scopes_entered = True
    try:
        yield name
    finally:
        blocks = _open_blocks.get()
        # the innermost, as blocks that nest close; else wherever it is (nowhere, closed in another context)
        still_open = blocks[:-1] if blocks and blocks[-1] is block else tuple(b for b in blocks if b is not block)
        _open_blocks.set(still_open)
        outer = still_open[-1][0] if still_open else None  # this task's block, not the last one entered on this thread
        _scoped.set(outer)
        if outer is None:  # none open, as before the block: compiled code is not traced again
            vars(_thread_scope).pop("name", None)
        else:
            _thread_scope.name = outer


def current_backend() -> str:
    """The engine name in force here (scoped, else process default), or ``"auto"``."""
    return _scoped.get() or _process_default or AUTO


def _checked_name(name: str) -> str | None:
    if isinstance(name, str) and name == AUTO:
        return None
    registry.get(name)  # unknown or not installed: raise now, not at the first call
    return name


def _engine_name(backend: str | None, tracing: bool = False) -> str:
    """The engine name a call uses: ``backend``, else `current_backend` (the ContextVar read once a block was used).

    While torch.compile traces (``tracing``), the block is read from `_thread_scope`.
    """
    if backend is not None:
        return backend
    scope = getattr(_thread_scope, "name", None) if tracing else _scopes_entered and _scoped.get()
    return scope or _process_default or AUTO


def resolve(x: Any, backend: str | None, tracing: bool = False) -> tuple[ModuleType, str | None, str]:
    """Return (engine module, owner name of x's type or None, engine name) for a call on x."""
    name = _engine_name(backend, tracing)
    owner = registry.loaded_owner(type(x))
    if name == AUTO:
        if owner is None:
            raise BackendError(
                f"no backend owns arrays of type {type_name(type(x))}; "
                f"pass backend= or call layernorm.use(...); registered: {', '.join(registry.names())}"
            )
        return registry.get(owner), owner, owner
    return _engine(name), owner, name


def local_engine(x: Any, params: Sequence[Any], backend: str | None, tracing: bool) -> ModuleType | None:
    """The engine to call directly when x's own framework runs the call (params checked).

    None when arrays must cross frameworks, which `run` does. Auto dispatch and a name of x's own backend
    (``backend=``, `using`, `use`) take the same shortcut when every array is of x's type: 0.14 µs a call where
    the framework has one device, 0.34 µs where it has several and each array's device is compared (torch with
    CUDA); `resolve` and the companion checks take 0.57 µs. Not while torch.compile traces (``tracing``): its
    caches are read by eager calls only (see `Registry.loaded_owner`).
    """
    x_type = type(x)
    engine = None if tracing else registry.single_device_engines.get(x_type)
    if engine is not None:
        auto = backend is None and not _scopes_entered and _process_default is None  # the common case, read first
        if auto or _in_force_is(engine, backend):
            for p in params:
                if p is not None and type(p) is not x_type:
                    break
            else:
                return engine  # x's own engine, one device, every array of x's own type: nothing left to check
    elif not tracing:  # not folded into the loop above: the one-device path, with a device flag, took 14 ns more
        engine = registry.multi_device_engines.get(x_type)
        if engine is not None and _in_force_on_x_device(engine, backend, x, params):
            return engine
    engine, owner, name = resolve(x, backend, tracing)
    if owner != name:
        return None
    _check_companions(engine, name, x, params)
    return engine


def _in_force_on_x_device(engine: ModuleType, backend: str | None, x: Any, params: Sequence[Any]) -> bool:
    """Whether x's own ``engine`` is in force and every array in params is of x's type, on x's device."""
    if (backend is not None or _scopes_entered or _process_default is not None) and not _in_force_is(engine, backend):
        return False
    x_type, device_of = type(x), engine.device_of
    x_device = device_of(x)
    for p in params:  # noqa: SIM110 (all() over a generator costs more than the rest of the function)
        if p is not None and (type(p) is not x_type or device_of(p) != x_device):
            return False
    return True


def _in_force_is(engine: ModuleType, backend: str | None) -> bool:
    """Whether the engine name in force (``backend``, `using`, `use`) is auto or names ``engine``'s backend."""
    name = _engine_name(backend)
    return name == AUTO or _engine(name) is engine


def _engine(name: str) -> ModuleType:
    """`registry.get`, whose BackendError names LAYERNORM_BACKEND where ``name`` is the one it set, still in force.

    Checked only at the first call that uses it, that name can fail in code that never wrote it (a script given a
    shell's LAYERNORM_BACKEND=jax where jax is not installed).
    """
    try:
        return registry.get(name)
    except BackendError as exc:
        if name is not _environment_default or _process_default is not _environment_default:
            raise
        raise BackendError(f"{exc} (the name is {ENV_VARIABLE}'s; unset it or call layernorm.use(...))") from exc


def run(
    x: Any,
    params: Sequence[Any],
    backend: str | None,
    call: Callable[[ModuleType, Any, Sequence[Any]], Any],
    tracing: bool = False,
) -> Any:
    """Run ``call(engine, x, params)`` on the engine in force, crossing frameworks at the boundary if needed.

    ``params`` are the other arrays of the call (weight, bias, dy, stats; None where absent). They must belong to
    x's framework and live on x's device. Outputs return in x's framework. ``tracing``: `dynamo_tracing`'s answer.
    """
    engine, owner, name = resolve(x, backend, tracing)
    if owner is not None:
        source = engine if owner == name else registry.get(owner)
        device = _check_companions(source, owner, x, params, crossing=owner != name)
    if owner == name:
        return call(engine, x, params)
    if owner is None:
        _check_foreign_companions(x, params)
        _require_engine_dtype(engine, name, x)
        return call(
            engine, _imported(engine, name, x), [None if p is None else _imported(engine, name, p) for p in params]
        )
    _require_engine_dtype(engine, name, x)
    for array in (x, *params):
        if array is not None and source.is_tracked(array):
            raise BackendError(
                f"{'x' if array is x else 'an argument'} is a {owner} array that takes part in {owner}'s autodiff "
                f"or tracing; the {name!r} backend "
                f"cannot see that graph. Use backend={owner!r}, or detach the array first."
            )
    assert device is not None  # `_check_companions` compares devices of arrays that cross
    kind = device.partition(":")[0]
    outputs = call(
        engine,
        _convert(source, engine, x, kind, name),
        [None if p is None else _convert(source, engine, p, kind, name) for p in params],
    )
    if isinstance(outputs, tuple):
        return tuple(None if out is None else _convert(engine, source, out, device, owner) for out in outputs)
    return _convert(engine, source, outputs, device, owner)


_engine_dtypes: set[tuple[str, str, str]] = set()
"""(engine name, its implementation module's name, dtype name) triples `_require_engine_dtype` found computed: its
backend's info() takes 1.5-4 us, a quarter of a small call between frameworks. The module's name tells a plugin
registered again under the engine's name by another implementation, which is asked anew (a string, not the module:
dynamo cannot hash a module). Only yeses are kept: a no can turn into a yes (JAX's x64 switched on); a yes that
turns into a no (x64 switched off) is the engine's own conversion's DTypeError."""


def _require_engine_dtype(engine: ModuleType, name: str, x: Any) -> None:
    """DTypeError, before any conversion, when engine ``name`` does not compute x's floating dtype here.

    (The NumPy engine computes bfloat16 only with ml_dtypes, which a torch-only install lacks.) x's other dtypes
    are left to the core's checks, which word them the same for every engine.
    """
    x_dtype = dtype_name(x.dtype)
    key = (name, engine.__name__, x_dtype)
    if key in _engine_dtypes or x_dtype not in FLOAT_DTYPES:
        return
    info = registry.info(name)
    if x_dtype in info.dtypes:
        _engine_dtypes.add(key)
    else:
        raise uncomputed_dtype_error(name, x_dtype, info.dtypes, info.notes.get(x_dtype))


def _convert(source: ModuleType, target: ModuleType, array: Any, device: str, target_name: str) -> Any:
    """Move an array between frameworks: through NumPy on the CPU (keeps bfloat16), DLPack on a device.

    ``device``: the kind, or, for arrays going back to x's framework, the device the call's arrays share
    (`check_devices`: x's, or a committed argument's where x is bound to none). An array off
    the CPU that arrives on the CPU (a tf.Tensor has no ``__dlpack__``: the target copied it through NumPy) is a
    DeviceError: the call would compute on the CPU what the caller placed on a device.
    """
    if device.partition(":")[0] == "cpu":
        return target.from_numpy(source.to_numpy(array), device)
    if dlpack_device_type(array) is None:
        raise DeviceError(
            f"a {type_name(type(array))} on {device} has no DLPack device, so the "
            f"{target_name!r} backend cannot take it: use x's own backend"
        )
    converted = target.from_foreign(array)
    if target.device_of(converted).partition(":")[0] == "cpu":
        raise DeviceError(
            f"a {type_name(type(array))} on {device} reached {target_name!r} on the "
            "CPU (it could not take it through DLPack): pass arrays of that framework, or use x's own backend"
        )
    return converted


def _check_companions(
    source: ModuleType, owner: str, x: Any, params: Sequence[Any], crossing: bool = False
) -> str | None:
    """DTypeError unless params are of x's framework; DeviceError unless they are on x's device.

    Devices are compared where ``owner`` reports several, or where the arrays are ``crossing`` to another engine
    (torch reports one device here, yet meta tensors beside CPU ones would reach a conversion that takes neither).
    Returns the device the outputs belong on (`check_devices`) where devices were compared, else None.
    """
    x_type = type(x)
    for array in params:
        if array is not None and type(array) is not x_type and registry.owner_of(array) != owner:
            raise DTypeError(
                f"x is a {owner} array but another argument is a {type_name(type(array))}; pass arrays of one framework"
            )
    if crossing or registry.multi_device(owner):
        return check_devices(source.device_of, x, params)
    return None


def _check_foreign_companions(x: Any, params: Sequence[Any]) -> None:
    """DTypeError for an argument of a backend's framework beside an x of a framework no backend owns.

    Such an x is imported by the engine's ``from_foreign``; an argument of a framework a backend owns is of another
    framework than x, and importing it would read a torch tensor that requires grad through NumPy (torch's own
    RuntimeError) and, under a GradientTape, a tf.Variable without its gradient (a silent detach: None).
    """
    for array in params:
        if array is None or type(array) is type(x):
            continue
        owner = registry.owner_of(array)
        if owner is not None:
            raise DTypeError(
                f"x is a {type_name(type(x))}, of a framework no backend owns, but another "
                f"argument is a {owner} array ({type_name(type(array))}); pass arrays of "
                "one framework"
            )


def _imported(engine: ModuleType, name: str, array: Any) -> Any:
    """``engine.from_foreign(array)`` for an array of a framework no backend owns; a DTypeError where it cannot.

    The framework's own error (a symbolic KerasTensor's ValueError: it holds no values) becomes the DTypeError the
    spec gives an argument that is not an array, as does an import of another shape (NumPy wraps an object with
    neither values nor an array interface in a 0-d object array); sizes the argument does not know (dask's nan)
    are not compared.
    """
    try:
        imported = engine.from_foreign(array)
    except LayerNormError:
        raise
    except (TypeError, ValueError) as exc:
        raise DTypeError(f"the {name!r} backend cannot import a {type_name(type(array))} as an array: {exc}") from exc
    shape, given = tuple(imported.shape), tuple(array.shape)
    if len(shape) != len(given) or any(type(g) is int and g != s for s, g in zip(shape, given, strict=True)):
        raise DTypeError(
            f"the {name!r} backend cannot import a {type_name(type(array))} as an array: it gave shape {shape}, not "
            f"{given} (an object without values, or without an array interface)"
        )
    return imported


def check_devices(device_of: Callable[[Any], str], x: Any, params: Sequence[Any]) -> str:
    """The device the outputs belong on; a DeviceError unless x and params share one.

    They share one when they are of one device kind and those bound to a device name the same one. ``device_of`` is
    the backend's (`BackendModule.device_of`). A bare kind is an array bound to no device of it: it goes with any of
    them. The answer is the bound arrays' device, or the bare kind where none is bound: where the framework itself
    would put the outputs. Called for every call to a backend that reports several devices, and for every call
    whose arrays cross to another framework's engine; a backend that reports one may call it where its framework
    refused a call (torch's meta tensors beside CPU ones).
    """
    x_device = device_of(x)
    kind = x_device.partition(":")[0]
    bound, bound_by = x_device, "x"
    for array in params:
        if array is None:
            continue
        device = device_of(array)
        if device == bound:
            continue
        if device.partition(":")[0] != kind or (bound != kind and device != kind):
            raise DeviceError(f"{bound_by} is on {bound} but another argument is on {device}; move them to one device")
        if bound == kind:
            bound, bound_by = device, "an argument"
    return bound
