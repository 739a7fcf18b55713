"""Masked, sparse and ragged arrays, and shape specs, are a DTypeError, with no result computed, on every engine.

A dense kernel would misread them: NumPy's masked arrays lost their mask silently (the masked values were
normalized with the rest), and the other frameworks failed deep inside their kernels with their own errors. The
core refuses them by type before any backend runs; torch's non-dense layouts, all torch.Tensor, are refused by
its backend (there, where a kernel fails on them; tests/test_torch_backend.py covers its own ops).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from registered_plugin import registered

import layernorm
from layernorm import DTypeError
from layernorm_core import BackendDeclaration, hookimpl

NotDense = Callable[[tuple[int, ...]], tuple[Any, Any]]
"""shape -> (an array of that shape that is not dense, a dense array of its framework and shape)."""


def _numpy_masked(shape: tuple[int, ...]) -> tuple[Any, Any]:
    dense = np.ones(shape, np.float32)
    return np.ma.array(dense, mask=np.arange(dense.size).reshape(shape) % 2 == 0), dense


def _torch_masked(shape: tuple[int, ...]) -> tuple[Any, Any]:
    torch = pytest.importorskip("torch")
    from torch.masked import masked_tensor

    dense = torch.ones(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "MaskedTensors is a prototype feature"
        return masked_tensor(dense, torch.ones(shape, dtype=torch.bool)), dense


def _torch_sparse_coo(shape: tuple[int, ...]) -> tuple[Any, Any]:
    torch = pytest.importorskip("torch")
    dense = torch.ones(shape)
    return dense.to_sparse(), dense


def _torch_sparse_csr(shape: tuple[int, ...]) -> tuple[Any, Any]:
    torch = pytest.importorskip("torch")
    dense = torch.ones(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Sparse CSR tensor support is in beta state"
        return dense.to_sparse_csr(), dense


def _torch_mkldnn(shape: tuple[int, ...]) -> tuple[Any, Any]:
    torch = pytest.importorskip("torch")
    if not torch.backends.mkldnn.is_available():
        pytest.skip("torch was built without MKLDNN (oneDNN)")
    dense = torch.ones(shape)
    return dense.to_mkldnn(), dense


def _jax_sparse(shape: tuple[int, ...]) -> tuple[Any, Any]:
    jnp = pytest.importorskip("jax.numpy")
    sparse = pytest.importorskip("jax.experimental.sparse")
    dense = jnp.ones(shape, jnp.float32)
    return sparse.BCOO.fromdense(dense), dense


def _tensorflow_ragged(shape: tuple[int, ...]) -> tuple[Any, Any]:
    tf = pytest.importorskip("tensorflow")
    dense = tf.ones(shape)
    return tf.RaggedTensor.from_tensor(dense), dense


def _tensorflow_sparse(shape: tuple[int, ...]) -> tuple[Any, Any]:
    tf = pytest.importorskip("tensorflow")
    dense = tf.ones(shape)
    return tf.sparse.from_dense(dense), dense


def _tensorflow_indexed_slices(shape: tuple[int, ...]) -> tuple[Any, Any]:
    """Some rows of a dense shape (what tf.gather's gradient is); converted to a tensor, the rest are zeros."""
    tf = pytest.importorskip("tensorflow")
    dense = tf.ones(shape)
    return tf.IndexedSlices(dense[:1], tf.constant([0]), dense_shape=tf.constant(shape)), dense


def _jax_shape_spec(shape: tuple[int, ...]) -> tuple[Any, Any]:
    """A shape and a dtype without values (what jax.eval_shape takes), of module ``jax``: excluded by its name."""
    jax = pytest.importorskip("jax")
    return jax.ShapeDtypeStruct(shape, jax.numpy.float32), jax.numpy.ones(shape, jax.numpy.float32)


def _tensorflow_tensor_spec(shape: tuple[int, ...]) -> tuple[Any, Any]:
    tf = pytest.importorskip("tensorflow")
    return tf.TensorSpec(shape, tf.float32), tf.ones(shape)


NOT_DENSE = {
    "numpy-masked": _numpy_masked,
    "torch-masked": _torch_masked,
    "torch-sparse-coo": _torch_sparse_coo,  # the layouts below are torch.Tensor too: the backend checks them
    "torch-sparse-csr": _torch_sparse_csr,
    "torch-mkldnn": _torch_mkldnn,
    "jax-sparse": _jax_sparse,
    "tensorflow-ragged": _tensorflow_ragged,
    "tensorflow-sparse": _tensorflow_sparse,
    "tensorflow-indexed-slices": _tensorflow_indexed_slices,
    "jax-shape-spec": _jax_shape_spec,
    "tensorflow-tensor-spec": _tensorflow_tensor_spec,
}
NOT_A_DENSE_ARRAY = r"is not a dense array \(the '\w+' backend excludes [\w.]+"


@pytest.fixture(params=list(NOT_DENSE))
def not_dense(request: pytest.FixtureRequest) -> NotDense:
    return NOT_DENSE[request.param]


@pytest.mark.parametrize("backend", [None, "numpy"])
def test_x_that_is_not_dense_is_a_dtype_error_on_every_engine(not_dense: NotDense, backend: str | None) -> None:
    x, _ = not_dense((2, 4))
    for call in (
        lambda: layernorm.layer_norm(x, backend=backend),
        lambda: layernorm.rms_norm(x, backend=backend),
        lambda: layernorm.layer_norm(x, return_stats=True, backend=backend),
    ):
        with pytest.raises(DTypeError, match=NOT_A_DENSE_ARRAY) as raised:
            call()
        assert type(x).__qualname__ in str(raised.value)


def test_weight_bias_or_dy_that_is_not_dense_is_a_dtype_error(not_dense: NotDense) -> None:
    block, dense = not_dense((2, 4))
    calls = [
        lambda: layernorm.layer_norm_backward(block, dense),
        lambda: layernorm.rms_norm_backward(block, dense),
    ]
    if not_dense not in (_tensorflow_ragged, _torch_sparse_csr):  # 1-D weight and bias: these two need 2-D
        row, dense_row = not_dense((4,))
        calls += [
            lambda: layernorm.layer_norm(dense, row),
            lambda: layernorm.layer_norm(dense, dense_row, row),
            lambda: layernorm.rms_norm(dense, row),
        ]
    for call in calls:
        with pytest.raises(DTypeError, match=NOT_A_DENSE_ARRAY):
            call()


def test_masked_array_keeps_its_mask() -> None:
    x, _ = _numpy_masked((2, 4))
    mask = x.mask.copy()
    with pytest.raises(DTypeError):
        layernorm.layer_norm(x)
    np.testing.assert_array_equal(x.mask, mask)


# -- a third-party plugin declares its excluded modules the same way ------------------------------------------


class _FakeDense(np.ndarray):
    pass


class _FakeSparse(np.ndarray):
    pass


class _FakeSparseSubclass(_FakeSparse):
    pass


class _FakeSparsely(np.ndarray):
    pass


_FakeDense.__module__ = "fakepkg.core"
_FakeSparse.__module__ = "fakepkg.sparse"
_FakeSparsely.__module__ = "fakepkg.sparsely"  # shares a prefix with the excluded module, not the module


class _FakePlugin:
    @hookimpl
    def layernorm_backends(self) -> list[BackendDeclaration]:
        return [
            BackendDeclaration(
                name="fake",
                implementation="recording_backend",
                array_modules=("fakepkg",),
                excluded_modules=("fakepkg.sparse",),
                requires=("numpy",),
            )
        ]


@pytest.fixture
def fake_plugin(recording: list[str]) -> Iterator[list[str]]:
    with registered(_FakePlugin(), "fake-plugin"):
        yield recording


def test_plugin_excluded_modules_and_their_subclasses(fake_plugin: list[str]) -> None:
    values = np.linspace(-1.0, 1.0, 8, dtype=np.float32).reshape(2, 4)
    for array_type in (_FakeSparse, _FakeSparseSubclass):
        with pytest.raises(DTypeError, match=r"is not a dense array \(the 'fake' backend excludes fakepkg\.sparse"):
            layernorm.layer_norm(values.view(array_type))
    for array_type in (_FakeDense, _FakeSparsely):
        y = layernorm.layer_norm(values.view(array_type))
        np.testing.assert_allclose(np.asarray(y), layernorm.layer_norm(values), rtol=1e-6)
    assert fake_plugin == ["layer_norm", "layer_norm"]  # dense types went to their owner, the fake backend
