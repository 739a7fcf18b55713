"""Inputs of the checks: dtype handling, deterministic random arrays, and the fixed shape/axis cases."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from layernorm_core.dtypes import compute_dtype

Array = npt.NDArray[Any]


def numpy_dtype(name: str) -> np.dtype[Any]:
    """The NumPy dtype for a dtype name; bfloat16 is ml_dtypes.bfloat16 (ImportError when ml_dtypes is missing)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def rng_for(*key: object) -> np.random.Generator:
    """A generator seeded from ``key`` (stable across runs and processes), so every failure reproduces."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def cast(values: npt.ArrayLike, dtype: str) -> Array:
    """``values`` rounded to ``dtype``: the exact values a backend receives and the reference then sees."""
    return np.asarray(values, dtype=np.float64).astype(numpy_dtype(dtype))


def random_array(shape: tuple[int, ...], dtype: str, *key: object, loc: float = 0.0, scale: float = 1.0) -> Array:
    """Normal(loc, scale) values rounded to ``dtype``, seeded from ``key``."""
    return cast(rng_for(shape, dtype, *key).normal(loc, scale, size=shape), dtype)


def param_dtype(dtype: str, mixed: bool) -> str:
    """The dtype of weight/bias for an x of ``dtype``: x's, or the compute dtype for mixed-precision parameters."""
    return compute_dtype(dtype) if mixed else dtype


@dataclass(frozen=True)
class Case:
    """An input shape and its normalized axes (as the caller writes them: any sign, any order)."""

    shape: tuple[int, ...]
    axis: tuple[int, ...]

    @property
    def id(self) -> str:
        """Readable pytest id, e.g. ``x=2x6x4x5-axis=(1,)``."""
        dims = "x".join(map(str, self.shape))
        return f"x={dims}-axis={self.axis!r}"

    def normalized_shape(self) -> tuple[int, ...]:
        """Return x's sizes along the normalized axes, in increasing axis order (weight and bias have this shape)."""
        ndim = len(self.shape)
        return tuple(self.shape[a] for a in sorted(a % ndim for a in self.axis))


FORWARD_CASES: tuple[Case, ...] = (
    Case((7,), (0,)),
    Case((5, 33), (1,)),
    Case((9, 4), (0,)),
    Case((2, 3, 16), (-2, -1)),
    Case((2, 6, 4, 5), (1,)),
    Case((2, 3, 4, 5), (1, 2, 3)),
    Case((3, 4, 5, 6), (1, 3)),
    Case((2, 2, 3, 2, 5), (4, 0, 2)),
    Case((6, 1), (1,)),
    Case((0, 8), (1,)),
    Case((3, 0, 4), (2,)),
    Case((2, 65536), (1,)),
    Case((1024, 24), (-1,)),
    Case((1100, 24), (-1,)),
    Case((2, 8, 10, 13), (1,)),
)
"""Forward shapes: 1-D to 5-D; trailing, leading, channels-first, several and non-adjacent axes (unsorted and
negative too); normalized size 1; empty batches; a 65536-long row; many short rows, also a number that is no
multiple of a block's rows; channels-first with 130 values after the channel axis (no multiple of a vector)."""

BACKWARD_CASES: tuple[Case, ...] = (
    Case((7,), (0,)),
    Case((5, 33), (1,)),
    Case((2, 6, 4, 5), (1,)),
    Case((3, 4, 5, 6), (1, 3)),
    Case((2, 2, 3, 2, 5), (0, 2, 4)),
    Case((6, 1), (1,)),
    Case((0, 8), (1,)),
    Case((2, 8192), (1,)),
    Case((512, 16), (-1,)),
    Case((3000, 160), (-1,)),
    Case((2, 8, 10, 13), (1,)),
)
"""Backward shapes: a subset of the forward ones plus a long row, a tall batch (dweight sums 512 rows), one of
1.9 MB in float32 (dweight and dbias summed over several blocks and threads) and a channels-first one."""

TRACE_CASES: tuple[tuple[Case, str], ...] = (
    (Case((4, 32), (-1,)), "layer_norm"),
    (Case((3, 6, 4, 5), (-3,)), "rms_norm"),
    (Case((2, 3, 4, 8), (-2, -1)), "layer_norm"),
)
"""Tracing cases with their op (compiling is slow: three, not a cross product), with negative axes and a
non-normalized leading axis (so vmap over axis 0 keeps their meaning): trailing, channels-first, two axes."""

EPS_VALUES: tuple[float, ...] = (0.0, 1e-6, 1e-5, 1e-3, 0.1, 1.0)
"""eps values: a dropped or misplaced eps is visible with rows of small variance and a large eps."""
