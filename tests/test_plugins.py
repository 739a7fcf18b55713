"""Plugins: entry points declare the built-ins; run-time registration works; a broken plugin only warns."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
import types
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conformance_run import run_suite
from fake_device_array import FakeCudaTensor
from plugin_broken import broken_info_backend, info_is_a_dict, info_raises, info_with_devices_in_one_string
from plugin_docs_example import PLUGINS_DOC, doc_block, write_example
from registered_plugin import registered

import layernorm
from layernorm import PluginWarning, cli
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


def test_second_owner_of_an_array_module_warns_and_the_first_keeps_it() -> None:
    class Grabber:
        @hookimpl
        def layernorm_backends(self) -> list[BackendDeclaration]:
            return [BackendDeclaration(name="grabber", implementation="nowhere", array_modules=("numpy",))]

    with (
        pytest.warns(PluginWarning, match="the owner of 'numpy' arrays, already owned by backend 'numpy'"),
        registered(Grabber(), "grabber"),
    ):
        assert registry.owner_of(np.ones(1)) == "numpy"


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


def _distribution(root: Path, name: str, entry_points: str, modules: dict[str, str]) -> Path:
    """Install distribution ``name`` 1.0 under ``root`` (a sys.path entry): its entry_points.txt and modules."""
    dist = root / f"{name.replace('-', '_')}-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(entry_points)
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    return root


def _python(code: str, path: Path) -> str:
    """Run ``code`` in a fresh interpreter with ``path`` first on sys.path; return its stdout."""
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(path), os.environ.get("PYTHONPATH")])), "PATH": ""}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout


WARNINGS_OF_DISCOVERY = textwrap.dedent(
    """
    import warnings, numpy as np, layernorm
    from layernorm_core.registry import registry
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = registry.names()
    print([str(w.message) for w in caught])
    """
)


def test_entry_point_that_fails_to_import_warns(tmp_path: Path) -> None:
    """A broken installed plugin (an entry point whose module raises on import) leaves the others working."""
    _distribution(
        tmp_path,
        "broken-plugin",
        "[layernorm.backends]\nbroken = broken_layernorm_plugin\n",
        {"broken_layernorm_plugin": "raise ImportError('this plugin is broken')\n"},
    )
    asked = textwrap.dedent(
        """
        for name in ("broken", "cupy"):  # a plugin may declare backends of other names than its own
            try:
                layernorm.use(name)
            except layernorm.BackendError as exc:
                print("asked:", exc)
        """
    )
    out = _python(WARNINGS_OF_DISCOVERY + asked + "print(layernorm.layer_norm(np.ones((2, 3))).shape)\n", tmp_path)
    failure = "plugin 'broken' (broken_layernorm_plugin) failed to load: ImportError('this plugin is broken')"
    assert failure in out
    for name in ("broken", "cupy"):  # not a bare "unknown backend"
        assert f"asked: unknown backend '{name}' ({failure}); registered backends: " in out
    assert out.strip().endswith("(2, 3)")


CLASHING_PLUGIN = """
    from layernorm_core import BackendDeclaration, hookimpl

    @hookimpl
    def layernorm_backends():
        return [BackendDeclaration(name="numpy", implementation="nowhere", array_modules=("numpy",))]
"""


def test_entry_point_named_like_a_builtin_is_not_loaded_and_warns(tmp_path: Path) -> None:
    """A third-party entry point named ``numpy``, first on sys.path, neither replaces nor silently loses."""
    _distribution(
        tmp_path, "numpy-clash", "[layernorm.backends]\nnumpy = clash_plugin\n", {"clash_plugin": CLASHING_PLUGIN}
    )
    out = _python(WARNINGS_OF_DISCOVERY + "print(registry.declaration('numpy').implementation)\n", tmp_path)
    assert (
        "plugin 'numpy' (clash_plugin, from numpy-clash 1.0) is not loaded: plugin 'numpy' "
        "(layernorm_numpy.plugin, from layernorm " in out
    ), out
    assert out.strip().endswith("layernorm_numpy.backend")


def test_entry_point_name_clash_keeps_the_first_distribution_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Which of two clashing third-party entry points loads depends on their distributions' names, not sys.path."""
    group = "layernorm.test-clash"
    for dist, backend in (("aa-plugin", "aa"), ("zz-plugin", "zz")):  # each goes first on sys.path: zz leads
        plugin = CLASHING_PLUGIN.replace('"numpy"', f'"{backend}"').replace('("numpy",)', "()")
        source = {f"{backend}_plugin": plugin}
        monkeypatch.syspath_prepend(
            str(_distribution(tmp_path / dist, dist, f"[{group}]\nsame = {backend}_plugin\n", source))
        )
    fresh = Registry(entry_point_group=group)
    with pytest.warns(PluginWarning) as caught:
        assert fresh.names() == ("aa",)
    (warning,) = caught
    assert (
        "plugin 'same' (zz_plugin, from zz-plugin 1.0) is not loaded: plugin 'same' (aa_plugin, from aa-plugin 1.0)"
        in str(warning.message)
    )


