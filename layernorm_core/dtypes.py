"""Framework-free dtype names and the compute-dtype rule."""

from __future__ import annotations

from typing import Any, Final

from layernorm_core.tracing import dynamo_tracing

FLOAT_DTYPES: Final = ("float16", "bfloat16", "float32", "float64")
HALF_DTYPES: Final = frozenset({"float16", "bfloat16"})


_names: dict[tuple[type, Any], str] = {}
"""Names by (type, dtype): NumPy builds ``dtype.name`` anew on each read (1.5 µs, three of them per checked
backward call). Filled outside torch.compile traces only (see `layernorm_core.tracing`)."""
_NAMES_MAX = 256


def dtype_name(dtype: Any) -> str:
    """Return the canonical name ("float32", "int64", ...) of a NumPy, torch, JAX or TensorFlow dtype."""
    key = (type(dtype), dtype)
    try:
        return _names[key]
    except (KeyError, TypeError):  # TypeError: an unhashable dtype-like
        pass
    name = getattr(dtype, "name", None)
    if not isinstance(name, str):
        name = str(dtype)
    name = name.rsplit(".", 1)[-1]
    if not dynamo_tracing():
        try:
            if len(_names) >= _NAMES_MAX:
                _names.clear()
            _names[key] = name
        except TypeError:
            pass
    return name


def compute_dtype(name: str) -> str:
    """Return the dtype statistics are computed and returned in: float32 for half inputs, else ``name``."""
    return "float32" if name in HALF_DTYPES else name
