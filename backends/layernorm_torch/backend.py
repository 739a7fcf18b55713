"""The PyTorch backend: torch's own fused kernels, forward and backward, on CPU and CUDA.

layer_norm runs ``torch.native_layer_norm`` (the kernel behind ``F.layer_norm``, which also returns mean and
rstd; ``torch.layer_norm`` over trailing axes when only y is wanted); rms_norm runs ``torch._fused_rms_norm`` (the
op behind ``F.rms_norm``: a fused kernel on CUDA, torch's composite on CPU). Elsewhere gradients go through
torch.autograd with torch's own derivative formulas; two paths have their own autograd.Function: a half
layer_norm on the CPU (`half_cpu`: dweight and dbias summed in float32) and rms_norm (`rms_rows`: on the CPU an
analytic backward, block by block in scratch; on CUDA, for the rows torch's kernel reads value by value and so
misreads an Inf (`_rms_norm_cuda`), a forward from the rows' norms and torch's fused backward kernel on that
rstd). Under torch.compile and torch.export they keep torch's ops; under torch.func, forward-mode AD and jit
traces, torch's ops, or for rms_norm plain ops (`rms_rows.by_reductions`: every call in torch.func transforms
and forward-mode AD but a nested one, and CUDA's rows above in jit traces): so ``torch.compile(fullgraph=True)`` and
gradcheck see ordinary aten ops. Statistics that a gradient may flow through come from `statistics`. Axes that
are not trailing are moved to the end with one ``permute`` (a view: the kernel makes it contiguous) and moved back.

Everything here is on the per-call path: no argument checks (the core did them), no loop over rows in Python.
Casts name the dtype by keyword (``t.to(dtype=d)``), which skips ``Tensor.to``'s overload resolution: 1.3 µs
against 1.7 µs a cast on a small tensor.
"""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np
import torch
import torch.autograd.forward_ad as _forward_ad
from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

from layernorm_core import BackendInfo, NormSpec, not_dense_error
from layernorm_core.dispatch import check_devices
from layernorm_core.errors import DeviceError
from layernorm_core.foreign import require_host
from layernorm_torch import half_cpu, rms_rows, scratch, statistics
from layernorm_torch.half_cpu import HalfLayerNormCPU
from layernorm_torch.rms_rows import RMSNormRows

# The kernels (and math.prod), bound once. Typed Any: the spec's shapes are typed with None for unknown sizes, never
# None here.
_native_layer_norm: Any = torch.native_layer_norm
_layer_norm: Any = torch.layer_norm
_rms_norm: Any = torch.rms_norm
# torch.ops, not the private torch._fused_rms_norm binding, which torch.compile refuses to trace.
_fused_rms_norm: Any = torch.ops.aten._fused_rms_norm.default
_native_layer_norm_backward: Any = torch.ops.aten.native_layer_norm_backward.default
_product: Any = math.prod

_VECTOR_BYTES = {"float16": 8, "bfloat16": 8, "float32": 16}
"""Bytes of four values, by dtype name, for the dtypes torch's CUDA rms_norm kernel reads four at a time
(`_rms_norm_cuda`)."""
_VECTOR_ROW_MAX = 1 << 24
"""The longest row torch's CUDA rms_norm kernel reads four values at a time."""
_interpreter_stack: Any = torch._C._functorch.peek_interpreter_stack
"""Not None inside a torch.func transform."""
_functorch_interpreters: Any = retrieve_all_functorch_interpreters
_JVP: Any = torch._C._functorch.TransformType.Jvp
# The per-call queries, bound once (15 ns a call less than through ``torch.``); dynamo knows them by identity.
_grad_enabled: Any = torch.is_grad_enabled
_compiling: Any = torch.compiler.is_compiling
_dynamo_compiling: Any = torch.compiler.is_dynamo_compiling
_tracing_state: Any = torch._C._get_tracing_state
"""Not None while torch.jit.trace records: ``torch.jit.is_tracing()`` without its two Python calls (45 ns less).
Dynamo takes it for None, as it takes ``torch.jit.is_tracing()`` for False."""

_STRIDED = torch.strided
"""The dense layout. Sparse layouts and MKLDNN's opaque one are a DTypeError (`_require_dense`)."""

_TORCH_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}

# ---------------------------------------------------------------------------------------------------------------
# Arrays: device, conversion


