"""One adapter module per framework; each imports its framework only when it is loaded."""

from __future__ import annotations

import importlib

from benchmarks.frameworks.base import FrameworkAdapter

MODULES = {
    "numpy": "benchmarks.frameworks.numpy",
    "torch": "benchmarks.frameworks.torch",
    "jax": "benchmarks.frameworks.jax",
    "tensorflow": "benchmarks.frameworks.tensorflow",
}
"""Backend name -> the module defining its ``Adapter``."""


def load(backend: str) -> FrameworkAdapter:
    """The adapter for ``backend``, importing its framework; LookupError when no adapter exists for it."""
    try:
        module_name = MODULES[backend]
    except KeyError:
        raise LookupError(f"no benchmark adapter for backend {backend!r} (adapters: {', '.join(MODULES)})") from None
    adapter: FrameworkAdapter = importlib.import_module(module_name).Adapter()
    return adapter
