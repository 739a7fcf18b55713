"""layer_norm of a float16/bfloat16 tensor on the CPU, with gradients accumulated in float32.

torch's CPU backward for half inputs accumulates dweight and dbias in half precision (several half ulps off
after a few hundred rows: outside the tolerance table). This autograd.Function keeps torch's forward (the
mixed-type kernel: half y, float32 statistics, x saved in its half dtype). Its backward takes dx from torch's
mixed-type backward kernel (float32 row sums, as accurate as a float32 backward) and sums dweight and dbias in
float32 over cache-sized blocks of rows, casting each gradient back to its input's dtype.
"""

from __future__ import annotations

from typing import Any

import torch

_native_layer_norm: Any = torch.native_layer_norm
_native_layer_norm_backward: Any = torch.ops.aten.native_layer_norm_backward.default
_UPCAST_MAX_ELEMENTS = 1 << 20
"""Up to this many elements, the backward widens dy and x whole and runs torch's float32 kernel once: faster
than the blocked sums there (bfloat16 fwd+bwd at (1024, 1024): 1.1-1.3x torch's time against 1.45-1.7x)."""
_BLOCK_ELEMENTS = 1 << 18
"""Rows widened to float32 at a time for dweight/dbias: 1 MiB, small enough to stay in L2."""


class HalfLayerNormCPU(torch.autograd.Function):
    """``(y, mean, rstd)`` over the trailing ``normalized_shape``; mean and rstd are not differentiable."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        normalized_shape: tuple[int, ...],
        eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run torch's mixed-type forward: float32 parameters (ones for a missing weight), float32 statistics."""
        w32 = torch.ones(normalized_shape, dtype=torch.float32) if weight is None else weight.to(torch.float32)
        b32 = None if bias is None else bias.to(torch.float32)
        y, mean, rstd = _native_layer_norm(x, normalized_shape, w32, b32, eps)
        ctx.save_for_backward(x, w32, mean, rstd)
        ctx.normalized_shape = normalized_shape
        ctx.param_dtypes = (None if weight is None else weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(mean, rstd)
        return y, mean, rstd

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor, *_: Any) -> tuple[torch.Tensor | None, ...]:
        """Return each gradient (`backward_float32`) in its input's dtype."""
        x, w32, mean, rstd = ctx.saved_tensors
        weight_dtype, bias_dtype = ctx.param_dtypes
        wanted = ctx.needs_input_grad
        mask = (wanted[0], weight_dtype is not None and wanted[1], bias_dtype is not None and wanted[2])
        dx, dweight, dbias = backward_float32(dy, x, w32, mean, rstd, ctx.normalized_shape, mask)
        return (
            dx,
            None if dweight is None else dweight.to(weight_dtype),
            None if dbias is None else dbias.to(bias_dtype),
            None,
            None,
        )


def statistics(x: torch.Tensor, normalized_shape: tuple[int, ...], eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 mean and rstd of a half x over the trailing ``normalized_shape``, as the forward computes them."""
    _, mean, rstd = _native_layer_norm(x, normalized_shape, torch.ones(normalized_shape), None, eps)
    return mean, rstd


def backward_float32(
    dy: torch.Tensor,
    x: torch.Tensor,
    w32: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    normalized_shape: tuple[int, ...],
    mask: tuple[bool, bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(dx in x's dtype, dweight and dbias in float32) of a half x over the trailing ``normalized_shape``.

    ``mask`` says which are wanted. Up to ``_UPCAST_MAX_ELEMENTS``: torch's backward kernel on widened dy and x,
    in one call. Larger: dx from torch's mixed-type kernel (its row sums are float32), dweight and dbias summed in
    float32 a block of rows at a time (`_param_grads_float32`), so no float32 copy of x's size is made.
    """
    if x.numel() <= _UPCAST_MAX_ELEMENTS:
        # The bias argument is only read for its dtype and shape, to allocate dbias: w32 serves.
        dx, dweight, dbias = _native_layer_norm_backward(
            dy.float(), x.float(), normalized_shape, mean, rstd, w32, w32, list(mask)
        )
        return (None if dx is None else dx.to(x.dtype)), dweight, dbias
    dx = None
    if mask[0]:
        dx = _native_layer_norm_backward(dy, x, normalized_shape, mean, rstd, w32, w32, [True, False, False])[0]
    sums = _param_grads_float32(dy, x, mean, rstd, w32.numel(), mask[1], mask[2])
    dweight, dbias = (None if total is None else total.reshape(normalized_shape) for total in sums)
    return dx, dweight, dbias


def _param_grads_float32(
    dy: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, n: int, weight: bool, bias: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """sum(dy * xhat) (if ``weight``) and sum(dy) (if ``bias``) over the rows in float32; None where not wanted.

    A cache-sized block of rows at a time: widening whole tensors to float32 first would allocate two float32
    copies of x's size; blocks keep the widened rows in cache and cost a fraction of that (about 3x faster on a
    (8192, 4096) bfloat16 tensor).
    """
    dweight = torch.zeros(n, dtype=torch.float32) if weight else None
    dbias = torch.zeros(n, dtype=torch.float32) if bias else None
    if dweight is None and dbias is None:
        return None, None
    rows = x.numel() // n
    x2, dy2 = x.reshape(rows, n), dy.reshape(rows, n)
    mean2, rstd2 = mean.reshape(rows, 1), rstd.reshape(rows, 1)
    block = max(1, _BLOCK_ELEMENTS // n)
    for start in range(0, rows, block):
        dy_block = dy2[start : start + block].float()
        if dbias is not None:
            dbias += dy_block.sum(0)
        if dweight is not None:
            xhat = (x2[start : start + block].float() - mean2[start : start + block]).mul_(rstd2[start : start + block])
            dweight += xhat.mul_(dy_block).sum(0)
    return dweight, dbias
