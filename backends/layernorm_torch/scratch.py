"""Per-thread scratch tensors on the CPU, kept between calls, for the temporaries of the blocked backward passes.

A fresh temporary of a few MiB costs a page fault per 4 KiB on every call: glibc hands freed large blocks back to
the OS, and the next call touches new pages. A (4096, 768) float32 multiply into a fresh tensor took 2.0 ms here,
into a kept one 0.28 ms. So the blocked backward passes (`half_cpu`, `rms_rows`) work in views of one buffer per
thread, which lives as long as the thread.
"""

from __future__ import annotations

import math
import threading

import torch
from torch._C import _functorch

KEPT_SHAPES = 16
"""Layouts whose views a thread keeps: a model's few layer shapes, and the blocks."""
KEPT_MAX_BYTES = 8 << 20
"""Most scratch a thread keeps: what a block takes at most. One row longer than a block takes more, and gets fresh
tensors: a single call on huge rows would otherwise hold their size for the thread's life."""
_local = threading.local()
_Parameter = torch.nn.Parameter


def usable_for(*tensors: torch.Tensor) -> bool:
    """Whether these may be computed on in plain scratch tensors: plain tensors, not subclasses or wrappers.

    An ``nn.Parameter`` counts as plain: it disables ``__torch_function__``, so its ops are a plain tensor's (as a
    subclass, a Parameter x took torch's CPU rms_norm composite, whose derivative leaves float32's range at rows of
    RMS beyond 1e+-13). A subclass (a DTensor) dispatches its ops through itself; mixed with plain tensors, torch
    refuses the op. So
    do batched tensors, torch.func's (vmap) and autograd's legacy ones (``is_grads_batched`` cotangents), which
    have no batching rule for ``out=`` ops or copies into plain memory. Not for a torch.compile trace, which cannot
    call the queries.
    """
    for t in tensors:
        if (
            (type(t) is not torch.Tensor and type(t) is not _Parameter)
            or _functorch.is_functorch_wrapped_tensor(t)
            or _functorch.is_legacy_batchedtensor(t)
        ):
            return False
    return True


def parameter_ones(x: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Ones of ``shape`` to stand for a missing weight of x, on x's device.

    Of x's tensor type (a DTensor gets a replicated one); plain for a nested x, whose parameters are plain.
    """
    if x.is_nested:
        return torch.ones(shape, dtype=dtype, device=x.device)
    return x.new_ones(shape, dtype=dtype)


class _Held:
    """``with held:`` around a caller's use of `views`, from its first call to its last use of their contents.

    The kept buffer serves the outermost holder only: `views` inside a nested one give fresh tensors. A call
    nests where user code runs inside the ops of another (a TorchFunctionMode or TorchDispatchMode that calls
    layernorm on each op), and would otherwise overwrite the scratch the outer call is still reading.
    """

    __slots__ = ()

    def __enter__(self) -> None:
        _local.holders = getattr(_local, "holders", 0) + 1

    def __exit__(self, *_: object) -> None:
        _local.holders -= 1


held = _Held()


def views(shape: tuple[int, ...], count: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    """``count`` disjoint contiguous tensors of ``shape`` and ``dtype`` over this thread's scratch buffer.

    Their contents are whatever the last user left. The next call in this thread may return the same memory, so
    a caller is done with them before it calls again (and before it returns). Only inside one `held` (the
    outermost) do they come from the kept buffer; elsewhere they are fresh. Making the views costs more than
    filling them at mid sizes (a slice and two views: about 2.5 µs each, the copy of a (64, 768) block 2 µs), so
    they are kept per layout, `KEPT_SHAPES` at most. A larger layout replaces the buffer; over `KEPT_MAX_BYTES`
    they are fresh tensors, kept by no one.
    """
    kept: dict[tuple[object, ...], tuple[torch.Tensor, ...]] | None = getattr(_local, "views", None)
    if kept is None:
        kept = _local.views = {}
    key = (shape, count, dtype)
    found = kept.get(key)
    holders = getattr(_local, "holders", 0)
    if found is not None and holders == 1:
        return found
    step = math.prod(shape) * dtype.itemsize
    size = count * step
    if size > KEPT_MAX_BYTES or holders != 1:
        return tuple(torch.empty(shape, dtype=dtype, device="cpu") for _ in range(count))
    # Normal tensors even inside torch.inference_mode: outside it, torch refuses writes to an inference tensor.
    with torch.inference_mode(False):
        buffer: torch.Tensor | None = getattr(_local, "buffer", None)
        if buffer is None or buffer.numel() < size:
            buffer = _local.buffer = torch.empty(size, dtype=torch.uint8, device="cpu")
            kept.clear()
        elif len(kept) >= KEPT_SHAPES:
            kept.clear()
        found = kept[key] = tuple(buffer[k * step : (k + 1) * step].view(dtype).view(shape) for k in range(count))
    return found
