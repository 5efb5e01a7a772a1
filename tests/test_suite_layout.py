"""The suite's own rules: helpers shared through ``oracles`` and conftest, repeatable draws."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

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


@pytest.mark.parametrize("draws_after", [True, False])
def test_each_test_starts_from_one_global_torch_seed(draws_after: bool) -> None:
    # The process's initial seed differs between runs; conftest reseeds before every test, so a
    # draw made without a generator does not depend on the run or on the tests before it.
    expected = torch.rand(3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.rand(3), expected)
    if draws_after:  # the next case (False) must still start from the seed
        torch.rand(100)
