"""Every bad input gets its typed error and message from the core, before any backend runs."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from registered_plugin import registered

import layernorm
from layernorm import ArgumentError, BackendError, DTypeError, LayerNormError, ShapeError
from layernorm_core import check_forward

X = np.zeros((2, 3, 4), np.float32)
W4 = np.ones(4, np.float32)

BAD_FORWARD = [
    pytest.param(
        dict(weight=np.ones(3, np.float32)),
        ShapeError,
        r"weight must have shape \(4,\) .*got \(3,\)",
        id="weight-shape",
    ),
    pytest.param(
        dict(bias=np.ones((1, 4), np.float32)),
        ShapeError,
        r"bias must have shape \(4,\) .*got \(1, 4\)",
        id="bias-shape",
    ),
    pytest.param(
        dict(axis=(1, 2), weight=np.ones((4, 3), np.float32)),
        ShapeError,
        r"weight must have shape \(3, 4\)",
        id="weight-order",
    ),
    pytest.param(dict(axis=3), ShapeError, "axis 3 is out of range for an array of 3 dimension", id="axis-range"),
    pytest.param(dict(axis=-4), ShapeError, "axis -4 is out of range", id="axis-range-negative"),
    pytest.param(
        dict(axis=(1, -2)), ShapeError, r"axis \(1, -2\) names the same axis more than once", id="axis-repeated"
    ),
    pytest.param(dict(axis=()), ShapeError, "axis must name at least one axis", id="axis-empty"),
    pytest.param(dict(axis=1.5), ArgumentError, "axis must be an int or a tuple of ints", id="axis-float"),
    pytest.param(dict(axis=True), ArgumentError, "axis must be an int or a tuple of ints", id="axis-bool"),
    pytest.param(dict(eps=-1e-5), ArgumentError, "eps must be finite and >= 0; got -1e-05", id="eps-negative"),
    pytest.param(dict(eps=math.nan), ArgumentError, "eps must be finite and >= 0; got nan", id="eps-nan"),
    pytest.param(dict(eps=math.inf), ArgumentError, "eps must be finite and >= 0; got inf", id="eps-inf"),
    pytest.param(dict(eps="0.1"), ArgumentError, "eps must be a real number", id="eps-str"),
    pytest.param(
        dict(eps=np.asarray(1e-5)),
        ArgumentError,
        r"eps must be a real number \(an array, or a traced value, is not: eps is fixed when a call is compiled\)",
        id="eps-0d-array",
    ),
    pytest.param(dict(eps=10**400), ArgumentError, "eps must be finite and >= 0; got inf", id="eps-int-beyond-float"),
    pytest.param(
        dict(eps=1e308),
        ArgumentError,
        "eps must be finite in float32, the compute dtype of a float32 x",
        id="eps-inf-in-f32",
    ),
    pytest.param(
        dict(return_stats="no"), ArgumentError, "return_stats must be True or False; got 'no'", id="stats-str"
    ),
    pytest.param(dict(return_stats=None), ArgumentError, "return_stats must be True or False", id="stats-none"),
    pytest.param(dict(return_stats=1), ArgumentError, "return_stats must be True or False; got 1", id="stats-int"),
    pytest.param(
        dict(weight=np.ones(4, np.int32)),
        DTypeError,
        "weight must have dtype float32 for a float32 x; got int32",
        id="weight-int",
    ),
    pytest.param(
        dict(bias=np.ones(4, np.float64)),
        DTypeError,
        "bias must have dtype float32 for a float32 x; got float64",
        id="bias-float64",
    ),
    pytest.param(
        dict(weight=[1.0, 1.0, 1.0, 1.0]),
        DTypeError,
        "weight must be an array with .shape and .dtype; got list",
        id="weight-list",
    ),
    pytest.param(
        dict(backend="nope"), BackendError, "unknown backend 'nope'; registered backends:", id="backend-unknown"
    ),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD_FORWARD)
def test_layer_norm_bad_input(kwargs: dict, error: type[LayerNormError], message: str) -> None:
    with pytest.raises(error, match=message):
        layernorm.layer_norm(X, **kwargs)


def test_rms_norm_return_stats_must_be_a_bool() -> None:
    with pytest.raises(ArgumentError, match="return_stats must be True or False; got 'yes'"):
        layernorm.rms_norm(X, return_stats="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("valid", "invalid"),
    [
        pytest.param(dict(axis=(0, 1)), dict(axis=(0, True)), id="bool-in-axis-tuple"),
        pytest.param(dict(axis=(0, 1)), dict(axis=(0, 1.0)), id="float-in-axis-tuple"),
        pytest.param(dict(axis=1), dict(axis=True), id="bool-axis"),
        pytest.param(dict(eps=1), dict(eps=True), id="bool-eps"),
    ],
)
def test_invalid_input_equal_to_a_valid_one_is_still_rejected(valid: dict, invalid: dict) -> None:
    """(0, True) == (0, 1) and True == 1: a call that passed must not let its look-alike past the checks."""
    layernorm.layer_norm(X, **valid)
    with pytest.raises(ArgumentError):
        layernorm.layer_norm(X, **invalid)


ZERO_D = {
    "numpy": "numpy.array",
    "torch": "torch.tensor",
    "jax": "jax.numpy.array",
    "tensorflow": "tensorflow.constant",
}
"""The function that makes a 0-d array, by framework."""


@pytest.mark.parametrize("value", [True, 1.0, [1], [[1]]], ids=["bool", "float", "1-d", "2-d"])
@pytest.mark.parametrize("framework", list(ZERO_D))
def test_a_bool_float_or_array_axis_of_any_framework_is_an_argument_error(framework: str, value: Any) -> None:
    """A 0-d array holding True or 1.0, or an array of one int, is no axis, as True, 1.0 and [1] are not: torch's
    tensor(True) and tensor([1]) passed as axis 1, and TensorFlow's constants raised a bare AttributeError from
    their ``__index__``."""
    module, _, name = ZERO_D[framework].rpartition(".")
    make = getattr(pytest.importorskip(module), name)
    axis = make(value)
    with pytest.raises(ArgumentError, match="axis must be an int or a tuple of ints"):
        layernorm.layer_norm(X, axis=axis)
    with pytest.raises(ArgumentError, match="axis must be an int or a tuple of ints"):
        layernorm.rms_norm(X, axis=(0, axis))
    assert layernorm.layer_norm(X, axis=make(1)).shape == X.shape


class MutableAxis:
    """An axis as a 0-d integer tensor is one: ``__index__`` gives its value, which can change in place, while it
    hashes by identity."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value


