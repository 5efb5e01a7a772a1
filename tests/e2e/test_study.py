"""The ablation study: grid, table arithmetic, chart, resume, failures and bad arguments.

Most tests replace ``run_training`` with a stub returning canned metrics (the grid logic is under
test, not training); one test trains a real tiny grid end to end (resnet18 at 64x32, 1 epoch).
"""

import json
import os
import signal
import statistics
from pathlib import Path

import pytest
from oracles import tiny_run_options
from PIL import Image

import pmm_kernels
from pmm_model.apps import study
from pmm_model.apps.study import (
    VARIANTS,
    StudyError,
    check_seeds,
    check_variants,
    collect_results,
    run_dir,
    run_study,
)
from pmm_model.apps.study_report import summarize, write_report
from pmm_model.cli import study as cli
from pmm_model.run.checkpoint import load_checkpoint
from pmm_model.run.engine import TrainingDiverged, TrainingInterrupted


def _argv(root, out, *extra):
    return [
        "--out",
        str(out),
        "--data",
        "folder",
        "--root",
        str(root),
        "--backbone",
        "resnet18",
        "--height",
        "64",
        "--width",
        "32",
        "--ids-per-batch",
        "2",
        "--images-per-id",
        "4",
        "--epochs",
        "1",
        "--workers",
        "0",
        "--device",
        "cpu",
        *extra,
    ]


def _canned(variant, seed):
    """Distinct, known metrics per run."""
    index = list(VARIANTS).index(variant)
    return {
        "rank1": 0.5 + 0.03 * index + 0.01 * seed**2,
        "mAP": 0.4 + 0.02 * index - 0.015 * seed,
        "mINP": 0.1 + 0.005 * seed * index,
        "wall_seconds": 10.0 + seed + index,
    }


class FakeTraining:
    """Stands in for run_training: records calls, returns canned metrics, fails on demand."""

    def __init__(self, fail=None):
        self.calls = []  # (variant, seed, resume)
        self.fail = fail or {}  # (variant, seed) -> exception to raise (once)

    def __call__(self, options, preset=None, resume=None, overwrite=False):
        variant = next(
            name
            for name, keys in VARIANTS.items()
            if all(options.get(k) == v for k, v in keys.items())
            and (name != "baseline" or options["model"] == "baseline")
        )
        seed = options["seed"]
        self.calls.append((variant, seed, resume))
        folder = Path(options["output_dir"])
        assert folder == run_dir(self.out, variant, seed)
        folder.mkdir(parents=True, exist_ok=True)
        error = self.fail.pop((variant, seed), None)
        if error is not None:
            (folder / "checkpoint.pt").write_bytes(b"stub")  # what a checkpointed stop leaves
            raise error
        return _canned(variant, seed)


@pytest.fixture
def fake(monkeypatch, tmp_path):
    stub = FakeTraining()
    stub.out = tmp_path / "grid"
    monkeypatch.setattr(study, "run_training", stub)
    return stub


def test_variants_follow_the_mix_modes():
    modes = list(pmm_kernels.MODES)
    assert list(VARIANTS) == [
        "baseline",
        *(f"baseline-{m}" for m in modes),
        "pmm-none",
        *(f"pmm-{m}" for m in modes),
    ]
    assert VARIANTS["baseline"] == {"model": "baseline", "mix_after": None}
    assert VARIANTS["baseline-cutmix"] == {"model": "baseline", "mix": "cutmix"}
    assert VARIANTS["pmm-none"] == {"model": "pmm", "mix": "none", "mix_after": None}
    assert VARIANTS["pmm-cutmix"] == {"model": "pmm", "mix": "cutmix", "mix_after": None}


def test_the_default_grid_holds_the_variants_its_options_can_train():
    baselines = [f"baseline-{m}" for m in pmm_kernels.MODES]
    pmms = [v for v in VARIANTS if v.startswith("pmm-")]
    assert check_variants(None, {}) == ["baseline", *pmms]
    assert check_variants(None, {"mix_after": "layer3"}) == ["baseline", *baselines, *pmms]
    timm = {"backbone": "timm/vit_tiny_patch16_224", "mix_after": "blocks.9"}
    assert check_variants(None, timm) == ["baseline", *baselines]
    with pytest.raises(StudyError, match=r"baseline-cutmix mixes after .* \(--mix-after\)"):
        check_variants(["baseline-cutmix"], {})
    with pytest.raises(StudyError, match="pmm-none is built on a torchvision ResNet"):
        check_variants(["pmm-none"], timm)


