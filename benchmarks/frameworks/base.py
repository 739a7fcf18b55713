"""The adapter every framework provides: inputs on a device, a sync, our calls, the native baseline, the copy floor."""

from __future__ import annotations

import abc
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.cases import EPS, ITEMSIZE, OPS, PASSES, Case, Shape

Fn = Callable[[Any], Any]
"""A measured function: takes one rotated input ``(x, dy)`` and returns something to sync on."""

COPY = "copy"


def key(op: str, pass_: str, impl: str) -> str:
    """The name of a measured function in a workload, e.g. ``layer_norm/forward/ours``."""
    return f"{op}/{pass_}/{impl}"


@dataclass
class Params:
    """Weight and bias of a case, as host float32 arrays of the normalized size (the adapter converts them)."""

    weight: npt.NDArray[np.float32]
    bias: npt.NDArray[np.float32]


@dataclass
class Workload:
    """Everything measured side by side for one case."""

    inputs: list[Any]
    sync: Callable[[Any], Any]
    fns: dict[str, Fn]
    errors: dict[str, str] = field(default_factory=dict)
    """Functions that could not be built or failed their first call: name -> reason."""
    notes: dict[str, str] = field(default_factory=dict)
    """How each native baseline is formulated: function name -> text."""
    checks: dict[str, float] = field(default_factory=dict)
    """Forward functions' worst error against the float64 reference, in units of the tolerance (<= 1 passes)."""


CHECK_VARIANTS: dict[str, Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]] = {
    "as benchmarked": lambda x: x,
    "variance near eps": lambda x: (x - np.float32(0.5)) * np.float32(1.5e-3),  # spread 3e-3: another eps shows
    "offset by 300": lambda x: x + np.float32(300.0),  # a one-pass E[x^2] - E[x]^2 variance shows (in float32)
}
"""What `FrameworkAdapter.check` runs besides the benchmark's own x: inputs where an eps or a variance formula
other than layernorm's gives another y."""


