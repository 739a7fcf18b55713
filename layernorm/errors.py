"""The errors layernorm raises for bad input to the functions and the modules' calls, and its warning.

Each error is a `LayerNormError` and also the matching built-in exception: `ShapeError` and `ArgumentError` are
ValueErrors, `DTypeError` a TypeError, `BackendError` and `DeviceError` RuntimeErrors. Not LayerNormErrors: the
ValueError and TypeError with which the Keras and Flax modules refuse constructor arguments they do not offer
(``rms_scaling=True``, a non-int ``axis``; ``axis_name``, ``axis_index_groups``, ``use_fast_variance=True``), the
ValueError of Keras's ``compute_output_shape`` and the IndexError of a Keras layer's build for an axis out of
range (as Keras's), the ImportError of ``import layernorm.torch`` (``.flax``, ``.keras``) without its framework,
and the frameworks' own errors. `PluginWarning` is a UserWarning: a plugin failed to load or declared something
unusable.

Example:
    >>> import numpy as np, layernorm
    >>> from layernorm.errors import LayerNormError
    >>> try:
    ...     layernorm.layer_norm(np.ones((2, 3), dtype=np.int64))
    ... except LayerNormError as error:
    ...     print(type(error).__name__, isinstance(error, TypeError))
    DTypeError True

"""

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
