"""PyTorch speed: layernorm.layer_norm / rms_norm (torch backend) against F.layer_norm / F.rms_norm and a copy.

Every candidate runs side by side on the same inputs (`benchmarks.timing.interleaved`), forward and
forward+backward (``torch.autograd.grad`` of ``sum(y * ct)`` with respect to x, weight and bias); on CUDA,
``torch.cuda.synchronize`` runs before each clock read. ``x.clone()`` is the memory floor. Prints medians and
ratios to torch's median (ours / torch: 1.00 is parity, > 1 slower), and the ratio of the 10th percentiles,
steadier on a busy machine.
For a half layer_norm it also times torch's route to the spec's accuracy, ``F.layer_norm`` on float32 copies cast
back ("torch f32"): torch's half backward on the CPU sums dweight and dbias in half precision, outside the
tolerances, which ours does in float32 (docs/benchmarks.md).
``--breakdown`` splits the per-call cost of a call (forward, and forward+backward) into the layers of the public
API's path, for each of ``--ops``.

    python -m benchmarks.torch_speed                 # (8, 64), (4096, 768), (8192, 4096); float32, bfloat16
    python -m benchmarks.torch_speed --quick         # (8, 64), (4096, 768), fewer rounds
    python -m benchmarks.torch_speed --breakdown     # where the overhead of a (8, 64) call goes, per op and dtype
    python -m benchmarks.torch_speed --breakdown --device cuda --shapes 8x64,4096x768
    python -m benchmarks.torch_speed --shapes 64x768 --dtypes float16,bfloat16 --ops layer_norm
    python -m benchmarks.torch_speed --shapes 4096x768 --sets 12   # 150 MB of inputs in rotation: cold caches
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

import layernorm
from benchmarks.cases import OPS, names_among, rows_by_columns
from benchmarks.timing import Timing, interleaved
from layernorm.cli import positive_int
from layernorm_core.spec import Kind, check_forward

EPS = 1e-5
SHAPES = ((8, 64), (4096, 768), (8192, 4096))
QUICK_SHAPES = ((8, 64), (4096, 768))
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
DEFAULT_DTYPES = ["float32", "bfloat16"]


def sync_for(device: str) -> Callable[[Any], Any]:
    """Block until the device is done (CUDA), so the clock reads after the work, not after the launch."""
    if device == "cuda":
        return lambda out: torch.cuda.synchronize()
    return lambda out: out


def candidates(op: str, n: int, dtype: str) -> dict[str, Callable[..., torch.Tensor]]:
    """Candidates ours / torch / copy for ``op`` over the last axis of size ``n``, as functions of (x, weight, bias).

    A half layer_norm adds "torch f32": torch's kernel on float32 copies, the output cast back to x's dtype.
    """
    shape = (n,)
    if op == "layer_norm":
        named: dict[str, Callable[..., torch.Tensor]] = {
            "ours": lambda x, w, b: layernorm.layer_norm(x, w, b, eps=EPS),
            "torch": lambda x, w, b: F.layer_norm(x, shape, w, b, EPS),
            "copy": lambda x, w, b: x.clone(),
        }
        if dtype in ("float16", "bfloat16"):
            named["torch f32"] = lambda x, w, b: F.layer_norm(x.float(), shape, w.float(), b.float(), EPS).to(
                dtype=x.dtype
            )
        return named
    return {
        "ours": lambda x, w, b: layernorm.rms_norm(x, w, eps=EPS),
        "torch": lambda x, w, b: F.rms_norm(x, shape, w, EPS),
        "copy": lambda x, w, b: x.clone(),
    }


def forward_backward(fn: Callable[..., torch.Tensor]) -> Callable[..., Any]:
    """Forward, then the gradients of sum(y * ct) with respect to every input that requires them."""

    def run(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, ct: torch.Tensor) -> Any:
        y = fn(x, w, b)
        wanted = [t for t in (x, w, b) if t.requires_grad]
        return torch.autograd.grad(y, wanted, ct, allow_unused=True)

    return run


def make_inputs(
    shape: tuple[int, int], dtype: torch.dtype, device: str, grad: bool, count: int = 2
) -> list[tuple[Any, ...]]:
    """``count`` input sets (x, weight, bias, ct), rotated so small shapes are not flattered by caches."""
    sets = []
    for seed in range(count):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(shape, generator=g).to(device, dtype)
        w = torch.randn(shape[-1], generator=g).to(device, dtype)
        b = torch.randn(shape[-1], generator=g).to(device, dtype)
        ct = torch.randn(shape, generator=g).to(device, dtype)
        if grad:
            x, w, b = (t.requires_grad_() for t in (x, w, b))
        sets.append((x, w, b, ct))
    return sets


def _timed(fn: Callable[..., torch.Tensor], backward: bool) -> Callable[[tuple[Any, ...]], Any]:
    """Wrap fn as a function of one input set (x, weight, bias, ct): forward only, or forward and backward."""
    step = forward_backward(fn)

    def forward_only(args: tuple[Any, ...]) -> Any:
        return fn(*args[:3])

    def with_backward(args: tuple[Any, ...]) -> Any:
        return step(*args)

    return with_backward if backward else forward_only


def bench_case(
    op: str, shape: tuple[int, int], dtype: str, device: str, backward: bool, rounds: int, sets: int = 2
) -> dict[str, Timing]:
    """Time the `candidates` side by side for one case, on ``sets`` input sets in rotation."""
    inputs = make_inputs(shape, DTYPES[dtype], device, backward, sets)
    fns = {name: _timed(fn, backward and name != "copy") for name, fn in candidates(op, shape[-1], dtype).items()}
    return interleaved(fns, inputs, sync_for(device), rounds=rounds, repeats=3, min_time=0.05)


def breakdown(op: Kind, rounds: int, device: str, dtype: str, shape: tuple[int, int]) -> dict[str, Timing]:
    """Per-call time of each piece of the public path of ``op``, timed side by side; torch's own call first.

    On CUDA the calls run back to back with one synchronize per repeat, so a call's time is its host time while
    the kernels keep up.
    """
    from layernorm_torch import backend

    from layernorm_core.dispatch import local_engine
    from layernorm_core.tracing import dynamo_tracing

    x, w, b, _ = make_inputs(shape, DTYPES[dtype], device, grad=False, count=1)[0]
    params, bias = _params(op, w, b), _bias(op, b)
    spec = check_forward(op, x, w, bias, -1, EPS)
    functional, public, ours, kernel = getattr(F, op), getattr(layernorm, op), getattr(backend, op), _KERNELS[op]
    fns: dict[str, Callable[[Any], Any]] = {
        f"F.{op}": lambda _: functional(x, shape[-1:], *params, EPS),
        f"torch.{kernel.__name__}": lambda _: kernel(x, shape[-1:], *params, EPS),
        f"backend.{op}(spec)": lambda _: ours(x, *params, spec, False),
        "core: dynamo_tracing": lambda _: dynamo_tracing(),
        "core: check_forward": lambda _: check_forward(op, x, w, bias, -1, EPS),
        "core: local_engine": lambda _: local_engine(x, params, None, False),
        f"layernorm.{op}": lambda _: public(x, *params, eps=EPS),
        f"layernorm.{op}(backend=)": lambda _: public(x, *params, eps=EPS, backend="torch"),
    }
    return interleaved(fns, [None], sync_for(device), rounds=rounds, repeats=3, min_time=0.05)


def backward_breakdown(op: Kind, rounds: int, device: str, dtype: str, shape: tuple[int, int]) -> dict[str, Timing]:
    """Forward+backward time of the public path of ``op`` and of the layers below it, timed side by side."""
    from layernorm_torch import backend

    inputs = make_inputs(shape, DTYPES[dtype], device, grad=True)
    x, w, b, _ = inputs[0]
    spec = check_forward(op, x, w, _bias(op, b), -1, EPS)
    functional, public, ours, kernel = getattr(F, op), getattr(layernorm, op), getattr(backend, op), _KERNELS[op]

    def first(out: Any) -> torch.Tensor:  # native_layer_norm returns (y, mean, rstd)
        return out[0] if isinstance(out, tuple) else out

    def on_input_set(call: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """``call(x, *params)`` as a function of an input set's (x, w, b), chosen once: rms_norm takes no bias."""
        if op == "layer_norm":
            return lambda x, w, b: call(x, w, b)
        return lambda x, w, b: call(x, w)

    layers: dict[str, Callable[..., torch.Tensor]] = {
        f"F.{op}": lambda x, *p: functional(x, shape[-1:], *p, EPS),
        f"torch.{kernel.__name__}": lambda x, *p: first(kernel(x, shape[-1:], *p, EPS)),
        f"backend.{op}(spec)": lambda x, *p: ours(x, *p, spec, False),
        f"layernorm.{op}": lambda x, *p: public(x, *p, eps=EPS),
    }
    fns = {name: _timed(on_input_set(fn), backward=True) for name, fn in layers.items()}
    return interleaved(fns, inputs, sync_for(device), rounds=rounds, repeats=3, min_time=0.05)


