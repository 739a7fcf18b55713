"""PyTorch backend numerics against the float64 reference (forward, explicit backward, autograd), CPU and CUDA."""

from __future__ import annotations

import itertools
import types
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cases import EXTREME_SPREADS, check_second_order, shape_cases  # noqa: E402
from torch_checks import check_layer_norm_grads, check_rms_norm_grads, f64  # noqa: E402

import layernorm  # noqa: E402
from layernorm import DTypeError  # noqa: E402
from layernorm_core import check_forward, reference  # noqa: E402
from layernorm_core.tolerances import error_ratio, row_condition, tolerance  # noqa: E402

DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]
CASES = shape_cases(
    8192,
    pytest.param((512, 16), -1, id="many-rows"),  # dweight/dbias sum 512 rows: half accumulation fails here
    pytest.param((600, 96), -1, id="one-block"),  # 2**15 to 2**20 elements: half CPU gradients in one block
    pytest.param((1100, 32, 32), (-2, -1), id="blocked"),  # > 2**20 elements: summed block by block
    pytest.param((2, 64, 96, 96), 1, id="blocked-channels-first"),  # permuted views made contiguous first
    pytest.param((3, 2**20 + 16), -1, id="rows-over-a-block"),  # each row alone is over 2**20 elements
)


TRAILING_OR_CHANNELS_FIRST = pytest.mark.parametrize("axis", [-1, 1], ids=["trailing", "channels-first"])
AUTOGRAD_CASES = [
    c
    for c in CASES
    if c.id
    in (
        "2d-trailing",
        "channels-first",
        "non-adjacent",
        "many-rows",
        "one-block",
        "blocked",
        "blocked-channels-first",
        "rows-over-a-block",
    )
]


def f64_tensor(t: Any) -> Any:
    """The same values in float64, as a tensor on t's device."""
    return t.detach().to(torch.float64)


def make(shape: tuple[int, ...], axis: Any, dtype: str, device: str, *, mixed: bool = False, seed: int = 0) -> tuple:
    """x (N(1, 3)), weight, bias, dy as tensors; weight/bias in the compute dtype when ``mixed``."""
    rng = np.random.default_rng(seed)
    spec = check_forward("layer_norm", np.empty(shape, np.float32), None, None, axis, 1e-5)
    param_dtype = torch.float32 if mixed else DTYPES[dtype]

    def tensor(values: np.ndarray, dt: Any) -> Any:
        return torch.from_numpy(values).to(device=device, dtype=dt)

    x = tensor(rng.standard_normal(shape) * 3 + 1, DTYPES[dtype])
    w = tensor(rng.standard_normal(spec.normalized_shape), param_dtype)
    b = tensor(rng.standard_normal(spec.normalized_shape), param_dtype)
    dy = tensor(rng.standard_normal(shape), DTYPES[dtype])
    return x, w, b, dy


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "axis"), CASES)
def test_layer_norm_forward_and_backward(shape: tuple[int, ...], axis: Any, dtype: str, device: str) -> None:
    x, w, b, dy = make(shape, axis, dtype, device)
    y, mean, rstd = layernorm.layer_norm(x, w, b, axis=axis, return_stats=True)
    spec = check_forward("layer_norm", x, w, b, axis, 1e-5)
    ref_y, ref_mean, ref_rstd = reference.layer_norm(f64(x), f64(w), f64(b), spec)
    cond = row_condition(f64(x), spec)
    assert (y.dtype, tuple(y.shape), y.device) == (x.dtype, tuple(x.shape), x.device)
    assert mean.dtype == rstd.dtype == DTYPES[spec.compute_dtype]
    assert tuple(mean.shape) == tuple(rstd.shape) == spec.stats_shape
    assert error_ratio(f64(y), ref_y, tolerance(dtype, "output"), cond) <= 1
    assert error_ratio(f64(mean), ref_mean, tolerance(dtype, "stats"), cond) <= 1
    assert error_ratio(f64(rstd), ref_rstd, tolerance(dtype, "stats"), cond) <= 1
    plain = layernorm.layer_norm(x, w, b, axis=axis)
    assert error_ratio(f64(plain), ref_y, tolerance(dtype, "output"), cond) <= 1
    plain = layernorm.layer_norm(x, axis=axis)
    assert (
        error_ratio(f64(plain), reference.layer_norm(f64(x), None, None, spec)[0], tolerance(dtype, "output"), cond)
        <= 1
    )
    with_stats = layernorm.layer_norm_backward(dy, x, w, axis=axis, mean=mean, rstd=rstd)
    recomputed = layernorm.layer_norm_backward(dy, x, w, axis=axis)
    assert all(g.dtype == x.dtype for g in with_stats)
    check_layer_norm_grads(with_stats, x, w, dy, axis, dtype)
    for got, again in zip(with_stats, recomputed, strict=True):
        torch.testing.assert_close(got, again, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "axis"), CASES)
