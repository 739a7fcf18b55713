"""Run-time size checks for the sizes the core could not compare when a tf.function traced the call.

With an ``input_signature`` that leaves sizes unknown (None), the core compares the sizes it sees and lets the
unknown ones pass. Unchecked, a weight of size 1 would broadcast against x without a word, a weight of the right
number of elements in another shape would be reshaped to x's sizes along the normalized axes, and a normalized size
of 0 would give NaN statistics. So x and each such argument get an assertion, which TensorFlow raises as
InvalidArgumentError when the graph runs (its messages hold no apostrophes: TensorFlow prints them escaped), and go
through a broadcast to the shape they must have: XLA (``jit_compile=True``) drops assertions, but it compiles that
broadcast only for that exact shape, and refuses any other.

Eager tensors have known sizes, and so do most traced ones: those return at once.
"""

from __future__ import annotations

from typing import Any, Literal

import tensorflow as tf

from layernorm_core.spec import NormSpec
from layernorm_tensorflow._sums import xla_compiled

Tensor = Any
Role = Literal["weight", "bias", "dy", "mean", "rstd"]


def checked(t: Tensor, role: Role, x: Tensor, spec: NormSpec) -> Tensor:
    """``t`` (weight, bias, dy, mean or rstd of x), checked at run time where its or x's sizes are unknown.

    None stays None. The expected shape is x's sizes along ``spec.axes`` for weight and bias, x's shape for dy,
    and ``spec.stats_shape`` for mean and rstd.
    """
    if t is None:
        return None
    static = _static_expected(role, spec)
    if None not in static and t.shape.is_fully_defined():
        return t  # the core compared every size
    expected, message = _expected(role, x, spec)
    assertion = tf.debugging.assert_equal(tf.shape(t), expected, message=message)
    with tf.control_dependencies([assertion]):
        t = tf.identity(t)  # what reads t waits for the assertion (grappler keeps an op's own control inputs)
    return _keeping_static_shape(t, tf.reshape(t, tf.shape(tf.broadcast_to(t, expected))))


def nonempty(x: Tensor, spec: NormSpec) -> Tensor:
    """``x``, checked at run time to have a normalized size other than 0 where its sizes along the axes are unknown.

    The core's message, with x's run-time shape. Under XLA, which drops the assertion, x goes through a broadcast to
    its own shape with the normalized sizes at least 1, which XLA refuses for a size of 0.
    """
    if None not in spec.normalized_shape:
        return x  # the core checked it
    shape = tf.shape(x)
    if not xla_compiled():  # XLA would drop the assertion, but not always its message: it cannot compile that op
        message = f"the normalized size is 0 (x has shape {{}}, axis={spec.axes}): nothing to normalize"
        nonzero = tf.reduce_all(tf.gather(shape, spec.axes) > 0)
        assertion = tf.debugging.Assert(nonzero, [tf.strings.format(message, shape)])
        with tf.control_dependencies([assertion]):
            x = tf.identity(x)
    normalized = tf.constant([d in spec.axes for d in range(spec.ndim)])
    return _keeping_static_shape(
        x, tf.reshape(x, tf.shape(tf.broadcast_to(x, tf.where(normalized, tf.maximum(shape, 1), shape))))
    )


def _keeping_static_shape(t: Tensor, checked: Tensor) -> Tensor:
    """``checked`` (``t`` through a shape check) with the sizes ``t`` was known to have.

    A reshape to a shape known only at run time forgets them: a known size 1 of x's became unknown in y, and a
    Keras Dense layer after it could not be built.
    """
    checked.set_shape(t.shape)
    return checked


def _static_expected(role: Role, spec: NormSpec) -> tuple[int | None, ...]:
    if role in ("weight", "bias"):
        return spec.normalized_shape
    return spec.shape if role == "dy" else spec.stats_shape


def _expected(role: Role, x: Tensor, spec: NormSpec) -> tuple[Tensor, str]:
    """The shape ``role`` must have, from x's run-time shape, and the message of the failed check."""
    shape = tf.shape(x)
    if role in ("weight", "bias"):
        return tf.gather(shape, spec.axes), f"{role} must have the sizes of x along axis={spec.axes}"
    if role == "dy":
        return shape, "dy must have the shape of x"
    normalized = tf.constant([d in spec.axes for d in range(spec.ndim)])
    return (
        tf.where(normalized, tf.ones_like(shape), shape),
        f"{role} must have the shape of x with the normalized axes {spec.axes} set to 1",
    )
