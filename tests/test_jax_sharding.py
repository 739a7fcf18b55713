"""Sharded inputs under jit on a Mesh of 8 CPU devices give the unsharded result (and the reference's); arrays
committed to different devices are a DeviceError.

XLA fixes the CPU device count when JAX starts, so the mesh tests run in a child pytest process started with
XLA_FLAGS=--xla_force_host_platform_device_count=8; `test_mesh_tests_pass_in_an_8_device_process` starts it and
fails unless every mesh test passed there. In this (parent) process the mesh tests skip, saying so.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import pytest
from child_pytest import assert_child_passes

pytest.importorskip("jax")

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

try:
    from jax import shard_map
except ImportError:  # JAX before shard_map left jax.experimental
    from jax.experimental.shard_map import shard_map

import layernorm
from layernorm_core import check_forward, normalize_axes, reference
from layernorm_core.registry import registry
from layernorm_core.spec import Axis
from layernorm_core.tolerances import error_ratio, gradient_scale, row_condition, tolerance

DEVICES = 8
MESH_TESTS = 26  # 3 layouts x (forward, gradients) + 6 explicit + 7 under shard_map + 5 single tests + 2 placements
needs_mesh = pytest.mark.skipif(
    len(jax.devices("cpu")) < DEVICES,
    reason=f"needs {DEVICES} CPU devices: test_mesh_tests_pass_in_an_8_device_process runs these in a child process",
)
LAYOUTS = [
    pytest.param(P("batch", None), id="batch"),
    pytest.param(P(None, ("batch", "model")), id="normalized-8way"),
    pytest.param(P("batch", "model"), id="batch-and-normalized"),
]

EXPLICIT_COTANGENTS = hasattr(jax.sharding, "reshard")
"""JAX gives a transpose's cotangents their primal's sharding under Explicit mesh axes from the JAX that has
jax.sharding.reshard on (0.6.2, the oldest declared, gave dx of a replicated x the weight's sharding)."""
needs_explicit_cotangents = pytest.mark.skipif(
    not EXPLICIT_COTANGENTS,
    reason=f"JAX {jax.__version__} gives Explicit-axes cotangents the sharding of what they are computed from",
)

PARAMS_SHARDED_UNLIKE_X = [
    pytest.param(P(None, "model"), P(), id="x-along-normalized-params-replicated"),
    pytest.param(P(), P("model"), id="x-replicated-params-sharded"),
]
"""(x's layout, the parameters') under a mesh of one Explicit axis, "model"."""


def _mesh() -> jax.sharding.Mesh:
    return jax.make_mesh((4, 2), ("batch", "model"))


def _inputs(shape: tuple[int, ...], axis: Axis) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    normalized_shape = tuple(shape[a] for a in normalize_axes(axis, len(shape)))
    x = (rng.standard_normal(shape) * 2 + 3).astype(np.float32)
    w = rng.standard_normal(normalized_shape).astype(np.float32)
    b = rng.standard_normal(normalized_shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    return x, w, b, dy


def _param_spec(layout: P) -> P:
    return P(layout[1])


@needs_mesh
@pytest.mark.parametrize("layout", LAYOUTS)
def test_sharded_forward_matches_unsharded(layout: P) -> None:
    x, w, b, _ = _inputs((16, 64), -1)
    mesh = _mesh()
    xs = jax.device_put(x, NamedSharding(mesh, layout))
    ws, bs = (jax.device_put(p, NamedSharding(mesh, _param_spec(layout))) for p in (w, b))
    assert len(xs.sharding.device_set) == DEVICES
    f = jax.jit(lambda x, w, b: layernorm.layer_norm(x, w, b, return_stats=True))
    y, mean, rstd = f(xs, ws, bs)
    y0, mean0, rstd0 = f(jnp.asarray(x), jnp.asarray(w), jnp.asarray(b))
    for got, unsharded in ((y, y0), (mean, mean0), (rstd, rstd0)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(unsharded), rtol=1e-6, atol=1e-6)
    spec = check_forward("layer_norm", x, w, b, -1, 1e-5)
    ref = reference.layer_norm(x, w, b, spec)[0]
    assert error_ratio(np.asarray(y), ref, tolerance("float32", "output"), row_condition(x, spec)) <= 1
    rms = jax.jit(lambda x, w: layernorm.rms_norm(x, w))(xs, ws)
    np.testing.assert_allclose(np.asarray(rms), np.asarray(layernorm.rms_norm(jnp.asarray(x), jnp.asarray(w))), 1e-6)


@needs_mesh
@pytest.mark.parametrize("layout", LAYOUTS)
def test_sharded_gradients_match_unsharded_and_reference(layout: P) -> None:
    x, w, b, dy = _inputs((16, 64), -1)
    mesh = _mesh()
    shard = NamedSharding(mesh, layout)
    xs, dys = jax.device_put(x, shard), jax.device_put(dy, shard)
    ws, bs = (jax.device_put(p, NamedSharding(mesh, _param_spec(layout))) for p in (w, b))

    def loss(x: jax.Array, w: jax.Array, b: jax.Array, dy: jax.Array) -> jax.Array:
        return jnp.sum(layernorm.layer_norm(x, w, b) * dy)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    sharded = grad(xs, ws, bs, dys)
    unsharded = grad(jnp.asarray(x), jnp.asarray(w), jnp.asarray(b), jnp.asarray(dy))
    spec = check_forward("layer_norm", x, w, b, -1, 1e-5)
    scale = gradient_scale(dy, w, reference.layer_norm(x, None, None, spec)[2], spec)
    expected = reference.layer_norm_backward(dy, x, w, spec)
    for got, again, ref, s in zip(sharded, unsharded, expected, (scale, None, None), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(again), rtol=1e-5, atol=1e-5)
        assert error_ratio(np.asarray(got), ref, tolerance("float32", "grad"), row_condition(x, spec), scale=s) <= 1


@needs_mesh
@needs_explicit_cotangents
@pytest.mark.parametrize(("x_layout", "param_layout"), PARAMS_SHARDED_UNLIKE_X)
def test_gradients_under_explicit_axes_of_params_sharded_unlike_x(x_layout: P, param_layout: P) -> None:
    """Under a mesh of Explicit axes a cotangent must have its primal's sharding: dweight of a replicated weight came
    out sharded like x, dx of a replicated x like the weight, and jax.custom_vjp refused them (a ValueError)."""
    x, w, b, dy = _inputs((16, 64), -1)
    mesh = jax.make_mesh((8,), ("model",), axis_types=(AxisType.Explicit,))
    xs, dys = (jax.device_put(a, NamedSharding(mesh, x_layout)) for a in (x, dy))
    ws, bs = (jax.device_put(p, NamedSharding(mesh, param_layout)) for p in (w, b))

    def loss(x: jax.Array, w: jax.Array, b: jax.Array, dy: jax.Array) -> jax.Array:
        y, mean, rstd = layernorm.layer_norm(x, w, b, return_stats=True)
        return jnp.sum((y + layernorm.rms_norm(x, w) + mean * rstd) * dy)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(xs, ws, bs, dys)
    expected = jax.grad(loss, argnums=(0, 1, 2))(*map(jnp.asarray, (x, w, b, dy)))
    for got, want, primal in zip(grads, expected, (xs, ws, bs), strict=True):
        assert got.sharding.is_equivalent_to(primal.sharding, got.ndim)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=2e-5)


@needs_mesh
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm", "layer_norm stats"])
def test_shard_map_gradients_match_unsharded(op: str) -> None:
    """Inside shard_map each device normalizes its rows with the replicated parameters; their gradients are the
    per-device sums, which the parameters' cast to varying sums across devices (as for JAX's own ops)."""
    x, w, b, dy = _inputs((16, 64), -1)
    mesh = jax.make_mesh((8,), ("batch",))
    rows, replicated = NamedSharding(mesh, P("batch")), NamedSharding(mesh, P())

    def norm(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
        if op == "rms_norm":
            return layernorm.rms_norm(x, w)
        if op == "layer_norm":
            return layernorm.layer_norm(x, w, b)
        y, mean, rstd = layernorm.layer_norm(x, w, b, return_stats=True)
        return y + mean * rstd

    def loss(f: Any, x: jax.Array, w: jax.Array, b: jax.Array, dy: jax.Array) -> jax.Array:
        return jnp.sum(f(x, w, b) * dy)

    mapped = shard_map(norm, mesh=mesh, in_specs=(P("batch"), P(), P()), out_specs=P("batch"))
    grad = jax.jit(jax.grad(partial(loss, mapped), argnums=(0, 1, 2)))
    placed = zip((x, w, b, dy), (rows, replicated, replicated, rows), strict=True)
    sharded = grad(*(jax.device_put(a, s) for a, s in placed))
    unsharded = jax.grad(partial(loss, norm), argnums=(0, 1, 2))(*map(jnp.asarray, (x, w, b, dy)))
    for got, expected in zip(sharded, unsharded, strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=2e-5)


@needs_mesh
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_shard_map_gradients_of_per_device_weights_with_x_closed_over(op: str) -> None:
    """x a concrete array closed over, one weight per device: the custom_vjp's backward gave the weight's cotangent
    x's (replicated) type, which JAX refused, since only a tracer x was cast to vary with the weight."""
    x, w, _, dy = _inputs((16, 64), -1)
    mesh = jax.make_mesh((8,), ("batch",))
    xa = jnp.asarray(x)
    stacked = jnp.stack([jnp.asarray(w) * (1 + k / 8) for k in range(8)])
    weights = jax.device_put(stacked, NamedSharding(mesh, P("batch")))

    def norm(weight: jax.Array) -> jax.Array:
        if op == "rms_norm":
            return layernorm.rms_norm(xa, weight)
        return layernorm.layer_norm(xa, weight)

    mapped = shard_map(lambda ws: norm(ws[0])[None], mesh=mesh, in_specs=P("batch"), out_specs=P("batch"))
    grads = jax.jit(jax.grad(lambda ws: jnp.sum(mapped(ws) * jnp.asarray(dy)[None])))(weights)
    expected = jax.vmap(jax.grad(lambda weight: jnp.sum(norm(weight) * jnp.asarray(dy))))(stacked)
    np.testing.assert_allclose(np.asarray(grads), np.asarray(expected), rtol=1e-5, atol=2e-5)


def _with_stats(op: str) -> Callable[..., tuple[jax.Array, ...]]:
    """y and the statistics of ``op``, as a function of x, the weight and (for layer_norm) the bias."""
    return partial(getattr(layernorm, op), return_stats=True)


def _forward_mode_inputs(op: str) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """(x, weight[, bias]) and their tangents, float32 rows of 64."""
    x, w, b, tx = _inputs((16, 64), -1)
    rng = np.random.default_rng(1)
    tw, tb = (rng.standard_normal(w.shape).astype(np.float32) for _ in range(2))
    return ((x, w, b), (tx, tw, tb)) if op == "layer_norm" else ((x, w), (tx, tw))


@needs_mesh
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_shard_map_forward_mode_matches_unsharded(op: str) -> None:
    """jax.jvp of y and the statistics (custom_jvp rules) inside shard_map, in x and in the replicated parameters:
    the JAX ops of the tangent rules cast the parameters' tangents to vary with x's rows themselves, as reverse
    mode's transpose sums them."""
    primals, tangents = _forward_mode_inputs(op)
    mesh = jax.make_mesh((8,), ("batch",))
    rows, replicated = NamedSharding(mesh, P("batch")), NamedSharding(mesh, P())
    params = len(primals) - 1
    mapped = shard_map(_with_stats(op), mesh=mesh, in_specs=(P("batch"), *(P(),) * params), out_specs=P("batch"))
    shardings = (rows, *(replicated,) * params) * 2
    placed = (jax.device_put(a, s) for a, s in zip((*primals, *tangents), shardings, strict=True))
    sharded = jax.jit(lambda *a: jax.jvp(mapped, a[: len(a) // 2], a[len(a) // 2 :])[1])(*placed)
    unsharded = jax.jvp(_with_stats(op), tuple(map(jnp.asarray, primals)), tuple(map(jnp.asarray, tangents)))[1]
    for got, expected in zip(sharded, unsharded, strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=2e-5)


@needs_mesh
@pytest.mark.parametrize(("x_layout", "param_layout"), PARAMS_SHARDED_UNLIKE_X)
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_forward_mode_under_explicit_axes_of_params_sharded_unlike_x(op: str, x_layout: P, param_layout: P) -> None:
    """jax.jvp of y and the statistics in x and the parameters under a mesh of Explicit axes, where the parameters
    are sharded unlike x: each tangent has its output's sharding and the unsharded values."""
    primals, tangents = _forward_mode_inputs(op)
    mesh = jax.make_mesh((8,), ("model",), axis_types=(AxisType.Explicit,))
    layouts = (x_layout, *(param_layout,) * (len(primals) - 1)) * 2
    placed = [jax.device_put(a, NamedSharding(mesh, s)) for a, s in zip((*primals, *tangents), layouts, strict=True)]
    outputs, sharded = jax.jit(lambda *a: jax.jvp(_with_stats(op), a[: len(a) // 2], a[len(a) // 2 :]))(*placed)
    unsharded = jax.jvp(_with_stats(op), tuple(map(jnp.asarray, primals)), tuple(map(jnp.asarray, tangents)))[1]
    for output, got, expected in zip(outputs, sharded, unsharded, strict=True):
        assert got.sharding.is_equivalent_to(output.sharding, got.ndim)
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=2e-5)


@needs_mesh
def test_non_trailing_axis_sharded_along_it() -> None:
    x = _inputs((8, 32, 6), 1)[0]
    xs = jax.device_put(x, NamedSharding(_mesh(), P("model", "batch", None)))
    y = jax.jit(lambda x: layernorm.layer_norm(x, axis=1))(xs)
    spec = check_forward("layer_norm", x, None, None, 1, 1e-5)
    ref = reference.layer_norm(x, None, None, spec)[0]
    assert error_ratio(np.asarray(y), ref, tolerance("float32", "output"), row_condition(x, spec)) <= 1


@needs_mesh
def test_explicit_backward_under_jit_with_sharded_inputs() -> None:
    x, _, _, dy = _inputs((16, 64), -1)
    shard = NamedSharding(_mesh(), P("batch", "model"))
    xs, dys = jax.device_put(x, shard), jax.device_put(dy, shard)
    dx, dw = jax.jit(lambda dy, x: layernorm.rms_norm_backward(dy, x))(dys, xs)
    spec = check_forward("rms_norm", x, None, None, -1, 1e-5)
    ref_dx, ref_dw = reference.rms_norm_backward(dy, x, None, spec)
    scale = gradient_scale(dy, None, reference.rms_norm(x, None, spec)[1], spec)
    assert error_ratio(np.asarray(dx), ref_dx, tolerance("float32", "grad"), scale=scale) <= 1
    assert error_ratio(np.asarray(dw), ref_dw, tolerance("float32", "grad")) <= 1


@needs_mesh
def test_arrays_committed_to_different_devices_are_a_device_error() -> None:
    x, w, b, dy = (jnp.asarray(a) for a in _inputs((16, 64), -1))
    cpu = jax.devices("cpu")
    assert registry.multi_device("jax")
    committed = {
        "x is on cpu:1 but another argument is on cpu:0": (jax.device_put(x, cpu[1]), jax.device_put(w, cpu[0]), b),
        "an argument is on cpu:2 but another argument is on cpu:3": (
            x,
            jax.device_put(w, cpu[2]),
            jax.device_put(b, cpu[3]),
        ),
        "x is on cpu:0,1,2,3,4,5,6,7 but another argument is on cpu:0": (
            jax.device_put(x, NamedSharding(_mesh(), P("batch", None))),
            jax.device_put(w, cpu[0]),
            b,
        ),
    }
    for message, (xa, wa, ba) in committed.items():
        with pytest.raises(layernorm.DeviceError, match=message):
            layernorm.layer_norm(xa, wa, ba)
    with pytest.raises(layernorm.DeviceError, match="x is on cpu:0 but another argument is on cpu:1"):
        layernorm.layer_norm_backward(jax.device_put(dy, cpu[1]), jax.device_put(x, cpu[0]), w)


@needs_mesh
def test_uncommitted_arrays_go_to_the_committed_ones_device() -> None:
    x, w, b, dy = _inputs((16, 64), -1)
    on_3 = jax.devices("cpu")[3]
    spec = check_forward("layer_norm", x, w, b, -1, 1e-5)
    expected = reference.layer_norm(x, w, b, spec)[0]
    for xa, wa, ba in ((jax.device_put(x, on_3), w, jax.device_put(b, on_3)), (x, jax.device_put(w, on_3), b)):
        y = layernorm.layer_norm(jnp.asarray(xa), jnp.asarray(wa), jnp.asarray(ba))
        assert y.devices() == {on_3}
        assert error_ratio(np.asarray(y), expected, tolerance("float32", "output"), row_condition(x, spec)) <= 1
    dx, dw, db = layernorm.layer_norm_backward(jnp.asarray(dy), jax.device_put(x, on_3), jnp.asarray(w))
    assert {next(iter(g.devices())) for g in (dx, dw, db)} == {on_3}


@needs_mesh
def test_outputs_of_another_engine_come_back_to_x_devices() -> None:
    """backend="numpy" runs on host copies; y, mean and rstd return committed to x's device, or, for an x sharded
    over several, uncommitted on one of them: either way they combine with x."""
    x, w, b, _ = _inputs((16, 64), -1)
    spec = check_forward("layer_norm", x, w, b, -1, 1e-5)
    expected = reference.layer_norm(x, w, b, spec)
    for placement in (jax.devices("cpu")[3], NamedSharding(_mesh(), P("batch", None))):
        xa = jax.device_put(x, placement)
        outputs = layernorm.layer_norm(xa, jnp.asarray(w), jnp.asarray(b), return_stats=True, backend="numpy")
        for out, ref in zip(outputs, expected, strict=True):
            assert out.committed == (len(xa.devices()) == 1) and out.devices() <= xa.devices()
            np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(outputs[0] + xa), np.asarray(outputs[0]) + x)


@needs_mesh
@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_outputs_of_another_engine_go_where_jax_would_put_them(backend: str) -> None:
    """An uncommitted x with a weight committed to a device: the outputs go to that device, as the JAX engine's do
    (the NumPy engine put them on device 0, committed, and ``y * w`` failed); with every array uncommitted they are
    uncommitted too."""
    x, w, b, _ = _inputs((16, 64), -1)
    on_3 = jax.devices("cpu")[3]
    spec = check_forward("layer_norm", x, w, b, -1, 1e-5)
    expected = reference.layer_norm(x, w, b, spec)[0]
    wa = jax.device_put(w, on_3)
    y = layernorm.layer_norm(jnp.asarray(x), wa, jnp.asarray(b), backend=backend)
    assert y.devices() == {on_3} and y.committed
    np.testing.assert_allclose(np.asarray(y * wa), expected * w, rtol=1e-5, atol=1e-5)
    y = layernorm.layer_norm(jnp.asarray(x), jnp.asarray(w), jnp.asarray(b), backend=backend)
    assert not y.committed
    np.testing.assert_allclose(np.asarray(y * wa), expected * w, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(len(jax.devices("cpu")) >= DEVICES, reason="this is the 8-device child process")
def test_mesh_tests_pass_in_an_8_device_process() -> None:
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={DEVICES}".strip()
    env = {"XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    skipped = 0 if EXPLICIT_COTANGENTS else len(PARAMS_SHARDED_UNLIKE_X)  # test_gradients_under_explicit_axes_...
    assert_child_passes(__file__, env, deselect="in_an_8_device", tests=MESH_TESTS - skipped, skipped=skipped)
