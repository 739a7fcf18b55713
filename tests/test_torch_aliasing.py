"""PyTorch backend results own their memory: none shares storage with an input, a scratch buffer or another result."""

from __future__ import annotations

import threading
from typing import Any

import pytest

torch = pytest.importorskip("torch")

import layernorm  # noqa: E402

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
ALIASING_CASES = [
    pytest.param((64,), -1, id="1d"),  # no batch axes: dbias is dy's sum over nothing
    pytest.param((4, 8), (0, 1), id="every-axis"),
    pytest.param((8, 64), -1, id="trailing"),
    pytest.param((4, 64, 3), 1, id="channels-first"),
    pytest.param((3, 4, 2, 6), (1, 3), id="non-adjacent"),
    pytest.param((600, 96), -1, id="scratch-blocks"),  # over 2**15 elements: the blocked backwards, in scratch
]


def _storage_range(t: torch.Tensor) -> tuple[int, int]:
    storage = t.untyped_storage()
    return storage.data_ptr(), storage.data_ptr() + storage.nbytes()


def _share_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the storages of a and b overlap (empty tensors share nothing)."""
    if a.numel() == 0 or b.numel() == 0:
        return False
    (a_start, a_stop), (b_start, b_stop) = _storage_range(a), _storage_range(b)
    return a_start < b_stop and b_start < a_stop


def _make(shape: tuple[int, ...], axis: Any, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """x, weight, bias, dy of ``dtype``, weight and bias with x's sizes along ``axis``."""
    generator = torch.Generator().manual_seed(0)
    axes = (axis,) if isinstance(axis, int) else axis
    param_shape = [shape[a] for a in axes]
    x, dy = (torch.randn(shape, generator=generator).to(dtype) for _ in range(2))
    weight, bias = (torch.randn(param_shape, generator=generator).to(dtype) for _ in range(2))
    return x, weight, bias, dy


def _layer_norm_results(x: Any, weight: Any, bias: Any, dy: Any, axis: Any) -> dict[str, torch.Tensor]:
    """Every tensor layer_norm's routes return for these inputs: forward, autograd's and the explicit backward's."""
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    y, mean, rstd = layernorm.layer_norm(*leaves, axis=axis, return_stats=True)
    results = dict(zip(("y", "mean", "rstd"), (y, mean, rstd), strict=True))
    results |= dict(zip(("grad_x", "grad_weight", "grad_bias"), torch.autograd.grad(y, leaves, dy), strict=True))
    results["y_unrecorded"] = layernorm.layer_norm(x, weight, bias, axis=axis)
    explicit = layernorm.layer_norm_backward(dy, x, weight, axis=axis)
    results |= dict(zip(("dx", "dweight", "dbias"), explicit, strict=True))
    given_stats = layernorm.layer_norm_backward(dy, leaves[0], weight, axis=axis, mean=mean, rstd=rstd)
    results |= {f"{name}_given_stats": t for name, t in zip(("dx", "dweight", "dbias"), given_stats, strict=True)}
    return results


def _rms_norm_results(x: Any, weight: Any, dy: Any, axis: Any) -> dict[str, torch.Tensor]:
    """As `_layer_norm_results`, for rms_norm."""
    leaves = [t.clone().requires_grad_() for t in (x, weight)]
    y, rstd = layernorm.rms_norm(*leaves, axis=axis, return_stats=True)
    results = {"y": y, "rstd": rstd}
    results |= dict(zip(("grad_x", "grad_weight"), torch.autograd.grad(y, leaves, dy), strict=True))
    results["y_unrecorded"] = layernorm.rms_norm(x, weight, axis=axis)
    results |= dict(zip(("dx", "dweight"), layernorm.rms_norm_backward(dy, x, weight, axis=axis), strict=True))
    given_stats = layernorm.rms_norm_backward(dy, leaves[0], weight, axis=axis, rstd=rstd)
    results |= {f"{name}_given_stats": t for name, t in zip(("dx", "dweight"), given_stats, strict=True)}
    return results


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda dtype: str(dtype).removeprefix("torch."))
@pytest.mark.parametrize(("shape", "axis"), ALIASING_CASES)
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_results_share_no_memory_with_inputs_or_each_other(op: str, shape: Any, axis: Any, dtype: Any) -> None:
    """An in-place op on one result (an optimizer step on dbias) changes no input, no other result and nothing a
    later call writes: the
    explicit layer_norm backward given recorded statistics returned dy itself as dbias where x has no batch axes."""
    x, weight, bias, dy = _make(shape, axis, dtype)
    inputs = {"x": x, "weight": weight, "bias": bias, "dy": dy}
    before = {name: t.clone() for name, t in inputs.items()}
    if op == "layer_norm":
        results = _layer_norm_results(x, weight, bias, dy, axis)
    else:
        results = _rms_norm_results(x, weight, dy, axis)
    from layernorm_torch import scratch

    buffer = getattr(scratch._local, "buffer", None)
    others = inputs | results | ({} if buffer is None else {"the scratch buffer": buffer})
    for name, result in results.items():
        shared = [other for other, t in others.items() if other != name and _share_memory(result, t)]
        assert not shared, f"{name} shares memory with {shared}"
    for name, t in inputs.items():
        assert torch.equal(t, before[name]), f"{name} was changed"


class _CallsLayerNormOnEachOp(torch.utils._python_dispatch.TorchDispatchMode):
    """Runs an rms_norm of 2**19 elements (blocked, in this thread's scratch) after each mul or copy it dispatches.

    Those are the ops that fill a call's scratch."""

    def __init__(self) -> None:
        super().__init__()
        self.other = torch.randn(512, 1024, generator=torch.Generator().manual_seed(1)) * 100

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten.mul, torch.ops.aten.copy_):
            layernorm.rms_norm(self.other)
        return out


