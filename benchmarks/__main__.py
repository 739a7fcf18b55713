"""``python -m benchmarks --out DIR [--quick] [--backend NAME ...] [--dtype ...] [--shape ...] [--device ...]``."""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from benchmarks import machine, plots, report, runner
from benchmarks.cases import DTYPES, SHAPES, select_shapes
from layernorm.cli import positive_int
from layernorm_core.registry import registry


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Time layernorm's layer_norm and rms_norm on every installed backend beside the framework's "
        "own normalization and a plain copy; write results.json, report.md and PNG plots.",
    )
    p.add_argument("--out", type=Path, required=True, help="folder for results.json, report.md and the plots")
    p.add_argument("--quick", action="store_true", help="a subset of shapes, float32 only, few repeats (< 1 min)")
    p.add_argument("--backend", action="append", help="benchmark only this backend (repeatable); default: all")
    p.add_argument("--dtype", action="append", choices=DTYPES, help="only this dtype (repeatable)")
    p.add_argument("--shape", action="append", choices=[s.label for s in SHAPES], help="only this shape (repeatable)")
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda", "gpu"),
        default="auto",
        help="cpu, cuda or gpu; auto (default): the accelerator if present",
    )
    p.add_argument(
        "--threads", type=positive_int, help="compute threads per framework (default: each framework's own choice)"
    )
    p.add_argument(
        "--clock",
        choices=sorted(runner.CLOCKS),
        default="wall",
        help="wall (default) or process: CPU time of this process, steadier on a busy machine (CPU only)",
    )
    p.add_argument("--rounds", type=positive_int, help="interleaved rounds (default 5, quick 3)")
    p.add_argument("--repeats", type=positive_int, help="repeats per round (default 3, quick 1)")
    p.add_argument(
        "--min-time", type=_positive_seconds, help="seconds each repeat lasts at least (default 0.01, quick 0.005)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--from-json", type=Path, help="re-render report.md and plots from an existing results.json")
    return p


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0; got {text}")
    return value


def _check(command: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """command.error (exit 2) for what the options cannot mean, before anything runs or is written."""
    unknown = [name for name in args.backend or () if name not in registry.names()]
    if unknown:
        command.error(f"unknown backend {', '.join(unknown)}; registered: {', '.join(registry.names())}")
    if args.clock == "process" and args.device in runner.GPU_KINDS:
        command.error(f"--clock process cannot time {args.device} work (it counts this process's CPU time)")
    blocking = next((path for path in (args.out, *args.out.parents) if path.exists() and not path.is_dir()), None)
    if blocking is not None:
        command.error(f"--out {args.out}: {blocking} is a file, not a folder")
    if args.from_json and not args.from_json.is_file():
        command.error(f"--from-json {args.from_json}: no such file")


def config_from(args: argparse.Namespace, argv: list[str] | None = None) -> runner.Config:
    """The runner's configuration for parsed arguments; ``argv``, the arguments given (default: sys.argv's)."""
    settings = runner.QUICK if args.quick else runner.FULL
    overrides = {"rounds": args.rounds, "repeats": args.repeats, "min_time": args.min_time}
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    dtypes = _once(args.dtype) or (["float32"] if args.quick else list(DTYPES))
    return runner.Config(
        shapes=select_shapes(_once(args.shape), args.quick),
        dtypes=dtypes,
        backends=_once(args.backend),
        device=args.device,
        settings=settings,
        clock=args.clock,
        command=shlex.join(["python", "-m", "benchmarks", *(sys.argv[1:] if argv is None else argv)]),
    )


def _once(names: list[str] | None) -> list[str] | None:
    """A repeatable option's values without repeats (``--backend torch --backend torch`` ran torch twice)."""
    return None if names is None else list(dict.fromkeys(names))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks (or re-render), write the report, print its path and the headline table."""
    command = parser()
    args = command.parse_args(argv)
    if not args.no_plots and importlib.util.find_spec("matplotlib") is None:  # before the run, not after it
        command.error("the plots need matplotlib: pip install -e '.[bench]' in this checkout, or pass --no-plots")
    _check(command, args)
    if args.from_json:
        try:
            data = json.loads(args.from_json.read_text(encoding="utf-8"))
        except ValueError as exc:
            command.error(f"--from-json {args.from_json} is not a results.json: {exc}")
        missing = _missing_results_keys(data)
        if missing:
            command.error(f"--from-json {args.from_json} is not a results.json of schema {runner.SCHEMA}: {missing}")
        try:  # a record the report cannot read, before anything is written
            report.render(data, [])
        except (KeyError, TypeError, ValueError) as exc:
            command.error(f"--from-json {args.from_json} is not a results.json: the report cannot read {exc!r}")
    else:
        if args.threads:
            machine.limit_threads(args.threads)
        args.out.mkdir(parents=True, exist_ok=True)
        data = runner.run(
            config_from(args, argv),
            progress=not args.no_progress,
            checkpoint=lambda partial: report.save(partial, args.out),
        )
    args.out.mkdir(parents=True, exist_ok=True)
    names = [] if args.no_plots else plots.write(data, args.out)
    path = report.write(data, args.out, names)
    for device in report.devices(data):
        dtype = report.headline_dtype(data, device)
        print(f"\n{report.HEADLINE_OP}, {dtype}, {device}:\n{report.headline_table(data, device, dtype)}")
    skipped = [b for b in data["backends"] if b["status"] != "ran"]
    for backend in skipped:
        print(f"skipped {backend['name']}: {backend.get('reason', '')}")
    print(f"\nwrote {path}")
    if len(skipped) == len(data["backends"]):
        print("nothing was measured: every backend was skipped", file=sys.stderr)
        return 1
    return 0


def _missing_results_keys(data: object) -> str:
    """What keeps ``data`` from being a results.json that `runner.run` wrote (empty if nothing)."""
    if not isinstance(data, dict):
        return f"a {type(data).__name__}, not an object"
    if data.get("schema") != runner.SCHEMA:
        return f"schema {data.get('schema')!r}"
    missing = [key for key in runner.RESULTS_KEYS if key not in data]
    return f"no {', '.join(missing)}" if missing else ""


if __name__ == "__main__":
    raise SystemExit(main())
