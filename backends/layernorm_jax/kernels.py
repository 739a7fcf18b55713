"""The math of the JAX backend: two-pass statistics, the analytic backward, and the custom_jvp rules.

Every function here takes jax arrays (or tracers) and static ``axes`` (non-negative, increasing) and ``eps``.
Half inputs are upcast to float32 for every reduction; results are cast back to x's dtype at the end, so XLA
fuses the casts into the same loops. The explicit ``*_backward`` functions of the backend compute
``layer_norm_grads`` and ``rms_norm_grads``; the custom_jvp tangent rules of y are the linearizations whose
transposes (jax.grad, jax.vjp) are those formulas. The returned statistics have rules of their own.
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
    """Sum over the batch axes of a full-shape array: the normalized-shape gradient of weight or bias.

    A product with ones where XLA:CPU's own sum would be slow (`_sums_batch_by_product`).
    """
    batch_axes = tuple(d for d in range(value.ndim) if d not in axes)
    if not batch_axes:
        return value
    if not _sums_batch_by_product(value, axes):
        return value.sum(axis=batch_axes)
    by_product = partial(_sum_by_product, batch_ndim=len(batch_axes))
    return lax.platform_dependent(value, cpu=by_product, default=partial(jnp.sum, axis=batch_axes))


def _spread(p: jax.Array | None, like: jax.Array, axes: Axes) -> jax.Array | None:
    """The parameter p (normalized shape) in like's dtype, to broadcast against ``like``; None for None.

    Reverse mode sums its cotangent over the batch axes. Where XLA:CPU's own sum would be slow
    (`_sums_batch_by_product`), p is repeated over them as an outer product with ones, which JAX transposes into
    the product with ones that `_sum_to_param` takes there.
    """
    if not (p is not None and _sums_batch_by_product(like, axes)):
        return _param(p, like, axes, like.dtype)
    return lax.platform_dependent(
        p.astype(like.dtype),
        cpu=partial(_outer_product_with_ones, batch=like.shape[: like.ndim - len(axes)]),
        default=lambda q: jnp.broadcast_to(q, like.shape),
    )


SLOW_COLUMN_SUM_BYTES = 1 << 16
"""XLA:CPU sums an array over its leading axes 7-50 times slower once a slice of the remaining ones exceeds this.

