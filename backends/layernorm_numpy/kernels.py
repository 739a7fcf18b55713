"""Row kernels on a 2-D (rows, N) layout: blocked forward (cache-sized blocks, several threads) and backward.

Statistics are shifted two-pass: each row is first shifted by its first element (exact for values close to it,
by Sterbenz's lemma), so a row like 1e4 + N(0, 1e-2) keeps its digits; then mean, then the variance of the
centred values. Never E[x^2] - E[x]^2.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]

BLOCK_BYTES = 256 * 1024
"""Scratch per block, in the compute dtype: small enough that the passes over a block stay in L2."""
PARALLEL_MIN_BYTES = 1 << 20
"""Below this many input bytes a call runs on the calling thread: a thread hand-off would cost more."""


@lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=_thread_count(), thread_name_prefix="layernorm-numpy")


def _thread_count() -> int:
    configured = os.environ.get("LAYERNORM_NUMPY_THREADS")
    return max(1, int(configured)) if configured else max(1, len(os.sched_getaffinity(0)))


def _for_row_blocks(rows: int, row_bytes: int, make_worker: Callable[[int], Callable[[int, int], None]]) -> None:
    """Run workers over cache-sized row blocks, split across threads for large inputs.

    ``make_worker(block_rows)`` is called once per thread (to allocate that thread's scratch) and returns
    ``work(start, stop)``, called for each block of at most ``block_rows`` rows.
    """
    if rows == 0:
        return
    block_rows = max(1, min(rows, BLOCK_BYTES // max(row_bytes, 1)))
    threads = _thread_count() if rows * row_bytes >= PARALLEL_MIN_BYTES else 1
    share = -(-rows // threads)
    share = -(-share // block_rows) * block_rows

    def run_share(first: int) -> None:
        work = make_worker(block_rows)
        for start in range(first, min(first + share, rows), block_rows):
            work(start, min(start + block_rows, rows))

    futures = [_pool().submit(run_share, first) for first in range(share, rows, share)]
    run_share(0)
    for future in futures:
        future.result()


def forward_rows(
    x2: Array,
    weight: Array | None,
    bias: Array | None,
    eps: float,
    compute: np.dtype[np.floating],
    rms: bool,
    y2: Array,
    mean_out: Array | None,
    rstd_out: Array,
) -> None:
    """Normalize each row of ``x2`` (rows, N) into ``y2``; write per-row mean (layer_norm) and rstd (rows, 1).

    ``weight`` and ``bias`` are (N,) in the compute dtype or None. Works block by block in scratch buffers of
    the compute dtype, so half inputs are widened one block at a time.
    """
    rows, n = x2.shape
    inv_n = 1.0 / n
    same_dtype = x2.dtype == compute and y2.dtype == compute

    def make_worker(block_rows: int) -> Callable[[int, int], None]:
        scratch = np.empty((block_rows, n), dtype=compute)
        scratch_column = np.empty((block_rows, 1), dtype=compute)

        def work(start: int, stop: int) -> None:
            xb = x2[start:stop]
            t = scratch[: stop - start]
            column = scratch_column[: stop - start]
            if rms:
                np.copyto(t, xb, casting="unsafe")
                np.einsum("ij,ij->i", t, t, out=column[:, 0])
            else:
                pivot = xb[:, :1].astype(compute)
                if same_dtype:
                    np.subtract(xb, pivot, out=t)
                else:
                    np.copyto(t, xb, casting="unsafe")
                    t -= pivot
                np.add.reduce(t, axis=1, keepdims=True, out=column)
                column *= inv_n
                t -= column
                assert mean_out is not None
                np.add(pivot, column, out=mean_out[start:stop])
                np.einsum("ij,ij->i", t, t, out=column[:, 0])
            column *= inv_n
            column += eps
            np.sqrt(column, out=column)
            np.reciprocal(column, out=column)
            rstd_out[start:stop] = column
            yb = y2[start:stop]
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
                np.copyto(yb, t, casting="unsafe")

        return work

    _for_row_blocks(rows, n * compute.itemsize, make_worker)


def backward_rows(
    dy2: Array,
    x2: Array,
    weight: Array | None,
    mean: Array | None,
    rstd: Array,
    compute: np.dtype[np.floating],
    dx2: Array,
) -> tuple[Array, Array]:
    """Write dx for each row into ``dx2``; return the per-column sums (dweight, dbias) in float64.

    ``mean`` is None for rms_norm (xhat = x * rstd). Block by block, like `forward_rows`.
    """
    rows, n = x2.shape
    inv_n = 1.0 / n
    blocks: dict[int, tuple[Array, Array]] = {}

    def work(start: int, stop: int) -> None:
        xhat = x2[start:stop].astype(compute)
        if mean is not None:
            xhat -= mean[start:stop]
        xhat *= rstd[start:stop]
        dy = dy2[start:stop].astype(compute)
        g = dy if weight is None else dy * weight
        g_mean = np.add.reduce(g, axis=1, keepdims=True) * inv_n if mean is not None else 0.0
        gx_mean = np.einsum("ij,ij->i", g, xhat)[:, None] * inv_n
        dx = g - g_mean
        dx -= xhat * gx_mean
        dx *= rstd[start:stop]
        np.copyto(dx2[start:stop], dx, casting="unsafe")
        blocks[start] = (
            np.add.reduce(dy * xhat, axis=0, dtype=np.float64),
            np.add.reduce(dy, axis=0, dtype=np.float64),
        )

    _for_row_blocks(rows, n * compute.itemsize, lambda block_rows: work)
    dweight = np.zeros(n, dtype=np.float64)
    dbias = np.zeros(n, dtype=np.float64)
    for start in sorted(blocks):  # a fixed order: the sums are the same bitwise on every run
        block_dweight, block_dbias = blocks[start]
        dweight += block_dweight
        dbias += block_dbias
    return dweight, dbias
