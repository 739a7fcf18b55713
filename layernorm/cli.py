"""``python -m layernorm``: ``backends`` prints the registered backends, ``check`` runs the conformance matrix."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence

from layernorm_core.registry import BackendStatus, registry

CHECK_REQUIRES = ("pytest", "hypothesis", "ml_dtypes")
"""What the conformance suite imports beyond layernorm's own dependencies: the ``test`` extra brings them."""
CHECK_REQUIRES_INSTALL = "pip install 'layernorm[test]'"
"""How to install `CHECK_REQUIRES`, as the suite's errors for a missing one say it."""
EXIT_USAGE = 2
"""``check``'s exit status for a usage error (as `layernorm_conformance.matrix` gives it), here a missing package."""
DESCRIPTION = "The layernorm command line: list the registered backends, or check them against the conformance suite."


def positive_int(text: str) -> int:
    """An argparse type: an int of at least 1 (a count of rounds, examples, threads)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1; got {value}")
    return value


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table with columns padded to their widest cell."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = [header, ["-" * w for w in widths], *rows]
    return "\n".join(
        "  ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def backends_table(statuses: Sequence[BackendStatus]) -> str:
    """The table `python -m layernorm backends` prints: one row per registered backend."""
    rows = [
        [
            s.name,
            "yes" if s.available else "no",
            s.version or "-",
            ",".join(s.devices) or "-",
            ",".join(s.dtypes) or "-",
            s.plugin,
            s.reason or "",
            s.description,
        ]
        for s in statuses
    ]
    header = ["backend", "available", "version", "devices", "dtypes", "plugin", "reason", "description"]
    return format_table(header, rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m layernorm", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("backends", help="list every registered backend, available or not")
    commands.add_parser(
        "check",
        help="run the conformance suite on every installed backend and print the matrix "
        "(further options go to the runner: python -m layernorm check --help)",
        add_help=False,
    )
    options, rest = parser.parse_known_args(argv)
    if options.command == "check":
        missing = [name for name in CHECK_REQUIRES if importlib.util.find_spec(name) is None]
        if missing:
            print(
                f"python -m layernorm check: error: the conformance suite needs {', '.join(missing)}, "
                f"not installed: {CHECK_REQUIRES_INSTALL}",
                file=sys.stderr,
            )
            return EXIT_USAGE
        from layernorm_conformance.matrix import main as check_main

        return check_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    print(backends_table(registry.status()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
