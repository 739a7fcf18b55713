"""mean and rstd from differentiable ops, for gradients taken through them (and through y where they make it).

torch's kernels return the statistics outside the autograd graph. Where a caller's gradient must reach x through
them (a loss on the returned mean or rstd; torch.func transforms, forward-mode AD and compiled code, which
differentiate the ops that run), these ops give them instead. Their values agree with the kernels' within the
statistics tolerance.

rstd = 1 / sqrt(mean(c**2) + eps), c the centred row (layer_norm) or the row itself (rms_norm). Autograd's
derivative of ``rsqrt(v)`` is ``-v**-1.5 / 2``, of the size rstd**3, which leaves float32's range for rows whose
spread is beyond 1e+-13 (float64's beyond 1e+-102), though the gradient it is part of, ``-rstd**2 * xhat / N``, is in
range. So the rows are scaled by a constant s first, their rstd detached from the graph (`_reciprocal_rms`):
rstd = s * rsqrt(mean((c * s)**2) + eps * s * s), the same value, whose derivative's factors are each near 1 or s.
"""

from __future__ import annotations

import torch

from layernorm_core import NormSpec


def layer_norm_statistics(x: torch.Tensor, spec: NormSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and rstd of x over ``spec.axes`` (kept) in ``spec.compute_dtype``, two-pass as the spec asks.

    (torch.var_mean warns on an empty batch.) The mean is taken about each row's first element p (0 where it is not
    finite), ``p + mean(x - p)``: exact for a constant row, whose rstd is then inf with eps = 0, as the kernel's is.
    """
    x_c = x if spec.compute_dtype == spec.dtype else x.float()
    first = x_c.detach()
    for d in spec.axes:  # narrow, not indexing: a nested tensor cannot be indexed along its batch dimension
        first = first.narrow(d, 0, 1)
    pivot = torch.where(first.isfinite(), first, 0.0)
    mean = pivot + (x_c - pivot).mean(dim=spec.axes, keepdim=True)
    return mean, _reciprocal_rms(x_c - mean, spec.axes, spec.eps)


def rms_rstd(x: torch.Tensor, dims: tuple[int, ...], eps: float) -> torch.Tensor:
    """The rstd of rms_norm, ``1 / sqrt(mean(x^2) + eps)`` over ``dims`` (kept), in the compute dtype."""
    return _reciprocal_rms(x if x.dtype in (torch.float32, torch.float64) else x.float(), dims, eps)


def _reciprocal_rms(values: torch.Tensor, dims: tuple[int, ...], eps: float) -> torch.Tensor:
    """``1 / sqrt(mean(values**2) + eps)`` over ``dims`` (kept), by ops whose derivatives stay in range.

    The scale s is that value, detached; 1 where it is not a finite positive number (a row whose squares overflow,
    a zero row with eps = 0, a row holding a NaN), which leaves such rows the plain formula's result.
    ``eps * s * s`` in that order: ``eps * s`` is 0 for eps = 0, where ``s * s`` alone may overflow.
    """
    plain = values.detach()
    scale = torch.rsqrt((plain * plain).mean(dims, keepdim=True) + eps)
    scale = torch.where(scale.isfinite() & (scale > 0), scale, 1.0)
    scaled = values * scale
    return scale * torch.rsqrt((scaled * scaled).mean(dims, keepdim=True) + eps * scale * scale)
