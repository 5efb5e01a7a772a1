"""Checkpoints that load but do not fit, and hostile checkpoints, are refused in one line.

evaluate, resume, visualize and export each check a checkpoint against the data and the options
before any work (issue 16 item 10; issue 25's hostile checkpoint matrix).
"""

import pytest
import torch
from oracles.runs import (
    last_line,
    load_checkpoint_raw,
    run_train,
    spoil_checkpoint,
)

import pmm_model.cli.evaluate as evaluate_cli
import pmm_model.cli.visualize as visualize_cli

# ---- issue 16 item 10: checkpoints that load but do not fit --------------------------------------


MESSAGES = {
    "other backbone": "its weights do not fit the network its args describe",
    "missing weights": "1 weights missing",
    "other class count": "of another shape",  # resume: the data's count is checked first
    "string height": "its args do not describe a run: height: must be an integer",
    "unknown model": "its args do not describe a run: model: must be one of",
    "nan weights": "hold NaN or infinite values",
    "no optimizer": "cannot be resumed: it lacks ['optimizer']",
    "no rng": "cannot be resumed: it lacks ['rng']",
    "negative batches": "its batches counter must be an integer >= 0, got -3",
}
FOR_EVALUATION = ("other backbone", "missing weights", "other class count", "string height")
FOR_EVALUATION += ("unknown model", "nan weights")


def _spoiled(finished, tmp_path, case):
    path = tmp_path / "spoiled" / "checkpoint.pt"
    path.parent.mkdir()
    torch.save(spoil_checkpoint(load_checkpoint_raw(finished / "checkpoint.pt"), case), path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("case", FOR_EVALUATION)
def test_evaluate_refuses_a_checkpoint_that_does_not_fit(tree, finished, tmp_path, case, capsys):
    path = _spoiled(finished, tmp_path, case)
    argv = ["--checkpoint", str(path), "--data", "folder", "--root", str(tree), "--workers", "0"]
    with pytest.raises(SystemExit) as stop:
        evaluate_cli.main([*argv, "--device", "cpu"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"checkpoint '{path}'" in err and MESSAGES[case] in err


@pytest.mark.slow
@pytest.mark.parametrize("case", list(MESSAGES))
def test_resume_refuses_a_checkpoint_that_does_not_fit(finished, tmp_path, case):
    path = _spoiled(finished, tmp_path, case)
    before = path.read_bytes()
    code, err = run_train(["--resume", str(path), "--epochs", "2"])
    assert code in (1, 2) and "Traceback" not in err
    expected = "was trained on 7 identities" if case == "other class count" else MESSAGES[case]
    assert f"checkpoint '{path}'" in last_line(err) and expected in last_line(err)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pt"]


@pytest.mark.slow
def test_resume_refuses_an_absurd_batch_counter(finished, tmp_path):
    path = _spoiled(finished, tmp_path, "none")
    spoiled = load_checkpoint_raw(path)
    spoiled["batches"] = 10**9
    torch.save(spoiled, path)
    code, err = run_train(["--resume", str(path), "--epochs", "2"])
    assert code == 1 and "its batch counter is beyond the 2 global batches" in last_line(err)


# ---- issue 25: the hostile checkpoint matrix through visualize and export ----------------

HOSTILE = (*FOR_EVALUATION, "truncated", "a text file", "not a dict", "empty")


def _hostile(finished, tmp_path, case):
    if case in FOR_EVALUATION:
        return _spoiled(finished, tmp_path, case)
    path = tmp_path / "hostile" / "checkpoint.pt"
    path.parent.mkdir()
    data = (finished / "checkpoint.pt").read_bytes()
    if case == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif case == "a text file":
        path.write_text("just some text\n")
    elif case == "not a dict":
        torch.save([1, 2, 3], path)
    else:
        path.write_bytes(b"")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("case", HOSTILE)
@pytest.mark.parametrize("command", ["visualize", "export"])
def test_visualize_and_export_refuse_a_hostile_checkpoint_in_one_line(
    tree, finished, tmp_path, case, command, capsys
):
    import pmm_model.cli.export as export_cli

    path = _hostile(finished, tmp_path, case)
    if command == "visualize":
        main, argv = visualize_cli.main, ["--data", "folder", "--root", str(tree)]
        argv += ["--out", str(tmp_path / "pics"), "--device", "cpu"]
    else:
        main, argv = export_cli.main, ["--out", str(tmp_path / "m.onnx")]
    with pytest.raises(SystemExit) as stop:
        main(["--checkpoint", str(path), *argv])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert str(path) in err and "Traceback" not in err
    if case in MESSAGES:
        assert MESSAGES[case] in err
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "pics").exists()
