"""The noise report of a finished grid: the re-evaluation reproduces the grid, bad input exits 2."""

import json

import pytest
from oracles import tiny_run_options

from pmm_model.apps.study import run_study
from pmm_model.cli import study_power as cli


@pytest.mark.slow
def test_a_real_tiny_grid_is_reevaluated_query_by_query(tiny_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PMM_DATA_DIR", str(tmp_path / "cache"))  # the occluded copies
    grid = tmp_path / "grid"
    records = run_study(
        grid,
        ["pmm-none", "pmm-a_hard_mix"],
        seeds=2,
        options=tiny_run_options(tiny_root),
        protocols=["standard", "occluded"],
    )
    out = tmp_path / "power.md"
    argv = ["--runs", str(grid), "--out", str(out), "--resamples", "50"]
    assert cli.main(argv) == 0.0  # the per-query means are the stored metrics, exactly
    numbers = json.loads(out.with_suffix(".json").read_text())
    for record in records:
        for protocol in ("standard", "occluded"):
            found = numbers["per_query"][protocol]
            runs = found["runs"][record.variant][str(record.seed)]
            assert len(runs["ap"]) == len(runs["hit"]) == len(found["pids"]) > 0
            assert sum(runs["hit"]) / len(runs["hit"]) == record.metrics_for(protocol)["rank1"]
    assert set(numbers["splits"]) == {
        f"{p}/pmm-a_hard_mix/{k}" for p in ("standard", "occluded") for k in ("rank1", "mAP")
    }
    text = out.read_text()
    assert "| occluded | pmm-a_hard_mix - pmm-none | mAP |" in text and "| 24 | 5 |" in text
    assert "differ from the rank-1 and mAP the grid stored by at most 0.0e+00" in text
    assert f"wrote {out}" in capsys.readouterr().out
    # The report again from its .json alone: the same text.
    again = tmp_path / "again.md"
    rebuild = ["--per-query", str(out.with_suffix(".json")), "--out", str(again)]
    assert cli.main([*rebuild, "--resamples", "50"]) == 0.0
    assert again.read_text() == text
    # A variant the grid did not train is refused before any report is written.
    out.unlink()
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--variants", "pmm-cutout"])
    assert exit_info.value.code == 2 and not out.exists()
    assert "'pmm-cutout' has fewer than 2 finished runs" in capsys.readouterr().err


def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys):
    out = str(tmp_path / "power.md")
    for argv, message in (
        (["--runs", str(tmp_path), "--out", out], "no grid in"),
        (["--runs", str(tmp_path), "--out", out, "--variants", "pmm-none"], "name one besides"),
        (["--runs", str(tmp_path), "--out", out, "--resamples", "1"], "must be >= 2, got 1"),
        (["--per-query", out, "--out", out, "--reference", "baseline"], "only with --runs"),
        (["--per-query", str(tmp_path / "none.json"), "--out", out], "No such file"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        err = capsys.readouterr().err
        # argparse may print the usage first; the error itself is one line.
        assert exit_info.value.code == 2 and message in err.splitlines()[-1]
