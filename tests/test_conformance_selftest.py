"""Self-test of the conformance suite: it passes a faithful backend and fails each deliberately broken one.

Each broken backend wraps the NumPy backend with one defect, is registered at run time through the registry's
plugin hook (as a third-party plugin would be), owns its own ndarray subclass (so calls reach it without a copy
at the framework boundary), and the suite is run in-process on a subset of its checks.
"""

from __future__ import annotations

import json
import re
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from registered_plugin import registered

from layernorm_core import BackendDeclaration, hookimpl, reference
from layernorm_core.registry import registry
from layernorm_core.spec import NormSpec, check_forward

Impl = Callable[..., Any]


def _numpy_backend() -> types.ModuleType:
    return registry.get("numpy")


def _sizes(shape: Any) -> list[int]:
    return [int(d) for d in shape]


def _plain(a: Any) -> Any:
    return None if a is None else np.asarray(a)


# --- the defects: each replaces one function of the NumPy backend --------------------------------------------


def _n_minus_1(base: types.ModuleType) -> dict[str, Impl]:
    """Unbiased variance (divides by N - 1), as np.var(ddof=1) or torch.var's default."""

    def layer_norm(x: Any, weight: Any, bias: Any, spec: NormSpec, return_stats: bool) -> Any:
        x64 = np.asarray(x, dtype=spec.compute_dtype)
        mean = x64.mean(axis=spec.axes, keepdims=True)
        n = int(np.prod(_sizes(spec.normalized_shape)))
        var = ((x64 - mean) ** 2).sum(axis=spec.axes, keepdims=True) / max(n - 1, 1)
        rstd = 1 / np.sqrt(var + spec.eps)
        y = _affine((x64 - mean) * rstd, weight, bias, spec, x.dtype)
        return (y, mean, rstd) if return_stats else y

    return {"layer_norm": layer_norm}


def _affine(xhat: Any, weight: Any, bias: Any, spec: NormSpec, dtype: Any) -> Any:
    """xhat * weight + bias, cast to the output dtype: the tail the hand-written defective forwards share."""
    if weight is not None:
        xhat = xhat * np.asarray(weight).reshape(spec.param_shape)
    if bias is not None:
        xhat = xhat + np.asarray(bias).reshape(spec.param_shape)
    return xhat.astype(dtype)


def _naive_variance(base: types.ModuleType) -> dict[str, Impl]:
    """Single-pass E[x^2] - E[x]^2 in the compute dtype (float32 for float32 x)."""

    def layer_norm(x: Any, weight: Any, bias: Any, spec: NormSpec, return_stats: bool) -> Any:
        xc = np.asarray(x, dtype=spec.compute_dtype)
        mean = xc.mean(axis=spec.axes, keepdims=True)
        var = np.maximum((xc * xc).mean(axis=spec.axes, keepdims=True) - mean * mean, 0)
        rstd = 1 / np.sqrt(var + spec.eps)
        y = _affine((xc - mean) * rstd, weight, bias, spec, x.dtype)
        return (y, mean, rstd) if return_stats else y

    return {"layer_norm": layer_norm}


def _running_sum(base: types.ModuleType) -> dict[str, Impl]:
    """rms_norm's mean of squares by one running sum in the compute dtype (np.cumsum), as a plain loop sums it."""

    def rms_norm(x: Any, weight: Any, spec: NormSpec, return_stats: bool) -> Any:
        xc = np.asarray(x, dtype=spec.compute_dtype)
        rows = xc.transpose(spec.perm).reshape(-1, int(np.prod(_sizes(spec.normalized_shape))))
        squares = np.cumsum(rows * rows, axis=1, dtype=spec.compute_dtype)[:, -1] / rows.shape[1]
        rstd = (1 / np.sqrt(squares + spec.eps)).reshape(spec.stats_shape)
        y = _affine(xc * rstd, weight, None, spec, x.dtype)
        return (y, rstd) if return_stats else y

    return {"rms_norm": rms_norm}


def _missing_eps(base: types.ModuleType) -> dict[str, Impl]:
    """Forgets eps in the forward (rstd = 1 / sqrt(var))."""

    def layer_norm(x: Any, weight: Any, bias: Any, spec: NormSpec, return_stats: bool) -> Any:
        return base.layer_norm(x, weight, bias, replace(spec, eps=0.0), return_stats)

    def rms_norm(x: Any, weight: Any, spec: NormSpec, return_stats: bool) -> Any:
        return base.rms_norm(x, weight, replace(spec, eps=0.0), return_stats)

    return {"layer_norm": layer_norm, "rms_norm": rms_norm}


