"""The math of the JAX backend: two-pass statistics, the analytic backward, the custom_vjp and custom_jvp rules.

Every function here takes jax arrays (or tracers) and static ``axes`` (non-negative, increasing) and ``eps``.
Half inputs are upcast to float32 for every reduction; results are cast back to x's dtype at the end, so XLA
fuses the casts into the same loops. The explicit ``*_backward`` functions of the backend and layer_norm's
custom_vjp backward of y call the same gradient function, ``layer_norm_grads``; rms_norm's tangent rule of y is the
linearization whose transpose is ``rms_norm_grads``. The returned statistics have rules of their own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache, partial
from typing import Any, TypeVar, cast

import jax
import jax.numpy as jnp
from jax import lax

from layernorm_core.dtypes import dtype_name, flushed_to_zero

Axes = tuple[int, ...]
T = TypeVar("T")


def compute_dtype(dtype: jnp.dtype) -> jnp.dtype:
    """float32 for float16/bfloat16, else ``dtype`` itself (float32 or float64)."""
    return jnp.dtype(jnp.float32) if jnp.dtype(dtype).itemsize < 4 else jnp.dtype(dtype)


def _upcast(x: jax.Array) -> jax.Array:
    return x.astype(compute_dtype(x.dtype))


def _count(x: jax.Array, axes: Axes) -> int:
    return math.prod(x.shape[a] for a in axes)


def _param(p: jax.Array | None, x: jax.Array, axes: Axes, dtype: jnp.dtype) -> jax.Array | None:
    """weight/bias (normalized_shape) reshaped to broadcast against x, in the compute dtype."""
    if p is None:
        return None
    shape = tuple(x.shape[d] if d in axes else 1 for d in range(x.ndim))
    return p.astype(dtype).reshape(shape)


def _sum_to_param(value: jax.Array, axes: Axes) -> jax.Array:
    """Sum over the batch axes of a full-shape array: the normalized-shape gradient of weight or bias."""
    batch_axes = tuple(d for d in range(value.ndim) if d not in axes)
    return value.sum(axis=batch_axes) if batch_axes else value


def layer_norm_stats(x: jax.Array, axes: Axes, eps: float) -> tuple[jax.Array, jax.Array]:
    """(mean, rstd) in the compute dtype, normalized axes kept as size 1. Two passes: var = mean((x - mean)^2).

    The mean is sum(x) / N, as XLA's own fusions, Flax and Keras take it: a constant row whose sum rounds keeps a
    var of that rounding (docs/spec.md). Taking the mean about an element of the row instead (exact there) cost
    3-46% of a float32 forward from 64x768 to 4096x768 (one thread, side by side): XLA's fused reduction slows
    down once it subtracts a per-row value, and slicing an explicitly sharded axis is refused.
    """
    xf = _upcast(x)
    mean = jnp.mean(xf, axis=axes, keepdims=True)
    centered = xf - mean
    var = jnp.mean(centered * centered, axis=axes, keepdims=True)
    return mean, lax.rsqrt(var + jnp.asarray(eps, xf.dtype))


def rms_norm_rstd(x: jax.Array, axes: Axes, eps: float) -> jax.Array:
    """Return rstd = 1 / sqrt(mean(x^2) + eps) in the compute dtype, normalized axes kept as size 1."""
    xf = _upcast(x)
    return lax.rsqrt(jnp.mean(xf * xf, axis=axes, keepdims=True) + jnp.asarray(eps, xf.dtype))


def layer_norm_apply(
    x: jax.Array,
    weight: jax.Array | None,
    bias: jax.Array | None,
    mean: jax.Array,
    rstd: jax.Array,
    axes: Axes,
    eps: float,
) -> jax.Array:
    """Return y = (x - mean) * rstd * weight + bias in the compute dtype, cast to x's dtype.

    With eps = 0 a row of variance 0 has rstd = inf and y = NaN (0 * inf), as `centered_rows` makes sure.
    """
    dtype = mean.dtype
    y = centered_rows(x, mean, rstd, eps) * rstd
    w, b = _param(weight, x, axes, dtype), _param(bias, x, axes, dtype)
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y.astype(x.dtype)


def centered_rows(x: jax.Array, mean: jax.Array, rstd: jax.Array, eps: float) -> jax.Array:
    """X - mean in the compute dtype; NaN in the rows whose rstd is inf.

    With eps = 0 a row of variance 0 has rstd = inf, and everything its x - mean multiplies rstd into is NaN
    (0 * inf): y, the parameter gradients, dx, the statistics' gradients. XLA:CPU, though, may fuse the mean's
    division into x - mean as an FMA with the unrounded quotient (sum * (1/N)), leaving x - mean nonzero and those
    +-inf, in compiled code only. So for an eps that is 0 in the compute dtype (XLA flushes a subnormal one to 0)
    such rows are NaN here. eps is static: the programs of larger eps are unchanged.
    """
    c = _upcast(x) - mean
    if flushed_to_zero(eps, dtype_name(mean.dtype)):
        c = jnp.where(jnp.isinf(rstd), jnp.nan, c)
    return c


def rms_norm_apply(x: jax.Array, weight: jax.Array | None, rstd: jax.Array, axes: Axes) -> jax.Array:
    """Return y = x * rstd * weight in the compute dtype, cast to x's dtype."""
    w = _param(weight, x, axes, rstd.dtype)
    # x * (rstd * w), as Flax's RMSNorm orders it: XLA:CPU's fused loop ran 12-18% faster in bfloat16 at
    # (4096, 768) and (8192, 512) than with (x * rstd) * w (same HLO ops; float32 within noise).
    return (_upcast(x) * (rstd if w is None else rstd * w)).astype(x.dtype)