def test_table_statistics_match_the_seeds(fake, tiny_root):
    variants = ["baseline", "pmm-a_hard_mix", "pmm-cutout"]
    records = run_study(fake.out, variants, seeds=[0, 1, 3], options=tiny_run_options(tiny_root))
    assert [(r.variant, r.seed) for r in records] == [(v, s) for v in variants for s in (0, 1, 3)]
    assert all(r.status == "done" for r in records)
    rows = summarize(collect_results(fake.out))
    assert [row.variant for row in rows] == variants
    for row in rows:
        assert row.done == (0, 1, 3) and row.failed == () and row.missing == ()
        for key in ("rank1", "mAP", "mINP", "wall_seconds"):
            values = [_canned(row.variant, seed)[key] for seed in (0, 1, 3)]
            assert row.mean[key] == pytest.approx(statistics.mean(values), abs=1e-12)
            assert row.std[key] == pytest.approx(statistics.stdev(values), abs=1e-12)
    table, chart = write_report(fake.out)
    summary, paired = _tables(table.read_text())[:2]
    assert [line.split(" | ")[0] for line in summary] == [f"| {v}" for v in variants]
    # Paired by seed against the baseline: canned differences are the same for every seed.
    assert [line.split(" | ")[:3] for line in paired] == [
        ["| pmm-a_hard_mix", "baseline", "3"],
        ["| pmm-cutout", "baseline", "3"],
    ]
    rank1_diff = _canned("pmm-cutout", 0)["rank1"] - _canned("baseline", 0)["rank1"]
    assert (
        f"{100 * rank1_diff:+.1f} [{100 * rank1_diff:+.1f}, {100 * rank1_diff:+.1f}]" in paired[1]
    )

    # pmm-cutout (index 12): rank-1 = 0.86 + 0.01 s^2 over s = 0, 1, 3 -> 0.86, 0.87, 0.95.
    assert list(VARIANTS).index("pmm-cutout") == 12
    r1 = [0.86, 0.87, 0.95]
    expected = f"{100 * statistics.mean(r1):.1f} ± {100 * statistics.stdev(r1):.1f}"
    assert expected == "89.3 ± 4.9"
    assert summary[2].startswith(f"| pmm-cutout | 3/3 | {expected} |")
    with Image.open(chart) as image:
        image.verify()
    with Image.open(chart) as image:
        assert image.format == "PNG" and image.width > 300 and image.height > 200


def _tables(text: str) -> list[list[str]]:
    """The body rows of each markdown table in ``text``, in order."""
    tables: list[list[str]] = []
    inside = False
    for line in text.splitlines():
        if line.startswith("|---"):
            tables.append([])
            inside = True
        elif inside and line.startswith("| "):
            tables[-1].append(line)
        else:
            inside = False
    return tables


def test_second_call_skips_finished_runs(fake, tiny_root):
    run_study(fake.out, ["baseline", "pmm-none"], seeds=2, options=tiny_run_options(tiny_root))
    assert len(fake.calls) == 4
    records = run_study(
        fake.out, ["baseline", "pmm-none"], seeds=2, options=tiny_run_options(tiny_root)
    )
    assert len(fake.calls) == 4 and all(r.status == "done" for r in records)
    # A grid may grow: only the new seed trains.
    run_study(fake.out, ["baseline", "pmm-none"], seeds=3, options=tiny_run_options(tiny_root))
    assert [c[:2] for c in fake.calls[4:]] == [("baseline", 2), ("pmm-none", 2)]
    assert [row.done for row in summarize(collect_results(fake.out))] == [(0, 1, 2)] * 2


