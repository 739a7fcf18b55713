"""JAX: our backend under jax.jit, forward+backward by jax.vjp; beside a jitted flax.nnx.LayerNorm / RMSNorm."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt

import layernorm
from benchmarks.cases import Case
from benchmarks.frameworks.base import Fn, FrameworkAdapter

GPU_KINDS = ("gpu", "cuda")


class Adapter(FrameworkAdapter):
    """JAX on its CPU or GPU devices."""

    backend = "jax"

    def environment(self, device: str) -> dict[str, Any]:
        """jax, jaxlib and flax versions, the device, and XLA_FLAGS (XLA's CPU thread pool uses every core)."""
        env: dict[str, Any] = {"jax": jax.__version__, "device": str(self._device(device).device_kind)}
        try:
            import jaxlib

            env["jaxlib"] = jaxlib.__version__
        except (ImportError, AttributeError):
            pass
        try:
            import flax

            env["flax"] = flax.__version__
        except ImportError:
            env["flax"] = "not installed (no native baseline)"
        env["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "")
        return env

    def device_kinds(self) -> tuple[str, ...]:
        """("gpu", "cpu") when JAX sees a GPU, else ("cpu",)."""
        try:
            has_gpu = bool(jax.devices("gpu"))
        except RuntimeError:
            has_gpu = False
        return ("gpu", "cpu") if has_gpu else ("cpu",)

    @staticmethod
    def _device(kind: str) -> Any:
        return jax.devices("gpu" if kind in GPU_KINDS else "cpu")[0]

    def to_device(self, array: npt.NDArray[np.float32], dtype: str, device: str) -> Any:
        """A committed jax.Array of ``dtype`` on the device."""
        return jax.device_put(jnp.asarray(array, dtype=dtype), self._device(device))

    def to_host(self, array: Any) -> npt.NDArray[np.float64]:
        """The array as a float64 host array."""
        return np.asarray(jax.device_get(array)).astype(np.float64)

    def sync(self, out: Any) -> None:
        """``jax.block_until_ready`` on every leaf of ``out``."""
        jax.block_until_ready(out)

    def ours(self, op: str, pass_: str, case: Case, weight: Any, bias: Any) -> Fn:
        """Our layer_norm / rms_norm on the jax backend, jitted."""
        axis, eps = case.shape.axis, self.eps

        def forward(x: Any, params: tuple[Any, ...]) -> Any:
            if op == "layer_norm":
                return layernorm.layer_norm(x, params[0], params[1], axis=axis, eps=eps, backend="jax")
            return layernorm.rms_norm(x, params[0], axis=axis, eps=eps, backend="jax")

        params = (weight, bias) if op == "layer_norm" else (weight,)
        return _jitted(forward, pass_, params)

    def native(self, op: str, pass_: str, case: Case, weight: Any, bias: Any) -> tuple[Fn, str]:
        """flax.nnx.LayerNorm / RMSNorm with flax's defaults but eps, split into a pure function and jitted."""
        from flax import nnx

        axis, dtype = case.shape.normalized_axis, weight.dtype
        options = {"epsilon": self.eps, "dtype": dtype, "param_dtype": dtype, "rngs": nnx.Rngs(0)}
        if op == "layer_norm":
            model: Any = nnx.LayerNorm(case.shape.features, reduction_axes=axis, feature_axes=axis, **options)
            model.scale[...], model.bias[...] = weight, bias
        else:
            model = nnx.RMSNorm(case.shape.features, reduction_axes=axis, feature_axes=axis, **options)
            model.scale[...] = weight
        graphdef, state = nnx.split(model)
        # The jitted function takes the parameters as plain arrays, as ours does: an nnx.State argument is
        # flattened by flax in Python on every call (10-20 us at 1x768), a cost a model pays once per step.
        arrays, structure = jax.tree.flatten(state)

        def forward(x: Any, params: tuple[Any, ...]) -> Any:
            return nnx.merge(graphdef, jax.tree.unflatten(structure, params))(x)

        name = "LayerNorm" if op == "layer_norm" else "RMSNorm"
        note = f"jax.jit of flax.nnx.{name}(reduction_axes={axis}, feature_axes={axis}), flax's default fast variance"
        return _jitted(forward, pass_, tuple(arrays)), note

    def copy(self, case: Case) -> Fn:
        """``jax.jit(jnp.copy)``: XLA writes a new buffer (a jitted identity would return x itself)."""
        copy = jax.jit(jnp.copy)
        return lambda xd: copy(xd[0])


def _jitted(forward: Callable[[Any, tuple[Any, ...]], Any], pass_: str, params: tuple[Any, ...]) -> Fn:
    """``jax.jit(forward)``, or the jitted forward and ``jax.vjp`` pullback of x and params given dy."""
    if pass_ == "forward":
        run = jax.jit(forward)
        return lambda xd: run(xd[0], params)

    def both(x: Any, dy: Any, params: tuple[Any, ...]) -> Any:
        y, pullback = jax.vjp(forward, x, params)
        return y, pullback(dy)

    run_both = jax.jit(both)
    return lambda xd: run_both(xd[0], xd[1], params)
