"""The networks' trunks: torchvision ResNets with layer 4 at stride 1.

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

import torch
import torchvision.models as tvm
from torch import Tensor, nn

__all__ = ["BACKBONES", "build_backbone"]

# name -> (torchvision constructor, ImageNet weights enum member)
BACKBONES: dict[str, tuple[Callable[..., tvm.ResNet], tvm.WeightsEnum]] = {
    "resnet18": (tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (tvm.resnet34, tvm.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V1),
}


def _imagenet_state_dict(backbone: str) -> dict[str, Tensor]:
    weights = BACKBONES[backbone][1]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except (urllib.error.URLError, OSError) as err:
        raise RuntimeError(
            f"pretrained='imagenet': could not load {weights} for backbone {backbone!r} "
            f"({err}). Offline? Download {weights.url} on a connected machine and put it at "
            f"{cached} (the torch hub cache; set TORCH_HOME to move it), or pass "
            "pretrained=<path to a torchvision ResNet state dict>."
        ) from None


def _file_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
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
            f"pretrained={str(path)!r}: expected a torchvision ResNet state dict "
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
        RuntimeError: ``"imagenet"`` weights are neither cached nor downloadable.

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
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        try:
            missing, unexpected = resnet.load_state_dict(state, strict=False)
        except RuntimeError as err:  # shape mismatch, e.g. resnet50 weights for resnet18
            raise ValueError(f"pretrained={str(pretrained)!r} does not fit {name}: {err}") from None
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise ValueError(
                f"pretrained={str(pretrained)!r} does not fit {name}: "
                f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
            )
    for module in resnet.layer4[0].modules():
        if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
            module.stride = (1, 1)
    names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    trunk = nn.Sequential(OrderedDict((n, getattr(resnet, n)) for n in names))
    return trunk, resnet.fc.in_features
