"""Plugins: entry points declare the built-ins; run-time registration works; a broken plugin only warns."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from registered_plugin import registered

import layernorm
from layernorm import PluginWarning
from layernorm_core import BackendDeclaration, hookimpl
from layernorm_core.registry import Registry, registry


def test_builtin_backends_come_from_entry_points() -> None:
    assert {"numpy", "torch", "jax", "tensorflow"} <= set(registry.names())
    assert registry.declaration("torch").array_modules == ("torch",)


def test_runtime_plugin_is_used(recording: list[str]) -> None:
    y = layernorm.layer_norm(np.ones((2, 3), np.float32), backend="recording")
    assert recording == ["layer_norm"] and y.shape == (2, 3)
    assert "recording" in [s.name for s in layernorm.backends()]


def test_plugin_raising_in_its_hook_warns_and_the_rest_work() -> None:
    class Broken:
        @hookimpl
        def layernorm_backends(self) -> list[BackendDeclaration]:
            raise RuntimeError("boom")

    with (
        pytest.warns(PluginWarning, match="plugin 'broken' failed to declare its backends: RuntimeError"),
        registered(Broken(), "broken"),
    ):
        assert "broken" not in registry.names()
        assert layernorm.layer_norm(np.ones((2, 3))).shape == (2, 3)


def test_duplicate_backend_name_warns_and_keeps_the_first() -> None:
    class Impostor:
        @hookimpl
        def layernorm_backends(self) -> list[BackendDeclaration]:
            return [BackendDeclaration(name="numpy", implementation="nowhere")]

    with (
        pytest.warns(PluginWarning, match="declares backend 'numpy', already declared by plugin 'numpy'"),
        registered(Impostor(), "impostor"),
    ):
        assert registry.declaration("numpy").implementation == "layernorm_numpy.backend"


def test_backend_missing_functions_is_a_backend_error() -> None:
    class Hollow:
        @hookimpl
        def layernorm_backends(self) -> list[BackendDeclaration]:
            return [BackendDeclaration(name="hollow", implementation="json")]

    with registered(Hollow(), "hollow-plugin"):
        with pytest.raises(layernorm.BackendError, match=r"backend 'hollow' \(json\) lacks info, device_of"):
            layernorm.layer_norm(np.ones(3), backend="hollow")
        status = {s.name: s for s in layernorm.backends()}["hollow"]
        assert not status.available and "lacks" in (status.reason or "")


def test_entry_point_that_fails_to_import_warns(tmp_path: Path) -> None:
    """A broken installed plugin (an entry point whose module raises on import) leaves the others working."""
    dist = tmp_path / "broken_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[layernorm.backends]\nbroken = broken_layernorm_plugin\n")
    (tmp_path / "broken_layernorm_plugin.py").write_text("raise ImportError('this plugin is broken')\n")
    code = textwrap.dedent(
        """
        import warnings, numpy as np, layernorm
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            y = layernorm.layer_norm(np.ones((2, 3)))
        print([str(w.message) for w in caught])
        print(y.shape)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])), "PATH": ""},
    )
    assert (
        "plugin 'broken' (broken_layernorm_plugin) failed to load: ImportError('this plugin is broken')" in out.stdout
    )
    assert out.stdout.strip().endswith("(2, 3)")


def test_registry_status_reports_unavailable_backends() -> None:
    class NotHere:
        @hookimpl
        def layernorm_backends(self) -> list[BackendDeclaration]:
            return [BackendDeclaration(name="nothere", implementation="x", requires=("zz_not_here",), extra="zz")]

    fresh = Registry(entry_point_group="layernorm.no-such-group")
    fresh.register_plugin(NotHere(), name="nothere")
    (row,) = fresh.status()
    assert (row.name, row.available, row.reason) == (
        "nothere",
        False,
        "zz_not_here is not installed: pip install 'layernorm[zz]'",
    )


def test_cli_backends_table() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "layernorm", "backends"], capture_output=True, text=True, check=True
    ).stdout
    header, _, *rows = out.splitlines()
    assert header.split()[:5] == ["backend", "available", "version", "devices", "dtypes"]
    numpy_row = next(r for r in rows if r.startswith("numpy "))
    assert numpy_row.split()[1:3] == ["yes", np.__version__]
    assert numpy_row.endswith(registry.declaration("numpy").description) and header.split()[-1] == "description"
