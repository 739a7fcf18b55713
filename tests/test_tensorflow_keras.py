"""layernorm.keras layers against keras.layers.LayerNormalization / RMSNormalization: same arguments, same weights
(names, order, files), same outputs and gradients, save and load, on Keras's TensorFlow backend."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")
if keras.backend.backend() != "tensorflow":
    pytest.skip(
        f"Keras runs on {keras.backend.backend()}, these tests need its TensorFlow backend", allow_module_level=True
    )

import layernorm  # noqa: E402
import layernorm.keras as lk  # noqa: E402
from layernorm_core import check_forward, reference  # noqa: E402
from layernorm_core.tolerances import error_ratio, gradient_scale, row_condition, tolerance  # noqa: E402

AXES = [
    pytest.param(-1, id="last"),
    pytest.param([1, 2], id="two-trailing"),
    pytest.param(1, id="middle"),
    pytest.param([0, 2], id="non-adjacent"),
]
SHAPE = (4, 5, 6)


def _x(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * 2 + 0.5).astype(np.float32)


def _random_weights(layer: Any, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in layer.get_weights()])


def _pair(axis: Any, **kwargs: Any) -> tuple[Any, Any]:
    """A built Keras LayerNormalization with random weights, and ours with those weights loaded."""
    theirs = keras.layers.LayerNormalization(axis=axis, **kwargs)
    theirs.build(SHAPE)
    _random_weights(theirs)
    ours = lk.LayerNormalization(axis=axis, **kwargs)
    ours.build(SHAPE)
    ours.set_weights(theirs.get_weights())
    return theirs, ours


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize(("center", "scale"), [(True, True), (False, True), (True, False), (False, False)])
def test_keras_weights_load_and_outputs_match(axis: Any, center: bool, scale: bool) -> None:
    theirs, ours = _pair(axis, center=center, scale=scale)
    assert [w.name for w in ours.weights] == [w.name for w in theirs.weights]
    assert [w.shape for w in ours.weights] == [w.shape for w in theirs.weights]
    x = _x()
    got, expected = np.asarray(ours(x)), np.asarray(theirs(x))
    gamma = theirs.gamma.numpy() if scale else None
    beta = theirs.beta.numpy() if center else None
    spec = check_forward("layer_norm", x, gamma, beta, tuple(ours.axis), 1e-3)
    ref = reference.layer_norm(x, gamma, beta, spec)[0]
    cond = row_condition(x, spec)
    assert error_ratio(got, ref, tolerance("float32", "output"), cond) <= 1
    assert error_ratio(expected, ref, tolerance("float32", "output"), cond) <= 1


@pytest.mark.parametrize("axis", [pytest.param([1, -1], id="1,-1"), pytest.param([-1, 0, 1], id="-1,0,1")])
@pytest.mark.parametrize("layer", ["LayerNormalization", "RMSNormalization"])
def test_axes_of_mixed_signs_as_keras_lays_the_weights(layer: str, axis: list[int]) -> None:
    """Keras sorts [1, -1] as [-1, 1], so its weight has shape (x.shape[-1], x.shape[1]), and reshapes the weight
    to x's sizes along the axes in increasing order: ours does the same (Keras's own RMSNormalization, and its
    LayerNormalization over [-1, 0, 1], fail on these; its LayerNormalization over [1, -1] gives ours)."""
    ours = getattr(lk, layer)(axis=axis)
    ours.build(SHAPE)
    _random_weights(ours)
    assert all(tuple(w.shape) == tuple(SHAPE[a] for a in sorted(axis)) for w in ours.weights)
    x = _x()
    op = "layer_norm" if layer == "LayerNormalization" else "rms_norm"
    spec = check_forward(op, x, None, None, tuple(axis), ours.epsilon)
    weights = [w.reshape(spec.normalized_shape) for w in ours.get_weights()]
    expected = getattr(reference, op)(x, *weights, spec)[0]
    assert error_ratio(np.asarray(ours(x)), expected, tolerance("float32", "output"), row_condition(x, spec)) <= 1
    if layer == "LayerNormalization" and axis == [1, -1]:
        theirs = keras.layers.LayerNormalization(axis=axis)
        theirs.build(SHAPE)
        theirs.set_weights(ours.get_weights())
        np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(theirs(x)), rtol=1e-5, atol=1e-5)


def test_defaults_are_keras_defaults() -> None:
    ours, theirs = lk.LayerNormalization(), keras.layers.LayerNormalization()
    assert ours.epsilon == theirs.epsilon == 1e-3
    config = ours.get_config()
    assert set(config) == set(theirs.get_config())
    assert lk.RMSNormalization().epsilon == keras.layers.RMSNormalization().epsilon
    with pytest.raises(ValueError, match="RMSNormalization"):
        lk.LayerNormalization(rms_scaling=True)


@pytest.mark.parametrize("layer", ["LayerNormalization", "RMSNormalization"])
def test_epsilon_none_is_keras_config_epsilon(layer: str) -> None:
    """Keras's layers take epsilon=None as keras.config.epsilon(); ours raised an ArgumentError at the first call.
    The config keeps None, as Keras's."""
    x = _x(3)
    ours, keras_layer = getattr(lk, layer)(epsilon=None), getattr(keras.layers, layer)(epsilon=None)
    explicit = getattr(lk, layer)(epsilon=keras.config.epsilon())
    np.testing.assert_array_equal(np.asarray(ours(x)), np.asarray(explicit(x)))
    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(keras_layer(x)), rtol=1e-5, atol=1e-5)
    assert ours.get_config()["epsilon"] is keras_layer.get_config()["epsilon"] is None


