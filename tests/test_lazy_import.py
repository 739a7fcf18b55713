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


def test_calls_while_another_thread_imports_torch() -> None:
    """torch is in sys.modules from the start of its import, seconds before it has torch.compiler: a NumPy call
    made meanwhile in another thread raised AttributeError (partially initialized module 'torch')."""
    pytest.importorskip("torch")
    code = (
        "import threading, time, numpy as np, layernorm\n"
        "x = np.ones((3, 4), np.float32); layernorm.layer_norm(x)\n"
        "failures, calls, stop = [], [0], threading.Event()\n"
        "def loop():\n"
        "    while not stop.is_set():\n"
        "        try:\n"
        "            layernorm.layer_norm(x)\n"
        "        except Exception as exc:\n"
        "            failures.append(repr(exc))\n"
        "        calls[0] += 1\n"
        "        time.sleep(1e-4)  # leave the import the GIL: a few thousand calls while it runs\n"
        "thread = threading.Thread(target=loop); thread.start()\n"
        "import torch\n"
        "stop.set(); thread.join()\n"
        "print(calls[0], len(failures), failures[:1])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert int(out[0]) > 0 and out[1:] == ["0", "[]"], out
