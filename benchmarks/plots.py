"""The plot writer: throughput per shape per backend (ours solid, native hatched), the copy floor as a line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.cases import OPS, PASSES

Results = dict[str, Any]


def write(data: Results, out: Path) -> list[str]:
    """One PNG per (device, dtype) with a panel per (op, pass); return the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    records = data["results"]
    for device in dict.fromkeys(r["device"] for r in records):
        for dtype in dict.fromkeys(r["dtype"] for r in records if r["device"] == device):
            subset = [r for r in records if r["device"] == device and r["dtype"] == dtype]
            figure, axes = plt.subplots(len(OPS), len(PASSES), figsize=(13, 8.5), squeeze=False)
            for row, op in enumerate(OPS):
                for col, pass_ in enumerate(PASSES):
                    _panel(axes[row][col], [r for r in subset if r["op"] == op and r["pass"] == pass_], op, pass_)
            figure.suptitle(f"layernorm throughput, {dtype} on {device} (shared busy machine: noisy)")
            figure.tight_layout()
            name = f"throughput_{device}_{dtype}.png"
            figure.savefig(out / name, dpi=90)
            plt.close(figure)
            names.append(name)
    return names


def _panel(ax: Any, records: list[dict[str, Any]], op: str, pass_: str) -> None:
    """Grouped bars over shapes: per backend ours and native GB/s; a black line at each backend's copy GB/s."""
    shapes = list(dict.fromkeys(r["shape"] for r in records))
    backends = list(dict.fromkeys(r["backend"] for r in records))
    ax.set_title(f"{op}, {pass_}")
    if not shapes:
        ax.text(0.5, 0.5, "no results", ha="center", transform=ax.transAxes)
        return
    width = 0.8 / (2 * len(backends))
    colors = [f"C{i}" for i in range(len(backends))]
    for b, backend in enumerate(backends):
        by_shape = {r["shape"]: r for r in records if r["backend"] == backend}
        for s, shape in enumerate(shapes):
            record = by_shape.get(shape)
            if record is None:
                continue
            left = s - 0.4 + 2 * b * width
            for offset, metric, hatch in ((0, "ours_gbps", None), (1, "native_gbps", "//")):
                if record[metric]:
                    ax.bar(
                        left + offset * width,
                        record[metric],
                        width,
                        align="edge",
                        color=colors[b],
                        alpha=1.0 if hatch is None else 0.45,
                        hatch=hatch,
                        edgecolor=colors[b],
                    )
            if record["copy_gbps"]:
                ax.hlines(record["copy_gbps"], left, left + 2 * width, colors="black", linewidth=2)
    ax.set_xticks(range(len(shapes)))
    ax.set_xticklabels(shapes, rotation=15, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("GB/s (higher is better)")
    ax.grid(axis="y", which="both", alpha=0.3)
    _legend(ax, backends, colors)


def _legend(ax: Any, backends: list[str], colors: list[str]) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    pairs = zip(backends, colors, strict=True)
    handles: list[Any] = [Patch(color=color, label=f"{backend} (ours)") for backend, color in pairs]
    handles += [Patch(facecolor="white", edgecolor="gray", hatch="//", label="native (hatched)")]
    handles += [Line2D([0], [0], color="black", linewidth=2, label="copy floor")]
    ax.legend(handles=handles, fontsize=7, loc="lower right")