def test_a_plugin_warning_raised_as_an_error_leaves_the_later_plugins_registered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under ``-W error`` (pytest's ``filterwarnings = ["error"]``) the warning of a broken plugin was raised half-way
    through the discovery, which never ran again: every plugin after it was unknown for the rest of the process."""
    group = "layernorm.test-error"
    good = CLASHING_PLUGIN.replace('"numpy"', '"good"').replace('("numpy",)', "()")
    broken = _distribution(tmp_path, "aa-broken", f"[{group}]\nbroken = aa_broken_plugin\n", {"aa_broken_plugin": ""})
    monkeypatch.syspath_prepend(str(broken))  # declares no backend: a PluginWarning
    monkeypatch.syspath_prepend(
        str(_distribution(tmp_path / "bb", "bb-good", f"[{group}]\ngood = bb_good_plugin\n", {"bb_good_plugin": good}))
    )
    fresh = Registry(entry_point_group=group)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)
        with pytest.raises(PluginWarning, match="plugin 'broken' declares no backend"):
            fresh.names()
        assert fresh.names() == ("good",)


SLOW_PLUGIN = """
    import time

    from layernorm_core import BackendDeclaration, hookimpl

    time.sleep(0.5)  # a plugin whose import takes a while (a framework imported at the top)

    @hookimpl
    def layernorm_backends():
        return [BackendDeclaration(name="late", implementation="nowhere", array_modules=())]
"""


def test_lookups_wait_for_a_discovery_under_way_in_another_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread that asked for a backend while another thread was still loading the entry points was told the
    backend is unknown."""
    group = "layernorm.test-slow"
    monkeypatch.syspath_prepend(
        str(_distribution(tmp_path, "slow-plugin", f"[{group}]\nslow = slow_plugin\n", {"slow_plugin": SLOW_PLUGIN}))
    )
    fresh = Registry(entry_point_group=group)
    discovering = threading.Thread(target=fresh.names)
    discovering.start()
    while not fresh._discovered and discovering.is_alive():
        time.sleep(0.001)
    try:
        assert fresh.declaration("late").implementation == "nowhere"
        assert fresh.unavailable_reason("late") is None
    finally:
        discovering.join()


def test_registry_status_reports_unavailable_backends() -> None:
    """A plugin registered at run time belongs to no distribution: the reason names the module to install."""

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
        "zz_not_here is not installed: install zz_not_here",
    )


def test_unavailable_backend_names_the_extra_of_its_plugins_distribution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The extra is the plugin's distribution's (pip install 'zz-gpu-plugin[gpu]'), not layernorm's."""
    group = "layernorm.test-extra"
    plugin = CLASHING_PLUGIN.replace(
        'name="numpy", implementation="nowhere", array_modules=("numpy",)',
        ('name="zzgpu", implementation="nowhere", requires=("zz_not_here",), extra="gpu"'),
    )
    monkeypatch.syspath_prepend(
        str(_distribution(tmp_path, "zz-gpu-plugin", f"[{group}]\nzzgpu = zzgpu_plugin\n", {"zzgpu_plugin": plugin}))
    )
    fresh = Registry(entry_point_group=group)
    assert fresh.unavailable_reason("zzgpu") == "zz_not_here is not installed: pip install 'zz-gpu-plugin[gpu]'"
    assert registry.unavailable_reason("numpy") is None and registry._distribution_of["numpy"] == "layernorm"


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"array_modules": "zzarrays"}, "array_modules='zzarrays': it must be a tuple of module names"),
        ({"requires": "numpy"}, "requires='numpy': it must be a tuple of module names"),
        ({"array_modules": ("zzarrays.core",)}, "'zzarrays.core' is not a top-level module name"),
        ({"excluded_modules": ("",)}, "excluded_modules=('',): it must be a tuple of module names"),
    ],
    ids=["array-modules-str", "requires-str", "dotted-array-module", "empty-name"],
)
def test_malformed_declaration_warns_and_is_not_registered(fields: dict[str, object], problem: str) -> None:
    class Malformed:
        @hookimpl
        def layernorm_backends(self) -> list[BackendDeclaration]:
            return [BackendDeclaration(name="zzbad", implementation="nowhere", **fields)]  # type: ignore[arg-type]

    fresh = Registry(entry_point_group="layernorm.no-such-group")
    with pytest.warns(PluginWarning, match="backend 'zzbad' with ") as caught:
        fresh.register_plugin(Malformed(), name="malformed")
    assert problem in str(caught[0].message) and "it is not registered" in str(caught[0].message)
    assert fresh.names() == ()


