"""Forward y, mean and rstd of layer_norm and rms_norm against the float64 reference."""

from __future__ import annotations

import pytest

from layernorm_conformance.data import EPS_VALUES, FORWARD_CASES, Case
from layernorm_conformance.numerics import Numerics
from layernorm_conformance.ops import (
    AFFINES,
    OPS,
    Affine,
    Op,
    call_forward,
    forward,
    make_problem,
    reference_forward,
    stat_names,
)
from layernorm_conformance.targets import Target


def check_forward(numerics: Numerics, target: Target, dtype: str, op: Op, case: Case, **kwargs: object) -> None:
    problem = make_problem(op, case, dtype, **kwargs)
    numerics.check(
        forward(target, problem), reference_forward(problem), dtype, problem.condition(), scales=problem.scales()
    )


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
    outputs = call_forward(target.backend, problem, x, None, None, True)
    actual = {name: to.to_numpy(o) for name, o in zip(stat_names(op), outputs, strict=True)}
    numerics.check(actual, reference_forward(problem), dtype, problem.condition(), scales=problem.scales())
