"""NumPy: our backend through layernorm's explicit backward; the native baseline is a plain NumPy formulation."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

import layernorm
from benchmarks.cases import Case
from benchmarks.frameworks.base import Fn, FrameworkAdapter

Array = npt.NDArray[Any]


def numpy_dtype(name: str) -> Any:
    """The NumPy dtype for ``name``; bfloat16 comes from ml_dtypes."""
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(name)


class Adapter(FrameworkAdapter):
    """NumPy on the CPU."""

    backend = "numpy"

    def environment(self, device: str) -> dict[str, Any]:
        """NumPy's version and build (BLAS is not used by normalization)."""
        env: dict[str, Any] = {"numpy": np.__version__, "device": "cpu (host memory)"}
        try:
            import ml_dtypes

            env["ml_dtypes"] = ml_dtypes.__version__
        except ImportError:
            pass
        return env

    def device_kinds(self) -> tuple[str, ...]:
        """NumPy runs on the CPU only."""
        return ("cpu",)

    def to_device(self, array: npt.NDArray[np.float32], dtype: str, device: str) -> Any:
        """A host array of ``dtype``."""
        return array.astype(numpy_dtype(dtype))

    def to_host(self, array: Any) -> npt.NDArray[np.float64]:
        """``array`` as float64."""
        return np.asarray(array).astype(np.float64)

    def sync(self, out: Any) -> None:
        """NumPy is synchronous: nothing to wait for."""

    def ours(self, op: str, pass_: str, case: Case, weight: Any, bias: Any) -> Fn:
        """Our layer_norm / rms_norm on the numpy backend; backward by ``*_backward`` with saved stats."""
        axis, eps = case.shape.axis, self.eps
        if op == "layer_norm":
            if pass_ == "forward":
                return lambda xd: layernorm.layer_norm(xd[0], weight, bias, axis=axis, eps=eps, backend="numpy")

            def layer_norm_both(xd: tuple[Any, Any]) -> Any:
                x, dy = xd
                y, mean, rstd = layernorm.layer_norm(
                    x, weight, bias, axis=axis, eps=eps, return_stats=True, backend="numpy"
                )
                grads = layernorm.layer_norm_backward(
                    dy, x, weight, axis=axis, eps=eps, mean=mean, rstd=rstd, backend="numpy"
                )
                return y, grads

            return layer_norm_both
        if pass_ == "forward":
            return lambda xd: layernorm.rms_norm(xd[0], weight, axis=axis, eps=eps, backend="numpy")

        def rms_norm_both(xd: tuple[Any, Any]) -> Any:
            x, dy = xd
            y, rstd = layernorm.rms_norm(x, weight, axis=axis, eps=eps, return_stats=True, backend="numpy")
            return y, layernorm.rms_norm_backward(dy, x, weight, axis=axis, eps=eps, rstd=rstd, backend="numpy")

        return rms_norm_both

    def native(self, op: str, pass_: str, case: Case, weight: Any, bias: Any) -> tuple[Fn, str]:
        """The textbook NumPy formulation (two-pass variance, float32 arithmetic for half inputs)."""
        axis, eps = case.shape.normalized_axis, self.eps
        batch = tuple(i for i in range(len(case.shape.dims)) if i != axis)
        shape = [1] * len(case.shape.dims)
        shape[axis] = case.shape.features
        w = np.asarray(weight, np.float32).reshape(shape)
        b = None if op == "rms_norm" else np.asarray(bias, np.float32).reshape(shape)

        def forward(x: Array) -> tuple[Array, Array, Array]:
            xf = x.astype(np.float32, copy=False)
            centered = xf if b is None else xf - xf.mean(axis=axis, keepdims=True)
            rstd = 1.0 / np.sqrt(np.mean(np.square(centered), axis=axis, keepdims=True) + eps)
            xhat = centered * rstd
            y = xhat * w if b is None else xhat * w + b
            return y.astype(x.dtype), xhat, rstd

        def both(xd: tuple[Array, Array]) -> Any:
            x, dy = xd
            y, xhat, rstd = forward(x)
            dyf = dy.astype(np.float32, copy=False)
            g = dyf * w
            inner = g - xhat * np.mean(g * xhat, axis=axis, keepdims=True)
            if b is not None:
                inner -= np.mean(g, axis=axis, keepdims=True)
            dx = (rstd * inner).astype(x.dtype)
            grads = [np.sum(dyf * xhat, axis=batch).astype(x.dtype)]
            if b is not None:
                grads.append(np.sum(dyf, axis=batch).astype(x.dtype))
            return y, dx, grads

        stats = "two-pass mean and variance" if b is not None else "mean of squares"
        note = f"plain NumPy in float32: {stats}, then scale" + (" and shift" if b is not None else "")
        if pass_ == "forward":
            return (lambda xd: forward(xd[0])[0]), note
        return both, note + "; hand-written backward"

    def copy(self, case: Case) -> Fn:
        """``x.copy()``: a new host array."""
        return lambda xd: xd[0].copy()