def test_rms_normalization_takes_a_numpy_integer_axis_as_keras_does() -> None:
    x = _x(4)
    ours, keras_layer = lk.RMSNormalization(axis=np.int64(-1)), keras.layers.RMSNormalization(axis=np.int64(-1))
    np.testing.assert_array_equal(np.asarray(ours(x)), np.asarray(lk.RMSNormalization(axis=-1)(x)))
    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(keras_layer(x)), rtol=1e-5, atol=1e-5)


def test_rms_scaling_attribute_is_keras_default() -> None:
    """Keras's layer has ``rms_scaling`` (False); ours too, and its config says the same."""
    ours, theirs = lk.LayerNormalization(), keras.layers.LayerNormalization()
    assert ours.rms_scaling is theirs.rms_scaling is False
    assert ours.get_config()["rms_scaling"] is theirs.get_config()["rms_scaling"] is False
    with pytest.raises(ValueError, match="variance, not the root mean square"):
        lk.LayerNormalization(rms_scaling=True)


def test_float64_layer_keeps_float32_weights_for_half_input() -> None:
    """A float64 layer fed float16 x (not autocast) hands its weights over in float32, which layernorm accepts for
    half x, rather than rounded to float16: they are 1 + 1e-3 * N(0, 1), of which float16 keeps 3 digits."""
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((16, 64)) * 2 + 0.5).astype(np.float16)
    gamma, beta = 1 + 1e-3 * rng.standard_normal(64), 1e-3 * rng.standard_normal(64)
    ours = lk.LayerNormalization(dtype="float64")
    ours.build(x.shape)
    ours.set_weights([gamma, beta])
    got = np.asarray(ours(x))
    params = gamma.astype(np.float32), beta.astype(np.float32)
    np.testing.assert_array_equal(got, layernorm.layer_norm(x, *params, eps=1e-3).astype(np.float64))
    spec = check_forward("layer_norm", x, *params, -1, 1e-3)
    ref = reference.layer_norm(x, *params, spec)[0]
    assert error_ratio(got, ref, tolerance("float16", "output"), row_condition(x, spec)) <= 1


def test_keras_config_builds_our_layer() -> None:
    theirs = keras.layers.LayerNormalization(axis=[1, 2], epsilon=1e-4, center=False, gamma_initializer="zeros")
    ours = lk.LayerNormalization.from_config(theirs.get_config())
    assert (ours.axis, ours.epsilon, ours.center, ours.scale) == ([1, 2], 1e-4, False, True)
    ours.build(SHAPE)
    np.testing.assert_array_equal(ours.gamma.numpy(), np.zeros((5, 6), np.float32))


