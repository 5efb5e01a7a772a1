"""docs/recipes.md's torchreid recipes, as written, in torchreid's own engines: a tiny dataset
registered with register_image_dataset, ``Engine.run(max_epoch=1)`` with its test loop."""

from __future__ import annotations

import warnings

import pytest
import torch
from oracles.recipes import run_recipe
from PIL import Image

torchreid = pytest.importorskip("torchreid")

pytestmark = pytest.mark.slow
IDS, CAMS, PER_CAM = 4, 2, 2


def _write_set(root) -> dict[str, list[tuple[str, int, int]]]:
    """Each identity a colour; PER_CAM images per camera; query = camera 0, gallery = 1."""
    splits: dict[str, list[tuple[str, int, int]]] = {"train": [], "query": [], "gallery": []}
    generator = torch.Generator().manual_seed(0)
    for pid in range(IDS):
        colour = torch.randint(0, 256, (3,), generator=generator).tolist()
        for cam in range(CAMS):
            for i in range(PER_CAM):
                noise = torch.randint(-20, 21, (128, 64, 3), generator=generator)
                pixels = (torch.tensor(colour) + noise).clamp(0, 255).to(torch.uint8).numpy()
                path = root / f"{pid:04d}_c{cam}_{i}.png"
                Image.fromarray(pixels).save(path)
                splits["train"].append((str(path), pid, cam))
                splits["query" if cam == 0 else "gallery"].append((str(path), pid, cam))
    return splits


@pytest.fixture(scope="module")
def datamanagers(tmp_path_factory):
    root = tmp_path_factory.mktemp("tinyreid")
    splits = _write_set(root)

    class TinyReid(torchreid.data.ImageDataset):
        def __init__(self, root="", **kwargs):
            super().__init__(splits["train"], splits["query"], splits["gallery"], **kwargs)

    torchreid.data.register_image_dataset("pmm_tinyreid", TinyReid)

    def build(sampler: str):
        return torchreid.data.ImageDataManager(
            root=str(root),
            sources="pmm_tinyreid",
            height=128,
            width=64,
            batch_size_train=8,
            batch_size_test=8,
            workers=0,
            transforms=None,
            train_sampler=sampler,
            num_instances=2,
            use_gpu=False,
        )

    return {"softmax": build("RandomSampler"), "triplet": build("RandomIdentitySampler")}


def _engine(engine_class, datamanager, model):
    optimizer = torchreid.optim.build_optimizer(model, optim="adam", lr=3e-4)
    scheduler = torchreid.optim.build_lr_scheduler(optimizer, "single_step", stepsize=20)
    return engine_class(datamanager, model, optimizer=optimizer, scheduler=scheduler, use_gpu=False)


RECIPES = [
    ("torchreid-resnet", "resnet50", "softmax"),
    ("torchreid-resnet", "resnet50", "triplet"),
    ("torchreid-osnet", "osnet_x1_0", "triplet"),
    ("torchreid-pcb", "pcb_p6", "softmax"),
    ("torchreid-mlfn", "mlfn", "softmax"),
]


@pytest.mark.parametrize(("recipe", "name", "loss"), RECIPES)
def test_recipe_trains_and_tests_in_torchreids_engine(datamanagers, recipe, name, loss, tmp_path):
    torch.manual_seed(0)
    datamanager = datamanagers[loss]
    model = torchreid.models.build_model(
        name, num_classes=datamanager.num_train_pids, loss=loss, pretrained=False
    )
    namespace = run_recipe(recipe, {"model": model})
    engine_class = namespace["Engine"]
    wanted = {"softmax": "ImageSoftmaxEngine", "triplet": "ImageTripletEngine"}[loss]
    if wanted not in [base.__name__ for base in engine_class.__mro__]:
        # The recipe names one engine (its comment says any works): the same mixin, the other.
        mixin = namespace["pmm_kernels"].integrations.TorchreidMixLabels
        engine_class = type("Engine", (mixin, getattr(torchreid.engine, wanted)), {})
    engine = _engine(engine_class, datamanager, model)
    (layer,) = [m for m in model.modules() if type(m).__name__ == "FeatureMix"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the layer raises nothing, warns nothing
        warnings.filterwarnings("ignore", module="torchreid")  # torchreid's own notices
        warnings.filterwarnings("ignore", message=".*Cython evaluation.*")
        engine.run(save_dir=str(tmp_path), max_epoch=1, print_freq=1000, eval_freq=1, ranks=[1, 5])
    assert layer.last_info is not None and bool(layer.last_info.mask.any())
    assert not layer.training  # torchreid's test loop set eval: the layer is the identity


def _recipe_engine(datamanager, recipe: str, name: str):
    """``(model, engine)``: torchreid's ``name`` with the recipe applied, in the recipe's engine."""
    torch.manual_seed(0)
    model = torchreid.models.build_model(
        name, num_classes=datamanager.num_train_pids, loss="softmax", pretrained=False
    )
    engine_class = run_recipe(recipe, {"model": model})["Engine"]
    return model, _engine(engine_class, datamanager, model)


def test_fixbase_epochs_warn_naming_open_layers(datamanagers, tmp_path):
    _, engine = _recipe_engine(datamanagers["softmax"], "torchreid-resnet", "resnet50")
    with pytest.warns(UserWarning, match=r"open_specified_layers .* add 'mix_after_layer4' to"):
        engine.run(
            save_dir=str(tmp_path),
            max_epoch=1,
            fixbase_epoch=1,
            open_layers=["classifier"],
            test_only=False,
            eval_freq=-1,
            print_freq=1000,
            ranks=[1, 5],
        )


def test_cutmix_scores_torchreids_cross_entropy_on_the_mixed_targets(datamanagers):
    datamanager = datamanagers["softmax"]
    model, engine = _recipe_engine(datamanager, "torchreid-pcb", "pcb_p6")
    data = next(iter(datamanager.train_loader))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # targets are read: no "nobody asked"
        for _ in range(2):
            engine.forward_backward(data)
    layer = model.mix_after_layer4
    assert layer.last_info.label_lam.gt(0).any()  # labels were mixed, and scored


def test_osnet_classifier_after_its_fc_is_refused():
    # OSNet's conv5 has 512 channels and its classifier takes 512 features, but a 512-512 fc sits
    # between the pool and the classifier: its rows are not conv5's Grad-CAM weights.
    import pmm_kernels

    model = torchreid.models.build_model(
        "osnet_x1_0", num_classes=4, loss="softmax", pretrained=False
    )
    pmm_kernels.insert_feature_mix(
        model, "conv5", pmm_kernels.FeatureMix(classifier=model.classifier)
    )
    with (
        pytest.raises(ValueError, match="does not read the average-pooled map of 'conv5'"),
        pmm_kernels.mix_labels(model.train(), torch.tensor([0, 0, 1, 1])),
    ):
        model(torch.randn(4, 3, 128, 64))
