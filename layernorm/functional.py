"""The four operations of the public API: checked in the core, run on the engine in force."""

from __future__ import annotations

from typing import Any

from layernorm_core.dispatch import local_engine, run
from layernorm_core.errors import not_a_bool_error
from layernorm_core.spec import Axis, check_backward, check_forward, strong_params
from layernorm_core.tracing import dynamo_tracing


def layer_norm(
    x: Any,
    weight: Any = None,
    bias: Any = None,
    *,
    axis: Axis = -1,
    eps: float = 1e-5,
    return_stats: bool = False,
    backend: str | None = None,
) -> Any:
    """Layer normalization: ``y = (x - mean) / sqrt(var + eps) * weight + bias`` over ``axis``.

    Args:
        x: an array of any framework with a registered backend (NumPy, torch, JAX, TensorFlow), of dtype
            float16, bfloat16, float32 or float64, with at least one dimension.
        weight, bias: optional arrays of x's framework and device, with x's sizes along ``axis`` in increasing
            axis order (``x.shape[-1:]`` for the default ``axis=-1``); dtype x's or the compute dtype.
        axis: an int, or a tuple or list of ints: the normalized axes, anywhere in x (trailing, channels-first,
            non-adjacent). The variance is the biased one (divides by N).
        eps: added to the variance; finite and >= 0. torch's default is 1e-5, Keras's 1e-3, Flax's 1e-6.
        return_stats: also return ``mean`` and ``rstd = 1 / sqrt(var + eps)``, shaped like x with the normalized
            axes kept as size 1, in the compute dtype (float32 for half x, else x's dtype).
        backend: run on this engine instead of the one in force (see `layernorm.use`).

    Returns:
        y with x's shape, dtype, array type (ndarray for a NumPy subclass no backend declares) and device; or
        ``(y, mean, rstd)``.

    Raises:
        ShapeError: axis out of range, repeated or empty; weight/bias of the wrong shape; normalized size 0.
        DTypeError: x not float16, bfloat16, float32 or float64 (int, bool, complex, float8), or of a dtype the
            engine in force does not compute here (float64 for JAX without x64); weight/bias of another dtype or
            framework; an argument that is not an array, or not a dense one (a masked, sparse or ragged array, a
            shape spec such as ``jax.ShapeDtypeStruct``).
        ArgumentError: eps negative, NaN, infinite (in the compute dtype too: 1e39 in float32) or not a real
            number; axis not an int or a tuple or list of ints; return_stats not a bool.
        BackendError: unknown, not-installed or broken engine; no backend owns x's array type; a tracked array
            asked to cross frameworks.
        DeviceError: weight or bias on another device than x.

    Example:
        >>> import numpy as np, layernorm
        >>> y = layernorm.layer_norm(np.array([[1.0, 2.0, 3.0]]), eps=0.0)
        >>> np.round(y, 4)
        array([[-1.2247,  0.    ,  1.2247]])

    """
    tracing = dynamo_tracing()
    spec = check_forward("layer_norm", x, weight, bias, axis, eps, tracing)
    if spec.weak_params:
        weight, bias = strong_params(spec, x, weight, bias)
    if return_stats is not True and return_stats is not False:
        raise not_a_bool_error("return_stats", return_stats)
    engine = local_engine(x, (weight, bias), backend, tracing)
    if engine is not None:
        return engine.layer_norm(x, weight, bias, spec, return_stats)
    return run(x, (weight, bias), backend, lambda e, x_, p: e.layer_norm(x_, p[0], p[1], spec, return_stats), tracing)


def rms_norm(
    x: Any,
    weight: Any = None,
    *,
    axis: Axis = -1,
    eps: float = 1e-5,
    return_stats: bool = False,
    backend: str | None = None,
) -> Any:
    """RMS normalization: ``y = x / sqrt(mean(x**2) + eps) * weight`` over ``axis`` (Zhang & Sennrich 2019).

    Arguments, dtypes and errors as `layer_norm` (there is no bias). With ``return_stats`` returns ``(y, rstd)``,
    ``rstd = 1 / sqrt(mean(x**2) + eps)`` shaped like x with the normalized axes kept as size 1.

    Example:
        >>> import numpy as np, layernorm
        >>> np.round(layernorm.rms_norm(np.array([[3.0, 4.0]]), eps=0.0), 4)
        array([[0.8485, 1.1314]])

    """
    tracing = dynamo_tracing()
    spec = check_forward("rms_norm", x, weight, None, axis, eps, tracing)
    if spec.weak_params:
        (weight,) = strong_params(spec, x, weight)
    if return_stats is not True and return_stats is not False:
        raise not_a_bool_error("return_stats", return_stats)
    engine = local_engine(x, (weight,), backend, tracing)
    if engine is not None:
        return engine.rms_norm(x, weight, spec, return_stats)
    return run(x, (weight,), backend, lambda e, x_, p: e.rms_norm(x_, p[0], spec, return_stats), tracing)


