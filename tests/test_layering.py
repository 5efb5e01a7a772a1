"""The import graph of ``pmm_kernels`` and ``pmm_model``: no circle, and no import upwards.

Every module under the two packages is parsed with :mod:`ast` (nothing is imported), and each
``import``/``from ... import`` statement anywhere in it (module level, inside functions, under
``TYPE_CHECKING``) becomes an edge to the module it names. ``from package import name`` points
at ``package.name`` when that is a module of the tree, else at ``package`` (its
``__init__.py``). The parent packages that Python imports on the way are not edges: they are
not a dependency that the code chose.

The rules:

(a) the graph has no cycle;
(b) ``pmm_kernels`` imports nothing from ``pmm_model``;
(c) ``pmm_model.cli`` (the command-line front ends) is imported only by ``pmm_model.cli``
    itself and by the *alias modules*. An alias module is a module of ``pmm_model`` whose body
    is a docstring and one ``if __name__ == "__main__":`` block, and nothing else: it exists
    so that ``python -m pmm_model.<name>`` runs ``pmm_model.cli.<name>`` (through the console
    script's entry point ``pmm_model.cli.scripts.<name>``), and importing it runs nothing;
(d) every module of ``pmm_model`` has a layer in :data:`LAYERS`, and no module imports one of
    a higher layer (imports within a layer are allowed; (a) still forbids circles there);
(e) ``pmm_model`` sees one face of ``pmm_kernels``: ``import pmm_kernels`` and
    ``from pmm_kernels import name`` with ``name`` in ``pmm_kernels.__all__``, and attributes
    ``pmm_kernels.name`` of those names only; never a submodule (``pmm_kernels.ops``,
    ``pmm_kernels.validation``, ...);
(f) no module of ``pmm_model`` imports another module's private (``_``-prefixed) name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pmm_kernels", "pmm_model")
ALIASES = ("pmm_model.train", "pmm_model.evaluate", "pmm_model.study", "pmm_model.visualize")

# Lowest first: each folder of pmm_model is a layer. A module belongs to the layer of its longest
# listed prefix ("pmm_model.data" covers the data subpackage). A new folder needs a line here.
LAYERS: tuple[tuple[str, ...], ...] = (
    # What a model is fed: no network in sight.
    ("pmm_model.data",),
    # The networks and their losses (pmm_model's __init__ re-exports build_model).
    ("pmm_model.nets", "pmm_model"),
    # Ranking a gallery with a network's features, and its metrics.
    ("pmm_model.evaluation",),
    # One training run: configuration, checkpoints, run folder, process, errors, engine.
    ("pmm_model.run",),
    # What is made of trained networks: embeddings, ONNX files, pictures, study grids.
    ("pmm_model.apps",),
    # Command-line front ends: the only code that parses arguments and exits.
    ("pmm_model.cli",),
    # `python -m pmm_model.<name>` entry points (see rule (c)).
    ALIASES,
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    return {
        _module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")
    }


SOURCES = _sources()


def _is_main_guard(node: ast.stmt) -> bool:
    """``if __name__ == "__main__":`` exactly."""
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
        and len(node.test.ops) == 1
        and isinstance(node.test.ops[0], ast.Eq)
        and len(node.test.comparators) == 1
        and isinstance(node.test.comparators[0], ast.Constant)
        and node.test.comparators[0].value == "__main__"
        and not node.orelse
    )


def _is_alias(tree: ast.Module) -> bool:
    """A docstring and one ``__main__`` block, nothing else (rule (c))."""
    body = list(tree.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body.pop(0)
    return len(body) == 1 and _is_main_guard(body[0])


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The modules an import statement of ``module`` names (those of the two packages only)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module if SOURCES[module].name == "__init__.py" else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        names = [
            f"{base}.{alias.name}" if f"{base}.{alias.name}" in SOURCES else base
            for alias in node.names
        ]
    # `import a.b.c` of a name that is no module of the tree (a typo) still points at its
    # longest existing prefix, so no edge is lost.
    found = []
    for name in names:
        while name and name not in SOURCES:
            name = name.rpartition(".")[0]
        if name and name.split(".")[0] in PACKAGES:
            found.append(name)
    return found


def _graph() -> tuple[dict[str, set[str]], set[str]]:
    """module -> modules it imports (itself excluded), and the alias modules."""
    graph, aliases = {}, set()
    for module, path in SOURCES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        if module.startswith("pmm_model.") and _is_alias(tree):
            aliases.add(module)
        graph[module] = {
            target
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for target in _targets(module, node)
            if target != module
        }
    return graph, aliases


GRAPH, ALIAS_MODULES = _graph()


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _layer(module: str) -> int | None:
    matches = [
        (len(prefix), rank)
        for rank, prefixes in enumerate(LAYERS)
        for prefix in prefixes
        # A package's own name stands for its __init__ only, not for everything under it.
        if (module == prefix if prefix in PACKAGES else _in(module, prefix))
    ]
    return max(matches)[1] if matches else None


def _cycle() -> list[str] | None:
    """One cycle of the graph as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(GRAPH[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(GRAPH):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_tree_is_parsed() -> None:
    # Guards the rules below against passing on an empty graph.
    assert {"pmm_kernels.functional", "pmm_model.nets.models", "pmm_model.cli.train"} <= set(GRAPH)
    assert "pmm_model.nets.models" in GRAPH["pmm_model.nets.losses"]
    assert "pmm_kernels.validation" in GRAPH["pmm_kernels.functional"]


def test_no_import_cycle() -> None:
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_kernels_import_nothing_from_the_model_package() -> None:
    offending = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if _in(module, "pmm_kernels")
        for target in targets
        if _in(target, "pmm_model")
    )
    assert offending == []


def test_only_cli_and_alias_modules_import_the_cli() -> None:
    offending = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if not _in(module, "pmm_model.cli") and module not in ALIAS_MODULES
        for target in targets
        if _in(target, "pmm_model.cli")
    )
    assert offending == []


