"""The JAX backend: layer_norm and rms_norm for jax.Array and tracers, on every device XLA reports.

The core has checked every argument before these functions run. layer_norm and rms_norm are jax.custom_jvp
functions (see `layernorm_jax.kernels`), so jax.grad, jax.vjp, jax.jvp, jax.jacfwd, jax.linearize, jax.jit,
jax.vmap and jax.checkpoint work through the public API; the explicit ``*_backward`` functions run the same
analytic gradient formulas.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from layernorm_core.dtypes import FLOAT_DTYPES, dtype_name
from layernorm_core.errors import DeviceError, uncomputed_dtype_error
from layernorm_core.foreign import require_host, row_major_on_device
from layernorm_core.protocol import BackendInfo
from layernorm_core.spec import NormSpec
from layernorm_jax import kernels

_DEVICE_ALIASES = {"cuda": "gpu", "rocm": "gpu"}
_X64_OFF = (
    "x64 is disabled, and JAX would make a float64 array float32; enable it with "
    "jax.config.update('jax_enable_x64', True) or JAX_ENABLE_X64=1, or cast the array to float32 first"
)
"""Why float64 is not computed while x64 is off: `info`'s note, and the end of the DTypeError for such arrays."""

# Compiled once per (shapes, dtypes, axes, eps): an eager call runs one XLA program, not op by op. Inside an
# outer jit they inline; the custom differentiation rules stay attached.
_layer_norm = jax.jit(kernels.layer_norm, static_argnums=(3, 4))
_rms_norm = jax.jit(kernels.rms_norm, static_argnums=(2, 3))
_layer_norm_output = jax.jit(kernels.layer_norm_output, static_argnums=(3, 4))
_rms_norm_output = jax.jit(kernels.rms_norm_output, static_argnums=(2, 3))
_layer_norm_backward = jax.jit(kernels.layer_norm_backward, static_argnums=(4, 5))
_rms_norm_backward = jax.jit(kernels.rms_norm_backward, static_argnums=(4, 5))


@functools.cache
def _device_counts() -> dict[str, int]:
    """Platform ("cpu", "gpu", "tpu") -> how many devices of it JAX addresses here, for the platforms it has."""
    counts = {}
    for platform in ("cpu", "gpu", "tpu"):
        try:
            devices = jax.devices(platform)
        except RuntimeError:
            continue
        if devices:
            counts[platform] = len(devices)
    return counts


def info() -> BackendInfo:
    """Version, device kinds, dtypes and promises of the JAX backend here."""
    counts = _device_counts()
    x64 = bool(jax.config.read("jax_enable_x64"))
    return BackendInfo(
        version=jax.__version__,
        devices=tuple(counts),
        device_count=sum(counts.values()),
        dtypes=FLOAT_DTYPES if x64 else tuple(d for d in FLOAT_DTYPES if d != "float64"),
        deterministic_devices=(),
        autodiff=True,
        notes={
            "determinism": "XLA compiles per shape: two runs of one program agree bitwise on the CPU, but a row "
            "may differ in the last bit between batch sizes, so no bitwise promise is made",
            "float64": "enabled (jax_enable_x64)" if x64 else _X64_OFF,
            "autodiff": "jax.custom_jvp with the analytic linearization, which reverse mode transposes into the "
            "analytic backward: jax.grad, jax.vjp, jax.jvp, jax.jacfwd, jax.linearize, grad of grad and "
            "jax.hessian work",
        },
    )


def device_of(x: Any) -> str:
    """The platform x lives on ("cpu", "gpu", "tpu"), with its devices' ids where it is committed to them.

    The ids ("gpu:1", "cpu:0,1,2,3") come where the platform has several devices. Uncommitted arrays, which JAX
    moves to the devices of the committed ones, and tracers answer the platform alone (for a tracer, that of
    JAX's default backend).
    """
    if isinstance(x, jax.core.Tracer):
        return jax.default_backend()
    devices = x.sharding.device_set
    platform = str(next(iter(devices)).platform)
    if not x.committed or _device_counts()[platform] < 2:
        return platform
    return f"{platform}:{','.join(str(i) for i in sorted(device.id for device in devices))}"


def is_tracked(x: Any) -> bool:
    """True for tracers (inside jit, grad, vmap, checkpoint...): such arrays never cross frameworks."""
    return isinstance(x, jax.core.Tracer)


def to_numpy(x: Any) -> np.ndarray:
    """A host NumPy copy of x with its dtype (bfloat16 stays ml_dtypes.bfloat16)."""
    return np.array(x, copy=True)


