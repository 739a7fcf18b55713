"""layernorm_conformance: the shared conformance suite every layernorm backend must pass.

The package is itself the pytest plugin (the hooks and fixtures of `layernorm_conformance.plugin`, re-exported
here), so one name loads it: ``-p layernorm_conformance``. Run it against any registered backend, built-in or
third-party::

    python -m layernorm_conformance --backend mybackend
    pytest -p layernorm_conformance --pyargs layernorm_conformance.checks --backend mybackend

Results are compared with the float64 reference (`layernorm_core.reference`) under the tolerance table
(`layernorm_core.tolerances`); `layernorm_conformance.matrix` runs the suite for every installed backend and
prints the backend x device x dtype matrix. See docs/conformance.md.
"""

CHECKS_PACKAGE = "layernorm_conformance.checks"
"""The package holding the checks (``pytest --pyargs`` target). Defined before the plugin import, which uses it."""

from layernorm.cli import CHECK_REQUIRES, CHECK_REQUIRES_INSTALL  # noqa: E402
from layernorm_core.errors import missing_framework_error  # noqa: E402

try:
    from layernorm_conformance.plugin import (  # the plugin's hooks, so `-p layernorm_conformance` loads it
        examples,
        numerics,
        pytest_addoption,
        pytest_configure,
        pytest_generate_tests,
        pytest_runtest_makereport,
        pytest_sessionfinish,
        pytest_terminal_summary,
        target_loads,
    )
except ImportError as exc:
    if exc.name not in CHECK_REQUIRES:
        raise
    raise missing_framework_error(__name__, ", ".join(CHECK_REQUIRES), exc, CHECK_REQUIRES_INSTALL) from exc

__all__ = [
    "CHECKS_PACKAGE",
    "examples",
    "numerics",
    "pytest_addoption",
    "pytest_configure",
    "pytest_generate_tests",
    "pytest_runtest_makereport",
    "pytest_sessionfinish",
    "pytest_terminal_summary",
    "target_loads",
]
