"""Whether torch.compile (dynamo) is tracing the current call, asked without importing torch.

Caches keyed by types or shapes are filled outside traces only: dynamo cannot guard on a dict that changed under
it, and hashing a symbolic size (``dynamic=True``, ``mark_dynamic``) would pin it to one value.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

_is_dynamo_compiling: Callable[[], bool] | None = None
"""``torch.compiler.is_dynamo_compiling`` once torch is loaded: 16 ns a call, which dynamo answers True."""


def dynamo_tracing() -> bool:
    """True while torch.compile traces this call; False, importing nothing, when torch is not loaded."""
    global _is_dynamo_compiling
    probe = _is_dynamo_compiling
    if probe is None:
        torch = sys.modules.get("torch")
        if torch is None:
            return False
        probe = _is_dynamo_compiling = torch.compiler.is_dynamo_compiling
    return probe()
