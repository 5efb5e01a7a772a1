"""The drop-in layer: :class:`FeatureMix`, every mode of the family (the paper's, with the op's
calling order: :class:`pmm_kernels.a_hard_mix_layer.AHardMix`).

:mod:`pmm_kernels.hooks` puts a layer after a submodule of an existing model and gives it labels.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pmm_kernels import layer_geometry as geometry
from pmm_kernels import validation as check
from pmm_kernels.functional import feature_mix, mixed_targets
from pmm_kernels.layer_state import BATCH_LABELS, Call, LabelSlot, draw_state, recomputing
from pmm_kernels.modes import MODES, MixInfo
from pmm_kernels.ops.feature_mix import BACKENDS, Backend
from pmm_kernels.tokens import LAYOUTS, TokenGrid, token_norm


@torch.compiler.disable(
    reason="FeatureMix(generator=...) cannot draw from a torch.Generator under torch.compile: "
    "pass generator=None (build the layer without one) for compiled code"
)
def _generator_under_compile() -> None:
    """Called only while dynamo traces a layer that has a generator: with ``fullgraph=True`` the
    user sees the reason above instead of dynamo's "Observed exception"; without it, dynamo breaks
    the graph here and the draws run eagerly."""


class FeatureMix(nn.Module):
    """A feature-mix mode as a layer: mixes in training mode, returns ``feat`` in eval mode.

    Geometry (docs/op.md#layer-geometry): ``grid=(rows, cols)`` cuts every map it sees into
    blocks of ``(ceil(H / rows), ceil(W / cols))`` cells and mixes ``num_blocks`` of every
    ``rows * cols`` of them, so the mixed fraction stays about ``num_blocks / (rows * cols)`` on
    any map size: a map smaller than the grid, or one the grid does not divide, has fewer blocks,
    and the layer mixes ``round(num_blocks * blocks / (rows * cols))`` of them (at least 1). Where
    that is more than twice or less than half the target (a 2x1 map), it warns once.
    ``block_size=`` pins the block and ``num_blocks`` instead. The default is the PMM paper's 8x4
    grid with 3 blocks.

    Saliency of the attentive modes (``a_hard_mix``, ``a_cutmix``), first that applies:

    1. ``attn`` given to :meth:`forward`: (N, C) channel weights or an (N, H, W) map.
    2. ``classifier``: a ``Linear`` applied to the average-pooled map; the Grad-CAM channel
       weights are then ``classifier.weight[labels]`` (exactly, up to a positive factor that
       does not change the choice, for a global-average-pool -> Linear head), with no backward.
    3. ``saliency``: a callable returning the (N, H, W) map (for tokens:
       :class:`pmm_kernels.tokens.ClsAttention`, the cls token's attention).
    4. Otherwise *activation saliency* ``ReLU(sum_c feat)``: channel weights of 1, which on a
       post-ReLU map is its channel-summed activation; on tokens, each token's L2 norm
       (:func:`pmm_kernels.tokens.token_norm`). It needs no labels.

    Token inputs (docs/transformers.md): (N, P + H*W, C) tokens are mixed as the (N, C, H, W)
    view of their patch tokens (no copy), the P prefix tokens untouched; (N, H, W, C) maps with
    ``layout="nhwc"``.

    Labels come from :meth:`forward`'s ``labels``, else from :attr:`labels`, which
    :func:`pmm_kernels.mix_labels` sets on every layer of a model. Copies of the layer
    (``copy.deepcopy``, pickle, e.g. an EMA model made inside ``mix_labels``) do not carry them.

    Activation checkpointing: a forward that autograd recomputes during the backward replays the
    training forward's mix exactly (its draws and labels), whatever generator the layer has and
    with no labels needed at backward time; the replay checks that it chose the same cells.

    Called several times in one training forward (two views through one trunk, a block run for
    several heads), each call mixes with its own draws; :attr:`infos` holds every call's
    ``MixInfo`` and :meth:`targets` takes ``call=``. A forward starts at the model's forward
    for a layer put in by :func:`pmm_kernels.insert_feature_mix`, on entering
    :func:`pmm_kernels.mix_labels`, and otherwise at every call.

    For the label-mixing modes (``a_cutmix``, ``cutmix``) the loss must score :meth:`targets`:
    a training forward that follows one whose targets nobody asked for warns once, since a loss
    on the integer labels silently drops the label mix.

    Args:
        mode: one of :data:`pmm_kernels.MODES`.
        grid: ``(rows, cols)`` of blocks per map; default (8, 4) unless ``block_size`` is given.
        block_size: ``(bh, bw)`` block in cells, instead of ``grid``.
        num_blocks: blocks mixed per sample (k), per ``rows * cols`` blocks with ``grid``.
        classifier: ``nn.Linear`` whose ``weight[labels]`` are the Grad-CAM weights (attentive
            modes only).
        h_ratio: ``batch_drop``'s rectangle height as a fraction of H.
        w_ratio: ``batch_drop``'s rectangle width as a fraction of W.
        generator: generator of the layer's random draws, so that adding the layer leaves the
            global random stream alone; None uses the default generator (needed under
            ``torch.compile``).
        backend: ``"auto"``, ``"torch"``, ``"triton"``, or None (``PMM_KERNELS_BACKEND``).
        layout: the input's layout, one of ``"nchw"``, ``"tokens"`` ((N, P + H*W, C)) and
            ``"nhwc"`` (timm Swin stages); None: tokens when 3-D, else NCHW
            (:func:`pmm_kernels.insert_feature_mix` sets ``"nhwc"`` for an NHWC model).
        token_grid: the :class:`~pmm_kernels.tokens.TokenGrid` of token inputs (set from the
            model by :func:`pmm_kernels.insert_feature_mix` when not given).
        saliency: a callable giving the (N, H, W) saliency of the (N, C, H, W) map (the
            attentive modes), e.g. :class:`pmm_kernels.tokens.ClsAttention`; instead of
            ``classifier`` and of the default.

    Attributes:
        last_info: the :class:`MixInfo` of the last training-mode forward (None before).
        labels: (N,) labels used when :meth:`forward` gets none; not saved in ``state_dict``.

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

    # The head is a plain attribute, not a submodule: it stays where its model registered it.
    classifier: nn.Linear | None
    saliency: Callable[[torch.Tensor], torch.Tensor] | None
    grid: tuple[int, int] | None
    block_size: tuple[int, int] | None

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
        backend: Backend | None = None,
        layout: str | None = None,
        token_grid: TokenGrid | None = None,
        saliency: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        check.check_choice("mode", mode, MODES)
        self.spec = MODES[mode]
        self.grid, self.block_size = geometry.check_geometry(
            grid, block_size, num_blocks, rectangle=self.spec.cells == "rectangle"
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
        self.__dict__["classifier"] = classifier
        self.h_ratio = check.check_ratio("h_ratio", h_ratio)
        self.w_ratio = check.check_ratio("w_ratio", w_ratio)
        self.generator = check.check_generator(generator)
        self.backend = backend
        if layout is not None:
            check.check_choice("layout", layout, LAYOUTS)
        if token_grid is not None and not isinstance(token_grid, TokenGrid):
            raise TypeError(f"token_grid must be a TokenGrid, got {check.describe(token_grid)}")
        if saliency is not None:
            if self.spec.cells != "salient":
                raise ValueError(f"saliency= ranks blocks, which mode={mode!r} does not use")
            if classifier is not None:
                raise ValueError("give classifier= or saliency=, not both")
            if not callable(saliency):
                raise TypeError(f"saliency must be callable, got {check.describe(saliency)}")
        self.layout = layout
        self.token_grid = token_grid
        self.__dict__["saliency"] = saliency
        self.last_info: MixInfo | None = None
        self.__dict__["_labels"] = LabelSlot()
        self._warned_geometry = False
        self._calls: list[Call] = []  # this training forward's calls, in order
        self._collecting = False  # inside a forward begun by the hook or mix_labels
        self._targets_read = True
        self._warned_targets = False

    @property
    def labels(self) -> torch.Tensor | None:
        """(N,) labels used when :meth:`forward` gets none; not in ``state_dict``."""
        return BATCH_LABELS.get(id(self._labels))

    @labels.setter
    def labels(self, labels: torch.Tensor | None) -> None:
        BATCH_LABELS[id(self._labels)] = labels

    @property
    def infos(self) -> tuple[MixInfo, ...]:
        """The ``MixInfo`` of each call of the last training forward, in call order."""
        return tuple(call.info for call in self._calls)

    def begin_forward(self, collect: bool = True) -> None:
        """Start a training forward: its calls replace the last one's (see the class docstring).

        :func:`pmm_kernels.insert_feature_mix`'s hook and :func:`pmm_kernels.mix_labels` call it;
        with ``collect`` the calls up to the next ``begin_forward`` count as one forward.
        """
        if (
            self.spec.mixes_labels
            and self._calls
            and not self._targets_read
            and not self._warned_targets
            and not torch.compiler.is_compiling()
        ):
            self._warned_targets = True
            warnings.warn(
                f"FeatureMix(mode={self.mode!r}) mixed the labels of its last training forward "
                "by area, but nobody asked for layer.targets(...): a loss on the integer labels "
                "(plain F.cross_entropy, fast-reid's Baseline.losses) drops the label mix. Score "
                "layer.targets(labels, num_classes) with pmm_kernels.soft_cross_entropy "
                "(torchreid: pmm_kernels.integrations.TorchreidMixLabels; fast-reid: "
                "pmm_kernels.integrations.FastreidMixedTargets), or use a mode that keeps its "
                "labels. Warned once per layer.",
                stacklevel=3,
            )
        self._calls = []
        self._targets_read = True
        self._collecting = collect

    def __getstate__(self) -> dict[str, Any]:
        # A copy is a model of its own: the batch labels (and the draws kept for a replay) of
        # the original's current step must not come along, or the copy would mix with them.
        state = self.__dict__.copy()
        state["_labels"], state["_calls"], state["_collecting"] = LabelSlot(), [], False
        return state

    def __prepare_scriptable__(self) -> nn.Module:
        raise TypeError(
            "torch.jit.script: a FeatureMix cannot be scripted (it draws and checks in Python); "
            "take it out first (hook.remove() for an inserted layer) and script the model "
            "without it: in eval mode it is the identity, so the eval model is the same"
        )

    def block_size_for(self, height: int, width: int) -> tuple[int, int]:
        """The block size used on a ``height x width`` map."""
        return geometry.block_size_for(self.grid, self.block_size, height, width)

    def num_blocks_for(self, height: int, width: int) -> int:
        """Blocks mixed per sample on a ``height x width`` map (docs/op.md#layer-geometry):
        :func:`pmm_kernels.layer_geometry.num_blocks_for`."""
        if self.spec.cells == "rectangle":
            return self.num_blocks
        return geometry.num_blocks_for(self.grid, self.block_size, self.num_blocks, height, width)

    def _warn_if_far_off(self, height: int, width: int, num_blocks: int) -> None:
        if self._warned_geometry or self.grid is None or self.spec.cells == "rectangle":
            return
        message = geometry.far_off(self.grid, self.num_blocks, height, width, num_blocks)
        if message is not None:
            self._warned_geometry = True
            warnings.warn(f"{message} (warned once per layer)", stacklevel=4)

    def _saliency_source(self, feat: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        n, c = feat.shape[:2]
        classifier = self.classifier
        if classifier is None:
            return torch.ones(n, c, device=feat.device)
        if labels is None:
            raise ValueError("FeatureMix with a classifier needs labels for its Grad-CAM weights")
        if classifier.in_features != c:
            raise ValueError(
                f"classifier takes {classifier.in_features} features but the map has "
                f"{c} channels: it must be the Linear on this map's pooled feature"
            )
        labels = check.check_labels("labels", labels, n).long()
        rows = classifier.out_features
        words = f"[0, {rows}) to pick rows of classifier.weight (out_features={rows})"
        check.check_ranges([("labels", labels, 0, rows - 1, words)])
        return classifier.weight.detach()[labels]

    def _batch_labels(self, feat: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
        """``labels``, else :attr:`labels` moved to ``feat``'s device (data loaders and engines
        hand over labels on the CPU)."""
        if labels is not None or self.labels is None:
            return labels
        stored = check.check_tensor("labels", self.labels)
        if stored.dim() != 1 or stored.shape[0] != feat.shape[0]:
            raise ValueError(
                f"the labels set on the layer have shape {tuple(stored.shape)} but the map has "
                f"{feat.shape[0]} samples: set the labels of this batch (under nn.DataParallel "
                "over several GPUs labels are not split with the batch: use "
                "DistributedDataParallel)"
            )
        return stored.to(feat.device, non_blocking=True)

    def layout_of(self, x: torch.Tensor) -> str:
        """The layout of the layer's input ``x``: :attr:`layout`, else 3-D tokens or NCHW."""
        if self.layout is not None:
            return self.layout
        return "tokens" if isinstance(x, torch.Tensor) and x.dim() == 3 else "nchw"

    def _mix(
        self,
        x: torch.Tensor,
        labels: torch.Tensor | None,
        attn: torch.Tensor | None,
        partners: torch.Tensor | None,
    ) -> torch.Tensor:
        """Mix ``x`` in its layout: a map, tokens (prefix kept) or an NHWC map."""
        layout = self.layout_of(x)
        if layout == "nhwc":
            feat = check.check_tensor("feat", x).permute(0, 3, 1, 2)
            return self._mix_map(feat, labels, attn, partners, layout).permute(0, 2, 3, 1)
        if layout == "tokens" and self.token_grid is None:
            raise ValueError(
                "FeatureMix got (N, P + H*W, C) tokens but has no token grid: build it with "
                "token_grid=pmm_kernels.tokens.TokenGrid(H, W, prefix), or insert it with "
                "insert_feature_mix into a timm/TransReID ViT, which reads the grid"
            )
        return self._mix_map(x, labels, attn, partners, layout)

    def _token_grid_of(self, layout: str) -> TokenGrid | None:
        """The grid the op is given: the layer's for tokens, None for (N, C, H, W) maps."""
        return self.token_grid if layout == "tokens" else None

    def _map_of(self, x: torch.Tensor, layout: str) -> torch.Tensor:
        """The (N, C, H, W) map that ``x`` is, or the view of its patch tokens."""
        grid = self._token_grid_of(layout)
        return check.check_feat(x if grid is None else grid.patches(x))

    def _mix_map(
        self,
        x: torch.Tensor,
        labels: torch.Tensor | None,
        attn: torch.Tensor | None,
        partners: torch.Tensor | None,
        layout: str,
    ) -> torch.Tensor:
        """Mix the map ``x`` or, for tokens, ``x``'s patch tokens (the op writes the tokens)."""
        feat = self._map_of(x, layout)
        if torch.jit.is_tracing():
            raise RuntimeError(
                "torch.jit.trace of a training forward would bake this batch's mix into the "
                "graph: trace the model in eval() mode, where FeatureMix is the identity"
            )
        if self.generator is not None and torch.compiler.is_compiling():
            _generator_under_compile()
        compiling = torch.compiler.is_compiling()
        if not compiling and recomputing():
            return self._replay(x, attn, partners, layout)
        if not self._collecting:
            self.begin_forward(collect=False)
        labels = self._batch_labels(feat, labels)
        draw_device = self.generator.device if self.generator is not None else feat.device
        state = None if compiling else draw_state(self.generator, draw_device)
        out, info = self._run(x, labels, attn, partners, self.generator, layout)
        self.last_info = info
        if not compiling:
            self._calls.append(Call(info, labels, state, draw_device))
            self._targets_read = not self.spec.mixes_labels
        return out

    def _run(
        self,
        x: torch.Tensor,
        labels: torch.Tensor | None,
        attn: torch.Tensor | None,
        partners: torch.Tensor | None,
        generator: torch.Generator | None,
        layout: str,
    ) -> tuple[torch.Tensor, MixInfo]:
        feat = self._map_of(x, layout)
        height, width = feat.shape[2], feat.shape[3]
        num_blocks = self.num_blocks_for(height, width)
        if not torch.compiler.is_compiling():
            self._warn_if_far_off(height, width, num_blocks)
        if self.spec.cells == "salient" and attn is None:
            if self.saliency is not None:
                attn = self.saliency(feat)
            elif self.classifier is None and layout != "nchw":
                # On tokens (and NHWC stage outputs) the label-free saliency is the token norm.
                attn = token_norm(feat)
            else:
                attn = self._saliency_source(feat, labels)
        return feature_mix(
            x if layout == "tokens" else feat,
            labels,
            attn,
            mode=self.mode,
            block_size=self.block_size_for(height, width),
            num_blocks=num_blocks,
            partners=partners,
            generator=generator,
            h_ratio=self.h_ratio,
            w_ratio=self.w_ratio,
            backend=self.backend,
            token_grid=self._token_grid_of(layout),
        )

    def _replay(
        self,
        x: torch.Tensor,
        attn: torch.Tensor | None,
        partners: torch.Tensor | None,
        layout: str,
    ) -> torch.Tensor:
        """The recompute of the training forward's call: its labels and its draws again."""
        if len(self._calls) != 1:
            raise ValueError(
                f"activation checkpointing recomputes a FeatureMix that ran {len(self._calls)} "
                "times in its training forward, and cannot tell which call this is: use one "
                "layer per call (or no checkpointing around the layer)"
            )
        call = self._calls[0]
        generator = torch.Generator(device=call.draw_device)
        if call.draw_state is not None:
            generator.set_state(call.draw_state)
        out, info = self._run(x, call.labels, attn, partners, generator, layout)
        if not torch.equal(info.mask, call.info.mask):
            raise RuntimeError(
                "activation checkpointing recomputed a FeatureMix whose input changed since the "
                "forward, so it chose other cells: the gradient would be for another mask than "
                "the loss saw (is the recomputed segment deterministic?)"
            )
        return out

    def forward(
        self,
        feat: torch.Tensor,
        labels: torch.Tensor | None = None,
        attn: torch.Tensor | None = None,
        *,
        partners: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mixed ``feat`` in training mode, ``feat`` itself in eval mode.

        Args:
            feat: (N, C, H, W) feature map.
            labels: (N,) labels; needed by the "different label" modes and by ``classifier``.
                None uses :attr:`labels`.
            attn: saliency for the attentive modes (else ``classifier`` or activations).
            partners: fixed partners, as in :func:`pmm_kernels.feature_mix`.
        """
        if not self.training:
            return feat
        return self._mix(feat, labels, attn, partners)

    def targets(
        self,
        labels: torch.Tensor,
        num_classes: int,
        smoothing: float = 0.0,
        *,
        call: int | None = None,
    ) -> torch.Tensor:
        """The loss targets of the last training forward, for any mode.

        :func:`pmm_kernels.mixed_targets` of that forward's ``MixInfo``: mixed by area for
        ``a_cutmix`` and ``cutmix``, the (smoothed) one-hot labels for the other modes, for
        unpaired samples and in eval mode. Score them with
        :func:`pmm_kernels.soft_cross_entropy`::

            loss = soft_cross_entropy(logits, layer.targets(labels, num_classes),
                                      label_smoothing=0.1)

        Args:
            labels: (N,) labels of the batch the layer mixed.
            num_classes: number of classes of the logits.
            smoothing: label smoothing eps in [0, 1); leave 0 when the loss smooths.
            call: which call of the last training forward (see :attr:`infos`); needed when
                the layer ran more than once in it.

        Raises:
            ValueError: the layer ran several times in the last training forward and ``call``
                is None, or ``call`` is out of range.
        """
        self._targets_read = True
        info = self.last_info if self.training else None
        if self.training and (call is not None or len(self._calls) > 1):
            if call is None:
                raise ValueError(
                    f"the layer ran {len(self._calls)} times in its last training forward: pass "
                    f"call= (0 to {len(self._calls) - 1}) to say whose targets"
                )
            if not 0 <= call < len(self._calls):
                raise ValueError(
                    f"call must be in [0, {len(self._calls)}) for the layer's last training "
                    f"forward, got {call}"
                )
            info = self._calls[call].info
        return mixed_targets(labels, info, num_classes, smoothing)

    def extra_repr(self) -> str:
        geometry = (
            f"block_size={self.block_size}" if self.block_size is not None else f"grid={self.grid}"
        )
        return f"mode={self.mode!r}, {geometry}, num_blocks={self.num_blocks}"
