"""Drop-in ``torch.nn`` modules: `LayerNorm` and `RMSNorm`, with torch's parameters and state_dict keys, plus ``axis``.

An existing ``torch.nn.LayerNorm`` / ``torch.nn.RMSNorm`` checkpoint loads unchanged (keys ``weight`` and
``bias``). ``axis`` normalizes any axes (channels-first, non-adjacent) instead of the trailing ones. They run on
layernorm's torch backend whatever `layernorm.use` or `layernorm.using` named for plain calls.

>>> import torch, layernorm.torch
>>> norm = layernorm.torch.LayerNorm(4)
>>> norm.load_state_dict(torch.nn.LayerNorm(4).state_dict())
<All keys matched successfully>
>>> norm(torch.ones(2, 4)).shape
torch.Size([2, 4])
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Sequence

from layernorm_core.errors import missing_framework_error, type_name

try:
    import torch
    from torch import nn
except ImportError as exc:
    raise missing_framework_error("layernorm.torch", "torch", exc, "pip install 'layernorm[torch]'") from exc

import layernorm
from layernorm.errors import BackendError, DTypeError, ShapeError
from layernorm_core.dtypes import FLOAT_DTYPES, compute_dtype, dtype_name, param_dtype_for
from layernorm_core.spec import Kind, check_forward, checked_axis

Axis = int | tuple[int, ...]

_COMPUTE_EPSILON = {getattr(torch, name): torch.finfo(getattr(torch, compute_dtype(name))).eps for name in FLOAT_DTYPES}
"""x's dtype -> the machine epsilon of its compute dtype (the core's rule, which torch's kernels follow): `RMSNorm`'s
eps when it is None. Its keys are the dtypes the core takes for x (not float8 or float4, which torch calls floating)."""


def _shape_and_axis(normalized_shape: int | Sequence[int], axis: Axis | None) -> tuple[tuple[int, ...], Axis]:
    """normalized_shape as a tuple of Python ints, and the axes it lies along: the trailing ones unless ``axis`` given.

    Python ints, not the NumPy or torch integer scalars it may hold: torch.compile holds those as values it cannot
    compare with x's sizes. One axis stays an int (-1 by default): the core checks an int axis faster than a tuple
    (0.13 µs a call).
    """
    if isinstance(normalized_shape, numbers.Integral):
        shape: tuple[int, ...] = (int(normalized_shape),)
    else:
        shape = tuple(operator.index(size) for size in normalized_shape)  # type: ignore[union-attr]
    if axis is None:
        return shape, -1 if len(shape) == 1 else tuple(range(-len(shape), 0))
    checked = checked_axis(axis)
    axes = (checked,) if isinstance(checked, int) else checked
    if len(axes) != len(shape):
        raise ShapeError(f"axis {axis} names {len(axes)} axes but normalized_shape {shape} has {len(shape)}")
    return shape, axes[0] if len(axes) == 1 else axes


def _module_layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    normalized_shape: tuple[int, ...],
    axis: Axis,
    eps: float,
) -> torch.Tensor:
    """`LayerNorm`'s forward: ``layernorm.layer_norm``, x checked against ``normalized_shape`` as torch.nn's is.

    A function, not a method, so torch.fx.symbolic_trace records it as one node (``torch.fx.wrap`` below): FX
    would otherwise trace into layernorm's checks, which read x's sizes.
    """
    _require_tensor(x, "LayerNorm")
    if weight is None and bias is None:
        _require_normalized_shape("layer_norm", x, normalized_shape, axis, eps)
        return layernorm.layer_norm(x, None, None, axis=axis, eps=eps, backend="torch")
    try:
        return layernorm.layer_norm(x, weight, bias, axis=axis, eps=eps, backend="torch")
    except ShapeError as error:
        blamed = _blame_x("layer_norm", x, normalized_shape, axis, eps) or error
    raise blamed  # outside the handler: no chained context, and no `from None` (torch 2.11's dynamo cannot set it)


def _module_rms_norm(
    x: torch.Tensor, weight: torch.Tensor | None, normalized_shape: tuple[int, ...], axis: Axis, eps: float | None
) -> torch.Tensor:
    """`RMSNorm`'s forward, as `_module_layer_norm`; eps None is `_COMPUTE_EPSILON` of x's dtype.

    A weight of a dtype the core refuses for x (a float32 x, a bfloat16 weight) is cast to the one it takes
    (`param_dtype_for`): torch.nn.RMSNorm takes any floating weight and returns x's dtype.
    """
    _require_tensor(x, "RMSNorm")
    if eps is None:
        eps = _COMPUTE_EPSILON.get(x.dtype, 0.0)  # 0.0: the core rejects x
    if weight is None:
        _require_normalized_shape("rms_norm", x, normalized_shape, axis, eps)
        return layernorm.rms_norm(x, None, axis=axis, eps=eps, backend="torch")
    # x.dtype in _COMPUTE_EPSILON: an x of another dtype (float8) is the core's DTypeError, before any cast.
    if weight.dtype is not x.dtype and weight.is_floating_point() and x.dtype in _COMPUTE_EPSILON:
        weight = weight.to(dtype=getattr(torch, param_dtype_for(dtype_name(x.dtype), dtype_name(weight.dtype))))
    try:
        return layernorm.rms_norm(x, weight, axis=axis, eps=eps, backend="torch")
    except ShapeError as error:
        blamed = _blame_x("rms_norm", x, normalized_shape, axis, eps) or error
    raise blamed  # outside the handler: no chained context, and no `from None` (torch 2.11's dynamo cannot set it)


torch.fx.wrap("_module_layer_norm")
torch.fx.wrap("_module_rms_norm")


def _require_tensor(x: object, module: str) -> None:
    """DTypeError unless x is a torch.Tensor, as torch.nn's modules require (with or without parameters).

    The functions would take another framework's x and return that type; a module's parameters are tensors.
    """
    if not isinstance(x, torch.Tensor):
        raise DTypeError(f"layernorm.torch.{module} takes a torch.Tensor; got {type_name(type(x))}")


def _require_normalized_shape(
    kind: Kind, x: torch.Tensor, normalized_shape: tuple[int, ...], axis: Axis, eps: float
) -> None:
    """ShapeError unless x's sizes along ``axis`` are ``normalized_shape``, as torch.nn's modules require.

    Before the call for modules without parameters (``elementwise_affine=False``); for modules with them the
    core checks weight's shape against x, and `_blame_x` calls this only after the core raised. x's own errors
    (an axis out of range, a ragged axis, an integer dtype) come first, as the core words them.
    """
    shape = x.shape
    if isinstance(axis, int) and -len(shape) <= axis < len(shape) and (shape[axis],) == normalized_shape:
        return  # read off x's shape: 0.2 us a call, against 0.4 us through the core's check below
    spec = check_forward(kind, x, None, None, axis, eps)
    if spec.normalized_shape != normalized_shape:
        raise ShapeError(
            f"x's sizes along axis={axis} must be the module's normalized_shape {normalized_shape}; "
            f"got {tuple(spec.normalized_shape)} (x has shape {tuple(x.shape)})"
        )


def _blame_x(
    kind: Kind, x: torch.Tensor, normalized_shape: tuple[int, ...], axis: Axis, eps: float
) -> ShapeError | None:
    """The ShapeError that names x when x's sizes along ``axis`` are not ``normalized_shape``, else None.

    For a module with parameters whose call raised a ShapeError: the core words a wrong x as a weight that does
    not fit it ("weight must have shape (5,) ...; got (4,)"). Only on that error path, so a call that succeeds
    pays nothing.
    """
    try:
        _require_normalized_shape(kind, x, normalized_shape, axis, eps)
    except ShapeError as error:
        return error
    return None


class _Norm(nn.Module):
    """What both modules share: torch.jit.script refused with a clear error."""

    normalized_shape: tuple[int, ...]
    axis: Axis

    def __prepare_scriptable__(self) -> nn.Module:
        """Raise BackendError: torch.jit.script calls this on every submodule before it compiles a model.

        TorchScript compiles Python source, and layernorm's dispatch is Python it cannot compile; its own error
        would point at a keyword-only argument of `layernorm.layer_norm`.
        """
        name = type(self).__name__
        raise BackendError(
            f"layernorm.torch.{name} cannot be compiled by torch.jit.script (TorchScript cannot compile layernorm's "
            f"Python dispatch): use torch.compile or torch.export, which trace it, or torch.nn.{name} in a "
            "TorchScript model"
        )


class LayerNorm(_Norm):
    """Layer normalization over ``axis`` (default: the last ``len(normalized_shape)`` axes), as torch.nn.LayerNorm.

    Args:
        normalized_shape: x's sizes along the normalized axes (an int for one axis), in increasing axis order.
        eps: added to the (biased) variance.
        elementwise_affine: learn ``weight`` (ones) and ``bias`` (zeros) of shape ``normalized_shape``.
        bias: with ``elementwise_affine``, also learn ``bias``.
        device, dtype: of the parameters.
        axis: the normalized axes, an int, or a tuple or list of ints (e.g. ``axis=1`` for NCHW channels); its length
            must equal ``len(normalized_shape)``.

    Shapes: input any shape with ``normalized_shape`` along ``axis``; output the input's shape and dtype.
    Dtypes: x float16, bfloat16, float32 or float64; the parameters in x's dtype, or float32 for a half x (as the
    functions take them: nothing is cast, so a module of another ``dtype`` than x's is refused).

    Raises:
        ShapeError: ``axis`` and ``normalized_shape`` disagree (at construction), or x does not fit them.
        DTypeError: x not a torch.Tensor; x not float16, bfloat16, float32 or float64 (int, bool, complex, float8);
            parameters of a dtype refused for x (a ``dtype=torch.bfloat16`` module called on float32 x, where
            torch.nn.LayerNorm raises RuntimeError).
        ArgumentError: ``eps`` negative, NaN or infinite; ``axis`` not an int or a tuple or list of ints.
        DeviceError: the parameters on another device than x.

    Example:
        >>> import torch, layernorm.torch
        >>> norm = layernorm.torch.LayerNorm(3, axis=1)  # channels-first
        >>> norm(torch.randn(2, 3, 5, 5)).shape
        torch.Size([2, 3, 5, 5])

    """

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        axis: Axis | None = None,
    ) -> None:
        super().__init__()
        self.normalized_shape, self.axis = _shape_and_axis(normalized_shape, axis)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        factory = {"device": device, "dtype": dtype}
        if elementwise_affine:
            self.weight = nn.Parameter(torch.empty(self.normalized_shape, **factory))  # type: ignore[arg-type]
            if bias:
                self.bias = nn.Parameter(torch.empty(self.normalized_shape, **factory))  # type: ignore[arg-type]
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Set weight to ones and bias to zeros, as torch.nn.LayerNorm does."""
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # torch.nn.LayerNorm's name: norm(input=x) works
        """Normalize input over ``axis``: ``layernorm.layer_norm(input, weight, bias, axis=axis, eps=eps)``."""
        return _module_layer_norm(input, self.weight, self.bias, self.normalized_shape, self.axis, self.eps)

    def extra_repr(self) -> str:
        """The constructor arguments, as the installed torch.nn.LayerNorm prints them (2.13 added bias), plus axis."""
        torch_repr = torch.nn.LayerNorm.extra_repr(self)  # type: ignore[arg-type]  # reads attributes both have
        return f"{torch_repr}, axis={self.axis}"


