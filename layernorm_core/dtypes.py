"""Framework-free dtype names and the compute-dtype rule."""

from __future__ import annotations

from typing import Any, Final

FLOAT_DTYPES: Final = ("float16", "bfloat16", "float32", "float64")
HALF_DTYPES: Final = frozenset({"float16", "bfloat16"})


def dtype_name(dtype: Any) -> str:
    """Return the canonical name ("float32", "int64", ...) of a NumPy, torch, JAX or TensorFlow dtype."""
    name = getattr(dtype, "name", None)
    if not isinstance(name, str):
        name = str(dtype)
    return name.rsplit(".", 1)[-1]


def compute_dtype(name: str) -> str:
    """Return the dtype statistics are computed and returned in: float32 for half inputs, else ``name``."""
    return "float32" if name in HALF_DTYPES else name