def test_interrupted_run_resumes_from_its_checkpoint(fake, tiny_root):
    fake.fail[("pmm-none", 0)] = TrainingInterrupted("stopped by SIGTERM", signal.SIGTERM)
    with pytest.raises(TrainingInterrupted):
        run_study(
            fake.out,
            ["baseline", "pmm-none", "pmm-hard_mix"],
            seeds=1,
            options=tiny_run_options(tiny_root),
        )
    assert [c[:2] for c in fake.calls] == [("baseline", 0), ("pmm-none", 0)]  # the grid stopped
    attempt = json.loads((run_dir(fake.out, "pmm-none", 0) / "attempt.json").read_text())
    assert attempt["status"] == "interrupted"
    assert [r.status for r in collect_results(fake.out)] == ["done", "interrupted", "missing"]
    fake.calls.clear()
    records = run_study(
        fake.out,
        ["baseline", "pmm-none", "pmm-hard_mix"],
        seeds=1,
        options=tiny_run_options(tiny_root),
    )
    checkpoint = run_dir(fake.out, "pmm-none", 0) / "checkpoint.pt"
    assert fake.calls == [("pmm-none", 0, checkpoint), ("pmm-hard_mix", 0, None)]
    assert all(r.status == "done" for r in records)
    assert not (run_dir(fake.out, "pmm-none", 0) / "attempt.json").exists()
    result = json.loads((run_dir(fake.out, "pmm-none", 0) / "result.json").read_text())
    assert result["resumed"] is True
    canned = _canned("pmm-none", 0)["wall_seconds"]
    assert result["wall_seconds"] == pytest.approx(attempt["wall_seconds"] + canned)


def test_a_failed_run_is_reported_and_the_grid_goes_on(fake, tiny_root, capsys):
    fake.fail[("baseline", 1)] = TrainingDiverged("the loss is not finite")
    with pytest.raises(SystemExit) as excinfo:
        cli.main(_argv(tiny_root, fake.out, "--variants", "baseline", "pmm-cutmix", "--seeds", "2"))
    assert excinfo.value.code == 1
    assert [c[:2] for c in fake.calls] == [
        ("baseline", 0),
        ("baseline", 1),
        ("pmm-cutmix", 0),
        ("pmm-cutmix", 1),
    ]
    out, err = capsys.readouterr()
    assert "baseline seed 1: FAILED (TrainingDiverged: the loss is not finite)" in out
    assert "| baseline | 1/2 (failed: 1) |" in out
    assert "1 of 4 runs failed: baseline seed 1" in err
    # The next call retries it (from its checkpoint) and succeeds.
    fake.calls.clear()
    assert (
        len(
            cli.main(
                _argv(tiny_root, fake.out, "--variants", "baseline", "pmm-cutmix", "--seeds", "2")
            )
        )
        == 4
    )
    assert fake.calls == [("baseline", 1, run_dir(fake.out, "baseline", 1) / "checkpoint.pt")]
    assert "| baseline | 2/2 |" in (fake.out / "study.md").read_text()


def test_report_only_rebuilds_from_the_results(fake, tiny_root, capsys):
    run_study(fake.out, ["pmm-batch_drop"], seeds=2, options=tiny_run_options(tiny_root))
    table = (fake.out / "study.md").read_text() if (fake.out / "study.md").exists() else None
    assert table is None  # run_study trains; the report is separate
    write_report(fake.out)
    table = (fake.out / "study.md").read_text()
    (fake.out / "study.md").unlink()
    (fake.out / "study.png").unlink()
    calls = len(fake.calls)
    cli.main(["--report-only", "--out", str(fake.out)])
    assert len(fake.calls) == calls
    assert (fake.out / "study.md").read_text() == table
    assert (fake.out / "study.png").stat().st_size > 0
    with pytest.raises(SystemExit) as excinfo:
        cli.main(["--report-only", "--out", str(fake.out / "nothing")])
    assert excinfo.value.code == 2
    assert "no grid" in capsys.readouterr().err


