"""Keras 3 layers running on layernorm: drop-in replacements for keras.layers.LayerNormalization and RMSNormalization.

They take the same arguments, create the same weights under the same names in the same order (``gamma`` then
``beta``; ``scale``), so weights saved from the Keras layers load into these (``set_weights``, ``.weights.h5``,
``.keras`` files) and the other way round. They call the public API (`layernorm.layer_norm`, `layernorm.rms_norm`)
on the engine of Keras's backend (TensorFlow, JAX or torch), whatever `layernorm.use` or `layernorm.using` named.

Loading a ``.keras`` file that holds these layers needs ``import layernorm.keras`` first (Keras finds custom classes
by their registration, ``layernorm>LayerNormalization``); to load it without layernorm, pass
``custom_objects={"layernorm>LayerNormalization": keras.layers.LayerNormalization, "layernorm>RMSNormalization":
keras.layers.RMSNormalization}``: the configs have the same keys.

Defaults are Keras's, not layernorm's: ``epsilon=1e-3`` for LayerNormalization (layernorm.layer_norm: 1e-5) and
``epsilon=1e-6`` for RMSNormalization. Mixed precision is Keras's too. LayerNormalization does not autocast: it
normalizes the input in its own dtype with its weights in their variable dtype (float32 under the ``mixed_*``
policies, cast to float64 for a float64 input), then casts the output to the layer's compute dtype.
RMSNormalization autocasts: Keras casts a float input and the ``scale`` to the compute dtype (both bfloat16 under
``mixed_bfloat16``) before it normalizes. Either way half inputs are normalized with float32 statistics, and the
output has the layer's compute dtype. Unlike Keras, integer inputs are refused with layernorm's DTypeError, as
by the functions (keras.layers.LayerNormalization normalizes them in float32, and its RMSNormalization returns
them as integers): cast them first. ``epsilon=None`` is ``keras.config.epsilon()``, as Keras takes it.

Second derivatives on TensorFlow differ from keras.layers.LayerNormalization's, which takes the variance with
``tf.nn.moments``: that stops the gradient through the mean it subtracts, which changes no first derivative (the
centered values sum to 0) but changes second ones. A gradient penalty (nested ``GradientTape``) through it gave
the layers before it gradients 4% off, where these layers' matched the exact formula to 2e-15. On the JAX and
torch backends, and for RMSNormalization, the two agree.

Example:
    >>> import numpy as np
    >>> from layernorm.keras import LayerNormalization
    >>> layer = LayerNormalization()
    >>> y = layer(np.array([[1.0, 2.0, 3.0]], dtype="float32"))
    >>> [w.name for w in layer.weights], tuple(y.shape)
    (['gamma', 'beta'], (1, 3))

"""

from __future__ import annotations

from typing import Any

import numpy as np

from layernorm_core.errors import missing_framework_error

try:
    import keras
    from keras import constraints, initializers, ops, regularizers
except ImportError as exc:
    install = "pip install keras (with JAX or torch), or pip install 'layernorm[tensorflow]', which brings it"
    raise missing_framework_error("layernorm.keras", "Keras 3", exc, install) from exc

from layernorm.functional import layer_norm, rms_norm
from layernorm_core.dtypes import param_dtype_for

__all__ = ["LayerNormalization", "RMSNormalization"]

_ENGINE = keras.backend.backend()
"""The layernorm backend of Keras's own ("tensorflow", "jax", "torch", "numpy"): the layers run on it whatever
`layernorm.use` or `layernorm.using` put in force for plain calls, as the Flax and torch modules run on theirs."""


def _axes(axis: Any) -> list[int] | int:
    if isinstance(axis, (list, tuple)):
        return list(axis)
    if isinstance(axis, int):
        return axis
    raise TypeError(f"Expected an int or a list/tuple of ints for the argument 'axis', but received: {axis!r}")


def _epsilon(epsilon: float | None) -> float:
    """``epsilon``; None is Keras's ``keras.config.epsilon()``, as its layers take it (1e-7 by default)."""
    return keras.config.epsilon() if epsilon is None else epsilon


def _tuple(axis: list[int] | int) -> tuple[int, ...]:
    return tuple(axis) if isinstance(axis, list) else (axis,)


def _weight_shape(axis: list[int] | int, input_shape: tuple[int | None, ...]) -> tuple[list[int], tuple[Any, ...]]:
    """Keras's rule: the normalized axes sorted as given (negative kept), and the weight shape along them."""
    axes = sorted(axis) if isinstance(axis, list) else [axis]
    return axes, tuple(input_shape[a] for a in axes)


