"""``python -m layernorm_conformance [pytest options]``: run the suite with its plugin loaded.

Equivalent to ``pytest -p layernorm_conformance --pyargs layernorm_conformance.checks -p no:cacheprovider
[options]``; e.g. ``python -m layernorm_conformance --backend mybackend --device cuda``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import pytest

from layernorm_conformance import CHECKS_PACKAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Run the conformance checks with ``argv`` as extra pytest options; return pytest's exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    # ``python -m`` imported this package before pytest could set up assertion rewriting for it; the checks
    # themselves (collected modules) are still rewritten.
    quiet = ["-W", "ignore::pytest.PytestAssertRewriteWarning"]
    plugin = ["-p", "layernorm_conformance", "-p", "no:cacheprovider"]
    return int(pytest.main([*plugin, *quiet, "--pyargs", CHECKS_PACKAGE, *args]))


if __name__ == "__main__":
    raise SystemExit(main())
