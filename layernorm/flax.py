"""Flax NNX modules running layernorm's JAX backend: `LayerNorm` and `RMSNorm`.

Drop-in for ``flax.nnx.LayerNorm`` / ``flax.nnx.RMSNorm``: the same constructor arguments (``num_features``,
``epsilon``, ``dtype``, ``param_dtype``, ``use_bias``, ``use_scale``, ``bias_init``, ``scale_init``,
``reduction_axes``, ``feature_axes``, ``promote_dtype``, ``bias_metadata``, ``scale_metadata``, ``rngs``), the same
parameter names and shapes (``scale``, ``bias``: ``(num_features,)``, laid along ``feature_axes``), so a state
saved from one loads into the other. The derivatives are layernorm's analytic ones, custom_jvp rules: reverse
mode and forward mode (``jax.jvp``) both work.

What Flax offers and these refuse, with a ValueError at construction: cross-device statistics (``axis_name``,
``axis_index_groups``; under ``jax.jit``, arrays sharded over a mesh get whole-row statistics from XLA instead),
and LayerNorm's ``use_fast_variance=True``, Flax's default, which computes ``E[x^2] - E[x]^2`` (layernorm's variance
is always two-pass, as ``use_fast_variance=False`` asks; RMSNorm has no mean, so the flag changes nothing there and
either value is taken). ``__call__`` takes no ``mask``. Without a ``promote_dtype`` function (None, the default
here), x is promoted with the parameters as Flax's default does, but float32 parameters stay float32 where
``dtype`` is half (the core's rule; Flax's default rounds them to ``dtype``); with one, x and the parameters are
what it returns.

``num_features`` may also be a tuple, the parameters' shape, for several ``feature_axes``.

Needs flax: ``pip install 'layernorm[flax]'``.

>>> import jax.numpy as jnp
>>> from flax import nnx
>>> from layernorm.flax import LayerNorm
>>> layer = LayerNorm(4, rngs=nnx.Rngs(0))
>>> layer(jnp.arange(8.0).reshape(2, 4)).shape
(2, 4)
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np

from layernorm_core.errors import missing_framework_error

try:
    import jax
    import jax.numpy as jnp
    from flax import nnx
except ImportError as exc:
    raise missing_framework_error("layernorm.flax", "flax and jax", exc, "pip install 'layernorm[flax]'") from exc

import layernorm
from layernorm_core.dtypes import FLOAT_DTYPES, param_dtype_for
from layernorm_core.errors import DTypeError, ShapeError
from layernorm_core.registry import registry
from layernorm_core.spec import checked_axis, normalize_axes

__all__ = ["LayerNorm", "RMSNorm"]

Initializer = Any
Axes = int | Iterable[int]
PromoteDtype = Callable[..., Sequence[Any]]
"""Flax's ``promote_dtype``: ``(arrays, dtype=...)`` to the arrays promoted (None kept)."""
_NO_METADATA: Mapping[str, Any] = MappingProxyType({})


def _param(
    wanted: bool, init: Initializer, rngs: nnx.Rngs, shape: tuple[int, ...], dtype: Any, metadata: Mapping[str, Any]
) -> nnx.Param | None:
    return nnx.Param(init(rngs.params(), shape, dtype), **metadata) if wanted else None


def _param_shape(num_features: int | Sequence[int]) -> tuple[int, ...]:
    """The parameters' shape: ``(num_features,)`` for any integer (a NumPy or JAX scalar too, as Flax takes it)."""
    sizes = np.asarray(num_features)
    return (operator.index(sizes),) if sizes.ndim == 0 else tuple(operator.index(size) for size in sizes)


def _axis(axes: Axes) -> int | tuple[int, ...]:
    """``axes`` as the core's axis: any iterable of ints (a NumPy array too, as Flax takes it) as a tuple.

    A string is no iterable of axes: it goes to the core's check whole, which names it as given (not its characters).
    """
    if isinstance(axes, Iterable) and not isinstance(axes, (str, bytes)):
        return checked_axis(tuple(axes))
    return checked_axis(axes)


