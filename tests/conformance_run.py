"""Run the conformance suite in this process, as `python -m layernorm_conformance` would in its own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


def run_suite(out: Path, *options: str) -> tuple[int, list[dict[str, Any]]]:
    """Run the checks with the pytest ``options``, writing records to ``out``; return pytest's exit code and them."""
    args = ["--pyargs", "layernorm_conformance.checks", "-p", "layernorm_conformance", "-p", "no:cacheprovider"]
    code = pytest.main([*args, "-q", "--conformance-json", str(out), *options])
    records = json.loads(out.read_text())["records"] if out.exists() else []
    return int(code), records
