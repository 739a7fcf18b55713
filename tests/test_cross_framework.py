"""An engine that is not x's framework: x crosses at the boundary and the result comes back in x's type."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from fake_device_array import FakeCudaTensor
from layernorm_conformance.ops import ForeignHostArray

import layernorm
from layernorm import BackendError
from layernorm_core import check_forward, reference
from layernorm_core.tolerances import error_ratio, tolerance

X = np.random.default_rng(0).standard_normal((6, 10)).astype(np.float32)
W = np.random.default_rng(1).standard_normal(10).astype(np.float32)


def _expected() -> np.ndarray:
    return reference.layer_norm(X, W, None, check_forward("layer_norm", X, W, None, -1, 1e-5))[0]


def test_numpy_arrays_on_the_torch_engine() -> None:
    pytest.importorskip("torch")
    y = layernorm.layer_norm(X, W, backend="torch")
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    assert error_ratio(y, _expected(), tolerance("float32", "output")) <= 1


@pytest.mark.parametrize("engine", ["numpy", "torch", "jax", "tensorflow"])
def test_big_endian_numpy_arrays_cross_to_every_engine(engine: str) -> None:
    """Big-endian arrays (a FITS file's) cross in native byte order: torch and JAX refuse any other."""
    pytest.importorskip(engine)
    x, w = X.astype(">f4"), W.astype(">f4")
    y, mean, rstd = layernorm.layer_norm(x, w, return_stats=True, backend=engine)
    assert all(out.dtype == np.float32 and out.dtype.isnative for out in (y, mean, rstd))  # as NumPy's ufuncs give
    assert error_ratio(y, _expected(), tolerance("float32", "output")) <= 1
    dx, dw = layernorm.rms_norm_backward(x, x, w, backend=engine)
    assert error_ratio(dw, layernorm.rms_norm_backward(X, X, W)[1], tolerance("float32", "grad")) <= 1
    assert x.dtype.str == ">f4" and dx.dtype.isnative


def test_torch_tensors_on_the_numpy_engine() -> None:
    torch = pytest.importorskip("torch")
    with layernorm.using("numpy"):
        y, mean, rstd = layernorm.layer_norm(torch.from_numpy(X), torch.from_numpy(W), return_stats=True)
    assert isinstance(mean, torch.Tensor) and mean.shape == (6, 1)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32 and isinstance(rstd, torch.Tensor)
    assert error_ratio(y.numpy(), _expected(), tolerance("float32", "output")) <= 1


def test_bfloat16_crosses_without_loss() -> None:
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(X).to(torch.bfloat16)
    y = layernorm.rms_norm(x, backend="numpy")
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, layernorm.rms_norm(x), rtol=2**-7, atol=2**-7)


def test_tracked_tensor_cannot_cross() -> None:
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(X).requires_grad_()
    with pytest.raises(BackendError, match="takes part in torch's autodiff or tracing; the 'numpy' backend"):
        layernorm.layer_norm(x, backend="numpy")


def test_a_tensor_that_requires_grad_crosses_where_nothing_records() -> None:
    """Under torch.no_grad and torch.inference_mode no graph is recorded to lose, as where TensorFlow's trainable
    variables cross without a tape: it was a BackendError."""
    torch = pytest.importorskip("torch")
    weight = torch.nn.Parameter(torch.from_numpy(W))
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            y = layernorm.layer_norm(torch.from_numpy(X), weight, backend="numpy")
        assert isinstance(y, torch.Tensor) and not y.requires_grad
        assert error_ratio(y.numpy(), _expected(), tolerance("float32", "output")) <= 1


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_a_weak_jax_weight_beside_another_frameworks_x_is_a_dtype_error(framework: str) -> None:
    """A weakly typed JAX weight takes x's dtype; beside a torch or TensorFlow x that raised JAX's TypeError on
    casting to a torch dtype. It is the mixed-framework DTypeError, as for a strong JAX weight of x's dtype."""
    jnp = pytest.importorskip("jax.numpy")
    module = pytest.importorskip(framework)
    x = module.ones((2, 4), dtype=module.float64)
    for call in (
        lambda: layernorm.layer_norm(x, jnp.full((4,), 2.0)),
        lambda: layernorm.rms_norm(x, jnp.full((4,), 2.0)),
        lambda: layernorm.layer_norm_backward(x, x, jnp.full((4,), 2.0)),
    ):
        with pytest.raises(layernorm.DTypeError, match="pass arrays of one framework"):
            call()


