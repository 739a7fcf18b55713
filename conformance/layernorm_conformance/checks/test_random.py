"""Hypothesis-driven random shapes, axes, dtypes, eps, offsets and parameters, forward and backward."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from layernorm_conformance.data import Case
from layernorm_conformance.numerics import Numerics
from layernorm_conformance.ops import backward, check_forward_values, make_dy, make_problem, reference_backward
from layernorm_conformance.targets import Target

st = pytest.importorskip("hypothesis.strategies")
given = pytest.importorskip("hypothesis").given


@st.composite
def cases(draw: Callable[..., Any], max_ndim: int = 4) -> Case:
    """A shape of 1 to ``max_ndim`` dims (sizes 0-9 on batch axes, 1-9 normalized) and a random axis subset."""
    ndim = draw(st.integers(1, max_ndim))
    axes = draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
    shape = tuple(draw(st.integers(1 if d in axes else 0, 9)) for d in range(ndim))
    signed = tuple(a - ndim if draw(st.booleans()) else a for a in axes)
    return Case(shape, signed)


def _draw_problem(data: Any, target: Target) -> Any:
    case = data.draw(cases(), label="case")
    return make_problem(
        data.draw(st.sampled_from(("layer_norm", "rms_norm")), label="op"),
        case,
        data.draw(st.sampled_from(target.dtypes), label="dtype"),
        data.draw(st.sampled_from(("none", "weight", "full")), label="affine"),
        eps=data.draw(st.sampled_from((1e-6, 1e-5, 1e-3, 0.1)), label="eps"),
        loc=data.draw(st.sampled_from((0.0, 1.0, -30.0)), label="loc"),
        scale=data.draw(st.sampled_from((1.0, 0.01, 10.0)), label="scale"),
        key=data.draw(st.integers(0, 2**16), label="seed"),
    )


def test_random_forward(numerics: Numerics, target: Target, examples: Any) -> None:
    @examples
    @given(data=st.data())
    def run(data: Any) -> None:
        problem = _draw_problem(data, target)
        check_forward_values(numerics, target, problem)

    run()


def test_random_backward(numerics: Numerics, target: Target, examples: Any) -> None:
    @examples
    @given(data=st.data())
    def run(data: Any) -> None:
        problem = _draw_problem(data, target)
        dy = make_dy(problem)
        saved = data.draw(st.booleans(), label="saved_stats")
        actual = backward(target, problem, dy, saved)
        expected = reference_backward(problem, dy)
        numerics.check(
            actual, expected, problem.dtype, problem.condition(), scales=problem.scales(dy), units=problem.units(dy)
        )

    run()
