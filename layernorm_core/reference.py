"""The float64 reference: forward and backward of layer_norm and rms_norm, written for clarity, not speed.

Every backend is checked against these functions. Inputs are NumPy arrays of any float dtype (bfloat16 as
ml_dtypes.bfloat16); they are converted to float64 first, so the reference sees exactly the values the backend
saw. Outputs are float64.

Every reduction runs along a contiguous last axis (`_row_mean`, `_batch_sum`), where NumPy sums pairwise: summed
in place, an axis that is not innermost is added in one running sum per column, whose error grows with its length
(a mean over axes (0, 1) of a (64, 4096, 4) array near 1e3 erred by 5x the float64 tolerance). Means are taken
about the row's first element (`_centered`), so a constant row's mean is that value exactly and its var 0.

Where the formula itself gives inf or NaN (eps = 0 on a constant row, or on a zero row for rms_norm: rstd = inf
and y = NaN, docs/spec.md), the reference returns them without a RuntimeWarning, as every backend must.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from layernorm_core.spec import NormSpec

F64 = npt.NDArray[np.float64]

_formula_quiet = np.errstate(divide="ignore", invalid="ignore")
"""Decorates each public function: 1 / sqrt(0) and 0 * inf are the formula's answer there, not an accident."""


def _f64(array: npt.ArrayLike | None) -> F64 | None:
    return None if array is None else np.asarray(array).astype(np.float64)


def _param(array: npt.ArrayLike | None, spec: NormSpec) -> F64 | None:
    value = _f64(array)
    return None if value is None else value.reshape(spec.param_shape)


def _row_mean(a: F64, spec: NormSpec) -> F64:
    """The mean of ``a`` (x's shape) over ``spec.axes``, shaped ``spec.stats_shape``, summed pairwise."""
    n = int(np.prod([a.shape[d] for d in spec.axes]))
    rows = np.ascontiguousarray(a.transpose(spec.perm)).reshape(-1, n)
    return rows.mean(axis=1).reshape(spec.stats_shape)


def _centered(x: F64, spec: NormSpec) -> tuple[F64, F64]:
    """``(x - mean, mean)``, both taken about each row's first element ``p`` (0 where it is not finite).

    ``mean = p + mean(x - p)`` is exact for a constant row and, for a row far from 0, free of the offset's
    rounding. ``x - mean`` is ``(x - p) - mean(x - p)``: subtracted from x, the mean's own rounding (half a unit of
    ``|mean|``) moved every centered value by that much, u * kappa times y's unit, as much as the float64 tolerance
    allows a backend at eps far above var (rows of 1e3 + N(0, 0.01), eps 3).
    """
    n = int(np.prod([x.shape[d] for d in spec.axes]))
    first = np.ascontiguousarray(x.transpose(spec.perm)).reshape(-1, n)[:, :1].reshape(spec.stats_shape)
    pivot = np.where(np.isfinite(first), first, 0.0)
    shifted = x - pivot
    shift = _row_mean(shifted, spec)
    return shifted - shift, pivot + shift


def _batch_sum(a: F64, spec: NormSpec) -> F64:
    """The sum of ``a`` (x's shape) over the batch axes, shaped ``spec.normalized_shape``, summed pairwise."""
    normalized = tuple(a.shape[d] for d in spec.axes)
    columns = np.ascontiguousarray(a.transpose(*spec.axes, *spec.batch_axes)).reshape(int(np.prod(normalized)), -1)
    return columns.sum(axis=1).reshape(normalized)


@_formula_quiet
def layer_norm(
    x: npt.ArrayLike, weight: npt.ArrayLike | None, bias: npt.ArrayLike | None, spec: NormSpec
) -> tuple[F64, F64, F64]:
    """Return (y, mean, rstd) in float64; mean and rstd have ``spec.stats_shape``."""
    x64 = _f64(x)
    assert x64 is not None
    centered, mean = _centered(x64, spec)
    var = _row_mean(centered * centered, spec)
    rstd = 1.0 / np.sqrt(var + spec.eps)
    y = centered * rstd
    w, b = _param(weight, spec), _param(bias, spec)
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y, mean, rstd


