"""What the report records about the machine: CPU model, cores, memory, load, thread settings."""

from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone
from typing import Any

from layernorm_core.cpus import usable_cores

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "XLA_FLAGS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "LAYERNORM_NUMPY_THREADS",
)


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, else what the platform module reports."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    """Total memory in GiB, or None where it cannot be read."""
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (how busy the machine was), or None."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def describe() -> dict[str, Any]:
    """The machine, for results.json and the report header."""
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "memory_gib": memory_gib(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "load_average_start": load_average(),
        "thread_variables": {name: os.environ[name] for name in THREAD_VARIABLES if name in os.environ},
    }


def limit_threads(count: int) -> dict[str, str]:
    """Ask every framework for ``count`` compute threads, through the variables they read when first imported.

    Call before any framework is imported. Returns the variables set. On a shared machine one thread per
    framework avoids the stalls of a thread pool whose workers wait for a core another job holds.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    settings = {
        name: str(count)
        for name in (
            "OMP_NUM_THREADS",
            "MKL_NUM_THREADS",
            "OPENBLAS_NUM_THREADS",
            "TF_NUM_INTRAOP_THREADS",
            "LAYERNORM_NUMPY_THREADS",
        )
    }
    settings["TF_NUM_INTEROP_THREADS"] = "1"
    multi = "true" if count > 1 else "false"
    settings["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen={multi} intra_op_parallelism_threads={count}".strip()
    os.environ.update(settings)
    return settings
