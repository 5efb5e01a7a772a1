"""visualize checks everything before it draws (issue 16 item 12)."""

import contextlib
import dataclasses
import io
import json
import logging
import shutil

import pytest
import torch
from oracles import tiny_synthetic_set
from oracles.runs import (
    last_line,
    load_checkpoint_raw,
    spoil_checkpoint,
)

import pmm_model.cli.visualize as visualize_cli
from pmm_model.nets.models import build_model
from pmm_model.run.checkpoint import save_checkpoint
from pmm_model.run.config import make_config

# ---- issue 16 item 12: visualize checks everything before drawing --------------------------------


@pytest.fixture(scope="module")
def pmm_checkpoint(tmp_path_factory):
    """An untrained PMM checkpoint of ``T``'s configuration (4 classes), with metrics.json."""
    config = make_config(
        {
            "data": "folder",
            "height": 64,
            "width": 32,
            "ids_per_batch": 2,
            "images_per_id": 2,
            "feature_dim": 32,
        },
        preset="demo",
    )
    config = dataclasses.replace(config, num_classes=4)
    torch.manual_seed(0)
    model = build_model("pmm", 4, **config.model_options())
    path = tmp_path_factory.mktemp("pmm") / "checkpoint.pt"
    save_checkpoint(path, {"model": model.state_dict(), "args": config.to_dict()})
    metrics = [{"epoch": 1, "rank1": 0.5, "mAP": 0.4, "mINP": 0.2}]
    (path.parent / "metrics.json").write_text(json.dumps(metrics))
    return path


def _visualize(checkpoint, root, out, *extra):
    argv = ["--checkpoint", str(checkpoint), "--data", "folder", "--root", str(root)]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            visualize_cli.main([*argv, "--out", str(out), "--device", "cpu", *extra])
            code = 0
        except SystemExit as stop:
            code = stop.code
    return code, err.getvalue()


@pytest.mark.slow
def test_visualize_draws_with_a_fitting_checkpoint(pmm_checkpoint, tree, tmp_path):
    assert _visualize(pmm_checkpoint, tree, tmp_path / "out", "--ids", "2")[0] == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "curves.png",
        "mixing.png",
        "ranked.png",
    ]


@pytest.fixture(scope="module")
def six_ids(tmp_path_factory):
    return tiny_synthetic_set(
        tmp_path_factory.mktemp("six"),
        num_test_ids=2,
        images_per_id_per_camera=1,
        num_distractors=1,
    )


@pytest.mark.parametrize(
    "case, message",
    [
        ("other data", "the network was trained on 4 identities, but 'folder' has 6"),
        ("per id", "per_id 5: fewer than 2 training identities have 5 images"),
        ("corrupt query", "cannot read image"),
        ("bad json", "is not JSON"),
        ("metrics of another kind", "metrics[0] lacks ['epoch', 'rank1', 'mAP', 'mINP']"),
        ("missing metrics", "argument --metrics: no such file"),
        ("nan weights", "hold NaN or infinite values"),
    ],
)
def test_visualize_refuses_up_front(pmm_checkpoint, tree, six_ids, tmp_path, case, message):
    root, checkpoint, extra = tree, pmm_checkpoint, []
    if case == "other data":
        root = six_ids
    elif case == "per id":
        extra = ["--per-id", "5"]
    elif case == "corrupt query":
        root = tmp_path / "data"
        shutil.copytree(tree, root)
        sorted((root / "query").glob("*.jpg"))[0].write_bytes(b"not a jpeg")
    elif case in ("bad json", "metrics of another kind", "missing metrics"):
        metrics = tmp_path / "metrics.json"
        if case != "missing metrics":
            metrics.write_text("{oops" if case == "bad json" else '[{"loss": 1}]')
        extra = ["--metrics", str(metrics)]
    elif case == "nan weights":
        checkpoint = tmp_path / "nan.pt"
        spoiled = spoil_checkpoint(load_checkpoint_raw(pmm_checkpoint), "nan weights")
        torch.save(spoiled, checkpoint)
    out = tmp_path / "out"
    code, err = _visualize(checkpoint, root, out, *extra)
    assert code == 2 and message in last_line(err) and "Traceback" not in err
    assert not out.exists() or not list(out.iterdir())  # nothing drawn


@pytest.mark.slow
def test_visualize_may_skip_a_corrupt_query_image(pmm_checkpoint, tree, tmp_path, caplog):
    root = tmp_path / "data"
    shutil.copytree(tree, root)
    (root / "query" / "0005_c2s1_000099_01.jpg").write_bytes(b"not a jpeg")  # a 3rd query
    with caplog.at_level(logging.WARNING):
        code, _ = _visualize(pmm_checkpoint, root, tmp_path / "out", "--skip-bad-images")
    assert code == 0 and "skipped 1 unreadable images" in caplog.text
    assert (tmp_path / "out" / "ranked.png").is_file()


@pytest.mark.slow
def test_visualize_says_when_there_are_no_curves(pmm_checkpoint, tree, tmp_path, capsys):
    lone = tmp_path / "lone" / "checkpoint.pt"
    lone.parent.mkdir()
    shutil.copy(pmm_checkpoint, lone)
    assert _visualize(lone, tree, tmp_path / "out")[0] == 0
    assert f"curves: skipped, no --metrics and no {lone.parent / 'metrics.json'}" in (
        capsys.readouterr().out
    )
