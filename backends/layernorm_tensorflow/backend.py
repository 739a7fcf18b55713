"""The TensorFlow backend: layer_norm and rms_norm for tf.Tensor and tf.Variable, eager, in tf.function and XLA.

Gradients go through ``tf.custom_gradient`` whose backward is the analytic one of `layernorm_tensorflow._math`,
the same code the explicit ``*_backward`` functions run; so tf.GradientTape gives dx, dweight and dbias, also
through the returned statistics. Eager calls with no tape recording skip the custom-gradient wrapper.

Importing this module sets ``TF_CPP_MIN_LOG_LEVEL=1`` when neither the user nor an earlier import of tensorflow did
(see `layernorm_tensorflow._quiet`).
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np

from layernorm_core.errors import BackendError, DeviceError
from layernorm_core.foreign import DLPACK_HOST, dlpack_device_type, host_array, require_host, row_major_on_device
from layernorm_core.protocol import BackendInfo
from layernorm_core.spec import NormSpec
from layernorm_tensorflow._quiet import quiet_tensorflow_logs

quiet_tensorflow_logs()

import tensorflow as tf  # noqa: E402 - must follow quiet_tensorflow_logs()
from tensorflow.python.eager import record  # noqa: E402 - no public API says whether a tape is recording
from tensorflow.python.ops import gradients_util  # noqa: E402 - nor whether a tape or accumulator watches a tensor

from layernorm_tensorflow import _math, _sizes  # noqa: E402

Tensor = Any
_DEVICE_KINDS = {"CPU": "cpu", "GPU": "gpu", "TPU": "tpu"}
_NOT_WATCHED = gradients_util.POSSIBLE_GRADIENT_TYPES_NONE


def info() -> BackendInfo:
    """TensorFlow's version, the device kinds it sees here, all four float dtypes, autodiff through tf.GradientTape."""
    return BackendInfo(
        version=tf.__version__,
        devices=_device_kinds(),
        device_count=_device_count(),
        dtypes=("float16", "bfloat16", "float32", "float64"),
        autodiff=True,
        notes={
            "gradients": "tf.custom_gradient with the analytic backward; eager, tf.function, jit_compile=True",
            "logging": "sets TF_CPP_MIN_LOG_LEVEL=1 if unset and tensorflow was not yet imported",
            "keras": "layernorm.keras.LayerNormalization keeps Keras's default epsilon 1e-3",
        },
    )


def device_of(x: Tensor) -> str:
    """The kind of device x lives on, "cpu", "gpu" or "tpu", with its index where TF sees several of that kind.

    A graph tensor without a device answers the kind where TF would place it.
    """
    return _device_name(_variable(x).device)


def is_tracked(x: Tensor) -> bool:
    """True inside a graph (symbolic tensors, variables), and for what a GradientTape or ForwardAccumulator watches.

    A trainable variable counts as watched whenever one records (a tape watches it when it is read); any other
    variable, as a tensor, where one watches it explicitly (``tape.watch(v)``, an accumulator's primal).
    """
    x = _variable(x)
    if isinstance(x, tf.Variable):
        if not tf.executing_eagerly():
            return True
        return record.could_possibly_record() and (x.trainable or _watched(x.handle))
    if tf.is_symbolic_tensor(x):
        return True
    return record.could_possibly_record() and _watched(x)


def _watched(t: Tensor) -> bool:
    """Whether an active tape or accumulator watches the eager tensor ``t`` (for a variable: its handle)."""
    return gradients_util.PossibleTapeGradientTypes([t]) != _NOT_WATCHED


def to_numpy(x: Tensor) -> np.ndarray:
    """A host NumPy copy of an eager tensor or variable (bfloat16 as ml_dtypes.bfloat16).

    BackendError for a symbolic tensor (inside tf.function), which has no values yet.
    """
    x = _variable(x)
    if tf.is_symbolic_tensor(x) or (isinstance(x, tf.Variable) and not tf.executing_eagerly()):
        raise BackendError(
            "the 'tensorflow' backend ran inside tf.function, where its result is a symbolic tensor without values, "
            "so it cannot go back as the caller's NumPy (or other framework's) array. Inside tf.function, pass "
            "tf.Tensors (tf.convert_to_tensor(x)) to layernorm; or call it outside tf.function"
        )
    return np.array(x.numpy(), copy=True)