jax 0.10.2, one thread, sum over axis 0 against ``ones @ x``: float32 (8, 16384) 105 / 55 us, (8, 16385) 625 /
55 us, (8, 65536) 4.7 / 0.09 ms, (256, 32768) 54 / 1.2 ms; float64 (8, 8192) 110 / 56 us, (8, 8193) 387 / 56 us.
Below it the two are within 2x. The sums of the weight and bias gradients over a batch are such sums."""


def _sums_batch_by_product(x: jax.Array, axes: Axes) -> bool:
    """Whether the sums over x's batch axes run as a product with ones on XLA:CPU (`SLOW_COLUMN_SUM_BYTES`).

    Only for trailing normalized axes of known sizes, under a batch of more than one row.
    """
    trailing = axes == tuple(range(x.ndim - len(axes), x.ndim))
    if not (trailing and all(isinstance(d, int) for d in x.shape)):
        return False
    row = _count(x, axes)
    return x.size > row and row * x.dtype.itemsize > SLOW_COLUMN_SUM_BYTES


def _sum_by_product(value: jax.Array, batch_ndim: int) -> jax.Array:
    """The sum of value over its ``batch_ndim`` leading axes, as the product of ones and value."""
    leading = tuple(range(batch_ndim))
    ones = jnp.ones(value.shape[:batch_ndim], value.dtype)
    return lax.dot_general(ones, value, ((leading, leading), ((), ())))


def _outer_product_with_ones(p: jax.Array, batch: tuple[int, ...]) -> jax.Array:
    """The parameter p repeated over leading axes of sizes ``batch``, as the outer product of ones and p."""
    ones = jnp.ones(batch, p.dtype)
    return lax.dot_general(ones, p, (((), ()), ((), ())))


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
    *,
    given_stats: bool,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(dx, dweight, dbias) in the compute dtype, dweight/dbias with the normalized shape.

    With xhat = (x - mean) * rstd and g = dy * weight: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
    ``given_stats``: mean and rstd are a caller's, not computed from x here, so rows of one element take the general
    form too (their x - mean need not be 0, and it depends on x and mean).
    """
    dyf = dy.astype(mean.dtype)
    n = _count(x, axes)

    def rows() -> tuple[jax.Array, jax.Array, jax.Array]:
        return _row_grads(dyf, centered_rows(x, mean, rstd, eps), weight, rstd, axes, n)

    if given_stats:
        return rows()
    return _by_row_length(n, lambda: _single_element_grads(dyf, x, rstd, axes), rows)


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
    """`layer_norm_grads` of rows of one element with x's own mean: x - mean is 0 whatever x, so dy does not reach x.

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

    The explicit backward mapped over examples (``vmap(layer_norm_backward)``) would otherwise pick two sums for a
    batch that one pass serves faster. (``vmap(grad(loss))`` does not come here: it transposes the tangent rule.)
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


# -- custom_jvp rules. Their tangent rules are the analytic linearization, which jax.jvp, jax.jacfwd and
# jax.linearize use; jax.grad and jax.vjp transpose them into the formulas of `layer_norm_grads` and `rms_norm_grads`
# (a row's two reductions, one for rms_norm; no rstd**3). The tangents, the statistics' too, are taken under
# jax.checkpoint: reverse mode then keeps x, the weight and the statistics for the backward, as a custom_vjp did, and
# recomputes xhat there instead of holding it (a float32 array of x's size). prevent_cse stays True: False saved
# nothing inside lax.scan and let XLA keep xhat in a plain jitted call (docs/benchmarks.md). y and the statistics
# are separate functions: a loss on y alone computes no statistics' tangents, and under jax.vmap with x unbatched
# and the weight batched the statistics (x's alone) stay unbatched beside a batched y. The y rules take the
# statistics from `layer_norm_statistics` and `rms_norm_statistics`, whose own rules, in range, differentiate them
# again (second order).
# Against the custom_vjp rules they replaced (one thread, side by side, jax 0.10.2): layer_norm forward+backward
# 0.91-0.94x at (64, 768), 0.88-0.98x at (4096, 768) float32, 0.97-0.98x at (4096, 1024) and (16384, 256) float32
# (per-round medians), 1.05-1.10x at (4096, 768) bfloat16, still 0.85x flax.nnx.LayerNorm's time there; the
# custom_vjp's one-pass row sums (`ONE_PASS_MIN_ELEMENTS`) remain in the explicit backward only, since JAX cannot
# transpose a variadic reduction.


def _nonzero(tangent: Any) -> jax.Array | None:
    """The tangent, or None for an argument that is None or not differentiated (a SymbolicZero)."""
    return None if isinstance(tangent, jax.custom_derivatives.SymbolicZero) else tangent


def _affine_tangent(
    dxhat: jax.Array | None,
    xhat: jax.Array,
    weight: jax.Array | None,
    dweight: jax.Array | None,
    dbias: jax.Array | None,
    axes: Axes,
    dtype: jnp.dtype,
) -> jax.Array:
    """The tangent of y = xhat * weight + bias: dxhat * weight + xhat * dweight + dbias, in ``dtype``.

    A tangent of None is zero (the terms it would give are left out).
    """
    w = _param(weight, xhat, axes, xhat.dtype)
    dw, db = (_spread(p, xhat, axes) for p in (dweight, dbias))
    terms = [] if dxhat is None else [dxhat if w is None else dxhat * w]
    if dw is not None:
        terms.append(xhat * dw)
    if db is not None:
        terms.append(jnp.broadcast_to(db, xhat.shape))
    return (sum(terms[1:], terms[0]) if terms else jnp.zeros_like(xhat)).astype(dtype)


def _scaled_first(rstd: jax.Array, dx: jax.Array) -> jax.Array:
    """The product rstd * dx in rstd's dtype, which the dx terms of the tangents start from (its row mean negated).

    Transposed, rstd then multiplies last, and XLA:CPU's backward loop is that of the custom_vjp rules: written as
    rstd * (dx - xhat * mean(xhat * dx)), rms_norm's forward+backward ran 11-23% slower at (4096, 768) float32.
    """
    return rstd * dx.astype(rstd.dtype)


@partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def layer_norm_output(
    x: jax.Array, weight: jax.Array | None, bias: jax.Array | None, axes: Axes, eps: float
) -> jax.Array:
    """y, differentiable through jax.custom_jvp with the analytic linearization."""
    mean, rstd = layer_norm_stats(x, axes, eps)
    return layer_norm_apply(x, weight, bias, mean, rstd, axes, eps)


@partial(layer_norm_output.defjvp, symbolic_zeros=True)
def _layer_norm_output_jvp(
    axes: Axes, eps: float, primals: tuple[jax.Array, jax.Array | None, jax.Array | None], tangents: tuple[Any, ...]
) -> tuple[jax.Array, jax.Array]:
    """The y of layer_norm and its tangent (`_layer_norm_tangent`), taken under jax.checkpoint."""
    x, weight, bias = primals
    mean, rstd = layer_norm_statistics(x, axes, eps)
    tangent = jax.checkpoint(partial(_layer_norm_tangent, axes, eps))
    y = layer_norm_apply(x, weight, bias, mean, rstd, axes, eps)
    return y, tangent(x, weight, mean, rstd, *map(_nonzero, tangents))


def _layer_norm_tangent(
    axes: Axes,
    eps: float,
    x: jax.Array,
    weight: jax.Array | None,
    mean: jax.Array,
    rstd: jax.Array,
    dx: jax.Array | None,
    dweight: jax.Array | None,
    dbias: jax.Array | None,
) -> jax.Array:
    """The tangent of layer_norm's y, in x's dtype.

    With xhat = (x - mean) * rstd: rstd * (dx - mean(dx) - xhat * mean(xhat * dx)) * weight + xhat * dweight +
    dbias. Transposed, its dx term gives `layer_norm_grads`' dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),
    g = dy * weight. In rows of one element it is 0 whatever dx (NaN where x, dx or rstd is not finite).
    """
    xhat = centered_rows(x, mean, rstd, eps) * rstd
    dxhat = None
    if dx is not None:
        scaled = _scaled_first(rstd, dx)
        neg_mean, neg_mean_xhat = (-jnp.mean(t, axis=axes, keepdims=True) for t in (scaled, xhat * scaled))
        dxhat = scaled + neg_mean + xhat * neg_mean_xhat
    return _affine_tangent(dxhat, xhat, weight, dweight, dbias, axes, x.dtype)


@partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def rms_norm_output(x: jax.Array, weight: jax.Array | None, axes: Axes, eps: float) -> jax.Array:
    """y, differentiable through jax.custom_jvp with the analytic linearization."""
    return rms_norm_apply(x, weight, rms_norm_rstd(x, axes, eps), axes)


@partial(rms_norm_output.defjvp, symbolic_zeros=True)
def _rms_norm_output_jvp(
    axes: Axes, eps: float, primals: tuple[jax.Array, jax.Array | None], tangents: tuple[Any, Any]
) -> tuple[jax.Array, jax.Array]:
    """The y of rms_norm and its tangent (`_rms_norm_tangent`), taken under jax.checkpoint."""
    x, weight = primals
    rstd = rms_norm_statistics(x, axes, eps)
    tangent = jax.checkpoint(partial(_rms_norm_tangent, axes))
    return rms_norm_apply(x, weight, rstd, axes), tangent(x, weight, rstd, *map(_nonzero, tangents))


def _rms_norm_tangent(
    axes: Axes, x: jax.Array, weight: jax.Array | None, rstd: jax.Array, dx: jax.Array | None, dweight: jax.Array | None
) -> jax.Array:
    """The tangent of rms_norm's y, in x's dtype.

    With xhat = x * rstd: rstd * (dx - xhat * mean(xhat * dx)) * weight + xhat * dweight. Transposed, the dx
    term gives `rms_norm_grads`' dx = rstd * (g - xhat * mean(g * xhat)), g = dy * weight.
    """
    xhat = _upcast(x) * rstd
    dxhat = None
    if dx is not None:
        scaled = _scaled_first(rstd, dx)
        dxhat = scaled + xhat * -jnp.mean(xhat * scaled, axis=axes, keepdims=True)
    return _affine_tangent(dxhat, xhat, weight, dweight, None, axes, x.dtype)


def _rstd_tangent(xhat: jax.Array, rstd: jax.Array, dx: jax.Array, axes: Axes) -> jax.Array:
    """The tangent of rstd = (var + eps)^-1/2: -rstd**3 * mean(xhat / rstd * dx) = -rstd * (rstd * mean(xhat * dx)).

    xhat is (x - mean) * rstd for layer_norm, x * rstd for rms_norm. One factor of rstd at a time from xhat (about
    1): rstd**3 alone under- or overflows for rows of spread beyond 1e+-13 in float32 (1e+-102 in float64), where
    the result is in range. Transposed: -xhat * (rstd * (rstd * drstd)) / N.
    """
    return -rstd * (rstd * jnp.mean(xhat * dx.astype(rstd.dtype), axis=axes, keepdims=True))


@partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def layer_norm_statistics(x: jax.Array, axes: Axes, eps: float) -> tuple[jax.Array, jax.Array]:
    """(mean, rstd) as `layer_norm_stats` gives them, differentiable with the analytic linearization."""
    return layer_norm_stats(x, axes, eps)


@layer_norm_statistics.defjvp
def _layer_norm_statistics_jvp(
    axes: Axes, eps: float, primals: tuple[jax.Array], tangents: tuple[jax.Array]
) -> tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
    """The tangents of mean and rstd: mean(dx), and `_rstd_tangent`.

    In rows of one element x - mean is 0 whatever x, and so is drstd (NaN where x or dx is not finite or rstd is
    inf, as the general form gives): differentiated again, the general form's terms of size rstd**4 cancel only in
    exact arithmetic (float32 second derivatives came out 4% off at eps = 1e-3).
    """
    (x,), (dx,) = primals, tangents
    mean, rstd = layer_norm_statistics(x, axes, eps)
    tangent = jax.checkpoint(partial(_layer_norm_statistics_tangent, axes, eps))
    return (mean, rstd), tangent(x, mean, rstd, dx)


def _layer_norm_statistics_tangent(
    axes: Axes, eps: float, x: jax.Array, mean: jax.Array, rstd: jax.Array, dx: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The tangents (dmean, drstd) of `_layer_norm_statistics_jvp`, in the statistics' dtype."""
    dxf = dx.astype(rstd.dtype)
    xhat = centered_rows(x, mean, rstd, eps) * rstd
    drstd = _by_row_length(
        _count(x, axes),
        lambda: jnp.sum(xhat * dxf, axis=axes, keepdims=True) * 0,
        lambda: _rstd_tangent(xhat, rstd, dxf, axes),
    )
    return jnp.mean(dxf, axis=axes, keepdims=True), drstd


@partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def rms_norm_statistics(x: jax.Array, axes: Axes, eps: float) -> jax.Array:
    """The rstd of `rms_norm_rstd`, differentiable with the analytic linearization."""
    return rms_norm_rstd(x, axes, eps)


@rms_norm_statistics.defjvp
def _rms_norm_statistics_jvp(
    axes: Axes, eps: float, primals: tuple[jax.Array], tangents: tuple[jax.Array]
) -> tuple[jax.Array, jax.Array]:
    """The tangent of rms_norm's rstd (`_rstd_tangent`, xhat = x * rstd)."""
    (x,), (dx,) = primals, tangents
    rstd = rms_norm_statistics(x, axes, eps)
    return rstd, jax.checkpoint(partial(_rms_norm_rstd_tangent, axes))(x, rstd, dx)


def _rms_norm_rstd_tangent(axes: Axes, x: jax.Array, rstd: jax.Array, dx: jax.Array) -> jax.Array:
    """The tangent of rms_norm's rstd, xhat recomputed from x (the rule's checkpointed part)."""
    return _rstd_tangent(_upcast(x) * rstd, rstd, dx, axes)


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
    """(dx, dweight, dbias) in x's dtype; ``stats`` = (mean, rstd), recomputed when either is None.

    Recomputed by `layer_norm_statistics`, whose tangent rule keeps the derivatives of these results in x in range
    where rstd**3 is not (rows of spread beyond 1e+-13 in float32).
    """
    mean, rstd = stats
    given_stats = mean is not None and rstd is not None
    if mean is None or rstd is None:
        mean, rstd = layer_norm_statistics(x, axes, eps)
    dx, dweight, dbias = layer_norm_grads(dy, x, weight, mean, rstd, axes, eps, given_stats=given_stats)
    return dx.astype(x.dtype), dweight.astype(x.dtype), dbias.astype(x.dtype)


def rms_norm_backward(
    dy: jax.Array, x: jax.Array, weight: jax.Array | None, rstd: jax.Array | None, axes: Axes, eps: float
) -> tuple[jax.Array, jax.Array]:
    """(dx, dweight) in x's dtype; rstd is recomputed when None, by `rms_norm_statistics` (as `layer_norm_backward`)."""
    if rstd is None:
        rstd = rms_norm_statistics(x, axes, eps)
    dx, dweight = rms_norm_grads(dy, x, weight, rstd, axes)
    return dx.astype(x.dtype), dweight.astype(x.dtype)
