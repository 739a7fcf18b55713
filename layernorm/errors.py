"""The errors layernorm raises: every one is a `LayerNormError`, and also the matching built-in exception."""

from layernorm_core.errors import (
    ArgumentError,
    BackendError,
    DeviceError,
    DTypeError,
    LayerNormError,
    ShapeError,
)
from layernorm_core.registry import PluginWarning

__all__ = [
    "ArgumentError",
    "BackendError",
    "DTypeError",
    "DeviceError",
    "LayerNormError",
    "PluginWarning",
    "ShapeError",
]
