"""The contract: dtypes, shapes, array type and device of every result; inputs untouched; rows independent."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from layernorm_conformance.data import Case
from layernorm_conformance.numerics import Numerics, bitwise_equal
from layernorm_conformance.ops import (
    OPS,
    ForeignHostArray,
    Op,
    Problem,
    call_backward,
    call_forward,
    forward,
    forward_of_foreign,
    grad_names,
    make_dy,
    make_problem,
    poison,
    reference_forward,
    stat_names,
    to_target,
)
from layernorm_conformance.targets import Target
from layernorm_core.dtypes import compute_dtype, dtype_name

CONTRACT_CASES = (Case((3, 5), (-1,)), Case((2, 6, 4, 5), (1,)), Case((0, 8), (1,)), Case((3, 4, 5, 6), (1, 3)))


def _describe(target: Target, array: Any) -> tuple[type, str, tuple[int, ...], str]:
    return type(array), dtype_name(array.dtype), tuple(int(d) for d in array.shape), target.module.device_of(array)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", CONTRACT_CASES, ids=lambda c: c.id)
def test_output_contract(target: Target, dtype: str, case: Case, op: Op) -> None:
    """Every result has x's array type and device, and the dtype and shape the spec gives it.

    y and the explicit gradients have x's dtype, y and dx x's shape, dweight and dbias the normalized shape; the
    statistics the compute dtype and the stats shape. For a half x, with float32 parameters too.
    """
    problem = make_problem(op, case, dtype, "full")
    x = to_target(target, problem.x)
    x_type, _, shape, device = _describe(target, x)
    assert device.partition(":")[0] == target.device  # the kind; "cuda:1" where the machine has several
    params = [problem] + ([make_problem(op, case, dtype, "full", mixed=True)] if compute_dtype(dtype) != dtype else [])
    for given in params:
        weight, bias = to_target(target, given.weight), to_target(target, given.bias)
        outputs = call_forward(target.backend, problem, x, weight, bias, True)
        assert isinstance(outputs, tuple) and len(outputs) == len(stat_names(op)), "return_stats=True: wrong arity"
        y, *stats = outputs
        assert _describe(target, y) == (x_type, dtype, shape, device), "y must have x's type, dtype, shape, device"
        stats_shape = problem.spec.stats_shape
        for name, stat in zip(stat_names(op)[1:], stats, strict=True):
            expected = (x_type, compute_dtype(dtype), stats_shape, device)
            assert _describe(target, stat) == expected, f"{name}: expected type/dtype/shape/device {expected}"
        plain = call_forward(target.backend, problem, x, weight, bias, False)
        assert _describe(target, plain) == _describe(target, y), "return_stats=False must return y alone"
        grads = call_backward(target.backend, problem, to_target(target, make_dy(problem)), x, weight)
        param = (x_type, dtype, problem.spec.normalized_shape, device)
        for name, grad in zip(grad_names(op), grads, strict=True):
            expected = (x_type, dtype, shape, device) if name == "dx" else param
            assert _describe(target, grad) == expected, f"{name}: expected type/dtype/shape/device {expected}"


@pytest.mark.parametrize("op", OPS)
def test_inputs_unchanged(target: Target, dtype: str, op: Op) -> None:
    """No call modifies x, weight, bias, dy or the saved statistics (`check_inputs_unchanged`)."""
    check_inputs_unchanged(target, make_problem(op, Case((4, 3, 8), (1, 2)), dtype, "full", key="inputs"))


@pytest.mark.conformance_dtypes("float16", "bfloat16")
@pytest.mark.parametrize("op", OPS)
def test_float32_params_unchanged(target: Target, dtype: str, op: Op) -> None:
    """No call modifies a half x's float32 weight and bias (rounded to x's dtype in place, say), nor the rest."""
    problem = make_problem(op, Case((4, 3, 8), (1, 2)), dtype, "full", mixed=True, key="inputs")
    check_inputs_unchanged(target, problem)


def check_inputs_unchanged(target: Target, problem: Problem) -> None:
    """No call modifies x, weight, bias, dy or the saved statistics.

    Forwards with and without statistics and backwards with and without saved statistics, each called twice (a
    first call may set up what a second reuses).
    """
    to = target.module
    op = problem.op
    inputs = {"x": problem.x, "weight": problem.weight, "bias": problem.bias, "dy": make_dy(problem)}
    arrays = {name: to_target(target, a) for name, a in inputs.items() if a is not None}
    x, weight, bias, dy = (arrays.get(name) for name in ("x", "weight", "bias", "dy"))
    before = {name: to.to_numpy(a) for name, a in arrays.items()}
    for return_stats in (False, True, False, True):
        outputs = call_forward(target.backend, problem, x, weight, bias, return_stats)
    _, *stats = outputs
    saved = dict(zip(stat_names(op)[1:], stats, strict=True))
    before |= {name: to.to_numpy(a) for name, a in saved.items()}
    for given in ({}, saved, {}, saved):
        call_backward(target.backend, problem, dy, x, weight, **given)
    after = {name: to.to_numpy(a) for name, a in (arrays | saved).items()}
    changed = [name for name in before if not bitwise_equal(before[name], after[name])]
    assert not changed, f"inputs modified: {changed}"


@pytest.mark.parametrize("op", OPS)
def test_foreign_arrays(numerics: Numerics, target: Target, dtype: str, op: Op) -> None:
    """Arrays of a framework no backend owns, in host memory, as the backend's ``from_foreign`` takes them.

    It keeps x's dtype and values exactly and leaves the foreign array as it was, and a call on such arrays that
    names the backend gives the reference's results. On the CPU only: such arrays are host memory.
    """
    if target.device != "cpu":
        pytest.skip("foreign host arrays are imported on the cpu")
    problem = make_problem(op, Case((5, 16), (-1,)), dtype, "full", key="foreign")
    held = problem.x.copy()
    imported = target.module.to_numpy(target.module.from_foreign(ForeignHostArray(held)))
    assert bitwise_equal(imported, problem.x), f"from_foreign gave {imported.dtype} {imported!r}; x was {problem.x!r}"
    assert bitwise_equal(held, problem.x), "from_foreign modified the foreign array"
    results = forward_of_foreign(target, problem)
    numerics.check(
        results, reference_forward(problem), dtype, problem.condition(), scales=problem.scales(), units=problem.units()
    )


def _forward_and_backward(target: Target, problem: Problem) -> list[Any]:
    """Every result of forwards without and with statistics and of an explicit backward, as the target's arrays."""
    x, weight, bias, dy = (to_target(target, a) for a in (problem.x, problem.weight, problem.bias, make_dy(problem)))
    plain = call_forward(target.backend, problem, x, weight, bias, False)
    outputs = call_forward(target.backend, problem, x, weight, bias, True)
    return [plain, *outputs, *call_backward(target.backend, problem, dy, x, weight)]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", [Case((4, 64), (-1,)), Case((1100, 256), (-1,))], ids=lambda c: c.id)
