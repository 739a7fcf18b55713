"""Argument checks and the validated description (`NormSpec`) every backend receives.

Every check lives here, so every backend raises the same error class with the same message, before it runs.
Checks are cached on the call's static signature (shapes, dtypes, axis, eps), so a repeated call costs one
dictionary lookup.
"""

from __future__ import annotations

import math
import numbers
import operator
import warnings
from dataclasses import dataclass
from typing import Any, Literal, cast

from layernorm_core.dtypes import FLOAT_DTYPES, compute_dtype, dtype_name
from layernorm_core.errors import ArgumentError, DTypeError, ShapeError
from layernorm_core.tracing import dynamo_tracing

Kind = Literal["layer_norm", "rms_norm"]
Axis = int | tuple[int, ...]
Shape = tuple[int | None, ...]


@dataclass(frozen=True, slots=True)
class NormSpec:
    """A validated normalization: what to reduce, in which dtypes. Shapes may hold None for unknown sizes."""

    kind: Kind
    shape: Shape
    axes: tuple[int, ...]
    """Normalized axes: non-negative, increasing."""
    dtype: str
    """x's dtype name; the output has it."""
    compute_dtype: str
    """Statistics dtype: float32 for half x, else x's dtype."""
    eps: float
    normalized_shape: Shape
    """Shape of weight and bias: x's sizes along ``axes``."""
    stats_shape: Shape
    """Shape of mean and rstd: x's shape with the normalized axes set to 1."""
    param_shape: Shape
    """weight reshaped to broadcast against x: 1 except along ``axes``."""
    batch_axes: tuple[int, ...]
    """The axes that are not normalized, increasing."""
    is_trailing: bool
    """True when ``axes`` are the last ``len(axes)`` axes of x."""
    perm: tuple[int, ...]
    """Permutation that moves the normalized axes to the end (batch axes first, order kept)."""
    inverse_perm: tuple[int, ...]
    """Permutation that undoes ``perm``."""
    mixed_params: bool = False
    """True when weight or bias is in the compute dtype while x is half (mixed precision)."""
    weak_params: bool = False
    """True when weight or bias is weakly typed (JAX's ``jnp.full(shape, 2.0)``) of a floating dtype the table
    refuses: it counts as x's dtype, as in JAX's own ops, and `strong_params` casts it to x's dtype."""

    @property
    def ndim(self) -> int:
        """Number of dimensions of x."""
        return len(self.shape)


_checked: dict[type, dict[tuple[Any, ...], NormSpec]] = {}
"""Signatures that passed, by x's array type."""
_CHECKED_MAX = 4096


def check_forward(
    kind: Kind, x: Any, weight: Any, bias: Any, axis: Axis, eps: float, tracing: bool | None = None
) -> NormSpec:
    """Validate a forward call and return its `NormSpec`; raise a `LayerNormError` subclass on bad input.

    A call whose signature (shapes, dtypes, axis, eps and their types) passed before is answered from a cache,
    except while torch.compile traces: a trace that read the cache would be invalidated by every later signature
    (a recompile each) and would pin symbolic sizes to the values of the keys it compared. ``tracing`` is
    `dynamo_tracing`'s answer when the caller has it already; None asks.
    """
    if tracing or (tracing is None and dynamo_tracing()):
        return _spec_of(kind, x, weight, bias, axis, eps)
    axis_type: Any = type(axis)
    if isinstance(axis, tuple):  # (0, True) == (0, 1.0) == (0, 1): element types keep invalid axes out of the cache
        axis_type = tuple(map(type, axis))
    try:
        key = (
            kind,
            x.shape,
            x.dtype,
            axis,
            axis_type,
            eps,
            type(eps),
            None if weight is None else weight.shape,
            None if weight is None else weight.dtype,
            None if bias is None else bias.shape,
            None if bias is None else bias.dtype,
        )
        return _checked[x.__class__][key]
    except (KeyError, TypeError, AttributeError):
        pass
    spec = _spec_of(kind, x, weight, bias, axis, eps)
    if not _hashed_by_value(axis) or spec.weak_params:  # the key does not tell a weak dtype from a strong one
        return spec
    try:
        checked = _checked.setdefault(x.__class__, {})
        if len(checked) >= _CHECKED_MAX:
            checked.clear()
        checked[key] = spec
    except (NameError, TypeError):  # no key (an attribute was missing) or an unhashable part (a list axis)
        pass
    return spec


