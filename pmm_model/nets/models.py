"""Re-identification networks on torchvision ResNets: PMM and a BoT baseline.

PMM's three stages are described in docs/method.md#network.

Both networks return a :class:`ReIDOutput` (per-stage features and logits) in training mode
and a single embedding tensor in eval mode, so one loss and one evaluation path serve both.

Example:
    >>> import torch
    >>> from pmm_model.nets.models import build_model
    >>> model = build_model("pmm", num_classes=4, backbone="resnet18", block_size=(1, 1))
    >>> images, labels = torch.randn(8, 3, 64, 32), torch.arange(4).repeat_interleave(2)
    >>> out = model(images, labels)
    >>> [f.shape[1] for f in out.features], out.logits[0].shape
    ([512, 512, 512], torch.Size([8, 4]))
    >>> model.eval()(images).shape
    torch.Size([8, 1536])
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck

import pmm_kernels
from pmm_model.nets.backbones import build_backbone, build_timm_backbone, is_timm_backbone

__all__ = [
    "CAM_MODES",
    "MIX_MODES",
    "MODELS",
    "BaselineNet",
    "PMMNet",
    "ReIDOutput",
    "build_model",
    "mixes_features",
    "pmm_saliency",
]

CAM_MODES = ("fast", "paper")
# PMMNet's stage-2/3 mixes: the feature-mix family, or "none" (stages 2 and 3 see x_part unmixed:
# the "PMM without mixing" ablation).
MIX_MODES = (*pmm_kernels.MODES, "none")


@dataclass
class ReIDOutput:
    """What a network returns in training mode: one entry per stage, in stage order.

    Attributes:
        features: ``(N, D)`` embeddings that the triplet loss sees (PMM: three 512-d stage
            features; baseline: the pooled feature before its BN-neck).
        logits: ``(N, num_classes)`` identity logits for the cross-entropy loss.
        mix_info: the ``pmm_kernels.MixInfo`` of each mixing stage (PMM: stages 2 and 3;
            baseline and ``mix="none"``: empty), kept so callers can see which blocks were
            replaced.
        targets: per stage, the layer's probability targets (``FeatureMix.targets``: labels
            mixed by area, unsmoothed) that stage's cross-entropy scores, or None for the plain
            labels; empty means plain labels everywhere (every mode but ``a_cutmix`` and
            ``cutmix``).
        saliency: per mixing stage, in ``mix_info``'s order, the detached ``(N, h, w)``
            Grad-CAM map that ranked the blocks, or None for a mode that draws them at random.
    """

    features: list[Tensor]
    logits: list[Tensor]
    mix_info: list[pmm_kernels.MixInfo] = field(default_factory=list)
    targets: list[Tensor | None] = field(default_factory=list)
    saliency: list[Tensor | None] = field(default_factory=list)


def _init_classifier(linear: nn.Linear) -> None:
    # Small logits at the start, as in BoT/BDB, so label-smoothed CE does not saturate early.
    nn.init.normal_(linear.weight, std=0.001)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


class BaselineNet(nn.Module):
    """BoT-style global-feature baseline: a backbone, its pooled feature, BN-neck, classifier.

    The backbone is a torchvision ResNet (last stride 1, average-pooled) or any timm model
    (``backbone="timm/<name>"``, pooled as timm pools it). With ``mix_after``, the drop-in
    layer ``pmm_kernels.FeatureMix(mix)`` mixes the features after that module of the backbone
    in training, as a user of the layer would insert it into their own net.

    Training mode ``forward(images, labels)`` returns a one-stage :class:`ReIDOutput` (the
    triplet loss sees the pooled feature, the classifier the BN-neck feature); eval mode
    ``forward(images)`` returns the BN-neck feature.

    Args:
        num_classes: number of training identities.
        backbone: ``"resnet18"``, ``"resnet34"``, ``"resnet50"`` or ``"timm/<name>"``.
        pretrained: see :func:`~pmm_model.nets.backbones.build_backbone` (torchvision) and
            :func:`~pmm_model.nets.backbones.build_timm_backbone` (timm).
        mix: the mode of the inserted layer (a key of ``pmm_kernels.MODES``); used only with
            ``mix_after``.
        mix_after: the backbone module whose output is mixed (``"layer3"``, ``"blocks.9"``,
            ``"stages.2"``; ``pmm_kernels.insert_feature_mix``'s names), or None: no mixing.
        num_blocks: blocks the layer mixes per sample (its 8x4 block grid on the map).
        height: input height; a timm model with position embeddings is built for it.
        width: input width.

    Example:
        >>> net = BaselineNet(num_classes=3, backbone="resnet18").eval()
        >>> net(torch.zeros(2, 3, 64, 32)).shape
        torch.Size([2, 512])
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        pretrained: str | os.PathLike | None = None,
        mix: str = "a_hard_mix",
        mix_after: str | None = None,
        num_blocks: int = 3,
        height: int | None = None,
        width: int | None = None,
    ) -> None:
        super().__init__()
        if is_timm_backbone(backbone):
            size = None if height is None or width is None else (height, width)
            self.backbone, channels = build_timm_backbone(backbone, pretrained, size)
        else:
            self.backbone, channels = build_backbone(backbone, pretrained)
        self.bnneck = nn.BatchNorm1d(channels)
        self.bnneck.bias.requires_grad_(False)  # BoT: a shift-free neck keeps the metric space
        self.classifier = nn.Linear(channels, num_classes, bias=False)
        _init_classifier(self.classifier)
        self.mixer: pmm_kernels.FeatureMix | None = None
        if mix_after is not None:
            if mix not in pmm_kernels.MODES:
                raise ValueError(
                    f"mix={mix!r} is not a mode of the layer mixing after {mix_after!r}; "
                    f"valid: {', '.join(pmm_kernels.MODES)}"
                )
            self.mixer = pmm_kernels.FeatureMix(mix, num_blocks=num_blocks)
            # Inserted from the network, since a torchvision trunk is an nn.Sequential, which
            # cannot hold the layer (insert_feature_mix says why).
            try:
                pmm_kernels.insert_feature_mix(self, f"backbone.{mix_after}", self.mixer)
            except ValueError as err:
                raise ValueError(f"mix_after={mix_after!r} in {backbone}: {err}") from None

    def forward(self, images: Tensor, labels: Tensor | None = None) -> ReIDOutput | Tensor:
        """Embeddings (eval mode) or a one-stage :class:`ReIDOutput` (training mode).

        Raises:
            ValueError: training mode with a mixing layer and no ``labels``.
        """
        if self.mixer is not None and self.training:
            if labels is None:
                raise ValueError("labels are required in training mode: the layer mixes by them")
            with pmm_kernels.mix_labels(self, labels):
                feat = self.backbone(images)
        else:
            feat = self.backbone(images)
        if feat.dim() == 4:  # a torchvision trunk's map; timm models pool themselves
            feat = F.adaptive_avg_pool2d(feat, 1).flatten(1)
        neck = self.bnneck(feat)
        if not self.training:
            return neck
        logits = self.classifier(neck)
        if self.mixer is None or self.mixer.last_info is None:
            return ReIDOutput(features=[feat], logits=[logits])
        assert labels is not None  # checked above: the layer mixed by them
        mixes_labels = self.mixer.spec.mixes_labels
        return ReIDOutput(
            features=[feat],
            logits=[logits],
            mix_info=[self.mixer.last_info],
            targets=[self.mixer.targets(labels, logits.shape[1])] if mixes_labels else [],
        )


