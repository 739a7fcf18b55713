"""Loading and using the TensorFlow backend prints no more start-up log lines than ``import tensorflow`` does, and
leaves a user's own TF_CPP_MIN_LOG_LEVEL alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

tf = pytest.importorskip("tensorflow")

USE_BACKEND = """
import os
import numpy as np
import layernorm
layernorm.layer_norm(np.ones((2, 3), np.float32), backend="tensorflow")  # loads the backend, which imports tensorflow
import tensorflow as tf
x = tf.ones((4, 8))
tf.function(lambda t: layernorm.layer_norm(t), jit_compile=True)(x)
with tf.GradientTape() as tape:
    tape.watch(x)
    y = layernorm.rms_norm(x)
tape.gradient(y, x)
print(os.environ.get("TF_CPP_MIN_LOG_LEVEL"))
"""


FIRST_USE_IN_TF_FUNCTION = """
import layernorm
import tensorflow as tf
@tf.function
def f(x):
    return layernorm.layer_norm(x) + layernorm.rms_norm(x)
f(tf.ones((2, 3)))
"""


def _run(code: str, script: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (from ``script`` when given, else with -c) in a fresh interpreter without TF_CPP_MIN_LOG_LEVEL."""
    clean = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    command = [sys.executable, str(script)] if script is not None else [sys.executable, "-c", code]
    return subprocess.run(command, env={**clean, **env}, capture_output=True, text=True, timeout=300, check=True)


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.skipif(
    tuple(int(part) for part in tf.__version__.split(".")[:2]) < (2, 21),
    reason="checked from TensorFlow 2.21: 2.16 and 2.18 print XLA's start-up INFO lines at any TF_CPP_MIN_LOG_LEVEL",
)
def test_using_the_backend_logs_no_more_than_importing_tensorflow() -> None:
    plain = _lines(_run("import tensorflow").stderr)
    used = _run(USE_BACKEND)
    assert used.stdout.strip() == "1"
    assert len(_lines(used.stderr)) <= len(plain), used.stderr
    assert "Compiled cluster using XLA" not in used.stderr


def test_first_use_inside_tf_function_logs_no_autograph_warnings(tmp_path: Path) -> None:
    script = tmp_path / "first_use.py"  # a file, not -c: AutoGraph leaves code without a source file unconverted
    script.write_text(FIRST_USE_IN_TF_FUNCTION)
    plain = _lines(_run("import tensorflow").stderr)
    used = _run(FIRST_USE_IN_TF_FUNCTION, script=script).stderr
    assert "AutoGraph" not in used
    assert len(_lines(used)) <= len(plain), used


def test_a_users_log_level_is_kept() -> None:
    assert _run(USE_BACKEND, TF_CPP_MIN_LOG_LEVEL="0").stdout.strip() == "0"


@pytest.mark.parametrize(
    ("imported", "user", "expected"),
    [
        pytest.param(False, None, "1", id="first-import-quiet"),
        pytest.param(False, "0", "0", id="user-level-kept"),
        pytest.param(True, None, None, id="tensorflow-already-imported"),
    ],
)
def test_quiet_sets_the_level_only_before_tensorflow_and_without_a_users_choice(
    monkeypatch: pytest.MonkeyPatch, imported: bool, user: str | None, expected: str | None
) -> None:
    from layernorm_tensorflow._quiet import quiet_tensorflow_logs

    modules = {k: v for k, v in sys.modules.items() if k != "tensorflow"}
    if imported:
        modules["tensorflow"] = sys.modules["tensorflow"]
    monkeypatch.setattr(sys, "modules", modules)
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    if user is not None:
        monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", user)
    quiet_tensorflow_logs()
    assert os.environ.get("TF_CPP_MIN_LOG_LEVEL") == expected
