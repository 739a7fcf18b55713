"""Backends with a broken ``info()``: NumPy's implementation, registered at run time under a name of their own."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from registered_plugin import registered

from layernorm_core import BackendDeclaration, hookimpl
from layernorm_core.protocol import REQUIRED_FUNCTIONS
from layernorm_core.registry import registry


def info_raises() -> Any:
    raise RuntimeError("info() broken on purpose")


def info_is_a_dict() -> Any:
    return {"version": "1", "devices": ("cpu",)}


def info_names_an_unknown_dtype() -> Any:
    from layernorm_core.protocol import BackendInfo

    return BackendInfo(version="1", devices=("cpu",), dtypes=("fp32",))  # checks of float32 would never run


def info_with_devices_in_one_string() -> Any:
    from layernorm_core.protocol import BackendInfo

    return BackendInfo(version="1", devices=("cpu"), dtypes=("float32",))  # the string "cpu": devices c, p and u


@contextmanager
def broken_info_backend(name: str, info: Callable[[], Any]) -> Iterator[str]:
    """Register backend ``name``, NumPy's functions with ``info`` as its ``info()``, for a ``with`` block."""
    module = types.ModuleType(f"layernorm_test_{name}")
    numpy_backend = registry.get("numpy")
    for function in REQUIRED_FUNCTIONS:
        setattr(module, function, getattr(numpy_backend, function))
    module.info = info  # type: ignore[attr-defined]

    class Plugin:
        @hookimpl
        def layernorm_backends(self) -> list[BackendDeclaration]:
            return [BackendDeclaration(name=name, implementation=module.__name__, requires=("numpy",))]

    sys.modules[module.__name__] = module
    try:
        with registered(Plugin(), f"{name}-plugin"):
            yield name
    finally:
        sys.modules.pop(module.__name__, None)
