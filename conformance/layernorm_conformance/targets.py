"""Which backends, devices and dtypes a conformance run covers: one `Target` per backend and device."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

from layernorm_core.dtypes import FLOAT_DTYPES
from layernorm_core.errors import BackendError
from layernorm_core.protocol import BackendInfo
from layernorm_core.registry import registry


@dataclass(frozen=True)
class Target:
    """A backend on one device, the dtypes it declares there, and why it cannot run (``skip``) if so.

    A backend whose framework is installed but whose implementation fails to load, or whose ``info()`` fails, is
    not skipped: ``module`` raises its BackendError (``broken``), so every check of it fails.
    """

    backend: str
    device: str
    dtypes: tuple[str, ...]
    skip: str | None = None
    broken: str | None = None

    @property
    def id(self) -> str:
        """Pytest id, e.g. ``torch-cuda``."""
        return f"{self.backend}-{self.device}"

    @property
    def module(self) -> ModuleType:
        """The backend's loaded implementation module (BackendError when it fails to load or to say its info)."""
        if self.broken is not None:
            raise BackendError(self.broken)
        return registry.get(self.backend)

    @property
    def info(self) -> BackendInfo:
        """The backend's `BackendInfo` (BackendError when it fails to load, or its ``info()`` fails)."""
        return registry.info(self.backend)

    @property
    def deterministic(self) -> bool:
        """Whether the backend promises bitwise reproducible results on this device."""
        return self.device in self.info.deterministic_devices


def available_backends() -> list[str]:
    """Every registered backend whose framework is installed (loadable or not: a load failure must show)."""
    return [name for name in registry.names() if registry.unavailable_reason(name) is None]


def select_targets(
    backends: Sequence[str] | None, devices: Sequence[str] | None, dtypes: Sequence[str] | None
) -> list[Target]:
    """The targets of a run: ``backends`` on ``devices``, restricted to ``dtypes``.

    Defaults: every installed backend, each backend's reported devices, every dtype it declares. An unknown
    backend name raises BackendError. A name given twice counts once (its checks would run, and count, twice).
    """
    wanted_dtypes = tuple(dict.fromkeys(dtypes)) if dtypes else FLOAT_DTYPES
    devices = tuple(dict.fromkeys(devices)) if devices else None
    targets: list[Target] = []
    for name in dict.fromkeys(backends or available_backends()):
        registry.declaration(name)  # unknown name: BackendError now
        reason = registry.unavailable_reason(name)
        if reason is not None:
            targets += [Target(name, d, wanted_dtypes, f"backend {name!r}: {reason}") for d in devices or ("cpu",)]
            continue
        try:
            info = registry.info(name)
        except BackendError as exc:
            targets += [Target(name, d, wanted_dtypes, broken=str(exc)) for d in devices or ("cpu",)]
            continue
        declared = tuple(d for d in wanted_dtypes if d in info.dtypes)
        for device in devices or info.devices:
            skip = None
            if device not in info.devices:
                skip = f"no {device} device for backend {name!r} here (it reports {', '.join(info.devices)})"
            elif not declared:
                skip = (
                    f"backend {name!r} computes none of {', '.join(wanted_dtypes)} here "
                    f"(it computes {', '.join(info.dtypes) or 'no dtype'})"
                )
            targets.append(Target(name, device, declared, skip))
    return targets
