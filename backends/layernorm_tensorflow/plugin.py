"""Declares the TensorFlow backend to layernorm's registry, without importing tensorflow."""

from layernorm_core import BackendDeclaration, hookimpl


@hookimpl
def layernorm_backends() -> list[BackendDeclaration]:
    """The TensorFlow backend: owns tf.Tensor and tf.Variable, eager and inside tf.function."""
    return [
        BackendDeclaration(
            name="tensorflow",
            implementation="layernorm_tensorflow.backend",
            array_modules=("tensorflow",),
            excluded_modules=(
                "tensorflow.python.ops.ragged",
                "tensorflow.python.framework.sparse_tensor",
                "tensorflow.python.framework.indexed_slices",  # tf.IndexedSlices: rows of a dense shape, sparse
                "tensorflow.python.framework.type_spec",  # tf.TensorSpec and every TypeSpec: shapes, no values
            ),
            requires=("tensorflow",),
            extra="tensorflow",
            description="TensorFlow (eager, tf.function, XLA): tf.custom_gradient with the analytic backward",
        )
    ]
