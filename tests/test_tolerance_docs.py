"""The documents state the tolerance's passing rule as `layernorm_core.tolerances` states and applies it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import layernorm_core
from layernorm_core import tolerances

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = (ROOT / "docs" / "spec.md", ROOT / "docs" / "conformance.md")
RULE = re.compile(r"`+(\|actual - expected\| <= [^`]+)`+")


def _rules(text: str) -> list[str]:
    return [" ".join(rule.split()) for rule in RULE.findall(text)]


def test_each_document_states_the_modules_rule() -> None:
    (module_rule,) = _rules(tolerances.__doc__ or "")
    for document in DOCUMENTS:
        stated = _rules(document.read_text().replace("```\n", "`").replace("\n```", "`"))
        assert stated, f"{document.name} states no passing rule"
        assert set(stated) == {module_rule}, f"{document.name}: {stated} is not the module's {module_rule!r}"


def test_the_modules_rule_is_the_one_applied() -> None:
    """The floor term of that rule is applied: a float16 error of two subnormal units at 0 passes, three fail."""
    tol = tolerances.tolerance("float16", "output")
    assert tol.floor == 2 * 2.0**-24
    expected = np.zeros(4)
    assert tolerances.error_ratio(np.full(4, 2 * 2.0**-24), expected, tol, scale=1e-30) <= 1
    assert tolerances.error_ratio(np.full(4, 3 * 2.0**-24), expected, tol, scale=1e-30) > 1


def test_the_cond_term_is_taken_at_the_larger_of_scale_and_unit() -> None:
    """`xhat_units` gives y's unit as the weight's RMS: with it, an error of cond * kappa * |w| / 2 passes on a y
    far smaller than w (eps far above var), and the same error fails at y's own RMS; a unit below it changes
    nothing."""
    tol = tolerances.tolerance("float64", "output")
    expected, kappa = np.full(4, 1e-6), 100.0
    error = 0.5 * tol.cond * kappa * 2.0  # half the cond term at |w| = 2
    actual = expected + error
    assert tolerances.error_ratio(actual, expected, tol, kappa) > 1
    assert tolerances.error_ratio(actual, expected, tol, kappa, unit=2.0) <= 1
    assert tolerances.error_ratio(actual, expected, tol, kappa, unit=1e-9) == tolerances.error_ratio(
        actual, expected, tol, kappa
    )
    spec = layernorm_core.check_forward("layer_norm", np.zeros((3, 4)), np.full(4, 2.0), None, -1, 1e-5)
    units = tolerances.xhat_units(np.full(4, 2.0), np.full((3, 4), 3.0), spec)
    assert units == {"y": 2.0, "dweight": pytest.approx(3.0 * np.sqrt(3))}