def rotations(shape: Shape, itemsize: int, target_bytes: int = 96 << 20, most: int = 32) -> int:
    """How many distinct inputs to rotate through so that together they overflow the caches (at least 2)."""
    per_input = 2 * shape.numel * itemsize  # x and dy
    return max(2, min(most, -(-target_bytes // per_input)))


def host_inputs(case: Case, count: int, seed: int = 0) -> tuple[list[tuple[Any, Any]], Params]:
    """``count`` pairs (x, dy) of float32 host arrays of the case's shape, and weight/bias: seeded, not constant."""
    rng = np.random.default_rng(seed)
    dims = case.shape.dims
    pairs = [
        (
            rng.standard_normal(dims, dtype=np.float32) * 2.0 + 0.5,
            rng.standard_normal(dims, dtype=np.float32),
        )
        for _ in range(count)
    ]
    features = case.shape.features
    params = Params(
        weight=(1.0 + 0.1 * rng.standard_normal(features)).astype(np.float32),
        bias=(0.1 * rng.standard_normal(features)).astype(np.float32),
    )
    return pairs, params


def first_error_line(exc: BaseException) -> str:
    """A one-line description of an exception for the report: type, message, and where it was raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno})" if frames else ""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {message}{where}"[:300]


class FrameworkAdapter(abc.ABC):
    """How to benchmark one framework. Subclasses import their framework in ``__init__``, not at module import."""

    backend: str
    """The layernorm backend name (``layernorm.layer_norm(..., backend=backend)``)."""

    eps: float = EPS

    @abc.abstractmethod
    def environment(self, device: str) -> dict[str, Any]:
        """Framework versions, threads and device description, for the report."""

    @abc.abstractmethod
    def device_kinds(self) -> tuple[str, ...]:
        """The device kinds this framework can run on here ("cpu", "cuda", "gpu"), best first."""

    @abc.abstractmethod
    def to_device(self, array: npt.NDArray[np.float32], dtype: str, device: str) -> Any:
        """A framework array on ``device`` holding ``array`` cast to ``dtype``."""

    @abc.abstractmethod
    def sync(self, out: Any) -> None:
        """Block until every computation producing ``out`` has finished on the device."""

    @abc.abstractmethod
    def to_host(self, array: Any) -> npt.NDArray[np.float64]:
        """A float64 NumPy copy of a framework array (exact for every benchmarked dtype)."""

    @abc.abstractmethod
    def ours(self, op: str, pass_: str, case: Case, weight: Any, bias: Any) -> Fn:
        """Our ``op`` on this backend; forward+backward through the framework's autodiff."""

    @abc.abstractmethod
    def native(self, op: str, pass_: str, case: Case, weight: Any, bias: Any) -> tuple[Fn, str]:
        """The framework's own normalization for ``op`` and a one-line description of how it is formulated."""

    @abc.abstractmethod
    def copy(self, case: Case) -> Fn:
        """A plain copy of x into a new array on the same device: the floor."""

    def release(self) -> None:  # noqa: B027 - optional hook, a no-op unless the framework caches memory
        """Free cached device memory between cases."""

    def workload(self, case: Case, ops: tuple[str, ...] = OPS, passes: tuple[str, ...] = PASSES) -> Workload:
        """Build and try once (compiling where the framework compiles) every function measured for ``case``."""
        pairs, params = host_inputs(case, rotations(case.shape, ITEMSIZE[case.dtype]))
        inputs = [
            (self.to_device(x, case.dtype, case.device), self.to_device(dy, case.dtype, case.device)) for x, dy in pairs
        ]
        weight = self.to_device(params.weight, case.dtype, case.device)
        bias = self.to_device(params.bias, case.dtype, case.device)
        work = Workload(inputs=inputs, sync=self.sync, fns={})
        builders: list[tuple[str, Callable[[], Fn]]] = [(COPY, partial(self.copy, case))]
        for op in ops:
            for pass_ in passes:
                builders.append((key(op, pass_, "ours"), partial(self.ours, op, pass_, case, weight, bias)))
                builders.append(
                    (key(op, pass_, "native"), partial(self._noted_native, work, op, pass_, case, weight, bias))
                )
        for name, build in builders:
            try:
                fn = build()
                self.sync(fn(inputs[0]))
            except Exception as exc:
                work.errors[name] = first_error_line(exc)
                continue
            work.fns[name] = fn
        for op in ops:
            for impl in ("ours", "native"):
                name = key(op, "forward", impl)
                if name in work.fns:
                    try:
                        work.checks[name] = self.check(op, case, work.fns[name], inputs[0][0], weight, bias)
                    except Exception as exc:
                        work.errors[f"{name}/check"] = first_error_line(exc)
        return work

    def check(self, op: str, case: Case, fn: Fn, x: Any, weight: Any, bias: Any, rows: int = 16) -> float:
        """``fn``'s worst error on x's first ``rows`` rows against the float64 reference, in tolerance units.

        A benchmark is only worth reading if both sides compute the same thing: this catches a baseline with
        another axis, eps or formula. x (~ N(0.5, 2)) is too well conditioned to show the last two, so each of
        `CHECK_VARIANTS` runs too: rows of variance near eps, and rows offset far from their spread. Only leading
        rows are compared, so the reference stays cheap.
        """
        from layernorm_core import reference
        from layernorm_core.spec import check_forward
        from layernorm_core.tolerances import error_ratio, row_condition, tolerance

        host = self.to_host(x).astype(np.float32)  # exact: x holds float32, bfloat16 or float16 values
        w64, b64 = self.to_host(weight), self.to_host(bias)
        worst = 0.0
        for variant in CHECK_VARIANTS.values():
            x_variant = self.to_device(variant(host), case.dtype, case.device)
            y = self.to_host(fn((x_variant, None)))[:rows]
            x64 = self.to_host(x_variant)[:rows]
            if op == "layer_norm":
                spec = check_forward("layer_norm", x64, w64, b64, case.shape.axis, self.eps)
                expected = reference.layer_norm(x64, w64, b64, spec)[0]
            else:
                spec = check_forward("rms_norm", x64, w64, None, case.shape.axis, self.eps)
                expected = reference.rms_norm(x64, w64, spec)[0]
            worst = max(worst, error_ratio(y, expected, tolerance(case.dtype, "output"), row_condition(x64, spec)))
        return worst

    def _noted_native(self, work: Workload, op: str, pass_: str, case: Case, weight: Any, bias: Any) -> Fn:
        fn, note = self.native(op, pass_, case, weight, bias)
        work.notes[key(op, pass_, "native")] = note
        return fn