def info() -> BackendInfo:
    """Report torch's version, the devices visible here (cpu, cuda), the four float dtypes, autograd."""
    devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    return BackendInfo(
        version=torch.__version__,
        devices=devices,
        dtypes=tuple(_TORCH_DTYPES),
        deterministic_devices=("cpu",),
        autodiff=True,
        notes={
            "kernels": "layer_norm: torch.native_layer_norm; rms_norm: torch._fused_rms_norm (fused on CUDA, "
            "torch's composite on CPU); non-trailing axes are permuted to the end around the kernel",
            "rms_norm on CUDA": "for the rows torch's kernel reads value by value, where it gives a row holding an "
            "inf rstd NaN (docs/spec.md lists them): rstd from the rows' norms, torch's fused backward on it "
            "(plain ops under create_graph), except inside torch.func transforms, forward-mode AD and jit traces "
            "(reductions, differentiated op by op); an x or weight off a four-value boundary is copied first",
            "rms_norm backward on CPU": "analytic at every size: block by block in per-thread scratch from 2**15 "
            "elements, plain ops below (torch differentiates its composite op by op, 2.5-3x slower at (4096, 768), "
            "through an rsqrt(v)**3 that leaves float32's range for rows of RMS beyond 1e+-13); under torch.func "
            "and forward-mode AD plain ops whose derivative stays in range; torch's own autograd under "
            "torch.compile, torch.export and jit traces (that rsqrt(v)**3, as F.rms_norm's)",
            "autocast": "the output keeps x's dtype under torch.autocast (CUDA autocast computes layer_norm in "
            "float32; the result is cast back to x's dtype)",
            "mixed precision": "float32 weight/bias for a half x: native on CPU; on CUDA they are cast to x's dtype "
            "(kept in float32 under torch.func transforms and forward-mode AD, and in the forward of the rms_norm "
            "rows torch's kernel reads value by value)",
            "half on CPU": "float32 statistics always; dx from torch's mixed-type backward kernel; dweight/dbias "
            "from its float32 kernel on float32 copies of x and dy, block by block (its half backward accumulates "
            "them in half precision, outside the tolerances); under torch.func transforms, forward-mode AD and "
            "torch.export, torch's float32 kernel on float32 copies",
        },
    )


_CUDA_DEVICE_COUNT = torch.cuda.device_count()
"""CUDA devices visible to this process (counted without initializing CUDA)."""


def device_of(x: torch.Tensor) -> str:
    """The device of x: "cpu"; "cuda", or "cuda:N" where the process sees several; torch's name for other types.

    With several CUDA devices the index is part of the answer, so arrays of one call on two of them are a
    DeviceError before any kernel runs.
    """
    # Flag reads, not x.device, which builds a torch.device (about 0.2 us). CUDA's first: where CUDA is, the core
    # compares the devices of a call's arrays on every call.
    if x.is_cuda:
        return "cuda" if _CUDA_DEVICE_COUNT < 2 else f"cuda:{x.get_device()}"
    if x.is_cpu:
        return "cpu"
    return x.device.type


def is_tracked(x: torch.Tensor) -> bool:
    """True when x takes part in autograd, a functorch transform, forward-mode AD or a compile or jit trace.

    Autograd: requires_grad while grad mode records (not under torch.no_grad or torch.inference_mode, where
    nothing records, as TensorFlow's variables cross where no tape records); forward-mode AD: a dual tensor;
    traces: torch.compile's and torch.jit.trace's.
    """
    return (
        torch.compiler.is_dynamo_compiling()  # first: dynamo cannot call the functorch query below
        or (bool(x.requires_grad) and torch.is_grad_enabled())
        or torch._C._functorch.is_functorch_wrapped_tensor(x)
        or _tracing_state() is not None
        or (_forward_ad._current_level >= 0 and _forward_ad.unpack_dual(x).tangent is not None)
    )


def to_numpy(x: torch.Tensor) -> np.ndarray:
    """A host NumPy copy of x with its dtype; bfloat16 becomes ml_dtypes.bfloat16 (bit for bit).

    A view with torch's negative bit (the real ``c.conj().imag`` of a complex c) has its negation applied first:
    ``Tensor.numpy()`` refuses it.
    """
    _require_dense(x)
    host = x.detach().cpu().resolve_neg()
    if host.dtype == torch.bfloat16:
        import ml_dtypes

        return host.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
    return host.numpy().copy()


def from_numpy(array: Any, device: str = "cpu") -> torch.Tensor:
    """A new tensor on ``device`` holding a NumPy array's values and dtype (ml_dtypes.bfloat16 -> bfloat16).

    DeviceError for a device torch does not have (torch's own AssertionError for CUDA in a CPU build), asked of
    the device's module (``torch.cuda.is_available()``) before the copy, whose other errors (out of memory) stay
    torch's.
    """
    kind = torch.device(device).type
    if kind != "cpu" and not getattr(getattr(torch, kind, None), "is_available", lambda: False)():
        raise DeviceError(f"torch cannot place an array on {device!r}: it has no {kind} device here")
    array = np.array(array, copy=True, order="C")
    if array.dtype.name == "bfloat16":
        tensor = torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    else:
        tensor = torch.from_numpy(array)
    return tensor.to(device)


def from_foreign(x: Any) -> torch.Tensor:
    """x, an array of another framework, as a tensor: DLPack (zero copy) where it can, else a NumPy copy."""
    if hasattr(x, "__dlpack__"):
        try:
            return torch.from_dlpack(x)
        except (AssertionError, BufferError, RuntimeError, TypeError, ValueError) as exc:  # Assertion: no CUDA build
            require_host(x, "torch", exc)  # read-only or extension dtypes (ml_dtypes.bfloat16) have no DLPack export
    return from_numpy(np.asarray(x))


# ---------------------------------------------------------------------------------------------------------------
# Forward