def test_unregistering_a_name_no_plugin_has_is_a_backend_error() -> None:
    fresh = Registry(entry_point_group="layernorm.no-such-group")
    with pytest.raises(layernorm.BackendError, match="no plugin is registered under 'nothere'"):
        fresh.unregister_plugin("nothere")


def test_registering_a_registered_plugin_again_names_where_it_is() -> None:
    """pluggy's refusal, passed on, named the new name as the one the plugin had ("registered under a different
    name: second=<...>") and went on to list every plugin of the registry, over many lines."""

    class Plain:
        @hookimpl
        def layernorm_backends(self) -> list[BackendDeclaration]:
            return [BackendDeclaration(name="plain", implementation="nowhere")]

    fresh = Registry(entry_point_group="layernorm.no-such-group")
    plugin = Plain()
    fresh.register_plugin(plugin, name="first")
    with pytest.raises(layernorm.BackendError) as raised:
        fresh.register_plugin(plugin, name="second")
    assert str(raised.value) == "plugin 'second' cannot be registered: it is registered as 'first'"
    named_first = types.SimpleNamespace(__name__="first", layernorm_backends=Plain().layernorm_backends)
    with pytest.raises(layernorm.BackendError, match="cannot be registered: Plugin name already registered") as raised:
        fresh.register_plugin(named_first)  # no name given: pluggy takes its __name__, which is taken
    assert "\n" not in str(raised.value)


def test_exclusion_outside_the_plugins_own_modules_is_ignored_with_a_warning() -> None:
    """A plugin cannot exclude NumPy's or torch's arrays: every other backend keeps working."""

    class Excluder:
        @hookimpl
        def layernorm_backends(self) -> list[BackendDeclaration]:
            return [
                BackendDeclaration(
                    name="zzexcl",
                    implementation="nowhere",
                    array_modules=("zzarrays",),
                    excluded_modules=("numpy", "zzarrays.sparse"),
                )
            ]

    warned = pytest.warns(PluginWarning, match=r"to exclude 'numpy' arrays, outside its own array_modules")
    with warned, registered(Excluder(), "excluder"):
        assert np.asarray(layernorm.layer_norm(np.ones((2, 3)), backend="numpy")).shape == (2, 3)
        assert registry._excluded_by_module.get("zzarrays.sparse") == "zzexcl"
        assert "numpy" not in registry._excluded_by_module


def test_cli_backends_table() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "layernorm", "backends"], capture_output=True, text=True, check=True
    ).stdout
    header, _, *rows = out.splitlines()
    assert header.split()[:5] == ["backend", "available", "version", "devices", "dtypes"]
    numpy_row = next(r for r in rows if r.startswith("numpy "))
    assert numpy_row.split()[1:3] == ["yes", np.__version__]
    assert numpy_row.endswith(registry.declaration("numpy").description) and header.split()[-1] == "description"


class _NoHook:
    """A plugin that forgot the @hookimpl marker."""

    def layernorm_backends(self) -> list[BackendDeclaration]:
        return [BackendDeclaration(name="nohook", implementation="layernorm_numpy.backend")]


class _MisspelledHook:
    @hookimpl
    def layernorm_backend(self) -> list[BackendDeclaration]:
        return [BackendDeclaration(name="typo", implementation="layernorm_numpy.backend")]


@pytest.mark.parametrize(
    ("plugin", "message"),
    [
        (_NoHook(), r"plugin 'p' declares no backend: it has no function 'layernorm_backends' marked @layernorm_core"),
        (_MisspelledHook(), r"plugin 'p' declares no backend: .* \(it implements unknown hooks: 'layernorm_backend'\)"),
    ],
    ids=["no-hook", "misspelled-hook"],
)
def test_plugin_that_declares_nothing_warns(plugin: object, message: str) -> None:
    with pytest.warns(PluginWarning, match=message), registered(plugin, "p"):
        assert {"nohook", "typo"}.isdisjoint(registry.names())
        assert layernorm.layer_norm(np.ones((2, 3))).shape == (2, 3)


