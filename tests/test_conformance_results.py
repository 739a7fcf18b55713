"""The conformance suite's records, matrix table, Markdown update and matrix command (merge mode)."""

from __future__ import annotations

import json
import subprocess
import types
from pathlib import Path

import pytest
from layernorm_conformance import matrix, results


def _record(backend: str, dtype: str, outcome: str, ratio: float | None, check: str = "test_forward") -> dict:
    return {
        "check": check,
        "id": f"{check}[{backend}-cpu-{dtype}-{outcome}-{ratio}]",
        "backend": backend,
        "device": "cpu",
        "dtype": dtype,
        "outcome": outcome,
        "max_ratio": ratio,
        "ratios": {} if ratio is None else {"y": ratio},
        "message": "",
        "duration": 0.0,
    }


RECORDS = [
    _record("numpy", "float32", "passed", 0.25),
    _record("numpy", "float32", "passed", 0.5),
    _record("numpy", "float32", "failed", 3.0),
    _record("numpy", "float16", "skipped", None),
    _record("torch", "float32", "passed", None),
]

SKIPPED = {**_record("numpy", "float32", "skipped", None), "message": "numpy does not run on cuda"}


def test_matrix_counts_and_worst() -> None:
    cells = {(c.backend, c.dtype): c for c in results.matrix(RECORDS)}
    f32 = cells["numpy", "float32"]
    assert f32.counts == {"passed": 2, "failed": 1, "skipped": 1 - 1}
    assert f32.worst == 3.0 and "failed-3.0" in f32.worst_id
    assert cells["numpy", "float16"].counts["skipped"] == 1 and cells["numpy", "float16"].worst is None
    assert cells["torch", "float32"].worst is None
    assert [(c.backend, c.dtype) for c in results.matrix(RECORDS)] == sorted(cells)


def test_table_lists_every_cell() -> None:
    table = results.format_table(results.matrix(RECORDS))
    lines = table.splitlines()
    assert lines[0].split()[:6] == ["backend", "device", "dtype", "passed", "failed", "skipped"]
    assert len(lines) == 2 + 3
    assert any(line.split()[:6] == ["numpy", "cpu", "float32", "2", "1", "0"] for line in lines)