def _wrong_dbias(base: types.ModuleType) -> dict[str, Impl]:
    """dbias averaged over the batch instead of summed."""

    def layer_norm_backward(dy: Any, x: Any, weight: Any, spec: NormSpec, mean: Any, rstd: Any) -> Any:
        dx, dweight, dbias = base.layer_norm_backward(dy, x, weight, spec, mean, rstd)
        rows = max(int(np.prod(_sizes(spec.shape[a] for a in spec.batch_axes))), 1)
        return dx, dweight, (dbias / rows).astype(dbias.dtype)

    return {"layer_norm_backward": layer_norm_backward}


def _modifies_input(base: types.ModuleType) -> dict[str, Impl]:
    """Centers x in place (saving a buffer) after computing the result."""

    def layer_norm(x: Any, weight: Any, bias: Any, spec: NormSpec, return_stats: bool) -> Any:
        y, mean, rstd = base.layer_norm(x, weight, bias, spec, True)
        if x.size:
            x -= mean.astype(x.dtype)
        return (y, mean, rstd) if return_stats else y

    return {"layer_norm": layer_norm}


def _reuses_output(base: types.ModuleType) -> dict[str, Impl]:
    """Hands out y in one buffer per shape and dtype, which the next call of that shape overwrites."""
    buffers: dict[tuple[Any, ...], Any] = {}

    def layer_norm(x: Any, weight: Any, bias: Any, spec: NormSpec, return_stats: bool) -> Any:
        y, mean, rstd = base.layer_norm(x, weight, bias, spec, True)
        kept = buffers.setdefault((y.shape, y.dtype.str), np.empty_like(y))
        kept[...] = y
        return (kept, mean, rstd) if return_stats else kept

    return {"layer_norm": layer_norm}


def _float32_output(base: types.ModuleType) -> dict[str, Impl]:
    """Returns y in the compute dtype: float32 for a float16 or bfloat16 x."""

    def layer_norm(x: Any, weight: Any, bias: Any, spec: NormSpec, return_stats: bool) -> Any:
        x32 = np.asarray(x, dtype=spec.compute_dtype)
        spec32 = check_forward("layer_norm", x32, _cast(weight, x32), _cast(bias, x32), spec.axes, spec.eps)
        return base.layer_norm(x32, _cast(weight, x32), _cast(bias, x32), spec32, return_stats)

    return {"layer_norm": layer_norm}


def _strided_float32_output(base: types.ModuleType) -> dict[str, Impl]:
    """Returns y in the compute dtype for a strided x only: a route of its own for views, as a copy-free kernel."""
    float32_output = _float32_output(base)["layer_norm"]

    def layer_norm(x: Any, weight: Any, bias: Any, spec: NormSpec, return_stats: bool) -> Any:
        route = base.layer_norm if np.asarray(x).flags.c_contiguous else float32_output
        return route(x, weight, bias, spec, return_stats)

    return {"layer_norm": layer_norm}


def _float32_grads(base: types.ModuleType) -> dict[str, Impl]:
    """Returns the explicit gradients in the compute dtype: float32 for a float16 or bfloat16 x."""

    def layer_norm_backward(dy: Any, x: Any, weight: Any, spec: NormSpec, mean: Any, rstd: Any) -> Any:
        x32, dy32 = np.asarray(x, dtype=spec.compute_dtype), np.asarray(dy, dtype=spec.compute_dtype)
        spec32 = check_forward("layer_norm", x32, _cast(weight, x32), None, spec.axes, spec.eps)
        return base.layer_norm_backward(dy32, x32, _cast(weight, x32), spec32, mean, rstd)

    return {"layer_norm_backward": layer_norm_backward}


def _modifies_nonfinite_input(base: types.ModuleType) -> dict[str, Impl]:
    """Replaces NaN and Inf in x in place (np.nan_to_num(copy=False)), then normalizes the finite values."""

    def layer_norm(x: Any, weight: Any, bias: Any, spec: NormSpec, return_stats: bool) -> Any:
        if x.size:
            np.nan_to_num(x, copy=False)
        return base.layer_norm(x, weight, bias, spec, return_stats)

    return {"layer_norm": layer_norm}


