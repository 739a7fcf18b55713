"""Result records of a conformance run: collected per test, written as JSON, merged into the matrix table.

A record is a dict: ``check`` (the test function), ``id`` (its pytest id), ``backend``, ``device``, ``dtype``
("-" for dtype-free checks), ``outcome`` ("passed", "failed" or "skipped"), ``max_ratio`` (worst error / allowed
error over the check's comparisons, None when it compares no numbers), ``ratios`` (per result name), ``message``
(skip reason or the first line of the failure) and ``duration`` in seconds.
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layernorm.cli import format_table as padded_table

Record = dict[str, Any]
REFERENCE = "reference"
"""The backend of the records of checks that run no backend (the float64 reference's own accuracy)."""
OUTCOMES = ("passed", "failed", "skipped")
MATRIX_START = "<!-- conformance-matrix:start -->"
MATRIX_END = "<!-- conformance-matrix:end -->"


@dataclass
class Cell:
    """One row of the matrix: a backend, device and dtype, with its outcome counts and worst error ratio."""

    backend: str
    device: str
    dtype: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    worst: float | None = None
    worst_id: str = ""

    def add(self, record: Record) -> None:
        """Count one record and keep the worst ratio."""
        self.counts[record["outcome"]] = self.counts.get(record["outcome"], 0) + 1
        ratio = record.get("max_ratio")
        if ratio is not None and (self.worst is None or not ratio <= self.worst):
            self.worst, self.worst_id = ratio, record["id"]


def write(path: str | Path, records: Sequence[Record], backends: dict[str, Any]) -> None:
    """Write a run's records and the versions of the backends it covered to ``path`` (JSON)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "backends": backends,
        "records": [_jsonable(r) for r in records],
    }
    target.write_text(json.dumps(document, indent=1, allow_nan=False) + "\n")


def _jsonable(record: Record) -> Record:
    ratio = record.get("max_ratio")
    if isinstance(ratio, float) and not math.isfinite(ratio):
        record = {**record, "max_ratio": 1e308 if ratio > 0 else None}
    ratios = {k: (v if math.isfinite(v) else 1e308) for k, v in record.get("ratios", {}).items()}
    return {**record, "ratios": ratios}


RECORD_KEYS = frozenset({"id", "backend", "device", "dtype", "outcome", "message"})
"""The keys every record has, whatever else it holds, each a string: the matrix and the failure list read them."""


def _is_record(record: Any) -> bool:
    """Whether ``record`` holds what the matrix and the failure list read: `RECORD_KEYS`, and a ratio or none."""
    if not (isinstance(record, dict) and all(isinstance(record.get(key), str) for key in RECORD_KEYS)):
        return False
    ratio = record.get("max_ratio")
    return record["outcome"] in OUTCOMES and (ratio is None or type(ratio) in (int, float))


def load(paths: Iterable[str | Path]) -> tuple[list[Record], dict[str, Any]]:
    """Read several JSON files: all their records, and the backends' versions merged.

    ValueError for a file whose records lack a string under one of `RECORD_KEYS`, hold an outcome not in
    `OUTCOMES`, or a ``max_ratio`` that is no number.
    """
    records: list[Record] = []
    backends: dict[str, Any] = {}
    for path in paths:
        document = json.loads(Path(path).read_text())
        for record in document["records"]:
            if not _is_record(record):
                raise ValueError(f"a record is not one of a conformance run: {str(record)[:200]}")
        records += document["records"]
        backends.update(document.get("backends", {}))
    return records, backends


def matrix(records: Iterable[Record]) -> list[Cell]:
    """The matrix rows, one per (backend, device, dtype), sorted."""
    cells: dict[tuple[str, str, str], Cell] = {}
    for record in records:
        key = (record["backend"], record["device"], record["dtype"])
        cells.setdefault(key, Cell(*key)).add(record)
    return [cells[k] for k in sorted(cells)]


def _worst(cell: Cell) -> str:
    return "-" if cell.worst is None else f"{cell.worst:.3g}"


def format_table(cells: Sequence[Cell]) -> str:
    """The matrix as aligned text: backend, device, dtype, passed/failed/skipped, worst ratio and its test."""
    header = ("backend", "device", "dtype", "passed", "failed", "skipped", "worst ratio", "worst check")
    rows = [(c.backend, c.device, c.dtype, *(str(c.counts[o]) for o in OUTCOMES), _worst(c), c.worst_id) for c in cells]
    return padded_table(header, rows)


def format_markdown(cells: Sequence[Cell], backends: dict[str, Any]) -> str:
    """The matrix as a Markdown table, with the backend versions it was measured with."""
    lines = [
        "| backend | version | device | dtype | passed | failed | skipped | worst error ratio |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for c in cells:
        version = backends.get(c.backend, {}).get("version") or "-"
        counts = " | ".join(str(c.counts[o]) for o in OUTCOMES)
        lines.append(f"| {c.backend} | {version} | {c.device} | {c.dtype} | {counts} | {_worst(c)} |")
    return "\n".join(lines)


def failures(records: Iterable[Record]) -> list[Record]:
    """The failed records."""
    return [r for r in records if r["outcome"] == "failed"]


def update_markdown(path: str | Path, table: str) -> None:
    """Replace the text between the matrix markers of ``path`` with ``table`` (append the markers if absent).

    Raises:
        ValueError: the file's start marker has no end marker after it (`matrix_span`).

    """
    target = Path(path)
    text = target.read_text(encoding="utf-8") if target.exists() else ""
    block = f"{MATRIX_START}\n{table}\n{MATRIX_END}"
    span = matrix_span(text)
    if span is None:
        text = (text.rstrip() + "\n\n" if text else "") + block + "\n"
    else:
        text = text[: span[0]] + block + text[span[1] :]
    target.write_text(text, encoding="utf-8")


def matrix_span(text: str) -> tuple[int, int] | None:
    """Where the matrix lies in ``text``: from its start marker to past the end marker after it; None without one.

    Raises:
        ValueError: a start marker with no end marker after it, where a rewrite would drop the text after it.

    """
    start = text.find(MATRIX_START)
    if start < 0:
        return None
    end = text.find(MATRIX_END, start + len(MATRIX_START))
    if end < 0:
        raise ValueError(f"the matrix's start marker has no end marker after it: {MATRIX_START} ... {MATRIX_END}")
    return start, end + len(MATRIX_END)