class RMSNorm(_Norm):
    """RMS normalization over ``axis`` (default: the last ``len(normalized_shape)`` axes), as torch.nn.RMSNorm.

    ``y = x / sqrt(mean(x**2) + eps) * weight``. ``eps=None`` uses the machine epsilon of the dtype torch's kernels
    compute in, as torch.nn.RMSNorm does: float32's for float16/bfloat16 x (not x's own, 8192 times larger for
    float16 and 65536 times for bfloat16), else x's.
    Arguments as `LayerNorm` (there is no bias); the state_dict holds ``weight`` only.

    Shapes: as `LayerNorm`. Dtypes: x float16, bfloat16, float32 or float64; the output has x's dtype whatever the
    weight's, as torch.nn.RMSNorm's: unlike `LayerNorm`, a weight of another floating dtype is cast, to x's dtype,
    or to float32 for a half x (a ``dtype=torch.bfloat16`` module runs on float32 x with its weight in float32).

    Raises:
        ShapeError: ``axis`` and ``normalized_shape`` disagree (at construction), or x does not fit them.
        DTypeError: x not a torch.Tensor; x not float16, bfloat16, float32 or float64 (int, bool, complex, float8).
        ArgumentError: ``eps`` negative, NaN or infinite; ``axis`` not an int or a tuple or list of ints.
        DeviceError: the weight on another device than x.

    Example:
        >>> import torch, layernorm.torch
        >>> norm = layernorm.torch.RMSNorm([4])
        >>> norm.load_state_dict(torch.nn.RMSNorm([4]).state_dict())
        <All keys matched successfully>

    """

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float | None = None,
        elementwise_affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        axis: Axis | None = None,
    ) -> None:
        super().__init__()
        self.normalized_shape, self.axis = _shape_and_axis(normalized_shape, axis)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = nn.Parameter(torch.empty(self.normalized_shape, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Set weight to ones, as torch.nn.RMSNorm does."""
        if self.weight is not None:
            nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize x over ``axis``: ``layernorm.rms_norm(x, weight, axis=axis, eps=eps)``."""
        return _module_rms_norm(x, self.weight, self.normalized_shape, self.axis, self.eps)

    def extra_repr(self) -> str:
        """The constructor arguments, as the installed torch.nn.RMSNorm prints them, plus axis."""
        torch_repr = torch.nn.RMSNorm.extra_repr(self)  # type: ignore[arg-type]  # reads attributes both have
        return f"{torch_repr}, axis={self.axis}"


__all__ = ["LayerNorm", "RMSNorm"]