def _cast(a: Any, like: Any) -> Any:
    return None if a is None else np.asarray(a, dtype=like.dtype)


def _trailing_only(base: types.ModuleType) -> dict[str, Impl]:
    """Reshapes x to (-1, N) without moving the normalized axes last: right only for trailing axes."""

    def layer_norm(x: Any, weight: Any, bias: Any, spec: NormSpec, return_stats: bool) -> Any:
        if spec.is_trailing:
            return base.layer_norm(x, weight, bias, spec, return_stats)
        n = int(np.prod(_sizes(spec.normalized_shape)))
        rows = np.asarray(x).reshape(-1, n)
        w, b = (None if p is None else np.asarray(p).reshape(n) for p in (weight, bias))
        y, mean, rstd = base.layer_norm(rows, w, b, check_forward("layer_norm", rows, w, b, -1, spec.eps), True)
        y = y.reshape(x.shape)
        stats = (mean.reshape(spec.stats_shape), rstd.reshape(spec.stats_shape))
        return (y, *stats) if return_stats else y

    return {"layer_norm": layer_norm}


def _y_alone_drops_bias(base: types.ModuleType) -> dict[str, Impl]:
    """Forgets the bias on the route for y alone (``return_stats=False``); y with statistics is right."""

    def layer_norm(x: Any, weight: Any, bias: Any, spec: NormSpec, return_stats: bool) -> Any:
        return base.layer_norm(x, weight, bias if return_stats else None, spec, return_stats)

    return {"layer_norm": layer_norm}


def _mixed_weight_ignored(base: types.ModuleType) -> dict[str, Impl]:
    """The backward of a half x with a float32 weight runs as if there were no weight."""

    def layer_norm_backward(dy: Any, x: Any, weight: Any, spec: NormSpec, mean: Any, rstd: Any) -> Any:
        mixed = weight is not None and weight.dtype != x.dtype
        return base.layer_norm_backward(dy, x, None if mixed else weight, spec, mean, rstd)

    return {"layer_norm_backward": layer_norm_backward}


def _nonfinite_rows_zeroed(base: types.ModuleType) -> dict[str, Impl]:
    """A NaN guard: NaN and Inf in y become 0, so a poisoned row's y looks finite."""

    def layer_norm(x: Any, weight: Any, bias: Any, spec: NormSpec, return_stats: bool) -> Any:
        y, mean, rstd = base.layer_norm(x, weight, bias, spec, True)
        y = np.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0)
        return (y, mean, rstd) if return_stats else y

    return {"layer_norm": layer_norm}


def _rounded_toward_zero(base: types.ModuleType) -> dict[str, Impl]:
    """y rounded to x's half dtype toward 0 (within the tolerance's two units, but biased), not to nearest."""

    def layer_norm(x: Any, weight: Any, bias: Any, spec: NormSpec, return_stats: bool) -> Any:
        _, mean, rstd = base.layer_norm(x, weight, bias, spec, True)
        exact = reference.layer_norm(x, weight, bias, spec)[0]
        y = exact.astype(x.dtype)
        y = np.where(np.abs(y.astype(np.float64)) > np.abs(exact), np.nextafter(y, np.zeros_like(y)), y)
        return (y, mean, rstd) if return_stats else y

    return {"layer_norm": layer_norm}


def _rounds_float32_weight(base: types.ModuleType) -> dict[str, Impl]:
    """Rounds a half x's float32 weight to x's dtype in place (the half kernel reads it so), then normalizes."""

    def layer_norm(x: Any, weight: Any, bias: Any, spec: NormSpec, return_stats: bool) -> Any:
        if weight is not None and weight.dtype != x.dtype:
            weight[...] = weight.astype(x.dtype)
        return base.layer_norm(x, weight, bias, spec, return_stats)

    return {"layer_norm": layer_norm}


def _foreign_values_changed(base: types.ModuleType) -> dict[str, Impl]:
    """Imports a foreign array with wrong values (a scale and shift left over from some conversion)."""
    return {"from_foreign": lambda x: np.asarray(x) * 1.5 + 1}


def _foreign_array_modified(base: types.ModuleType) -> dict[str, Impl]:
    """Imports a foreign array by sharing its memory, then scales it in place (a normalization done early)."""

    def from_foreign(x: Any) -> Any:
        shared = np.asarray(x)
        shared *= 1.5
        return shared / 1.5

    return {"from_foreign": from_foreign}


