"""The float64 reference checked against itself: its analytic backward equals central finite differences."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest

from layernorm_conformance.data import Array, Case, random_array
from layernorm_conformance.ops import OPS, Op, Problem, make_problem, reference_backward, reference_forward

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
