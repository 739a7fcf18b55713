"""NumPy backend numerics against the float64 reference, with the tolerance table of docs/spec.md."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
import threading
import warnings
from collections.abc import Callable

import numpy as np
import pytest
from cases import HOST_DTYPES, shape_cases
from forked import WAIT_FOR_CHILD
from hypothesis import given, settings
from hypothesis import strategies as st
from layernorm_numpy import kernels
from layernorm_numpy.kernels import BLOCK_BYTES, MIN_WIDTH, PARALLEL_MIN_BYTES, suits_3d_layout

import layernorm
from layernorm_core import check_backward, check_forward, reference
from layernorm_core.tolerances import error_ratio, gradient_scale, mean_scale, row_condition, tolerance

DTYPES = HOST_DTYPES
CASES = shape_cases(65536)


def _inputs(shape: tuple[int, ...], axis: object, dtype: np.dtype, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    spec = check_forward("layer_norm", np.empty(shape, np.float32), None, None, axis, 1e-5)  # type: ignore[arg-type]
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    w = rng.standard_normal(spec.normalized_shape).astype(dtype)
    b = rng.standard_normal(spec.normalized_shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, w, b, dy


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "axis"), CASES)
def test_layer_norm_forward_and_backward(shape: tuple[int, ...], axis: object, dtype: str) -> None:
    _assert_layer_norm_matches_reference(shape, axis, dtype)


def _assert_layer_norm_matches_reference(shape: tuple[int, ...], axis: object, dtype: str) -> None:
    """Forward (y, mean, rstd) and backward (given and recomputed statistics) against the float64 reference."""
    x, w, b, dy = _inputs(shape, axis, DTYPES[dtype])
    y, mean, rstd = layernorm.layer_norm(x, w, b, axis=axis, return_stats=True)
    spec = check_forward("layer_norm", x, w, b, axis, 1e-5)  # type: ignore[arg-type]
    ref_y, ref_mean, ref_rstd = reference.layer_norm(x, w, b, spec)
    cond = row_condition(x, spec)
    assert (y.dtype, y.shape) == (x.dtype, x.shape)
    assert mean.dtype == rstd.dtype == np.dtype(spec.compute_dtype) and mean.shape == spec.stats_shape
    assert error_ratio(y, ref_y, tolerance(dtype, "output"), cond) <= 1
    assert error_ratio(mean, ref_mean, tolerance(dtype, "stats"), cond) <= 1
    assert error_ratio(rstd, ref_rstd, tolerance(dtype, "stats"), cond) <= 1
    grads = layernorm.layer_norm_backward(dy, x, w, axis=axis, mean=mean, rstd=rstd)
    recomputed = layernorm.layer_norm_backward(dy, x, w, axis=axis)
    dx_scale = gradient_scale(dy, w, ref_rstd, spec)
    for got, again, expected, scale in zip(
        grads,
        recomputed,
        reference.layer_norm_backward(dy, x, w, spec),
        (dx_scale, None, None),
        strict=True,
    ):
        assert got.dtype == x.dtype
        assert error_ratio(got, expected, tolerance(dtype, "grad"), cond, scale=scale) <= 1
        np.testing.assert_array_equal(got, again)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    ("shape", "axis"),
    [((85, 768), -1), ((4, 3, 64), (0, 2)), ((2, 2**20 + 5), -1)],
    ids=["2d-block", "3d-layout", "long-rows"],  # long rows: dots of chunks, and of the rest
)
def test_numpy_1_row_sums_without_vecdot(
    shape: tuple[int, ...], axis: object, dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NumPy 1.x has no np.vecdot: every block sums its rows with einsum, as under NumPy 1.24 (pyproject's floor)."""
    monkeypatch.setattr(kernels, "_vecdot", None)
    _assert_layer_norm_matches_reference(shape, axis, dtype)
    x = _inputs(shape, axis, DTYPES[dtype])[0]
    spec = check_forward("rms_norm", x, None, None, axis, 1e-5)  # type: ignore[arg-type]
    assert (
        error_ratio(layernorm.rms_norm(x, axis=axis), reference.rms_norm(x, None, spec)[0], tolerance(dtype, "output"))
        <= 1
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "axis"), CASES)
def test_rms_norm_forward_and_backward(shape: tuple[int, ...], axis: object, dtype: str) -> None:
    _assert_rms_norm_matches_reference(shape, axis, dtype)


def _assert_rms_norm_matches_reference(shape: tuple[int, ...], axis: object, dtype: str) -> None:
    """Forward (y, rstd) and backward against the float64 reference."""
    x, w, _, dy = _inputs(shape, axis, DTYPES[dtype])
    y, rstd = layernorm.rms_norm(x, w, axis=axis, return_stats=True)
    spec = check_forward("rms_norm", x, w, None, axis, 1e-5)  # type: ignore[arg-type]
    ref_y, ref_rstd = reference.rms_norm(x, w, spec)
    assert y.dtype == x.dtype and rstd.dtype == np.dtype(spec.compute_dtype)
    assert error_ratio(y, ref_y, tolerance(dtype, "output")) <= 1
    assert error_ratio(rstd, ref_rstd, tolerance(dtype, "stats")) <= 1
    dx_scale = gradient_scale(dy, w, ref_rstd, spec)
    for got, expected, scale in zip(
        layernorm.rms_norm_backward(dy, x, w, axis=axis, rstd=rstd),
        reference.rms_norm_backward(dy, x, w, spec),
        (dx_scale, None),
        strict=True,
    ):
        assert error_ratio(got, expected, tolerance(dtype, "grad"), scale=scale) <= 1


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_ndarray_subclasses_compute_as_plain_arrays(axis: int) -> None:
    """np.matrix stays 2-D through reshape: a 3-D kernel layout of it normalized the wrong axis."""
    x = np.random.default_rng(6).standard_normal((100, 64)).astype(np.float32)
    dy = np.random.default_rng(7).standard_normal((100, 64)).astype(np.float32)
    for op in ("layer_norm", "rms_norm"):
        got, expected = getattr(layernorm, op)(np.matrix(x), axis=axis), getattr(layernorm, op)(x, axis=axis)
        assert type(got) is np.ndarray
        np.testing.assert_array_equal(got, expected)
        backward = getattr(layernorm, f"{op}_backward")
        for g, e in zip(backward(np.matrix(dy), np.matrix(x), axis=axis), backward(dy, x, axis=axis), strict=True):
            assert type(g) is np.ndarray
            np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_large_offset_small_spread_normalizes(dtype: str) -> None:
    """1e4 + N(0, 1e-2): a single-pass E[x^2] - E[x]^2 loses every digit here."""
    x = (1e4 + np.random.default_rng(3).normal(0, 1e-2, (16, 4096))).astype(dtype)
    y = layernorm.layer_norm(x, eps=0.0)
    spec = check_forward("layer_norm", x, None, None, -1, 0.0)
    ref_y, _, _ = reference.layer_norm(x, None, None, spec)
    assert error_ratio(y, ref_y, tolerance(dtype, "output"), row_condition(x, spec)) <= 1
    np.testing.assert_allclose(y.astype(np.float64).std(axis=-1), 1.0, rtol=1e-3)


