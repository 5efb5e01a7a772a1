"""The configuration's renamed keys: ``p``/``k`` became ``ids_per_batch``/``images_per_id``.

``k`` also named the op's ``num_blocks`` (issue 15's one vocabulary). The old names were never
released: options under them are refused, naming the new ones; checkpoints and study folders
written under the old names are read under the new ones.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from oracles import tiny_run_options
from oracles.deploy import make_checkpoint

from pmm_model.apps import study
from pmm_model.apps.study import StudyError, run_study
from pmm_model.run.checkpoint import checkpoint_args, load_checkpoint
from pmm_model.run.config import (
    DEFAULTS,
    RENAMED_OPTIONS,
    ConfigError,
    make_config,
    resume_config,
)
from pmm_model.run.engine import METRIC_KEYS


def test_the_old_keys_are_gone_from_the_defaults():
    assert not RENAMED_OPTIONS.keys() & DEFAULTS.keys()
    assert set(RENAMED_OPTIONS.values()) <= DEFAULTS.keys()


def test_old_option_names_are_refused_naming_the_new_ones():
    # Never released: the old names are read from checkpoints only, not taken as options.
    with pytest.raises(ConfigError, match=r"option 'k' is now called 'images_per_id'; option 'p'"):
        make_config({"p": 3, "k": 2}, preset="demo")
    saved = make_config(preset="demo") | {"num_classes": 4}
    with pytest.raises(ConfigError, match=r"option 'k' is now called 'images_per_id'"):
        resume_config(saved, {"k": 3}, "runs/x")


def test_the_new_names_give_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = make_config({"ids_per_batch": 3, "images_per_id": 2}, preset="demo")
    assert (config["ids_per_batch"], config["images_per_id"]) == (3, 2)


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
    args = checkpoint_args(loaded, path)
    assert (args["ids_per_batch"], args["images_per_id"]) == expected


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
