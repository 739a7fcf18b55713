"""The shape/axis cases, host dtypes and checks every backend's numerics tests share."""

from __future__ import annotations

from collections.abc import Sequence

import ml_dtypes
import numpy as np
import pytest

from layernorm_core.tolerances import Tolerance, error_ratio, tolerance

HOST_DTYPES = {
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
}
"""The four dtypes of the contract, as NumPy dtypes (bfloat16 from ml_dtypes)."""

EXTREME_SPREADS = [("float32", 1e14), ("float32", 1e-14), ("float64", 1e120), ("float64", 1e-120)]
"""(dtype, row spread) pairs where rstd**3 leaves the dtype's range with eps = 0 (float32 beyond 1e+-13): for the
derivatives of the explicit backwards, which must stay in range there."""


def shape_cases(wide: int, *extra: object) -> list[object]:
    """(shape, axis) cases: trailing, two trailing, channels-first, non-adjacent, size 1, a ``wide`` row, the
    ``extra`` cases, an empty batch, 1-D."""
    return [
        pytest.param((7, 33), -1, id="2d-trailing"),
        pytest.param((4, 5, 6), (1, 2), id="3d-two-trailing"),
        pytest.param((3, 8, 5, 4), 1, id="channels-first"),
        pytest.param((3, 4, 5, 6), (0, 2), id="non-adjacent"),
        pytest.param((5, 1), -1, id="size-1"),
        pytest.param((2, wide), -1, id="wide"),
        *extra,
        pytest.param((0, 16), -1, id="empty-batch"),
        pytest.param((6,), 0, id="1d"),
    ]


def check_second_order(got: Sequence[object], expected: Sequence[object], dtype: str) -> None:
    """Second-order gradients (float64 host arrays, None where there is none) against an oracle's.

    The first-order gradients they differentiate are rounded to ``dtype``, so the table's gradient tolerance
    applies twice over (no condition term: the oracle is a float64 composite on the same values).
    """
    grad = tolerance(dtype, "grad")
    twice = Tolerance(rtol=2 * grad.rtol, atol=2 * grad.atol, cond=0.0)
    for name, g, e in zip(("x", "weight", "bias"), got, expected, strict=False):
        if e is None:
            continue
        assert g is not None, f"second-order gradient of {name} is missing"
        assert error_ratio(g, e, twice) <= 1, name