def _matching(param: Any, x: Any, axis: list[int] | int) -> Any:
    """A weight as layernorm takes it for x: laid along the normalized axes in increasing order, of a dtype it accepts.

    Keras sorts the axes as given, negative ones first (``[1, -1]`` gives a weight of shape (x.shape[-1],
    x.shape[1])), and reshapes the weight to x's sizes along the axes in increasing order: so does this.
    The dtype: one the core takes for x (`param_dtype_for`).
    """
    if param is None:
        return None
    tensor = param.value  # the backend's own array (tf.Variable, jax.Array, torch Parameter), autocast if due
    if isinstance(axis, list):
        ndim = len(x.shape)
        order = sorted(range(len(axis)), key=lambda k: axis[k] % ndim)
        if order != sorted(order):  # mixed signs: Keras's order is not the axes' order
            tensor = ops.reshape(tensor, tuple(tensor.shape[k] for k in order))
    param_dtype = keras.backend.standardize_dtype(tensor.dtype)
    wanted = param_dtype_for(keras.backend.standardize_dtype(x.dtype), param_dtype)
    return tensor if wanted == param_dtype else ops.cast(tensor, wanted)


def _tensor(x: Any) -> Any:
    """``x`` as a tensor of Keras's backend, as Keras's ops take it (call() and stateless_call() take NumPy arrays).

    A tensor of the backend keeps its dtype: without one, Keras's NumPy backend, whose tensors are NumPy arrays,
    converts a float64 one to float32 (a float64 policy's input, normalized in float32, and RMSNormalization's y
    float32). It is still converted: Keras's torch backend moves it to Keras's device there.
    """
    return ops.convert_to_tensor(x, dtype=x.dtype) if ops.is_tensor(x) else ops.convert_to_tensor(x)


def _check_axes(axis: list[int] | int, input_shape: tuple[int | None, ...]) -> None:
    for a in axis if isinstance(axis, list) else [axis]:
        if a >= len(input_shape) or a < -len(input_shape):
            raise ValueError(f"Axis {a} is out of bounds for input shape {input_shape}. Received: axis={axis}")