def layer_norm_grads(
    dy: jax.Array,
    x: jax.Array,
    weight: jax.Array | None,
    mean: jax.Array,
    rstd: jax.Array,
    axes: Axes,
    eps: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(dx, dweight, dbias) in the compute dtype, dweight/dbias with the normalized shape.

    With xhat = (x - mean) * rstd and g = dy * weight: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
    """
    dyf = dy.astype(mean.dtype)
    n = _count(x, axes)
    return _by_row_length(
        n,
        lambda: _single_element_grads(dyf, x, rstd, axes),
        lambda: _row_grads(dyf, centered_rows(x, mean, rstd, eps), weight, rstd, axes, n),
    )


def _by_row_length(n: Any, single_elements: Callable[[], T], rows: Callable[[], T]) -> T:
    """``single_elements()`` for rows of one element, else ``rows()``.

    Decided when the program runs for a symbolic row length (jax.export), when traced otherwise.
    """
    if not isinstance(n, int):
        return cast(T, lax.cond(jnp.asarray(n) == 1, single_elements, rows))
    return single_elements() if n == 1 else rows()


def _row_grads(
    dyf: jax.Array,
    centered: jax.Array,
    weight: jax.Array | None,
    rstd: jax.Array,
    axes: Axes,
    n: Any,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`layer_norm_grads` of rows of ``n`` elements, n > 1.

    dyf is dy, centered is x - mean (`centered_rows`), both in the compute dtype.
    """
    # Written on centered = x - mean, with rstd applied to row-sized factors: XLA then keeps one full-size
    # intermediate instead of also materializing xhat = centered * rstd.
    w = _param(weight, centered, axes, rstd.dtype)
    g = dyf if w is None else dyf * w
    g_sum, gc_sum = _row_sums(g, g * centered, axes)
    g_mean, gc_mean = g_sum.reshape(rstd.shape) / n, gc_sum.reshape(rstd.shape) / n
    # rstd applied one factor at a time: rstd**3 alone under- or overflows for spreads beyond 1e+-13 in float32
    dx = rstd * (g - g_mean - centered * (rstd * (rstd * gc_mean)))
    return dx, _sum_to_param(dyf * centered * rstd, axes), _sum_to_param(dyf, axes)


def _single_element_grads(
    dy: jax.Array, x: jax.Array, rstd: jax.Array, axes: Axes
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`layer_norm_grads` of rows of one element: x - mean is 0 whatever x, so y's cotangent does not reach x.

    The general form gives the same first derivative, but differentiated again its terms of size rstd**3 cancel
    only in exact arithmetic (a float32 second derivative came out wrong at eps = 1e-5). dy is in the compute
    dtype.
    """
    # 0, or NaN where dy or x is NaN or inf, or rstd inf (eps = 0: xhat = 0 * inf), as the general form gives
    blank = dy * 0 + _upcast(x) * 0 + rstd * 0
    return blank, _sum_to_param(blank, axes), _sum_to_param(dy, axes)


ONE_PASS_MIN_ELEMENTS = 1 << 21
"""From this many elements, XLA:CPU takes a row's two backward sums in one pass (one variadic reduction).

The summands, g and g times the centred x, are float32 (float64 with x64) whatever x's dtype. One pass reads them
once instead of twice, which pays once they no longer sit in the cache (the 2-core EPYC's L3 is 32 MiB, filled
by the two at 2**22 elements); below, two plain sums were faster. Side by side, forward+backward with inputs
rotated so that caches start cold (`benchmarks`' method), jax 0.10.2, two sums' time over one pass's:
- trailing axes, 0.8M-1.6M elements (1024x768, 2048x768, 1536x1024, 8x128x768, 12x128x768): 0.66-0.85 in float32,
  0.73-0.99 in bfloat16 (one run of 1024x768: 1.18);
- 4096x1024, 16384x256, 6144x768, 32x128x1024 float32: 2.0-2.4; 16x256x768 bfloat16: 1.22-1.29;
- 4096x768: 0.86-1.07 (either form); 8x64x56x56 over axis 1 (1.6M elements): 0.94-1.19, noisy.
Sizes only known symbolically (jax.export) get two sums."""


@partial(jax.custom_jvp, nondiff_argnums=(2,))
def _row_sums(a: jax.Array, b: jax.Array, axes: Axes) -> tuple[jax.Array, jax.Array]:
    """(sum of a, sum of b) over ``axes`` (the axes dropped), in one pass or two (`_sums_by_size`)."""
    return _sized_sums(axes)(a, b)


@cache
def _sized_sums(axes: Axes) -> Any:
    """`_sums_by_size` over ``axes``, deciding under jax.vmap by the size of the whole batch, not of one member.

    Per-example code (``vmap(grad(loss))``) would otherwise pick two sums for a batch that one pass serves faster.
    """

    @jax.custom_batching.custom_vmap
    def sums(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
        return _sums_by_size(a, b, axes)

    @sums.def_vmap
    def batched(
        axis_size: int, in_batched: list[bool], a: jax.Array, b: jax.Array
    ) -> tuple[tuple[jax.Array, jax.Array], tuple[bool, bool]]:
        a, b = (
            t if was else jnp.broadcast_to(t, (axis_size, *t.shape)) for t, was in zip((a, b), in_batched, strict=True)
        )
        return _sized_sums(tuple(d + 1 for d in axes))(a, b), (True, True)

    return sums


def _sums_by_size(a: jax.Array, b: jax.Array, axes: Axes) -> tuple[jax.Array, jax.Array]:
    """One variadic reduction on XLA:CPU from `ONE_PASS_MIN_ELEMENTS`; two plain sums below, and on other platforms.

    XLA:GPU fuses two plain sums better (on an H200, 431 us against 595 us at (8192, 4096) float32 and 61 us
    against 95 us at (4096, 768)).
    """
    if not (isinstance(a.size, int) and a.size >= ONE_PASS_MIN_ELEMENTS):
        return _two_sums(a, b, axes)
    return lax.platform_dependent(a, b, cpu=partial(_one_reduction, axes=axes), default=partial(_two_sums, axes=axes))


def _one_reduction(a: jax.Array, b: jax.Array, axes: Axes) -> tuple[jax.Array, jax.Array]:
    zero = jnp.zeros((), a.dtype)
    return lax.reduce((a, b), (zero, zero), _add_pairs, axes)


def _two_sums(a: jax.Array, b: jax.Array, axes: Axes) -> tuple[jax.Array, jax.Array]:
    return jnp.sum(a, axis=axes), jnp.sum(b, axis=axes)


@_row_sums.defjvp
def _row_sums_jvp(
    axes: Axes, primals: tuple[jax.Array, jax.Array], tangents: tuple[jax.Array, jax.Array]
) -> tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
    # Plain sums for the tangents: JAX cannot transpose a variadic reduce, and grad of grad needs to.
    return _row_sums(*primals, axes), _two_sums(*tangents, axes)


def _add_pairs(a: tuple[jax.Array, jax.Array], b: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
    return a[0] + b[0], a[1] + b[1]


def rms_norm_grads(
    dy: jax.Array,
    x: jax.Array,
    weight: jax.Array | None,
    rstd: jax.Array,
    axes: Axes,
) -> tuple[jax.Array, jax.Array]:
    """(dx, dweight) in the compute dtype: dx = rstd * (g - xhat * mean(g * xhat)), xhat = x * rstd."""
    dtype = rstd.dtype
    dyf = dy.astype(dtype)
    xhat = _upcast(x) * rstd
    w = _param(weight, x, axes, dtype)
    g = dyf if w is None else dyf * w
    dx = rstd * (g - xhat * jnp.mean(g * xhat, axis=axes, keepdims=True))
    return dx, _sum_to_param(dyf * xhat, axes)


def _cotangent(value: jax.Array, primal: jax.Array) -> jax.Array:
    """``value``, the gradient of ``primal``, in primal's dtype and sharding type.

    jax.custom_vjp requires both. Under a mesh of Explicit axes (`jax.make_mesh`'s default in JAX 0.10) a gradient
    is sharded as what it is computed from: dweight of a replicated weight as an x sharded along the normalized
    axis, dx of a replicated x as a sharded weight; it is resharded to the primal's sharding, as JAX's own
    transposes do.
    """
    value = value.astype(primal.dtype)
    want = _sharding_type(primal)
    if want is None or not want.mesh.axis_names or _sharding_type(value).spec == want.spec:  # no mesh: any goes
        return value
    return jax.sharding.reshard(value, want)


def _param_cotangent(value: jax.Array, primal: jax.Array | None) -> jax.Array | None:
    return None if primal is None else _cotangent(value, primal)


def _sharding_type(a: jax.Array) -> Any:
    """The sharding in a's type (a NamedSharding), or None where JAX's types hold none."""
    typeof = getattr(jax, "typeof", None)
    return None if typeof is None else getattr(typeof(a), "sharding", None)


# -- layer_norm's custom_vjp: the forward saves (x, weight, mean, rstd), the backward is layer_norm_grads. y and the
# statistics are two rules: under jax.vmap with x unbatched and the weight batched, the statistics (x's alone)
# are unbatched beside a batched y, and one rule for both got their summed cotangent in every member of the batch.


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def layer_norm_output(
    x: jax.Array, weight: jax.Array | None, bias: jax.Array | None, axes: Axes, eps: float
) -> jax.Array:
    """y, differentiable through jax.custom_vjp with the analytic backward."""
    mean, rstd = layer_norm_stats(x, axes, eps)
    return layer_norm_apply(x, weight, bias, mean, rstd, axes, eps)


def _layer_norm_fwd(
    x: jax.Array, weight: jax.Array | None, bias: jax.Array | None, axes: Axes, eps: float
) -> tuple[jax.Array, tuple[jax.Array | None, ...]]:
    mean, rstd = layer_norm_stats(x, axes, eps)
    y = layer_norm_apply(x, weight, bias, mean, rstd, axes, eps)
    # bias is saved only for its dtype (None stays None); XLA drops the unused buffer.
    return y, (x, weight, bias, mean, rstd)


def _layer_norm_bwd(
    axes: Axes, eps: float, residuals: tuple[jax.Array, ...], dy: jax.Array
) -> tuple[jax.Array | None, ...]:
    x, weight, bias, mean, rstd = residuals
    dx, dweight, dbias = layer_norm_grads(dy, x, weight, mean, rstd, axes, eps)
    return _cotangent(dx, x), _param_cotangent(dweight, weight), _param_cotangent(dbias, bias)


layer_norm_output.defvjp(_layer_norm_fwd, _layer_norm_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def layer_norm_statistics(x: jax.Array, axes: Axes, eps: float) -> tuple[jax.Array, jax.Array]:
    """(mean, rstd) as `layer_norm_stats` gives them, differentiable with the analytic backward."""
    return layer_norm_stats(x, axes, eps)


def _layer_norm_statistics_fwd(
    x: jax.Array, axes: Axes, eps: float
) -> tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, ...]]:
    mean, rstd = layer_norm_stats(x, axes, eps)
    return (mean, rstd), (x, mean, rstd)


def _layer_norm_statistics_bwd(
    axes: Axes, eps: float, residuals: tuple[jax.Array, ...], cotangents: tuple[jax.Array, jax.Array]
) -> tuple[jax.Array]:
    """The cotangents' dx: mean = sum(x) / N adds dmean / N, rstd = (var + eps)^-1/2 -drstd rstd^3 (x - mean) / N."""
    x, mean, rstd = residuals
    dmean, drstd = (c.astype(mean.dtype) for c in cotangents)
    xf, n = _upcast(x), _count(x, axes)

    def rows() -> jax.Array:
        return dmean / n - _times_rstd_squared(centered_rows(x, mean, rstd, eps) * rstd, rstd, drstd) / n

    def single_elements() -> jax.Array:
        # x - mean is 0 whatever x: the rstd term is 0 (NaN where x is not finite or rstd is inf, as in `rows`).
        # Differentiated again, `rows`' terms of size rstd**3 cancel only in exact arithmetic.
        return dmean + (xf * 0 + rstd * 0) * drstd

    return (_cotangent(_by_row_length(n, single_elements, rows), x),)


layer_norm_statistics.defvjp(_layer_norm_statistics_fwd, _layer_norm_statistics_bwd)


def _times_rstd_squared(xhat: jax.Array, rstd: jax.Array, drstd: jax.Array) -> jax.Array:
    """``xhat * rstd**2 * drstd``, one factor of rstd at a time from xhat (about 1): each product stays in range.

    rstd**3 alone (which the derivative of (v + eps)^-1/2 is made of) under- or overflows for rows of spread beyond
    1e+-13 in float32 (1e+-102 in float64), where the result, about rstd**2 times drstd, is in range.
    """
    return xhat * (rstd * drstd) * rstd


# -- rms_norm's custom_jvp: the tangent rules are the analytic linearization, which jax.jvp, jax.jacfwd and
# jax.linearize use; jax.grad and jax.vjp transpose them into `rms_norm_grads`' formulas (one row reduction, no
# rstd**3), and XLA:CPU compiles the custom_vjp's backward loops (bfloat16: less a float32 copy of x). layer_norm
# keeps its custom_vjp: as a custom_jvp written as here, its forward+backward ran 7-11% slower at (4096, 768)
# bfloat16 (float32 within noise; one thread, side by side), and its transpose has no one-pass row sums
# (`ONE_PASS_MIN_ELEMENTS`: JAX cannot transpose a variadic reduction).


@partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def rms_norm_output(x: jax.Array, weight: jax.Array | None, axes: Axes, eps: float) -> jax.Array:
    """y, differentiable through jax.custom_jvp with the analytic linearization."""
    return rms_norm_apply(x, weight, rms_norm_rstd(x, axes, eps), axes)


@partial(rms_norm_output.defjvp, symbolic_zeros=True)
def _rms_norm_output_jvp(
    axes: Axes, eps: float, primals: tuple[jax.Array, jax.Array | None], tangents: tuple[Any, Any]
) -> tuple[jax.Array, jax.Array]:
    """The tangent of y, taken under jax.checkpoint.

    Reverse mode then keeps x, the weight and rstd for the backward, as the custom_vjp did, and recomputes xhat there
    instead of holding it (a float32 array of x's size).
    """
    x, weight = primals
    rstd = rms_norm_statistics(x, axes, eps)  # differentiated again (second order), by its own rule
    tangent = jax.checkpoint(partial(_rms_norm_tangent, axes))
    return rms_norm_apply(x, weight, rstd, axes), tangent(x, weight, rstd, *map(_nonzero, tangents))


def _nonzero(tangent: Any) -> jax.Array | None:
    """The tangent, or None for an argument that is None or not differentiated (a SymbolicZero)."""
    return None if isinstance(tangent, jax.custom_derivatives.SymbolicZero) else tangent


def _rms_norm_tangent(
    axes: Axes, x: jax.Array, weight: jax.Array | None, rstd: jax.Array, dx: jax.Array | None, dweight: jax.Array | None
) -> jax.Array:
    """The tangent rstd * (dx - xhat * mean(xhat * dx)) * weight + xhat * dweight, xhat = x * rstd, in x's dtype.

    A tangent of None is zero (one at least is not).

    Transposed, the dx term gives `rms_norm_grads`' dx = rstd * (g - xhat * mean(g * xhat)), g = dy * weight.
    """
    dtype = rstd.dtype
    xhat = _upcast(x) * rstd
    w, dw = _param(weight, x, axes, dtype), _param(dweight, x, axes, dtype)
    terms = []
    if dx is not None:
        # rstd * dx first and the row's mean negated (one row-sized negation): transposed, rstd multiplies last and
        # XLA:CPU's backward loop is that of the custom_vjp; as rstd * (dx - xhat * mean(xhat * dx)) it ran
        # 11-23% slower at (4096, 768) float32 (one thread, side by side).
        scaled = rstd * dx.astype(dtype)
        dxhat = scaled + xhat * -jnp.mean(xhat * scaled, axis=axes, keepdims=True)
        terms.append(dxhat if w is None else dxhat * w)
    if dw is not None:
        terms.append(xhat * dw)
    return sum(terms[1:], terms[0]).astype(x.dtype)


@partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def rms_norm_statistics(x: jax.Array, axes: Axes, eps: float) -> jax.Array:
    """The rstd of `rms_norm_rstd`, differentiable with the analytic linearization."""
    return rms_norm_rstd(x, axes, eps)


@rms_norm_statistics.defjvp
def _rms_norm_statistics_jvp(
    axes: Axes, eps: float, primals: tuple[jax.Array], tangents: tuple[jax.Array]
) -> tuple[jax.Array, jax.Array]:
    """The tangent of rstd = (mean(x^2) + eps)^-1/2: -rstd^3 * mean(x * dx) = -rstd * (rstd * mean(xhat * dx)).

    One factor of rstd at a time, as `_times_rstd_squared`: rstd**3 alone under- or overflows for rows of spread
    beyond 1e+-13 in float32. Transposed: -xhat * (rstd * (rstd * drstd)) / N, the custom_vjp's backward.
    """
    (x,), (dx,) = primals, tangents
    rstd = rms_norm_statistics(x, axes, eps)
    xhat_dx = _upcast(x) * rstd * dx.astype(rstd.dtype)
    return rstd, -rstd * (rstd * jnp.mean(xhat_dx, axis=axes, keepdims=True))


def layer_norm(
    x: jax.Array, weight: jax.Array | None, bias: jax.Array | None, axes: Axes, eps: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(y, mean, rstd), each differentiable. Under jit, XLA computes the statistics the two rules share once."""
    return layer_norm_output(x, weight, bias, axes, eps), *layer_norm_statistics(x, axes, eps)


def rms_norm(x: jax.Array, weight: jax.Array | None, axes: Axes, eps: float) -> tuple[jax.Array, jax.Array]:
    """(y, rstd), each differentiable. Under jit, XLA computes the rstd the two rules share once."""
    return rms_norm_output(x, weight, axes, eps), rms_norm_statistics(x, axes, eps)


# -- the explicit backward functions: the same gradient code, stats recomputed when not given --


def layer_norm_backward(
    dy: jax.Array,
    x: jax.Array,
    weight: jax.Array | None,
    stats: tuple[jax.Array | None, jax.Array | None],
    axes: Axes,
    eps: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(dx, dweight, dbias) in x's dtype; ``stats`` = (mean, rstd), recomputed when either is None."""
    mean, rstd = stats
    if mean is None or rstd is None:
        mean, rstd = layer_norm_stats(x, axes, eps)
    dx, dweight, dbias = layer_norm_grads(dy, x, weight, mean, rstd, axes, eps)
    return dx.astype(x.dtype), dweight.astype(x.dtype), dbias.astype(x.dtype)


def rms_norm_backward(
    dy: jax.Array, x: jax.Array, weight: jax.Array | None, rstd: jax.Array | None, axes: Axes, eps: float
) -> tuple[jax.Array, jax.Array]:
    """(dx, dweight) in x's dtype; rstd is recomputed when None."""
    if rstd is None:
        rstd = rms_norm_rstd(x, axes, eps)
    dx, dweight = rms_norm_grads(dy, x, weight, rstd, axes)
    return dx.astype(x.dtype), dweight.astype(x.dtype)
