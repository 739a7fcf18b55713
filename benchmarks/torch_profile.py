"""Where a call's time goes, op by op: layernorm's torch backend against F.layer_norm / F.rms_norm, by torch.profiler.

`torch_speed` says how much slower or faster a call is; this says which ops and kernels the difference is made of.
For each case it profiles ``--steps`` calls of ours, then as many of torch's own, forward or forward+backward
(``torch.autograd.grad`` of ``sum(y * ct)``, as `torch_speed` times them), and prints for each the ops that took
the most time, per call: self device time (CUDA kernels) on CUDA, self CPU time on the CPU, with the number of
calls. Profiling adds its own cost to every op, so compare the two tables with each other, not with `torch_speed`.

    python -m benchmarks.torch_profile --ops rms_norm --dtypes float64 --shapes 4096x768
    python -m benchmarks.torch_profile --ops layer_norm --dtypes bfloat16 --shapes 8x64 --device cpu
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from benchmarks.cases import rows_by_columns
from benchmarks.torch_speed import (
    DTYPES,
    add_case_arguments,
    candidates,
    forward_backward,
    make_inputs,
    refuse_absent_cuda,
    sync_for,
)
from layernorm.cli import positive_int

WARMUP_STEPS = 3
"""Unprofiled calls first: the first call of a case loads kernels, fills caches and allocates memory."""


@dataclass(frozen=True)
class OpTime:
    """One op's (or kernel's) share of a profiled call: its name, calls per call of the candidate, self microseconds."""

    name: str
    calls: float
    self_us: float


@dataclass(frozen=True)
class Profile:
    """A candidate's profile: its ops, most time first, and their total self time per call, in microseconds."""

    ops: tuple[OpTime, ...]
    total_us: float


def profile_candidate(step: Callable[[], Any], device: str, steps: int) -> Profile:
    """Profile ``steps`` calls of ``step`` (after `WARMUP_STEPS` unprofiled ones); times per call.

    On CUDA the GPU's own events (kernels, copies, fills) and their device time: the ops that launched them, and
    user annotations around them, report that time too, and are left out so nothing counts twice. On the CPU the
    ops and their self CPU time (an op's own, not its callees'). Either way the rows add up to the total. Names are
    printed whole: kernels that differ only in a functor deep in their template arguments (mul, div) share long
    prefixes.
    """
    sync = sync_for(device)
    for _ in range(WARMUP_STEPS):
        sync(step())
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if device == "cuda" else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        for _ in range(steps):
            sync(step())
    ops = []
    for event in prof.key_averages():
        if device == "cuda":
            on_gpu = event.device_type == DeviceType.CUDA and not event.is_user_annotation
            self_us = event.self_device_time_total if on_gpu else 0.0
        else:
            self_us = event.self_cpu_time_total
        if self_us > 0:
            ops.append(OpTime(event.key, event.count / steps, self_us / steps))
    ops.sort(key=lambda op: op.self_us, reverse=True)
    return Profile(tuple(ops), sum(op.self_us for op in ops))


def profile_case(
    op: str, shape: tuple[int, int], dtype: str, device: str, backward: bool, steps: int
) -> dict[str, Profile]:
    """Profiles of ours and torch's own for one case, on the same inputs."""
    inputs = make_inputs(shape, DTYPES[dtype], device, backward, count=1)[0]
    named = candidates(op, shape[-1], dtype)
    return {name: profile_candidate(_call(named[name], inputs, backward), device, steps) for name in ("ours", "torch")}


def _call(fn: Callable[..., torch.Tensor], inputs: tuple[Any, ...], backward: bool) -> Callable[[], Any]:
    """One call of a candidate on ``inputs`` (x, weight, bias, ct): its forward, or forward and backward."""
    if backward:
        step = forward_backward(fn)
        return lambda: step(*inputs)
    return lambda: fn(*inputs[:3])


def format_profile(name: str, result: Profile, top: int) -> list[str]:
    """Lines of a table: the ``top`` ops by self time per call, then the rest together and the total."""
    lines = [f"  {name}: {result.total_us:.2f} us a call", f"    {'self us':>10s} {'calls':>7s}  op"]
    for op in result.ops[:top]:
        lines.append(f"    {op.self_us:10.2f} {op.calls:7.2f}  {op.name}")
    rest = result.ops[top:]
    if rest:
        lines.append(f"    {sum(op.self_us for op in rest):10.2f} {'':>7s}  ({len(rest)} more ops)")
    return lines


def main(argv: list[str] | None = None) -> None:
    """Profile each (op, shape, dtype, mode) and print ours' table, then torch's."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_case_arguments(parser, ["float32"])
    parser.add_argument(
        "--shapes", type=rows_by_columns, default=[(4096, 768)], help="comma-separated rows x columns (4096x768)"
    )
    parser.add_argument("--mode", choices=("forward", "forward+backward", "both"), default="both")
    parser.add_argument("--steps", type=positive_int, default=20, help="profiled calls per candidate (default 20)")
    parser.add_argument("--top", type=positive_int, default=12, help="ops listed per table (default 12)")
    args = parser.parse_args(argv)
    refuse_absent_cuda(parser, args.device)
    modes = {"forward": (False,), "forward+backward": (True,), "both": (False, True)}[args.mode]
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}; per call")
    for op, shape, dtype, backward in itertools.product(args.ops, args.shapes, args.dtypes, modes):
        dims = "x".join(map(str, shape))
        print(f"\n{op} {'forward+backward' if backward else 'forward'}, {dtype}, {dims}")
        for name, result in profile_case(op, shape, dtype, args.device, backward, args.steps).items():
            print("\n".join(format_profile(name, result, args.top)))


if __name__ == "__main__":
    main()
