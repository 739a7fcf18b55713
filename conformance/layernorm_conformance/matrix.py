"""The conformance matrix: run the suite for every installed backend and print backend x device x dtype.

``python -m layernorm check`` calls `main`. Each backend runs in its own pytest subprocess (one framework per
process, as in the nox sessions), writing ``<out>/<backend>.json``; the records are then merged into the table.
``--merge FILE...`` skips running and merges existing JSON files (the nox ``matrix`` session), and
``--markdown PATH`` writes the table into PATH between the matrix markers (docs/conformance.md).

The exit status is one of `EXIT_CODES`; where several apply, the first in `SEVERITY` wins. A run that crashed or
ran no check never reads as a pass.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from layernorm.cli import positive_int
from layernorm_conformance import results
from layernorm_conformance.targets import available_backends
from layernorm_core.dtypes import FLOAT_DTYPES
from layernorm_core.errors import BackendError
from layernorm_core.registry import registry

DEFAULT_OUT = "conformance-results"

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CRASHED, EXIT_EMPTY = 0, 1, 2, 3, 5
EXIT_CODES = {
    EXIT_OK: "every check passed or was skipped",
    EXIT_FAILED: "a check failed",
    EXIT_USAGE: "usage error: a bad option, an unknown backend, none installed, an --out or --markdown that cannot be "
    "written, a backend or --merge file given twice, a --merge file missing or unreadable",
    EXIT_CRASHED: "a backend's run crashed (pytest interrupted, say by an error while collecting): results incomplete",
    EXIT_EMPTY: "a backend checked nothing: its run held no check (nothing matched -k, --dtype or --device), every "
    "one was skipped (its framework missing, a --device or --dtype it does not run here), or its merged file holds "
    "no record",
}
SEVERITY = (EXIT_CRASHED, EXIT_USAGE, EXIT_FAILED, EXIT_EMPTY, EXIT_OK)
"""The exit codes, most serious first."""

FROM_PYTEST: dict[int, int] = {
    pytest.ExitCode.OK: EXIT_OK,
    pytest.ExitCode.TESTS_FAILED: EXIT_FAILED,
    pytest.ExitCode.USAGE_ERROR: EXIT_USAGE,
    pytest.ExitCode.NO_TESTS_COLLECTED: EXIT_EMPTY,
}
"""A backend run's pytest exit code -> its status here; any other (interrupted, internal error) is EXIT_CRASHED."""


class UsageError(Exception):
    """The command cannot run as asked (exit 2); the message says why."""


@dataclass(frozen=True)
class Run:
    """One backend's run of the suite (or one ``--merge`` file): where its records are and how it ended."""

    backend: str
    path: Path
    status: int
    """Its exit code, as if it had been the only run (`FROM_PYTEST`; EXIT_CRASHED if it wrote no records)."""
    output: str = ""
    """How its pytest process ended: the exit code and the end of its output."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line of `main`."""
    parser = argparse.ArgumentParser(
        prog="python -m layernorm check",
        description="Run the layernorm conformance suite for every installed backend and print the matrix.",
        epilog="exit status:\n" + "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--backend", action="append", help="backend to check (repeatable); default: all installed")
    parser.add_argument("--device", action="append", help="device to check (repeatable); default: all reported")
    parser.add_argument(
        "--dtype", action="append", choices=FLOAT_DTYPES, help="dtype to check (repeatable); default: all declared"
    )
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"folder for the JSON records (default {DEFAULT_OUT})")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="merge these JSON files instead of running")
    parser.add_argument("--markdown", metavar="PATH", help="also write the table into this Markdown file")
    parser.add_argument("-k", dest="keyword", help="only checks matching this pytest -k expression")
    parser.add_argument("--examples", type=positive_int, help="hypothesis examples per random check")
    parser.add_argument("-v", "--verbose", action="store_true", help="show pytest's output")
    return parser.parse_args(argv)


def run_backend(backend: str, args: argparse.Namespace) -> Run:
    """Run the suite for one backend in a subprocess; return where its records are and how it ended."""
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
    status = FROM_PYTEST.get(completed.returncode, EXIT_CRASHED) if out.exists() else EXIT_CRASHED
    ending = f"pytest exit {completed.returncode}" + ("" if out.exists() else ", no results written")
    tail = "" if args.verbose else (completed.stdout + completed.stderr)[-3000:].strip()
    return Run(backend, out, status, f"{ending}; its output ends:\n{tail}" if tail else ending)


