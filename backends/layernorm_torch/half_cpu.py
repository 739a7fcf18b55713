"""layer_norm of a float16/bfloat16 tensor on the CPU, with gradients accumulated in float32.

torch's CPU backward for half inputs accumulates dweight and dbias in half precision (several half ulps off
after a few hundred rows: outside the tolerance table). This autograd.Function keeps torch's forward (the
mixed-type kernel: half y, float32 statistics, x saved in its half dtype). Its backward takes dx from torch's
mixed-type backward kernel (float32 row sums, as accurate as a float32 backward); dweight and dbias come from
torch's float32 backward kernel run on float32 copies of x and dy, a cache-sized block of rows at a time. Each
gradient is cast back to its input's dtype. Measured with ``python -m benchmarks.torch_speed --dtypes bfloat16``:
forward+backward within a few percent of torch's own (inaccurate) half path at (4096, 768) and (8192, 4096).
Under ``create_graph=True`` (a gradient penalty) the backward is made of differentiable ops, so second-order
gradients reach x, weight and dy (`backward_float32`).
"""

from __future__ import annotations

from typing import Any

import torch

from layernorm_torch import scratch

_native_layer_norm: Any = torch.native_layer_norm
_native_layer_norm_backward: Any = torch.ops.aten.native_layer_norm_backward.default
_BLOCK_ELEMENTS = 1 << 20
"""Elements of x (and of dy) widened to float32 at a time for dweight/dbias: 4 MiB each, cache-resident. Of the
block sizes 2**14 to 2**21, 2**20 summed fastest at (4096, 768) and (8192, 4096) bfloat16: smaller blocks pay
torch's per-op overhead more often, larger ones leave the cache."""
_SMALL_ELEMENTS = 1 << 15
"""Up to this many elements, the backward widens dy and x whole (128 KiB of float32 each: malloc serves that
without page faults) and one float32 kernel call gives dx, dweight and dbias: the fewest calls for tiny inputs."""


class HalfLayerNormCPU(torch.autograd.Function):
    """y, or ``(y, mean, rstd)`` with ``return_stats``, over the trailing ``normalized_shape``.

    mean and rstd are not differentiable. Without ``return_stats`` y is the only output: each further output of
    an autograd.Function costs about 1 µs forward+backward, a tenth of a tiny call.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        normalized_shape: tuple[int, ...],
        eps: float,
        return_stats: bool,
    ) -> Any:
        """Run torch's mixed-type forward: float32 parameters (ones for a missing weight), float32 statistics."""
        w32 = scratch.parameter_ones(x, normalized_shape, torch.float32) if weight is None else weight.float()
        b32 = None if bias is None else bias.float()
        y, mean, rstd = _native_layer_norm(x, normalized_shape, w32, b32, eps)
        ctx.save_for_backward(x, w32, mean, rstd, weight)
        ctx.normalized_shape = normalized_shape
        ctx.param_dtypes = (None if weight is None else weight.dtype, None if bias is None else bias.dtype)
        if not return_stats:
            return y
        ctx.mark_non_differentiable(mean, rstd)
        ctx.set_materialize_grads(False)  # mean and rstd get no gradient: no zeros for them
        return y, mean, rstd

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor | None, *_: Any) -> tuple[torch.Tensor | None, ...]:
        """Return each gradient (`backward_float32`) in its input's dtype."""
        if dy is None:
            return None, None, None, None, None, None
        x, w32, mean, rstd, weight = ctx.saved_tensors
        weight_dtype, bias_dtype = ctx.param_dtypes
        wanted = ctx.needs_input_grad
        mask = (wanted[0], weight_dtype is not None and wanted[1], bias_dtype is not None and wanted[2])
        differentiable = torch.is_grad_enabled()  # create_graph=True: autograd differentiates these gradients
        if differentiable and weight is not None:
            w32 = weight.float()  # recorded, so second-order gradients reach weight
        dx, dweight, dbias = backward_float32(dy, x, w32, mean, rstd, ctx.normalized_shape, mask, differentiable)
        return (
            dx,
            None if dweight is None else dweight.to(dtype=weight_dtype),
            None if dbias is None else dbias.to(dtype=bias_dtype),
            None,
            None,
            None,
        )


