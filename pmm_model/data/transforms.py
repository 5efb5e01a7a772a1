"""Image transforms for training and testing (torchvision), plus a tensor Cutout.

Example:
    >>> from PIL import Image
    >>> tf = build_transforms(128, 64, is_train=True)
    >>> tf(Image.new("RGB", (64, 128))).shape
    torch.Size([3, 128, 64])
"""

from __future__ import annotations

import torch
import torchvision.transforms as T
from torch import Tensor

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Cutout", "build_transforms"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Cutout(torch.nn.Module):
    """Cutout (DeVries & Taylor, 2017) on a ``(C, H, W)`` tensor: zero one rectangular hole.

    The hole's centre is uniform over the image and the hole is clipped at the border, as
    in the original. Randomness comes from ``torch``'s generator, so DataLoader worker
    seeding makes it reproducible. Apply it after normalisation: zero is then the mean colour.

    Args:
        size: ``(height, width)`` of the hole in pixels.
        p: probability of cutting a hole.

    Example:
        >>> out = Cutout((2, 2), p=1.0)(torch.ones(3, 4, 4))
        >>> 1 <= int((out[0] == 0).sum()) <= 4
        True
    """

    def __init__(self, size: tuple[int, int], p: float = 0.5) -> None:
        super().__init__()
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"size must be two positive ints, got {size!r}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p!r}")
        self.size, self.p = tuple(size), p

    def forward(self, img: Tensor) -> Tensor:
        if torch.rand(1).item() >= self.p:
            return img
        height, width = img.shape[-2:]
        cy, cx = (int(torch.randint(n, (1,))) for n in (height, width))
        top, left = max(cy - self.size[0] // 2, 0), max(cx - self.size[1] // 2, 0)
        img = img.clone()
        img[..., top : cy + (self.size[0] + 1) // 2, left : cx + (self.size[1] + 1) // 2] = 0
        return img

    def extra_repr(self) -> str:
        return f"size={self.size}, p={self.p}"


def build_transforms(
    height: int, width: int, is_train: bool, cutout: bool = True, random_erasing: bool = False
) -> T.Compose:
    """The paper's pipeline: resize, (flip, Cutout), tensor, ImageNet normalisation.

    Args:
        height: output height in pixels (384 in the paper).
        width: output width in pixels (128 in the paper).
        is_train: add the training augmentations.
        cutout: training only; Cutout with p=0.5 and the paper's 64x64 hole at 384x128,
            scaled with the input: ``round(64*height/384) x round(64*width/128)``.
        random_erasing: training only; also apply torchvision's ``RandomErasing`` (p=0.5).

    Returns:
        A ``torchvision.transforms.Compose`` mapping a PIL image to a normalised tensor.
    """
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be positive, got {height}x{width}")
    steps: list = [T.Resize((height, width))]
    if is_train:
        steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if is_train and cutout:
        hole = (max(1, round(64 * height / 384)), max(1, round(64 * width / 128)))
        steps.append(Cutout(hole, p=0.5))
    if is_train and random_erasing:
        steps.append(T.RandomErasing(p=0.5))
    return T.Compose(steps)
