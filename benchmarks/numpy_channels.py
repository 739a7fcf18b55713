"""NumPy backend, trailing and channels-first shapes: this checkout against a saved copy, and naive NumPy.

Run: ``LAYERNORM_NUMPY_THREADS=1 python -m benchmarks.numpy_channels [--baseline DIR]``, where DIR holds an
earlier ``kernels.py`` and ``backend.py`` of ``layernorm_numpy`` (copied aside before a change). Prints, per
shape, the median forward and forward+backward times of each contender, interleaved, and the ratio to the
baseline (without one, to this checkout's "current").
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import layernorm_numpy.backend as current
import ml_dtypes
import numpy as np
import numpy.typing as npt

from benchmarks.timing import interleaved, print_timings
from layernorm.cli import positive_int
from layernorm_core import check_forward

Array = npt.NDArray[Any]
DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
CASES: tuple[tuple[tuple[int, ...], int, str], ...] = (
    ((4096, 768), -1, "float32"),
    ((8192, 4096), -1, "float32"),
    ((32, 128, 1024), -1, "float32"),
    ((8, 64, 56, 56), 1, "float32"),
    ((8, 64, 56, 56), 1, "bfloat16"),
    ((64, 4096, 64), 1, "float32"),
    ((4096, 4096), 0, "float32"),
    ((64, 768), -1, "float32"),
)


def load_baseline(folder: Path) -> ModuleType:
    """The backend module in ``folder``, importing the kernels module beside it instead of the installed one."""
    kernels = _load("layernorm_numpy_baseline_kernels", folder / "kernels.py")
    installed = sys.modules["layernorm_numpy.kernels"]
    sys.modules["layernorm_numpy.kernels"] = kernels
    try:
        return _load("layernorm_numpy_baseline_backend", folder / "backend.py")
    finally:
        sys.modules["layernorm_numpy.kernels"] = installed


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def naive_forward(x: Array, w: Array, b: Array, axis: int, eps: float = 1e-5) -> Array:
    """The textbook NumPy formulation over one axis, in x's dtype."""
    shape = [1] * x.ndim
    shape[axis] = -1
    mean = x.mean(axis, keepdims=True)
    var = ((x - mean) ** 2).mean(axis, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w.reshape(shape) + b.reshape(shape)


def contenders(backends: dict[str, ModuleType], shape: tuple[int, ...], axis: int, dtype: str) -> dict[str, Any]:
    """Forward and forward+backward callables for each backend module (and naive NumPy), on one input."""
    rng = np.random.default_rng(0)
    x, dy = (rng.standard_normal(shape).astype(DTYPES[dtype]) for _ in range(2))
    w, b = (rng.standard_normal(shape[axis]).astype(DTYPES[dtype]) for _ in range(2))
    spec = check_forward("layer_norm", x, w, b, axis, 1e-5)
    forward: dict[str, Callable[[Any], Any]] = {}
    both: dict[str, Callable[[Any], Any]] = {}
    for name, module in backends.items():
        forward[name] = partial(_forward, module, x, w, b, spec)
        both[name] = partial(_forward_backward, module, x, w, b, dy, spec)
    if dtype == "float32":
        forward["naive numpy"] = lambda _: naive_forward(x, w, b, axis)
    return {"forward": forward, "forward+backward": both}


def _forward(module: ModuleType, x: Array, w: Array, b: Array, spec: Any, _: Any) -> Any:
    return module.layer_norm(x, w, b, spec, False)


def _forward_backward(module: ModuleType, x: Array, w: Array, b: Array, dy: Array, spec: Any, _: Any) -> Any:
    _, mean, rstd = module.layer_norm(x, w, b, spec, True)
    return module.layer_norm_backward(dy, x, w, spec, mean, rstd)


def main(argv: list[str] | None = None) -> None:
    """Time every case and print one table per case and pass."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", type=Path, help="a folder with an earlier kernels.py and backend.py")
    parser.add_argument("--rounds", type=positive_int, default=7, help="interleaved rounds (default 7)")
    options = parser.parse_args(argv)
    backends = {"baseline": load_baseline(options.baseline)} if options.baseline else {}
    backends["current"] = current
    for shape, axis, dtype in CASES:
        for label, fns in contenders(backends, shape, axis, dtype).items():
            timings = interleaved(fns, [None], rounds=options.rounds, repeats=3, min_time=0.05)
            print_timings(f"{shape} {dtype} axis={axis} {label}", timings, next(iter(fns)))


if __name__ == "__main__":
    main()
