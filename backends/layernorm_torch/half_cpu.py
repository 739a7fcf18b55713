"""layer_norm of a float16/bfloat16 tensor on the CPU, with gradients accumulated in float32.

torch's CPU backward for half inputs accumulates dweight and dbias in half precision (several half ulps off
after a few hundred rows: outside the tolerance table). This autograd.Function keeps torch's forward (the
mixed-type kernel: half y, float32 statistics, x saved in its half dtype) and runs torch's backward kernel in
float32 (dy and x widened), casting each gradient back to its input's dtype. About 1.2-1.5x torch's own half
forward+backward on a (4096, 768) bfloat16 tensor, against 1.6-2.7x for widening x before the forward.
"""

from __future__ import annotations

from typing import Any

import torch

_native_layer_norm: Any = torch.native_layer_norm
_native_layer_norm_backward: Any = torch.ops.aten.native_layer_norm_backward.default


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
        """Run torch's backward kernel in float32; each gradient in its input's dtype."""
        x, w32, mean, rstd = ctx.saved_tensors
        weight_dtype, bias_dtype = ctx.param_dtypes
        wanted = ctx.needs_input_grad
        mask = [wanted[0], weight_dtype is not None and wanted[1], bias_dtype is not None and wanted[2]]
        # The bias argument is only read for its dtype and shape, to allocate dbias: w32 serves.
        dx, dweight, dbias = _native_layer_norm_backward(
            dy.to(torch.float32), x.to(torch.float32), ctx.normalized_shape, mean, rstd, w32, w32, mask
        )
        return (
            None if dx is None else dx.to(x.dtype),
            None if dweight is None else dweight.to(weight_dtype),
            None if dbias is None else dbias.to(bias_dtype),
            None,
            None,
        )