def from_numpy(array: Any, device: str = "cpu") -> Tensor:
    """A new eager tensor with ``array``'s values and dtype on ``device``.

    That is the first device of a kind ("cpu", "gpu"/"cuda", "tpu"), or the one a `device_of` answer names ("gpu:1").
    """
    kind, _, index = device.partition(":")
    kind = "gpu" if kind == "cuda" else kind
    if kind not in _device_kinds():
        raise DeviceError(f"tensorflow has no {device!r} device here; it sees {', '.join(_device_kinds())}")
    with tf.device(f"/{kind.upper()}:{index or 0}"):
        return tf.identity(tf.constant(np.array(array, copy=True)))


def from_foreign(x: Any) -> Tensor:
    """An array of another framework as a tf.Tensor: DLPack for device memory, else a copy through NumPy.

    Host memory goes through NumPy: TensorFlow's DLPack import aborts the process (a failed CHECK, not an
    exception) for memory off a 64-byte boundary, such as a NumPy buffer at an offset of 16 bytes. A host array
    that offers DLPack alone, of a dtype NumPy cannot import that way (bfloat16), is a DTypeError, as on the NumPy
    engine: TensorFlow's import of it would abort on such memory too.
    """
    if hasattr(x, "__dlpack__") and dlpack_device_type(x) not in DLPACK_HOST:
        try:
            return tf.experimental.dlpack.from_dlpack(x.__dlpack__())
        except (BufferError, RuntimeError, TypeError, ValueError, tf.errors.OpError) as exc:
            compact = row_major_on_device(x)
            if compact is not None:
                return tf.experimental.dlpack.from_dlpack(compact.__dlpack__())
            require_host(x, "TensorFlow", exc)  # device memory: a DeviceError
    return tf.convert_to_tensor(host_array(x, "TensorFlow"))


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, spec: NormSpec, return_stats: bool) -> Any:
    """y, or (y, mean, rstd) when ``return_stats``; differentiable by tf.GradientTape in every output."""
    x = _x(x, spec)
    weight, bias = _checked(weight, "weight", x, spec), _checked(bias, "bias", x, spec)
    with _placed(x):
        if _recording():
            y, mean, rstd = _layer_norm_differentiable(x, weight, bias, spec)
        else:
            y, mean, rstd = _math.layer_norm_forward(x, weight, bias, spec)
    return (y, mean, rstd) if return_stats else y


def rms_norm(x: Tensor, weight: Tensor, spec: NormSpec, return_stats: bool) -> Any:
    """y, or (y, rstd) when ``return_stats``; differentiable by tf.GradientTape in every output."""
    x = _x(x, spec)
    weight = _checked(weight, "weight", x, spec)
    with _placed(x):
        if _recording():
            y, rstd = _rms_norm_differentiable(x, weight, spec)
        else:
            y, rstd = _math.rms_norm_forward(x, weight, spec)
    return (y, rstd) if return_stats else y


def layer_norm_backward(
    dy: Tensor, x: Tensor, weight: Tensor, spec: NormSpec, mean: Tensor, rstd: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dweight, dbias) in x's dtype; mean and rstd are recomputed when None (`_statistics_differentiable`)."""
    x = _x(x, spec)
    dy, weight = _checked(dy, "dy", x, spec), _checked(weight, "weight", x, spec)
    mean, rstd = _checked(mean, "mean", x, spec), _checked(rstd, "rstd", x, spec)
    given_stats = mean is not None
    with _placed(x):
        if (mean is None or rstd is None) and _recording():
            mean, rstd = _statistics_differentiable(x, spec, centred=True)
        dx, dweight, dbias = _math.layer_norm_grads(
            dy, x, weight, spec, mean, rstd, matvec=_matvec(x, spec), given_stats=given_stats
        )
        return _math.cast_to(dx, x.dtype), _math.cast_to(dweight, x.dtype), _math.cast_to(dbias, x.dtype)


