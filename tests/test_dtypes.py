"""dtype_name: canonical names of every framework's dtypes, the same on the first call and from the cache."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from layernorm_core.dtypes import dtype_name

NUMPY_DTYPES = [
    (np.dtype(np.float32), "float32"),
    (np.dtype(">f4"), "float32"),
    (np.dtype(np.float16), "float16"),
    (np.dtype(np.int64), "int64"),
    (np.dtype(np.complex64), "complex64"),
]


@pytest.mark.parametrize(("dtype", "name"), NUMPY_DTYPES, ids=[n for _, n in NUMPY_DTYPES])
def test_numpy_dtypes(dtype: np.dtype[Any], name: str) -> None:
    assert dtype_name(dtype) == name
    assert dtype_name(dtype) == name  # from the cache


def test_framework_dtypes() -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    torch = pytest.importorskip("torch")
    for dtype, name in (
        (np.dtype(ml_dtypes.bfloat16), "bfloat16"),
        (torch.bfloat16, "bfloat16"),
        (torch.float64, "float64"),
    ):
        assert [dtype_name(dtype), dtype_name(dtype)] == [name, name]


def test_equal_dtypes_of_other_types_keep_their_own_names() -> None:
    """np.dtype("float32") == "f": the cache tells them apart by type."""
    assert np.dtype("float32") == "f"
    assert [dtype_name(np.dtype("float32")), dtype_name("f"), dtype_name(np.dtype("float32"))] == [
        "float32",
        "f",
        "float32",
    ]


def test_unhashable_dtype_like() -> None:
    class Unhashable:
        name = "float16"
        __hash__ = None  # type: ignore[assignment]

    assert dtype_name(Unhashable()) == "float16"
