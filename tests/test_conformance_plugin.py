"""The conformance plugin's options: backend and device selection, skips with reasons, JSON records, ids."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conformance_run import run_suite
from layernorm_conformance import matrix
from layernorm_conformance.targets import select_targets
from plugin_broken import broken_info_backend, info_is_a_dict, info_names_an_unknown_dtype, info_raises


def _run(tmp_path: Path, *args: str) -> tuple[int, list[dict[str, Any]]]:
    out = tmp_path / "records.json"
    options = ["-p", "layernorm_conformance", "-q", "-p", "no:cacheprovider", "--conformance-json", str(out), *args]
    code = pytest.main(["--pyargs", "layernorm_conformance.checks", *options])
    records = json.loads(out.read_text())["records"] if out.exists() else []
    return int(code), records


def test_unknown_backend_is_a_usage_error(tmp_path: Path) -> None:
    code, _ = _run(tmp_path, "--backend", "no-such-backend")
    assert code == pytest.ExitCode.USAGE_ERROR


@pytest.mark.parametrize("examples", ["0", "-3"])
def test_fewer_than_one_random_example_is_a_usage_error(tmp_path: Path, examples: str) -> None:
    """As `python -m layernorm check --examples 0` is: hypothesis refused it inside the random checks, which then
    read as conformance failures."""
    code, _ = _run(tmp_path, "--backend", "numpy", "--conformance-examples", examples, "-k", "test_random")
    assert code == pytest.ExitCode.USAGE_ERROR


def test_absent_device_is_skipped_with_reason(tmp_path: Path) -> None:
    code, records = _run(tmp_path, "--backend", "numpy", "--device", "cuda", "-k", "test_eps")
    assert code == pytest.ExitCode.OK
    assert records and all(r["outcome"] == "skipped" for r in records)
    assert all("no cuda device for backend 'numpy'" in r["message"] for r in records)
    assert {r["device"] for r in records} == {"cuda"}


def test_a_backend_without_the_dtypes_asked_for_is_skipped_with_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checks that draw a dtype from those the backend declares (test_random) had none to draw: hypothesis raised
    InvalidArgument, a failure; checks parametrized by dtype (test_eps) were skipped with pytest's "got empty
    parameter set"."""
    from dataclasses import replace

    from layernorm_core.registry import registry

    numpy_backend = registry.get("numpy")
    declared = replace(numpy_backend.info(), dtypes=("float32",))
    monkeypatch.setattr(numpy_backend, "info", lambda: declared)
    code, records = _run(tmp_path, "--backend", "numpy", "--dtype", "float16", "-k", "test_random or test_eps")
    assert code == pytest.ExitCode.OK
    assert records and all(r["outcome"] == "skipped" for r in records)
    assert all("backend 'numpy' computes none of float16 here (it computes float32)" in r["message"] for r in records)
    assert {r["id"].partition("[")[0] for r in records} >= {"test_random_forward", "test_eps"}


def test_records_carry_ids_dtypes_and_ratios(tmp_path: Path) -> None:
    code, records = _run(tmp_path, "--backend", "numpy", "--dtype", "float32", "-k", "test_forward and 5x33")
    assert code == pytest.ExitCode.OK
    ids = {r["id"] for r in records}
    assert "test_forward[numpy-cpu-float32-x=5x33-axis=(1,)-layer_norm-full]" in ids
    assert all(r["dtype"] == "float32" and r["outcome"] == "passed" for r in records)
    assert all(0.0 <= r["max_ratio"] <= 1.0 and set(r["ratios"]) >= {"y", "rstd"} for r in records)


def test_an_option_given_twice_runs_its_checks_once(tmp_path: Path) -> None:
    """Each repeat of --backend, --device or --dtype ran every check again, under ids suffixed 0, 1, ...: the
    matrix counted them twice (``python -m layernorm check`` passes --device and --dtype through)."""
    twice = ["--backend", "numpy", "--backend", "numpy", "--device", "cpu", "--device", "cpu"]
    code, records = _run(tmp_path, *twice, "--dtype", "float32", "--dtype", "float32", "-k", "test_eps")
    assert code == pytest.ExitCode.OK
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == 12, ids
    assert "test_eps[numpy-cpu-float32-eps=0-layer_norm]" in ids, ids


def test_matrix_command_runs_the_suite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = matrix.main(["--backend", "numpy", "--dtype", "float32", "-k", "test_eps", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert (tmp_path / "numpy.json").exists()
    assert any(line.split()[:5] == ["numpy", "cpu", "float32", "12", "0"] for line in out.splitlines()), out


def test_matrix_command_that_runs_no_check_is_not_a_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = matrix.main(["--backend", "numpy", "-k", "no_such_check", "--out", str(tmp_path)])
    assert code == 5 == pytest.ExitCode.NO_TESTS_COLLECTED
    assert f"numpy: {matrix.EXIT_CODES[5]}; pytest exit 5" in capsys.readouterr().err


@pytest.mark.parametrize(
    "info", [info_raises, info_is_a_dict, info_names_an_unknown_dtype], ids=["raises", "dict", "unknown-dtype"]
)
def test_backend_with_broken_info_fails_its_own_checks_only(info: Callable[[], Any], tmp_path: Path) -> None:
    with broken_info_backend("badinfo", info):
        targets = {t.backend: t for t in select_targets(None, None, ["float32"])}
        assert targets["badinfo"].broken is not None and "backend 'badinfo'" in targets["badinfo"].broken
        assert targets["numpy"].broken is None

        # collecting test_agreement asks every other backend's info(): a broken one is left out, not a crash
        code, records = run_suite(tmp_path / "numpy.json", "--backend", "numpy", "--dtype", "float32", "-k", "test_eps")
        assert code == pytest.ExitCode.OK and len(records) == 12

        code, records = run_suite(tmp_path / "bad.json", "--backend", "badinfo", "--dtype", "float32", "-k", "test_eps")
        assert code == pytest.ExitCode.TESTS_FAILED and len(records) == 12
        assert all(r["outcome"] == "failed" and "backend 'badinfo'" in r["message"] for r in records)

        # checks parametrized by asking the backend get None for those parameters: the loader's error, not theirs
        code, records = run_suite(tmp_path / "traced.json", "--backend", "badinfo", "-k", "test_traced")
        assert code == pytest.ExitCode.TESTS_FAILED and records
        assert all(r["outcome"] == "failed" and "BackendError: backend 'badinfo'" in r["message"] for r in records)
