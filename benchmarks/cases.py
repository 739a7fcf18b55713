"""What is benchmarked: the shapes, operations, passes and dtypes, and the bytes each call must move."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, cast

OPS: Final = ("layer_norm", "rms_norm")
PASSES: Final = ("forward", "forward+backward")
DTYPES: Final = ("float32", "bfloat16", "float16")
EPS: Final = 1e-5
ITEMSIZE: Final = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Shape:
    """A benchmarked input shape and the one axis normalized over (-1 trailing, 1 channels-first)."""

    label: str
    dims: tuple[int, ...]
    axis: int

    @property
    def normalized_axis(self) -> int:
        """The normalized axis as a non-negative index."""
        return self.axis % len(self.dims)

    @property
    def features(self) -> int:
        """The size of the normalized axis: the length of weight and bias."""
        return self.dims[self.axis]

    @property
    def numel(self) -> int:
        """The number of elements of x."""
        return math.prod(self.dims)


SHAPES: Final = (
    Shape("1x768", (1, 768), -1),
    Shape("4096x768", (4096, 768), -1),
    Shape("8192x4096", (8192, 4096), -1),
    Shape("32x128x1024", (32, 128, 1024), -1),
    Shape("8x64x56x56", (8, 64, 56, 56), 1),
)
QUICK_SHAPES: Final = ("1x768", "4096x768", "8x64x56x56")


@dataclass(frozen=True)
class Case:
    """One group of side-by-side measurements: a backend's device, a shape and a dtype."""

    shape: Shape
    dtype: str
    device: str

    @property
    def label(self) -> str:
        """A readable id, e.g. ``4096x768 float32 cpu``."""
        return f"{self.shape.label} {self.dtype} {self.device}"


def traffic_bytes(op: str, pass_: str, shape: Shape, dtype: str) -> int:
    """The bytes a call must move at the least, the numerator of GB/s.

    forward: read x, write y (2 tensors) plus the parameters (weight, and bias for layer_norm).
    forward+backward: the forward, then read x and dy and write dx (5 tensors), plus reading the weight again
    (the backward does not read the bias) and writing the parameters' gradients.
    """
    params = 2 if op == "layer_norm" else 1
    tensors, param_arrays = (2, params) if pass_ == "forward" else (5, 2 * params + 1)
    return (tensors * shape.numel + param_arrays * shape.features) * ITEMSIZE[dtype]


def copy_bytes(shape: Shape, dtype: str) -> int:
    """The bytes a plain copy of x moves: read x, write the copy."""
    return 2 * shape.numel * ITEMSIZE[dtype]


def rows_by_columns(text: str) -> tuple[tuple[int, int], ...]:
    """An argparse type for the speed scripts' ``--shapes``: "8x64,4096x768" as ((8, 64), (4096, 768))."""
    try:
        shapes = tuple(tuple(int(size) for size in shape.split("x")) for shape in text.split(","))
    except ValueError:
        shapes = ()
    if not shapes or any(len(shape) != 2 or min(shape) < 1 for shape in shapes):
        raise argparse.ArgumentTypeError(f"shapes are ROWSxCOLUMNS, comma-separated (8x64,4096x768); got {text!r}")
    return cast(tuple[tuple[int, int], ...], shapes)


def names_among(choices: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse type: comma-separated names, each one of ``choices``."""

    def names(text: str) -> list[str]:
        given = text.split(",")
        unknown = [name for name in given if name not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)}; choose among {', '.join(choices)}")
        return given

    return names


def select_shapes(labels: list[str] | None, quick: bool) -> list[Shape]:
    """The shapes named by ``labels`` (all, or the quick subset, when None); ValueError for an unknown label."""
    by_label = {shape.label: shape for shape in SHAPES}
    wanted = labels if labels else (list(QUICK_SHAPES) if quick else list(by_label))
    unknown = [label for label in wanted if label not in by_label]
    if unknown:
        raise ValueError(f"unknown shape {', '.join(unknown)}; known: {', '.join(by_label)}")
    return [by_label[label] for label in wanted]
