"""Framework-free dtype names and the compute-dtype rule."""

from __future__ import annotations

from typing import Any, Final

from layernorm_core.tracing import dynamo_tracing

FLOAT_DTYPES: Final = ("float16", "bfloat16", "float32", "float64")
HALF_DTYPES: Final = frozenset({"float16", "bfloat16"})
_SMALLEST_NORMAL: Final = {"float32": 2.0**-126, "float64": 2.0**-1022}
"""The smallest normal number of each compute dtype."""


_names: dict[tuple[type, Any], str] = {}
"""Names by (type, dtype): NumPy builds ``dtype.name`` anew on each read (1.5 µs, three of them per checked
backward call). Neither read nor filled while torch.compile traces (see `layernorm_core.tracing`): a trace that
read it would be invalidated by the next name added."""
_NAMES_MAX = 256


def dtype_name(dtype: Any) -> str:
    """Return the canonical name ("float32", "int64", ...) of a NumPy, torch, JAX or TensorFlow dtype."""
    if dynamo_tracing():
        return _read_name(dtype)
    key = (type(dtype), dtype)
    try:
        return _names[key]
    except (KeyError, TypeError):  # TypeError: an unhashable dtype-like
        pass
    name = _read_name(dtype)
    try:
        if len(_names) >= _NAMES_MAX:
            _names.clear()
        _names[key] = name
    except TypeError:
        pass
    return name


def _read_name(dtype: Any) -> str:
    name = getattr(dtype, "name", None)
    if not isinstance(name, str):
        name = str(dtype)
    return name.rsplit(".", 1)[-1]


def compute_dtype(name: str) -> str:
    """Return the dtype statistics are computed and returned in: float32 for half inputs, else ``name``."""
    return "float32" if name in HALF_DTYPES else name


def param_dtype_for(x_name: str, param_name: str) -> str:
    """Return the dtype a module casts a weight or bias of dtype ``param_name`` to, for an x of dtype ``x_name``.

    The core takes parameters in x's dtype or in its compute dtype (float32 for half x): those stay; any other is
    cast to the compute dtype, so a float64 weight of a half x keeps float32's digits rather than the half's. For
    the modules whose framework takes any floating weight (Keras's layers, torch.nn.RMSNorm).
    """
    stats_dtype = compute_dtype(x_name)
    return param_name if param_name in (x_name, stats_dtype) else stats_dtype


def flushed_to_zero(value: float, name: str) -> bool:
    """Whether ``value`` is 0 in compute dtype ``name`` where subnormals are flushed to 0 (XLA: JAX, TensorFlow)."""
    return value < _SMALLEST_NORMAL[name]
