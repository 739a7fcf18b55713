"""Register a test plugin with the process-wide registry for the length of a ``with`` block."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from layernorm_core.registry import registry


@contextmanager
def registered(plugin: object, name: str) -> Iterator[str]:
    """Register ``plugin`` under ``name`` (as an entry-point plugin would be); unregister it on leaving, however,
    unless the registry dropped it (a plugin that declares no backend)."""
    plugin_name = registry.register_plugin(plugin, name=name)
    try:
        yield plugin_name
    finally:
        if registry.is_registered(plugin_name):
            registry.unregister_plugin(plugin_name)
