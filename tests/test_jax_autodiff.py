"""JAX transformations through the public API: grad, vjp, jit, vmap, checkpoint, higher order, tracers."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import pytest

pytest.importorskip("jax")

import jax
import jax.numpy as jnp
from jax import lax
from jax_compat import enable_x64

import layernorm
from layernorm_core import check_forward, normalize_axes, reference
from layernorm_core.registry import registry
from layernorm_core.spec import Axis
from layernorm_core.tolerances import error_ratio, gradient_scale, row_condition, tolerance

AXES = [
    pytest.param((4, 6, 16), -1, id="trailing"),
    pytest.param((4, 6, 16), (1, 2), id="two-trailing"),
    pytest.param((3, 8, 5), 1, id="channels-first"),
    pytest.param((3, 4, 5, 6), (0, 2), id="non-adjacent"),
]


def _inputs(shape: tuple[int, ...], axis: Axis, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    normalized_shape = tuple(shape[a] for a in normalize_axes(axis, len(shape)))
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(np.float32)
    w = rng.standard_normal(normalized_shape).astype(np.float32)
    b = rng.standard_normal(normalized_shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    return x, w, b, dy


def plain_layer_norm(x: jax.Array, w: jax.Array, b: jax.Array, axis: tuple[int, ...]) -> tuple[jax.Array, ...]:
    """An independent plain-jnp formulation, differentiated by JAX's own autodiff (the oracle for vjp terms)."""
    mean = jnp.mean(x, axis=axis, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=axis, keepdims=True)
    rstd = 1 / jnp.sqrt(var + 1e-5)
    shape = tuple(x.shape[d] if d in axis else 1 for d in range(x.ndim))
    return (x - mean) * rstd * w.reshape(shape) + b.reshape(shape), mean, rstd