def main(argv: Sequence[str] | None = None) -> int:
    """Run (or merge) the suite's results and print the matrix; return the exit status (`EXIT_CODES`)."""
    args = parse_args(argv)
    try:
        _check_paths(args)
        if args.merge:
            runs = _merged(args.merge)
        else:
            names = _backends(args)
            _make_out(args.out)
            runs = [run_backend(name, args) for name in names]
        records, versions = _load(runs)
    except (UsageError, BackendError) as exc:
        print(f"python -m layernorm check: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    cells = results.matrix(records)
    print(results.format_table(cells))
    if args.markdown:
        results.update_markdown(args.markdown, results.format_markdown(cells, versions))
        print(f"\nwrote the matrix into {args.markdown}")
    failed = results.failures(records)
    for record in failed:
        print(f"FAILED {record['id']}: {record['message']}")
    return _status([_emptied(run, records) for run in runs], failed=bool(failed))


def _check_paths(args: argparse.Namespace) -> None:
    """UsageError, before anything runs, for an ``--out`` or a ``--markdown`` that cannot be written."""
    try:
        if not args.merge:
            _check_out(args.out)
        if args.markdown:
            _check_markdown(Path(args.markdown))
    except OSError as exc:  # pathlib's exists() and is_dir() raise for a name too long, say
        raise UsageError(f"a path cannot be used: {exc}") from exc


def _check_out(given: str) -> None:
    """UsageError unless ``--out`` is a folder, or none yet under folders."""
    out = Path(given)
    if out.exists():
        if not out.is_dir():
            raise UsageError(f"--out {given} is a file, not a folder")
    else:
        existing = next(folder for folder in out.absolute().parents if folder.exists())
        if not existing.is_dir():
            raise UsageError(f"--out {given}: {existing} is a file, not a folder")


def _check_markdown(markdown: Path) -> None:
    """UsageError unless ``--markdown`` is a writable UTF-8 text file, or none yet, in an existing folder.

    A matrix start marker in it needs an end marker after it (`results.matrix_span`).
    """
    if markdown.is_dir() or not markdown.parent.is_dir():
        raise UsageError(f"--markdown {markdown}: a file in an existing folder, please")
    try:
        if markdown.is_symlink() or markdown.exists():  # a dangling link too: its target cannot be read
            results.matrix_span(markdown.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--markdown {markdown} cannot be read as UTF-8 text: {exc}") from exc
    except ValueError as exc:
        raise UsageError(f"--markdown {markdown}: {exc}") from exc
    if not os.access(markdown if markdown.exists() else markdown.parent, os.W_OK):
        raise UsageError(f"--markdown {markdown} cannot be written")


def _make_out(out: str) -> None:
    """Make the ``--out`` folder, once the other usage checks passed; UsageError where it cannot be made or written.

    Its parents may exist and still take no folder (a name too long, a read-only or virtual file system): the
    backends' runs would otherwise fail to write their results after running every check, a crash (exit 3).
    """
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out} cannot be made: {exc}") from exc
    if not os.access(out, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out} cannot be written")


def _backends(args: argparse.Namespace) -> list[str]:
    names: list[str] = args.backend or available_backends()
    if not names:
        raise UsageError("no backend is installed")
    for name in names:
        registry.declaration(name)  # an unknown name raises its BackendError now, before any run
        if names.count(name) > 1:  # its runs would write one file, and count its checks twice
            raise UsageError(f"--backend {name} is given more than once")
        if (Path(args.out) / f"{name}.json").is_dir():
            raise UsageError(f"--out {args.out}: {name}.json there is a folder, where its results go")
    return names


def _merged(paths: Sequence[str]) -> list[Run]:
    """The ``--merge`` files as runs; how their runs ended is not recorded, so only their records tell."""
    missing = [path for path in paths if not _is_file(path)]
    if missing:
        raise UsageError(f"no such results file: {', '.join(missing)}")
    resolved = [Path(path).resolve() for path in paths]
    again = [path for path, real in zip(paths, resolved, strict=True) if resolved.count(real) > 1]
    if again:  # its checks would count twice
        raise UsageError(f"a results file is given more than once: {', '.join(again)}")
    return [Run(Path(path).stem, Path(path), EXIT_OK) for path in paths]


def _is_file(path: str) -> bool:
    """Whether ``path`` is a file; False for one the system refuses to look up (a name too long)."""
    try:
        return Path(path).is_file()
    except OSError:  # pathlib's is_file() raises for ENAMETOOLONG
        return False


RUN_KEY = "_run"
"""The key `_load` adds to each record: the path of the run's file, so that each run's records can be told."""


def _load(runs: Sequence[Run]) -> tuple[list[results.Record], dict[str, Any]]:
    """The records and backend versions of every run that wrote its file; UsageError for a file that is not one."""
    records: list[results.Record] = []
    versions: dict[str, Any] = {}
    for run in runs:
        if not run.path.exists():
            continue
        try:
            more, their_versions = results.load([run.path])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"{run.path} is not a results file of --conformance-json: {exc!r}") from exc
        records += [{**record, RUN_KEY: run.path} for record in more]
        versions.update(their_versions)
    return records, versions


def _emptied(run: Run, records: Sequence[results.Record]) -> Run:
    """``run``, or, where none of its backends' checks ran (all skipped, or none at all), ``run`` as EXIT_EMPTY.

    The reference's own checks count only where they are all that was asked for (-k reference). A run that
    crashed or was refused keeps its status.
    """
    if run.status not in (EXIT_OK, EXIT_FAILED):
        return run
    own = [record for record in records if record[RUN_KEY] == run.path]
    checked = [record for record in own if record["backend"] != results.REFERENCE] or own
    if any(record["outcome"] != "skipped" for record in checked):
        return run
    reasons = sorted({record["message"] for record in checked})[:3]
    return replace(run, status=EXIT_EMPTY, output="; ".join(reasons) or "it holds no record")


def _status(runs: Sequence[Run], *, failed: bool) -> int:
    """The command's exit status; explains, on stderr, each run that crashed, was refused or ran nothing."""
    unusual = [run for run in runs if run.status not in (EXIT_OK, EXIT_FAILED)]
    for run in unusual:
        print(f"\n{run.backend}: {EXIT_CODES[run.status]}; {run.output}", file=sys.stderr)
    statuses = {run.status for run in unusual} | {EXIT_FAILED if failed else EXIT_OK}
    return next(code for code in SEVERITY if code in statuses)


if __name__ == "__main__":
    raise SystemExit(main())
