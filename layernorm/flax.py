"""Flax NNX modules running layernorm's JAX backend: `LayerNorm` and `RMSNorm`.

Drop-in for ``flax.nnx.LayerNorm`` / ``flax.nnx.RMSNorm`` in the common case: the same constructor arguments
(``num_features``, ``epsilon``, ``dtype``, ``param_dtype``, ``use_bias``, ``use_scale``, ``bias_init``,
``scale_init``, ``reduction_axes``, ``rngs``) and the same parameter names (``scale``, ``bias``), so a state
saved from one loads into the other. The statistics are always two-pass (Flax's ``use_fast_variance`` is not
offered) and the gradient is layernorm's analytic custom_vjp.

One difference: the parameters have the normalized shape, x's sizes along ``reduction_axes`` (``num_features``
may be a tuple for several axes), where Flax broadcasts a ``feature_axes`` vector. With the default
``reduction_axes=-1`` the two are the same.

Needs flax: ``pip install 'layernorm[flax]'``.

>>> import jax.numpy as jnp
>>> from flax import nnx
>>> from layernorm.flax import LayerNorm
>>> layer = LayerNorm(4, rngs=nnx.Rngs(0))
>>> layer(jnp.arange(8.0).reshape(2, 4)).shape
(2, 4)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

try:
    import jax
    import jax.numpy as jnp
    from flax import nnx
except ImportError as exc:  # pragma: no cover - exercised by a test that hides flax
    raise ImportError(
        f"layernorm.flax needs flax and jax ({exc.name} is missing): pip install 'layernorm[flax]'"
    ) from exc

import layernorm
from layernorm_core.dtypes import compute_dtype

__all__ = ["LayerNorm", "RMSNorm"]

Initializer = Any


def _param_shape(num_features: int | Sequence[int]) -> tuple[int, ...]:
    return (num_features,) if isinstance(num_features, int) else tuple(num_features)


def _axis(reduction_axes: int | Sequence[int]) -> int | tuple[int, ...]:
    return reduction_axes if isinstance(reduction_axes, int) else tuple(reduction_axes)


def _cast(x: jax.Array, params: Sequence[nnx.Param | None], dtype: Any) -> tuple[jax.Array, list[jax.Array | None]]:
    """Cast x to the module's dtype (given, else x promoted with the params, as Flax does).

    Params keep that dtype or its compute dtype (float32 parameters stay float32 for a half x).
    """
    values = [None if p is None else p[...] for p in params]
    target = jnp.dtype(dtype) if dtype is not None else jnp.result_type(x, *[v for v in values if v is not None])
    allowed = {target, jnp.dtype(compute_dtype(target.name))}
    return x.astype(target), [v if v is None or v.dtype in allowed else v.astype(target) for v in values]


class LayerNorm(nnx.Module):
    """Layer normalization over ``reduction_axes`` with parameters ``scale`` and ``bias`` (as flax.nnx.LayerNorm).

    Args:
        num_features: size of the normalized axis (a tuple for several ``reduction_axes``): the params' shape.
        epsilon: added to the variance (Flax's default 1e-6).
        dtype: dtype of the computation's input and output; None promotes x with the params, as Flax does.
        param_dtype: dtype of ``scale`` and ``bias``.
        use_bias, use_scale: create ``bias`` / ``scale`` (else they are None and not applied).
        bias_init, scale_init: initializers ``(key, shape, dtype)``.
        reduction_axes: the normalized axes of x.
        rngs: the module's random streams (``rngs.params`` seeds the initializers).

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
        reduction_axes: int | Sequence[int] = -1,
        rngs: nnx.Rngs,
    ) -> None:
        """Create the parameters; see the class docstring."""
        shape = _param_shape(num_features)
        self.num_features = num_features
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.reduction_axes = reduction_axes
        self.scale = nnx.Param(scale_init(rngs.params(), shape, param_dtype)) if use_scale else None
        self.bias = nnx.Param(bias_init(rngs.params(), shape, param_dtype)) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """Normalize x over ``reduction_axes``; output in ``dtype`` (or x promoted with the params)."""
        x, (scale, bias) = _cast(x, (self.scale, self.bias), self.dtype)
        return layernorm.layer_norm(x, scale, bias, axis=_axis(self.reduction_axes), eps=self.epsilon, backend="jax")


class RMSNorm(nnx.Module):
    """RMS normalization over ``reduction_axes`` with the parameter ``scale`` (as flax.nnx.RMSNorm).

    Arguments as `LayerNorm`, without ``use_bias`` and ``bias_init``.
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
        reduction_axes: int | Sequence[int] = -1,
        rngs: nnx.Rngs,
    ) -> None:
        """Create the parameter; see the class docstring."""
        self.num_features = num_features
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_scale = use_scale
        self.reduction_axes = reduction_axes
        self.scale = (
            nnx.Param(scale_init(rngs.params(), _param_shape(num_features), param_dtype)) if use_scale else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """Normalize x by its root mean square over ``reduction_axes``."""
        x, (scale,) = _cast(x, (self.scale,), self.dtype)
        return layernorm.rms_norm(x, scale, axis=_axis(self.reduction_axes), eps=self.epsilon, backend="jax")
