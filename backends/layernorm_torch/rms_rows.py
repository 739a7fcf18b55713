"""rms_norm where torch's falls short: CPU tensors (an analytic backward), and CUDA rows its kernel misreads.

torch's CPU rms_norm is a composite of aten ops, each writing a fresh full-size temporary (page-faulted in anew on
every call, see `scratch`), and autograd differentiates it op by op, into a dozen more: at (4096, 768) float32
its forward took twice the time of layer_norm's and its forward+backward eight times. Here the forward reads x
and writes y once (`forward`), and the backward (`gradients`) computes, with ``xhat = x * rstd`` and
``g = dy * weight``,

    dx = rstd * (g - xhat * mean(g * xhat)),    dweight = sum over the rows of dy * xhat,

each pass over a block in the block's scratch, in the compute dtype (float32 for half x; row sums by torch's
cascade summation). `RMSNormRows` connects them to autograd. Autograd's derivative of torch's composite goes
through ``rsqrt(v)**3``, which under- or overflows for rows whose RMS is beyond 1e+-13 in float32 (dx off by 8%,
or inf); these formulas apply rstd one factor at a time. Under ``create_graph=True`` (a gradient penalty) its
backward is differentiable ops on an rstd recomputed from x (`formula`), so second-order gradients reach x,
weight and dy.

On CUDA, torch's rms_norm kernel gives a row holding an Inf rstd NaN where it reads the row value by value
(docs/spec.md; the backend's `_rms_norm_cuda`); such calls come here, where `forward` takes rstd from the rows'
norms (`by_norm`) and the backward is torch's fused backward kernel, which reads rstd as given
(`fused_gradients`; `formula` under ``create_graph=True``, compiled autograd, and for a dy the scratch cannot
take). Inside torch.func transforms and forward-mode AD (on any device) and jit traces, which differentiate the
ops that run, the forward is `by_reductions` instead.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from layernorm_torch import scratch, statistics

_fused_rms_norm: Any = torch.ops.aten._fused_rms_norm.default
_fused_rms_norm_backward: Any = torch.ops.aten._fused_rms_norm_backward.default
MIN_ELEMENTS = 1 << 15
"""On the CPU, below this many elements the backward is `formula`, a few plain ops: the blocks of `gradients` cost a
dozen op calls from Python (forward+backward of (8, 64) float32: 1.37x torch's time with them, 1.04x with
`formula`)."""
_BLOCK_ELEMENTS = 1 << 18
"""Elements per block of the backward (three scratch blocks of 1 MiB in float32). Of 2**14, 2**16, 2**18 and
2**20, 2**18 was fastest forward+backward at (4096, 768) and (8192, 4096), float32 and bfloat16."""
BLOCKED_FORWARD_ELEMENTS = _BLOCK_ELEMENTS
"""From this many elements the forward works block by block; below, torch's rms_norm kernel (`forward`)."""
UNRECORDED_FORWARD_ELEMENTS = 1 << 19
"""From this many elements a forward that autograd does not record runs here (`forward`); below, torch's rms_norm.

Forward alone against ``F.rms_norm``, side by side, inputs rotated through 96 MiB: ours took 1.09-1.37x its time
at (256, 1024) and 0.90-1.33x at (384, 1024), float32 and bfloat16, one and two threads; 0.97-1.18x at
(512, 1024); at (1024, 768) 0.97-0.98x in float32 and 0.21-0.35x in bfloat16, where torch's temporaries fault
pages in on every call. A recorded forward keeps the blocks from `BLOCKED_FORWARD_ELEMENTS`: forward+backward
at (256, 1024) took 0.32x and 0.56x torch's time with them, 0.40x and 0.68x with torch's forward."""
_FORWARD_BLOCK_ELEMENTS = 1 << 20
"""Elements per block of the forward (one scratch block, 4 MiB in float32): of 2**18, 2**20 and 2**22, 2**20
was fastest from (512, 768) to (1024, 4096): fewer calls than 2**18, and the block stays in the L3 cache."""