def statistics(x: torch.Tensor, normalized_shape: tuple[int, ...], eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 mean and rstd of a half x over the trailing ``normalized_shape``, as the forward computes them.

    A torch.func wrapper (under vmap) goes through torch's float32 kernel on a float32 copy: the batching rule of
    the mixed-type kernel returns half statistics.
    """
    ones = scratch.parameter_ones(x, normalized_shape, torch.float32)
    if not torch.compiler.is_compiling() and not scratch.usable_for(x):
        x = x.float()
    _, mean, rstd = _native_layer_norm(x, normalized_shape, ones, None, eps)
    return mean, rstd


def backward_float32(
    dy: torch.Tensor,
    x: torch.Tensor,
    w32: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    normalized_shape: tuple[int, ...],
    mask: tuple[bool, bool, bool],
    differentiable: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(dx in x's dtype, dweight and dbias in float32) of a half x over the trailing ``normalized_shape``.

    ``mask`` says which are wanted. One call of torch's float32 kernel on fresh float32 copies of dy and x gives
    all three: up to `_SMALL_ELEMENTS`; whenever the gradients must be ``differentiable`` (every op then has a
    derivative: torch's layer_norm double backward for the kernel); in a torch.compile or torch.export trace,
    where a branch on the size would pin a dynamic size (the compiler fuses the copies); and for a tensor subclass
    (a DTensor) or a torch.func wrapper (`scratch.usable_for`). Otherwise dx comes from
    torch's mixed-type kernel (its row sums are float32), dweight and dbias from `_param_grads_float32` (a shared
    scratch buffer).
    """
    if differentiable or torch.compiler.is_compiling() or not scratch.usable_for(x, dy) or x.numel() <= _SMALL_ELEMENTS:
        dx, dweight, dbias = _native_layer_norm_backward(
            dy.float(), x.float(), normalized_shape, mean, rstd, w32, w32, list(mask)
        )
        return (None if dx is None else dx.to(dtype=x.dtype)), dweight, dbias
    dx = None
    x, dy = x.contiguous(), dy.contiguous()  # once: the kernel and the blocks would each copy permuted views
    if mask[0]:
        dx = _native_layer_norm_backward(dy, x, normalized_shape, mean, rstd, w32, w32, [True, False, False])[0]
    if not (mask[1] or mask[2]):
        return dx, None, None
    return (dx, *_param_grads_float32(dy, x, mean, rstd, w32, normalized_shape, mask[1], mask[2]))


def _param_grads_float32(
    dy: torch.Tensor,
    x: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    w32: torch.Tensor,
    normalized_shape: tuple[int, ...],
    weight: bool,
    bias: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(dweight if ``weight``, dbias if ``bias``) in float32, None where not wanted.

    A block of rows at a time (`_BLOCK_ELEMENTS`), x and dy are widened into a float32 scratch buffer
    (`_widened`) and torch's float32 backward kernel sums their parameter gradients in one pass.
    """
    mask = [False, weight, bias]
    n = w32.numel()
    rows = x.numel() // n
    block = max(1, _BLOCK_ELEMENTS // n)
    if rows <= block:
        with scratch.held:
            _, dweight, dbias = _native_layer_norm_backward(
                *_widened(dy, x), normalized_shape, mean, rstd, w32, w32, mask
            )
        return dweight, dbias
    w_flat = w32.reshape(n)
    rows_of = (dy.reshape(rows, n), x.reshape(rows, n), mean.reshape(rows, 1), rstd.reshape(rows, 1))
    dweight = dbias = None
    with scratch.held:  # the scratch is this call's until its last block is summed
        for dy_rows, x_rows, mean_rows, rstd_rows in zip(*(t.split(block) for t in rows_of), strict=True):
            _, dw, db = _native_layer_norm_backward(
                *_widened(dy_rows, x_rows), [n], mean_rows, rstd_rows, w_flat, w_flat, mask
            )
            dweight = dw if dweight is None else dweight.add_(dw)
            dbias = db if dbias is None else dbias.add_(db)
    return (
        None if dweight is None else dweight.reshape(normalized_shape),
        None if dbias is None else dbias.reshape(normalized_shape),
    )


def _widened(dy: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Copies of dy and x (same shape) in float32, into this thread's scratch buffer, reused by later calls.

    Called inside ``with scratch.held``.

    A fresh float32 copy costs a page fault per 4 KiB on every call (bfloat16 fwd+bwd at (1024, 1024) took
    1.4x torch's time with fresh blocks, 1.0x with the scratch). A single row over `_BLOCK_ELEMENTS` is over
    `scratch.KEPT_MAX_BYTES`: it gets fresh tensors.
    """
    dy32, x32 = scratch.views(x.shape, 2)
    return dy32.copy_(dy), x32.copy_(x)
