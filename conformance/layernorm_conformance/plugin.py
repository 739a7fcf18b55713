"""The pytest plugin of the conformance suite: ``--backend``, ``--device``, ``--dtype``, result records.

Checks in `layernorm_conformance.checks` ask for the ``target`` (a backend on a device) and ``dtype`` arguments;
this plugin parametrizes them as backend x device x dtype with ids such as ``numpy-cpu-float32``, skips (with the
reason) a backend or device that is not present, and records every result for the JSON file and the matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import pytest

from layernorm.cli import positive_int
from layernorm_conformance import CHECKS_PACKAGE, results
from layernorm_conformance.numerics import Numerics
from layernorm_conformance.targets import Target, select_targets
from layernorm_core.dtypes import FLOAT_DTYPES
from layernorm_core.errors import BackendError
from layernorm_core.registry import registry

TARGETS = pytest.StashKey[list[Target]]()
RECORDS = pytest.StashKey[list[results.Record]]()
NUMERICS = pytest.StashKey[Numerics]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add the suite's options."""
    group = parser.getgroup("layernorm-conformance", "layernorm conformance suite")
    group.addoption(
        "--backend", action="append", default=None, metavar="NAME",
        help="backend to check (repeatable); default: every installed backend",
    )  # fmt: skip
    group.addoption(
        "--device", action="append", default=None, metavar="DEVICE",
        help="device to check: cpu, cuda, gpu, tpu (repeatable); default: every device each backend reports",
    )  # fmt: skip
    group.addoption(
        "--dtype", action="append", default=None, choices=FLOAT_DTYPES,
        help="dtype to check (repeatable); default: every dtype each backend declares",
    )  # fmt: skip
    group.addoption("--conformance-json", default=None, metavar="PATH", help="write every result to this JSON file")
    group.addoption(
        "--conformance-examples", type=positive_int, default=20, metavar="N",
        help="hypothesis examples per random check (default 20)",
    )  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    """Register the suite's marker and the record list."""
    config.addinivalue_line("markers", "conformance_dtypes(*names): run this check only for these dtypes")
    config.addinivalue_line(
        "markers",
        "conformance_params(argnames, factory): factory(target, dtype) gives the pytest.param list of argnames "
        "for each target (e.g. only the tracers of its framework)",
    )
    config.stash[RECORDS] = []
    for name in config.getoption("backend") or ():
        try:
            registry.declaration(name)
        except BackendError as exc:
            raise pytest.UsageError(f"layernorm conformance: {exc}") from None


def targets(config: pytest.Config) -> list[Target]:
    """The run's targets, computed once per session from --backend/--device/--dtype."""
    if TARGETS not in config.stash:
        try:
            config.stash[TARGETS] = select_targets(
                config.getoption("backend"), config.getoption("device"), config.getoption("dtype")
            )
        except BackendError as exc:
            raise pytest.UsageError(f"layernorm conformance: {exc}") from None
    return config.stash[TARGETS]


def _is_check(metafunc: pytest.Metafunc) -> bool:
    return metafunc.module.__name__.startswith(CHECKS_PACKAGE + ".")


def _skip_marks(target: Target) -> list[pytest.MarkDecorator]:
    return [pytest.mark.skip(reason=target.skip)] if target.skip else []


def _per_target(metafunc: pytest.Metafunc, target: Target, dtype: str | None) -> list[Any]:
    """The extra parameters a ``conformance_params`` marker asks for this target (a single one if there is none)."""
    marker = metafunc.definition.get_closest_marker("conformance_params")
    if marker is None:
        return [pytest.param(id="")]
    argnames, factory = marker.args
    width = len([a for a in argnames.split(",") if a.strip()])
    if target.skip:
        return [pytest.param(*([None] * width), id="", marks=_skip_marks(target))]
    try:
        return list(factory(target, dtype))
    except BackendError:  # the backend fails to load: let the check fail on it, with the loader's message
        return [pytest.param(*([None] * width), id="")]


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``target`` (and ``dtype``) of the checks over the run's backends, devices and dtypes."""
    if not _is_check(metafunc) or "target" not in metafunc.fixturenames:
        return
    with_dtype = "dtype" in metafunc.fixturenames
    dtype_marker = metafunc.definition.get_closest_marker("conformance_dtypes")
    only = set(dtype_marker.args) if dtype_marker else set(FLOAT_DTYPES)
    params_marker = metafunc.definition.get_closest_marker("conformance_params")
    names = ["target", "dtype"] if with_dtype else ["target"]
    if params_marker is not None:
        names += [a.strip() for a in params_marker.args[0].split(",") if a.strip()]
    params = []
    for target in targets(metafunc.config):
        dtypes = [d for d in target.dtypes if d in only] if with_dtype else [None]
        if not dtypes and target.skip:  # it computes none of the dtypes asked for: one skip, with its reason
            dtypes = [None]
        for dtype in dtypes:
            head = (target, dtype) if with_dtype else (target,)
            base = f"{target.id}-{dtype}" if with_dtype else target.id
            for extra in _per_target(metafunc, target, dtype):
                params.append(
                    pytest.param(
                        *head,
                        *extra.values,
                        id=f"{base}-{extra.id}" if extra.id else base,
                        marks=[*_skip_marks(target), *extra.marks],
                    )
                )
    metafunc.parametrize(names, params)


