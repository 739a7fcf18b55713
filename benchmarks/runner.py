"""The runner: plans the cases of every backend, measures them side by side, and returns results.json's content."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks import machine
from benchmarks.cases import DTYPES, OPS, PASSES, Case, Shape, copy_bytes, traffic_bytes
from benchmarks.frameworks import load
from benchmarks.frameworks.base import COPY, FrameworkAdapter, Workload, first_error_line, key
from benchmarks.timing import Clock, Timing, interleaved

SCHEMA = 1
RESULTS_KEYS = ("command", "machine", "settings", "backends", "results")
"""The keys of results.json (`run`) that the report cannot do without, besides ``schema``."""
GPU_KINDS = frozenset({"cuda", "gpu"})
CLOCKS: dict[str, Clock] = {"wall": time.perf_counter, "process": time.process_time}
"""wall: elapsed time. process: this process's CPU time (all its threads), which time spent descheduled by
other jobs does not inflate; it cannot see GPU work, so it is refused for GPU devices."""


@dataclass(frozen=True)
class Settings:
    """How hard to measure: rounds of interleaving, repeats per round, seconds per repeat, warm-up calls.

    ``max_time``: the seconds a slow function may spend per round; it then runs fewer repeats (at least one).
    """

    rounds: int = 5
    repeats: int = 3
    min_time: float = 0.01
    warmup: int = 1
    max_time: float = 0.1


FULL = Settings()
QUICK = Settings(rounds=3, repeats=1, min_time=0.005, warmup=1, max_time=0.05)


@dataclass
class Config:
    """What to run: backends (None: every registered one), shapes, dtypes, device choice, settings."""

    shapes: Sequence[Shape]
    dtypes: Sequence[str] = DTYPES
    backends: Sequence[str] | None = None
    device: str = "auto"
    settings: Settings = FULL
    ops: tuple[str, ...] = OPS
    passes: tuple[str, ...] = PASSES
    command: str = ""
    clock: str = "wall"


@dataclass
class Plan:
    """One backend ready to run (adapter loaded, device and dtypes chosen), or skipped with a reason."""

    name: str
    adapter: FrameworkAdapter | None = None
    device: str = ""
    dtypes: list[str] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)


def registered_backends() -> list[str]:
    """Every backend a plugin declares, installed or not."""
    from layernorm_core.registry import registry

    return list(registry.names())


def backend_info(name: str) -> Any:
    """The loaded backend's `BackendInfo` (imports its framework); raises when unknown, missing or broken."""
    from layernorm_core.registry import registry

    return registry.get(name).info()


def choose_device(wanted: str, offered: Sequence[str], backend_devices: Sequence[str]) -> str | None:
    """The device kind to run on: ``wanted``, or with "auto" the first kind both adapter and backend offer."""

    def same(a: str, b: str) -> bool:
        return a == b or (a in GPU_KINDS and b in GPU_KINDS)

    candidates = offered if wanted == "auto" else [kind for kind in offered if same(kind, wanted)]
    for kind in candidates:
        if any(same(kind, device) for device in backend_devices):
            return kind
    return None


def plan_backend(name: str, config: Config, load_adapter: Callable[[str], FrameworkAdapter] = load) -> Plan:
    """Load backend ``name`` and its adapter and choose device and dtypes; on any failure, a skip with reason."""
    plan = Plan(name, record={"name": name, "status": "skipped"})
    try:
        info = backend_info(name)
    except Exception as exc:
        plan.record["reason"] = first_error_line(exc)
        return plan
    plan.record.update(version=info.version, devices=list(info.devices), dtypes=list(info.dtypes), notes=info.notes)
    try:
        adapter = load_adapter(name)
    except Exception as exc:
        plan.record["reason"] = first_error_line(exc)
        return plan
    offered = adapter.device_kinds()
    if config.clock == "process" and config.device == "auto":
        offered = tuple(kind for kind in offered if kind not in GPU_KINDS)
    device = choose_device(config.device, offered, info.devices)
    if device is None:
        plan.record["reason"] = f"no device {config.device!r}: backend offers {', '.join(info.devices)}"
        return plan
    if config.clock == "process" and device in GPU_KINDS:
        plan.record["reason"] = f"the process clock cannot time {device} work; use --clock wall"
        return plan
    plan.dtypes = [dtype for dtype in config.dtypes if dtype in info.dtypes]
    plan.record["dtypes_skipped"] = {
        dtype: f"the {name} backend does not run {dtype}" for dtype in config.dtypes if dtype not in info.dtypes
    }
    try:
        plan.record["environment"] = adapter.environment(device)
    except Exception as exc:
        plan.record["environment"] = {"error": first_error_line(exc)}
    plan.adapter, plan.device = adapter, device
    plan.record.update(status="ran", device=device)
    return plan


def timing_dict(timing: Timing | None) -> dict[str, Any] | None:
    """A `Timing` as JSON (seconds), or None."""
    return None if timing is None else asdict(timing)


