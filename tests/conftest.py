from __future__ import annotations

from collections.abc import Iterator

import pytest
import recording_backend

from layernorm_core.registry import registry


@pytest.fixture
def recording() -> Iterator[list[str]]:
    """Register the "recording" test backend for one test; yield the list of calls it received."""
    name = registry.register_plugin(recording_backend.Plugin(), name="recording-plugin")
    recording_backend.calls.clear()
    try:
        yield recording_backend.calls
    finally:
        registry.unregister_plugin(name)