def _check_grads(grads: tuple[jax.Array, ...], x: np.ndarray, w: np.ndarray, dy: np.ndarray, axis: Axis) -> None:
    spec = check_forward("layer_norm", x, w, None, axis, 1e-5)
    ref_rstd = reference.layer_norm(x, None, None, spec)[2]
    cond = row_condition(x, spec)
    expected = reference.layer_norm_backward(dy, x, w, spec)
    for got, ref, scale in zip(grads, expected, (gradient_scale(dy, w, ref_rstd, spec), None, None), strict=True):
        assert error_ratio(np.asarray(got), ref, tolerance("float32", "grad"), cond, scale=scale) <= 1


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize(("shape", "axis"), AXES)
def test_grad_matches_reference_backward(shape: tuple[int, ...], axis: Axis, jit: bool) -> None:
    x, w, b, dy = _inputs(shape, axis)

    def loss(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
        return jnp.sum(layernorm.layer_norm(x, w, b, axis=axis) * dy)

    grad = jax.grad(loss, argnums=(0, 1, 2))
    grads = (jax.jit(grad) if jit else grad)(jnp.asarray(x), jnp.asarray(w), jnp.asarray(b))
    _check_grads(grads, x, w, dy, axis)


@pytest.mark.parametrize(("shape", "axis"), AXES)
def test_rms_norm_vjp_matches_reference_backward(shape: tuple[int, ...], axis: Axis) -> None:
    x, w, _, dy = _inputs(shape, axis, seed=1)
    _, vjp = jax.vjp(lambda x, w: layernorm.rms_norm(x, w, axis=axis), jnp.asarray(x), jnp.asarray(w))
    spec = check_forward("rms_norm", x, w, None, axis, 1e-5)
    scale = gradient_scale(dy, w, reference.rms_norm(x, None, spec)[1], spec)
    for got, ref, s in zip(
        vjp(jnp.asarray(dy)), reference.rms_norm_backward(dy, x, w, spec), (scale, None), strict=True
    ):
        assert error_ratio(np.asarray(got), ref, tolerance("float32", "grad"), scale=s) <= 1


def test_the_gradients_are_the_custom_rules_not_autodiff_of_the_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each gradient is the transpose of its custom_jvp tangent rule (the analytic linearization)."""
    from layernorm_jax import kernels

    x = jnp.ones((3, 11))  # a shape no other test traces, so no cached trace hides the call
    calls: list[str] = []

    def spy(name: str) -> Callable[..., Any]:
        original = getattr(kernels, name)

        def called(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return original(*args, **kwargs)

        return called

    for name in ("_layer_norm_tangent", "_rms_norm_tangent"):
        monkeypatch.setattr(kernels, name, spy(name))
    jax.grad(lambda x: layernorm.layer_norm(x).sum())(x)
    jax.grad(lambda x: layernorm.rms_norm(x).sum())(x)
    assert calls == ["_layer_norm_tangent", "_rms_norm_tangent"]
    for op in (layernorm.layer_norm, layernorm.rms_norm):
        assert "custom_jvp_call" in str(jax.make_jaxpr(lambda x, op=op: op(x, return_stats=True))(x))


@pytest.mark.parametrize("one_pass", [False, True], ids=["two-sums", "one-pass"])
def test_both_forms_of_the_backward_row_sums_give_the_reference_gradients(
    monkeypatch: pytest.MonkeyPatch, one_pass: bool
) -> None:
    """The explicit backward of large float32 inputs sums a row's two sums in one variadic reduction on the CPU,
    others in two; differentiated again, either form transposes."""
    from layernorm_jax import kernels

    monkeypatch.setattr(kernels, "ONE_PASS_MIN_ELEMENTS", 0 if one_pass else 1 << 62)
    x, w, b, dy = _inputs((7, 13 + one_pass), -1, seed=11)  # shapes no other test traces: no cached trace
    xj, wj, dyj = jnp.asarray(x), jnp.asarray(w), jnp.asarray(dy)

    def backward(x: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        return layernorm.layer_norm_backward(dyj, x, w)

    assert ("reduce[" in str(jax.make_jaxpr(backward)(xj, wj))) == one_pass  # the variadic reduction, or not
    _check_grads(backward(xj, wj), x, w, dy, -1)
    v = jnp.asarray(np.random.default_rng(12).standard_normal(x.shape), jnp.float32)
    ours = jax.grad(lambda x: jnp.sum(backward(x, wj)[0] * v))(xj)
    inner = jax.grad(lambda x: jnp.sum(plain_layer_norm(x, wj, jnp.asarray(b), (1,))[0] * dyj))
    oracle = jax.grad(lambda x: jnp.sum(inner(x) * v))(xj)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(oracle), rtol=2e-3, atol=2e-4)


@pytest.mark.parametrize(
    ("shape", "axis", "dtype"),
    [
        pytest.param((3, 2, 8200), (1, 2), "float32", id="float32-two-axes"),
        pytest.param((2, 16400), -1, "bfloat16", id="bfloat16"),
        pytest.param((3, 8200), -1, "float64", id="float64"),
    ],
)
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_parameter_gradients_of_a_few_long_rows_are_summed_by_a_product_on_the_cpu(
    op: str, shape: tuple[int, ...], axis: Axis, dtype: str
) -> None:
    """XLA:CPU sums over a batch 7-50 times slower once the rest of each row exceeds 64 KiB (16384 float32
    values, 8192 float64; `SLOW_COLUMN_SUM_BYTES`): the parameter gradients of such rows, by jax.grad and by the
    explicit backward, are taken as products with ones there, and give the reference's."""
    with enable_x64(dtype == "float64"):
        x, w, b, dy = _inputs(shape, axis, seed=31)
        x, dy = x.astype(dtype), dy.astype(dtype)
        if dtype == "float64":
            w, b = w.astype(dtype), b.astype(dtype)
        params = (w, b) if op == "layer_norm" else (w,)
        by_autodiff = jax.jit(
            jax.grad(_weighted_loss(op, axis, jnp.asarray(dy)), argnums=tuple(range(len(params) + 1)))
        )
        args = (jnp.asarray(x), *map(jnp.asarray, params))
        got_autodiff = by_autodiff(*args)
        explicit = getattr(layernorm, f"{op}_backward")
        got_explicit = explicit(jnp.asarray(dy), jnp.asarray(x), jnp.asarray(w), axis=axis)
        programs = [
            by_autodiff.lower(*args),
            jax.jit(partial(explicit, axis=axis)).lower(*map(jnp.asarray, (dy, x, w))),
        ]
        if jax.default_backend() == "cpu":
            assert all(" dot(" in program.compile().as_text() for program in programs)
    spec = check_forward(op, x, w, None, axis, 1e-5)
    expected = getattr(reference, f"{op}_backward")(dy, x, w, spec)
    scale = gradient_scale(dy, w, _reference_stats(op, x, spec)[-1], spec)
    cond = row_condition(x, spec)
    for got in (got_autodiff, got_explicit):
        for name, value, want, s in zip(("dx", "dweight", "dbias"), got, expected, (scale, None, None), strict=False):
            assert error_ratio(np.asarray(value), want, tolerance(dtype, "grad"), cond, scale=s) <= 1, name


def _weighted_loss(op: str, axis: Axis, dy: jax.Array) -> Callable[..., jax.Array]:
    """sum(y * dy) of ``op`` over ``axis`` as a function of x and the parameters (weight, and bias for layer_norm)."""
    norm = getattr(layernorm, op)

    def loss(x: jax.Array, *params: jax.Array) -> jax.Array:
        return jnp.sum(norm(x, *params, axis=axis).astype(dy.dtype) * dy)

    return loss


def test_per_example_gradients_choose_the_row_sums_by_the_batch_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under vmap the explicit backward's one-pass choice sees the whole batch (5 x 119 elements), not one example
    (119)."""
    from layernorm_jax import kernels

    monkeypatch.setattr(kernels, "ONE_PASS_MIN_ELEMENTS", 300)
    x, w, _, dy = _inputs((5, 7, 17), -1, seed=13)  # shapes no other test traces: no cached trace
    xj, wj = jnp.asarray(x), jnp.asarray(w)

    def dx_of(x: jax.Array, dy: jax.Array) -> jax.Array:
        return layernorm.layer_norm_backward(dy, x, wj)[0]

    per_example = jax.vmap(dx_of)
    assert "reduce[" not in str(jax.make_jaxpr(dx_of)(xj[0], jnp.asarray(dy[0])))
    assert "reduce[" in str(jax.make_jaxpr(per_example)(xj, jnp.asarray(dy)))
    grads = per_example(xj, jnp.asarray(dy))
    spec = check_forward("layer_norm", x[0], w, None, -1, 1e-5)
    for k in range(5):
        expected = reference.layer_norm_backward(dy[k], x[k], w, spec)[0]
        scale = gradient_scale(dy[k], w, reference.layer_norm(x[k], None, None, spec)[2], spec)
        cond = row_condition(x[k], spec)
        assert error_ratio(np.asarray(grads[k]), expected, tolerance("float32", "grad"), cond, scale=scale) <= 1


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_half_gradients_have_the_input_dtype(dtype: str) -> None:
    x = jnp.linspace(-2, 3, 64, dtype=jnp.float32).reshape(4, 16).astype(dtype)
    w = jnp.ones(16, jnp.float32)  # mixed precision: float32 weight, half x
    dx, dw = jax.grad(lambda x, w: layernorm.layer_norm(x, w).astype(jnp.float32).sum(), argnums=(0, 1))(x, w)
    assert dx.dtype == jnp.dtype(dtype) and dw.dtype == jnp.float32


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_reverse_mode_through_the_statistics_keeps_x_not_its_normalized_float32_copy(op: str) -> None:
    """jax.vjp of y and the statistics holds x, the weight and row statistics, as of y alone: the statistics' tangent
    rules held xhat, a float32 array of x's size (twice a bfloat16 x's bytes; under lax.scan, one per step)."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((6, 40)), jnp.bfloat16)
    w = jnp.ones(40, jnp.float32)
    _, vjp = jax.vjp(lambda x, w: getattr(layernorm, op)(x, w, return_stats=True), x, w)
    held = [leaf.dtype for leaf in jax.tree_util.tree_leaves(vjp) if leaf.shape == x.shape]
    assert held == [x.dtype]


