"""Pictures: MixInfo -> rectangles, outlines and frames where they belong, PNG sizes, the CLI."""

from __future__ import annotations

import json
import runpy
import sys

import numpy as np
import pytest
import torch
from oracles import tiny_synthetic_set
from PIL import Image

import pmm_kernels
from pmm_kernels import MixInfo
from pmm_model.apps.panels import Box, PanelGrid, denormalize
from pmm_model.apps.plots import (
    MIX_OUTLINE,
    VERDICT_COLORS,
    mix_rectangles,
    plot_bars,
    plot_mixing,
    plot_ranked_list,
    plot_training_curves,
)
from pmm_model.cli.visualize import main
from pmm_model.evaluation.evaluator import rank_gallery
from pmm_model.nets.models import build_model, pmm_saliency
from pmm_model.run.checkpoint import save_checkpoint


def _png(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB")).astype(int)


def _has_color(pixels: np.ndarray, x: int, y: int, color, reach: int = 2) -> bool:
    """Whether a pixel within ``reach`` of (x, y) has ``color`` (up to rounding)."""
    window = pixels[y - reach : y + reach + 1, x - reach : x + reach + 1]
    return bool((np.abs(window - np.asarray(color)).max(axis=-1) <= 8).any())


def _mix(n=6, c=3, h=7, w=5, block_size=(3, 2), k=2, partners=None, seed=0):
    generator = torch.Generator().manual_seed(seed)
    feat = torch.randn(n, c, h, w, generator=generator)
    saliency = torch.rand(n, h, w, generator=generator)
    labels = torch.arange(n) // 2
    _, info = pmm_kernels.a_hard_mix(
        feat,
        saliency,
        labels,
        block_size=block_size,
        num_blocks=k,
        partners=partners,
        generator=generator,
        return_info=True,
    )
    return saliency, info


def test_rectangles_cover_exactly_the_mask_including_clipped_edge_blocks() -> None:
    # 7x5 map in 3x2 blocks: the last block row and column are clipped (1 row, 1 column).
    partners = torch.tensor([2, -1, 0, 5, 1, 3])
    _, info = _mix(k=3, partners=partners)
    image_size = (70, 20)  # 10 pixels per cell down, 4 across
    boxes = mix_rectangles(info, (3, 2), image_size)
    for i, sample_boxes in enumerate(boxes):
        if partners[i] < 0:
            assert sample_boxes == []
            continue
        assert len(sample_boxes) == 3
        covered = torch.zeros(7, 5, dtype=torch.bool)
        for box in sample_boxes:
            assert 0 <= box.left < box.right <= 20 and 0 <= box.top < box.bottom <= 70
            covered[
                round(box.top / 10) : round(box.bottom / 10),
                round(box.left / 4) : round(box.right / 4),
            ] = True
        assert torch.equal(covered, info.mask[i])


def test_rectangle_of_a_clipped_corner_block() -> None:
    mask = torch.zeros(1, 7, 5, dtype=torch.bool)
    mask[0, 6, 4] = True  # block 8 of the 3x3 grid keeps a single cell
    info = MixInfo(torch.tensor([0]), torch.tensor([[8]]), mask, torch.tensor([1 / 35]))
    assert mix_rectangles(info, (3, 2), (14, 10)) == [[Box(8.0, 12.0, 10.0, 14.0)]]


def test_rectangle_of_a_mode_without_grid_blocks() -> None:
    # batch_drop: blocks hold -1 and the mask is one rectangle of rows 1-2, all columns.
    mask = torch.zeros(2, 6, 4, dtype=torch.bool)
    mask[:, 1:3] = True
    info = MixInfo(torch.full((2,), -1), torch.full((2, 1), -1), mask, torch.full((2,), 1 / 3))
    assert mix_rectangles(info, (1, 1), (12, 8)) == [[Box(0.0, 2.0, 8.0, 6.0)]] * 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"block_size": (0, 2)}, "block_size"),
        ({"block_size": 3}, "block_size"),
        ({"image_size": (10,)}, "image_size"),
        ({"blocks": torch.tensor([[9]])}, "info.blocks must lie in"),
        ({"blocks": torch.tensor([0])}, "info.blocks"),
    ],
)
def test_mix_rectangles_rejects_bad_input(kwargs, message) -> None:
    blocks = kwargs.pop("blocks", torch.tensor([[0]]))
    info = MixInfo(torch.tensor([0]), blocks, torch.ones(1, 7, 5, dtype=torch.bool), torch.ones(1))
    args = {"block_size": (3, 2), "image_size": (14, 10)} | kwargs
    with pytest.raises(ValueError, match=message):
        mix_rectangles(info, **args)