def _model(norm: Any) -> Any:
    return keras.Sequential([keras.Input((None, 6)), keras.layers.Dense(6, name="dense"), norm])


def test_weights_file_of_a_keras_model_loads_into_ours(tmp_path: Path) -> None:
    theirs = _model(keras.layers.LayerNormalization(name="norm"))
    _random_weights(theirs.get_layer("norm"))
    path = tmp_path / "theirs.weights.h5"
    theirs.save_weights(path)
    ours = _model(lk.LayerNormalization(name="norm"))
    ours.load_weights(path)
    for mine, original in zip(ours.weights, theirs.weights, strict=True):
        np.testing.assert_array_equal(mine.numpy(), original.numpy())
    x = _x(2)
    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(theirs(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer", ["LayerNormalization", "RMSNormalization"])
def test_model_saves_and_loads(tmp_path: Path, layer: str) -> None:
    norm = getattr(lk, layer)(axis=-1, epsilon=1e-4, name="norm")
    model = _model(norm)
    _random_weights(model.get_layer("norm"), seed=3)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.get_layer("norm")) is type(norm) and loaded.get_layer("norm").epsilon == 1e-4
    x = _x(4, (3, 7, 6))
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))


LOAD_WITHOUT_LAYERNORM = """
import sys, numpy as np, keras
custom = {
    "layernorm>LayerNormalization": keras.layers.LayerNormalization,
    "layernorm>RMSNormalization": keras.layers.RMSNormalization,
}
model = keras.models.load_model(sys.argv[1], custom_objects=custom)
assert "layernorm" not in sys.modules
assert [type(layer).__name__ for layer in model.layers] == ["LayerNormalization", "RMSNormalization"]
assert all(type(layer).__module__.startswith("keras.") for layer in model.layers)
np.save(sys.argv[3], keras.ops.convert_to_numpy(model(np.load(sys.argv[2]))))
"""


def test_saved_model_loads_without_layernorm_as_keras_layers(tmp_path: Path) -> None:
    model = keras.Sequential([keras.Input((4,)), lk.LayerNormalization(name="ln"), lk.RMSNormalization(name="rms")])
    _random_weights(model.get_layer("ln"), seed=12)
    x = _x(13, (3, 4))
    np.save(tmp_path / "x.npy", x)
    model.save(tmp_path / "ours.keras")
    script = tmp_path / "load.py"
    script.write_text(LOAD_WITHOUT_LAYERNORM)
    command = [sys.executable, str(script), *(str(tmp_path / n) for n in ("ours.keras", "x.npy", "y.npy"))]
    done = subprocess.run(
        command, env={**os.environ, "KERAS_BACKEND": "tensorflow"}, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), np.asarray(model(x)), rtol=1e-5, atol=1e-5)


SERVE_EXPORTED = """
import sys, numpy as np, tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])  # kept: its variables die with it
served = loaded.serve(np.load(sys.argv[2]))
assert "layernorm" not in sys.modules
np.save(sys.argv[3], served.numpy())
"""