def _faithful(base: types.ModuleType) -> dict[str, Impl]:
    """No defect: the control, which must pass."""
    return {}


DEFECTS: dict[str, tuple[Callable[[types.ModuleType], dict[str, Impl]], str, set[str]]] = {
    "n-minus-1": (_n_minus_1, "test_forward", {"float32"}),
    "naive-variance": (_naive_variance, "test_large_offset", {"float32"}),
    "running-sum": (_running_sum, "test_long_row", {"float32"}),
    "missing-eps": (_missing_eps, "test_eps", {"float32"}),
    "wrong-dbias": (_wrong_dbias, "test_backward", {"float32"}),
    "modifies-input": (_modifies_input, "test_inputs_unchanged", {"float32"}),
    "reuses-output": (_reuses_output, "test_results_outlive_later_calls", {"float32"}),
    "float32-output": (_float32_output, "test_output_contract", {"float16"}),
    "float32-grads": (_float32_grads, "test_output_contract", {"float16"}),
    "strided-float32-output": (_strided_float32_output, "test_noncontiguous", {"float16"}),
    "replaces-nan-in-place": (_modifies_nonfinite_input, "test_nonfinite_rows_isolated", {"float32"}),
    "trailing-only": (_trailing_only, "test_forward", {"float32"}),
    "y-alone-drops-bias": (_y_alone_drops_bias, "test_forward", {"float32"}),
    "mixed-weight-ignored": (_mixed_weight_ignored, "test_backward_float32_params", {"float16"}),
    "nonfinite-rows-zeroed": (_nonfinite_rows_zeroed, "test_nonfinite_rows_isolated", {"float32"}),
    "rounded-toward-zero": (_rounded_toward_zero, "test_half_output_is_rounded_to_nearest", {"float16"}),
    "rounds-float32-weight": (_rounds_float32_weight, "test_float32_params_unchanged", {"float16"}),
    "foreign-values-changed": (_foreign_values_changed, "test_foreign_arrays", {"float32"}),
    "foreign-array-modified": (_foreign_array_modified, "test_foreign_arrays", {"float32"}),
}
"""Defect name -> (its implementation, the check that must fail, dtypes where it must fail)."""

SUBSET = " or ".join(
    sorted({check for _, check, _ in DEFECTS.values()} | {"test_bad_input", "test_batch_invariance", "test_constant"})
)


# --- building and registering a broken backend ----------------------------------------------------------------


def _make_backend(name: str, defect: Callable[[types.ModuleType], dict[str, Impl]]) -> types.ModuleType:
    """A backend module owning an ndarray subclass of its own, delegating to NumPy except where ``defect`` says."""
    base = _numpy_backend()
    root = "layernorm_selftest_" + name.replace("-", "_")
    array_type = type(f"{root}_array", (np.ndarray,), {"__module__": root})
    overrides = defect(base)

    def wrap(out: Any) -> Any:
        if isinstance(out, tuple):
            return tuple(wrap(o) for o in out)
        return None if out is None else np.asarray(out).view(array_type)

    def delegate_foreign(from_foreign: Impl) -> Impl:
        return lambda x: np.asarray(from_foreign(x)).view(array_type)

    def delegate(fn_name: str) -> Impl:
        fn = overrides.get(fn_name) or getattr(base, fn_name)
        return lambda *args: wrap(fn(*(_plain(a) if isinstance(a, np.ndarray) else a for a in args)))

    module = types.ModuleType(root)
    module.info = base.info  # type: ignore[attr-defined]
    module.device_of = lambda x: "cpu"  # type: ignore[attr-defined]
    module.is_tracked = lambda x: False  # type: ignore[attr-defined]
    module.to_numpy = lambda x: np.array(x, copy=True).view(np.ndarray)  # type: ignore[attr-defined]
    module.from_numpy = lambda a, device="cpu": np.array(a, copy=True).view(array_type)  # type: ignore[attr-defined]
    module.from_foreign = delegate_foreign(overrides.get("from_foreign", np.asarray))  # type: ignore[attr-defined]
    for fn_name in ("layer_norm", "rms_norm", "layer_norm_backward", "rms_norm_backward"):
        setattr(module, fn_name, delegate(fn_name))
    sys.modules[root] = module
    return module