def test_panel_grid_places_panels_without_overlap() -> None:
    grid = PanelGrid(rows=2, cols=3, panel_width=20, panel_height=40, title_height=10, gap=4)
    assert grid.size == (4 + 3 * 24, 4 + 2 * 54)
    assert grid.image_box(1, 2) == (52, 68, 72, 108)
    assert grid.image_box(0, 1)[2] + grid.gap == grid.image_box(0, 2)[0]


def test_mixing_figure_outlines_the_replaced_blocks(tmp_path) -> None:
    # 8x4 map in 1x1 blocks on 32x16 images (4 pixels per cell), the demo's geometry.
    n, k = 4, 3
    images = torch.full((n, 3, 32, 16), 0.5)
    saliencies, infos = zip(
        *(_mix(n=n, h=8, w=4, block_size=(1, 1), k=k, seed=s) for s in (1, 2)), strict=True
    )
    path = tmp_path / "sub" / "mixing.png"
    grid = plot_mixing(
        path, images, list(saliencies), list(infos), (1, 1), labels=[0, 0, 1, 1], scale=2.0
    )
    pixels = _png(path)
    assert grid.rows == n and grid.cols == 5 and (grid.panel_width, grid.panel_height) == (32, 64)
    assert pixels.shape == (grid.size[1], grid.size[0], 3)

    for stage, info in enumerate(infos):
        boxes = mix_rectangles(info, (1, 1), (32, 16))
        for i in range(n):
            assert len(boxes[i]) == k
            for col in (1 + 2 * stage, 2 + 2 * stage):  # the saliency panel and the partner
                left, top, _, _ = grid.image_box(i, col)
                for box in boxes[i]:
                    mid_y = top + round(2 * (box.top + box.bottom) / 2)
                    mid_x = left + round(2 * (box.left + box.right) / 2)
                    assert _has_color(pixels, left + round(2 * box.left), mid_y, MIX_OUTLINE)
                    assert _has_color(pixels, left + round(2 * box.right), mid_y, MIX_OUTLINE)
                    assert _has_color(pixels, mid_x, top + round(2 * box.top), MIX_OUTLINE)
                    assert not _has_color(pixels, mid_x, mid_y, MIX_OUTLINE, reach=0)
                # Cells of no replaced block carry no outline.
                taken = info.mask[i]
                for y, x in zip(*np.nonzero(~taken.numpy()), strict=True):
                    neighbours = taken[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2]
                    if not neighbours.any():
                        centre = (left + 8 * x + 4, top + 8 * y + 4)
                        assert not _has_color(pixels, *centre, MIX_OUTLINE, reach=3)
    # The first column shows the plain image: no outline anywhere in it.
    left, top, right, bottom = grid.image_box(0, 0)
    panel = pixels[top:bottom, left:right]
    assert not (np.abs(panel - np.asarray(MIX_OUTLINE)).max(-1) <= 8).any()


def test_mixing_figure_marks_unmixed_samples(tmp_path) -> None:
    saliency, info = _mix(n=2, h=8, w=4, block_size=(1, 1), k=1, partners=torch.tensor([-1, 0]))
    grid = plot_mixing(tmp_path / "m.png", torch.rand(2, 3, 32, 16), [saliency], [info], (1, 1))
    pixels = _png(tmp_path / "m.png")
    left, top, right, bottom = grid.image_box(0, 2)
    assert (pixels[top:bottom, left:right] == 255).all()  # "not mixed": an empty white panel
    assert grid.cols == 3 and pixels.shape[:2] == (grid.size[1], grid.size[0])


def test_plot_mixing_rejects_mismatched_stages(tmp_path) -> None:
    saliency, info = _mix(n=2, h=8, w=4, block_size=(1, 1), k=1)
    with pytest.raises(ValueError, match="one saliency map per MixInfo"):
        plot_mixing(
            tmp_path / "m.png", torch.rand(2, 3, 32, 16), [saliency, saliency], [info], (1, 1)
        )
    with pytest.raises(ValueError, match=r"saliencies\[0\]"):
        plot_mixing(tmp_path / "m.png", torch.rand(2, 3, 32, 16), [saliency[:, :4]], [info], (1, 1))
    with pytest.raises(ValueError, match="images"):
        plot_mixing(tmp_path / "m.png", torch.rand(2, 32, 16), [saliency], [info], (1, 1))


def test_rank_gallery_orders_stably_and_judges_junk() -> None:
    order, verdicts = rank_gallery(
        torch.tensor([0.2, 0.1, 0.2, 0.9, 0.1]), 5, 1, [5, 3, 5, 5, 5], [1, 2, 2, 0, 1], topk=4
    )
    assert order == [1, 4, 0, 2]
    assert verdicts == ["false", "junk", "junk", "true"]
    with pytest.raises(ValueError, match="distances"):
        rank_gallery(torch.zeros(3), 1, 0, [1, 2], [0, 0])


