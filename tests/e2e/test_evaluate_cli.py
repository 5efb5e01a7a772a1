"""``python -m pmm_model.evaluate`` on a tiny Market-layout tree with a stand-in model."""

import json
import runpy
import sys

import pytest
import torch
from PIL import Image
from torch import nn

import pmm_model.cli.evaluate as cli
from pmm_model.run.config import TrainConfig

COLORS = {1: (250, 0, 0), 2: (0, 250, 0), 3: (0, 0, 250)}
TRAINED = TrainConfig(model="baseline", height=16, width=8, num_classes=3)


@pytest.fixture
def market_tree(tmp_path):
    """Each identity has its own colour, so a colour-mean feature ranks perfectly."""
    layout = {
        "bounding_box_train": [(1, 1), (1, 2), (2, 1)],
        "query": [(2, 1), (3, 2)],
        "bounding_box_test": [(2, 2), (3, 1), (3, 2), (1, 3)],  # (3, 2) is junk for its query
    }
    for split, items in layout.items():
        (tmp_path / split).mkdir()
        for i, (pid, cam) in enumerate(items):
            name = f"{pid:04d}_c{cam}s1_{i:06d}_01.jpg"
            Image.new("RGB", (8, 16), COLORS[pid]).save(tmp_path / split / name)
    return tmp_path


@pytest.fixture
def fake_checkpoint(monkeypatch):
    """Replaces checkpoint loading: the CLI's only contact with the checkpoint format."""
    loaded = []

    def load(path):
        loaded.append(path)
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), TRAINED

    monkeypatch.setattr(cli, "load_model_for_eval", load)
    return loaded


def test_cli_table_and_json(market_tree, fake_checkpoint, tmp_path, capsys):
    out = tmp_path / "results" / "eval.json"
    report = cli.main(
        [
            "--checkpoint",
            "ckpt.pt",
            "--data",
            "folder",
            "--root",
            str(market_tree),
            "--workers",
            "0",
            "--device",
            "cpu",
            "--flip",
            "--output",
            str(out),
        ]
    )
    assert fake_checkpoint == ["ckpt.pt"]
    printed = capsys.readouterr().out
    assert "2 queries, 4 gallery images" in printed
    assert "Rank-1   100.00" in printed and "mAP      100.00" in printed
    saved = json.loads(out.read_text())
    assert saved == report
    assert (saved["rank1"], saved["mAP"], saved["mINP"]) == (1.0, 1.0, 1.0)
    assert saved["flip"] and not saved["rerank"] and len(saved["cmc"]) == 50


def test_cli_rerank(market_tree, fake_checkpoint):
    report = cli.main(
        [
            "--checkpoint",
            "c.pt",
            "--data",
            "folder",
            "--root",
            str(market_tree),
            "--workers",
            "0",
            "--device",
            "cpu",
            "--rerank",
        ]
    )
    assert report["rerank"] and report["num_valid_queries"] == 2


def test_cli_errors(market_tree, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "load_model_for_eval", lambda path: (nn.Flatten(), TRAINED))
    with pytest.raises(SystemExit):
        cli.main(["--checkpoint", "c.pt", "--data", "folder", "--root", str(tmp_path / "no")])
    assert "no folder holding bounding_box_train" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--checkpoint", "c.pt", "--data", "market"])
    assert "invalid choice: 'market'" in capsys.readouterr().err


def test_load_model_for_eval_uses_checkpoint_module(monkeypatch):
    checkpoint = pytest.importorskip("pmm_model.run.checkpoint")
    monkeypatch.setattr(checkpoint, "load_model", lambda path, map_location: (path, map_location))
    assert cli.load_model_for_eval("x.pt") == ("x.pt", "cpu")


def test_module_help(monkeypatch, capsys):
    # runpy runs the module as `python -m` would, without a second interpreter start-up.
    monkeypatch.setattr(sys, "argv", ["python -m pmm_model.evaluate", "--help"])
    monkeypatch.delitem(sys.modules, "pmm_model.evaluate", raising=False)  # a fresh start
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("pmm_model.evaluate", run_name="__main__")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--checkpoint",
        "--data",
        "--root",
        "--flip",
        "--rerank",
        "--batch-size",
        "--workers",
        "--device",
        "--output",
    ):
        assert flag in out


def test_cli_occluded_protocol_evaluates_the_occluded_queries(market_tree, tmp_path, monkeypatch):
    monkeypatch.setenv("PMM_DATA_DIR", str(tmp_path / "cache"))
    batches = []

    class Recorder(nn.Module):
        def forward(self, images):
            batches.append(images.clone())
            return images.mean((2, 3))

    monkeypatch.setattr(cli, "load_model_for_eval", lambda path: (Recorder(), TRAINED))
    common = ["--checkpoint", "c.pt", "--data", "folder", "--root", str(market_tree)]
    standard = cli.main([*common, "--workers", "0"])
    assert standard["eval_protocol"] == "standard" and not (tmp_path / "cache").exists()
    occluded = cli.main([*common, "--workers", "0", "--eval-protocol", "occluded"])
    assert occluded["eval_protocol"] == "occluded" and occluded["num_query"] == 2
    written = sorted((tmp_path / "cache").rglob("*.png"))
    assert [p.stem for p in written] == sorted(p.stem for p in (market_tree / "query").iterdir())
    # Batches: standard query, standard gallery, occluded query, occluded gallery.
    assert len(batches) == 4
    assert not torch.equal(batches[0], batches[2])  # the queries were hidden
    assert torch.equal(batches[1], batches[3])  # the gallery was not
