"""Tracing and compilation where the framework has them, against the reference.

torch.compile, jax.jit and jax.vmap, tf.function (also with jit_compile=True): forward results and, when the
backend has autodiff, gradients through the traced function.
"""

from __future__ import annotations

from typing import Any

import pytest

from layernorm_conformance.autodiff import framework_of, vjp_for
from layernorm_conformance.data import TRACE_CASES, Case
from layernorm_conformance.numerics import Numerics
from layernorm_conformance.ops import (
    Op,
    call_forward,
    grad_names,
    make_dy,
    make_problem,
    reference_backward,
    reference_forward,
    to_target,
)
from layernorm_conformance.targets import Target
from layernorm_conformance.tracing import tracer_names, wrapper


def tracer_params(target: Target, dtype: str) -> list[Any]:
    """The tracers of the target's framework x cases x ops; one skip when its framework has none here."""
    framework = framework_of(target.module.from_numpy(make_problem("layer_norm", TRACE_CASES[0][0], dtype).x, "cpu"))
    names = tracer_names(framework)
    if not names:
        reason = f"no tracing for {framework} arrays in layernorm_conformance.tracing"
        return [pytest.param(None, None, None, id="tracing", marks=pytest.mark.skip(reason=reason))]
    return [pytest.param(name, case, op, id=f"{name}-{case.id}-{op}") for name in names for case, op in TRACE_CASES]


@pytest.mark.conformance_params("tracer,case,op", tracer_params)
def test_traced(numerics: Numerics, target: Target, dtype: str, tracer: str, case: Case, op: Op) -> None:
    problem = make_problem(op, case, dtype, "full", key="trace")
    x, weight, bias = (to_target(target, a) for a in (problem.x, problem.weight, problem.bias))
    wrap = wrapper(framework_of(x), tracer)
    assert wrap is not None

    def fn(x: Any, weight: Any, bias: Any) -> Any:
        return call_forward(target.backend, problem, x, weight, bias, False)

    traced = wrap(fn)
    y = target.module.to_numpy(traced(x, weight, bias))
    expected_y = {"y": reference_forward(problem)["y"]}
    numerics.check({"y": y}, expected_y, dtype, problem.condition(), scales=problem.scales(), units=problem.units())
    vjp = vjp_for(x)
    if not target.info.autodiff or vjp is None:
        return
    dy = make_dy(problem)
    grads = vjp(traced, [x, weight, bias], to_target(target, dy))
    actual = {n: target.module.to_numpy(g) for n, g in zip(grad_names(op), grads, strict=False) if g is not None}
    numerics.check(
        actual,
        reference_backward(problem, dy),
        dtype,
        problem.condition(),
        scales=problem.scales(dy),
        units=problem.units(dy),
    )
