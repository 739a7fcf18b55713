"""nox sessions: unit tests, the conformance suite per backend (one framework per virtualenv), the matrix, lint,
benchmarks.

``nox`` runs lint, the unit tests, every conformance session and the matrix; ``nox -s bench`` and the oldest-*
sessions (each framework's tests on the oldest release the package declares) on demand.
Virtualenvs are reused; torch's version comes from the constraints file (constraints/cpu.txt says where its CPU build
comes from).
"""

from __future__ import annotations

from pathlib import Path

import nox

BACKENDS = {"numpy": "test", "torch": "test,torch", "jax": "test,jax", "tensorflow": "test,tensorflow"}
"""Each backend's conformance virtualenv holds only its framework (NumPy is a core dependency) and test tools."""
CONSTRAINTS = ("-c", "constraints/cpu.txt")
RESULTS = Path("conformance-results/nox")
"""The conformance sessions' JSON files, which `matrix` merges: not `check`'s default folder, whose partial runs
(-k, --dtype) would reach the committed table."""
CONFORMANCE_ENV = {"jax": {"JAX_ENABLE_X64": "1"}}
"""Environment of each backend's conformance run: JAX runs float64 only with x64 enabled, and it is checked too."""
MATRIX_DOC = "docs/conformance.md"

nox.options.sessions = ["lint", "tests", *(f"conformance-{b}" for b in BACKENDS), "matrix"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "virtualenv"  # pip sees PIP_FIND_LINKS (a local torch wheel); uv does not


@nox.session
def tests(session: nox.Session) -> None:
    """Unit tests (tests/), with every framework installed."""
    session.install("-e", ".[test,all,bench]", *CONSTRAINTS)
    session.run("python", "-m", "pytest", "tests", "-q", *session.posargs)


def _conformance_session(backend: str, extras: str) -> None:
    def conformance(session: nox.Session) -> None:
        session.install("-e", f".[{extras}]", *CONSTRAINTS)
        out = RESULTS / f"{backend}.json"
        out.unlink(missing_ok=True)
        session.run(
            "python", "-m", "layernorm_conformance", "-q",
            "--backend", backend, "--conformance-json", str(out), *session.posargs,
            env=CONFORMANCE_ENV.get(backend, {}),
        )  # fmt: skip

    conformance.__doc__ = f"The conformance suite on the {backend} backend, in a virtualenv with only its framework."
    nox.session(name=f"conformance-{backend}")(conformance)


for _backend, _extras in BACKENDS.items():
    _conformance_session(_backend, _extras)


OLDEST_TESTS = {
    "torch": ("test_torch_*.py",),
    "jax": ("test_jax_*.py",),
    "tensorflow": ("test_tensorflow_*.py", "test_keras_backends.py"),
}
"""The unit tests of each framework, for the oldest-* sessions."""


def _oldest_session(backend: str, patterns: tuple[str, ...]) -> None:
    def oldest(session: nox.Session) -> None:
        extras = "test,jax,flax" if backend == "jax" else f"test,{backend}"
        session.install("-e", f".[{extras}]", "-c", "constraints/oldest.txt")
        files = sorted(str(p) for pattern in patterns for p in Path("tests").glob(pattern))
        session.run("python", "-m", "pytest", "-q", *files)
        session.run(
            "python", "-m", "layernorm_conformance", "-q", "--backend", backend, *session.posargs,
            env=CONFORMANCE_ENV.get(backend, {}),
        )  # fmt: skip

    oldest.__doc__ = (
        f"The {backend} unit tests and conformance on the oldest {backend} the package declares "
        "(constraints/oldest.txt). Not in nox's default run."
    )
    nox.session(name=f"oldest-{backend}")(oldest)


for _backend, _patterns in OLDEST_TESTS.items():
    _oldest_session(_backend, _patterns)


@nox.session
def matrix(session: nox.Session) -> None:
    """Merge the conformance sessions' JSON into the matrix, print it and write it into docs/conformance.md."""
    session.install("-e", ".[test]")  # layernorm_conformance is a pytest plugin package: it imports pytest
    found = sorted(str(p) for p in RESULTS.glob("*.json"))
    if not found:
        session.error(f"no results in {RESULTS}/: run the conformance-* sessions first")
    session.run("python", "-m", "layernorm_conformance.matrix", "--merge", *found, "--markdown", MATRIX_DOC)


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff (lint and format check) and mypy."""
    session.install("-e", ".[dev,all]", *CONSTRAINTS)  # mypy sees the frameworks' own types
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """The quick cross-framework benchmark into bench-results/; arguments after -- replace the default."""
    session.install("-e", ".[bench,all]", *CONSTRAINTS)
    args = session.posargs or ["--quick", "--out", "bench-results"]
    session.run("python", "-m", "benchmarks", *args)