@pytest.mark.parametrize(
    ("call", "rows", "dtype"),
    [
        pytest.param(lambda x, w, dy: layernorm.rms_norm(x, w), 1024, torch.float32, id="rms_norm-blocked-forward"),
        pytest.param(
            lambda x, w, dy: layernorm.rms_norm_backward(dy, x, w), 128, torch.float32, id="rms_norm_backward"
        ),
        pytest.param(
            lambda x, w, dy: layernorm.layer_norm_backward(dy, x, w), 128, torch.bfloat16, id="half-layer_norm_backward"
        ),
    ],
)
def test_a_call_from_inside_the_ops_of_another_leaves_its_scratch_alone(call: Any, rows: int, dtype: Any) -> None:
    """A TorchDispatchMode that calls layernorm on each op runs that call inside the ops of the outer one: the
    inner call wrote into the scratch the outer one was still reading (rms_norm's dx off by 180)."""
    x, weight, _, dy = _make((rows, 512), -1, dtype)  # each over the size from which its route takes scratch
    expected = call(x, weight, dy)
    with _CallsLayerNormOnEachOp():
        got = call(x, weight, dy)
    for g, e in zip(
        got if isinstance(got, tuple) else (got,), expected if isinstance(expected, tuple) else (expected,), strict=True
    ):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


THREAD_CASES = [  # each over 2**15 elements: the backwards work in scratch, of another layout in each thread
    ("rms_norm", (128, 512), torch.float32),
    ("layer_norm", (128, 512), torch.bfloat16),
    ("rms_norm", (64, 1024), torch.bfloat16),
    ("layer_norm", (96, 768), torch.float16),
]


def _forward_and_backward(op: str, shape: tuple[int, ...], dtype: torch.dtype) -> list[torch.Tensor]:
    """y, autograd's gradients of x and the parameters, and the explicit backward's, for one seeded case."""
    x, weight, bias, dy = _make(shape, -1, dtype)
    leaves = [t.clone().requires_grad_() for t in ((x, weight, bias) if op == "layer_norm" else (x, weight))]
    y = getattr(layernorm, op)(*leaves)
    return [y, *torch.autograd.grad(y, leaves, dy), *getattr(layernorm, f"{op}_backward")(dy, x, weight)]


def test_threads_running_at_once_each_get_their_own_results() -> None:
    """Several threads calling forward and backward at once, each on its own shape and dtype, get the bits a lone
    call gets: each thread has its own scratch."""
    from concurrent.futures import ThreadPoolExecutor

    expected = [_forward_and_backward(*case) for case in THREAD_CASES]
    barrier = threading.Barrier(len(THREAD_CASES))

    def in_a_thread(k: int) -> list[list[torch.Tensor]]:
        barrier.wait()
        return [_forward_and_backward(*THREAD_CASES[k]) for _ in range(3)]

    with ThreadPoolExecutor(len(THREAD_CASES)) as pool:
        results = list(pool.map(in_a_thread, range(len(THREAD_CASES))))
    for case, runs, want in zip(THREAD_CASES, results, expected, strict=True):
        for got in runs:
            for g, e in zip(got, want, strict=True):
                torch.testing.assert_close(g, e, rtol=0, atol=0, msg=f"{case}")


FUNCTION_CASES = [  # the routes through the backend's own autograd.Functions, at sizes below and over 2**15
    pytest.param("layer_norm", (8, 64), torch.bfloat16, id="half-layer_norm-small"),
    pytest.param("layer_norm", (600, 96), torch.float16, id="half-layer_norm-scratch"),
    pytest.param("rms_norm", (8, 64), torch.float32, id="rms_norm-small"),
    pytest.param("rms_norm", (600, 96), torch.bfloat16, id="rms_norm-scratch"),
]


@pytest.mark.parametrize("trained", ["x", "parameters"])
@pytest.mark.parametrize(("op", "shape", "dtype"), FUNCTION_CASES)
def test_backward_again_and_in_place_ops_on_statistics(op: str, shape: Any, dtype: Any, trained: str) -> None:
    """A second and third backward through a retained graph give the first's bits; an in-place op on a returned
    statistic after the forward leaves y's gradients as they were, or autograd refuses it: never a silently other
    gradient."""
    x, weight, bias, dy = _make(shape, -1, dtype)
    leaves = [t.clone() for t in ((x, weight, bias) if op == "layer_norm" else (x, weight))]
    for k, leaf in enumerate(leaves):
        leaf.requires_grad_((k == 0) == (trained == "x"))
    wanted = [leaf for leaf in leaves if leaf.requires_grad]
    y, *stats = getattr(layernorm, op)(*leaves, return_stats=True)
    first = torch.autograd.grad(y, wanted, dy, retain_graph=True)
    for _ in range(2):
        for again, expected in zip(torch.autograd.grad(y, wanted, dy, retain_graph=True), first, strict=True):
            torch.testing.assert_close(again, expected, rtol=0, atol=0)
    for k in range(len(stats)):
        y, *stats = getattr(layernorm, op)(*leaves, return_stats=True)
        with torch.no_grad():
            stats[k].mul_(3)
        try:
            grads = torch.autograd.grad(y, wanted, dy)
        except RuntimeError as error:
            assert "modified by an inplace operation" in str(error)
            continue
        for got, expected in zip(grads, first, strict=True):
            torch.testing.assert_close(got, expected, rtol=0, atol=0)