def _cast(x: Any, params: Sequence[nnx.Param | None], dtype: Any) -> tuple[jax.Array, list[jax.Array | None]]:
    """Return x (any array-like) as a JAX array of the module's dtype, and the params' values.

    The dtype is the module's (`_floating`), else x promoted with the params, and an integer result
    to floating point, as Flax's ``promote_dtype(..., inexact=True)`` does. Params of another dtype are cast by the
    core's rule (`param_dtype_for`: float32 parameters stay float32 for a half x, a float64 one becomes float32 there).
    """
    x = jnp.asarray(x)
    values = [None if p is None else jnp.asarray(p[...]) for p in params]  # a restored checkpoint holds NumPy arrays
    target = _floating(dtype) if dtype is not None else _promoted_with_params(x, [v for v in values if v is not None])
    cast = [None if v is None else v.astype(param_dtype_for(target.name, v.dtype.name)) for v in values]
    return x.astype(target), cast


def _inexact_result_type(*arrays: jax.Array) -> jnp.dtype:
    """The arrays' promoted dtype, an integer or bool one promoted with float32 (Flax's ``inexact=True``)."""
    target = jnp.result_type(*arrays)
    return target if jnp.issubdtype(target, jnp.inexact) else jnp.promote_types(jnp.float32, target)


def _promoted_with_params(x: jax.Array, values: Sequence[jax.Array]) -> jnp.dtype:
    """The dtype of x promoted with the parameters'; DTypeError where they take a floating x out of the table.

    A complex parameter made a float32 x complex, which was refused as "x must have a floating dtype ...; got
    complex64". A complex x is left to the core's check of x.
    """
    target = _inexact_result_type(x, *values)
    if target.name not in FLOAT_DTYPES and _inexact_result_type(x).name in FLOAT_DTYPES:
        given = ", ".join(sorted({v.dtype.name for v in values}))
        raise DTypeError(
            f"the parameters ({given}) promote a {x.dtype.name} x to {target.name}, which layernorm does not compute "
            f"({', '.join(FLOAT_DTYPES)}): give the module a param_dtype or a dtype among those"
        )
    return target


def _floating(dtype: Any) -> jnp.dtype:
    """The module's ``dtype`` as a JAX dtype; DTypeError for one not in the table (Flax's raises at the call).

    The table's, not JAX's floating dtypes: a float8 one was refused later, as x's dtype, of an x that was float32.
    """
    target = jnp.dtype(dtype)
    if target.name not in FLOAT_DTYPES:
        raise DTypeError(f"dtype must be a floating dtype ({', '.join(FLOAT_DTYPES)}) or None; got {target.name}")
    return target


def _as_weights(
    x: jax.Array, values: Sequence[jax.Array | None], reduction_axes: Axes, feature_axes: Axes
) -> list[jax.Array | None]:
    """The parameters, laid along ``feature_axes``, as layernorm's weight and bias: x's sizes along the reduction axes.

    Flax reshapes them to x's sizes along ``feature_axes`` and broadcasts them over the other axes; the feature axes
    must be among the reduction axes here, where the parameters broadcast over those the features leave out.
    """
    reduced = normalize_axes(_axis(reduction_axes), x.ndim)
    feature = _axis(feature_axes)
    features = () if feature == () else normalize_axes(feature, x.ndim)  # no feature axes: one scalar parameter
    if not set(features) <= set(reduced):
        raise ShapeError(
            f"feature_axes={feature_axes} must be among reduction_axes={reduction_axes} (of an x with {x.ndim} "
            "dimensions): layernorm's weight and bias have x's sizes along the normalized axes"
        )
    laid = tuple(x.shape[a] if a in features else 1 for a in reduced)
    normalized = tuple(x.shape[a] for a in reduced)
    weights: list[jax.Array | None] = []
    for value in values:
        if value is None or (features == reduced and value.shape == normalized):  # no op to dispatch
            weights.append(value)
            continue
        if value.size != math.prod(laid):
            raise ShapeError(
                f"a parameter of shape {value.shape} does not fit feature_axes={feature_axes} of an x of shape "
                f"{x.shape}: they take {math.prod(laid)} values"
            )
        weights.append(jnp.broadcast_to(value.reshape(laid), normalized))
    return weights


