"""docs/transformers.md's recipes, as written, on timm's own ViT, DeiT, register-token ViT and
Swin, and on a model with TransReID's structure; the refused placements; checkpointing and ONNX."""

from __future__ import annotations

import warnings

import pytest
import torch
from oracles.recipes import run_recipe
from oracles.transreid import TransReIDLocal

import pmm_kernels
from pmm_kernels.tokens import TokenGrid

timm = pytest.importorskip("timm")
pytestmark = pytest.mark.slow
LABELS = torch.tensor([0, 0, 1, 1])


def _images(height=256, width=128) -> torch.Tensor:
    return torch.randn(4, 3, height, width, generator=torch.Generator().manual_seed(0))


def _vit(name="vit_small_patch16_224", **kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=4, img_size=(256, 128), **kwargs)


def _block_output(model, name):
    seen = {}
    model.get_submodule(name).register_forward_hook(lambda m, a, out: seen.update(out=out))
    return seen


def test_timm_vit_recipe_mixes_the_patch_tokens_only():
    model = _vit()
    namespace = run_recipe("timm-vit", {"model": model, "images": _images(), "labels": LABELS})
    namespace["loss"].backward()
    layer = namespace["layer"]
    assert layer.token_grid == TokenGrid(16, 8, 1)
    assert layer.last_info.mask.shape == (4, 16, 8) and bool(layer.last_info.mask.any())
    # The cls token is untouched: run the block again and compare what leaves the layer.
    raw = _block_output(model, "blocks.9")
    with pmm_kernels.mix_labels(model, LABELS):
        model(_images())
    assert raw["out"].shape == (4, 1 + 128, 384)


def test_cls_attention_recipe():
    model = _vit()
    namespace = run_recipe(
        "timm-vit-cls-attention", {"model": model, "images": _images(), "labels": LABELS}
    )
    (layer,) = pmm_kernels.feature_mix_layers(model)
    assert namespace["logits"].shape == (4, 4) and bool(layer.last_info.mask.any())


@pytest.mark.parametrize(
    ("build", "prefix"),
    [
        (lambda: _vit("deit_tiny_distilled_patch16_224"), 2),
        (
            lambda: timm.models.vision_transformer.VisionTransformer(
                img_size=(256, 128), embed_dim=96, depth=4, num_heads=3, reg_tokens=4, num_classes=4
            ),
            5,
        ),
    ],
    ids=["deit-distilled", "registers"],
)
def test_prefix_tokens_pass_through(build, prefix):
    model = build()
    layer = pmm_kernels.FeatureMix("cutout")
    pmm_kernels.insert_feature_mix(model, "blocks.1", layer)
    assert layer.token_grid == TokenGrid(16, 8, prefix)
    seen = {}
    model.blocks[2].register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    raw = _block_output(model, "blocks.1")
    with pmm_kernels.mix_labels(model, LABELS):
        model(_images())
    # What block 2 received: the prefix as block 1 made it, zeroed cells where the mask says.
    assert torch.equal(seen["x"][:, :prefix], raw["out"][:, :prefix]) or prefix == 0
    mask = layer.last_info.mask.flatten(1)
    assert torch.equal(seen["x"][:, prefix:][mask], torch.zeros_like(seen["x"][:, prefix:][mask]))


def test_swin_recipe_mixes_its_nhwc_stage():
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=4)
    namespace = run_recipe(
        "timm-swin", {"model": model, "images": _images(224, 224), "labels": LABELS}
    )
    layer = namespace["layer"]
    assert layer.layout == "nhwc" and layer.last_info.mask.shape == (4, 14, 14)
    namespace["loss"].backward()


