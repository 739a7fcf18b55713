"""Declares the NumPy backend to layernorm's registry."""

from layernorm_core import BackendDeclaration, hookimpl


@hookimpl
def layernorm_backends() -> list[BackendDeclaration]:
    """The NumPy backend: owns numpy.ndarray; bfloat16 when ml_dtypes is installed."""
    return [
        BackendDeclaration(
            name="numpy",
            implementation="layernorm_numpy.backend",
            array_modules=("numpy",),
            excluded_modules=("numpy.ma",),  # masked arrays: a dense kernel would drop the mask
            requires=("numpy",),
            extra=None,
            description="NumPy on the CPU: blocked, multi-threaded, shifted two-pass statistics",
        )
    ]
