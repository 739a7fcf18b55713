"""JAX backend numerics against the float64 reference, conversions, devices and dtype rules."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import partial

import numpy as np
import pytest

pytest.importorskip("jax")

import jax
import jax.numpy as jnp
from cases import HOST_DTYPES, shape_cases
from jax_compat import enable_x64

import layernorm
from layernorm_core import check_forward, dispatch, normalize_axes, reference
from layernorm_core.registry import registry
from layernorm_core.spec import Axis
from layernorm_core.tolerances import error_ratio, gradient_scale, row_condition, tolerance

DTYPES = HOST_DTYPES
CASES = shape_cases(8192)


def _has_platform(platform: str) -> bool:
    try:
        return bool(jax.devices(platform))
    except RuntimeError:
        return False


DEVICES = ["cpu", "gpu"]


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    if not _has_platform(request.param):
        pytest.skip(f"no {request.param} device visible to JAX")
    return str(request.param)


@contextlib.contextmanager
def x64_if(dtype: str) -> Iterator[None]:
    """float64 needs JAX's x64 mode; every other dtype runs in the default mode."""
    with enable_x64(dtype == "float64"):
        yield


def _inputs(shape: tuple[int, ...], axis: Axis, dtype: np.dtype, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    normalized_shape = tuple(shape[a] for a in normalize_axes(axis, len(shape)))
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    w = rng.standard_normal(normalized_shape).astype(dtype)
    b = rng.standard_normal(normalized_shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, w, b, dy


def _put(arrays: tuple[np.ndarray, ...], device: str) -> list[jax.Array]:
    target = jax.devices(device)[0]
    return [jax.device_put(a, target) for a in arrays]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "axis"), CASES)
def test_layer_norm_forward_and_backward(shape: tuple[int, ...], axis: Axis, dtype: str, device: str) -> None:
    x, w, b, dy = _inputs(shape, axis, DTYPES[dtype])
    spec = check_forward("layer_norm", x, w, b, axis, 1e-5)
    ref_y, ref_mean, ref_rstd = reference.layer_norm(x, w, b, spec)
    cond = row_condition(x, spec)
    with x64_if(dtype):
        jx, jw, jb, jdy = _put((x, w, b, dy), device)
        y, mean, rstd = layernorm.layer_norm(jx, jw, jb, axis=axis, return_stats=True)
        grads = layernorm.layer_norm_backward(jdy, jx, jw, axis=axis, mean=mean, rstd=rstd)
        recomputed = layernorm.layer_norm_backward(jdy, jx, jw, axis=axis)
    assert isinstance(y, jax.Array)
    assert (y.dtype, y.shape) == (x.dtype, x.shape)
    assert layernorm_device(y) == device
    assert mean.dtype == rstd.dtype == np.dtype(spec.compute_dtype) and mean.shape == spec.stats_shape
    assert error_ratio(np.asarray(y), ref_y, tolerance(dtype, "output"), cond) <= 1
    assert error_ratio(np.asarray(mean), ref_mean, tolerance(dtype, "stats"), cond) <= 1
    assert error_ratio(np.asarray(rstd), ref_rstd, tolerance(dtype, "stats"), cond) <= 1
    dx_scale = gradient_scale(dy, w, ref_rstd, spec)
    for got, again, expected, scale in zip(
        grads, recomputed, reference.layer_norm_backward(dy, x, w, spec), (dx_scale, None, None), strict=True
    ):
        assert got.dtype == x.dtype
        for result in (got, again):
            assert error_ratio(np.asarray(result), expected, tolerance(dtype, "grad"), cond, scale=scale) <= 1
        if device == "cpu":  # one XLA:CPU program gives the same bits for given statistics; GPU fusions may not
            np.testing.assert_array_equal(np.asarray(got), np.asarray(again))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "axis"), CASES)
def test_rms_norm_forward_and_backward(shape: tuple[int, ...], axis: Axis, dtype: str, device: str) -> None:
    x, w, _, dy = _inputs(shape, axis, DTYPES[dtype])
    spec = check_forward("rms_norm", x, w, None, axis, 1e-5)
    ref_y, ref_rstd = reference.rms_norm(x, w, spec)
    with x64_if(dtype):
        jx, jw, jdy = _put((x, w, dy), device)
        y, rstd = layernorm.rms_norm(jx, jw, axis=axis, return_stats=True)
        grads = layernorm.rms_norm_backward(jdy, jx, jw, axis=axis, rstd=rstd)
    assert y.dtype == x.dtype and rstd.dtype == np.dtype(spec.compute_dtype) and rstd.shape == spec.stats_shape
    assert error_ratio(np.asarray(y), ref_y, tolerance(dtype, "output")) <= 1
    assert error_ratio(np.asarray(rstd), ref_rstd, tolerance(dtype, "stats")) <= 1
    dx_scale = gradient_scale(dy, w, ref_rstd, spec)
    for got, expected, scale in zip(grads, reference.rms_norm_backward(dy, x, w, spec), (dx_scale, None), strict=True):
        assert got.dtype == x.dtype
        assert error_ratio(np.asarray(got), expected, tolerance(dtype, "grad"), scale=scale) <= 1