class _Norm(nnx.Module):
    """What both modules share: the settings Flax keeps as attributes, and the refusal of cross-device statistics."""

    num_features: int | Sequence[int]
    epsilon: float
    dtype: Any
    param_dtype: Any
    use_scale: bool
    reduction_axes: Axes
    feature_axes: Axes
    use_fast_variance: bool
    axis_name: None
    axis_index_groups: None
    promote_dtype: PromoteDtype | None

    def _keep_settings(
        self,
        num_features: int | Sequence[int],
        epsilon: float,
        dtype: Any,
        param_dtype: Any,
        use_scale: bool,
        reduction_axes: Axes,
        feature_axes: Axes,
        axis_name: str | None,
        axis_index_groups: Any,
        use_fast_variance: bool,
        promote_dtype: PromoteDtype | None,
    ) -> None:
        if axis_name is not None or axis_index_groups is not None:
            raise ValueError(
                "layernorm.flax computes the statistics of each device's rows: axis_name and axis_index_groups are "
                "not offered (under jax.jit, arrays sharded over a mesh get whole-row statistics from XLA)"
            )
        self.num_features = num_features
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_scale = use_scale
        self.reduction_axes = reduction_axes
        self.feature_axes = feature_axes
        self.use_fast_variance = use_fast_variance
        self.promote_dtype = promote_dtype
        self.axis_name = self.axis_index_groups = None  # Flax's attributes, for code that reads them

    def _promoted(self, x: Any, params: Sequence[nnx.Param | None]) -> tuple[jax.Array, list[jax.Array | None]]:
        """Return x and the parameters' values as `_cast` gives them, or as ``promote_dtype`` does when given one.

        An x that is not a dense array (a sparse or masked one, a shape spec) is the functions' DTypeError, before
        JAX's conversion would refuse it in its own words.
        """
        registry.owner_of(x)  # raises that DTypeError for the array types a backend excludes
        if self.promote_dtype is None:
            return _cast(x, params, self.dtype)
        promoted = self.promote_dtype((x, *(None if p is None else p[...] for p in params)), dtype=self.dtype)
        return jnp.asarray(promoted[0]), [None if v is None else jnp.asarray(v) for v in promoted[1:]]