def test_transreid_recipe_and_its_refused_placements():
    torch.manual_seed(0)
    model = TransReIDLocal(num_classes=4)
    cameras = torch.tensor([0, 1, 2, 3])
    namespace = run_recipe(
        "transreid",
        {"model": model, "images": _images(), "labels": LABELS, "cameras": cameras},
    )
    (layer,) = pmm_kernels.feature_mix_layers(model)
    assert layer.token_grid == TokenGrid(21, 10, 1)  # stride-12 overlapping patches
    assert bool(layer.last_info.mask.any()) and len(namespace["logits"]) == 5
    for after in ("b1", "b2.0"):
        with pytest.raises(ValueError, match=r"JPM branches .* 'base.blocks.2'"):
            pmm_kernels.insert_feature_mix(TransReIDLocal(4), after, pmm_kernels.FeatureMix())
    # The trunk never runs its last block (the JPM's copy does): said at the first forward.
    unused = TransReIDLocal(4)
    pmm_kernels.insert_feature_mix(unused, "base.blocks.-1", pmm_kernels.FeatureMix())
    with pytest.raises(ValueError, match="did not run"), pmm_kernels.mix_labels(unused, LABELS):
        unused(_images(), cam_label=cameras)


def test_after_the_last_block_of_a_cls_head_is_refused():
    model = _vit("deit_tiny_distilled_patch16_224")
    for after in ("blocks.-1", "norm"):
        with pytest.raises(ValueError, match=r"reads only the cls token.*after='blocks.10'"):
            pmm_kernels.insert_feature_mix(model, after, pmm_kernels.FeatureMix())


@pytest.mark.parametrize("mode", ["a_hard_mix", "cutmix"])
def test_grad_checkpointing_replays_the_token_mix(mode):
    def patch_embed_gradient(checkpointed: bool) -> torch.Tensor:
        model = _vit("deit_tiny_distilled_patch16_224")
        model.set_grad_checkpointing(checkpointed)
        layer = pmm_kernels.FeatureMix(mode, generator=torch.Generator().manual_seed(2))
        pmm_kernels.insert_feature_mix(model, "blocks.5", layer)
        with pmm_kernels.mix_labels(model, LABELS):
            logits = model(_images())
        pmm_kernels.soft_cross_entropy(logits, layer.targets(LABELS, 4)).backward()
        return model.patch_embed.proj.weight.grad

    assert torch.allclose(patch_embed_gradient(False), patch_embed_gradient(True), atol=1e-6)


def test_the_eval_model_exports_to_onnx_as_without_the_layer(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    model = _vit("deit_tiny_distilled_patch16_224")
    pmm_kernels.insert_feature_mix(model, "blocks.5", pmm_kernels.FeatureMix())
    model.eval()
    images = _images()[:1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (images,), tmp_path / "vit.onnx", dynamo=True)
    session = onnxruntime.InferenceSession(str(tmp_path / "vit.onnx"))
    (out,) = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    assert torch.allclose(torch.from_numpy(out), model(images), atol=1e-4)


@pytest.mark.slow
def test_ddp_averages_the_gradients_of_each_ranks_token_mix(tmp_path):
    # Two gloo ranks, each its own batch: DDP's gradient is the mean of what each rank's mix
    # gives in one process, so the layer mixed the same cells under DDP as alone.
    import socket

    import torch.multiprocessing as mp
    from oracles.distributed import ddp_worker, vit_step_gradient

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    alone = [vit_step_gradient(rank) for rank in range(2)]
    assert torch.equal(ranks[0]["grad"], ranks[1]["grad"])  # all-reduced
    for saved, (_, mask) in zip(ranks, alone, strict=True):
        assert saved["mask"].any() and torch.equal(saved["mask"], mask)
    torch.testing.assert_close(ranks[0]["grad"], (alone[0][0] + alone[1][0]) / 2)


def test_inside_a_wrapper_the_vit_and_the_swin_are_found():
    # A ReID network holds the ViT as its `backbone`: the last block is still refused, and a
    # Swin stage inside a wrapper is still mixed as the NHWC map it is.
    wrapper = torch.nn.Module()
    wrapper.backbone = _vit("vit_small_patch16_224")
    with pytest.raises(ValueError, match=r"e.g. after='backbone\.blocks\.10'"):
        pmm_kernels.insert_feature_mix(wrapper, "backbone.blocks.11", pmm_kernels.FeatureMix())
    swin = torch.nn.Module()
    swin.backbone = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False)
    layer = pmm_kernels.FeatureMix("cutmix")
    pmm_kernels.insert_feature_mix(swin, "backbone.layers.2", layer)
    assert layer.layout == "nhwc"
