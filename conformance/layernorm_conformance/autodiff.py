"""Per-framework gradient hooks: a vector-Jacobian product through the framework's own autodiff.

The adapter is chosen from the array type's top-level module (``type(x).__module__``, as the registry does). A
framework without an adapter here has its autodiff checks skipped with the reason. A third-party backend whose
arrays are another backend's (torch tensors, say, which the built-in torch backend owns) does not get them through
its framework's autodiff: the core treats every engine but the owner of x's type as another framework, and refuses
an x that takes part in autodiff or tracing there (a BackendError), so those checks fail on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Fn = Callable[..., Any]
Vjp = Callable[[Fn, Sequence[Any], Any], list[Any]]
"""``vjp(fn, primals, cotangent)``: gradients of ``<fn(*primals), cotangent>`` w.r.t. every non-None primal
(None for a None primal)."""


def _torch_vjp(fn: Fn, primals: Sequence[Any], cotangent: Any) -> list[Any]:
    import torch

    leaves = [None if p is None else p.detach().clone().requires_grad_(True) for p in primals]
    wrt = [p for p in leaves if p is not None]
    grads = iter(torch.autograd.grad(fn(*leaves), wrt, cotangent, allow_unused=True))
    return [None if p is None else next(grads) for p in leaves]


def _jax_vjp(fn: Fn, primals: Sequence[Any], cotangent: Any) -> list[Any]:
    import jax

    present = [i for i, p in enumerate(primals) if p is not None]

    def partial(*args: Any) -> Any:
        full = list(primals)
        for i, a in zip(present, args, strict=True):
            full[i] = a
        return fn(*full)

    _, pullback = jax.vjp(partial, *(primals[i] for i in present))
    grads = iter(pullback(cotangent))
    return [None if p is None else next(grads) for p in primals]


def _tensorflow_vjp(fn: Fn, primals: Sequence[Any], cotangent: Any) -> list[Any]:
    import tensorflow as tf

    wrt = [p for p in primals if p is not None]
    with tf.GradientTape() as tape:
        for p in wrt:
            tape.watch(p)
        out = fn(*primals)
    grads = iter(tape.gradient(out, wrt, output_gradients=cotangent))
    return [None if p is None else next(grads) for p in primals]


ADAPTERS: dict[str, Vjp] = {
    "torch": _torch_vjp,
    "jax": _jax_vjp,
    "jaxlib": _jax_vjp,
    "tensorflow": _tensorflow_vjp,
    "keras": _tensorflow_vjp,
}


def framework_of(array: Any) -> str:
    """The top-level module of the array's type: "torch", "jax", "tensorflow", "numpy", ..."""
    return type(array).__module__.partition(".")[0]


def vjp_for(array: Any) -> Vjp | None:
    """The gradient hook for arrays like ``array``, or None when the suite has none for its framework."""
    return ADAPTERS.get(framework_of(array))