@pytest.mark.parametrize("in_tuple", [False, True], ids=["axis", "in-tuple"])
def test_an_axis_changed_in_place_is_checked_again(in_tuple: bool) -> None:
    """A call that passed with the axis must not answer for the value it holds later."""
    held = MutableAxis(1)
    axis = (0, held) if in_tuple else held
    layernorm.layer_norm(X, axis=axis)
    held.value = 7
    with pytest.raises(ShapeError, match=r"axis .*7.* is out of range"):
        layernorm.layer_norm(X, axis=axis)


@pytest.mark.parametrize(
    ("x", "message"),
    [
        pytest.param(np.zeros((2, 4), np.int64), "x must have a floating dtype .*; got int64", id="int64"),
        pytest.param(np.zeros((2, 4), np.bool_), "x must have a floating dtype .*; got bool", id="bool"),
        pytest.param(np.zeros((2, 4), np.complex64), "x must have a floating dtype .*; got complex64", id="complex64"),
    ],
)
@pytest.mark.parametrize("op", [layernorm.layer_norm, layernorm.rms_norm])
def test_non_float_x_is_dtype_error(op: object, x: np.ndarray, message: str) -> None:
    with pytest.raises(DTypeError, match=message):
        op(x)  # type: ignore[operator]


@pytest.mark.parametrize("shape", [(2, 0), (0, 0), (3, 0, 4)])
def test_normalized_size_zero_is_shape_error(shape: tuple[int, ...]) -> None:
    with pytest.raises(ShapeError, match="the normalized size is 0"):
        layernorm.layer_norm(np.zeros(shape, np.float32), axis=1)


def test_zero_dim_x_is_shape_error() -> None:
    with pytest.raises(ShapeError, match="axis -1 is out of range for an array of 0 dimension"):
        layernorm.rms_norm(np.float32(1.0))