_KERNELS: dict[str, Callable[..., Any]] = {"layer_norm": torch.native_layer_norm, "rms_norm": torch.rms_norm}
"""The torch function under ``F.<op>``: for layer_norm the one that also returns the statistics."""


def _params(op: Kind, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The parameters ``op`` takes: weight and bias, or weight alone (rms_norm)."""
    bias_or_none = _bias(op, bias)
    return (weight,) if bias_or_none is None else (weight, bias_or_none)


def _bias(op: Kind, bias: torch.Tensor) -> torch.Tensor | None:
    """The bias ``op`` takes: rms_norm none."""
    return bias if op == "layer_norm" else None


def add_case_arguments(parser: argparse.ArgumentParser, default_dtypes: list[str]) -> None:
    """Add --device, --ops and --dtypes, as the torch tools here take them (`torch_profile` too)."""
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu or cuda (default: cuda if present)",
    )
    parser.add_argument(
        "--ops", type=names_among(OPS), default=list(OPS), help="comma-separated, of layer_norm, rms_norm"
    )
    parser.add_argument(
        "--dtypes",
        type=names_among(tuple(DTYPES)),
        default=default_dtypes,
        help=f"comma-separated, of {', '.join(DTYPES)} (default {','.join(default_dtypes)})",
    )


def refuse_absent_cuda(parser: argparse.ArgumentParser, device: str) -> None:
    """``parser.error`` (exit 2) for ``--device cuda`` where torch sees no CUDA device, before anything runs."""
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print one table per (op, mode)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller shapes, fewer rounds")
    parser.add_argument("--breakdown", action="store_true", help="split the per-call overhead of a tiny call")
    add_case_arguments(parser, DEFAULT_DTYPES)
    parser.add_argument("--shapes", type=rows_by_columns, help="comma-separated rows x columns, e.g. 8x64,64x768")
    parser.add_argument("--threads", type=positive_int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--rounds", type=positive_int, help="interleaved rounds (default 5, quick 3)")
    parser.add_argument(
        "--sets", type=positive_int, default=2, help="input sets in rotation; more than the caches hold: cold"
    )
    args = parser.parse_args(argv)
    refuse_absent_cuda(parser, args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = args.rounds or (3 if args.quick else 5)
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}; medians")
    if args.breakdown:
        for op, shape, dtype in itertools.product(args.ops, args.shapes or ((8, 64),), args.dtypes):
            for mode, timed in (("forward", breakdown), ("forward+backward", backward_breakdown)):
                timings = timed(op, rounds, args.device, dtype, shape)
                base = timings[f"F.{op}"].median
                print(f"\n{op} {mode}, {dtype}, {shape}")
                for name, t in timings.items():
                    print(f"  {name:34s} {t.median * 1e6:8.3f} us   {t.median / base:5.2f}x F.{op}")
        return
    shapes: tuple[tuple[int, int], ...] = args.shapes or (QUICK_SHAPES if args.quick else SHAPES)
    for op in args.ops:
        for backward in (False, True):
            mode = "forward+backward" if backward else "forward"
            print(f"\n{op} {mode}")
            header = ("shape", "dtype", "ours us", "torch us", "copy us", "ours/torch", "p10 ratio", "ours/f32")
            print("  " + " ".join(f"{h:>11s}" for h in header))
            for shape in shapes:
                for dtype in args.dtypes:
                    case = bench_case(op, shape, dtype, args.device, backward, rounds, args.sets)
                    ours, theirs, copy = (case[k].median * 1e6 for k in ("ours", "torch", "copy"))
                    dims = "x".join(map(str, shape))
                    low = case["ours"].p10 / case["torch"].p10  # the least disturbed runs: steadier on a busy machine
                    f32 = case.get("torch f32")
                    accurate = f"{case['ours'].median / f32.median:11.3f}" if f32 else f"{'-':>11s}"
                    print(
                        f"  {dims:>11s} {dtype:>11s} {ours:11.2f} {theirs:11.2f} {copy:11.2f} {ours / theirs:11.3f}"
                        f" {low:11.3f} {accurate}"
                    )


if __name__ == "__main__":
    main()