def test_jax_arrays_on_the_numpy_engine() -> None:
    jax = pytest.importorskip("jax")
    cpu = jax.devices("cpu")[0]
    y = layernorm.layer_norm(jax.device_put(X, cpu), jax.device_put(W, cpu), backend="numpy")
    assert type(y).__module__.startswith(("jax", "jaxlib"))
    assert error_ratio(np.asarray(y), _expected(), tolerance("float32", "output")) <= 1


@pytest.mark.parametrize("engine", ["numpy", "torch", "jax", "tensorflow"])
def test_a_device_array_an_engine_cannot_import_is_a_device_error(engine: str) -> None:
    """torch and TensorFlow copied such arrays through NumPy: a TypeError for a CUDA tensor, or, for a JAX array
    sharded over GPUs, a silent gather to the host (and the call computed on the CPU)."""
    pytest.importorskip(engine)
    from layernorm_core.registry import registry

    with pytest.raises(layernorm.DeviceError, match=r"FakeCudaTensor \(DLPack device type 2\) through DLPack"):
        registry.get(engine).from_foreign(FakeCudaTensor())


@pytest.mark.parametrize("engine", ["numpy", "jax", "tensorflow"])
@pytest.mark.parametrize("on_meta", ["x", "weight", "both"])
def test_torch_meta_tensors_sent_to_another_engine_are_a_device_error(engine: str, on_meta: str) -> None:
    """torch reports one device here, so the core compared none: a meta weight beside a CPU x reached torch's
    NotImplementedError (no copy out of meta), a meta x torch's ValueError (no DLPack device)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip(engine)
    x, w = torch.from_numpy(X), torch.from_numpy(W)
    if on_meta in ("x", "both"):
        x = x.to("meta")
    if on_meta in ("weight", "both"):
        w = w.to("meta")
    expected = {
        "x": "x is on meta but another argument is on cpu; move them to one device",
        "weight": "x is on cpu but another argument is on meta; move them to one device",
        "both": f"a torch.Tensor on meta has no DLPack device, so the '{engine}' backend cannot take it: use x's own "
        "backend",
    }[on_meta]
    with pytest.raises(layernorm.DeviceError, match=f"^{re.escape(expected)}$"):
        layernorm.layer_norm(x, w, backend=engine)


class _HostBfloat16(ForeignHostArray):
    """A host array of a framework no backend owns, whose DLPack export holds a dtype NumPy cannot import."""

    def __dlpack__(self, **kwargs: Any) -> Any:
        raise BufferError("bfloat16 has no DLPack import in NumPy")


@pytest.mark.parametrize("engine", ["numpy", "torch", "jax", "tensorflow"])
def test_a_host_array_without_a_dlpack_import_is_copied_through_numpy(engine: str) -> None:
    """The numpy engine raised a DeviceError for it; the others copied it, as the host memory it is allows."""
    pytest.importorskip(engine)
    ml_dtypes = pytest.importorskip("ml_dtypes")
    from layernorm_core.registry import registry

    values = np.asarray([0.5, -1.25, 3.0], dtype=ml_dtypes.bfloat16)
    backend = registry.get(engine)
    imported = backend.to_numpy(backend.from_foreign(_HostBfloat16(values)))
    np.testing.assert_array_equal(np.asarray(imported, np.float32), values.astype(np.float32))


@pytest.mark.parametrize("engine", ["numpy", "torch", "jax", "tensorflow"])
def test_host_memory_at_any_alignment_crosses_to_every_engine(engine: str) -> None:
    """Host memory at each 4-byte offset from a 64-byte boundary: TensorFlow's DLPack import aborted the process
    (a failed CHECK) off that boundary, so the TensorFlow engine copies host memory through NumPy."""
    pytest.importorskip(engine)
    buffer = np.zeros(64 + 64 + 32, np.uint8)
    start = -buffer.ctypes.data % 64
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    expected = reference.layer_norm(x, None, None, check_forward("layer_norm", x, None, None, -1, 1e-5))[0]
    for offset in range(0, 64, 4):
        held = buffer[start + offset : start + offset + 32].view(np.float32).reshape(2, 4)
        held[...] = x
        y = layernorm.layer_norm(ForeignHostArray(held), backend=engine)
        assert error_ratio(np.asarray(y), expected, tolerance("float32", "output")) <= 1


class _DLPackOnly:
    """A host array of a framework no backend owns that offers DLPack alone (no ``__array__``)."""

    def __init__(self, tensor: Any) -> None:
        self.tensor, self.shape, self.dtype = tensor, tuple(tensor.shape), tensor.dtype

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self.tensor.__dlpack__(**kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        return self.tensor.__dlpack_device__()


@pytest.mark.parametrize("offset", [0, 8], ids=["aligned", "off-a-64-byte-boundary"])
@pytest.mark.parametrize("engine", ["numpy", "torch", "jax", "tensorflow"])
def test_a_bfloat16_host_array_offering_dlpack_alone(engine: str, offset: int) -> None:
    """NumPy cannot import bfloat16 through DLPack, and TensorFlow's own import aborts the process off a 64-byte
    boundary: the NumPy and TensorFlow engines refuse such an array with a DTypeError (NumPy's raised a bare
    ValueError from an object array, TensorFlow's an untyped RuntimeError or the abort); torch and JAX import it."""
    torch = pytest.importorskip("torch")
    pytest.importorskip(engine)
    base = torch.arange(64, dtype=torch.float32).bfloat16()
    x = base[offset : offset + 8].reshape(2, 4)  # bfloat16 values are 2 bytes: 8 of them are 16 bytes on
    if engine in ("numpy", "tensorflow"):
        with pytest.raises(layernorm.DTypeError, match="offers DLPack alone"):
            layernorm.layer_norm(_DLPackOnly(x), backend=engine)
        return
    from layernorm_core.registry import registry

    y = registry.get(engine).to_numpy(layernorm.layer_norm(_DLPackOnly(x), backend=engine, eps=0.0))
    np.testing.assert_array_equal(y.astype(np.float32), layernorm.layer_norm(x, eps=0.0).float().numpy())


class _FakeCudaView(FakeCudaTensor):
    """A strided view on a CUDA device, as a transposed torch tensor is: XLA's DLPack import refuses its strides,
    and its row-major copy (here a NumPy array, which the engines can import on this machine) is what they take."""

    def is_contiguous(self) -> bool:
        return False

    def contiguous(self) -> np.ndarray:
        return np.arange(2, dtype=np.float32)


@pytest.mark.parametrize("engine", ["jax", "tensorflow"])
def test_a_strided_device_view_crosses_as_a_row_major_copy(engine: str) -> None:
    pytest.importorskip(engine)
    from layernorm_core.registry import registry

    imported = registry.get(engine).from_foreign(_FakeCudaView())
    np.testing.assert_array_equal(np.asarray(imported), np.arange(2, dtype=np.float32))


def _torch_and_jax_on_gpus() -> tuple[Any, Any, Any]:
    """torch and jax, and JAX's first GPU; skipped where either framework is missing or sees no GPU."""
    torch = pytest.importorskip("torch")
    jax = pytest.importorskip("jax")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    try:
        return torch, jax, jax.devices("gpu")[0]
    except RuntimeError:
        pytest.skip("JAX sees no GPU")


@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_torch_cuda_tensors_on_the_jax_engine(layout: str) -> None:
    """A CUDA tensor crosses to XLA on the GPU through DLPack (a transposed view as a row-major copy there) and
    the result comes back as a CUDA tensor; x is left as it was."""
    torch, _, _ = _torch_and_jax_on_gpus()
    x = torch.from_numpy(X if layout == "contiguous" else np.ascontiguousarray(X.T)).cuda()
    x = x if layout == "contiguous" else x.T
    assert x.is_contiguous() == (layout == "contiguous")
    before = x.clone()
    y, mean, rstd = layernorm.layer_norm(x, torch.from_numpy(W).cuda(), return_stats=True, backend="jax")
    assert all(isinstance(out, torch.Tensor) and out.is_cuda for out in (y, mean, rstd))
    assert y.dtype == torch.float32 and mean.shape == (6, 1)
    assert error_ratio(y.cpu().numpy(), _expected(), tolerance("float32", "output")) <= 1
    assert torch.equal(x, before)


def test_jax_gpu_arrays_on_the_torch_engine() -> None:
    """A JAX array on the GPU crosses to torch's CUDA kernels and comes back as a JAX array on that GPU."""
    _, jax, gpu = _torch_and_jax_on_gpus()
    y = layernorm.layer_norm(jax.device_put(X, gpu), jax.device_put(W, gpu), backend="torch")
    assert type(y).__module__.startswith(("jax", "jaxlib")) and y.devices() == {gpu}
    assert error_ratio(np.asarray(y), _expected(), tolerance("float32", "output")) <= 1
