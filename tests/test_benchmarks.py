"""Fast tests of the benchmark runner's logic: timing statistics, byte counts, plans, the report's structure.

A fake clock makes timings deterministic; nothing here asserts how fast anything runs.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import __main__ as cli
from benchmarks import plots, report, runner
from benchmarks.cases import QUICK_SHAPES, Case, Shape, copy_bytes, select_shapes, traffic_bytes
from benchmarks.frameworks import load
from benchmarks.frameworks.base import FrameworkAdapter
from benchmarks.timing import interleaved, percentile

TINY = (Shape("2x8", (2, 8), -1), Shape("2x3x4", (2, 3, 4), 1))


class FakeClock:
    """A clock that only moves when told: ``tick`` seconds per read, plus whatever the measured code adds."""

    def __init__(self, tick: float = 0.0) -> None:
        self.now = 0.0
        self.tick = tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def unreachable(*args: object, **kwargs: object) -> None:
    """Stands in for what must not run: the options are refused before it."""
    raise AssertionError("ran before refusing")


# -- timing ------------------------------------------------------------------------------------------------------


def test_percentile_interpolates_between_order_statistics() -> None:
    samples = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(samples, 0) == 1.0
    assert percentile(samples, 50) == 3.0
    assert percentile(samples, 100) == 5.0
    assert percentile(samples, 10) == pytest.approx(1.4)
    assert percentile(samples, 90) == pytest.approx(4.6)
    assert percentile([7.0], 10) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_interleaved_doubles_calls_until_min_time_and_reports_per_call() -> None:
    clock = FakeClock()

    def fn(x: float) -> float:
        clock.now += 0.01
        return x

    timing = interleaved({"fn": fn}, [1.0], rounds=2, repeats=2, min_time=0.05, warmup=1, clock=clock)["fn"]
    assert timing.calls_per_repeat == 8  # 4 calls last 0.04 s < 0.05 s, 8 calls 0.08 s
    assert timing.median == pytest.approx(0.01)
    assert timing.repeats == 4


def test_interleaved_rotates_inputs() -> None:
    seen: list[int] = []
    interleaved({"append": seen.append}, [0, 1, 2], rounds=2, repeats=1, min_time=0.0, warmup=1, clock=FakeClock(1.0))
    # warm-up, calibration, then per round an untimed call and one repeat of one call: never restarting at 0
    assert seen == [0, 1, 2, 0, 1, 2]


def test_interleaved_alternates_functions_and_reports_percentiles_not_extremes() -> None:
    clock = FakeClock()
    order: list[str] = []
    samples = [10.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 100.0]
    settle = 1000.0  # each round's untimed first call: in no sample
    rounds_of_a = [[settle, samples[2 * k], samples[2 * k + 1]] for k in range(5)]
    durations = {
        "a": iter([1.0] * 2 + [d for r in rounds_of_a for d in r]),
        "b": iter([2.0] * 2 + [settle, 2.0, 2.0] * 5),
    }

    def timed(name: str) -> Callable[[Any], Any]:
        def fn(_: Any) -> None:
            order.append(name)
            clock.now += next(durations[name])

        return fn

    result = interleaved(
        {"a": timed("a"), "b": timed("b")}, [None], rounds=5, repeats=2, min_time=0.5, warmup=1, clock=clock
    )
    # warm-up and calibration of a, then of b; then rounds alternate a (untimed), a, a, b (untimed), b, b.
    assert order[4:] == ["a", "a", "a", "b", "b", "b"] * 5
    a = result["a"]
    assert a.repeats == 10 and a.calls_per_repeat == 1
    assert a.median == pytest.approx(5.5)
    assert a.p10 == pytest.approx(percentile(samples, 10)) and a.p10 > min(samples)
    assert a.p90 == pytest.approx(percentile(samples, 90)) and a.p90 < max(samples)
    assert result["b"].median == pytest.approx(2.0)


def test_interleaved_gives_slow_functions_fewer_repeats_within_max_time() -> None:
    clock = FakeClock()

    def sleeper(seconds: float) -> Callable[[Any], Any]:
        def fn(_: Any) -> None:
            clock.now += seconds

        return fn

    result = interleaved(
        {"fast": sleeper(0.01), "slow": sleeper(0.3), "middle": sleeper(0.05)},
        [None],
        rounds=4,
        repeats=3,
        min_time=0.001,
        warmup=0,
        clock=clock,
        max_time=0.1,
    )
    assert (result["fast"].repeats, result["middle"].repeats, result["slow"].repeats) == (12, 8, 4)
    assert result["slow"].median == pytest.approx(0.3)


# -- cases ---------------------------------------------------------------------------------------------------------


def test_traffic_bytes_count_tensors_and_parameters() -> None:
    shape = Shape("2x8", (2, 8), -1)
    # forward: x and y (16 elements each) plus weight and bias (8 each), 4 bytes
    assert traffic_bytes("layer_norm", "forward", shape, "float32") == (2 * 16 + 2 * 8) * 4
    assert traffic_bytes("rms_norm", "forward", shape, "bfloat16") == (2 * 16 + 8) * 2
    # forward+backward: x, y, x, dy, dx plus w, b, w, dw, db
    assert traffic_bytes("layer_norm", "forward+backward", shape, "float32") == (5 * 16 + 5 * 8) * 4
    assert traffic_bytes("rms_norm", "forward+backward", shape, "float16") == (5 * 16 + 3 * 8) * 2
    assert copy_bytes(Shape("c", (2, 3, 4), 1), "float32") == 2 * 24 * 4


def test_channels_first_shape_normalizes_axis_one() -> None:
    shape = Shape("8x64x56x56", (8, 64, 56, 56), 1)
    assert shape.features == 64 and shape.normalized_axis == 1


def test_select_shapes() -> None:
    assert [s.label for s in select_shapes(None, quick=True)] == list(QUICK_SHAPES)
    assert len(select_shapes(None, quick=False)) == 5
    with pytest.raises(ValueError, match="unknown shape"):
        select_shapes(["3x3"], quick=False)


@pytest.mark.parametrize(
    ("wanted", "offered", "backend", "expected"),
    [
        ("auto", ("cuda", "cpu"), ("cpu", "cuda"), "cuda"),
        ("auto", ("gpu", "cpu"), ("cpu",), "cpu"),
        ("gpu", ("cuda", "cpu"), ("cuda",), "cuda"),
        ("cpu", ("cuda", "cpu"), ("cpu", "cuda"), "cpu"),
        ("cuda", ("cpu",), ("cpu",), None),
    ],
    ids=["auto-prefers-accelerator", "auto-falls-back-to-cpu", "gpu-means-cuda", "forced-cpu", "no-such-device"],
)
def test_choose_device(wanted: str, offered: tuple[str, ...], backend: tuple[str, ...], expected: str | None) -> None:
    assert runner.choose_device(wanted, offered, backend) == expected


# -- a tiny run on the numpy backend with a fake clock ----------------------------------------------------------


def tiny_config(backends: list[str], dtypes: tuple[str, ...] = ("float32",)) -> runner.Config:
    settings = runner.Settings(rounds=2, repeats=2, min_time=0.0, warmup=1, max_time=1.0)
    return runner.Config(shapes=TINY, dtypes=dtypes, backends=backends, settings=settings, command="test")


@pytest.fixture(scope="module")
def numpy_run() -> dict[str, Any]:
    pytest.importorskip("ml_dtypes")
    data = runner.run(
        tiny_config(["numpy", "no-such-backend"], ("float32", "bfloat16")), clock=FakeClock(0.001), progress=False
    )
    numpy_record = data["backends"][0]
    if numpy_record["status"] != "ran":
        pytest.skip(f"numpy backend not available: {numpy_record.get('reason')}")
    return data


def test_run_records_every_op_pass_shape_and_dtype(numpy_run: dict[str, Any]) -> None:
    records = numpy_run["results"]
    assert len(records) == 2 * 2 * 2 * 2  # shapes x dtypes x ops x passes
    keys = {(r["op"], r["pass"], r["shape"], r["dtype"]) for r in records}
    assert len(keys) == len(records)
    for record in records:
        assert record["backend"] == "numpy" and record["device"] == "cpu"
        assert record["errors"] == {}
        if record["pass"] == "forward":
            assert set(record["error_vs_reference"]) == {"ours", "native"}
            assert all(0.0 <= ratio <= 1.0 for ratio in record["error_vs_reference"].values())
        for impl in ("ours", "native", "copy"):
            assert set(record[impl]) == {"median", "p10", "p90", "repeats", "calls_per_repeat"}
            assert record[impl]["repeats"] == 4


def test_run_derives_ratios_from_the_timings(numpy_run: dict[str, Any]) -> None:
    # The fake clock gives every repeat the same 1 ms: ratio 1, and GB/s follow from the byte counts alone.
    record = next(
        r
        for r in numpy_run["results"]
        if (r["op"], r["pass"], r["shape"], r["dtype"]) == ("layer_norm", "forward", "2x8", "float32")
    )
    assert record["ours"]["median"] == pytest.approx(0.001)
    assert record["time_vs_native"] == pytest.approx(1.0)
    assert record["bytes"] == 192 and record["copy_bytes"] == 128
    assert record["ours_gbps"] == pytest.approx(192 / 0.001 / 1e9)
    assert record["percent_of_floor"] == pytest.approx(150.0)
    assert record["native_impl"].startswith("plain NumPy")


def test_run_skips_unknown_backend_with_reason(numpy_run: dict[str, Any]) -> None:
    skipped = numpy_run["backends"][1]
    assert skipped["name"] == "no-such-backend" and skipped["status"] == "skipped"
    assert "unknown backend" in skipped["reason"]


def test_run_records_machine_and_environment(numpy_run: dict[str, Any]) -> None:
    machine = numpy_run["machine"]
    assert machine["cores"] >= 1 and machine["cpu"]
    assert numpy_run["backends"][0]["environment"]["numpy"]
    json.dumps(numpy_run)  # results.json must be plain JSON


def test_report_and_plots_are_written(numpy_run: dict[str, Any], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the plots need matplotlib (the bench extra)")
    names = plots.write(numpy_run, tmp_path)
    assert sorted(names) == ["throughput_cpu_bfloat16.png", "throughput_cpu_float32.png"]
    for name in names:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = report.write(numpy_run, tmp_path, names).read_text(encoding="utf-8")
    assert "shared, busy machine" in text
    assert "## Headline: layer_norm, float32, cpu" in text
    assert "| numpy | 2x3x4 (axis=1) |" in text
    assert "skipped: " in text and "no-such-backend" in text
    assert "## Agreement with the float64 reference" in text
    assert json.loads((tmp_path / "results.json").read_text(encoding="utf-8")) == numpy_run


def test_headline_table_has_one_row_per_backend_and_shape(numpy_run: dict[str, Any]) -> None:
    lines = report.headline_table(numpy_run, "cpu").splitlines()
    assert len(lines) == 2 + len(TINY)
    assert lines[2].startswith("| numpy | 2x8 |") and lines[2].count("1x") == 2


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(9.997e-4, "1 ms"), (0.99996, "1 s"), (9.9996e-7, "1 µs"), (9.994e-4, "999 µs"), (1.234e-5, "12.3 µs")],
)
def test_times_take_the_unit_of_their_rounded_value(seconds: float, shown: str) -> None:
    """999.7 µs was written "1e+03 µs"."""
    assert report.format_time(seconds) == shown


@pytest.mark.parametrize(
    ("value", "shown"), [(1180.4, "1180"), (1995.0, "1995"), (999.7, "1000"), (387.2, "387"), (0.6864, "0.686")]
)
def test_numbers_of_a_thousand_and_more_are_written_whole(value: float, shown: str) -> None:
    """The H100 report's GB/s read 1.18e+03, and a copy's 1995 GB/s read 2e+03."""
    assert report.format_number(value) == shown


def test_a_pipe_in_a_skip_reason_stays_in_its_table_cell(numpy_run: dict[str, Any]) -> None:
    """A reason such as "no | jax" split the Backends row into one column more than its header."""
    skipped = {"name": "piped", "status": "skipped", "reason": "ImportError: no | jax"}
    lines = report.backends_section({**numpy_run, "backends": [*numpy_run["backends"], skipped]})
    rows = [row for row in "\n".join(lines).splitlines() if row.startswith("|")]
    columns = [len(re.split(r"(?<!\\)\|", row)) for row in rows]
    assert columns == [columns[0]] * len(rows) and "no \\| jax" in rows[-1]


def test_an_error_quoting_names_in_backticks_stays_one_code_span(numpy_run: dict[str, Any]) -> None:
    """Keras quotes names in backticks: "`policy`" closed the report's code span early and left "``" behind."""
    message = "ValueError: Cannot convert `policy` into a valid pair (`mode`, ``x``)"
    record = {**numpy_run["results"][0], "errors": {"native": message}}
    lines = report.notes_section({**numpy_run, "results": [record]})
    assert any(line.endswith(f"(native): ``` {message} ```") for line in lines)