@pytest.mark.parametrize("alias", ALIASES)
def test_entry_point_aliases_only_run_their_cli(alias: str) -> None:
    assert alias in ALIAS_MODULES, (
        f"{alias} must be a docstring and one `if __name__ == '__main__':` block"
    )
    # The console script's entry point, which imports the CLI under the Ctrl-C guard.
    assert GRAPH[alias] == {"pmm_model.cli.scripts"}
    name = alias.rpartition(".")[2]
    imported = [
        item.name
        for node in ast.walk(ast.parse(SOURCES[alias].read_text()))
        if isinstance(node, ast.ImportFrom)
        for item in node.names
    ]
    assert imported == [name], f"{alias} must run pmm_model.cli.scripts.{name}"


def test_pmm_model_modules_live_in_their_layers_folders() -> None:
    # The folders name the layers: at the top of pmm_model only its __init__ and the aliases.
    top_level = sorted(
        module
        for module, path in SOURCES.items()
        if _in(module, "pmm_model") and path.parent == ROOT / "pmm_model"
    )
    assert top_level == sorted(["pmm_model", *ALIASES])


def test_no_import_from_a_higher_layer() -> None:
    unranked = sorted(m for m in GRAPH if _in(m, "pmm_model") and _layer(m) is None)
    assert unranked == [], f"give these modules a layer in LAYERS: {unranked}"
    offending = sorted(
        f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
        for module, targets in GRAPH.items()
        if _in(module, "pmm_model")
        for target in targets
        if _in(target, "pmm_model") and _layer(target) > _layer(module)
    )
    assert offending == []


def _kernels_public_names() -> set[str]:
    """``pmm_kernels.__all__``, read from its ``__init__.py`` without importing it."""
    tree = ast.parse(SOURCES["pmm_kernels"].read_text())
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
            and isinstance(node.value, ast.List | ast.Tuple)
        ):
            return {ast.literal_eval(item) for item in node.value.elts}
    raise AssertionError("pmm_kernels/__init__.py has no literal __all__")


def _model_trees() -> dict[str, ast.Module]:
    return {
        module: ast.parse(path.read_text(), filename=str(path))
        for module, path in SOURCES.items()
        if _in(module, "pmm_model")
    }


def _kernels_uses(module: str, tree: ast.Module, public: set[str]) -> list[str]:
    """What ``module`` reaches in ``pmm_kernels`` beyond its public names (rule (e))."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            submodules = [a.name for a in node.names if a.name.startswith("pmm_kernels.")]
            found += [f"{module}: import {name}" for name in submodules]
        elif isinstance(node, ast.ImportFrom) and _in(node.module or "", "pmm_kernels"):
            if node.module != "pmm_kernels":
                found.append(f"{module}: from {node.module} import ...")
            else:
                found += [
                    f"{module}: from pmm_kernels import {a.name}"
                    for a in node.names
                    if a.name not in public
                ]
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "pmm_kernels"
            and node.attr not in public
            and node.attr != "__version__"
        ):
            found.append(f"{module}: pmm_kernels.{node.attr}")
    return found


def test_the_model_package_uses_only_the_public_face_of_the_kernels() -> None:
    public = _kernels_public_names()
    assert {"feature_mix", "FeatureMix", "MixInfo"} <= public  # the reading works
    offending = sorted(
        use
        for module, tree in _model_trees().items()
        for use in _kernels_uses(module, tree, public)
    )
    assert offending == []


def test_the_rule_on_the_kernels_face_catches_each_way_in() -> None:
    tree = ast.parse(
        "import pmm_kernels.ops\n"
        "from pmm_kernels.validation import check_feat\n"
        "from pmm_kernels import FeatureMix, describe\n"
        "import pmm_kernels\n"
        "pmm_kernels.ops.reference.block_grid\n"
        "pmm_kernels.feature_mix\n"
    )
    assert _kernels_uses("m", tree, {"FeatureMix", "feature_mix"}) == [
        "m: import pmm_kernels.ops",
        "m: from pmm_kernels.validation import ...",
        "m: from pmm_kernels import describe",
        "m: pmm_kernels.ops",
    ]


def test_no_private_name_crosses_modules_of_the_model_package() -> None:
    offending = sorted(
        f"{module}: from {node.module or '.'} import {alias.name}"
        for module, tree in _model_trees().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.level or _in(node.module or "", "pmm_model"))
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.startswith("__")
    )
    assert offending == []