def layer_norm(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, spec: NormSpec, return_stats: bool
) -> Any:
    """y, or (y, mean, rstd) with ``spec.stats_shape`` and ``spec.compute_dtype``, via torch.native_layer_norm.

    y alone over trailing axes comes from torch.layer_norm: the same kernel, which hands Python one tensor, not three.
    The kernels return mean and rstd outside the autograd graph (and with zero tangents in forward mode): where
    `_statistics_by_ops` says, they come from `statistics.layer_norm_statistics` instead, so a loss on them reaches
    x and their tangents are right.
    A bias without a weight gets a weight of ones: torch's derivative of its backward kernel drops dbias's dependence
    on dy where the weight is None (pytorch#79705: second-order gradients 0). Every such call does, so that y has
    the same bits with autograd recording it or not (torch's CPU kernel rounds the two forms differently).
    """
    if weight is None and bias is not None:
        weight = _ones(spec, x, bias.dtype)
    try:
        if spec.compute_dtype != spec.dtype and (
            return_stats
            or spec.mixed_params
            or not x.is_cpu
            or (
                (
                    x.requires_grad
                    or (weight is not None and weight.requires_grad)
                    or (bias is not None and bias.requires_grad)
                )
                and _grad_enabled()
            )
            or _tracing_state() is not None
        ):  # a half x with float32 statistics, parameters or gradients, or on CUDA; else the half kernel as is.
            # Inline, not a helper: a call would cost a tiny half call 0.07 us of its 1.3x budget over torch's.
            out = _layer_norm_half(x, weight, bias, spec, return_stats)
            if not return_stats:
                return out
        elif spec.is_trailing:
            if not return_stats:  # 0.1 us less a call than native_layer_norm, which hands Python three tensors
                return _layer_norm(x, spec.normalized_shape, weight, bias, spec.eps)
            out = _native_layer_norm(x, spec.normalized_shape, weight, bias, spec.eps)
        else:
            out = _layer_norm_permuted(x, weight, bias, spec)
        if not return_stats:
            return out[0]
        if _statistics_by_ops(x):
            return (out[0], *statistics.layer_norm_statistics(x, spec))
        return out
    except (RuntimeError, NotImplementedError):  # zero cost until raised, unlike a check before (0.1 us a call)
        _refused(x, weight, bias)
        raise


def _statistics_by_ops(x: torch.Tensor) -> bool:
    """Whether returned statistics come from `statistics`' differentiable ops rather than the kernels.

    So they do where a gradient may reach them (x's is taken; a torch.func transform or forward-mode AD; code
    torch.compile traces, which cannot tell whether a transform around it wants them), in torch.jit traces (whose
    check traces again under no_grad and must record the same ops), and for a nested x (the kernels give them for
    the packed rows: these ops, in x's nested layout).
    """
    return (
        (x.requires_grad and _grad_enabled())
        or x.is_nested
        or _in_transform()
        or _compiling()
        or _tracing_state() is not None
    )


def _layer_norm_half(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, spec: NormSpec, return_stats: bool
) -> Any:
    """layer_norm of a float16/bfloat16 x: float32 statistics, output in x's dtype.

    On the CPU, torch's half kernel rounds mean and rstd to the half dtype, and its backward accumulates dweight
    and dbias in half precision (errors of several half ulps over a few hundred rows). So: when weight or bias
    gradients will be taken, `HalfLayerNormCPU` sums them in float32; when x's gradient alone, the statistics or
    float32 parameters come in, float32 parameters select torch's mixed-type kernels (float32 statistics, and a dx
    whose row sums are float32). When none of these does, `layer_norm` runs the half kernel as is.
    On CUDA the kernel keeps float32 statistics and reads parameters in x's dtype: float32 ones are cast to it.
    """
    on_cpu = x.is_cpu
    if _in_transform() or (on_cpu and (torch.compiler.is_exporting() or _tracing_state() is not None)):
        # The mixed-type kernel's tangent is float32 (so is the CUDA half kernel's, its statistics being float32),
        # and its fake kernel says its statistics are half; HalfLayerNormCPU has no tangent and no batching rule,
        # and strict export runs it without autograd. torch.jit.trace cannot record HalfLayerNormCPU, and its
        # check traces again under no_grad: the traced graph must not depend on grad mode, so a CPU trace always
        # takes this route.
        return _layer_norm_half_via_float32(x, weight, bias, spec, return_stats)
    if on_cpu:
        train_params = (weight is not None and weight.requires_grad) or (bias is not None and bias.requires_grad)
        if train_params and _grad_enabled():
            return _layer_norm_half_cpu_autograd(x, weight, bias, spec, return_stats)
        weight = _ones(spec, x, torch.float32) if weight is None else weight.float()
        bias = _as(bias, torch.float32)
    elif spec.mixed_params:
        weight, bias = _as(weight, x.dtype), _as(bias, x.dtype)
    if not spec.is_trailing:
        y, mean, rstd = _layer_norm_permuted(x, weight, bias, spec)
    elif return_stats:
        y, mean, rstd = _native_layer_norm(x, spec.normalized_shape, weight, bias, spec.eps)
    else:
        y = _layer_norm(x, spec.normalized_shape, weight, bias, spec.eps)
    if not on_cpu and y.dtype is not x.dtype:  # CUDA autocast runs layer_norm in float32 (CPU autocast does not)
        y = y.to(dtype=x.dtype)
    return (y, _stat(mean, spec), _stat(rstd, spec)) if return_stats else y


def _layer_norm_half_cpu_autograd(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, spec: NormSpec, return_stats: bool
) -> Any:
    """A half layer_norm on the CPU that autograd differentiates with float32 accumulation (`HalfLayerNormCPU`)."""
    if spec.is_trailing:
        return HalfLayerNormCPU.apply(x, weight, bias, spec.normalized_shape, spec.eps, return_stats)
    perm, inverse = spec.perm, spec.inverse_perm
    out = HalfLayerNormCPU.apply(x.permute(perm), weight, bias, spec.normalized_shape, spec.eps, return_stats)
    return tuple(t.permute(inverse) for t in out) if return_stats else out.permute(inverse)


