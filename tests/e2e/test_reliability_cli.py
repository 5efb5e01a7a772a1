"""Issue 25 items 5, 6 and 8: every command refuses bad options up front, in one line.

Output paths are checked before any work; devices other than CPU and CUDA, files that are
not what an option expects, and options a command cannot honour are refused with one line
naming the option.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from oracles.deploy import make_checkpoint, make_tree

import pmm_model.apps.export as export_app
import pmm_model.apps.extract as extract_app
import pmm_model.cli.evaluate as evaluate_cli
import pmm_model.cli.export as export_cli
import pmm_model.cli.extract as extract_cli
import pmm_model.cli.visualize as visualize_cli
from pmm_model.nets.backbones import build_backbone


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("tree"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("pmm") / "ckpt.pt", "pmm")


def _refused(main, argv, capsys):
    """The one line a command refused ``argv`` with (status 2)."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and "Traceback" not in err, err
    return err.splitlines()[-1]


def _bad_out(tmp_path, case, suffix):
    if case == "a folder":
        (tmp_path / f"d{suffix}").mkdir()
        return tmp_path / f"d{suffix}", "it is a folder"
    if case == "under a file":
        (tmp_path / "f").write_text("")
        return tmp_path / "f" / f"x{suffix}", "is a file, not a folder"
    return Path(f"/proc/x{suffix}"), "is not writable"


@pytest.mark.parametrize("case", ["a folder", "under a file", "in /proc"])
@pytest.mark.parametrize(("command", "suffix"), [("extract", ".npz"), ("export", ".onnx")])
def test_an_unwritable_out_is_refused_before_the_work(
    tmp_path, tree, checkpoint, monkeypatch, capsys, command, suffix, case
):
    out, reason = _bad_out(tmp_path, case, suffix)
    started = []
    monkeypatch.setattr(extract_app.FeatureExtractor, "__init__", lambda *a, **k: started.append(1))
    main = extract_cli.main if command == "extract" else export_cli.main
    line = _refused(
        main, ["--checkpoint", str(checkpoint), "--images", str(tree), "--out", str(out)], capsys
    )
    assert "argument --out" in line and reason in line and started == []


@pytest.mark.parametrize("device", ["meta", "cpu:0:1", "mps", "xla"])
@pytest.mark.parametrize("command", ["extract", "evaluate", "visualize"])
def test_a_device_other_than_cpu_or_cuda_is_one_line(
    tmp_path, tree, checkpoint, capsys, command, device
):
    if command == "extract":
        main, argv = extract_cli.main, ["--images", str(tree), "--out", str(tmp_path / "f.npz")]
    elif command == "evaluate":
        main, argv = evaluate_cli.main, ["--data", "folder", "--root", str(tree)]
    else:
        main, argv = visualize_cli.main, ["--data", "folder", "--root", str(tree)]
        argv += ["--out", str(tmp_path / "pics")]
    line = _refused(main, ["--checkpoint", str(checkpoint), *argv, "--device", device], capsys)
    assert repr(device) in line


@pytest.mark.parametrize("content", [b"just some text\n", b"", b"\x00" * 100, b"PK\x03\x04junk"])
def test_pretrained_weights_of_another_kind_are_one_line(tmp_path, content):
    path = tmp_path / "weights.txt"
    path.write_bytes(content)
    with pytest.raises(
        ValueError, match=r"^pretrained='.*weights.txt': not a torch state-dict file"
    ) as err:
        build_backbone("resnet18", pretrained=path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("opset", [99, 17, 10**30])
def test_an_opset_the_exporter_cannot_write_is_refused_up_front(
    tmp_path, checkpoint, capsys, monkeypatch, opset
):
    started = []
    monkeypatch.setattr(export_app, "load_model", lambda *a, **k: started.append(1))
    out = tmp_path / "m.onnx"
    line = _refused(
        export_cli.main,
        ["--checkpoint", str(checkpoint), "--out", str(out), "--opset", str(opset)],
        capsys,
    )
    assert "opset" in line and str(opset) in line and started == [] and not out.exists()


@pytest.mark.slow
def test_an_opset_in_range_is_the_one_written(tmp_path, checkpoint):
    import onnx

    report = export_app.export_onnx(checkpoint, tmp_path / "m.onnx", opset=20)
    model = onnx.load(report.path)
    assert {o.domain: o.version for o in model.opset_import}[""] == 20


# Each command's run as it is typed; a process runs one command, so each form runs in its own
# process, the commands in import order (study imports train, export imports extract).
NAMES = ("train", "evaluate", "visualize", "study", "extract", "export")
_AS_TYPED = """
import contextlib, io, sys
from pmm_model.cli import scripts
for name, argv0 in {cases!r}:
    sys.argv = [argv0, "--data", "nope"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            getattr(scripts, name)()
        except SystemExit as stop:
            print(name, stop.code, err.getvalue().strip().splitlines()[-1])
"""


@pytest.mark.parametrize("typed", ["pmm", "python -m alias", "python -m cli"])
def test_messages_use_the_program_name_as_typed(typed):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    names = [n for n in NAMES if typed != "python -m alias" or n not in ("extract", "export")]
    argv0, expected = {
        "pmm": ("/venv/bin/pmm-{}", "pmm-{}"),
        "python -m alias": (f"{root}/pmm_model/{{}}.py", "python -m pmm_model.{}"),
        "python -m cli": (f"{root}/pmm_model/cli/{{}}.py", "python -m pmm_model.cli.{}"),
    }[typed]
    code = _AS_TYPED.format(cases=[(name, argv0.format(name)) for name in names])
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(root)},
    )  # fmt: skip
    lines = done.stdout.splitlines()
    assert len(lines) == len(names), done.stdout + done.stderr
    for name, line in zip(names, lines, strict=True):
        prog = expected.format(name)
        assert line.startswith(f"{name} 2 {prog}: error: argument --data: invalid choice"), line


def test_a_seed_beyond_64_bits_fails_in_parsing_before_any_data(tmp_path, capsys):
    import pmm_model.cli.train as train_cli

    # The root does not exist: reading data first would fail naming it, not the seed.
    argv = ["--data", "folder", "--root", str(tmp_path / "none"), "--device", "cpu"]
    line = _refused(train_cli.main, [*argv, "--seed", "99999999999999999999"], capsys)
    assert line.endswith("argument --seed: must be <= 4294967295, got 99999999999999999999 "
                         "(range [0, 4294967295])")  # fmt: skip


@pytest.mark.parametrize("flag", ["--ids", "--per-id"])
def test_mixing_picture_options_for_a_network_that_does_not_mix_are_refused(
    tmp_path, tree, capsys, flag
):
    baseline = make_checkpoint(tmp_path / "baseline.pt", "baseline")
    argv = ["--checkpoint", str(baseline), "--data", "folder", "--root", str(tree)]
    argv += ["--out", str(tmp_path / "pics"), "--device", "cpu", flag, "2"]
    line = _refused(visualize_cli.main, argv, capsys)
    assert line.endswith(
        f"argument {flag}: only for a network that mixes features; this checkpoint's network "
        "does not mix features (a baseline trained without --mix-after, or PMM with --mix none), "
        "so there is no mixing picture"
    )
    assert not (tmp_path / "pics").exists()


def test_a_cuda_index_beyond_the_machine_s_devices_is_refused(monkeypatch):
    import torch

    from pmm_model.run.runtime import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match=r"^'cuda:7' requested but this machine has 1 CUDA"):
        resolve_device("cuda:7")