def test_cli_rerenders_from_json(numpy_run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in.json"
    source.write_text(json.dumps(numpy_run), encoding="utf-8")
    assert cli.main(["--out", str(tmp_path / "out"), "--from-json", str(source), "--no-plots"]) == 0
    assert (tmp_path / "out" / "report.md").exists()
    assert "skipped no-such-backend" in capsys.readouterr().out


def test_checkpoint_receives_results_after_every_case() -> None:
    counts: list[int] = []
    data = runner.run(
        tiny_config(["numpy"]),
        clock=FakeClock(0.001),
        progress=False,
        checkpoint=lambda d: counts.append(len(d["results"])),
    )
    if data["backends"][0]["status"] != "ran":
        pytest.skip(f"numpy backend not available: {data['backends'][0].get('reason')}")
    assert counts == [4, 8]  # two shapes, 2 ops x 2 passes each
    assert [c["case"] for c in data["case_seconds"]] == ["2x8 float32 cpu", "2x3x4 float32 cpu"]


def test_process_clock_refuses_gpu_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    from layernorm_core.protocol import BackendInfo

    class GpuToo(BrokenNative):
        def device_kinds(self) -> tuple[str, ...]:
            return ("cuda", "cpu")

    monkeypatch.setattr(runner, "backend_info", lambda name: BackendInfo("1", ("cpu", "cuda"), ("float32",)))
    config = tiny_config(["numpy"])
    config.clock, config.device = "process", "cuda"
    plan = runner.plan_backend("numpy", config, lambda _: GpuToo())
    assert plan.adapter is None and "process clock cannot time cuda" in plan.record["reason"]
    config.device = "auto"  # the process clock makes auto pick the CPU
    assert runner.plan_backend("numpy", config, lambda _: GpuToo()).device == "cpu"
    config.clock = "wall"
    assert runner.plan_backend("numpy", config, lambda _: GpuToo()).device == "cuda"


def test_cli_quick_config() -> None:
    config = cli.config_from(cli.parser().parse_args(["--out", "x", "--quick", "--backend", "numpy"]))
    assert [s.label for s in config.shapes] == list(QUICK_SHAPES)
    assert list(config.dtypes) == ["float32"] and list(config.backends or []) == ["numpy"]
    assert config.settings == runner.QUICK and config.clock == "wall"
    config = cli.config_from(cli.parser().parse_args(["--out", "x", "--clock", "process"]))
    assert config.clock == "process" and len(config.shapes) == 5


def test_cli_measures_a_repeated_option_once() -> None:
    """--backend numpy --backend numpy planned numpy twice: every case ran twice and its rows showed twice."""
    repeated = ["--backend", "numpy", "--dtype", "float32", "--shape", "1x768"] * 2
    config = cli.config_from(cli.parser().parse_args(["--out", "x", *repeated]))
    assert config.backends == ["numpy"] and list(config.dtypes) == ["float32"]
    assert [shape.label for shape in config.shapes] == ["1x768"]


def test_cli_records_the_arguments_it_was_given(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """main(argv) recorded sys.argv as the run's command: the report's "Command:" named another command."""

    class PlannedError(Exception):
        pass

    def capture(config: runner.Config, **kwargs: object) -> None:
        raise PlannedError(config.command)

    monkeypatch.setattr(runner, "run", capture)
    argv = ["--out", str(tmp_path), "--backend", "numpy", "--no-plots"]
    with pytest.raises(PlannedError) as planned:
        cli.main(argv)
    assert str(planned.value) == shlex.join(["python", "-m", "benchmarks", *argv])


# -- failures are recorded, not raised --------------------------------------------------------------------------


class BrokenNative(FrameworkAdapter):
    """The numpy adapter with a native baseline that fails."""

    def __init__(self) -> None:
        self.inner = load("numpy")
        self.backend = "numpy"

    def environment(self, device: str) -> dict[str, Any]:
        return {}

    def device_kinds(self) -> tuple[str, ...]:
        return ("cpu",)

    def to_device(self, array: Any, dtype: str, device: str) -> Any:
        return self.inner.to_device(array, dtype, device)

    def to_host(self, array: Any) -> Any:
        return self.inner.to_host(array)

    def sync(self, out: Any) -> None:
        pass

    def ours(self, op: str, pass_: str, case: Case, weight: Any, bias: Any) -> Any:
        return self.inner.ours(op, pass_, case, weight, bias)

    def native(self, op: str, pass_: str, case: Case, weight: Any, bias: Any) -> Any:
        raise RuntimeError("no native baseline here")

    def copy(self, case: Case) -> Any:
        return self.inner.copy(case)


def test_a_failing_baseline_is_recorded_and_the_rest_still_runs() -> None:
    data = runner.run(
        tiny_config(["numpy"]), clock=FakeClock(0.001), progress=False, load_adapter=lambda _: BrokenNative()
    )
    if data["backends"][0]["status"] != "ran":
        pytest.skip(f"numpy backend not available: {data['backends'][0].get('reason')}")
    for record in data["results"]:
        assert record["native"] is None and record["time_vs_native"] is None
        assert record["errors"]["native"].startswith("RuntimeError: no native baseline here")
        assert record["ours"] is not None and record["percent_of_floor"] is not None


def test_a_failing_adapter_skips_its_backend() -> None:
    def refuse(name: str) -> FrameworkAdapter:
        raise LookupError(f"no benchmark adapter for backend {name!r}")

    data = runner.run(tiny_config(["numpy"]), clock=FakeClock(0.001), progress=False, load_adapter=refuse)
    assert data["results"] == []
    assert data["backends"][0]["status"] == "skipped"
    assert "no benchmark adapter" in data["backends"][0]["reason"]


# -- each framework's adapter builds and runs a tiny case ---------------------------------------------------------


@pytest.mark.parametrize("framework", ["numpy", "torch", "jax", "tensorflow"])
def test_adapter_runs_a_tiny_case(framework: str) -> None:
    if framework != "numpy":
        pytest.importorskip(framework)
    if framework == "jax":
        pytest.importorskip("flax")
    data = runner.run(tiny_config([framework]), clock=FakeClock(0.001), progress=False)
    backend = data["backends"][0]
    if backend["status"] != "ran":
        pytest.skip(f"{framework} backend not available: {backend.get('reason')}")
    assert len(data["results"]) == 2 * 2 * 2
    errors = {(r["op"], r["pass"], r["shape"]): r["errors"] for r in data["results"] if r["errors"]}
    assert errors == {}


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_jax_baseline_takes_its_parameters_as_arrays_like_ours(op: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Flax baseline's jitted function took an nnx.State, which flax flattens in Python on every call: 10-20 us
    at 1x768 that ours, given plain arrays, does not pay, so the latency shape read ours / native well under 1."""
    pytest.importorskip("flax")
    import jax

    from benchmarks.frameworks import jax as jax_adapter

    handed: dict[str, tuple[Any, ...]] = {}
    jitted = jax_adapter._jitted

    def recording(forward: Any, pass_: str, params: tuple[Any, ...]) -> Any:
        handed[pass_] = params
        return jitted(forward, pass_, params)

    monkeypatch.setattr(jax_adapter, "_jitted", recording)
    adapter = jax_adapter.Adapter()
    case = Case(TINY[0], "float32", "cpu")
    weight, bias = (adapter.to_device(np.full(8, value, np.float32), "float32", "cpu") for value in (1.5, 0.25))
    x, dy = (adapter.to_device(np.linspace(-1, 1, 16, dtype=np.float32).reshape(2, 8), "float32", "cpu"),) * 2
    for pass_ in ("forward", "forward+backward"):
        fn, _ = adapter.native(op, pass_, case, weight, bias)
        jax.block_until_ready(fn((x, dy)))
    expected = [1.5, 0.25] if op == "layer_norm" else [1.5]
    for params in handed.values():
        assert all(isinstance(param, jax.Array) for param in params)
        assert sorted(float(param[0]) for param in params) == sorted(expected)


def test_tensorflow_sync_waits_once_without_reading_each_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sync read back an element of every output, two eager ops each: 640 us per forward+backward repeat on
    the CPU, timed with it, where syncing the devices takes 19 us."""
    tf = pytest.importorskip("tensorflow")
    from benchmarks.frameworks import tensorflow as tf_adapter

    class Untouchable:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"the sync read an output ({name})")

    waits: list[None] = []
    monkeypatch.setattr(tf.test.experimental, "sync_devices", lambda: waits.append(None))
    tf_adapter.Adapter().sync((Untouchable(), [Untouchable(), Untouchable()]))
    assert len(waits) == 1


def test_torch_adapter_on_cuda() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    config = tiny_config(["torch"])
    config.device = "cuda"
    data = runner.run(config, clock=FakeClock(0.001), progress=False)
    assert data["backends"][0]["device"] == "cuda"
    assert all(r["errors"] == {} and r["device"] == "cuda" for r in data["results"])


def test_only_the_benchmarked_frameworks_are_imported() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from benchmarks import runner\n"
        "from benchmarks.cases import Shape\n"
        "config = runner.Config(shapes=[Shape('2x8', (2, 8), -1)], dtypes=['float32'], backends=['numpy'],\n"
        "                       settings=runner.Settings(rounds=1, repeats=1, min_time=0.0))\n"
        "data = runner.run(config, progress=False)\n"
        "print(len(data['results']))\n"
        "print(sorted(m for m in ('torch', 'jax', 'tensorflow', 'keras', 'flax') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.strip().splitlines()[-2:] == ["4", "[]"]


def test_torch_speed_breakdown_times_every_piece(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    from benchmarks import torch_speed

    torch_speed.main(["--breakdown", "--rounds", "1", "--dtypes", "bfloat16", "--shapes", "4x32", "--device", "cpu"])
    out = capsys.readouterr().out
    for op in ("layer_norm", "rms_norm"):
        assert f"{op} forward, bfloat16, (4, 32)" in out and f"{op} forward+backward, bfloat16, (4, 32)" in out
    pieces = (
        "core: check_forward",
        "core: local_engine",
        "torch.native_layer_norm",
        "layernorm.layer_norm(",
        "torch.rms_norm",
        "backend.rms_norm(spec)",
        "layernorm.rms_norm(backend=)",
    )
    assert all(piece in out for piece in pieces)
    assert out.count("core: check_forward") == 2  # forward only
    assert out.count("torch.native_layer_norm") == out.count("torch.rms_norm") == 2  # forward, forward+backward


def test_torch_speed_times_a_half_layer_norm_against_torch_on_float32_copies(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("torch")
    from benchmarks import torch_speed

    args = ["--rounds", "1", "--ops", "layer_norm", "--dtypes", "float32,bfloat16", "--shapes", "4x32"]
    torch_speed.main([*args, "--device", "cpu"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip().startswith("4x32")]
    assert [row[1] for row in rows] == ["float32", "bfloat16"] * 2  # forward, then forward+backward
    assert all(row[-1] == "-" for row in rows if row[1] == "float32")
    assert all(float(row[-1]) > 0 for row in rows if row[1] == "bfloat16")


def test_torch_profile_lists_each_candidates_ops(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    from benchmarks import torch_profile

    args = ["--ops", "layer_norm", "--dtypes", "bfloat16", "--shapes", "4x32", "--steps", "2", "--top", "50"]
    torch_profile.main([*args, "--device", "cpu"])
    out = capsys.readouterr().out
    forward, backward = out.split("layer_norm forward+backward, bfloat16, 4x32")
    assert "layer_norm forward, bfloat16, 4x32" in forward
    ours, torchs = backward.split("  torch: ")
    assert "HalfLayerNormCPUBackward" in ours and "HalfLayerNormCPUBackward" not in torchs  # float32 gradients
    assert "NativeLayerNormBackward0" in torchs
    for table in (*forward.split("  torch: "), ours, torchs):
        total = float(table.split(" us a call")[0].split()[-1])
        rows = [line.split() for line in table.splitlines() if line.startswith("    ") and "op" not in line.split()]
        printed = sum(float(row[0]) for row in rows)  # each rounded to 0.01
        assert total > 0 and printed == pytest.approx(total, abs=0.005 * (len(rows) + 1))


def test_torch_profile_counts_gpu_events_once(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    from torch.autograd import DeviceType

    from benchmarks import torch_profile

    class Event:
        def __init__(self, key: str, device_type: Any, device_us: float, cpu_us: float, note: bool = False) -> None:
            self.key, self.count, self.device_type, self.is_user_annotation = key, 4, device_type, note
            self.self_device_time_total, self.self_cpu_time_total = device_us, cpu_us

    mul = (
        "void at::native::elementwise_kernel<128, 2, at::native::BinaryFunctor<float, float, float, MulFunctor<float>>>"
    )
    div = mul.replace("Mul", "Div")  # the same first 100 characters
    events = [
        Event("aten::mul", DeviceType.CPU, 30.0, 8.0),  # reports its kernel's device time as its own
        Event(mul, DeviceType.CUDA, 30.0, 0.0),
        Event(div, DeviceType.CUDA, 10.0, 0.0),
        Event("a record_function span", DeviceType.CUDA, 40.0, 0.0, note=True),  # the kernels inside it, again
        Event("aten::empty", DeviceType.CPU, 0.0, 2.0),
    ]

    class FakeProfile:
        def __init__(self, activities: Any) -> None:
            pass

        def __enter__(self) -> FakeProfile:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def key_averages(self) -> list[Event]:
            return events

    monkeypatch.setattr(torch_profile, "profile", FakeProfile)
    monkeypatch.setattr(torch_profile, "sync_for", lambda device: lambda out: out)
    on_gpu = torch_profile.profile_candidate(lambda: None, "cuda", steps=2)
    assert on_gpu.ops == (torch_profile.OpTime(mul, 2.0, 15.0), torch_profile.OpTime(div, 2.0, 5.0))
    assert on_gpu.total_us == 20.0
    lines = torch_profile.format_profile("ours", on_gpu, top=2)
    assert lines[0] == "  ours: 20.00 us a call" and lines[2].endswith(mul) and lines[3].endswith(div)
    on_cpu = torch_profile.profile_candidate(lambda: None, "cpu", steps=2)
    assert [op.name for op in on_cpu.ops] == ["aten::mul", "aten::empty"] and on_cpu.total_us == 5.0


@pytest.mark.parametrize(
    "options",
    [
        ["--backend", "nope"],
        ["--device", "foo"],
        ["--rounds", "0"],
        ["--threads", "-1"],
        ["--min-time", "0"],
        ["--clock", "process", "--device", "cuda"],
        ["--out-is-a-file"],
        ["--out-under-a-file"],
        ["--from-json", "missing.json"],
        ["--from-json", "not-json.json"],
        ["--from-json", "not-results.json"],
        ["--from-json", "empty-machine.json"],
    ],
    ids=lambda options: "-".join(options).lstrip("-"),
)
def test_cli_refuses_what_it_cannot_use_before_the_run(
    options: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Each measured nothing and exited 0 (a typo in CI passed), or raised a traceback."""

    monkeypatch.setattr(runner, "run", unreachable)
    (tmp_path / "not-json.json").write_text("{")
    (tmp_path / "not-results.json").write_text("{}")
    empty_machine = {"schema": runner.SCHEMA, **{key: [] for key in runner.RESULTS_KEYS}, "machine": {}, "command": ""}
    (tmp_path / "empty-machine.json").write_text(json.dumps({**empty_machine, "settings": {}}))
    (tmp_path / "file").write_text("")
    outs = {"--out-is-a-file": tmp_path / "file", "--out-under-a-file": tmp_path / "file" / "out"}
    out = outs.get(options[0], tmp_path / "out")  # under a file: mkdir raised NotADirectoryError, exit 1
    options = [str(tmp_path / o) if o.endswith(".json") else o for o in options if o not in outs]
    with pytest.raises(SystemExit) as exited:
        cli.main(["--out", str(out), "--no-plots", *options])
    assert exited.value.code == 2


def test_cli_exits_1_when_every_backend_was_skipped(numpy_run: dict[str, Any], tmp_path: Path) -> None:
    skipped = {**numpy_run, "backends": [b for b in numpy_run["backends"] if b["status"] != "ran"], "results": []}
    source = tmp_path / "in.json"
    source.write_text(json.dumps(skipped), encoding="utf-8")
    assert cli.main(["--out", str(tmp_path / "out"), "--from-json", str(source), "--no-plots"]) == 1


@pytest.mark.parametrize(
    "options",
    [["--ops", "foo"], ["--dtypes", "float8"], ["--shapes", "8x"], ["--shapes", "32x128x1024"], ["--device", "tpu"]],
    ids=lambda options: "-".join(options).lstrip("-"),
)
def test_torch_speed_refuses_what_it_cannot_use(options: list[str]) -> None:
    """--ops foo timed rms_norm under the label foo; the others raised tracebacks."""
    pytest.importorskip("torch")
    from benchmarks import torch_speed

    with pytest.raises(SystemExit) as exited:
        torch_speed.main(options)
    assert exited.value.code == 2


@pytest.mark.parametrize(
    "options",
    [["--ops", "foo"], ["--dtypes", "float8"], ["--shapes", "8x"], ["--steps", "0"], ["--mode", "backward"]],
    ids=lambda options: "-".join(options).lstrip("-"),
)
def test_torch_profile_refuses_what_it_cannot_use(options: list[str]) -> None:
    pytest.importorskip("torch")
    from benchmarks import torch_profile

    with pytest.raises(SystemExit) as exited:
        torch_profile.main(options)
    assert exited.value.code == 2


@pytest.mark.parametrize(
    "options",
    [["--rounds", "0"], ["--rounds", "-1"], ["--dtype", "int8"], ["--dtype", "float64"]],
    ids=lambda options: "-".join(options).lstrip("-"),
)
def test_tensorflow_speed_refuses_what_it_cannot_use(options: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """--rounds -1 ran every case and died in statistics.median, --rounds 0 ran the default 5, --dtype int8 reached
    Keras before failing."""
    pytest.importorskip("tensorflow")
    from benchmarks import tensorflow_speed

    monkeypatch.setattr(tensorflow_speed, "run_case", unreachable)
    with pytest.raises(SystemExit) as exited:
        tensorflow_speed.main(["--quick", *options])
    assert exited.value.code == 2


@pytest.mark.parametrize(
    ("tool", "options"),
    [
        ("numpy_forward", ["--rounds", "0"]),
        ("numpy_forward", ["--rows", "0"]),
        ("numpy_forward", ["--cols", "-4"]),
        ("numpy_channels", ["--rounds", "0"]),
    ],
    ids=lambda value: value if isinstance(value, str) else "-".join(value).lstrip("-"),
)
def test_numpy_scripts_refuse_counts_below_one(tool: str, options: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """--rounds 0 timed every contender and then died in statistics.median on no samples."""
    import importlib

    module = importlib.import_module(f"benchmarks.{tool}")

    monkeypatch.setattr(module, "interleaved", unreachable)
    with pytest.raises(SystemExit) as exited:
        module.main(options)
    assert exited.value.code == 2


def test_jax_speed_refuses_the_process_clock_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU, --clock process timed only the host's share of each call, and printed it as the call's time."""
    jax = pytest.importorskip("jax")
    from benchmarks import jax_speed

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(jax_speed, "run_case", unreachable)
    with pytest.raises(SystemExit) as exited:
        jax_speed.main(["--clock", "process", "--shapes", "8x64"])
    assert exited.value.code == 2


@pytest.mark.parametrize("tool", ["torch_profile", "torch_speed"])
def test_torch_tools_refuse_cuda_where_torch_sees_none(tool: str, capsys: pytest.CaptureFixture[str]) -> None:
    """torch_speed --device cuda without a GPU raised a traceback from torch's lazy CUDA init and exited 1."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("torch sees a CUDA device here")
    import importlib

    with pytest.raises(SystemExit) as exited:
        importlib.import_module(f"benchmarks.{tool}").main(["--device", "cuda", "--shapes", "8x64"])
    assert exited.value.code == 2 and "torch sees no CUDA device" in capsys.readouterr().err


def test_missing_matplotlib_is_refused_before_the_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Without the bench extra, the run used to fail at its end, writing the plots; --no-plots needs no matplotlib."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else find_spec(name, *a)
    )

    monkeypatch.setattr(runner, "run", unreachable)
    with pytest.raises(SystemExit) as exited:
        cli.main(["--out", str(tmp_path), "--quick"])
    assert exited.value.code == 2
    assert "the plots need matplotlib: pip install -e '.[bench]'" in capsys.readouterr().err
    with pytest.raises(AssertionError, match="ran before refusing"):
        cli.main(["--out", str(tmp_path), "--quick", "--no-plots"])


def test_tensorflow_thread_pools_are_reported_as_set_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """--threads sets TF_NUM_INTRAOP_THREADS, which tf.config does not report: the report said 0 (one per core)."""
    pytest.importorskip("tensorflow")
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "1")
    monkeypatch.setenv("TF_NUM_INTEROP_THREADS", "1")
    environment = load("tensorflow").environment("cpu")
    assert (environment["intra_op_threads"], environment["inter_op_threads"]) == (1, 1)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_agreement_check_sees_another_eps_and_a_one_pass_variance(dtype: str) -> None:
    """On the benchmark's own x ~ N(0.5, 2) alone, a baseline with eps 1e-6 or E[x^2] - E[x]^2 passed the check."""
    pytest.importorskip("ml_dtypes")
    import numpy as np

    from benchmarks.frameworks.base import host_inputs

    adapter = load("numpy")
    case = Case(Shape("16x768", (16, 768), -1), dtype, "cpu")
    pairs, params = host_inputs(case, 1)
    x, w, b = (adapter.to_device(a, dtype, "cpu") for a in (pairs[0][0], params.weight, params.bias))

    def baseline(eps: float, one_pass: bool = False) -> Callable[[tuple[Any, Any]], Any]:
        def forward(pair: tuple[Any, Any]) -> Any:
            x32 = pair[0].astype(np.float32)
            mean = x32.mean(-1, keepdims=True)
            var = (x32 * x32).mean(-1, keepdims=True) - mean * mean if one_pass else x32.var(-1, keepdims=True)
            y = (x32 - mean) / np.sqrt(np.maximum(var, 0) + eps) * w.astype(np.float32) + b.astype(np.float32)
            return y.astype(pair[0].dtype)

        return forward

    assert adapter.check("layer_norm", case, baseline(1e-5), x, w, b) <= 1
    assert adapter.check("layer_norm", case, baseline(1e-6), x, w, b) > 1
    if dtype == "float32":  # bfloat16's tolerance is wider than the one-pass error at an offset of 300
        assert adapter.check("layer_norm", case, baseline(1e-5, one_pass=True), x, w, b) > 1
