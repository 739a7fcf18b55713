"""Every comparison the conformance checks make judges y and dweight at their unit (`Problem.units`)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKS = sorted((ROOT / "conformance" / "layernorm_conformance").rglob("*.py"))


def _numerics_checks(tree: ast.AST) -> list[ast.Call]:
    """The calls ``numerics.check(...)`` in ``tree``."""
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "check"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "numerics"
    ]


def _compares_dx_alone(call: ast.Call) -> bool:
    """Whether the expected results are a dict literal of dx alone (no y or dweight: no unit to give)."""
    expected = call.args[1] if len(call.args) > 1 else None
    return isinstance(expected, ast.Dict) and [ast.literal_eval(k) for k in expected.keys if k] == ["dx"]


def test_each_comparison_passes_the_units() -> None:
    """A y or dweight compared without ``units`` is held to its own RMS, which eps far above var makes too small."""
    missing = [
        f"{path.relative_to(ROOT)}:{call.lineno}"
        for path in CHECKS
        for call in _numerics_checks(ast.parse(path.read_text()))
        if not _compares_dx_alone(call) and "units" not in {k.arg for k in call.keywords}
    ]
    assert _numerics_checks(ast.parse((ROOT / "conformance/layernorm_conformance/ops.py").read_text()))
    assert not missing, f"numerics.check without units= at {missing}"