def result_records(
    plan: Plan, case: Case, config: Config, timings: dict[str, Timing], work: Workload
) -> list[dict[str, Any]]:
    """One record per (op, pass) of a measured case: raw timings and the derived GB/s, ratio and floor."""
    records = []
    copy = timings.get(COPY)
    for op in config.ops:
        for pass_ in config.passes:
            ours = timings.get(key(op, pass_, "ours"))
            native = timings.get(key(op, pass_, "native"))
            moved = traffic_bytes(op, pass_, case.shape, case.dtype)
            copied = copy_bytes(case.shape, case.dtype)
            record: dict[str, Any] = {
                "backend": plan.name,
                "device": case.device,
                "op": op,
                "pass": pass_,
                "shape": case.shape.label,
                "dims": list(case.shape.dims),
                "axis": case.shape.axis,
                "dtype": case.dtype,
                "bytes": moved,
                "copy_bytes": copied,
                "ours": timing_dict(ours),
                "native": timing_dict(native),
                "copy": timing_dict(copy),
                "native_impl": work.notes.get(key(op, pass_, "native"), ""),
                "error_vs_reference": {
                    impl: work.checks[key(op, pass_, impl)]
                    for impl in ("ours", "native")
                    if key(op, pass_, impl) in work.checks
                },
                "errors": {
                    impl: work.errors[name]
                    for impl, name in (
                        ("ours", key(op, pass_, "ours")),
                        ("native", key(op, pass_, "native")),
                        ("copy", COPY),
                        ("ours check", key(op, pass_, "ours") + "/check"),
                        ("native check", key(op, pass_, "native") + "/check"),
                    )
                    if name in work.errors
                },
            }
            record.update(derived(ours, native, copy, moved, copied))
            records.append(record)
    return records


def derived(
    ours: Timing | None, native: Timing | None, copy: Timing | None, moved: int, copied: int
) -> dict[str, float | None]:
    """GB/s of ours, native and the copy; ours' time over native's; ours' GB/s as a percentage of the copy's."""
    ours_gbps = None if ours is None else ours.gbps(moved)
    copy_gbps = None if copy is None else copy.gbps(copied)
    return {
        "ours_gbps": ours_gbps,
        "native_gbps": None if native is None else native.gbps(moved),
        "copy_gbps": copy_gbps,
        "time_vs_native": None if ours is None or native is None else ours.median / native.median,
        "percent_of_floor": None if ours_gbps is None or not copy_gbps else 100.0 * ours_gbps / copy_gbps,
    }


def run(
    config: Config,
    *,
    clock: Clock | None = None,
    progress: bool = True,
    load_adapter: Callable[[str], FrameworkAdapter] = load,
    checkpoint: Callable[[dict[str, Any]], Any] | None = None,
) -> dict[str, Any]:
    """Measure every planned case and return the content of results.json.

    ``checkpoint(data)``, when given, receives the results so far after every case (to save a partial run).
    ``clock`` replaces the configured clock (tests pass a fake one).
    """
    clock = clock or CLOCKS[config.clock]
    names = list(config.backends) if config.backends else registered_backends()
    data: dict[str, Any] = {
        "schema": SCHEMA,
        "command": config.command,
        "clock": config.clock,
        "machine": machine.describe(),
        "settings": asdict(config.settings),
        "shapes": [shape.label for shape in config.shapes],
        "dtypes": list(config.dtypes),
        "backends": [],
        "failures": [],
        "case_seconds": [],
        "results": [],
    }
    plans = [plan_backend(name, config, load_adapter) for name in names]
    data["backends"] = [plan.record for plan in plans]
    cases = [
        (plan, Case(shape, dtype, plan.device))
        for plan in plans
        if plan.adapter
        for dtype in plan.dtypes
        for shape in config.shapes
    ]
    bar = _progress(len(cases) * (config.settings.rounds + 1), progress)
    for plan, case in cases:
        assert plan.adapter is not None
        bar.set_description(f"{plan.name} {case.label}")
        started = time.perf_counter()
        try:
            timings, work = measure_case(plan.adapter, case, config, clock, bar.update)
            data["results"].extend(result_records(plan, case, config, timings, work))
        except Exception as exc:
            data["failures"].append({"backend": plan.name, "case": case.label, "error": first_error_line(exc)})
            bar.update(config.settings.rounds + 1)
        finally:
            gc.collect()
            plan.adapter.release()
        data["case_seconds"].append(
            {"backend": plan.name, "case": case.label, "seconds": time.perf_counter() - started}
        )
        data["machine"]["load_average_end"] = machine.load_average()
        if checkpoint is not None:
            checkpoint(data)
    bar.close()
    data["machine"]["load_average_end"] = machine.load_average()
    return data


def measure_case(
    adapter: FrameworkAdapter, case: Case, config: Config, clock: Clock, advance: Callable[[int], Any]
) -> tuple[dict[str, Timing], Workload]:
    """Build one case's workload and time its functions interleaved: (timings, the workload's errors and notes)."""
    work = adapter.workload(case, config.ops, config.passes)
    advance(1)
    settings = config.settings
    timings = interleaved(
        work.fns,
        work.inputs,
        work.sync,
        rounds=settings.rounds,
        repeats=settings.repeats,
        min_time=settings.min_time,
        warmup=settings.warmup,
        clock=clock,
        on_round=lambda: advance(1),
        max_time=settings.max_time,
    )
    work.inputs.clear()
    return timings, work


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_description(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, unit="step", dynamic_ncols=True)
