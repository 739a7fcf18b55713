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
            figure.suptitle(f"layernorm throughput, {dtype} on {device}")
            figure.legend(
                handles=_legend(list(dict.fromkeys(r["backend"] for r in subset))),
                loc="lower center",
                ncol=8,
                fontsize=8,
            )
            figure.tight_layout(rect=(0, 0.05, 1, 1))
            name = f"throughput_{device}_{dtype}.png"
            figure.savefig(out / name, dpi=90)
            plt.close(figure)
            names.append(name)
    return names


def _panel(ax: Any, records: list[dict[str, Any]], op: str, pass_: str) -> None:
    """Grouped bars over shapes: per backend ours and native GB/s; a black line at each backend's copy GB/s."""
    shapes = list(dict.fromkeys(r["shape"] for r in records))
    labels = {r["shape"]: r["shape"] if r["axis"] == -1 else f"{r['shape']}\n(axis={r['axis']})" for r in records}
    backends = list(dict.fromkeys(r["backend"] for r in records))
    ax.set_title(f"{op}, {pass_}")
    if not shapes:
        ax.text(0.5, 0.5, "no results", ha="center", transform=ax.transAxes)
        return
    width = 0.8 / (2 * len(backends))
    colors = _colors(backends)
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
    ax.set_xticklabels([labels[shape] for shape in shapes], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("GB/s (higher is better)")
    ax.grid(axis="y", which="both", alpha=0.3)


def _colors(backends: list[str]) -> list[str]:
    """A fixed colour per known backend, so every plot and report colours a backend alike."""
    known = {"numpy": "C1", "torch": "C3", "jax": "C0", "tensorflow": "C2"}
    return [known.get(backend, f"C{4 + i}") for i, backend in enumerate(backends)]


def _legend(backends: list[str]) -> list[Any]:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    pairs = zip(backends, _colors(backends), strict=True)
    handles: list[Any] = [Patch(color=color, label=f"{backend}: ours") for backend, color in pairs]
    handles += [Patch(facecolor="white", edgecolor="gray", hatch="//", label="native (hatched, lighter)")]
    handles += [Line2D([0], [0], color="black", linewidth=2, label="copy floor of that backend")]
    return handles