class PMMNet(nn.Module):
    """Progressive Multi-stage feature Mix network (docs/method.md#network), three stages.

    Stage 1 classifies the average-pooled trunk map ``x``. Stages 2 and 3 share one extra
    randomly initialised torchvision ``Bottleneck(C, C // 4)`` (identity shortcut; C = 2048 for
    resnet50 as in the paper, 512 for resnet18/34) giving ``x_part``. In training, stage 2 sees
    ``x_part`` with the blocks that are most salient for stage 1 (Grad-CAM channel weights of
    ``x``) swapped in from a different identity; stage 3 sees the unmixed ``x_part`` mixed by
    the Grad-CAM saliency of the mixed stage-2 map. Each stage mixes through its own
    ``pmm_kernels.FeatureMix`` layer (``mixer2``, ``mixer3``; None for ``mix="none"``), the
    drop-in layer the package ships, each call drawing its own partners; ``mix`` picks the mode
    (the paper's ablation), and the random modes skip Grad-CAM.

    Grad-CAM weights are ``d(sum_n logit[n, y_n]) / d(feature map)`` averaged over H and W.
    ``cam="fast"`` obtains them as ``g / (H*W)`` with ``g`` the gradient w.r.t. the pooled
    vector feeding the head, which equals that spatial mean for both average and max
    pooling, so only the small head is differentiated. ``cam="paper"`` reproduces the
    authors' computation and cost: the gradient w.r.t. the full map, averaged over H and W,
    taken by a backward that (like their ``score.backward()``) also runs through the trunk
    and every parameter; the parameter gradients are discarded, never stored in ``.grad``.

    Args:
        num_classes: number of training identities.
        backbone: ``"resnet18"``, ``"resnet34"`` or ``"resnet50"``.
        pretrained: see :func:`build_backbone`.
        feature_dim: width of each stage's embedding (512 in the paper).
        block_size: ``(bh, bw)`` mixing block in feature-map cells; ``(3, 2)`` on the paper's
            24x8 map. Keep the 8x4 block grid for other inputs, e.g. ``(1, 1)`` at 128x64.
        num_blocks: blocks replaced per sample and stage (not used by ``batch_drop``).
        cam: ``"fast"`` or ``"paper"`` (see above; both select the same blocks).
        mix: a mode of ``pmm_kernels.MODES`` (default ``"a_hard_mix"``, the paper's PMM), or
            ``"none"``: stages 2 and 3 see ``x_part`` unmixed (PMM without mixing).

    Training mode ``forward(images, labels)`` returns a :class:`ReIDOutput` with three
    ``(N, feature_dim)`` features, three logit tensors and the two ``MixInfo``; eval mode
    ``forward(images)`` returns the ``(N, 3 * feature_dim)`` concatenated embedding.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        pretrained: str | os.PathLike | None = None,
        feature_dim: int = 512,
        block_size: tuple[int, int] = (3, 2),
        num_blocks: int = 3,
        cam: str = "fast",
        mix: str = "a_hard_mix",
    ) -> None:
        super().__init__()
        if cam not in CAM_MODES:
            raise ValueError(f"cam={cam!r} is not supported; valid: {', '.join(CAM_MODES)}")
        if mix not in MIX_MODES:
            raise ValueError(f"mix={mix!r} is not supported; valid: {', '.join(MIX_MODES)}")
        if isinstance(feature_dim, bool) or not isinstance(feature_dim, int) or feature_dim < 1:
            raise ValueError(f"feature_dim must be a positive int, got {feature_dim!r}")
        self.cam = cam
        self.mix = mix
        # Stages 2 and 3 mix through the drop-in layer pmm_kernels ships (it checks block_size
        # and num_blocks); it holds no parameters or buffers, so the state_dict is the network's.
        self.mixer2, self.mixer3 = (
            None
            if mix == "none"
            else pmm_kernels.FeatureMix(mix, block_size=block_size, num_blocks=num_blocks)
            for _ in range(2)
        )
        self.backbone, channels = build_backbone(backbone, pretrained)
        self.extra_block = Bottleneck(channels, channels // 4)
        for module in self.extra_block.modules():
            if isinstance(module, nn.Conv2d):  # torchvision's ResNet init for a fresh block
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        self.reduction1 = nn.Sequential(
            nn.Conv2d(channels, feature_dim, 1, bias=False),
            nn.BatchNorm2d(feature_dim),
            nn.ReLU(inplace=True),
        )
        self.reduction2, self.reduction3 = (
            nn.Sequential(
                nn.Linear(channels, feature_dim), nn.BatchNorm1d(feature_dim), nn.ReLU(inplace=True)
            )
            for _ in range(2)
        )
        classifiers = [nn.Linear(feature_dim, num_classes) for _ in range(3)]
        for linear in classifiers:
            _init_classifier(linear)
        self.classifiers = nn.ModuleList(classifiers)

    @property
    def _attentive(self) -> bool:
        return self.mix != "none" and pmm_kernels.MODES[self.mix].cells == "salient"

    def _mix_stage(
        self,
        mixer: pmm_kernels.FeatureMix | None,
        x_part: Tensor,
        ranked: Tensor,
        logits: Tensor,
        pooled: Tensor,
        labels: Tensor,
    ) -> tuple[Tensor, tuple[pmm_kernels.MixInfo, Tensor | None] | None]:
        """``x_part`` mixed, with its ``(MixInfo, saliency)``; unchanged and None for "none".

        The attentive modes rank blocks by the Grad-CAM map of ``ranked`` for ``logits``, which
        the head computed from ``pooled``; the random modes need no saliency.
        """
        if mixer is None:
            return x_part, None
        saliency = None
        if self._attentive:
            weights = self._cam_weights(logits, labels, pooled, ranked)
            saliency = pmm_kernels.saliency(ranked.detach(), weights)
        mixed = mixer(x_part, labels, saliency)
        if not mixer.training or mixer.last_info is None:
            raise RuntimeError("PMMNet's mixing layers must be in training mode with the network")
        return mixed, (mixer.last_info, saliency)

    def _cam_weights(self, logits: Tensor, labels: Tensor, pooled: Tensor, fmap: Tensor) -> Tensor:
        """Grad-CAM channel weights ``(N, C)`` (float32, no graph) of ``fmap`` for the true ids."""
        score = logits.gather(1, labels[:, None]).sum()
        if self.cam == "fast":
            (grad,) = torch.autograd.grad(score, pooled, retain_graph=True)
            return grad.flatten(1).float() / (fmap.shape[2] * fmap.shape[3])
        params = [p for p in self.parameters() if p.requires_grad]
        grads = torch.autograd.grad(score, [fmap, *params], retain_graph=True, allow_unused=True)
        return grads[0].float().mean(dim=(2, 3))

    def forward(self, images: Tensor, labels: Tensor | None = None) -> ReIDOutput | Tensor:
        """Embeddings (eval mode) or a three-stage :class:`ReIDOutput` (training mode).

        Raises:
            ValueError: training mode without ``labels``.
            RuntimeError: training mode with autograd disabled.
        """
        x = self.backbone(images)
        x_part = self.extra_block(x)
        pooled1 = F.adaptive_avg_pool2d(x, 1)
        f1 = self.reduction1(pooled1).flatten(1)
        if not self.training:
            pooled_part = F.adaptive_max_pool2d(x_part, 1).flatten(1)
            return torch.cat([f1, self.reduction2(pooled_part), self.reduction3(pooled_part)], 1)
        if labels is None:
            raise ValueError("labels are required in training mode (Grad-CAM needs the true ids)")
        if not torch.is_grad_enabled():
            raise RuntimeError(
                "PMMNet's training-mode forward needs autograd for Grad-CAM; run it outside "
                "torch.no_grad(), or call model.eval() for embeddings"
            )
        logits1 = self.classifiers[0](f1)

        # Stage 2 ranks x_part's blocks by the Grad-CAM map of x, the map stage 1 classified.
        mixed2, mix2 = self._mix_stage(self.mixer2, x_part, x, logits1, pooled1, labels)
        pooled2 = F.adaptive_max_pool2d(mixed2, 1)
        f2 = self.reduction2(pooled2.flatten(1))
        logits2 = self.classifiers[1](f2)

        # Stage 3 ranks blocks by the Grad-CAM map of the *mixed* stage-2 input but mixes the
        # unmixed x_part, so the two masks do not accumulate.
        mixed3, mix3 = self._mix_stage(self.mixer3, x_part, mixed2, logits2, pooled2, labels)
        f3 = self.reduction3(F.adaptive_max_pool2d(mixed3, 1).flatten(1))
        logits3 = self.classifiers[2](f3)
        mixes = [mix for mix in (mix2, mix3) if mix is not None]
        targets: list[Tensor | None] = []
        if self.mixer2 is not None and self.mixer3 is not None and self.mixer2.spec.mixes_labels:
            num_classes = logits1.shape[1]
            targets = [None, *(m.targets(labels, num_classes) for m in (self.mixer2, self.mixer3))]
        return ReIDOutput(
            features=[f1, f2, f3],
            logits=[logits1, logits2, logits3],
            mix_info=[info for info, _ in mixes],
            targets=targets,
            saliency=[saliency for _, saliency in mixes],
        )


def mixes_features(model: nn.Module) -> bool:
    """Whether ``model`` mixes features in training: PMM with a mode, or the baseline with its
    inserted layer (``mix_after``)."""
    if isinstance(model, PMMNet):
        return model.mix != "none"
    return isinstance(model, BaselineNet) and model.mixer is not None


def pmm_saliency(
    model: nn.Module, images: Tensor, labels: Tensor
) -> tuple[list[Tensor | None], list[pmm_kernels.MixInfo], list[tuple[int, int]]]:
    """Run a mixing network's training forward once; return what each of its mixes did.

    A probe of what the network mixes (for pictures): batch-norm layers use their running
    statistics, as at test time, and are not updated; the model's modes are restored
    afterwards. No parameter gradient is kept.

    Args:
        model: a network that mixes (:func:`mixes_features`): a :class:`PMMNet` or a
            :class:`BaselineNet` with its layer.
        images: ``(N, 3, H, W)`` normalised inputs on the model's device.
        labels: ``(N,)`` training identities (classifier indices) of the images.

    Returns:
        ``(saliencies, infos, block_sizes)``, per mix (PMM: stages 2 and 3; the baseline: its
        layer): the ``(N, h, w)`` float32 map that ranked the blocks (PMM: stage 1's and stage
        2's Grad-CAM; None for the modes that draw blocks at random and for the baseline's
        layer, whose saliency stays inside it), the mix's ``MixInfo``, on the CPU, and the
        block size it cut the map into.

    Raises:
        TypeError: ``model`` does not mix features.
    """
    if not mixes_features(model):
        raise TypeError(
            f"model must mix features (PMMNet, or BaselineNet with mix_after), got "
            f"{type(model).__name__}"
        )
    modes = {module: module.training for module in model.modules()}
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    try:
        with torch.enable_grad():
            out = model(images, labels)
    finally:
        for module, training in modes.items():
            module.train(training)
    infos = [pmm_kernels.MixInfo(*(t.detach().cpu() for t in info)) for info in out.mix_info]
    mixers = [
        mixer
        for mixer in model.modules()
        if isinstance(mixer, pmm_kernels.FeatureMix) and mixer.last_info is not None
    ]  # PMM's mixer2 and mixer3 in stage order, or the baseline's layer
    block_sizes = [
        mixer.block_size_for(*info.mask.shape[1:])
        for mixer, info in zip(mixers, infos, strict=True)
    ]
    saliency = out.saliency or [None] * len(infos)
    saliencies = [None if s is None else s.detach().float().cpu() for s in saliency]
    return saliencies, infos, block_sizes


MODELS: dict[str, type[nn.Module]] = {"baseline": BaselineNet, "pmm": PMMNet}


def build_model(name: str, num_classes: int, **options) -> nn.Module:
    """Build a re-identification network by name.

    Args:
        name: ``"pmm"`` (:class:`PMMNet`) or ``"baseline"`` (:class:`BaselineNet`).
        num_classes: number of training identities (>= 1).
        **options: keyword arguments of that class, e.g. ``backbone="resnet18"``,
            ``pretrained="imagenet"``; PMM also takes ``feature_dim``, ``block_size``,
            ``num_blocks``, ``cam`` and ``mix``.

    Returns:
        The network, in training mode.

    Raises:
        ValueError: unknown name, bad ``num_classes`` or a bad option value.

    Example:
        >>> build_model("baseline", 10, backbone="resnet18").classifier.out_features
        10
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODELS)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return MODELS[name](num_classes, **options)
