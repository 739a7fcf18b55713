"""Arrays of another framework, for the backends' from_foreign: where a DLPack producer's memory is, host copies."""

from __future__ import annotations

from typing import Any

import numpy as np

from layernorm_core.errors import DeviceError, DTypeError, type_name

DLPACK_CPU = 1
DLPACK_HOST = frozenset({DLPACK_CPU, 3})
"""DLPack device types in host memory: kDLCPU, and kDLCUDAHost (pinned host memory)."""


def require_host(x: Any, framework: str, error: BaseException) -> None:
    """DeviceError unless ``x``, which ``framework`` could not import through DLPack (``error``), is in host memory.

    Called before a backend copies such an array through NumPy: a host copy of a device array would fail, or
    hide a device-to-host transfer (and compute on the CPU what the caller placed on a GPU).
    """
    device_type = dlpack_device_type(x)
    if device_type not in DLPACK_HOST:
        where = "no DLPack device" if device_type is None else f"DLPack device type {device_type}"
        raise DeviceError(
            f"{framework} cannot take this {type_name(type(x))} ({where}) through DLPack: {error}"
        ) from None


def host_array(x: Any, framework: str) -> Any:
    """x, an array of another framework, as a NumPy array: DLPack where NumPy imports it, else ``__array__``.

    DeviceError for an array NumPy cannot import through DLPack that is not in host memory (`require_host`);
    DTypeError for a host array that offers DLPack alone, of a dtype NumPy cannot import that way (bfloat16).
    ``framework`` names the engine in the errors.
    """
    if hasattr(x, "__dlpack__"):
        try:
            return np.from_dlpack(x)
        except (BufferError, RuntimeError, TypeError) as exc:
            require_host(x, framework, exc)  # extension dtypes (ml_dtypes.bfloat16) have no DLPack import
            if not hasattr(x, "__array__"):
                raise DTypeError(
                    f"{framework} cannot import this {type_name(type(x))} of dtype "
                    f"{getattr(x, 'dtype', 'unknown')}: it offers DLPack alone, and NumPy's DLPack import refused "
                    f"it ({exc})"
                ) from None
    return np.asarray(x)


def row_major_on_device(x: Any) -> Any | None:
    """A strided view on a device (a transposed torch CUDA tensor) as a row-major copy on that device, else None.

    XLA imports only compact row-major strides through DLPack. A host array needs no such copy: the backends
    copy it through NumPy, which takes any strides.
    """
    is_contiguous = getattr(x, "is_contiguous", None)
    if dlpack_device_type(x) in DLPACK_HOST or is_contiguous is None or is_contiguous():
        return None
    return x.contiguous()


def dlpack_device_type(x: Any) -> int | None:
    """The DLPack device type of ``x``: kDLCPU for an array without ``__dlpack_device__``.

    None where x has none to give (torch's meta tensors raise ValueError).
    """
    if not hasattr(x, "__dlpack_device__"):
        return DLPACK_CPU
    try:
        return int(x.__dlpack_device__()[0])
    except (BufferError, RuntimeError, TypeError, ValueError):
        return None
