"""TensorFlow: our backend and keras.layers.LayerNormalization / RMSNormalization, both under XLA.

Both run inside ``tf.function(jit_compile=True)``; forward+backward through tf.GradientTape.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf

import layernorm
from benchmarks.cases import Case
from benchmarks.frameworks.base import Fn, FrameworkAdapter

GPU_KINDS = ("gpu", "cuda")


class Adapter(FrameworkAdapter):
    """TensorFlow on the CPU (or its GPU when present)."""

    backend = "tensorflow"

    def environment(self, device: str) -> dict[str, Any]:
        """TensorFlow and Keras versions, Keras's backend and TF's thread pools (0 = one thread per core)."""
        import keras

        return {
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "keras_backend": keras.backend.backend(),
            "intra_op_threads": _pool_size(
                tf.config.threading.get_intra_op_parallelism_threads(), "TF_NUM_INTRAOP_THREADS"
            ),
            "inter_op_threads": _pool_size(
                tf.config.threading.get_inter_op_parallelism_threads(), "TF_NUM_INTEROP_THREADS"
            ),
            "device": _device(device),
        }

    def device_kinds(self) -> tuple[str, ...]:
        """("gpu", "cpu") when TensorFlow sees a GPU, else ("cpu",)."""
        return ("gpu", "cpu") if tf.config.list_physical_devices("GPU") else ("cpu",)

    def to_device(self, array: npt.NDArray[np.float32], dtype: str, device: str) -> Any:
        """A tensor of ``dtype`` placed on the device."""
        with tf.device(_device(device)):
            return tf.identity(tf.cast(tf.constant(array), dtype))

    def to_host(self, array: Any) -> npt.NDArray[np.float64]:
        """The tensor as a float64 host array."""
        return tf.cast(array, tf.float64).numpy()

    def sync(self, out: Any) -> None:
        """Wait until every device has finished its work (``tf.test.experimental.sync_devices``), ``out`` included.

        One call whatever ``out`` holds: reading back an element of each output took two eager ops an output,
        160 us each on the CPU, inside the timed repeat.
        """
        tf.test.experimental.sync_devices()

    def ours(self, op: str, pass_: str, case: Case, weight: Any, bias: Any) -> Fn:
        """Our layer_norm / rms_norm on the tensorflow backend under ``tf.function(jit_compile=True)``."""
        axis, eps = case.shape.axis, self.eps
        params = [weight, bias] if op == "layer_norm" else [weight]

        def forward(x: Any, params: list[Any]) -> Any:
            if op == "layer_norm":
                return layernorm.layer_norm(x, params[0], params[1], axis=axis, eps=eps, backend="tensorflow")
            return layernorm.rms_norm(x, params[0], axis=axis, eps=eps, backend="tensorflow")

        return _compiled(forward, pass_, params)

    def native(self, op: str, pass_: str, case: Case, weight: Any, bias: Any) -> tuple[Fn, str]:
        """keras.layers.LayerNormalization / RMSNormalization(axis, epsilon, dtype=x's) under XLA.

        Keras 3's RMSNormalization does not broadcast its scale along a non-last axis, so for channels-first
        rms_norm x is moved to channels-last, normalized over axis -1, and moved back.
        """
        import keras

        axis, dtype = case.shape.axis, weight.dtype.name
        moved = op == "rms_norm" and axis != -1
        if op == "layer_norm":
            layer = keras.layers.LayerNormalization(axis=axis, epsilon=self.eps, dtype=dtype)
            values = [weight, bias]
        else:
            layer = keras.layers.RMSNormalization(axis=-1, epsilon=self.eps, dtype=dtype)
            values = [weight]
        dims = list(case.shape.dims)
        order = [i for i in range(len(dims)) if i != case.shape.normalized_axis] + [case.shape.normalized_axis]
        layer.build([dims[i] for i in order] if moved else dims)
        for variable, value in zip(layer.weights, values, strict=True):
            variable.assign(value)

        def forward(x: Any, params: list[Any]) -> Any:
            if not moved:
                return layer(x)
            return tf.transpose(layer(tf.transpose(x, order)), _inverse(order))

        note = f"keras.layers.{type(layer).__name__}(axis={layer.axis}) in tf.function(jit_compile=True)"
        if moved:
            note += f", x transposed to {tuple(order)} and back (Keras's RMSNormalization needs the last axis)"
        return _compiled(forward, pass_, [variable.value for variable in layer.trainable_variables]), note

    def copy(self, case: Case) -> Fn:
        """``tf.raw_ops.Snapshot`` under XLA: a real copy (a compiled identity is far slower, eager ones alias)."""
        copy = tf.function(lambda x: tf.raw_ops.Snapshot(input=x), jit_compile=True, autograph=False)
        return lambda xd: copy(xd[0])


def _inverse(order: list[int]) -> list[int]:
    inverse = [0] * len(order)
    for position, axis in enumerate(order):
        inverse[axis] = position
    return inverse


def _device(kind: str) -> str:
    return "/GPU:0" if kind in GPU_KINDS else "/CPU:0"


def _compiled(forward: Callable[[Any, list[Any]], Any], pass_: str, params: list[Any]) -> Fn:
    """``forward`` compiled by XLA, or forward and the GradientTape gradient of x and params given dy."""
    if pass_ == "forward":
        run = tf.function(lambda x: forward(x, params), jit_compile=True, autograph=False)
        return lambda xd: run(xd[0])

    def both(x: Any, dy: Any) -> Any:
        with tf.GradientTape() as tape:
            tape.watch(x)
            tape.watch(params)
            y = forward(x, params)
        return y, tape.gradient(y, [x, *params], output_gradients=dy)

    run_both = tf.function(both, jit_compile=True, autograph=False)
    return lambda xd: run_both(xd[0], xd[1])


def _pool_size(configured: int, variable: str) -> int:
    """A TF thread pool's size: what tf.config set, else the environment ``variable``, else 0 (one per core).

    ``--threads`` sets the variable, which tf.config does not report: it answers 0 there too.
    """
    return configured or int(os.environ.get(variable, "0") or 0)