def _in_transform() -> bool:
    """True inside a torch.func transform (grad, vjp, jvp, vmap, ...) or a forward-mode AD dual level: 60 ns.

    One read for any number of tensors. False while dynamo traces: it cannot call the functorch query.
    """
    return not torch.compiler.is_dynamo_compiling() and (
        _interpreter_stack() is not None or _forward_ad._current_level >= 0
    )


def _forward_mode() -> bool:
    """True under forward-mode AD: a dual level, or torch.func.jvp (jacfwd, hessian) anywhere in the transform stack.

    The queries of `_in_transform` first, which end a plain call's after two. False while dynamo traces: it cannot
    list the functorch interpreters.
    """
    level = _forward_ad._current_level >= 0
    if not level and _interpreter_stack() is None:
        return False
    return not _dynamo_compiling() and (level or any(i.key() == _JVP for i in _functorch_interpreters()))


def _layer_norm_half_via_float32(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, spec: NormSpec, return_stats: bool
) -> Any:
    """Half layer_norm for torch.func and forward-mode AD (and jit.trace on the CPU): the float32 kernel on copies.

    `HalfLayerNormCPU` (an autograd.Function with a thread-local scratch and no jvp) and the mixed-type backward
    have no torch.func support; these ops each have a batching rule, a derivative and a forward-mode derivative,
    and their sums are float32.
    """
    x32, weight, bias = x.float(), _as(weight, torch.float32), _as(bias, torch.float32)
    if spec.is_trailing and not return_stats:  # one aten::layer_norm: the legacy ONNX exporter writes one op for it
        return _layer_norm(x32, spec.normalized_shape, weight, bias, spec.eps).to(dtype=x.dtype)
    if spec.is_trailing:
        y, mean, rstd = _native_layer_norm(x32, spec.normalized_shape, weight, bias, spec.eps)
    else:
        y, mean, rstd = _layer_norm_permuted(x32, weight, bias, spec)
    y = y.to(dtype=x.dtype)
    return (y, mean, rstd) if return_stats else y


def _layer_norm_permuted(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, spec: NormSpec
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """native_layer_norm over non-trailing axes: moved to the end by a permute (a view), and moved back."""
    perm, inverse = spec.perm, spec.inverse_perm
    y, mean, rstd = _native_layer_norm(x.permute(perm), spec.normalized_shape, weight, bias, spec.eps)
    return y.permute(inverse), mean.permute(inverse), rstd.permute(inverse)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, spec: NormSpec, return_stats: bool) -> Any:
    """y, or (y, rstd) with ``spec.stats_shape`` and ``spec.compute_dtype``.

    On the CPU, outside traces and transforms, `rms_rows` runs what autograd differentiates, and every call from
    `rms_rows.UNRECORDED_FORWARD_ELEMENTS` (torch's CPU rms_norm is a composite that writes a fresh temporary per op,
    and autograd differentiates it op by op, through an rstd**3 that leaves float32's range for rows of RMS beyond
    1e+-13); inside torch.func transforms and forward-mode AD, which differentiate the ops that run,
    `rms_rows.by_reductions`, whose derivative stays in range; everything else runs torch's rms_norm, the kernel
    `rms_rows.forward` runs below a block, so y has the same bits either way (under torch.compile, torch.export and
    jit traces, torch's derivative, as for F.rms_norm).
    So do tensor subclasses (a DTensor: `scratch.usable_for`), whose ops dispatch through the subclass.
    On CUDA, the calls torch's kernel would read value by value, and so misread a row holding an Inf (docs/spec.md),
    go to `rms_rows` too, as do calls in torch.func transforms and forward-mode AD; others have their x or weight
    copied to aligned memory first (`_rms_norm_cuda`).
    A returned rstd comes from `statistics.rms_rstd` where `_statistics_by_ops` says, as layer_norm's statistics
    do (the kernels' rstd is outside the graph, or on CUDA differentiated through rstd**3).
    """
    try:
        if return_stats and _statistics_by_ops(x):
            return rms_norm(x, weight, spec, False), statistics.rms_rstd(x, spec.axes, spec.eps)
        if x.is_cpu and not _compiling():  # first: in a trace, comparing a symbolic size would pin it
            if _in_transform():  # it differentiates the ops that run: not torch's composite, through rsqrt
                if not x.is_nested:
                    return _rms_norm_rows(x, weight, spec, return_stats, False)  # `rms_rows.by_reductions`
            else:
                recorded = _grad_enabled() and (x.requires_grad or (weight is not None and weight.requires_grad))
                if (  # `_function_allowed`, out of transforms; a jit trace first, whose numel() is a tensor
                    _tracing_state() is None
                    and (recorded or x.numel() >= rms_rows.UNRECORDED_FORWARD_ELEMENTS)
                    and scratch.usable_for(x)
                ):
                    return _rms_norm_rows(x, weight, spec, return_stats, recorded)
        elif x.is_cuda and not x.is_nested and not _compiling():
            return _rms_norm_cuda(x, weight, spec, return_stats)
        return _rms_norm_kernel(x, weight, spec, return_stats)
    except (RuntimeError, NotImplementedError):  # as in `layer_norm`
        _refused(x, weight)
        raise