def rms_norm_backward(dy: Tensor, x: Tensor, weight: Tensor, spec: NormSpec, rstd: Tensor) -> tuple[Tensor, Tensor]:
    """(dx, dweight) in x's dtype; rstd is recomputed when None (`_statistics_differentiable`)."""
    x = _x(x, spec)
    dy, weight = _checked(dy, "dy", x, spec), _checked(weight, "weight", x, spec)
    rstd = _checked(rstd, "rstd", x, spec)
    with _placed(x):
        if rstd is None and _recording():
            (rstd,) = _statistics_differentiable(x, spec, centred=False)
        dx, dweight = _math.rms_norm_grads(dy, x, weight, spec, rstd)
        return _math.cast_to(dx, x.dtype), _math.cast_to(dweight, x.dtype)


# -- gradients ---------------------------------------------------------------------------------------------------


def _layer_norm_differentiable(x: Tensor, weight: Tensor, bias: Tensor, spec: NormSpec) -> tuple[Tensor, ...]:
    """layer_norm_forward wrapped in tf.custom_gradient; weight/bias take part only when given."""

    @tf.custom_gradient
    def op(x: Tensor, *params: Tensor) -> tuple[tuple[Tensor, ...], Callable[..., Any]]:
        w, b = _split(params, weight is not None, bias is not None)
        y, mean, rstd = _math.layer_norm_forward(x, w, b, spec)

        def grad(dy: Tensor, dmean: Tensor = None, drstd: Tensor = None) -> tuple[Tensor, ...]:
            dy, dmean, drstd = _dense(dy), _dense(dmean), _dense(drstd)
            with _placed(x):
                dx, dweight, dbias = _math.layer_norm_grads(
                    dy, x, w, spec, mean, rstd, dmean, drstd, matvec=_matvec(x, spec)
                )
                return _input_grads(x, dx, ((w, dweight), (b, dbias)))

        return (y, mean, rstd), grad

    return op(x, *(p for p in (weight, bias) if p is not None))


def _rms_norm_differentiable(x: Tensor, weight: Tensor, spec: NormSpec) -> tuple[Tensor, ...]:
    """rms_norm_forward wrapped in tf.custom_gradient; weight takes part only when given."""

    @tf.custom_gradient
    def op(x: Tensor, *params: Tensor) -> tuple[tuple[Tensor, ...], Callable[..., Any]]:
        (w,) = params or (None,)
        y, rstd = _math.rms_norm_forward(x, w, spec)

        def grad(dy: Tensor, drstd: Tensor = None) -> tuple[Tensor, ...]:
            dy, drstd = _dense(dy), _dense(drstd)
            with _placed(x):
                dx, dweight = _math.rms_norm_grads(dy, x, w, spec, rstd, drstd)
                return _input_grads(x, dx, ((w, dweight),))

        return (y, rstd), grad

    return op(x, *(() if weight is None else (weight,)))


def _statistics_differentiable(x: Tensor, spec: NormSpec, *, centred: bool) -> tuple[Tensor, ...]:
    """(mean, rstd) of layer_norm (``centred``), or (rstd,) of rms_norm, for an explicit backward a tape records.

    Their gradient is the forward's (`_math.statistics_grad`): the plain ops' goes through TensorFlow's derivative of
    rsqrt, rstd**3, out of float32's range for rows of spread beyond 1e+-13 (eps = 0), where the derivatives of the
    backward's results are finite. Unrecorded calls recompute them by the plain ops, in `_math`'s grads.
    """

    @tf.custom_gradient
    def op(xc: Tensor) -> tuple[tuple[Tensor, ...], Callable[..., Any]]:
        mean, rstd = _math.layer_norm_stats(xc, spec) if centred else (None, _math.rms_norm_stats(xc, spec))

        def grad(*upstream: Tensor) -> Tensor:
            dmean, drstd = (_dense(u) for u in upstream) if centred else (None, _dense(upstream[0]))
            with _placed(xc):
                return _math.statistics_grad(xc, mean, rstd, spec, dmean, drstd)

        return ((mean, rstd) if centred else (rstd,)), grad

    return op(_math.compute(x, spec))


def _dense(upstream: Tensor) -> Tensor:
    """An upstream gradient as a dense tensor (None stays None): a tf.gather of an output sends tf.IndexedSlices."""
    return upstream if upstream is None or isinstance(upstream, tf.Tensor) else tf.convert_to_tensor(upstream)


def _split(params: tuple[Tensor, ...], has_weight: bool, has_bias: bool) -> tuple[Tensor, Tensor]:
    it = iter(params)
    return (next(it) if has_weight else None), (next(it) if has_bias else None)


