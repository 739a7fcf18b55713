"""Means over the normalized axes that stay accurate for rows of any length: eagerly, in tf.function and under XLA.

TensorFlow's CPU kernels (eager, and tf.function without XLA) sum the innermost axes pairwise (Eigen's tree
reduction), accurate whatever the length. An axis that is not innermost is summed in one running sum per column,
whose error grows with its length: rms_norm over axes (0, 1) of a (64, 4096, 4) float32 array of values near 1000
erred by 9x the tolerance. A reduction whose running sums would add more than RUN_MAX values moves the normalized
axes last first (one transpose, ``spec.perm``), and so does one whose length is known only when the graph runs.

XLA:CPU (``jit_compile=True``) sums a row with a few accumulators whatever the axis: the mean of a row of 2**20
float32 values near 1e4 came out 3 too small. Under XLA, rows longer than XLA_BLOCK are summed in blocks of
XLA_BLOCK values, then the block sums the same way, until one sum is left (a cascade); an optimization barrier
between the levels keeps XLA from folding them back into one reduction. Over several axes XLA:CPU keeps running
sums where the batch is small (constant rows of 0.1 over (1, 2) of (4, 32, 32) float32 missed the bias by 6.1e-4),
so such rows are summed as the cascade sums them, from a (rows, N) view, however short.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla  # optimization_barrier: no public API has it
from tensorflow.python.ops import control_flow_util  # no public API says whether XLA compiles the graph
from tensorflow.python.ops.parallel_for import pfor  # nor registers how tf.vectorized_map batches an op

from layernorm_core.spec import NormSpec

Tensor = Any

RUN_MAX = 64
"""Most values TensorFlow's CPU kernels may add in one running sum. A column of 4096 float32 values near 1e4 summed
its squares 2.6x the rstd tolerance off; constant columns of 0.1 gave y off the bias by 6.2x the tolerance at
1000 values, 0.57x at 128 and 0.31x at 64 (the error grows with the length, the tolerance not), and a column of
1000 with one value of 1e6 gave dx 1.1x. Moving the axes last cost (8, 128, 28, 28) over axis 1 1.3-1.8x, and
(32, 256, 14, 14) 1.25x eagerly and 1.8x in a tf.function (forward; forward+backward 1.5x); the usual
channels-last layout, and 64 channels first, keep their time."""
XLA_BLOCK = 4096
"""Most values one XLA reduction sums; longer rows are cascaded. XLA:CPU summed 2**18 values to 1 ulp, 2**20 not."""
_UNKNOWN_LEVELS = 3
"""Cascade levels for a row whose length is unknown when traced: XLA_BLOCK**3 = 2**36 values, more than any row."""


def row_mean(t: Tensor, spec: NormSpec) -> Tensor:
    """The mean of ``t`` (x's shape, in the compute dtype) over ``spec.axes``, shaped ``spec.stats_shape``."""
    if xla_compiled():
        levels = _cascade_levels(spec)
        return _cascade_mean(t, spec, levels) if levels > 1 or len(spec.axes) > 1 else _plain_mean(t, spec)
    outer = _running_axes(spec)
    sizes = [spec.shape[d] for d in outer]
    if None in sizes:  # the length is known only when the graph runs: not a tf.cond, which a tape nested with a
        return _mean_moved_last(t, spec)  # ForwardAccumulator cannot trace (either way round)
    return _mean_moved_last(t, spec) if math.prod(sizes) > RUN_MAX else _plain_mean(t, spec)  # type: ignore[arg-type]


def _running_axes(spec: NormSpec) -> list[int]:
    """The normalized axes whose sizes multiply the running sums of TensorFlow's CPU kernels over ``spec.axes``.

    The innermost normalized axes, and size-1 axes among or after them, are summed pairwise; every other normalized
    axis is summed in running sums, one per column. Where a batch axis splits the normalized axes into innermost
    ones and outer ones, the running sums take them all: a (256, 3, 256) array over axes (0, 2) was summed as a
    column of 65536 values is (its mean of values near 1e4 was 3 off).
    """
    inner: list[int] = []
    outer: list[int] = []
    innermost = True
    for d in reversed(range(spec.ndim)):
        size = spec.shape[d]
        if size == 1:
            continue
        if d not in spec.axes:
            innermost = False
        else:
            (inner if innermost else outer).append(d)
    return outer + inner if outer else outer


def _plain_mean(t: Tensor, spec: NormSpec) -> Tensor:
    return tf.reduce_mean(t, axis=spec.axes, keepdims=True)


def xla_compiled() -> bool:
    """True while tracing a function that XLA compiles (``tf.function(jit_compile=True)``, or one called in it)."""
    return not tf.executing_eagerly() and control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def _cascade_levels(spec: NormSpec) -> int:
    """How many levels of XLA_BLOCK values sum a row of ``spec``: 1 is a single reduction."""
    if None in spec.normalized_shape:
        return _UNKNOWN_LEVELS
    size = math.prod(spec.normalized_shape)  # type: ignore[arg-type]
    levels = 1
    while XLA_BLOCK**levels < size:
        levels += 1
    return levels


def _cascade_mean(t: Tensor, spec: NormSpec, levels: int) -> Tensor:
    """The row means of ``t`` as block sums of block sums (``levels`` deep), divided by the row length."""
    rows = _rows(t, spec)
    sums = _block_sums(rows)
    for _ in range(levels - 1):
        sums = _block_sums(_barrier(sums))
    mean = sums / tf.cast(tf.shape(rows)[1], t.dtype)
    return tf.reshape(mean, _stats_shape(t, spec))


def _barrier(t: Tensor) -> Tensor:
    """``xla.optimization_barrier`` of t: differentiable, its gradient the identity's (`_identity_gradient`)."""
    (out,) = xla.optimization_barrier(t)
    return out


def _identity_gradient(op: Any, *upstream: Tensor) -> list[Tensor]:
    """The barrier's gradient: the identity's, to any order, for tapes and forward accumulators alike.

    TensorFlow registers none: without it a second derivative, or a tape around a jit-compiled function, through
    the backward's row sums (which cascade) raised LookupError. A tf.custom_gradient around the barrier served
    tapes, but a ForwardAccumulator under XLA took the tangent of its body, which had to stop gradients: zero.
    """
    return list(upstream)


with contextlib.suppress(KeyError):  # KeyError: a TensorFlow that registers one itself (the identity's too)
    tf.RegisterGradient("XlaOptimizationBarrier")(_identity_gradient)


def _vectorized_barrier(pfor_input: Any) -> list[Any]:
    """The barrier of a batch (``tf.vectorized_map``, ``tape.jacobian``): the barrier of the batched inputs.

    TensorFlow registers no such rule: without it, vectorized_map ran a jit-compiled function one example at a
    time, in a while loop, and a gradient through that loop failed to compile where sizes were unknown when traced.
    """
    inputs = pfor_input.inputs
    outputs = xla.optimization_barrier(*(wrapped.t for wrapped in inputs))
    return [pfor.wrap(out, wrapped.is_stacked) for out, wrapped in zip(outputs, inputs, strict=True)]


with contextlib.suppress(AssertionError):  # AssertionError: a TensorFlow that registers one itself
    pfor.RegisterPFor("XlaOptimizationBarrier")(_vectorized_barrier)


def _rows(t: Tensor, spec: NormSpec) -> Tensor:
    """``t`` as a (rows, N) matrix: the normalized axes moved last and flattened, the batch axes flattened."""
    moved = t if spec.is_trailing else tf.transpose(t, spec.perm)
    shape = tf.shape(t)
    batch = tf.reduce_prod(tf.gather(shape, tf.constant(spec.batch_axes, tf.int32)))  # () alone would be float32
    return tf.reshape(moved, tf.stack([batch, tf.reduce_prod(tf.gather(shape, spec.axes))]))


def _block_sums(rows: Tensor) -> Tensor:
    """(R, K) -> (R, ceil(K / XLA_BLOCK)): the sums of consecutive blocks of each row, the last one zero-padded."""
    shape = tf.shape(rows)
    length = shape[1]
    block = tf.maximum(tf.minimum(length, XLA_BLOCK), 1)
    count = (length + block - 1) // block
    padded = tf.pad(rows, [[0, 0], [0, count * block - length]])
    return tf.reduce_sum(tf.reshape(padded, tf.stack([shape[0], count, block])), axis=2)


def _mean_moved_last(t: Tensor, spec: NormSpec) -> Tensor:
    """The mean over ``spec.axes`` of ``t`` with those axes moved innermost, where TensorFlow sums pairwise."""
    moved = tf.transpose(t, spec.perm)
    mean = tf.reduce_mean(moved, axis=list(range(len(spec.batch_axes), spec.ndim)))
    return tf.reshape(mean, _stats_shape(t, spec))


def _stats_shape(t: Tensor, spec: NormSpec) -> list[Any]:
    """``spec.stats_shape``, with t's run-time sizes for the unknown ones (so the known ones stay known)."""
    return [tf.shape(t)[d] if size is None else size for d, size in enumerate(spec.stats_shape)]
