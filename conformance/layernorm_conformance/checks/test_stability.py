"""Numerical stability: large offsets with small spread, large half-precision magnitudes, long rows, constant rows."""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from layernorm_conformance.data import Case, cast
from layernorm_conformance.numerics import Numerics
from layernorm_conformance.ops import (
    OPS,
    Affine,
    Op,
    Problem,
    autodiff_backward,
    backward,
    check_backward_problem,
    check_forward_problem,
    check_forward_values,
    check_statistics_autodiff,
    forward,
    make_dy,
    make_problem,
    reference_backward,
    reference_forward,
    stat_names,
)
from layernorm_conformance.targets import Target

OFFSET_SPREAD = {"float64": (1e8, 1.0), "float32": (1e4, 1.0), "float16": (3e4, 64.0), "bfloat16": (2.0**20, 2.0**15)}
"""Per dtype, a row offset and spread whose condition |mean| / std is large but still resolved by the dtype:
E[x^2] - E[x]^2 in the compute dtype loses about u * kappa**2, far beyond the tolerance (not in bfloat16, whose
8 bits cannot hold a large kappa; its float32 statistics share float16's code path)."""


OFFSET_CASES = (Case((8, 64), (-1,)), Case((1000, 24), (-1,)), Case((4, 64, 6), (1,)))
"""Few rows, many rows (a backend may switch formulas with the size), and channels-first rows."""