def test_stats_cotangents_match_autodiff() -> None:
    """Gradients flow through returned mean and rstd too, as autodiff of a plain formula says."""
    x, w, b, dy = (jnp.asarray(a) for a in _inputs((5, 3, 12), (1, 2), seed=2))
    a = jnp.asarray(np.random.default_rng(3).standard_normal((5, 1, 1)), jnp.float32)

    def loss(fn: Callable[..., tuple[jax.Array, ...]]) -> Callable[..., jax.Array]:
        def inner(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
            y, mean, rstd = fn(x, w, b)
            return jnp.sum(y * dy) + jnp.sum(mean * a) + jnp.sum(rstd * a * 3)

        return inner

    ours = jax.grad(loss(lambda x, w, b: layernorm.layer_norm(x, w, b, axis=(1, 2), return_stats=True)), (0, 1, 2))
    oracle = jax.grad(loss(lambda x, w, b: plain_layer_norm(x, w, b, (1, 2))), (0, 1, 2))
    for got, expected in zip(ours(x, w, b), oracle(x, w, b), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=2e-4, atol=2e-5)
    rms = jax.grad(lambda x: jnp.sum(layernorm.rms_norm(x, return_stats=True)[1] * 2.0))(x)
    rms_oracle = jax.grad(lambda x: jnp.sum(2.0 / jnp.sqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-5)))(x)
    np.testing.assert_allclose(np.asarray(rms), np.asarray(rms_oracle), rtol=2e-4, atol=2e-6)


def test_vmap_matches_the_unbatched_call_and_reference() -> None:
    x, w, b, _ = _inputs((6, 4, 10), -1)
    batched = jax.vmap(lambda x: layernorm.layer_norm(x, jnp.asarray(w), jnp.asarray(b), axis=-1))(jnp.asarray(x))
    spec = check_forward("layer_norm", x, w, b, -1, 1e-5)
    assert error_ratio(np.asarray(batched), reference.layer_norm(x, w, b, spec)[0], tolerance("float32", "output")) <= 1
    # axis 0 of each (4, 10) example is axis 1 of x: vmap must not shift the normalized axes.
    per_example = jax.vmap(lambda x: layernorm.rms_norm(x, axis=0))(jnp.asarray(x))
    spec0 = check_forward("rms_norm", x, None, None, 1, 1e-5)
    assert (
        error_ratio(np.asarray(per_example), reference.rms_norm(x, None, spec0)[0], tolerance("float32", "output")) <= 1
    )
    # vmap over a non-leading axis, of the explicit backward too
    dx = jax.vmap(lambda dy, x: layernorm.layer_norm_backward(dy, x)[0], in_axes=1, out_axes=1)(jnp.ones_like(x), x)
    np.testing.assert_allclose(np.asarray(dx), 0.0, atol=1e-5)


def test_per_example_gradients_with_vmap_of_grad() -> None:
    x, w, _, dy = _inputs((5, 12), -1, seed=4)

    def loss(x: jax.Array, w: jax.Array, dy: jax.Array) -> jax.Array:
        return jnp.sum(layernorm.layer_norm(x, w) * dy)

    dws = jax.jit(jax.vmap(jax.grad(loss, argnums=1), in_axes=(0, None, 0)))(jnp.asarray(x), jnp.asarray(w), dy)
    spec = check_forward("layer_norm", x[:1], w, None, -1, 1e-5)
    for row in range(5):
        expected = reference.layer_norm_backward(dy[row : row + 1], x[row : row + 1], w, spec)[1]
        assert error_ratio(np.asarray(dws[row]), expected, tolerance("float32", "grad")) <= 1