def _function_allowed() -> bool:
    """Whether autograd may record `RMSNormRows`: outside jit traces, torch.func transforms and forward-mode AD.

    None of them can enter an autograd.Function without a batching rule or a jvp. Outside them, nothing but autograd
    differentiates the ops that run, so `_rms_norm_rows` may run ops no derivative may see (`rms_rows.by_norm`).
    """
    return _tracing_state() is None and not _in_transform()


def _rms_norm_cuda(x: torch.Tensor, weight: torch.Tensor | None, spec: NormSpec, return_stats: bool) -> Any:
    """rms_norm of a CUDA x (not nested) outside torch.compile: torch's kernel where it reads four values at a time.

    It reads rows value by value for float64, for lengths not a multiple of 4 or over 2**24 (its conditions in torch
    2.11-2.13), and from memory off a boundary of four values; then it takes Welford's mean and variance, which turn
    an Inf into NaN (docs/spec.md). Such rows go to `_rms_norm_rows` (`rms_rows`), and so do calls inside
    torch.func transforms and forward-mode AD: they differentiate torch's kernel by its derivative, of the size
    rstd**3, out of range at rows of RMS beyond 1e+-13 in float32 (on an H200, dx 8e3 times the tolerance, or inf).
    An x or weight off the boundary is replaced by a contiguous copy, in fresh memory, which is aligned
    (`_aligned`). A call that `_rms_norm_kernel` would run as one kernel call (trailing axes, y alone, parameters in
    x's dtype) runs it here, without the calls between: at f36f2e2 the backend took 1.5 us (float32) over
    `torch.rms_norm` on the H100's host, where the alignment check it replaced had taken 0.7 us.
    """
    vector_bytes = _VECTOR_BYTES.get(spec.dtype)
    row = _product(spec.normalized_shape)
    in_transform = _interpreter_stack() is not None or _forward_ad._current_level >= 0  # `_in_transform`, uncompiled
    if in_transform or vector_bytes is None or row % 4 != 0 or row > _VECTOR_ROW_MAX:
        through_function = not in_transform and _tracing_state() is None and _recorded(x, weight)
        return _rms_norm_rows(x, weight, spec, return_stats, through_function)
    read_weight = None if spec.mixed_params else weight  # a float32 weight of a half x is cast: fresh memory
    try:
        aligned = x.data_ptr() % vector_bytes == 0 and (
            read_weight is None or read_weight.data_ptr() % vector_bytes == 0
        )
    except RuntimeError:  # a subclass without storage, or a torch.func wrapper that escaped its transform
        aligned = False
    if not aligned:
        x = _aligned(x, vector_bytes)
        weight = weight if read_weight is None else _aligned(read_weight, vector_bytes)
    if spec.is_trailing and not return_stats and not spec.mixed_params:
        y = _rms_norm(x, spec.normalized_shape, weight, spec.eps)
        return y if y.dtype is x.dtype else y.to(dtype=x.dtype)  # CUDA autocast runs rms_norm in float32
    return _rms_norm_kernel(x, weight, spec, return_stats)


def _aligned(t: torch.Tensor, vector_bytes: int) -> torch.Tensor:
    """t, or where its data is off a ``vector_bytes`` boundary, a contiguous copy of it (fresh memory is aligned).

    The data address, not the storage offset: a slice imported through DLPack has offset 0 at any address. A
    torch.func wrapper, inside its transform or escaped from it, does not have it, the tensor it wraps does:
    functionalize's reports its storage offset in bytes instead (0 for a DLPack import), the others none. A
    subclass without storage of its own (a DTensor: its local shard) counts as on the boundary.
    """
    inner = t
    while torch._C._functorch.is_functorch_wrapped_tensor(inner):
        inner = torch._C._functorch.get_unwrapped(inner)
    try:
        off_boundary = inner.data_ptr() % vector_bytes != 0
    except RuntimeError:
        off_boundary = False
    return t.clone(memory_format=torch.contiguous_format) if off_boundary else t


def _rms_norm_kernel(x: torch.Tensor, weight: torch.Tensor | None, spec: NormSpec, return_stats: bool) -> Any:
    """rms_norm by torch's kernel: `_rms_norm_half` for a half x; for axes not trailing, permuted around it.

    Under torch.compile and torch.export, `_rms_norm_traced` where y alone would come from _fused_rms_norm.
    """
    if spec.compute_dtype != spec.dtype:
        return _rms_norm_half(x, weight, spec, return_stats)
    if spec.is_trailing and not return_stats:  # torch.rms_norm: the same kernel through a cheaper binding
        return _rms_norm(x, spec.normalized_shape, weight, spec.eps)
    if _compiling():
        return _rms_norm_traced(x, weight, spec)
    if not spec.is_trailing:
        y, rstd = _rms_norm_permuted(x, weight, spec)
    else:
        y, rstd = _fused_rms_norm(x, spec.normalized_shape, weight, spec.eps)
    return (y, rstd) if return_stats else y


def _rms_norm_traced(x: torch.Tensor, weight: torch.Tensor | None, spec: NormSpec) -> torch.Tensor:
    """The y of rms_norm in a torch.compile or torch.export trace: torch.rms_norm.

    Never asked for rstd: while compiling, `rms_norm` takes it from `statistics` (`_statistics_by_ops`).
    _fused_rms_norm's normalized_shape is an int[], which pins the normalized sizes of a trace to their values
    (mark_dynamic of one failed the compile, dynamic=True compiled again for each size); torch.rms_norm's is a
    SymInt[]. Its operands as the eager call's: beside a half x, a float32 weight widens x on the CPU (their
    product rounded once, as torch's CPU composite takes them) and is cast to x's dtype on CUDA (as
    `_rms_norm_half` casts it for the fused kernel); axes not trailing moved last, contiguous on the CPU.
    """
    dtype = x.dtype
    if spec.mixed_params:
        if x.is_cpu:
            x = x.float()
        else:
            weight = _as(weight, dtype)
    (moved,) = _normalized_last(spec, x)
    if not spec.is_trailing and moved.is_cpu:
        moved = moved.contiguous()
    y = _rms_norm(moved, spec.normalized_shape, weight, spec.eps)
    return _normalized_back(spec, y if y.dtype is dtype else y.to(dtype=dtype))