def test_errors_are_also_builtin_exceptions() -> None:
    assert issubclass(ShapeError, ValueError) and issubclass(ArgumentError, ValueError)
    assert issubclass(DTypeError, TypeError)
    assert issubclass(BackendError, RuntimeError) and issubclass(layernorm.DeviceError, RuntimeError)


def test_not_installed_backend_names_its_extra(recording: list[str]) -> None:
    from layernorm_core import BackendDeclaration, hookimpl

    class Missing:
        @hookimpl
        def layernorm_backends(self) -> list[BackendDeclaration]:
            return [
                BackendDeclaration(name="missing", implementation="x", requires=("no_such_framework_zz",), extra="zz")
            ]

    with registered(Missing(), "missing-plugin"):
        with pytest.raises(BackendError, match="no_such_framework_zz is not installed: install no_such_framework_zz"):
            layernorm.layer_norm(X, backend="missing")
        with pytest.raises(BackendError, match="backend 'missing' is not available"):
            layernorm.use("missing")


def test_checks_run_before_the_backend(recording: list[str]) -> None:
    with pytest.raises(ShapeError):
        layernorm.layer_norm(X, weight=np.ones(3, np.float32), backend="recording")
    assert recording == []


BAD_BACKWARD = [
    pytest.param(
        dict(dy=np.zeros((2, 3), np.float32)),
        ShapeError,
        r"dy must have x's shape \(2, 3, 4\); got \(2, 3\)",
        id="dy-shape",
    ),
    pytest.param(
        dict(dy=np.zeros((2, 3, 4), np.float64)),
        DTypeError,
        "dy must have x's dtype float32; got float64",
        id="dy-dtype",
    ),
    pytest.param(
        dict(mean=np.zeros((2, 3, 1), np.float32)), ArgumentError, "pass both mean and rstd, or neither", id="mean-only"
    ),
    pytest.param(
        dict(mean=np.zeros((2, 3), np.float32), rstd=np.zeros((2, 3), np.float32)),
        ShapeError,
        r"mean must have shape \(2, 3, 1\); got \(2, 3\)",
        id="stats-shape",
    ),
    pytest.param(
        dict(mean=np.zeros((2, 3, 1), np.float64), rstd=np.zeros((2, 3, 1), np.float64)),
        DTypeError,
        "mean must have dtype float32; got float64",
        id="stats-dtype",
    ),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD_BACKWARD)
def test_layer_norm_backward_bad_input(kwargs: dict, error: type[LayerNormError], message: str) -> None:
    dy = kwargs.pop("dy", np.zeros_like(X))
    with pytest.raises(error, match=message):
        layernorm.layer_norm_backward(dy, X, **kwargs)


def test_rms_norm_backward_takes_no_mean() -> None:
    with pytest.raises(TypeError):
        layernorm.rms_norm_backward(np.zeros_like(X), X, mean=np.zeros((2, 3, 1), np.float32))  # type: ignore[call-arg]


def test_half_x_accepts_float32_params() -> None:
    x = np.ones((2, 4), np.float16)
    y = layernorm.layer_norm(x, W4, W4)
    assert y.dtype == np.float16
    with pytest.raises(DTypeError, match="weight must have dtype float16 or float32 for a float16 x; got float64"):
        layernorm.layer_norm(x, W4.astype(np.float64))


@pytest.mark.parametrize(
    ("x_dtype", "weight_dtype", "bias_dtype", "mixed"),
    [
        (np.float16, np.float16, np.float16, False),
        (np.float16, np.float32, None, True),
        (np.float16, None, np.float32, True),
        (np.float16, None, None, False),
        (np.float32, np.float32, np.float32, False),
    ],
)
def test_spec_says_whether_params_are_mixed_precision(
    x_dtype: type, weight_dtype: type | None, bias_dtype: type | None, mixed: bool
) -> None:
    params = [None if dt is None else np.ones(4, dt) for dt in (weight_dtype, bias_dtype)]
    spec = check_forward("layer_norm", np.ones((2, 4), x_dtype), *params, -1, 1e-5)
    assert spec.mixed_params is mixed