def test_rms_norm_forward_and_backward(shape: tuple[int, ...], axis: Any, dtype: str, device: str) -> None:
    x, w, _, dy = make(shape, axis, dtype, device)
    y, rstd = layernorm.rms_norm(x, w, axis=axis, return_stats=True)
    spec = check_forward("rms_norm", x, w, None, axis, 1e-5)
    ref_y, ref_rstd = reference.rms_norm(f64(x), f64(w), spec)
    assert (y.dtype, tuple(y.shape)) == (x.dtype, tuple(x.shape))
    assert rstd.dtype == DTYPES[spec.compute_dtype] and tuple(rstd.shape) == spec.stats_shape
    assert error_ratio(f64(y), ref_y, tolerance(dtype, "output")) <= 1
    assert error_ratio(f64(rstd), ref_rstd, tolerance(dtype, "stats")) <= 1
    torch.testing.assert_close(layernorm.rms_norm(x, w, axis=axis), y, rtol=0, atol=0)
    grads = layernorm.rms_norm_backward(dy, x, w, axis=axis, rstd=rstd)
    assert all(g.dtype == x.dtype for g in grads)
    check_rms_norm_grads(grads, x, w, dy, axis, dtype)
    check_rms_norm_grads(layernorm.rms_norm_backward(dy, x, w, axis=axis), x, w, dy, axis, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("row", [40, 33], ids=["row-of-40", "row-of-33"])
@pytest.mark.parametrize(("x_offset", "w_offset"), [(0, 0), (1, 0), (0, 1)], ids=["aligned", "x-off", "weight-off"])
@pytest.mark.parametrize("recorded", [False, True], ids=["no-grad", "requires-grad"])
def test_rms_norm_rows_with_inf(
    recorded: bool, x_offset: int, w_offset: int, row: int, dtype: str, device: str
) -> None:
    """A row holding an Inf: rstd 0, y 0 but NaN at the Inf (docs/spec.md), on every kernel path.

    torch's CUDA kernel gives such a row rstd NaN where it reads rows value by value (float64, a row of 33, an x or
    weight starting one element in): those calls take another route, `RMSNormRows` when autograd records. Those
    cases can fail only on CUDA (`test_cuda_rms_norm_route` checks the route's conditions everywhere); on the CPU
    they run torch's composite and `rms_rows`.
    """
    x_storage, w, _, _ = make((6 * row + 1,), -1, dtype, device)
    x_storage[x_offset + row + 3], x_storage[x_offset + 4 * row + 5] = float("nan"), float("inf")  # rows 1 and 4
    w_storage = w[: row + 1].clone()
    if recorded:
        x_storage.requires_grad_()
        w_storage.requires_grad_()
    x, weight = x_storage[x_offset : x_offset + 6 * row].view(6, row), w_storage[w_offset : w_offset + row]
    spec = check_forward("rms_norm", x, weight, None, -1, 1e-5)
    ref_y, ref_rstd = reference.rms_norm(f64(x), f64(weight), spec)
    y, rstd = layernorm.rms_norm(x, weight, return_stats=True)
    if recorded and device == "cuda" and (dtype == "float64" or row == 33):
        assert differentiated_by_rms_rows(y)
    assert (rstd[4] == 0).all() and rstd[1].isnan().all()
    finite = [0, 2, 3, 5]
    assert error_ratio(f64(y)[finite], ref_y[finite], tolerance(dtype, "output")) <= 1
    assert error_ratio(f64(rstd)[finite], ref_rstd[finite], tolerance(dtype, "stats")) <= 1
    for got in (y, layernorm.rms_norm(x, weight)):
        assert got[1].isnan().all() and got[4, 5].isnan()
        assert (got[4, :5] == 0).all() and (got[4, 6:] == 0).all()


def test_cuda_rms_norm_route(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where a CUDA rms_norm call goes (`_rms_norm_cuda`, driven here with CPU tensors): rows torch's kernel reads
    value by value go to `_rms_norm_rows`, as do calls inside torch.func transforms and forward-mode AD; the rest
    reach the kernel, the one-call ones directly, others through `_rms_norm_kernel`, each with an x or weight off a
    four-value boundary (also a DLPack import of a slice, storage offset 0, and a torch.func wrapper that escaped
    its transform) replaced by an aligned copy; a float32 weight of a half x is cast, not copied."""
    from layernorm_torch import backend

    reached: list[tuple[str, Any, Any]] = []
    monkeypatch.setattr(backend, "_rms_norm_rows", lambda x, w, *_: reached.append(("rows", x, w)))
    monkeypatch.setattr(backend, "_rms_norm", lambda x, _, w, __: reached.append(("kernel", x, w)) or x)
    monkeypatch.setattr(backend, "_rms_norm_kernel", lambda x, w, *_: reached.append(("kernel, general", x, w)))

    def route(x: Any, w: Any = None, return_stats: bool = False) -> tuple[str, Any, Any]:
        reached.clear()
        backend._rms_norm_cuda(x, w, check_forward("rms_norm", x, w, None, -1, 1e-5), return_stats)
        (got,) = reached
        return got

    assert backend._VECTOR_BYTES == {"float16": 8, "bfloat16": 8, "float32": 16}
    for dtype, row, by_values in (
        ("float64", 32, True),
        ("float32", 32, False),
        ("float32", 33, True),
        ("float32", 2**24, False),
        ("float32", 2**24 + 4, True),
        ("bfloat16", 36, False),
    ):
        assert (route(torch.empty(0, row, dtype=DTYPES[dtype]))[0] == "rows") is by_values, (dtype, row)
    one_call = torch.ones(2, 8)
    assert route(one_call)[0] == route(one_call.bfloat16())[0] == "kernel"
    assert route(one_call, return_stats=True)[0] == route(one_call.bfloat16(), one_call[0])[0] == "kernel, general"
    with torch.autograd.forward_ad.dual_level():  # transforms differentiate the kernel through rstd**3
        assert route(torch.autograd.forward_ad.make_dual(one_call, one_call))[0] == "rows"

    def inside_a_transform(t: Any) -> Any:
        assert route(t)[0] == route(t.bfloat16())[0] == "rows"
        return t.sum()

    for transform in (torch.func.grad, torch.func.functionalize):
        transform(inside_a_transform)(one_call)
    for dtype in ("float16", "bfloat16", "float32"):
        x_storage = torch.arange(48.0).to(DTYPES[dtype])
        weights = [x_storage] if dtype == "float32" else [x_storage, torch.arange(48.0)]  # a float32 one of a half x
        for w_storage in weights:
            for x_start, w_start in itertools.product(range(8), repeat=2):
                x, w = x_storage[x_start : x_start + 40], w_storage[w_start : w_start + 40]
                _, *used = route(x, w)
                for given, got in zip((x, w), used, strict=True):
                    if given.dtype != x.dtype:  # a float32 weight of a half x: `_rms_norm_half` casts it
                        assert got is given
                        continue
                    vector_bytes = 4 * given.element_size()
                    assert torch.equal(got, given) and got.data_ptr() % vector_bytes == 0
                    assert (got is given) == (given.data_ptr() % vector_bytes == 0), (dtype, x_start, w_start)
    imported = torch.from_dlpack(np.arange(41, dtype=np.float32)[1:])
    assert imported.storage_offset() == 0 and route(imported)[1] is not imported
    escaped: list[Any] = []
    torch.func.grad(lambda t: escaped.append(t) or t.sum())(torch.from_dlpack(np.arange(41, dtype=np.float32)[1:]))
    assert torch._C._functorch.is_functorch_wrapped_tensor(escaped[0])  # a wrapper, its transform over
    assert route(escaped[0])[1] is not escaped[0]


NOT_DENSE = {
    "sparse-coo": lambda t: t.to_sparse(),
    "sparse-csr": lambda t: t.to_sparse_csr(),
    "mkldnn": lambda t: t.to_mkldnn(),
}


@pytest.mark.parametrize("layout", list(NOT_DENSE))
@pytest.mark.parametrize(
    ("shape", "requires_grad", "off_the_cpu"),
    [((2, 4), True, False), ((1024, 512), False, False), ((2, 4), True, True), ((1024, 512), False, True)],
    ids=["recorded", "large", "recorded-off-the-cpu", "off-the-cpu"],
)
@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")
def test_rms_norm_rows_refuse_tensors_that_are_not_dense(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    layout: str,
    shape: tuple[int, int],
    requires_grad: bool,
    off_the_cpu: bool,
) -> None:
    """rms_norm calls that run the backend's own ops (`_rms_norm_rows`) instead of torch's kernel: one autograd
    records, a large one, and the route of CUDA rows (on CPU tensors), whose ops multiply by a sparse weight
    without complaint: a DTypeError for a sparse or MKLDNN x or weight, as the core's would read."""
    from layernorm_torch import backend

    if layout == "mkldnn" and not torch.backends.mkldnn.is_available():
        pytest.skip("torch was built without MKLDNN (oneDNN)")
    if off_the_cpu:
        request.getfixturevalue("rms_rows_off_the_cpu")
    reached = []
    rows = backend._rms_norm_rows

    def counted(*args: Any) -> Any:
        reached.append(args)
        return rows(*args)

    monkeypatch.setattr(backend, "_rms_norm_rows", counted)
    to_layout = NOT_DENSE[layout]
    dtype = torch.float64 if layout != "mkldnn" else torch.float32  # MKLDNN holds float32
    dense = torch.ones(shape, dtype=dtype)
    calls = [(to_layout(dense), None)]
    if layout != "sparse-csr":  # a CSR tensor has two dimensions, the weight of rows of one axis one
        calls.append((dense, to_layout(torch.ones(shape[-1], dtype=dtype))))
    for x, weight in calls:
        with pytest.raises(DTypeError, match="is not a dense array"):
            layernorm.rms_norm(x.requires_grad_(requires_grad), weight)
    assert len(reached) == len(calls)


@pytest.mark.parametrize(
    ("dtype", "mixed"), [(dtype, False) for dtype in DTYPES] + [("float16", True), ("bfloat16", True)]
)
@pytest.mark.parametrize(("shape", "axis"), CASES[:5])
def test_rms_norm_rows_off_the_cpu(
    monkeypatch: pytest.MonkeyPatch, shape: tuple[int, ...], axis: Any, dtype: str, mixed: bool
) -> None:
    """The forwards of CUDA's rms_norm rows that nothing records, here on CPU tensors through `_rms_norm_rows`:
    `rms_rows.by_norm` for a plain call, `rms_rows.by_reductions` inside a torch.func transform, which
    differentiates its ops. y and rstd against the reference, and the transform's gradients (float32 parameters
    with a half x too)."""
    from layernorm_torch import backend, rms_rows

    ran: list[str] = []
    by_norm, by_reductions = rms_rows.by_norm, rms_rows.by_reductions
    monkeypatch.setattr(rms_rows, "by_norm", lambda *args: ran.append("by_norm off the CPU") or by_norm(*args))
    rms_rows.forward(torch.empty(2, 8, device="meta"), None, (8,), 1e-5)
    assert ran == ["by_norm off the CPU"]
    ran.clear()
    monkeypatch.setattr(rms_rows, "forward", lambda *args: ran.append("by_norm") or by_norm(*args))
    monkeypatch.setattr(rms_rows, "by_reductions", lambda *args: ran.append("by_reductions") or by_reductions(*args))
    x, w, _, dy = make(shape, axis, dtype, "cpu", mixed=mixed)
    spec = check_forward("rms_norm", x, w, None, axis, 1e-5)
    ref_y, ref_rstd = reference.rms_norm(f64(x), f64(w), spec)
    plain = backend._rms_norm_rows(x, w, spec, return_stats=True, through_function=False)
    transformed, pullback = torch.func.vjp(
        lambda x_, w_: backend._rms_norm_rows(x_, w_, spec, return_stats=True, through_function=False), x, w
    )
    assert ran == ["by_norm", "by_reductions"]
    for y, rstd in (plain, transformed):
        assert (y.dtype, tuple(y.shape)) == (x.dtype, tuple(x.shape))
        assert rstd.dtype == DTYPES[spec.compute_dtype] and tuple(rstd.shape) == spec.stats_shape
        assert error_ratio(f64(y), ref_y, tolerance(dtype, "output")) <= 1
        assert error_ratio(f64(rstd), ref_rstd, tolerance(dtype, "stats")) <= 1
    check_rms_norm_grads(pullback((dy, torch.zeros_like(transformed[1]))), x, w, dy, axis, dtype)


@pytest.mark.parametrize(
    ("dtype", "scale"), [("float32", 1e15), ("float32", 1e-15), ("float64", 1e120), ("float64", 1e-120)]
)
@TRAILING_OR_CHANNELS_FIRST
@pytest.mark.parametrize("device", DEVICES)
def test_rms_rows_off_the_cpu_under_autograd(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, device: str, axis: Any, dtype: str, scale: float
) -> None:
    """`RMSNormRows` as it runs the CUDA rows torch's kernel reads value by value: forward `rms_rows.by_norm`,
    backward torch's fused kernel on CUDA (`rms_rows.fused_gradients`), `rms_rows.formula` on the CPU. Rows of RMS
    far from 1 with eps = 0, where autograd's derivative of the reductions goes through an rstd**3 out of range."""
    from layernorm_torch import backend, rms_rows

    ran: list[Any] = []
    if device == "cpu":
        request.getfixturevalue("rms_rows_off_the_cpu")
    else:
        fused = rms_rows.fused_gradients
        monkeypatch.setattr(rms_rows, "fused_gradients", lambda *args: ran.append(args) or fused(*args))
    x, w, _, dy = make((6, 20, 12), axis, dtype, device)
    x = x * scale
    spec = check_forward("rms_norm", x, w, None, axis, 0.0)
    leaves = [t.clone().requires_grad_() for t in (x, w)]
    y = backend._rms_norm_rows(*leaves, spec, return_stats=False, through_function=True)
    assert differentiated_by_rms_rows(y)
    assert error_ratio(f64(y), reference.rms_norm(f64(x), f64(w), spec)[0], tolerance(dtype, "output")) <= 1
    y.backward(dy)
    assert len(ran) == (device == "cuda")
    check_rms_norm_grads(tuple(t.grad for t in leaves), x, w, dy, axis, dtype, eps=0.0)


@pytest.mark.parametrize(
    ("dtype", "scale"), [("float32", 1e15), ("float32", 1e-15), ("float64", 1e120), ("float64", 1e-120)]
)
@TRAILING_OR_CHANNELS_FIRST
@pytest.mark.parametrize("device", DEVICES)
def test_rms_norm_under_torch_func_at_extreme_spreads(device: str, axis: Any, dtype: str, scale: float) -> None:
    """torch.func.vjp of the public rms_norm, rows of RMS far from 1 with eps = 0: the reference's gradients, as
    eager autograd gives. The transform differentiates the ops that run; torch's CPU composite's derivative goes
    through rsqrt(v)**3, out of range there (dx 8% off or inf), so such calls run `rms_rows.by_reductions`."""
    x, w, _, dy = make((6, 20, 12), axis, dtype, device)
    x = x * scale
    y, pullback = torch.func.vjp(lambda x_, w_: layernorm.rms_norm(x_, w_, axis=axis, eps=0.0), x, w)
    spec = check_forward("rms_norm", x, w, None, axis, 0.0)
    assert error_ratio(f64(y), reference.rms_norm(f64(x), f64(w), spec)[0], tolerance(dtype, "output")) <= 1
    check_rms_norm_grads(pullback(dy), x, w, dy, axis, dtype, eps=0.0)


@pytest.mark.parametrize("scale", [1e15, 1e-15])
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@TRAILING_OR_CHANNELS_FIRST
@pytest.mark.parametrize("device", DEVICES)
def test_gradient_through_rstd_at_extreme_spreads(device: str, axis: Any, op: str, scale: float) -> None:
    """Eager autograd of a loss on the returned rstd of float32 rows of RMS 1e15 or 1e-15 (eps = 0): the reference's
    gradient. On CUDA, rms_norm's rstd came from torch's kernel, differentiated through rstd**3: dx 8e3 times the
    tolerance, or inf."""
    x, _, _, _ = make((6, 20, 12), axis, "float32", device)
    x = x * scale
    spec = check_forward(op, x, None, None, axis, 0.0)
    k = torch.randn(spec.stats_shape, generator=torch.Generator().manual_seed(1)).to(device)
    leaf = x.clone().requires_grad_()
    (getattr(layernorm, op)(leaf, axis=axis, eps=0.0, return_stats=True)[-1] * k).sum().backward()
    expected = reference.statistics_backward(f64(x), spec, None, f64(k))
    assert error_ratio(f64(leaf.grad), expected, tolerance("float32", "grad")) <= 1


def _plain_backward(op: str, dy: Any, x: Any, w: Any) -> tuple[Any, ...]:
    """The explicit backward in plain ops, statistics recomputed from x (rows over the last axis, eps = 0)."""
    centered = x - x.mean(-1, keepdim=True) if op == "layer_norm" else x
    rstd = torch.rsqrt((centered * centered).mean(-1, keepdim=True))
    xhat, g = centered * rstd, dy * w
    dx_rows = g - xhat * (g * xhat).mean(-1, keepdim=True)
    if op == "rms_norm":
        return rstd * dx_rows, (dy * xhat).sum(0)
    return rstd * (dx_rows - g.mean(-1, keepdim=True)), (dy * xhat).sum(0), dy.sum(0)


@pytest.mark.parametrize("given", [False, True], ids=["recomputed", "given"])
@pytest.mark.parametrize(("dtype", "scale"), EXTREME_SPREADS)
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("device", DEVICES)
def test_derivatives_of_the_explicit_backward_stay_in_range_in_extreme_rows(
    device: str, op: str, dtype: str, scale: float, given: bool
) -> None:
    """The derivatives in x, the weight and dy of a loss on the explicit backward's results (a gradient penalty),
    rows of spread 1e+-14 (float32) or 1e+-120 (float64) with eps = 0, statistics recomputed or given by the
    forward. The oracle is float64 autodiff of the plain formula at x / scale, its x-derivatives rescaled (dx
    scales as 1 / scale, dweight not). layer_norm_backward without statistics ran torch's backward kernel, whose
    derivative in x goes through rstd**3: NaN at 1e-14 and 1e-120, 1e-4 off at 1e14, 28% at 1e120."""
    rng = np.random.default_rng(29)
    x, w, dy = (rng.standard_normal(shape) for shape in ((4, 16), (16,), (4, 16)))
    x = (x * scale).astype(dtype)
    coefficients = [np.random.default_rng(30).standard_normal(shape) for shape in ((4, 16), (16,), (16,))]
    backward = getattr(layernorm, f"{op}_backward")
    leaves = [torch.tensor(a, dtype=DTYPES[dtype], device=device, requires_grad=True) for a in (x, w, dy)]
    stats: dict[str, Any] = {}
    if given:
        results = getattr(layernorm, op)(leaves[0], eps=0.0, return_stats=True)
        stats = dict(zip(("mean", "rstd") if op == "layer_norm" else ("rstd",), results[1:], strict=True))
    grads = backward(leaves[2], leaves[0], leaves[1], eps=0.0, **stats)
    loss = sum(
        (g * torch.tensor(c, dtype=g.dtype, device=device)).sum()
        for g, c in zip(grads, coefficients[: len(grads)], strict=True)
    )
    ours = torch.autograd.grad(loss, leaves)

    exact_leaves = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x / scale, w, dy)]
    exact_grads = _plain_backward(op, exact_leaves[2], exact_leaves[0], exact_leaves[1])
    weights = [c / scale if i == 0 else c for i, c in enumerate(coefficients)]  # dx at x is dx at x / scale, / scale
    exact_loss = sum((g * torch.tensor(c)).sum() for g, c in zip(exact_grads, weights[: len(exact_grads)], strict=True))
    exact = [g.numpy() for g in torch.autograd.grad(exact_loss, exact_leaves)]
    exact[0] = exact[0] / scale
    for name, got, want in zip(("x", "weight", "dy"), ours, exact, strict=True):
        size = np.abs(want).max()
        np.testing.assert_allclose(f64(got), want, rtol=1e-5, atol=1e-5 * size, err_msg=name)