def _rms_norm_rows(
    x: torch.Tensor, weight: torch.Tensor | None, spec: NormSpec, return_stats: bool, through_function: bool
) -> Any:
    """`rms_rows.forward`, through `RMSNormRows` when ``through_function``.

    `RMSNormRows` has its own backward: analytic on the CPU, torch's fused kernel on CUDA; its rstd is not
    differentiable (`rms_norm` takes a differentiable one from `statistics`). Inside a torch.func transform,
    forward-mode AD or a jit trace, which differentiate the ops that run, `rms_rows.by_reductions` (every call
    reaches this inside transforms and forward-mode AD, CUDA's misread rows in jit traces too), on an rstd whose
    derivative stays in the compute dtype's range (`statistics.rms_rstd`).
    """
    _require_dense(x, weight)  # these ops are not torch's kernels: a sparse weight would give a sparse y
    if x.is_cpu and weight is not None and not weight.is_cpu:  # its blocks would run with a meta weight
        check_devices(device_of, x, (weight,))
    (xt,) = _normalized_last(spec, x)
    if through_function:
        y, rstd = RMSNormRows.apply(xt, weight, spec.normalized_shape, spec.eps)
    elif _function_allowed():  # an unrecorded call: no derivative sees these ops
        y, rstd = rms_rows.forward(xt, weight, _sizes(spec.normalized_shape), spec.eps)
    else:
        y, rstd = rms_rows.by_reductions(xt, weight, _sizes(spec.normalized_shape), spec.eps)
    y = _normalized_back(spec, y)
    return (y, _normalized_back(spec, rstd)) if return_stats else y


def _rms_norm_half(x: torch.Tensor, weight: torch.Tensor | None, spec: NormSpec, return_stats: bool) -> Any:
    """rms_norm of a float16/bfloat16 x: torch computes in float32 (CPU composite, CUDA kernel), y in x's dtype.

    A float32 weight goes to x's dtype on CUDA, whose fused kernel reads it in x's dtype. For a nested CUDA x under
    forward-mode AD and torch.func, the float32 kernel runs on a float32 copy instead: the half kernel's tangent
    there is float32 (torch 2.11).
    """
    dtype = x.dtype
    if (spec.mixed_params or not spec.is_trailing) and _compiling():
        return _rms_norm_traced(x, weight, spec)
    if not x.is_cpu:
        if _in_transform():
            return _rms_norm_half_via_float32(x, weight, spec, return_stats)
        if spec.mixed_params:
            weight = _as(weight, dtype)
    if not spec.is_trailing:
        y, rstd = _rms_norm_permuted(x, weight, spec)
    elif return_stats or spec.mixed_params:
        y, rstd = _fused_rms_norm(x, spec.normalized_shape, weight, spec.eps)
    else:
        y = _rms_norm(x, spec.normalized_shape, weight, spec.eps)
    if y.dtype is not dtype:  # CUDA autocast runs rms_norm in float32
        y = y.to(dtype=dtype)
    return (y, _stat(rstd, spec)) if return_stats else y


def _rms_norm_half_via_float32(x: torch.Tensor, weight: torch.Tensor | None, spec: NormSpec, return_stats: bool) -> Any:
    """Half rms_norm as torch's float32 kernel on a float32 copy of x, y cast back: tangents in x's dtype."""
    x32, weight = x.float(), _as(weight, torch.float32)
    if spec.is_trailing:
        y, rstd = _fused_rms_norm(x32, spec.normalized_shape, weight, spec.eps)
    else:
        y, rstd = _rms_norm_permuted(x32, weight, spec)
    y = y.to(dtype=x.dtype)
    return (y, rstd) if return_stats else y


