"""TensorFlow speed: layernorm (tensorflow backend) against keras.layers.LayerNormalization, under XLA.

Every candidate runs inside ``tf.function(jit_compile=True)`` on the same inputs and is timed side by side
(`benchmarks.timing.interleaved`), forward and forward+backward (tf.GradientTape gradients of y with respect to x,
weight and bias, for an output gradient ``ct``). Candidates:

- ``layernorm``: the public API, ``layernorm.layer_norm(x, w, b, eps=1e-3)`` with weight and bias tensors;
- ``layernorm.keras``: the drop-in layer ``layernorm.keras.LayerNormalization`` (weights are Keras variables);
- ``keras``: ``keras.layers.LayerNormalization`` (Keras 3 on its TensorFlow backend), the baseline;
- ``copy``: the memory floor, ``x + 1.0`` (one read and one write of x; ``tf.identity`` copies nothing and XLA
  would fold ``x + 0``).

All use Keras's epsilon 1e-3. Within a round the candidates run in the order above (``--reverse``: the other
way round), which on a busy machine can tilt close results by a few percent: compare both orders. Prints medians,
p10..p90 and the ratio of each median to keras's (< 1: faster than keras). On a GPU the sync is
``tf.test.experimental.sync_devices``; on the CPU TensorFlow runs synchronously.

    python -m benchmarks.tensorflow_speed               # (4096, 768) and (8192, 4096), float32
    python -m benchmarks.tensorflow_speed --quick       # smaller shapes, fewer rounds
    python -m benchmarks.tensorflow_speed --reverse     # keras timed first in each round
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

import layernorm
import layernorm.keras as layernorm_keras
from benchmarks.cases import DTYPES
from benchmarks.timing import Timing, interleaved, print_timings
from layernorm.cli import positive_int

EPS = 1e-3  # Keras's default; every candidate uses it
SHAPES = ((4096, 768), (8192, 4096))
QUICK_SHAPES = ((1024, 768), (2048, 1024))
BASELINE = "keras"

Fn = Callable[[Any], Any]


def _layer_fns(layer: Any, ct: Any) -> tuple[Fn, Fn]:
    """Forward and forward+backward of a built Keras layer, each a jit-compiled tf.function of x."""

    def forward(x: Any) -> Any:
        return layer(x)

    def forward_backward(x: Any) -> Any:
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
        return tape.gradient(y, [x, *layer.trainable_weights], output_gradients=ct)

    return tf.function(forward, jit_compile=True), tf.function(forward_backward, jit_compile=True)


def _api_fns(w: Any, b: Any, ct: Any) -> tuple[Fn, Fn]:
    """Forward and forward+backward of layernorm.layer_norm with weight and bias tensors, jit-compiled."""

    def forward(x: Any) -> Any:
        return layernorm.layer_norm(x, w, b, eps=EPS)

    def forward_backward(x: Any) -> Any:
        with tf.GradientTape() as tape:
            tape.watch([x, w, b])
            y = layernorm.layer_norm(x, w, b, eps=EPS)
        return tape.gradient(y, [x, w, b], output_gradients=ct)

    return tf.function(forward, jit_compile=True), tf.function(forward_backward, jit_compile=True)


def _built(layer: Any, shape: tuple[int, int], w: np.ndarray, b: np.ndarray) -> Any:
    """``layer`` built for ``shape``, its weights set to w and b (of the layer's dtype, x's: both sides alike)."""
    layer.build(shape)
    layer.set_weights([w, b])
    return layer


def run_case(shape: tuple[int, int], dtype: str, rounds: int, reverse: bool = False) -> dict[str, dict[str, Timing]]:
    """Time forward, forward+backward and the copy floor for one shape and dtype (candidates in reverse order)."""
    rng = np.random.default_rng(0)
    n = shape[-1]
    inputs = [tf.constant((rng.standard_normal(shape, np.float32) * 2 + 1).astype(dtype)) for _ in range(2)]
    ct = tf.constant(rng.standard_normal(shape, np.float32).astype(dtype))
    w_host = (1 + 0.1 * rng.standard_normal(n)).astype(np.float32)
    b_host = (0.1 * rng.standard_normal(n)).astype(np.float32)
    w_host, b_host = w_host.astype(dtype), b_host.astype(dtype)
    w, b = tf.constant(w_host), tf.constant(b_host)
    # The layers in x's dtype, as the functions run: a float32 Keras layer would cast a half x to float32 and
    # write float32 y and gradients, twice the bytes.
    candidates = {
        "layernorm": _api_fns(w, b, ct),
        "layernorm.keras": _layer_fns(
            _built(layernorm_keras.LayerNormalization(epsilon=EPS, dtype=dtype), shape, w_host, b_host), ct
        ),
        BASELINE: _layer_fns(
            _built(keras.layers.LayerNormalization(epsilon=EPS, dtype=dtype), shape, w_host, b_host), ct
        ),
    }
    forward = {name: fns[0] for name, fns in candidates.items()}
    forward["copy"] = tf.function(lambda x: x + tf.constant(1.0, x.dtype), jit_compile=True)
    backward = {name: fns[1] for name, fns in candidates.items()}
    if reverse:
        forward, backward = dict(reversed(forward.items())), dict(reversed(backward.items()))
    if tf.config.list_logical_devices("GPU"):

        def sync(out: Any) -> Any:
            tf.test.experimental.sync_devices()
            return out

    else:

        def sync(out: Any) -> Any:
            return out

    return {
        "forward": interleaved(forward, inputs, sync, rounds=rounds),
        "forward+backward": interleaved(backward, inputs, sync, rounds=rounds),
    }


def report(shape: tuple[int, int], dtype: str, results: dict[str, dict[str, Timing]]) -> None:
    """Print one table per pass: median ms, p10..p90, ratio to keras's median."""
    for label, timings in results.items():
        heading = f"\n{shape} {dtype} {label} (median of {timings[BASELINE].repeats} samples)"
        print_timings(heading, timings, BASELINE)


def main(argv: list[str] | None = None) -> None:
    """Run every case and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes, 3 rounds")
    parser.add_argument("--rounds", type=positive_int, help="interleaved rounds (default 5, quick 3)")
    parser.add_argument("--reverse", action="store_true", help="time the candidates in reverse order each round")
    parser.add_argument("--dtype", action="append", choices=DTYPES, help="float32 (default), bfloat16, float16")
    args = parser.parse_args(argv)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    rounds = args.rounds or (3 if args.quick else 5)
    devices = ", ".join(d.name for d in tf.config.list_logical_devices())
    print(f"tensorflow {tf.__version__}, keras {keras.__version__} ({keras.backend.backend()}) on {devices}")
    for shape in shapes:
        for dtype in args.dtype or ["float32"]:
            report(shape, dtype, run_case(shape, dtype, rounds, args.reverse))


if __name__ == "__main__":
    main()
