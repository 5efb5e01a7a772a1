"""Tests of the training CLI on a tiny synthetic set: outputs, exact resume, argument errors."""

import json
import shutil

import pytest
import torch

from pmm_model import train
from pmm_model.checkpoint import load_checkpoint, load_model
from pmm_model.data.synthetic import ensure_synthetic


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    # 6 training ids x 2 cameras x 2 images: with --p 2 --k 4, three batches of 8 per epoch.
    return ensure_synthetic(
        tmp_path_factory.mktemp("data"),
        num_train_ids=6,
        num_test_ids=3,
        num_cameras=2,
        images_per_id_per_camera=2,
        height=64,
        width=32,
        num_distractors=2,
    )


def _argv(root, out, *extra):
    return [
        "--data", "folder", "--root", str(root), "--output-dir", str(out),
        "--backbone", "resnet18", "--height", "64", "--width", "32", "--p", "2", "--k", "4",
        "--block-size", "1", "1", "--epochs", "3", "--eval-every", "1", "--workers", "0",
        "--device", "cpu", "--seed", "3", *extra,
    ]  # fmt: skip


def test_lr_schedule_is_the_papers_scaled_to_the_epochs():
    paper = [train.lr_factor(e, 400) for e in range(400)]
    assert paper[:50] == [(e // 5 + 1) / 10 for e in range(50)]
    assert set(paper[50:200]) == {1.0} and set(paper[200:300]) == {0.1}
    assert set(paper[300:]) == {0.01}
    assert [train.lr_factor(e, 8) for e in range(8)] == [0.1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01]


def test_resume_continues_exactly(tiny_root, tmp_path, monkeypatch, capsys):
    real_epoch = train.train_one_epoch
    calls = []

    def crash_in_third_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated interruption")
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", crash_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        train.main(_argv(tiny_root, tmp_path / "interrupted"))
    monkeypatch.setattr(train, "train_one_epoch", real_epoch)
    assert load_checkpoint(tmp_path / "interrupted" / "checkpoint.pt")["epoch"] == 2

    resumed = train.main(["--resume", str(tmp_path / "interrupted" / "checkpoint.pt")])
    straight = train.main(_argv(tiny_root, tmp_path / "straight"))
    assert resumed == straight
    a = load_checkpoint(tmp_path / "interrupted" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 3
    for name, tensor in b["model"].items():
        assert torch.equal(a["model"][name], tensor), name
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]

    metrics = json.loads((tmp_path / "interrupted" / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert set(metrics[0]) == {"epoch", "rank1", "mAP", "mINP", "seconds_per_epoch"}
    assert "resumed from" in (tmp_path / "interrupted" / "train.log").read_text()
    assert "rank-1: " in capsys.readouterr().out


def test_checkpoint_rebuilds_the_model(tiny_root, tmp_path):
    train.main(_argv(tiny_root, tmp_path, "--model", "baseline", "--epochs", "1"))
    model, args = load_model(tmp_path / "checkpoint.pt")
    assert {"model", "backbone", "num_classes", "height", "width"} <= args.keys()
    assert (args["model"], args["backbone"], args["num_classes"]) == ("baseline", "resnet18", 6)
    assert not model.training
    with torch.no_grad():
        assert model(torch.zeros(2, 3, args["height"], args["width"])).shape == (2, 512)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--p", "1"], "argument --p: must be >= 2, got 1"),
        (["--k", "0"], "argument --k: must be >= 1, got 0"),
        (["--p", "two"], "argument --p: expected an integer, got 'two'"),
        (["--lr", "-1"], "argument --lr: must be > 0, got -1"),
        (["--model", "bdb"], "argument --model: invalid choice: 'bdb'"),
        (["--backbone", "resnet101"], "argument --backbone: invalid choice: 'resnet101'"),
        (["--data", "imagenet"], "argument --data: invalid choice: 'imagenet'"),
        (["--resume", "/no/such/checkpoint.pt"], "argument --resume: no such file"),
        (["--pretrained", "/no/such.pth"], "argument --pretrained: expected 'imagenet' or"),
        (["--device", "tpu:x"], "argument --device: not a torch device: 'tpu:x'"),
    ],
)
def test_bad_arguments_give_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as excinfo:
        train.parse_args(argv)
    assert excinfo.value.code == 2
    assert message in capsys.readouterr().err


def test_resume_rejects_a_file_that_is_no_checkpoint(tmp_path, capsys):
    path = tmp_path / "weights.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(SystemExit):
        train.parse_args(["--resume", str(path)])
    assert "is not a pmm_model training checkpoint" in capsys.readouterr().err


def test_help_and_demo_preset(capsys):
    with pytest.raises(SystemExit) as excinfo:
        train.parse_args(["--help"])
    assert excinfo.value.code == 0
    assert "--preset" in capsys.readouterr().out
    args = train.parse_args(["--preset", "demo", "--epochs", "2"])
    assert (args.backbone, args.epochs) == ("resnet18", 2)  # explicit flags override the preset
    assert args.block_size == [1, 1]  # (3, 2) scaled from 384x128 to 64x32
    assert train.parse_args(["--height", "256"]).block_size == [2, 2]


def test_skip_bad_images_drops_and_logs_a_corrupt_file(tiny_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    corrupt = sorted((root / "bounding_box_test").glob("*.jpg"))[-1]
    corrupt.write_bytes(b"not a jpeg")
    argv = _argv(root, tmp_path / "run", "--epochs", "1")
    with pytest.raises(OSError, match=corrupt.name):
        train.main(argv)
    train.main([*argv, "--skip-bad-images"])
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"skipped 1 unreadable images: {corrupt}" in log
