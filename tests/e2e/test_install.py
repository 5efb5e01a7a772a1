"""What a plain install gives: ``pmm_kernels`` alone, and a one-line error from ``pmm_model``.

A subprocess hides the ``train`` extra's packages behind an import blocker, as a
``pip install pmm`` without extras leaves them absent. The wheel itself is checked by
``.ci/wheel_check.sh`` (``make wheel-check``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Run in a fresh interpreter: every import finder is wrapped so that it does not see `BLOCKED`
# packages, which then look exactly as if not installed (find_spec gives None, import raises
# ModuleNotFoundError).
BLOCKER = """
import sys

BLOCKED = {blocked!r}

class Hiding:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED or not hasattr(self.finder, "find_spec"):
            return None
        return self.finder.find_spec(name, path, target)

    def invalidate_caches(self):
        getattr(self.finder, "invalidate_caches", lambda: None)()

sys.meta_path[:] = [Hiding(finder) for finder in sys.meta_path]
"""


def run_without(blocked: tuple[str, ...], code: str) -> subprocess.CompletedProcess:
    script = BLOCKER.format(blocked=set(blocked)) + code
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_without_the_train_extra_pmm_model_says_what_to_install():
    result = run_without(
        ("torchvision", "PIL", "tqdm", "matplotlib"),
        """
try:
    import pmm_model
except ImportError as err:
    print(type(err).__name__, isinstance(err, ImportError), err.name)
    print(err)
""",
    )
    assert result.returncode == 0, result.stderr
    kind, message = result.stdout.splitlines()
    assert kind == "MissingExtraError True torchvision"
    assert message == (
        "pmm_model needs the 'train' extra (torchvision, PIL, tqdm, matplotlib missing): "
        "pip install 'pmm[train]'"
    )


def test_one_missing_package_is_named():
    result = run_without(("tqdm",), "import pmm_model\n")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        "pmm_model.MissingExtraError: pmm_model needs the 'train' extra (tqdm missing): "
        "pip install 'pmm[train]'"
    )


@pytest.mark.slow
def test_kernels_work_without_the_extras():
    result = run_without(
        ("torchvision", "PIL", "tqdm", "matplotlib", "onnx", "onnxruntime", "onnxscript"),
        """
import torch, pmm_kernels
feats = torch.randn(4, 8, 4, 2)
labels = torch.tensor([0, 0, 1, 1])
mixed, info = pmm_kernels.feature_mix(feats, labels, mode="cutmix", block_size=(2, 1), num_blocks=1)
print(tuple(mixed.shape), sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
""",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(4, 8, 4, 2) []"


def test_console_scripts_name_existing_entry_points():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    scripts = project["scripts"]
    expected = ["train", "evaluate", "visualize", "study", "extract", "export"]
    assert sorted(scripts) == sorted(f"pmm-{name}" for name in expected)
    for name, target in scripts.items():
        module, _, function = target.partition(":")
        assert callable(getattr(import_module(module), function)), name
        # Each wraps the CLI of its name, which `python -m pmm_model.cli.<name>` also runs.
        assert callable(import_module(f"pmm_model.cli.{name.removeprefix('pmm-')}").main)
    # The plain install needs only what pmm_kernels imports.
    assert sorted(d.split(">")[0].split(";")[0] for d in project["dependencies"]) == [
        "numpy",
        "torch",
        "triton",
    ]
    assert {"onnx", "onnxruntime", "onnxscript"} <= {
        d.split(">")[0] for d in project["optional-dependencies"]["deploy"]
    }


@pytest.mark.parametrize("name", ["train", "evaluate", "visualize", "study", "extract", "export"])
def test_console_script_entry_exits_zero_after_main(name, monkeypatch):
    # A console script's return value is its exit status: a CLI's result must not leak into it.
    from pmm_model.cli import scripts

    cli = import_module(f"pmm_model.cli.{name}")
    monkeypatch.setattr(cli, "main", lambda: {"rank1": 0.5})
    assert getattr(scripts, name)() is None


@pytest.mark.parametrize("script", ["pmm-train", "pmm-export"])
def test_a_console_script_without_the_extra_is_one_line_and_status_2(script):
    # As pip's wrapper runs it: argv[0] is the script's path, then the entry point's import.
    name = script.removeprefix("pmm-")
    result = run_without(
        ("tqdm",),
        f"sys.argv = ['/venv/bin/{script}', '--help']\n"
        f"from pmm_model.cli.scripts import {name}\nsys.exit({name}())\n",
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"{script}: error: pmm_model needs the 'train' extra (tqdm missing): "
        "pip install 'pmm[train]'\n"
    )


def test_the_one_line_covers_every_console_script():
    import tomllib

    import pmm_model

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == pmm_model._SCRIPTS


def test_a_timm_backbone_without_timm_names_the_extra():
    run = run_without(
        ("timm",),
        "from pmm_model.cli import train\n"
        "train.main(['--preset', 'demo', '--model', 'baseline', '--backbone', 'timm/resnet18'])\n",
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert (
        run.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "argument --backbone: timm/resnet18 needs timm, which is not installed: "
            "pip install 'pmm[timm]'"
        )
    )


def test_the_timm_extra_is_the_one_the_message_names():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert any(requirement.startswith("timm") for requirement in extras["timm"])
