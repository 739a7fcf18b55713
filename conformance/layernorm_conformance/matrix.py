"""The conformance matrix: run the suite for every installed backend and print backend x device x dtype.

``python -m layernorm check`` calls `main`. Each backend runs in its own pytest subprocess (one framework per
process, as in the nox sessions), writing ``<out>/<backend>.json``; the records are then merged into the table.
``--merge FILE...`` skips running and merges existing JSON files (the nox ``matrix`` session), and
``--markdown PATH`` writes the table into PATH between the matrix markers (docs/conformance.md).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from layernorm_conformance import results
from layernorm_conformance.targets import available_backends

DEFAULT_OUT = "conformance-results"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line of `main`."""
    parser = argparse.ArgumentParser(
        prog="python -m layernorm check",
        description="Run the layernorm conformance suite for every installed backend and print the matrix.",
    )
    parser.add_argument("--backend", action="append", help="backend to check (repeatable); default: all installed")
    parser.add_argument("--device", action="append", help="device to check (repeatable); default: all reported")
    parser.add_argument("--dtype", action="append", help="dtype to check (repeatable); default: all declared")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"folder for the JSON records (default {DEFAULT_OUT})")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="merge these JSON files instead of running")
    parser.add_argument("--markdown", metavar="PATH", help="also write the table into this Markdown file")
    parser.add_argument("-k", dest="keyword", help="only checks matching this pytest -k expression")
    parser.add_argument("--examples", type=int, help="hypothesis examples per random check")
    parser.add_argument("-v", "--verbose", action="store_true", help="show pytest's output")
    return parser.parse_args(argv)


def run_backend(backend: str, args: argparse.Namespace) -> Path:
    """Run the suite for one backend in a subprocess; return its JSON path."""
    out = Path(args.out) / f"{backend}.json"
    command = [sys.executable, "-m", "layernorm_conformance"]
    command += ["--backend", backend, "--conformance-json", str(out), "-q" if args.verbose else "-qq"]
    for option, values in (("--device", args.device), ("--dtype", args.dtype)):
        command += [f"{option}={v}" for v in values or ()]
    if args.keyword:
        command += ["-k", args.keyword]
    if args.examples is not None:
        command += ["--conformance-examples", str(args.examples)]
    out.unlink(missing_ok=True)
    print(f"checking {backend} ...", flush=True)
    completed = subprocess.run(command, capture_output=not args.verbose, text=True, check=False)
    if not out.exists():
        tail = "" if args.verbose else (completed.stdout + completed.stderr)[-2000:]
        raise RuntimeError(f"the suite for {backend!r} wrote no results (exit {completed.returncode})\n{tail}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run (or merge) the suite's results and print the matrix; 0 when no check failed, 1 otherwise."""
    args = parse_args(argv)
    try:
        paths = [Path(p) for p in args.merge] if args.merge else [run_backend(b, args) for b in _backends(args)]
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 2
    records, versions = results.load(paths)
    cells = results.matrix(records)
    print(results.format_table(cells))
    if args.markdown:
        results.update_markdown(args.markdown, results.format_markdown(cells, versions))
        print(f"\nwrote the matrix into {args.markdown}")
    failed = results.failures(records)
    for record in failed:
        print(f"FAILED {record['id']}: {record['message']}")
    return 1 if failed else 0


def _backends(args: argparse.Namespace) -> list[str]:
    names: list[str] = args.backend or available_backends()
    if not names:
        raise RuntimeError("no backend is installed")
    return names


if __name__ == "__main__":
    raise SystemExit(main())
