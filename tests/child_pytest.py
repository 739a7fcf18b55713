"""Run a test module's other tests in a child pytest process, for set-ups a framework fixes when it starts."""

from __future__ import annotations

import os
import subprocess
import sys


def assert_child_passes(test_file: str, env: dict[str, str], deselect: str, tests: int, skipped: int = 0) -> None:
    """Run ``test_file`` but the tests matching ``deselect`` under os.environ plus ``env``; fail unless exactly
    ``tests`` passed there, none failed, and ``skipped`` were skipped (each with the reason its mark gives)."""
    child = subprocess.run(
        [sys.executable, "-m", "pytest", test_file, "-q", "-p", "no:cacheprovider", "-k", f"not {deselect}"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert child.returncode == 0, child.stdout[-5000:] + child.stderr[-3000:]
    skips_as_expected = f"{skipped} skipped" in child.stdout if skipped else "skipped" not in child.stdout
    assert f"{tests} passed" in child.stdout and skips_as_expected, child.stdout[-3000:]
