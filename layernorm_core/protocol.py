"""What a backend plugin declares (without importing its framework) and what its loaded module provides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from layernorm_core.dtypes import FLOAT_DTYPES
from layernorm_core.spec import NormSpec


@dataclass(frozen=True)
class BackendDeclaration:
    """A backend as a plugin declares it: cheap to build, imports no framework.

    ``array_modules`` are the top-level module names whose array types this backend owns (``type(x).__module__``
    starts with one of them, as in einops); auto dispatch sends such arrays to it. ``requires`` are the modules
    that must be importable for the backend to be available, and ``extra`` the pip extra that installs them.
    ``excluded_modules`` are modules under those whose array types are not dense arrays (masked, sparse,
    ragged), or one such type by its ``module.qualname`` (``jax.ShapeDtypeStruct``, a shape spec in module
    ``jax``): a dense kernel would misread them (a NumPy masked array's mask would be dropped; a shape spec holds
    no values), so an argument of such a type, or of a subclass, is a DTypeError before any backend runs.
    Non-dense variants of an owned type (torch's sparse layouts) are the backend's to refuse, with
    `not_dense_error`: before its own code computes anything, or in place of the error its framework's kernel
    raised on them.
    ``implementation`` is the module (imported on first use) that implements `BackendModule`.
    """

    name: str
    implementation: str
    array_modules: tuple[str, ...] = ()
    excluded_modules: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    extra: str | None = None
    description: str = ""
    """One line on what the backend is, shown by ``python -m layernorm backends``."""


@dataclass(frozen=True)
class BackendInfo:
    """What a loaded backend reports about itself."""

    version: str
    devices: tuple[str, ...]
    """Device kinds it can run on here: "cpu", "cuda", "gpu", "tpu"."""
    dtypes: tuple[str, ...]
    """dtype names it computes in, among float16, bfloat16, float32, float64."""
    deterministic_devices: tuple[str, ...] = ()
    """Devices where two runs on the same input are promised to be bitwise identical."""
    autodiff: bool = False
    """True when the framework's own autodiff differentiates through layer_norm and rms_norm."""
    device_count: int | None = None
    """Devices this process can address, of every kind; None: one of each kind in ``devices``. Above one, the
    core compares the `device_of` answers of each call's arrays."""
    notes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """ValueError for a dtype name the core does not know (``"fp32"``): no check would run on it.

        Also for devices, dtypes or deterministic devices given as one string (``devices=("cpu")`` is ``"cpu"``),
        which read as the names "c", "p" and "u".
        """
        for name in ("devices", "dtypes", "deterministic_devices"):
            value = getattr(self, name)
            if not isinstance(value, tuple | list) or not all(isinstance(v, str) for v in value):
                example = "('float32',)" if name == "dtypes" else "('cpu',)"
                raise ValueError(f"{name} must be a tuple of names, such as {example}; got {value!r}")
        unknown = [d for d in self.dtypes if d not in FLOAT_DTYPES]
        if unknown:
            raise ValueError(f"dtypes {unknown} are not among {', '.join(FLOAT_DTYPES)}")


class BackendModule(Protocol):
    """The functions a backend's implementation module defines, under these names (as Keras backends do).

    Every function receives arrays of the backend's own framework, already checked by the core: ``spec`` is the
    validated `NormSpec`. Outputs have x's dtype; statistics have ``spec.compute_dtype`` and ``spec.stats_shape``.
    """

    def info(self) -> BackendInfo:
        """Version, devices, dtypes and promises of this backend on this machine."""

    def device_of(self, x: Any) -> str:
        """The device x lives on: its kind ("cpu", "cuda", ...), with ":" and the device where there are several.

        Torch says "cuda:1"; JAX says "cpu:0,1" for an array committed to CPU devices 0 and 1.

        The core refuses (DeviceError) a call whose arrays name two kinds, or two devices. The bare kind, where
        there are several of that kind, is an array bound to none of them, which goes where the others are (JAX's
        uncommitted arrays). The kind, the part before ":", is what `BackendInfo.devices` lists.
        """

    def is_tracked(self, x: Any) -> bool:
        """True when x takes part in its framework's autodiff or tracing, so it cannot cross frameworks."""

    def to_numpy(self, x: Any) -> Any:
        """A host NumPy copy of x with its dtype (bfloat16 as ml_dtypes.bfloat16)."""

    def from_numpy(self, array: Any, device: str = "cpu") -> Any:
        """A new array of this framework on ``device`` holding a NumPy array's values and dtype.

        ``device`` is a kind, or one of this backend's own `device_of` answers (outputs going back to x's device).
        """

    def from_foreign(self, x: Any) -> Any:
        """x, an array of another framework, as this framework's array (DLPack, else the array protocol).

        The core calls it for arrays of a framework no backend owns (with ``backend=`` named) and for device arrays
        crossing frameworks; host arrays of an installed framework cross through `to_numpy` and `from_numpy`.
        The dtype and values are kept exactly (conformance `test_foreign_arrays`).
        """

    def layer_norm(self, x: Any, weight: Any, bias: Any, spec: NormSpec, return_stats: bool) -> Any:
        """y, or (y, mean, rstd) when ``return_stats``."""

    def rms_norm(self, x: Any, weight: Any, spec: NormSpec, return_stats: bool) -> Any:
        """y, or (y, rstd) when ``return_stats``."""

    def layer_norm_backward(self, dy: Any, x: Any, weight: Any, spec: NormSpec, mean: Any, rstd: Any) -> Any:
        """(dx, dweight, dbias); mean and rstd are recomputed when None; dweight/dbias have normalized_shape."""

    def rms_norm_backward(self, dy: Any, x: Any, weight: Any, spec: NormSpec, rstd: Any) -> Any:
        """(dx, dweight); rstd is recomputed when None."""


REQUIRED_FUNCTIONS = tuple(
    name for name, value in vars(BackendModule).items() if not name.startswith("_") and callable(value)
)
"""The names of `BackendModule`'s functions, which the registry checks a backend module defines."""