def _hashed_by_value(axis: Any) -> bool:
    """Whether ``axis`` can key the cache: integers only.

    A 0-d integer tensor is an axis too (``__index__``), but it hashes by identity and can be filled in place: a
    cached key would answer for the axis it held before.
    """
    return all(isinstance(a, numbers.Integral) for a in (axis if isinstance(axis, tuple) else (axis,)))


def _spec_of(kind: Kind, x: Any, weight: Any, bias: Any, axis: Axis, eps: float) -> NormSpec:
    shape = _shape_of(x, "x")
    return _forward_spec(
        kind,
        shape,
        _ragged_axes(x, shape),
        _dtype_of(x),
        checked_axis(axis),
        _checked_eps(eps),
        None if weight is None else _shape_of(weight, "weight"),
        None if weight is None else _dtype_of(weight),
        None if bias is None else _shape_of(bias, "bias"),
        None if bias is None else _dtype_of(bias),
        (_is_weak(weight), _is_weak(bias)),
    )


def _is_weak(param: Any) -> bool:
    """Whether ``param`` is weakly typed: a JAX array or tracer of a Python scalar's kind, whose dtype gives way."""
    return getattr(param, "weak_type", False) is True


def strong_params(spec: NormSpec, x: Any, *params: Any) -> tuple[Any, ...]:
    """``params`` with each weakly typed one that the table refuses (``spec.weak_params``) cast to x's dtype.

    Only beside an x that has weak types itself (JAX's): a JAX weight beside a torch x stays as it is, and the
    dispatch refuses the mixed frameworks (a DTypeError).
    """
    if not hasattr(x, "weak_type"):
        return params
    return tuple(
        p.astype(x.dtype) if _is_weak(p) and dtype_name(p.dtype) not in (spec.dtype, spec.compute_dtype) else p
        for p in params
    )


def check_backward(
    kind: Kind,
    dy: Any,
    x: Any,
    weight: Any,
    axis: Axis,
    eps: float,
    mean: Any,
    rstd: Any,
    tracing: bool | None = None,
) -> NormSpec:
    """Validate a backward call (dy, and saved mean/rstd when given) and return the forward's `NormSpec`.

    ``tracing`` as for `check_forward`.
    """
    spec = check_forward(kind, x, weight, None, axis, eps, tracing)
    dy_shape = _shape_of(dy, "dy")
    if not _shapes_match(dy_shape, spec.shape):
        raise ShapeError(f"dy must have x's shape {_fmt(spec.shape)}; got {_fmt(dy_shape)}")
    dy_dtype = dtype_name(_dtype_of(dy))
    if dy_dtype != spec.dtype:
        raise DTypeError(f"dy must have x's dtype {spec.dtype}; got {dy_dtype}")
    if kind == "layer_norm" and (mean is None) != (rstd is None):
        raise ArgumentError("pass both mean and rstd, or neither")
    if kind == "rms_norm" and mean is not None:
        raise ArgumentError("rms_norm_backward takes rstd only, not mean")
    for stat_name, stat in (("mean", mean), ("rstd", rstd)):
        if stat is None:
            continue
        stat_shape = _shape_of(stat, stat_name)
        if not _shapes_match(stat_shape, spec.stats_shape):
            raise ShapeError(f"{stat_name} must have shape {_fmt(spec.stats_shape)}; got {_fmt(stat_shape)}")
        stat_dtype = dtype_name(_dtype_of(stat))
        if stat_dtype != spec.compute_dtype:
            raise DTypeError(f"{stat_name} must have dtype {spec.compute_dtype}; got {stat_dtype}")
    return spec


