"""PyTorch: our backend through torch.autograd, beside torch.nn.functional.layer_norm / rms_norm (CPU or CUDA)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

import layernorm
from benchmarks.cases import Case
from benchmarks.frameworks.base import Fn, FrameworkAdapter

Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Adapter(FrameworkAdapter):
    """torch on the CPU, or CUDA when a GPU is present."""

    backend = "torch"

    def environment(self, device: str) -> dict[str, Any]:
        """The torch version, intra/inter-op threads, and the CUDA device when used."""
        env: dict[str, Any] = {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
        }
        if device == "cuda":
            env["device"] = torch.cuda.get_device_name()
            env["cuda"] = torch.version.cuda
        else:
            env["device"] = "cpu"
        return env

    def device_kinds(self) -> tuple[str, ...]:
        """("cuda", "cpu") when CUDA is available, else ("cpu",)."""
        return ("cuda", "cpu") if torch.cuda.is_available() else ("cpu",)

    def to_device(self, array: npt.NDArray[np.float32], dtype: str, device: str) -> Any:
        """A contiguous tensor of ``dtype`` on ``device``."""
        return torch.from_numpy(np.ascontiguousarray(array)).to(device=device, dtype=getattr(torch, dtype))

    def to_host(self, array: Any) -> npt.NDArray[np.float64]:
        """The tensor as a float64 host array."""
        return array.detach().to(device="cpu", dtype=torch.float64).numpy()

    def sync(self, out: Any) -> None:
        """``torch.cuda.synchronize()`` when CUDA is in use; CPU ops are synchronous."""
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    def release(self) -> None:
        """Return cached CUDA blocks so the next case starts from the same state."""
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()

    def ours(self, op: str, pass_: str, case: Case, weight: Any, bias: Any) -> Fn:
        """Our layer_norm / rms_norm on the torch backend."""
        axis, eps = case.shape.axis, self.eps
        if op == "layer_norm":

            def forward(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
                return layernorm.layer_norm(x, w, b, axis=axis, eps=eps, backend="torch")

        else:

            def forward(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
                return layernorm.rms_norm(x, w, axis=axis, eps=eps, backend="torch")

        return _with_pass(forward, pass_, op, weight, bias)

    def native(self, op: str, pass_: str, case: Case, weight: Any, bias: Any) -> tuple[Fn, str]:
        """torch.nn.functional.layer_norm / rms_norm; channels-first moves the axis last and back (contiguous)."""
        eps, features = self.eps, (case.shape.features,)
        name = f"torch.nn.functional.{op}"
        if op == "layer_norm":

            def trailing(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
                return F.layer_norm(x, features, w, b, eps)

        else:

            def trailing(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
                return F.rms_norm(x, features, w, eps)

        if case.shape.axis == -1:
            return _with_pass(trailing, pass_, op, weight, bias), name
        axis = case.shape.normalized_axis

        def moved(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return trailing(x.movedim(axis, -1), w, b).movedim(-1, axis).contiguous()

        return _with_pass(moved, pass_, op, weight, bias), f"{name} on x.movedim({axis}, -1), moved back, contiguous"

    def copy(self, case: Case) -> Fn:
        """``x.clone()``: a new tensor on the same device."""
        return lambda xd: xd[0].clone()


def _with_pass(forward: Forward, pass_: str, op: str, weight: torch.Tensor, bias: torch.Tensor) -> Fn:
    """``forward`` alone, or forward then ``torch.autograd.grad`` of x, weight (and bias) given dy."""
    if pass_ == "forward":
        return lambda xd: forward(xd[0], weight, bias)
    w = weight.detach().requires_grad_()
    b = bias.detach().requires_grad_()
    wrt = (w, b) if op == "layer_norm" else (w,)

    def both(xd: tuple[torch.Tensor, torch.Tensor]) -> Any:
        x = xd[0].detach().requires_grad_()
        y = forward(x, w, b)
        return torch.autograd.grad(y, (x, *wrt), xd[1])

    return both