def test_ranked_list_frames_by_verdict(tmp_path) -> None:
    verdicts = [["true", "false", "junk"], ["junk", "true", "false"]]
    queries, ranked = torch.rand(2, 3, 32, 16), torch.full((2, 3, 3, 32, 16), 1.0)
    grid = plot_ranked_list(tmp_path / "r.png", queries, ranked, verdicts, scale=2.0)
    pixels = _png(tmp_path / "r.png")
    assert pixels.shape[:2] == (grid.size[1], grid.size[0]) and grid.cols == 4
    for q, row in enumerate(verdicts):
        for r, verdict in enumerate(row):
            left, top, right, bottom = grid.image_box(q, 1 + r)
            mid_x, mid_y = (left + right) // 2, (top + bottom) // 2
            for x, y in ((left, mid_y), (right, mid_y), (mid_x, top), (mid_x, bottom)):
                assert _has_color(pixels, x, y, VERDICT_COLORS[verdict], reach=1)
            assert (pixels[mid_y, mid_x] == 255).all()  # the white image inside the frame
    with pytest.raises(ValueError, match="verdicts must be in"):
        plot_ranked_list(tmp_path / "x.png", queries, ranked, [["true"] * 3, ["maybe"] * 3])


def test_training_curves_png(tmp_path) -> None:
    metrics = [
        {"epoch": e, "rank1": 0.1 * e, "mAP": 0.08 * e, "mINP": 0.05 * e, "seconds_per_epoch": 9.5}
        for e in (2, 4, 6)
    ]
    plot_training_curves(tmp_path / "c.png", metrics, title="pmm")
    assert _png(tmp_path / "c.png").shape == (400, 800, 3)
    with pytest.raises(ValueError, match=r"metrics\[0\] lacks \['mINP'\]"):
        plot_training_curves(tmp_path / "c.png", [{"epoch": 1, "rank1": 0.5, "mAP": 0.4}])
    with pytest.raises(ValueError, match="no entries"):
        plot_training_curves(tmp_path / "c.png", [])


