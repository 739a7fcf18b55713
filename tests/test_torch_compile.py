"""torch.compile(fullgraph=True) through the public API, and torch.autocast (output dtype as the spec says)."""

from __future__ import annotations

import asyncio
import copy
import subprocess
import sys
import threading
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch._dynamo.testing import CompileCounter  # noqa: E402
from torch_checks import f64  # noqa: E402

import layernorm  # noqa: E402
import layernorm.torch as lt  # noqa: E402
from layernorm_core import check_forward, reference  # noqa: E402
from layernorm_core.tolerances import error_ratio, row_condition, tolerance  # noqa: E402


def inputs(shape: tuple[int, ...], n: int, seed: int = 0) -> list[Any]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator) * 2 + 1
    return [x, torch.randn(n, generator=generator), torch.randn(n, generator=generator)]


def leaves(tensors: list[Any]) -> list[Any]:
    return [t.clone().requires_grad_() for t in tensors]


@pytest.mark.parametrize(
    ("shape", "axis"),
    [((4, 6, 32), -1), ((2, 6, 5, 5), 1), ((600, 96), -1)],
    ids=["trailing", "channels-first", "one-block"],  # one-block: over 2**15 elements, half CPU gradients widen
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_fullgraph_forward_and_backward(shape: tuple[int, ...], axis: Any, dtype: Any) -> None:
    torch._dynamo.reset()
    x, w, b = (t.to(dtype) for t in inputs(shape, shape[axis]))

    def both(x: Any, w: Any, b: Any) -> Any:
        y, mean, rstd = layernorm.layer_norm(x, w, b, axis=axis, return_stats=True)
        y_alone = layernorm.layer_norm(x, w, b, axis=axis)  # the half CPU Function's one-output form
        return y + y_alone + layernorm.rms_norm(x, w, axis=axis), mean, rstd

    compiled = torch.compile(both, fullgraph=True, backend="aot_eager")
    eager_in, compiled_in = leaves([x, w, b]), leaves([x, w, b])
    eager_out, compiled_out = both(*eager_in), compiled(*compiled_in)
    for e, c in zip(eager_out, compiled_out, strict=True):
        torch.testing.assert_close(c, e)
    eager_out[0].sum().backward()
    compiled_out[0].sum().backward()
    for e, c in zip(eager_in, compiled_in, strict=True):
        torch.testing.assert_close(c.grad, e.grad)


def test_fullgraph_inductor_module() -> None:
    torch._dynamo.reset()
    norm = lt.LayerNorm(64)
    compiled = torch.compile(norm, fullgraph=True)
    x = torch.randn(8, 64, requires_grad=True)
    y = compiled(x)
    spec = check_forward("layer_norm", x, None, None, -1, 1e-5)
    expected = reference.layer_norm(f64(x), None, None, spec)[0]
    assert error_ratio(f64(y), expected, tolerance("float32", "output"), row_condition(f64(x), spec)) <= 1
    y.square().sum().backward()
    assert x.grad is not None and norm.weight.grad is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_fullgraph_model_with_several_norms(dtype: Any) -> None:
    """Several norms in one graph, with repeated and differing call signatures (shape, axis, kind, stats): the
    core's signature cache is read again inside the trace."""
    torch._dynamo.reset()
    torch.manual_seed(0)  # the Linear's initial weights

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.second = lt.LayerNorm(32), lt.LayerNorm(32)
            self.linear = torch.nn.Linear(32, 32)
            self.rms = lt.RMSNorm((4, 32), axis=(1, 2))

        def forward(self, x: Any) -> Any:
            h = self.second(self.linear(self.first(x)))
            y, mean, _ = layernorm.layer_norm(h, axis=1, return_stats=True)
            return self.rms(y + h) + layernorm.layer_norm(x, axis=(1, 2)) + mean

    eager = Block().to(dtype)
    compiled = copy.deepcopy(eager)
    compiled_forward = torch.compile(compiled, fullgraph=True, backend="aot_eager")
    x = inputs((3, 4, 32), 32)[0].to(dtype)
    eager_x, compiled_x = leaves([x]) + leaves([x])
    expected, got = eager(eager_x), compiled_forward(compiled_x)
    torch.testing.assert_close(got, expected)
    expected.square().sum().backward()
    got.square().sum().backward()
    # Eager rms_norm gradients come from layernorm's formulas, compiled ones from torch's composite: float32 ulps
    # apart, held to the tolerance table's float32 gradient tolerance (atol relative to the gradient's RMS).
    for name, got_grad, eager_grad in [
        ("x", compiled_x.grad, eager_x.grad),
        *((name, c.grad, e.grad) for (name, e), c in zip(eager.named_parameters(), compiled.parameters(), strict=True)),
    ]:
        if dtype == torch.float32:
            rms = eager_grad.square().mean().sqrt().item()
            torch.testing.assert_close(got_grad, eager_grad, rtol=1e-4, atol=2e-5 * rms, msg=name)
        else:
            torch.testing.assert_close(got_grad, eager_grad, msg=name)


class _Stack(torch.nn.Module):
    def __init__(self, dtype: Any = torch.float32) -> None:
        super().__init__()
        self.norm, self.rms = lt.LayerNorm(32, dtype=dtype), lt.RMSNorm(32, dtype=dtype)
        self.linear = torch.nn.Linear(32, 32, dtype=dtype)

    def forward(self, x: Any) -> Any:
        return self.rms(self.linear(self.norm(x)))


def test_eager_calls_between_compiled_ones_cause_no_recompiles() -> None:
    """Eager calls with new shapes add signatures to the core's cache; a graph that had read it would recompile
    for each (here: past the limit of 2, an error under fullgraph). Ours compiles twice, as torch's own modules:
    static, then with a dynamic batch size."""
    torch._dynamo.reset()
    model = _Stack()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch._dynamo.config.patch(recompile_limit=2):
        for rows in range(3, 12):
            x = torch.randn(rows, 32)
            torch.testing.assert_close(compiled(x), model(x))


def test_eager_calls_with_new_dtypes_between_compiled_ones_cause_no_recompiles() -> None:
    """The core's dtype names are cached outside traces only: a graph that had read that cache would recompile
    after an eager call with a dtype not seen before."""
    from layernorm_core import dtypes

    torch._dynamo.reset()
    dtypes._names.clear()
    x, w = torch.randn(4, 8), torch.randn(8)
    layernorm.rms_norm(x, w)  # the first call of a process sets up the core's probes: not what this test is about
    compiled = torch.compile(lambda x, w: layernorm.rms_norm(x, w), fullgraph=True, backend="aot_eager")
    with torch._dynamo.config.patch(error_on_recompile=True):
        expected = compiled(x, w)
        for dtype in (torch.float64, torch.float16):
            layernorm.layer_norm_backward(x.to(dtype), x.to(dtype), w.to(dtype))
        torch.testing.assert_close(compiled(x, w), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("mode", ["dynamic=True", "mark_dynamic"])
def test_dynamic_shapes_stay_symbolic(mode: str, dtype: Any) -> None:
    """Under dynamic=True eps is a symbolic float and the sizes are symbolic; mark_dynamic fails the compile if
    anything pins the marked size to one value (a branch on the size in the half CPU backward did)."""
    torch._dynamo.reset()
    model = _Stack(dtype)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager", dynamic=mode == "dynamic=True")
    for rows in (3, 5, 9):
        x = torch.randn(rows, 32, dtype=dtype, requires_grad=True)
        if mode == "mark_dynamic":
            torch._dynamo.mark_dynamic(x, 0)
        y = compiled(x)
        torch.testing.assert_close(y, model(x))
        y.sum().backward()


@pytest.mark.parametrize(
    ("axis", "dtype", "weight_dtype"),
    [
        (1, torch.float32, None),
        (1, torch.bfloat16, torch.float32),
        (-1, torch.bfloat16, torch.float32),
        (-1, torch.float16, torch.float32),
    ],
    ids=["channels-first", "channels-first-mixed", "trailing-mixed", "trailing-float16-mixed"],
)
def test_normalized_sizes_stay_symbolic(axis: int, dtype: Any, weight_dtype: Any) -> None:
    """A normalized size marked dynamic stays symbolic, and dynamic=True compiles once for several: rms_norm over
    axes not trailing, and of a half x with a float32 weight, ran torch's _fused_rms_norm, whose int[]
    normalized_shape pinned the size (ConstraintViolationError; a compile per size)."""

    def norms(x: Any, w: Any) -> Any:
        return layernorm.rms_norm(x, w, axis=axis), layernorm.layer_norm(x, w, axis=axis)

    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(norms, fullgraph=True, backend=counter, dynamic=True)
    for size in (8, 12, 20):
        x, w, _ = inputs((3, size, size), size, seed=size)
        x, w = x.to(dtype), (None if weight_dtype is None else w.to(weight_dtype))
        if size == 8:  # fails the compile if anything pins the size
            torch._dynamo.mark_dynamic(x, axis % 3)
        for got, expected in zip(compiled(x, w), norms(x, w), strict=True):
            torch.testing.assert_close(got, expected)
    assert counter.frame_count == 1


@pytest.mark.parametrize("axis", [-1, 1, (0, 2)], ids=["trailing", "channels-first", "outer"])
def test_an_axis_passed_in_under_dynamic_true_compiles(axis: Any) -> None:
    """dynamo makes an int argument, or an int of a closure, symbolic under dynamic=True: sorting the axes raised
    "sort with non-constant keys" (with fullgraph; a graph break without). The axes are made constants."""
    torch._dynamo.reset()

    def norms(x: Any, w: Any, axis: Any) -> Any:
        return layernorm.layer_norm(x, w, axis=axis), layernorm.rms_norm(x, w, axis=axis)

    compiled = torch.compile(norms, fullgraph=True, backend="eager", dynamic=True)
    x = torch.randn(4, 6, 5)
    w = torch.randn([x.shape[a] for a in ((axis,) if isinstance(axis, int) else axis)])
    for got, expected in zip(compiled(x, w, axis), norms(x, w, axis), strict=True):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("strict", [False, True], ids=["non-strict", "strict"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_export_with_a_dynamic_batch(dtype: Any, strict: bool) -> None:
    """torch.export of a model with the three norms (trailing, channels-first): the exported program runs a new
    batch size as the eager model does."""

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(16, 16, dtype=dtype)
            self.norm = lt.LayerNorm(16, dtype=dtype)
            self.rms = lt.RMSNorm([16], dtype=dtype)
            self.channels = lt.LayerNorm(6, axis=1, dtype=dtype)

        def forward(self, x: Any) -> Any:
            return self.channels(self.rms(self.norm(self.linear(x))))

    model = Model()
    for p in model.parameters():
        torch.nn.init.normal_(p)
    x = inputs((3, 6, 16), 16)[0].to(dtype)
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (x,), dynamic_shapes={"x": {0: batch}}, strict=strict)
    for rows in (3, 5):
        x_new = inputs((rows, 6, 16), 16, seed=rows)[0].to(dtype)
        torch.testing.assert_close(program.module()(x_new), model(x_new))


@pytest.mark.parametrize("strict", [False, True], ids=["non-strict", "strict"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_export_of_half_statistics_and_training(dtype: Any, strict: bool) -> None:
    """An exported half layer_norm returns float32 statistics that run (torch's fake kernel called them half), and
    a strict export of a half module with parameters still trains (it ran autograd.Functions without autograd)."""

    class Stats(torch.nn.Module):
        def forward(self, x: Any, w: Any) -> Any:
            return layernorm.layer_norm(x, w, return_stats=True)

    x, w = inputs((4, 16), 16)[0].to(dtype), torch.randn(16)
    program = torch.export.export(Stats(), (x, w), strict=strict)
    got, expected = program.module()(x, w), layernorm.layer_norm(x, w, return_stats=True)
    assert [t.dtype for t in got] == [dtype, torch.float32, torch.float32]
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)
    norm = lt.LayerNorm(16, dtype=dtype)
    torch.nn.init.normal_(norm.weight)
    trained = torch.export.export(norm, (x,), strict=strict).module()
    leaves = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    y, y_eager = trained(leaves[0]), norm(leaves[1])
    assert y.requires_grad
    dy = inputs((4, 16), 16, seed=1)[0].to(dtype)
    grads = torch.autograd.grad(y, [leaves[0], *trained.parameters()], dy)
    expected_grads = torch.autograd.grad(y_eager, [leaves[1], norm.weight, norm.bias], dy)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("axis", [-1, (0, 2)], ids=["trailing", "axes-0-2"])
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_compiled_func_grad_reaches_x_through_the_statistics(op: str, axis: Any, dtype: Any) -> None:
    """torch.compile(fullgraph=True) of torch.func.grad of a loss on the returned statistics: layer_norm's gave
    dx = 0 (the kernel's mean and rstd, which torch.func's wrapper, unseen by the trace, does not differentiate)."""
    x = torch.randn(3, 5, 4, dtype=torch.float64)

    def loss(x: Any) -> Any:
        stats = getattr(layernorm, op)(x, axis=axis, return_stats=True)[1:]
        return sum((s.double() ** 2).sum() for s in stats)

    x_in = x.to(dtype)
    expected = torch.func.grad(loss)(x_in)
    got = torch.compile(torch.func.grad(loss), fullgraph=True, backend="aot_eager")(x_in)
    torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-3)
    assert got.abs().max() > 0


@pytest.mark.parametrize("scale", [1e15, 1e-15])
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_compiled_gradient_through_rstd_at_extreme_spreads(op: str, scale: float) -> None:
    """torch.compile(fullgraph=True): a loss on the returned rstd of float32 rows of spread 1e15 or 1e-15 (eps = 0)
    sends x the reference's gradient. rms_norm's rstd came from torch's kernel there, whose derivative is of the
    size rstd**3: dx was 0 or inf."""
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(0)) * scale
    k = torch.randn(4, 1, generator=torch.Generator().manual_seed(1))

    def loss(x: Any) -> Any:
        return (getattr(layernorm, op)(x, eps=0.0, return_stats=True)[-1] * k).sum()

    leaf = x.clone().requires_grad_()
    torch.compile(loss, fullgraph=True, backend="aot_eager")(leaf).backward()
    spec = check_forward(op, x, None, None, -1, 0.0)
    expected = reference.statistics_backward(f64(x), spec, None, f64(k))
    assert error_ratio(f64(leaf.grad), expected, tolerance("float32", "grad")) <= 1


def test_rms_norm_backward_compiles_once_for_any_batch() -> None:
    """The explicit rms_norm_backward under dynamic=True: one graph for every batch size (the CPU blocks branched
    on the size and guarded on the thread's scratch)."""
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(
        lambda dy, x, w: layernorm.rms_norm_backward(dy, x, w), fullgraph=True, backend=counter, dynamic=True
    )
    w = torch.randn(256)
    for rows in (16, 300, 1500, 16):
        x, dy = inputs((rows, 256), 256, seed=rows)[0], inputs((rows, 256), 256, seed=-rows)[0]
        for got, expected in zip(compiled(dy, x, w), layernorm.rms_norm_backward(dy, x, w), strict=True):
            torch.testing.assert_close(got, expected)
    assert counter.frame_count == 1


def test_crossing_frameworks_inside_a_trace_is_a_backend_error() -> None:
    """A traced tensor cannot go to another engine (the NumPy engine would be traced as torch ops): BackendError,
    as for a tensor that requires grad."""
    torch._dynamo.reset()
    layernorm.layer_norm(np.ones((2, 3)))  # the numpy engine loaded, as in a process that used it before
    compiled = torch.compile(lambda x: layernorm.layer_norm(x, backend="numpy"), backend="aot_eager")
    with pytest.raises(layernorm.BackendError, match="cannot see that graph"):
        compiled(torch.randn(4, 32))


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_fullgraph_reports_a_bad_input_as_dynamo_does_naming_ours(dynamic: bool) -> None:
    """fullgraph=True: dynamo's Unsupported names our ShapeError and its message (docs/spec.md, Errors); without
    fullgraph the graph breaks and the ShapeError itself comes out (the conformance suite's traced errors). With
    dynamic shapes too (the message's sizes are symbolic: dynamo traces f-strings of them, not str()), and from a
    module with parameters given an x of the wrong size."""
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda x: layernorm.layer_norm(x, torch.ones(3)), backend="aot_eager", fullgraph=True, dynamic=dynamic
    )
    with pytest.raises(torch._dynamo.exc.Unsupported, match=r"ShapeError\(.*weight must have shape \(8,\)"):
        compiled(torch.randn(4, 8))
    module = torch.compile(lt.LayerNorm(4), backend="aot_eager", fullgraph=True, dynamic=dynamic)
    with pytest.raises(torch._dynamo.exc.Unsupported, match=r"ShapeError\(.*x's sizes along axis="):
        module(torch.randn(2, 5))


@pytest.mark.parametrize("scope", ["torch", "auto"])
def test_fullgraph_inside_a_using_block(scope: str) -> None:
    """A using() block naming x's backend (or auto) holds compiled code as it holds eager calls: dynamo cannot read
    the block's ContextVar, so the core hands it the block's name as a constant."""
    torch._dynamo.reset()
    x = inputs((4, 32), 32)[0]
    compiled = torch.compile(lambda x: layernorm.layer_norm(x) * 2, fullgraph=True, backend="aot_eager")
    with layernorm.using(scope):
        torch.testing.assert_close(compiled(x), torch.nn.functional.layer_norm(x, (32,)) * 2)


def test_fullgraph_while_another_thread_is_inside_a_using_block() -> None:
    """Another thread's block does not apply here, and does not stop this thread's compiled code. A block of
    another framework's backend in this thread then traces the function again, and the trace raises the
    BackendError a tracked tensor gets in eager mode (fullgraph reports it inside torch's Unsupported)."""
    torch._dynamo.reset()
    x = inputs((4, 32), 32)[0]
    compiled = torch.compile(lambda x: layernorm.layer_norm(x) * 2, fullgraph=True, backend="aot_eager")
    opened, finished = threading.Event(), threading.Event()

    def hold_a_numpy_block() -> None:
        with layernorm.using("numpy"):
            opened.set()
            finished.wait(timeout=60)

    other = threading.Thread(target=hold_a_numpy_block)
    other.start()
    try:
        assert opened.wait(timeout=60)
        torch.testing.assert_close(compiled(x), torch.nn.functional.layer_norm(x, (32,)) * 2)
    finally:
        finished.set()
        other.join()
    with layernorm.using("numpy"), pytest.raises(torch._dynamo.exc.Unsupported, match=r"BackendError.*cannot see"):
        compiled(x)


def test_fullgraph_after_interleaved_using_blocks_of_asyncio_tasks() -> None:
    """Blocks of asyncio tasks on one thread, entered and left out of order, leave no block behind for compiled
    code: once they are closed it dispatches by array type again."""

    async def block(name: str, inside: float, after: float) -> None:
        with layernorm.using(name):
            await asyncio.sleep(inside)
        await asyncio.sleep(after)

    async def interleave() -> None:
        await asyncio.gather(block("numpy", 0.01, 0.0), block("torch", 0.03, 0.0), block("numpy", 0.005, 0.01))

    torch._dynamo.reset()
    asyncio.run(interleave())
    x = inputs((4, 32), 32)[0]
    compiled = torch.compile(lambda x: layernorm.layer_norm(x) * 2, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), torch.nn.functional.layer_norm(x, (32,)) * 2)