@pytest.mark.parametrize("rows", [4, 2 * PARALLEL_MIN_BYTES // (4 * 256)], ids=["one-block", "threaded"])
def test_eps_zero_constant_rows_are_nan_without_warnings(rows: int) -> None:
    """eps = 0 (docs/spec.md): a constant row's y and dx are NaN and its rstd inf, with no NumPy RuntimeWarning.

    The constant row is the last, so a large input has it in a worker thread's share. Every other row is finite.
    """
    x, w, b, dy = _inputs((rows, 256), -1, np.dtype(np.float32))
    last = rows - 1
    x[last] = 3.0
    zero_last = x.copy()
    zero_last[last] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        y, mean, rstd = layernorm.layer_norm(x, w, b, eps=0.0, return_stats=True)
        dx, dweight, dbias = layernorm.layer_norm_backward(dy, x, w, eps=0.0)
        y_rms, rstd_rms = layernorm.rms_norm(zero_last, eps=0.0, return_stats=True)
    assert np.isnan(y[last]).all() and np.isnan(dx[last]).all() and np.isnan(y_rms[last]).all()
    assert np.isposinf(rstd[last]).all() and np.isposinf(rstd_rms[last]).all() and mean[last] == 3.0
    assert np.isfinite(y[:last]).all() and np.isfinite(dx[:last]).all() and np.isfinite(y_rms[:last]).all()
    assert np.isnan(dweight).all() and np.isfinite(dbias).all()  # dweight sums the NaN row's dy * xhat


@pytest.mark.parametrize(
    ("shape", "axis"),
    [((4, 256), -1), ((4, 40, 64), 1), ((4, 3, 5), (0, 2)), ((3, 2**17 + 3), -1)],
    ids=["rows", "channels-first", "transposed", "long-rows"],
)
def test_eps_zero_keeps_the_warning_of_a_row_holding_an_inf(shape: tuple[int, ...], axis: object) -> None:
    """eps = 0 silenced the whole call, to give a zero row's NaN quietly: a row holding an inf, which warns under
    the caller's np.errstate (docs/spec.md), gave no warning, and no FloatingPointError under invalid="raise"."""
    x, w, b, dy = _inputs(shape, axis, np.dtype(np.float32))
    spec = check_forward("layer_norm", x, w, b, axis, 0.0)
    x[tuple(0 if d in spec.batch_axes else slice(None) for d in range(x.ndim))] = 0.0  # rstd inf, y NaN, silently
    second = tuple(int(d == spec.batch_axes[-1]) if d in spec.batch_axes else 1 for d in range(x.ndim))
    x[second] = np.inf  # the second row's y is NaN too, with a warning
    with np.errstate(invalid="ignore"):
        _, mean, rstd = layernorm.layer_norm(x, w, b, axis=axis, eps=0.0, return_stats=True)
        rms_rstd = layernorm.rms_norm(x, w, axis=axis, eps=0.0, return_stats=True)[1]
    for call in (
        lambda: layernorm.layer_norm(x, w, b, axis=axis, eps=0.0),
        lambda: layernorm.rms_norm(x, w, axis=axis, eps=0.0),
        lambda: layernorm.layer_norm_backward(dy, x, w, axis=axis, eps=0.0, mean=mean, rstd=rstd),
        lambda: layernorm.rms_norm_backward(dy, x, w, axis=axis, eps=0.0, rstd=rms_rstd),
    ):
        with np.errstate(invalid="raise"), pytest.raises(FloatingPointError):
            call()
        with pytest.warns(RuntimeWarning, match="invalid value"):
            call()
    x[np.isinf(x)] = 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y, _, rstd = layernorm.layer_norm(x, w, b, axis=axis, eps=0.0, return_stats=True)
        dx = layernorm.layer_norm_backward(dy, x, w, axis=axis, eps=0.0)[0]
    first_row = np.broadcast_to(np.isposinf(rstd), x.shape)
    assert np.isposinf(rstd).sum() == 1 and np.isnan(y[first_row]).all() and np.isnan(dx[first_row]).all()
    assert np.isfinite(y[~first_row]).all() and np.isfinite(dx[~first_row]).all()


def test_constant_rows_give_the_bias() -> None:
    x = np.full((3, 8), 7.25, np.float32)
    b = np.arange(8, dtype=np.float32)
    np.testing.assert_array_equal(layernorm.layer_norm(x, np.ones(8, np.float32), b), np.broadcast_to(b, x.shape))
    np.testing.assert_array_equal(layernorm.rms_norm(np.zeros((2, 4), np.float32)), np.zeros((2, 4), np.float32))


def test_non_contiguous_inputs_and_no_mutation() -> None:
    base = np.random.default_rng(4).standard_normal((8, 10, 12)).astype(np.float32)
    x = base[:, ::2, ::-1]
    before = base.copy()
    y = layernorm.layer_norm(x, axis=(0, 2))
    layernorm.layer_norm_backward(np.ones_like(x), x, axis=(0, 2))
    np.testing.assert_array_equal(base, before)
    np.testing.assert_array_equal(y, layernorm.layer_norm(np.ascontiguousarray(x), axis=(0, 2)))


def test_float32_params_with_half_x() -> None:
    x, w, b, _ = _inputs((4, 16), -1, np.dtype(np.float16))
    y = layernorm.layer_norm(x, w.astype(np.float32), b.astype(np.float32))
    spec = check_forward("layer_norm", x, w, b, -1, 1e-5)
    ref_y, _, _ = reference.layer_norm(x, w.astype(np.float32), b.astype(np.float32), spec)
    assert y.dtype == np.float16 and error_ratio(y, ref_y, tolerance("float16", "output")) <= 1


def test_rows_are_batch_invariant_and_deterministic() -> None:
    # The batch crosses block and thread splits; a row alone, or up to BLOCK_BYTES of rows, is one block.
    x = np.random.default_rng(5).standard_normal((3000, 700)).astype(np.float32)
    dy = np.random.default_rng(6).standard_normal(x.shape).astype(np.float32)
    outputs = layernorm.layer_norm(x, return_stats=True)
    rms_outputs = layernorm.rms_norm(x, return_stats=True)
    dx = layernorm.layer_norm_backward(dy, x)[0]
    for rows in (slice(0, 1), slice(1234, 1235), slice(2999, 3000), slice(100, 190), slice(100, 900)):
        for got, full in zip(layernorm.layer_norm(x[rows], return_stats=True), outputs, strict=True):
            np.testing.assert_array_equal(got, full[rows])
        for got, full in zip(layernorm.rms_norm(x[rows], return_stats=True), rms_outputs, strict=True):
            np.testing.assert_array_equal(got, full[rows])
        np.testing.assert_array_equal(layernorm.layer_norm_backward(dy[rows], x[rows])[0], dx[rows])
    np.testing.assert_array_equal(layernorm.layer_norm(x), outputs[0])
    given_stats = layernorm.layer_norm_backward(dy, x, mean=outputs[1], rstd=outputs[2])
    for got, again in zip(layernorm.layer_norm_backward(dy, x), given_stats, strict=True):
        np.testing.assert_array_equal(got, again)  # recomputed statistics are the forward's, bit for bit
    rms_given = layernorm.rms_norm_backward(dy, x, rstd=rms_outputs[1])
    for got, again in zip(layernorm.rms_norm_backward(dy, x), rms_given, strict=True):
        np.testing.assert_array_equal(got, again)


CHANNELS_FIRST = [
    ((3, 40, 37, 71), 1),  # over PARALLEL_MIN_BYTES in float32; rows in chunks of inner columns, the last partial
    ((300, 32, 70), 1),  # whole rows in a block, the last block partial
    ((4, 6, 5, 64), (1, 2)),  # a run of two axes
    ((2, 3, 1, 4), 1),  # an inner size below MIN_WIDTH: transposed to (rows, N)
    ((2, 4100, 96), 1),  # long rows: blocks of MIN_WIDTH columns, the last partial, sums by runs and their sums
]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize(("shape", "axis"), CHANNELS_FIRST)
def test_channels_first_layout_matches_reference(shape: tuple[int, ...], axis: object, dtype: str) -> None:
    """Adjacent, non-trailing axes run on the (outer, N, inner) layout without a transpose."""
    _assert_layer_norm_matches_reference(shape, axis, dtype)
    _assert_rms_norm_matches_reference(shape, axis, dtype)


def test_channels_first_case_spans_blocks_chunks_and_threads() -> None:
    """The first CHANNELS_FIRST case is as large and as oddly sized as its comment says."""
    (outer, n, *inner_sizes), _ = CHANNELS_FIRST[0]
    inner, width = int(np.prod(inner_sizes)), BLOCK_BYTES // (n * 4)
    assert suits_3d_layout(n, inner, 4) and outer * n * inner * 4 > PARALLEL_MIN_BYTES
    assert MIN_WIDTH <= width < inner and inner % width != 0


def test_long_channels_first_rows_keep_their_layout() -> None:
    """The long-rows CHANNELS_FIRST case runs on the (outer, N, inner) layout; rows too long for it are transposed."""
    (_, n, inner), _ = CHANNELS_FIRST[-1]
    assert suits_3d_layout(n, inner, 4) and n > kernels.PLAIN_COLUMNS_DOT
    assert not suits_3d_layout(kernels.LONG_3D_BLOCK_BYTES // (4 * MIN_WIDTH) + 1, inner, 4)


@pytest.mark.parametrize("n", [16384, 65536])
def test_long_channels_first_sums_stay_accurate(n: int) -> None:
    """ReLU-like rows of float32 values over a middle axis, a N(0, 1) weight: one running sum per column along
    them (einsum's, NumPy's strided reduction) gave y 4.6 times the tolerance at 16384 values; at 65536, one
    running sum of the sums of runs of values gave 1.06 times. (rms_norm's sums of squares of such rows stayed
    within 0.43 of it either way.)"""
    rng = np.random.default_rng(2)
    x = (np.maximum(rng.standard_normal((2, n, 64)), 0) * 3).astype(np.float32)
    w = rng.standard_normal(n).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    spec = check_forward("layer_norm", x, w, None, 1, 1e-5)
    cond = row_condition(x, spec)
    y, _, rstd = layernorm.layer_norm(x, w, axis=1, return_stats=True)
    ref_y, _, ref_rstd = reference.layer_norm(x, w, None, spec)
    dx = layernorm.layer_norm_backward(dy, x, w, axis=1)[0]
    ref_dx = reference.layer_norm_backward(dy, x, w, spec)[0]
    assert error_ratio(y, ref_y, tolerance("float32", "output"), cond) <= 1
    assert error_ratio(rstd, ref_rstd, tolerance("float32", "stats"), cond) <= 1
    scale = gradient_scale(dy, w, ref_rstd, spec)
    assert error_ratio(dx, ref_dx, tolerance("float32", "grad"), cond, scale=scale) <= 1


@pytest.mark.parametrize(("shape", "axis"), [((0, 100), -1), ((0, 2000), -1), ((0, 32, 64), 1), ((2, 32, 0), 1)])
def test_empty_batches_of_long_rows(shape: tuple[int, ...], axis: int) -> None:
    """No rows (or no columns of a channels-first layout) to check for a far first value: the check reduced an
    empty array (a ValueError)."""
    x = np.zeros(shape, np.float32)
    y, mean, rstd = layernorm.layer_norm(x, axis=axis, return_stats=True)
    stats_shape = tuple(1 if d == axis % x.ndim else size for d, size in enumerate(shape))
    assert y.shape == shape and mean.shape == rstd.shape == stats_shape
    assert layernorm.layer_norm_backward(x, x, axis=axis)[0].shape == shape


_ROW_63 = (
    "4866173f6506d0bd386dcdbdb805c2bd5220b3bddc96c6bded86ebbdf8d7d2bd3397bdbde1e7d1bdf866b7bd5ee7e8bdc5c5aebd"
    "ee839cbdd1cad8bd247592bd4596babd27c4bdbdc312c3bddbffc6bda180d4bdc56de2bda89ab3bdc45cd7bdf187d2bd2684ccbd"
    "5b1ba5bdfda5d8bdaff3b8bd0b25cfbd1939c0bdfa79a3bd6282d2bd8c15bbbd2066ccbd6094c5bde520c0bd958eaebd89f8c9bd"
    "2533b5bdf490c2bd9550d0bda2d6afbd7af5a3bd0c05d3bd8605d3bdd34bbabd6efdc7bdbbb6d4bd49e8d2bddaabc8bd34fcabbd"
    "abcbbfbd34cca6bda4b8c8bda63ad6bdc17cbfbde920debdd18dc1bd4062bdbd1431dabdb94fc8bd033bd2bd0812b0bdfd898bbe"
    "c118853f1c8473393ddea6bf510045bf3c9ee3be166425be8704f8be20b567bfc62806c0618be33ec36ccf3ebe496c3eeef7763e"
    "6d89793f7429adbfb38d97bf7a41f2bec91bac3efef98bbf37846cbff0916f3e0663573f5841dbbef79c65be765ee4bfc6a00d3e"
    "427a82bf953938bf2313efbf757c93bf9acb173f347cb9bf23940bbf6489153f1439a83ea979743f6222da3fc0821ebfe1850dbf"
    "a76c0dbfb0d680bf18fa793fe88d113fcee7a13e7c4d77be53463a3f5b36cabfcb225c3f613c563e3c45b4bea91247be1b6695bf"
    "ec1cbdbf4b2a073d89d69ebef93104bf7b0debbe5596ac3fca27c4bddaddc23f32bc91be"
)
"""63 float32 values, then a weight of 63 (little-endian bytes): a row found by helper-73's search."""


def test_a_far_first_value_in_a_row_of_63() -> None:
    """A row of 63 float32 values near an offset whose first lies sqrt(62) deviations from the mean, with a N(0, 1)
    weight: summed pairwise about that first value, y was 1.28 times the tolerance (rows up to 64 values were not
    checked for a far first value)."""
    x = np.frombuffer(bytes.fromhex(_ROW_63), "<f4")[None, :63]
    w = np.frombuffer(bytes.fromhex(_ROW_63), "<f4")[63:]
    spec = check_forward("layer_norm", x, w, None, -1, 1e-5)
    y = layernorm.layer_norm(x, w)
    expected = reference.layer_norm(x, w, None, spec)[0]
    assert error_ratio(y, expected, tolerance("float32", "output"), row_condition(x, spec)) <= 1


def test_the_far_row_check_keeps_the_callers_errstate() -> None:
    """A first value 1e-30 deviations from the mean: the check's square underflowed, and np.errstate(all="raise")
    raised a FloatingPointError that the forward itself gives no cause for."""
    row = np.zeros(100, np.float32)
    for start in range(0, 96, 32):  # in each run of 32: 0, 0, then pairs +-2**40 that sum to 0 exactly
        row[start + 2 : start + 32 : 2], row[start + 3 : start + 32 : 2] = 2.0**40, -(2.0**40)
    row[-1] = 2.0**-53
    for x, axis in ((row[None, :], -1), (np.ascontiguousarray(np.repeat(row[None, :, None], 64, axis=2)), 1)):
        with np.errstate(all="raise"):
            layernorm.layer_norm(x, axis=axis)


def test_channels_first_large_offset_small_spread() -> None:
    """The shift by the first element along the normalized axis, on the (outer, N, inner) layout."""
    x = (1e4 + np.random.default_rng(6).normal(0, 1e-2, (4, 1024, 300))).astype(np.float32)
    y = layernorm.layer_norm(x, axis=1, eps=0.0)
    spec = check_forward("layer_norm", x, None, None, 1, 0.0)
    ref_y, _, _ = reference.layer_norm(x, None, None, spec)
    assert error_ratio(y, ref_y, tolerance("float32", "output"), row_condition(x, spec)) <= 1
    np.testing.assert_allclose(y.astype(np.float64).std(axis=1), 1.0, rtol=1e-3)


def test_channels_first_non_contiguous_input_is_not_mutated() -> None:
    base = np.random.default_rng(7).standard_normal((6, 8, 10, 12)).astype(np.float32)
    x = base[::2, :, ::-1, 1:]
    contiguous = np.ascontiguousarray(x)
    before = base.copy()
    y = layernorm.layer_norm(x, axis=1)
    grads = layernorm.layer_norm_backward(np.ones_like(x), x, axis=1)
    np.testing.assert_array_equal(base, before)
    np.testing.assert_array_equal(y, layernorm.layer_norm(contiguous, axis=1))
    for got, again in zip(grads, layernorm.layer_norm_backward(np.ones_like(x), contiguous, axis=1), strict=True):
        np.testing.assert_array_equal(got, again)


@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
def test_channels_first_is_deterministic_across_runs_and_threads(dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    shape, axis = CHANNELS_FIRST[0]
    x, w, b, dy = _inputs(shape, axis, DTYPES[dtype], seed=8)
    results = []
    for threads in ("1", "2", "2", "1"):
        monkeypatch.setenv("LAYERNORM_NUMPY_THREADS", threads)
        y, mean, rstd = layernorm.layer_norm(x, w, b, axis=axis, return_stats=True)
        results.append((y, mean, rstd, *layernorm.layer_norm_backward(dy, x, w, axis=axis, mean=mean, rstd=rstd)))
    for other in results[1:]:
        for got, first in zip(other, results[0], strict=True):
            np.testing.assert_array_equal(got, first)


def test_worker_threads_follow_the_callers_floating_point_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows holding inf, over 1 MiB (the threaded path): NumPy's errstate is the caller's in every worker thread.

    The workers ran with NumPy's defaults: warnings under np.errstate(invalid="ignore"), and, under
    all="raise", warnings from the workers beside the caller's FloatingPointError.
    """
    monkeypatch.setenv("LAYERNORM_NUMPY_THREADS", "4")
    x = np.random.default_rng(4).normal(size=(4096, 128)).astype(np.float32)
    x[:, 3] = np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(invalid="ignore"):
            y = layernorm.layer_norm(x)
        assert np.isnan(y).all()
        with np.errstate(all="raise"), pytest.raises(FloatingPointError):
            layernorm.layer_norm(x)
        called: list[str] = []
        with np.errstate(all="call", call=lambda kind, flag: called.append(kind)):
            layernorm.layer_norm(x)
        assert called, "the caller's error callback was not called"


def test_a_thread_count_raised_between_calls_runs_that_many_shares_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """LAYERNORM_NUMPY_THREADS read at each call sized the pool at the first: raised from 2 to 4 later, four shares
    ran two at a time. Each share's first block waits here until all four have started."""
    x = np.random.default_rng(6).normal(size=(4096, 256)).astype(np.float32)
    kernels._pool.cache_clear()  # a pool earlier tests sized
    monkeypatch.setenv("LAYERNORM_NUMPY_THREADS", "2")
    layernorm.layer_norm(x, backend="numpy")
    monkeypatch.setenv("LAYERNORM_NUMPY_THREADS", "4")
    all_started = threading.Barrier(4, timeout=10)
    waited = threading.local()
    original = kernels._sum_along_n

    def first_block_waits(block: np.ndarray, out: np.ndarray) -> None:
        if not getattr(waited, "done", False):
            waited.done = True
            all_started.wait()
        original(block, out)

    monkeypatch.setattr(kernels, "_sum_along_n", first_block_waits)
    y = layernorm.layer_norm(x, backend="numpy")
    assert not all_started.broken
    monkeypatch.setattr(kernels, "_sum_along_n", original)
    np.testing.assert_array_equal(y, layernorm.layer_norm(x, backend="numpy"))


@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
def test_blocks_of_whole_rows_sum_the_same_bits_with_any_number_of_threads(
    dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whole rows a block, 19 blocks (38 in float64), the last one short: the blocks' column sums (dweight, dbias)
    are added pairwise, in a tree over the blocks that no split across threads changes. Only float64 shows a tree
    that a split would change: the float64 sums' last bits are rounded away in float32 and bfloat16 (checked by
    making `_add_subtree` ignore alignment, helper-85); those check the other outputs' bits."""
    shape = (300, 4000)
    _assert_layer_norm_matches_reference(shape, -1, dtype)
    x, w, _, dy = _inputs(shape, -1, DTYPES[dtype], seed=10)
    results = []
    for threads in ("1", "2", "3", "5"):
        monkeypatch.setenv("LAYERNORM_NUMPY_THREADS", threads)
        results.append((*layernorm.layer_norm_backward(dy, x, w), *layernorm.rms_norm_backward(dy, x, w)))
    for other in results[1:]:
        for got, first in zip(other, results[0], strict=True):
            np.testing.assert_array_equal(got, first)


LONG_ROWS = [
    pytest.param((3, 2**17 + 3), -1, id="few-rows"),  # one group of rows, chunks of columns (lengths a column apart)
    pytest.param((9, 35, 2003), (1, 2), id="row-groups"),  # 70105 columns; groups of rows, the last one short
    pytest.param((2, 3, 40000), (0, 2), id="transposed"),  # rows of 80000 made by moving the axes last
    pytest.param((70, 20000), -1, id="rows-of-20000"),  # runs of 10000 columns (6667 in float64); groups of rows
]


@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
@pytest.mark.parametrize(("shape", "axis"), LONG_ROWS)
def test_long_rows_match_the_reference_with_any_number_of_threads(
    shape: tuple[int, ...], axis: object, dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows longer than a block: the backward runs in blocks of rows and columns, two passes, and gives the same
    bits for one, two or three threads."""
    _assert_layer_norm_matches_reference(shape, axis, dtype)
    x, w, _, dy = _inputs(shape, axis, DTYPES[dtype], seed=9)
    spec = check_forward("rms_norm", x, w, None, axis, 1e-5)  # type: ignore[arg-type]
    ref_rstd = reference.rms_norm(x, w, spec)[1]
    scales = (gradient_scale(dy, w, ref_rstd, spec), None)
    expected = reference.rms_norm_backward(dy, x, w, spec)
    for got, want, scale in zip(layernorm.rms_norm_backward(dy, x, w, axis=axis), expected, scales, strict=True):
        assert error_ratio(got, want, tolerance(dtype, "grad"), scale=scale) <= 1
    results = []
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("LAYERNORM_NUMPY_THREADS", threads)
        results.append(
            (*layernorm.layer_norm_backward(dy, x, w, axis=axis), *layernorm.rms_norm_backward(dy, x, w, axis=axis))
        )
    for other in results[1:]:
        for got, first in zip(other, results[0], strict=True):
            np.testing.assert_array_equal(got, first)


@pytest.mark.parametrize(
    ("shape", "dtype", "most"),
    [
        pytest.param((2, 2**21), "float32", 2.25, id="few-long-rows-float32"),
        pytest.param((2, 2**21), "float16", 4.25, id="few-long-rows-float16"),
        pytest.param((1, 2**21), "float64", 3.25, id="one-long-row-float64"),
        pytest.param((64, 65536), "float32", 2.0, id="a-row-a-block-float32"),
        pytest.param((128, 32768), "float64", 2.0, id="a-row-a-block-float64"),
        pytest.param((64, 65536), "float16", 2.5, id="a-row-a-block-float16"),
    ],
)
def test_the_backward_keeps_its_memory_near_its_outputs(shape: tuple[int, ...], dtype: str, most: float) -> None:
    """Two rows of 2**21 values: dweight and dbias were summed in float64 though one block sums each column, and the
    backward peaked at 4x x's bytes in float32, 7x in float16 (its outputs take 2x); then at 3x and 6x, each block's
    column sums held until the call ended (one float64 row: 5x, where its outputs take 3x). Rows of 256 KiB in the
    compute dtype, one a block: each block's column sums, in float64 and held until the call ended, took 4x the
    block's bytes of x in float32 (2x in float64, 8x in float16), and the backward peaked at 5x x's bytes in float32
    (3x in float64, 9x in float16)."""
    x = np.random.default_rng(11).standard_normal(shape).astype(dtype)
    _, mean, rstd = layernorm.layer_norm(x, return_stats=True)
    peak = _peak_bytes(lambda: layernorm.layer_norm_backward(x, x, mean=mean, rstd=rstd))
    assert peak <= most * x.nbytes, f"peak {peak / x.nbytes:.2f}x x's bytes"


@pytest.mark.parametrize(("shape", "dtype"), [((128, 16384), "float32"), ((256, 16384), "float16")])
def test_blocks_of_whole_rows_hold_a_few_column_sums(
    shape: tuple[int, ...], dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows of 16384 values, 4 a block of whole rows, 32 or 64 blocks: each block's column sums, in float64 and held
    until the call ended, took that block's bytes of x in float32 (2x in float16), and the backward peaked at 2.04x
    x's bytes (3.04x). A thread holds about log2 of its blocks' sums: 1.29x and 1.35x with two threads, up to 1.45x
    where the pool has more threads than two, one of which may allocate its scratch inside the traced call."""
    monkeypatch.setenv("LAYERNORM_NUMPY_THREADS", "2")
    x = np.random.default_rng(11).standard_normal(shape).astype(dtype)
    _, mean, rstd = layernorm.layer_norm(x, return_stats=True)
    peak = _peak_bytes(lambda: layernorm.layer_norm_backward(x, x, mean=mean, rstd=rstd))
    assert peak <= 1.75 * x.nbytes, f"peak {peak / x.nbytes:.2f}x x's bytes"


def _peak_bytes(call: Callable[[], object]) -> int:
    """The most memory NumPy held during ``call()``, traced after a first, untraced call (the threads' scratch)."""
    import tracemalloc

    call()
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_the_forward_of_a_long_row_computes_in_y(op: str, dtype: str) -> None:
    """One row of 2**21 values, a block: its scratch, the row's size and over what a thread keeps, was allocated for
    each call beside y (2x x's bytes; a row of 2**22 float32 values took 9 ms where 4 rows of 2**20 took 4.5)."""
    x = np.random.default_rng(14).standard_normal((1, 2**21)).astype(dtype)
    peak = _peak_bytes(lambda: getattr(layernorm, op)(x, return_stats=True))
    assert peak <= 1.25 * x.nbytes, f"peak {peak / x.nbytes:.2f}x x's bytes"


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_a_forward_over_axes_moved_last_frees_x_s_copy_before_y_s(op: str) -> None:
    """Axes (0, 2): x is transposed into a copy with them last, and y back. The copy lived until the call returned,
    beside y's layout and y: 3x x's bytes, where 2x suffice."""
    x = np.random.default_rng(13).standard_normal((32, 256, 256)).astype(np.float32)
    peak = _peak_bytes(lambda: getattr(layernorm, op)(x, axis=(0, 2), return_stats=True))
    assert peak <= 2.25 * x.nbytes, f"peak {peak / x.nbytes:.2f}x x's bytes"


@pytest.mark.parametrize("value", ["0", "-2", "1.5", "two"])
def test_a_bad_thread_count_is_a_backend_error_naming_the_variable(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAYERNORM_NUMPY_THREADS", value)
    x = np.ones((PARALLEL_MIN_BYTES // 1024, 256), np.float32)  # 1 MiB: the size that is split across threads
    with pytest.raises(layernorm.BackendError, match=f"^LAYERNORM_NUMPY_THREADS must be .*; got '{value}'$"):
        layernorm.layer_norm(x)


def test_without_sched_getaffinity_a_call_uses_every_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """macOS and Windows have no os.sched_getaffinity: the thread count is os.cpu_count()."""
    x, w, b, _ = _inputs((PARALLEL_MIN_BYTES // 256, 64), -1, np.dtype(np.float32), seed=3)
    monkeypatch.setenv("LAYERNORM_NUMPY_THREADS", "1")
    one_thread = layernorm.layer_norm(x, w, b)
    monkeypatch.delenv("LAYERNORM_NUMPY_THREADS")
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert kernels._thread_count() == 3
    np.testing.assert_array_equal(layernorm.layer_norm(x, w, b), one_thread)


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=4).map(tuple),
    data=st.data(),
    dtype=st.sampled_from(sorted(DTYPES)),
    eps=st.sampled_from([0.0, 1e-6, 1e-5, 1e-3, 0.5]),
)
def test_random_shapes_axes_dtypes(shape: tuple[int, ...], data: st.DataObject, dtype: str, eps: float) -> None:
    axes = data.draw(st.sets(st.integers(0, len(shape) - 1), min_size=1).map(lambda s: tuple(sorted(s))))
    x, w, b, dy = _inputs(shape, axes, DTYPES[dtype], seed=data.draw(st.integers(0, 2**16)))
    spec = check_forward("layer_norm", x, w, b, axes, eps)
    cond = row_condition(x, spec)
    assert (
        error_ratio(
            layernorm.layer_norm(x, w, b, axis=axes, eps=eps),
            reference.layer_norm(x, w, b, spec)[0],
            tolerance(dtype, "output"),
            cond,
        )
        <= 1
    )
    back_spec = check_backward("layer_norm", dy, x, w, axes, eps, None, None)
    dx_scale = gradient_scale(dy, w, reference.layer_norm(x, None, None, spec)[2], spec)
    for got, expected, scale in zip(
        layernorm.layer_norm_backward(dy, x, w, axis=axes, eps=eps),
        reference.layer_norm_backward(dy, x, w, back_spec),
        (dx_scale, None, None),
        strict=True,
    ):
        assert error_ratio(got, expected, tolerance(dtype, "grad"), cond, scale=scale) <= 1


def test_kept_scratch_is_per_thread_reused_and_never_overlaps() -> None:
    float32 = np.dtype(np.float32)
    shapes = ((4, 8), (4, 8), (4, 1))
    first = kernels._kept(shapes, float32)
    assert all(a.shape == shape and a.dtype == float32 for a, shape in zip(first, shapes, strict=True))
    assert [a.ctypes.data for a in kernels._kept(shapes, float32)] == [a.ctypes.data for a in first]  # reused
    starts = sorted((a.ctypes.data, a.ctypes.data + a.nbytes) for a in first)
    assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(starts))  # disjoint
    other_thread: list[int] = []
    worker = threading.Thread(target=lambda: other_thread.append(kernels._kept(shapes, float32)[0].ctypes.data))
    worker.start()
    worker.join()
    assert other_thread != [first[0].ctypes.data]
    too_large = ((kernels.KEPT_MAX_BYTES // 4 + 1,),)
    assert kernels._kept(too_large, float32)[0].base is None  # a fresh array, not a view of the kept buffer


def test_backward_is_unchanged_by_the_calls_between() -> None:
    """Kept scratch is reused, grown and replaced by other shapes and dtypes; results stay the same bits."""
    x, w, _, dy = _inputs((64, 768), -1, np.dtype(np.float32))
    first = layernorm.layer_norm_backward(dy, x, w)
    for shape, axis, dtype in (((3, 5), -1, np.float16), ((700, 1000), -1, np.float32), ((2, 16, 8, 8), 1, np.float64)):
        others = _inputs(shape, axis, np.dtype(dtype), seed=1)
        layernorm.layer_norm_backward(others[3], others[0], others[1], axis=axis)
        layernorm.rms_norm(others[0], others[1], axis=axis)
        for got, again in zip(layernorm.layer_norm_backward(dy, x, w), first, strict=True):
            np.testing.assert_array_equal(got, again)


FORKED_CHILD = (
    textwrap.dedent(
        """
    import os
    import numpy as np
    import layernorm
    from layernorm_numpy.kernels import PARALLEL_MIN_BYTES

    x = np.random.default_rng(0).standard_normal((PARALLEL_MIN_BYTES // 1024, 1024)).astype(np.float32)
    y = layernorm.layer_norm(x)  # 4 MiB: split across the thread pool
    pid = os.fork()
    if pid == 0:
        os._exit(0 if np.array_equal(layernorm.layer_norm(x), y) else 1)
    """
    )
    + WAIT_FOR_CHILD
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_forked_child_runs_the_threaded_kernels() -> None:
    """A child forked after the parent used the thread pool (a DataLoader worker, a multiprocessing pool) has the
    pool but not its threads; it makes its own pool and gets the parent's bits, rather than waiting forever."""
    env = {**os.environ, "LAYERNORM_NUMPY_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", FORKED_CHILD], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["exit", "0"], out.stdout + out.stderr


AT_EXIT = textwrap.dedent(
    """
    import atexit, sys
    import numpy as np
    import layernorm

    x = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)  # 4 MiB: threaded
    before = layernorm.layer_norm(x) if sys.argv[1] == "used" else None

    def at_exit():
        y = layernorm.layer_norm(x)
        dx, _, _ = layernorm.layer_norm_backward(x, x)
        print("same" if before is None or np.array_equal(y, before) else "differ", dx.shape)

    atexit.register(at_exit)
    """
)


@pytest.mark.parametrize("backend_before_exit", ["used", "unloaded"])
def test_threaded_calls_run_in_an_atexit_handler(backend_before_exit: str) -> None:
    """Once the interpreter shuts down, no thread can start and concurrent.futures cannot be imported: a large call
    from an atexit handler runs its blocks on the calling thread, whether or not the backend ran before."""
    env = {**os.environ, "LAYERNORM_NUMPY_THREADS": "2"}
    out = subprocess.run(
        [sys.executable, "-c", AT_EXIT, backend_before_exit], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.stdout.split() == ["same", "(1024,", "1024)"], out.stdout + out.stderr


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_correctly_rounded_float16_subnormal_outputs_pass_the_tolerance(op: str) -> None:
    """eps = 1e10 makes y about 1e-5, where float16 is subnormal: the correctly rounded y was 2.8 tolerances off,
    two units of rounding relative to it being below float16's spacing there (the tolerance's ``floor``)."""
    x = np.random.default_rng(0).normal(0, 1, (4, 128)).astype(np.float16)
    spec = check_forward(op, x, None, None, -1, 1e10)
    expected = getattr(reference, op)(x, None, *([None] if op == "layer_norm" else []), spec)[0]
    y = getattr(layernorm, op)(x, eps=1e10, backend="numpy")
    np.testing.assert_array_equal(y, expected.astype(np.float16))
    assert np.abs(y).max() < np.finfo(np.float16).smallest_normal
    assert error_ratio(y, expected, tolerance("float16", "output"), row_condition(x, spec)) <= 1


def _half_edge_values(dtype: str) -> np.ndarray:
    """Values around and below float16's normal range: ties between its subnormals, the boundary, and others."""
    tiny = float(np.finfo(np.float16).smallest_normal)
    spacing = 2.0**-24
    ties = (np.arange(-1024, 1025) + 0.5) * spacing
    edges = [0.0, -0.0, tiny, -tiny, tiny * (1 - 2**-20), spacing / 2, spacing / 4, 3 * spacing / 4, 1e-30, 1.0, -3.5]
    uniform = np.random.default_rng(5).uniform(-2 * tiny, 2 * tiny, 4096)
    special = [np.inf, -np.inf, np.nan, 70000.0, 65519.0, 65520.0]
    return np.concatenate([ties, edges, uniform, special]).astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rounding_float16_subnormals_first_keeps_the_cast_s_bits(dtype: str) -> None:
    """`narrow` rounds values below float16's normal range before casting (NumPy's cast of each inexact one costs
    60 ns): ties go to even, the boundary and the values around it, zeros, infinities and NaN cast as NumPy casts."""
    values = _half_edge_values(dtype)
    out = np.empty(values.shape, np.float16)
    with np.errstate(all="ignore"):
        expected = values.astype(np.float16)
        kernels.narrow(out, values.copy())
    assert kernels._many_half_subnormals(values)
    np.testing.assert_array_equal(out.view(np.uint16), expected.view(np.uint16))


def test_a_float16_backward_of_small_gradients_rounds_before_its_casts(monkeypatch: pytest.MonkeyPatch) -> None:
    """dx of dy = x is about 1e-5, below float16's normal range: its cast took 620 ms at (2048, 4096), against 77
    ms for another dy. dx, dweight and dbias are rounded first, and keep the tolerance (their bits: the test above)."""
    rounded: list[tuple[int, ...]] = []
    original = kernels._round_half_subnormals

    def spy(values: np.ndarray) -> None:
        rounded.append(values.shape)
        original(values)

    monkeypatch.setattr(kernels, "_round_half_subnormals", spy)
    x = np.random.default_rng(3).standard_normal((8, 4096)).astype(np.float16)  # dweight: `kernels.SAMPLED_MIN`
    dy = x * np.float16(2e-7)
    spec = check_forward("layer_norm", x, None, None, -1, 1e-5)
    grads = layernorm.layer_norm_backward(dy, x, backend="numpy")
    assert rounded == [(8, 4096), (4096,), (4096,)]
    rounded.clear()
    layernorm.layer_norm_backward(dy[:, :256], x[:, :256], backend="numpy")
    assert not rounded, "blocks under kernels.SAMPLED_MIN values are cast as they are"
    expected = reference.layer_norm_backward(dy, x, None, spec)
    scale = gradient_scale(dy, None, reference.layer_norm(x, None, None, spec)[2], spec)
    for got, want, name in zip(grads, expected, ("dx", "dweight", "dbias"), strict=True):
        assert error_ratio(got, want, tolerance("float16", "grad"), scale=scale) <= 1, name
        assert np.abs(got).max() < np.finfo(np.float16).smallest_normal, name


@pytest.mark.parametrize("subnormal_share", [1 / 1024, 1 / 2], ids=["cast", "rounded-first"])
def test_float16_results_below_its_normal_range_raise_the_underflow_flag_either_way(subnormal_share: float) -> None:
    """A float16 result that rounds below float16's normal range sets NumPy's underflow flag, as NumPy's own cast
    does: under np.errstate(under="raise") a FloatingPointError, under "warn" a RuntimeWarning. Where `narrow`
    rounded such values first (over 1/32 of a sample of them), the cast was exact and the flag was lost: dx of
    gradients of 1e-6 raised nothing, dx of larger ones did. Values exact in float16 set no flag either way."""
    values = np.random.default_rng(9).standard_normal(4096).astype(np.float32)
    values[: int(values.size * subnormal_share)] *= np.float32(1e-6)
    assert kernels._many_half_subnormals(values) == (subnormal_share > 1 / 32)
    out = np.empty(values.shape, np.float16)
    with np.errstate(under="raise"), pytest.raises(FloatingPointError, match="underflow"):
        values.astype(np.float16)
    with np.errstate(under="raise"), pytest.raises(FloatingPointError, match="underflow"):
        kernels.narrow(out, values.copy())
    with np.errstate(under="warn"), pytest.warns(RuntimeWarning, match="underflow"):
        kernels.narrow(out, values.copy())
    exact = values.astype(np.float16).astype(np.float32)  # float16's own values: cast exactly, no flag
    with np.errstate(under="raise"):
        kernels.narrow(out, exact.copy())
    np.testing.assert_array_equal(out, exact.astype(np.float16))


def test_a_float16_backward_of_small_gradients_keeps_the_callers_underflow_errstate() -> None:
    """dx of gradients of 1e-6 lies below float16's normal range: under np.errstate(under="raise") its cast raises,
    as for any dy with some such results, and by default it is silent."""
    x = np.random.default_rng(3).standard_normal((64, 256)).astype(np.float16)
    dy = (np.random.default_rng(4).standard_normal(x.shape) * 1e-6).astype(np.float16)
    with np.errstate(under="raise"), pytest.raises(FloatingPointError, match="underflow"):
        layernorm.layer_norm_backward(dy, x, backend="numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layernorm.layer_norm_backward(dy, x, backend="numpy")


@pytest.mark.parametrize("shape", [(64, 768), (512, 256)], ids=["one-block", "blocks"])
def test_a_call_from_an_errstate_handler_leaves_the_call_it_interrupts_alone(shape: tuple[int, int]) -> None:
    """np.errstate(call=handler) runs the handler inside the kernels, on the calling thread: a handler that called
    layer_norm itself wrote its scratch into the buffer the interrupted call was using (a thread's kept scratch),
    and that call returned y and dx off by up to 6 where the row holding an inf had set the flag."""
    rng = np.random.default_rng(21)
    x = rng.standard_normal(shape).astype(np.float16)
    x[0, 5] = np.inf
    dy = rng.standard_normal(shape).astype(np.float16)
    other = (rng.standard_normal(shape) * 100).astype(np.float16)
    with np.errstate(all="ignore"):
        expected = (layernorm.layer_norm(x), *layernorm.layer_norm_backward(dy, x))
    handled: list[str] = []

    def handler(kind: str, flag: int) -> None:
        handled.append(kind)
        with np.errstate(all="ignore"):
            layernorm.layer_norm(other)
            layernorm.layer_norm_backward(other, other)

    with np.errstate(all="call", call=handler):
        got = (layernorm.layer_norm(x), *layernorm.layer_norm_backward(dy, x))
    assert "invalid value" in handled
    for result, want in zip(got, expected, strict=True):
        np.testing.assert_array_equal(result, want)


def test_a_numpy_subclass_comes_back_as_a_plain_ndarray() -> None:
    """An ndarray subclass no backend declares (units, a mask of its own) is computed as its values: y and the
    statistics are plain ndarrays, as the docstring of layer_norm says, not the subclass, whose meaning (units)
    normalization would not keep."""

    class Tagged(np.ndarray):
        pass

    x = np.arange(12, dtype=np.float32).reshape(3, 4).view(Tagged)
    for outputs in (layernorm.layer_norm(x, return_stats=True), layernorm.rms_norm(x, return_stats=True)):
        assert all(type(out) is np.ndarray for out in outputs)


@pytest.mark.parametrize(("row", "spike"), [(4096, 137.6), (65536, 1000.0), (1 << 20, 3000.0)])
def test_a_row_whose_first_value_is_far_from_its_mean(row: int, spike: float) -> None:
    """Rows of N(0, 1) values whose first is a large activation: the mean was taken about that first value, whose
    rounding (about u * 1000 a value) gave y 2.0 times the float32 tolerance at 65536 values and 10 times at 2**20,
    the mean 1.3 and 6.4 times, dweight 22 times; such rows are centered again about their mean. A row beside
    ordinary ones gives the bits it gives alone."""
    x = np.random.default_rng(0).standard_normal((3, row)).astype(np.float32)
    x[1:, 0] = spike
    dy = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    w = np.ones(row, np.float32)
    spec = check_forward("layer_norm", x, w, None, -1, 1e-5)
    condition = row_condition(x, spec)
    y, mean, rstd = layernorm.layer_norm(x, w, return_stats=True, backend="numpy")
    expected_y, expected_mean, expected_rstd = reference.layer_norm(x, w, None, spec)
    assert error_ratio(y, expected_y, tolerance("float32", "output"), condition) <= 1
    mean_tolerance = tolerance("float32", "stats")
    assert error_ratio(mean, expected_mean, mean_tolerance, condition, scale=mean_scale(expected_rstd)) <= 1
    _, dweight, _ = layernorm.layer_norm_backward(dy, x, w, backend="numpy")
    expected_dweight = reference.layer_norm_backward(dy, x, w, spec)[1]
    assert error_ratio(dweight, expected_dweight, tolerance("float32", "grad"), condition) <= 1
    alone = layernorm.layer_norm(x[1:2], w, return_stats=True, backend="numpy")
    for batched, single in zip((y, mean, rstd), alone, strict=True):
        np.testing.assert_array_equal(batched[1:2], single)
