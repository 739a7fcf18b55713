"""layernorm.torch.LayerNorm / RMSNorm: torch.nn's parameters and state_dict keys, checkpoints load, plus ``axis``."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch_checks import check_layer_norm_grads, check_rms_norm_grads, f64  # noqa: E402

import layernorm  # noqa: E402
import layernorm.torch as lt  # noqa: E402
from layernorm_core import check_forward, reference  # noqa: E402
from layernorm_core.tolerances import error_ratio, row_condition, tolerance  # noqa: E402


def randomize(module: Any, seed: int) -> Any:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))
    return module


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"bias": False}, {"elementwise_affine": False}, {"eps": 1e-3}],
    ids=["affine", "no-bias", "no-affine", "eps=1e-3"],
)
@pytest.mark.parametrize("shape", [(16,), (4, 16)], ids=["1-axis", "2-axes"])
def test_layer_norm_loads_a_torch_checkpoint(shape: tuple[int, ...], kwargs: dict) -> None:
    theirs = randomize(torch.nn.LayerNorm(shape, **kwargs), 0)
    ours = lt.LayerNorm(shape, **kwargs)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert repr(ours) == f"{repr(theirs)[:-1]}, axis={ours.axis})"
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(3, 4, 16, generator=torch.Generator().manual_seed(1)) * 2 + 1
    y = ours(x)
    spec = check_forward("layer_norm", x, ours.weight, ours.bias, ours.axis, ours.eps)
    w, b = (None if p is None else f64(p) for p in (ours.weight, ours.bias))
    expected = reference.layer_norm(f64(x), w, b, spec)[0]
    assert error_ratio(f64(y), expected, tolerance("float32", "output"), row_condition(f64(x), spec)) <= 1
    torch.testing.assert_close(y, theirs(x))
    theirs.load_state_dict(randomize(ours, 2).state_dict(), strict=True)  # and back
    torch.testing.assert_close(ours(x), theirs(x))


DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eps", [None, 1e-6], ids=["eps=None", "eps=1e-6"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no-affine"])
def test_rms_norm_loads_a_torch_checkpoint(eps: float | None, affine: bool, dtype: str) -> None:
    """Rows with mean(x**2) ~ 4e-4, where eps=None's value shows: torch's kernels add float32's epsilon for a
    half x (bfloat16's own, 2**-7, would change y by a third)."""
    theirs = randomize(torch.nn.RMSNorm([16], eps=eps, elementwise_affine=affine), 0).to(DTYPES[dtype])
    ours = lt.RMSNorm([16], eps=eps, elementwise_affine=affine, dtype=DTYPES[dtype])
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert repr(ours) == f"{repr(theirs)[:-1]}, axis={ours.axis})"
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = (torch.randn(5, 16, generator=torch.Generator().manual_seed(1)) * 0.02).to(DTYPES[dtype])
    y = ours(x)
    used_eps = torch.finfo(torch.float64 if dtype == "float64" else torch.float32).eps if eps is None else eps
    spec = check_forward("rms_norm", x, ours.weight, None, -1, used_eps)
    expected = reference.rms_norm(f64(x), None if ours.weight is None else f64(ours.weight), spec)[0]
    assert error_ratio(f64(y), expected, tolerance(dtype, "output")) <= 1
    torch.testing.assert_close(y, theirs(x))


@pytest.mark.parametrize("module", ["LayerNorm", "RMSNorm"])
def test_channels_first_axis(module: str) -> None:
    norm = randomize(getattr(lt, module)(6, axis=1), 3)
    x = torch.randn(2, 6, 5, 5, generator=torch.Generator().manual_seed(4))
    y = norm(x)
    assert y.shape == x.shape
    # Channels-first over axis 1 equals channels-last over the last axis, moved back.
    theirs = randomize(getattr(torch.nn, module)(6), 3)
    torch.testing.assert_close(y, theirs(x.movedim(1, -1)).movedim(-1, 1))
    y.sum().backward()
    assert norm.weight.grad is not None and norm.weight.grad.shape == (6,)


def test_axis_and_shape_must_agree() -> None:
    with pytest.raises(layernorm.ShapeError):
        lt.LayerNorm((4, 5), axis=1)
    norm = lt.LayerNorm((3, 5), axis=(1, 3))
    assert norm(torch.randn(2, 3, 4, 5)).shape == (2, 3, 4, 5)
    with pytest.raises(layernorm.ShapeError):
        norm(torch.randn(2, 4, 4, 5))


@pytest.mark.parametrize(
    ("module", "shape", "axis", "fits", "other"),
    [
        ("LayerNorm", 4, None, (3, 4), (3, 5)),
        ("RMSNorm", 4, None, (3, 4), (3, 5)),
        ("LayerNorm", (3, 4), None, (2, 3, 4), (3, 5)),
        ("RMSNorm", (3, 4), (0, 2), (3, 5, 4), (3, 4, 5)),
    ],
    ids=["layer_norm", "rms_norm", "layer_norm-2-axes", "rms_norm-axis"],
)
@pytest.mark.parametrize("affine", [False, True], ids=["no-parameters", "parameters"])
def test_module_refuses_an_input_of_other_sizes(
    module: str, shape: Any, axis: Any, fits: tuple[int, ...], other: tuple[int, ...], affine: bool
) -> None:
    """torch.nn refuses an x whose sizes along axis are not normalized_shape, so must we, with an error that names x
    (with parameters, not the weight that x does not fit; without them, nothing else ties x to normalized_shape)."""
    ours = getattr(lt, module)(shape, elementwise_affine=affine, axis=axis)
    x = torch.randn(fits)
    assert ours(x).shape == x.shape
    with pytest.raises(layernorm.ShapeError, match=r"^x's sizes along .*normalized_shape \(.*\); got \(.*5.*\)"):
        ours(torch.randn(other))
    if axis is None:
        with pytest.raises(RuntimeError):  # torch's own module refuses it too
            getattr(torch.nn, module)(shape, elementwise_affine=affine)(torch.randn(other))
    with pytest.raises(layernorm.ShapeError, match="out of range"):  # x's own errors first, in the core's words
        ours(torch.randn(()))
    with pytest.raises(layernorm.DTypeError):
        ours(torch.ones(fits, dtype=torch.int64))


@pytest.mark.parametrize("module", ["LayerNorm", "RMSNorm"])
@pytest.mark.parametrize("affine", [False, True], ids=["no-parameters", "parameters"])
@pytest.mark.parametrize("x", [np.ones((2, 4), np.float32), [[1.0, 2.0, 3.0, 4.0]]], ids=["numpy", "list"])
def test_module_refuses_an_x_that_is_no_tensor(module: str, affine: bool, x: Any) -> None:
    """torch.nn's modules raise TypeError for a NumPy array: ours a DTypeError (a TypeError), with or without
    parameters (without, they returned a NumPy array; RMSNorm raised AttributeError before the checks)."""
    with pytest.raises(TypeError):
        getattr(torch.nn, module)(4, elementwise_affine=affine)(x)
    expected = rf"^layernorm\.torch\.{module} takes a torch\.Tensor; got {type(x).__module__}\.{type(x).__name__}$"
    with pytest.raises(layernorm.DTypeError, match=expected):
        getattr(lt, module)(4, elementwise_affine=affine)(x)


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "float8_e5m2", "float4_e2m1fn_x2"])
@pytest.mark.parametrize("affine", [False, True], ids=["no-parameters", "parameters"])
@pytest.mark.parametrize("module", ["LayerNorm", "RMSNorm"])
def test_module_refuses_a_floating_x_outside_the_table_before_any_op(module: str, affine: bool, dtype: str) -> None:
    """torch calls float8 and float4 floating: such an x is the core's DTypeError, before any op runs. RMSNorm cast
    its weight to x's dtype first, as it casts one for the table's dtypes: an op before the check, and for float4,
    which has no cast kernel, torch's NotImplementedError instead of the DTypeError."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class RecordOps(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: list[str] = []

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    norm, x = getattr(lt, module)(8, elementwise_affine=affine), torch.zeros(3, 8, dtype=getattr(torch, dtype))
    with (
        RecordOps() as recorded,
        pytest.raises(layernorm.DTypeError, match=rf"^x must have a floating dtype .*; got {dtype}$"),
    ):
        norm(x)
    assert recorded.ops == []


@pytest.mark.parametrize("module", ["LayerNorm", "RMSNorm"])
def test_a_weight_that_does_not_fit_is_blamed_when_x_fits(module: str) -> None:
    ours = getattr(lt, module)(4)
    ours.weight = torch.nn.Parameter(torch.ones(5))
    with pytest.raises(layernorm.ShapeError, match=r"^weight must have shape \(4,\)"):
        ours(torch.randn(3, 4))


def test_module_without_parameters_compiles_with_dynamic_batch() -> None:
    torch._dynamo.reset()
    norm = lt.LayerNorm(8, elementwise_affine=False)
    compiled = torch.compile(norm, fullgraph=True, dynamic=True)
    for rows in (3, 5):
        x = torch.randn(rows, 8)
        torch.testing.assert_close(compiled(x), torch.nn.functional.layer_norm(x, (8,)))
    with pytest.raises(torch._dynamo.exc.Unsupported, match=r"ShapeError(.|\n)*normalized_shape"):
        compiled(torch.randn(3, 6))  # fullgraph reports an error raised in the trace inside torch's Unsupported


@pytest.mark.parametrize(
    "normalized_shape",
    [[np.int64(8)], np.array([8]), torch.tensor([8])],
    ids=["numpy-ints", "numpy-array", "tensor"],
)
@pytest.mark.parametrize("module", ["LayerNorm", "RMSNorm"])
def test_a_normalized_shape_of_integer_scalars_compiles_as_torch_nn_does(module: str, normalized_shape: Any) -> None:
    """normalized_shape of NumPy or torch integer scalars (a config read with NumPy, ``x.shape`` of a tensor's sizes):
    torch.nn compiles a module without parameters on it with fullgraph. Ours kept the scalars, which dynamo holds
    as values it cannot compare with x's sizes, and failed ("list_richcompare_nonconst"): they are Python ints."""
    x = torch.randn(3, 8)
    theirs = getattr(torch.nn, module)(normalized_shape, elementwise_affine=False)
    ours = getattr(lt, module)(normalized_shape, elementwise_affine=False)
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(theirs, fullgraph=True)(x), theirs(x))
    torch.testing.assert_close(torch.compile(ours, fullgraph=True)(x), theirs(x))
    assert ours.normalized_shape == (8,) and type(ours.normalized_shape[0]) is int


