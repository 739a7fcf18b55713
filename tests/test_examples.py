"""The examples of the public docstrings and of README.md run, and give what their text says."""

from __future__ import annotations

import doctest
import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import layernorm

README = Path(__file__).resolve().parents[1] / "README.md"
DOCTESTED = {  # module -> the framework it needs (None: NumPy alone)
    "layernorm": None,
    "layernorm.errors": None,
    "layernorm.functional": None,
    "layernorm_core.dispatch": None,
    "layernorm.torch": "torch",
    "layernorm.flax": "flax",
    "layernorm.keras": "keras",
}


@pytest.fixture
def engine_restored() -> Iterator[None]:
    """The process default engine as it was before the test (the examples call `layernorm.use`)."""
    before = layernorm.current_backend()
    try:
        yield
    finally:
        layernorm.use(before)


@pytest.mark.usefixtures("engine_restored")
@pytest.mark.parametrize(("module", "framework"), DOCTESTED.items(), ids=list(DOCTESTED))
def test_docstring_examples(module: str, framework: str | None) -> None:
    if framework is not None:
        pytest.importorskip(framework)
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{module} has no example"
    assert result.failed == 0, f"{module}: {result.failed} of {result.attempted} examples failed (printed above)"


def _readme_example() -> str:
    """The python block under README's "Example: one call, every framework"."""
    after = README.read_text().split("## Example: one call, every framework", 1)[1]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.usefixtures("engine_restored")
def test_readme_example() -> None:
    for framework in ("torch", "jax", "tensorflow"):
        pytest.importorskip(framework)
    import jax
    import numpy as np
    import tensorflow as tf
    import torch

    names: dict[str, Any] = {}
    exec(compile(_readme_example(), str(README), "exec"), names)
    assert isinstance(names["y_np"], np.ndarray)
    assert isinstance(names["y_pt"], torch.Tensor)
    assert isinstance(names["y_jx"], jax.Array)
    assert isinstance(names["y_tf"], tf.Tensor)
    x = names["x"]
    assert names["mean"].shape == names["rstd"].shape == (4, 1, 1)  # "stats keep dims"
    assert names["dx"].shape == x.shape and names["dw"].shape == names["db"].shape == (32,)
    assert layernorm.current_backend() == "torch"  # layernorm.use("torch")
    np.testing.assert_allclose(names["y"], names["y_np"], rtol=1e-6, atol=1e-6)  # the block's y: NumPy's
