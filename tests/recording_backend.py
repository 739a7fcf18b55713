"""A test backend: delegates to the NumPy backend and records which calls reached it.

Registered at run time by tests/conftest.py exactly as an entry-point plugin would be.
"""

from __future__ import annotations

from typing import Any

import layernorm_numpy.backend as numpy_backend

from layernorm_core import BackendDeclaration, hookimpl
from layernorm_core.protocol import BackendInfo

calls: list[str] = []


class Plugin:
    """The plugin object: declares the "recording" backend."""

    @hookimpl
    def layernorm_backends(self) -> list[BackendDeclaration]:
        return [BackendDeclaration(name="recording", implementation="recording_backend", requires=("numpy",))]


def info() -> BackendInfo:
    return numpy_backend.info()


device_of = numpy_backend.device_of
is_tracked = numpy_backend.is_tracked
to_numpy = numpy_backend.to_numpy
from_numpy = numpy_backend.from_numpy
from_foreign = numpy_backend.from_foreign


def layer_norm(*args: Any) -> Any:
    calls.append("layer_norm")
    return numpy_backend.layer_norm(*args)


def rms_norm(*args: Any) -> Any:
    calls.append("rms_norm")
    return numpy_backend.rms_norm(*args)


def layer_norm_backward(*args: Any) -> Any:
    calls.append("layer_norm_backward")
    return numpy_backend.layer_norm_backward(*args)


def rms_norm_backward(*args: Any) -> Any:
    calls.append("rms_norm_backward")
    return numpy_backend.rms_norm_backward(*args)