def test_unusable_backend_names_warn() -> None:
    class Odd:
        @hookimpl
        def layernorm_backends(self) -> list[BackendDeclaration]:
            return [BackendDeclaration(name=n, implementation="layernorm_numpy.backend") for n in ("auto", "")]

    with (
        pytest.warns(PluginWarning, match="a name no call can select") as caught,
        registered(Odd(), "odd"),
    ):
        assert {"auto", ""}.isdisjoint(registry.names())
    declared = {match[0] for w in caught if (match := re.search("declares backend '[^']*'", str(w.message)))}
    assert declared == {"declares backend 'auto'", "declares backend ''"}


@pytest.mark.parametrize(
    ("info", "reason"),
    [
        (info_raises, "info() raised RuntimeError('info() broken on purpose')"),
        (info_is_a_dict, "info() returned a dict, not a BackendInfo"),
        (info_with_devices_in_one_string, "devices must be a tuple of names, such as ('cpu',); got 'cpu'"),
    ],
    ids=["raises", "dict", "devices-in-one-string"],
)
def test_backend_with_broken_info_is_listed_unavailable(
    info: object, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with broken_info_backend("badinfo", info):  # type: ignore[arg-type]
        rows = {s.name: s for s in layernorm.backends()}
        assert not rows["badinfo"].available and reason in (rows["badinfo"].reason or "")
        assert rows["numpy"].available
        with pytest.raises(layernorm.BackendError, match=r"backend 'badinfo' \(layernorm_test_badinfo\): info"):
            registry.info("badinfo")
        assert cli.main(["backends"]) == 0
    table = capsys.readouterr().out
    assert reason in next(line for line in table.splitlines() if line.startswith("badinfo "))


@pytest.fixture
def docs_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The complete example of docs/plugins.md, copied from the document, registered as backend "exact"."""
    monkeypatch.syspath_prepend(str(write_example(tmp_path / "src")))
    try:
        with registered(importlib.import_module("layernorm_exact.plugin"), "exact"):
            yield "exact"
    finally:
        for module in [m for m in sys.modules if m.partition(".")[0] == "layernorm_exact"]:
            del sys.modules[module]


def test_docs_example_plugin_passes_the_suite(docs_example: str, tmp_path: Path) -> None:
    keyword = "test_constant or test_eps or test_forward and 5x33"
    code, records = run_suite(tmp_path / "exact.json", "--backend", docs_example, "-k", keyword)
    failed = [f"{r['id']}: {r['message']}" for r in records if r["outcome"] == "failed"]
    assert code == pytest.ExitCode.OK and not failed, failed
    assert {r["check"] for r in records} >= {"test_constant_row_without_eps", "test_eps", "test_forward"}


def test_docs_example_refuses_a_device_array_with_a_device_error(docs_example: str) -> None:
    """The example's from_foreign took DLPack itself and let NumPy's BufferError out: no LayerNormError."""
    with pytest.raises(layernorm.DeviceError, match=r"FakeCudaTensor \(DLPack device type 2\) through DLPack"):
        layernorm.layer_norm(FakeCudaTensor(), backend=docs_example)


def test_cli_help_reads_as_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert exited.value.code == 0 and "backends" in out and "check" in out
    assert "``" not in out, out


def test_conformance_runner_without_the_test_extra_names_it() -> None:
    """docs/plugins.md's `python -m layernorm_conformance` in an install without the test extra ended in a bare
    ModuleNotFoundError for pytest; `python -m layernorm check` said which extra to install, as this does now."""
    hide_pytest = (
        "import runpy, sys; sys.modules['pytest'] = None; runpy.run_module('layernorm_conformance', {}, '__main__')"
    )
    run = subprocess.run([sys.executable, "-c", hide_pytest], capture_output=True, text=True)
    last_line = run.stderr.strip().splitlines()[-1]
    assert run.returncode != 0 and "pip install 'layernorm[test]'" in last_line, run.stderr


def test_cli_check_without_the_test_extra_names_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A base install (no pytest) got a traceback from `check`: now a usage error naming the extra."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pytest" else find_spec(name, *a))
    assert cli.main(["check"]) == 2
    err = capsys.readouterr().err
    assert "the conformance suite needs pytest, not installed: pip install 'layernorm[test]'" in err, err


def test_docs_backends_table_has_the_cli_columns() -> None:
    """The sample of `python -m layernorm backends` in docs/plugins.md has the header and rule the CLI prints."""
    sample = doc_block("Install it (`pip install -e layernorm-exact`) and it is there:", PLUGINS_DOC)
    header, rule, *_ = sample.splitlines()[1:]
    assert header.split() == cli.backends_table([]).splitlines()[0].split()
    assert [m.start() for m in re.finditer(r"\S+", header)] == [m.start() for m in re.finditer("-+", rule)]
