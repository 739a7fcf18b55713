"""The TensorFlow arithmetic of layer_norm and rms_norm, forward and analytic backward, in the compute dtype.

Plain TensorFlow ops only, so the same code runs eagerly, inside tf.function and under XLA (jit_compile=True),
where the element-wise work fuses around the reductions. Shapes may hold unknown (None) sizes inside a graph.
Statistics are two-pass (mean first, then the mean of squared deviations), never E[x^2] - E[x]^2. Every mean over
the normalized axes is `layernorm_tensorflow._sums.row_mean`, accurate for rows of any length.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from layernorm_core.dtypes import flushed_to_zero
from layernorm_core.spec import NormSpec
from layernorm_tensorflow._sums import row_mean

Tensor = Any


def compute(t: Tensor, spec: NormSpec) -> Tensor:
    """``t`` in ``spec.compute_dtype`` (float32 for half inputs), without a cast when it already is."""
    return t if t.dtype.name == spec.compute_dtype else tf.cast(t, spec.compute_dtype)


def cast_to(t: Tensor, dtype: Any) -> Tensor:
    """``t`` cast to ``dtype`` (a tf.DType or a name), without a cast when it already has it."""
    return t if t.dtype == tf.as_dtype(dtype) else tf.cast(t, dtype)


def _broadcastable(param: Tensor, x: Tensor, spec: NormSpec) -> Tensor:
    """Weight or bias (``spec.normalized_shape``) in the compute dtype, shaped to broadcast against x."""
    param = compute(param, spec)
    if spec.is_trailing:
        return param
    if None not in spec.param_shape:
        return tf.reshape(param, spec.param_shape)
    dynamic = tf.shape(x)
    return tf.reshape(param, [dynamic[d] if d in spec.axes else 1 for d in range(spec.ndim)])


def normalized_count(x: Tensor, spec: NormSpec) -> Tensor:
    """N, the number of elements each statistic reduces over, in the compute dtype (dynamic if sizes are)."""
    if None not in spec.normalized_shape:
        size = 1
        for d in spec.normalized_shape:
            size *= d  # type: ignore[operator]
        return tf.constant(size, spec.compute_dtype)
    return tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), spec.axes)), spec.compute_dtype)


def _batch_sum(t: Tensor, spec: NormSpec) -> Tensor:
    """Sum over the batch (non-normalized) axes: the result has ``spec.normalized_shape``."""
    return tf.reduce_sum(t, axis=spec.batch_axes) if spec.batch_axes else t


def _trailing_matvec(t: Tensor, vector: Tensor, spec: NormSpec) -> Tensor:
    """sum(t * vector) over the trailing normalized axes, as one matrix-vector product; shaped ``stats_shape``."""
    k = len(spec.axes)
    product = tf.tensordot(t, vector, axes=[list(spec.axes), list(range(k))])
    return tf.reshape(product, tf.concat([tf.shape(product), tf.ones([k], tf.int32)], 0))


def layer_norm_stats(xc: Tensor, spec: NormSpec) -> tuple[Tensor, Tensor]:
    """(mean, rstd) of ``xc`` (already in the compute dtype), two-pass, shaped ``spec.stats_shape``.

    The mean is sum(x) / N, as Keras's LayerNormalization takes it: a constant row whose sum rounds keeps a var of
    that rounding (docs/spec.md). Taking the mean about an element of each row instead (exact there) took a small
    eager call 1.9x its time (163 to 307 us at 8x64: seven more eager ops) and a forward under XLA 1.1-1.2x Keras's.
    """
    mean = row_mean(xc, spec)
    var = row_mean(tf.square(xc - mean), spec)
    return mean, tf.math.rsqrt(var + spec.eps)


def rms_norm_stats(xc: Tensor, spec: NormSpec) -> Tensor:
    """The rstd = 1 / sqrt(mean(x^2) + eps) of ``xc`` (in the compute dtype), shaped ``spec.stats_shape``."""
    return tf.math.rsqrt(row_mean(tf.square(xc), spec) + spec.eps)


def layer_norm_forward(x: Tensor, weight: Tensor, bias: Tensor, spec: NormSpec) -> tuple[Tensor, Tensor, Tensor]:
    """(y in x's dtype, mean, rstd in the compute dtype).

    With eps = 0 a row of variance 0 has rstd = inf and y = NaN (0 * inf); XLA:CPU may fuse the mean's division
    into x - mean as an FMA with the unrounded quotient (sum * (1/N)), leaving x - mean nonzero and y +-inf: for
    an eps that is 0 in the compute dtype (XLA flushes a subnormal one to 0), such rows are set to NaN.
    """
    xc = compute(x, spec)
    mean, rstd = layer_norm_stats(xc, spec)
    y = (xc - mean) * rstd
    if flushed_to_zero(spec.eps, spec.compute_dtype):
        y = tf.where(tf.math.is_inf(rstd), tf.constant(float("nan"), y.dtype), y)
    if weight is not None:
        y = y * _broadcastable(weight, x, spec)
    if bias is not None:
        y = y + _broadcastable(bias, x, spec)
    return cast_to(y, x.dtype), mean, rstd


def rms_norm_forward(x: Tensor, weight: Tensor, spec: NormSpec) -> tuple[Tensor, Tensor]:
    """(y in x's dtype, rstd in the compute dtype)."""
    xc = compute(x, spec)
    rstd = rms_norm_stats(xc, spec)
    y = xc * rstd
    if weight is not None:
        y = y * _broadcastable(weight, x, spec)
    return cast_to(y, x.dtype), rstd


def _stats_input_grad(xhat: Tensor, x: Tensor, spec: NormSpec, dmean: Tensor, drstd: Tensor) -> Tensor | None:
    """The part of dx that flows back from the returned statistics (return_stats=True), or None.

    d mean / d x_i = 1 / N; d rstd / d x_i = -rstd^2 * xhat_i / N (for both norms: the mean term of the variance
    sums to zero), so dx_i += (dmean - drstd * rstd^2 * xhat_i) / N, with rstd^2 folded in by the caller.
    """
    if dmean is None and drstd is None:
        return None
    count = normalized_count(x, spec)
    extra = 0.0 if dmean is None else compute(dmean, spec)
    if drstd is not None:
        extra = extra - compute(drstd, spec) * xhat
    return extra / count


def statistics_grad(xc: Tensor, mean: Tensor, rstd: Tensor, spec: NormSpec, dmean: Tensor, drstd: Tensor) -> Tensor:
    """The gradient in ``xc`` (x in the compute dtype) of its statistics mean (None for rms_norm) and rstd.

    By the forward's rule (`_stats_input_grad`): one factor of rstd at a time, in range where TensorFlow's derivative
    of rsqrt, rstd**3, is not (rows of spread beyond 1e+-13 in float32, eps = 0).
    """
    xhat = (xc if mean is None else xc - mean) * rstd
    extra = _stats_input_grad(xhat, xc, spec, dmean, None if drstd is None else drstd * tf.square(rstd))
    return tf.zeros_like(xc) if extra is None else extra


def layer_norm_grads(
    dy: Tensor,
    x: Tensor,
    weight: Tensor,
    spec: NormSpec,
    mean: Tensor = None,
    rstd: Tensor = None,
    dmean: Tensor = None,
    drstd: Tensor = None,
    *,
    matvec: bool = False,
    given_stats: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dweight, dbias) in the compute dtype; the one analytic backward of layer_norm.

    With xhat = (x - mean) * rstd and g = dy * weight: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),
    dweight = sum(dy * xhat), dbias = sum(dy) over the batch axes. mean/rstd are recomputed when None;
    dmean/drstd are upstream gradients of the returned statistics (None when unused). ``matvec`` (for trailing
    axes and x already in the compute dtype) computes mean(dy * weight) as a matrix-vector product: XLA's CPU
    backend writes any reduced product to memory first, while a fused reduction is better on a GPU.
    ``given_stats``: mean and rstd are a caller's (the explicit backward's), not x's own, so rows of one element
    take the general form too: their x - mean need not be 0, and it depends on x and mean.
    """
    xc, dyc = compute(x, spec), compute(dy, spec)
    if mean is None or rstd is None:
        mean, rstd = layer_norm_stats(xc, spec)

    def single() -> tuple[Tensor, Tensor, Tensor]:
        return _single_element_grads(dyc, xc, rstd, spec, dmean)

    def rows() -> tuple[Tensor, Tensor, Tensor]:
        return _row_grads(dyc, xc, x, weight, spec, mean, rstd, dmean, drstd, matvec=matvec)

    if given_stats:
        return rows()
    if None in spec.normalized_shape:  # a tf.function's unknown size: which form applies is known when it runs
        one = tf.equal(normalized_count(x, spec), 1)  # tf.where: XLA did not compile a tf.cond's gradient here
        return tuple(tf.where(one, a, b) for a, b in zip(single(), rows(), strict=True))
    return single() if all(size == 1 for size in spec.normalized_shape) else rows()


def _row_grads(
    dyc: Tensor,
    xc: Tensor,
    x: Tensor,
    weight: Tensor,
    spec: NormSpec,
    mean: Tensor,
    rstd: Tensor,
    dmean: Tensor,
    drstd: Tensor,
    *,
    matvec: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """`layer_norm_grads` of rows of more than one element; xc and dyc are x and dy in the compute dtype."""
    xhat = (xc - mean) * rstd
    g = dyc if weight is None else dyc * _broadcastable(weight, x, spec)
    if matvec and weight is not None:
        g_mean = _trailing_matvec(dyc, compute(weight, spec), spec) / normalized_count(x, spec)
    else:
        g_mean = row_mean(g, spec)
    gx_mean = row_mean(g * xhat, spec)
    dx = rstd * (g - g_mean - xhat * gx_mean)
    extra = _stats_input_grad(xhat, x, spec, dmean, None if drstd is None else drstd * tf.square(rstd))
    if extra is not None:
        dx = dx + extra
    return dx, _batch_sum(dyc * xhat, spec), _batch_sum(dyc, spec)


def _single_element_grads(
    dyc: Tensor, xc: Tensor, rstd: Tensor, spec: NormSpec, dmean: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """`layer_norm_grads` of rows of one element with x's own statistics: x - mean is 0, and only dmean reaches x.

    The general form gives the same first derivative, but differentiated again (a nested tape) its terms of size
    rstd**3 cancel only in exact arithmetic: a float32 second derivative through the returned rstd came out 0 at
    eps = 1e-5.
    """
    # 0, or NaN where dy or x is NaN or inf, or rstd inf (eps = 0: xhat = 0 * inf), as the general form gives
    blank = dyc * 0 + xc * 0 + rstd * 0
    dx = blank if dmean is None else blank + compute(dmean, spec)
    return dx, _batch_sum(blank, spec), _batch_sum(dyc, spec)


def rms_norm_grads(
    dy: Tensor, x: Tensor, weight: Tensor, spec: NormSpec, rstd: Tensor = None, drstd: Tensor = None
) -> tuple[Tensor, Tensor]:
    """(dx, dweight) in the compute dtype; the one analytic backward of rms_norm.

    With xhat = x * rstd and g = dy * weight: dx = rstd * (g - xhat * mean(g * xhat)), dweight = sum(dy * xhat).
    """
    xc, dyc = compute(x, spec), compute(dy, spec)
    if rstd is None:
        rstd = rms_norm_stats(xc, spec)
    xhat = xc * rstd
    g = dyc if weight is None else dyc * _broadcastable(weight, x, spec)
    dx = rstd * (g - xhat * row_mean(g * xhat, spec))
    extra = _stats_input_grad(xhat, x, spec, None, None if drstd is None else drstd * tf.square(rstd))
    if extra is not None:
        dx = dx + extra
    return dx, _batch_sum(dyc * xhat, spec)