def _rms_norm_permuted(
    x: torch.Tensor, weight: torch.Tensor | None, spec: NormSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """_fused_rms_norm over non-trailing axes: moved to the end by a permute, and moved back.

    On the CPU the moved x is made contiguous, as `rms_rows.forward`'s blocks make it: torch's composite sums a
    strided row in another order, so a batch large enough for the blocks gave its rows other bits than the same
    rows alone (the promise of batch invariance).
    """
    perm, inverse = spec.perm, spec.inverse_perm
    moved = x.permute(perm)
    if moved.is_cpu:
        moved = moved.contiguous()
    y, rstd = _fused_rms_norm(moved, spec.normalized_shape, weight, spec.eps)
    return y.permute(inverse), rstd.permute(inverse)


# ---------------------------------------------------------------------------------------------------------------
# Explicit backward


def layer_norm_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    spec: NormSpec,
    mean: torch.Tensor | None,
    rstd: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias) via torch's native_layer_norm_backward; dweight/dbias as if weight were ones.

    Half x: float32 throughout on the CPU (torch's half backward accumulates dweight/dbias in half precision);
    on CUDA the kernel accumulates in float32 and reads weight in x's dtype. Given mean and rstd that autograd
    records (returned for an x that requires grad), `_layer_norm_backward_formula`: torch has no derivative of its
    backward kernel for them (3.2x the kernel's time at (64, 768) float32; docs/spec.md, Backward). So too without
    them for an x that autograd records, on statistics from `statistics`: torch's derivative of its backward kernel
    in x goes through rstd**3, out of float32's range for rows of spread beyond 1e+-13 (NaN at 1e-14, eps = 0); and
    under forward-mode AD (`_forward_mode`), whose tangent of the kernel does too. In a torch.jit.trace too, whose
    tracer cannot record native_layer_norm_backward (its output mask, a bool[3]).
    """
    _refused(x, weight, dy, mean, rstd)
    dtype = x.dtype
    if _differentiated(x, mean, rstd) and not x.is_nested:
        if mean is None or rstd is None:
            mean, rstd = statistics.layer_norm_statistics(x, spec)
        return _layer_norm_backward_formula(dy, x, weight, spec, mean, rstd)
    if x.is_nested:
        mean, rstd = _packed_rows(mean), _packed_rows(rstd)
    if spec.compute_dtype != spec.dtype:
        if x.is_cpu:
            return _layer_norm_backward_half_cpu(dy, x, weight, spec, mean, rstd)
        weight = _as(weight, dtype)
    if weight is None:
        weight = _ones(spec, x, x.dtype)
    dy, x, mean, rstd = _normalized_last(spec, dy, x, *_kernel_stats(mean, rstd))
    if mean is None or rstd is None:
        _, mean, rstd = _native_layer_norm(x, spec.normalized_shape, weight, None, spec.eps)
    # The bias argument is only read for its dtype and shape, to allocate dbias: weight serves.
    dx, dweight, dbias = _native_layer_norm_backward(
        dy, x, spec.normalized_shape, mean, rstd, weight, weight, [True, True, True]
    )
    return _normalized_back(spec, dx).to(dtype=dtype), dweight.to(dtype=dtype), dbias.to(dtype=dtype)


def _differentiated(x: torch.Tensor, mean: torch.Tensor | None, rstd: torch.Tensor | None) -> bool:
    """Whether `layer_norm_backward` takes `_layer_norm_backward_formula`: its results may be differentiated.

    Autograd records the statistics given, or x when they are not; forward-mode AD runs (`_forward_mode`); or a
    torch.jit.trace records. Inline checks, not `_recorded`: 0.3 us a plain call less.
    """
    watched = x.requires_grad if mean is None or rstd is None else mean.requires_grad or rstd.requires_grad
    if (watched and _grad_enabled()) or _tracing_state() is not None:
        return True
    return _forward_mode()


def _layer_norm_backward_formula(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    spec: NormSpec,
    mean: torch.Tensor,
    rstd: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`layer_norm_backward` in plain ops in the compute dtype, differentiable in every input, mean and rstd too.

    (native_layer_norm_backward raises NotImplementedError when autograd differentiates it in mean or rstd.)
    """
    compute, axes, batch_axes = mean.dtype, spec.axes, spec.batch_axes
    xhat = (x.to(dtype=compute) - mean) * rstd
    dy_c = dy.to(dtype=compute)
    g = dy_c if weight is None else dy_c * weight.to(dtype=compute).reshape(_sizes(spec.param_shape))
    dx = rstd * (g - g.mean(axes, keepdim=True) - xhat * (g * xhat).mean(axes, keepdim=True))
    dweight, dbias = dy_c * xhat, dy_c
    if batch_axes:  # sum(()) would sum every axis
        dweight, dbias = dweight.sum(batch_axes), dbias.sum(batch_axes)
    else:  # dbias is dy_c, dy itself in the compute dtype: a copy, so that it shares no memory with dy
        dbias = dbias.clone()
    return dx.to(dtype=x.dtype), dweight.to(dtype=x.dtype), dbias.to(dtype=x.dtype)


def _layer_norm_backward_half_cpu(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    spec: NormSpec,
    mean: torch.Tensor | None,
    rstd: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`layer_norm_backward` of a half x on the CPU: the float32 gradients of `HalfLayerNormCPU`."""
    dtype = x.dtype
    dy, x, mean, rstd = _normalized_last(spec, dy, x, *_kernel_stats(mean, rstd))
    shape = _sizes(spec.normalized_shape)
    if mean is None or rstd is None:
        mean, rstd = half_cpu.statistics(x, shape, spec.eps)
    w32 = _ones(spec, x, torch.float32) if weight is None else weight.float()
    recorded = _recorded(dy, x, weight, mean, rstd)
    dx, dweight, dbias = half_cpu.backward_float32(dy, x, w32, mean, rstd, shape, (True, True, True), recorded)
    assert dx is not None and dweight is not None and dbias is not None
    return _normalized_back(spec, dx), dweight.to(dtype=dtype), dbias.to(dtype=dtype)


def rms_norm_backward(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, spec: NormSpec, rstd: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, dweight): torch's fused backward on CUDA, `rms_rows.gradients` on the CPU, `rms_rows.formula` elsewhere.

    On the CPU, x below `rms_rows.MIN_ELEMENTS` takes `rms_rows.formula` too, as autograd's backward does (fewer ops).

    `rms_rows.formula` also serves tensors that autograd records (`_recorded`), on any device: the gradients are
    then differentiable, as layer_norm's are (torch has no derivative of its fused rms_norm backward, and uses it
    itself only outside grad mode); nested (jagged) tensors, for which torch has no fused backward; and on the CPU
    a tensor subclass (a DTensor) and torch.func's wrappers (vmap: `scratch.usable_for`), and torch.compile traces
    (the blocks would pin the batch size); and torch.jit.trace, which records no fused backward (its bool[2] mask)
    and no blocks of the scratch.
    Without rstd, rstd is computed as the forward computes it (the same bits as ``return_stats`` gives).
    """
    _refused(x, weight, dy, rstd)
    if rstd is None:
        rstd = rms_norm(x, None, spec, True)[1]
    traced = _tracing_state() is not None
    if x.device.type == "cuda" and not x.is_nested and not traced and not _recorded(dy, x, weight, rstd):
        return _rms_norm_backward_fused(dy, x, weight, spec, rstd)
    if (
        x.is_cpu
        and not _compiling()  # first: a trace cannot call the query below, nor branch on sizes
        and not traced
        and x.numel() >= rms_rows.MIN_ELEMENTS
        and scratch.usable_for(x, dy)
        and not _recorded(dy, x, weight, rstd)
    ):
        dy, x, rstd = _normalized_last(spec, dy, x, rstd)
        dx, dweight = rms_rows.gradients(dy, x, weight, rstd, _sizes(spec.normalized_shape), (True, True))
        assert dx is not None and dweight is not None
        dx = _normalized_back(spec, dx)
    else:
        dx, dweight = rms_rows.formula(dy, x, weight, rstd, spec.axes)
    return dx, dweight.to(dtype=x.dtype)


def _rms_norm_backward_fused(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, spec: NormSpec, rstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`rms_rows.fused_gradients` over any axes; dweight also without a weight (as of a weight of ones)."""
    if weight is None:
        weight = _ones(spec, x, x.dtype)
    dy, x, rstd = _normalized_last(spec, dy, x, rstd)
    dx, dweight = rms_rows.fused_gradients(dy, x, weight, rstd, _sizes(spec.normalized_shape), (True, True))
    assert dx is not None and dweight is not None
    return _normalized_back(spec, dx), dweight


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def _refused(x: torch.Tensor, *others: torch.Tensor | None) -> None:
    """Raise the core's error for these arrays, if any: called before a backward function, and once a kernel failed.

    A sparse or MKLDNN tensor (`_require_dense`), or tensors on two devices where torch reports one (meta tensors
    beside CPU ones: the core compares devices only where a framework reports several, torch with CUDA).
    """
    _require_dense(x, *others)
    check_devices(device_of, x, others)


def _require_dense(*tensors: torch.Tensor | None) -> None:
    """DTypeError where a tensor is sparse or MKLDNN's; nested (jagged) ones pass (the core checks their axes).

    Their type is torch.Tensor, so the core's check by type cannot tell them; torch's kernels would fail on them
    with errors of their own. Called before the backend's own ops run (`_rms_norm_rows`, `to_numpy`), and by
    `_refused`: before the backward functions, and where a kernel refused a tensor.
    """
    for t in tensors:
        if t is not None and t.layout is not _STRIDED and not t.is_nested:
            raise not_dense_error(
                f"torch.Tensor of layout {t.layout}", "torch", str(t.layout), "the tensor's .to_dense()"
            )


def _recorded(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd records ops on these tensors: grad mode is on and one of them requires grad."""
    return _grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _normalized_last(spec: NormSpec, *tensors: Any) -> tuple[Any, ...]:
    """The tensors (None kept) with the normalized axes moved last: views, no copies."""
    if spec.is_trailing:
        return tensors
    perm = spec.perm
    return tuple(None if t is None else t.permute(perm) for t in tensors)


def _kernel_stats(*stats: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """Given statistics as native_layer_norm_backward reads them: contiguous, in x's layout.

    Its kernels index mean and rstd as one flat row-major array whatever their strides (a slice of saved
    statistics gave a wrong dx). The normalized axes are size 1 in them, so moving those last keeps them
    contiguous.
    """
    return tuple(None if s is None else s.contiguous() for s in stats)


def _packed_rows(stat: torch.Tensor | None) -> torch.Tensor | None:
    """A statistic of a nested x as the kernels take it: one row per packed row of x (its values)."""
    return stat.values() if stat is not None and stat.is_nested else stat


def _normalized_back(spec: NormSpec, tensor: torch.Tensor) -> torch.Tensor:
    """Undo `_normalized_last` for one tensor."""
    return tensor if spec.is_trailing else tensor.permute(spec.inverse_perm)


def _as(param: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if param is None else param.to(dtype=dtype)


def _ones(spec: NormSpec, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Ones of the normalized shape, as a parameter of x (`scratch.parameter_ones`)."""
    return scratch.parameter_ones(x, _sizes(spec.normalized_shape), dtype)


def _sizes(shape: tuple[int | None, ...]) -> tuple[int, ...]:
    """A spec shape as torch sizes (a tensor's shape is always known)."""
    return cast("tuple[int, ...]", shape)


def _stat(stat: torch.Tensor, spec: NormSpec) -> torch.Tensor:
    """A statistic in ``spec.compute_dtype`` (kernels that keep half statistics get them widened)."""
    dtype = _TORCH_DTYPES[spec.compute_dtype]
    return stat if stat.dtype == dtype else stat.to(dtype=dtype)