def test_results_outlive_later_calls(target: Target, dtype: str, case: Case, op: Op) -> None:
    """A result keeps its values through later calls on other inputs of its shape.

    No output may be a view of memory the backend reuses (scratch buffers: the larger case is over 2**18 elements,
    where backends work in blocks).
    """
    to_numpy = target.module.to_numpy
    kept = _forward_and_backward(target, make_problem(op, case, dtype, "full", key="outlive-first"))
    before = [to_numpy(a) for a in kept]
    _forward_and_backward(target, make_problem(op, case, dtype, "full", key="outlive-second"))
    names = ["y (return_stats=False)", *stat_names(op), *grad_names(op)]
    changed = [n for n, b, a in zip(names, before, kept, strict=True) if not bitwise_equal(b, to_numpy(a))]
    assert not changed, f"results overwritten by a later call: {changed}"


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("row", [40, 33], ids=["row-of-40", "row-of-33"])
def test_nonfinite_rows_isolated(numerics: Numerics, target: Target, dtype: str, op: Op, row: int) -> None:
    """A NaN in one row and an Inf in another leave every other row finite and correct, and x as it was.

    The poisoned rows give what docs/spec.md says: NaN y and rstd for layer_norm; for rms_norm, NaN for the NaN row
    and, for the Inf row, rstd 0 and y 0 but NaN at the Inf. Rows of 40 and of 33 values: a kernel may sum rows
    it reads four values at a time in one way and the others in another (torch's CUDA rms_norm gave the Inf row
    of 33 rstd NaN).
    """
    problem = make_problem(op, Case((6, row), (-1,)), dtype, "full", key="poison")
    problem = problem.with_x(poison(problem.x, {1: float("nan"), 4: float("inf")}))
    x = to_target(target, problem.x)
    before = target.module.to_numpy(x)
    call_forward(target.backend, problem, x, None, None, False)
    assert bitwise_equal(before, target.module.to_numpy(x)), "x modified (its NaN or Inf replaced?)"
    actual, expected = forward(target, problem), reference_forward(problem)
    keep = np.array([0, 2, 3, 5])
    for name, value in actual.items():
        assert np.isfinite(value[keep].astype(np.float64)).all(), f"{name}: a NaN/Inf row leaked into other rows"
    y, rstd = actual["y"].astype(np.float64), actual["rstd"].astype(np.float64)
    assert np.isnan(y[1]).all() and np.isnan(rstd[1]).all(), "the NaN row's y or rstd is not NaN"
    if op == "layer_norm":
        assert np.isnan(y[4]).all() and np.isnan(rstd[4]).all(), "the Inf row's y or rstd is not NaN"
    else:
        at_inf = np.isinf(problem.x[4].astype(np.float64))
        assert (rstd[4] == 0).all(), "the Inf row's rstd is not 0"
        assert np.isnan(y[4][at_inf]).all() and (y[4][~at_inf] == 0).all(), "the Inf row's y is not 0 (NaN at the Inf)"
    numerics.check(
        {k: v[keep] for k, v in actual.items()},
        {k: v[keep] for k, v in expected.items()},
        dtype,
        problem.condition()[keep],
        scales=problem.scales(),
        units=problem.units(),
    )