def test_bad_arguments_fail_clearly(fake, tiny_root, capsys):
    options = tiny_run_options(tiny_root)
    with pytest.raises(StudyError, match=r"unknown \['pmm-magic'\]; valid: baseline, baseline-"):
        run_study(fake.out, ["pmm-magic"], options=options)
    for seeds in (0, -2, [], [1, 1], [-1]):
        with pytest.raises(StudyError, match="seeds"):
            check_seeds(seeds)
    assert check_seeds(2) == [0, 1] and check_seeds([4, 2]) == [4, 2]
    with pytest.raises(StudyError, match=r"\['seed'\] are set per run"):
        run_study(fake.out, options={**options, "seed": 3})
    with pytest.raises(StudyError, match=r"unknown \['epoch'\]"):
        run_study(fake.out, options={**options, "epoch": 3})
    with pytest.raises(ValueError, match="lr"):  # ConfigError, before anything trains
        run_study(fake.out, options={**options, "lr": -1.0})
    assert fake.calls == []
    for extra, message in (
        (["--variants", "pmm-magic"], "unknown variant 'pmm-magic'; valid: " + ", ".join(VARIANTS)),
        (["--seeds", "0"], "--seeds: the number of seeds must be >= 1, got 0"),
        (["--seeds", "x"], "--seeds: expected a count N or a comma"),
        (["--epochs", "0"], "--epochs: must be >= 1"),
    ):
        with pytest.raises(SystemExit) as excinfo:
            cli.main(_argv(tiny_root, fake.out, *extra))
        assert excinfo.value.code == 2
        assert message in capsys.readouterr().err
    assert fake.calls == []
    # A grid folder keeps its settings: other training options are refused.
    run_study(fake.out, ["baseline"], seeds=1, options=options)
    with pytest.raises(StudyError, match=r"other settings \(epochs: 1 -> 2\)"):
        run_study(fake.out, ["baseline"], seeds=1, options={**options, "epochs": 2})
    run_study(fake.out, ["baseline"], seeds=1, options={**options, "workers": 1})  # place only


@pytest.mark.slow
def test_real_tiny_grid_end_to_end(tiny_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PMM_DATA_DIR", str(tmp_path / "cache"))  # the occluded copies
    out = tmp_path / "grid"
    records = cli.main(
        _argv(
            tiny_root,
            out,
            *("--variants", "baseline", "pmm-a_hard_mix", "--seeds", "2,"),
            *("--eval-protocols", "standard", "occluded"),
        )
    )
    assert [(r.variant, r.seed, r.status) for r in records] == [
        ("baseline", 2, "done"),
        ("pmm-a_hard_mix", 2, "done"),
    ]
    for record in records:
        folder = run_dir(out, record.variant, record.seed)
        assert {"checkpoint.pt", "metrics.json", "train.log", "result.json"} <= {
            p.name for p in folder.iterdir()
        }
        args = load_checkpoint(folder / "checkpoint.pt")["args"]
        assert (args["seed"], args["model"], args["epochs"]) == (
            2,
            VARIANTS[record.variant]["model"],
            1,
        )
        assert args["mix"] == VARIANTS[record.variant].get("mix", "a_hard_mix")
        metrics = json.loads((folder / "metrics.json").read_text())[-1]
        assert record.metrics == {k: metrics[k] for k in ("rank1", "mAP", "mINP")}
        assert record.wall_seconds > 0
        # The protocol evaluation is the training's own: the standard protocol gives the run's
        # last metrics again, bit for bit; the occluded one is recorded beside them.
        checkpoint = folder / "checkpoint.pt"
        assert study.evaluate_checkpoint(checkpoint, "standard") == record.metrics
        occluded = json.loads((folder / "occluded.json").read_text())
        assert record.protocol_metrics == {"occluded": occluded}
        assert occluded == study.evaluate_checkpoint(checkpoint, "occluded")
    text = capsys.readouterr().out
    assert "| baseline | 1/1 |" in text and "| pmm-a_hard_mix | 1/1 |" in text
    assert "## occluded queries" in text and text.count("| pmm-a_hard_mix | baseline | 1 |") == 2
    with Image.open(out / "study.png") as image:
        assert image.format == "PNG"


def test_another_dataset_root_is_refused(fake, tiny_root, tmp_path):
    # Issue 16.15: the root was a "place" option, so a second dataset joined the same table.
    options = tiny_run_options(tiny_root)
    run_study(fake.out, ["baseline"], seeds=1, options=options)
    other = tmp_path / "other_data"
    other.mkdir()
    with pytest.raises(StudyError, match=r"other settings \(root: .* -> '.*other_data'\)"):
        run_study(fake.out, ["baseline"], seeds=1, options={**options, "root": str(other)})
    # The same folder written another way is the same dataset.
    relative = Path(str(tiny_root)) / ".." / Path(str(tiny_root)).name
    run_study(fake.out, ["baseline"], seeds=1, options={**options, "root": str(relative)})


def test_how_often_runs_checkpoint_may_change_between_calls(fake, tiny_root):
    # Where and how fast a grid runs is not what it trains: a requeued grid may checkpoint more.
    options = tiny_run_options(tiny_root)
    run_study(fake.out, ["baseline"], seeds=1, options=options)
    often = {**options, "checkpoint_every_steps": 5, "checkpoint_every_minutes": 10.0}
    assert [r.status for r in run_study(fake.out, ["baseline"], seeds=2, options=often)] == [
        "done",
        "done",
    ]


def test_ctrl_c_while_the_report_is_drawn_is_one_line(fake, tiny_root, monkeypatch, capsys):
    # Issue 16.18: Ctrl-C outside a training run printed a KeyboardInterrupt traceback.
    def interrupted(out):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "write_report", interrupted)
    try:
        with pytest.raises(SystemExit) as excinfo:
            cli.main(["--report-only", "--out", str(fake.out)])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped the CLI")
    assert excinfo.value.code == 130
    assert capsys.readouterr().err == "python -m pmm_model.study: interrupted (Ctrl-C)\n"


