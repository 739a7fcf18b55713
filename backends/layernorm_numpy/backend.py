"""The NumPy backend: layer_norm and rms_norm, forward and backward, on the CPU.

Arrays are viewed as a (rows, N) layout when the normalized axes are trailing, as (outer, N, inner) when they
are another run of adjacent axes (channels-first), and are otherwise transposed to (rows, N) with the normalized
axes last; the blocked kernels in `layernorm_numpy.kernels` normalize along N, and the result is brought back
to x's layout.
"""

from __future__ import annotations

import importlib.util
import math
from functools import lru_cache
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from layernorm_core.errors import DeviceError
from layernorm_core.foreign import host_array
from layernorm_core.protocol import BackendInfo
from layernorm_core.spec import NormSpec
from layernorm_numpy.kernels import backward, forward, narrow, stats_layout, suits_3d_layout

Array = npt.NDArray[Any]
_HAS_BFLOAT16 = importlib.util.find_spec("ml_dtypes") is not None


def info() -> BackendInfo:
    """NumPy's version; cpu only; bfloat16 when ml_dtypes is installed; deterministic."""
    dtypes = ("float16", "bfloat16", "float32", "float64") if _HAS_BFLOAT16 else ("float16", "float32", "float64")
    return BackendInfo(
        version=np.__version__,
        devices=("cpu",),
        dtypes=dtypes,
        deterministic_devices=("cpu",),
        autodiff=False,
        notes={} if _HAS_BFLOAT16 else {"bfloat16": "NumPy holds bfloat16 only with ml_dtypes (pip install ml_dtypes)"},
    )


def device_of(x: Any) -> str:
    """Always "cpu"."""
    return "cpu"


def is_tracked(x: Any) -> bool:
    """NumPy has no autodiff or tracing."""
    return False


def to_numpy(x: Array) -> Array:
    """A copy of x in native byte order: other frameworks take no other (a big-endian array from a FITS file)."""
    return np.array(x, dtype=x.dtype.newbyteorder("="), copy=True)


def from_numpy(array: Array, device: str = "cpu") -> Array:
    """A copy of ``array``; DeviceError for any device but the CPU."""
    if device != "cpu":
        raise DeviceError(f"the numpy backend runs on the cpu only; asked for {device}")
    return np.array(array, copy=True)


def from_foreign(x: Any) -> Array:
    """A host array of another framework as NumPy (DLPack where NumPy can import it, else __array__).

    DeviceError for an array that NumPy cannot import through DLPack and that is not in host memory; DTypeError
    for a host array that offers DLPack alone, of a dtype NumPy cannot import through it (bfloat16).
    """
    return host_array(x, "NumPy")


def layer_norm(x: Array, weight: Array | None, bias: Array | None, spec: NormSpec, return_stats: bool) -> Any:
    """y, or (y, mean, rstd) when ``return_stats``."""
    y, mean, rstd = _forward(x, weight, bias, spec, rms=False)
    return (y, mean, rstd) if return_stats else y


def rms_norm(x: Array, weight: Array | None, spec: NormSpec, return_stats: bool) -> Any:
    """y, or (y, rstd) when ``return_stats``."""
    y, _, rstd = _forward(x, weight, None, spec, rms=True)
    return (y, rstd) if return_stats else y


def layer_norm_backward(
    dy: Array, x: Array, weight: Array | None, spec: NormSpec, mean: Array | None, rstd: Array | None
) -> tuple[Array, Array, Array]:
    """(dx, dweight, dbias); mean and rstd are recomputed when not given."""
    if mean is None or rstd is None:
        mean, rstd = _statistics(x, spec, rms=False)
    dx, dweight, dbias = _backward(dy, x, weight, spec, mean, rstd)
    return dx, dweight, dbias


def rms_norm_backward(
    dy: Array, x: Array, weight: Array | None, spec: NormSpec, rstd: Array | None
) -> tuple[Array, Array]:
    """(dx, dweight); rstd is recomputed when not given."""
    if rstd is None:
        _, rstd = _statistics(x, spec, rms=True)
    dx, dweight, _ = _backward(dy, x, weight, spec, None, rstd)
    return dx, dweight


def _forward(
    x: Array, weight: Array | None, bias: Array | None, spec: NormSpec, rms: bool
) -> tuple[Array, Array | None, Array]:
    layout = _layout(spec)
    yl = np.empty(layout[0], dtype=_native(x.dtype))
    # x's layout is passed on, not kept: a transposed copy of x is freed before y is transposed back (peak 2x x's bytes)
    mean, rstd = _run_forward(_to_layout(x, spec, layout), weight, bias, spec, rms, yl)
    return _from_layout(yl, spec, layout), mean, rstd


def _statistics(x: Array, spec: NormSpec, rms: bool) -> tuple[Array | None, Array]:
    """(mean, rstd) of x as the forward computes them (mean None for rms_norm), without y."""
    return _run_forward(_to_layout(x, spec, _layout(spec)), None, None, spec, rms, None)


