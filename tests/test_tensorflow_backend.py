"""TensorFlow backend numerics against the float64 reference: forward, explicit backward, GradientTape gradients
eagerly, in tf.function and under XLA, unknown (None) sizes, variables, tracking and conversions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from cases import EXTREME_SPREADS, HOST_DTYPES, check_second_order, shape_cases  # noqa: E402

import layernorm  # noqa: E402
from layernorm_core import check_forward, reference  # noqa: E402
from layernorm_core.registry import registry  # noqa: E402
from layernorm_core.tolerances import error_ratio, gradient_scale, mean_scale, row_condition, tolerance  # noqa: E402

DTYPES = HOST_DTYPES
CASES = shape_cases(4096)
GRAD_CASES = [CASES[0], CASES[2], CASES[3]]
MODES = ["eager", "function", "jit"]
TF_VERSION = tuple(int(part) for part in tf.__version__.split(".")[:2])
HAS_GPU = bool(tf.config.list_physical_devices("GPU"))


def _host(shape: tuple[int, ...], axis: Any, dtype: Any, seed: int = 0) -> tuple[np.ndarray, ...]:
    """x (shifted, so rows have a mean), weight, bias, dy as host arrays of ``dtype``."""
    rng = np.random.default_rng(seed)
    normalized_shape = tuple(
        shape[a] for a in check_forward("layer_norm", np.empty(shape), None, None, axis, 1e-5).axes
    )
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    w = rng.standard_normal(normalized_shape).astype(dtype)
    b = rng.standard_normal(normalized_shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, w, b, dy


def _tf(*arrays: np.ndarray) -> list[Any]:
    return [tf.constant(a) for a in arrays]


def _np(t: Any) -> np.ndarray:
    return np.asarray(t.numpy())


def _check_grads(kind: str, got: list[Any], host: tuple[np.ndarray, ...], axis: Any, dtype: str) -> None:
    """dx, dweight (, dbias) against the reference backward, with the grad tolerance."""
    x, w, _, dy = host
    spec = check_forward(kind, x, w, None, axis, 1e-5)  # type: ignore[arg-type]
    expected: tuple[np.ndarray, ...]
    if kind == "layer_norm":
        expected = reference.layer_norm_backward(dy, x, w, spec)
        ref_rstd = reference.layer_norm(x, None, None, spec)[2]
    else:
        expected = reference.rms_norm_backward(dy, x, w, spec)
        ref_rstd = reference.rms_norm(x, None, spec)[1]
    cond = row_condition(x, spec)
    scales = (gradient_scale(dy, w, ref_rstd, spec), None, None)
    assert len(got) == len(expected)
    for name, g, e, scale in zip(
        ("dx", "dweight", "dbias")[: len(got)], got, expected, scales[: len(got)], strict=True
    ):
        assert g is not None, name
        assert tuple(g.shape) == e.shape, name
        assert error_ratio(_np(g), e, tolerance(dtype, "grad"), cond, scale=scale) <= 1, name


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "axis"), CASES)
def test_layer_norm_forward_and_backward(shape: tuple[int, ...], axis: Any, dtype: str) -> None:
    host = _host(shape, axis, DTYPES[dtype])
    x, w, b, dy = _tf(*host)
    y, mean, rstd = layernorm.layer_norm(x, w, b, axis=axis, return_stats=True)
    spec = check_forward("layer_norm", x, w, b, axis, 1e-5)
    ref_y, ref_mean, ref_rstd = reference.layer_norm(host[0], host[1], host[2], spec)
    cond = row_condition(host[0], spec)
    assert isinstance(y, tf.Tensor) and (y.dtype, tuple(y.shape)) == (x.dtype, shape)
    assert mean.dtype.name == rstd.dtype.name == spec.compute_dtype and tuple(mean.shape) == spec.stats_shape
    assert error_ratio(_np(y), ref_y, tolerance(dtype, "output"), cond) <= 1
    assert error_ratio(_np(mean), ref_mean, tolerance(dtype, "stats"), cond) <= 1
    assert error_ratio(_np(rstd), ref_rstd, tolerance(dtype, "stats"), cond) <= 1
    saved = layernorm.layer_norm_backward(dy, x, w, axis=axis, mean=mean, rstd=rstd)
    recomputed = layernorm.layer_norm_backward(dy, x, w, axis=axis)
    assert all(g.dtype == x.dtype for g in (*saved, *recomputed))
    _check_grads("layer_norm", list(saved), host, axis, dtype)
    _check_grads("layer_norm", list(recomputed), host, axis, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "axis"), CASES)
def test_rms_norm_forward_and_backward(shape: tuple[int, ...], axis: Any, dtype: str) -> None:
    host = _host(shape, axis, DTYPES[dtype])
    x, w, _, dy = _tf(*host)
    y, rstd = layernorm.rms_norm(x, w, axis=axis, return_stats=True)
    spec = check_forward("rms_norm", x, w, None, axis, 1e-5)
    ref_y, ref_rstd = reference.rms_norm(host[0], host[1], spec)
    assert y.dtype == x.dtype and rstd.dtype.name == spec.compute_dtype and tuple(rstd.shape) == spec.stats_shape
    assert error_ratio(_np(y), ref_y, tolerance(dtype, "output")) <= 1
    assert error_ratio(_np(rstd), ref_rstd, tolerance(dtype, "stats")) <= 1
    for grads in (
        layernorm.rms_norm_backward(dy, x, w, axis=axis, rstd=rstd),
        layernorm.rms_norm_backward(dy, x, w, axis=axis),
    ):
        assert all(g.dtype == x.dtype for g in grads)
        _check_grads("rms_norm", list(grads), host, axis, dtype)


def _compiled(fn: Callable[..., Any], mode: str) -> Callable[..., Any]:
    if mode == "eager":
        return fn
    return tf.function(fn, jit_compile=(mode == "jit"))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "axis"), GRAD_CASES)
@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
def test_tape_gradients(kind: str, shape: tuple[int, ...], axis: Any, dtype: str, mode: str) -> None:
    host = _host(shape, axis, DTYPES[dtype], seed=1)
    x, w, b, dy = _tf(*host)

    def grads(x: Any, w: Any, b: Any, dy: Any) -> list[Any]:
        with tf.GradientTape() as tape:
            tape.watch([x, w, b])
            if kind == "layer_norm":
                y = layernorm.layer_norm(x, w, b, axis=axis)
                sources = [x, w, b]
            else:
                y = layernorm.rms_norm(x, w, axis=axis)
                sources = [x, w]
        return tape.gradient(y, sources, output_gradients=dy)

    got = _compiled(grads, mode)(x, w, b, dy)
    assert [g.dtype for g in got] == [x.dtype] * len(got)
    _check_grads(kind, got, host, axis, dtype)


def _composite(kind: str, x: Any, w: Any, b: Any = None, *, axis: Any) -> Any:
    """layer_norm / rms_norm in plain float64 TF ops, for nested tapes to differentiate twice (the oracle)."""
    spec = check_forward(kind, x, w, b, axis, 1e-5)  # type: ignore[arg-type]
    axes, param_shape = list(spec.axes), spec.param_shape
    if kind == "layer_norm":
        x = x - tf.reduce_mean(x, axes, keepdims=True)
    y = x / tf.sqrt(tf.reduce_mean(x * x, axes, keepdims=True) + 1e-5) * tf.reshape(w, param_shape)
    return y + tf.reshape(b, param_shape) if kind == "layer_norm" else y


@pytest.mark.parametrize("mode", ["eager", "jit"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [-1, 1], ids=["trailing", "channels-first"])
@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
def test_second_order_through_nested_tapes(kind: str, axis: Any, dtype: str, mode: str) -> None:
    """The gradient of a penalty on the gradients (nested tapes) against the float64 composite's; the first-order
    gradients it squares are rounded to the dtype (`check_second_order`)."""
    host = _host((5, 8, 6), axis, DTYPES[dtype], seed=3)
    dy = tf.constant(host[3].astype(np.float64))
    n_params = 2 if kind == "layer_norm" else 1

    def second_order(fn: Callable[..., Any], *inputs: Any) -> list[Any]:
        with tf.GradientTape() as outer:
            outer.watch(inputs)
            with tf.GradientTape() as inner:
                inner.watch(inputs)
                y = tf.cast(fn(*inputs), tf.float64)
                loss = tf.reduce_sum(y * dy)
            grads = inner.gradient(loss, inputs)
            penalty = tf.add_n([tf.reduce_sum(tf.cast(g, tf.float64) ** 2) for g in grads])
        return outer.gradient(penalty, inputs)

    def ours(x: Any, w: Any, b: Any = None) -> Any:
        if kind == "layer_norm":
            return layernorm.layer_norm(x, w, b, axis=axis)
        return layernorm.rms_norm(x, w, axis=axis)

    got = _compiled(lambda *inputs: second_order(ours, *inputs), mode)(*_tf(*host[: 1 + n_params]))
    oracle_inputs = _tf(*(a.astype(np.float64) for a in host[: 1 + n_params]))
    expected = second_order(lambda *inputs: _composite(kind, *inputs, axis=axis), *oracle_inputs)
    check_second_order(
        [None if g is None else _np(tf.cast(g, tf.float64)) for g in got],
        [None if e is None else _np(e) for e in expected],
        dtype,
    )


def _plain_backward(kind: str, dy: Any, x: Any, w: Any) -> tuple[Any, ...]:
    """The explicit backward in plain ops, statistics recomputed from x (rows over the last axis, eps = 0)."""
    centered = x - tf.reduce_mean(x, -1, keepdims=True) if kind == "layer_norm" else x
    rstd = tf.math.rsqrt(tf.reduce_mean(centered * centered, -1, keepdims=True))
    xhat, g = centered * rstd, dy * w
    dx_rows = g - xhat * tf.reduce_mean(g * xhat, -1, keepdims=True)
    if kind == "rms_norm":
        return rstd * dx_rows, tf.reduce_sum(dy * xhat, 0)
    return rstd * (dx_rows - tf.reduce_mean(g, -1, keepdims=True)), tf.reduce_sum(dy * xhat, 0), tf.reduce_sum(dy, 0)


@pytest.mark.parametrize("mode", ["eager", "jit"])
@pytest.mark.parametrize("given", [False, True], ids=["recomputed", "given"])
@pytest.mark.parametrize(("dtype", "scale"), EXTREME_SPREADS)
@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
def test_derivatives_of_the_explicit_backward_stay_in_range_in_extreme_rows(
    kind: str, dtype: str, scale: float, given: bool, mode: str
) -> None:
    """The derivatives in x, the weight and dy of a loss on the explicit backward's results (a gradient penalty),
    rows of spread 1e+-14 (float32) or 1e+-120 (float64) with eps = 0, statistics recomputed or given by the
    forward. The oracle is float64 autodiff of the plain formula at x / scale, its x-derivatives rescaled (dx
    scales as 1 / scale, dweight not). The backwards recomputed the statistics by plain ops, whose rsqrt TensorFlow
    differentiates through rstd**3: the derivatives in x were NaN or inf at 1e-14 and 1e-120."""
    rng = np.random.default_rng(29)
    x, w, dy = (rng.standard_normal(shape) for shape in ((4, 16), (16,), (4, 16)))
    x = (x * scale).astype(dtype)
    coefficients = [np.random.default_rng(30).standard_normal(shape) for shape in ((4, 16), (16,), (16,))]
    backward = getattr(layernorm, f"{kind}_backward")

    def penalty_grads(x: Any, w: Any, dy: Any) -> list[Any]:
        with tf.GradientTape() as tape:
            tape.watch([x, w, dy])
            stats: dict[str, Any] = {}
            if given:
                results = getattr(layernorm, kind)(x, eps=0.0, return_stats=True)
                stats = dict(zip(("mean", "rstd") if kind == "layer_norm" else ("rstd",), results[1:], strict=True))
            grads = backward(dy, x, w, eps=0.0, **stats)
            products = [g * c.astype(dtype) for g, c in zip(grads, coefficients[: len(grads)], strict=True)]
            loss = tf.add_n([tf.reduce_sum(p) for p in products])
        return tape.gradient(loss, [x, w, dy])

    ours = _compiled(penalty_grads, mode)(*_tf(x, w.astype(dtype), dy.astype(dtype)))

    x_unit, w64, dy64 = _tf(x.astype(np.float64) / scale, w, dy)
    with tf.GradientTape() as tape:
        tape.watch([x_unit, w64, dy64])
        exact_grads = _plain_backward(kind, dy64, x_unit, w64)
        weights = [
            c / scale if i == 0 else c for i, c in enumerate(coefficients)
        ]  # dx at x is dx at x / scale, / scale
        loss = tf.add_n([tf.reduce_sum(g * c) for g, c in zip(exact_grads, weights[: len(exact_grads)], strict=True)])
    exact = [_np(g) for g in tape.gradient(loss, [x_unit, w64, dy64])]
    exact[0] = exact[0] / scale
    for name, got, want in zip(("x", "weight", "dy"), ours, exact, strict=True):
        size = np.abs(want).max()
        np.testing.assert_allclose(_np(got).astype(np.float64), want, rtol=1e-5, atol=1e-5 * size, err_msg=name)


@pytest.mark.parametrize("mode", ["eager", "jit", "sizes-unknown"])
@pytest.mark.parametrize("eps", [1e-3, 1e-5])
def test_second_order_through_statistics_of_one_element_rows(eps: float, mode: str) -> None:
    """Rows of one element: mean = x, y = 0 and rstd = eps**-0.5 whatever x, so sum(y^2 + mean^2 + rstd^2) has the
    gradient 2x, and the gradient of its squared norm is 8x. (float32: the general backward's rstd**3 terms, which
    cancel only in exact arithmetic, gave 0 at eps = 1e-5.) ``sizes-unknown``: compiled by XLA for rows of any length,
    which is 1 only when it runs (the general backward ran there, and gave 0)."""
    x = tf.constant([[0.5], [-1.2], [2.0]], tf.float32)

    def second(x: Any) -> Any:
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                loss = tf.add_n([tf.reduce_sum(o**2) for o in layernorm.layer_norm(x, eps=eps, return_stats=True)])
            penalty = tf.reduce_sum(inner.gradient(loss, x) ** 2)
        return outer.gradient(penalty, x)

    if mode == "sizes-unknown":
        signature = [tf.TensorSpec([None, None], tf.float32)]
        run = tf.function(second, jit_compile=True, input_signature=signature)
    else:
        run = _compiled(second, mode)
    np.testing.assert_allclose(_np(run(x)), 8 * _np(x), rtol=1e-6)


@pytest.mark.parametrize("shape", [(3, 8), (2, 8192)], ids=["sizes-unknown-when-traced", "rows-over-XLA_BLOCK"])
def test_second_order_under_xla_through_cascaded_row_sums(shape: tuple[int, int]) -> None:
    """Under XLA, row sums of a length unknown when traced, or over XLA_BLOCK, cascade through an optimization
    barrier, which TensorFlow gives no gradient: nested tapes (and a tape around the compiled function) raised
    LookupError. The Hessian-vector product matches the one computed eagerly."""
    x = tf.constant(np.random.default_rng(5).normal(size=shape).astype(np.float32))

    def hessian_vector(x: Any) -> Any:
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                loss = tf.reduce_sum(layernorm.layer_norm(x) ** 3)
            grad = inner.gradient(loss, x)
            norm = tf.reduce_sum(grad * grad)
        return outer.gradient(norm, x)

    signature = [tf.TensorSpec([None, None], tf.float32)] if shape == (3, 8) else None
    compiled = tf.function(hessian_vector, jit_compile=True, input_signature=signature)
    expected = _np(hessian_vector(x))
    np.testing.assert_allclose(_np(compiled(x)), expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


@pytest.mark.parametrize("affine", [False, True], ids=["no-weight", "weight"])
@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize(
    ("shape", "signature"),
    [((3, 5000), None), ((3, 5000), [None, None]), ((3, 16), [None, None])],
    ids=["rows-over-XLA_BLOCK", "rows-over-XLA_BLOCK-sizes-unknown", "sizes-unknown"],
)
def test_forward_mode_under_xla(kind: str, shape: tuple[int, int], signature: list[None] | None, affine: bool) -> None:
    """A ForwardAccumulator's jvp of y and of the statistics, under jit_compile, against the float64 reference's
    central difference. Through the cascaded row sums it came out 2% off (y) and 0 (statistics): the barrier's
    tf.custom_gradient stopped the tangent. With a normalized size unknown when traced and no weight, the size
    check's message (a StringFormat op) kept XLA from compiling."""
    rng = np.random.default_rng(7)
    x64, t64 = rng.standard_normal(shape) + 3, rng.standard_normal(shape)
    w64 = rng.standard_normal(shape[1]) if affine else None

    def jvp(x: Any, t: Any) -> Any:
        with tf.autodiff.ForwardAccumulator(x, t) as accumulator:
            w = None if w64 is None else tf.constant(w64.astype(np.float32))
            outputs = getattr(layernorm, kind)(x, w, return_stats=True)
        return [accumulator.jvp(o) for o in outputs]

    spec = None if signature is None else [tf.TensorSpec(signature, tf.float32)] * 2
    got = tf.function(jvp, jit_compile=True, input_signature=spec)(*_tf(x64.astype(np.float32), t64.astype(np.float32)))
    x_spec = check_forward(kind, x64, w64, None, -1, 1e-5)  # type: ignore[arg-type]

    def ref(x: np.ndarray) -> tuple[np.ndarray, ...]:
        if kind == "layer_norm":
            return tuple(reference.layer_norm(x, w64, None, x_spec))
        return tuple(reference.rms_norm(x, w64, x_spec))

    h = 1e-6
    for g, plus, minus in zip(got, ref(x64 + h * t64), ref(x64 - h * t64), strict=True):
        expected = (plus - minus) / (2 * h)
        np.testing.assert_allclose(_np(g), expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize(
    ("shape", "unknown"),
    [((2, 3, 4100), False), ((2, 3, 8), True)],
    ids=["rows-over-XLA_BLOCK", "sizes-unknown"],
)
def test_vectorized_map_under_xla_vectorizes_cascaded_row_sums(
    kind: str, shape: tuple[int, ...], unknown: bool
) -> None:
    """tf.vectorized_map of the forward and of a tape's gradient under jit_compile, through the cascade's
    optimization barrier, against the reference. TensorFlow gives that op no batching rule: vectorized_map fell back
    to a while loop (``fallback_to_while_loop=False``: ValueError), and with sizes unknown when traced its gradient
    did not compile at all."""
    host = _host(shape, -1, np.float32, seed=11)
    x, w, b, dy = _tf(*host)
    norm = getattr(layernorm, kind)
    params = [w, b] if kind == "layer_norm" else [w]

    def forward_and_grads(x: Any, dy: Any, *params: Any) -> list[Any]:
        with tf.GradientTape() as tape:
            tape.watch([x, *params])
            y = tf.vectorized_map(lambda rows: norm(rows, *params), x, fallback_to_while_loop=False)
            loss = tf.reduce_sum(y * dy)
        # dx comes as tf.IndexedSlices where sizes are unknown, as for tf.nn.moments' layer norm
        return [y, *(tf.convert_to_tensor(g) for g in tape.gradient(loss, [x, *params]))]

    signature = _signature(3, 3, *(1 for _ in params)) if unknown else None
    y, *grads = tf.function(forward_and_grads, jit_compile=True, input_signature=signature)(x, dy, *params)
    x_spec = check_forward(kind, host[0], host[1], None, -1, 1e-5)
    if kind == "layer_norm":
        expected = reference.layer_norm(host[0], host[1], host[2], x_spec)[0]
    else:
        expected = reference.rms_norm(host[0], host[1], x_spec)[0]
    assert error_ratio(_np(y), expected, tolerance("float32", "output"), row_condition(host[0], x_spec)) <= 1
    _check_grads(kind, grads, host, -1, "float32")


@pytest.mark.parametrize("shape", [(4, 1), (4, 6)], ids=["rows-of-one", "rows-of-six"])
@pytest.mark.parametrize(
    ("mode", "sizes"), [(mode, "known") for mode in MODES] + [("function", "unknown"), ("jit", "unknown")]
)
@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
def test_gradients_arriving_as_indexed_slices(kind: str, mode: str, shape: tuple[int, int], sizes: str) -> None:
    """A tf.gather of y sends y's gradient as tf.IndexedSlices; the backward takes it as the dense dy it stands for.

    layer_norm's backward raised TypeError (IndexedSlices * 0) for rows of one element, and in a tf.function whose
    signature leaves the sizes unknown."""
    host = _host(shape, -1, np.float32, seed=7)
    rows = tf.constant([3, 1, 0, 2])

    def grads(x: Any, w: Any, b: Any, dy: Any) -> list[Any]:
        with tf.GradientTape() as tape:
            tape.watch([x, w, b])
            y = layernorm.layer_norm(x, w, b) if kind == "layer_norm" else layernorm.rms_norm(x, w)
            loss = tf.reduce_sum(tf.gather(y, rows) * tf.gather(dy, rows))
        return tape.gradient(loss, [x, w, b] if kind == "layer_norm" else [x, w])

    if mode == "eager":
        run = grads
    else:
        signature = _signature(2, 1, 1, 2) if sizes == "unknown" else None
        run = tf.function(grads, input_signature=signature, jit_compile=mode == "jit")
    _check_grads(kind, run(*_tf(*host)), host, -1, "float32")


@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
def test_tape_gradient_is_the_explicit_backward(kind: str) -> None:
    host = _host((6, 10), -1, np.float32, seed=2)
    x, w, b, dy = _tf(*host)
    explicit: tuple[Any, ...]
    with tf.GradientTape() as tape:
        tape.watch([x, w, b])
        if kind == "layer_norm":
            y = layernorm.layer_norm(x, w, b)
            explicit = layernorm.layer_norm_backward(dy, x, w)
            sources = [x, w, b]
        else:
            y = layernorm.rms_norm(x, w)
            explicit = layernorm.rms_norm_backward(dy, x, w)
            sources = [x, w]
    for taped, direct in zip(tape.gradient(y, sources, output_gradients=dy), explicit, strict=True):
        np.testing.assert_array_equal(_np(taped), _np(direct))


def _numeric_gradient(f: Callable[[np.ndarray], float], x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central differences of a float64 scalar function: an estimate independent of any backward code."""
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[index] = h
        grad[index] = (f(x + step) - f(x - step)) / (2 * h)
    return grad


@pytest.mark.parametrize("mode", ["eager", "jit-sizes-unknown"])
def test_explicit_backward_of_one_element_rows_takes_the_given_statistics(mode: str) -> None:
    """layer_norm_backward of rows of one element with a caller's mean and rstd, and the tape's derivatives of it
    in x and mean, against the formula in float64 and its central differences. The backward took x - mean as 0, as
    it is for x's own mean: dx and dweight came out 0 (the formula's are -12 and -2 for x = 2, mean = 3, rstd = 2,
    dy = 1, weight = 1.5, as on NumPy and torch), and their derivatives in x and mean 0 or None."""
    rng = np.random.default_rng(4)
    x, mean, dy = (rng.standard_normal((3, 1)) for _ in range(3))
    rstd, w = rng.uniform(0.5, 2.0, (3, 1)), rng.standard_normal(1)
    coefficients = (rng.standard_normal((3, 1)), rng.standard_normal(1), rng.standard_normal(1))

    def formula(x: np.ndarray, mean: np.ndarray) -> tuple[np.ndarray, ...]:
        xhat, g = (x - mean) * rstd, dy * w
        return rstd * (g - g - xhat * g * xhat), (dy * xhat).sum(0), dy.sum(0)  # the means of one element

    def loss(x: np.ndarray, mean: np.ndarray) -> float:
        return sum(float((grad * c).sum()) for grad, c in zip(formula(x, mean), coefficients, strict=True))

    def taped(x: Any, mean: Any) -> tuple[Any, Any]:
        with tf.GradientTape() as tape:
            tape.watch([x, mean])
            grads = layernorm.layer_norm_backward(*_tf(dy), x, *_tf(w), mean=mean, rstd=tf.constant(rstd))
            total = tf.add_n([tf.reduce_sum(grad * c) for grad, c in zip(grads, coefficients, strict=True)])
        return grads, tape.gradient(total, [x, mean])

    signature = [tf.TensorSpec((None, None), tf.float64)] * 2
    run = taped if mode == "eager" else tf.function(taped, jit_compile=True, input_signature=signature)
    grads, (loss_dx, loss_dmean) = run(*_tf(x, mean))
    for got, expected in zip(grads, formula(x, mean), strict=True):
        np.testing.assert_allclose(_np(got), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_np(loss_dx), _numeric_gradient(lambda x_: loss(x_, mean), x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(_np(loss_dmean), _numeric_gradient(lambda m: loss(x, m), mean), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
def test_gradients_flow_through_returned_statistics(kind: str, mode: str) -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 5)) + 0.5
    spec = check_forward(kind, x, None, None, -1, 1e-5)  # type: ignore[arg-type]
    a, c, d = rng.standard_normal(x.shape), rng.standard_normal((3, 1)), rng.standard_normal((3, 1))

    def loss_reference(x_: np.ndarray) -> float:
        if kind == "layer_norm":
            y, mean, rstd = reference.layer_norm(x_, None, None, spec)
            return float((y * a).sum() + (mean * c).sum() + (rstd * d).sum())
        y, rstd = reference.rms_norm(x_, None, spec)
        return float((y * a).sum() + (rstd * d).sum())

    def tape_gradient(x_: Any) -> Any:
        with tf.GradientTape() as tape:
            tape.watch(x_)
            if kind == "layer_norm":
                y, mean, rstd = layernorm.layer_norm(x_, return_stats=True)
                loss = tf.reduce_sum(y * a) + tf.reduce_sum(mean * c) + tf.reduce_sum(rstd * d)
            else:
                y, rstd = layernorm.rms_norm(x_, return_stats=True)
                loss = tf.reduce_sum(y * a) + tf.reduce_sum(rstd * d)
        return tape.gradient(loss, x_)

    got = _np(_compiled(tape_gradient, mode)(tf.constant(x)))
    np.testing.assert_allclose(got, _numeric_gradient(loss_reference, x), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("jit", [False, True], ids=["function", "jit"])
@pytest.mark.parametrize(
    ("signature", "shape", "axis"),
    [
        pytest.param((None, 8), (5, 8), -1, id="batch-None"),
        pytest.param((None, None, 8), (2, 3, 8), (1, 2), id="two-None-normalized"),
        pytest.param((None, 4, None), (3, 4, 6), 1, id="channels-first-None"),
        pytest.param((None, None, None), (3, 4, 6), 1, id="channels-first-all-None"),
    ],
)
def test_unknown_sizes_in_input_signature(
    signature: tuple[int | None, ...], shape: tuple[int, ...], axis: Any, jit: bool
) -> None:
    host = _host(shape, axis, np.float32, seed=4)
    x, w, b, dy = _tf(*host)

    @tf.function(jit_compile=jit, input_signature=[tf.TensorSpec(signature, tf.float32)] * 2)
    def run(x: Any, dy: Any) -> tuple[Any, ...]:
        with tf.GradientTape() as tape:
            tape.watch([x, w, b])
            y = layernorm.layer_norm(x, w, b, axis=axis)
            rms = layernorm.rms_norm(x, w, axis=axis)
        grads = tape.gradient(y, [x, w, b], output_gradients=dy)
        return (y, rms, *grads)

    y, rms, *grads = run(x, dy)
    spec = check_forward("layer_norm", host[0], host[1], host[2], axis, 1e-5)
    cond = row_condition(host[0], spec)
    assert (
        error_ratio(
            _np(y), reference.layer_norm(host[0], host[1], host[2], spec)[0], tolerance("float32", "output"), cond
        )
        <= 1
    )
    rms_spec = check_forward("rms_norm", host[0], host[1], None, axis, 1e-5)
    assert error_ratio(_np(rms), reference.rms_norm(host[0], host[1], rms_spec)[0], tolerance("float32", "output")) <= 1
    _check_grads("layer_norm", grads, host, axis, "float32")


@pytest.mark.parametrize("axis", [1, 0], ids=["middle", "leading"])
@pytest.mark.parametrize("nesting", ["forward-over-reverse", "reverse-over-forward"])
def test_a_tape_nested_with_a_forward_accumulator_under_unknown_sizes(nesting: str, axis: int) -> None:
    """Over axes that are not innermost, unknown sizes chose the route of the row means with a tf.cond, which a
    GradientTape nested with a ForwardAccumulator cannot trace (a TypeError about a variant dtype)."""
    x = tf.constant(np.random.default_rng(0).standard_normal((3, 40, 2)))

    def nested(x: Any) -> Any:
        if nesting == "forward-over-reverse":  # a Hessian-vector product
            with tf.autodiff.ForwardAccumulator(x, tf.ones_like(x)) as accumulator:
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    loss = tf.reduce_sum(layernorm.layer_norm(x, axis=axis) ** 3)
                gradient = tape.gradient(loss, x)
            return accumulator.jvp(gradient)
        with tf.GradientTape() as tape:
            tape.watch(x)
            with tf.autodiff.ForwardAccumulator(x, tf.ones_like(x)) as accumulator:
                y = layernorm.rms_norm(x, axis=axis)
            loss = tf.reduce_sum(accumulator.jvp(y) ** 2)
        return tape.gradient(loss, x)

    unknown = tf.function(nested, input_signature=[tf.TensorSpec([None] * 3, tf.float64)])(x)
    np.testing.assert_allclose(_np(unknown), _np(tf.function(nested)(x)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("signature", "axis"),
    [((2, None, 1), 1), ((1, None, 8), 1), ((None, 1, None), -1)],
    ids=["trailing-1", "leading-1", "middle-1"],
)
def test_known_sizes_stay_known_beside_unknown_normalized_sizes(signature: tuple[int | None, ...], axis: int) -> None:
    """The run-time size checks reshape to a shape known only when the graph runs, which forgot x's known sizes of
    1: y's shape lost them, and a Keras Dense layer after it could not be built."""
    run = tf.function(lambda x: layernorm.layer_norm(x, axis=axis, return_stats=True))
    y, mean, rstd = run.get_concrete_function(tf.TensorSpec(signature, tf.float32)).structured_outputs
    stats = tuple(1 if d == axis % len(signature) else size for d, size in enumerate(signature))
    assert tuple(y.shape) == signature and tuple(mean.shape) == tuple(rstd.shape) == stats


def test_constant_rows_over_several_axes_under_xla() -> None:
    """XLA:CPU sums several axes of a small batch in running sums: constant rows of 0.1 over (1, 2) of (4, 32, 32)
    missed the bias by 6.1e-4 under jit_compile (8.7 times the float32 tolerance with a weight of 2). Such rows are
    summed as the cascade sums rows, from a (rows, N) view, as with unknown sizes."""
    x = np.full((4, 32, 32), 0.1, np.float32)
    w, b = np.full((32, 32), 2.0, np.float32), np.full((32, 32), 0.5, np.float32)
    run = tf.function(lambda *a: layernorm.layer_norm(*a, axis=(1, 2)), jit_compile=True)
    spec = check_forward("layer_norm", x, w, b, (1, 2), 1e-5)
    expected = reference.layer_norm(x, w, b, spec)[0]
    got = _np(run(*_tf(x, w, b)))
    assert error_ratio(got, expected, tolerance("float32", "output"), row_condition(x, spec)) <= 1


def _signature(*sizes_per_argument: int) -> list[Any]:
    return [tf.TensorSpec((None,) * n, tf.float32) for n in sizes_per_argument]


def _wrong_sizes_cases() -> list[Any]:
    """(function, the rank of each argument, arguments with one of a wrong size, the role the message names).

    Each argument's sizes are unknown (None) in the signature; None arguments are left out of it.
    """
    x, x3 = np.ones((3, 4), np.float32), np.ones((3, 2, 4), np.float32)

    def ln(x: Any, w: Any, b: Any) -> Any:
        return layernorm.layer_norm(x, w, b)

    def ln_first_last(x: Any, w: Any) -> Any:
        return layernorm.layer_norm(x, w, axis=(0, 2))

    def rms(x: Any, w: Any) -> Any:
        return layernorm.rms_norm(x, w)

    def ln_grads(x: Any, w: Any) -> Any:
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            y = layernorm.layer_norm(x, w)
        return tape.gradient(y, [x, w])

    def ln_backward(dy: Any, x: Any) -> Any:
        return layernorm.layer_norm_backward(dy, x)

    def ln_backward_stats(x: Any, mean: Any, rstd: Any) -> Any:
        return layernorm.layer_norm_backward(x, x, mean=mean, rstd=rstd)

    def rms_backward(dy: Any, x: Any, rstd: Any) -> Any:
        return layernorm.rms_norm_backward(dy, x, rstd=rstd)

    col = np.ones((3, 1), np.float32)
    return [
        pytest.param(ln, (2, 1, 1), (x, np.ones(1, np.float32), None), "weight", id="weight-of-size-1"),
        pytest.param(ln, (2, 1, 1), (x, None, np.ones(5, np.float32)), "bias", id="bias-too-long"),
        pytest.param(ln_first_last, (3, 2), (x3, np.ones((4, 3), np.float32)), "weight", id="weight-transposed"),
        pytest.param(rms, (2, 1), (x, np.ones(1, np.float32)), "weight", id="rms-weight-of-size-1"),
        pytest.param(ln_grads, (2, 1), (x, np.ones(1, np.float32)), "weight", id="tape-weight-of-size-1"),
        pytest.param(ln_backward, (2, 2), (np.ones((3, 1), np.float32), x), "dy", id="dy-one-column"),
        pytest.param(ln_backward_stats, (2, 2, 2), (x, col, np.ones((1, 4), np.float32)), "rstd", id="rstd-a-row"),
        pytest.param(rms_backward, (2, 2, 2), (x, x, np.ones((3, 4), np.float32)), "rstd", id="rms-rstd-full"),
    ]


@pytest.mark.parametrize("jit", [False, True], ids=["function", "jit"])
@pytest.mark.parametrize(("function", "ranks", "arguments", "role"), _wrong_sizes_cases())
def test_sizes_unknown_when_traced_are_checked_when_run(
    function: Callable[..., Any], ranks: tuple[int, ...], arguments: tuple[Any, ...], role: str, jit: bool
) -> None:
    """A wrong size the core could not see (None in the signature) fails when the graph runs; it never broadcasts."""
    given = [a for a in arguments if a is not None]
    present = [i for i, a in enumerate(arguments) if a is not None]

    def call(*tensors: Any) -> Any:
        full: list[Any] = [None] * len(arguments)
        for i, t in zip(present, tensors, strict=True):
            full[i] = t
        return function(*full)

    compiled = tf.function(call, jit_compile=jit, input_signature=_signature(*(ranks[i] for i in present)))
    tensors = [tf.constant(a) for a in given]
    for _ in range(1 if jit else 20):  # a graph's ops run in parallel: the assertion must come first every time
        with pytest.raises(tf.errors.InvalidArgumentError) as raised:
            compiled(*tensors)
        if not jit:  # XLA drops assertions: there the error is its own, from the reshape or the broadcast
            assert f"{role} must have the s" in str(raised.value)


def test_sizes_unknown_when_traced_pass_when_right() -> None:
    """Right sizes pass the run-time checks, gradients reach a weight whose sizes were unknown, and a dy of known
    sizes goes with an x of unknown ones."""
    host = _host((3, 2, 4), (0, 2), np.float32, seed=6)
    x, w, b, dy = _tf(*host)

    @tf.function(input_signature=_signature(3, 2, 2, 3))
    def run(x: Any, w: Any, b: Any, dy: Any) -> list[Any]:
        with tf.GradientTape() as tape:
            tape.watch([x, w, b])
            y = layernorm.layer_norm(x, w, b, axis=(0, 2))
        return tape.gradient(y, [x, w, b], output_gradients=dy)

    _check_grads("layer_norm", run(x, w, b, dy), host, (0, 2), "float32")
    explicit = tf.function(
        lambda dy, x, w: layernorm.layer_norm_backward(dy, x, w, axis=(0, 2)), input_signature=_signature(3, 3, 2)
    )
    _check_grads("layer_norm", list(explicit(dy, x, w)), host, (0, 2), "float32")
    known_dy = tf.function(
        lambda x: layernorm.layer_norm_backward(dy, x, w, axis=(0, 2)), input_signature=_signature(3)
    )
    _check_grads("layer_norm", list(known_dy(x)), host, (0, 2), "float32")


@pytest.mark.parametrize("mode", MODES)
def test_variables_get_gradients_and_stay_unchanged(mode: str) -> None:
    host = _host((4, 6), -1, np.float32, seed=5)
    x, w, b = (tf.Variable(a) for a in host[:3])
    dy = tf.constant(host[3])

    def grads() -> list[Any]:
        with tf.GradientTape() as tape:  # variables are watched on read, no tape.watch
            y = layernorm.layer_norm(x, w, b)
        return tape.gradient(y, [x, w, b], output_gradients=dy)

    got = _compiled(grads, mode)()
    _check_grads("layer_norm", got, host, -1, "float32")
    for variable, original in zip((x, w, b), host[:3], strict=True):
        np.testing.assert_array_equal(variable.numpy(), original)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_input_with_float32_parameters(dtype: str) -> None:
    host = _host((5, 12), -1, DTYPES[dtype], seed=6)
    x, dy = tf.constant(host[0]), tf.constant(host[3])
    w, b = tf.constant(host[1].astype(np.float32)), tf.constant(host[2].astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch([x, w, b])
        y = layernorm.layer_norm(x, w, b)
    dx, dw, db = tape.gradient(y, [x, w, b], output_gradients=dy)
    assert (y.dtype.name, dx.dtype.name, dw.dtype.name, db.dtype.name) == (dtype, dtype, "float32", "float32")
    _check_grads("layer_norm", [dx, dw, db], host, -1, dtype)


def test_constant_rows_give_the_bias_without_nan() -> None:
    x = tf.fill((3, 7), 2.5)
    b = tf.range(7, dtype=tf.float32)
    y = layernorm.layer_norm(x, tf.ones(7), b)
    np.testing.assert_array_equal(_np(y), np.broadcast_to(np.arange(7, dtype=np.float32), (3, 7)))


@pytest.mark.parametrize("eps", [0.0, 1e-46], ids=["eps=0", "eps=1e-46"])
@pytest.mark.parametrize("mode", MODES)
def test_constant_row_along_a_leading_axis_without_eps_gives_nan(mode: str, eps: float) -> None:
    """eps 0 (or 0 in float32), rows along axis 0 of a (5, 3, 2) x: a constant row has rstd inf and y NaN, not the
    -inf that XLA's fusion of sum * (1/5) with x - mean into one FMA gave (the conformance check runs eager
    TensorFlow only). The XLA of TensorFlow before 2.21 (2.16 seen) fuses the variance too: a finite rstd and
    y = -1, which docs/spec.md allows ("a finite rstd and y = +-1"); never ±inf."""
    host = np.random.default_rng(3).normal(size=(5, 3, 2)).astype(np.float32)
    host[:, 1, 0] = 3.0
    y, _, rstd = _compiled(lambda x: layernorm.layer_norm(x, axis=0, eps=eps, return_stats=True), mode)(
        tf.constant(host)
    )
    constant_row = _np(y)[:, 1, 0]
    if np.isposinf(_np(rstd)[0, 1, 0]):
        assert np.isnan(constant_row).all()
    else:
        assert mode == "jit" and TF_VERSION < (2, 21)
        assert (np.abs(constant_row) == 1).all()
    assert np.isfinite(np.delete(_np(y).reshape(5, 6), 2, axis=1)).all()


def test_large_offset_rows_stay_accurate() -> None:
    rng = np.random.default_rng(7)
    host = (1e4 + rng.standard_normal((8, 256))).astype(np.float32)
    spec = check_forward("layer_norm", host, None, None, -1, 1e-5)
    y, _, rstd = layernorm.layer_norm(tf.constant(host), return_stats=True)
    ref_y, _, ref_rstd = reference.layer_norm(host, None, None, spec)
    cond = row_condition(host, spec)
    assert error_ratio(_np(y), ref_y, tolerance("float32", "output"), cond) <= 1
    assert error_ratio(_np(rstd), ref_rstd, tolerance("float32", "stats"), cond) <= 1


LONG_CASES = [
    pytest.param((2, 2**21), -1, 1e4, id="rows-of-2**21"),
    pytest.param((64, 4096, 4), (0, 1), 1e3, id="axes-0-1-of-64x4096x4"),
    pytest.param((2**17, 4), 0, 1e3, id="axis-0-of-2**17x4"),
    pytest.param((256, 3, 256), (0, 2), 1e4, id="axes-0-2-of-256x3x256"),  # a batch axis between normalized ones
    pytest.param((2**20 + 5,), 0, 1e4, id="every-axis"),  # no batch axis: the cascade's row count is 1
]


def _long_call(kind: str, spec: Any, mode: str) -> Callable[..., Any]:
    """(x, w, dy) -> (y, statistics..., dx, dweight): the forward with statistics, then the explicit backward."""
    axis = spec.axes

    def call(x: Any, w: Any, dy: Any) -> tuple[Any, ...]:
        if kind == "layer_norm":
            y_and_stats = layernorm.layer_norm(x, w, axis=axis, return_stats=True)
            return (*y_and_stats, *layernorm.layer_norm_backward(dy, x, w, axis=axis)[:2])
        return (
            *layernorm.rms_norm(x, w, axis=axis, return_stats=True),
            *layernorm.rms_norm_backward(dy, x, w, axis=axis),
        )

    if mode == "eager":
        return call
    signature = _signature(spec.ndim, len(axis), spec.ndim) if mode.endswith("unknown-sizes") else None
    return tf.function(call, jit_compile=mode.startswith("jit"), input_signature=signature)


@pytest.mark.parametrize("mode", [*MODES, "function-unknown-sizes", "jit-unknown-sizes"])
@pytest.mark.parametrize(("shape", "axis", "offset"), LONG_CASES)
@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
def test_long_rows_stay_accurate(kind: str, shape: tuple[int, ...], axis: Any, offset: float, mode: str) -> None:
    """Rows of 2**17 to 2**21 values near 1e3 or 1e4: statistics, y, dx and dweight within the tolerances.

    XLA:CPU sums a row with a few accumulators, and TensorFlow's kernels an axis that is not innermost with one per
    column: before the cascade and the move of such axes last, the mean of a row of 2**20 values near 1e4 came out
    3 too small under XLA, and rms_norm over axes (0, 1) of the (64, 4096, 4) array erred by 9x the tolerance. Over
    axes (0, 2) of (256, 3, 256) the kernels keep running sums over both (the mean came out 3 too small).
    """
    rng = np.random.default_rng(8)
    spec = check_forward(kind, np.empty(shape, np.float32), None, None, axis, 1e-5)  # type: ignore[arg-type]
    x = (offset + rng.standard_normal(shape)).astype(np.float32)
    w = (1 + 0.1 * rng.standard_normal(spec.normalized_shape)).astype(np.float32)  # type: ignore[arg-type]
    dy = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)  # not centred: the backward's row sums add up
    got = _long_call(kind, spec, mode)(*_tf(x, w, dy))
    expected: tuple[np.ndarray, ...]
    if kind == "layer_norm":
        expected = (*reference.layer_norm(x, w, None, spec), *reference.layer_norm_backward(dy, x, w, spec)[:2])
        names = ("y", "mean", "rstd", "dx", "dweight")
    else:
        expected = (*reference.rms_norm(x, w, spec), *reference.rms_norm_backward(dy, x, w, spec))
        names = ("y", "rstd", "dx", "dweight")
    cond = row_condition(x, spec)
    rstd = expected[names.index("rstd")]
    quantities = {"y": "output", "mean": "stats", "rstd": "stats", "dx": "grad", "dweight": "grad"}
    scales = {"mean": mean_scale(rstd), "dx": gradient_scale(dy, w, rstd, spec)}
    for name, g, e in zip(names, got, expected, strict=True):
        tol = tolerance("float32", quantities[name])  # type: ignore[arg-type]
        ratio = error_ratio(_np(g), e, tol, cond, scale=scales.get(name))
        assert ratio <= 1, f"{name}: {ratio:.2f}x the tolerance"


def test_is_tracked() -> None:
    backend = registry.get("tensorflow")
    eager = tf.constant([1.0, 2.0])
    variable = tf.Variable([1.0, 2.0])
    frozen = tf.Variable([1.0, 2.0], trainable=False)
    assert not backend.is_tracked(eager) and not backend.is_tracked(variable)
    with tf.GradientTape() as tape:
        tape.watch(eager)
        assert backend.is_tracked(eager) and backend.is_tracked(variable)
        assert not backend.is_tracked(tf.constant([3.0])) and not backend.is_tracked(frozen)
    seen = []

    @tf.function
    def trace(t: Any) -> Any:
        seen.extend([backend.is_tracked(t), backend.is_tracked(frozen)])
        return t

    trace(eager)
    assert seen == [True, True]


def test_tracked_tensor_cannot_cross_but_eager_one_can() -> None:
    x = tf.constant([[1.0, 2.0, 4.0]])
    y = layernorm.layer_norm(x, backend="numpy")
    assert isinstance(y, tf.Tensor)
    np.testing.assert_allclose(_np(y), _np(layernorm.layer_norm(x)), rtol=1e-6)
    with tf.GradientTape() as tape:
        tape.watch(x)
        with pytest.raises(layernorm.BackendError, match="autodiff or tracing"):
            layernorm.layer_norm(x, backend="numpy")
    out = layernorm.layer_norm(np.array([[1.0, 2.0, 4.0]]), backend="tensorflow")
    assert isinstance(out, np.ndarray) and out.dtype == np.float64


def test_tensor_watched_by_a_forward_accumulator_cannot_cross() -> None:
    """forward-mode autodiff is autodiff too: the tensor an accumulator watches is refused, not silently detached."""
    backend = registry.get("tensorflow")
    x = tf.constant([[1.0, 2.0, 4.0]])
    with tf.autodiff.ForwardAccumulator(x, tf.constant([[1.0, 0.0, -1.0]])) as accumulator:
        assert backend.is_tracked(x) and not backend.is_tracked(tf.constant([3.0]))
        with pytest.raises(layernorm.BackendError, match="autodiff or tracing"):
            layernorm.layer_norm(x, backend="numpy")
        y = layernorm.layer_norm(x)
    assert accumulator.jvp(y) is not None


@pytest.mark.parametrize("watcher", ["tape", "accumulator"])
@pytest.mark.parametrize("role", ["x", "weight"])
def test_watched_non_trainable_variable_cannot_cross(watcher: str, role: str) -> None:
    """A non-trainable variable that a tape or accumulator watches explicitly takes part in autodiff: it is refused,
    not silently detached (it crossed, and its gradient and tangent came out None); unwatched, it crosses."""
    backend = registry.get("tensorflow")
    frozen = tf.Variable([[1.0, 2.0, 4.0]] if role == "x" else [0.5, 2.0, 1.0], trainable=False)
    other = tf.Variable([[3.0, 1.0, 2.0]], trainable=False)
    x, weight = (frozen, None) if role == "x" else (tf.constant([[1.0, 2.0, 4.0]]), frozen)
    watching = (
        tf.GradientTape(watch_accessed_variables=False)
        if watcher == "tape"
        else tf.autodiff.ForwardAccumulator(frozen, tf.ones_like(frozen))
    )
    with watching as recorder:
        if watcher == "tape":
            recorder.watch(frozen)
        assert backend.is_tracked(frozen) and not backend.is_tracked(other)
        with pytest.raises(layernorm.BackendError, match="autodiff or tracing"):
            layernorm.layer_norm(x, weight, backend="numpy")
        assert isinstance(layernorm.layer_norm(other, backend="numpy"), tf.Tensor)
        y = layernorm.layer_norm(x, weight)
        loss = tf.reduce_sum(y * tf.constant([[1.0, 0.0, -1.0]]))
    derivative = recorder.gradient(loss, frozen) if watcher == "tape" else recorder.jvp(loss)
    assert derivative is not None


@pytest.mark.parametrize("engine", ["backend=", "use"])
def test_numpy_x_inside_tf_function_on_the_tensorflow_engine_is_a_backend_error(engine: str) -> None:
    """Inside tf.function the engine's result is symbolic: it cannot go back as a NumPy array, and says so."""
    x = np.arange(8, dtype=np.float32).reshape(2, 4)

    @tf.function
    def run() -> Any:
        return layernorm.layer_norm(x, backend="tensorflow" if engine == "backend=" else None)

    if engine == "use":
        layernorm.use("tensorflow")
    try:
        with pytest.raises(layernorm.BackendError, match=r"Inside tf.function, pass tf.Tensors"):
            run()
    finally:
        layernorm.use("auto")
    symbolic = tf.function(lambda t: registry.get("tensorflow").to_numpy(t))
    with pytest.raises(layernorm.BackendError, match="symbolic tensor"):
        symbolic(tf.constant(x))


def _empty_row_calls() -> list[Any]:
    return [
        pytest.param(lambda x: layernorm.layer_norm(x, return_stats=True), id="layer_norm"),
        pytest.param(lambda x: layernorm.rms_norm(x, return_stats=True), id="rms_norm"),
        pytest.param(lambda x: layernorm.layer_norm_backward(x, x), id="layer_norm_backward"),
        pytest.param(lambda x: layernorm.rms_norm_backward(x, x), id="rms_norm_backward"),
    ]


@pytest.mark.parametrize("jit", [False, True], ids=["function", "jit"])
@pytest.mark.parametrize("call", _empty_row_calls())
def test_normalized_size_zero_unknown_when_traced_fails_when_run(call: Callable[..., Any], jit: bool) -> None:
    """A normalized size of 0 the core could not see fails when the graph runs, with the core's words; not NaN."""
    compiled = tf.function(
        tf.autograph.experimental.do_not_convert(call), jit_compile=jit, input_signature=_signature(2)
    )
    with pytest.raises(layernorm.ShapeError, match="the normalized size is 0 "):
        call(tf.zeros((3, 0)))  # eagerly, the core's check
    for _ in range(1 if jit else 20):  # a graph's ops run in parallel: the assertion must come first every time
        with pytest.raises(tf.errors.InvalidArgumentError) as raised:
            compiled(tf.zeros((3, 0)))
        if not jit:  # XLA drops assertions: there the error is its own, from the broadcast
            assert "the normalized size is 0 (x has shape [3 0], axis=(1,)): nothing to normalize" in str(raised.value)
    assert tuple(compiled(tf.zeros((0, 4)))[0].shape) == (0, 4)  # no rows is no error


@pytest.mark.parametrize("dtype", DTYPES)
def test_numpy_round_trip_and_foreign_arrays(dtype: str) -> None:
    backend = registry.get("tensorflow")
    host = np.arange(6, dtype=np.float64).reshape(2, 3).astype(DTYPES[dtype])
    t = backend.from_numpy(host, "cpu")
    assert t.dtype.name == dtype and backend.device_of(t) == "cpu"
    back = backend.to_numpy(t)
    assert back.dtype == host.dtype
    np.testing.assert_array_equal(back, host)
    np.testing.assert_array_equal(backend.to_numpy(backend.from_foreign(host)), host)


def test_from_numpy_on_a_missing_device_is_a_device_error() -> None:
    if HAS_GPU:
        pytest.skip("a GPU is present: nothing missing to ask for")
    with pytest.raises(layernorm.DeviceError):
        registry.get("tensorflow").from_numpy(np.zeros(3, np.float32), "gpu")


def test_info_reports_cpu_and_all_dtypes() -> None:
    info = registry.get("tensorflow").info()
    assert "cpu" in info.devices and info.autodiff
    assert set(info.dtypes) == set(DTYPES)
    assert ("gpu" in info.devices) == HAS_GPU


@pytest.mark.parametrize("mode", MODES)
def test_gpu_output_stays_on_gpu(mode: str) -> None:
    if not HAS_GPU:
        pytest.skip("no GPU visible to TensorFlow")
    host = _host((64, 128), -1, np.float32, seed=8)
    with tf.device("/GPU:0"):
        x, w, b, dy = _tf(*host)

    def grads(x: Any, w: Any, b: Any, dy: Any) -> tuple[Any, list[Any]]:
        with tf.GradientTape() as tape:
            tape.watch([x, w, b])
            y = layernorm.layer_norm(x, w, b)
        return y, tape.gradient(y, [x, w, b], output_gradients=dy)

    y, got = _compiled(grads, mode)(x, w, b, dy)
    assert registry.get("tensorflow").device_of(y) == "gpu" and "GPU" in y.device
    _check_grads("layer_norm", got, host, -1, "float32")


def test_cpu_tensor_stays_on_cpu_when_a_gpu_is_present() -> None:
    if not HAS_GPU:
        pytest.skip("no GPU visible to TensorFlow")
    with tf.device("/CPU:0"):
        x = tf.constant(_host((4, 16), -1, np.float32)[0])
    y = layernorm.layer_norm(x)
    assert "CPU" in y.device


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_second_order_gradients(mode: str) -> None:
    rng = np.random.default_rng(9)
    x, w, dy, v = (rng.standard_normal(s) for s in ((3, 5), (5,), (3, 5), (3, 5)))
    spec = check_forward("layer_norm", x, w, None, -1, 1e-5)

    def hessian_vector(x_: Any) -> Any:
        with tf.GradientTape() as outer:
            outer.watch(x_)
            with tf.GradientTape() as inner:
                inner.watch(x_)
                y = layernorm.layer_norm(x_, tf.constant(w))
            dx = inner.gradient(y, x_, output_gradients=tf.constant(dy))
            projected = tf.reduce_sum(dx * v)
        return outer.gradient(projected, x_)

    def projected_reference(x_: np.ndarray) -> float:
        return float((reference.layer_norm_backward(dy, x_, w, spec)[0] * v).sum())

    got = _np(_compiled(hessian_vector, mode)(tf.constant(x)))
    np.testing.assert_allclose(got, _numeric_gradient(projected_reference, x), rtol=1e-6, atol=1e-7)


def test_torch_tensor_converts_through_dlpack() -> None:
    torch = pytest.importorskip("torch")
    backend = registry.get("tensorflow")
    source = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    converted = backend.from_foreign(source)
    assert isinstance(converted, tf.Tensor) and converted.dtype == tf.float32
    np.testing.assert_array_equal(_np(converted), source.numpy())


@pytest.mark.parametrize(("row", "jit_compile"), [(1 << 20, True), (1 << 21, False)])
def test_long_rows_with_a_weight_keep_the_gradient_tolerance(row: int, jit_compile: bool) -> None:
    """layer_norm's dx of one long row with a weight and a dy of mean 1: the backward took mean(dy * weight) as a
    matrix-vector product, which sums with too few accumulators (dx 2.1 times the float32 tolerance under XLA at
    2**20 values, 1.5 times eagerly at 2**21); it cascades its sums now, as without a weight."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, row)).astype(np.float32)
    dy = (1 + 0.01 * rng.standard_normal((1, row))).astype(np.float32)
    w = (1 + 0.01 * rng.standard_normal(row)).astype(np.float32)

    @tf.function(jit_compile=jit_compile)
    def grad(x: Any, w: Any) -> Any:
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layernorm.layer_norm(x, w) * dy)
        return tape.gradient(loss, x)

    spec = check_forward("layer_norm", x, w, None, -1, 1e-5)
    rstd = reference.layer_norm(x, w, None, spec)[2]
    expected = reference.layer_norm_backward(dy, x, w, spec)[0]
    dx = grad(tf.constant(x), tf.constant(w)).numpy()
    scale = gradient_scale(dy, w, rstd, spec)
    assert error_ratio(dx, expected, tolerance("float32", "grad"), row_condition(x, spec), scale=scale) <= 1
