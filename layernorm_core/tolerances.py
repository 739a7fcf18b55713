"""The tolerance table: how far a backend's result may be from the float64 reference. Documented in docs/spec.md.

An element passes when ``|actual - expected| <= atol * scale + cond * kappa * max(scale, unit) + rtol * |expected|
+ floor`` where ``scale`` is the RMS of the expected array (so atol is relative to the data's magnitude), ``kappa``
is the condition number of the element's row, ``|mean| / sqrt(var + eps)`` (0 for rms_norm), and ``unit`` the size
the result would have were xhat of unit size (`xhat_units`; ``scale`` where not given). A two-pass or Welford
implementation's rounded mean moves xhat by about ``u * kappa`` (u the unit roundoff of the compute dtype), so the
result by that times its unit, well inside ``cond``; the single-pass E[x^2] - E[x]^2 errs by about ``u * kappa**2``
and fails as soon as kappa is large.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from layernorm_core import reference
from layernorm_core.spec import NormSpec

Quantity = Literal["output", "stats", "grad"]


@dataclass(frozen=True)
class Tolerance:
    """Allowed error of one result.

    ``atol`` is relative to the RMS of the expected array, ``rtol`` per element, ``cond`` per unit of the row's
    condition number. ``floor`` is absolute: as many units of the result dtype's smallest subnormal as ``rtol``
    allows units of its rounding, for half results small enough that those units are below the dtype's spacing
    there (float16 y near 1e-5, with eps 1e10).
    """

    rtol: float
    atol: float
    cond: float
    floor: float = 0.0


# Half outputs: two units of the output's rounding (float16 2**-11, bfloat16 2**-8); statistics of half inputs
# are float32. float32: a few dozen ulps, far below an N-1 variance (1/(2N)) or a missing eps at small N.
_U32 = 2.0**-24
_U64 = 2.0**-53
TOLERANCES: dict[tuple[str, Quantity], Tolerance] = {
    ("float64", "output"): Tolerance(rtol=1e-12, atol=1e-12, cond=64 * _U64),
    ("float64", "stats"): Tolerance(rtol=1e-12, atol=1e-12, cond=64 * _U64),
    ("float64", "grad"): Tolerance(rtol=1e-10, atol=1e-11, cond=256 * _U64),
    ("float32", "output"): Tolerance(rtol=1e-5, atol=1e-5, cond=64 * _U32),
    ("float32", "stats"): Tolerance(rtol=1e-5, atol=1e-5, cond=64 * _U32),
    ("float32", "grad"): Tolerance(rtol=1e-4, atol=2e-5, cond=256 * _U32),
    ("float16", "output"): Tolerance(rtol=2 * 2.0**-11, atol=2 * 2.0**-11, cond=64 * _U32, floor=2 * 2.0**-24),
    ("float16", "stats"): Tolerance(rtol=1e-5, atol=1e-5, cond=64 * _U32),
    ("float16", "grad"): Tolerance(rtol=4 * 2.0**-11, atol=4 * 2.0**-11, cond=256 * _U32, floor=4 * 2.0**-24),
    ("bfloat16", "output"): Tolerance(rtol=2 * 2.0**-8, atol=2 * 2.0**-8, cond=64 * _U32, floor=2 * 2.0**-133),
    ("bfloat16", "stats"): Tolerance(rtol=1e-5, atol=1e-5, cond=64 * _U32),
    ("bfloat16", "grad"): Tolerance(rtol=4 * 2.0**-8, atol=4 * 2.0**-8, cond=256 * _U32, floor=4 * 2.0**-133),
}


def tolerance(dtype: str, quantity: Quantity) -> Tolerance:
    """The tolerance for a result of ``quantity`` computed from a ``dtype`` input."""
    return TOLERANCES[(dtype, quantity)]


def row_condition(x: npt.ArrayLike, spec: NormSpec) -> npt.NDArray[np.float64]:
    """Per row (shape ``spec.stats_shape``), ``|mean| / sqrt(var + eps)`` for layer_norm; zeros for rms_norm."""
    if spec.kind == "rms_norm":
        return np.zeros(tuple(1 if d in spec.axes else size for d, size in enumerate(np.shape(x))))
    _, mean, rstd = reference.layer_norm(x, None, None, spec)
    with np.errstate(invalid="ignore", over="ignore"):
        return np.nan_to_num(np.abs(mean) * rstd, nan=0.0, posinf=np.finfo(np.float64).max)


def error_ratio(
    actual: npt.ArrayLike,
    expected: npt.ArrayLike,
    tol: Tolerance,
    condition: npt.ArrayLike | float = 0.0,
    *,
    scale: float | None = None,
    unit: float | None = None,
) -> float:
    """The worst ``|actual - expected| / allowed`` over all elements: <= 1 passes.

    ``condition`` is `row_condition` (per row, broadcast against ``expected``), or any scalar; for results that
    do not have rows (dweight, dbias) its maximum applies. ``scale`` is the magnitude atol is relative to: the RMS
    of ``expected`` by default; for dx pass `gradient_scale`, since dx comes from a cancellation of terms of that
    size and may be far smaller than them. ``unit`` is the magnitude the cond term is relative to where it exceeds
    ``scale``: for y and dweight, `xhat_units` (with eps far above var, xhat and so they are far smaller than that
    unit, while the error a rounded mean makes in them is u * kappa of it). NaN where the reference is finite (or
    the reverse) is infinitely wrong; matching NaN or Inf is exact.
    """
    a = np.asarray(actual).astype(np.float64)
    e = np.asarray(expected).astype(np.float64)
    if a.shape != e.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {e.shape}")
    if a.size == 0:
        return 0.0
    finite = np.isfinite(e)
    same_special = (~finite) & ((a == e) | (np.isnan(a) & np.isnan(e)))
    if scale is None:
        scale = rms(e[finite]) if finite.any() else 1.0
    kappa = np.asarray(condition, dtype=np.float64)
    if not _broadcasts_to(kappa.shape, e.shape):
        kappa = kappa.max(initial=0.0)  # per-row condition for a per-column result (dweight, dbias): the worst row
    magnitude = scale if scale > 0 else 1.0
    condition_magnitude = magnitude if unit is None else max(magnitude, unit)
    allowed = (
        tol.atol * magnitude
        + tol.cond * kappa * condition_magnitude
        + tol.rtol * np.abs(np.where(finite, e, 0.0))
        + tol.floor
    )
    with np.errstate(invalid="ignore", divide="ignore"):  # allowed may underflow to 0 (subnormal results)
        diff = np.abs(a - e)
        ratio = np.where(np.isfinite(diff), diff / allowed, np.inf)
    ratio = np.where(same_special | (diff == 0), 0.0, ratio)  # exact is exact, also where 0 is allowed
    return float(np.max(ratio))


def gradient_scale(dy: npt.ArrayLike, weight: npt.ArrayLike | None, rstd: npt.ArrayLike, spec: NormSpec) -> float:
    """The magnitude of the terms dx is computed from: RMS of ``dy * weight * rstd`` (float64), finite values only.

    A row of NaN or Inf has no size; its dx is judged by matching the reference's NaN or Inf.
    """
    g = np.asarray(dy).astype(np.float64) * np.asarray(rstd, dtype=np.float64)
    if weight is not None:
        g = g * np.asarray(weight).astype(np.float64).reshape(spec.param_shape)
    g = g[np.isfinite(g)]
    return rms(g) if g.size else 1.0


def xhat_units(weight: npt.ArrayLike | None, dy: npt.ArrayLike | None, spec: NormSpec) -> dict[str, float]:
    """The size y and dweight would have were xhat of unit size: the cond term's magnitude (`error_ratio`'s unit).

    A rounded mean moves xhat by about ``u * kappa``, so y by that times the weight and dweight = sum(dy * xhat)
    by that times ``sqrt(sum(dy**2))`` over the batch, whatever xhat's own size: with eps far above var, y and
    dweight are far smaller than that. "y": the RMS of the weight (1 without one); "dweight" (with ``dy``): the RMS
    over the normalized positions of ``sqrt(sum(dy**2))``; finite values only.
    """
    w = np.ones(1) if weight is None else np.asarray(weight).astype(np.float64)
    w = w[np.isfinite(w)]
    units = {"y": rms(w) if w.size else 1.0}
    if dy is not None:
        d = np.asarray(dy).astype(np.float64)
        d = np.where(np.isfinite(d), d, 0.0)
        peak = float(np.max(np.abs(d), initial=0.0))
        if peak > 0:  # scaled by the peak: the squares stay in range
            per_position = np.sqrt(np.square(d / peak).sum(axis=spec.batch_axes)) * peak
            units["dweight"] = rms(per_position.ravel())
    return units


def statistics_gradient_scale(dstat: npt.ArrayLike, rstd: npt.ArrayLike, spec: NormSpec, stat: str) -> float:
    """The magnitude of the gradient a loss on a returned statistic sends to x, for xhat of its unit size.

    ``stat`` "mean": the RMS of ``dmean / N``; "rstd": of ``drstd * rstd**2 / N``, the factor of xhat in that
    gradient (`reference.statistics_backward`), finite values only. As for dx (`gradient_scale`), the gradient
    itself may be far smaller: xhat is near 0 in rows near a constant (0 in a constant row, whose RMS of 0 left
    an absolute allowance of 1 in a gradient of size rstd**2 / N), while a backend's rounded mean moves xhat by
    u * kappa of its unit.
    """
    n = math.prod(size for size in spec.normalized_shape if size is not None)
    terms = np.asarray(dstat, dtype=np.float64) / n
    if stat == "rstd":
        with np.errstate(over="ignore", invalid="ignore"):  # rstd inf (eps = 0 on a constant row): no size
            terms = terms * np.square(np.asarray(rstd, dtype=np.float64))
    terms = terms[np.isfinite(terms)]
    return rms(terms) if terms.size else 1.0


def mean_scale(rstd: npt.ArrayLike) -> float:
    """The magnitude the mean's atol is relative to: RMS over rows of the spread ``sqrt(var + eps) = 1 / rstd``.

    The mean is a location: ``y = (x - mean) * rstd`` turns a mean error into a y error of that size in units of
    the spread, so the spread, not the mean's own (for centred data, tiny) size, keeps the mean as strict as y.
    """
    r = np.asarray(rstd, dtype=np.float64)
    spread = 1.0 / r[np.isfinite(r) & (r > 0)]
    return rms(spread) if spread.size else 1.0


def rms(values: npt.NDArray[np.float64]) -> float:
    """The root mean square of float64 ``values`` (at least one), without overflow or underflow.

    Their squares leave float64's range beyond 1e154 and below 1e-154: the gradient a loss on rstd sends to x is
    about 1e240 at rows of spread 1e-120, 1e-240 at 1e120. (A scale that underflowed to 0 fell back to 1, and let
    any error of such a result pass.)
    """
    peak = float(np.max(np.abs(values)))
    if peak == 0.0 or not np.isfinite(peak):  # all zero; an Inf or a NaN, which the plain formula also gives
        return peak
    return peak * float(np.sqrt(np.mean(np.square(values / peak))))


def _broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """Whether ``shape`` broadcasts to ``target`` (by hand: np.broadcast_shapes refuses more than 32 axes)."""
    trailing = target[len(target) - len(shape) :]
    return len(shape) <= len(target) and all(s in (1, t) for s, t in zip(shape, trailing, strict=True))
