"""rms_norm on the CPU with an analytic backward, computed block by block in per-thread scratch.

torch's CPU rms_norm is a composite of aten ops that autograd differentiates op by op, into a dozen full-size
temporaries (each page-faulted in anew, see `scratch`): forward+backward of a (4096, 768) float32 tensor took
15 ms, against 1.8 ms for layer_norm. `RMSNormCPU` keeps torch's forward (``_fused_rms_norm``: the same y and
rstd as a call without gradients) and computes, with ``xhat = x * rstd`` and ``g = dy * weight``,

    dx = rstd * (g - xhat * mean(g * xhat)),    dweight = sum over the rows of dy * xhat,

a cache-sized block of rows at a time, in the compute dtype (float32 for half x). Under ``create_graph=True`` (a
gradient penalty) the backward is differentiable ops on an rstd recomputed from x, so second-order gradients
reach x, weight and dy.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from layernorm_torch import scratch

_fused_rms_norm: Any = torch.ops.aten._fused_rms_norm.default
_BLOCK_ELEMENTS = 1 << 18
"""Elements per block (three scratch blocks of 1 MiB in float32). Of 2**14, 2**16, 2**18 and 2**20, 2**18 was
fastest forward+backward at (4096, 768) and (8192, 4096), float32 and bfloat16."""


MIN_ELEMENTS = 1 << 15
"""Smaller inputs keep torch's own autograd: there the autograd.Function and a dozen op calls in Python cost more
than the temporaries (forward+backward of (8, 64): 62 µs against torch's 50 µs; parity near (32, 768))."""


class RMSNormCPU(torch.autograd.Function):
    """y over the trailing ``normalized_shape`` of a CPU tensor; gradients for x and weight (`gradients`)."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor | None, normalized_shape: tuple[int, ...], eps: float
    ) -> torch.Tensor:
        """Run torch's rms_norm kernel; keep x, weight and rstd for the backward."""
        y, rstd = _fused_rms_norm(x, normalized_shape, weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        ctx.normalized_shape, ctx.eps = normalized_shape, eps
        return y if y.dtype == x.dtype else y.to(dtype=x.dtype)  # a float32 weight promotes a half y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """Return dx in x's dtype and dweight in weight's dtype, each only when wanted."""
        x, weight, rstd = ctx.saved_tensors
        want_x, want_weight = ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1]
        shape = ctx.normalized_shape
        grads: tuple[torch.Tensor | None, torch.Tensor | None]
        if torch.is_grad_enabled():  # create_graph=True: autograd differentiates these gradients
            dims = tuple(range(x.ndim - len(shape), x.ndim))
            grads = formula(dy, x, weight, differentiable_rstd(x, dims, ctx.eps), dims)
        else:
            grads = gradients(dy, x, weight, rstd, shape, (want_x, want_weight))
        dx, dweight = grads
        return (
            dx if want_x else None,
            dweight.to(dtype=weight.dtype) if want_weight and dweight is not None else None,
            None,
            None,
        )


def gradients(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    rstd: torch.Tensor,
    normalized_shape: tuple[int, ...],
    mask: tuple[bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(dx in x's dtype, dweight in rstd's dtype) over the trailing ``normalized_shape``; None where ``mask`` says.

    ``rstd`` has x's shape with the normalized axes 1, in the compute dtype. Every pass of a block reads and
    writes that block's scratch (`scratch.views`), so only dx and dweight are fresh memory.
    """
    n = math.prod(normalized_shape)
    rows = x.numel() // n
    compute = rstd.dtype
    x_rows, dy_rows, rstd_rows = x.reshape(rows, n), dy.reshape(rows, n), rstd.reshape(rows, 1)
    w = None if weight is None else weight.reshape(n).to(dtype=compute)
    dx = torch.empty((rows, n), dtype=x.dtype) if mask[0] else None
    dweight = torch.zeros(n, dtype=compute) if mask[1] else None
    block = max(1, _BLOCK_ELEMENTS // n)
    for start in range(0, rows, block):
        stop = min(start + block, rows)
        xhat, g, work = scratch.views((stop - start, n), 3, compute)
        x_b, dy_b, rstd_b = x_rows[start:stop], dy_rows[start:stop], rstd_rows[start:stop]
        torch.mul(x_b, rstd_b, out=xhat)
        if dx is not None:
            if w is None:
                g.copy_(dy_b)
            else:
                torch.mul(dy_b, w, out=g)
            dx_b = dx[start:stop]
            out = dx_b if dx.dtype == compute else work  # a half dx is rounded once, at the end
            torch.mul(g, xhat, out=out)
            mean_gx = out.sum(1, keepdim=True).mul_(1.0 / n)
            torch.mul(xhat, mean_gx, out=out)
            torch.sub(g, out, out=out)
            out.mul_(rstd_b)
            if out is not dx_b:
                dx_b.copy_(out)
        if dweight is not None:
            dweight.add_(xhat.mul_(dy_b).sum(0))
    return (
        None if dx is None else dx.reshape(x.shape),
        None if dweight is None else dweight.reshape(normalized_shape),
    )


def differentiable_rstd(x: torch.Tensor, dims: tuple[int, ...], eps: float) -> torch.Tensor:
    """The rstd of rms_norm, ``1 / sqrt(mean(x^2) + eps)`` over ``dims`` (kept), from differentiable ops."""
    xc = x if x.dtype in (torch.float32, torch.float64) else x.float()
    return torch.rsqrt((xc * xc).mean(dims, keepdim=True) + eps)


def formula(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, rstd: torch.Tensor, dims: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx in x's dtype, dweight in rstd's dtype, with weight's shape) over the normalized ``dims``, in plain ops.

    For any device, and differentiable: second-order gradients flow through it (and through ``rstd``, when it
    was computed from x by differentiable ops). weight has x's sizes along ``dims``.
    """
    compute = rstd.dtype
    param_shape = [size if d in dims else 1 for d, size in enumerate(x.shape)]
    xhat = x.to(dtype=compute) * rstd
    dy_c = dy.to(dtype=compute)
    g = dy_c if weight is None else dy_c * weight.to(dtype=compute).reshape(param_shape)
    dx = rstd * (g - xhat * (g * xhat).mean(dims, keepdim=True))
    dweight = dy_c * xhat
    batch_dims = tuple(d for d in range(x.ndim) if d not in dims)
    if batch_dims:  # sum(()) would sum every axis
        dweight = dweight.sum(batch_dims)
    return dx.to(dtype=x.dtype), dweight.reshape([x.shape[d] for d in dims])
