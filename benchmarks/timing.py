"""Timing primitives shared by every benchmark: warm-up, repeats, medians, a sync before each clock read."""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

Clock = Callable[[], float]
"""A monotonic clock in seconds (``time.perf_counter``; tests pass a fake one)."""

MAX_CALLS = 1 << 20


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one measured function: median and spread (10th/90th percentile) over repeats."""

    median: float
    p10: float
    p90: float
    repeats: int
    calls_per_repeat: int

    def gbps(self, nbytes: int) -> float:
        """Throughput in GB/s (1e9 bytes) for ``nbytes`` moved per call, at the median."""
        return nbytes / self.median / 1e9


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``samples``, linearly interpolated between order statistics.

    Never extrapolates: with one sample every percentile is that sample.

    >>> percentile([1.0, 2.0, 3.0, 4.0, 5.0], 10)
    1.4
    """
    ordered = sorted(samples)
    if not ordered:
        raise ValueError("percentile of no samples")
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(samples: Sequence[float], calls_per_repeat: int) -> Timing:
    """A `Timing` from per-call seconds of each repeat: median, p10 and p90 of those samples."""
    return Timing(
        statistics.median(samples),
        percentile(samples, 10),
        percentile(samples, 90),
        len(samples),
        calls_per_repeat,
    )


def _calibrate(
    fn: Callable[[Any], Any],
    feed: Iterator[Any],
    sync: Callable[[Any], Any],
    min_time: float,
    warmup: int,
    clock: Clock,
) -> tuple[int, float]:
    """(calls, seconds per call): warm-up, then double the calls until they last ``min_time``."""
    for _ in range(warmup):
        sync(fn(next(feed)))
    calls = 1
    while True:
        per_call = _run(fn, feed, sync, calls, clock)
        if per_call * calls >= min_time or calls >= MAX_CALLS:
            return calls, per_call
        calls *= 2


def _run(fn: Callable[[Any], Any], feed: Iterator[Any], sync: Callable[[Any], Any], calls: int, clock: Clock) -> float:
    """Seconds per call of ``calls`` back-to-back calls on the next inputs of ``feed``, synced once at the end."""
    start = clock()
    out = None
    for _ in range(calls):
        out = fn(next(feed))
    sync(out)
    return (clock() - start) / calls


def interleaved(
    fns: dict[str, Callable[[Any], Any]],
    inputs: Sequence[Any],
    sync: Callable[[Any], Any] = lambda out: out,
    *,
    rounds: int = 5,
    repeats: int = 3,
    min_time: float = 0.05,
    warmup: int = 3,
    clock: Clock = time.perf_counter,
    on_round: Callable[[], Any] | None = None,
    max_time: float | None = None,
) -> dict[str, Timing]:
    """Time several functions side by side, alternating between them so machine noise hits all alike.

    Each function is warmed up and calibrated once; then ``rounds`` times, every function in turn makes one
    untimed call and runs ``repeats`` timed repeats. The untimed call takes the cost of switching from the function
    before (at 8192x4096 float32, a JAX forward timed right after a forward+backward took 1.5x its time: what the
    one before handed back to the OS is page-faulted in again), so no function is charged for its place in the
    order. Median, p10 and p90 are over all per-call samples of a function. With ``max_time``,
    a slow function runs fewer repeats per round (at least one), so that a round costs it about ``max_time``
    seconds at most. ``on_round`` is called after each round (a progress bar's update).
    """
    feeds = {name: itertools.cycle(inputs) for name in fns}
    calls: dict[str, int] = {}
    reps: dict[str, int] = {}
    for name, fn in fns.items():
        calls[name], per_call = _calibrate(fn, feeds[name], sync, min_time, warmup, clock)
        affordable = repeats if max_time is None else int(max_time // max(per_call * calls[name], 1e-12))
        reps[name] = max(1, min(repeats, affordable))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            sync(fn(next(feeds[name])))
            samples[name].extend(_run(fn, feeds[name], sync, calls[name], clock) for _ in range(reps[name]))
        if on_round is not None:
            on_round()
    return {name: summarize(values, calls[name]) for name, values in samples.items()}


def print_timings(heading: str, timings: dict[str, Timing], baseline: str) -> None:
    """Print ``heading``, then one line per candidate: median ms, p10..p90, ratio to ``baseline``'s median."""
    base = timings[baseline].median
    print(heading)
    for name, t in timings.items():
        print(
            f"  {name:16s} {t.median * 1e3:9.3f} ms  [{t.p10 * 1e3:8.3f} .. {t.p90 * 1e3:8.3f}]  "
            f"ratio to {baseline} {t.median / base:5.2f}"
        )