def _run_forward(
    xl: Array, weight: Array | None, bias: Array | None, spec: NormSpec, rms: bool, yl: Array | None
) -> tuple[Array | None, Array]:
    """Run the forward kernel on x's layout ``xl`` (into ``yl`` unless None); return mean and rstd, spec-shaped."""
    compute = np.dtype(spec.compute_dtype)
    mean = None if rms else np.empty(stats_layout(xl.shape), dtype=compute)
    rstd = np.empty(stats_layout(xl.shape), dtype=compute)
    forward(xl, _param(weight, compute), _param(bias, compute), spec.eps, compute, rms, yl, mean, rstd)
    stats_shape = _static(spec.stats_shape)
    return (None if mean is None else mean.reshape(stats_shape)), rstd.reshape(stats_shape)


def _backward(
    dy: Array, x: Array, weight: Array | None, spec: NormSpec, mean: Array | None, rstd: Array
) -> tuple[Array, Array, Array]:
    compute = np.dtype(spec.compute_dtype)
    layout = _layout(spec)
    dtype = _native(x.dtype)
    dxl = np.empty(layout[0], dtype=dtype)
    stats = stats_layout(layout[0])
    dweight, dbias = backward(  # x's and dy's layouts are passed on, not kept
        _to_layout(dy, spec, layout),
        _to_layout(x, spec, layout),
        _param(weight, compute),
        None if mean is None else np.asarray(mean, dtype=compute).reshape(stats),
        np.asarray(rstd, dtype=compute).reshape(stats),
        compute,
        dxl,
        spec.eps,
    )
    normalized = _static(spec.normalized_shape)
    return _from_layout(dxl, spec, layout), _narrowed(dweight, dtype, normalized), _narrowed(dbias, dtype, normalized)


def _narrowed(sums: Array, dtype: np.dtype[Any], shape: tuple[int, ...]) -> Array:
    """``sums`` (dweight or dbias, a fresh array of the kernels' dtype) in ``dtype`` and ``shape``, by `narrow`."""
    if sums.dtype == dtype:
        return sums.reshape(shape)
    out = np.empty(sums.shape, dtype=dtype)
    narrow(out, sums)
    return out.reshape(shape)


def _to_layout(x: Array, spec: NormSpec, layout: tuple[tuple[int, ...], bool]) -> Array:
    """The kernels' (rows, N) or (outer, N, inner) layout of x (``_layout(spec)``): a view where x's memory allows.

    A subclass is viewed as a plain ndarray first: np.matrix keeps two dimensions through reshape.
    """
    shape, as_it_lies = layout
    x = np.asarray(x)
    return x.reshape(shape) if as_it_lies else np.ascontiguousarray(x.transpose(spec.perm)).reshape(shape)


def _from_layout(yl: Array, spec: NormSpec, layout: tuple[tuple[int, ...], bool]) -> Array:
    shape = _static(spec.shape)
    if layout[1]:
        return yl.reshape(shape)
    permuted = tuple(shape[a] for a in spec.perm)
    return np.ascontiguousarray(yl.reshape(permuted).transpose(spec.inverse_perm))


@lru_cache(maxsize=1024)
def _layout(spec: NormSpec) -> tuple[tuple[int, ...], bool]:
    """The kernels' layout shape for x, and whether x is taken as it lies (else transposed first); once per spec.

    A lookup hashes the spec (about 0.6 µs, a tenth of a small call's overhead), so a call looks it up once.
    As it lies: (rows, N) for trailing axes, (outer, N, inner) for adjacent ones that suit the 3-D layout.
    Otherwise the normalized axes are transposed last, into (rows, N).
    """
    shape = _static(spec.shape)
    n = math.prod(_static(spec.normalized_shape))
    outer, inner = math.prod(shape[: spec.axes[0]]), math.prod(shape[spec.axes[-1] + 1 :])
    if spec.is_trailing:
        return (outer, n), True
    adjacent = spec.axes[-1] - spec.axes[0] == len(spec.axes) - 1
    if adjacent and suits_3d_layout(n, inner, np.dtype(spec.compute_dtype).itemsize):
        return (outer, n, inner), True
    return (math.prod(shape[a] for a in spec.batch_axes), n), False


def _native(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """``dtype`` in native byte order: a big-endian x's outputs are native, as NumPy's ufuncs and other engines give."""
    return dtype if dtype.isnative else dtype.newbyteorder("=")


def _param(param: Array | None, compute: np.dtype[Any]) -> Array | None:
    return None if param is None else np.ascontiguousarray(param, dtype=compute).reshape(-1)


def _static(shape: tuple[int | None, ...]) -> tuple[int, ...]:
    """A spec shape as ints: a NumPy array's sizes are always known (None is only for symbolic tensors)."""
    return cast("tuple[int, ...]", shape)
