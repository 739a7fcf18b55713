"""Running one normalization on a target through the public API, and the same on the float64 reference.

Inputs are NumPy arrays already rounded to the dtype under test; they reach the backend through its own
``from_numpy`` and results come back through its ``to_numpy``, so the reference sees exactly the backend's input.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

import layernorm
from layernorm_conformance.autodiff import vjp_for
from layernorm_conformance.data import Array, Case, cast, param_dtype, random_array
from layernorm_conformance.numerics import Numerics, bitwise_equal
from layernorm_conformance.targets import Target
from layernorm_core import reference
from layernorm_core.dtypes import compute_dtype, dtype_name
from layernorm_core.spec import NormSpec, check_forward
from layernorm_core.tolerances import (
    gradient_scale,
    mean_scale,
    row_condition,
    statistics_gradient_scale,
    xhat_units,
)

Op = Literal["layer_norm", "rms_norm"]
OPS: tuple[Op, ...] = ("layer_norm", "rms_norm")
Affine = Literal["none", "weight", "full"]
AFFINES: tuple[Affine, ...] = ("none", "weight", "full")
"""No parameters; weight only; weight and bias (weight only for rms_norm, which has no bias)."""


@dataclass(frozen=True)
class Problem:
    """One normalization to run: the op, its NumPy inputs (in the dtype under test), axis and eps."""

    op: Op
    x: Array
    weight: Array | None
    bias: Array | None
    axis: int | tuple[int, ...]
    eps: float

    @property
    def dtype(self) -> str:
        """The dtype name of x."""
        return str(self.x.dtype)

    @property
    def spec(self) -> NormSpec:
        """The core's validated description of this call."""
        return check_forward(self.op, self.x, self.weight, self.bias, self.axis, self.eps)

    def condition(self) -> npt.NDArray[np.float64]:
        """Per-row condition number (stats shape) for the tolerance's ``cond`` term."""
        return row_condition(self.x, self.spec)

    def scales(self, dy: Array | None = None) -> dict[str, float]:
        """The magnitude each result's atol is relative to, where it is not the result's own RMS.

        mean: the rows' spread (`layernorm_core.tolerances.mean_scale`). dx (with ``dy``): the size of the terms
        dx cancels (`layernorm_core.tolerances.gradient_scale`), not dx's own, possibly far smaller, size.
        """
        spec, rstd = self.spec, self.reference_rstd()
        out: dict[str, float] = {}
        if self.op == "layer_norm":
            out["mean"] = mean_scale(rstd)
        if dy is not None:
            out["dx"] = gradient_scale(dy, self.weight, rstd, spec)
        return out

    def units(self, dy: Array | None = None) -> dict[str, float]:
        """The cond term's magnitude for y and (with ``dy``) dweight, where it exceeds their own RMS.

        That is the size they would have were xhat of unit size (`layernorm_core.tolerances.xhat_units`).
        """
        return xhat_units(self.weight, dy, self.spec)

    def reference_rstd(self) -> npt.NDArray[np.float64]:
        """The float64 reference's rstd of x (stats shape)."""
        if self.op == "layer_norm":
            return reference.layer_norm(self.x, None, None, self.spec)[2]
        return reference.rms_norm(self.x, None, self.spec)[1]

    def with_x(self, x: Array) -> Problem:
        """The same problem on other x values."""
        return replace(self, x=x)


def make_problem(
    op: Op,
    case: Case,
    dtype: str,
    affine: Affine = "full",
    *,
    eps: float = 1e-5,
    mixed: bool = False,
    loc: float = 0.0,
    scale: float = 1.0,
    key: object = 0,
) -> Problem:
    """Seeded random inputs for ``case``: x ~ Normal(loc, scale); weight ~ 1 + Normal(0, 0.5); bias ~ Normal."""
    x = random_array(case.shape, dtype, "x", op, case, key, loc=loc, scale=scale)
    pshape = case.normalized_shape()
    pdtype = param_dtype(dtype, mixed)
    weight = None if affine == "none" else random_array(pshape, pdtype, "w", op, case, key, loc=1.0, scale=0.5)
    bias = None
    if affine == "full" and op == "layer_norm":
        bias = random_array(pshape, pdtype, "b", op, case, key)
    return Problem(op, x, weight, bias, case.axis, eps)


def to_target(target: Target, array: Array | None) -> Any:
    """A NumPy array as the target's array on its device (None stays None)."""
    return None if array is None else target.module.from_numpy(array, target.device)


