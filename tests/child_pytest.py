"""Run a test module's other tests in a child pytest process, for set-ups a framework fixes when it starts."""

from __future__ import annotations

import os
import subprocess
import sys


def assert_child_passes(test_file: str, env: dict[str, str], deselect: str, tests: int) -> None:
    """Run ``test_file`` but the tests matching ``deselect`` under os.environ plus ``env``; fail unless exactly
    ``tests`` passed there and none failed or skipped."""
    child = subprocess.run(
        [sys.executable, "-m", "pytest", test_file, "-q", "-p", "no:cacheprovider", "-k", f"not {deselect}"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert child.returncode == 0, child.stdout[-5000:] + child.stderr[-3000:]
    assert f"{tests} passed" in child.stdout and "skipped" not in child.stdout, child.stdout[-3000:]
