"""Checks of torch results against the float64 reference, shared by the torch test modules."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from layernorm_core import check_forward, reference
from layernorm_core.tolerances import error_ratio, gradient_scale, row_condition, tolerance


def f64(t: Any) -> np.ndarray:
    """Exact float64 host copy of a tensor (every float dtype widens exactly)."""
    return t.detach().cpu().to(torch.float64).numpy()


def check_layer_norm_grads(grads: tuple, x: Any, w: Any, dy: Any, axis: Any, dtype: str, eps: float = 1e-5) -> None:
    """dx, dweight, dbias (each unless None) against the reference, with the dx scale of the tolerance table."""
    spec = check_forward("layer_norm", x, w, None, axis, eps)
    ref_rstd = reference.layer_norm(f64(x), None, None, spec)[2]
    cond = row_condition(f64(x), spec)
    w64 = None if w is None else f64(w)
    scales = (gradient_scale(f64(dy), w64, ref_rstd, spec), None, None)
    expected = reference.layer_norm_backward(f64(dy), f64(x), w64, spec)
    for name, got, exp, scale in zip(("dx", "dweight", "dbias"), grads, expected, scales, strict=True):
        if got is None:
            continue
        assert tuple(got.shape) == exp.shape, name
        assert error_ratio(f64(got), exp, tolerance(dtype, "grad"), cond, scale=scale) <= 1, name


def check_rms_norm_grads(grads: tuple, x: Any, w: Any, dy: Any, axis: Any, dtype: str, eps: float = 1e-5) -> None:
    """dx, dweight (each unless None) against the reference."""
    spec = check_forward("rms_norm", x, w, None, axis, eps)
    ref_rstd = reference.rms_norm(f64(x), None, spec)[1]
    w64 = None if w is None else f64(w)
    scales = (gradient_scale(f64(dy), w64, ref_rstd, spec), None)
    expected = reference.rms_norm_backward(f64(dy), f64(x), w64, spec)
    for name, got, exp, scale in zip(("dx", "dweight"), grads, expected, scales, strict=True):
        if got is None:
            continue
        assert tuple(got.shape) == exp.shape, name
        assert error_ratio(f64(got), exp, tolerance(dtype, "grad"), scale=scale) <= 1, name
