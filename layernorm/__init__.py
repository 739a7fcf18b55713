"""layernorm: one Layer Normalization (and RMSNorm) with one contract for NumPy, PyTorch, JAX and TensorFlow.

``import layernorm`` imports no array framework; a backend loads its framework on first use.

>>> import numpy as np, layernorm
>>> layernorm.layer_norm(np.zeros((2, 3), np.float32)).dtype
dtype('float32')
"""

from __future__ import annotations

from layernorm import errors
from layernorm.errors import (
    ArgumentError,
    BackendError,
    DeviceError,
    DTypeError,
    LayerNormError,
    PluginWarning,
    ShapeError,
)
from layernorm.functional import layer_norm, layer_norm_backward, rms_norm, rms_norm_backward
from layernorm_core.dispatch import current_backend, use, using
from layernorm_core.registry import BackendStatus, registry

__version__ = "0.1.0"


def backends() -> list[BackendStatus]:
    """Every registered backend: name, available, version, devices, dtypes, and why not when unavailable.

    Loads each available backend (and so its framework) to ask for its devices.

    >>> import layernorm
    >>> "numpy" in [b.name for b in layernorm.backends()]
    True
    """
    return registry.status()


__all__ = [
    "ArgumentError",
    "BackendError",
    "BackendStatus",
    "DTypeError",
    "DeviceError",
    "LayerNormError",
    "PluginWarning",
    "ShapeError",
    "backends",
    "current_backend",
    "errors",
    "layer_norm",
    "layer_norm_backward",
    "rms_norm",
    "rms_norm_backward",
    "use",
    "using",
]