def _plugin(name: str, module: types.ModuleType) -> Any:
    class Plugin:
        @hookimpl
        def layernorm_backends(self) -> list[BackendDeclaration]:
            return [BackendDeclaration(name=name, implementation=module.__name__, array_modules=(module.__name__,))]

    return Plugin()


def run_suite(name: str, dtypes: set[str], tmp_path: Path, keyword: str = SUBSET) -> list[dict[str, Any]]:
    """Run the suite in-process on ``name`` for ``dtypes`` and the ``keyword`` checks; return its records."""
    out = tmp_path / f"{name}.json"
    args = ["-p", "layernorm_conformance", "--pyargs", "layernorm_conformance.checks", "--backend", name, "-q"]
    args += ["-p", "no:cacheprovider"]
    args += [f"--dtype={d}" for d in sorted(dtypes)] + ["-k", keyword, "--conformance-json", str(out)]
    args += ["-W", "ignore::RuntimeWarning", "--conformance-examples", "5"]
    pytest.main(args)
    return json.loads(out.read_text())["records"]


@pytest.fixture
def broken(request: pytest.FixtureRequest) -> Iterator[str]:
    """Register the backend named by the test's parameter for the duration of the test."""
    name: str = request.param
    module = _make_backend(name, DEFECTS[name][0] if name in DEFECTS else _faithful)
    try:
        with registered(_plugin(name, module), f"selftest-{name}"):
            yield name
    finally:
        sys.modules.pop(module.__name__, None)


@pytest.mark.parametrize("broken", sorted(DEFECTS), indirect=True)
def test_suite_fails_broken_backend(broken: str, tmp_path: Path) -> None:
    _, check, dtypes = DEFECTS[broken]
    records = run_suite(broken, dtypes, tmp_path)
    failed = {r["check"] for r in records if r["outcome"] == "failed"}
    assert check in failed, f"the suite did not catch {broken!r}: failed checks {sorted(failed)}"


@pytest.mark.parametrize("broken", ["faithful"], indirect=True)
def test_suite_passes_faithful_wrapper(broken: str, tmp_path: Path) -> None:
    records = run_suite(broken, {"float16", "float32"}, tmp_path)
    assert records, "no checks ran"
    failed = [r["id"] for r in records if r["outcome"] == "failed"]
    assert not failed, failed
    assert any(r["outcome"] == "passed" for r in records)


