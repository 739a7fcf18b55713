"""Nested jagged tensors (``torch.nested``, ``layout=torch.jagged``): sequences of different lengths in one tensor.

Over the feature axes, after the ragged one, the rows of every sequence normalize as the rows of the packed
values: forward, statistics (in x's nested layout) and gradients are checked against the float64 reference on
those rows, and so are the explicit backward functions. Normalizing over the ragged axis, or the batch axis
before it, is a ShapeError.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch_checks import check_layer_norm_grads, check_rms_norm_grads, f64  # noqa: E402

import layernorm  # noqa: E402
import layernorm.torch as layernorm_torch  # noqa: E402
from layernorm_core import check_forward, reference  # noqa: E402
from layernorm_core.tolerances import error_ratio, row_condition, tolerance  # noqa: E402

LENGTHS = (3, 130, 1)
FEATURES = 48
DTYPES = ["float32", "bfloat16"]


def _packed(dtype: str, seed: int) -> torch.Tensor:
    """The rows of all sequences, one after another."""
    rows = np.random.default_rng(seed).standard_normal((sum(LENGTHS), FEATURES)) * 2 + 1
    return torch.from_numpy(rows).to(getattr(torch, dtype))


def _nested(packed: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
    """``packed`` as a nested tensor of sequences of LENGTHS; with the offsets (and ragged size) of ``like``."""
    offsets = torch.tensor(np.cumsum((0, *LENGTHS))) if like is None else like.offsets()
    return torch.nested.nested_tensor_from_jagged(packed.clone(), offsets)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_feature_axis_matches_the_packed_rows(op: str, dtype: str) -> None:
    packed, dy = _packed(dtype, 0), _packed(dtype, 1)
    rng = np.random.default_rng(2)
    w, b = (torch.from_numpy(rng.standard_normal(FEATURES)).to(getattr(torch, dtype)).requires_grad_() for _ in "wb")
    x = _nested(packed).requires_grad_()
    if op == "layer_norm":
        y, *stats = layernorm.layer_norm(x, w, b, return_stats=True)
    else:
        y, *stats = layernorm.rms_norm(x, w, return_stats=True)
    assert y.is_nested and y.dtype == x.dtype and y.shape == x.shape
    spec = check_forward(op, packed, w, b if op == "layer_norm" else None, -1, 1e-5)
    params = (f64(w), f64(b)) if op == "layer_norm" else (f64(w),)
    expected_y, *expected_stats = getattr(reference, op)(f64(packed), *params, spec)
    cond = row_condition(f64(packed), spec) if op == "layer_norm" else 0.0
    assert error_ratio(f64(y.values()), expected_y, tolerance(dtype, "output"), cond) <= 1
    for stat, expected in zip(stats, expected_stats, strict=True):
        assert stat.is_nested and stat.shape == (len(LENGTHS), x.shape[1], 1) and stat.dtype == torch.float32
        np.testing.assert_allclose(f64(stat.values()), expected, rtol=1e-5, atol=1e-5)
    y.backward(_nested(dy, like=y))
    if op == "layer_norm":
        check_layer_norm_grads((x.grad.values(), w.grad, b.grad), packed, w, dy, -1, dtype)
    else:
        check_rms_norm_grads((x.grad.values(), w.grad), packed, w, dy, -1, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_statistics_keep_the_nested_layout_without_autograd(op: str, dtype: str) -> None:
    """No weight and no gradient: the kernels' own path (their statistics are those of the packed rows)."""
    packed = _packed(dtype, 5)
    y, *stats = getattr(layernorm, op)(_nested(packed), return_stats=True)
    spec = check_forward(op, packed, None, None, -1, 1e-5)
    params = (None, None) if op == "layer_norm" else (None,)
    expected_y, *expected_stats = getattr(reference, op)(f64(packed), *params, spec)
    assert error_ratio(f64(y.values()), expected_y, tolerance(dtype, "output"), row_condition(f64(packed), spec)) <= 1
    for stat, expected in zip(stats, expected_stats, strict=True):
        assert stat.is_nested and stat.shape == (len(LENGTHS), y.shape[1], 1) and stat.dtype == torch.float32
        np.testing.assert_allclose(f64(stat.values()), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_stats", [False, True], ids=["recomputed", "forward's stats"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_explicit_backward(op: str, dtype: str, with_stats: bool) -> None:
    packed, dy = _packed(dtype, 6), _packed(dtype, 7)
    w = torch.linspace(0.5, 1.5, FEATURES).to(getattr(torch, dtype))
    x = _nested(packed)
    names = ("mean", "rstd") if op == "layer_norm" else ("rstd",)
    stats = dict(zip(names, getattr(layernorm, op)(x, w, return_stats=True)[1:], strict=True)) if with_stats else {}
    grads = getattr(layernorm, f"{op}_backward")(_nested(dy, like=x), x, w, **stats)
    assert grads[0].is_nested
    check = check_layer_norm_grads if op == "layer_norm" else check_rms_norm_grads
    check((grads[0].values(), *grads[1:]), packed, w, dy, -1, dtype)


@pytest.mark.parametrize("module", ["LayerNorm", "RMSNorm"])
def test_modules_take_nested_tensors_as_torch_nn_does(module: str) -> None:
    x = _nested(_packed("float32", 3))
    ours, theirs = getattr(layernorm_torch, module)(FEATURES), getattr(torch.nn, module)(FEATURES, eps=1e-5)
    torch.testing.assert_close(ours(x).values(), theirs(x).values(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("axis", [(1, 2), 1, 0, (0, 2)])
def test_normalizing_over_the_ragged_axis_or_before_it_is_a_shape_error(axis: object) -> None:
    x = _nested(_packed("float32", 4))
    with pytest.raises(layernorm.ShapeError, match=r"axis 1 of x is ragged .* only the axes after it"):
        layernorm.layer_norm(x, axis=axis)
    with pytest.raises(layernorm.ShapeError, match=r"axis 1 of x is ragged"):
        layernorm.rms_norm(x, axis=axis)
