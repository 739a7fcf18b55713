"""Per-framework tracing wrappers: torch.compile, jax.jit and jax.vmap, tf.function (with and without XLA).

Each wrapper takes ``fn(x, weight, bias)`` and returns a function with the same results, traced or compiled by
the framework. ``vmap`` maps over axis 0 of x (weight and bias broadcast), so it needs checks whose axes are
negative and leave axis 0 un-normalized (see `layernorm_conformance.data.TRACE_CASES`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Fn = Callable[..., Any]
Wrap = Callable[[Fn], Fn]


def _torch_compile(fn: Fn) -> Fn:
    import torch

    torch._dynamo.reset()  # a fresh cache per check: one check's guards never leak into the next
    return torch.compile(fn, backend="aot_eager", dynamic=False)


def _jax_jit(fn: Fn) -> Fn:
    import jax

    return jax.jit(fn)


def _jax_vmap(fn: Fn) -> Fn:
    import jax

    return jax.jit(jax.vmap(fn, in_axes=(0, None, None)))


def _tf_function(fn: Fn) -> Fn:
    import tensorflow as tf

    return tf.function(fn)


def _tf_function_xla(fn: Fn) -> Fn:
    import tensorflow as tf

    return tf.function(fn, jit_compile=True)


WRAPPERS: dict[str, dict[str, Wrap]] = {
    "torch": {"torch.compile": _torch_compile},
    "jax": {"jax.jit": _jax_jit, "jax.vmap": _jax_vmap},
    "tensorflow": {"tf.function": _tf_function, "tf.function-jit_compile": _tf_function_xla},
}
"""Tracing wrappers by framework; the names are the ids of the tracing checks."""


def _wrappers(framework: str) -> dict[str, Wrap]:
    return WRAPPERS.get({"jaxlib": "jax", "keras": "tensorflow"}.get(framework, framework), {})


MAPPING_TRACERS = frozenset({"jax.vmap"})
"""Tracers that map over x's axis 0 with weight and bias broadcast: they take only ``fn(x, weight, bias)``."""


def tracer_names(framework: str) -> list[str]:
    """Names of the tracing wrappers for arrays of ``framework`` (a top-level module name); [] when none."""
    return list(_wrappers(framework))


def wrapper(framework: str, name: str) -> Wrap | None:
    """The wrapper ``name`` when it belongs to ``framework`` ("jaxlib" counts as "jax"), else None."""
    return _wrappers(framework).get(name)