def forward_native(target: Target, problem: Problem, return_stats: bool = True) -> Any:
    """Run the problem's forward on the target via the public API; returns the target's arrays."""
    x, weight, bias = (to_target(target, a) for a in (problem.x, problem.weight, problem.bias))
    return call_forward(target.backend, problem, x, weight, bias, return_stats)


def call_forward(backend: str, problem: Problem, x: Any, weight: Any, bias: Any, return_stats: bool) -> Any:
    """``layernorm.layer_norm`` or ``layernorm.rms_norm`` on arrays already in the backend's framework."""
    if problem.op == "layer_norm":
        return layernorm.layer_norm(
            x, weight, bias, axis=problem.axis, eps=problem.eps, return_stats=return_stats, backend=backend
        )
    return layernorm.rms_norm(x, weight, axis=problem.axis, eps=problem.eps, return_stats=return_stats, backend=backend)


def call_backward(backend: str, problem: Problem, dy: Any, x: Any, weight: Any, **stats: Any) -> Any:
    """``layernorm.layer_norm_backward`` or ``rms_norm_backward`` on arrays already in the backend's framework.

    ``stats``: the saved statistics by name (``mean`` and ``rstd``, or ``rstd``), or none.
    """
    common: dict[str, Any] = {"axis": problem.axis, "eps": problem.eps, "backend": backend}
    if problem.op == "layer_norm":
        return layernorm.layer_norm_backward(dy, x, weight, **stats, **common)
    return layernorm.rms_norm_backward(dy, x, weight, **stats, **common)


def stat_names(op: Op) -> tuple[str, ...]:
    """Names of the forward outputs with stats: (y, mean, rstd) or (y, rstd)."""
    return ("y", "mean", "rstd") if op == "layer_norm" else ("y", "rstd")


def grad_names(op: Op) -> tuple[str, ...]:
    """Names of the backward outputs: (dx, dweight, dbias) or (dx, dweight)."""
    return ("dx", "dweight", "dbias") if op == "layer_norm" else ("dx", "dweight")


def forward(target: Target, problem: Problem) -> dict[str, Array]:
    """The target's (y, mean, rstd) or (y, rstd) as host NumPy arrays, by name, each checked for its dtype."""
    return named_forward(target, problem, forward_native(target, problem, return_stats=True))


def forward_of_foreign(target: Target, problem: Problem) -> dict[str, Array]:
    """`forward` of the problem's arrays as a framework no backend owns holds them (`ForeignHostArray`).

    The call names the target's backend, so the core hands the arrays to it through its ``from_foreign``.
    """
    given = [None if a is None else a.copy() for a in (problem.x, problem.weight, problem.bias)]
    x, weight, bias = (None if a is None else ForeignHostArray(a) for a in given)
    results = named_forward(target, problem, call_forward(target.backend, problem, x, weight, bias, True))
    for name, before, after in zip(
        ("x", "weight", "bias"), (problem.x, problem.weight, problem.bias), given, strict=True
    ):
        assert before is None or bitwise_equal(before, after), f"the call modified the foreign {name}"
    return results


def named_forward(target: Target, problem: Problem, outputs: Any) -> dict[str, Array]:
    """The target's forward ``outputs`` (with statistics) as host NumPy arrays, by name, each checked for its dtype."""
    names = stat_names(problem.op)
    return _of_contract_dtypes(problem, {n: target.module.to_numpy(o) for n, o in zip(names, outputs, strict=True)})


