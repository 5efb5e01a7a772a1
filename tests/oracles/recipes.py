"""The recipe blocks of docs/recipes.md and docs/transformers.md, by name, as the tests run
them."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGES = ("recipes.md", "transformers.md")


def recipes() -> dict[str, str]:
    """Every ``<!-- recipe: NAME -->`` block of the pages: name -> its python code."""
    found: dict[str, str] = {}
    for page in PAGES:
        text = (DOCS / page).read_text()
        for name, code in re.findall(r"<!-- recipe: ([\w-]+) -->\n```python\n(.*?)```", text, re.S):
            assert name not in found, f"two recipes named {name!r}"
            found[name] = code
    return found


def run_recipe(name: str, namespace: dict) -> dict:
    """Run the recipe ``name`` as written, in ``namespace`` (updated and returned)."""
    exec(compile(recipes()[name], f"docs ({name})", "exec"), namespace)
    return namespace