@keras.saving.register_keras_serializable(package="layernorm")
class LayerNormalization(keras.layers.Layer):
    """Layer normalization (Ba et al., 2016) over ``axis``: ``(x - mean) / sqrt(var + epsilon) * gamma + beta``.

    Arguments as keras.layers.LayerNormalization: ``axis`` (int or list of ints, default -1), ``epsilon`` (default
    1e-3, Keras's), ``center`` (add ``beta``), ``scale`` (multiply by ``gamma``), and the initializers,
    regularizers and constraints of ``beta`` and ``gamma``. The deprecated ``rms_scaling=True`` (which Keras computes
    as ``x / sqrt(var + epsilon) * gamma``) is refused: use `RMSNormalization`; the ``rms_scaling`` attribute is
    False, as Keras's by default.

    Shapes: input any shape that has the axes ``axis`` names (their sizes fixed when the layer is built); output
    the input's shape, in the layer's compute dtype.

    Raises:
        ValueError: ``rms_scaling=True``, at construction; an axis out of range, from `compute_output_shape`.
        TypeError: ``axis`` not an int or a list or tuple of ints, at construction.
        IndexError: an axis out of the input's range, when the layer is built (as Keras's).
        DTypeError: an integer, bool or complex input, when called.
        ShapeError: an input whose sizes along ``axis`` are not those the layer was built for, when called.
        ArgumentError: ``epsilon`` negative, NaN or infinite, when called.

    """

    def __init__(
        self,
        axis: int | list[int] | tuple[int, ...] = -1,
        epsilon: float | None = 1e-3,
        center: bool = True,
        scale: bool = True,
        beta_initializer: Any = "zeros",
        gamma_initializer: Any = "ones",
        beta_regularizer: Any = None,
        gamma_regularizer: Any = None,
        beta_constraint: Any = None,
        gamma_constraint: Any = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.pop("rms_scaling", False):
            raise ValueError(
                "rms_scaling=True is not supported (Keras deprecates it: it scales by the variance, not the root "
                "mean square): use layernorm.keras.RMSNormalization"
            )
        super().__init__(**kwargs)
        self.axis = _axes(axis)
        self.epsilon = epsilon
        self.center = center
        self.scale = scale
        self.rms_scaling = False
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.beta_regularizer = regularizers.get(beta_regularizer)
        self.gamma_regularizer = regularizers.get(gamma_regularizer)
        self.beta_constraint = constraints.get(beta_constraint)
        self.gamma_constraint = constraints.get(gamma_constraint)
        self.supports_masking = True
        self.autocast = False

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        """Create ``gamma`` (if scale) then ``beta`` (if center), shaped like the input along ``axis``."""
        self.axis, shape = _weight_shape(self.axis, input_shape)
        self.gamma = self._parameter(
            "gamma", shape, self.scale, self.gamma_initializer, self.gamma_regularizer, self.gamma_constraint
        )
        self.beta = self._parameter(
            "beta", shape, self.center, self.beta_initializer, self.beta_regularizer, self.beta_constraint
        )

    def _parameter(self, name: str, shape: tuple[Any, ...], wanted: bool, init: Any, reg: Any, con: Any) -> Any:
        if not wanted:
            return None
        return self.add_weight(
            name=name, shape=shape, initializer=init, regularizer=reg, constraint=con, trainable=True, autocast=False
        )

    def call(self, inputs: Any) -> Any:
        """Normalize ``inputs`` with layernorm.layer_norm; cast to the layer's compute dtype."""
        inputs = _tensor(inputs)
        outputs = layer_norm(
            inputs,
            _matching(self.gamma, inputs, self.axis),
            _matching(self.beta, inputs, self.axis),
            axis=_tuple(self.axis),
            eps=_epsilon(self.epsilon),
            backend=_ENGINE,
        )
        return ops.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        """The input shape (ValueError for an axis out of range)."""
        _check_axes(self.axis, input_shape)
        return input_shape

    def get_config(self) -> dict[str, Any]:
        """Keras's config keys (``rms_scaling`` is always False), so configs load in either class."""
        return {
            **super().get_config(),
            "axis": self.axis,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
            "rms_scaling": self.rms_scaling,
            "beta_initializer": initializers.serialize(self.beta_initializer),
            "gamma_initializer": initializers.serialize(self.gamma_initializer),
            "beta_regularizer": regularizers.serialize(self.beta_regularizer),
            "gamma_regularizer": regularizers.serialize(self.gamma_regularizer),
            "beta_constraint": constraints.serialize(self.beta_constraint),
            "gamma_constraint": constraints.serialize(self.gamma_constraint),
        }


@keras.saving.register_keras_serializable(package="layernorm")
class RMSNormalization(keras.layers.Layer):
    """RMS normalization (Zhang & Sennrich, 2019) over ``axis``: ``x / sqrt(mean(x**2) + epsilon) * scale``.

    Arguments and weight as keras.layers.RMSNormalization: ``axis`` (default -1), ``epsilon`` (default 1e-6,
    Keras's), one weight ``scale`` initialized to ones. Output: the input's shape, in the layer's compute dtype
    (Keras casts float inputs to it: float32 for a float64 input under the default policy, bfloat16 under
    ``mixed_bfloat16``), as with Keras's own layer. Input: any shape that has the axes ``axis`` names (their sizes
    fixed when the layer is built).

    Raises: as `LayerNormalization`'s, but for ``rms_scaling``, which this layer does not take.

    """

    def __init__(
        self, axis: int | list[int] | tuple[int, ...] = -1, epsilon: float | None = 1e-6, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.axis = _axes(int(axis) if isinstance(axis, np.integer) else axis)  # Keras's takes a NumPy integer
        self.epsilon = epsilon

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        """Create ``scale``, shaped like the input along ``axis``."""
        self.axis, shape = _weight_shape(self.axis, input_shape)
        self.scale = self.add_weight(name="scale", shape=shape, initializer="ones")

    def call(self, x: Any) -> Any:
        """Normalize ``x`` with layernorm.rms_norm."""
        x = _tensor(x)
        return rms_norm(
            x, _matching(self.scale, x, self.axis), axis=_tuple(self.axis), eps=_epsilon(self.epsilon), backend=_ENGINE
        )

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        """The input shape (ValueError for an axis out of range)."""
        _check_axes(self.axis, input_shape)
        return input_shape

    def get_config(self) -> dict[str, Any]:
        """Keras's config keys: axis and epsilon."""
        return {**super().get_config(), "axis": self.axis, "epsilon": self.epsilon}
