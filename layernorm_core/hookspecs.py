"""The pluggy hook through which a plugin declares its backends (project name "layernorm")."""

from __future__ import annotations

import pluggy

from layernorm_core.protocol import BackendDeclaration

PROJECT_NAME = "layernorm"
ENTRY_POINT_GROUP = "layernorm.backends"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def layernorm_backends() -> list[BackendDeclaration]:  # type: ignore[empty-body]
    """Return the backends this plugin provides. Must not import any framework."""
