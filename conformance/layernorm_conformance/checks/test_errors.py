"""Errors: every bad input of the spec raises the spec's error class, with the same message on every backend.

Each case is run twice: with NumPy arrays (the core's message) and with the target's arrays on its device; and
once more inside each tracer of the target's framework (torch.compile, jax.jit, tf.function), which must let the
error out as the spec's class.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import layernorm
from layernorm_conformance.autodiff import framework_of
from layernorm_conformance.data import cast
from layernorm_conformance.targets import Target
from layernorm_conformance.tracing import MAPPING_TRACERS, tracer_names, wrapper
from layernorm_core.errors import ArgumentError, BackendError, DeviceError, DTypeError, ShapeError

Make = Callable[[np.ndarray], Any]
"""Turns a NumPy array into the array type under test (identity for the core's reference message)."""


@dataclass(frozen=True)
class BadCall:
    """A call the spec rejects, and the error class it must raise."""

    name: str
    error: type[Exception]
    call: Callable[[Make, str], Any]


def _f(*shape: int, dtype: str = "float32") -> np.ndarray:
    return cast(np.linspace(-1.0, 1.0, int(np.prod(shape))).reshape(shape), dtype)


BAD_CALLS = (
    BadCall("x-int32", DTypeError, lambda a, b: layernorm.layer_norm(a(np.ones((2, 3), np.int32)), backend=b)),
    BadCall("x-bool", DTypeError, lambda a, b: layernorm.rms_norm(a(np.ones((2, 3), bool)), backend=b)),
    BadCall("x-complex", DTypeError, lambda a, b: layernorm.layer_norm(a(np.ones((2, 3), np.complex64)), backend=b)),
    BadCall("x-not-array", DTypeError, lambda a, b: layernorm.layer_norm([[1.0, 2.0]], backend=b)),
    BadCall("axis-out-of-range", ShapeError, lambda a, b: layernorm.layer_norm(a(_f(2, 3)), axis=2, backend=b)),
    BadCall("axis-negative-out", ShapeError, lambda a, b: layernorm.rms_norm(a(_f(2, 3)), axis=-3, backend=b)),
    BadCall("axis-repeated", ShapeError, lambda a, b: layernorm.layer_norm(a(_f(2, 3)), axis=(1, -1), backend=b)),
    BadCall("axis-empty", ShapeError, lambda a, b: layernorm.layer_norm(a(_f(2, 3)), axis=(), backend=b)),
    BadCall("axis-float", ArgumentError, lambda a, b: layernorm.layer_norm(a(_f(2, 3)), axis=1.0, backend=b)),  # type: ignore[arg-type]
    BadCall("axis-bool", ArgumentError, lambda a, b: layernorm.layer_norm(a(_f(2, 3)), axis=True, backend=b)),
    BadCall("normalized-size-0", ShapeError, lambda a, b: layernorm.layer_norm(a(_f(3, 0)), backend=b)),
    BadCall("scalar-x", ShapeError, lambda a, b: layernorm.layer_norm(a(_f()), backend=b)),
    BadCall("eps-negative", ArgumentError, lambda a, b: layernorm.layer_norm(a(_f(2, 3)), eps=-1e-5, backend=b)),
    BadCall("eps-nan", ArgumentError, lambda a, b: layernorm.rms_norm(a(_f(2, 3)), eps=float("nan"), backend=b)),
    BadCall("eps-inf", ArgumentError, lambda a, b: layernorm.layer_norm(a(_f(2, 3)), eps=float("inf"), backend=b)),
    BadCall("eps-string", ArgumentError, lambda a, b: layernorm.layer_norm(a(_f(2, 3)), eps="1e-5", backend=b)),  # type: ignore[arg-type]
    BadCall("weight-shape", ShapeError, lambda a, b: layernorm.layer_norm(a(_f(2, 3)), a(_f(2)), backend=b)),
    BadCall("weight-rank", ShapeError, lambda a, b: layernorm.rms_norm(a(_f(2, 3)), a(_f(1, 3)), backend=b)),
    BadCall(
        "bias-shape",
        ShapeError,
        lambda a, b: layernorm.layer_norm(a(_f(2, 3, 4)), None, a(_f(4)), axis=(1, 2), backend=b),
    ),
    BadCall(
        "weight-dtype",
        DTypeError,
        lambda a, b: layernorm.layer_norm(a(_f(2, 3)), a(_f(3, dtype="float16")), backend=b),
    ),
    BadCall(
        "half-weight-float64",
        DTypeError,
        lambda a, b: layernorm.rms_norm(a(_f(2, 3, dtype="float16")), a(_f(3, dtype="float64")), backend=b),
    ),
    BadCall("dy-shape", ShapeError, lambda a, b: layernorm.layer_norm_backward(a(_f(2, 4)), a(_f(2, 3)), backend=b)),
    BadCall(
        "dy-dtype",
        DTypeError,
        lambda a, b: layernorm.rms_norm_backward(a(_f(2, 3, dtype="float16")), a(_f(2, 3)), backend=b),
    ),
    BadCall(
        "mean-without-rstd",
        ArgumentError,
        lambda a, b: layernorm.layer_norm_backward(a(_f(2, 3)), a(_f(2, 3)), mean=a(_f(2, 1)), backend=b),
    ),
    BadCall(
        "stats-shape",
        ShapeError,
        lambda a, b: layernorm.layer_norm_backward(a(_f(2, 3)), a(_f(2, 3)), mean=a(_f(2)), rstd=a(_f(2)), backend=b),
    ),
    BadCall(
        "rstd-dtype",
        DTypeError,
        lambda a, b: layernorm.rms_norm_backward(
            a(_f(2, 3, dtype="float16")), a(_f(2, 3, dtype="float16")), rstd=a(_f(2, 1, dtype="float16")), backend=b
        ),
    ),
    BadCall("unknown-backend", BackendError, lambda a, b: layernorm.layer_norm(a(_f(2, 3)), backend="no-such-backend")),
)
"""Every bad input of docs/spec.md, with the class it raises."""


def _arrays_made(bad: BadCall) -> list[np.ndarray]:
    """The NumPy arrays the call builds, in the order it builds them."""
    made: list[np.ndarray] = []
    with contextlib.suppress(Exception):  # the call fails by design; only the arrays it builds are wanted
        bad.call(lambda array: _note(made, array), "numpy")
    return made


def _note(made: list[np.ndarray], array: np.ndarray) -> np.ndarray:
    made.append(array)
    return array


def _skip_undeclared(target: Target, bad: BadCall) -> None:
    needed = {str(a.dtype) for a in _arrays_made(bad) if str(a.dtype).startswith(("float", "bfloat"))}
    needed -= set(target.info.dtypes)
    if needed:
        pytest.skip(f"backend {target.backend!r} does not declare {sorted(needed)}")


def _raised(call: Callable[[], Any]) -> BaseException:
    try:
        call()
    except Exception as exc:
        return exc
    raise AssertionError("no error raised")


@pytest.mark.parametrize("bad", BAD_CALLS, ids=lambda c: c.name)
def test_bad_input(target: Target, bad: BadCall) -> None:
    """The target raises the spec's class, with the message the core gives for the same NumPy input."""
    _skip_undeclared(target, bad)
    expected = _raised(lambda: bad.call(lambda array: array, target.backend))
    assert type(expected) is bad.error, f"the core raises {type(expected).__name__}, the spec says {bad.error}"
    got = _raised(lambda: bad.call(lambda array: target.module.from_numpy(array, target.device), target.backend))
    assert type(got) is bad.error, f"{type(got).__name__}: {got} (expected {bad.error.__name__})"
    assert str(got) == str(expected)


def _framework(target: Target) -> str:
    return framework_of(target.module.from_numpy(_f(1), "cpu"))


def traced_bad_calls(target: Target, dtype: str | None) -> list[Any]:
    """Each tracer of the target's framework that takes any arguments x `BAD_CALLS`; one skip when there is none."""
    framework = _framework(target)
    names = [name for name in tracer_names(framework) if name not in MAPPING_TRACERS]
    if not names:
        reason = f"no tracing for {framework} arrays in layernorm_conformance.tracing"
        return [pytest.param(None, None, id="traced", marks=pytest.mark.skip(reason=reason))]
    return [pytest.param(name, bad, id=f"{name}-{bad.name}") for name in names for bad in BAD_CALLS]


@pytest.mark.conformance_params("tracer,bad", traced_bad_calls)
def test_bad_input_traced(target: Target, tracer: str, bad: BadCall) -> None:
    """Inside a traced function the target raises the spec's class, its message holding the core's.

    The tracer may add its own lines (AutoGraph names the frames of the traced function).
    """
    _skip_undeclared(target, bad)
    expected = _raised(lambda: bad.call(lambda array: array, target.backend))
    arrays = [target.module.from_numpy(a, target.device) for a in _arrays_made(bad)]
    wrap = wrapper(_framework(target), tracer)
    assert wrap is not None

    def call(*given: Any) -> Any:
        feed = iter(given)
        return bad.call(lambda _: next(feed), target.backend)

    got = _raised(lambda: wrap(call)(*arrays))
    assert type(got) is bad.error, f"{type(got).__name__}: {got} (expected {bad.error.__name__})"
    assert str(expected) in str(got)


def test_foreign_weight(target: Target) -> None:
    """A weight of another framework than x is a DTypeError (NumPy weights for a NumPy x are fine)."""
    if target.backend == "numpy" or target.module.from_numpy(_f(1), target.device).__class__ is np.ndarray:
        pytest.skip("x is a NumPy array: a NumPy weight is of the same framework")
    x = target.module.from_numpy(_f(2, 3), target.device)
    with pytest.raises(DTypeError):
        layernorm.layer_norm(x, _f(3), backend=target.backend)


def test_device_mismatch(target: Target) -> None:
    """A weight on the CPU for an x on an accelerator is a DeviceError."""
    if target.device == "cpu":
        pytest.skip("x is on the cpu: a device mismatch needs an accelerator")
    x = target.module.from_numpy(_f(2, 3), target.device)
    weight = target.module.from_numpy(_f(3), "cpu")
    with pytest.raises(DeviceError):
        layernorm.layer_norm(x, weight, backend=target.backend)
