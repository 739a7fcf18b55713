"""Blocked kernels (cache-sized blocks, several threads) that normalize along axis 1 of an array, forward and back.

The array is a 2-D (rows, N) or a 3-D (outer, N, inner) layout. The 3-D layout is channels-first data as it
lies in memory, reduced over the middle axis and vectorized over the inner one; the 2-D layout is inner == 1.

Statistics are shifted two-pass: the values are first shifted by their first element along N (exact for values
close to it, by Sterbenz's lemma), so values like 1e4 + N(0, 1e-2) keep their digits; then mean, then the
variance of the centred values. Never E[x^2] - E[x]^2. A row whose first element lies far from its mean is
computed again, shifted by that mean (`_recenter_far_rows`).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
import numpy.typing as npt

from layernorm_core.cpus import usable_cores
from layernorm_core.errors import BackendError

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

Array = npt.NDArray[Any]

MIN_WIDTH = 64
"""Fewest inner columns in a chunk of a 3-D layout: narrower strided reductions cost more than a transpose."""
BLOCK_BYTES = 256 * 1024
"""Scratch per block, in the compute dtype: small enough that the passes over a block stay in L2."""
PARALLEL_MIN_BYTES = 1 << 20
"""Below this many input bytes a call runs on the calling thread: a thread hand-off would cost more."""
LONG_3D_BLOCK_BYTES = 16 << 20
"""Largest block of a 3-D layout (N times `MIN_WIDTH` values of the compute dtype); a backward holds five a thread.
Longer rows are transposed to a 2-D layout, whose long-row backward needs cache-sized blocks only."""
KEPT_MAX_BYTES = 8 * BLOCK_BYTES
"""Most scratch a thread keeps between calls (`_kept`); a worker that needs more gets fresh arrays."""
DOT_CHUNK = 1 << 12
"""Longest run of elements that one dot product sums in a row's variance and backward sums (`_long_row_dot`)."""
LONG_ROW = 1 << 14
"""Longest row whose backward goes by blocks of whole rows; longer ones go by `_long_rows_backward`.

A block of whole rows sums its columns in float64 (16 bytes a column): twice the block's bytes where it holds 2 rows
of float32, as many where it holds 4 (rows of this many values). Returned one a block and held until the call ended,
those sums took up to 1x x's bytes at rows of this many values in float32 and float64, 2x in float16 (backward
peaks of 2.04x and 3.04x); `_sum_blocks` adds them pairwise as they come, a thread holding about log2 of its blocks'
sums (peaks of 1.11x and 1.13x for 16 MiB of x on one thread, 1.29x and 1.35x for 8 MiB on two; 1.34x and 1.62x
at rows of 16385, by `_long_rows_backward`). glibc maps and unmaps each array over 128 KiB (this many float64
values): rows of 65536 float32 values, one a block, each block's sums a fresh array, peaked at 5x x's bytes and took
3.7x the time of rows of 65600 (16352 page faults a 16 MiB call). Counted in values whatever the dtype."""
LONG_ROW_BYTES = 64 * 1024
"""Most bytes of the compute dtype in one row of a block of `_long_rows_backward` (16384 float32 values)."""
_KEPT_LAYOUTS = 16
"""Scratch layouts (shapes and dtype) whose views a thread keeps: a program's few array shapes, and the blocks."""
THREADS_VARIABLE = "LAYERNORM_NUMPY_THREADS"
"""Environment variable: how many threads share a call of `PARALLEL_MIN_BYTES` or more (default: one per core)."""
_thread_scratch = threading.local()


@lru_cache(maxsize=1)
def _pool(workers: int) -> ThreadPoolExecutor:
    """``workers`` worker threads; RuntimeError once the interpreter shuts down (in an atexit handler).

    Made again when `THREADS_VARIABLE` changes (the pool it replaces ends its threads once unused): sized once, a
    pool made for 3 threads ran the shares of 6 three at a time. Imported here: importing concurrent.futures.thread
    registers an exit hook, which raises during shutdown.
    """
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="layernorm-numpy")


if hasattr(os, "register_at_fork"):  # a forked child has the pool but not its threads: its work would wait forever
    os.register_at_fork(after_in_child=_pool.cache_clear)


def _thread_count() -> int:
    """`THREADS_VARIABLE` when set, else the cores this process may run on."""
    configured = os.environ.get(THREADS_VARIABLE, "").strip()
    if not configured:
        return usable_cores()
    try:
        threads = int(configured)
    except ValueError:
        threads = 0
    if threads < 1:
        raise BackendError(f"{THREADS_VARIABLE} must be a whole number of threads, 1 or more; got {configured!r}")
    return threads


Block = tuple[slice, ...]
"""An index into a layout (and into its statistics): ``[o0:o1]`` of a 2-D one, ``[o0:o1, :, i0:i1]`` of a 3-D one."""
T = TypeVar("T")