def layernorm_device(x: jax.Array) -> str:
    return str(registry.get("jax").device_of(x))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_large_offset_small_spread_normalizes(dtype: str) -> None:
    """1e4 + N(0, 1e-2): a single-pass E[x^2] - E[x]^2 loses every digit here."""
    x = (1e4 + np.random.default_rng(3).normal(0, 1e-2, (16, 4096))).astype(dtype)
    spec = check_forward("layer_norm", x, None, None, -1, 0.0)
    ref_y, _, _ = reference.layer_norm(x, None, None, spec)
    with x64_if(dtype):
        y = np.asarray(layernorm.layer_norm(jnp.asarray(x), eps=0.0))
    assert error_ratio(y, ref_y, tolerance(dtype, "output"), row_condition(x, spec)) <= 1
    np.testing.assert_allclose(y.astype(np.float64).std(axis=-1), 1.0, rtol=1e-3)


def test_constant_rows_give_the_bias() -> None:
    x = jnp.full((3, 8), 7.25, jnp.float32)
    b = jnp.arange(8, dtype=jnp.float32)
    y = layernorm.layer_norm(x, jnp.ones(8, jnp.float32), b)
    np.testing.assert_array_equal(np.asarray(y), np.broadcast_to(np.arange(8, dtype=np.float32), (3, 8)))
    np.testing.assert_array_equal(np.asarray(layernorm.rms_norm(jnp.zeros((2, 4)))), np.zeros((2, 4), np.float32))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_float32_params_with_half_x(dtype: str) -> None:
    x, w, b, dy = _inputs((4, 16), -1, DTYPES[dtype])
    w32, b32 = w.astype(np.float32), b.astype(np.float32)
    spec = check_forward("layer_norm", x, w32, b32, -1, 1e-5)
    y = layernorm.layer_norm(jnp.asarray(x), jnp.asarray(w32), jnp.asarray(b32))
    assert y.dtype == DTYPES[dtype]
    assert error_ratio(np.asarray(y), reference.layer_norm(x, w32, b32, spec)[0], tolerance(dtype, "output")) <= 1
    dx, dw, db = layernorm.layer_norm_backward(jnp.asarray(dy), jnp.asarray(x), jnp.asarray(w32))
    assert dx.dtype == dw.dtype == db.dtype == DTYPES[dtype]  # explicit backward: x's dtype, as the contract says


def test_inputs_are_not_modified_and_strided_views_work() -> None:
    base = np.random.default_rng(4).standard_normal((8, 10, 12)).astype(np.float32)
    x = jnp.asarray(base)[:, ::2, ::-1]
    y = layernorm.layer_norm(x, axis=(0, 2))
    spec = check_forward("layer_norm", x, None, None, (0, 2), 1e-5)
    expected = reference.layer_norm(base[:, ::2, ::-1], None, None, spec)[0]
    assert error_ratio(np.asarray(y), expected, tolerance("float32", "output")) <= 1
    np.testing.assert_array_equal(np.asarray(x), base[:, ::2, ::-1])