@pytest.mark.parametrize("forward_ad", [False, True], ids=["torch.func.jvp", "forward_ad"])
@pytest.mark.parametrize("given", [False, True], ids=["recomputed", "given"])
@pytest.mark.parametrize(("dtype", "scale"), EXTREME_SPREADS)
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_forward_mode_derivatives_of_the_explicit_backward_stay_in_range_in_extreme_rows(
    op: str, dtype: str, scale: float, given: bool, forward_ad: bool
) -> None:
    """The tangents of the explicit backward's results for tangents of x, the weight and dy, rows of spread
    1e+-14 (float32) or 1e+-120 (float64) with eps = 0, against float64 forward-mode AD of the plain formula at
    x / scale (x's tangent / scale; dx scales as 1 / scale). layer_norm_backward ran torch's backward kernel, whose
    tangent goes through rstd**3: NaN at 1e-14 and 1e-120."""
    rng = np.random.default_rng(31)
    x, w, dy, tx, tw, tdy = (rng.standard_normal(shape) for shape in ((4, 16), (16,), (4, 16)) * 2)
    x = (x * scale).astype(dtype)
    backward = getattr(layernorm, f"{op}_backward")

    def grads(x: Any, w: Any, dy: Any) -> tuple[Any, ...]:
        stats: dict[str, Any] = {}
        if given:
            results = getattr(layernorm, op)(x, eps=0.0, return_stats=True)
            stats = dict(zip(("mean", "rstd") if op == "layer_norm" else ("rstd",), results[1:], strict=True))
        return tuple(backward(dy, x, w, eps=0.0, **stats))

    primals = tuple(torch.tensor(a, dtype=DTYPES[dtype]) for a in (x, w, dy))
    tangents = tuple(torch.tensor(a, dtype=DTYPES[dtype]) for a in (tx, tw, tdy))
    if forward_ad:
        with torch.autograd.forward_ad.dual_level():
            duals = (torch.autograd.forward_ad.make_dual(p, t) for p, t in zip(primals, tangents, strict=True))
            ours = [torch.autograd.forward_ad.unpack_dual(r).tangent for r in grads(*duals)]
    else:
        ours = list(torch.func.jvp(grads, primals, tangents)[1])

    exact_primals = tuple(torch.tensor(a, dtype=torch.float64) for a in (x.astype(np.float64) / scale, w, dy))
    exact_tangents = tuple(torch.tensor(a, dtype=torch.float64) for a in (tx / scale, tw, tdy))
    exact = list(torch.func.jvp(lambda *a: _plain_backward(op, a[2], a[0], a[1]), exact_primals, exact_tangents)[1])
    exact[0] = exact[0] / scale
    for name, got, want in zip(("dx", "dweight", "dbias")[: len(exact)], ours, exact, strict=True):
        size = np.abs(want.numpy()).max()
        np.testing.assert_allclose(f64(got), want.numpy(), rtol=1e-5, atol=1e-5 * size, err_msg=name)


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("shape", [(4, 64), (512, 1024)], ids=["small", "blocked"])
def test_a_parameter_x_takes_a_plain_tensors_route(shape: tuple[int, ...], dtype: str, op: str) -> None:
    """An nn.Parameter x gives the bits a plain x gives, y and every gradient. As a subclass it took torch's CPU
    rms_norm composite, differentiated through rstd**3 (dx 7.5% off at rows of RMS 1e16 in float32), and a half
    layer_norm's other backward."""
    x, w, b, dy = make(shape, -1, dtype, "cpu")
    x = x * (1e16 if dtype == "float32" and op == "rms_norm" else 1)
    params = (w, b) if op == "layer_norm" else (w,)
    results = []
    for leaf in (x.clone().requires_grad_(), torch.nn.Parameter(x.clone())):
        weights = [p.clone().requires_grad_() for p in params]
        y = getattr(layernorm, op)(leaf, *weights)
        results.append((y, *torch.autograd.grad(y, (leaf, *weights), dy)))
    for plain, parameter in zip(*results, strict=True):
        assert torch.equal(plain, parameter)
    if op == "rms_norm":
        check_rms_norm_grads(results[1][1:], x, w, dy, -1, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "axis"), AUTOGRAD_CASES)