def normalize_axes(axis: Axis, ndim: int) -> tuple[int, ...]:
    """Return ``axis`` as increasing non-negative ints; ShapeError if empty, out of range or repeated.

    ``axis`` as `checked_axis` returns it: an int or a tuple of ints (anything else is a TypeError here).
    """
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    if not axes:
        raise ShapeError("axis must name at least one axis; got ()")
    normalized = []
    for a in map(operator.index, axes):  # a constant: torch.compile(dynamic=True) makes an int argument symbolic
        if not -ndim <= a < ndim:
            raise ShapeError(f"axis {a} is out of range for an array of {ndim} dimension(s)")
        normalized.append(a % ndim)
    if len(set(normalized)) != len(normalized):
        raise ShapeError(f"axis {axis} names the same axis more than once")
    return tuple(sorted(normalized))


def _forward_spec(
    kind: Kind,
    shape: Shape,
    ragged: tuple[int, ...],
    x_dtype: Any,
    axis: Axis,
    eps: float,
    weight_shape: Shape | None,
    weight_dtype: Any,
    bias_shape: Shape | None,
    bias_dtype: Any,
    weak: tuple[bool, bool],
) -> NormSpec:
    x_name = dtype_name(x_dtype)
    if x_name not in FLOAT_DTYPES:
        raise DTypeError(f"x must have a floating dtype ({', '.join(FLOAT_DTYPES)}); got {x_name}")
    stats_dtype = compute_dtype(x_name)
    if stats_dtype == "float32" and eps > _FLOAT32_MAX:
        raise ArgumentError(f"eps must be finite in float32, the compute dtype of a {x_name} x; got {eps!r}")
    axes = normalize_axes(axis, len(shape))
    if ragged and axes[0] <= ragged[-1]:
        raise ShapeError(
            f"axis {ragged[-1]} of x is ragged (its size differs from row to row: a nested tensor); only the axes "
            f"after it can be normalized; got axis={axis}"
        )
    normalized_shape = tuple(_constant_size(shape[a]) for a in axes)
    if 0 in normalized_shape:
        raise ShapeError(f"the normalized size is 0 (x has shape {_fmt(shape)}, axis={axis}): nothing to normalize")
    mixed_params = weak_params = False
    params = (("weight", weight_shape, weight_dtype, weak[0]), ("bias", bias_shape, bias_dtype, weak[1]))
    for param, param_shape, param_dtype, param_weak in params:
        if param_shape is None:
            continue
        param_shape = tuple(_constant_size(size) for size in param_shape)  # as x's, whose normalized sizes it holds
        if not _shapes_match(param_shape, normalized_shape):
            raise ShapeError(
                f"{param} must have shape {_fmt(normalized_shape)} (x's sizes along axis={axis}); "
                f"got {_fmt(param_shape)}"
            )
        param_name = dtype_name(param_dtype)
        if param_weak and param_name in FLOAT_DTYPES and param_name not in (x_name, stats_dtype):
            weak_params = True
            continue
        mixed_params = mixed_params or param_name != x_name
        if param_name not in (x_name, stats_dtype):
            allowed = x_name if x_name == stats_dtype else f"{x_name} or {stats_dtype}"
            raise DTypeError(f"{param} must have dtype {allowed} for a {x_name} x; got {param_name}")
    ndim = len(shape)
    axes_set = set(axes)
    batch_axes = tuple(d for d in range(ndim) if d not in axes_set)
    perm = batch_axes + axes
    return NormSpec(
        kind=kind,
        shape=shape,
        axes=axes,
        dtype=x_name,
        compute_dtype=stats_dtype,
        eps=eps,
        normalized_shape=normalized_shape,
        stats_shape=tuple(1 if d in axes_set else size for d, size in enumerate(shape)),
        param_shape=tuple(size if d in axes_set else 1 for d, size in enumerate(shape)),
        batch_axes=batch_axes,
        is_trailing=axes == tuple(range(ndim - len(axes), ndim)),
        perm=perm,
        inverse_perm=tuple(perm.index(d) for d in range(ndim)),
        mixed_params=mixed_params,
        weak_params=weak_params,
    )


def _constant_size(size: Any) -> Any:
    """A normalized size as a trace should hold it: torch.jit's traced sizes (0-d tensors) as ints.

    torch.nn.LayerNorm's normalized_shape is a constant, which the ONNX exporter's LayerNormalization needs (a traced
    one failed `torch.onnx.export(dynamo=False)` with dynamic axes). Every other size stays as it is: an int, a JAX
    symbolic size, TensorFlow's None, torch.compile's SymInt.
    """
    if isinstance(size, int) or getattr(size, "ndim", None) != 0:
        return size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's TracerWarning: the constant is meant
        return operator.index(size)


