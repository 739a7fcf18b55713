from __future__ import annotations

from collections.abc import Iterator

import pytest
import recording_backend
from registered_plugin import registered


@pytest.fixture
def recording() -> Iterator[list[str]]:
    """Register the "recording" test backend for one test; yield the list of calls it received."""
    recording_backend.calls.clear()
    with registered(recording_backend.Plugin(), "recording-plugin"):
        yield recording_backend.calls
