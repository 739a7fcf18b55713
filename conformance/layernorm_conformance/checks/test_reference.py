"""The float64 reference checked: its analytic backward equals central finite differences, its sums are accurate."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest

from layernorm_conformance.data import Array, Case, random_array
from layernorm_conformance.ops import OPS, Op, Problem, make_problem, reference_backward, reference_forward
from layernorm_core import check_forward, reference
from layernorm_core.tolerances import error_ratio, row_condition, tolerance

FD_CASES = (Case((3, 5), (1,)), Case((2, 3, 4), (0, 2)), Case((4, 1), (1,)), Case((2, 3, 2, 2), (-3, -1)))


def _loss(problem: Problem, dy: Array, name: str) -> Callable[[Array], float]:
    """<y, dy> as a function of one input of the problem."""
    return lambda value: float(np.sum(reference_forward(replace(problem, **{name: value}))["y"] * dy))


def _central_difference(f: Callable[[Array], float], at: Array, step: float = 1e-6) -> Array:
    grad = np.zeros_like(at)
    for index in np.ndindex(at.shape):
        plus, minus = at.copy(), at.copy()
        plus[index] += step
        minus[index] -= step
        grad[index] = (f(plus) - f(minus)) / (2 * step)
    return grad


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", FD_CASES, ids=lambda c: c.id)
def test_reference_gradients(case: Case, op: Op) -> None:
    problem = make_problem(op, case, "float64", "full", eps=1e-3, key="fd")
    dy = random_array(case.shape, "float64", "fd-dy")
    analytic = reference_backward(problem, dy)
    inputs = {"dx": problem.x, "dweight": problem.weight, "dbias": problem.bias}
    for grad_name, value in analytic.items():
        at = inputs[grad_name]
        assert at is not None
        numeric = _central_difference(_loss(problem, dy, grad_name[1:]), at)
        np.testing.assert_allclose(value, numeric, rtol=1e-6, atol=1e-7, err_msg=grad_name)


def test_reference_sums_axes_that_are_not_innermost_accurately() -> None:
    """Means over axes (0, 1) of a (64, 4096, 4) array near 1e3 match correctly rounded sums (math.fsum).

    NumPy sums an axis that is not innermost in one running sum per column: 5x the float64 tolerance off here.
    """
    x = 1e3 + 2 * random_array((64, 4096, 4), "float64", "not-innermost")
    spec = check_forward("layer_norm", x, None, None, (0, 1), 1e-5)
    y, mean, rstd = reference.layer_norm(x, None, None, spec)
    rows = x.reshape(-1, 4).T
    exact_mean = np.array([math.fsum(row) / row.size for row in rows])
    exact_var = np.array([math.fsum((row - m) ** 2) / row.size for row, m in zip(rows, exact_mean, strict=True)])
    exact_rstd = 1 / np.sqrt(exact_var + 1e-5)
    exact_y = (x - exact_mean) * exact_rstd
    np.testing.assert_allclose(mean.ravel(), exact_mean, rtol=1e-15)
    np.testing.assert_allclose(rstd.ravel(), exact_rstd, rtol=1e-13)
    assert error_ratio(y, exact_y, tolerance("float64", "output"), row_condition(x, spec)) < 0.1


def test_reference_mean_of_a_constant_row_is_exact() -> None:
    """A row of 0.1s (whose sum rounds) has its value as mean and var 0: rstd inf and y NaN for eps = 0."""
    x = np.full((2, 1000), 0.1)
    spec = check_forward("layer_norm", x, None, None, -1, 0.0)
    y, mean, rstd = reference.layer_norm(x, None, None, spec)
    assert (mean == 0.1).all() and np.isposinf(rstd).all() and np.isnan(y).all()


def test_reference_centers_rows_far_from_zero_exactly() -> None:
    """Rows of 1e3 + N(0, 0.01) with eps = 3 (far above var): y matches y computed in exact rational arithmetic.

    Subtracting the rounded mean from x moved y by u * kappa in units of rstd, 1.12 times the float64 tolerance
    here (whose cond term scales with y's RMS, 0.006): a NumPy backend that was exact failed against it.
    """
    x = 1e3 + 0.01 * random_array((4, 33), "float64", "far-rows")
    eps = 3.0
    spec = check_forward("layer_norm", x, None, None, -1, eps)
    y, _, _ = reference.layer_norm(x, None, None, spec)
    exact_y = np.empty_like(x)
    for i, row in enumerate(x):
        values = [Fraction(v) for v in row]
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / len(values)
        rstd = 1 / math.sqrt(var + Fraction(eps))  # var + eps is exact; its root rounds once
        exact_y[i] = [float((v - mean) * Fraction(rstd)) for v in values]
    assert error_ratio(y, exact_y, tolerance("float64", "output"), row_condition(x, spec)) < 0.1
