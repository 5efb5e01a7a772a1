"""The configuration's renamed keys: ``p``/``k`` became ``ids_per_batch``/``images_per_id``.

``k`` also named the op's ``num_blocks`` (issue 15's one vocabulary). New input must use the new
names; checkpoints and study folders written under the old names are read under the new ones.
Also the typed configuration itself: frozen, checked when built, round-tripped through a
checkpoint's ``args``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import FrozenInstanceError, replace

import pytest
import torch
from oracles import tiny_run_options
from oracles.deploy import make_checkpoint

from pmm_model.apps import study
from pmm_model.apps.study import StudyError, run_study
from pmm_model.evaluation.metrics import METRIC_KEYS
from pmm_model.run.checkpoint import checkpoint_config, load_checkpoint
from pmm_model.run.config import (
    DEFAULTS,
    RENAMED_OPTIONS,
    ConfigError,
    TrainConfig,
    make_config,
    resume_config,
)


def test_the_old_keys_are_gone_from_the_defaults():
    assert not RENAMED_OPTIONS.keys() & DEFAULTS.keys()
    assert set(RENAMED_OPTIONS.values()) <= DEFAULTS.keys()


def test_old_option_names_are_refused_for_new_input():
    # p and k are read only from old checkpoints and study folders.
    with pytest.raises(ConfigError, match=r"unknown options \['k', 'p'\]"):
        make_config({"p": 3, "k": 2}, preset="demo")
    saved = replace(make_config(preset="demo"), num_classes=4)
    with pytest.raises(ConfigError, match=r"unknown options \['k'\]"):
        resume_config(saved, {"k": 3}, "runs/x")


def test_the_new_names_give_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = make_config({"ids_per_batch": 3, "images_per_id": 2}, preset="demo")
    assert (config.ids_per_batch, config.images_per_id) == (3, 2)


def test_a_resume_keeps_the_checkpoints_non_runtime_options_and_says_so():
    saved = replace(make_config(preset="demo"), num_classes=4)
    config, notes = resume_config(saved, {"images_per_id": 3, "epochs": 9}, "runs/x", "demo")
    # Not a runtime option: the checkpoint's value stays; epochs is one, and changes.
    assert (config.images_per_id, config.epochs) == (saved.images_per_id, 9)
    assert (config.output_dir, config.num_classes) == ("runs/x", 4)
    assert [str(note) for note in notes] == [
        "resuming keeps the checkpoint's options; ignoring preset='demo'",
        "resuming keeps the checkpoint's images_per_id=4; ignoring images_per_id=3",
    ]


def test_the_configuration_is_frozen_and_checked_when_built():
    config = make_config(preset="demo")
    with pytest.raises(FrozenInstanceError):
        config.lr = 1.0  # type: ignore[misc]
    with pytest.raises(ConfigError, match=r"^lr: must be a finite number > 0, got -1") as info:
        replace(config, lr=-1)
    assert info.value.option == "lr"
    with pytest.raises(ConfigError, match="num_classes: must be an integer >= 1, got 0"):
        TrainConfig(num_classes=0)


def test_the_configuration_round_trips_through_a_checkpoints_args():
    config = replace(make_config({"block_size": [2, 1]}, preset="demo"), num_classes=5)
    saved = config.to_dict()
    assert saved["block_size"] == [2, 1] and saved["num_classes"] == 5
    assert TrainConfig.from_dict(saved) == config
    assert config.block_size == (2, 1)


def test_a_checkpoint_written_under_the_old_names_is_read_under_the_new(tmp_path):
    path = make_checkpoint(tmp_path / "checkpoint.pt", "baseline")
    checkpoint = torch.load(path, weights_only=True)
    args = checkpoint["args"]
    args["p"], args["k"] = args.pop("ids_per_batch") + 1, args.pop("images_per_id") + 1
    torch.save(checkpoint, path)
    loaded = load_checkpoint(path)
    # Without the renaming the defaults (16 and 4) would stand in for the run's own values.
    expected = (DEFAULTS["ids_per_batch"] + 1, DEFAULTS["images_per_id"] + 1)
    assert (loaded["args"]["ids_per_batch"], loaded["args"]["images_per_id"]) == expected
    assert "p" not in loaded["args"] and "k" not in loaded["args"]
    config = checkpoint_config(loaded, path)
    assert (config.ids_per_batch, config.images_per_id) == expected


def test_a_study_folder_written_under_the_old_names_continues(tiny_root, tmp_path, monkeypatch):
    metrics = dict.fromkeys((*METRIC_KEYS, "wall_seconds"), 1.0)
    monkeypatch.setattr(study, "run_training", lambda *args, **kwargs: metrics)
    out, options = tmp_path / "grid", tiny_run_options(tiny_root)
    run_study(out, ["baseline"], seeds=1, options=options)
    saved = json.loads((out / study.STUDY).read_text())
    settings = saved["settings"]
    settings["p"], settings["k"] = settings.pop("ids_per_batch"), settings.pop("images_per_id")
    (out / study.STUDY).write_text(json.dumps(saved))
    run_study(out, ["baseline"], seeds=1, options=options)  # the same settings: no refusal
    changed = {**options, "images_per_id": options["images_per_id"] + 1}
    with pytest.raises(StudyError, match=r"other settings \(images_per_id: 4 -> 5\)"):
        run_study(out, ["baseline"], seeds=1, options=changed)
