"""The suite's layout: tests share helpers through ``oracles`` and conftest, never each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def imported_modules(source: str) -> list[str]:
    """Every module an ``import`` or ``from ... import`` statement in ``source`` names."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def test_module_names_are_found_wherever_the_import_stands() -> None:
    source = "import os, test_b\nfrom test_c import x\ndef f():\n    from tests.test_d import y\n"
    assert imported_modules(source) == ["os", "test_b", "test_c", "tests.test_d"]


@pytest.mark.parametrize(
    "path", sorted(TESTS.rglob("*.py")), ids=lambda p: str(p.relative_to(TESTS))
)
def test_no_test_imports_a_test_module_or_conftest(path: Path) -> None:
    leaves = [name.rsplit(".", 1)[-1] for name in imported_modules(path.read_text())]
    offending = [name for name in leaves if name.startswith("test_") or name == "conftest"]
    assert not offending, f"{path.name} imports {offending}: move shared code to tests/oracles"
