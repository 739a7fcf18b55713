"""Framework-free contract of layernorm: spec checks, errors, plugin hooks, registry, dispatch, reference.

Imports no array framework (NumPy only, for the reference) and not the public ``layernorm`` package.
"""

from layernorm_core.dtypes import FLOAT_DTYPES, compute_dtype, dtype_name
from layernorm_core.errors import (
    ArgumentError,
    BackendError,
    DeviceError,
    DTypeError,
    LayerNormError,
    ShapeError,
    not_dense_error,
    uncomputed_dtype_error,
)
from layernorm_core.hookspecs import ENTRY_POINT_GROUP, PROJECT_NAME, hookimpl, hookspec
from layernorm_core.protocol import BackendDeclaration, BackendInfo, BackendModule
from layernorm_core.spec import NormSpec, check_backward, check_forward, checked_axis, normalize_axes

__all__ = [
    "ENTRY_POINT_GROUP",
    "FLOAT_DTYPES",
    "PROJECT_NAME",
    "ArgumentError",
    "BackendDeclaration",
    "BackendError",
    "BackendInfo",
    "BackendModule",
    "DTypeError",
    "DeviceError",
    "LayerNormError",
    "NormSpec",
    "ShapeError",
    "check_backward",
    "check_forward",
    "checked_axis",
    "compute_dtype",
    "dtype_name",
    "hookimpl",
    "hookspec",
    "normalize_axes",
    "not_dense_error",
    "uncomputed_dtype_error",
]