@pytest.mark.parametrize(
    "first_call",
    [
        "f = torch.compile(lambda x: layernorm.layer_norm(x) * 2, fullgraph=True, backend='aot_eager')\n"
        "torch.testing.assert_close(f(x), F.layer_norm(x, (8,)) * 2)",
        "import layernorm.torch as lt\n"
        "norm = lt.LayerNorm(8)\n"
        "f = torch.compile(norm, fullgraph=True, backend='aot_eager')\n"
        "torch.testing.assert_close(f(x), F.layer_norm(x, (8,), norm.weight, norm.bias))",
        "w = torch.nn.Parameter(torch.randn(8))\n"
        "f = torch.compile(lambda x: layernorm.rms_norm(x, w), fullgraph=True, backend='aot_eager')\n"
        "torch.testing.assert_close(f(x), F.rms_norm(x, (8,), w, 1e-5))",
        "f = torch.compile(lambda x: layernorm.layer_norm(x, backend='torch'), fullgraph=True, backend='aot_eager')\n"
        "torch.testing.assert_close(f(x), F.layer_norm(x, (8,)))",
        "layernorm.layer_norm(np.ones((2, 8), np.float32))\n"
        "f = torch.compile(lambda x: layernorm.layer_norm(x), fullgraph=True, backend='aot_eager')\n"
        "torch.testing.assert_close(f(x), F.layer_norm(x, (8,)))\n"
        "torch.testing.assert_close(layernorm.layer_norm(x), F.layer_norm(x, (8,)))",
        "f = torch.compile(lambda x: layernorm.rms_norm(x), fullgraph=True, backend='aot_eager')\n"
        "torch.testing.assert_close(f(x), F.rms_norm(x, (8,), None, 1e-5))\n"
        "layernorm.layer_norm(np.ones((2, 8), np.float32))\n"
        "layernorm.layer_norm(torch.nn.Parameter(x))\n"
        "layernorm.layer_norm_backward(x.double(), x.double())",
    ],
    ids=["functional", "module", "parameter-weight", "backend-argument", "after-a-numpy-call", "eager-calls-after"],
)
def test_fullgraph_as_first_torch_call_of_a_process(first_call: str) -> None:
    """A fresh process whose first layernorm call on a torch tensor is inside torch.compile(fullgraph=True); the
    next call runs the same graph, after eager calls on new array types and dtypes too: a trace had read the core's
    caches (a global set on the first call, the registry's per-type dicts), so each eager call that added to them
    recompiled the graphs."""
    script = "import numpy as np, torch, layernorm\nimport torch.nn.functional as F\nx = torch.randn(3, 8)\n"
    script += first_call + "\nwith torch._dynamo.config.patch(error_on_recompile=True):\n    f(x)\nprint('ok')\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_cpu_autocast_keeps_x_dtype() -> None:
    """CPU autocast to bfloat16: a float32 x stays float32 (torch does not autocast layer_norm on the CPU); the
    bfloat16 output of an autocast Linear is normalized in bfloat16 with float32 parameters (mixed precision)."""
    linear = torch.nn.Linear(32, 32)
    norm = lt.LayerNorm(32)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(4, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layernorm.layer_norm(x).dtype == torch.float32
        assert layernorm.rms_norm(x).dtype == torch.float32
        h = linear(x)
        assert h.dtype == torch.bfloat16
        y = norm(h)
        r = layernorm.rms_norm(h, norm.weight)
    assert y.dtype == r.dtype == torch.bfloat16
    spec = check_forward("layer_norm", h, norm.weight, norm.bias, -1, 1e-5)
    expected = reference.layer_norm(f64(h), f64(norm.weight), f64(norm.bias), spec)[0]
    assert error_ratio(f64(y), expected, tolerance("bfloat16", "output"), row_condition(f64(h), spec)) <= 1
    expected = reference.rms_norm(f64(h), f64(norm.weight), spec)[0]
    assert error_ratio(f64(r), expected, tolerance("bfloat16", "output")) <= 1
    (y.float().sum() + r.float().sum()).backward()
    assert norm.weight.grad.dtype == torch.float32 and linear.weight.grad.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_cuda_autocast_keeps_x_dtype(dtype: Any) -> None:
    """CUDA autocast runs layer_norm in float32 (F.layer_norm would return float32); ours returns x's dtype."""
    x = torch.randn(4, 32, device="cuda", dtype=dtype)
    w = torch.randn(32, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        y, mean, rstd = layernorm.layer_norm(x, w, return_stats=True)
        r = layernorm.rms_norm(x, w)
    assert y.dtype == r.dtype == dtype and mean.dtype == rstd.dtype == torch.float32
    spec = check_forward("layer_norm", x, w, None, -1, 1e-5)
    expected = reference.layer_norm(f64(x), f64(w), None, spec)[0]
    name = str(dtype).removeprefix("torch.")
    assert error_ratio(f64(y), expected, tolerance(name, "output"), row_condition(f64(x), spec)) <= 1