def test_explicit_backward_matches_jax_grad() -> None:
    """One analytic backward: the explicit functions agree with autodiff to 1e-6, through the transposes of the
    custom_jvp rules."""
    x, w, b, dy = (jnp.asarray(a) for a in _inputs((6, 40), -1, DTYPES["float32"], seed=7))
    _, vjp = jax.vjp(lambda x, w, b: layernorm.layer_norm(x, w, b), x, w, b)
    by_vjp = vjp(dy)
    explicit = layernorm.layer_norm_backward(dy, x, w)
    for got, again in zip(by_vjp, explicit, strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(again), rtol=1e-6, atol=1e-6)
    _, rms_vjp = jax.vjp(lambda x, w: layernorm.rms_norm(x, w), x, w)
    for got, again in zip(rms_vjp(dy), layernorm.rms_norm_backward(dy, x, w), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(again), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
def test_a_call_without_stats_runs_a_program_that_returns_y_alone(kind: str) -> None:
    """XLA computes every output of a program it runs: an eager call that dropped the statistics would still pay
    for them (up to 4x the time in bfloat16 on XLA:CPU, docs/benchmarks.md)."""
    x = jnp.asarray(np.random.default_rng(5).standard_normal((16, 32)), jnp.bfloat16)
    norm = getattr(layernorm, kind)

    def programs(return_stats: bool) -> list[int]:
        jaxpr = jax.make_jaxpr(lambda x: norm(x, return_stats=return_stats))(x)
        return [len(eqn.outvars) for eqn in jaxpr.eqns if eqn.primitive.name in ("pjit", "jit")]

    assert programs(False) == [1]
    assert programs(True) == [3 if kind == "layer_norm" else 2]
    y, *_ = norm(x, return_stats=True)
    spec = check_forward(kind, x, None, None, -1, 1e-5)
    params = (None, None) if kind == "layer_norm" else (None,)
    expected = getattr(reference, kind)(np.asarray(x), *params, spec)[0]
    for got in (norm(x), y):
        assert error_ratio(np.asarray(got), expected, tolerance("bfloat16", "output")) <= 1


# -- conversions, devices, dtype rules ------------------------------------------------------------------------


def test_info_and_ownership() -> None:
    backend = registry.get("jax")
    info = backend.info()
    assert info.version == jax.__version__ and "cpu" in info.devices and info.autodiff
    assert "float64" not in info.dtypes or jax.config.read("jax_enable_x64")
    assert registry.owner_of(jnp.ones(2)) == "jax"
    assert backend.device_of(jnp.ones(2)) == jax.default_backend()
    assert not backend.is_tracked(jnp.ones(2))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_to_numpy_and_from_numpy_keep_dtype(dtype: str) -> None:
    backend = registry.get("jax")
    array = np.arange(6).reshape(2, 3).astype(DTYPES[dtype])
    x = backend.from_numpy(array, "cpu")
    assert isinstance(x, jax.Array) and x.dtype == DTYPES[dtype]
    back = backend.to_numpy(x)
    assert isinstance(back, np.ndarray) and back.dtype == DTYPES[dtype]
    np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_weakly_typed_float64_params_take_x_dtype_as_in_jax(dtype: str) -> None:
    """Under x64, ``jnp.full(shape, 2.0)`` is a weak float64 array, which JAX's own ops take in the other operand's
    dtype: it was a DTypeError. It is cast to x's dtype; its gradient has its own dtype, as JAX's cast gives it."""
    with enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (4, 8), jnp.float32).astype(dtype)
        w, b = jnp.full((8,), 2.0), jnp.full((8,), 0.5)
        assert w.weak_type and w.dtype == jnp.float64
        strong_w, strong_b = w.astype(dtype), b.astype(dtype)
        for run in (lambda *a: layernorm.layer_norm(*a), jax.jit(lambda *a: layernorm.layer_norm(*a))):
            np.testing.assert_array_equal(run(x, w, b), layernorm.layer_norm(x, strong_w, strong_b))
        np.testing.assert_array_equal(layernorm.rms_norm(x, w), layernorm.rms_norm(x, strong_w))
        grads = jax.grad(lambda w, b: layernorm.layer_norm(x, w, b).astype(jnp.float32).sum() ** 2, (0, 1))(w, b)
        strong = jax.grad(lambda w, b: layernorm.layer_norm(x, w, b).astype(jnp.float32).sum() ** 2, (0, 1))(
            strong_w, strong_b
        )
        for got, expected in zip(grads, strong, strict=True):
            assert got.dtype == jnp.float64
            np.testing.assert_array_equal(got, expected.astype(jnp.float64))
        for got, expected in zip(
            layernorm.layer_norm_backward(jnp.ones_like(x), x, w),
            layernorm.layer_norm_backward(jnp.ones_like(x), x, strong_w),
            strict=True,
        ):
            np.testing.assert_array_equal(got, expected)
        crossed = layernorm.layer_norm(x, w, backend="numpy")
        np.testing.assert_array_equal(crossed, layernorm.layer_norm(x, strong_w, backend="numpy"))
        for _ in range(2):  # a strong float64 weight is refused, also after a weak one of its dtype passed
            with pytest.raises(layernorm.DTypeError, match="weight must have dtype"):
                layernorm.layer_norm(x, jnp.ones(8, jnp.float64))
            layernorm.layer_norm(x, w)


