"""Declares the PyTorch backend to layernorm's registry, without importing torch."""

from layernorm_core import BackendDeclaration, hookimpl


@hookimpl
def layernorm_backends() -> list[BackendDeclaration]:
    """The PyTorch backend: owns torch.Tensor on CPU and CUDA."""
    return [
        BackendDeclaration(
            name="torch",
            implementation="layernorm_torch.backend",
            array_modules=("torch",),
            excluded_modules=("torch.masked",),  # MaskedTensor
            requires=("torch",),
            extra="torch",
            description="PyTorch (CPU, CUDA): native fused kernels, torch.autograd",
        )
    ]
