"""NumPy backend forward vs a plain copy, naive NumPy and torch's layer_norm, side by side.

Run: ``python -m benchmarks.numpy_forward [--rows 8192 --cols 4096]``. Prints median time, GB/s (bytes read +
written: x in, y out) and the ratio to torch.nn.functional.layer_norm on the same input and machine.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

import layernorm
from benchmarks.timing import interleaved
from layernorm.cli import positive_int


def naive_layer_norm(x: npt.NDArray[Any], w: npt.NDArray[Any], b: npt.NDArray[Any], eps: float) -> npt.NDArray[Any]:
    """The textbook NumPy formulation: whole-array passes, one temporary per step."""
    mean = x.mean(axis=-1, keepdims=True)
    centered = x - mean
    var = (centered * centered).mean(axis=-1, keepdims=True)
    return centered / np.sqrt(var + eps) * w + b


def main(argv: list[str] | None = None) -> None:
    """Time the four contenders on one (rows, cols) float32 array and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=positive_int, default=8192, help="rows of x (default 8192)")
    parser.add_argument(
        "--cols", type=positive_int, default=4096, help="columns of x, the normalized axis (default 4096)"
    )
    parser.add_argument("--rounds", type=positive_int, default=7, help="interleaved rounds (default 7)")
    options = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((options.rows, options.cols), dtype=np.float32)
    w = rng.standard_normal(options.cols, dtype=np.float32)
    b = rng.standard_normal(options.cols, dtype=np.float32)
    contenders: dict[str, Callable[[Any], Any]] = {
        "plain copy": lambda _: x.copy(),
        "naive numpy": lambda _: naive_layer_norm(x, w, b, 1e-5),
        "layernorm (numpy)": lambda _: layernorm.layer_norm(x, w, b),
    }
    try:
        import torch
        import torch.nn.functional as F

        xt, wt, bt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
        contenders["torch F.layer_norm"] = lambda _: F.layer_norm(xt, (options.cols,), wt, bt)
        threads = f"torch threads {torch.get_num_threads()}"
    except ImportError:
        threads = "torch not installed"
    timings = interleaved(contenders, [None], rounds=options.rounds, repeats=3, min_time=0.2)
    nbytes = 2 * x.nbytes
    reference = timings.get("torch F.layer_norm")
    print(f"x: {x.shape} float32, numpy {np.__version__}, {threads}; medians of {options.rounds} interleaved rounds")
    print(f"{'contender':<20} {'median ms':>10} {'GB/s':>8} {'time / torch':>13}")
    for name, timing in timings.items():
        ratio = f"{timing.median / reference.median:.2f}" if reference else "-"
        print(f"{name:<20} {timing.median * 1e3:>10.2f} {timing.gbps(nbytes):>8.2f} {ratio:>13}")


if __name__ == "__main__":
    main()
