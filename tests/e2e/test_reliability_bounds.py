"""Issue 25 item 3: sizes and counts have hard bounds, refused in one line naming the range.

The integer options of every command are bounded (``pmm_model.run.limits``): a value outside
its range is refused when the arguments are parsed, naming the flag and the range, before any
data is read; a checkpoint whose ``args`` hold such a value is refused when it is loaded.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from oracles.deploy import make_checkpoint

from pmm_model.cli.train import flag_name
from pmm_model.run.checkpoint import load_model
from pmm_model.run.config import ConfigError, make_config
from pmm_model.run.limits import LIMITS

# command -> the LIMITS keys it takes as options (``batch_size`` is --batch-size).
TAKES = {
    "train": [key for key in LIMITS if key != "batch_size"],
    "study": [
        "height",
        "width",
        "ids_per_batch",
        "images_per_id",
        "workers",
        "epochs",
        "eval_every",
    ],
    "evaluate": ["batch_size", "workers"],
    "extract": ["batch_size", "workers"],
}
CASES = [
    pytest.param(command, key, value, id=f"{command} {key}={value}")
    for command, keys in TAKES.items()
    for key in keys
    for value in (LIMITS[key][0] - 1, LIMITS[key][1] + 1, 10**20)
]


@pytest.mark.parametrize(("command", "key", "value"), CASES)
def test_an_option_beyond_its_bounds_is_refused_at_parse_time(capsys, command, key, value):
    low, high = LIMITS[key]
    parser = importlib.import_module(f"pmm_model.cli.{command}").build_parser()
    flag = flag_name(key)
    with pytest.raises(SystemExit) as stop:
        parser.parse_args([flag, str(value)])  # the types run before required options
    err = capsys.readouterr().err.strip().splitlines()[-1]
    bound = f">= {low}" if value < low else f"<= {high}"
    expected = f"argument {flag}: must be {bound}, got {value} (range [{low}, {high}])"
    assert stop.value.code == 2 and err.endswith(expected), err


@pytest.mark.parametrize("key", [key for key in LIMITS if key != "batch_size"])
def test_a_configuration_beyond_the_bounds_is_refused(key):
    low, high = LIMITS[key]
    with pytest.raises(ConfigError, match=rf"^{key}: must be an integer in \[{low}, {high}\]"):
        make_config({key: high + 1})


@pytest.mark.parametrize(("key", "value"), [("height", 100000), ("ids_per_batch", 10**6)])
def test_a_checkpoint_with_absurd_args_is_refused_at_load(tmp_path, capsys, key, value):
    path = make_checkpoint(tmp_path / "ckpt.pt", "baseline")
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["args"][key] = value
    torch.save(checkpoint, path)
    low, high = LIMITS[key]
    expected = f"its args do not describe a run: {key}: must be an integer in [{low}, {high}]"
    with pytest.raises(ValueError, match=r"^checkpoint '.*ckpt\.pt'") as err:
        load_model(path)
    assert expected in str(err.value) and "\n" not in str(err.value)
    # The commands say so in one line, status 2, before any image is read.
    extract = importlib.import_module("pmm_model.cli.extract")
    with pytest.raises(SystemExit) as stop:
        extract.main([
            "--checkpoint", str(path), "--images", str(tmp_path), "--out",
            str(tmp_path / "f.npz"), "--device", "cpu",
        ])  # fmt: skip
    err_text = capsys.readouterr().err
    assert stop.value.code == 2 and err_text.count("\n") == 1 and expected in err_text
    assert not (tmp_path / "f.npz").exists()