def test_float64_without_x64_is_a_dtype_error_not_a_downcast() -> None:
    assert not jax.config.read("jax_enable_x64")
    backend = registry.get("jax")
    with pytest.raises(layernorm.DTypeError, match="x64"):
        backend.from_numpy(np.ones((2, 3)))
    with pytest.raises(layernorm.DTypeError, match="jax_enable_x64"):
        layernorm.layer_norm(np.ones((2, 3)), backend="jax")
    with enable_x64(True):
        y = layernorm.layer_norm(np.ones((2, 3)), backend="jax")
        assert isinstance(y, np.ndarray) and y.dtype == np.float64


def test_a_float64_array_made_under_x64_is_refused_once_x64_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """It ran as float32 (y, statistics and gradients float32 for a float64 x), with only JAX's own warning."""
    assert not jax.config.read("jax_enable_x64")
    with enable_x64(True):
        x = jnp.ones((2, 3), jnp.float64)
    assert x.dtype == jnp.float64
    calls = (
        layernorm.layer_norm,
        layernorm.rms_norm,
        partial(layernorm.layer_norm_backward, x),
        partial(layernorm.rms_norm_backward, x),
    )
    monkeypatch.setattr(dispatch, "_engine_dtypes", set())  # forget float64 found computed while x64 was on
    with pytest.raises(layernorm.DTypeError) as crossing:  # the core's check: a NumPy array for the JAX engine
        layernorm.layer_norm(np.ones((2, 3)), backend="jax")
    for call in calls:
        with pytest.raises(layernorm.DTypeError, match="jax_enable_x64") as own:
            call(x)
        assert str(own.value) == str(crossing.value)  # one wording, whichever path refused it


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_numpy_input_on_the_jax_engine_returns_numpy(dtype: str) -> None:
    x, w, b, _ = _inputs((5, 12), -1, DTYPES[dtype])
    y = layernorm.layer_norm(x, w, b, backend="jax")
    spec = check_forward("layer_norm", x, w, b, -1, 1e-5)
    assert isinstance(y, np.ndarray) and y.dtype == x.dtype
    assert error_ratio(y, reference.layer_norm(x, w, b, spec)[0], tolerance(dtype, "output")) <= 1


def test_foreign_torch_tensor_crosses_by_dlpack() -> None:
    torch = pytest.importorskip("torch")
    backend = registry.get("jax")
    t = torch.arange(6, dtype=torch.bfloat16).reshape(2, 3)
    x = backend.from_foreign(t)
    assert isinstance(x, jax.Array) and x.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(x, np.float32), t.float().numpy())
    with pytest.raises(layernorm.DTypeError, match="x64"):
        backend.from_foreign(torch.ones(2, dtype=torch.float64))


def test_jax_array_on_another_engine_returns_jax() -> None:
    x, w, b, _ = _inputs((3, 10), -1, DTYPES["float32"])
    y = layernorm.layer_norm(*_put((x, w, b), "cpu"), backend="numpy")
    spec = check_forward("layer_norm", x, w, b, -1, 1e-5)
    assert isinstance(y, jax.Array)
    assert error_ratio(np.asarray(y), reference.layer_norm(x, w, b, spec)[0], tolerance("float32", "output")) <= 1


def test_gpu_arrays_stay_on_the_gpu() -> None:
    if not _has_platform("gpu"):
        pytest.skip("no GPU device visible to JAX")
    x = jax.device_put(jnp.ones((4, 8)), jax.devices("gpu")[0])
    y = layernorm.layer_norm(x)
    assert layernorm_device(y) == "gpu"
    assert registry.get("jax").device_of(registry.get("jax").from_numpy(np.ones(3, np.float32), "cuda")) == "gpu"
    with pytest.raises(
        layernorm.DeviceError, match=r"NumPy cannot take this .*\(DLPack device type 2\) through DLPack"
    ):
        layernorm.layer_norm(x, backend="numpy")


def test_unknown_device_is_a_device_error() -> None:
    if _has_platform("tpu"):
        pytest.skip("a TPU is present")
    with pytest.raises(layernorm.DeviceError, match="tpu"):
        registry.get("jax").from_numpy(np.ones(3, np.float32), "tpu")


def test_bad_stats_dtype_is_the_cores_error() -> None:
    x = jnp.ones((2, 4))
    with pytest.raises(layernorm.DTypeError, match="mean must have dtype float32"):
        layernorm.layer_norm_backward(x, x, mean=jnp.ones((2, 1), jnp.float16), rstd=jnp.ones((2, 1), jnp.float16))