_FLOAT32_MAX = 3.4028234663852886e38
"""The largest finite float32: an eps above it is infinite in the compute dtype of float32 and half x."""


def _ragged_axes(x: Any, shape: Shape) -> tuple[int, ...]:
    """The axes of x whose size varies along its batch (ragged axes).

    torch's nested (jagged) tensors, the only arrays with such axes, report their sizes as symbols.
    """
    if not getattr(x, "is_nested", False):
        return ()
    return tuple(d for d, size in enumerate(shape) if not isinstance(size, int))


def _shape_of(array: Any, what: str) -> Shape:
    shape = getattr(array, "shape", None)
    if shape is None or not hasattr(array, "dtype"):
        raise DTypeError(f"{what} must be an array with .shape and .dtype; got {type(array).__name__}")
    if isinstance(shape, tuple):  # numpy, JAX, torch.Size
        return shape
    dims = getattr(shape, "dims", shape)  # tf.TensorShape: iterate its dims
    if dims is None:
        raise ShapeError(f"{what} must have a known number of dimensions")
    sizes = (getattr(d, "value", d) for d in dims)  # a tf Dimension holds its size (or None) in .value
    return tuple(None if d is None else int(d) for d in sizes)


def _dtype_of(array: Any) -> Any:
    return array.dtype


def checked_axis(axis: Any) -> Axis:
    """``axis`` as an int or a tuple of ints: any integer type (a NumPy int), a list; ArgumentError otherwise.

    Range and repeats are `normalize_axes`'s to check, against the array's rank.
    """
    if type(axis) is int:
        return axis
    if isinstance(axis, (tuple, list)):
        axes = tuple(_axis_int(a) for a in axis)
        if None not in axes:
            return cast(tuple[int, ...], axes)
    else:
        single = _axis_int(axis)
        if single is not None:
            return single
    raise ArgumentError(f"axis must be an int or a tuple of ints; got {axis!r}")


def _axis_int(a: Any) -> int | None:
    """``a`` as an int, or None where it is no integer (a bool, a float, a float or bool array).

    A wrong type raises nothing to be caught: under torch.compile, torch 2.11's dynamo turned such a TypeError
    into an InternalTorchDynamoError (a float axis from operator.index, a bool axis from a helper of ours).
    """
    if isinstance(a, int):
        return None if isinstance(a, bool) else a
    if not hasattr(type(a), "__index__"):
        return None
    if hasattr(a, "dtype") and (dtype_name(a.dtype) == "bool" or len(getattr(a, "shape", ())) != 0):
        return None  # torch's tensor(True) and tensor([1]) have an index: 1
    try:
        return operator.index(a)
    except (TypeError, AttributeError):  # a 0-d float array: __index__ raises (TensorFlow's: AttributeError)
        return None


def _checked_eps(eps: Any) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        hint = " (an array, or a traced value, is not: eps is fixed when a call is compiled)" if _is_array(eps) else ""
        raise ArgumentError(f"eps must be a real number{hint}; got {eps!r}")
    try:
        value = float(eps)
    except OverflowError:  # an int or Fraction beyond the float range
        value = math.inf
    if not 0 <= value < math.inf:  # also rejects NaN; comparisons trace where math.isfinite does not (SymFloat)
        raise ArgumentError(f"eps must be finite and >= 0; got {value!r}")
    return value


def _is_array(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def _shapes_match(got: Shape, expected: Shape) -> bool:
    if got == expected:  # the common case, without the generator below (0.5 µs)
        return True
    return len(got) == len(expected) and all(
        g is None or e is None or g == e for g, e in zip(got, expected, strict=True)
    )


def _fmt(shape: Shape) -> str:
    """A shape as a tuple's text; f-strings, which dynamo traces for symbolic sizes (it cannot trace str() of them)."""
    return "(" + ", ".join("?" if d is None else f"{d}" for d in shape) + ("," if len(shape) == 1 else "") + ")"
