"""The complete example plugin of docs/plugins.md, written out as a package from the document's own code blocks."""

from __future__ import annotations

from pathlib import Path

PLUGINS_DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def doc_block(caption: str, doc: Path = PLUGINS_DOC) -> str:
    """The fenced code block that follows the line ``caption`` (e.g. "`layernorm_exact/plugin.py`:") in ``doc``."""
    after = doc.read_text().split(f"\n{caption}\n", 1)[1]
    fenced = after.split("```", 2)[1]
    return fenced.split("\n", 1)[1]  # without the language tag


def write_example(root: Path) -> Path:
    """Write the ``layernorm_exact`` package of the example under ``root``; return ``root`` (for sys.path)."""
    package = root / "layernorm_exact"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for module in ("plugin.py", "backend.py"):
        (package / module).write_text(doc_block(f"`layernorm_exact/{module}`:"))
    return root