def layer_norm_backward(
    dy: Any,
    x: Any,
    weight: Any = None,
    *,
    axis: Axis = -1,
    eps: float = 1e-5,
    mean: Any = None,
    rstd: Any = None,
    backend: str | None = None,
) -> tuple[Any, Any, Any]:
    """Gradients of `layer_norm` given the output gradient ``dy``: ``(dx, dweight, dbias)``.

    For frameworks without autodiff (NumPy), or to drive a hand-written backward pass.

    Args:
        dy: the gradient of the loss with respect to y: x's shape, dtype, framework and device.
        x, weight: the forward's input and weight (see `layer_norm`; no bias is needed).
        axis, eps: the forward's, as `layer_norm` takes them.
        mean, rstd: the statistics from ``layer_norm(..., return_stats=True)``, to save recomputing them (pass both
            or neither): x's shape with the normalized axes kept as size 1, in the compute dtype (float32 for half
            x, else x's dtype), of x's framework and device.
        backend: run on this engine instead of the one in force (see `layernorm.use`).

    Returns:
        ``(dx, dweight, dbias)``, of x's array type and device: dx with x's shape; dweight and dbias with x's sizes
        along ``axis`` in increasing axis order (weight's shape); all three in x's dtype, whatever weight's.
        dweight and dbias are returned even when weight is None (computed as for a weight of ones and a bias), as
        torch's native backward does.

    With ``xhat = (x - mean) * rstd`` and ``g = dy * weight``:
    ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))``, ``dweight = sum(dy * xhat)``, ``dbias = sum(dy)``,
    the sums over the non-normalized axes.

    Raises:
        ShapeError: as `layer_norm`; dy not of x's shape; mean or rstd not of x's shape with the normalized axes
            kept as size 1.
        DTypeError: as `layer_norm`; dy not of x's dtype; mean or rstd not of the compute dtype (a float16 x's
            float16 mean is refused: it must be float32); dy, mean or rstd of another framework than x.
        ArgumentError: as `layer_norm`; only one of mean and rstd given.
        BackendError, DeviceError: as `layer_norm`, for dy, mean and rstd as for weight.

    Example:
        >>> import numpy as np, layernorm
        >>> x = np.array([[1.0, 2.0, 4.0]]); dy = np.ones_like(x)
        >>> dx, dw, db = layernorm.layer_norm_backward(dy, x)
        >>> np.allclose(dx, 0.0), db.tolist()
        (True, [1.0, 1.0, 1.0])

    """
    tracing = dynamo_tracing()
    spec = check_backward("layer_norm", dy, x, weight, axis, eps, mean, rstd, tracing)
    if spec.weak_params:
        (weight,) = strong_params(spec, x, weight)
    engine = local_engine(x, (dy, weight, mean, rstd), backend, tracing)
    if engine is not None:
        return engine.layer_norm_backward(dy, x, weight, spec, mean, rstd)
    return run(
        x,
        (dy, weight, mean, rstd),
        backend,
        lambda e, x_, p: e.layer_norm_backward(p[0], x_, p[1], spec, p[2], p[3]),
        tracing,
    )


def rms_norm_backward(
    dy: Any,
    x: Any,
    weight: Any = None,
    *,
    axis: Axis = -1,
    eps: float = 1e-5,
    rstd: Any = None,
    backend: str | None = None,
) -> tuple[Any, Any]:
    """Gradients of `rms_norm` given ``dy``: ``(dx, dweight)``.

    ``dx = rstd * (g - xhat * mean(g * xhat))`` with ``xhat = x * rstd`` and ``g = dy * weight``;
    ``dweight = sum(dy * xhat)`` over the non-normalized axes.

    Args:
        dy: the gradient of the loss with respect to y: x's shape, dtype, framework and device.
        x, weight, axis, eps: the forward's, as `rms_norm` takes them.
        rstd: the statistic from ``rms_norm(..., return_stats=True)``, to save recomputing it: x's shape with the
            normalized axes kept as size 1, in the compute dtype (float32 for half x, else x's dtype), of x's
            framework and device.
        backend: run on this engine instead of the one in force (see `layernorm.use`).

    Returns:
        ``(dx, dweight)``, of x's array type and device, both in x's dtype: dx with x's shape, dweight with x's
        sizes along ``axis`` in increasing axis order (returned even when weight is None, as for a weight of ones).

    Raises:
        ShapeError: as `rms_norm`; dy not of x's shape; rstd not of x's shape with the normalized axes kept as
            size 1.
        DTypeError: as `rms_norm`; dy not of x's dtype; rstd not of the compute dtype; dy or rstd of another
            framework than x.
        ArgumentError, BackendError, DeviceError: as `rms_norm`, for dy and rstd as for weight.

    Example:
        >>> import numpy as np, layernorm
        >>> dx, dw = layernorm.rms_norm_backward(np.ones((1, 2)), np.array([[3.0, 4.0]]), eps=0.0)
        >>> np.round(dx, 4)
        array([[ 0.0453, -0.0339]])

    """
    tracing = dynamo_tracing()
    spec = check_backward("rms_norm", dy, x, weight, axis, eps, None, rstd, tracing)
    if spec.weak_params:
        (weight,) = strong_params(spec, x, weight)
    engine = local_engine(x, (dy, weight, rstd), backend, tracing)
    if engine is not None:
        return engine.rms_norm_backward(dy, x, weight, spec, rstd)
    return run(
        x,
        (dy, weight, rstd),
        backend,
        lambda e, x_, p: e.rms_norm_backward(p[0], x_, p[1], spec, p[2]),
        tracing,
    )


# TensorFlow's AutoGraph would otherwise convert this package's (and pluggy's) Python into graph code when these are
# first called inside a tf.function, printing a warning for every function it cannot convert. They hold no
# tensor-dependent control flow, so mark them as AutoGraph does its own artifacts: called as they are.
_PUBLIC: tuple[Any, ...] = (layer_norm, rms_norm, layer_norm_backward, rms_norm_backward)
for _public in _PUBLIC:
    _public.autograph_info__ = frozenset()