def _grid(layout: tuple[int, ...], item_bytes: int) -> list[Block]:
    """The blocks of ``layout`` in a fixed order, each with about BLOCK_BYTES of scratch.

    A block takes whole rows (outer indices) while a row fits, else one row and a chunk of at least MIN_WIDTH
    of its inner columns.
    """
    outer, n, inner = (*layout, 1)[:3]
    column_bytes = max(n * item_bytes, 1)
    width = inner if inner == 1 else min(inner, max(MIN_WIDTH, BLOCK_BYTES // column_bytes))
    block_rows = max(1, min(outer, BLOCK_BYTES // (column_bytes * width))) if width == inner else 1
    rows = [slice(o0, min(o0 + block_rows, outer)) for o0 in range(0, outer, block_rows)]
    if len(layout) == 2:
        return [(row,) for row in rows]
    return [(row, slice(None), slice(i0, min(i0 + width, inner))) for row in rows for i0 in range(0, inner, width)]


def suits_3d_layout(n: int, inner: int, item_bytes: int) -> bool:
    """Whether an (outer, N, inner) layout runs faster here than a transpose to (rows, N).

    Its blocks are `MIN_WIDTH` inner columns wide or wider; up to `LONG_3D_BLOCK_BYTES` of them (long rows) they
    run faster than the two transposes, whose strided reads and writes cost more than the rest of the call.
    """
    return inner >= MIN_WIDTH and n * item_bytes * MIN_WIDTH <= LONG_3D_BLOCK_BYTES


def _kept(shapes: tuple[tuple[int, ...], ...], dtype: np.dtype[Any]) -> tuple[Array, ...]:
    """Arrays of ``shapes`` and ``dtype`` over this thread's scratch buffer, which later calls reuse.

    A worker's fresh temporaries go back to the OS when the call ends (glibc trims the heap), and the next call
    page-faults them in again: the backward of a (64, 768) float32 array took 500 µs with fresh temporaries and
    160 µs with kept ones. The views are kept per layout, since making them costs about 1 µs each. Every call's
    arrays start at the same buffer, so a worker takes all its scratch in one call; a call made while another on
    this thread holds the buffer (`_holding_scratch`) takes fresh arrays.
    """
    if getattr(_thread_scratch, "holders", 0) > 1:
        return tuple(np.empty(shape, dtype=dtype) for shape in shapes)
    views: dict[Any, tuple[Array, ...]] | None = getattr(_thread_scratch, "views", None)
    if views is None:
        views = _thread_scratch.views = {}
    key = (shapes, dtype)
    kept = views.get(key)
    if kept is not None:
        return kept
    sizes = [math.prod(shape) * dtype.itemsize for shape in shapes]
    if sum(sizes) > KEPT_MAX_BYTES:
        return tuple(np.empty(shape, dtype=dtype) for shape in shapes)
    buffer: Array | None = getattr(_thread_scratch, "buffer", None)
    if buffer is None or buffer.size < sum(sizes):
        buffer = _thread_scratch.buffer = np.empty(sum(sizes), dtype=np.uint8)
        views.clear()
    elif len(views) >= _KEPT_LAYOUTS:
        views.clear()
    offsets = np.cumsum([0, *sizes])
    kept = views[key] = tuple(
        buffer[start:stop].view(dtype).reshape(shape)
        for start, stop, shape in zip(offsets[:-1], offsets[1:], shapes, strict=True)
    )
    return kept


class _HoldingScratch:
    """A context in which the calling thread's kept scratch (`_kept`) is in use, counted per thread.

    A call made on the thread meanwhile, from an np.errstate(call=...) handler that the kernels' arithmetic runs (or
    a signal handler), is a second holder: it takes fresh arrays, since the kept ones hold the first call's blocks.
    """

    def __enter__(self) -> None:
        _thread_scratch.holders = getattr(_thread_scratch, "holders", 0) + 1

    def __exit__(self, *exc_info: object) -> None:
        _thread_scratch.holders -= 1


_holding_scratch = _HoldingScratch()


def _scratch(buffer: Array, shape: tuple[int, ...]) -> Array:
    """``buffer`` (a largest block's scratch) itself, or a contiguous ``shape`` view of its start."""
    return buffer if buffer.shape == shape else buffer.reshape(-1)[: math.prod(shape)].reshape(shape)


def _for_blocks(
    x: Array,
    make_worker: Callable[[tuple[int, ...]], Callable[[Block], T]],
    item_bytes: int,
    blocks: list[Block] | None = None,
) -> list[T]:
    """Run workers over the cache-sized ``blocks`` of layout ``x`` (default `_grid`'s), split across threads.

    Inputs under `PARALLEL_MIN_BYTES` run on the calling thread. ``make_worker(shape)`` is called once per thread
    (to allocate that thread's scratch for blocks of at most ``shape``, the first block's) and returns
    ``work(block)``, called for each of that thread's blocks. Returns what ``work`` returned, in the grid's order
    (the same for any number of threads).
    """
    if x.size == 0:
        return []
    if blocks is None:
        if x.size * item_bytes <= BLOCK_BYTES:  # the grid would be this one block: skip making it
            with _holding_scratch:
                return [make_worker(x.shape)((slice(None),))]
        blocks = _grid(x.shape, item_bytes)
    results: list[Any] = [None] * len(blocks)
    largest = x[blocks[0]].shape

    def run_share(share: range) -> None:
        with _holding_scratch:
            work = make_worker(largest)
            for k in share:
                results[k] = work(blocks[k])

    _run_shares(len(blocks), x.size * item_bytes, run_share)
    return results


def _run_shares(count: int, input_bytes: int, run_share: Callable[[range], None]) -> None:
    """Run ``run_share`` on consecutive shares of blocks ``range(count)``, one a thread (`_for_blocks`).

    One share under `PARALLEL_MIN_BYTES` of input; the first share runs on the calling thread.
    """
    threads = _thread_count() if input_bytes >= PARALLEL_MIN_BYTES else 1
    share = -(-count // threads)
    futures = []
    in_pool = _under_callers_errstate(run_share) if share < count else run_share  # read only when pooled
    for first in range(share, count, share):
        try:
            futures.append(_pool(threads).submit(in_pool, range(first, min(first + share, count))))
        except RuntimeError:  # no new threads (interpreter shutdown, a thread limit): the same results on this one
            run_share(range(first, min(first + share, count)))
    try:
        run_share(range(min(share, count)))
    except BaseException:  # np.errstate(all="raise"), say: no share runs on once the call has raised
        for future in futures:
            future.exception()
        raise
    for future in futures:
        future.result()


SumsNode = tuple[int, int, Array]
"""(first block, level, sums) of a subtree of `_sum_blocks`: the float64 sums of blocks first to first + 2**level."""


def _sum_blocks(
    x: Array,
    make_worker: Callable[[tuple[int, ...]], Callable[[Block, Array], None]],
    item_bytes: int,
    sums_shape: tuple[int, ...],
) -> Array:
    """The float64 sum over the grid of layout ``x`` (`_grid`) of what workers write into ``sums_shape`` a block.

    As `_for_blocks`, but ``work(block, sums)`` writes its block's sums into ``sums`` (float64, ``sums_shape``).
    They are added pairwise, in a binary tree over the grid's blocks that is the same for any number of threads
    (`_add_subtree`), so are the sums' bits; a thread holds a block's sums and a few subtrees' (about log2 of its
    blocks), which it reuses, and every thread's are held until all have ended: with as many threads as blocks the
    gain is gone ((128, 16384) float32, 32 blocks: 1.73x x's bytes with 16 threads, 2.49x with 32, against 2.04x
    and 2.22x before). Returned one by one and added in the grid's order, each block's sums were held until
    the call ended: as many bytes as x's at rows of 16384 float32 values (2x in float16; `LONG_ROW`).
    """
    if x.size == 0:
        return np.zeros(sums_shape, dtype=np.float64)
    if x.size * item_bytes <= BLOCK_BYTES:  # the grid would be this one block
        sums = np.empty(sums_shape, dtype=np.float64)
        with _holding_scratch:
            make_worker(x.shape)((slice(None),), sums)
        return sums
    blocks = _grid(x.shape, item_bytes)
    largest = x[blocks[0]].shape
    subtrees: list[SumsNode] = []

    def run_share(share: range) -> None:
        stack: list[SumsNode] = []
        spare: list[Array] = []
        with _holding_scratch:
            work = make_worker(largest)
            for k in share:
                sums = spare.pop() if spare else np.empty(sums_shape, dtype=np.float64)
                work(blocks[k], sums)
                _add_subtree(stack, (k, 0, sums), spare)
        subtrees.extend(stack)

    _run_shares(len(blocks), x.size * item_bytes, run_share)
    stack: list[SumsNode] = []
    for subtree in sorted(subtrees, key=lambda node: node[0]):
        _add_subtree(stack, subtree, [])
    # The blocks past the last power of two: each smaller subtree is the right half of the one before
    total = stack.pop()[2]
    while stack:
        total += stack.pop()[2]
    return total


def _add_subtree(stack: list[SumsNode], node: SumsNode, spare: list[Array]) -> None:
    """Push ``node`` onto ``stack`` (subtrees of consecutive blocks), adding it to its left sibling, and so up.

    Subtree ``(first, level)`` covers blocks ``first`` to ``first + 2**level``, aligned on that many; two of a level
    are siblings where the left one's ``first >> level`` is even. The right one's sums array goes to ``spare``.
    """
    stack.append(node)
    while len(stack) > 1 and stack[-2][1] == stack[-1][1] and not (stack[-2][0] >> stack[-2][1]) & 1:
        _, level, right = stack.pop()
        first, _, left = stack[-1]
        left += right
        stack[-1] = (first, level + 1, left)
        spare.append(right)


def _under_callers_errstate(run: Callable[[range], None]) -> Callable[[range], None]:
    """``run``, for a pool thread to call, under the calling thread's np.errstate and error callback.

    A pool thread has its own floating-point settings, NumPy's defaults: it warned under the caller's
    errstate(invalid="ignore"). The callback is the function or log that mode "call" or "log" needs.
    """
    settings, handler = np.geterr(), np.geterrcall()

    def run_there(share: range) -> None:
        with np.errstate(**settings) if handler is None else np.errstate(call=handler, **settings):
            run(share)

    return run_there


def _finite_rstd(rstd: Array) -> tuple[Array, Array | None]:
    """``rstd`` with its infinities set to 0, and where they were; ``rstd`` itself and None where it has none.

    With eps = 0 a constant row's rstd is inf and its y and dx are NaN, the formula's answer, which the other
    backends give silently. Computed as 0 * inf, that NaN raised NumPy's invalid-value warning; so the kernels
    multiply by 0 there and write the NaN. A row holding an inf still warns, under the caller's np.errstate
    (docs/spec.md): silencing the whole call hid it, also from np.errstate(invalid="raise").
    """
    infinite = np.isinf(rstd)
    if not infinite.any():
        return rstd, None
    return np.where(infinite, 0, rstd).astype(rstd.dtype, copy=False), infinite


def forward(
    x: Array,
    weight: Array | None,
    bias: Array | None,
    eps: float,
    compute: np.dtype[np.floating],
    rms: bool,
    y: Array | None,
    mean_out: Array | None,
    rstd_out: Array,
    pivots: Array | None = None,
) -> None:
    """Normalize ``x`` along axis 1 into ``y``; write the mean (layer_norm) and rstd along that axis.

    With ``y`` None only the statistics are computed (for a backward that was not given them). The mean is taken
    about each row's first element (0 where it is not finite), exact for a constant row: with ``eps`` 0 its rstd
    is inf and its y NaN, without a NumPy warning; or about ``pivots`` (shaped like the statistics), as
    `_recenter_far_rows` gives them.

    ``x`` and ``y`` are a (outer, N) or (outer, N, inner) layout, the statistics the same with N set to 1;
    ``weight`` and ``bias`` are (N,) in the compute dtype or None. Works block by block in scratch buffers of
    the compute dtype, so half inputs are widened one block at a time; rows of a 2-D layout longer than a block,
    where y has the compute dtype, in y itself (fresh scratch of a row's size took 2x x's bytes, and page faults).
    """
    n = x.shape[1]
    inv_n = 1.0 / n
    same_dtype = x.dtype == compute  # y has x's dtype
    formula_infinities = _rstd_may_be_infinite(eps, compute)
    params = weight, bias
    weight, bias = _along_axis_1(weight, x.ndim), _along_axis_1(bias, x.ndim)

    def make_worker(largest: tuple[int, ...]) -> Callable[[Block], None]:
        # Rows of a 2-D layout longer than a block are computed in y itself where y has the compute dtype
        in_y = y is not None and same_dtype and x.ndim == 2 and n * compute.itemsize > BLOCK_BYTES
        scratch, scratch_column = _kept(((0,) if in_y else largest, stats_layout(largest)), compute)

        def work(block: Block) -> None:
            xb = x[block]
            t = y[block] if in_y and y is not None else _scratch(scratch, xb.shape)
            column = _scratch(scratch_column, xb[:, :1].shape)
            if rms:
                np.copyto(t, xb, casting="unsafe")
                _row_dot(t, t, column[:, 0])
            else:
                pivot = (xb[:, :1] if pivots is None else pivots[block]).astype(compute)
                pivot[~np.isfinite(pivot)] = 0  # an inf pivot would make x - pivot NaN where x is inf too
                if same_dtype:
                    np.subtract(xb, pivot, out=t)
                else:
                    np.copyto(t, xb, casting="unsafe")
                    t -= pivot
                _sum_along_n(t, column)
                column *= inv_n
                t -= column
                assert mean_out is not None
                np.add(pivot, column, out=mean_out[block])
                _row_dot(t, t, column[:, 0])
            column *= inv_n
            column += eps
            np.sqrt(column, out=column)
            if formula_infinities:
                with np.errstate(divide="ignore"):  # var + eps = 0: rstd is inf, the formula's answer
                    np.reciprocal(column, out=column)
            else:
                np.reciprocal(column, out=column)
            rstd_out[block] = column
            if y is None:
                return
            yb = y[block]
            column, nan_rows = _finite_rstd(column) if formula_infinities else (column, None)
            last = yb if same_dtype else t
            if weight is None and bias is None:
                np.multiply(t, column, out=last)
            else:
                t *= column
                if bias is None:
                    assert weight is not None
                    np.multiply(t, weight, out=last)
                elif weight is None:
                    np.add(t, bias, out=last)
                else:
                    t *= weight
                    np.add(t, bias, out=last)
            if not same_dtype:
                narrow(yb, t)
            if nan_rows is not None:
                np.copyto(yb, np.nan, where=nan_rows)

        return work

    _for_blocks(x, make_worker, compute.itemsize)
    if not rms and pivots is None and n > NEVER_FAR_ROW and x.size:
        assert mean_out is not None
        _recenter_far_rows(x, *params, eps, compute, y, mean_out, rstd_out)


FAR_PIVOT = 4.0
"""How many standard deviations from its row's mean a pivot may lie before `_recenter_far_rows` centers the row
again about the mean."""
NEVER_FAR_ROW = int(FAR_PIVOT**2) + 1
"""The longest row whose first value cannot lie over `FAR_PIVOT` deviations from the row's mean: a value lies at
most sqrt(N - 1) deviations from it. Longer rows are checked (`_recenter_far_rows`): with a far first value, y
erred by 1.02 times the float32 tolerance over a middle axis of 48 values (test_a_large_first_activation), by
1.28 times in a row of 63 (summed pairwise; with a N(0, 1) weight), and by 2.5 times and more at 512."""


def _recenter_far_rows(
    x: Array,
    weight: Array | None,
    bias: Array | None,
    eps: float,
    compute: np.dtype[np.floating],
    y: Array | None,
    mean: Array,
    rstd: Array,
) -> None:
    """`forward` again, about their mean, for the rows of a layout whose first value lies far from it.

    Far: over `FAR_PIVOT` deviations (``1 / rstd``). x - pivot rounds by about u * |pivot - mean| a value, and the
    sum of those differences, of that size each, by about log2(N) times more: a row of 65536 float32 values whose
    first is 1000 while the rest are N(0, 1) (one large activation) gave y 2.0 times the float32 tolerance and its
    mean 1.3 times; rows of 512 gave y 2.5 times (4.5 to 6 times over a middle axis, in one running sum a column). About
    the mean, `forward`'s correction by what is left of it makes both exact to the tolerance. A row's decision
    reads its own statistics only, and its second pass is `forward` of its own values, so a row alone and in a
    batch give the same bits. Rows up to `NEVER_FAR_ROW` long need none. The check reads the statistics once a
    call, about 5 µs (a quarter of an (8, 64) float32 forward, a tenth of (64, 768), a few percent of larger ones);
    a far row costs about 3.5x (a second forward, and the copies of its rows in and out). A 3-D layout's far rows
    are gathered into a 2-D one, through strides: 3.5x to 6.5x the forward where every row was far.
    """
    with np.errstate(invalid="ignore", over="ignore", under="ignore"):  # a row with an Inf or a NaN: NaN, not far
        distance = mean - x[:, :1]
        distance *= rstd
        distance *= distance
    if not np.fmax.reduce(distance, axis=None) > FAR_PIVOT**2:  # four small operations when no row is far
        return
    far = np.nonzero(distance[:, 0] > FAR_PIVOT**2)
    rows_at: tuple[Any, ...] = (far[0], slice(None), *far[1:])
    stats_at: tuple[Any, ...] = (far[0], 0, *far[1:])
    rows = x[rows_at]  # (far rows, N), of a 2-D layout or of a 3-D one
    pivots = mean[stats_at].reshape(-1, 1)
    again_y = None if y is None else np.empty(rows.shape, dtype=y.dtype)
    again_mean, again_rstd = np.empty_like(pivots), np.empty_like(pivots)
    forward(rows, weight, bias, eps, compute, False, again_y, again_mean, again_rstd, pivots=pivots)
    mean[stats_at], rstd[stats_at] = again_mean[:, 0], again_rstd[:, 0]
    if y is not None:
        y[rows_at] = again_y


def _rstd_may_be_infinite(eps: float, compute: np.dtype[np.floating]) -> bool:
    """Whether ``eps`` is 0 in the compute dtype (an eps below its range too), so a row of variance 0 has rstd inf."""
    return bool(compute.type(eps) == 0)


def backward(
    dy: Array,
    x: Array,
    weight: Array | None,
    mean: Array | None,
    rstd: Array,
    compute: np.dtype[np.floating],
    dx: Array,
    eps: float,
) -> tuple[Array, Array]:
    """Write dx into ``dx``; return the sums over all axes but axis 1 (dweight, dbias) in float64.

    In the compute dtype where one block sums each column (`_long_rows_backward` of one group of rows). Layouts as
    in `forward`; ``mean`` is None for rms_norm (xhat = x * rstd). Block by block, like `forward`;
    rows longer than `LONG_ROW` go by `_long_rows_backward`. With ``eps`` 0 in the compute dtype rstd may hold inf,
    whose rows' dx is NaN (`_finite_rstd`).
    """
    infinite_rstd = _rstd_may_be_infinite(eps, compute)
    n = x.shape[1]
    if x.ndim == 2 and n > LONG_ROW:
        return _long_rows_backward(dy, x, weight, mean, rstd, compute, dx, infinite_rstd)
    inv_n = 1.0 / n
    weight = _along_axis_1(weight, x.ndim)
    batch_axes = (0, *range(2, x.ndim))

    def make_worker(largest: tuple[int, ...]) -> Callable[[Block, Array], None]:
        kept = _kept((largest,) * 5 + (stats_layout(largest),) * 2, compute)

        def work(block: Block, sums: Array) -> None:
            xb, rstd_b = x[block], rstd[block]
            if xb.shape == largest:
                xhat, dyb, g, dxb, product, g_mean, gx_mean = kept
            else:
                xhat, dyb, g, dxb, product = (_scratch(buffer, xb.shape) for buffer in kept[:5])
                g_mean, gx_mean = (_scratch(buffer, rstd_b.shape) for buffer in kept[5:])
            dyb, g = _xhat_and_g(
                xb, dy[block], None if mean is None else mean[block], rstd_b, weight, xhat, dyb, g, infinite_rstd
            )
            if mean is not None:
                _sum_along_n(g, g_mean)
                g_mean *= inv_n
            _row_dot(g, xhat, gx_mean[:, 0])
            gx_mean *= inv_n
            _write_dx(dx[block], g, None if mean is None else g_mean, xhat, gx_mean, rstd_b, dxb, product)
            np.multiply(dyb, xhat, out=product)
            np.add.reduce(product, axis=batch_axes, dtype=np.float64, out=sums[0])
            np.add.reduce(dyb, axis=batch_axes, dtype=np.float64, out=sums[1])

        return work

    # the same bits on every run and for any number of threads
    dweight, dbias = _sum_blocks(x, make_worker, compute.itemsize, (2, n))
    return dweight, dbias


def _long_rows_backward(
    dy: Array,
    x: Array,
    weight: Array | None,
    mean: Array | None,
    rstd: Array,
    compute: np.dtype[np.floating],
    dx: Array,
    infinite_rstd: bool,
) -> tuple[Array, Array]:
    """`backward` of a 2-D layout of long rows: blocks of a few rows and equal runs of `LONG_ROW_BYTES` or less.

    A row's dx needs two sums over the whole row. The first pass sums, in each block, its rows (g, and g * xhat)
    and its columns (dweight, dbias); the sums of a row's blocks are added in float64, in the grid's order (the
    same bits for any number of threads). The second pass writes dx. x and dy are read twice, each time into
    cache-sized scratch: with one block per row, the backward of a (1, 2**22) float32 row took 4x the time of
    NumPy's own formula, mostly spent allocating and page-faulting full-row temporaries.
    """
    rows, n = x.shape
    chunks = -(-n * compute.itemsize // LONG_ROW_BYTES)
    width = -(-n // chunks)  # equal chunks: a last chunk of a few columns cost 1.2x at rows of 17384 float32
    group = max(1, BLOCK_BYTES // (width * compute.itemsize))
    blocks: list[Block] = [
        (slice(r0, min(r0 + group, rows)), slice(c0, min(c0 + width, n)))
        for r0 in range(0, rows, group)
        for c0 in range(0, n, width)
    ]
    weight = None if weight is None else weight.reshape(n)

    def inputs_of(block: Block, kept: tuple[Array, ...]) -> tuple[Array, Array, Array, Array]:
        """(xhat, dy, g, rstd) of ``block``, in scratch views sized for it."""
        row, columns = block
        xb = x[block]
        xhat, dyb, g = (_scratch(buffer, xb.shape) for buffer in kept[:3])
        dyb, g = _xhat_and_g(
            xb,
            dy[block],
            None if mean is None else mean[row],
            rstd[row],
            None if weight is None else weight[columns],
            xhat,
            dyb,
            g,
            infinite_rstd,
        )
        return xhat, dyb, g, rstd[row]

    # With one group of rows, one block sums each column, into dweight and dbias themselves, in the compute dtype:
    # in float64 they doubled the memory of the largest outputs (rows of 2**22 float16 values peaked at 7x the
    # input's bytes), and each block's sums, held until the call ended, took as much again (one float32 row: 5x).
    one_group = rows <= group
    dweight = np.zeros(n, dtype=compute if one_group else np.float64)
    dbias = np.zeros(n, dtype=dweight.dtype)

    def make_summing_worker(
        largest: tuple[int, ...],
    ) -> Callable[[Block], tuple[Array | None, Array, Array | None, Array | None]]:
        kept = _kept((largest,) * 4, compute)

        def work(block: Block) -> tuple[Array | None, Array, Array | None, Array | None]:
            xhat, dyb, g, _ = inputs_of(block, kept)
            product = _scratch(kept[3], xhat.shape)
            g_sum = None if mean is None else np.add.reduce(g, axis=1)
            gx_sum = np.empty(g.shape[0], dtype=compute)
            _row_dot(g, xhat, gx_sum)
            np.multiply(dyb, xhat, out=product)
            # A few rows each (`group`): summed in the compute dtype, 5-10x faster than a float64 sum of so few
            if one_group:  # the block's own columns: no other block writes them
                np.add.reduce(product, axis=0, out=dweight[block[1]])
                np.add.reduce(dyb, axis=0, out=dbias[block[1]])
                return g_sum, gx_sum, None, None
            return g_sum, gx_sum, np.add.reduce(product, axis=0), np.add.reduce(dyb, axis=0)

        return work

    g_sums = None if mean is None else np.zeros(rows, dtype=np.float64)
    gx_sums = np.zeros(rows, dtype=np.float64)
    for (row, columns), (g_sum, gx_sum, block_dweight, block_dbias) in zip(
        blocks, _for_blocks(x, make_summing_worker, compute.itemsize, blocks), strict=True
    ):
        if g_sums is not None and g_sum is not None:
            g_sums[row] += g_sum
        gx_sums[row] += gx_sum
        if block_dweight is not None and block_dbias is not None:
            dweight[columns] += block_dweight
            dbias[columns] += block_dbias
    g_means = None if g_sums is None else (g_sums / n).astype(compute).reshape(rows, 1)
    gx_means = (gx_sums / n).astype(compute).reshape(rows, 1)

    def make_dx_worker(largest: tuple[int, ...]) -> Callable[[Block], None]:
        kept = _kept((largest,) * 5, compute)

        def work(block: Block) -> None:
            xhat, _, g, rstd_b = inputs_of(block, kept)
            dxb, product = (_scratch(buffer, xhat.shape) for buffer in kept[3:])
            row = block[0]
            g_mean = None if g_means is None else g_means[row]
            _write_dx(dx[block], g, g_mean, xhat, gx_means[row], rstd_b, dxb, product)

        return work

    _for_blocks(x, make_dx_worker, compute.itemsize, blocks)
    return dweight, dbias


def _xhat_and_g(
    xb: Array,
    dy_b: Array,
    mean_b: Array | None,
    rstd_b: Array,
    weight_b: Array | None,
    xhat: Array,
    dy_scratch: Array,
    g_scratch: Array,
    infinite_rstd: bool,
) -> tuple[Array, Array]:
    """Fill ``xhat`` with ``(x - mean) * rstd`` (``x * rstd`` without a mean); return (dy, g = dy * weight).

    dy is ``dy_b`` itself in the compute dtype (only read), else widened into ``dy_scratch``; g is dy itself
    without a weight, else ``g_scratch``. All in the compute dtype. With ``infinite_rstd`` (eps = 0) xhat is NaN
    where rstd is inf (`_finite_rstd`), and so are dx and dweight there.
    """
    np.copyto(xhat, xb, casting="unsafe")
    if mean_b is not None:
        xhat -= mean_b
    rstd_b, nan_rows = _finite_rstd(rstd_b) if infinite_rstd else (rstd_b, None)
    xhat *= rstd_b
    if nan_rows is not None:
        np.copyto(xhat, np.nan, where=nan_rows)
    if dy_b.dtype == xhat.dtype:
        dyb = dy_b
    else:
        dyb = dy_scratch
        np.copyto(dyb, dy_b, casting="unsafe")
    if weight_b is None:
        return dyb, dyb
    np.multiply(dyb, weight_b, out=g_scratch)
    return dyb, g_scratch


def _write_dx(
    dx_b: Array,
    g: Array,
    g_mean: Array | None,
    xhat: Array,
    gx_mean: Array,
    rstd_b: Array,
    dxb: Array,
    product: Array,
) -> None:
    """Write ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))`` (no ``mean(g)`` for rms_norm) into ``dx_b``.

    Computed in the scratch ``dxb`` and ``product``, in the compute dtype, and cast to dx's dtype once.
    """
    if g_mean is None:
        np.copyto(dxb, g)
    else:
        np.subtract(g, g_mean, out=dxb)
    np.multiply(xhat, gx_mean, out=product)
    dxb -= product
    dxb *= rstd_b
    narrow(dx_b, dxb)


HALF_SMALLEST_NORMAL = float(np.finfo(np.float16).smallest_normal)
"""2**-14: float16's values below it are subnormal, spaced 2**-24 apart."""
SUBNORMAL_SAMPLE = 256
"""About how many values `narrow` looks at to judge whether a cast to float16 would meet many subnormal results."""
SAMPLED_MIN = 4096
"""Fewest values `narrow` samples: the sample's 3-4.5 µs made a (8, 64) float16 forward 1.10-1.12x; below this
many, the subnormal results it may save cost at most 250 µs a block."""


def narrow(out: Array, values: Array) -> None:
    """Cast ``values`` (scratch of a wider dtype, contiguous; it may be changed) into ``out``.

    NumPy's cast to float16 raises its underflow flag once for each inexact result below float16's normal range, at
    about 60 ns a value, 25x an ordinary cast: the backward of gradients of 1e-6 took 9x its time, in the cast of
    dx. Where a sample says many values are there (`_many_half_subnormals`), they are first rounded to float16's
    spacing there (`_round_half_subnormals`), and then cast exactly. The bits are the same either way, and so is the
    underflow flag, under the caller's np.errstate.
    """
    if out.dtype == np.float16 and _many_half_subnormals(values):
        _round_half_subnormals(values)
    np.copyto(out, values, casting="unsafe")


def _many_half_subnormals(values: Array) -> bool:
    """Whether over 1/32 of a strided sample of ``values`` (`SUBNORMAL_SAMPLE` of them) are float16 subnormals.

    From there on, rounding them first costs less than the cast takes with them (break-even near 1/30). False
    under `SAMPLED_MIN` values.
    """
    if values.size < SAMPLED_MIN:
        return False
    flat = values.reshape(-1)
    sample = flat[:: max(1, flat.size // SUBNORMAL_SAMPLE)]
    zeros = sample.size - np.count_nonzero(sample)  # cast exactly: a dx of rows whose dy is 0
    subnormal = np.count_nonzero(np.abs(sample) < HALF_SMALLEST_NORMAL) - zeros
    return subnormal * 32 > sample.size


def _round_half_subnormals(values: Array) -> None:
    """Round ``values`` below float16's normal range to multiples of 2**-24, its spacing there, in place.

    Adding 2**(nmant - 24) (nmant: the mantissa bits of ``values``' dtype) leaves that spacing, rounding to
    nearest, ties to even, as the cast does; taking it away again is exact. Values cast exactly after it, so where
    the caller's np.errstate watches underflow, the first inexact one is cast alone first, to set the flag the
    cast of it would have set (`_flag_inexact_underflow`).
    """
    magnitudes = np.abs(values)
    below = magnitudes < HALF_SMALLEST_NORMAL
    shift = values.dtype.type(2.0 ** (np.finfo(values.dtype).nmant - 24))
    watched = np.geterr()["under"] != "ignore"
    rounded = magnitudes.copy() if watched else magnitudes
    rounded += shift
    rounded -= shift
    if watched:
        _flag_inexact_underflow(values, below & (rounded != magnitudes))
    np.copysign(rounded, values, out=rounded)
    np.copyto(values, rounded, where=below)


def _flag_inexact_underflow(values: Array, inexact: Array) -> None:
    """Cast the first of ``values`` where ``inexact`` to float16, for NumPy's underflow flag; nothing where none is.

    The flag gives what the caller's np.errstate says: a warning, an error, a call or a log entry.
    """
    first = int(np.argmax(inexact))  # a flat index
    if inexact.flat[first]:
        values.reshape(-1)[first : first + 1].astype(np.float16)


_vecdot: Any = getattr(np, "vecdot", None)
"""np.vecdot: NumPy 2.0 on. Under NumPy 1.x every block takes einsum."""


def _row_dot(a: Array, b: Array, out: Array) -> None:
    """Write the sums of ``a * b`` along axis 1 of a block into ``out``, without a product temporary.

    A 2-D block takes `_dots` (a BLAS dot per row: 3.1 µs for (85, 768) float32, where einsum took 8.5 µs), in
    chunks when its rows are long (`_long_row_dot`); a 3-D one takes einsum (`_columns_dot`), which runs along the
    contiguous inner axis (vecdot strides across it: 16x slower).
    """
    if a.ndim == 3:
        _columns_dot(a, b, out)
    elif a.shape[1] <= DOT_CHUNK:
        _dots(a, b, out)
    else:
        _long_row_dot(a, b, out)


PLAIN_COLUMNS_DOT = 1024
"""The longest row of a 3-D block whose sums of products einsum takes in one running sum: ReLU-like float32 rows of
1024 values gave y 0.34 of the tolerance that way, and runs cost 10% of the forward at (8, 64, 56, 56)."""


def _columns_dot(a: Array, b: Array, out: Array) -> None:
    """`_row_dot` of a 3-D block: einsum along N by runs of `SUM_CHUNK` values, whose sums `_sum_along_n` adds.

    einsum keeps one running sum per column along N, whose rounding grows with N: ReLU-like float32 rows of 65536
    values gave y 21 times the tolerance, and 1.1 times with one level of runs. Rows up to `PLAIN_COLUMNS_DOT` take
    einsum alone.
    """
    rows, n, inner = a.shape
    if n <= PLAIN_COLUMNS_DOT:
        np.einsum("ijk,ijk->ik", a, b, out=out)
        return
    whole = n - n % SUM_CHUNK
    chunks = (rows, whole // SUM_CHUNK, SUM_CHUNK, inner)
    runs = np.einsum("ijck,ijck->ijk", a[:, :whole].reshape(chunks), b[:, :whole].reshape(chunks))
    _sum_along_n(runs, out[:, np.newaxis])
    if whole < n:
        out += np.einsum("ijk,ijk->ik", a[:, whole:], b[:, whole:])


def _long_row_dot(a: Array, b: Array, out: Array) -> None:
    """`_row_dot` of a 2-D block of long rows: a dot per `DOT_CHUNK` elements, the dots summed pairwise.

    One dot's rounding error grows with its length (it accumulates in a few running sums of the compute dtype):
    over a float32 row of 2**24 elements the variance was off by 4 to 32 times the tolerance. The dots of chunks,
    summed pairwise as np.add.reduce sums the mean, stay well within it (0.01), at 1.00-1.05x the time.
    """
    rows, n = a.shape
    whole = n - n % DOT_CHUNK
    chunks = (rows, whole // DOT_CHUNK, DOT_CHUNK)
    np.add.reduce(_dots(a[:, :whole].reshape(chunks), b[:, :whole].reshape(chunks)), axis=1, out=out)
    if whole < n:
        out += _dots(a[:, whole:], b[:, whole:])


def _dots(a: Array, b: Array, out: Array | None = None) -> Array:
    """The sums of ``a * b`` along the last axis: np.vecdot, or einsum on NumPy 1 (which has no vecdot)."""
    if _vecdot is not None:
        return cast(Array, _vecdot(a, b, out=out))
    return cast(Array, np.einsum("...k,...k->...", a, b, out=out))


SUM_CHUNK = 32
"""Values a 3-D block sums along N (axis 1) in one running sum before the partial sums are added (`_sum_along_n`)."""


def _sum_along_n(block: Array, out: Array) -> None:
    """Write the sums of ``block`` along axis 1 into ``out`` (axis 1 kept), by runs for a 3-D block.

    Along a 2-D block's rows np.add.reduce sums pairwise; along a 3-D block's middle axis it keeps one running sum
    per column, whose rounding grows with the square of the row's length times the values' offset from 0. The mean
    sums values shifted by the row's first element, offset by that element's distance from the mean: ReLU-like
    rows of 1024 float32 values (first element 3, mean 0.36) gave y 2 times the tolerance; the backward's mean of
    g = dy * weight is offset wherever dy is. So a 3-D block sums `SUM_CHUNK` values at a time, then those sums
    the same way, level by level: y's error there fell to 0.35 of the tolerance, for 1.05x the forward's time at
    (8, 64, 56, 56) over axis 1.
    """
    n = block.shape[1]
    whole = n - n % SUM_CHUNK
    if block.ndim != 3 or whole < 2 * SUM_CHUNK:
        np.add.reduce(block, axis=1, keepdims=True, out=out)
        return
    rows, _, inner = block.shape
    _sum_along_n(np.add.reduce(block[:, :whole].reshape(rows, whole // SUM_CHUNK, SUM_CHUNK, inner), axis=2), out)
    if whole < n:
        out += np.add.reduce(block[:, whole:], axis=1, keepdims=True)


def stats_layout(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A layout's shape with N (axis 1) set to 1: the shape of its mean and rstd."""
    return (shape[0], 1, *shape[2:])


def _along_axis_1(param: Array | None, ndim: int) -> Array | None:
    """An (N,) parameter shaped to broadcast along axis 1 of an ``ndim``-D layout block."""
    return None if param is None else param.reshape(-1, *(1,) * (ndim - 2))