def test_parameters_follow_device_and_dtype() -> None:
    norm = lt.LayerNorm(8, dtype=torch.float64)
    assert norm.weight.dtype == norm.bias.dtype == torch.float64
    assert norm(torch.randn(2, 8, dtype=torch.float64)).dtype == torch.float64
    assert "axis=-1" in repr(norm)


def test_axis_attribute_is_an_int_for_one_axis() -> None:
    assert lt.LayerNorm(8).axis == -1 and lt.RMSNorm([8]).axis == -1
    assert lt.LayerNorm(6, axis=1).axis == 1 and lt.LayerNorm(6, axis=(1,)).axis == 1
    assert lt.LayerNorm((4, 5)).axis == (-2, -1) and lt.RMSNorm((3, 5), axis=(1, 3)).axis == (1, 3)


@pytest.mark.parametrize("module", ["LayerNorm", "RMSNorm"])
def test_axis_takes_what_the_functions_take(module: str) -> None:
    """Any integer type (NumPy's), as layernorm.layer_norm takes it; anything else is the core's ArgumentError."""
    assert getattr(lt, module)(6, axis=np.int64(1)).axis == 1
    assert getattr(lt, module)((3, 5), axis=[np.int32(1), 3]).axis == (1, 3)
    for bad in (1.0, "1", True, torch.tensor(1.0)):
        with pytest.raises(layernorm.ArgumentError, match="axis must be an int or a tuple of ints"):
            getattr(lt, module)(6, axis=bad)