@pytest.fixture(autouse=True)
def target_loads(request: pytest.FixtureRequest) -> None:
    """Fail a check of a backend that does not load with the loader's BackendError, before the check starts.

    Its parameters from a ``conformance_params`` factory are None (the factory could not ask the backend).
    """
    if "target" in request.fixturenames and request.node.module.__name__.startswith(CHECKS_PACKAGE + "."):
        request.getfixturevalue("target").module  # noqa: B018 - raises the BackendError of a broken target


@pytest.fixture
def numerics(request: pytest.FixtureRequest) -> Numerics:
    """Compares results with the reference and remembers the worst error ratio for the record."""
    recorder = Numerics()
    request.node.stash[NUMERICS] = recorder
    return recorder


@pytest.fixture
def examples(request: pytest.FixtureRequest) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Hypothesis settings for random checks: --conformance-examples examples, derandomized, no database."""
    hypothesis = pytest.importorskip("hypothesis")
    return hypothesis.settings(
        max_examples=request.config.getoption("conformance_examples"),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )


def _record(item: pytest.Item, report: pytest.TestReport) -> results.Record | None:
    params: dict[str, Any] = getattr(getattr(item, "callspec", None), "params", {})
    target = params.get("target")
    if "target" in getattr(item, "fixturenames", ()) and not isinstance(target, Target):
        return None  # an empty parameter set (no target declares the dtypes this check needs): not a result
    numerics = item.stash.get(NUMERICS, None)
    if report.skipped:
        longrepr = report.longrepr
        message = str(longrepr[2] if isinstance(longrepr, tuple) else longrepr)
    elif report.failed:
        crash = getattr(report.longrepr, "reprcrash", None)
        message = crash.message if crash is not None else str(report.longrepr).strip()[-500:]
    else:
        message = ""
    return {
        "check": getattr(item, "originalname", item.name),
        "id": item.name,
        "backend": target.backend if isinstance(target, Target) else results.REFERENCE,
        "device": target.device if isinstance(target, Target) else "-",
        "dtype": params.get("dtype") or "-",
        "outcome": report.outcome,
        "max_ratio": None if numerics is None else numerics.worst,
        "ratios": {} if numerics is None else dict(numerics.ratios),
        "message": message[:500],
        "duration": round(report.duration, 4),
    }


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Record the outcome of every check: its call phase, or a setup phase that skipped or failed."""
    report: pytest.TestReport = yield
    module = getattr(item, "module", None)
    if module is not None and module.__name__.startswith(CHECKS_PACKAGE + "."):
        outcome_phase = report.when == "call" or (report.when == "setup" and not report.passed)
        record = _record(item, report) if outcome_phase else None
        if record is not None:
            item.config.stash[RECORDS].append(record)
    return report


def _backend_versions(records: list[results.Record]) -> dict[str, Any]:
    versions: dict[str, Any] = {}
    for name in sorted({r["backend"] for r in records} - {results.REFERENCE}):
        try:
            info = registry.get(name).info()
            versions[name] = {"version": info.version, "devices": list(info.devices), "dtypes": list(info.dtypes)}
        except Exception as exc:
            versions[name] = {"version": None, "error": str(exc)}
    return versions


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Write the JSON records when --conformance-json is given."""
    path = session.config.getoption("conformance_json")
    records = session.config.stash.get(RECORDS, [])
    if path:
        results.write(path, records, _backend_versions(records))


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Print the backend x device x dtype matrix of this run."""
    records = config.stash.get(RECORDS, [])
    if records:
        terminalreporter.write_sep("=", "layernorm conformance matrix")
        terminalreporter.write_line(results.format_table(results.matrix(records)))
