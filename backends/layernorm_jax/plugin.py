"""Declares the JAX backend to layernorm's registry, without importing jax."""

from layernorm_core import BackendDeclaration, hookimpl


@hookimpl
def layernorm_backends() -> list[BackendDeclaration]:
    """The JAX backend: owns jax.Array and tracers, on every device XLA reports."""
    return [
        BackendDeclaration(
            name="jax",
            implementation="layernorm_jax.backend",
            array_modules=("jax", "jaxlib"),
            excluded_modules=("jax.experimental.sparse", "jax.ShapeDtypeStruct"),  # BCOO, BCSR; a shape spec
            requires=("jax",),
            extra="jax",
            description="JAX / XLA (CPU, GPU, TPU): custom_jvp with the analytic derivatives",
        )
    ]
