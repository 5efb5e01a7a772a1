"""The code blocks of docs/recipes.md, by name, as the tests run them."""

from __future__ import annotations

import re
from pathlib import Path

RECIPES = Path(__file__).resolve().parents[2] / "docs" / "recipes.md"


def recipes() -> dict[str, str]:
    """Every ``<!-- recipe: NAME -->`` block of docs/recipes.md: name -> its python code."""
    text = RECIPES.read_text()
    found = re.findall(r"<!-- recipe: ([\w-]+) -->\n```python\n(.*?)```", text, re.S)
    return dict(found)


def run_recipe(name: str, namespace: dict) -> dict:
    """Run the recipe ``name`` as written, in ``namespace`` (updated and returned)."""
    exec(compile(recipes()[name], f"docs/recipes.md ({name})", "exec"), namespace)
    return namespace
