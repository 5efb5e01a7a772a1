"""ONNX export (``pmm_model.apps.export``, ``pmm-export``): parity with PyTorch, metadata, failures.

Needs the ``deploy`` extra (onnx, onnxscript, onnxruntime); skipped without it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")
# Each export traces the network with torch.export: seconds, not milliseconds.
pytestmark = pytest.mark.slow

from oracles.deploy import HEIGHT, WIDTH, make_checkpoint, make_tree  # noqa: E402

from pmm_model.apps import export  # noqa: E402
from pmm_model.apps.extract import FeatureExtractor  # noqa: E402
from pmm_model.cli import export as cli  # noqa: E402


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("tree"))


@pytest.fixture(scope="module", params=["pmm", "baseline"])
def exported(request, tmp_path_factory, tree):
    """One export per network kind, checked on random images and the real query images."""
    folder = tmp_path_factory.mktemp(f"export-{request.param}")
    checkpoint = make_checkpoint(folder / "ckpt.pt", request.param)
    report = export.export_onnx(checkpoint, folder / "model.onnx", real_images=tree / "query")
    return request.param, checkpoint, report


def test_parity_figures(exported):
    _, _, report = exported
    assert [(r.source, r.batch) for r in report.parity] == [
        ("random", 1),
        ("random", 7),
        ("real", 1),
        ("real", 5),  # the query folder holds five images
    ]
    for result in report.parity:
        assert result.ok, str(result)
        assert result.rel_diff <= 1e-5 and result.min_cosine >= 0.99999
    assert report.path.is_file() and not Path(f"{report.path}.rejected").exists()
    assert "onnxruntime vs PyTorch:" in report.summary()


def test_metadata_is_all_a_consumer_needs(exported, tree):
    kind, checkpoint, report = exported
    meta = export.read_metadata(report.path)
    assert set(export.METADATA_KEYS) <= meta.keys()
    assert meta["pmm.model"] == kind and meta["pmm.backbone"] == "resnet18"
    height, width = int(meta["pmm.input_height"]), int(meta["pmm.input_width"])
    assert (height, width) == (HEIGHT, WIDTH)
    dim = 1536 if kind == "pmm" else 512
    assert int(meta["pmm.embedding_dim"]) == dim

    # A consumer with only onnxruntime, PIL, numpy and the metadata, at a batch size (3) that
    # was not exported: it gets the raw embeddings evaluation computes.
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    mean, std = (np.array(json.loads(meta[k]), np.float32) for k in ("pmm.mean", "pmm.std"))
    paths = sorted((tree / "query").iterdir())[:3]
    pixels = [
        np.asarray(Image.open(p).convert("RGB").resize((width, height), Image.BILINEAR))
        for p in paths
    ]
    batch = ((np.stack(pixels) / np.float32(255) - mean) / std).transpose(0, 3, 1, 2)
    (name,) = (i.name for i in session.get_inputs())
    got = session.run(None, {name: batch.astype(np.float32)})[0]
    expected = FeatureExtractor(checkpoint, device="cpu", normalize=False)(paths).numpy()
    assert got.shape == (3, dim)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_parity_failure_keeps_the_earlier_export(tmp_path, monkeypatch):
    checkpoint = make_checkpoint(tmp_path / "ckpt.pt", "baseline")
    out = tmp_path / "model.onnx"
    out.write_bytes(b"an earlier export")
    # A bar nothing passes: the exporter must refuse the graph, not pass it on.
    monkeypatch.setattr(export, "ABS_TOLERANCE", -1.0)
    with pytest.raises(export.ParityError, match="onnxruntime disagrees with PyTorch") as info:
        export.export_onnx(checkpoint, out)
    assert "FAILED" in str(info.value) and f"the earlier {out} is kept" in str(info.value)
    assert out.read_bytes() == b"an earlier export"
    assert Path(f"{out}.rejected").is_file()


def test_cli(tmp_path, tree, capsys, monkeypatch):
    checkpoint = make_checkpoint(tmp_path / "ckpt.pt", "baseline")
    out = tmp_path / "onnx" / "model.onnx"
    report = cli.main(["--checkpoint", str(checkpoint), "--out", str(out), "--images", str(tree)])
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and printed.count(" ok\n") == 4
    assert "model=baseline" in printed and "embedding_dim=512" in printed
    assert report.path == out and out.is_file()

    exported = out.read_bytes()
    monkeypatch.setattr(export, "COSINE_TOLERANCE", 2.0)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--checkpoint", str(checkpoint), "--out", str(out)])
    assert exit_info.value.code == 1
    assert "onnxruntime disagrees" in capsys.readouterr().err
    assert out.read_bytes() == exported  # the earlier, good export stays


def test_cli_errors(tmp_path, capsys, monkeypatch):
    checkpoint = make_checkpoint(tmp_path / "ckpt.pt", "baseline")
    base = ["--checkpoint", str(checkpoint)]
    for argv, message in [
        ([*base, "--out", "m.pt"], "--out: must end in .onnx"),
        ([*base, "--out", "m.onnx", "--root", "x"], "--root: only with --data"),
        ([*base, "--out", "m.onnx", "--opset", "9"], "--opset: must be >= 18"),
        (["--checkpoint", "none.pt", "--out", "m.onnx"], "no such file"),
        ([*base, "--out", str(tmp_path / "m.onnx"), "--images", "nowhere"], "no such folder"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err

    monkeypatch.setattr(export, "DEPLOY_PACKAGES", ("onnx", "no_such_onnx_package"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*base, "--out", str(tmp_path / "m.onnx")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "needs no_such_onnx_package: pip install 'pmm[deploy]'" in err
    assert err.count("\n") == 1
