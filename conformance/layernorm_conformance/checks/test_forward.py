"""Forward y, mean and rstd of layer_norm and rms_norm against the float64 reference."""

from __future__ import annotations

import numpy as np
import pytest

from layernorm_conformance.data import EPS_VALUES, FORWARD_CASES, Case
from layernorm_conformance.numerics import Numerics
from layernorm_conformance.ops import (
    AFFINES,
    OPS,
    Affine,
    Op,
    call_forward,
    check_forward_problem,
    forward_y,
    make_problem,
    named_forward,
    reference_forward,
)
from layernorm_conformance.targets import Target


def check_forward(numerics: Numerics, target: Target, dtype: str, op: Op, case: Case, **kwargs: object) -> None:
    """Check the forward of a problem made from the arguments (`check_forward_problem`)."""
    check_forward_problem(numerics, target, make_problem(op, case, dtype, **kwargs))


@pytest.mark.parametrize("affine", AFFINES)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", FORWARD_CASES, ids=lambda c: c.id)
def test_forward(numerics: Numerics, target: Target, dtype: str, case: Case, op: Op, affine: Affine) -> None:
    check_forward(numerics, target, dtype, op, case, affine=affine)


@pytest.mark.conformance_dtypes("float16", "bfloat16")
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", FORWARD_CASES[:8], ids=lambda c: c.id)
def test_forward_float32_params(numerics: Numerics, target: Target, dtype: str, case: Case, op: Op) -> None:
    """Half x with float32 (compute dtype) weight and bias: mixed precision as in AMP training."""
    check_forward(numerics, target, dtype, op, case, mixed=True)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("eps", EPS_VALUES, ids=lambda e: f"eps={e:g}")
def test_eps(numerics: Numerics, target: Target, dtype: str, eps: float, op: Op) -> None:
    """Rows of small variance (0.01) make eps matter: a dropped, doubled or misplaced eps shows."""
    check_forward(numerics, target, dtype, op, Case((6, 16), (-1,)), eps=eps, scale=0.1, key="eps")


@pytest.mark.parametrize("op", OPS)
def test_noncontiguous(numerics: Numerics, target: Target, dtype: str, op: Op) -> None:
    """Strided views (every other row and column of a larger array) give the reference's result."""
    to = target.module
    big = make_problem(op, Case((10, 7, 24), (-1,)), dtype, "none", key="strided")
    x = to.from_numpy(big.x, target.device)[::2, :, ::2]
    problem = big.with_x(big.x[::2, :, ::2])
    actual = named_forward(target, problem, call_forward(target.backend, problem, x, None, None, True))
    numerics.check(
        actual, reference_forward(problem), dtype, problem.condition(), scales=problem.scales(), units=problem.units()
    )


HALF_PRECISION_BITS = {"float16": 11, "bfloat16": 8}
"""Significand bits of the half dtypes, for the spacing of their values (`_spacing`)."""


def _spacing(values: np.ndarray, dtype: str) -> np.ndarray:
    """The distance between consecutive values of ``dtype`` at each of ``values`` (float64, none of them 0)."""
    bits = HALF_PRECISION_BITS[dtype]
    smallest_normal_exponent = -14 if dtype == "float16" else -126
    exponent = np.maximum(np.floor(np.log2(np.abs(values))), smallest_normal_exponent)
    return np.exp2(exponent - (bits - 1))


@pytest.mark.conformance_dtypes("float16", "bfloat16")
@pytest.mark.parametrize("op", OPS)
def test_half_output_is_rounded_to_nearest(target: Target, dtype: str, op: Op) -> None:
    """A half y is computed in float32 and rounded once, to nearest: its errors average to 0 units of rounding.

    The tolerance allows two units per element, so it would pass a y rounded toward 0 (a bfloat16 made by
    dropping a float32's low 16 bits), whose errors average half a unit against y's sign.
    """
    problem = make_problem(op, Case((64, 1024), (-1,)), dtype, "full", key="rounding")
    actual = forward_y(target, problem)["y"].astype(np.float64)
    expected = reference_forward(problem)["y"]
    nonzero = expected != 0
    units = (actual - expected)[nonzero] / _spacing(expected[nonzero], dtype)
    bias = float(np.mean(units * np.sign(expected[nonzero])))
    assert abs(bias) < 0.1, f"y's rounding errors average {bias:+.3f} units of rounding toward y's sign"
