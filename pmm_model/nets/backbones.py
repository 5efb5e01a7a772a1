"""The networks' trunks: torchvision ResNets with layer 4 at stride 1, and any timm model.

A backbone named ``timm/<name>`` is timm's model of that name without its classifier (the
``timm`` extra: ``pip install 'pmm[train,timm]'``); only the baseline network takes one.

Example:
    >>> import torch
    >>> trunk, channels = build_backbone("resnet18")
    >>> trunk(torch.zeros(1, 3, 128, 64)).shape, channels
    (torch.Size([1, 512, 8, 4]), 512)
"""

from __future__ import annotations

import os
import urllib.error
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision.models as tvm
from torch import Tensor, nn

__all__ = [
    "BACKBONES",
    "TIMM_PREFIX",
    "WeightsUnavailableError",
    "build_backbone",
    "build_timm_backbone",
    "is_timm_backbone",
    "timm_backbone_problem",
]

# name -> (torchvision constructor, ImageNet weights enum member)
BACKBONES: dict[str, tuple[Callable[..., tvm.ResNet], tvm.WeightsEnum]] = {
    "resnet18": (tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (tvm.resnet34, tvm.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V1),
}


class WeightsUnavailableError(RuntimeError):
    """``pretrained="imagenet"`` weights are neither in the local cache nor downloadable."""


# A backbone name with this prefix names a timm model: "timm/vit_small_patch16_224".
TIMM_PREFIX = "timm/"


def _imagenet_state_dict(backbone: str) -> dict[str, Tensor]:
    weights = BACKBONES[backbone][1]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except (urllib.error.URLError, OSError) as err:
        raise WeightsUnavailableError(
            f"pretrained='imagenet': could not load {weights} for backbone {backbone!r} "
            f"({err}). Offline? Download {weights.url} on a connected machine and put it at "
            f"{cached} (the torch hub cache; set TORCH_HOME to move it), or pass "
            "pretrained=<path to a torchvision ResNet state dict>."
        ) from None


def _file_state_dict(
    path: str | os.PathLike, kind: str = "torchvision ResNet"
) -> dict[str, Tensor]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"pretrained={str(path)!r}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch's reader fails in many ways on a file of another kind
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(
            f"pretrained={str(path)!r}: not a torch state-dict file ({reason})"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(
            f"pretrained={str(path)!r}: expected a {kind} state dict "
            f"(parameter name -> tensor), got {type(state).__name__}"
        )
    return state


def build_backbone(
    name: str = "resnet50", pretrained: str | os.PathLike | None = None
) -> tuple[nn.Sequential, int]:
    """A torchvision ResNet trunk (conv1..layer4, last stride 1) and its output channel count.

    Layer 4 runs with stride 1, as in the authors' ``res_part``, so a 384x128 input gives a
    24x8 map. Parameter names match torchvision's, so torchvision state dicts load directly.

    Args:
        name: ``"resnet18"``, ``"resnet34"`` or ``"resnet50"``.
        pretrained: None (random init), ``"imagenet"`` (torchvision's IMAGENET1K_V1 weights
            from the torch hub cache, downloaded when online) or the path of a torchvision
            ResNet state dict (``fc.*`` keys are ignored; every other key must match).

    Returns:
        ``(trunk, channels)``: 512 for resnet18/34, 2048 for resnet50.

    Raises:
        ValueError: unknown name, or a state dict whose keys/shapes do not fit.
        FileNotFoundError: ``pretrained`` names a file that does not exist.
        WeightsUnavailableError: ``"imagenet"`` weights are neither cached nor downloadable.

    Example:
        >>> trunk, channels = build_backbone("resnet18")
        >>> trunk(torch.zeros(1, 3, 128, 64)).shape, channels
        (torch.Size([1, 512, 8, 4]), 512)
    """
    if name not in BACKBONES:
        raise ValueError(f"backbone={name!r} is not supported; valid: {', '.join(BACKBONES)}")
    resnet = BACKBONES[name][0]()
    if pretrained is not None:
        state = (
            _imagenet_state_dict(name) if pretrained == "imagenet" else _file_state_dict(pretrained)
        )
        _load_all_but_head(resnet, state, ("fc",), pretrained, name)
    for module in resnet.layer4[0].modules():
        if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
            module.stride = (1, 1)
    names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    trunk = nn.Sequential(OrderedDict((n, getattr(resnet, n)) for n in names))
    return trunk, resnet.fc.in_features


def is_timm_backbone(name: str) -> bool:
    """Whether ``name`` names a timm model (``timm/<name>``) rather than a torchvision ResNet."""
    return name.startswith(TIMM_PREFIX)


def timm_backbone_problem(name: str) -> str | None:
    """What is wrong with the timm backbone ``name`` (timm missing, no such model), or None."""
    try:
        import timm
    except ImportError:
        return f"{name} needs timm, which is not installed: pip install 'pmm[timm]'"
    model_name = name.removeprefix(TIMM_PREFIX)
    if not timm.is_model(model_name):
        return f"timm has no model {model_name!r} (timm.list_models() lists them)"
    return None


def build_timm_backbone(
    name: str,
    pretrained: str | os.PathLike | None = None,
    image_size: tuple[int, int] | None = None,
) -> tuple[nn.Module, int]:
    """timm's model ``name`` without its classifier: images to its pooled ``(N, C)`` features.

    The model keeps its own pooling (average for CNNs, the cls token for ViTs). A model with
    position embeddings is built for ``image_size`` (timm's ``set_input_size``, which also
    resizes pretrained embeddings); a convolutional one takes any size.

    Args:
        name: ``timm/<model name>``, e.g. ``timm/vit_small_patch16_224``.
        pretrained: None (random init), ``"imagenet"`` (timm's default pretrained weights from
            the Hugging Face cache, downloaded when online) or the path of a state dict of that
            timm model (its classifier's keys are ignored; every other key must match).
        image_size: ``(height, width)`` of the input.

    Returns:
        ``(model, channels)``: the model and the width of its pooled features.

    Raises:
        ValueError: timm is missing or has no such model, or a state dict that does not fit.
        FileNotFoundError: ``pretrained`` names a file that does not exist.
        WeightsUnavailableError: ``"imagenet"`` weights are neither cached nor downloadable.

    Example:
        >>> model, channels = build_timm_backbone("timm/resnet18")
        >>> model(torch.zeros(2, 3, 128, 64)).shape, channels
        (torch.Size([2, 512]), 512)
    """
    problem = timm_backbone_problem(name)
    if problem is not None:
        raise ValueError(f"backbone={name!r}: {problem}")
    import timm

    model_name = name.removeprefix(TIMM_PREFIX)
    if pretrained == "imagenet":
        try:
            model = timm.create_model(model_name, pretrained=True, num_classes=0)
        except (OSError, RuntimeError, ValueError) as err:  # offline and not in the cache
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise WeightsUnavailableError(
                f"pretrained='imagenet': timm could not load the weights of {model_name!r} "
                f"({reason}). Offline? Run timm.create_model({model_name!r}, pretrained=True) "
                "once on a connected machine (it fills the Hugging Face cache, HF_HOME) and "
                "copy the cache here, or pass pretrained=<path to a state dict of that model>."
            ) from None
    else:
        model = timm.create_model(model_name, pretrained=False, num_classes=0)
        if pretrained is not None:
            _load_timm_state_dict(model, model_name, pretrained)
    set_input_size = getattr(model, "set_input_size", None)
    if image_size is not None and callable(set_input_size):
        set_input_size(img_size=image_size)
    channels = model.num_features  # every timm model has it
    if not isinstance(channels, int):
        raise TypeError(f"timm {model_name}: num_features is not an int ({channels!r})")
    return model, channels


def _load_timm_state_dict(model: nn.Module, model_name: str, path: str | os.PathLike) -> None:
    # timm's own file loading only logs keys that do not fit; here they are an error.
    state = _file_state_dict(path, kind=f"timm {model_name}")
    config: dict[str, Any] = getattr(model, "pretrained_cfg", None) or {}
    head = config.get("classifier") or ()
    heads = (head,) if isinstance(head, str) else tuple(head)
    _load_all_but_head(model, state, heads, path, f"timm {model_name}")


def _load_all_but_head(
    model: nn.Module,
    state: dict[str, Tensor],
    heads: tuple[str, ...],
    pretrained: str | os.PathLike,
    name: str,
) -> None:
    """Load ``state`` into ``model``, its classifier ``heads`` left out on both sides; any other
    key that is missing, unexpected or of another shape is a ``ValueError`` naming the file."""
    prefixes = tuple(f"{head}." for head in heads)
    state = {k: v for k, v in state.items() if not k.startswith(prefixes)}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a shape mismatch, e.g. resnet50 weights for resnet18
        reason = str(err).strip().splitlines()[-1].strip()  # the mismatch, not the preamble
        raise ValueError(f"pretrained={str(pretrained)!r} does not fit {name}: {reason}") from None
    missing = [k for k in missing if not k.startswith(prefixes)]
    if missing or unexpected:
        raise ValueError(
            f"pretrained={str(pretrained)!r} does not fit {name}: "
            f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
        )