def test_vmap_over_per_example_weights_matches_the_reference() -> None:
    """Weights batched with x (an ensemble, in_axes=0 for both): each example normalized with its own weight."""
    x, w, b, dy = _inputs((5, 12), -1, seed=6)
    ws = np.stack([w * (k + 1) for k in range(5)])

    def loss(x: jax.Array, w: jax.Array, b: jax.Array, dy: jax.Array) -> jax.Array:
        return jnp.sum(layernorm.layer_norm(x, w, b) * dy)

    ys = jax.vmap(lambda x, w: layernorm.layer_norm(x, w, jnp.asarray(b)))(jnp.asarray(x), jnp.asarray(ws))
    batched_grad = jax.vmap(jax.grad(loss, argnums=(0, 1, 2)), in_axes=(0, 0, None, 0))
    grads = batched_grad(*(jnp.asarray(a) for a in (x, ws, b, dy)))
    spec = check_forward("layer_norm", x[:1], w, b, -1, 1e-5)
    for row in range(5):
        one = slice(row, row + 1)
        expected_y = reference.layer_norm(x[one], ws[row], b, spec)[0]
        assert error_ratio(np.asarray(ys[row : row + 1]), expected_y, tolerance("float32", "output")) <= 1
        _check_grads((grads[0][one], grads[1][row], grads[2][row]), x[one], ws[row], dy[one], -1)


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_jax_export_round_trip_serves_forward_and_vjp(op: str) -> None:
    """jax.export (serialized StableHLO, with ``vjp_order=1``) runs the same function and gradients after loading:
    the transposes of the custom_jvp rules."""
    pytest.importorskip("flatbuffers", reason="JAX serializes exports with flatbuffers, an optional dependency of JAX")
    from jax import export

    x, w, b, dy = (jnp.asarray(a) for a in _inputs((4, 6, 16), -1, seed=7))
    args = (x, w, b) if op == "layer_norm" else (x, w)
    f = jax.jit(getattr(layernorm, op))
    served = export.deserialize(export.export(f)(*args).serialize(vjp_order=1))

    def loss(g: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
        return lambda *args: jnp.sum(g(*args) * dy)

    every = tuple(range(len(args)))
    np.testing.assert_array_equal(np.asarray(served.call(*args)), np.asarray(f(*args)))
    for got, expected in zip(jax.grad(loss(served.call), every)(*args), jax.grad(loss(f), every)(*args), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_jax_export_with_a_symbolic_batch_serves_gradients() -> None:
    """Gradients exported for any number of rows (shape polymorphism) equal those of a concrete trace."""
    from jax import export

    x, w, b, _ = (jnp.asarray(a) for a in _inputs((5, 16), -1, seed=8))
    grad = jax.jit(jax.grad(lambda x, w, b: jnp.sum(layernorm.layer_norm(x, w, b) ** 2), (0, 1, 2)))
    (rows,) = export.symbolic_shape("rows")
    exported = export.export(grad)(
        jax.ShapeDtypeStruct((rows, 16), jnp.float32), *(jax.ShapeDtypeStruct((16,), jnp.float32),) * 2
    )
    for got, expected in zip(exported.call(x, w, b), grad(x, w, b), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_checkpoint_and_jit_compose() -> None:
    x, w, b, dy = (jnp.asarray(a) for a in _inputs((4, 6, 16), -1, seed=5))

    def block(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
        return jnp.tanh(layernorm.layer_norm(x, w, b)) * layernorm.rms_norm(x, w)

    def loss(f: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
        return lambda x, w, b: jnp.sum(f(x, w, b) * dy)

    plain = jax.grad(loss(block), (0, 1, 2))(x, w, b)
    remat = jax.jit(jax.grad(loss(jax.checkpoint(block)), (0, 1, 2)))(x, w, b)
    oracle = jax.grad(loss(lambda x, w, b: jnp.tanh(plain_layer_norm(x, w, b, (2,))[0]) * _plain_rms(x, w)), (0, 1, 2))
    for got, again, expected in zip(plain, remat, oracle(x, w, b), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(again), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=2e-4, atol=2e-5)


def _plain_rms(x: jax.Array, w: jax.Array) -> jax.Array:
    return x / jnp.sqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-5) * w


@pytest.mark.parametrize("row_length", ["concrete", "symbolic"])
@pytest.mark.parametrize("eps", [1e-3, 1e-5])
def test_second_order_through_statistics_of_one_element_rows(eps: float, row_length: str) -> None:
    """Rows of one element: mean = x, y = 0 and rstd = eps**-0.5 whatever x, so sum(y^2 + mean^2 + rstd^2) has the
    gradient 2x, and the gradient of its squared norm is 8x. (float32: the general backward's rstd**3 terms, which
    cancel only in exact arithmetic, gave 0 at eps = 1e-5.) ``symbolic``: exported by jax.export for rows of any
    length, which is 1 only when it runs (the general backward ran there, and gave 0)."""
    x = jnp.asarray([[0.5], [-1.2], [2.0]], jnp.float32)

    def loss(x: jax.Array) -> jax.Array:
        return sum(jnp.sum(out**2) for out in layernorm.layer_norm(x, eps=eps, return_stats=True))

    if row_length == "symbolic":
        from jax import export

        rows, length = export.symbolic_shape("rows, length")
        loss = export.export(jax.jit(loss))(jax.ShapeDtypeStruct((rows, length), jnp.float32)).call
    second = jax.grad(lambda x: jnp.sum(jax.grad(loss)(x) ** 2))(x)
    np.testing.assert_allclose(np.asarray(second), 8 * np.asarray(x), rtol=1e-6)


def test_second_order_reverse_mode_works() -> None:
    """grad of grad differentiates the analytic backward itself; checked against autodiff of autodiff."""
    with enable_x64(True):
        x, w, b, dy = (jnp.asarray(a, jnp.float64) for a in _inputs((3, 9), -1, seed=6))
        v = jnp.asarray(np.random.default_rng(7).standard_normal((3, 9)))

        def second(fn: Callable[[jax.Array], jax.Array]) -> jax.Array:
            inner = jax.grad(lambda x: jnp.sum(fn(x) * dy))
            return jax.grad(lambda x: jnp.sum(inner(x) * v))(x)

        ours = second(lambda x: layernorm.layer_norm(x, w, b))
        oracle = second(lambda x: plain_layer_norm(x, w, b, (1,))[0])
        np.testing.assert_allclose(np.asarray(ours), np.asarray(oracle), rtol=1e-9, atol=1e-10)
        rms = second(lambda x: layernorm.rms_norm(x, w))
        np.testing.assert_allclose(np.asarray(rms), np.asarray(second(lambda x: _plain_rms(x, w))), rtol=1e-9)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_explicit_backward_of_one_element_rows_takes_the_given_statistics(jit: bool) -> None:
    """layer_norm_backward of rows of one element with a caller's mean and rstd, and its derivatives in x and mean,
    against JAX's autodiff of the formula, in float64. The backward took x - mean as 0, as it is for x's own mean:
    dx and dweight came out 0 (the formula's are -12 and -2 for x = 2, mean = 3, rstd = 2, dy = 1, weight = 1.5,
    as on NumPy and torch), and their derivatives in x and mean 0."""
    rng = np.random.default_rng(4)
    with enable_x64(True):
        x, mean, dy = (jnp.asarray(rng.standard_normal((3, 1))) for _ in range(3))
        rstd, w = jnp.asarray(rng.uniform(0.5, 2.0, (3, 1))), jnp.asarray(rng.standard_normal(1))
        coefficients = (jnp.asarray(rng.standard_normal((3, 1))), *(jnp.asarray(rng.standard_normal(1)),) * 2)

        def formula(x: jax.Array, mean: jax.Array) -> tuple[jax.Array, ...]:
            xhat, g = (x - mean) * rstd, dy * w
            return rstd * (g - g - xhat * g * xhat), (dy * xhat).sum(0), dy.sum(0)  # the means of one element

        def ours(x: jax.Array, mean: jax.Array) -> tuple[jax.Array, ...]:
            return tuple(layernorm.layer_norm_backward(dy, x, w, mean=mean, rstd=rstd))

        def loss(grads: Callable[[jax.Array, jax.Array], tuple[jax.Array, ...]]) -> Callable[..., jax.Array]:
            return lambda x, mean: sum(jnp.sum(g * c) for g, c in zip(grads(x, mean), coefficients, strict=True))

        run = jax.jit(ours) if jit else ours
        for got, expected in zip(run(x, mean), formula(x, mean), strict=True):
            np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-12, atol=1e-12)
        derivatives = jax.grad(loss(run), argnums=(0, 1))(x, mean)
        oracle = jax.grad(loss(formula), argnums=(0, 1))(x, mean)
        for got, expected in zip(derivatives, oracle, strict=True):
            np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-12, atol=1e-12)


def test_forward_over_reverse_matches_autodiff_of_a_plain_formula() -> None:
    """jax.hessian (jax.jacfwd of jax.jacrev) differentiates the transposed tangent rule forward; in float64."""
    with enable_x64(True):
        x, w, b, dy = (jnp.asarray(a, jnp.float64) for a in _inputs((2, 5), -1, seed=9))
        ours = jax.hessian(lambda x: jnp.sum(layernorm.layer_norm(x, w, b) * dy))(x)
        oracle = jax.hessian(lambda x: jnp.sum(plain_layer_norm(x, w, b, (1,))[0] * dy))(x)
        np.testing.assert_allclose(np.asarray(ours), np.asarray(oracle), rtol=1e-9, atol=1e-10)


JACOBIAN_AXES = [
    pytest.param((3, 4, 5), -1, id="trailing"),
    pytest.param((3, 4, 5), (1, 2), id="two-trailing"),
    pytest.param((3, 5, 2), 1, id="channels-first"),
    pytest.param((2, 3, 2, 4), (0, 2), id="non-adjacent"),
]
STATISTICS = {"layer_norm": ("mean", "rstd"), "rms_norm": ("rstd",)}


def _reference_jacobians(
    op: str, x: np.ndarray, w: np.ndarray | None, axis: Axis, eps: float
) -> tuple[np.ndarray, np.ndarray | None, list[np.ndarray]]:
    """Float64 Jacobians of y by x, of y by the weight, and of each returned statistic by x: rows, the reference
    vjps of basis vectors."""
    spec = check_forward(op, x, w, None, axis, eps)
    backward = getattr(reference, f"{op}_backward")
    y_rows, w_rows = [], []
    for i in range(x.size):
        dy = np.zeros(x.size)
        dy[i] = 1
        dx, dw = backward(dy.reshape(x.shape), x, w, spec)[:2]
        y_rows.append(dx.ravel())
        w_rows.append(dw.ravel())
    stats_size = int(np.prod(spec.stats_shape))
    stats = []
    for name in STATISTICS[op]:
        rows = []
        for i in range(stats_size):
            basis = np.zeros(stats_size)
            basis[i] = 1
            given = basis.reshape(spec.stats_shape)
            rows.append(reference.statistics_backward(x, spec, *((given, None) if name == "mean" else (None, given))))
        stats.append(np.array([r.ravel() for r in rows]))
    return np.array(y_rows), None if w is None else np.array(w_rows), stats


def _jacfwd(
    op: str, x: jax.Array, w: jax.Array | None, axis: Axis, eps: float
) -> tuple[np.ndarray, np.ndarray | None, list[np.ndarray]]:
    """jax.jacfwd of y and of each returned statistic, by x and (where given) by the weight, as matrices."""

    def f(x: jax.Array, w: jax.Array | None) -> tuple[jax.Array, ...]:
        return getattr(layernorm, op)(x, w, axis=axis, eps=eps, return_stats=True)

    (dy_dx, dy_dw), *stats = jax.jacfwd(f, argnums=(0, 1))(x, w)
    by_x = [_as_matrix(dstat_dx, dstat_dx.size // x.size) for dstat_dx, _ in stats]
    return _as_matrix(dy_dx, x.size), _as_matrix(dy_dw, x.size), by_x  # type: ignore[return-value]


def _as_matrix(jacobian: jax.Array | None, rows: int) -> np.ndarray | None:
    return None if jacobian is None else np.asarray(jacobian).astype(np.float64).reshape(rows, -1)


def _jacobian_input(shape: tuple[int, ...], dtype: str, scale: float = 1.0) -> np.ndarray:
    x = np.random.default_rng(21).standard_normal(shape) * 2 + 0.5
    return (x * scale).astype(np.float32).astype(dtype)  # through float32: ml_dtypes' bfloat16 from float64 is slow


def _reference_stats(op: str, x: np.ndarray, spec: Any) -> tuple[np.ndarray, ...]:
    """The reference's statistics of x: (mean, rstd) or (rstd,)."""
    if op == "layer_norm":
        return reference.layer_norm(x, None, None, spec)[1:]
    return reference.rms_norm(x, None, spec)[1:]


@pytest.mark.parametrize("weighted", [False, True], ids=["no-weight", "weight"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
@pytest.mark.parametrize(("shape", "axis"), JACOBIAN_AXES)
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_jacfwd_matches_the_reference_jacobian(
    op: str, shape: tuple[int, ...], axis: Axis, dtype: str, weighted: bool
) -> None:
    """Forward mode (jax.jacfwd) of y and of the returned statistics, by x and the weight, against the float64
    reference vjps of every basis vector, at the tolerance table's grad tolerance of x's dtype."""
    _check_jacfwd(op, shape, axis, dtype, dtype if weighted else None)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_jacfwd_of_a_half_x_with_a_float32_weight_matches_the_reference_jacobian(op: str, dtype: str) -> None:
    """Mixed precision (docs/spec.md "Dtypes"): forward mode by a half x and its float32 weight, as above."""
    _check_jacfwd(op, (3, 4, 5), (1, 2), dtype, "float32")


def _check_jacfwd(op: str, shape: tuple[int, ...], axis: Axis, dtype: str, weight_dtype: str | None) -> None:
    """`_jacfwd` against `_reference_jacobians` at the grad tolerance of x's dtype; no weight for a dtype of None."""
    with enable_x64(dtype == "float64"):
        x = _jacobian_input(shape, dtype)
        normalized_shape = tuple(shape[a] for a in normalize_axes(axis, len(shape)))
        rng = np.random.default_rng(22)
        w = None if weight_dtype is None else rng.standard_normal(normalized_shape).astype(weight_dtype)
        spec = check_forward(op, x, w, None, axis, 1e-5)
        dy_dx, dy_dw, stats = _jacfwd(op, jnp.asarray(x), None if w is None else jnp.asarray(w), axis, 1e-5)
        expected_dx, expected_dw, expected_stats = _reference_jacobians(op, x, w, axis, 1e-5)
    # every row of dy/dx is a dx of the reference backward: its scale is that of dy = a basis vector
    scale = gradient_scale(np.ones_like(x, dtype=np.float64), w, _reference_stats(op, x, spec)[-1], spec)
    assert error_ratio(dy_dx, expected_dx, tolerance(dtype, "grad"), scale=scale) <= 1, "dy/dx"
    if expected_dw is None:
        assert dy_dw is None
    else:
        assert error_ratio(dy_dw, expected_dw, tolerance(dtype, "grad")) <= 1, "dy/dw"  # type: ignore[arg-type]
    for name, got, want in zip(STATISTICS[op], stats, expected_stats, strict=True):
        assert error_ratio(got, want, tolerance(dtype, "grad")) <= 1, f"d{name}/dx"


@pytest.mark.parametrize("rows", ["spread 1e15", "spread 1e-15", "one element"])
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_forward_mode_stays_in_range_in_extreme_rows(op: str, rows: str) -> None:
    """float32 rows of spread 1e+-15 with eps = 0 (rstd**3 under- or overflows, rstd**2 times the tangent does not),
    and rows of one element: jax.jacfwd of y and the statistics against the reference, as reverse mode is checked."""
    shape, axis, eps, scale = {
        "spread 1e15": ((3, 6), -1, 0.0, 1e15),
        "spread 1e-15": ((3, 6), -1, 0.0, 1e-15),
        "one element": ((4, 1), -1, 1e-5, 1.0),
    }[rows]
    x = _jacobian_input(shape, "float32", scale)
    spec = check_forward(op, x, None, None, axis, eps)
    dy_dx, _, stats = _jacfwd(op, jnp.asarray(x), None, axis, eps)
    expected_dx, _, expected_stats = _reference_jacobians(op, x, None, axis, eps)
    dy_scale = gradient_scale(np.ones_like(x, dtype=np.float64), None, _reference_stats(op, x, spec)[-1], spec)
    assert (
        np.isfinite(dy_dx).all() and error_ratio(dy_dx, expected_dx, tolerance("float32", "grad"), scale=dy_scale) <= 1
    )
    for name, got, want in zip(STATISTICS[op], stats, expected_stats, strict=True):
        assert np.isfinite(got).all() and error_ratio(got, want, tolerance("float32", "grad")) <= 1, f"d{name}/dx"


NAN_ROWS = {
    "constant, eps = 0": (0.0, lambda row: np.full_like(row, 3.0)),  # rms_norm: a zero row (3.0 below is 0)
    "holding inf": (1e-5, lambda row: np.where(np.arange(row.size) == 2, np.inf, row)),
    "holding nan": (1e-5, lambda row: np.where(np.arange(row.size) == 2, np.nan, row)),
}


@pytest.mark.parametrize("row", list(NAN_ROWS))
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_forward_mode_gives_nan_rows_where_the_formula_does(op: str, row: str) -> None:
    """jax.jvp of y and the statistics, in x and the weight, with a row of inf rstd (eps = 0) or holding an inf or a
    NaN: that row's tangents are NaN where the reference's are (docs/spec.md), the other row's are untouched. The
    reference is taken row by row: its Jacobian of the whole x would spread the NaN (0 * NaN) to every row."""
    eps, make_bad = NAN_ROWS[row]
    x, w = _jacobian_input((2, 6), "float32"), np.random.default_rng(23).standard_normal(6).astype(np.float32)
    x[0] = make_bad(x[0]) * (op == "layer_norm" or row != "constant, eps = 0")
    tx, tw = (np.random.default_rng(24).standard_normal(a.shape).astype(np.float32) for a in (x, w))
    got = jax.jvp(
        lambda x, w: getattr(layernorm, op)(x, w, eps=eps, return_stats=True),
        (jnp.asarray(x), jnp.asarray(w)),
        (jnp.asarray(tx), jnp.asarray(tw)),
    )[1]
    for r in range(2):
        dy_dx, dy_dw, stats = _reference_jacobians(op, x[r : r + 1], w, -1, eps)
        expected = [dy_dx @ tx[r] + dy_dw @ tw, *(d @ tx[r] for d in stats)]  # type: ignore[operator]
        for name, tangent, want in zip(("y", *STATISTICS[op]), got, expected, strict=True):
            assert np.isnan(want).any() == (r == 0 and name != "mean"), name  # dmean = mean(dx) stays finite
            assert error_ratio(np.asarray(tangent)[r], want, tolerance("float32", "grad")) <= 1, f"row {r}: d{name}"


@pytest.mark.parametrize("order", ["reverse", "forward"], ids=["hessian", "jacfwd-of-jacfwd"])
@pytest.mark.parametrize("scale", [1e15, 1e-15], ids=["spread 1e15", "spread 1e-15"])
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_second_derivatives_stay_in_range_in_extreme_rows(op: str, scale: float, order: str) -> None:
    """float32 rows of spread 1e+-15 with eps = 0: the second derivatives of a loss on y, by x and the weight, against
    float64 autodiff of the plain formula. The custom_vjp backwards, differentiated, were off by about the value's
    own size at 1e15 (layer_norm at 1e13 already) and NaN at 1e-15 (their rstd**3 out of range); the tangent rules
    keep it out, as in first order.
    (A loss on rstd itself is not checked: its second derivative, about rstd / x**2, is out of float32's range
    there.)"""
    x, w, _, dy = _inputs((2, 6), -1, seed=27)
    x = (x * np.float32(scale)).astype(np.float32)
    second = jax.hessian if order == "reverse" else lambda f, argnums: jax.jacfwd(jax.jacfwd(f, argnums), argnums)

    def loss(norm: Callable[[jax.Array, jax.Array], jax.Array], dy: jax.Array) -> Callable[..., jax.Array]:
        return lambda x, w: jnp.sum(norm(x, w) * dy)

    ours = second(loss(lambda x, w: getattr(layernorm, op)(x, w, eps=0.0), jnp.asarray(dy)), argnums=(0, 1))(
        jnp.asarray(x), jnp.asarray(w)
    )

    def plain_norm(x: jax.Array, w: jax.Array) -> jax.Array:
        centered = x - jnp.mean(x, -1, keepdims=True) if op == "layer_norm" else x
        return centered * lax.rsqrt(jnp.mean(centered * centered, -1, keepdims=True)) * w

    with enable_x64(True):
        plain = loss(plain_norm, jnp.asarray(dy, jnp.float64))
        exact = second(plain, argnums=(0, 1))(*(jnp.asarray(a, jnp.float64) for a in (x, w)))
        exact_blocks = [np.asarray(block) for block in jax.tree.leaves(exact)]
    for got, want in zip(jax.tree.leaves(ours), exact_blocks, strict=True):
        size = np.abs(want).max()
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-5, atol=1e-5 * size)


@pytest.mark.parametrize("scale", [1e14, 1e-14], ids=["spread 1e14", "spread 1e-14"])
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_derivatives_of_the_explicit_backward_stay_in_range_in_extreme_rows(op: str, scale: float) -> None:
    """float32 rows of spread 1e+-14 with eps = 0: the derivatives in x, the weight and dy of a loss on the explicit
    backward's results (statistics recomputed), against float64 autodiff of the plain formula. The backward
    recomputed them by plain ops, whose rsqrt JAX differentiates through rstd**3, out of float32's range there: the
    derivatives in x were NaN or inf at 1e-14 (the exact ones about 1e28) and 15-32% off at 1e14."""
    x, w, _, dy = _inputs((4, 16), -1, seed=29)
    x = (x * np.float32(scale)).astype(np.float32)
    coefficients = [np.random.default_rng(30).standard_normal(shape) for shape in ((4, 16), (16,), (16,))]
    backward = getattr(layernorm, f"{op}_backward")

    def loss(grads: Callable[..., tuple[jax.Array, ...]]) -> Callable[..., jax.Array]:
        def scalar(x: jax.Array, w: jax.Array, dy: jax.Array) -> jax.Array:
            results = grads(dy, x, w)
            return sum(jnp.sum(g * c) for g, c in zip(results, coefficients[: len(results)], strict=True))

        return scalar

    ours = jax.grad(loss(lambda dy, x, w: backward(dy, x, w, eps=0.0)), argnums=(0, 1, 2))(
        *(jnp.asarray(a) for a in (x, w, dy))
    )

    def plain_backward(dy: jax.Array, x: jax.Array, w: jax.Array) -> tuple[jax.Array, ...]:
        centered = x - jnp.mean(x, -1, keepdims=True) if op == "layer_norm" else x
        rstd = lax.rsqrt(jnp.mean(centered * centered, -1, keepdims=True))
        xhat, g = centered * rstd, dy * w
        dx_rows = g - xhat * jnp.mean(g * xhat, -1, keepdims=True)
        if op == "rms_norm":
            return rstd * dx_rows, jnp.sum(dy * xhat, 0)
        return rstd * (dx_rows - jnp.mean(g, -1, keepdims=True)), jnp.sum(dy * xhat, 0), jnp.sum(dy, 0)

    with enable_x64(True):
        exact = jax.grad(loss(plain_backward), argnums=(0, 1, 2))(*(jnp.asarray(a, jnp.float64) for a in (x, w, dy)))
        exact_arrays = [np.asarray(a) for a in exact]
    for name, got, want in zip(("x", "weight", "dy"), ours, exact_arrays, strict=True):
        size = np.abs(want).max()
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-5, atol=1e-5 * size, err_msg=name)


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_jvp_and_linearize_under_jit_and_vmap_agree_with_jacfwd(op: str) -> None:
    x, w, b, _ = (jnp.asarray(a) for a in _inputs((5, 12), -1, seed=23))
    t = jnp.asarray(np.random.default_rng(24).standard_normal((5, 12)), jnp.float32)
    tw = jnp.asarray(np.random.default_rng(25).standard_normal(12), jnp.float32)
    bias = (b,) if op == "layer_norm" else ()
    tb = tuple(jnp.asarray(np.random.default_rng(26).standard_normal(12), jnp.float32) for _ in bias)

    def f(x: jax.Array, w: jax.Array, *bias: jax.Array) -> tuple[jax.Array, ...]:
        return getattr(layernorm, op)(x, w, *bias, return_stats=True)

    jacobians = jax.jacfwd(f, argnums=tuple(range(2 + len(bias))))(x, w, *bias)
    expected = [
        jnp.einsum("abcd,cd->ab", by[0], t) + by[1] @ tw + sum((by[2] @ tb[0] for _ in bias), jnp.zeros(()))
        for by in jacobians
    ]
    _, jvps = jax.jit(lambda *a: jax.jvp(f, a[: len(a) // 2], a[len(a) // 2 :]))(x, w, *bias, t, tw, *tb)
    _, linear = jax.linearize(f, x, w, *bias)
    per_row = jax.vmap(lambda x, t: jax.jvp(lambda x: f(x, w, *bias), (x,), (t,))[1])(x, t)
    for got in (jvps, linear(t, tw, *tb)):
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(per_row[0]), np.asarray(jnp.einsum("abcd,cd->ab", jacobians[0][0], t)), rtol=1e-5, atol=1e-5
    )


def test_forward_over_forward_matches_autodiff_of_a_plain_formula() -> None:
    """jax.jacfwd of jax.jacfwd differentiates the tangent rules themselves; checked in float64."""
    with enable_x64(True):
        x, w, b, _ = (jnp.asarray(a, jnp.float64) for a in _inputs((2, 5), -1, seed=26))
        for ours, plain in (
            (lambda x: layernorm.layer_norm(x, w, b), lambda x: plain_layer_norm(x, w, b, (1,))[0]),
            (lambda x: layernorm.rms_norm(x, w), lambda x: _plain_rms(x, w)),
        ):
            got, want = (jax.jacfwd(jax.jacfwd(f))(x) for f in (ours, plain))
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-9, atol=1e-10)


def test_tracers_are_owned_and_tracked_by_jax() -> None:
    backend = registry.get("jax")
    seen: list[tuple[str | None, bool, str]] = []

    def probe(x: jax.Array) -> jax.Array:
        seen.append((registry.owner_of(x), backend.is_tracked(x), type(x).__module__))
        return layernorm.layer_norm(x)

    x = jnp.ones((3, 4))
    jax.jit(probe)(x)
    jax.grad(lambda x: probe(x).sum())(x)
    jax.vmap(probe)(x)
    jax.checkpoint(probe)(x)
    assert len(seen) == 4
    assert [owner for owner, _, _ in seen] == ["jax"] * 4
    assert all(module.startswith("jax") for _, _, module in seen), seen
    assert [tracked for _, tracked, _ in seen] == [True, True, True, True]


def test_tracers_cannot_cross_frameworks() -> None:
    def other_engine(x: jax.Array) -> jax.Array:
        return layernorm.layer_norm(x, backend="numpy")

    with pytest.raises(layernorm.BackendError, match="tracing"):
        jax.jit(other_engine)(jnp.ones((2, 3)))
    with pytest.raises(layernorm.BackendError, match="tracing"):
        jax.grad(lambda x: other_engine(x).sum())(jnp.ones((2, 3)))


def test_jit_with_return_stats_and_stable_dispatch_under_using() -> None:
    x = _inputs((4, 10), -1, seed=8)[0]
    with layernorm.using("jax"):
        y, mean, rstd = jax.jit(lambda x: layernorm.layer_norm(x, return_stats=True))(jnp.asarray(x))
    spec = check_forward("layer_norm", x, None, None, -1, 1e-5)
    ref = reference.layer_norm(x, None, None, spec)
    for got, expected, q in zip((y, mean, rstd), ref, ("output", "stats", "stats"), strict=True):
        assert error_ratio(np.asarray(got), expected, tolerance("float32", q)) <= 1  # type: ignore[arg-type]


def _composite_with_stats(op: str, x: jax.Array, w: jax.Array) -> jax.Array:
    """y + the statistics, from plain jnp ops (JAX differentiates them itself)."""
    xf = x.astype(jnp.float32)
    if op == "layer_norm":
        mean = xf.mean(-1, keepdims=True)
        rstd = jax.lax.rsqrt(((xf - mean) ** 2).mean(-1, keepdims=True) + 1e-5)
        return (xf - mean) * rstd * w + mean + rstd
    rstd = jax.lax.rsqrt((xf * xf).mean(-1, keepdims=True) + 1e-5)
    return xf * rstd * w + rstd


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_grad_of_vmap_over_weights_reaches_a_shared_x_through_the_statistics(op: str) -> None:
    """jax.grad of jax.vmap with x unbatched and the weight batched, of a loss on y and the statistics: the
    statistics (x's alone) were unbatched outputs of one custom_vjp with a batched y, and JAX handed their summed
    cotangent to every member of the batch (dx counted it once per weight)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, 5)), jnp.float32)
    weights = jnp.asarray(1 + 0.3 * rng.standard_normal((4, 5)), jnp.float32)
    c = jnp.asarray(rng.standard_normal((3, 5)), jnp.float32)

    def ours(x: jax.Array, w: jax.Array) -> jax.Array:
        y, *stats = getattr(layernorm, op)(x, w, return_stats=True)
        return y + sum(stats)

    def loss(fn: Callable[[jax.Array, jax.Array], jax.Array]) -> Callable[[jax.Array, jax.Array], jax.Array]:
        return lambda x, ws: (jax.vmap(fn, in_axes=(None, 0))(x, ws) * c).sum()

    got = jax.grad(loss(ours), (0, 1))(x, weights)
    expected = jax.grad(loss(lambda x, w: _composite_with_stats(op, x, w)), (0, 1))(x, weights)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_jvp_of_vmap_over_weights_with_a_shared_x(op: str) -> None:
    """jax.jvp of jax.vmap with x unbatched and the weight batched, in x, in the weights and in both: the tangent
    rule sees an unbatched x (and a symbolic-zero tangent where one is not differentiated) beside a batched weight."""
    rng = np.random.default_rng(1)
    x, tx = (jnp.asarray(rng.standard_normal((3, 5)), jnp.float32) for _ in range(2))
    weights, tws = (jnp.asarray(1 + 0.3 * rng.standard_normal((4, 5)), jnp.float32) for _ in range(2))

    def ours(x: jax.Array, w: jax.Array) -> jax.Array:
        y, *stats = getattr(layernorm, op)(x, w, return_stats=True)
        return y + sum(stats[1:], stats[0])

    def tangent(fn: Callable[[jax.Array, jax.Array], jax.Array], by: str) -> jax.Array:
        batched = jax.vmap(fn, in_axes=(None, 0))
        if by == "x":
            return jax.jvp(lambda x: batched(x, weights), (x,), (tx,))[1]
        if by == "weights":
            return jax.jvp(lambda ws: batched(x, ws), (weights,), (tws,))[1]
        return jax.jvp(batched, (x, weights), (tx, tws))[1]

    for by in ("x", "weights", "both"):
        expected = tangent(lambda x, w: _composite_with_stats(op, x, w), by)
        np.testing.assert_allclose(
            np.asarray(tangent(ours, by)), np.asarray(expected), rtol=1e-5, atol=1e-5, err_msg=by
        )