class LayerNorm(_Norm):
    """Layer normalization over ``reduction_axes`` with parameters ``scale`` and ``bias`` (as flax.nnx.LayerNorm).

    Args:
        num_features: the size of ``feature_axes`` (a tuple: the parameters' shape for several feature axes).
        epsilon: added to the variance (Flax's default 1e-6).
        dtype: dtype of the computation's input and output; None promotes x with the params, as Flax does.
        param_dtype: dtype of ``scale`` and ``bias``.
        use_bias, use_scale: create ``bias`` / ``scale`` (else they are None and not applied).
        bias_init, scale_init: initializers ``(key, shape, dtype)``.
        reduction_axes: the normalized axes of x.
        feature_axes: the axes of x the parameters lie along, among ``reduction_axes``; broadcast over the others.
        axis_name, axis_index_groups: must be None (cross-device statistics are not offered).
        use_fast_variance: must be False: the variance is always two-pass (Flax's default, True, is refused).
        promote_dtype: Flax's ``promote_dtype(arrays, dtype=dtype)``, called on (x, scale, bias) before they are
            normalized; None (the default) promotes as the module docstring says.
        bias_metadata, scale_metadata: metadata of the parameters (``sharding`` names, for instance).
        rngs: the module's random streams (``rngs.params`` seeds the initializers).

    Shapes: x any shape that has the ``reduction_axes``, with the parameters' sizes along ``feature_axes``; output
    x's shape. Dtypes: output in ``dtype``, else x's dtype promoted with the parameters' to a floating one (an
    integer or bool x too, as Flax's: unlike the functions); x complex is refused (Flax's takes it).

    Raises:
        ValueError: ``axis_name`` or ``axis_index_groups`` given, or ``use_fast_variance=True``, at construction.
        ShapeError: ``feature_axes`` not among ``reduction_axes``; a parameter whose size does not fit x's sizes
            along ``feature_axes``; an axis out of x's range.
        DTypeError: a complex x, or one that is not a dense array (sparse, masked, a shape spec), as the functions
            refuse it; a ``dtype`` not float16, bfloat16, float32 or float64 (int, bool, float8); without a
            ``dtype``, parameters that promote x to another dtype (complex).
        ArgumentError: ``epsilon`` negative, NaN or infinite; ``reduction_axes`` or ``feature_axes`` not an int or
            an iterable of ints.

    """

    def __init__(
        self,
        num_features: int | Sequence[int],
        *,
        epsilon: float = 1e-6,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = nnx.initializers.zeros,
        scale_init: Initializer = nnx.initializers.ones,
        reduction_axes: Axes = -1,
        feature_axes: Axes = -1,
        axis_name: str | None = None,
        axis_index_groups: Any = None,
        use_fast_variance: bool = False,
        promote_dtype: PromoteDtype | None = None,
        rngs: nnx.Rngs,
        bias_metadata: Mapping[str, Any] = _NO_METADATA,
        scale_metadata: Mapping[str, Any] = _NO_METADATA,
    ) -> None:
        """Create the parameters; see the class docstring."""
        if use_fast_variance:
            raise ValueError(
                "use_fast_variance=True (E[x^2] - E[x]^2, Flax's default) is not offered: layernorm's variance is "
                "two-pass, as use_fast_variance=False asks"
            )
        self._keep_settings(num_features, epsilon, dtype, param_dtype, use_scale, reduction_axes, feature_axes,
                            axis_name, axis_index_groups, use_fast_variance, promote_dtype)  # fmt: skip
        self.use_bias = use_bias
        shape = _param_shape(num_features)
        self.scale = _param(use_scale, scale_init, rngs, shape, param_dtype, scale_metadata)
        self.bias = _param(use_bias, bias_init, rngs, shape, param_dtype, bias_metadata)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Normalize x over ``reduction_axes``; output in ``dtype`` (or x promoted with the params)."""
        x, values = self._promoted(x, (self.scale, self.bias))
        scale, bias = _as_weights(x, values, self.reduction_axes, self.feature_axes)
        return layernorm.layer_norm(x, scale, bias, axis=_axis(self.reduction_axes), eps=self.epsilon, backend="jax")


class RMSNorm(_Norm):
    """RMS normalization over ``reduction_axes`` with the parameter ``scale`` (as flax.nnx.RMSNorm).

    Arguments as `LayerNorm`, without ``use_bias``, ``bias_init`` and ``bias_metadata``; ``use_fast_variance``
    (default True, as Flax's) changes nothing, since there is no mean. Shapes and dtypes as `LayerNorm`.

    Raises:
        ValueError: ``axis_name`` or ``axis_index_groups`` given, at construction.
        ShapeError: ``feature_axes`` not among ``reduction_axes``; a ``scale`` whose size does not fit x's sizes
            along ``feature_axes``; an axis out of x's range.
        DTypeError: a complex x, or one that is not a dense array (sparse, masked, a shape spec), as the functions
            refuse it; a ``dtype`` not float16, bfloat16, float32 or float64 (int, bool, float8); without a
            ``dtype``, parameters that promote x to another dtype (complex).
        ArgumentError: ``epsilon`` negative, NaN or infinite; ``reduction_axes`` or ``feature_axes`` not an int or
            an iterable of ints.

    """

    def __init__(
        self,
        num_features: int | Sequence[int],
        *,
        epsilon: float = 1e-6,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_scale: bool = True,
        scale_init: Initializer = nnx.initializers.ones,
        reduction_axes: Axes = -1,
        feature_axes: Axes = -1,
        axis_name: str | None = None,
        axis_index_groups: Any = None,
        use_fast_variance: bool = True,
        promote_dtype: PromoteDtype | None = None,
        rngs: nnx.Rngs,
        scale_metadata: Mapping[str, Any] = _NO_METADATA,
    ) -> None:
        """Create the parameter; see the class docstring."""
        self._keep_settings(num_features, epsilon, dtype, param_dtype, use_scale, reduction_axes, feature_axes,
                            axis_name, axis_index_groups, use_fast_variance, promote_dtype)  # fmt: skip
        self.scale = _param(use_scale, scale_init, rngs, _param_shape(num_features), param_dtype, scale_metadata)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Normalize x by its root mean square over ``reduction_axes``."""
        x, values = self._promoted(x, (self.scale,))
        (scale,) = _as_weights(x, values, self.reduction_axes, self.feature_axes)
        return layernorm.rms_norm(x, scale, axis=_axis(self.reduction_axes), eps=self.epsilon, backend="jax")
