"""What the JAX test modules need across the JAX versions the package supports (pyproject's lower bound on)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import jax


def enable_x64(enabled: bool) -> AbstractContextManager[Any]:
    """``jax.enable_x64`` where JAX has it (0.9 does, 0.7 not), else ``jax.experimental.enable_x64`` (gone by 0.10)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(enabled)
    from jax.experimental import enable_x64 as experimental_enable_x64  # type: ignore[attr-defined,unused-ignore]

    return experimental_enable_x64(enabled)
