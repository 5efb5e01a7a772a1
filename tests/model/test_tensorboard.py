"""TensorBoard events of a run, read back with tensorboard's own reader."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pmm_model.run.tensorboard import EVENTS_FOLDER, TrainingEvents


def _read(folder) -> EventAccumulator:
    reader = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    reader.Reload()
    return reader


def test_steps_evaluations_and_pictures_read_back(tmp_path) -> None:
    events = TrainingEvents(tmp_path)
    for step in (1, 2, 3):
        events.step(
            step, {"ce1": 4.0 / step, "triplet1": 0.5}, lr=1e-3 * step, mixed={"stage2": 0.09}
        )
    events.evaluation(3, {"rank1": 0.75, "mAP": 0.5, "mINP": 0.25})
    picture = tmp_path / "mixing.png"
    Image.fromarray(np.full((8, 4, 3), 200, dtype=np.uint8)).save(picture)
    events.picture("mixing", picture, 3)
    events.close()

    reader = _read(tmp_path / EVENTS_FOLDER)
    scalars = {
        tag: [(e.step, e.value) for e in reader.Scalars(tag)] for tag in reader.Tags()["scalars"]
    }
    assert scalars["loss/ce1"] == [(1, 4.0), (2, 2.0), (3, pytest.approx(4.0 / 3))]
    assert scalars["loss/total"][0] == (1, 4.5)
    assert scalars["lr"] == [
        (1, pytest.approx(1e-3)),
        (2, pytest.approx(2e-3)),
        (3, pytest.approx(3e-3)),
    ]
    assert scalars["mixed/stage2"] == [(s, pytest.approx(0.09)) for s in (1, 2, 3)]
    assert {tag: scalars[tag] for tag in ("eval/rank1", "eval/mAP", "eval/mINP")} == {
        "eval/rank1": [(3, 0.75)],
        "eval/mAP": [(3, 0.5)],
        "eval/mINP": [(3, 0.25)],
    }
    (image,) = reader.Images("mixing")
    assert (image.step, image.width, image.height) == (3, 4, 8)


@pytest.mark.slow
def test_a_training_run_writes_its_events_on_by_default(tiny_root, tmp_path) -> None:
    from oracles import tiny_run_options

    from pmm_model.run.engine import run_training

    out = tmp_path / "run"
    options = {**tiny_run_options(tiny_root), "output_dir": str(out), "epochs": 2, "eval_every": 1}
    run_training(options)
    reader = _read(out / EVENTS_FOLDER)
    tags = set(reader.Tags()["scalars"])
    assert {"loss/ce1", "loss/triplet1", "loss/ce3", "loss/total", "lr", "mixed/stage2"} <= tags
    assert {"eval/rank1", "eval/mAP", "eval/mINP"} <= tags
    steps = [e.step for e in reader.Scalars("loss/total")]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 2
    assert [e.step for e in reader.Scalars("eval/rank1")] == [steps[len(steps) // 2 - 1], steps[-1]]
    fractions = [e.value for e in reader.Scalars("mixed/stage2")]
    assert all(0 < f < 1 for f in fractions)  # the mix replaced part of each map

    quiet = tmp_path / "quiet"
    run_training({**options, "output_dir": str(quiet), "tensorboard": False})
    assert not (quiet / EVENTS_FOLDER).exists()
