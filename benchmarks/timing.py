"""Timing primitives shared by every benchmark: warm-up, repeats, medians, a sync before each clock read."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one measured function: median and spread over repeats."""

    median: float
    p10: float
    p90: float
    repeats: int
    calls_per_repeat: int

    def gbps(self, nbytes: int) -> float:
        """Throughput in GB/s (1e9 bytes) for ``nbytes`` moved per call, at the median."""
        return nbytes / self.median / 1e9


def measure(
    fn: Callable[[Any], Any],
    inputs: Sequence[Any],
    sync: Callable[[Any], Any] = lambda out: out,
    *,
    repeats: int = 15,
    min_time: float = 0.05,
    warmup: int = 3,
) -> Timing:
    """Time ``fn(inputs[i])``, rotating through ``inputs`` so caches do not flatter small shapes.

    ``sync(out)`` must block until the device finished (``block_until_ready``, ``torch.cuda.synchronize``).
    Each repeat runs enough calls to last about ``min_time`` seconds; the result is per call.
    """
    for i in range(warmup):
        sync(fn(inputs[i % len(inputs)]))
    calls = 1
    while True:
        start = time.perf_counter()
        for i in range(calls):
            out = fn(inputs[i % len(inputs)])
        sync(out)
        elapsed = time.perf_counter() - start
        if elapsed >= min_time or calls >= 1 << 20:
            break
        calls *= 2
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(calls):
            out = fn(inputs[i % len(inputs)])
        sync(out)
        samples.append((time.perf_counter() - start) / calls)
    deciles = statistics.quantiles(samples, n=10) if len(samples) > 1 else samples * 9
    return Timing(statistics.median(samples), deciles[0], deciles[-1], repeats, calls)


def interleaved(
    fns: dict[str, Callable[[Any], Any]],
    inputs: Sequence[Any],
    sync: Callable[[Any], Any] = lambda out: out,
    *,
    rounds: int = 5,
    repeats: int = 3,
    min_time: float = 0.05,
) -> dict[str, Timing]:
    """Time several functions side by side, alternating between them so machine noise hits all alike."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    calls: dict[str, int] = {}
    for _ in range(rounds):
        for name, fn in fns.items():
            timing = measure(fn, inputs, sync, repeats=repeats, min_time=min_time, warmup=1 if calls else 3)
            calls[name] = timing.calls_per_repeat
            samples[name].append(timing.median)
    return {
        name: Timing(
            statistics.median(values),
            min(values),
            max(values),
            len(values),
            calls[name],
        )
        for name, values in samples.items()
    }