def _input_grads(x: Tensor, dx: Tensor, params: tuple[tuple[Tensor, Tensor], ...]) -> tuple[Tensor, ...]:
    """The gradients custom_gradient returns: dx in x's dtype, then one per given parameter in its dtype."""
    return (_math.cast_to(dx, x.dtype), *(_math.cast_to(d, p.dtype) for p, d in params if p is not None))


MATVEC_MAX_ELEMENTS = 1 << 16
"""The longest row (known when traced) whose mean(dy * weight) the backward takes as a matrix-vector product.

The product sums a row with too few accumulators: layer_norm's dx was 2.1 times the float32 tolerance at 2**20
values under XLA and 1.5 times at 2**21 eagerly, 0.5 at 2**19 (a dy of mean 1); `_sums.row_mean` cascades."""


def _matvec(x: Tensor, spec: NormSpec) -> bool:
    """Whether the backward takes mean(dy * weight) as a matrix-vector product.

    For trailing axes of rows of at most `MATVEC_MAX_ELEMENTS` values known when traced, on the CPU.
    """
    known = [size for size in spec.normalized_shape if size is not None]
    short = len(known) == len(spec.normalized_shape) and math.prod(known) <= MATVEC_MAX_ELEMENTS
    return short and spec.is_trailing and spec.dtype == spec.compute_dtype and _device_kind(x.device) == "cpu"


def _recording() -> bool:
    """True when a gradient could be asked for: inside a graph, or eagerly under an active tape or accumulator."""
    return not tf.executing_eagerly() or record.could_possibly_record()


# -- tensors and devices -------------------------------------------------------------------------------------------


def _x(x: Tensor, spec: NormSpec) -> Tensor:
    """`_tensor` of x, with a run-time check that its normalized size, if the core could not see it, is not 0."""
    return _sizes.nonempty(_tensor(x), spec)


def _checked(t: Tensor, role: _sizes.Role, x: Tensor, spec: NormSpec) -> Tensor:
    """`_tensor` of t, an argument of x in ``role``, with a run-time check of the sizes the core could not see."""
    return _sizes.checked(_tensor(t), role, x, spec)


def _tensor(x: Tensor) -> Tensor:
    """Return x as a tf.Tensor; a tensor or None as is.

    A tf.Variable or Keras 3 variable is read, and an active tape records the read, so gradients reach it.
    """
    return x if x is None or isinstance(x, tf.Tensor) else tf.convert_to_tensor(x)


def _variable(x: Any) -> Any:
    """The tf.Variable inside a Keras 3 variable (owned by this backend through its tf Tensor base class); else x."""
    return x if isinstance(x, (tf.Tensor, tf.Variable)) else x.value


def _placed(x: Tensor) -> contextlib.AbstractContextManager[Any]:
    """Run on x's device: eagerly, TensorFlow would otherwise prefer a GPU, or its first CPU, whatever x's."""
    if _device_count() == 1 or not x.device or not tf.executing_eagerly():
        return contextlib.nullcontext()
    return tf.device(x.device)


@lru_cache(maxsize=1)
def _device_counts() -> dict[str, int]:
    """Device kind ("cpu", "gpu", "tpu") -> how many logical devices of it TensorFlow has, for the kinds it has."""
    counts = Counter(_DEVICE_KINDS.get(d.device_type) for d in tf.config.list_logical_devices())
    return {kind: counts[kind] for kind in ("cpu", "gpu", "tpu") if counts[kind]}


@lru_cache(maxsize=1)
def _device_kinds() -> tuple[str, ...]:
    return tuple(_device_counts())


@lru_cache(maxsize=1)
def _device_count() -> int:
    return sum(_device_counts().values())


@lru_cache(maxsize=64)
def _device_name(device: str) -> str:
    kind = _device_kind(device)
    if not device or _device_counts().get(kind, 0) < 2:
        return kind
    return f"{kind}:{tf.DeviceSpec.from_string(device).device_index or 0}"


@lru_cache(maxsize=64)
def _device_kind(device: str) -> str:
    if not device:
        kinds = _device_kinds()
        return "gpu" if "gpu" in kinds else kinds[0]
    kind = tf.DeviceSpec.from_string(device).device_type
    return _DEVICE_KINDS.get(kind or "CPU", str(kind).lower())