def test_autograd_matches_reference(shape: tuple[int, ...], axis: Any, dtype: str, device: str) -> None:
    x, w, b, dy = make(shape, axis, dtype, device)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    layernorm.layer_norm(*leaves, axis=axis).backward(dy)
    check_layer_norm_grads(tuple(t.grad for t in leaves), x, w, dy, axis, dtype)
    leaves = [t.clone().requires_grad_() for t in (x, w)]
    layernorm.rms_norm(*leaves, axis=axis).backward(dy)
    check_rms_norm_grads(tuple(t.grad for t in leaves), x, w, dy, axis, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@TRAILING_OR_CHANNELS_FIRST
def test_autograd_through_y_with_stats(axis: Any, dtype: str, device: str) -> None:
    """With return_stats, y is differentiated as without. mean and rstd are differentiable too (the conformance
    check test_autodiff_through_statistics holds them to the reference); without x's gradient they are not."""
    x, w, b, dy = make((6, 20, 12), axis, dtype, device)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    y, mean, rstd = layernorm.layer_norm(*leaves, axis=axis, return_stats=True)
    assert mean.requires_grad and rstd.requires_grad
    y.backward(dy)
    check_layer_norm_grads(tuple(t.grad for t in leaves), x, w, dy, axis, dtype)
    _, mean, rstd = layernorm.layer_norm(x, *leaves[1:], axis=axis, return_stats=True)
    assert not (mean.requires_grad or rstd.requires_grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@TRAILING_OR_CHANNELS_FIRST
def test_differentiable_statistics_of_a_constant_row(axis: Any, dtype: str, device: str) -> None:
    """With x's gradient taken, the returned statistics of a constant row of 0.1s (whose sum rounds) are exact:
    mean 0.1 in the compute dtype and, with eps = 0, rstd inf, as the CPU kernel's are without the gradient. The
    CUDA kernel merges per-thread partial means, whose rounding need not cancel: its mean is held to one ulp."""
    x = torch.full((2, 1000, 3) if axis == 1 else (2, 3, 1000), 0.1, dtype=getattr(torch, dtype), device=device)
    _, mean, rstd = layernorm.layer_norm(x.clone().requires_grad_(), axis=axis, eps=0.0, return_stats=True)
    _, kernel_mean, _ = layernorm.layer_norm(x, axis=axis, eps=0.0, return_stats=True)
    assert (mean == x.to(kernel_mean.dtype)[0, 0, 0]).all()
    assert torch.isposinf(rstd).all()
    ulps = 0 if device == "cpu" else 1
    torch.testing.assert_close(kernel_mean, mean, rtol=ulps * torch.finfo(mean.dtype).eps, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@TRAILING_OR_CHANNELS_FIRST
def test_torch_func_grad(axis: Any, dtype: str, device: str) -> None:
    """torch.func.grad with respect to x, weight and bias (functorch transforms, not torch.autograd)."""
    x, w, b, dy = make((6, 20, 12), axis, dtype, device)

    def loss(*inputs: Any) -> Any:
        return (layernorm.layer_norm(*inputs, axis=axis).double() * dy.double()).sum()

    def rms_loss(*inputs: Any) -> Any:
        return (layernorm.rms_norm(*inputs, axis=axis).double() * dy.double()).sum()

    check_layer_norm_grads(torch.func.grad(loss, argnums=(0, 1, 2))(x, w, b), x, w, dy, axis, dtype)
    check_rms_norm_grads(torch.func.grad(rms_loss, argnums=(0, 1))(x, w), x, w, dy, axis, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_func_per_sample_gradients(dtype: str, device: str) -> None:
    """vmap(grad): the weight and bias gradients of each sample alone, against the reference per sample."""
    x, w, b, dy = make((5, 24, 16), -1, dtype, device)

    def sample_loss(w: Any, b: Any, x: Any, dy: Any) -> Any:
        return (layernorm.layer_norm(x, w, b).double() * dy.double()).sum()

    dweights, dbiases = torch.func.vmap(torch.func.grad(sample_loss, argnums=(0, 1)), in_dims=(None, None, 0, 0))(
        w, b, x, dy
    )
    for i in range(x.shape[0]):
        check_layer_norm_grads((None, dweights[i], dbiases[i]), x[i], w, dy[i], -1, dtype)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_cpu_scratch_across_shapes(dtype: str) -> None:
    """Half CPU weight/bias gradients widen x and dy into one thread's scratch, with views kept per shape: a shape
    seen again, a larger shape (a new buffer), and more shapes than are kept each give the reference's gradients."""
    from layernorm_torch import scratch

    rows = [100, 80, 300, 100, *range(65, 66 + scratch.KEPT_SHAPES), 80, 300]
    for seed, n_rows in enumerate(rows):
        x, w, b, dy = make((n_rows, 512), -1, dtype, "cpu", seed=seed)
        leaves = [t.clone().requires_grad_() for t in (x, w, b)]
        layernorm.layer_norm(*leaves).backward(dy)
        check_layer_norm_grads(tuple(t.grad for t in leaves), x, w, dy, -1, dtype)


@pytest.fixture
def rms_rows_off_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `rms_rows.forward` run what it runs off the CPU (`rms_rows.by_norm`), here on CPU tensors."""
    from layernorm_torch import rms_rows

    monkeypatch.setattr(rms_rows, "forward", rms_rows.by_norm)


@pytest.fixture
def rms_rows_small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every CPU rms_norm through `rms_rows` (and `RMSNormRows` when autograd records), in blocks of 72 elements."""
    from layernorm_torch import rms_rows

    monkeypatch.setattr(rms_rows, "MIN_ELEMENTS", 0)
    monkeypatch.setattr(rms_rows, "_BLOCK_ELEMENTS", 72)
    monkeypatch.setattr(rms_rows, "_FORWARD_BLOCK_ELEMENTS", 72)
    monkeypatch.setattr(rms_rows, "BLOCKED_FORWARD_ELEMENTS", 72)
    monkeypatch.setattr(rms_rows, "UNRECORDED_FORWARD_ELEMENTS", 72)


def differentiated_by_rms_rows(y: Any) -> bool:
    """Whether autograd differentiates y with `RMSNormRows` (under the permute back, for non-trailing axes)."""
    node = y.grad_fn
    if type(node).__name__ == "PermuteBackward0":
        node = node.next_functions[0][0]
    return type(node).__name__ == "RMSNormRowsBackward"


RMS_ROWS_CASES = [
    pytest.param((37, 24), -1, id="trailing"),  # 12 blocks of 3 rows and one of 1
    pytest.param((5, 24, 7), 1, id="channels-first"),
    pytest.param((3, 4, 2, 6), (1, 3), id="non-adjacent"),
    pytest.param((2, 200), -1, id="rows-over-a-block"),
    pytest.param((2, 3, 8), -1, id="under-a-block"),  # forward: torch's kernel; backward: `RMSNormRows`
]


@pytest.mark.usefixtures("rms_rows_small_blocks")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("params", ["trained", "frozen-weight", "frozen-x", "no-weight", "float32-weight"])
@pytest.mark.parametrize(("shape", "axis"), RMS_ROWS_CASES)
def test_rms_norm_cpu_analytic_backward(shape: tuple[int, ...], axis: Any, params: str, dtype: str) -> None:
    """`RMSNormRows` (block by block, several blocks and a short last one) against the reference, for each input
    that requires grad; a float32 weight for a half x gets a float32 gradient."""
    mixed = params == "float32-weight" and dtype in ("float16", "bfloat16")
    x, w, _, dy = make(shape, axis, dtype, "cpu", mixed=mixed)
    weight = None if params == "no-weight" else w.clone().requires_grad_(params != "frozen-weight")
    x = x.clone().requires_grad_(params != "frozen-x")
    y = layernorm.rms_norm(x, weight, axis=axis)
    assert differentiated_by_rms_rows(y)
    y.backward(dy)
    grads = (x.grad, None if weight is None else weight.grad)
    assert (grads[0] is None) == (params == "frozen-x")
    assert (grads[1] is None) == (params in ("frozen-weight", "no-weight"))
    assert all(g is None or g.dtype == t.dtype for g, t in zip(grads, (x, weight), strict=True))
    check_rms_norm_grads(grads, x, weight, dy, axis, dtype)


@pytest.mark.parametrize(
    ("shape", "grad", "analytic"),
    [
        pytest.param((64, 768), True, True, id="large"),
        pytest.param((8, 64), True, True, id="small"),  # autograd through torch's rsqrt leaves the float range
        pytest.param((64, 768), False, False, id="no-grad"),
    ],
)
@pytest.mark.parametrize("return_stats", [False, True], ids=["y", "stats"])
def test_rms_norm_cpu_analytic_backward_when(
    shape: tuple[int, ...], grad: bool, analytic: bool, return_stats: bool
) -> None:
    """Which CPU rms_norm calls `RMSNormRows` differentiates: any size, with autograd on and x or weight requiring
    grad."""
    x, w, _, _ = make(shape, -1, "float32", "cpu")
    w.requires_grad_()
    with torch.set_grad_enabled(grad):
        out = layernorm.rms_norm(x, w, return_stats=return_stats)
    y = out[0] if return_stats else out
    assert differentiated_by_rms_rows(y) == analytic


@pytest.mark.usefixtures("rms_rows_small_blocks")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "axis"), RMS_ROWS_CASES)
def test_rms_norm_cpu_forward(shape: tuple[int, ...], axis: Any, dtype: str) -> None:
    """`rms_rows.forward` (several blocks and a short last one) against the reference: y and rstd, the same bits
    with and without gradients, with and without return_stats; a loss on rstd reaches x."""
    x, w, _, _ = make(shape, axis, dtype, "cpu")
    spec = check_forward("rms_norm", x, w, None, axis, 1e-5)
    ref_y, ref_rstd = reference.rms_norm(f64(x), f64(w), spec)
    y, rstd = layernorm.rms_norm(x, w, axis=axis, return_stats=True)
    assert (y.dtype, rstd.dtype, tuple(rstd.shape)) == (x.dtype, DTYPES[spec.compute_dtype], spec.stats_shape)
    assert error_ratio(f64(y), ref_y, tolerance(dtype, "output")) <= 1
    assert error_ratio(f64(rstd), ref_rstd, tolerance(dtype, "stats")) <= 1
    leaves = [t.clone().requires_grad_() for t in (x, w)]
    y_grad, rstd_grad = layernorm.rms_norm(*leaves, axis=axis, return_stats=True)
    for got in (layernorm.rms_norm(x, w, axis=axis), layernorm.rms_norm(*leaves, axis=axis), y_grad):
        torch.testing.assert_close(got, y, rtol=0, atol=0)
    assert error_ratio(f64(rstd_grad), ref_rstd, tolerance(dtype, "stats")) <= 1
    x64 = f64_tensor(x).requires_grad_()
    expected = torch.autograd.grad(torch.rsqrt((x64 * x64).mean(spec.axes, keepdim=True) + 1e-5).sum(), x64)[0]
    rstd_grad.sum().backward()
    assert error_ratio(f64(leaves[0].grad), f64(expected), tolerance(dtype, "grad")) <= 1


@pytest.mark.usefixtures("rms_rows_small_blocks")
@pytest.mark.parametrize("axis", [-1, 1, (0, 2)], ids=["trailing", "channels-first", "non-adjacent"])
def test_rms_norm_cpu_analytic_backward_second_order(axis: Any) -> None:
    """Under create_graph=True `RMSNormRows`'s backward is differentiable, with rstd recomputed from x."""
    x, w, _, _ = make((4, 5, 6), axis, "float64", "cpu")
    x, w = x.requires_grad_(), w.requires_grad_()
    assert differentiated_by_rms_rows(layernorm.rms_norm(x, w, axis=axis))
    assert torch.autograd.gradgradcheck(lambda x, w: layernorm.rms_norm(x, w, axis=axis), (x, w))


@pytest.mark.usefixtures("rms_rows_small_blocks")
@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_cpu_transforms_keep_torch_ops(dtype: str) -> None:
    """torch.func and forward-mode AD cannot run an autograd.Function without a vmap or jvp rule: there rms_norm
    keeps torch's ops, even above `rms_rows.MIN_ELEMENTS` (lowered to 0 here)."""
    import torch.autograd.forward_ad as fwad

    x, w, _, dy = make((6, 20, 12), -1, dtype, "cpu")

    def rms_loss(x: Any, w: Any) -> Any:
        return (layernorm.rms_norm(x, w).double() * dy.double()).sum()

    check_rms_norm_grads(torch.func.grad(rms_loss, argnums=(0, 1))(x, w), x, w, dy, -1, dtype)
    with fwad.dual_level():
        y = layernorm.rms_norm(fwad.make_dual(x, dy), w.clone().requires_grad_())
        assert fwad.unpack_dual(y).tangent is not None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [8, 128], ids=["formula", "blocks"])
def test_rms_norm_trains_a_weight_on_an_inference_tensor(rows: int, dtype: str) -> None:
    """As with torch.nn.RMSNorm, an x made under torch.inference_mode feeds a weight that autograd trains, below
    and from `rms_rows.MIN_ELEMENTS` (autograd cannot save an inference tensor: `RMSNormRows` keeps a copy)."""
    x, w, _, dy = make((rows, 512), -1, dtype, "cpu")
    with torch.inference_mode():
        x_inference = x.clone()
    weight = w.clone().requires_grad_()
    y = layernorm.rms_norm(x_inference, weight)
    assert differentiated_by_rms_rows(y)
    y.backward(dy)
    check_rms_norm_grads((None, weight.grad), x, w, dy, -1, dtype)


def test_rows_longer_than_a_block_leave_no_scratch_held() -> None:
    """rms_norm over rows of 3 * 2**20 elements (forward and backward one row at a time, each over
    `scratch.KEPT_MAX_BYTES`) gives the reference's gradients, and its thread keeps no scratch that large."""
    from concurrent.futures import ThreadPoolExecutor

    from layernorm_torch import scratch

    def in_a_new_thread() -> int:
        x, w, _, dy = make((2, 3 * 2**20), -1, "float32", "cpu")
        leaves = [t.clone().requires_grad_() for t in (x, w)]
        y = layernorm.rms_norm(*leaves)
        assert differentiated_by_rms_rows(y)
        y.backward(dy)
        check_rms_norm_grads(tuple(t.grad for t in leaves), x, w, dy, -1, "float32")
        buffer = getattr(scratch._local, "buffer", None)
        return 0 if buffer is None else buffer.numel()

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(in_a_new_thread).result() <= scratch.KEPT_MAX_BYTES


def test_scratch_made_in_inference_mode_serves_calls_outside_it() -> None:
    """A thread's first blocked call, here an rms_norm forward of 2**19 elements, makes its scratch buffer; made
    inside torch.inference_mode, it stays writable outside it: rms_norm forward and backward and a bfloat16
    layer_norm backward then run in the same thread and give the reference's values."""
    from concurrent.futures import ThreadPoolExecutor

    def in_a_new_thread() -> None:
        x, w, _, dy = make((1024, 512), -1, "float32", "cpu")
        with torch.inference_mode():
            y_inference = layernorm.rms_norm(x, w)
        torch.testing.assert_close(layernorm.rms_norm(x, w), y_inference, rtol=0, atol=0)
        leaves = [t.clone().requires_grad_() for t in (x, w)]
        layernorm.rms_norm(*leaves).backward(dy)
        check_rms_norm_grads(tuple(t.grad for t in leaves), x, w, dy, -1, "float32")
        x, w, b, dy = make((100, 512), -1, "bfloat16", "cpu")
        leaves = [t.clone().requires_grad_() for t in (x, w, b)]
        layernorm.layer_norm(*leaves).backward(dy)
        check_layer_norm_grads(tuple(t.grad for t in leaves), x, w, dy, -1, "bfloat16")

    with ThreadPoolExecutor(1) as pool:
        pool.submit(in_a_new_thread).result()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("params", ["weight-only", "bias-only", "frozen", "none"])
@pytest.mark.parametrize(("shape", "axis"), AUTOGRAD_CASES)
def test_autograd_with_parameters_missing_or_frozen(
    shape: tuple[int, ...], axis: Any, params: str, dtype: str, device: str
) -> None:
    """x requires grad; weight or bias is missing, or both are frozen or missing. Rows are centred far from 0,
    where half statistics would fail."""
    x, w, b, dy = make(shape, axis, dtype, device)
    x = x + 48
    weight, bias = {"weight-only": (w, None), "bias-only": (None, b), "frozen": (w, b), "none": (None, None)}[params]
    trained = params.endswith("-only")
    leaves = [x.clone().requires_grad_()] + [
        None if t is None else t.clone().requires_grad_(trained) for t in (weight, bias)
    ]
    layernorm.layer_norm(*leaves, axis=axis).backward(dy)
    grads = tuple(None if t is None else t.grad for t in leaves)
    assert trained or grads[1:] == (None, None)
    check_layer_norm_grads(grads, x, weight, dy, axis, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("axis", [-1, 1, (0, 2)], ids=["trailing", "channels-first", "non-adjacent"])
def test_gradcheck_float64(axis: Any, device: str) -> None:
    x, w, b, _ = make((3, 4, 5), axis, "float64", device)
    x, w, b = (t.requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w, b: layernorm.layer_norm(x, w, b, axis=axis), (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w: layernorm.rms_norm(x, w, axis=axis), (x, w))
    assert torch.autograd.gradcheck(
        lambda x, w, b: layernorm.layer_norm(x, w, b, axis=axis, return_stats=True), (x, w, b)
    )
    assert torch.autograd.gradgradcheck(lambda x, w, b: layernorm.layer_norm(x, w, b, axis=axis), (x, w, b))
    assert torch.autograd.gradgradcheck(lambda x, w: layernorm.rms_norm(x, w, axis=axis), (x, w))


def composite_reference(op: str, x: Any, w: Any, b: Any, axis: Any) -> Any:
    """layer_norm / rms_norm in float64 torch ops (no fused kernel), for torch.autograd to differentiate twice."""
    spec = check_forward(op, x, w, b, axis, 1e-5)
    axes, param_shape = spec.axes, spec.param_shape
    x = x.double()
    if op == "layer_norm":
        centred = x - x.mean(axes, keepdim=True)
        y = centred / torch.sqrt((centred**2).mean(axes, keepdim=True) + 1e-5)
    else:
        y = x / torch.sqrt((x**2).mean(axes, keepdim=True) + 1e-5)
    y = y * w.double().reshape(param_shape)
    return y if b is None else y + b.double().reshape(param_shape)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("params", ["trained", "frozen"])
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize(
    ("shape", "axis"),
    [
        pytest.param((6, 20, 12), -1, id="trailing"),
        pytest.param((6, 20, 12), 1, id="channels-first"),
        pytest.param((70, 512), -1, id="over-2**15"),  # where first-order half CPU gradients use the scratch
    ],
)
@pytest.mark.parametrize("route", ["autograd", "explicit", "explicit-with-stats"])
def test_second_order_gradient_penalty(
    route: str, shape: tuple[int, ...], axis: Any, op: str, params: str, dtype: str, device: str
) -> None:
    """create_graph=True, then the gradient of a penalty on the gradients (as in WGAN-GP): every second-order
    gradient the float64 composite has, against it. The first-order gradients it squares are rounded to the
    dtype (`check_second_order`). ``explicit``: the first-order gradients come from layer_norm_backward /
    rms_norm_backward called on tensors that require grad; ``explicit-with-stats`` passes them the statistics
    that the forward returned for that x, which autograd records too (torch's layer_norm backward kernel has no
    derivative in them: NotImplementedError)."""
    x, w, b, dy = make(shape, axis, dtype, device)
    b = b if op == "layer_norm" else None
    trained = params == "trained"

    def second_order(first_order: Any, x: Any, w: Any, b: Any) -> list[Any]:
        leaves = [x.clone().requires_grad_()] + [
            None if t is None else t.clone().requires_grad_(trained) for t in (w, b)
        ]
        inputs = [t for t in leaves if t is not None and t.requires_grad]
        penalty = sum((g.double() ** 2).sum() for g in first_order(leaves, inputs))
        return list(torch.autograd.grad(penalty, inputs, allow_unused=True))

    def autograd_of(fn: Any) -> Any:
        def first_order(leaves: list[Any], inputs: list[Any]) -> Any:
            y = fn(*leaves)
            return torch.autograd.grad((y.double() * dy.double()).sum(), inputs, create_graph=True)

        return first_order

    def ours(x: Any, w: Any, b: Any) -> Any:
        if op == "layer_norm":
            return layernorm.layer_norm(x, w, b, axis=axis)
        return layernorm.rms_norm(x, w, axis=axis)

    def explicit(leaves: list[Any], inputs: list[Any]) -> list[Any]:
        x, w, _ = leaves
        with_stats = route == "explicit-with-stats"
        if op == "layer_norm":
            mean, rstd = layernorm.layer_norm(x, w, axis=axis, return_stats=True)[1:] if with_stats else (None, None)
            grads = layernorm.layer_norm_backward(dy, x, w, axis=axis, mean=mean, rstd=rstd)
        else:
            rstd = layernorm.rms_norm(x, w, axis=axis, return_stats=True)[1] if with_stats else None
            grads = layernorm.rms_norm_backward(dy, x, w, axis=axis, rstd=rstd)
        return [g for g, leaf in zip(grads, leaves, strict=False) if leaf is not None and leaf.requires_grad]

    got = second_order(autograd_of(ours) if route == "autograd" else explicit, x, w, b)
    reference_inputs = (None if t is None else f64_tensor(t) for t in (x, w, b))
    expected = second_order(autograd_of(lambda x, w, b: composite_reference(op, x, w, b, axis)), *reference_inputs)
    check_second_order(
        [None if g is None else f64(g) for g in got], [None if e is None else f64(e) for e in expected], dtype
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("route", ["autograd", "torch.func"])
@TRAILING_OR_CHANNELS_FIRST
def test_second_order_through_a_bias_without_weight(axis: Any, route: str, dtype: str) -> None:
    """A bias without a weight, as in a meta-learning inner step: dbias of a loss that is not linear in y, then the
    gradient of a loss on dbias. torch's derivative of its backward kernel drops dbias's dependence on dy when the
    weight is None (pytorch#79705: the second gradient was missing), so the backend passes a weight of ones."""
    x, w, b, _ = make((4, 5, 6), axis, dtype, "cpu")

    def penalty_gradient(forward: Any, x: Any, b: Any) -> Any:
        def inner_loss(b: Any) -> Any:
            return (forward(x, b).double() ** 3).mean()  # mean: in float16's range

        if route == "torch.func":
            return torch.func.grad(lambda b: (torch.func.grad(inner_loss)(b).double() ** 2).sum())(b)
        leaf = b.clone().requires_grad_()
        (dbias,) = torch.autograd.grad(inner_loss(leaf), leaf, create_graph=True)
        return torch.autograd.grad((dbias.double() ** 2).sum(), leaf)[0]

    got = penalty_gradient(lambda x, b: layernorm.layer_norm(x, None, b, axis=axis), x, b)
    ones = torch.ones_like(f64_tensor(w))
    reference_gradient = penalty_gradient(
        lambda x, b: composite_reference("layer_norm", x, ones, b, axis), f64_tensor(x), f64_tensor(b)
    )
    check_second_order([None, None, f64(got)], [None, None, f64(reference_gradient)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@TRAILING_OR_CHANNELS_FIRST
def test_a_bias_without_weight_gives_the_same_bits_recorded_or_not(axis: Any, dtype: str) -> None:
    """The weight of ones above came only where autograd recorded the call: torch's CPU kernel rounds the two forms
    differently, so y under torch.no_grad (evaluation, a checkpoint's recompute) differed in its last bits from y
    with grad on, and a plain bias from a Parameter."""
    x, _, b, _ = make((64, 48, 6) if axis == -1 else (6, 48, 64), axis, dtype, "cpu")
    recorded = layernorm.layer_norm(x, None, torch.nn.Parameter(b.clone()), axis=axis)
    with torch.no_grad():
        unrecorded = layernorm.layer_norm(x, None, torch.nn.Parameter(b.clone()), axis=axis)
    plain = layernorm.layer_norm(x, None, b, axis=axis)
    torch.testing.assert_close(unrecorded, recorded.detach(), rtol=0, atol=0)
    torch.testing.assert_close(plain, recorded.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("params", ["trained", "frozen"])
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@TRAILING_OR_CHANNELS_FIRST
def test_forward_mode_ad_dual_tensors(axis: Any, op: str, params: str, dtype: str, device: str) -> None:
    """torch.autograd.forward_ad: tangents of x and weight through dual tensors, with the parameters requiring
    grad or not, against the float64 composite's jvp."""
    import torch.autograd.forward_ad as fwad

    x, w, b, tx = make((6, 20, 12), axis, dtype, device)
    tw = make((6, 20, 12), axis, dtype, device, seed=1)[1]
    b = b if op == "layer_norm" else None
    w, b = (None if t is None else t.clone().requires_grad_(params == "trained") for t in (w, b))
    with fwad.dual_level():
        dual_x, dual_w = fwad.make_dual(x, tx), fwad.make_dual(w, tw)
        if op == "layer_norm":
            y = layernorm.layer_norm(dual_x, dual_w, b, axis=axis)
        else:
            y = layernorm.rms_norm(dual_x, dual_w, axis=axis)
        tangent = fwad.unpack_dual(y).tangent
    b64 = None if b is None else f64_tensor(b)
    _, expected = torch.func.jvp(
        lambda x, w: composite_reference(op, x, w, b64, axis),
        (f64_tensor(x), f64_tensor(w)),
        (f64_tensor(tx), f64_tensor(tw)),
    )
    assert tangent is not None and tangent.dtype == x.dtype
    assert error_ratio(f64(tangent), f64(expected), tolerance(dtype, "grad")) <= 1


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["torch.func.jvp", "forward_ad"])
@TRAILING_OR_CHANNELS_FIRST
def test_forward_mode_tangents_of_statistics(axis: Any, mode: str, dtype: str, device: str) -> None:
    """The tangents of y, mean and rstd (return_stats) in forward mode, each in its output's dtype, against the
    float64 composite's. The kernels' own forward derivatives leave mean's and rstd's at zero."""
    import torch.autograd.forward_ad as fwad

    x, w, b, tx = make((6, 20, 12), axis, dtype, device)
    spec = check_forward("layer_norm", x, w, b, axis, 1e-5)

    def ours(x: Any) -> Any:
        return layernorm.layer_norm(x, w, b, axis=axis, return_stats=True)

    def composite(x: Any) -> tuple[Any, Any, Any]:
        mean = x.mean(spec.axes, keepdim=True)
        rstd = torch.rsqrt(((x - mean) ** 2).mean(spec.axes, keepdim=True) + 1e-5)
        return composite_reference("layer_norm", x, f64_tensor(w), f64_tensor(b), axis), mean, rstd

    if mode == "forward_ad":
        with fwad.dual_level():
            tangents = [fwad.unpack_dual(out).tangent for out in ours(fwad.make_dual(x, tx))]
    else:
        tangents = list(torch.func.jvp(ours, (x,), (tx,))[1])
    expected = torch.func.jvp(composite, (f64_tensor(x),), (f64_tensor(tx),))[1]
    stat_dtype = torch.float32 if dtype in ("float16", "bfloat16") else x.dtype
    for name, got, want, out_dtype in zip(
        ("y", "mean", "rstd"), tangents, expected, (x.dtype, stat_dtype, stat_dtype), strict=True
    ):
        assert got is not None and got.dtype == out_dtype, name
        kind = "grad" if name == "y" else "output"
        assert error_ratio(f64(got), f64(want), tolerance(dtype, kind)) <= 1, name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@TRAILING_OR_CHANNELS_FIRST
def test_float32_params_with_half_x(axis: Any, dtype: str, device: str) -> None:
    x, w, b, dy = make((4, 6, 16), axis, dtype, device, mixed=True)
    spec = check_forward("layer_norm", x, w, b, axis, 1e-5)
    y = layernorm.layer_norm(x, w, b, axis=axis)
    assert y.dtype == x.dtype
    ref_y = reference.layer_norm(f64(x), f64(w), f64(b), spec)[0]
    assert error_ratio(f64(y), ref_y, tolerance(dtype, "output"), row_condition(f64(x), spec)) <= 1
    y = layernorm.rms_norm(x, w, axis=axis)
    assert y.dtype == x.dtype
    assert error_ratio(f64(y), reference.rms_norm(f64(x), f64(w), spec)[0], tolerance(dtype, "output")) <= 1
    dx, dw, db = layernorm.layer_norm_backward(dy, x, w, axis=axis)
    assert dx.dtype == dw.dtype == db.dtype == x.dtype
    check_layer_norm_grads((dx, dw, db), x, w, dy, axis, dtype)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    layernorm.layer_norm(*leaves, axis=axis).backward(dy)
    assert leaves[1].grad.dtype == torch.float32  # autograd keeps each leaf's dtype
    check_layer_norm_grads(tuple(t.grad for t in leaves), x, w, dy, axis, dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_gradients_without_weight_are_as_for_ones(device: str) -> None:
    x, w, _, dy = make((5, 12), -1, "float32", device)
    ones = torch.ones_like(w)
    for got, expected in zip(
        layernorm.layer_norm_backward(dy, x), layernorm.layer_norm_backward(dy, x, ones), strict=True
    ):
        assert tuple(got.shape) == tuple(expected.shape)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    check_rms_norm_grads(layernorm.rms_norm_backward(dy, x), x, ones, dy, -1, "float32")


def test_large_offset_small_spread_normalizes() -> None:
    """1e4 + N(0, 1e-2): a single-pass E[x^2] - E[x]^2 loses every digit here."""
    x = torch.from_numpy(1e4 + np.random.default_rng(3).normal(0, 1e-2, (16, 4096))).float()
    spec = check_forward("layer_norm", x, None, None, -1, 0.0)
    ref_y = reference.layer_norm(f64(x), None, None, spec)[0]
    got = layernorm.layer_norm(x, eps=0.0)
    assert error_ratio(f64(got), ref_y, tolerance("float32", "output"), row_condition(f64(x), spec)) <= 1


def test_constant_rows_give_the_bias() -> None:
    x = torch.full((3, 8), 7.25)
    b = torch.arange(8, dtype=torch.float32)
    torch.testing.assert_close(layernorm.layer_norm(x, torch.ones(8), b), b.expand(3, 8), rtol=0, atol=0)
    torch.testing.assert_close(layernorm.rms_norm(torch.zeros(2, 4)), torch.zeros(2, 4), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs_and_no_mutation(device: str) -> None:
    base = torch.randn(8, 10, 12, generator=torch.Generator().manual_seed(4)).to(device)
    before = base.clone()
    x = base[:, ::2, :].transpose(1, 2)  # strided and transposed: (8, 12, 5)
    assert not x.is_contiguous()
    dy = torch.ones_like(x)
    for axis in (-1, (0, 2), 1):
        y, mean, rstd = layernorm.layer_norm(x, axis=axis, return_stats=True)
        y_c, _, rstd_c = layernorm.layer_norm(x.contiguous(), axis=axis, return_stats=True)
        torch.testing.assert_close(y, y_c, rtol=0, atol=0)
        torch.testing.assert_close(rstd, rstd_c, rtol=0, atol=0)
        grads = layernorm.layer_norm_backward(dy, x, axis=axis, mean=mean, rstd=rstd)
        for got, expected in zip(grads, layernorm.layer_norm_backward(dy, x.contiguous(), axis=axis), strict=True):
            torch.testing.assert_close(got, expected, rtol=0, atol=0)
        torch.testing.assert_close(layernorm.rms_norm(x, axis=axis), layernorm.rms_norm(x.contiguous(), axis=axis))
        layernorm.rms_norm_backward(dy, x, axis=axis)
    torch.testing.assert_close(base, before, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("rows", [40, 4096], ids=["small", "over-2**15"])
def test_backward_with_statistics_of_any_strides(rows: int, dtype: str, device: str) -> None:
    """Saved statistics sliced, transposed or expanded give the gradients of their values: torch's backward
    kernel reads mean and rstd as one flat array whatever their strides."""
    x, w, _, dy = make((rows, 2, 16), -1, dtype, device)
    _, mean, rstd = layernorm.layer_norm(x, w, return_stats=True)
    expected = layernorm.layer_norm_backward(dy[:, :1], x[:, :1], w)
    sliced = layernorm.layer_norm_backward(dy[:, :1], x[:, :1], w, mean=mean[:, :1], rstd=rstd[:, :1])
    transposed_x = x.transpose(0, 1)
    _, mean_t, rstd_t = layernorm.layer_norm(transposed_x.contiguous(), w, return_stats=True)
    transposed = layernorm.layer_norm_backward(
        dy.transpose(0, 1), transposed_x, w, mean=mean_t.transpose(0, 1).contiguous().transpose(0, 1), rstd=rstd_t
    )
    row = x[:1].expand(rows, 2, 16)
    _, mean_r, rstd_r = layernorm.layer_norm(x[:1], w, return_stats=True)
    expanded = layernorm.layer_norm_backward(dy, row, w, mean=mean_r.expand(rows, 2, 1), rstd=rstd_r.expand(rows, 2, 1))
    for got, want in [
        (sliced, expected),
        (transposed, layernorm.layer_norm_backward(dy.transpose(0, 1), transposed_x, w)),
        (expanded, layernorm.layer_norm_backward(dy, row, w)),
    ]:
        for g, e in zip(got, want, strict=True):
            torch.testing.assert_close(g, e, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("rows", [8, 2048], ids=["small", "blocked"])
def test_cpu_tensors_under_another_default_device(rows: int, dtype: str) -> None:
    """With torch's default device set elsewhere (meta: a model built for deferred init), CPU inputs give CPU
    results: the blocks allocated their outputs and scratch on the default device."""
    x, w, b, dy = make((rows, 256), -1, dtype, "cpu")
    x.requires_grad_()
    expected = _every_result(x, w, b, dy)
    with torch.device("meta"):
        got = _every_result(x, w, b, dy)
    for g, e in zip(got, expected, strict=True):
        assert g.device.type == "cpu"
        torch.testing.assert_close(g, e, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("rows", [8, 2048], ids=["small", "blocked"])
@pytest.mark.parametrize("on_meta", ["weight", "x"])
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm", "layer_norm_backward", "rms_norm_backward"])
@pytest.mark.parametrize("grad", [False, True], ids=["no-grad", "grad"])
def test_meta_tensors_beside_cpu_ones_are_a_device_error(
    grad: bool, op: str, on_meta: str, rows: int, dtype: str
) -> None:
    """torch reports one device here, so the core compares no devices: torch's kernels raised their own
    RuntimeError, and rms_norm's CPU blocks computed with a meta weight and returned garbage."""
    x, w, b, dy = make((rows, 256), -1, dtype, "cpu")
    if on_meta == "weight":
        w, b = w.to("meta"), b.to("meta")
    else:
        x, dy = x.to("meta"), dy.to("meta")
    w.requires_grad_(grad)
    params = {"layer_norm": (w, b), "rms_norm": (w,), "layer_norm_backward": (x, w), "rms_norm_backward": (x, w)}[op]
    first = dy if op.endswith("backward") else x
    expected = "cpu but another argument is on meta" if on_meta == "weight" else "meta but another argument is on cpu"
    with pytest.raises(layernorm.DeviceError, match=f"^x is on {expected}; move them to one device$"):
        getattr(layernorm, op)(first, *params)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("rows", [8, 2048], ids=["small", "blocked"])
@pytest.mark.parametrize("axis", [-1, 1])
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_outputs_take_in_place_ops_before_the_backward(op: str, axis: int, rows: int, dtype: str) -> None:
    """``y += 1`` (or ``relu_()``) on a recorded output, as on F.layer_norm's: the blocked rms_norm returned a view
    made inside its autograd.Function, which autograd refuses to modify in place."""
    x, w, b, dy = make((rows, 256, 2) if axis == 1 else (rows, 256), axis, dtype, "cpu")
    params = (w, b) if op == "layer_norm" else (w,)
    x.requires_grad_()
    (expected,) = torch.autograd.grad(getattr(layernorm, op)(x, *params, axis=axis), x, dy)
    y = getattr(layernorm, op)(x, *params, axis=axis)
    y += 1
    (dx,) = torch.autograd.grad(y, x, dy)
    torch.testing.assert_close(dx, expected)  # a moved axis: autograd's in-place rebase may reorder a sum


def _every_result(x: Any, w: Any, b: Any, dy: Any) -> list[Any]:
    """Forward with and without autograd, autograd's gradient and the explicit backward, of both ops."""
    results = []
    for op, params in (("layer_norm", (w, b)), ("rms_norm", (w,))):
        y = getattr(layernorm, op)(x, *params)
        results += [y, getattr(layernorm, op)(x.detach(), *params), *torch.autograd.grad(y, x, dy)]
        results += getattr(layernorm, f"{op}_backward")(dy, x.detach(), w)
    return results


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("rows", [8, 1024], ids=["small", "over-2**15"])
def test_batched_cotangents_and_vmap_of_the_backward(rows: int, dtype: str) -> None:
    """autograd.grad(is_grads_batched=True) through both ops with trained parameters (the custom backwards wrote
    into scratch, which batched tensors cannot), and torch.func.vmap of the explicit backwards: as a loop gives,
    within the gradient tolerance (batched calls take the plain-ops path, a loop may take the blocked one)."""

    def close(got: Any, expected: Any) -> None:
        assert error_ratio(f64(got), f64(expected), tolerance(dtype, "grad")) <= 1

    x, w, b, _ = make((rows, 64), -1, dtype, "cpu")
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    cotangents = torch.stack([make((rows, 64), -1, dtype, "cpu", seed=k)[3] for k in range(3)])
    for op, inputs in (("layer_norm", leaves), ("rms_norm", leaves[:2])):
        y = getattr(layernorm, op)(*inputs)
        batched = torch.autograd.grad(y, inputs, cotangents, is_grads_batched=True, retain_graph=True)
        for k in range(3):
            grads = torch.autograd.grad(y, inputs, cotangents[k], retain_graph=True)
            for got, expected in zip(batched, grads, strict=True):
                close(got[k], expected)
        backward = getattr(layernorm, f"{op}_backward")
        stacked_x = torch.stack([x, x * 2, x - 1])
        mapped = torch.func.vmap(backward, in_dims=(0, 0, None))(cotangents, stacked_x, w)
        for k in range(3):
            for got, expected in zip(mapped, backward(cotangents[k], stacked_x[k], w), strict=True):
                close(got[k], expected)


def test_from_numpy_onto_a_device_torch_lacks_is_a_device_error() -> None:
    """torch's own AssertionError ("Torch not compiled with CUDA enabled") came through, where the other backends
    and docs/spec.md's error table give a DeviceError. (No machine of this project has an XPU.)"""
    from layernorm_torch import backend

    missing = ["xpu"] + ([] if torch.cuda.is_available() else ["cuda"])
    for device in missing:
        with pytest.raises(layernorm.DeviceError, match=f"torch cannot place an array on '{device}'"):
            backend.from_numpy(np.ones(3, np.float32), device)


def test_backend_functions_convert_exactly() -> None:
    from layernorm_torch import backend

    for dtype in DTYPES.values():
        x = torch.randn(3, 5).to(dtype)
        array = backend.to_numpy(x)
        assert str(array.dtype) == str(dtype).removeprefix("torch.")
        back = backend.from_numpy(array)
        torch.testing.assert_close(back, x, rtol=0, atol=0)
        array[0, 0] = 100
        assert back[0, 0] != 100 and x[0, 0] != 100  # copies, not views
    assert backend.device_of(torch.zeros(1)) == "cpu"
    assert backend.is_tracked(torch.zeros(1, requires_grad=True)) and not backend.is_tracked(torch.zeros(1))
    torch.testing.assert_close(backend.from_foreign(np.arange(4.0)), torch.arange(4.0, dtype=torch.float64))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_view_with_the_negative_bit_crosses_to_another_engine(dtype: str) -> None:
    """The imaginary part of a conjugate view is a real tensor with torch's negative bit, whose ``numpy()`` raises
    RuntimeError: it crosses to the NumPy engine with its values, as the torch engine computes them."""
    x = torch.randn(3, 8, dtype={"float32": torch.complex64, "float64": torch.complex128}[dtype]).conj().imag
    assert x.is_neg() and x.dtype == DTYPES[dtype]
    y = layernorm.layer_norm(x, x[0], backend="numpy")
    assert isinstance(y, torch.Tensor) and y.dtype == x.dtype
    torch.testing.assert_close(y, layernorm.layer_norm(x, x[0]))


def test_device_of_names_the_cuda_index_where_there_are_several(monkeypatch: pytest.MonkeyPatch) -> None:
    from layernorm_torch import backend

    on_second_gpu = types.SimpleNamespace(is_cpu=False, is_cuda=True, get_device=lambda: 1)  # a CUDA tensor's flags
    monkeypatch.setattr(backend, "_CUDA_DEVICE_COUNT", 1)
    assert backend.device_of(on_second_gpu) == "cuda"
    monkeypatch.setattr(backend, "_CUDA_DEVICE_COUNT", 2)
    assert backend.device_of(on_second_gpu) == "cuda:1" and backend.device_of(torch.zeros(1)) == "cpu"


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_arrays_on_two_cuda_devices_are_a_device_error() -> None:
    x, weight = torch.randn(2, 3, device="cuda:0"), torch.ones(3, device="cuda:1")
    for _ in range(2):  # the first call fills the dispatch caches; the second takes the per-call shortcut
        with pytest.raises(layernorm.DeviceError, match="x is on cuda:0 but another argument is on cuda:1"):
            layernorm.layer_norm(x, weight)
    torch.testing.assert_close(layernorm.layer_norm(x, weight.to("cuda:0")), torch.nn.functional.layer_norm(x, (3,)))


def test_numpy_input_on_the_torch_engine_returns_numpy() -> None:
    x = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    spec = check_forward("layer_norm", x, None, None, -1, 1e-5)
    y = layernorm.layer_norm(x, backend="torch")
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    assert error_ratio(y, reference.layer_norm(x, None, None, spec)[0], tolerance("float32", "output")) <= 1


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:`torch.jit.(trace|script)` is deprecated")
def test_tracked_tensor_cannot_cross_to_numpy() -> None:
    """requires_grad, a forward-mode dual tensor, a torch.jit.trace: none crosses silently (a trace would keep
    the crossed result as a constant)."""
    import torch.autograd.forward_ad as fwad

    with pytest.raises(layernorm.BackendError, match=r"^x is a torch array that takes part in torch's autodiff"):
        layernorm.layer_norm(torch.zeros(2, 3, requires_grad=True), backend="numpy")
    with pytest.raises(layernorm.BackendError, match=r"^an argument is a torch array"):
        layernorm.layer_norm(torch.zeros(2, 3), torch.ones(3, requires_grad=True), backend="numpy")
    with fwad.dual_level(), pytest.raises(layernorm.BackendError, match="autodiff"):
        layernorm.layer_norm(fwad.make_dual(torch.zeros(2, 3), torch.ones(2, 3)), backend="numpy")
    with pytest.raises(layernorm.BackendError, match="autodiff"):
        torch.jit.trace(lambda x: layernorm.layer_norm(x, backend="numpy"), (torch.zeros(2, 3),))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:`torch.jit.(trace|script)` is deprecated")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", [(4, 8), (256, 256)], ids=["small", "over-rms_rows.MIN_ELEMENTS"])
@pytest.mark.parametrize("given_stats", [False, True], ids=["stats-recomputed", "stats-given"])
def test_torch_jit_trace_records_the_explicit_backwards(shape: tuple[int, ...], dtype: str, given_stats: bool) -> None:
    """torch.jit.trace (with its check, which traces again) of layer_norm_backward and rms_norm_backward; the traced
    function run on new inputs gives the reference's gradients. The tracer cannot record native_layer_norm_backward
    or the fused rms backward (their output masks), nor `rms_rows`' blocks of the scratch: the traces raised."""
    torch_dtype = getattr(torch, dtype)

    def layer_norm_grads(dy: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> Any:
        stats = layernorm.layer_norm(x, return_stats=True)[1:] if given_stats else (None, None)
        return layernorm.layer_norm_backward(dy, x, w, mean=stats[0], rstd=stats[1])

    def rms_norm_grads(dy: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> Any:
        rstd = layernorm.rms_norm(x, return_stats=True)[1] if given_stats else None
        return layernorm.rms_norm_backward(dy, x, w, rstd=rstd)

    rng = np.random.default_rng(11)
    x, dy, x_new, dy_new = (torch.from_numpy(rng.standard_normal(shape)).to(torch_dtype) for _ in range(4))
    w = torch.from_numpy(rng.standard_normal(shape[-1])).to(torch_dtype)
    for fn, check in ((layer_norm_grads, check_layer_norm_grads), (rms_norm_grads, check_rms_norm_grads)):
        traced = torch.jit.trace(fn, (dy, x, w))
        check(tuple(traced(dy_new, x_new, w)), x_new, w, dy_new, -1, dtype)