@pytest.mark.slow
def test_sigterm_during_an_evaluation_stops_the_grid(tiny_root, tmp_path, monkeypatch, capsys):
    # Issue 16.5: the study swallowed SIGTERM during an evaluation and trained the next run.
    from pmm_model.run.engine import Engine

    real = Engine.evaluate

    def evaluate_then_signal(self):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(self)

    monkeypatch.setattr(Engine, "evaluate", evaluate_then_signal)
    out = tmp_path / "grid"
    with pytest.raises(SystemExit) as excinfo:
        cli.main(_argv(tiny_root, out, "--variants", "baseline", "pmm-none", "--seeds", "1"))
    assert excinfo.value.code == 128 + signal.SIGTERM
    assert "stopped by SIGTERM after epoch 1" in capsys.readouterr().err
    attempt = json.loads((run_dir(out, "baseline", 0) / "attempt.json").read_text())
    assert attempt["status"] == "interrupted"
    assert not run_dir(out, "pmm-none", 0).exists()  # the grid stopped


def test_protocols_are_evaluated_once_per_finished_run(fake, tiny_root, monkeypatch):
    evaluated = []

    def evaluate(checkpoint, protocol):
        evaluated.append((Path(checkpoint).parent.parent.name, protocol))
        return {"rank1": 0.25, "mAP": 0.2, "mINP": 0.1}

    monkeypatch.setattr(study, "evaluate_checkpoint", evaluate)
    options = tiny_run_options(tiny_root)
    run_study(fake.out, ["baseline", "pmm-none"], seeds=2, options=options)
    assert evaluated == []  # the standard protocol is the training's own evaluation
    records = run_study(
        fake.out, ["baseline", "pmm-none"], seeds=2, options=options, protocols=["occluded"]
    )
    # Runs finished by the earlier call are evaluated too, each once; a third call evaluates
    # nothing again.
    assert evaluated == [("baseline", "occluded")] * 2 + [("pmm-none", "occluded")] * 2
    assert all(r.metrics_for("occluded")["rank1"] == 0.25 for r in records)
    run_study(fake.out, ["baseline", "pmm-none"], seeds=2, options=options, protocols=["occluded"])
    assert len(evaluated) == 4
    summary = _tables(write_report(fake.out)[0].read_text())
    assert len(summary) == 4  # per protocol: the statistics and the paired differences
    with pytest.raises(StudyError, match=r"protocols: unknown \['blurred'\]; valid: standard"):
        run_study(fake.out, ["baseline"], seeds=1, options=options, protocols=["blurred"])
