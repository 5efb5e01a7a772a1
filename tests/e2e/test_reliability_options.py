"""Issue 25 item 5: every option of every command is honoured or refused up front.

docs/reliability.md holds the audit, one table per command (option, how it is honoured, when it
is refused, a refused example). These tests read those tables: each command's parser has
exactly the options its table lists, and each example is refused in one line naming its
option, with status 2, no traceback and nothing written.
"""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest
from oracles.deploy import make_checkpoint, make_tree

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"
# Every front end that parses arguments: each module of pmm_model/cli with a build_parser, so a
# new command cannot escape the audit.
COMMANDS = tuple(
    sorted(
        path.stem
        for path in (ROOT / "pmm_model" / "cli").glob("*.py")
        if "def build_parser(" in path.read_text()
    )
)
# Commands run as `python -m pmm_model.cli.<name>`, with no console script.
MODULE_ONLY = ("study_power",)


def _heading(name: str) -> str:
    return f"python -m pmm_model.cli.{name}" if name in MODULE_ONLY else f"pmm-{name}"


def _tables() -> dict[str, list[tuple[str, str]]]:
    """command -> [(option, example argv or "")] from the doc's tables."""
    text = DOC.read_text()
    tables: dict[str, list[tuple[str, str]]] = {}
    for name in COMMANDS:
        section = text.split(f"### `{_heading(name)}`\n", 1)[1].split("\n#", 1)[0]
        rows = [line for line in section.splitlines() if line.startswith("| `--")]
        tables[name] = [
            (
                re.match(r"\| `(--[a-z-]+)`", row).group(1),  # type: ignore[union-attr]
                row.rstrip(" |").rsplit("|", 1)[1].strip().strip("`").replace("—", ""),
            )
            for row in rows
        ]
    return tables


TABLES = _tables()
EXAMPLES = [
    pytest.param(name, option, example, id=f"{name} {example}")
    for name, rows in TABLES.items()
    for option, example in rows
    if example
]


def _parser_options(name: str) -> list[str]:
    parser = importlib.import_module(f"pmm_model.cli.{name}").build_parser()
    return [
        next(s for s in action.option_strings if s.startswith("--"))
        for action in parser._actions
        if action.option_strings and action.dest != "help"
    ]


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_has_a_row_in_the_audit(name):
    assert [option for option, _ in TABLES[name]] == _parser_options(name)


def test_the_audit_refuses_by_example_in_every_command():
    # The tables are read, not empty: a broken reader would pass the test above vacuously.
    assert {name for name, _, _ in (p.values for p in EXAMPLES)} == set(COMMANDS)
    assert len(EXAMPLES) >= 70


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("options")
    return make_tree(root / "tree"), make_checkpoint(root / "pmm.pt", "pmm")


def _valid_argv(name: str, tree: Path, checkpoint: Path, out: Path) -> list[str]:
    """A command line each command accepts; the example is appended (later options win)."""
    data = ["--data", "folder", "--root", str(tree)]
    cpu = ["--device", "cpu"]
    return {
        "train": ["--preset", "demo", *data, *cpu, "--output-dir", str(out)],
        "evaluate": ["--checkpoint", str(checkpoint), *data, *cpu],
        "extract": [
            "--checkpoint",
            str(checkpoint),
            "--images",
            str(tree),
            "--out",
            str(out / "f.npz"),
            *cpu,
        ],
        "export": ["--checkpoint", str(checkpoint), "--out", str(out / "m.onnx")],
        "visualize": ["--checkpoint", str(checkpoint), *data, "--out", str(out / "pics"), *cpu],
        "study": ["--out", str(out / "study"), *data, *cpu],
        "study_power": ["--runs", str(out / "study"), "--out", str(out / "power.md")],
    }[name]


@pytest.mark.parametrize(("name", "option", "example"), EXAMPLES)
def test_each_refused_example_is_one_line_and_status_2(
    files, tmp_path, capsys, name, option, example
):
    tree, checkpoint = files
    out = tmp_path / "out"
    cli = importlib.import_module(f"pmm_model.cli.{name}")
    with pytest.raises(SystemExit) as stop:
        cli.main([*_valid_argv(name, tree, checkpoint, out), *shlex.split(example)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert stop.value.code == 2 and "Traceback" not in err, err
    assert len(errors) == 1 and errors[0] == err.strip().splitlines()[-1], err
    module_path = name in ("extract", "export", *MODULE_ONLY)
    assert errors[0].startswith(f"python -m pmm_model.{'cli.' * module_path}")
    assert option in errors[0], errors[0]
    assert not out.exists() or not any(out.rglob("*.*")), sorted(out.rglob("*"))


@pytest.mark.parametrize("name", COMMANDS)
def test_the_valid_command_lines_parse(files, tmp_path, name):
    # So each example above is refused for itself, not for the command line it extends.
    tree, checkpoint = files
    argv = _valid_argv(name, tree, checkpoint, tmp_path / "out")
    if name == "train":
        train = importlib.import_module("pmm_model.cli.train")
        assert train.parse_args(argv).config.height == 128
    else:
        importlib.import_module(f"pmm_model.cli.{name}").build_parser().parse_args(argv)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("--model baseline --backbone resnet18 --mix cutmix --mix-after layer3 --num-blocks 2",
         {"mix": "cutmix", "mix_after": "layer3", "num_blocks": 2}),
        ("--mix a_cutmix --cam paper --num-blocks 2", {"cam": "paper", "num_blocks": 2}),
        ("--mix cutout --block-size 2 2", {"block_size": (2, 2)}),
        ("--amp off", {"amp": "off"}),
        ("--seed 4294967295 --height 4096 --width 4096 --workers 256",
         {"seed": 2**32 - 1, "height": 4096, "width": 4096, "workers": 256}),
    ],
)  # fmt: skip
def test_options_the_run_uses_are_accepted(files, tmp_path, extra, expected):
    # The refusals above are for options a run would not use, not for their neighbours.
    tree, checkpoint = files
    train = importlib.import_module("pmm_model.cli.train")
    argv = [*_valid_argv("train", tree, checkpoint, tmp_path / "out"), *shlex.split(extra)]
    config = train.parse_args(argv).config
    assert {key: getattr(config, key) for key in expected} == expected