def test_json_round_trip_keeps_infinite_ratio_finite(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    results.write(path, [*RECORDS, _record("numpy", "float64", "failed", float("inf"))], {"numpy": {"version": "2"}})
    json.loads(path.read_text())  # strict JSON: no Infinity
    records, versions = results.load([path])
    assert len(records) == 6 and versions == {"numpy": {"version": "2"}}
    assert records[-1]["max_ratio"] == 1e308


def test_markdown_update_replaces_only_the_marked_block(tmp_path: Path) -> None:
    doc = tmp_path / "conformance.md"
    doc.write_text(f"# Title\n\nprose\n\n{results.MATRIX_START}\nold table\n{results.MATRIX_END}\n\nafter\n")
    results.update_markdown(doc, "| new |")
    text = doc.read_text()
    assert "old table" not in text and "| new |" in text
    assert text.startswith("# Title\n\nprose") and text.rstrip().endswith("after")
    results.update_markdown(doc, "| newer |")
    assert doc.read_text().count(results.MATRIX_START) == 1 and "| new |" not in doc.read_text()


def test_markdown_update_reads_the_end_marker_after_the_start(tmp_path: Path) -> None:
    """Prose that quotes the end marker before the matrix keeps it (only a start marker without an end after it is
    refused, by check --markdown before anything runs)."""
    doc = tmp_path / "conformance.md"
    doc.write_text(f"ends at {results.MATRIX_END}\n{results.MATRIX_START}\nold\n{results.MATRIX_END}\nafter\n")
    results.update_markdown(doc, "| new |")
    assert (
        doc.read_text()
        == f"ends at {results.MATRIX_END}\n{results.MATRIX_START}\n| new |\n{results.MATRIX_END}\nafter\n"
    )


def test_markdown_table_shows_versions() -> None:
    md = results.format_markdown(results.matrix(RECORDS), {"numpy": {"version": "2.4.6"}})
    assert "| numpy | 2.4.6 | cpu | float32 | 2 | 1 | 0 | 3 |" in md
    assert "| torch | - | cpu | float32 | 1 | 0 | 0 | - |" in md


def test_matrix_main_merges_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = tmp_path / "numpy.json", tmp_path / "torch.json"
    results.write(first, RECORDS[:4], {})
    results.write(second, RECORDS[4:], {})
    doc = tmp_path / "doc.md"
    code = matrix.main(["--merge", str(first), str(second), "--markdown", str(doc)])
    out = capsys.readouterr().out
    assert code == 1, "a failed record makes the command fail"
    assert "FAILED test_forward[numpy-cpu-float32-failed-3.0]" in out
    assert "torch" in out and results.MATRIX_START in doc.read_text()
    results.write(first, RECORDS[:2], {})
    assert matrix.main(["--merge", str(first)]) == 0


def test_matrix_merge_of_a_missing_or_foreign_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert matrix.main(["--merge", str(tmp_path / "missing.json")]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"python -m layernorm check: error: no such results file: {tmp_path}/missing.json"
    )
    foreign = tmp_path / "foreign.json"
    foreign.write_text("[1, 2]")
    assert matrix.main(["--merge", str(foreign)]) == 2
    assert "is not a results file of --conformance-json" in capsys.readouterr().err


@pytest.mark.parametrize(
    "change",
    [{"max_ratio": "0.5"}, {"max_ratio": True}, {"message": None}, {"backend": None}, {"dtype": 3}],
    ids=["ratio-string", "ratio-bool", "no-message", "backend-null", "dtype-int"],
)
def test_matrix_merge_of_a_malformed_record_is_a_usage_error(
    change: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record with a string ratio, or none of the message of a failure, passed the check of a results file and
    crashed the table or the failure list with a traceback (Python's exit 1, which reads as a failed check)."""
    record = {**_record("numpy", "float32", "failed", 2.0), **change}
    if change.get("message", "") is None:
        del record["message"]
    path = tmp_path / "numpy.json"
    path.write_text(json.dumps({"records": [record]}))
    assert matrix.main(["--merge", str(path)]) == 2
    assert f"{path} is not a results file of --conformance-json" in capsys.readouterr().err


def test_matrix_merge_of_no_records_is_not_a_pass(tmp_path: Path) -> None:
    empty = tmp_path / "numpy.json"
    results.write(empty, [], {})
    assert matrix.main(["--merge", str(empty)]) == 5


def test_matrix_command_says_which_backend_checked_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One backend's checks all skipped (its framework missing) beside one that ran is exit 5, not a pass: the
    command decided over all backends' records together."""
    results.write(tmp_path / "numpy.json", [_record("numpy", "float32", "passed", 0.25)], {})
    results.write(
        tmp_path / "torch.json",
        [{**_record("torch", "float32", "skipped", None), "message": "backend 'torch': torch is not installed"}],
        {},
    )
    code = matrix.main(["--merge", str(tmp_path / "numpy.json"), str(tmp_path / "torch.json")])
    assert code == matrix.EXIT_EMPTY
    assert "torch: a backend checked nothing" in capsys.readouterr().err
    assert matrix.main(["--merge", str(tmp_path / "numpy.json")]) == matrix.EXIT_OK


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(["--dtype", "float8"], id="unknown-dtype"),
        pytest.param(["--examples", "0"], id="no-examples"),
    ],
)
def test_matrix_command_refuses_bad_options_before_running(options: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        matrix.main(["--backend", "numpy", *options])
    assert exit_.value.code == matrix.EXIT_USAGE


USAGE_PROBLEMS = [
    "out-is-a-file",
    "out-under-a-file",
    "results-file-is-a-folder",
    "markdown-in-no-folder",
    "markdown-is-a-folder",
    "markdown-dangling-link",
    "markdown-not-utf-8",
    "backend-twice",
    "merge-twice",
    "bad-record",
    "out-name-too-long",
    "out-parent-name-too-long",
    "markdown-name-too-long",
    "merge-name-too-long",
    "markdown-markers-out-of-order",
    "markdown-start-marker-alone",
]
"""Each is a usage error before anything runs; the third to the seventh ended in a traceback (exit 1),
backend-twice and merge-twice counted a backend's checks twice (helper-74), the four "too-long" ones ended in a
traceback (OSError: pathlib's exists() and is_file() raise for a name too long), and the last two rewrote the
file without the text after its start marker."""


@pytest.mark.parametrize("problem", USAGE_PROBLEMS)
def test_matrix_command_usage_errors_are_exit_2_not_tracebacks(
    problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "file").write_text("")
    good = tmp_path / "numpy.json"
    results.write(good, [_record("numpy", "float32", "passed", 0.25)], {})
    (tmp_path / "bad.json").write_text('{"records": [{"x": 1}]}')
    (tmp_path / "out" / "numpy.json").mkdir(parents=True)
    (tmp_path / "dangling.md").symlink_to(tmp_path / "nowhere.md")
    (tmp_path / "latin.md").write_bytes(b"caf\xe9\n")
    (tmp_path / "swapped.md").write_text(f"{results.MATRIX_END}\nkept\n{results.MATRIX_START}\nkept too\n")
    (tmp_path / "lone.md").write_text(f"{results.MATRIX_START}\nkept\n")
    _fake_runs(monkeypatch, pytest.ExitCode.OK, [_record("numpy", "float32", "passed", 0.25)])
    options = {
        "out-is-a-file": ["--backend", "numpy", "--out", str(tmp_path / "file")],
        "out-under-a-file": ["--backend", "numpy", "--out", str(tmp_path / "file" / "sub")],
        "out-name-too-long": ["--backend", "numpy", "--out", str(tmp_path / ("x" * 300))],
        "out-parent-name-too-long": ["--backend", "numpy", "--out", str(tmp_path / ("x" * 300) / "sub")],
        "markdown-name-too-long": ["--merge", str(good), "--markdown", str(tmp_path / ("x" * 300))],
        "merge-name-too-long": ["--merge", str(tmp_path / ("x" * 300))],
        "results-file-is-a-folder": ["--backend", "numpy", "--out", str(tmp_path / "out")],
        "markdown-in-no-folder": ["--merge", str(good), "--markdown", str(tmp_path / "no" / "such.md")],
        "markdown-is-a-folder": ["--merge", str(good), "--markdown", str(tmp_path)],
        "markdown-dangling-link": ["--merge", str(good), "--markdown", str(tmp_path / "dangling.md")],
        "markdown-not-utf-8": ["--merge", str(good), "--markdown", str(tmp_path / "latin.md")],
        "backend-twice": ["--backend", "numpy", "--backend", "numpy", "--out", str(tmp_path / "runs")],
        "merge-twice": ["--merge", str(good), str(tmp_path / "." / "numpy.json")],
        "bad-record": ["--merge", str(tmp_path / "bad.json")],
        "markdown-markers-out-of-order": ["--merge", str(good), "--markdown", str(tmp_path / "swapped.md")],
        "markdown-start-marker-alone": ["--merge", str(good), "--markdown", str(tmp_path / "lone.md")],
    }[problem]
    assert matrix.main(options) == matrix.EXIT_USAGE
    assert "python -m layernorm check: error:" in capsys.readouterr().err


def test_a_usage_error_leaves_no_out_folder_behind(tmp_path: Path) -> None:
    """An unknown backend is refused before anything is written: no --out folder is made for it."""
    assert matrix.main(["--backend", "nosuch", "--out", str(tmp_path / "a" / "b")]) == matrix.EXIT_USAGE
    assert not (tmp_path / "a").exists()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where no folder can be made")
def test_an_out_folder_that_cannot_be_made_is_refused_before_running(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its parent is a folder, so it passed: each backend then ran every check and failed to write its results,
    a crash (exit 3) minutes later."""
    _fake_runs(monkeypatch, pytest.ExitCode.OK, [_record("numpy", "float32", "passed", 0.25)])
    assert matrix.main(["--backend", "numpy", "--out", "/proc/layernorm-results"]) == matrix.EXIT_USAGE
    captured = capsys.readouterr()
    assert "--out /proc/layernorm-results cannot be made" in captured.err
    assert "checking numpy" not in captured.out


def _fake_runs(monkeypatch: pytest.MonkeyPatch, returncode: int, records: list[dict] | None) -> None:
    """Let every backend run end with pytest's ``returncode``, having written ``records`` (None: no file)."""

    def run(command: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        if records is not None:
            results.write(command[command.index("--conformance-json") + 1], records, {})
        return subprocess.CompletedProcess(command, returncode, "", "ERROR collecting test_agreement.py")

    # A stand-in module rather than subprocess.run patched for the whole process: platform.platform(), which
    # results.write calls, runs `uname` through subprocess.run once per process.
    monkeypatch.setattr(matrix, "subprocess", types.SimpleNamespace(run=run))


@pytest.mark.parametrize(
    ("pytest_exit", "records", "expected"),
    [
        (pytest.ExitCode.OK, RECORDS[:2], 0),
        (pytest.ExitCode.TESTS_FAILED, RECORDS[:3], 1),
        (pytest.ExitCode.INTERRUPTED, [], 3),  # a collection error
        (pytest.ExitCode.INTERRUPTED, RECORDS[:3], 3),  # crashed outranks failed
        (pytest.ExitCode.INTERNAL_ERROR, RECORDS[:2], 3),
        (pytest.ExitCode.OK, None, 3),  # no results written
        (pytest.ExitCode.USAGE_ERROR, [], 2),
        (pytest.ExitCode.NO_TESTS_COLLECTED, [], 5),
        (pytest.ExitCode.OK, [SKIPPED], 5),  # every check skipped: --device cuda without a GPU
        (pytest.ExitCode.OK, [SKIPPED, _record("reference", "float64", "passed", 0.1)], 5),  # the reference's ran
        (pytest.ExitCode.OK, [_record("reference", "float64", "passed", 0.1)], 0),  # -k reference: all asked for
    ],
    ids=[
        "ok",
        "failed",
        "interrupted",
        "interrupted-and-failed",
        "internal-error",
        "no-file",
        "usage",
        "empty",
        "all-skipped",
        "only-the-reference-ran",
        "only-the-reference-asked-for",
    ],
)
def test_matrix_exit_status_follows_each_run(  # the codes of docs/conformance.md
    pytest_exit: int,
    records: list[dict] | None,
    expected: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _fake_runs(monkeypatch, pytest_exit, records)
    assert matrix.main(["--backend", "numpy", "--out", str(tmp_path)]) == expected
    err = capsys.readouterr().err
    if expected not in (0, 1) and pytest_exit != pytest.ExitCode.OK:
        assert f"numpy: {matrix.EXIT_CODES[expected]}; pytest exit {int(pytest_exit)}" in err, err
    if expected == 5:
        assert matrix.EXIT_CODES[5] in err, err
    if records and expected == 5:
        assert f"numpy: {matrix.EXIT_CODES[5]}; {SKIPPED['message']}" in err, err
    if expected == 3:
        assert "ERROR collecting test_agreement.py" in err