def from_numpy(array: Any, device: str = "cpu") -> jax.Array:
    """A jax.Array holding ``array``'s values and dtype on ``device``.

    A kind ("cpu", "gpu"/"cuda", "tpu") leaves it uncommitted where that kind holds JAX's default device, as
    `jnp.asarray` would (an uncommitted x's outputs then combine with arrays on any device, as the JAX engine's
    do), else commits it to the kind's first device. A `device_of` answer of one device ("cpu:1") commits it to
    that one. An answer of several ("cpu:0,1", an array sharded over them) leaves it uncommitted on the first, so
    that it combines with arrays on those devices whatever their mesh. A float64
    array needs x64 (``jax.config.update('jax_enable_x64', True)``): without it, DTypeError rather than a silent
    cast to float32.
    """
    array = np.asarray(array)
    _check_representable(array.dtype)
    kind, _, ids = device.partition(":")
    devices = _devices(kind)
    if not ids:
        on_default = devices[0].platform == _default_platform()
        return jax.device_put(array) if on_default else jax.device_put(array, devices[0])
    wanted = {int(i) for i in ids.split(",")}
    named = [d for d in devices if d.id in wanted]
    if len(named) == 1:
        return jax.device_put(array, named[0])
    with jax.default_device(named[0]):
        return jax.device_put(array)


def _default_platform() -> str:
    """The platform of the device JAX puts uncommitted arrays on: `jax.default_device`'s, else the default backend's."""
    default = getattr(jax.config, "jax_default_device", None)  # set by jax.default_device
    if default is None:
        return jax.default_backend()
    return default if isinstance(default, str) else str(default.platform)


def from_foreign(x: Any) -> jax.Array:
    """x, an array of another framework, as a jax.Array: DLPack when x supports it, else the array protocol.

    The dtype is kept exactly; float64 without x64 is a DTypeError, never a silent downcast.
    """
    _check_representable(x.dtype)
    if hasattr(x, "__dlpack__") and not isinstance(x, np.ndarray):
        try:
            return jax.dlpack.from_dlpack(x)
        except (TypeError, RuntimeError, ValueError, BufferError) as exc:
            compact = row_major_on_device(x)
            if compact is not None:
                return jax.dlpack.from_dlpack(compact)
            require_host(x, "JAX", exc)  # host memory DLPack refused (a layout JAX does not import): through NumPy
    return jnp.asarray(np.asarray(x))


def layer_norm(x: jax.Array, weight: Any, bias: Any, spec: NormSpec, return_stats: bool) -> Any:
    """y, or (y, mean, rstd) when ``return_stats``; differentiable (custom_jvp)."""
    _require_x64_for(spec)
    if return_stats:
        return _layer_norm(x, weight, bias, spec.axes, spec.eps)
    return _layer_norm_output(x, weight, bias, spec.axes, spec.eps)


def rms_norm(x: jax.Array, weight: Any, spec: NormSpec, return_stats: bool) -> Any:
    """y, or (y, rstd) when ``return_stats``; differentiable (custom_jvp)."""
    _require_x64_for(spec)
    if return_stats:
        return _rms_norm(x, weight, spec.axes, spec.eps)
    return _rms_norm_output(x, weight, spec.axes, spec.eps)


def layer_norm_backward(dy: jax.Array, x: jax.Array, weight: Any, spec: NormSpec, mean: Any, rstd: Any) -> Any:
    """(dx, dweight, dbias) in x's dtype; mean and rstd are recomputed when None."""
    _require_x64_for(spec)
    return _layer_norm_backward(dy, x, weight, (mean, rstd), spec.axes, spec.eps)


def rms_norm_backward(dy: jax.Array, x: jax.Array, weight: Any, spec: NormSpec, rstd: Any) -> Any:
    """(dx, dweight) in x's dtype; rstd is recomputed when None."""
    _require_x64_for(spec)
    return _rms_norm_backward(dy, x, weight, rstd, spec.axes, spec.eps)


def _require_x64_for(spec: NormSpec) -> None:
    """DTypeError for a float64 x while x64 is off: a float64 array made while it was on would run as float32."""
    if spec.dtype == "float64":
        _check_representable(spec.dtype)


def _check_representable(dtype: Any) -> None:
    if dtype_name(dtype) == "float64" and not jax.config.read("jax_enable_x64"):
        raise uncomputed_dtype_error("jax", "float64", info().dtypes, _X64_OFF)


def _devices(kind: str) -> list[jax.Device]:
    try:
        return jax.devices(_DEVICE_ALIASES.get(kind, kind))
    except RuntimeError as exc:
        raise DeviceError(f"JAX has no {kind!r} device here: {exc}") from None
