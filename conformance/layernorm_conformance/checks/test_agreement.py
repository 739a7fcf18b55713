"""Cross-backend agreement: every other available backend gives the same results on the same inputs.

Two results each within the tolerance of the truth are within twice the tolerance of each other.
"""

from __future__ import annotations

from typing import Any

import pytest

from layernorm_conformance.data import Case
from layernorm_conformance.numerics import Numerics
from layernorm_conformance.ops import OPS, Op, backward, forward, make_dy, make_problem
from layernorm_conformance.targets import Target, available_backends
from layernorm_core.errors import BackendError
from layernorm_core.registry import registry

AGREEMENT_CASES = (Case((4, 96), (-1,)), Case((2, 6, 4, 5), (1,)), Case((3, 4, 5, 6), (1, 3)))


def other_backends(target: Target, dtype: str) -> list[Any]:
    """Every other available backend that declares ``dtype`` on the cpu, x ops x cases; a skip if none."""
    others = []
    for name in available_backends():
        if name == target.backend:
            continue
        try:
            info = registry.info(name)
        except BackendError:  # a broken backend fails its own checks, not the others'
            continue
        if dtype in info.dtypes and "cpu" in info.devices:
            others.append(name)
    if not others:
        reason = f"no other available backend declares {dtype} on the cpu"
        return [pytest.param(None, None, None, id="vs-none", marks=pytest.mark.skip(reason=reason))]
    return [
        pytest.param(other, case, op, id=f"vs-{other}-{case.id}-{op}")
        for other in others
        for case in AGREEMENT_CASES
        for op in OPS
    ]


@pytest.mark.conformance_params("other,case,op", other_backends)
def test_agreement(numerics: Numerics, target: Target, dtype: str, other: str, case: Case, op: Op) -> None:
    """Forward and backward of the target agree with ``other`` (on the cpu) within twice the tolerance."""
    problem = make_problem(op, case, dtype, "full", key="agreement")
    dy = make_dy(problem)
    peer = Target(other, "cpu", (dtype,))
    mine = {**forward(target, problem), **backward(target, problem, dy, False)}
    theirs = {**forward(peer, problem), **backward(peer, problem, dy, False)}
    label = f"{target.backend} vs {other}: "
    scales, units = problem.scales(dy), problem.units(dy)
    numerics.check(mine, theirs, dtype, problem.condition(), scales=scales, units=units, factor=2.0, label=label)