class ForeignHostArray:
    """A host array of a framework no backend owns, as a third framework's CPU array offers itself.

    shape, dtype, the array protocol and DLPack (which NumPy refuses for bfloat16).
    """

    def __init__(self, values: Array) -> None:
        self.values = values
        self.shape, self.dtype = values.shape, values.dtype

    def __array__(self, dtype: Any = None, copy: Any = None) -> Array:
        values = self.values if dtype is None else self.values.astype(dtype)
        return values.copy() if copy and values is self.values else values

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self.values.__dlpack__(**kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU


def forward_y(target: Target, problem: Problem) -> dict[str, Array]:
    """The target's y alone (``return_stats=False``, a route of its own in some backends) as a host array."""
    y = forward_native(target, problem, return_stats=False)
    return _of_contract_dtypes(problem, {"y": target.module.to_numpy(y)})


def check_forward_problem(numerics: Numerics, target: Target, problem: Problem) -> None:
    """Check the target's forward with statistics, and its y alone, against the reference.

    A backend may take another route for y alone (no statistics to return).
    """
    expected = reference_forward(problem)
    condition, scales, units = problem.condition(), problem.scales(), problem.units()
    numerics.check(forward(target, problem), expected, problem.dtype, condition, scales=scales, units=units)
    y_alone = forward_y(target, problem)
    numerics.check(
        y_alone, {"y": expected["y"]}, problem.dtype, condition, scales=scales, units=units, label="y alone: "
    )


def check_forward_values(numerics: Numerics, target: Target, problem: Problem) -> None:
    """Check the target's forward (`forward`) of ``problem`` against the reference: y and the statistics."""
    numerics.check(
        forward(target, problem),
        reference_forward(problem),
        problem.dtype,
        problem.condition(),
        scales=problem.scales(),
        units=problem.units(),
    )


def check_backward_problem(
    numerics: Numerics,
    target: Target,
    problem: Problem,
    saved_stats: bool = False,
    given_stats: Mapping[str, Array] | None = None,
) -> None:
    """Check the target's explicit backward (`backward`) of ``problem``, given a seeded dy, against the reference.

    ``given_stats``: a caller's statistics by name (`callers_statistics`), handed to both.
    """
    dy = make_dy(problem)
    actual = backward(target, problem, dy, saved_stats, given_stats)
    expected = reference_backward(problem, dy, given_stats)
    numerics.check(
        actual, expected, problem.dtype, problem.condition(), scales=problem.scales(dy), units=problem.units(dy)
    )


def _of_contract_dtypes(problem: Problem, results: dict[str, Array]) -> dict[str, Array]:
    """``results`` (host arrays by name), after asserting that each has the dtype docs/spec.md gives it.

    y and the explicit gradients have x's dtype, whatever the parameters' (float32 ones for a half x among them);
    mean and rstd the compute dtype.
    """
    for name, result in results.items():
        expected = compute_dtype(problem.dtype) if name in ("mean", "rstd") else problem.dtype
        assert dtype_name(result.dtype) == expected, f"{name} is {dtype_name(result.dtype)}; the spec says {expected}"
    return results


def reference_forward(problem: Problem) -> dict[str, npt.NDArray[np.float64]]:
    """The float64 reference of `forward`."""
    spec = problem.spec
    if problem.op == "layer_norm":
        outputs: tuple[Any, ...] = reference.layer_norm(problem.x, problem.weight, problem.bias, spec)
    else:
        outputs = reference.rms_norm(problem.x, problem.weight, spec)
    return dict(zip(stat_names(problem.op), outputs, strict=True))


def make_dy(problem: Problem, key: object = 0) -> Array:
    """A seeded output gradient with x's shape and dtype."""
    return random_array(problem.x.shape, problem.dtype, "dy", problem.op, key)


def backward(
    target: Target, problem: Problem, dy: Array, saved_stats: bool, given_stats: Mapping[str, Array] | None = None
) -> dict[str, Array]:
    """The explicit ``*_backward`` on the target.

    With ``saved_stats`` it gets mean/rstd from its own forward, with ``given_stats`` those host arrays (a caller's).
    """
    to = target.module
    x, weight, dy_t = (to_target(target, a) for a in (problem.x, problem.weight, dy))
    stats: dict[str, Any] = {name: to_target(target, value) for name, value in (given_stats or {}).items()}
    if saved_stats:
        _, *saved = call_forward(target.backend, problem, x, weight, None, True)
        stats = dict(zip(stat_names(problem.op)[1:], saved, strict=True))
    grads = call_backward(target.backend, problem, dy_t, x, weight, **stats)
    return _of_contract_dtypes(
        problem, {name: to.to_numpy(g) for name, g in zip(grad_names(problem.op), grads, strict=True)}
    )


def autodiff_backward(target: Target, problem: Problem, dy: Array) -> dict[str, Array] | None:
    """The gradients of ``sum(y * dy)`` that the target's framework autodiff gives (None: it has no hook here).

    Named as `backward` names them; only those that reached an input (no bias gradient without a bias), each
    asserted to have its input's dtype.
    """
    x, weight, bias, dy_t = (to_target(target, a) for a in (problem.x, problem.weight, problem.bias, dy))
    vjp = vjp_for(x)
    if vjp is None:
        return None

    def fn(x: Any, weight: Any, bias: Any) -> Any:
        return call_forward(target.backend, problem, x, weight, bias, False)

    grads = vjp(fn, [x, weight, bias], dy_t)
    names = grad_names(problem.op)
    actual = {n: target.module.to_numpy(g) for n, g in zip(names, grads, strict=False) if g is not None}
    inputs = dict(zip(names, (problem.x, problem.weight, problem.bias), strict=False))
    for name, grad in actual.items():
        expected = dtype_name(inputs[name].dtype)
        assert dtype_name(grad.dtype) == expected, f"{name} is {dtype_name(grad.dtype)}; its input is {expected}"
    return actual


def check_autodiff_problem(numerics: Numerics, target: Target, problem: Problem) -> None:
    """Check the gradients of ``problem`` through the target's framework autodiff against the reference.

    Each gradient has its input's dtype (`autodiff_backward`), as the frameworks' own gradients do: a float32
    weight's is float32 beside a half x.
    """
    dy = make_dy(problem)
    actual = autodiff_backward(target, problem, dy)
    assert actual is not None
    expected = {n: v for n, v in reference_backward(problem, dy).items() if n in actual}
    assert "dx" in actual, "no gradient reached x"
    if problem.weight is not None:
        assert "dweight" in actual, "no gradient reached weight"
    numerics.check(
        actual, expected, problem.dtype, problem.condition(), scales=problem.scales(dy), units=problem.units(dy)
    )


def check_statistics_autodiff(numerics: Numerics, target: Target, problem: Problem, stat: str) -> None:
    """Check that a loss on a returned statistic (mean or rstd) sends the reference's gradient to x.

    Through the framework's autodiff (the target needs a gradient hook, `vjp_for`), against
    `reference.statistics_backward`, with atol and cond relative to `statistics_gradient_scale`.
    """
    spec = problem.spec
    index = stat_names(problem.op).index(stat)
    stats_shape = tuple(1 if d in spec.axes else size for d, size in enumerate(np.shape(problem.x)))
    dstat = random_array(stats_shape, compute_dtype(spec.dtype), "dstat", problem.op, stat)
    x, weight, bias = (to_target(target, a) for a in (problem.x, problem.weight, problem.bias))
    vjp = vjp_for(x)
    assert vjp is not None

    def fn(x: Any, weight: Any, bias: Any) -> Any:
        return call_forward(target.backend, problem, x, weight, bias, True)[index]

    dx = vjp(fn, [x, weight, bias], to_target(target, dstat))[0]
    assert dx is not None, f"no gradient reached x from {stat}"
    dx_dtype = dtype_name(dx.dtype)
    assert dx_dtype == spec.dtype, f"dx is {dx_dtype}; x is {spec.dtype}"
    expected = reference.statistics_backward(
        problem.x, spec, dstat if stat == "mean" else None, dstat if stat == "rstd" else None
    )
    scale = statistics_gradient_scale(dstat, problem.reference_rstd(), spec, stat)
    numerics.check(
        {"dx": target.module.to_numpy(dx)}, {"dx": expected}, spec.dtype, problem.condition(), scales={"dx": scale}
    )


def reference_backward(
    problem: Problem, dy: Array, given_stats: Mapping[str, Array] | None = None
) -> dict[str, npt.NDArray[np.float64]]:
    """The float64 reference of `backward` (dweight/dbias as for a weight of ones when weight is None).

    At ``given_stats`` where given.
    """
    stats = dict(given_stats or {})
    if problem.op == "layer_norm":
        outputs: tuple[Any, ...] = reference.layer_norm_backward(dy, problem.x, problem.weight, problem.spec, **stats)
    else:
        outputs = reference.rms_norm_backward(dy, problem.x, problem.weight, problem.spec, **stats)
    return dict(zip(grad_names(problem.op), outputs, strict=True))


def callers_statistics(problem: Problem) -> dict[str, Array]:
    """Statistics that are not x's own, in the compute dtype, by name.

    The mean moved by a quarter of each row's spread and rstd 1.5 times x's (rms_norm: rstd alone). In a row of one
    element x - mean is then not 0.
    """
    compute = np.dtype(problem.spec.compute_dtype)
    rstd = problem.reference_rstd()
    stats = {"rstd": (1.5 * rstd).astype(compute)}
    if problem.op == "layer_norm":
        mean = reference.layer_norm(problem.x, None, None, problem.spec)[1]
        stats["mean"] = (mean + 0.25 / rstd).astype(compute)
    return stats


def poison(x: Array, rows: dict[int, float]) -> Array:
    """A copy of x (rows along axis 0) with one element of each listed row set to the given NaN/Inf value."""
    out = x.copy()
    for row, value in rows.items():
        out[(row,) + (0,) * (x.ndim - 1)] = cast(value, str(x.dtype))
    return out
