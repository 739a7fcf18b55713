"""`import layernorm` imports no framework; a backend loads its framework on first use only."""

from __future__ import annotations

import subprocess
import sys

import pytest

FRAMEWORKS = ("torch", "jax", "tensorflow", "flax", "keras")


def _loaded_after(code: str) -> set[str]:
    probe = f"import sys\n{code}\nprint(' '.join(m for m in {FRAMEWORKS!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_import_layernorm_loads_no_framework() -> None:
    assert _loaded_after("import layernorm") == set()


def test_numpy_call_and_registry_load_no_framework() -> None:
    code = (
        "import numpy as np, layernorm\n"
        "layernorm.layer_norm(np.ones((2, 3)))\n"
        "from layernorm_core.registry import registry\n"
        "registry.names(); registry.owner_of(np.ones(1))"
    )
    assert _loaded_after(code) == set()


@pytest.mark.parametrize(
    ("module", "hidden", "install"),
    [
        ("layernorm.torch", "torch", "pip install 'layernorm[torch]'"),
        ("layernorm.flax", "flax", "pip install 'layernorm[flax]'"),
        ("layernorm.keras", "keras", "pip install keras"),
    ],
)
def test_a_layer_module_without_its_framework_says_what_to_install(module: str, hidden: str, install: str) -> None:
    """Importing a layer module whose framework is missing (hidden here) is an ImportError naming the install."""
    if module == "layernorm.flax":
        pytest.importorskip("jax", reason="with jax missing too, the error names jax first")
    probe = (
        f"import sys\nsys.modules[{hidden!r}] = None\n"
        f"try:\n    import {module}\nexcept ImportError as exc:\n    print(exc.name, '|', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.startswith(f"{hidden} | {module} needs "), out
    assert f"({hidden} is missing): {install}" in out
