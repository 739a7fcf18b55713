"""The report writer: results.json and report.md (time, GB/s, ratio to native, percent of the copy floor)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

Results = dict[str, Any]
HEADLINE_OP = "layer_norm"
HEADLINE_DTYPE = "float32"


def format_time(seconds: float | None) -> str:
    """Seconds as a short human unit: ``12.3 µs``, ``4.56 ms``, ``1.23 s``; ``—`` for None."""
    if seconds is None:
        return "—"
    shown = float(f"{seconds:.3g}")  # the unit of the rounded value: 999.7 µs reads 1 ms, not 1e+03 µs
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if shown >= scale:
            return f"{shown / scale:.3g} {unit}"
    return f"{shown * 1e9:.3g} ns"


def format_timing(timing: dict[str, Any] | None) -> str:
    """A timing as ``median (p10-p90)``."""
    if timing is None:
        return "—"
    return f"{format_time(timing['median'])} ({format_time(timing['p10'])}-{format_time(timing['p90'])})"


def format_number(value: float | None, suffix: str = "", digits: int = 3) -> str:
    """``value`` to ``digits`` significant digits with ``suffix``, whole from 10**digits up; ``—`` for None."""
    if value is None:
        return "—"
    if abs(float(f"{value:.{digits}g}")) >= 10**digits:  # a GPU's 1180 GB/s, not 1.18e+03
        return f"{value:.0f}{suffix}"
    return f"{value:.{digits}g}{suffix}"


def table(header: list[str], rows: Iterable[list[str]]) -> str:
    """A Markdown table; a ``|`` inside a cell (an error message's) is escaped, so it stays in its column."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def devices(data: Results) -> list[str]:
    """The devices measured, in order of appearance."""
    return list(dict.fromkeys(record["device"] for record in data["results"]))


def _find(data: Results, **match: Any) -> list[dict[str, Any]]:
    return [record for record in data["results"] if all(record[k] == v for k, v in match.items())]


def headline_table(data: Results, device: str = "cpu", dtype: str = HEADLINE_DTYPE, op: str = HEADLINE_OP) -> str:
    """The README's table: per backend and shape, ours vs native and the copy floor, forward and forward+backward."""
    header = ["backend", "shape"]
    for pass_ in ("forward", "fwd+bwd"):
        header += [f"{pass_}: ours", "native", "ours / native", "% of copy floor"]
    rows = []
    for record in _find(data, device=device, dtype=dtype, op=op, **{"pass": "forward"}):
        both = _find(
            data,
            device=device,
            dtype=dtype,
            op=op,
            backend=record["backend"],
            shape=record["shape"],
            **{"pass": "forward+backward"},
        )
        row = [record["backend"], _shape_label(record)]
        for item in [record, *both[:1]]:
            row += [
                format_time(_median(item["ours"])),
                format_time(_median(item["native"])),
                format_number(item["time_vs_native"], "x"),
                format_number(item["percent_of_floor"], "%"),
            ]
        rows.append(row)
    return table(header, rows)


def headline_dtype(data: Results, device: str) -> str:
    """float32 when it was measured on ``device``, else the first dtype that was."""
    measured = [r["dtype"] for r in data["results"] if r["device"] == device]
    return HEADLINE_DTYPE if HEADLINE_DTYPE in measured or not measured else measured[0]


def results_table(records: list[dict[str, Any]]) -> str:
    """Every measurement of one backend and device."""
    header = [
        "op",
        "pass",
        "shape",
        "dtype",
        "ours: median (p10-p90)",
        "native",
        "copy",
        "ours GB/s",
        "native GB/s",
        "copy GB/s",
        "ours / native",
        "% of copy floor",
    ]
    rows = [
        [
            record["op"],
            record["pass"],
            _shape_label(record),
            record["dtype"],
            format_timing(record["ours"]),
            format_timing(record["native"]),
            format_time(_median(record["copy"])),
            format_number(record["ours_gbps"]),
            format_number(record["native_gbps"]),
            format_number(record["copy_gbps"]),
            format_number(record["time_vs_native"], "x"),
            format_number(record["percent_of_floor"], "%"),
        ]
        for record in records
    ]
    return table(header, rows)


def _median(timing: dict[str, Any] | None) -> float | None:
    return None if timing is None else float(timing["median"])


def _shape_label(record: dict[str, Any]) -> str:
    return record["shape"] if record["axis"] == -1 else f"{record['shape']} (axis={record['axis']})"


def header_lines(data: Results) -> list[str]:
    """Title, the noise warning, machine and command."""
    m = data["machine"]
    where = ", ".join(devices(data)) or "no device"
    settings = data["settings"]
    return [
        f"# layernorm benchmarks ({where})",
        "",
        f"> **Noisy numbers.** Measured {m['date']} on a shared, busy machine ({m['cpu']}, {m['usable_cores']} "
        f"usable cores of {m['cores']}, {m['memory_gib']} GiB) while other jobs ran beside it: load average "
        f"{_load(m.get('load_average_start'))} at the start, {_load(m.get('load_average_end'))} at the end. "
        "Compare only numbers from the same run: every ratio comes from functions timed interleaved, side by side, "
        f"medians of {settings['rounds']} rounds x {settings['repeats']} repeats. {_clock(data)}",
        "",
        f"Command: `{data['command']}` · {_duration(data)}Python {m['python']} · {m['platform']}"
        + (f" · thread variables: {m['thread_variables']}" if m["thread_variables"] else ""),
        "",
    ]


def _clock(data: Results) -> str:
    if data.get("clock") == "process":
        return (
            "Times are **process CPU time** (`--clock process`): time spent descheduled by other jobs is not counted; "
            "memory-bandwidth contention still is."
        )
    return "Times are wall-clock time."


def _duration(data: Results) -> str:
    seconds = sum(case["seconds"] for case in data.get("case_seconds", []))
    return f"took {seconds / 60:.1f} min · " if seconds else ""


def _load(values: list[float] | None) -> str:
    return "unknown" if values is None else " / ".join(f"{v:g}" for v in values)


def backends_section(data: Results) -> list[str]:
    """Which backends ran, where, with which versions and threads; which were skipped and why."""
    rows = []
    for backend in data["backends"]:
        env = backend.get("environment", {})
        detail = ", ".join(f"{k} {v}" for k, v in env.items()) if env else ""
        status = "ran" if backend["status"] == "ran" else f"skipped: {backend.get('reason', '')}"
        skipped = backend.get("dtypes_skipped") or {}
        if skipped:
            status += "; " + "; ".join(skipped.values())
        rows.append([backend["name"], str(backend.get("version", "—")), backend.get("device", "—"), detail, status])
    return ["## Backends", "", table(["backend", "version", "device", "environment", "status"], rows), ""]


def notes_section(data: Results) -> list[str]:
    """How each native baseline is formulated, and every error recorded."""
    lines = ["## Native baselines", ""]
    shapes: dict[tuple[str, str, str], dict[str, None]] = {}
    for r in data["results"]:
        if r["native_impl"]:
            shapes.setdefault((r["backend"], r["op"], r["native_impl"]), {})[_shape_label(r)] = None
    lines += [f"- {backend} {op} ({', '.join(s)}): {impl}" for (backend, op, impl), s in shapes.items()]
    errors = dict.fromkeys(
        (r["backend"], f"{r['op']} {r['pass']} {r['shape']} {r['dtype']}", impl, message)
        for r in data["results"]
        for impl, message in r["errors"].items()
    )
    failures = [(f["backend"], f["case"], "all", f["error"]) for f in data.get("failures", [])]
    if errors or failures:
        lines += ["", "## Errors", ""]
        lines += [f"- {b} {case} ({impl}): {_code(message)}" for b, case, impl, message in [*errors, *failures]]
    return [*lines, ""]


def _code(text: str) -> str:
    """``text`` as Markdown inline code, fenced by more backticks than it holds in a row (Keras quotes `names`)."""
    runs = [len(run) for run in re.findall(r"`+", text)]
    fence = "`" * (max(runs, default=0) + 1)
    padding = " " if runs else ""
    return f"{fence}{padding}{text}{padding}{fence}"


def agreement_section(data: Results) -> list[str]:
    """The forward outputs' worst error against the float64 reference, per backend, op and dtype."""
    worst: dict[tuple[str, str], dict[tuple[str, str], float]] = {}
    dtypes: dict[str, None] = {}
    for record in data["results"]:
        for impl, ratio in record.get("error_vs_reference", {}).items():
            cell = worst.setdefault((record["backend"], record["op"]), {})
            cell[record["dtype"], impl] = max(cell.get((record["dtype"], impl), 0.0), ratio)
            dtypes[record["dtype"]] = None
    if not worst:
        return []

    def pair(cell: dict[tuple[str, str], float], dtype: str) -> str:
        ours, native = cell.get((dtype, "ours")), cell.get((dtype, "native"))
        return f"{format_number(ours, digits=2)} / {format_number(native, digits=2)}"

    rows = [[backend, op] + [pair(cell, dtype) for dtype in dtypes] for (backend, op), cell in worst.items()]
    return [
        "## Agreement with the float64 reference",
        "",
        "Whether both sides compute the same thing: the forward output's worst error (ours / native) on the leading "
        "rows of every shape, as benchmarked, with a variance near eps (another eps shows) and offset by 300 (a "
        "one-pass variance shows in float32), in units of layernorm's tolerance for the dtype "
        "(layernorm_core.tolerances; at most 1 passes).",
        "",
        table(["backend", "op", *dtypes], rows),
        "",
    ]


METHOD = """## Method

- Each case (backend, device, shape, dtype) builds its inputs once on the device: several distinct (x, dy)
  pairs, rotated call after call so that together they overflow the caches; weight and bias of x's dtype.
- Every function of the case (ours and native for layer_norm and rms_norm, forward and forward+backward, and
  the copy) is called once (compiling it where the framework compiles), warmed up, and calibrated to a number of
  back-to-back calls lasting at least the minimum time; then, round after round, each function in turn makes one
  untimed call (which pays for the switch from the function before) and runs its repeats, so a burst of machine
  noise hits all of them alike. The device is synchronized before every clock
  read. Times are the median per call over all repeats, with the 10th-90th percentiles.
- GB/s counts the bytes a call must move at the least: forward reads x and writes y (plus the parameters);
  forward+backward also reads x and dy and writes dx (5 tensors, plus the weight again and the parameters'
  gradients).
- The copy floor is a plain copy of x into a new array on the same device (including the allocation, as every
  normalization returns a new array). % of copy floor = ours' GB/s / the copy's GB/s: 100% means ours moves
  its bytes as fast as a copy moves its own.
- ours / native is a time ratio: below 1 means ours is faster than the framework's own normalization.
- Forward+backward of ours goes through the framework's autodiff (torch.autograd, jax.vjp under jit,
  tf.GradientTape under XLA); for NumPy through layernorm.layer_norm_backward with the saved statistics.
"""


def render(data: Results, plots: list[str]) -> str:
    """report.md's text."""
    lines = header_lines(data) + backends_section(data)
    for device in devices(data):
        dtype = headline_dtype(data, device)
        lines += [f"## Headline: {HEADLINE_OP}, {dtype}, {device}", "", headline_table(data, device, dtype), ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{name}]({name})" for name in plots] + [""]
    lines += ["## All results", ""]
    for backend in dict.fromkeys(r["backend"] for r in data["results"]):
        for device in devices(data):
            records = _find(data, backend=backend, device=device)
            if records:
                lines += [f"### {backend} on {device}", "", results_table(records), ""]
    lines += notes_section(data)
    lines += agreement_section(data)
    lines += [METHOD]
    return "\n".join(lines)


def save(data: Results, out: Path) -> Path:
    """Write results.json into ``out`` (also after every case, so an interrupted run keeps what it measured)."""
    path = out / "results.json"
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return path


def write(data: Results, out: Path, plots: list[str]) -> Path:
    """Write results.json and report.md into ``out``; return report.md's path."""
    out.mkdir(parents=True, exist_ok=True)
    save(data, out)
    report = out / "report.md"
    report.write_text(render(data, plots), encoding="utf-8")
    return report
