"""Drop-in layers: :class:`FeatureMix` (every mode), :class:`AHardMix`, and
:func:`insert_feature_mix`, which puts a layer after a submodule of an existing model."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from pmm_kernels import validation as check
from pmm_kernels.functional import BACKENDS, MODES, MixInfo, feature_mix, mixed_targets
from pmm_kernels.ops.utils import grid_block_size

PAPER_GRID = (8, 4)  # PMM: an 8x4 grid of 3x2 blocks on its 24x8 map


class FeatureMix(nn.Module):
    """A feature-mix mode as a layer: mixes in training mode, returns ``feat`` in eval mode.

    Geometry (docs/op.md#layer-geometry): ``grid=(rows, cols)`` cuts every map it sees into about
    that many blocks, with ``block_size = (ceil(H / rows), ceil(W / cols))``, so the mixed fraction
    stays about ``num_blocks / (rows * cols)`` on any map size; ``block_size=`` pins the block
    instead. The default is the PMM paper's 8x4 grid with 3 blocks.

    Saliency of the attentive modes (``a_hard_mix``, ``a_cutmix``), first that applies:

    1. ``attn`` given to :meth:`forward`: (N, C) channel weights or an (N, H, W) map.
    2. ``classifier``: a ``Linear`` applied to the average-pooled map; the Grad-CAM channel
       weights are then ``classifier.weight[labels]`` (exactly, up to a positive factor that
       does not change the choice, for a global-average-pool -> Linear head), with no backward.
    3. Otherwise *activation saliency* ``ReLU(sum_c feat)``: channel weights of 1, which on a
       post-ReLU map is its channel-summed activation. It needs no labels.

    Args:
        mode: one of :data:`pmm_kernels.MODES`.
        grid: ``(rows, cols)`` of blocks per map; default (8, 4) unless ``block_size`` is given.
        block_size: ``(bh, bw)`` block in cells, instead of ``grid``.
        num_blocks: blocks mixed per sample (k).
        classifier: ``nn.Linear`` whose ``weight[labels]`` are the Grad-CAM weights (attentive
            modes only).
        h_ratio: ``batch_drop``'s rectangle height as a fraction of H.
        w_ratio: ``batch_drop``'s rectangle width as a fraction of W.
        generator: generator of the layer's random draws, so that adding the layer leaves the
            global random stream alone; None uses the default generator (needed under
            ``torch.compile``).
        backend: ``"auto"``, ``"torch"``, ``"triton"``, or None (``PMM_KERNELS_BACKEND``).

    Attributes:
        last_info: the :class:`MixInfo` of the last training-mode forward (None before).

    Raises:
        ValueError: on building, for a bad option or an option the mode does not use.

    Example:
        >>> mix = FeatureMix("a_hard_mix")  # 8x4 grid, k = 3, activation saliency
        >>> feat, labels = torch.rand(4, 16, 8, 4), torch.tensor([0, 0, 1, 1])
        >>> out = mix(feat, labels)
        >>> mix.last_info.lam  # 3 of 32 blocks of 1x1 cells
        tensor([0.0938, 0.0938, 0.0938, 0.0938])
        >>> mix.eval()(feat, labels) is feat
        True
    """

    def __init__(
        self,
        mode: str = "a_hard_mix",
        *,
        grid: tuple[int, int] | None = None,
        block_size: tuple[int, int] | None = None,
        num_blocks: int = 3,
        classifier: nn.Linear | None = None,
        h_ratio: float = 0.33,
        w_ratio: float = 1.0,
        generator: torch.Generator | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        check.check_choice("mode", mode, MODES)
        self.spec = MODES[mode]
        if grid is not None and block_size is not None:
            raise ValueError(
                f"give grid or block_size, not both; got grid={grid!r}, block_size={block_size!r}"
            )
        check.check_positive_int("num_blocks", num_blocks)
        if block_size is not None:
            self.grid, self.block_size = (
                None,
                check.check_int_pair("block_size", block_size, "(bh, bw)"),
            )
        else:
            self.block_size = None
            self.grid = check.check_int_pair(
                "grid", PAPER_GRID if grid is None else grid, "(rows, cols)"
            )
            if num_blocks > self.grid[0] * self.grid[1] and self.spec.cells != "rectangle":
                raise ValueError(
                    f"num_blocks must be in [1, {self.grid[0] * self.grid[1]}] for a "
                    f"{self.grid[0]}x{self.grid[1]} grid, got {num_blocks}"
                )
        if classifier is not None:
            if self.spec.cells != "salient":
                raise ValueError(
                    f"classifier gives Grad-CAM saliency, which mode={mode!r} does not use"
                )
            if not isinstance(classifier, nn.Linear):
                raise TypeError(
                    f"classifier must be an nn.Linear, got {check.describe(classifier)}"
                )
        if backend is not None:
            check.check_choice("backend", backend, BACKENDS)
        self.mode = mode
        self.num_blocks = num_blocks
        # A plain attribute, not a submodule: the head stays where its model registered it.
        self.__dict__["classifier"] = classifier
        self.h_ratio = check.check_ratio("h_ratio", h_ratio)
        self.w_ratio = check.check_ratio("w_ratio", w_ratio)
        self.generator = check.check_generator(generator)
        self.backend = backend
        self.last_info: MixInfo | None = None

    def block_size_for(self, height: int, width: int) -> tuple[int, int]:
        """The block size used on a ``height x width`` map."""
        if self.block_size is not None:
            return self.block_size
        return grid_block_size(height, width, self.grid)

    def _saliency_source(self, feat: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        n, c = feat.shape[:2]
        if self.classifier is None:
            return torch.ones(n, c, device=feat.device)
        if labels is None:
            raise ValueError("FeatureMix with a classifier needs labels for its Grad-CAM weights")
        if self.classifier.in_features != c:
            raise ValueError(
                f"classifier takes {self.classifier.in_features} features but the map has "
                f"{c} channels: it must be the Linear on this map's pooled feature"
            )
        return self.classifier.weight.detach()[labels.long()]

    def _mix(
        self,
        feat: torch.Tensor,
        labels: torch.Tensor | None,
        attn: torch.Tensor | None,
        negatives: torch.Tensor | None,
    ) -> torch.Tensor:
        feat = check.check_feat(feat)
        if self.spec.cells == "salient" and attn is None:
            attn = self._saliency_source(feat, labels)
        out, self.last_info = feature_mix(
            feat,
            labels,
            attn,
            mode=self.mode,
            block_size=self.block_size_for(feat.shape[2], feat.shape[3]),
            num_blocks=self.num_blocks,
            partners=negatives,
            generator=self.generator,
            h_ratio=self.h_ratio,
            w_ratio=self.w_ratio,
            backend=self.backend,
        )
        return out

    def forward(
        self,
        feat: torch.Tensor,
        labels: torch.Tensor | None = None,
        attn: torch.Tensor | None = None,
        *,
        negatives: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mixed ``feat`` in training mode, ``feat`` itself in eval mode.

        Args:
            feat: (N, C, H, W) feature map.
            labels: (N,) labels; needed by the "different label" modes and by ``classifier``.
            attn: saliency for the attentive modes (else ``classifier`` or activations).
            negatives: fixed partners, as in :func:`pmm_kernels.feature_mix`.
        """
        if not self.training:
            return feat
        return self._mix(feat, labels, attn, negatives)

    def targets(
        self, labels: torch.Tensor, num_classes: int, smoothing: float = 0.0
    ) -> torch.Tensor:
        """Training targets for the last forward: :func:`pmm_kernels.mixed_targets` of its
        :attr:`last_info` for the label-mixing modes, the (smoothed) one-hot labels otherwise."""
        info = self.last_info if self.spec.mixes_labels and self.training else None
        return mixed_targets(labels, info, num_classes, smoothing)

    def extra_repr(self) -> str:
        geometry = (
            f"block_size={self.block_size}" if self.block_size is not None else f"grid={self.grid}"
        )
        return f"mode={self.mode!r}, {geometry}, num_blocks={self.num_blocks}"


class AHardMix(FeatureMix):
    """:class:`FeatureMix` in ``a_hard_mix`` mode, called like :func:`pmm_kernels.a_hard_mix`.

    Example:
        >>> mix = AHardMix(block_size=(3, 2), num_blocks=3)
        >>> feat = torch.randn(4, 16, 24, 8)
        >>> out = mix(feat, torch.rand(4, 16), torch.tensor([0, 0, 1, 1]))
        >>> mix.eval()(feat, torch.rand(4, 16), torch.tensor([0, 0, 1, 1])) is feat
        True
    """

    def __init__(
        self,
        block_size: tuple[int, int] | None = None,
        num_blocks: int = 3,
        *,
        grid: tuple[int, int] | None = None,
        classifier: nn.Linear | None = None,
        generator: torch.Generator | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__(
            "a_hard_mix",
            grid=grid,
            block_size=block_size,
            num_blocks=num_blocks,
            classifier=classifier,
            generator=generator,
            backend=backend,
        )

    def forward(
        self,
        feat: torch.Tensor,
        attn: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        negatives: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mixed ``feat`` in training mode, ``feat`` itself in eval mode."""
        return super().forward(feat, labels, attn, negatives=negatives)


class FeatureMixHook:
    """A :class:`FeatureMix` running after a submodule; made by :func:`insert_feature_mix`.

    Labels reach the layer through :attr:`labels` or :meth:`labels_for`, so the model's own
    ``forward(images)`` stays as it is. The layer mixes while the submodule is in training mode.

    Attributes:
        mix: the layer (its ``last_info`` says what the last training step mixed).
        labels: the labels of the next forward, or None.
    """

    def __init__(self, mix: FeatureMix, module: nn.Module, name: str) -> None:
        self.mix = mix
        self.name = name
        self.labels: torch.Tensor | None = None
        self._handle = module.register_forward_hook(self._after)

    def _after(self, module: nn.Module, args, output):
        if not module.training:
            return None  # eval: the output stays as it is
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            raise TypeError(
                f"insert_feature_mix: {self.name!r} must return an (N, C, H, W) tensor, got "
                f"{check.describe(output)}"
            )
        if self.labels is None and (
            self.mix.spec.partner_rule == "different_label" or self.mix.classifier is not None
        ):
            raise ValueError(
                f"the {self.mix.mode} layer after {self.name!r} needs labels: run the model "
                "inside `with hook.labels_for(labels):` or set hook.labels"
            )
        return self.mix._mix(output, self.labels, None, None)

    @contextmanager
    def labels_for(self, labels: torch.Tensor | None) -> Iterator[FeatureMixHook]:
        """Use ``labels`` for the forwards inside the ``with`` block."""
        previous, self.labels = self.labels, labels
        try:
            yield self
        finally:
            self.labels = previous

    def remove(self) -> None:
        """Take the layer out again."""
        self._handle.remove()


def insert_feature_mix(model: nn.Module, after: str, mix: FeatureMix) -> FeatureMixHook:
    """Run ``mix`` on the output of ``model``'s submodule ``after``, through a forward hook.

    The model's ``forward`` is untouched, so training engines that call ``model(images)`` keep
    working; give the labels through the returned hook. The layer follows the submodule's
    train/eval mode: it is the identity in ``model.eval()``.

    Args:
        model: any ``nn.Module``.
        after: dotted name of the submodule, as in ``model.named_modules()``, e.g. ``"layer3"``.
        mix: the layer to run.

    Returns:
        The :class:`FeatureMixHook`; ``hook.remove()`` takes the layer out.

    Raises:
        ValueError: no submodule of that name. TypeError: ``mix`` is not a FeatureMix.

    Example:
        >>> import torchvision
        >>> net = torchvision.models.resnet18(num_classes=4)
        >>> hook = insert_feature_mix(net, "layer4", FeatureMix(classifier=net.fc))
        >>> with hook.labels_for(torch.tensor([0, 1, 2, 3])):
        ...     logits = net(torch.randn(4, 3, 256, 128))
        >>> hook.mix.last_info.mask.shape
        torch.Size([4, 8, 4])
    """
    if not isinstance(mix, FeatureMix):
        raise TypeError(f"mix must be a FeatureMix, got {check.describe(mix)}")
    try:
        module = model.get_submodule(after)
    except AttributeError:
        names = [name for name, _ in model.named_children()]
        raise ValueError(
            f"after={after!r} is not a submodule of {type(model).__name__}; its children are "
            f"{names}"
        ) from None
    return FeatureMixHook(mix, module, after)
