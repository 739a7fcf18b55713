"""Bitwise promises: a row's result does not depend on its batch, and two runs give the same bits.

Both are checked on the devices the backend lists in ``info().deterministic_devices``; elsewhere they are
skipped with the reason, and the matrix shows the skip.
"""

from __future__ import annotations

import pytest

from layernorm_conformance.data import Case
from layernorm_conformance.numerics import bitwise_equal
from layernorm_conformance.ops import OPS, Op, backward, forward, make_dy, make_problem
from layernorm_conformance.targets import Target

BATCHES = [Case((37, 3, 48), (-1,)), Case((8, 64, 32, 32), (1,))]
"""A small batch, and a channels-first one of 2**19 elements: past the sizes where a backend may take another
path for the whole batch than for a few of its rows (torch's CPU rms_norm works in blocks from 2**18)."""


def _require_determinism(target: Target) -> None:
    if not target.deterministic:
        pytest.skip(f"backend {target.backend!r} does not promise bitwise determinism on {target.device}")


@pytest.mark.parametrize("case", BATCHES, ids=lambda case: case.id)
@pytest.mark.parametrize("op", OPS)
def test_batch_invariance(target: Target, dtype: str, op: Op, case: Case) -> None:
    """Rows computed alone (and in a sub-batch) are bitwise equal to the same rows inside the full batch."""
    _require_determinism(target)
    problem = make_problem(op, case, dtype, "full", key="batch")
    full = forward(target, problem)
    last = case.shape[0] - 1
    for rows in (slice(0, 1), slice(last // 2, last // 2 + 1), slice(last, last + 1), slice(1, last)):
        part = forward(target, problem.with_x(problem.x[rows]))
        differ = [name for name, value in part.items() if not bitwise_equal(value, full[name][rows])]
        assert not differ, f"rows {rows.start}:{rows.stop} alone differ from the full batch in {differ}"


@pytest.mark.parametrize("op", OPS)
def test_determinism(target: Target, dtype: str, op: Op) -> None:
    """Two runs of forward and backward on the same inputs give bitwise identical results."""
    _require_determinism(target)
    problem = make_problem(op, Case((64, 256), (-1,)), dtype, "full", key="determinism")
    dy = make_dy(problem)
    first = {**forward(target, problem), **backward(target, problem, dy, False)}
    second = {**forward(target, problem), **backward(target, problem, dy, False)}
    differ = [name for name in first if not bitwise_equal(first[name], second[name])]
    assert not differ, f"two runs differ in {differ}"