@pytest.mark.parametrize("case", OFFSET_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("op", OPS)
def test_large_offset(numerics: Numerics, target: Target, dtype: str, op: Op, case: Case) -> None:
    """Rows offset far from 0 relative to their spread (catches single-pass E[x^2] - E[x]^2).

    With and without statistics returned.
    """
    offset, spread = OFFSET_SPREAD[dtype]
    problem = make_problem(op, case, dtype, "full", loc=offset, scale=spread, key="offset")
    check_forward_problem(numerics, target, problem)


@pytest.mark.parametrize("case", OFFSET_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("op", OPS)
def test_large_offset_backward(numerics: Numerics, target: Target, dtype: str, op: Op, case: Case) -> None:
    """The backward on the same ill-conditioned rows."""
    offset, spread = OFFSET_SPREAD[dtype]
    problem = make_problem(op, case, dtype, "full", loc=offset, scale=spread, key="offset-bwd")
    check_backward_problem(numerics, target, problem)


SKEWED_CASES = (Case((4, 1024, 64), (1,)), Case((64, 1024), (-1,)))
"""Rows of 1024 values, channels-first (over a middle axis, as a strided sum runs) and trailing."""


@pytest.mark.parametrize("case", SKEWED_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("op", OPS)
def test_rows_far_from_their_first_element(numerics: Numerics, target: Target, dtype: str, op: Op, case: Case) -> None:
    """ReLU-like rows (max(x, 0) of a normal x, mean 0.4) whose first element is 3.1 to 6: forward and backward.

    A mean taken about the row's first element sums values offset by its distance from the mean; in one running
    sum per column (NumPy's reduction over a middle axis) that rounding grew with the row's length: y 2 to 6
    times the float32 tolerance at 1024 values. (A first element of exactly 3 hid it: the many zeros then shift
    to -3 and sum exactly.)
    """
    problem = make_problem(op, case, dtype, "full", key="relu")
    x = np.maximum(problem.x.astype(np.float64), 0.0)
    first, second = [slice(None)] * x.ndim, [slice(None)] * x.ndim
    first[case.axis[0]], second[case.axis[0]] = slice(0, 1), slice(1, 2)
    x[tuple(first)] = 3.1 + x[tuple(second)]
    problem = problem.with_x(cast(x, dtype))
    check_forward_problem(numerics, target, problem)
    check_backward_problem(numerics, target, problem)


FIRST_ACTIVATION_CASES = (
    Case((2, 65536), (-1,)),
    Case((64, 512), (-1,)),
    Case((2, 512, 64), (1,)),
    Case((1, 4096, 64), (1,)),
    Case((4, 48, 64), (1,)),
)
"""Long rows, rows of a few hundred values, and channels-first ones (over a middle axis, as a strided sum runs)."""


@pytest.mark.parametrize("case", FIRST_ACTIVATION_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("op", OPS)
def test_a_large_first_activation(numerics: Numerics, target: Target, dtype: str, op: Op, case: Case) -> None:
    """Rows of values N(0, 1) but the first, 1000 (one large activation): forward and backward.

    A mean taken about the row's first element rounds x - 1000 by about u * 1000 a value, and sums N values of
    that size. On these cases NumPy's float32 y, taken so, came out 16 times the tolerance at 65536 values (its
    mean 1.3 times), 2.5 times at 512, and channels-first 4.5 times at 512 and 1.02 times at 48, though the rows'
    condition (|mean| / spread) is 0.15 or less.
    """
    problem = make_problem(op, case, dtype, "weight", key="first-activation")
    x = problem.x.astype(np.float64)
    first = [slice(None)] * x.ndim
    first[case.axis[0]] = slice(0, 1)
    x[tuple(first)] = 1000.0
    assert problem.weight is not None
    weight = problem.weight.copy()
    weight.reshape(-1)[0] = 0.125  # without a bias, y's scale is then the other values', whose digits a far pivot loses
    problem = replace(problem, x=cast(x, dtype), weight=weight)
    check_forward_problem(numerics, target, problem)
    check_backward_problem(numerics, target, problem)


@pytest.mark.conformance_dtypes("float16", "bfloat16")
@pytest.mark.parametrize("op", OPS)
def test_half_large_magnitude(numerics: Numerics, target: Target, dtype: str, op: Op) -> None:
    """Half rows of 4096 values near 2000: statistics accumulated in half precision fail.

    Their sum (8e6) and squares (4e6) overflow float16 and lose every bit in bfloat16; float32 accumulation is
    exact enough.
    """
    problem = make_problem(op, Case((4, 4096), (-1,)), dtype, "none", loc=2000.0, scale=500.0, key="magnitude")
    check_forward_values(numerics, target, problem)


EPS_ABOVE_VAR_CASES = (
    pytest.param(Case((8, 33), (-1,)), 1e3, 3.0, id="8x33-offset1e3-eps3"),
    pytest.param(Case((33, 33), (0,)), 1e3, 3.0, id="33x33@0-offset1e3-eps3"),
    pytest.param(Case((9, 9), (-1,)), -30.0, 0.1, id="9x9-offset-30-eps0.1"),
)
"""Rows offset far from 0 whose variance (1e-4) is far below eps: y and xhat are small, while a backend's rounded
mean moves xhat by about u * kappa of its unit, so y by that times the weight: the tolerance's cond term is taken
at that size (`layernorm_core.tolerances.xhat_units`), not at y's own (a correct float32 y failed by 4x)."""


@pytest.mark.conformance_dtypes("float32", "float64")
@pytest.mark.parametrize(("case", "offset", "eps"), EPS_ABOVE_VAR_CASES)
@pytest.mark.parametrize("affine", ["none", "full"])
def test_offset_rows_with_eps_above_their_variance(
    numerics: Numerics, target: Target, dtype: str, case: Case, offset: float, eps: float, affine: Affine
) -> None:
    """layer_norm forward and backward of rows of spread 0.01 about a large offset, eps far above their variance.

    Half dtypes cannot hold such rows: they are constant there (`test_constant_rows`).
    """
    problem = make_problem("layer_norm", case, dtype, affine, eps=eps, loc=offset, scale=0.01, key="eps-above-var")
    check_forward_problem(numerics, target, problem)
    check_backward_problem(numerics, target, problem)


SPREADS = {"float64": (1e120, 1e-120), "float32": (1e15, 1e-15), "bfloat16": (1e15, 1e-15)}
"""Per dtype, row spreads far from 1 whose squares stay normal in the compute dtype (float32 for bfloat16;
float16 cannot hold them): rstd**3 under- or overflows there, so a backward that forms it loses the
``xhat * mean(g * xhat)`` term of dx, or makes it inf."""


@pytest.mark.conformance_dtypes("bfloat16", "float32", "float64")
@pytest.mark.parametrize("spread", ["large", "small"])
@pytest.mark.parametrize("op", OPS)
def test_extreme_spread(numerics: Numerics, target: Target, dtype: str, op: Op, spread: str) -> None:
    """Rows of spread 1e15 or 1e-15 (1e120, 1e-120 in float64), eps = 0: forward, backward, autodiff.

    The autodiff gradients where the framework differentiates here: of y, and from each returned statistic (rstd's
    derivative is -rstd**2 * xhat / N, whose rstd**3 under- or overflows when formed).
    """
    large, small = SPREADS[dtype]
    scale = large if spread == "large" else small
    problem = make_problem(op, Case((8, 64), (-1,)), dtype, "full", eps=0.0, scale=scale, key="spread")
    check_forward_values(numerics, target, problem)
    dy = make_dy(problem)
    expected, scales, units = reference_backward(problem, dy), problem.scales(dy), problem.units(dy)
    numerics.check(
        backward(target, problem, dy, False), expected, dtype, problem.condition(), scales=scales, units=units
    )
    through_autodiff = autodiff_backward(target, problem, dy) if target.info.autodiff else None
    if through_autodiff is not None:
        numerics.check(through_autodiff, expected, dtype, problem.condition(), scales=scales, units=units)
        for stat in stat_names(op)[1:]:
            check_statistics_autodiff(numerics, target, problem, stat)


LONG_ROW = Case((1, 2**22 + 5), (-1,))
"""One row of 4M elements, as when every axis of a large array is normalized."""
LONG_ROW_OFFSET = {"float64": 1e8, "float32": 1e4, "float16": 1e3, "bfloat16": 1e3}
"""Where the long row's values lie (spread 1): `OFFSET_SPREAD`'s offsets for float64 and float32, where a running
sum over the row drifts by about its length times u times the offset; 1e3 for half x, whose float32 statistics
the float32 offset covers, and whose own rounding (an ulp of 0.5 and 4 near 1e3) keeps the spread visible."""


@pytest.mark.parametrize("op", OPS)
def test_long_row(numerics: Numerics, target: Target, dtype: str, op: Op) -> None:
    """A row of 4M values far from 0 (`LONG_ROW_OFFSET`), forward and backward.

    A sum kept in one running sum (a plain loop, one BLAS dot, XLA:CPU's reduce) drifts with the row's length:
    4x to 160x outside the float32 tolerance here. Pairwise or cascade summation stays within it.
    """
    problem = make_problem(op, LONG_ROW, dtype, "full", loc=LONG_ROW_OFFSET[dtype], key="long-row")
    check_forward_values(numerics, target, problem)
    check_backward_problem(numerics, target, problem)


SPLIT_ROWS = {
    "split-by-a-batch-axis": Case((256, 3, 256), (0, 2)),
    "per-channel": Case((64, 3, 32, 32), (0, 2, 3)),
    "leading": Case((256, 256, 3), (0, 1)),
}
"""Rows of 65536 values over axes that are not trailing: a framework's reduction over them may keep running sums
over all of them (TensorFlow's CPU kernels did over axes (0, 2) of (256, 3, 256): a mean 3 off near 1e4)."""


@pytest.mark.parametrize("layout", list(SPLIT_ROWS))
@pytest.mark.parametrize("op", OPS)
def test_long_rows_over_leading_axes(numerics: Numerics, target: Target, dtype: str, op: Op, layout: str) -> None:
    """Rows of 65536 values far from 0 (`LONG_ROW_OFFSET`) over axes that include the first, forward and backward."""
    problem = make_problem(op, SPLIT_ROWS[layout], dtype, "full", loc=LONG_ROW_OFFSET[dtype], key="split-rows")
    check_forward_values(numerics, target, problem)
    check_backward_problem(numerics, target, problem)


CONSTANT_CASES = (Case((5, 1000), (-1,)), Case((1000, 5), (0,)))
"""Rows of 1000 values along the last axis, and along the first (a sum over it runs down columns)."""


@pytest.mark.parametrize("case", CONSTANT_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("eps", [1e-5, 1e-2], ids=lambda e: f"eps={e:g}")
@pytest.mark.parametrize("value", [0.0, 3.0, -250.0, 0.1, 1e4 + 0.1], ids=lambda v: f"value={v:g}")
def test_constant_rows(numerics: Numerics, target: Target, dtype: str, value: float, eps: float, case: Case) -> None:
    """A constant row gives the bias (y = 0 * rstd + bias): no NaN, no Inf, for eps > 0.

    The row sums of 0, 3 and -250 (in rows of 1000) are exact; those of 0.1 and 1e4 + 0.1 round, and a mean of
    sum(x) / N (JAX, TensorFlow) is then off by that rounding, y by it over sqrt(eps): the row's condition allows
    a pairwise sum's rounding. One running sum down a column of 1000 (TensorFlow's over a leading axis) rounded 6
    times more.
    """
    problem = make_problem("layer_norm", case, dtype, "full", eps=eps, key="constant")
    problem = problem.with_x(cast(np.full(problem.x.shape, value), dtype))
    actual = forward(target, problem)
    assert all(np.isfinite(v.astype(np.float64)).all() for v in actual.values()), "NaN or Inf for a constant row"
    numerics.check(
        actual, reference_forward(problem), dtype, problem.condition(), scales=problem.scales(), units=problem.units()
    )


@pytest.mark.parametrize("op", OPS)
def test_constant_row_without_eps(numerics: Numerics, target: Target, dtype: str, op: Op) -> None:
    """A constant row (a zero row for rms_norm) with eps = 0 gives rstd inf and y NaN, without a RuntimeWarning.

    As the formula says (docs/spec.md); the other rows stay finite and correct.
    """
    _, actual = _with_constant_row(numerics, target, dtype, op, 0.0)
    assert np.isnan(actual["y"][CONSTANT_ROW]).all(), "y of a constant row is not NaN with eps = 0"
    assert np.isposinf(actual["rstd"][CONSTANT_ROW]).all(), "rstd of a constant row is not inf with eps = 0"


def test_rows_of_one_element_without_eps(target: Target, dtype: str) -> None:
    """layer_norm over one element with eps = 0: var is 0 whatever x, so rstd is inf, y and xhat NaN.

    dx and dweight are NaN as the formula gives them (explicit backward and autodiff), dbias is sum(dy). A backend
    that special-cases such rows (their second derivative) gave 0 for dx and dweight.
    """
    problem = make_problem("layer_norm", Case((6, 1), (1,)), dtype, "full", eps=0.0, key="one-element")
    actual = _forward_without_warning(target, problem)
    assert np.isnan(actual["y"]).all() and np.isposinf(actual["rstd"]).all(), "y is not NaN, or rstd not inf"
    dy = make_dy(problem)
    expected_dbias = reference_backward(problem, dy)["dbias"]
    gradients = {"explicit backward": backward(target, problem, dy, False)}
    if target.info.autodiff:
        gradients["autodiff"] = autodiff_backward(target, problem, dy)
    for route, grads in gradients.items():
        if grads is None:
            continue
        assert np.isnan(grads["dx"]).all(), f"{route}: dx is not NaN"
        assert np.isnan(grads["dweight"]).all(), f"{route}: dweight is not NaN"
        np.testing.assert_allclose(grads["dbias"].astype(np.float64), expected_dbias, rtol=1e-2, err_msg=route)


@pytest.mark.parametrize("eps", [0.0, 1e-46], ids=lambda e: f"eps={e:g}")
@pytest.mark.parametrize("size", [5, 40], ids=lambda n: f"size={n}")
@pytest.mark.parametrize("op", OPS)
def test_constant_row_along_a_leading_axis_without_eps(
    target: Target, dtype: str, op: Op, size: int, eps: float
) -> None:
    """Rows along x's first axis (x of shape (size, 3, 2), axis=0), one constant, eps 0 or 1e-46: y never +-inf.

    y is NaN wherever rstd is inf (0 * inf), and so is all that the row's x - mean multiplies rstd into: its dx
    and dweight, through the explicit backward and autodiff, are never +-inf there either. 1e-46 is 0 in float32,
    which half inputs compute in too. XLA:CPU fused the mean's division into x - mean as one FMA with the
    unrounded sum * (1/N): x - mean was then not 0, and y (later dx and dweight) came out +-inf beside a returned
    rstd of inf. Where a backend's compiled mean of the row is inexact, rstd is finite and y = +-1 (docs/spec.md;
    its gradients may then leave a half dtype's range).
    """
    problem = make_problem(op, Case((size, 3, 2), (0,)), dtype, "full", eps=eps, key="no-eps-leading")
    x = problem.x.copy()
    x[:, 1, 0] = cast(np.full(size, _constant(op)), dtype)
    problem = problem.with_x(x)
    actual = _forward_without_warning(target, problem)
    for name, shape in (("y", x.shape), ("rstd", tuple(problem.spec.stats_shape))):
        assert actual[name].shape == shape, f"{name}: shape {actual[name].shape}, expected {shape}"
    y, rstd = actual["y"][:, 1, 0], actual["rstd"][0, 1, 0]
    assert not np.isinf(y).any(), f"y of a constant row is {y} with eps = 0 (rstd {rstd})"
    if not np.isinf(rstd):
        return
    assert np.isnan(y).all(), f"y of a constant row is {y} with eps = 0 and rstd inf"
    dy = make_dy(problem)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a backend may compute 0 * inf in NumPy
        routes = {"explicit backward": backward(target, problem, dy, False)}
        through_autodiff = autodiff_backward(target, problem, dy) if target.info.autodiff else None
        if through_autodiff is not None:  # None: no gradient hook for the framework here
            routes["autodiff"] = through_autodiff
    for route, grads in routes.items():
        for name, of_the_row in (("dx", grads["dx"][:, 1, 0]), ("dweight", grads.get("dweight"))):
            if of_the_row is not None:  # dweight sums the row into every element
                assert not np.isinf(of_the_row.astype(np.float64)).any(), f"{route} {name}: {of_the_row}"


@pytest.mark.parametrize("op", OPS)
def test_tiny_eps(numerics: Numerics, target: Target, dtype: str, op: Op) -> None:
    """An eps of 1e-46, which is 0 in float32, on a constant row: quietly, what eps = 0 gives, or the reference.

    A backend computing in float32 gives rstd inf and y NaN, as for eps = 0; one that computes in a wider dtype
    keeps the eps and gives the reference's y = bias (within the tolerance of the row's condition).
    """
    eps = 1e-46
    problem, actual = _with_constant_row(numerics, target, dtype, op, eps)
    row = slice(CONSTANT_ROW, CONSTANT_ROW + 1)
    if np.isnan(actual["y"][row]).all() and np.isposinf(actual["rstd"][row]).all():
        return
    _check_rows(numerics, problem, actual, dtype, row)


CONSTANT_ROW = 2
"""The row `_with_constant_row` makes constant, to `_constant`'s value."""
CONSTANT_VALUE = 3.0
"""A value whose row sums are exact in any order and dtype: at the suite's row length (40) every backend's mean of
the row is then exact, and its var 0. (docs/spec.md: XLA multiplies the sum by a rounded 1/N, so at some lengths
JAX's and TensorFlow's mean is not exact even then: a row of 1000 values 3.0.)"""


def _with_constant_row(
    numerics: Numerics, target: Target, dtype: str, op: Op, eps: float
) -> tuple[Problem, dict[str, Any]]:
    """The problem with `CONSTANT_ROW` constant, and its results (float64), checked to come without a warning.

    The other rows are checked against the reference here, and a layer_norm mean of the constant row is its value.
    """
    problem = make_problem(op, Case((6, 40), (-1,)), dtype, "full", eps=eps, key="no-eps")
    x = problem.x.copy()
    x[CONSTANT_ROW] = cast(np.full(x.shape[1:], _constant(op)), dtype)
    value = float(x[CONSTANT_ROW, 0])
    problem = problem.with_x(x)
    actual = _forward_without_warning(target, problem)
    if op == "layer_norm":
        assert (actual["mean"][CONSTANT_ROW] == value).all(), "mean of a constant row is not its value"
    _check_rows(numerics, problem, actual, dtype, np.array([k for k in range(x.shape[0]) if k != CONSTANT_ROW]))
    return problem, actual


def _constant(op: Op) -> float:
    """The value of a constant row: `CONSTANT_VALUE`, or 0.0 for rms_norm, whose constant rows are zero rows."""
    return CONSTANT_VALUE if op == "layer_norm" else 0.0


def _forward_without_warning(target: Target, problem: Problem) -> dict[str, Any]:
    """The target's forward results in float64; a RuntimeWarning (NumPy's, for 0 * inf) fails the check."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        return {name: result.astype(np.float64) for name, result in forward(target, problem).items()}


def _check_rows(numerics: Numerics, problem: Problem, actual: dict[str, Any], dtype: str, rows: Any) -> None:
    """Check ``rows`` (an index along axis 0) of the results against the reference of those rows alone."""
    some = problem.with_x(problem.x[rows])
    numerics.check(
        {name: result[rows] for name, result in actual.items()},
        reference_forward(some),
        dtype,
        some.condition(),
        scales=some.scales(),
        units=some.units(),
    )