@_formula_quiet
def rms_norm(x: npt.ArrayLike, weight: npt.ArrayLike | None, spec: NormSpec) -> tuple[F64, F64]:
    """Return (y, rstd) in float64, with y = x / sqrt(mean(x^2) + eps) * weight."""
    x64 = _f64(x)
    assert x64 is not None
    rstd = 1.0 / np.sqrt(_row_mean(x64 * x64, spec) + spec.eps)
    y = x64 * rstd
    w = _param(weight, spec)
    return (y if w is None else y * w), rstd


@_formula_quiet
def layer_norm_backward(
    dy: npt.ArrayLike,
    x: npt.ArrayLike,
    weight: npt.ArrayLike | None,
    spec: NormSpec,
    *,
    mean: npt.ArrayLike | None = None,
    rstd: npt.ArrayLike | None = None,
) -> tuple[F64, F64, F64]:
    """Return (dx, dweight, dbias) in float64; dweight and dbias have ``spec.normalized_shape``.

    With xhat = (x - mean) * rstd and g = dy * weight:
    dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), dweight = sum(dy * xhat), dbias = sum(dy), the sums over
    the batch axes. A missing weight counts as ones (dweight is still returned). mean and rstd are x's own unless
    both are given (a caller's statistics, as the explicit backward takes them: the formula at those values).
    """
    dy64 = _f64(dy)
    assert dy64 is not None
    if mean is None or rstd is None:
        xhat, _, rstd = layer_norm(x, None, None, spec)
    else:
        rstd = np.asarray(rstd).astype(np.float64)
        xhat = (np.asarray(x).astype(np.float64) - np.asarray(mean).astype(np.float64)) * rstd
    w = _param(weight, spec)
    g = dy64 if w is None else dy64 * w
    dx = rstd * (g - _row_mean(g, spec) - xhat * _row_mean(g * xhat, spec))
    dweight = _batch_sum(dy64 * xhat, spec)
    dbias = _batch_sum(dy64, spec)
    return dx, dweight, dbias


@_formula_quiet
def rms_norm_backward(
    dy: npt.ArrayLike,
    x: npt.ArrayLike,
    weight: npt.ArrayLike | None,
    spec: NormSpec,
    *,
    rstd: npt.ArrayLike | None = None,
) -> tuple[F64, F64]:
    """Return (dx, dweight) in float64: dx = rstd * (g - xhat * mean(g * xhat)), xhat = x * rstd, g = dy * weight.

    rstd is x's own unless given (a caller's, as the explicit backward takes it: the formula at that value).
    """
    dy64 = _f64(dy)
    assert dy64 is not None
    if rstd is None:
        xhat, rstd = rms_norm(x, None, spec)
    else:
        rstd = np.asarray(rstd).astype(np.float64)
        xhat = np.asarray(x).astype(np.float64) * rstd
    w = _param(weight, spec)
    g = dy64 if w is None else dy64 * w
    dx = rstd * (g - xhat * _row_mean(g * xhat, spec))
    dweight = _batch_sum(dy64 * xhat, spec)
    return dx, dweight


@_formula_quiet
def statistics_backward(
    x: npt.ArrayLike,
    spec: NormSpec,
    dmean: npt.ArrayLike | None,
    drstd: npt.ArrayLike | None,
) -> F64:
    """The gradient of x, in float64, from gradients of the returned statistics (``spec.stats_shape``; None: none).

    mean = mean(x) gives dmean / N; rstd = (var + eps)^-1/2 (layer_norm) or (mean(x^2) + eps)^-1/2 (rms_norm)
    gives -drstd * rstd^2 * xhat / N, with xhat the normalized x of ``spec.kind`` and N the normalized size.
    """
    if spec.kind == "layer_norm":
        xhat, _, rstd = layer_norm(x, None, None, spec)
    else:
        xhat, rstd = rms_norm(x, None, spec)
    n = int(np.prod([xhat.shape[a] for a in spec.axes]))
    dx = np.zeros_like(xhat)
    if dmean is not None:
        dx = dx + _f64(dmean) / n  # type: ignore[operator]
    if drstd is not None:
        dx = dx - _f64(drstd) * rstd * rstd * xhat / n  # type: ignore[operator]
    return dx