class RMSNormRows(torch.autograd.Function):
    """(y, rstd) over the trailing ``normalized_shape`` (`forward`); gradients for x and weight.

    rstd is not differentiable.
    """

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor | None, normalized_shape: tuple[int, ...], eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run `forward`; keep x (a copy of an inference tensor, which autograd cannot save), weight and rstd."""
        y, rstd = forward(x, weight, normalized_shape, eps)
        ctx.save_for_backward(x.clone() if x.is_inference() else x, weight, rstd)
        ctx.normalized_shape, ctx.eps = normalized_shape, eps
        ctx.mark_non_differentiable(rstd)
        ctx.set_materialize_grads(False)  # rstd gets no gradient: no zeros for it
        return y, rstd

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor | None, _: Any) -> tuple[torch.Tensor | None, ...]:
        """Return dx in x's dtype and dweight in weight's dtype, each only when wanted."""
        if dy is None:
            return None, None, None, None
        x, weight, rstd = ctx.saved_tensors
        want_x, want_weight = ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1]
        shape = ctx.normalized_shape
        grads: tuple[torch.Tensor | None, torch.Tensor | None]
        dims = trailing_dims(x, shape)
        plain = not torch.compiler.is_compiling() and scratch.usable_for(dy)  # not compiled autograd; a plain dy
        if torch.is_grad_enabled():  # create_graph=True: autograd differentiates these gradients
            grads = formula(dy, x, weight, statistics.rms_rstd(x, dims, ctx.eps), dims)
        elif plain and x.is_cuda:
            grads = fused_gradients(dy, x, weight, rstd, shape, (want_x, want_weight))
        elif plain and x.is_cpu and x.numel() >= MIN_ELEMENTS:
            grads = gradients(dy, x, weight, rstd, shape, (want_x, want_weight))
        else:  # compiled autograd; a batched or subclass dy; a small x; another device
            grads = formula(dy, x, weight, rstd, dims)
        dx, dweight = grads
        return (
            dx if want_x else None,
            dweight.to(dtype=weight.dtype) if want_weight and dweight is not None else None,
            None,
            None,
        )


def forward(
    x: torch.Tensor, weight: torch.Tensor | None, normalized_shape: tuple[int, ...], eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y in x's dtype, rstd in the compute dtype) over the trailing ``normalized_shape``.

    rstd has x's shape with the normalized axes 1. Below `BLOCKED_FORWARD_ELEMENTS`, torch's rms_norm kernel: its
    temporaries are then small enough to be reused without page faults, and its ops run in C++ (ours took 1.2-1.9x
    its time there). From there on, block by block: ``sum(x * x)`` by cascade summation into rstd, then
    ``y = x * rstd * weight``, rounded to x's dtype once. Off the CPU, `by_norm`.
    """
    if not x.is_cpu:
        return by_norm(x, weight, normalized_shape, eps)
    if x.numel() < BLOCKED_FORWARD_ELEMENTS:  # contiguous rows, as the blocks read them: the same sums (bits)
        y, rstd = _fused_rms_norm(x.contiguous(), normalized_shape, weight, eps)
        return (y if y.dtype == x.dtype else y.to(dtype=x.dtype)), rstd  # a float32 weight promotes a half y
    n = math.prod(normalized_shape)
    rows = x.numel() // n
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    x_rows = x.reshape(rows, n)
    w = None if weight is None else weight.reshape(n).to(dtype=compute)
    stats_shape = (*x.shape[: x.ndim - len(normalized_shape)], *(1 for _ in normalized_shape))
    # Returned as allocated, not as views of row-shaped tensors: autograd refuses in-place ops on an output of a
    # custom Function that is a view made inside it (``y += 1`` after the forward).
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)  # not torch's default device
    rstd = torch.empty(stats_shape, dtype=compute, device=x.device)
    y_rows, rstd_rows = y.view(rows, n), rstd.view(rows, 1)
    block = max(1, _FORWARD_BLOCK_ELEMENTS // n)
    with scratch.held:  # the scratch is this call's until its last block is done
        for start in range(0, rows, block):
            stop = min(start + block, rows)
            x_b, rstd_b, y_b = x_rows[start:stop], rstd_rows[start:stop], y_rows[start:stop]
            (work,) = scratch.views((stop - start, n), 1, compute)
            if x.dtype == compute:
                torch.mul(x_b, x_b, out=work)
            else:
                work.copy_(x_b).mul_(work)
            torch.mean(work, 1, keepdim=True, out=rstd_b)
            rstd_b.add_(eps).rsqrt_()
            out = y_b if x.dtype == compute else work  # a half y is rounded once, at the end
            torch.mul(x_b, rstd_b, out=out)
            if w is not None:
                out.mul_(w)
            if out is not y_b:
                y_b.copy_(out)
    return y, rstd


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
    dx = torch.empty((rows, n), dtype=x.dtype, device=x.device) if mask[0] else None
    dweight = torch.zeros(n, dtype=compute, device=x.device) if mask[1] else None
    block = max(1, _BLOCK_ELEMENTS // n)
    with scratch.held:  # the scratch is this call's until its last block is done
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


def by_norm(
    x: torch.Tensor, weight: torch.Tensor | None, normalized_shape: tuple[int, ...], eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y in x's dtype, rstd in the compute dtype) over the trailing ``normalized_shape``, from the rows' 2-norms.

    What `forward` runs off the CPU, where no derivative sees its ops: unrecorded calls, and `RMSNormRows`, whose
    backward is its own (inside torch.func transforms, forward-mode AD and jit traces, `by_reductions`). rstd is
    ``1 / sqrt(norm**2 / n + eps)``: the norm reads x once, where the mean of squares writes a full-size ``x * x``
    and reads it back. ``y = x * rstd * weight`` in the compute dtype, the weight applied in place, rounded to x's
    dtype once. A row holding an Inf gets rstd 0. The norm's derivative is not finite at a zero row (its second
    order: NaN), so nothing may differentiate these ops.
    """
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    norm = torch.linalg.vector_norm(x, 2, trailing_dims(x, normalized_shape), keepdim=True, dtype=compute)
    rstd = norm.square().div_(math.prod(normalized_shape)).add_(eps).rsqrt_()  # a DTensor's partial sums: not in place
    y = x * rstd
    if weight is not None:
        y.mul_(weight)
    return (y if y.dtype == x.dtype else y.to(dtype=x.dtype)), rstd


def by_reductions(
    x: torch.Tensor, weight: torch.Tensor | None, normalized_shape: tuple[int, ...], eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y in x's dtype, rstd in the compute dtype) over the trailing ``normalized_shape``, in plain differentiable ops.

    What torch.func transforms and forward-mode AD differentiate (and jit traces, off the CPU): rstd from the mean
    of squares (`statistics.rms_rstd`), ``y = x * rstd * weight`` in the compute dtype, rounded to x's dtype once.
    A row holding an Inf gets rstd 0.
    """
    rstd = statistics.rms_rstd(x, trailing_dims(x, normalized_shape), eps)
    y = x * rstd
    if weight is not None:
        y = y * weight
    return y.to(dtype=x.dtype), rstd


def trailing_dims(x: torch.Tensor, normalized_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The dims of x that the trailing ``normalized_shape`` covers."""
    return tuple(range(x.ndim - len(normalized_shape), x.ndim))


def fused_gradients(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    rstd: torch.Tensor,
    normalized_shape: tuple[int, ...],
    mask: tuple[bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(dx, dweight) in x's dtype over the trailing ``normalized_shape``, by torch's fused CUDA backward kernel.

    None where ``mask`` says (dweight needs a weight). The kernel reads rstd as given, not as its forward would
    compute it (a row holding an Inf), and the weight in x's dtype: a float32 weight of a half x is rounded to it
    here, as torch's kernel path of aligned rows reads it, though `by_norm` applied it unrounded. Rows of RMS
    1e+-120 in float64 pass the conformance suite through it.
    """
    if weight is not None and weight.dtype != x.dtype:
        weight = weight.to(dtype=x.dtype)
    return _fused_rms_norm_backward(
        dy.contiguous(), x.contiguous(), list(normalized_shape), rstd.contiguous(), weight, [mask[0], mask[1]]
    )


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
