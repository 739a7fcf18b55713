"""The names that docstrings, comments and the documents cite in backticks exist: a rename leaves no stale pointer.

And docs/plugins.md names every field of the spec a backend receives.

Read from the source (no import, so no framework): `Class.member` for a class defined once in the packages, and
`package.module.name` for the packages' own modules. Names of other libraries are not checked.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {  # the top-level packages and the folder each lives in
    "layernorm": ROOT,
    "layernorm_core": ROOT,
    "layernorm_numpy": ROOT / "backends",
    "layernorm_torch": ROOT / "backends",
    "layernorm_jax": ROOT / "backends",
    "layernorm_tensorflow": ROOT / "backends",
    "layernorm_conformance": ROOT / "conformance",
    "benchmarks": ROOT,
}
CITED = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+)`")


def _files() -> list[Path]:
    return sorted(p for package, folder in SOURCES.items() for p in (folder / package).rglob("*.py"))


def _defined(body: list[ast.stmt]) -> set[str]:
    """The names a module or class body binds: functions, classes, assignments, imports."""
    names: set[str] = set()
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign | ast.AugAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).partition(".")[0] for a in node.names)
        elif isinstance(node, ast.If | ast.Try):
            names |= _defined(node.body + node.orelse + [s for h in getattr(node, "handlers", []) for s in h.body])
    return names


def _members(cls: ast.ClassDef) -> set[str]:
    """What a class defines: its body's names and the ``self.name`` its methods assign."""
    members = _defined(cls.body)
    for node in ast.walk(cls):
        assigned = isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
        if assigned and isinstance(node.value, ast.Name) and node.value.id == "self":
            members.add(node.attr)
    return members


def _module_path(dotted: str) -> Path | None:
    package, *rest = dotted.split(".")
    base = SOURCES[package].joinpath(package, *rest)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _classes() -> dict[str, list[set[str] | None]]:
    """Class name -> the members of each class of that name in the packages (None: a base outside them)."""
    classes: dict[str, list[set[str] | None]] = {}
    for path in _files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                plain = all(isinstance(b, ast.Name) and b.id == "object" for b in node.bases)  # or no base
                classes.setdefault(node.name, []).append(_members(node) if plain else None)
    return classes


def _citations() -> Iterator[tuple[str, str]]:
    """(``file:line``, dotted name) for every dotted name in backticks in the packages' sources and the documents."""
    for path in [*_files(), ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for dotted in CITED.findall(line):
                yield f"{path.relative_to(ROOT)}:{number}", dotted


def _unresolved(dotted: str, classes: dict[str, list[set[str] | None]]) -> bool:
    """Whether ``dotted`` names one of the packages' modules or classes, and something they do not define."""
    head, *rest = dotted.split(".")
    if head in SOURCES:
        for split in range(len(rest), -1, -1):  # the longest prefix that is a module
            module = _module_path(".".join([head, *rest[:split]]))
            if module is None:
                continue
            names = rest[split:]
            if not names:
                return False
            tree = ast.parse(module.read_text())
            if names[0] not in _defined(tree.body):
                return True
            cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == names[0]), None)
            return cls is not None and len(names) > 1 and names[1] not in _members(cls)
        return True
    found = classes.get(head, [])
    if len(found) != 1 or found[0] is None:  # not ours, defined twice, or with members from elsewhere
        return False
    return rest[0] not in found[0]


def test_backticked_names_exist() -> None:
    classes = _classes()
    stale = [f"{where}: `{dotted}`" for where, dotted in _citations() if _unresolved(dotted, classes)]
    assert not stale, "cited names that are not defined:\n" + "\n".join(stale)


@pytest.mark.parametrize(
    ("dotted", "stale"),
    [
        ("layernorm_core.tolerances.mean_scale", False),
        ("layernorm_core.tolerances.no_such_scale", True),
        ("layernorm_core.protocol.BackendInfo.dtypes", False),
        ("layernorm_core.protocol.BackendInfo.no_such_field", True),
        ("layernorm_no_such_module.name", False),  # not one of the packages
        ("Problem.scales", False),
        ("Problem.grad_scales", True),
    ],
)
def test_a_stale_name_is_found(dotted: str, stale: bool) -> None:
    assert _unresolved(dotted, _classes()) == stale


def test_plugins_md_names_every_field_of_the_spec() -> None:
    """docs/plugins.md lists what a backend's ``spec`` holds: every field of `layernorm_core.spec.NormSpec`."""
    spec = ast.parse((SOURCES["layernorm_core"] / "layernorm_core" / "spec.py").read_text())
    (norm_spec,) = (n for n in spec.body if isinstance(n, ast.ClassDef) and n.name == "NormSpec")
    fields = [n.target.id for n in norm_spec.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]
    text = (ROOT / "docs" / "plugins.md").read_text()
    listed = text[text.index("`spec` is a `layernorm_core.spec.NormSpec`") :].split("A backend never raises")[0]
    assert fields, "no fields read from NormSpec"
    assert not [f for f in fields if f"`{f}`" not in listed], "fields docs/plugins.md does not list"
