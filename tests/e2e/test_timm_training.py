"""pmm-train on a timm backbone (issue 24 item 6): a tiny ViT trains on the synthetic set with the
drop-in layer after one of its blocks, then evaluates, draws its pictures (the mix on the token
grid) and exports like any checkpoint."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from oracles.runs import run_train

import pmm_model.cli.evaluate as evaluate_cli
import pmm_model.cli.export as export_cli
import pmm_model.cli.visualize as visualize_cli
from pmm_model.cli import train
from pmm_model.run.checkpoint import load_model

ROOT = Path(__file__).resolve().parents[2]
VIT = "timm/vit_tiny_patch16_224"


def _argv(out, *extra):
    # The demo preset's 128x64 input gives an 8x4 patch grid: the layer's 8x4 block grid.
    return [
        "--preset", "demo", "--model", "baseline", "--backbone", VIT, "--epochs", "1",
        "--eval-every", "1", "--workers", "0", "--device", "cpu", "--no-tensorboard",
        "--output-dir", str(out), *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_a_tiny_vit_trains_with_the_layer_evaluates_and_exports(tmp_path, capsys):
    out = tmp_path / "vit"
    code, err = run_train(_argv(out, "--mix", "a_hard_mix", "--mix-after", "blocks.9"))
    assert code == 0, err
    model, config = load_model(out / "checkpoint.pt")
    assert (config.backbone, config.mix, config.mix_after) == (VIT, "a_hard_mix", "blocks.9")
    assert model.mixer is not None and model.backbone.patch_embed.grid_size == (8, 4)
    metrics = evaluate_cli.main(
        ["--checkpoint", str(out / "checkpoint.pt"), "--data", "synthetic", "--workers", "0"]
    )
    assert 0.0 <= metrics["mAP"] <= 1.0
    written = visualize_cli.main(
        ["--checkpoint", str(out / "checkpoint.pt"), "--data", "synthetic", "--out", str(out)]
    )
    assert set(written) == {"mixing", "ranked", "curves"} and written["mixing"].stat().st_size
    pytest.importorskip("onnxruntime")
    report = export_cli.main(
        ["--checkpoint", str(out / "checkpoint.pt"), "--out", str(tmp_path / "vit.onnx")]
    )
    assert report.path.is_file() and report.metadata["pmm.backbone"] == VIT
    assert report.parity and report.worst_rel_diff <= 1e-5


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--mix", "cutmix"], "argument --mix: the baseline mixes only with --mix-after"),
        (["--mix-after", "blocks.99", "--mix", "cutmix"], "mix_after='blocks.99' in " + VIT),
        (["--model", "pmm"], f"argument --backbone: {VIT} is a timm backbone, which only"),
    ],
)
def test_what_the_network_cannot_do_is_one_line(tmp_path, extra, message):
    code, err = run_train(_argv(tmp_path / "run", *extra))
    assert code in (1, 2) and "Traceback" not in err
    assert message in err.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_imagenet_weights_offline_is_one_line_and_leaves_nothing(tmp_path):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "PYTHONPATH": str(ROOT),
    }
    argv = _argv(tmp_path / "run", "--backbone", "timm/resnet18", "--pretrained", "imagenet")
    run = subprocess.run(
        [sys.executable, "-m", "pmm_model.train", *argv],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
    )  # fmt: skip
    last = run.stderr.strip().splitlines()[-1]
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "pretrained='imagenet': timm could not load the weights of 'resnet18'" in last
    assert "Offline?" in last and not (tmp_path / "run").exists()


def test_the_readme_command_builds_its_network(tmp_path):
    # README's one-line example, as written, up to the network it trains (not 400 epochs).
    readme = (ROOT / "README.md").read_text().replace("\n", " ")
    command = (
        "--model baseline --backbone timm/vit_small_patch16_224 --mix a_hard_mix "
        "--mix-after blocks.9"
    )
    assert f"pmm-train {command}" in " ".join(readme.split())
    engine = train.parse_args([*command.split(), "--output-dir", str(tmp_path / "run")])
    model = engine.build_model(num_classes=751)
    assert model.mixer is not None and model.backbone.patch_embed.grid_size == (24, 8)