@pytest.mark.parametrize("module", ["LayerNorm", "RMSNorm"])
def test_torch_jit_script_is_a_backend_error_naming_what_traces(module: str) -> None:
    """TorchScript cannot compile the Python dispatch: refused up front, with the tracers that work named."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), getattr(lt, module)(8))
    refused = rf"layernorm.torch.{module} cannot be compiled by torch.jit.script.*torch.compile or torch.export"
    with pytest.raises(layernorm.BackendError, match=rf"{refused}.*torch.nn.{module} in a TorchScript model"):
        torch.jit.script(model)
    x = torch.randn(3, 8)
    traced = torch.jit.trace(model, x, check_trace=False)  # tracing records the ops instead: unaffected
    torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("module", "kwargs"),
    [("LayerNorm", {}), ("LayerNorm", {"elementwise_affine": False}), ("LayerNorm", {"axis": 1}), ("RMSNorm", {})],
    ids=["layer_norm", "layer_norm-no-affine", "layer_norm-axis=1", "rms_norm"],
)
def test_fx_symbolic_trace_records_one_call(module: str, kwargs: dict) -> None:
    """torch.fx.symbolic_trace (FX quantization, feature extractors) records the module as one call_function node,
    as it records torch.nn's as one call_module: it used to trace into the checks, which iterate x's sizes."""
    import pickle

    model = torch.nn.Sequential(torch.nn.Linear(8, 8), randomize(getattr(lt, module)(8, **kwargs), 0))
    graph_module = torch.fx.symbolic_trace(model)
    called = [node.target.__name__ for node in graph_module.graph.nodes if node.op == "call_function"]
    assert called == ["_module_layer_norm" if module == "LayerNorm" else "_module_rms_norm"]
    x = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(graph_module(x), model(x), rtol=0, atol=0)
    torch.testing.assert_close(pickle.loads(pickle.dumps(graph_module))(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("axis", [-1, 1], ids=["trailing", "channels-first"])
def test_torch_jit_trace_holds_the_normalized_shape_as_a_constant(axis: int) -> None:
    """As torch.nn.LayerNorm's: the legacy ONNX exporter (torch.onnx.export(dynamo=False), which traces) needs a
    constant normalized_shape, and with dynamic axes it failed on ours, which the core read from x's traced sizes.
    The batch sizes stay traced: the trace serves other batches."""
    norm = randomize(lt.LayerNorm(6, axis=axis), 0).eval()
    x = torch.randn(3, 6, 5) if axis == 1 else torch.randn(3, 5, 6)
    with torch.no_grad():
        traced = torch.jit.trace(norm, x)
        kernel = next(n for n in traced.inlined_graph.nodes() if n.kind().endswith("layer_norm"))
        sizes = list(kernel.inputsAt(1).node().inputs())  # normalized_shape: a list of one constant
        assert [size.node().kind() for size in sizes] == ["prim::Constant"], kernel
        other = torch.randn(7, *x.shape[1:])
        torch.testing.assert_close(traced(other), norm(other), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("module", "kwargs"),
    [("LayerNorm", {}), ("LayerNorm", {"axis": 1}), ("RMSNorm", {})],
    ids=["layer_norm", "layer_norm-axis=1", "rms_norm"],
)
def test_torch_jit_trace_of_a_module_warns_nothing(module: str, kwargs: dict) -> None:
    """As torch.nn's: the checks turned the weight's traced sizes into Python booleans, and torch warned that the
    trace might be incorrect (a TracerWarning each); with warnings as errors the trace raised a SystemError."""
    norm = randomize(getattr(lt, module)(6, **kwargs), 0)
    x = torch.randn(3, 6, 5) if kwargs else torch.randn(3, 5, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        traced = torch.jit.trace(norm, x)
    torch.testing.assert_close(traced(x), norm(x), rtol=0, atol=0)


def test_layer_norm_module_takes_its_input_by_torch_nn_name() -> None:
    """torch.nn.LayerNorm's forward names its argument input: norm(input=x), and export specs keyed by it."""
    norm, x = randomize(lt.LayerNorm(6), 0), torch.randn(3, 6)
    torch.testing.assert_close(norm(input=x), norm(x), rtol=0, atol=0)
    exported = torch.export.export(norm, (x,), dynamic_shapes={"input": {0: torch.export.Dim("batch")}})
    other = torch.randn(5, 6)
    torch.testing.assert_close(exported.module()(other), norm(other), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_torch_jit_trace_of_a_half_model_with_trainable_parameters(dtype: str) -> None:
    """torch.jit.trace of a half model with the default requires_grad parameters, with its check (which traces again
    under no_grad): it raised inside torch's tracer. The trace's gradients sum in float32, as eager ones do."""
    norm = randomize(lt.LayerNorm(64), 0).to(DTYPES[dtype])
    generator = torch.Generator().manual_seed(3)
    x, dy = (torch.randn(256, 64, generator=generator).to(DTYPES[dtype]) for _ in range(2))
    with warnings.catch_warnings():
        # The trace's check compares it with the eager call, whose mixed-type half kernel rounds y 1 ulp apart from
        # the trace's float32 route here and there: torch then warns (float16), as for any op of another rounding.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(norm, x)
    y = traced(x)
    spec = check_forward("layer_norm", x, norm.weight, norm.bias, -1, 1e-5)
    expected = reference.layer_norm(f64(x), f64(norm.weight), f64(norm.bias), spec)[0]
    assert y.dtype == x.dtype
    assert error_ratio(f64(y), expected, tolerance(dtype, "output"), row_condition(f64(x), spec)) <= 1
    x.requires_grad_(True)
    grads = torch.autograd.grad(traced(x), (x, norm.weight, norm.bias), dy)
    check_layer_norm_grads(grads, x.detach(), norm.weight.detach(), dy, -1, dtype)
    # One aten::layer_norm, which the legacy ONNX exporter writes as one LayerNormalization: the decomposition it
    # wrote for aten::native_layer_norm, a float16 model, was refused by onnxruntime's fusion (mixed types).
    kernels = [n.kind() for n in traced.inlined_graph.nodes() if n.kind().endswith("layer_norm")]
    assert kernels == ["aten::layer_norm"]


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_torch_jit_trace_of_statistics_of_a_trainable_x(op: str, dtype: str) -> None:
    """torch.jit.trace of a call returning the statistics of an x that requires grad, with the trace's check (which
    traces again under no_grad): the statistics came from other ops with and without grad mode, and the check
    failed ("Graphs differed across invocations")."""
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(0)).to(DTYPES[dtype]).requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # a half trace's rounding may differ by an ulp
        traced = torch.jit.trace(lambda t: getattr(layernorm, op)(t, return_stats=True), (x,))
    for got, expected in zip(traced(x), getattr(layernorm, op)(x, return_stats=True), strict=True):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(
    ("x_dtype", "weight_dtype"),
    [("float32", "bfloat16"), ("float64", "float32"), ("float32", "float64"), ("bfloat16", "float16")],
)
def test_rms_norm_takes_a_weight_of_another_dtype_as_torch_nn_does(x_dtype: str, weight_dtype: str) -> None:
    """torch.nn.RMSNorm takes any floating weight and returns x's dtype (a float32 residual stream in a bfloat16
    model): so does ours, casting the weight to a dtype the core takes (float32 for half x); the weight's gradient
    comes back in its own dtype."""
    theirs = randomize(torch.nn.RMSNorm(16), 0).to(DTYPES[weight_dtype])
    ours = lt.RMSNorm(16, dtype=DTYPES[weight_dtype])
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(1)).to(DTYPES[x_dtype])
    y = ours(x)
    assert y.dtype == x.dtype
    torch.testing.assert_close(y, theirs(x))
    (dweight,) = torch.autograd.grad(y.float().sum(), ours.weight)
    assert dweight.dtype == DTYPES[weight_dtype]


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
@pytest.mark.parametrize("rows", [8, 4096], ids=["small", "blocked"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_activation_checkpointing_gives_the_same_gradients(dtype: str, rows: int, reentrant: bool) -> None:
    """torch.utils.checkpoint recomputes the forward during the backward: the gradients are the same bits.

    4096 rows take the CPU routes of our own autograd Functions (the half backward, rms_norm's).
    """
    from torch.utils.checkpoint import checkpoint

    dt = getattr(torch, dtype)
    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Linear(64, 64), lt.LayerNorm(64), lt.RMSNorm(64)).to(dt)
    x = torch.randn(rows, 64, dtype=dt, requires_grad=True)
    inputs = [x, *block.parameters()]

    def gradients(output: Any) -> list[Any]:
        output.square().sum().backward()  # reentrant checkpointing refuses torch.autograd.grad
        grads = [t.grad for t in inputs]
        for t in inputs:
            t.grad = None
        return grads

    plain = gradients(block(x))
    checkpointed = gradients(checkpoint(block, x, use_reentrant=reentrant))
    for ours, theirs in zip(checkpointed, plain, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("module", ["LayerNorm", "RMSNorm"])
def test_torch_func_ensemble_of_modules_matches_the_reference(module: str, dtype: str) -> None:
    """An ensemble: three modules' parameters stacked (torch.func.stack_module_state), called under vmap.

    Each member's output and parameter gradients are the reference's for its own parameters.
    """
    import copy

    from torch.func import functional_call, grad, stack_module_state, vmap

    dt = getattr(torch, dtype)
    members = [randomize(getattr(lt, module)(16).to(dt), seed) for seed in range(3)]
    params, buffers = stack_module_state(members)
    skeleton = copy.deepcopy(members[0]).to("meta")
    generator = torch.Generator().manual_seed(7)
    x, dy = (torch.randn(5, 16, generator=generator).to(dt) for _ in range(2))

    def call(p: Any, b: Any) -> Any:
        return functional_call(skeleton, (p, b), (x,))

    def loss(p: Any, b: Any) -> Any:
        return (call(p, b) * dy).sum()

    ys = vmap(call)(params, buffers)
    grads = vmap(grad(loss))(params, buffers)
    spec = check_forward("layer_norm" if module == "LayerNorm" else "rms_norm", x, None, None, -1, 1e-5)
    for k, member in enumerate(members):
        weight = member.weight
        if module == "LayerNorm":
            expected = reference.layer_norm(f64(x), f64(weight), f64(member.bias), spec)[0]
            check_layer_norm_grads((None, grads["weight"][k], grads["bias"][k]), x, weight, dy, -1, dtype)
        else:
            expected = reference.rms_norm(f64(x), f64(weight), spec)[0]
            check_rms_norm_grads((None, grads["weight"][k]), x, weight, dy, -1, dtype)
        assert error_ratio(f64(ys[k]), expected, tolerance(dtype, "output"), row_condition(f64(x), spec)) <= 1


@pytest.mark.parametrize("module", ["LayerNorm", "RMSNorm"])
def test_modules_run_on_torch_whatever_engine_is_in_force(module: str) -> None:
    """layernorm.use and using() name the engine of plain calls; a torch module runs torch's, as the Flax modules
    run JAX's (under using("numpy") its forward raised BackendError: parameters that require grad cannot cross)."""
    norm, x = getattr(lt, module)(8), torch.randn(3, 8)
    expected = norm(x)
    with layernorm.using("numpy"):
        torch.testing.assert_close(norm(x), expected, rtol=0, atol=0)
        with torch.no_grad():
            torch.testing.assert_close(norm(x), expected, rtol=0, atol=0)