def test_denormalize_inverts_the_input_normalisation() -> None:
    from pmm_model.data.transforms import build_transforms

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 8, 3), np.uint8))
    tensor = build_transforms(16, 8, is_train=False)(image)
    expected = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(denormalize(tensor[None])[0], expected, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def tiny_pmm():
    torch.manual_seed(0)
    return build_model("pmm", 6, backbone="resnet18", block_size=(1, 1), num_blocks=1)


def test_pmm_saliency_returns_the_maps_that_chose_the_blocks(tiny_pmm) -> None:
    model = tiny_pmm.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, labels = torch.randn(6, 3, 64, 32), torch.tensor([0, 0, 1, 1, 2, 2])
    saliencies, infos, block_sizes = pmm_saliency(model, images, labels)
    assert len(saliencies) == len(infos) == 2 and block_sizes == [(1, 1), (1, 1)]
    for saliency, info in zip(saliencies, infos, strict=True):
        assert saliency.shape == info.mask.shape == (6, 4, 2)
        # 1x1 blocks, k = 1: the chosen block is the most salient cell (ties: lower index).
        flat = saliency.flatten(1)
        best = torch.sort(flat, dim=1, descending=True, stable=True).indices[:, 0]
        assert torch.equal(info.blocks[:, 0], best)
        assert (info.partners >= 0).all()
        assert (labels[info.partners] != labels).all()
    assert not model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_random_and_dropping_modes_draw_without_saliency(tmp_path) -> None:
    model = build_model(
        "pmm", 3, backbone="resnet18", block_size=(1, 1), num_blocks=2, mix="cutout"
    )
    images, labels = torch.rand(4, 3, 64, 32), torch.tensor([0, 0, 1, 1])
    saliencies, infos, _ = pmm_saliency(model, images, labels)
    assert saliencies == [None, None]  # cutout draws its blocks: no map ranked them
    assert all(info.mask.flatten(1).sum(1).eq(2).all() for info in infos)
    path = tmp_path / "cutout.png"
    grid = plot_mixing(path, images, saliencies, infos, (1, 1))
    assert _png(path).shape[:2] == grid.size[::-1]


def test_pmm_saliency_needs_a_mixing_model() -> None:
    with pytest.raises(TypeError, match="PMMNet, or BaselineNet with mix_after"):
        pmm_saliency(torch.nn.Linear(2, 2), torch.zeros(1, 2), torch.zeros(1))
    plain = build_model("baseline", 3, backbone="resnet18")
    with pytest.raises(TypeError, match="must mix features"):
        pmm_saliency(plain, torch.zeros(2, 3, 64, 32), torch.tensor([0, 1]))


def test_the_baselines_layer_draws_its_mix_on_the_token_grid(tmp_path) -> None:
    # A ViT's 8x4 patch grid at 128x64: the layer's 8x4 block grid of 1x1 blocks, 3 mixed.
    model = build_model(
        "baseline",
        3,
        backbone="timm/vit_tiny_patch16_224",
        mix="a_hard_mix",
        mix_after="blocks.9",
        height=128,
        width=64,
    )
    images, labels = torch.rand(4, 3, 128, 64), torch.tensor([0, 0, 1, 1])
    saliencies, infos, block_sizes = pmm_saliency(model, images, labels)
    assert saliencies == [None] and block_sizes == [(1, 1)]
    (info,) = infos
    assert info.mask.shape == (4, 8, 4) and info.mask.flatten(1).sum(1).eq(3).all()
    path = tmp_path / "vit.png"
    grid = plot_mixing(path, images, saliencies, infos, block_sizes[0])
    assert _png(path).shape[:2] == grid.size[::-1]


@pytest.mark.slow
def test_cli_writes_the_three_pictures(tiny_pmm, tmp_path, capsys) -> None:
    root = tiny_synthetic_set(tmp_path / "data", num_test_ids=4, num_cameras=3)
    run = tmp_path / "run"
    args = {
        "model": "pmm",
        "backbone": "resnet18",
        "num_classes": 6,
        "height": 64,
        "width": 32,
        "feature_dim": 512,
        "block_size": [1, 1],
        "num_blocks": 1,
        "cam": "fast",
        "pretrained": None,
    }
    save_checkpoint(run / "checkpoint.pt", {"model": tiny_pmm.state_dict(), "args": args})
    metrics = [{"epoch": 1, "rank1": 0.2, "mAP": 0.1, "mINP": 0.05, "seconds_per_epoch": 1.0}]
    (run / "metrics.json").write_text(json.dumps(metrics))

    written = main(
        [
            "--checkpoint",
            str(run / "checkpoint.pt"),
            "--data",
            "folder",
            "--root",
            str(root),
            "--out",
            str(tmp_path / "pictures"),
            "--ids",
            "2",
            "--queries",
            "2",
            "--topk",
            "4",
        ]
    )
    assert sorted(written) == ["curves", "mixing", "ranked"]
    printed = capsys.readouterr().out
    for name, path in written.items():
        assert f"{name}: {path}" in printed
        _png(path)
    mixing = _png(written["mixing"])
    # 2 ids x 2 images, 5 columns of 64x32 images at scale 2.
    assert mixing.shape[:2] == PanelGrid(4, 5, 64, 128).size[::-1]
    ranked = _png(written["ranked"])
    assert ranked.shape[:2] == PanelGrid(2, 5, 32, 64, gap=10).size[::-1]
    assert _png(written["curves"]).shape[:2] == (400, 800)


@pytest.mark.parametrize(
    ("module", "names"),
    [
        ("pmm_model.apps.visualize", {"draw_checkpoint"}),
        ("pmm_model.apps.plots", {"plot_bars", "plot_mixing", "mix_rectangles", "read_metrics"}),
        ("pmm_model.apps.panels", {"Box", "PanelGrid", "denormalize", "save_figure"}),
    ],
)
def test_star_import_gives_every_public_name(module: str, names: set[str]) -> None:
    # __all__ once listed a `main` the module never defined, so `import *` raised.
    namespace: dict[str, object] = {}
    exec(f"from {module} import *", namespace)
    assert names <= set(namespace)


def test_module_entry_point_runs_the_cli(monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["python -m pmm_model.visualize", "--help"])
    monkeypatch.delitem(sys.modules, "pmm_model.visualize", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("pmm_model.visualize", run_name="__main__")
    assert exit_info.value.code == 0
    assert "--checkpoint" in capsys.readouterr().out


def test_bar_chart_png_and_bad_series(tmp_path) -> None:
    series = {"rank-1": ([70.0, float("nan")], [2.0, float("nan")]), "mAP": ([60.0, 50.0], [1, 1])}
    plot_bars(tmp_path / "bars.png", ["a", "b"], series, ylim=(0, 100), title="t")
    assert _png(tmp_path / "bars.png").shape == (450, 600, 3)
    with pytest.raises(ValueError, match=r"series\['x'\] must have 2 means"):
        plot_bars(tmp_path / "x.png", ["a", "b"], {"x": ([1.0], [0.0])})
    with pytest.raises(ValueError, match="series: no bars"):
        plot_bars(tmp_path / "x.png", ["a"], {})