def test_reference_is_quiet_where_the_formula_gives_inf_and_nan() -> None:
    """eps = 0 on a constant row (rms_norm: a zero row): rstd inf, y and gradients NaN, no RuntimeWarning."""
    x = np.array([[3.0, 3.0, 3.0, 3.0], [0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 4.0, 8.0]])
    dy, ones = np.ones_like(x), np.ones((3, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ln = check_forward("layer_norm", x, None, None, -1, 0.0)
        rms = check_forward("rms_norm", x, None, None, -1, 0.0)
        y, mean, rstd = reference.layer_norm(x, None, None, ln)
        ry, rrstd = reference.rms_norm(x, None, rms)
        grads = [
            *reference.layer_norm_backward(dy, x, None, ln),
            *reference.rms_norm_backward(dy, x, None, rms),
            reference.statistics_backward(x, ln, ones, ones),
            reference.statistics_backward(x, rms, None, ones),
        ]
    assert np.isposinf(rstd[:2]).all() and np.isnan(y[:2]).all() and (mean[:2, 0] == [3.0, 0.0]).all()
    assert np.isposinf(rrstd[1]).all() and np.isnan(ry[1]).all() and np.isfinite(ry[[0, 2]]).all()
    assert np.isfinite(y[2]).all() and all(np.isfinite(g[2]).all() for g in (grads[0], grads[3], grads[5], grads[6]))


@pytest.mark.parametrize("size", [1e240, 1e-240, 1.0])
def test_tolerances_hold_results_far_from_one_to_their_own_size(size: float) -> None:
    """A result of about 1e240 or 1e-240 (rstd's gradient at rows of spread 1e-120 or 1e120) is judged against its
    own RMS: a 1% error fails float64's tolerance, one ulp passes. (Squared, its RMS overflowed to an infinite
    scale, or underflowed to 0, which fell back to 1: both passed any error.)"""
    from layernorm_core.tolerances import error_ratio, rms, tolerance

    expected = np.array([3.0, -4.0, 0.5]) * size
    assert rms(expected) == pytest.approx(size * np.sqrt((9 + 16 + 0.25) / 3), rel=1e-15)
    assert error_ratio(expected * 1.01, expected, tolerance("float64", "grad")) > 1
    assert error_ratio(np.nextafter(expected, np.inf), expected, tolerance("float64", "grad")) <= 1


def test_an_exact_result_passes_where_the_tolerance_underflows_to_zero() -> None:
    """float64 rms_norm of subnormal x: the allowed error underflows to 0, and an exact result read 0/0 = NaN,
    which failed; any other error there still fails."""
    from layernorm_core.tolerances import error_ratio, tolerance

    expected = np.array([5e-324, -1e-323, 0.0])
    assert error_ratio(expected, expected, tolerance("float64", "output")) == 0.0
    assert error_ratio(expected + np.array([5e-324, 0.0, 0.0]), expected, tolerance("float64", "output")) > 1


def test_results_of_more_than_32_axes_are_judged() -> None:
    """Results of a 40-axis x against its per-row condition: np.broadcast_shapes, which compared the shapes,
    raised RuntimeError beyond 32 axes, where every backend computes such an x."""
    from layernorm_core.tolerances import error_ratio, tolerance

    shape = [1] * 40
    shape[10], shape[39] = 5, 6
    expected = np.linspace(-2.0, 2.0, 30).reshape(shape)
    condition = np.ones([*shape[:39], 1])
    allowed = tolerance("float32", "output")
    assert error_ratio(expected, expected, allowed, condition) == 0.0
    assert error_ratio(expected[..., :1] * 1.5, expected[..., :1], allowed, condition) > 1
    assert error_ratio(np.ones((5, 6)), np.ones((5, 6)), allowed, condition) == 0.0  # dweight: the worst row's


def test_gradient_scale_reads_the_finite_terms() -> None:
    """A NaN row made the scale NaN, which error_ratio replaced by 1 whatever the other rows' size."""
    from layernorm_core.tolerances import gradient_scale

    x = np.array([[1.0, 2.0, 3.0], [np.nan, 0.0, 1.0]])
    spec = check_forward("layer_norm", x, None, None, -1, 1e-5)
    rstd = np.array([[1e6], [np.nan]])
    assert gradient_scale(np.ones_like(x), None, rstd, spec) == 1e6


@pytest.mark.parametrize("over", ["1.0004", "1.0000001"])
def test_a_failure_just_over_the_tolerance_does_not_read_as_one_times_it(over: str) -> None:
    """An error just over the tolerance fails, and its message says so (it read "error 1x the ... tolerance")."""
    from layernorm_conformance.numerics import Numerics

    expected = np.linspace(-2, 2, 64).reshape(4, 16)
    numerics = Numerics()
    unit = numerics.ratio("y", expected + 1e-3, expected, "float32") / 1e-3  # ratio per unit of error
    with pytest.raises(AssertionError, match=rf"y: error {re.escape(over)}\d*x the float32 output tolerance"):
        numerics.check({"y": expected + float(over) / unit}, {"y": expected}, "float32")


def test_suite_fails_autodiff_that_returns_float32_params_gradients_in_x_dtype(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A custom gradient that returns every gradient in x's dtype (a float16 dweight for a float32 weight, as an
    explicit backward gives it) is a defect TensorFlow lets through: a tape hands the weight a float16 gradient. The
    suite never differentiated a half x with float32 parameters, and never read an autodiff gradient's dtype."""
    pytest.importorskip("tensorflow")
    tf_backend = registry.get("tensorflow")
    cast_to = sys.modules["layernorm_tensorflow._math"].cast_to

    def in_x_dtype(x: Any, dx: Any, params: tuple[tuple[Any, Any], ...]) -> tuple[Any, ...]:
        return (cast_to(dx, x.dtype), *(cast_to(d, x.dtype) for p, d in params if p is not None))

    monkeypatch.setattr(tf_backend, "_input_grads", in_x_dtype)
    records = run_suite("tensorflow", {"float16"}, tmp_path, "test_autodiff_float32_params and layer_norm")
    failed = {r["check"] for r in records if r["outcome"] == "failed"}
    assert "test_autodiff_float32_params" in failed, f"failed checks {sorted(failed)}"
