"""README.md against what it quotes: the CPU report's headline, and the date of the run it comes from."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
REPORT = (ROOT / "docs" / "benchmarks" / "cpu" / "report.md").read_text()
HEADLINE_COLUMNS = (  # README's columns: (shape in the report, the report's column of its ratio)
    ("4096x768", "forward"),
    ("4096x768", "fwd+bwd"),
    ("8192x4096", "forward"),
    ("8192x4096", "fwd+bwd"),
    ("8x64x56x56 (axis=1)", "forward"),
)


def _table_rows(text: str, header_start: str) -> list[list[str]]:
    """The cells of the Markdown table whose header line starts with ``header_start``: the header, then each row."""
    lines = text[text.index(header_start) :].splitlines()
    end = next((i for i, line in enumerate(lines) if not line.startswith("|")), len(lines))
    table = lines[:1] + lines[2:end]  # without the |---| line
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in table]


def _report_ratios() -> dict[tuple[str, str, str], float]:
    """(backend, shape, "forward" or "fwd+bwd") -> the report headline's "ours / native"."""
    header, *rows = _table_rows(REPORT, "| backend | shape | forward: ours")
    forward, backward = (i for i, name in enumerate(header) if name == "ours / native")
    return {
        (row[0], row[1], column): float(row[index].rstrip("x"))
        for row in rows
        for column, index in (("forward", forward), ("fwd+bwd", backward))
    }


def test_readme_headline_is_the_reports() -> None:
    report = _report_ratios()
    _, *rows = _table_rows(README, "| backend | 4096x768 forward")
    assert {row[0] for row in rows} == {"numpy", "torch", "jax", "tensorflow"}
    for backend, *cells in rows:
        for (shape, column), cell in zip(HEADLINE_COLUMNS, cells, strict=True):
            quoted, measured = float(cell), report[(backend, shape, column)]
            assert abs(quoted - measured) <= 0.006, f"{backend} {shape} {column}: README {quoted}, report {measured}"


def test_readme_dates_the_report_it_quotes() -> None:
    """A README that quotes the report says when it was run (code changed after it: the reader must know)."""
    measured = re.search(r"Measured (\d{4}-\d\d-\d\d)", REPORT)
    assert measured is not None
    quoted = README[README.index("The latest CPU report") : README.index("In every round each function")]
    assert measured.group(1) in quoted, f"README's headline does not say the report was run on {measured.group(1)}"
