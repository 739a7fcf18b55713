"""Two logical CPU devices: tf.distribute.MirroredStrategy with our layers, and tensors on two devices.

TensorFlow fixes its logical devices when it first uses them, so these tests run in a child pytest process that
splits the CPU in two before anything else touches TensorFlow; `test_two_cpu_tests_pass_in_a_child_process` starts
it and fails unless every test passed there. In this (parent) process they skip, saying so.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest
from child_pytest import assert_child_passes

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
if keras.backend.backend() != "tensorflow":
    pytest.skip("Keras runs on another backend here", allow_module_level=True)

CHILD_VARIABLE = "LAYERNORM_TEST_TWO_LOGICAL_CPUS"
CHILD_TESTS = 6
if os.environ.get(CHILD_VARIABLE):
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )

import layernorm  # noqa: E402
from layernorm.keras import LayerNormalization, RMSNormalization  # noqa: E402
from layernorm_core import check_forward, reference  # noqa: E402
from layernorm_core.tolerances import error_ratio, gradient_scale, row_condition, tolerance  # noqa: E402

needs_two_cpus = pytest.mark.skipif(
    len(tf.config.list_logical_devices("CPU")) < 2,
    reason="needs two logical CPU devices: test_two_cpu_tests_pass_in_a_child_process runs these in a child",
)


@functools.cache
def _strategy() -> tf.distribute.Strategy:
    """One strategy for the process: each new one numbers its collective ops from the start again, and a second
    model's all-reduce then meets the first one's of another shape."""
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def _data() -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32)
    return x, x.sum(axis=1, keepdims=True)


@needs_two_cpus
@pytest.mark.parametrize(
    "ours, theirs", [("LayerNormalization", "LayerNormalization"), ("RMSNormalization", "RMSNormalization")]
)
def test_fit_matches_keras_layer(ours: str, theirs: str) -> None:
    """Two epochs of model.fit, replicas averaging their gradients: the same weights as with Keras's own layer."""
    x, y = _data()
    ours_layer = {"LayerNormalization": LayerNormalization, "RMSNormalization": RMSNormalization}[ours]
    models = []
    with _strategy().scope():
        for norm in (ours_layer(), getattr(keras.layers, theirs)()):
            model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(16), norm, keras.layers.Dense(1)])
            model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
            models.append(model)
    models[1].set_weights(models[0].get_weights())
    for model in models:
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    for got, expected in zip(models[0].get_weights(), models[1].get_weights(), strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@needs_two_cpus
def test_replica_gradients_sum_to_the_reference() -> None:
    """strategy.run of a tf.function: each replica differentiates its half of the batch; summed, the gradients
    are the whole batch's, as the float64 reference gives them."""
    x, _ = _data()
    rng = np.random.default_rng(1)
    w, b = (rng.standard_normal(16).astype(np.float32) for _ in range(2))
    dy = rng.standard_normal(x.shape).astype(np.float32)
    strategy = _strategy()
    with strategy.scope():
        weight, bias = tf.Variable(w), tf.Variable(b)
    batches = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((x, dy)).batch(64))

    @tf.function
    def step(x: tf.Tensor, dy: tf.Tensor) -> tuple[tf.Tensor, ...]:
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layernorm.layer_norm(x, weight, bias)
        return (x, *tape.gradient(y, [x, weight, bias], output_gradients=dy))

    per_replica = strategy.run(step, args=next(iter(batches)))
    xs, dxs = (np.concatenate([t.numpy() for t in strategy.experimental_local_results(v)]) for v in per_replica[:2])
    dweight, dbias = (strategy.reduce(tf.distribute.ReduceOp.SUM, g, axis=None).numpy() for g in per_replica[2:])
    np.testing.assert_array_equal(xs, x)  # replica 0 took the first half of the batch, replica 1 the second
    spec = check_forward("layer_norm", x, w, b, -1, 1e-5)
    expected_dx, expected_dweight, expected_dbias = reference.layer_norm_backward(dy, x, w, spec)
    cond, grad = row_condition(x, spec), tolerance("float32", "grad")
    scale = gradient_scale(dy, w, reference.layer_norm(x, None, None, spec)[2], spec)
    assert error_ratio(dxs, expected_dx, grad, cond, scale=scale) <= 1
    assert error_ratio(dweight, expected_dweight, grad, cond) <= 1
    assert error_ratio(dbias, expected_dbias, grad, cond) <= 1


@needs_two_cpus
def test_tensors_on_two_devices_are_a_device_error() -> None:
    x, _ = _data()
    with tf.device("/CPU:0"):
        x0 = tf.constant(x)
    with tf.device("/CPU:1"):
        w1, dy1 = tf.ones(16), tf.constant(x)
    with pytest.raises(layernorm.DeviceError, match="x is on cpu:0 but another argument is on cpu:1"):
        layernorm.layer_norm(x0, w1)
    with pytest.raises(layernorm.DeviceError, match="x is on cpu:0 but another argument is on cpu:1"):
        layernorm.rms_norm_backward(dy1, x0)


@needs_two_cpus
@pytest.mark.parametrize("backend", ["tensorflow", "numpy"])
def test_outputs_stay_on_x_device(backend: str) -> None:
    """On the second CPU the kernels run there (eagerly TF would pick its first), and another engine's outputs
    come back there."""
    x, _ = _data()
    w = np.linspace(0.5, 1.5, 16, dtype=np.float32)
    with tf.device("/CPU:1"):
        x1, w1 = tf.constant(x), tf.constant(w)
    outputs = layernorm.layer_norm(x1, w1, return_stats=True, backend=backend)
    spec = check_forward("layer_norm", x, w, None, -1, 1e-5)
    for out, expected in zip(outputs, reference.layer_norm(x, w, None, spec), strict=True):
        assert out.device.endswith("CPU:1")
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(len(tf.config.list_logical_devices("CPU")) >= 2, reason="this is the two-CPU child process")
def test_two_cpu_tests_pass_in_a_child_process() -> None:
    env = {CHILD_VARIABLE: "1", "CUDA_VISIBLE_DEVICES": ""}
    assert_child_passes(__file__, env, deselect="in_a_child_process", tests=CHILD_TESTS)
