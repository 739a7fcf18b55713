"""layernorm.keras layers on Keras's JAX, torch and NumPy backends: outputs, gradients and training, against the
reference (NumPy: outputs only).

Keras picks its backend once, when it is imported (``KERAS_BACKEND``), so the checks run in a child pytest per
backend, started by `test_keras_backend_tests_pass_in_a_child_process`, which fails unless every check passed
there. In this (parent) process the checks skip, saying so. test_tensorflow_keras.py covers the TensorFlow backend.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
from child_pytest import assert_child_passes

keras = pytest.importorskip("keras")

CHILD_VARIABLE = "LAYERNORM_TEST_KERAS_BACKEND"
CHILD_TESTS = {"jax": 16, "torch": 16, "numpy": 6}
"""How many tests pass in each child."""
CHILD_SKIPS = {"numpy": "layers_match_the_reference or fit_trains_like"}
"""The tests a child deselects: Keras's NumPy backend has no autodiff and no fit."""
KERAS_BACKEND = keras.backend.backend()
in_child = pytest.mark.skipif(
    os.environ.get(CHILD_VARIABLE) != KERAS_BACKEND,
    reason="runs in a child with KERAS_BACKEND=jax, torch or numpy (test_keras_backend_tests_pass_in_a_child_process)",
)

import layernorm  # noqa: E402
import layernorm.keras as lk  # noqa: E402
from layernorm_core import check_forward, reference  # noqa: E402
from layernorm_core.tolerances import error_ratio, gradient_scale, row_condition, tolerance  # noqa: E402

SHAPE = (4, 5, 6)
AXES = [pytest.param(-1, id="last"), pytest.param([1, 2], id="two-trailing"), pytest.param(1, id="middle")]


@pytest.mark.parametrize("backend", ["jax", "torch", "numpy"])
def test_keras_backend_tests_pass_in_a_child_process(backend: str) -> None:
    """Every check of this module passes under ``KERAS_BACKEND=backend`` (on NumPy, those it can run)."""
    pytest.importorskip(backend)
    env = {"KERAS_BACKEND": backend, CHILD_VARIABLE: backend}
    skipped = " or ".join(("in_a_child_process", *filter(None, [CHILD_SKIPS.get(backend)])))
    assert_child_passes(__file__, env, deselect=f"({skipped})", tests=CHILD_TESTS[backend])


def _x(seed: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * 2 + 0.5).astype(np.float32)


def _built(layer: Any, seed: int = 1) -> Any:
    """``layer`` built for SHAPE, with random weights."""
    layer.build(SHAPE)
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in layer.get_weights()])
    return layer


def _grads(layer: Any, x: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """(dx, gradients of the trainable weights) of ``sum(layer(x) * dy)``, by the backend's own autodiff."""
    if KERAS_BACKEND == "jax":
        import jax
        import jax.numpy as jnp

        frozen = [v.value for v in layer.non_trainable_variables]

        def loss(trainable: list[Any], inputs: Any) -> Any:
            return jnp.sum(layer.stateless_call(trainable, frozen, inputs)[0] * dy)

        weight_grads, dx = jax.grad(loss, argnums=(0, 1))([v.value for v in layer.trainable_variables], x)
        return np.asarray(dx), [np.asarray(g) for g in weight_grads]
    import torch

    inputs = torch.tensor(x, requires_grad=True)
    (layer(inputs) * torch.tensor(dy)).sum().backward()
    assert inputs.grad is not None
    return inputs.grad.numpy(), [v.value.grad.numpy() for v in layer.trainable_variables]


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_call_and_stateless_call_take_numpy_input(op: str) -> None:
    """As Keras's own layers, ``call`` and ``stateless_call`` convert a NumPy x (``layer(x)`` converts it before
    ``call``); they raised DTypeError, x a NumPy array beside weights of Keras's backend. Runs on the backend Keras
    has here, and on JAX and torch in the child processes."""
    layer = _built(lk.LayerNormalization() if op == "layer_norm" else lk.RMSNormalization())
    x = _x(0)
    expected = keras.ops.convert_to_numpy(layer(x))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.call(x)), expected)
    outputs, _ = layer.stateless_call([v.value for v in layer.trainable_variables], [], x)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(outputs), expected)


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_float64_policy_keeps_a_float64_input(op: str) -> None:
    """Under a float64 policy a float64 x is normalized in float64 and y has the dtype of Keras's own layer's
    (float32 on JAX without x64), within its tolerance. On Keras's NumPy backend, keras.ops.convert_to_tensor
    turned the float64 array into float32 first: y was float32 (RMSNormalization; Keras's float64) or 1e-6 off."""
    layers = (lk.LayerNormalization, keras.layers.LayerNormalization)
    if op == "rms_norm":
        layers = (lk.RMSNormalization, keras.layers.RMSNormalization)
    ours = _built(layers[0](dtype="float64"))
    theirs = layers[1](dtype="float64")
    theirs.build(SHAPE)
    theirs.set_weights(ours.get_weights())
    x = _x(0).astype(np.float64) / 3
    y = ours(x)
    dtype = keras.backend.standardize_dtype(theirs(x).dtype)
    assert keras.backend.standardize_dtype(y.dtype) == dtype
    x, weights = x.astype(dtype), [w.astype(dtype) for w in ours.get_weights()]  # what JAX without x64 holds
    spec = check_forward(op, x, weights[0], None, tuple(ours.axis), ours.epsilon)
    expected = getattr(reference, op)(x, *weights, spec)[0]
    cond = row_condition(x, spec)
    assert error_ratio(keras.ops.convert_to_numpy(y), expected, tolerance(dtype, "output"), cond) <= 1