def test_exported_model_serves_without_layernorm(tmp_path: Path) -> None:
    """``model.export`` (a TF SavedModel for serving): plain TensorFlow runs it, without layernorm's Python code."""
    model = keras.Sequential([keras.Input((4,)), lk.LayerNormalization(name="ln"), lk.RMSNormalization(name="rms")])
    _random_weights(model.get_layer("ln"), seed=14)
    x = _x(15, (3, 4))
    np.save(tmp_path / "x.npy", x)
    model.export(tmp_path / "served", verbose=False)
    script = tmp_path / "serve.py"
    script.write_text(SERVE_EXPORTED)
    command = [sys.executable, str(script), *(str(tmp_path / n) for n in ("served", "x.npy", "y.npy"))]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # the served graph is optimized as a whole (grappler, oneDNN): float32 roundings, not bits, may differ
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), np.asarray(model(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("axis", AXES)
def test_gradients_match_keras_layer(axis: Any) -> None:
    theirs, ours = _pair(axis)
    x = tf.constant(_x(5))
    dy = tf.constant(_x(6))
    results = []
    for layer in (theirs, ours):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
        results.append(tape.gradient(y, [x, *layer.trainable_weights], output_gradients=dy))
    spec = check_forward("layer_norm", x, theirs.gamma, None, tuple(ours.axis), 1e-3)
    expected = reference.layer_norm_backward(dy.numpy(), x.numpy(), theirs.gamma.numpy(), spec)
    rstd = reference.layer_norm(x.numpy(), None, None, spec)[2]
    scales = (gradient_scale(dy.numpy(), theirs.gamma.numpy(), rstd, spec), None, None)
    cond = row_condition(x.numpy(), spec)
    for got, keras_grad, ref, scale in zip(results[1], results[0], expected, scales, strict=True):
        np.testing.assert_allclose(got.numpy(), keras_grad.numpy(), rtol=1e-4, atol=1e-5)
        assert error_ratio(got.numpy(), ref, tolerance("float32", "grad"), cond, scale=scale) <= 1


def test_compiled_training_step_matches_keras() -> None:
    x, target = _x(7, (8, 3, 6)), _x(8, (8, 3, 6))
    losses = []
    for norm in (keras.layers.LayerNormalization(name="norm"), lk.LayerNormalization(name="norm")):
        keras.utils.set_random_seed(0)
        model = _model(norm)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=True)
        losses.append([float(model.train_on_batch(x, target)) for _ in range(3)])
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    assert losses[1][2] < losses[1][0]


@pytest.mark.parametrize("axis", [pytest.param(-1, id="last"), pytest.param([1, 2], id="two-trailing")])
def test_rms_normalization_matches_keras(axis: Any) -> None:
    theirs = keras.layers.RMSNormalization(axis=axis)
    theirs.build(SHAPE)
    _random_weights(theirs)
    ours = lk.RMSNormalization(axis=axis)
    ours.build(SHAPE)
    ours.set_weights(theirs.get_weights())
    assert [w.name for w in ours.weights] == [w.name for w in theirs.weights] == ["scale"]
    x = _x(9)
    spec = check_forward("rms_norm", x, theirs.scale.numpy(), None, tuple(ours.axis), 1e-6)  # type: ignore[arg-type]
    ref = reference.rms_norm(x, theirs.scale.numpy(), spec)[0]
    assert error_ratio(np.asarray(ours(x)), ref, tolerance("float32", "output")) <= 1
    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(theirs(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer", ["LayerNormalization", "RMSNormalization"])
def test_mixed_precision_output_dtype_matches_keras(layer: str) -> None:
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        ours, theirs = getattr(lk, layer)(), getattr(keras.layers, layer)()
        x = _x(10).astype(np.float16)
        got, expected = ours(x), theirs(x)
        assert got.dtype == expected.dtype == tf.float16
        assert [w.dtype for w in ours.weights] == [w.dtype for w in theirs.weights]
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(expected, np.float32), rtol=4e-3, atol=4e-3)
    finally:
        keras.config.set_dtype_policy(policy)


def test_functional_model_with_unknown_sizes_runs_in_tf_function() -> None:
    inputs = keras.Input((None, 6))
    model = keras.Model(inputs, lk.LayerNormalization()(keras.layers.Dense(6)(inputs)))
    run = tf.function(model, jit_compile=True, input_signature=[tf.TensorSpec((None, None, 6), tf.float32)])
    assert tuple(run(tf.constant(_x(11, (2, 9, 6)))).shape) == (2, 9, 6)


OTHER_KERAS_BACKEND = """
import numpy as np, keras
from layernorm.keras import LayerNormalization, RMSNormalization
assert keras.backend.backend() == {backend!r}
x = (np.random.default_rng(0).standard_normal((4, 5, 6)) * 2 + 0.5).astype("float32")
for ours, theirs in ((LayerNormalization(axis=[1, 2]), keras.layers.LayerNormalization(axis=[1, 2])),
                     (RMSNormalization(), keras.layers.RMSNormalization())):
    theirs.build(x.shape)
    sizes = [(int(np.prod(w.shape)), w.shape) for w in theirs.weights]
    theirs.set_weights([np.linspace(0.5, 1.5, n).reshape(shape).astype("float32") for n, shape in sizes])
    ours.build(x.shape)
    ours.set_weights(theirs.get_weights())
    got, expected = keras.ops.convert_to_numpy(ours(x)), keras.ops.convert_to_numpy(theirs(x))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
model = keras.Sequential([keras.Input((5, 6)), keras.layers.Dense(6), LayerNormalization()])
model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
losses = [float(model.train_on_batch(x, x)) for _ in range(3)]
assert losses[2] < losses[0], losses
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_layers_run_on_other_keras_backends(backend: str, tmp_path: Path) -> None:
    pytest.importorskip(backend)
    script = tmp_path / "other_backend.py"
    script.write_text(OTHER_KERAS_BACKEND.format(backend=backend))
    env = {**os.environ, "KERAS_BACKEND": backend}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_keras_variables_are_tensorflow_arrays() -> None:
    """A Keras 3 variable (a tf Tensor subclass) is owned by the tensorflow backend as x or as a parameter; tape
    gradients reach it, and it crosses to another engine as a plain array when no tape records it."""
    x = tf.constant(_x())
    rng = np.random.default_rng(2)
    w, b = (keras.Variable(rng.standard_normal(6).astype(np.float32)) for _ in range(2))
    spec = check_forward("layer_norm", x, w, b, -1, 1e-5)
    expected = reference.layer_norm(_x(), w.numpy(), b.numpy(), spec)[0]
    cond = row_condition(_x(), spec)
    assert error_ratio(layernorm.layer_norm(x, w, b).numpy(), expected, tolerance("float32", "output"), cond) <= 1
    dy = rng.standard_normal(SHAPE).astype(np.float32)
    with tf.GradientTape() as tape:
        y = layernorm.layer_norm(x, w, b)
    dweight, dbias = tape.gradient(y, [w, b], output_gradients=tf.constant(dy))
    _, expected_dweight, expected_dbias = reference.layer_norm_backward(dy, _x(), w.numpy(), spec)
    assert error_ratio(dweight.numpy(), expected_dweight, tolerance("float32", "grad"), cond) <= 1
    assert error_ratio(dbias.numpy(), expected_dbias, tolerance("float32", "grad"), cond) <= 1
    variable_x = keras.Variable(_x(), trainable=False)
    expected = reference.layer_norm(_x(), None, None, spec)[0]
    for backend in ("tensorflow", "numpy"):
        y = layernorm.layer_norm(variable_x, backend=backend)
        assert isinstance(y, tf.Tensor)
        assert error_ratio(y.numpy(), expected, tolerance("float32", "output"), cond) <= 1


@pytest.mark.parametrize("layer", [lk.LayerNormalization, lk.RMSNormalization], ids=lambda c: c.__name__)
@pytest.mark.parametrize("traced", [False, True], ids=["eager", "model.predict"])
def test_integer_input_is_layernorms_dtype_error(layer: Any, traced: bool) -> None:
    """Keras would normalize an integer input (LayerNormalization) or return integers (RMSNormalization): ours
    refuse it with the functions' DTypeError, also inside the tf.function that Keras's predict traces."""
    x = np.arange(12, dtype=np.int32).reshape(2, 6)
    model = keras.Sequential([keras.Input((6,), dtype="int32"), layer()])
    with pytest.raises(layernorm.DTypeError, match="x must have a floating dtype"):
        model.predict(x, verbose=0) if traced else model(x)


@pytest.mark.parametrize("layer", ["LayerNormalization", "RMSNormalization"])
def test_layers_run_on_keras_backend_whatever_engine_is_in_force(layer: str) -> None:
    """Under using("numpy") the layers run TensorFlow, as Keras's own do: an eager call went through NumPy and
    predict (a tf.function) raised BackendError."""
    model = _model(getattr(lk, layer)(name="norm"))
    x = _x(2)
    expected = model.predict(x, verbose=0)
    with layernorm.using("numpy"):
        assert isinstance(model(x), tf.Tensor)
        np.testing.assert_array_equal(model(x).numpy(), expected)
        np.testing.assert_array_equal(model.predict(x, verbose=0), expected)
