"""torch.compile (dynamo) and the core: is a call being traced, and which lookups dynamo calls as constants.

Traced code reads none of the core's caches: dynamo guards what a trace reads, so an eager call that later added
an entry would recompile the graph, and hashing a symbolic size (``dynamic=True``, ``mark_dynamic``) would pin it
to one value. The spec and dtype-name caches are skipped in a trace (`dynamo_tracing`); the registry's lookups
are called by dynamo as constants (`constant_for_dynamo`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Protocol, TypeVar

F = TypeVar("F", bound=Callable[..., object])


class _Compiler(Protocol):
    def is_dynamo_compiling(self) -> bool: ...


_torch_compiler: _Compiler | None = sys.modules.get("torch.compiler")
"""torch.compiler when torch was imported before this module; never changed afterwards."""


def dynamo_tracing() -> bool:
    """True while torch.compile traces this call; False, importing nothing, when torch is not loaded.

    Where torch was imported after layernorm, torch is read from ``sys.modules`` by subscript (67 ns, against
    31 ns): dynamo traces that in torch 2.11 as in 2.13, where it cannot call ``sys.modules.get``. A global set at
    the first call instead would change what the first trace of a process read, if that call was traced, and
    dynamo would recompile at the next call. torch is in ``sys.modules`` from the start of its import, seconds
    before it has ``torch.compiler``: meanwhile, in another thread, nothing is traced.
    """
    if _torch_compiler is not None:
        return _torch_compiler.is_dynamo_compiling()
    if "torch" not in sys.modules:
        return False
    compiler: _Compiler | None = getattr(sys.modules["torch"], "compiler", None)  # None while torch imports
    return compiler is not None and compiler.is_dynamo_compiling()


def constant_for_dynamo(function: F) -> F:
    """Mark a lookup that dynamo calls eagerly while it traces, taking its result as a constant.

    Sets the marker ``torch._dynamo.assume_constant_result`` sets, importing nothing. For the registry's lookups
    by type or name, whose answer never changes once given (but for plugins registered or unregistered at run
    time, which code compiled before does not see): read by traced code, their caches would be guarded,
    and an eager call that added an entry (a new array type, a backend loaded) would recompile every graph.
    Dynamo cannot trace their locks and imports either, so a compiled function may be a process's first call.
    """
    setattr(function, "_dynamo_marked_constant", True)  # noqa: B010
    return function
