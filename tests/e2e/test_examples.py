"""The examples run, at a tiny size: random init, 1 step, no downloads."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "feature_mix_torchvision.py"


def load_example():
    spec = importlib.util.spec_from_file_location("feature_mix_torchvision", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("arch", "mode"),
    [
        pytest.param("resnet50", "a_hard_mix", marks=pytest.mark.slow),
        pytest.param("mobilenet_v3_small", "a_cutmix", marks=pytest.mark.slow),
        ("mobilenet_v3_small", "cutmix"),
    ],
)
def test_example_trains_with_the_inserted_layer(arch, mode, capsys):
    losses = load_example().main(
        [
            "--arch",
            arch,
            "--mode",
            mode,
            "--steps",
            "1",
            "--batch-size",
            "4",
            "--height",
            "128",
            "--width",
            "64",
        ]
    )
    assert len(losses) == 1 and math.isfinite(losses[0])
    assert "mixed area" in capsys.readouterr().out