@in_child
@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_layers_match_the_reference(op: str, axis: Any) -> None:
    """Forward and gradients (x and every weight) of our layer with random weights, within the float32 tolerances;
    y is a tensor of Keras's backend."""
    layer = _built(lk.LayerNormalization(axis=axis) if op == "layer_norm" else lk.RMSNormalization(axis=axis))
    x, dy = _x(0), _x(2)
    y = layer(x)
    assert type(y) is type(keras.ops.convert_to_tensor(x))
    weights = layer.get_weights()  # gamma and beta, or scale
    spec = check_forward(op, x, weights[0], None, tuple(layer.axis), layer.epsilon)
    expected_y, *_, rstd = getattr(reference, op)(x, *weights, spec)
    cond = row_condition(x, spec)
    assert error_ratio(keras.ops.convert_to_numpy(y), expected_y, tolerance("float32", "output"), cond) <= 1
    dx, weight_grads = _grads(layer, x, dy)
    expected = getattr(reference, f"{op}_backward")(dy, x, weights[0], spec)
    scales = (gradient_scale(dy, weights[0], rstd, spec), *[None] * len(weights))
    for got, ref, scale in zip((dx, *weight_grads), expected, scales, strict=True):
        assert error_ratio(got, ref, tolerance("float32", "grad"), cond, scale=scale) <= 1


@in_child
@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit_compile"])
def test_fit_trains_like_keras_own_layers(policy: str, jit: bool) -> None:
    """Two SGD steps of a model with our layers give the weights of the same model with Keras's own layers
    (same initial weights), under the policy; the output has the policy's compute dtype."""
    keras.mixed_precision.set_global_policy(policy)
    try:
        x, target = _x(3, (8, 5, 6)), _x(4, (8, 5, 6))
        trained = []
        for norms in (
            (lk.LayerNormalization, lk.RMSNormalization),
            (keras.layers.LayerNormalization, keras.layers.RMSNormalization),
        ):
            keras.utils.set_random_seed(0)
            model = keras.Sequential(
                [
                    keras.Input((5, 6)),
                    keras.layers.Dense(6),
                    norms[0](),
                    norms[1](),
                    keras.layers.Dense(6, dtype="float32"),
                ]
            )
            model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=jit)
            model.fit(x, target, batch_size=8, epochs=2, verbose=0, shuffle=False)
            assert keras.backend.standardize_dtype(model.layers[1](x).dtype) == model.layers[1].compute_dtype
            trained.append([w.astype(np.float32) for w in model.get_weights()])
        for ours, theirs in zip(*trained, strict=True):
            np.testing.assert_allclose(ours, theirs, rtol=2e-2 if policy == "mixed_bfloat16" else 1e-4, atol=1e-3)
    finally:
        keras.mixed_precision.set_global_policy("float32")


@in_child
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_layers_run_on_keras_backend_whatever_engine_is_in_force(op: str) -> None:
    """Under using("numpy") the layers run Keras's backend (as Keras's own layers do), not the NumPy engine."""
    layer = _built(lk.LayerNormalization() if op == "layer_norm" else lk.RMSNormalization())
    x = _x(0)
    expected = keras.ops.convert_to_numpy(layer(x))
    with layernorm.using("numpy"):
        y = layer(x)
    assert type(y) is type(keras.ops.convert_to_tensor(x))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(y), expected)
