"""Backward dx, dweight, dbias through the explicit ``*_backward`` functions and the framework's autodiff."""

from __future__ import annotations

from typing import Any

import pytest

from layernorm_conformance.autodiff import vjp_for
from layernorm_conformance.data import BACKWARD_CASES, Case
from layernorm_conformance.numerics import Numerics
from layernorm_conformance.ops import (
    OPS,
    Affine,
    Op,
    callers_statistics,
    check_autodiff_problem,
    check_backward_problem,
    check_statistics_autodiff,
    make_problem,
    stat_names,
)
from layernorm_conformance.targets import Target

GRAD_AFFINES: tuple[Affine, ...] = ("none", "weight", "full")


@pytest.mark.parametrize("affine", GRAD_AFFINES)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", BACKWARD_CASES, ids=lambda c: c.id)
def test_backward(numerics: Numerics, target: Target, dtype: str, case: Case, op: Op, affine: Affine) -> None:
    """layer_norm_backward / rms_norm_backward, stats recomputed, against the reference."""
    check_backward_problem(numerics, target, make_problem(op, case, dtype, affine))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", BACKWARD_CASES[1:5], ids=lambda c: c.id)
def test_backward_saved_stats(numerics: Numerics, target: Target, dtype: str, case: Case, op: Op) -> None:
    """The backward given the forward's own mean/rstd gives the same gradients as recomputing them."""
    check_backward_problem(numerics, target, make_problem(op, case, dtype, "full", key="saved"), saved_stats=True)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", (Case((6, 1), (1,)), *BACKWARD_CASES[1:5]), ids=lambda c: c.id)
def test_backward_given_stats(numerics: Numerics, target: Target, dtype: str, case: Case, op: Op) -> None:
    """The backward given a caller's statistics, not x's own (`callers_statistics`), computes the formula at them.

    Rows of one element too, where x - mean is 0 for x's own mean only.
    """
    problem = make_problem(op, case, dtype, "full", key="given")
    check_backward_problem(numerics, target, problem, given_stats=callers_statistics(problem))


@pytest.mark.conformance_dtypes("float16", "bfloat16")
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", BACKWARD_CASES[1:5], ids=lambda c: c.id)
def test_backward_float32_params(numerics: Numerics, target: Target, dtype: str, case: Case, op: Op) -> None:
    """Half x with a float32 (compute dtype) weight, as in AMP training: the backward uses the weight's values."""
    check_backward_problem(numerics, target, make_problem(op, case, dtype, "full", mixed=True, key="mixed-backward"))


def _when_differentiable(target: Target, dtype: str, params: list[Any]) -> list[Any]:
    """``params`` when the backend differentiates through its framework here; else one skip with the reason."""
    unset = [None] * len(params[0].values)
    if not target.info.autodiff:
        return [pytest.param(*unset, id="autodiff", marks=pytest.mark.skip(reason=f"backend "
                f"{target.backend!r} declares no framework autodiff (info().autodiff is False)"))]  # fmt: skip
    probe = target.module.from_numpy(make_problem("layer_norm", BACKWARD_CASES[0], dtype).x, target.device)
    if vjp_for(probe) is None:
        reason = f"no gradient hook for {type(probe).__module__} arrays in layernorm_conformance.autodiff"
        return [pytest.param(*unset, id="autodiff", marks=pytest.mark.skip(reason=reason))]
    return params


def autodiff_params(target: Target, dtype: str) -> list[Any]:
    """Cases x ops x affine, when the backend is differentiable here."""
    params = [
        pytest.param(case, op, affine, id=f"{case.id}-{op}-{affine}")
        for case in BACKWARD_CASES
        for op in OPS
        for affine in GRAD_AFFINES
    ]
    return _when_differentiable(target, dtype, params)


def statistics_params(target: Target, dtype: str) -> list[Any]:
    """Cases x ops x returned statistic, when the backend is differentiable here."""
    params = [
        pytest.param(case, op, stat, id=f"{case.id}-{op}-{stat}")
        for case in BACKWARD_CASES
        for op in OPS
        for stat in stat_names(op)[1:]
    ]
    return _when_differentiable(target, dtype, params)


@pytest.mark.conformance_params("case,op,affine", autodiff_params)
def test_autodiff(numerics: Numerics, target: Target, dtype: str, case: Case, op: Op, affine: Affine) -> None:
    """Gradients through the framework's own autodiff (torch.autograd, jax.vjp, tf.GradientTape)."""
    check_autodiff_problem(numerics, target, make_problem(op, case, dtype, affine, key="autodiff"))


def float32_params_autodiff_params(target: Target, dtype: str) -> list[Any]:
    """Cases x ops, when the backend is differentiable here."""
    params = [pytest.param(case, op, id=f"{case.id}-{op}") for case in BACKWARD_CASES[1:5] for op in OPS]
    return _when_differentiable(target, dtype, params)


@pytest.mark.conformance_dtypes("float16", "bfloat16")
@pytest.mark.conformance_params("case,op", float32_params_autodiff_params)
def test_autodiff_float32_params(numerics: Numerics, target: Target, dtype: str, case: Case, op: Op) -> None:
    """Half x with float32 weight and bias (mixed precision, as Keras's mixed_bfloat16 trains) through autodiff."""
    problem = make_problem(op, case, dtype, "full", mixed=True, key="mixed-autodiff")
    check_autodiff_problem(numerics, target, problem)


@pytest.mark.conformance_params("case,op,stat", statistics_params)
def test_autodiff_through_statistics(
    numerics: Numerics, target: Target, dtype: str, case: Case, op: Op, stat: str
) -> None:
    """A loss on a returned statistic (mean or rstd) sends its gradient to x through the framework's autodiff."""
    check_statistics_autodiff(numerics, target, make_problem(op, case, dtype, "full", key="statistics"), stat)


def constant_statistics_params(target: Target, dtype: str) -> list[Any]:
    """Small cases (trailing, channels-first, several and non-adjacent axes) x ops x statistic, if differentiable."""
    params = [
        pytest.param(case, op, stat, id=f"{case.id}-{op}-{stat}")
        for case in BACKWARD_CASES[1:5]
        for op in OPS
        for stat in stat_names(op)[1:]
    ]
    return _when_differentiable(target, dtype, params)


@pytest.mark.conformance_params("case,op,stat", constant_statistics_params)
def test_autodiff_through_statistics_of_constant_rows(
    numerics: Numerics, target: Target, dtype: str, case: Case, op: Op, stat: str
) -> None:
    """Rows of 0.1 (whose sum rounds): the gradient from rstd is 0, or u * kappa of its size rstd**2 / N.

    A backend that takes the mean as sum(x) / N, as XLA does, rounds it, and xhat is that rounding times rstd
    (docs/spec.md); its gradient, measured against the gradient's RMS (0 here), failed 60x in bfloat16 on JAX.
    """
    problem = make_problem(op, case, dtype, "full", eps=1e-6, loc=0.1, scale=0.0, key="constant-statistics")
    check_statistics_autodiff(numerics, target, problem, stat)
